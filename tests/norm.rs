//! LayerNorm, L2-normalise, masked softmax: values against plain f64 loops, f64
//! finite-difference gradients over several shapes and seeds, fully masked rows, tiny-norm
//! rows, and typed errors.

use gshn::graph::gradcheck::evaluate as eval;
use gshn::graph::gradcheck::{random, GradCheck};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Graph, Tensor, ValueId};

fn check(
    inputs: Vec<(&str, Tensor)>,
    diff: &[bool],
    build: impl FnOnce(&mut Graph, &[ValueId]) -> gshn::Result<Vec<ValueId>>,
) {
    GradCheck::default().run(&inputs, diff, build).unwrap();
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// Plain-loop LayerNorm: (y, mean, rstd).
fn layer_norm_ref(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> [Vec<f64>; 3] {
    let c = gamma.len();
    let (mut y, mut mean, mut rstd) = (vec![], vec![], vec![]);
    for row in x.chunks(c) {
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            y.push((row[j] - mu) * rs * gamma[j] + beta[j]);
        }
        mean.push(mu);
        rstd.push(rs);
    }
    [y, mean, rstd]
}

#[test]
fn layer_norm_matches_reference_f64_and_f32() {
    let mut rng = SplitMix64::new(1);
    for dims in [vec![7usize], vec![3, 5], vec![2, 3, 16], vec![300, 33]] {
        let c = *dims.last().unwrap();
        let x = random(dims.clone(), -3.0, 5.0, &mut rng);
        let gamma = random([c], 0.5, 1.5, &mut rng);
        let beta = random([c], -1.0, 1.0, &mut rng);
        let want = layer_norm_ref(
            &x.to_f64_vec(),
            &gamma.to_f64_vec(),
            &beta.to_f64_vec(),
            1e-5,
        );
        for dt in [DType::F64, DType::F32] {
            let ins = [&x, &gamma, &beta].map(|t| t.to_dtype(dt).unwrap());
            let out = eval(&ins, |g, v| {
                let o = g.layer_norm_values(v[0], v[1], v[2], 1e-5)?;
                Ok(vec![o.y, o.mean, o.rstd])
            })
            .unwrap();
            assert_eq!(out[0].dims(), &dims[..]);
            assert_eq!(out[1].dims(), &dims[..dims.len() - 1]);
            let tol = if dt == DType::F64 { 1e-12 } else { 2e-5 };
            for k in 0..3 {
                close(
                    &out[k].to_f64_vec(),
                    &want[k],
                    tol,
                    &format!("{dt:?} out {k}"),
                );
            }
        }
    }
    // A constant row: variance 0, so rstd = 1/sqrt(eps) and y = beta.
    let x = Tensor::new([1, 4], vec![2.5f64; 4]).unwrap();
    let gamma = Tensor::new([4], vec![1.0f64; 4]).unwrap();
    let beta = Tensor::new([4], vec![0.1f64, 0.2, 0.3, 0.4]).unwrap();
    let out = eval(&[x, gamma, beta.clone()], |g, v| {
        Ok(vec![g.layer_norm(v[0], v[1], v[2], 1e-5)?])
    })
    .unwrap();
    close(
        &out[0].to_f64_vec(),
        &beta.to_f64_vec(),
        1e-15,
        "constant row",
    );
}

#[test]
fn layer_norm_gradients() {
    for seed in 0..4u64 {
        let mut rng = SplitMix64::new(10 + seed);
        let c = 1 + rng.below(9);
        let dims: Vec<usize> = match seed % 3 {
            0 => vec![c],
            1 => vec![1 + rng.below(5), c],
            _ => vec![2, 1 + rng.below(3), c],
        };
        let x = random(dims, -2.0, 2.0, &mut rng);
        let gamma = random([c], 0.5, 1.5, &mut rng);
        let beta = random([c], -1.0, 1.0, &mut rng);
        check(
            vec![("x", x), ("gamma", gamma), ("beta", beta)],
            &[true, true, true],
            |g, v| Ok(vec![g.layer_norm(v[0], v[1], v[2], 1e-5)?]),
        );
    }
}

#[test]
fn layer_norm_backward_deterministic_over_many_rows() {
    // Many rows (several reduction blocks, parallel): ggamma/gbeta against a plain sum, and
    // identical on a second run.
    let (r, c) = (1000usize, 24usize);
    let mut rng = SplitMix64::new(77);
    let x = random([r, c], -2.0, 2.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let gamma = random([c], 0.5, 1.5, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let beta = random([c], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let w = random([r, c], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let build = |g: &mut Graph, v: &[ValueId]| {
        let y = g.layer_norm(v[0], v[1], v[2], 1e-5)?;
        let l = g.mul(y, v[3])?;
        let l = g.sum(l)?;
        let gr = g.backward(l, &[v[0], v[1], v[2]])?;
        Ok(gr)
    };
    let ins = [x.clone(), gamma.clone(), beta, w.clone()];
    let a = eval(&ins, build).unwrap();
    let b = eval(&ins, build).unwrap();
    assert_eq!(a, b);
    // References in f64: gbeta = Σ w, ggamma = Σ w x̂.
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let ones = vec![1.0; c];
    let zeros = vec![0.0; c];
    let [xhat, ..] = layer_norm_ref(&xv, &ones, &zeros, 1e-5);
    let (mut gg, mut gb) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..r * c {
        gg[i % c] += wv[i] * xhat[i];
        gb[i % c] += wv[i];
    }
    close(&a[1].to_f64_vec(), &gg, 1e-4, "ggamma");
    close(&a[2].to_f64_vec(), &gb, 1e-4, "gbeta");
}

#[test]
fn l2_normalize_values_and_tiny_rows() {
    let x = Tensor::new(
        [3, 3],
        vec![3.0f64, 4.0, 0.0, 1e-14, -2e-14, 0.0, 0.0, 0.0, 0.0],
    )
    .unwrap();
    let out = eval(std::slice::from_ref(&x), |g, v| {
        let (y, n) = g.l2_normalize_with_norm(v[0], 1e-12)?;
        Ok(vec![y, n])
    })
    .unwrap();
    let y = out[0].to_f64_vec();
    close(&y[..3], &[0.6, 0.8, 0.0], 1e-15, "unit row");
    // ‖x‖ < eps: y = x / eps, torch.nn.functional.normalize semantics.
    close(&y[3..6], &[1e-2, -2e-2, 0.0], 1e-12, "tiny row");
    assert_eq!(
        &y[6..],
        &[0.0, 0.0, 0.0],
        "zero row must give zeros, not NaN"
    );
    close(
        &out[1].to_f64_vec(),
        &[5.0, (5e-28f64).sqrt(), 0.0],
        1e-12,
        "norm",
    );

    // Random rows against a plain loop, f32 and f64.
    let mut rng = SplitMix64::new(2);
    let x = random([257, 19], -1.0, 1.0, &mut rng);
    let xv = x.to_f64_vec();
    let mut want = vec![];
    for row in xv.chunks(19) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        want.extend(row.iter().map(|v| v / n.max(1e-12)));
    }
    for dt in [DType::F64, DType::F32] {
        let out = eval(&[x.to_dtype(dt).unwrap()], |g, v| {
            Ok(vec![g.l2_normalize(v[0], 1e-12)?])
        })
        .unwrap();
        let tol = if dt == DType::F64 { 1e-14 } else { 1e-6 };
        close(&out[0].to_f64_vec(), &want, tol, "l2");
    }
}

#[test]
fn l2_normalize_gradients_including_clamped_rows() {
    for seed in 0..4u64 {
        let mut rng = SplitMix64::new(20 + seed);
        let c = 1 + rng.below(8);
        let rows = 1 + rng.below(5);
        let x = random([rows, c], -1.0, 1.0, &mut rng);
        check(vec![("x", x)], &[true], |g, v| {
            Ok(vec![g.l2_normalize(v[0], 1e-12)?])
        });
    }
    // eps = 1: rows scaled to norms well below 1 are clamped (y = x / eps), rows with norms
    // well above 1 are not; both in one tensor, away from the kink at ‖x‖ = eps.
    let mut rng = SplitMix64::new(5);
    let mut x = random([6, 4], 0.2, 1.0, &mut rng);
    let c = 4;
    for (r, row) in x.data_mut::<f64>().unwrap().chunks_mut(c).enumerate() {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let target = if r % 2 == 0 { 0.3 } else { 3.0 };
        for (j, v) in row.iter_mut().enumerate() {
            *v *= target / n * if j % 2 == 0 { 1.0 } else { -1.0 };
        }
    }
    check(vec![("x", x)], &[true], |g, v| {
        Ok(vec![g.l2_normalize(v[0], 1.0)?])
    });
}

/// Plain-loop masked softmax.
fn masked_softmax_ref(x: &[f64], keep: &[f64], b: usize, gr: usize, l: usize) -> Vec<f64> {
    let mut y = vec![0.0; b * gr * l];
    for bi in 0..b {
        for gi in 0..gr {
            let o = (bi * gr + gi) * l;
            let kept: Vec<usize> = (0..l).filter(|&j| keep[bi * l + j] != 0.0).collect();
            if kept.is_empty() {
                continue;
            }
            let m = kept.iter().map(|&j| x[o + j]).fold(f64::MIN, f64::max);
            let s: f64 = kept.iter().map(|&j| (x[o + j] - m).exp()).sum();
            for &j in &kept {
                y[o + j] = (x[o + j] - m).exp() / s;
            }
        }
    }
    y
}

fn random_keep(b: usize, l: usize, rng: &mut SplitMix64, empty_row: Option<usize>) -> Tensor {
    let mut k: Vec<f64> = (0..b * l)
        .map(|_| if rng.uniform() < 0.7 { 1.0 } else { 0.0 })
        .collect();
    if let Some(r) = empty_row {
        k[r * l..(r + 1) * l].fill(0.0);
    }
    Tensor::new([b, l], k).unwrap()
}

#[test]
fn masked_softmax_values_masked_and_empty_rows() {
    let mut rng = SplitMix64::new(3);
    for (b, gr, l) in [(2usize, 3usize, 5usize), (4, 1, 9), (3, 40, 130)] {
        // Large logits: the max subtraction must keep it finite.
        let x = random([b, gr, l], -50.0, 800.0, &mut rng);
        let keep = random_keep(b, l, &mut rng, Some(1));
        let want = masked_softmax_ref(&x.to_f64_vec(), &keep.to_f64_vec(), b, gr, l);
        for dt in [DType::F64, DType::F32] {
            let out = eval(
                &[x.to_dtype(dt).unwrap(), keep.to_dtype(dt).unwrap()],
                |g, v| Ok(vec![g.masked_softmax(v[0], v[1])?]),
            )
            .unwrap();
            let y = out[0].to_f64_vec();
            let tol = if dt == DType::F64 { 1e-13 } else { 1e-5 };
            close(&y, &want, tol, "masked softmax");
            let kv = keep.to_f64_vec();
            for (i, &v) in y.iter().enumerate() {
                assert!(v.is_finite());
                let (bi, j) = (i / (gr * l), i % l);
                if kv[bi * l + j] == 0.0 {
                    assert_eq!(v, 0.0, "masked key got {v}");
                }
            }
            // Row sums: 1 for rows with a kept key, 0 for the fully masked batch entry 1.
            for (r, row) in y.chunks(l).enumerate() {
                let s: f64 = row.iter().sum();
                let bi = r / gr;
                let want = if kv[bi * l..(bi + 1) * l].iter().any(|&k| k != 0.0) {
                    1.0
                } else {
                    0.0
                };
                assert!((s - want).abs() < 1e-5, "row {r} sums to {s}");
            }
        }
    }
}

#[test]
fn masked_softmax_gradients() {
    for seed in 0..4u64 {
        let mut rng = SplitMix64::new(40 + seed);
        let (b, gr, l) = (1 + rng.below(3), 1 + rng.below(3), 2 + rng.below(6));
        let x = random([b, gr, l], -2.0, 2.0, &mut rng);
        let keep = random_keep(b, l, &mut rng, if seed % 2 == 0 { Some(0) } else { None });
        check(vec![("x", x), ("keep", keep)], &[true, false], |g, v| {
            Ok(vec![g.masked_softmax(v[0], v[1])?])
        });
    }
}

#[test]
fn norm_errors_are_typed() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 6], DType::F64);
    let c6 = g.input("c6", [6], DType::F64);
    let c5 = g.input("c5", [5], DType::F64);
    let c6f = g.input("c6f", [6], DType::F32);
    let s = g.input("s", [], DType::F64);
    let e = g.input("e", [4, 0], DType::F64);
    let bad = |r: gshn::Result<ValueId>, want: &str| match r {
        Err(e @ (Error::Shape { .. } | Error::Invalid { .. })) => {
            assert!(e.to_string().contains(want), "{e} lacks {want:?}")
        }
        other => panic!("expected a typed error containing {want:?}, got {other:?}"),
    };
    bad(g.layer_norm(x, c5, c6, 1e-5), "gamma");
    bad(g.layer_norm(x, c6, c5, 1e-5), "beta");
    bad(g.layer_norm(x, c6f, c6, 1e-5), "dtypes");
    bad(g.layer_norm(x, c6, c6, -1.0), "eps");
    bad(g.layer_norm(s, c6, c6, 1e-5), "rank");
    bad(g.layer_norm(e, c6, c6, 1e-5), "empty");
    bad(g.l2_normalize(x, 0.0), "eps");
    bad(g.l2_normalize(s, 1e-12), "rank");
    let x3 = g.input("x3", [2, 3, 5], DType::F64);
    let k_ok = g.input("k", [2, 5], DType::F64);
    let k_bad = g.input("kb", [2, 4], DType::F64);
    let k_i = g.input("ki", [2, 5], DType::I32);
    bad(g.masked_softmax(x3, k_bad), "keep");
    bad(g.masked_softmax(x3, k_i), "keep");
    bad(g.masked_softmax(x, k_ok), "rank 3");
    assert!(g.masked_softmax(x3, k_ok).is_ok());

    // Differentiating through the saved statistics is refused, not silently zero.
    let gm = g.input("gm", [6], DType::F64);
    let o = g.layer_norm_values(x, gm, c6, 1e-5).unwrap();
    let l = g.sum(o.mean).unwrap();
    assert!(matches!(g.backward(l, &[x]), Err(Error::Graph(_))));
}

/// The bits of each f32 output of an eager op.
fn output_bits(out: Vec<gshn::fused::Array<CpuBackend>>) -> Vec<Vec<u32>> {
    out.into_iter()
        .map(|a| {
            let t = a.into_tensor().unwrap();
            t.data::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

/// The CPU LayerNorm forward gives bit for bit what the plain one-row loop gives. The recorded
/// training runs depend on it, so a faster kernel must keep each row's summation order: f32, row
/// counts around blocks of 8 and the per-thread chunks.
#[test]
fn layer_norm_forward_equals_the_row_at_a_time_loop_bit_for_bit() {
    let mut rng = SplitMix64::new(11);
    for (rows, c) in [
        (1, 5),
        (7, 33),
        (8, 16),
        (9, 16),
        (23, 64),
        (1000, 256),
        (4099, 3),
    ] {
        let xv: Vec<f32> = (0..rows * c).map(|_| rng.range(-3.0, 3.0) as f32).collect();
        let gv: Vec<f32> = (0..c).map(|_| rng.range(0.5, 1.5) as f32).collect();
        let bv: Vec<f32> = (0..c).map(|_| rng.range(-0.5, 0.5) as f32).collect();
        let (x, gamma, beta) = (
            Tensor::new([rows, c], xv.clone()).unwrap(),
            Tensor::new([c], gv.clone()).unwrap(),
            Tensor::new([c], bv.clone()).unwrap(),
        );
        let out = gshn::fused::run(
            &CpuBackend,
            &gshn::ops::Op::LayerNorm {
                eps: 1e-5,
                row_stride: 1,
            },
            &[x.view(), gamma.view(), beta.view()],
        )
        .unwrap();
        let got = output_bits(out);
        let inv_c = 1.0f32 / c as f32;
        let (mut y, mut mean, mut rstd) = (Vec::new(), Vec::new(), Vec::new());
        for xr in xv.chunks(c) {
            let mut s = 0f32;
            for &v in xr {
                s += v;
            }
            let mu = s * inv_c;
            let mut ss = 0f32;
            for &v in xr {
                ss += (v - mu) * (v - mu);
            }
            let rs = 1.0 / (ss * inv_c + 1e-5f32).sqrt();
            for j in 0..c {
                y.push(((xr[j] - mu) * rs * gv[j] + bv[j]).to_bits());
            }
            mean.push(mu.to_bits());
            rstd.push(rs.to_bits());
        }
        assert_eq!(got[0], y, "y, rows {rows} c {c}");
        assert_eq!(got[1], mean, "mean, rows {rows} c {c}");
        assert_eq!(got[2], rstd, "rstd, rows {rows} c {c}");
    }
}

/// The CPU LayerNorm backward gives bit for bit what the plain one-row loop gives (the row sums in
/// column order; γ and β gradients per block of 64 rows, rows in order, then the blocks in order):
/// the recorded training runs depend on it, as on the forward.
#[test]
fn layer_norm_backward_equals_the_row_at_a_time_loop_bit_for_bit() {
    const BLOCK: usize = 64; // LN_BLOCK_ROWS in src/backend/cpu/norm.rs
    let mut rng = SplitMix64::new(12);
    for (rows, c) in [
        (1, 5),
        (7, 33),
        (8, 16),
        (9, 16),
        (23, 64),
        (200, 256),
        (4099, 3),
    ] {
        let f = |n: usize, lo: f64, hi: f64, rng: &mut SplitMix64| -> Vec<f32> {
            (0..n).map(|_| rng.range(lo, hi) as f32).collect()
        };
        let (gv, xv) = (
            f(rows * c, -1.0, 1.0, &mut rng),
            f(rows * c, -3.0, 3.0, &mut rng),
        );
        let gam = f(c, 0.5, 1.5, &mut rng);
        let (mu, rs) = (f(rows, -0.5, 0.5, &mut rng), f(rows, 0.5, 2.0, &mut rng));
        let t = |shape: Vec<usize>, v: &[f32]| Tensor::new(shape, v.to_vec()).unwrap();
        let ins = [
            t(vec![rows, c], &gv),
            t(vec![rows, c], &xv),
            t(vec![c], &gam),
            t(vec![rows], &mu),
            t(vec![rows], &rs),
        ];
        let views: Vec<_> = ins.iter().map(|x| x.view()).collect();
        let op = gshn::ops::Op::LayerNormBackward {
            eps: 1e-5,
            row_stride: 1,
        };
        let out = gshn::fused::run(&CpuBackend, &op, &views).unwrap();
        let got = output_bits(out);
        let inv_c = 1.0f32 / c as f32;
        let (mut gx, mut gg, mut gb) = (Vec::new(), vec![0f32; c], vec![0f32; c]);
        for block in 0..rows.div_ceil(BLOCK) {
            let (mut pg, mut pb) = (vec![0f32; c], vec![0f32; c]);
            for row in block * BLOCK..((block + 1) * BLOCK).min(rows) {
                let (xr, gr) = (&xv[row * c..(row + 1) * c], &gv[row * c..(row + 1) * c]);
                let (m, r) = (mu[row], rs[row]);
                let (mut a, mut b) = (0f32, 0f32);
                for j in 0..c {
                    let xh = (xr[j] - m) * r;
                    let gh = gr[j] * gam[j];
                    a += gh;
                    b += gh * xh;
                    pg[j] += gr[j] * xh;
                    pb[j] += gr[j];
                }
                let (a, b) = (a * inv_c, b * inv_c);
                for j in 0..c {
                    let xh = (xr[j] - m) * r;
                    gx.push((r * (gr[j] * gam[j] - a - xh * b)).to_bits());
                }
            }
            for j in 0..c {
                gg[j] += pg[j];
                gb[j] += pb[j];
            }
        }
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(got[0], gx, "gx, rows {rows} c {c}");
        assert_eq!(got[1], bits(gg), "ggamma, rows {rows} c {c}");
        assert_eq!(got[2], bits(gb), "gbeta, rows {rows} c {c}");
    }
}

/// Rows taken every `row_stride`-th from a longer batch (the text encoder's [CLS] rows): the
/// backward gives the bits of the long batch's backward, whose other rows have a zero
/// gradient (any values of x there): γ and β gradients in the long batch's 64-row blocks.
#[test]
fn layer_norm_backward_of_strided_rows_has_the_long_batchs_bits() {
    let mut rng = SplitMix64::new(13);
    let mut f = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..n).map(|_| rng.range(lo, hi) as f32).collect()
    };
    // strides below, at and above the block of 64 rows (some blocks then hold no row)
    for (rows, c, stride) in [
        (48, 128, 24),
        (7, 33, 3),
        (30, 8, 64),
        (5, 8, 100),
        (65, 5, 1),
    ] {
        let long = rows * stride;
        let (g, x) = (f(long * c, -1.0, 1.0), f(long * c, -3.0, 3.0));
        let gam = f(c, 0.5, 1.5);
        let (mu, rs) = (f(long, -0.5, 0.5), f(long, 0.5, 2.0));
        // the long batch: g zero off the strided rows
        let g: Vec<f32> = g
            .chunks(c)
            .enumerate()
            .flat_map(|(r, gr)| {
                gr.iter()
                    .map(move |&v| if r % stride == 0 { v } else { 0.0 })
            })
            .collect();
        let take = |v: &[f32], w: usize| -> Vec<f32> {
            v.chunks(w).step_by(stride).flatten().copied().collect()
        };
        let run = |rows: usize, stride: usize, g: &[f32], x: &[f32], mu: &[f32], rs: &[f32]| {
            let t = |shape: Vec<usize>, v: &[f32]| Tensor::new(shape, v.to_vec()).unwrap();
            let ins = [
                t(vec![rows, c], g),
                t(vec![rows, c], x),
                t(vec![c], &gam),
                t(vec![rows], mu),
                t(vec![rows], rs),
            ];
            let views: Vec<_> = ins.iter().map(|x| x.view()).collect();
            let op = gshn::ops::Op::LayerNormBackward {
                eps: 1e-5,
                row_stride: stride,
            };
            output_bits(gshn::fused::run(&CpuBackend, &op, &views).unwrap())
        };
        let want = run(long, 1, &g, &x, &mu, &rs);
        let (gs, xs, ms, rss) = (take(&g, c), take(&x, c), take(&mu, 1), take(&rs, 1));
        let got = run(rows, stride, &gs, &xs, &ms, &rss);
        let want_gx: Vec<u32> = want[0]
            .chunks(c)
            .step_by(stride)
            .flatten()
            .copied()
            .collect();
        assert_eq!(got[0], want_gx, "gx, rows {rows} stride {stride}");
        assert_eq!(got[1], want[1], "ggamma, rows {rows} stride {stride}");
        assert_eq!(got[2], want[2], "gbeta, rows {rows} stride {stride}");
        if stride > 1 && stride < 64 && long > 64 {
            // the test can fail: one block of the rows alone adds in another order
            let plain = run(rows, 1, &gs, &xs, &ms, &rss);
            assert_ne!(
                plain[1], want[1],
                "rows {rows} stride {stride}: no other order?"
            );
        }
    }
}
