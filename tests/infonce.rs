//! InfoNCE (DESIGN §3.4): finite-difference gradients, chunked == dense, an open_clip-style
//! reference, the logit_scale clamp, numerical stability, typed errors, determinism.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::InfoNceAttrs;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor};

fn attrs(symmetric: bool, chunk: usize) -> InfoNceAttrs {
    InfoNceAttrs {
        symmetric,
        chunk,
        ..InfoNceAttrs::default()
    }
}

/// Everything one forward + backward produces, as f64.
#[derive(Debug)]
struct Run {
    loss: f64,
    lse_row: Vec<f64>,
    lse_col: Vec<f64>,
    ga: Vec<f64>,
    gp: Vec<f64>,
    gls: f64,
    /// The raw f32/f64 bits of every output, for bitwise comparisons.
    raw: Vec<Tensor>,
}

fn run(a: &Tensor, p: &Tensor, ls: &Tensor, at: InfoNceAttrs) -> gshn::Result<Run> {
    let mut g = Graph::new();
    let av = g.input("a", a.shape().clone(), a.dtype());
    let pv = g.input("p", p.shape().clone(), p.dtype());
    let lv = g.input("logit_scale", ls.shape().clone(), ls.dtype());
    let out = g.infonce(av, pv, lv, at)?;
    let grads = g.backward(out.loss, &[av, pv, lv])?;
    let fetch = [
        out.loss,
        out.lse_row,
        out.lse_col,
        grads[0],
        grads[1],
        grads[2],
    ];
    let mut ex = Executor::new(CpuBackend, g, &fetch)?;
    ex.set(av, a)?;
    ex.set(pv, p)?;
    ex.set(lv, ls)?;
    ex.run()?;
    let raw: Vec<Tensor> = fetch
        .iter()
        .map(|&v| ex.get(v))
        .collect::<gshn::Result<_>>()?;
    let v = |k: usize| raw[k].to_f64_vec();
    Ok(Run {
        loss: v(0)[0],
        lse_row: v(1),
        lse_col: v(2),
        ga: v(3),
        gp: v(4),
        gls: v(5)[0],
        raw,
    })
}

fn unit_rows(t: Tensor) -> Tensor {
    let d = t.dims()[1];
    let shape = t.shape().clone();
    let mut v = t.to_f64_vec();
    for row in v.chunks_mut(d.max(1)) {
        let n = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
    Tensor::new(shape, v).unwrap()
}

/// open_clip `ClipLoss` written out in f64: logits, then cross-entropy with labels
/// `arange(B)` on logits (image → text) and on logitsᵀ (text → image).
fn open_clip_reference(
    a: &[f64],
    p: &[f64],
    b: usize,
    d: usize,
    logit_scale: f64,
    symmetric: bool,
) -> (f64, Vec<f64>, Vec<f64>) {
    let s = logit_scale.exp().min(100.0);
    let logits: Vec<Vec<f64>> = (0..b)
        .map(|i| {
            (0..b)
                .map(|j| s * (0..d).map(|k| a[i * d + k] * p[j * d + k]).sum::<f64>())
                .collect()
        })
        .collect();
    let lse = |xs: &[f64]| {
        let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let lse_row: Vec<f64> = logits.iter().map(|r| lse(r)).collect();
    let cols: Vec<Vec<f64>> = (0..b)
        .map(|j| (0..b).map(|i| logits[i][j]).collect())
        .collect();
    let lse_col: Vec<f64> = cols.iter().map(|c| lse(c)).collect();
    // cross_entropy(x, labels) = mean_i −log_softmax(x_i)[label_i]
    let ce_rows = (0..b).map(|i| lse_row[i] - logits[i][i]).sum::<f64>() / b as f64;
    let ce_cols = (0..b).map(|j| lse_col[j] - logits[j][j]).sum::<f64>() / b as f64;
    let loss = if symmetric {
        (ce_rows + ce_cols) / 2.0
    } else {
        ce_rows
    };
    (loss, lse_row, lse_col)
}

fn close(x: &[f64], y: &[f64], rtol: f64, what: &str) {
    assert_eq!(x.len(), y.len(), "{what}: lengths differ");
    let scale = y.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        assert!(
            (a - b).abs() <= rtol * scale.max(1.0) && a.is_finite(),
            "{what}[{i}]: {a:e} vs {b:e} (scale {scale:e})"
        );
    }
}

fn gradcheck(
    a: Tensor,
    p: Tensor,
    ls: f64,
    at: InfoNceAttrs,
    all_outputs: bool,
    seed: u64,
) -> gshn::Result<()> {
    let inputs = [("a", a), ("p", p), ("logit_scale", Tensor::scalar(ls))];
    let check = GradCheck {
        seed,
        ..GradCheck::default()
    };
    let reports = check.run(&inputs, &[true, true, true], |g, x| {
        let o = g.infonce(x[0], x[1], x[2], at)?;
        Ok(if all_outputs {
            vec![o.loss, o.lse_row, o.lse_col]
        } else {
            vec![o.loss]
        })
    })?;
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|r| r.checked > 0));
    Ok(())
}

