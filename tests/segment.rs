//! Segment mean pooling (DESIGN §3.5): FD gradients with empty segments and void rows, a
//! plain-loop reference, equality with the one-hot matmul composition, typed errors,
//! determinism across thread counts.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor};

/// Random ids in -1..segments, leaving some segments empty (every id ≡ 2 mod 3 is skipped).
fn random_seg(p: usize, segments: usize, rng: &mut SplitMix64) -> Vec<i32> {
    (0..p)
        .map(|_| loop {
            let id = rng.below(segments + 1) as i32 - 1;
            if id < 0 || id % 3 != 2 {
                break id;
            }
        })
        .collect()
}

fn seg_tensor(seg: &[i32]) -> Tensor {
    Tensor::new([seg.len()], seg.to_vec()).unwrap()
}

/// Forward (mean, count) and, with `gy`, the gradient of Σ gy ⊙ mean w.r.t. x.
fn run(
    x: &Tensor,
    seg: &[i32],
    segments: usize,
    gy: Option<&Tensor>,
) -> gshn::Result<(Tensor, Tensor, Option<Tensor>)> {
    let mut g = Graph::new();
    let xv = g.input("x", x.shape().clone(), x.dtype());
    let sv = g.input("seg", [seg.len()], DType::I32);
    let out = g.segment_mean(xv, sv, segments)?;
    let mut fetch = vec![out.mean, out.count];
    let mut wv = None;
    if let Some(w) = gy {
        let wi = g.input("w", w.shape().clone(), w.dtype());
        let prod = g.mul(out.mean, wi)?;
        let l = g.sum(prod)?;
        fetch.push(g.backward(l, &[xv])?[0]);
        wv = Some(wi);
    }
    let mut ex = Executor::new(CpuBackend, g, &fetch)?;
    ex.set(xv, x)?;
    ex.set(sv, &seg_tensor(seg))?;
    if let (Some(wi), Some(w)) = (wv, gy) {
        ex.set(wi, w)?;
    }
    ex.run()?;
    let gx = if gy.is_some() {
        Some(ex.get(fetch[2])?)
    } else {
        None
    };
    Ok((ex.get(fetch[0])?, ex.get(fetch[1])?, gx))
}

/// Plain loops in f64.
fn reference(x: &[f64], c: usize, seg: &[i32], segments: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0; segments * c];
    let mut count = vec![0.0; segments];
    for (p, &id) in seg.iter().enumerate() {
        if id < 0 {
            continue;
        }
        let k = id as usize;
        count[k] += 1.0;
        for j in 0..c {
            sum[k * c + j] += x[p * c + j];
        }
    }
    for k in 0..segments {
        if count[k] > 0.0 {
            for j in 0..c {
                sum[k * c + j] /= count[k];
            }
        }
    }
    (sum, count)
}

