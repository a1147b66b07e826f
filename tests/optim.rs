//! AdamW and global-norm clipping: an independent f64 reference over several steps, clipping,
//! decoupled weight decay, state kept across runs, non-finite gradients, typed errors, and a
//! full training graph (forward + backward + ClipScale + AdamW) minimising a quadratic.

use gshn::graph::gradcheck::random;
use gshn::ops::optim::OptimizerValues;
use gshn::ops::AdamWConfig;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor, ValueId};

/// One AdamW step written from the formula in DESIGN/PyTorch docs, in f64:
/// p ← p − lr·wd·p; m ← β1 m + (1−β1) ĝ; v ← β2 v + (1−β2) ĝ²;
/// p ← p − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps),  ĝ = g · scale.
#[allow(clippy::too_many_arguments)]
fn adamw_ref(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    lr: f64,
    t: u64,
    c: &AdamWConfig,
    scale: f64,
) {
    for i in 0..p.len() {
        let gh = g[i] * scale;
        p[i] -= lr * c.weight_decay * p[i];
        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gh;
        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gh * gh;
        let mhat = m[i] / (1.0 - c.beta1.powi(t as i32));
        let vhat = v[i] / (1.0 - c.beta2.powi(t as i32));
        p[i] -= lr * mhat / (vhat.sqrt() + c.eps);
    }
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

struct Setup {
    ex: Executor<CpuBackend>,
    params: Vec<ValueId>,
    grads: Vec<ValueId>,
    opt: OptimizerValues,
}

/// Params of the given shapes (f64), gradients fed as inputs, one AdamW step node per param.
fn setup(shapes: &[Vec<usize>], cfg: AdamWConfig, max_norm: Option<f64>) -> Setup {
    let mut g = Graph::new();
    let params: Vec<ValueId> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.param(format!("p{i}"), s.clone(), DType::F64))
        .collect();
    let grads: Vec<ValueId> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.input(format!("g{i}"), s.clone(), DType::F64))
        .collect();
    let opt = g.adamw_step(&params, &grads, cfg, max_norm).unwrap();
    let ex = Executor::new(CpuBackend, g, &[opt.clip_scale, opt.grad_norm]).unwrap();
    Setup {
        ex,
        params,
        grads,
        opt,
    }
}

#[test]
fn adamw_matches_reference_over_steps_and_keeps_state() {
    let cfg = AdamWConfig {
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-3,
        weight_decay: 0.1,
    };
    let shapes = vec![vec![5], vec![2, 3]];
    let mut s = setup(&shapes, cfg, None);
    let mut rng = SplitMix64::new(1);
    let mut refs: Vec<[Vec<f64>; 3]> = Vec::new();
    for (&p, sh) in s.params.iter().zip(&shapes) {
        let t = random(sh.clone(), -1.0, 1.0, &mut rng);
        s.ex.set(p, &t).unwrap();
        let n = t.numel();
        refs.push([t.to_f64_vec(), vec![0.0; n], vec![0.0; n]]);
    }
    s.opt.zero_state(&mut s.ex).unwrap();
    // Three steps with different learning rates and fresh gradients: state carries over.
    for (step, lr) in [(1u64, 0.1), (2, 0.05), (3, 0.2)] {
        for (k, (&gv, sh)) in s.grads.iter().zip(&shapes).enumerate() {
            let t = random(sh.clone(), -2.0, 2.0, &mut rng);
            s.ex.set(gv, &t).unwrap();
            let [p, m, v] = &mut refs[k];
            adamw_ref(p, m, v, &t.to_f64_vec(), lr, step, &cfg, 1.0);
        }
        s.opt.set_hyper(&mut s.ex, lr, step).unwrap();
        s.ex.run().unwrap();
        assert_eq!(s.ex.get(s.opt.clip_scale).unwrap().to_f64_vec(), vec![1.0]);
        for (k, r) in refs.iter().enumerate() {
            let got =
                [s.params[k], s.opt.m[k], s.opt.v[k]].map(|id| s.ex.get(id).unwrap().to_f64_vec());
            for (j, what) in ["p", "m", "v"].iter().enumerate() {
                close(&got[j], &r[j], 1e-13, &format!("step {step} {what}{k}"));
            }
        }
    }
    // State names follow the parameter names.
    let gr = s.ex.graph();
    assert_eq!(gr.find("adam_m.p1"), Some(s.opt.m[1]));
    assert_eq!(gr.find("adam_v.p0"), Some(s.opt.v[0]));
}