#[test]
fn fd_gradients_symmetric_and_one_directional_dense_and_chunked() {
    let mut rng = SplitMix64::new(1);
    for &(b, d) in &[(1, 3), (3, 5), (7, 4), (13, 6)] {
        for symmetric in [true, false] {
            for chunk in [0, 4] {
                let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
                // p not normalised: the op must work for any input.
                let p = random([b, d], -1.5, 1.5, &mut rng);
                let ls = rng.range(0.5, 2.5);
                gradcheck(a, p, ls, attrs(symmetric, chunk), false, b as u64)
                    .unwrap_or_else(|e| panic!("B={b} D={d} sym={symmetric} chunk={chunk}: {e}"));
            }
        }
    }
}

#[test]
fn fd_gradients_through_the_lse_outputs() {
    // A consumer of lse_row / lse_col gets correct gradients too (optional backward inputs).
    let mut rng = SplitMix64::new(2);
    for symmetric in [true, false] {
        for chunk in [0, 4] {
            let a = random([9, 5], -1.0, 1.0, &mut rng);
            let p = random([9, 5], -1.0, 1.0, &mut rng);
            gradcheck(a, p, 1.3, attrs(symmetric, chunk), true, 3)
                .unwrap_or_else(|e| panic!("sym={symmetric} chunk={chunk}: {e}"));
        }
    }
}

#[test]
fn clamp_region_zero_logit_scale_gradient_and_correct_a_p_gradients() {
    let mut rng = SplitMix64::new(3);
    let ls = 100f64.ln() + 0.3;
    for symmetric in [true, false] {
        for chunk in [0, 4] {
            let a = unit_rows(random([7, 6], -1.0, 1.0, &mut rng));
            let p = unit_rows(random([7, 6], -1.0, 1.0, &mut rng));
            // FD over all three inputs: d/d logit_scale is numerically 0 there.
            gradcheck(a.clone(), p.clone(), ls, attrs(symmetric, chunk), false, 5).unwrap();
            let r = run(&a, &p, &Tensor::scalar(ls), attrs(symmetric, chunk)).unwrap();
            assert_eq!(
                r.gls, 0.0,
                "clamped logit_scale must get exactly zero gradient"
            );
            assert!(r.ga.iter().any(|&x| x != 0.0));
            // Same values as just below the clamp (s → 100 from below) …
            let below = Tensor::scalar(100f64.ln() - 1e-10);
            let at100 = run(&a, &p, &below, attrs(symmetric, chunk)).unwrap();
            close(&[r.loss], &[at100.loss], 1e-8, "loss at the clamp");
            close(&r.ga, &at100.ga, 1e-8, "ga at the clamp");
            // … where the gradient still flows.
            assert!(at100.gls.abs() > 1e-3, "{}", at100.gls);
        }
    }
}

#[test]
fn equals_open_clip_reference() {
    let mut rng = SplitMix64::new(4);
    for &(b, d) in &[(1, 4), (5, 8), (33, 16)] {
        for symmetric in [true, false] {
            for chunk in [0, 8, 256] {
                let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
                let p = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
                let ls = (1.0f64 / 0.07).ln();
                let (loss, lr, lc) =
                    open_clip_reference(&a.to_f64_vec(), &p.to_f64_vec(), b, d, ls, symmetric);
                let r = run(&a, &p, &Tensor::scalar(ls), attrs(symmetric, chunk)).unwrap();
                let what = format!("B={b} sym={symmetric} chunk={chunk}");
                close(&[r.loss], &[loss], 1e-12, &format!("{what} loss"));
                close(&r.lse_row, &lr, 1e-12, &format!("{what} lse_row"));
                if symmetric {
                    close(&r.lse_col, &lc, 1e-12, &format!("{what} lse_col"));
                } else {
                    assert!(r.lse_col.is_empty(), "one-directional lse_col is [0]");
                }
            }
        }
    }
}