fn close(x: &[f64], y: &[f64], tol: f64, what: &str) {
    assert_eq!(x.len(), y.len(), "{what}: lengths");
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()) && a.is_finite(),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn fd_gradient_with_empty_segments_and_void_rows() {
    for seed in 0..4u64 {
        let mut rng = SplitMix64::new(seed);
        let (p, c, s) = (5 + rng.below(20), 1 + rng.below(6), 2 + rng.below(7));
        let seg = random_seg(p, s, &mut rng);
        let x = random([p, c], -2.0, 2.0, &mut rng);
        let inputs = [("x", x), ("seg", seg_tensor(&seg))];
        let reports = GradCheck {
            seed,
            ..GradCheck::default()
        }
        .run(&inputs, &[true, false], |g, v| {
            let o = g.segment_mean(v[0], v[1], s)?;
            Ok(vec![o.mean, o.count])
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(reports.len(), 1);
        assert!(reports[0].checked > 0);
    }
}

#[test]
fn empty_segments_and_void_rows_give_zeros_not_nan() {
    let x = Tensor::new([4, 2], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
    let seg = [0, -1, 0, 2];
    let gy = Tensor::new([4, 2], vec![1.0f64; 8]).unwrap();
    let (y, n, gx) = run(&x, &seg, 4, Some(&gy)).unwrap();
    assert_eq!(y.to_f64_vec(), vec![3.0, 4.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0]);
    assert_eq!(n.to_f64_vec(), vec![2.0, 0.0, 1.0, 0.0]);
    assert_eq!(
        gx.unwrap().to_f64_vec(),
        vec![0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    );
}

#[test]
fn equals_plain_loop_reference_f64_and_f32() {
    let mut rng = SplitMix64::new(11);
    // Small (serial path) and large (parallel path) sizes.
    for &(p, c, s) in &[(1, 1, 1), (37, 5, 9), (20000, 3, 50), (4096, 16, 300)] {
        let seg = random_seg(p, s, &mut rng);
        let x = random([p, c], -1.0, 1.0, &mut rng);
        let (want_y, want_n) = reference(&x.to_f64_vec(), c, &seg, s);
        let (y, n, _) = run(&x, &seg, s, None).unwrap();
        close(&y.to_f64_vec(), &want_y, 1e-12, "mean f64");
        assert_eq!(n.to_f64_vec(), want_n);
        let (y, n, _) = run(&x.to_dtype(DType::F32).unwrap(), &seg, s, None).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(n.dtype(), DType::F32);
        close(&y.to_f64_vec(), &want_y, 1e-5, "mean f32");
        assert_eq!(n.to_f64_vec(), want_n);
    }
}

#[test]
fn equals_one_hot_matmul_composition_forward_and_gradient() {
    let mut rng = SplitMix64::new(12);
    let (p, c, s) = (60, 7, 10);
    let seg = random_seg(p, s, &mut rng);
    let x = random([p, c], -1.0, 1.0, &mut rng);
    let gy = random([s, c], -1.0, 1.0, &mut rng);
    // M[k, p] = 1/count_k if seg[p] = k (0 rows for empty segments).
    let mut counts = vec![0.0f64; s];
    for &id in seg.iter().filter(|&&id| id >= 0) {
        counts[id as usize] += 1.0;
    }
    let mut m = vec![0.0f64; s * p];
    for (j, &id) in seg.iter().enumerate() {
        if id >= 0 {
            m[id as usize * p + j] = 1.0 / counts[id as usize];
        }
    }
    let m = Tensor::new([s, p], m).unwrap();

    let mut g = Graph::new();
    let xv = g.input("x", [p, c], DType::F64);
    let mv = g.input("m", [s, p], DType::F64);
    let wv = g.input("w", [s, c], DType::F64);
    let yc = g.matmul(mv, xv).unwrap();
    let t = g.mul(yc, wv).unwrap();
    let l = g.sum(t).unwrap();
    let gxc = g.backward(l, &[xv]).unwrap()[0];
    let mut ex = Executor::new(CpuBackend, g, &[yc, gxc]).unwrap();
    ex.set(xv, &x).unwrap();
    ex.set(mv, &m).unwrap();
    ex.set(wv, &gy).unwrap();
    ex.run().unwrap();

    let (y, _, gx) = run(&x, &seg, s, Some(&gy)).unwrap();
    close(
        &y.to_f64_vec(),
        &ex.get(yc).unwrap().to_f64_vec(),
        1e-12,
        "mean",
    );
    close(
        &gx.unwrap().to_f64_vec(),
        &ex.get(gxc).unwrap().to_f64_vec(),
        1e-12,
        "gx",
    );
}

#[test]
fn out_of_range_ids_are_typed_errors() {
    let x = Tensor::new([3, 2], vec![0.0f32; 6]).unwrap();
    for bad in [[0, 4, 1], [0, -2, 1], [i32::MIN, 0, 0], [i32::MAX, 0, 0]] {
        match run(&x, &bad, 4, None) {
            Err(Error::Invalid { op, msg }) => {
                assert_eq!(op, "segment_mean");
                assert!(msg.contains("seg["), "{msg}");
            }
            other => panic!("{bad:?}: expected an invalid-input error, got {other:?}"),
        }
    }
    // No segments at all: every non-void id is out of range; all-void is fine.
    assert!(matches!(
        run(&x, &[0, -1, -1], 0, None),
        Err(Error::Invalid { .. })
    ));
    let (y, n, _) = run(&x, &[-1, -1, -1], 0, None).unwrap();
    assert_eq!((y.numel(), n.numel()), (0, 0));
}

#[test]
fn shape_errors_are_typed() {
    let mut g = Graph::new();
    let x = g.input("x", [5, 3], DType::F32);
    let x1 = g.input("x1", [5], DType::F32);
    let seg = g.input("seg", [5], DType::I32);
    let seg_short = g.input("seg_short", [4], DType::I32);
    let seg_f = g.input("seg_f", [5], DType::F32);
    let xi = g.input("xi", [5, 3], DType::I32);
    for (xv, sv) in [(x, seg_short), (x, seg_f), (x1, seg), (xi, seg)] {
        match g.segment_mean(xv, sv, 4) {
            Err(Error::Shape { op, .. }) => assert_eq!(op, "segment_mean"),
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
}

#[test]
fn deterministic_across_thread_counts() {
    let mut rng = SplitMix64::new(13);
    let (p, c, s) = (50000, 8, 700);
    let seg = random_seg(p, s, &mut rng);
    let x = random([p, c], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let gy = random([s, c], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let runs: Vec<_> = [1, 2, 4]
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| run(&x, &seg, s, Some(&gy)).unwrap())
        })
        .collect();
    for r in &runs[1..] {
        assert_eq!(r, &runs[0], "results depend on the thread count");
    }
}

/// The documented order, bit for bit: each segment adds its rows in increasing row order, in
/// the tensor's dtype, then divides by its count — for any thread count and any spread of the
/// rows over the segments (one segment holding a third of them, empty segments, void rows).
#[test]
fn f32_sums_each_segment_in_row_order_for_any_thread_count() {
    let mut rng = SplitMix64::new(17);
    let (p, c, s) = (40000, 5, 64);
    let mut seg = random_seg(p, s, &mut rng);
    seg.iter_mut().step_by(3).for_each(|id| *id = 7);
    let x = random([p, c], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let xv: Vec<f32> = x.to_f64_vec().iter().map(|&v| v as f32).collect();
    let (mut want, mut n) = (vec![0f32; s * c], vec![0usize; s]);
    for (row, &id) in seg.iter().enumerate() {
        if id >= 0 {
            let k = id as usize;
            n[k] += 1;
            for j in 0..c {
                want[k * c + j] += xv[row * c + j];
            }
        }
    }
    for (k, &n) in n.iter().enumerate() {
        if n > 0 {
            want[k * c..(k + 1) * c]
                .iter_mut()
                .for_each(|v| *v /= n as f32);
        }
    }
    for threads in [1, 2, 3, 7] {
        let (y, _, _) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(&x, &seg, s, None).unwrap());
        let got: Vec<f32> = y.to_f64_vec().iter().map(|&v| v as f32).collect();
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{threads} threads: not the row-order sums");
    }
}