#[test]
fn adamw_f32_matches_reference() {
    let cfg = AdamWConfig::default();
    let mut g = Graph::new();
    let p = g.param("w", [1000], DType::F32);
    let gi = g.input("gw", [1000], DType::F32);
    let opt = g.adamw_step(&[p], &[gi], cfg, None).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[]).unwrap();
    let mut rng = SplitMix64::new(2);
    let p0 = random([1000], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    ex.set(p, &p0).unwrap();
    opt.zero_state(&mut ex).unwrap();
    let mut r = [p0.to_f64_vec(), vec![0.0; 1000], vec![0.0; 1000]];
    for step in 1..=3 {
        let gt = random([1000], -1.0, 1.0, &mut rng)
            .to_dtype(DType::F32)
            .unwrap();
        ex.set(gi, &gt).unwrap();
        opt.set_hyper(&mut ex, 1e-2, step).unwrap();
        ex.run().unwrap();
        let [a, b, c] = &mut r;
        adamw_ref(a, b, c, &gt.to_f64_vec(), 1e-2, step, &cfg, 1.0);
    }
    close(&ex.get(p).unwrap().to_f64_vec(), &r[0], 1e-6, "f32 p");
}

#[test]
fn clipping_scales_the_gradient() {
    let cfg = AdamWConfig {
        eps: 1e-2,
        ..Default::default()
    };
    let shapes = vec![vec![3], vec![2, 2]];
    let max_norm = 0.5;
    let mut s = setup(&shapes, cfg, Some(max_norm));
    let mut rng = SplitMix64::new(3);
    let mut refs = Vec::new();
    let mut gs = Vec::new();
    for (k, sh) in shapes.iter().enumerate() {
        let p = random(sh.clone(), -1.0, 1.0, &mut rng);
        let gt = random(sh.clone(), 1.0, 2.0, &mut rng);
        s.ex.set(s.params[k], &p).unwrap();
        s.ex.set(s.grads[k], &gt).unwrap();
        let n = p.numel();
        refs.push([p.to_f64_vec(), vec![0.0; n], vec![0.0; n]]);
        gs.push(gt.to_f64_vec());
    }
    let norm = gs.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    assert!(norm > 2.0);
    let scale = max_norm / (norm + 1e-6);
    s.opt.zero_state(&mut s.ex).unwrap();
    s.opt.set_hyper(&mut s.ex, 0.1, 1).unwrap();
    s.ex.run().unwrap();
    close(
        &s.ex.get(s.opt.grad_norm).unwrap().to_f64_vec(),
        &[norm],
        1e-15,
        "norm",
    );
    close(
        &s.ex.get(s.opt.clip_scale).unwrap().to_f64_vec(),
        &[scale],
        1e-15,
        "scale",
    );
    for k in 0..shapes.len() {
        let [p, m, v] = &mut refs[k];
        adamw_ref(p, m, v, &gs[k], 0.1, 1, &cfg, scale);
        close(&s.ex.get(s.opt.m[k]).unwrap().to_f64_vec(), m, 1e-14, "m");
        close(&s.ex.get(s.opt.v[k]).unwrap().to_f64_vec(), v, 1e-14, "v");
        close(&s.ex.get(s.params[k]).unwrap().to_f64_vec(), p, 1e-14, "p");
    }
}

#[test]
fn weight_decay_is_decoupled() {
    // A zero gradient leaves the moments at 0, so the only change is p · (1 − lr·wd)
    // (coupled L2 decay would instead feed wd·p through the Adam normalisation, moving p by
    // about lr regardless of wd).
    let cfg = AdamWConfig {
        weight_decay: 0.3,
        ..Default::default()
    };
    let mut s = setup(&[vec![4]], cfg, Some(1.0));
    let p0 = vec![1.0, -2.0, 0.5, 3.0];
    s.ex.set(s.params[0], &Tensor::new([4], p0.clone()).unwrap())
        .unwrap();
    s.ex.set(s.grads[0], &Tensor::zeros([4], DType::F64))
        .unwrap();
    s.opt.zero_state(&mut s.ex).unwrap();
    s.opt.set_hyper(&mut s.ex, 0.1, 1).unwrap();
    s.ex.run().unwrap();
    let got = s.ex.get(s.params[0]).unwrap().to_f64_vec();
    let want: Vec<f64> = p0.iter().map(|p| p * (1.0 - 0.1 * 0.3)).collect();
    assert_eq!(got, want);
    assert_eq!(s.ex.get(s.opt.m[0]).unwrap().to_f64_vec(), vec![0.0; 4]);
}

