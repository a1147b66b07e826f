//! InfoNCE's precision modes and gathered negatives (DESIGN §3.4): the dense formula in f64,
//! finite differences, the data-parallel identity, measured tf32/bf16 error bounds, the
//! operand rounding itself, and determinism.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::{InfoNceAttrs, Precision};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor, ValueId};

/// Loss, lse_row, lse_col, ga, gp, g_logit_scale of one forward + backward (as f64), plus
/// the raw output tensors for bitwise comparisons.
struct Run {
    out: [Vec<f64>; 6],
    raw: Vec<Tensor>,
}

const NAMES: [&str; 6] = ["loss", "lse_row", "lse_col", "ga", "gp", "g_logit_scale"];

fn run(a: &Tensor, p: &Tensor, ls: &Tensor, at: InfoNceAttrs) -> gshn::Result<Run> {
    let mut g = Graph::new();
    let av = g.input("a", a.shape().clone(), a.dtype());
    let pv = g.input("p", p.shape().clone(), p.dtype());
    let lv = g.input("logit_scale", [], ls.dtype());
    let o = g.infonce(av, pv, lv, at)?;
    let gr = g.backward(o.loss, &[av, pv, lv])?;
    let fetch = [o.loss, o.lse_row, o.lse_col, gr[0], gr[1], gr[2]];
    let mut ex = Executor::new(CpuBackend, g, &fetch)?;
    ex.set(av, a)?;
    ex.set(pv, p)?;
    ex.set(lv, ls)?;
    ex.run()?;
    let raw: Vec<Tensor> = fetch
        .iter()
        .map(|&v| ex.get(v))
        .collect::<gshn::Result<_>>()?;
    let out = std::array::from_fn(|k| raw[k].to_f64_vec());
    Ok(Run { out, raw })
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

fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

/// Largest |x − y| over the largest |y| (at least 1e-30): one relative error per output.
fn rel_err(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let scale = y.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    let worst = x.iter().zip(y).fold(0.0f64, |m, (a, b)| {
        if a.is_finite() {
            m.max((a - b).abs())
        } else {
            f64::INFINITY
        }
    });
    worst / scale
}

fn worst_rel(x: &Run, y: &Run) -> [f64; 6] {
    std::array::from_fn(|k| rel_err(&x.out[k], &y.out[k]))
}

fn assert_close(x: &Run, y: &Run, tol: f64, what: &str) {
    for (k, e) in worst_rel(x, y).into_iter().enumerate() {
        assert!(
            e <= tol,
            "{what}: {} differs by {e:e} (tolerance {tol:e})",
            NAMES[k]
        );
    }
}

/// open_clip's `local_loss` written out in f64 for one rank: logits of the local anchors
/// against every candidate, cross-entropy with labels `offset + arange(B_local)`.
fn local_loss_reference(
    a: &[f64],
    p: &[f64],
    bl: usize,
    ba: usize,
    d: usize,
    ls: f64,
    offset: usize,
) -> (f64, Vec<f64>) {
    let s = ls.exp().min(100.0);
    let mut loss = 0.0;
    let mut lse = Vec::with_capacity(bl);
    for i in 0..bl {
        let row: Vec<f64> = (0..ba)
            .map(|j| s * (0..d).map(|k| a[i * d + k] * p[j * d + k]).sum::<f64>())
            .collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        loss += l - row[offset + i];
        lse.push(l);
    }
    (loss / bl as f64, lse)
}

fn gathered(offset: usize, chunk: usize) -> InfoNceAttrs {
    InfoNceAttrs {
        chunk,
        offset,
        ..InfoNceAttrs::ONE_DIRECTIONAL
    }
}

#[test]
fn gathered_negatives_equal_open_clip_local_loss() {
    let mut rng = SplitMix64::new(21);
    let (ba, d) = (13, 6);
    let p = unit_rows(random([ba, d], -1.0, 1.0, &mut rng));
    for (bl, offset) in [(4, 0), (4, 5), (4, 9), (1, 12), (13, 0)] {
        let a = unit_rows(random([bl, d], -1.0, 1.0, &mut rng));
        let ls = 2.3;
        let (loss, lse) =
            local_loss_reference(&a.to_f64_vec(), &p.to_f64_vec(), bl, ba, d, ls, offset);
        let dense = run(&a, &p, &Tensor::scalar(ls), gathered(offset, 0)).unwrap();
        for chunk in [0, 1, 3, 4, 256] {
            let what = format!("B_local={bl} offset={offset} chunk={chunk}");
            let r = run(&a, &p, &Tensor::scalar(ls), gathered(offset, chunk)).unwrap();
            assert!(
                (r.out[0][0] - loss).abs() <= 1e-12 * loss.abs().max(1.0),
                "{what}: loss"
            );
            assert!(rel_err(&r.out[1], &lse) <= 1e-12, "{what}: lse_row");
            assert!(
                r.out[2].is_empty(),
                "{what}: one-directional lse_col is [0]"
            );
            assert_eq!(r.raw[3].dims(), &[bl, d], "{what}: ga");
            assert_eq!(
                r.raw[4].dims(),
                &[ba, d],
                "{what}: gp covers every candidate"
            );
            assert_close(&r, &dense, 1e-12, &what);
            let r32 = run(
                &f32(&a),
                &f32(&p),
                &Tensor::scalar(ls as f32),
                gathered(offset, chunk),
            )
            .unwrap();
            assert_close(&r32, &dense, 2e-5, &format!("{what} f32"));
        }
    }
}

#[test]
fn fd_gradients_of_gathered_negatives() {
    let mut rng = SplitMix64::new(22);
    for (bl, ba, offset) in [(3, 8, 0), (3, 8, 2), (3, 8, 5), (5, 5, 0)] {
        for chunk in [0, 2, 256] {
            let a = random([bl, 4], -1.0, 1.0, &mut rng);
            let p = random([ba, 4], -1.0, 1.0, &mut rng);
            let inputs = [("a", a), ("p", p), ("logit_scale", Tensor::scalar(1.1))];
            let check = GradCheck {
                seed: offset as u64,
                ..GradCheck::default()
            };
            let at = gathered(offset, chunk);
            let reports = check
                .run(&inputs, &[true, true, true], |g, x| {
                    let o = g.infonce(x[0], x[1], x[2], at)?;
                    Ok(vec![o.loss, o.lse_row])
                })
                .unwrap_or_else(|e| {
                    panic!("B_local={bl} B_all={ba} offset={offset} chunk={chunk}: {e}")
                });
            assert!(reports.iter().all(|r| r.checked > 0));
        }
    }
}

/// Rows `r·n .. (r+1)·n` of `x`.
fn rank_rows(g: &mut Graph, x: ValueId, r: usize, n: usize) -> ValueId {
    g.slice(x, 0, r * n, n).unwrap()
}

#[test]
fn data_parallel_losses_average_to_the_global_symmetric_loss() {
    // Each of `world` ranks holds n rows and every rank's gathered candidates; the mean of
    // their losses (what DDP's gradient averaging optimises) is the global symmetric loss,
    // and so are its gradients.
    let mut rng = SplitMix64::new(23);
    let (world, n, d) = (3, 5, 7);
    let a = unit_rows(random([world * n, d], -1.0, 1.0, &mut rng));
    let p = unit_rows(random([world * n, d], -1.0, 1.0, &mut rng));
    let ls = Tensor::scalar(2.0);
    for chunk in [0, 2, 256] {
        let at = InfoNceAttrs {
            chunk,
            ..InfoNceAttrs::SYMMETRIC
        };
        let eval = |ranks: bool| {
            let mut g = Graph::new();
            let av = g.input("a", a.shape().clone(), DType::F64);
            let pv = g.input("p", p.shape().clone(), DType::F64);
            let lv = g.input("ls", [], DType::F64);
            let loss = if ranks {
                let mut total = None;
                for r in 0..world {
                    let local = (rank_rows(&mut g, av, r, n), rank_rows(&mut g, pv, r, n));
                    let l = g.infonce_gathered(local, (av, pv), r * n, lv, at).unwrap();
                    total = Some(match total {
                        None => l,
                        Some(t) => g.add(t, l).unwrap(),
                    });
                }
                g.scale(total.unwrap(), 1.0 / world as f64).unwrap()
            } else {
                g.infonce(av, pv, lv, at).unwrap().loss
            };
            let gr = g.backward(loss, &[av, pv, lv]).unwrap();
            let fetch = [loss, gr[0], gr[1], gr[2]];
            let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
            ex.set(av, &a).unwrap();
            ex.set(pv, &p).unwrap();
            ex.set(lv, &ls).unwrap();
            ex.run().unwrap();
            fetch.map(|v| ex.get(v).unwrap().to_f64_vec())
        };
        let (global, ranks) = (eval(false), eval(true));
        for (k, what) in ["loss", "ga", "gp", "g_logit_scale"].iter().enumerate() {
            let e = rel_err(&ranks[k], &global[k]);
            assert!(e <= 1e-12, "chunk={chunk}: {what} differs by {e:e}");
        }
    }
}

#[test]
fn precision_round_matches_the_hardware_conversions() {
    let tf32 = |x: f64| Precision::Tf32.round(x);
    let bf16 = |x: f64| Precision::Bf16.round(x);
    let ulp_tf32 = 2f64.powi(-10);
    let ulp_bf16 = 2f64.powi(-7);
    // tf32 (cvt.rna): to nearest, ties away from zero.
    assert_eq!(tf32(1.0 + ulp_tf32 / 2.0), 1.0 + ulp_tf32);
    assert_eq!(tf32(-(1.0 + ulp_tf32 / 2.0)), -(1.0 + ulp_tf32));
    assert_eq!(tf32(1.0 + ulp_tf32 * 0.49), 1.0);
    assert_eq!(tf32(1.0 + 3.0 * ulp_tf32 / 2.0), 1.0 + 2.0 * ulp_tf32);
    // bf16 (__float2bfloat16_rn): to nearest, ties to even.
    assert_eq!(bf16(1.0 + ulp_bf16 / 2.0), 1.0);
    assert_eq!(bf16(1.0 + 3.0 * ulp_bf16 / 2.0), 1.0 + 2.0 * ulp_bf16);
    assert_eq!(bf16(1.0 + ulp_bf16 * 0.51), 1.0 + ulp_bf16);
    assert_eq!(bf16(f32::MAX as f64) as f32, f32::INFINITY);
    // Carry into the exponent, specials, f32 identity.
    assert_eq!(bf16(2.0 - ulp_bf16 / 4.0), 2.0);
    for x in [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(tf32(x).to_bits(), x.to_bits());
    }
    assert!(bf16(f64::NAN).is_nan());
    assert_eq!(Precision::F32.round(0.1), 0.1);
    for p in Precision::ALL {
        assert_eq!(Precision::parse(p.name()).unwrap(), p);
    }
    assert!(Precision::parse("fp8").is_err());
}

#[test]
fn f32_rounding_on_bits_equals_the_f64_definition() {
    // round_f32 (the kernels' bit operations) against the mantissa rounding in f64, over
    // random normal f32 values (ties included: low bits cleared) and the carry cases.
    let mut rng = SplitMix64::new(28);
    let mut xs: Vec<f32> = (0..200_000)
        .map(|k| {
            let bits = (rng.next_u64() >> 32) as u32;
            // Every 4th value sits exactly on a tf32 or bf16 tie.
            let bits = match k % 4 {
                0 => (bits & 0xffff_e000) | 0x1000,
                1 => (bits & 0xffff_0000) | 0x8000,
                _ => bits,
            };
            f32::from_bits(bits)
        })
        .filter(|x| x.is_normal())
        .collect();
    xs.extend([
        f32::MAX,
        -f32::MAX,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        3.999_999_8,
    ]);
    for p in Precision::ALL {
        for &x in &xs {
            let (bits, wide) = (p.round_f32(x), p.round(f64::from(x)) as f32);
            assert_eq!(
                bits.to_bits(),
                wide.to_bits(),
                "{p:?} of {x:e} ({:#x})",
                x.to_bits()
            );
        }
        for x in [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0] {
            assert_eq!(p.round_f32(x).to_bits(), x.to_bits());
        }
        assert!(p.round_f32(f32::NAN).is_nan());
    }
}

/// Every f32 value of `t` rounded to the precision's operand format.
fn rounded(t: &Tensor, p: Precision) -> Tensor {
    let v: Vec<f32> = t
        .to_f64_vec()
        .into_iter()
        .map(|x| p.round(x) as f32)
        .collect();
    Tensor::new(t.shape().clone(), v).unwrap()
}

#[test]
fn precision_modes_round_exactly_the_product_operands() {
    // The forward of a mode equals the f32 forward on pre-rounded a and p, bit for bit:
    // the rounding sits on the operands, and LSE / loss stay f32.
    let mut rng = SplitMix64::new(24);
    let (b, d) = (70, 33);
    let a = f32(&unit_rows(random([b, d], -1.0, 1.0, &mut rng)));
    let p = f32(&unit_rows(random([b, d], -1.0, 1.0, &mut rng)));
    let ls = Tensor::scalar(3.0f32);
    for precision in [Precision::Tf32, Precision::Bf16] {
        for at in [InfoNceAttrs::SYMMETRIC, InfoNceAttrs::ONE_DIRECTIONAL] {
            for chunk in [0, 16] {
                let mode = InfoNceAttrs {
                    chunk,
                    precision,
                    ..at
                };
                let exact = InfoNceAttrs { chunk, ..at };
                let r = run(&a, &p, &ls, mode).unwrap();
                let pre =
                    run(&rounded(&a, precision), &rounded(&p, precision), &ls, exact).unwrap();
                for ((x, y), name) in r.raw.iter().zip(&pre.raw).zip(NAMES).take(3) {
                    assert_eq!(x, y, "{mode:?}: {name}");
                }
                // The backward also rounds the logit gradient, so it differs from `pre`,
                // within the mode's bound.
                let bound = if precision == Precision::Bf16 {
                    2e-2
                } else {
                    5e-3
                };
                assert_close(&r, &pre, bound, &format!("{mode:?} vs pre-rounded"));
            }
        }
    }
}

/// The measured error of each mode against the f64 dense formula on exact inputs, over the
/// shapes of the issue; returns the worst per output.
fn worst_error(precision: Precision, shapes: &[(usize, usize)], seed: u64) -> [f64; 6] {
    let mut rng = SplitMix64::new(seed);
    let mut worst = [0.0f64; 6];
    for &(b, d) in shapes {
        // Unit rows of width 1 are all ±1 (every logit ±s, gradients pure cancellation):
        // width-1 features stay as drawn.
        let draw = |rng: &mut SplitMix64| {
            let x = random([b, d], -1.0, 1.0, rng);
            if d > 1 {
                unit_rows(x)
            } else {
                x
            }
        };
        let (a, p) = (draw(&mut rng), draw(&mut rng));
        let ls = Tensor::scalar((1.0f64 / 0.07).ln());
        for at in [InfoNceAttrs::SYMMETRIC, InfoNceAttrs::ONE_DIRECTIONAL] {
            let reference = run(&a, &p, &ls, InfoNceAttrs { chunk: 0, ..at }).unwrap();
            let mode = InfoNceAttrs {
                chunk: 64,
                precision,
                ..at
            };
            let r = run(&f32(&a), &f32(&p), &f32(&ls), mode).unwrap();
            for (w, e) in worst.iter_mut().zip(worst_rel(&r, &reference)) {
                *w = w.max(e);
            }
        }
    }
    worst
}

const SHAPES: [(usize, usize); 9] = [
    (1, 31),
    (7, 1),
    (63, 31),
    (64, 512),
    (65, 31),
    (1000, 1),
    (1000, 31),
    (1000, 512),
    (4097, 31),
];

#[test]
fn every_mode_against_the_f64_dense_formula_within_its_documented_bound() {
    // Bounds (README, InfoNCE precision modes): f32 1e-5, tf32 5e-3, bf16 2e-2 relative to
    // each output's largest magnitude. The rounding must show (a mode that silently ran in
    // f32 would fail the lower bound).
    for (precision, bound, visible) in [
        (Precision::F32, 1e-5, 0.0),
        (Precision::Tf32, 5e-3, 1e-5),
        (Precision::Bf16, 2e-2, 1e-4),
    ] {
        let worst = worst_error(precision, &SHAPES, 25);
        eprintln!(
            "{}: worst relative error {:?}",
            precision.name(),
            worst.map(|e| format!("{e:.1e}"))
        );
        for (k, e) in worst.into_iter().enumerate() {
            assert!(
                e <= bound,
                "{}: {} error {e:e} > {bound:e}",
                precision.name(),
                NAMES[k]
            );
        }
        assert!(
            worst.iter().any(|&e| e > visible),
            "{}: no rounding visible ({worst:?})",
            precision.name()
        );
    }
}

#[test]
fn a_large_batch_against_the_dense_formula() {
    // B = 4097 (not a multiple of any tile) with D = 512, f32 tiles against f64 dense.
    let mut rng = SplitMix64::new(26);
    let (b, d) = (4097, 512);
    let a = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
    let p = unit_rows(random([b, d], -1.0, 1.0, &mut rng));
    let ls = Tensor::scalar(2.7);
    let reference = run(
        &a,
        &p,
        &ls,
        InfoNceAttrs {
            chunk: 0,
            ..InfoNceAttrs::SYMMETRIC
        },
    )
    .unwrap();
    let r = run(&f32(&a), &f32(&p), &f32(&ls), InfoNceAttrs::SYMMETRIC).unwrap();
    assert_close(&r, &reference, 1e-5, "B=4097 D=512 f32");
}

#[test]
fn modes_and_gathered_negatives_are_deterministic_across_thread_counts() {
    let mut rng = SplitMix64::new(27);
    let (bl, ba, d) = (90, 300, 24);
    let a = f32(&random([bl, d], -1.0, 1.0, &mut rng));
    let p = f32(&random([ba, d], -1.0, 1.0, &mut rng));
    let ls = Tensor::scalar(2.5f32);
    for precision in Precision::ALL {
        let at = InfoNceAttrs {
            chunk: 32,
            precision,
            offset: 150,
            ..InfoNceAttrs::ONE_DIRECTIONAL
        };
        let runs: Vec<Vec<Tensor>> = [1, 2, 3]
            .iter()
            .map(|&n| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap();
                pool.install(|| run(&a, &p, &ls, at).unwrap().raw)
            })
            .collect();
        for r in &runs[1..] {
            assert_eq!(r, &runs[0], "{at:?}: results depend on the thread count");
        }
        assert_eq!(
            run(&a, &p, &ls, at).unwrap().raw,
            runs[0],
            "{at:?}: repeated runs differ"
        );
    }
}

