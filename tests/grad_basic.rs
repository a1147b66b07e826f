//! Finite-difference gradient checks of the basic ops (f64), several seeds and shapes.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::{Op, Reduce, Surrogate, Unary};
use gshn::util::rng::SplitMix64;
use gshn::Graph;

fn check(
    inputs: Vec<(&str, gshn::Tensor)>,
    diff: &[bool],
    build: impl FnOnce(&mut Graph, &[gshn::ValueId]) -> gshn::Result<Vec<gshn::ValueId>>,
) {
    GradCheck::default().run(&inputs, diff, build).unwrap();
}

#[test]
fn elementwise_binary() {
    for seed in 0..3 {
        let mut rng = SplitMix64::new(seed);
        let shape = [2 + seed as usize, 5];
        for op in [Op::Add, Op::Sub, Op::Mul] {
            let a = random(shape, -2.0, 2.0, &mut rng);
            let b = random(shape, -2.0, 2.0, &mut rng);
            check(vec![("a", a), ("b", b)], &[true, true], |g, x| {
                Ok(vec![g.push1(op.clone(), x)?])
            });
        }
    }
}

#[test]
fn broadcasts_and_scale() {
    let mut rng = SplitMix64::new(11);
    let x = random([3, 4, 5], -1.0, 1.0, &mut rng);
    let b = random([5], -1.0, 1.0, &mut rng);
    check(
        vec![("x", x.clone()), ("b", b.clone())],
        &[true, true],
        |g, v| Ok(vec![g.add_bias(v[0], v[1])?]),
    );
    check(vec![("x", x.clone()), ("w", b)], &[true, true], |g, v| {
        Ok(vec![g.mul_broadcast(v[0], v[1])?])
    });
    let s = random([], 0.2, 1.0, &mut rng);
    check(vec![("x", x.clone()), ("s", s)], &[true, true], |g, v| {
        Ok(vec![g.mul_broadcast(v[0], v[1])?])
    });
    check(vec![("x", x)], &[true], |g, v| {
        Ok(vec![g.scale(v[0], -0.37)?])
    });
}

#[test]
fn activations() {
    let mut rng = SplitMix64::new(5);
    let units = [
        Unary::Relu,
        Unary::Elu(1.0),
        Unary::Gelu,
        Unary::LeakyRelu(0.2),
        Unary::Exp,
        Unary::Spike {
            surrogate: Surrogate::ATan(2.0),
            smooth: true,
        },
        Unary::Spike {
            surrogate: Surrogate::Sigmoid(4.0),
            smooth: true,
        },
        Unary::Spike {
            surrogate: Surrogate::SuperSpike(3.0),
            smooth: true,
        },
        Unary::Spike {
            surrogate: Surrogate::Rectangular(1.0),
            smooth: true,
        },
    ];
    for u in units {
        // Keep inputs away from kinks (0 for relu-likes, ±α/2 for the rectangle), where a
        // central difference straddles two pieces.
        let mut x = random([4, 7], 0.05, 1.5, &mut rng);
        for (i, v) in x.data_mut::<f64>().unwrap().iter_mut().enumerate() {
            if i % 2 == 0 {
                *v = -*v;
            }
            if matches!(
                u,
                Unary::Spike {
                    surrogate: Surrogate::Rectangular(_),
                    ..
                }
            ) {
                *v *= 0.3;
            }
        }
        check(vec![("x", x)], &[true], |g, v| Ok(vec![g.unary(u, v[0])?]));
    }
}

#[test]
fn matmul_all_transposes_and_batched() {
    let mut rng = SplitMix64::new(3);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (m, k, n) = (3, 5, 4);
        let a = random(if ta { [k, m] } else { [m, k] }, -1.0, 1.0, &mut rng);
        let b = random(if tb { [n, k] } else { [k, n] }, -1.0, 1.0, &mut rng);
        check(vec![("a", a), ("b", b)], &[true, true], |g, v| {
            Ok(vec![g.matmul_t(v[0], v[1], ta, tb)?])
        });
        let a = random(if ta { [2, k, m] } else { [2, m, k] }, -1.0, 1.0, &mut rng);
        let b = random(if tb { [2, n, k] } else { [2, k, n] }, -1.0, 1.0, &mut rng);
        check(vec![("a", a), ("b", b)], &[true, true], |g, v| {
            Ok(vec![g.matmul_t(v[0], v[1], ta, tb)?])
        });
    }
}

#[test]
fn reductions() {
    let mut rng = SplitMix64::new(9);
    for r in [
        Reduce::SumLast,
        Reduce::MeanLast,
        Reduce::SumAll,
        Reduce::MeanAll,
        Reduce::SumRows,
    ] {
        let x = random([3, 2, 6], -1.0, 1.0, &mut rng);
        check(vec![("x", x)], &[true], |g, v| {
            Ok(vec![g.push1(Op::Reduce(r), &[v[0]])?])
        });
    }
}