#[test]
fn clip_scale_values_and_non_finite_gradients_skip_the_step() {
    // Norm over several tensors, one big enough for the parallel path, f32 data.
    let mut g = Graph::new();
    let a = g.input("a", [300, 200], DType::F32);
    let b = g.input("b", [7], DType::F32);
    let (scale, norm) = g.clip_scale(&[a, b], 1e9).unwrap();
    let (scale2, _) = g.clip_scale(&[b], 0.1).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[scale, norm, scale2]).unwrap();
    let mut rng = SplitMix64::new(4);
    let at = random([300, 200], -1e3, 1e3, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let bt = random([7], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    ex.set(a, &at).unwrap();
    ex.set(b, &bt).unwrap();
    ex.run().unwrap();
    let want = at
        .to_f64_vec()
        .iter()
        .chain(&bt.to_f64_vec())
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt();
    close(&ex.get(norm).unwrap().to_f64_vec(), &[want], 1e-7, "norm");
    assert_eq!(ex.get(scale).unwrap().to_f64_vec(), vec![1.0]);
    let nb = bt.to_f64_vec().iter().map(|x| x * x).sum::<f64>().sqrt();
    close(
        &ex.get(scale2).unwrap().to_f64_vec(),
        &[0.1 / (nb + 1e-6)],
        1e-6,
        "scale",
    );

    // f32 gradients whose squares overflow f32 (|g| = 1e20): the norm is summed in f64, so the
    // step is clipped (a tiny positive scale), not skipped.
    let mut g = Graph::new();
    let h = g.input("h", [4], DType::F32);
    let (scale, norm) = g.clip_scale(&[h], 1.0).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[scale, norm]).unwrap();
    let big = Tensor::new([4], vec![1e20f32, -1e20, 1e20, -1e20]).unwrap();
    ex.set(h, &big).unwrap();
    ex.run().unwrap();
    let (n, k) = (
        ex.get(norm).unwrap().to_f64_vec()[0],
        ex.get(scale).unwrap().to_f64_vec()[0],
    );
    assert!((n / 2e20 - 1.0).abs() < 1e-6, "norm {n}");
    assert!((k / 5e-21 - 1.0).abs() < 1e-6, "scale {k}");

    // A NaN or inf gradient: scale 0, the norm reported as is, p/m/v untouched.
    for bad in [f64::NAN, f64::INFINITY] {
        let mut s = setup(&[vec![3], vec![2]], AdamWConfig::default(), None);
        let p0 = Tensor::new([3], vec![1.0, 2.0, 3.0]).unwrap();
        s.ex.set(s.params[0], &p0).unwrap();
        s.ex.set(s.params[1], &Tensor::new([2], vec![4.0, 5.0]).unwrap())
            .unwrap();
        s.ex.set(s.grads[0], &Tensor::new([3], vec![0.1, 0.2, 0.3]).unwrap())
            .unwrap();
        s.ex.set(s.grads[1], &Tensor::new([2], vec![bad, 1.0]).unwrap())
            .unwrap();
        s.opt.zero_state(&mut s.ex).unwrap();
        s.opt.set_hyper(&mut s.ex, 0.1, 1).unwrap();
        s.ex.run().unwrap();
        assert_eq!(s.ex.get(s.opt.clip_scale).unwrap().to_f64_vec(), vec![0.0]);
        let n = s.ex.get(s.opt.grad_norm).unwrap().to_f64_vec()[0];
        assert!(!n.is_finite(), "norm {n} should be reported non-finite");
        assert_eq!(s.ex.get(s.params[0]).unwrap(), p0);
        assert_eq!(s.ex.get(s.opt.m[0]).unwrap().to_f64_vec(), vec![0.0; 3]);
    }
}