fn assert_runs_match(x: &Run, y: &Run, rtol: f64, what: &str) {
    close(&[x.loss], &[y.loss], rtol, &format!("{what} loss"));
    close(&x.lse_row, &y.lse_row, rtol, &format!("{what} lse_row"));
    close(&x.lse_col, &y.lse_col, rtol, &format!("{what} lse_col"));
    close(&x.ga, &y.ga, rtol, &format!("{what} ga"));
    close(&x.gp, &y.gp, rtol, &format!("{what} gp"));
    close(&[x.gls], &[y.gls], rtol, &format!("{what} g_logit_scale"));
}

#[test]
fn chunked_equals_dense_forward_and_gradients() {
    let mut rng = SplitMix64::new(5);
    for &b in &[1usize, 7, 100, 257] {
        let d = 12;
        let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
        let p = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
        let ls = Tensor::scalar(rng.range(1.0, 4.0));
        let (a32, p32, ls32) = (
            a.to_dtype(DType::F32).unwrap(),
            p.to_dtype(DType::F32).unwrap(),
            ls.to_dtype(DType::F32).unwrap(),
        );
        for symmetric in [true, false] {
            let dense = run(&a, &p, &ls, attrs(symmetric, 0)).unwrap();
            let dense32 = run(&a32, &p32, &ls32, attrs(symmetric, 0)).unwrap();
            for chunk in [1, 16, 64] {
                let what = format!("B={b} sym={symmetric} chunk={chunk}");
                let ch = run(&a, &p, &ls, attrs(symmetric, chunk)).unwrap();
                assert_runs_match(&ch, &dense, 1e-12, &what);
                let ch32 = run(&a32, &p32, &ls32, attrs(symmetric, chunk)).unwrap();
                assert_runs_match(&ch32, &dense32, 2e-5, &format!("{what} f32"));
                assert_runs_match(&ch32, &dense, 1e-4, &format!("{what} f32 vs f64"));
            }
        }
    }
}

#[test]
fn stable_at_the_largest_scale() {
    // s = 100 and logits of ±100: f32 must stay finite and match the f64 reference.
    let mut rng = SplitMix64::new(6);
    let (b, d) = (40, 8);
    let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
    let mut p = a.to_f64_vec();
    for (i, x) in p.iter_mut().enumerate() {
        if (i / d) % 2 == 1 {
            *x = -*x; // odd rows are anti-aligned: logits −100 on their diagonal
        }
    }
    let p = Tensor::new([b, d], p).unwrap();
    let ls = Tensor::scalar(5.0f64);
    let (loss, lr, lc) = open_clip_reference(&a.to_f64_vec(), &p.to_f64_vec(), b, d, 5.0, true);
    assert!(
        loss > 50.0,
        "the anti-aligned rows make a large loss ({loss})"
    );
    for chunk in [0, 7] {
        let r = run(
            &a.to_dtype(DType::F32).unwrap(),
            &p.to_dtype(DType::F32).unwrap(),
            &ls.to_dtype(DType::F32).unwrap(),
            attrs(true, chunk),
        )
        .unwrap();
        close(&[r.loss], &[loss], 1e-5, "loss");
        close(&r.lse_row, &lr, 1e-5, "lse_row");
        close(&r.lse_col, &lc, 1e-5, "lse_col");
        assert!(r.ga.iter().chain(&r.gp).all(|x| x.is_finite()));
        let r64 = run(&a, &p, &ls, attrs(true, chunk)).unwrap();
        close(&r.ga, &r64.ga, 1e-5, "ga f32 vs f64");
        close(&r.gp, &r64.gp, 1e-5, "gp f32 vs f64");
    }
}