#[test]
fn gathered_shapes_are_checked() {
    let f = DType::F32;
    let build = |a: &[usize], p: &[usize], at: InfoNceAttrs| {
        let mut g = Graph::new();
        let (av, pv, lv) = (g.input("a", a, f), g.input("p", p, f), g.input("ls", [], f));
        g.infonce(av, pv, lv, at).map(|_| ())
    };
    // Accepted: the positives inside p.
    build(&[4, 8], &[12, 8], gathered(8, 256)).unwrap();
    for (a, p, at) in [
        (&[4usize, 8][..], &[12usize, 8][..], gathered(9, 256)), // past the end
        (&[4, 8], &[12, 8], gathered(usize::MAX, 256)),          // overflowing offset
        (&[4, 8], &[12, 8], InfoNceAttrs::SYMMETRIC),            // symmetric, unequal
        (
            &[4, 8],
            &[4, 8],
            InfoNceAttrs {
                offset: 1,
                ..InfoNceAttrs::SYMMETRIC
            },
        ),
        (&[4, 8], &[12, 7], gathered(0, 256)), // widths differ
        (&[0, 8], &[12, 8], gathered(0, 256)), // no anchors
    ] {
        match build(a, p, at) {
            Err(Error::Shape { op: "infonce", .. }) => {}
            other => panic!("{a:?} vs {p:?} with {at:?}: expected a shape error, got {other:?}"),
        }
    }
}