#[test]
fn optimizer_errors_are_typed() {
    // step 0 is a run-time Error::Invalid.
    let mut s = setup(&[vec![2]], AdamWConfig::default(), None);
    s.ex.set(s.params[0], &Tensor::new([2], vec![1.0, 2.0]).unwrap())
        .unwrap();
    s.ex.set(s.grads[0], &Tensor::new([2], vec![1.0, 2.0]).unwrap())
        .unwrap();
    s.opt.zero_state(&mut s.ex).unwrap();
    s.opt.set_hyper(&mut s.ex, 0.1, 0).unwrap();
    assert!(matches!(
        s.ex.run(),
        Err(Error::Invalid { op: "adamw", .. })
    ));

    let mut g = Graph::new();
    let p = g.param("p", [3], DType::F64);
    let q = g.param("q", [2], DType::F64);
    let x = g.input("x", [3], DType::F64);
    let gp = g.input("gp", [3], DType::F64);
    let gq = g.input("gq", [3], DType::F64);
    let cfg = AdamWConfig::default();
    assert!(matches!(
        g.adamw_step(&[p, q], &[gp], cfg, None),
        Err(Error::Graph(_))
    ));
    assert!(matches!(
        g.adamw_step(&[x], &[gp], cfg, None),
        Err(Error::Graph(_))
    ));
    assert!(matches!(
        g.adamw_step(&[q], &[gq], cfg, None),
        Err(Error::Shape { .. })
    ));
    let bad = AdamWConfig { beta2: 1.0, ..cfg };
    assert!(matches!(
        g.adamw_step(&[p], &[gp], bad, None),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(g.clip_scale(&[], 1.0), Err(Error::Shape { .. })));
    assert!(matches!(
        g.clip_scale(&[gp], 0.0),
        Err(Error::Invalid { .. })
    ));
    let gi = g.input("gi", [3], DType::I32);
    assert!(matches!(g.clip_scale(&[gi], 1.0), Err(Error::Shape { .. })));
    assert!(g.adamw_step(&[p], &[gp], cfg, Some(1.0)).is_ok());
}

#[test]
fn full_graph_minimises_a_quadratic() {
    // loss = mean((x W + b − y)²) with y = x W* + b*: forward, backward, ClipScale and AdamW
    // in ONE graph, in f32, run 300 times.
    let (n, din, dout) = (32usize, 4usize, 3usize);
    let mut rng = SplitMix64::new(9);
    let mut g = Graph::new();
    let w = g.param("w", [din, dout], DType::F32);
    let b = g.param("b", [dout], DType::F32);
    let x = g.input("x", [n, din], DType::F32);
    let y = g.input("y", [n, dout], DType::F32);
    let pred = g.linear(x, w, Some(b)).unwrap();
    let d = g.sub(pred, y).unwrap();
    let sq = g.mul(d, d).unwrap();
    let loss = g.mean(sq).unwrap();
    let grads = g.backward(loss, &[w, b]).unwrap();
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..Default::default()
    };
    let opt = g.adamw_step(&[w, b], &grads, cfg, Some(1.0)).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[loss, opt.grad_norm]).unwrap();

    let f32t = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let xt = random([n, din], -1.0, 1.0, &mut rng);
    let wstar = random([din, dout], -2.0, 2.0, &mut rng);
    let bstar = random([dout], -1.0, 1.0, &mut rng);
    let (xv, wv, bv) = (xt.to_f64_vec(), wstar.to_f64_vec(), bstar.to_f64_vec());
    let yv: Vec<f64> = (0..n * dout)
        .map(|i| {
            let (r, c) = (i / dout, i % dout);
            bv[c]
                + (0..din)
                    .map(|k| xv[r * din + k] * wv[k * dout + c])
                    .sum::<f64>()
        })
        .collect();
    ex.set(x, &f32t(xt)).unwrap();
    ex.set(y, &f32t(Tensor::new([n, dout], yv).unwrap()))
        .unwrap();
    ex.set(w, &Tensor::zeros([din, dout], DType::F32)).unwrap();
    ex.set(b, &Tensor::zeros([dout], DType::F32)).unwrap();
    opt.zero_state(&mut ex).unwrap();
    let mut losses = Vec::new();
    for step in 1..=300 {
        opt.set_hyper(&mut ex, 0.05, step).unwrap();
        ex.run().unwrap();
        losses.push(ex.get(loss).unwrap().to_f64_vec()[0]);
        assert!(ex.get(opt.grad_norm).unwrap().to_f64_vec()[0].is_finite());
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last * 100.0 < first,
        "loss went from {first} to {last} (needs > 100× drop)"
    );
}