#[test]
fn deterministic_across_thread_counts() {
    let mut rng = SplitMix64::new(7);
    let (b, d) = (300, 24);
    let a = random([b, d], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let p = random([b, d], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let ls = Tensor::scalar(2.5f32);
    for at in [attrs(true, 32), attrs(false, 32), attrs(true, 0)] {
        let runs: Vec<Run> = [1, 2, 3]
            .iter()
            .map(|&n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
                    .install(|| run(&a, &p, &ls, at).unwrap())
            })
            .collect();
        for r in &runs[1..] {
            assert_eq!(
                r.raw, runs[0].raw,
                "{at:?}: results depend on the thread count"
            );
        }
    }
}

fn build_error(a: &[usize], p: &[usize], ls: &[usize], dts: [DType; 3]) -> Error {
    let mut g = Graph::new();
    let av = g.input("a", a, dts[0]);
    let pv = g.input("p", p, dts[1]);
    let lv = g.input("ls", ls, dts[2]);
    g.infonce(av, pv, lv, InfoNceAttrs::default())
        .expect_err("bad shapes must be rejected")
}

#[test]
fn typed_errors_for_bad_shapes() {
    let f = DType::F32;
    let cases = [
        build_error(&[4, 8], &[4, 7], &[], [f; 3]),
        build_error(&[4, 8], &[5, 8], &[], [f; 3]),
        build_error(&[4, 8], &[4, 8], &[1], [f; 3]),
        build_error(&[32], &[32], &[], [f; 3]),
        build_error(&[0, 8], &[0, 8], &[], [f; 3]),
        build_error(&[4, 8], &[4, 8], &[], [f, DType::F64, f]),
        build_error(&[4, 8], &[4, 8], &[], [DType::I32; 3]),
    ];
    for e in cases {
        match e {
            Error::Shape { op, .. } => assert_eq!(op, "infonce"),
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
}

#[test]
fn backward_op_checks_its_inputs() {
    use gshn::ops::Op;
    let mut g = Graph::new();
    let f = DType::F64;
    let gl = g.input("g", [], f);
    let a = g.input("a", [4, 3], f);
    let p = g.input("p", [4, 3], f);
    let ls = g.input("ls", [], f);
    let lr = g.input("lr", [4], f);
    let lc_bad = g.input("lc", [3], f);
    let e = g
        .push(
            Op::InfoNceBackward(InfoNceAttrs::default()),
            &[gl, a, p, ls, lr, lc_bad],
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "infonce_backward",
                ..
            }
        ),
        "{e:?}"
    );
    let e = g
        .push(
            Op::InfoNceBackward(InfoNceAttrs::default()),
            &[gl, a, p, ls, lr],
        )
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
}

#[test]
fn chunked_large_batch_smoke() {
    // Many tiles (8 × 8 of 256) at a size that is still quick in the dev profile.
    let mut rng = SplitMix64::new(8);
    let (b, d) = (2048, 8);
    let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng))
        .to_dtype(DType::F32)
        .unwrap();
    let p = unit_rows(random([b, d], -1.0, 1.0, &mut rng))
        .to_dtype(DType::F32)
        .unwrap();
    let r = run(&a, &p, &Tensor::scalar(2.0f32), attrs(true, 256)).unwrap();
    assert!(r.loss.is_finite() && r.loss > 0.0);
    assert!(r.ga.iter().all(|x| x.is_finite()));
}

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// B = 32768 forward + backward in f32: a B×B matrix alone would be 4 GiB; the chunked path
/// must stay far below. Slow in the dev profile: run with
/// `cargo test --release --test infonce -- --ignored batch_`.
#[test]
#[ignore]
fn batch_32768_runs_without_a_quadratic_buffer() {
    large_batch(32768);
}

/// B = 131072 (64 GiB of f32 logits if they existed), the same way.
#[test]
#[ignore]
fn batch_131072_runs_without_a_quadratic_buffer() {
    large_batch(131_072);
}

fn large_batch(b: usize) {
    let mut rng = SplitMix64::new(9);
    let d = 16;
    let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng))
        .to_dtype(DType::F32)
        .unwrap();
    let p = unit_rows(random([b, d], -1.0, 1.0, &mut rng))
        .to_dtype(DType::F32)
        .unwrap();
    let t = std::time::Instant::now();
    let r = run(&a, &p, &Tensor::scalar(3.0f32), attrs(true, 256)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(r.loss.is_finite() && r.loss > 0.0);
    assert!(r.ga.iter().chain(&r.gp).all(|x| x.is_finite()));
    assert!(r.lse_col.iter().all(|x| x.is_finite()));
    if let Some(peak) = peak_rss_bytes() {
        eprintln!(
            "B={b} D={d}: fwd+bwd {secs:.1} s, peak RSS {:.0} MiB",
            peak as f64 / (1 << 20) as f64
        );
        assert!(
            peak < 1 << 30,
            "peak RSS {peak} bytes: something quadratic was allocated"
        );
    }
}