#[test]
fn stop_gradient_blocks_and_fanout_accumulates() {
    let mut rng = SplitMix64::new(1);
    let x = random([6], -1.0, 1.0, &mut rng);
    // y = x·x + sg(x)·x: gradient 2x + sg(x) = 3x... FD sees d/dx (x² + x²) = 4x, so a
    // StopGradient that leaked would make the checks agree on the wrong rule. Check the
    // analytic value directly instead.
    let mut g = Graph::new();
    let xv = g.input("x", [6], gshn::DType::F64);
    let sq = g.mul(xv, xv).unwrap();
    let sg = g.stop_gradient(xv).unwrap();
    let t = g.mul(sg, xv).unwrap();
    let y = g.add(sq, t).unwrap();
    let l = g.sum(y).unwrap();
    let gx = g.backward(l, &[xv]).unwrap()[0];
    let mut ex = gshn::Executor::new(gshn::CpuBackend, g, &[gx]).unwrap();
    ex.set(xv, &x).unwrap();
    ex.run().unwrap();
    let got = ex.get(gx).unwrap().to_f64_vec();
    for (gv, xv) in got.iter().zip(x.to_f64_vec()) {
        assert!((gv - 3.0 * xv).abs() < 1e-12, "{gv} vs {}", 3.0 * xv);
    }
}

#[test]
fn gradcheck_rejects_a_wrong_gradient() {
    // A hard spike has derivative 0 almost everywhere, but its backward is the surrogate:
    // the check must notice the disagreement (it is what makes every other check meaningful).
    let x = gshn::Tensor::new([4], vec![0.3f64, -0.4, 0.7, -0.9]).unwrap();
    let u = Unary::Spike {
        surrogate: Surrogate::ATan(2.0),
        smooth: false,
    };
    let r = GradCheck::default().run(&[("x", x)], &[true], |g, v| Ok(vec![g.unary(u, v[0])?]));
    assert!(
        r.is_err(),
        "a surrogate gradient passed as the true derivative"
    );
}

/// A product over rows taken every `row_stride`-th from a longer batch: the same values as
/// the plain product, gradients included (finite differences), and a gradient of `b` with
/// the bits of the long batch's, zero rows between (the sum over rows in its order).
#[test]
fn matmul_with_a_row_stride() {
    use gshn::{CpuBackend, DType, Executor, Tensor};
    let mut rng = SplitMix64::new(4);
    for tb in [false, true] {
        let (m, k, n) = (4, 3, 5);
        let a = random([m, k], -1.0, 1.0, &mut rng);
        let b = random(if tb { [n, k] } else { [k, n] }, -1.0, 1.0, &mut rng);
        check(vec![("a", a), ("b", b)], &[true, true], |g, v| {
            Ok(vec![g.matmul_strided(v[0], v[1], false, tb, 3)?])
        });
    }
    // 48 rows every 24th of 1152 > 512: the GEMM adds the long batch's depth in blocks
    let (rows, k, n, stride) = (48, 128, 96, 24);
    let mut f32s =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect() };
    let (a, w, r) = (f32s(rows * k), f32s(k * n), f32s(rows * n));
    let spread = |v: &[f32], cols: usize| -> Vec<f32> {
        let mut long = vec![0f32; v.len() * stride];
        for (i, row) in v.chunks(cols).enumerate() {
            long[i * stride * cols..][..cols].copy_from_slice(row);
        }
        long
    };
    // d/dw Σ r ⊙ (a w), as bits
    let gradient = |a: Vec<f32>, r: Vec<f32>, rows: usize, row_stride: usize| -> Vec<u32> {
        let mut g = Graph::new();
        let (av, wv) = (
            g.input("a", [rows, k], DType::F32),
            g.param("w", [k, n], DType::F32),
        );
        let rv = g.input("r", [rows, n], DType::F32);
        let y = g.matmul_strided(av, wv, false, false, row_stride).unwrap();
        let yr = g.mul(y, rv).unwrap();
        let loss = g.sum(yr).unwrap();
        let gw = g.backward(loss, &[wv]).unwrap()[0];
        let mut ex = Executor::new(CpuBackend, g, &[gw]).unwrap();
        ex.set(av, &Tensor::new([rows, k], a).unwrap()).unwrap();
        ex.set(wv, &Tensor::new([k, n], w.clone()).unwrap())
            .unwrap();
        ex.set(rv, &Tensor::new([rows, n], r).unwrap()).unwrap();
        ex.run().unwrap();
        let t = ex.get(gw).unwrap();
        t.data::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let long = gradient(spread(&a, k), spread(&r, n), rows * stride, 1);
    assert_eq!(gradient(a.clone(), r.clone(), rows, stride), long);
    // the test can fail: the rows alone add in another order
    assert_ne!(gradient(a, r, rows, 1), long);

    let mut g = Graph::new();
    let x = g.input("x", [4, 4], DType::F32);
    let x3 = g.input("x3", [2, 4, 4], DType::F32);
    for (a, ta, stride, why) in [
        (x, false, 0, "at least 1"),
        (x3, false, 2, "rank-2"),
        (x, true, 2, "not transposed"),
    ] {
        let e = g
            .matmul_strided(a, a, ta, false, stride)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
    }
}
