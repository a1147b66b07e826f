//! CUDA ↔ CPU parity for every op, forward and backward (DESIGN §7).
//!
//! Each case runs one op on both backends through `Backend::execute` on the same host tensors
//! (random, never zero), with the CUDA outputs poisoned with NaN first (so an unwritten element
//! fails), sizes that are not multiples of the block sizes, graphs with zero in-degree nodes and
//! with no edge, InfoNCE at B = 1, 7, 1000, 4097, LIF with every option. Pass: fp32
//! `‖out − ref‖ / ‖ref‖ ≤ 1e-5` (f64: 1e-10), spikes exactly equal; an f32 output over 1e-5
//! (an ill-conditioned reduction) passes only if it is within 2× the CPU f32 result's own
//! distance from the f64 truth and under 1e-3 (see `check_all`). One executor-level test
//! runs a small graph on both backends end to end.
//!
//! Without a GPU every test prints `skipped: no CUDA device` and passes. With
//! `GSHN_PARITY_REPORT=<file>` each comparison appends one JSON line
//! `{"name", "pass", "rel_err", "note"}` (scripts/gpu_run.sh collects them).
#![cfg(feature = "cuda")]

use gshn::backend::{cuda_available, execute_buffers, Backend, CudaBackend};
use gshn::ops::{
    AdamWConfig, CsrGraph, Family, GatAttrs, InfoNceAttrs, LifConfig, Op, Precision, Reduce,
    Surrogate, Unary,
};
use gshn::tensor::{DType, Meta, Shape, Tensor};
use gshn::util::rng::SplitMix64;
use gshn::CpuBackend;
use std::io::Write;

/// The GPU backend, or `None` (with one line saying so) on a machine without one. With
/// `GSHN_REQUIRE_CUDA=1` (the GPU session's script sets it) no GPU is a failure: a machine whose
/// driver or libraries fail to load must not pass every test by skipping it.
fn cuda() -> Option<CudaBackend> {
    let required = std::env::var("GSHN_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let backend = match cuda_available() {
        false => Err("no CUDA device".to_string()),
        true => CudaBackend::new(0).map_err(|e| format!("no CUDA device ({e})")),
    };
    match backend {
        Ok(b) => Some(b),
        Err(e) if required => panic!("GSHN_REQUIRE_CUDA=1 but {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

// ---- inputs ---------------------------------------------------------------------------------

fn rand_t(rng: &mut SplitMix64, shape: &[usize], dt: DType, lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let x = rng.range(lo, hi);
            if x.abs() < 1e-3 {
                0.5
            } else {
                x
            }
        })
        .collect();
    match dt {
        DType::F32 => Tensor::new(shape.to_vec(), v.iter().map(|&x| x as f32).collect()).unwrap(),
        DType::F64 => Tensor::new(shape.to_vec(), v).unwrap(),
        DType::I32 => panic!("use idx"),
        d => Tensor::new(shape.to_vec(), v).unwrap().to_dtype(d).unwrap(),
    }
}
fn rnd(rng: &mut SplitMix64, shape: &[usize], dt: DType) -> Tensor {
    rand_t(rng, shape, dt, -1.0, 1.0)
}
fn idx(v: Vec<i32>) -> Tensor {
    let n = v.len();
    Tensor::new([n], v).unwrap()
}
fn scalar(v: f64, dt: DType) -> Tensor {
    match dt {
        DType::F32 => Tensor::scalar(v as f32),
        _ => Tensor::scalar(v),
    }
}
fn meta(shape: &[usize], dt: DType) -> Meta {
    Meta::new(shape.to_vec(), dt)
}

/// A random graph (CSR by destination + CSC), with `zero_frac` of the nodes having no in-edge.
fn graph(rng: &mut SplitMix64, n: usize, max_deg: usize, zero_frac: f64) -> [Tensor; 4] {
    let mut row_ptr = vec![0i32];
    let mut src = Vec::new();
    for _ in 0..n {
        let deg = if rng.uniform() < zero_frac {
            0
        } else {
            1 + rng.below(max_deg)
        };
        for _ in 0..deg {
            src.push(rng.below(n) as i32);
        }
        row_ptr.push(src.len() as i32);
    }
    let g = CsrGraph::from_csr(row_ptr, src).unwrap();
    [g.row_ptr, g.src, g.col_ptr, g.col_edge]
}

// ---- running one op on both backends --------------------------------------------------------

struct Case {
    name: String,
    op: Op,
    inputs: Vec<Tensor>,
    outs: Vec<Meta>,
    /// Outputs (by index) compared exactly (spikes).
    exact: Vec<usize>,
    /// The f32 tolerance, when not 1e-5 (InfoNCE's tf32 / bf16 modes, where an operand
    /// rounded on the other side of a tie moves a result by one tf32 / bf16 step).
    tol: Option<f64>,
}

fn case(name: impl Into<String>, op: Op, inputs: Vec<Tensor>, outs: Vec<Meta>) -> Case {
    Case {
        name: name.into(),
        op,
        inputs,
        outs,
        exact: vec![],
        tol: None,
    }
}

fn run<B: Backend>(b: &B, c: &Case, poison: bool) -> gshn::Result<Vec<Tensor>> {
    let m = c.op.mutated_inputs();
    let mut ins = Vec::new();
    for t in &c.inputs[m..] {
        let mut buf = b.alloc(t.dtype(), t.numel())?;
        b.write(&mut buf, t)?;
        ins.push(buf);
    }
    let mut outs = Vec::new();
    for (i, o) in c.outs.iter().enumerate() {
        let mut buf = b.alloc(o.dtype, o.shape.numel())?;
        if i < m {
            b.write(&mut buf, &c.inputs[i])?;
        } else if poison {
            let n = o.shape.numel();
            let t = match o.dtype {
                DType::F32 => Tensor::new(o.shape.clone(), vec![f32::NAN; n])?,
                DType::F64 => Tensor::new(o.shape.clone(), vec![f64::NAN; n])?,
                DType::I32 => Tensor::new(o.shape.clone(), vec![i32::MIN; n])?,
                DType::U8 => Tensor::new(o.shape.clone(), vec![0xa5u8; n])?,
                d => Tensor::new(o.shape.clone(), vec![f32::NAN; n])?.to_dtype(d)?,
            };
            b.write(&mut buf, &t)?;
        }
        outs.push(buf);
    }
    let in_metas: Vec<Meta> = c.inputs[m..]
        .iter()
        .map(|t| Meta::new(t.shape().clone(), t.dtype()))
        .collect();
    execute_buffers(b, &c.op, ins.iter().zip(&in_metas), &mut outs, &c.outs)?;
    b.synchronize()?;
    outs.iter()
        .zip(&c.outs)
        .map(|(buf, o)| b.read(buf, &o.shape, o.dtype))
        .collect()
}

fn report(name: &str, pass: bool, rel: f64, note: &str) {
    if let Ok(path) = std::env::var("GSHN_PARITY_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let rel = if rel.is_finite() {
                format!("{rel:e}")
            } else {
                "null".into()
            };
            let _ = writeln!(
                f,
                "{{\"name\":{name:?},\"pass\":{pass},\"rel_err\":{rel},\"note\":{note:?}}}"
            );
        }
    }
}

/// Relative error ‖a − b‖/‖b‖ (absolute when ‖b‖ = 0); NaN anywhere gives +inf.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    if g.len() != w.len() || g.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = w.iter().map(|b| b * b).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// f32 results read back from the device against the CPU's: reported, and asserted within
/// `tol` (norm-wise relative error).
fn close_f32(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let g = Tensor::new([got.len()], got.to_vec()).unwrap();
    let w = Tensor::new([want.len()], want.to_vec()).unwrap();
    let e = rel_err(&g, &w);
    report(what, e <= tol, e, "");
    assert!(e <= tol, "{what}: rel err {e}");
}

/// The first element of a half-precision output further from the reference than four units in
/// the last place of the reference element's type, plus 1e-3 of the reference's RMS (for
/// elements near zero after cancellation), with its distance; `None` when there is none.
fn half_outlier(got: &Tensor, want: &Tensor) -> Option<(usize, f64)> {
    // mantissa bits and the smallest subnormal (the spacing below the normal range)
    let (mantissa, tiny) = match got.dtype() {
        DType::BF16 => (7, 2f64.powi(-133)),
        _ => (10, 2f64.powi(-24)),
    };
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let rms = (w.iter().map(|x| x * x).sum::<f64>() / w.len().max(1) as f64).sqrt();
    let ulp = |x: f64| {
        let e = x.abs().max(f64::MIN_POSITIVE).log2().floor() as i32;
        2f64.powi(e - mantissa).max(tiny)
    };
    (g.iter().zip(&w).enumerate())
        .map(|(i, (a, b))| (i, (a - b).abs(), 4.0 * ulp(*b) + 1e-3 * rms))
        .find(|&(_, d, bound)| d.is_nan() || d > bound)
        .map(|(i, d, _)| (i, d))
}

/// Runs here (no GPU): the element check passes a result one rounding step off everywhere and
/// fails one element off among 40,000, which the norm-wise tolerance lets through.
#[test]
fn half_outputs_are_judged_element_by_element() {
    for dt in [DType::BF16, DType::F16] {
        let mut r = SplitMix64::new(15);
        let want = rand_t(&mut r, &[40_000], dt, -2.0, 2.0);
        let step = if dt == DType::BF16 {
            2f64.powi(-7)
        } else {
            2f64.powi(-10)
        };
        let w = want.to_f64_vec();
        let nudged: Vec<f64> = w.iter().map(|x| x * (1.0 + step)).collect();
        let nudged = Tensor::new([w.len()], nudged)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        assert_eq!(half_outlier(&nudged, &want), None, "{dt:?}");
        let mut one_off = w.clone();
        one_off[39_999] += 0.2;
        let one_off = Tensor::new([w.len()], one_off)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        assert!(
            rel_err(&one_off, &want) < 8e-3,
            "{dt:?}: the norm-wise check would pass it"
        );
        assert_eq!(
            half_outlier(&one_off, &want).map(|o| o.0),
            Some(39_999),
            "{dt:?}"
        );
    }
}

/// The same case in f64: every f32 input and output widened (exactly), for the f64 truth.
fn widened(c: &Case) -> Result<Case, gshn::Error> {
    let wide = |dt: DType| if dt == F32 { DType::F64 } else { dt };
    // An op that names its output dtype (fill, cast) is widened with it.
    let op = match &c.op {
        Op::Fill { value, meta } => Op::Fill {
            value: *value,
            meta: Meta::new(meta.shape.clone(), wide(meta.dtype)),
        },
        Op::Cast(to) => Op::Cast(wide(*to)),
        op => op.clone(),
    };
    Ok(Case {
        name: c.name.clone(),
        op,
        inputs: c
            .inputs
            .iter()
            .map(|t| t.to_dtype(wide(t.dtype())))
            .collect::<Result<_, _>>()?,
        outs: c
            .outs
            .iter()
            .map(|o| Meta::new(o.shape.clone(), wide(o.dtype)))
            .collect(),
        exact: c.exact.clone(),
        tol: c.tol,
    })
}

/// The same case on half-precision storage (`dt` = BF16 or F16), as mixed-precision training
/// runs it: every f32 input and output in `dt` but the statistics that stay f32
/// (`Op::half_stats`); None for cases that have no half form (f64; the optimizer, which takes
/// f32 master weights and gradients only; casts). The CPU's
/// half path (f32 arithmetic, one rounding of each output) is the reference, so the tolerance is
/// about one rounding step of `dt`.
fn halved(c: &Case, dt: DType) -> Option<Case> {
    let f32_case =
        c.inputs.iter().any(|t| t.dtype() == F32) || c.outs.iter().any(|o| o.dtype == F32);
    let f64_case = c.inputs.iter().any(|t| t.dtype() == DType::F64);
    // casts name their target type (the u8 cases cast to every type already)
    if !f32_case || f64_case || c.op.family() == Family::Optim || matches!(c.op, Op::Cast(_)) {
        return None;
    }
    let (stats_in, stats_out) = c.op.half_stats(c.inputs.len()).ok()?;
    let to = |d: DType, stat: bool| if d == F32 && !stat { dt } else { d };
    let op = match &c.op {
        Op::Fill { value, meta } => Op::Fill {
            value: *value,
            meta: Meta::new(meta.shape.clone(), to(meta.dtype, false)),
        },
        op => op.clone(),
    };
    let inputs = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| t.to_dtype(to(t.dtype(), stats_in.contains(&i))))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let outs = c
        .outs
        .iter()
        .enumerate()
        .map(|(i, o)| Meta::new(o.shape.clone(), to(o.dtype, stats_out.contains(&i))))
        .collect();
    let step = if dt == DType::BF16 { 8e-3 } else { 1e-3 };
    Some(Case {
        name: format!("{} [{dt:?}]", c.name),
        op,
        inputs,
        outs,
        exact: c.exact.clone(),
        tol: Some(c.tol.unwrap_or(1e-5).max(step)),
    })
}

/// Whether a case holds half-precision data (then it has no f64 truth: `widened` is for f32).
fn has_half(c: &Case) -> bool {
    c.inputs.iter().any(|t| t.dtype().is_half()) || c.outs.iter().any(|o| o.dtype.is_half())
}

/// Every case of `cases` that has a half form, in bf16 and in f16.
fn halved_all(cases: &[Case]) -> Vec<Case> {
    [DType::BF16, DType::F16]
        .iter()
        .flat_map(|&dt| cases.iter().filter_map(move |c| halved(c, dt)))
        .collect()
}

/// Runs the cases; panics listing every failure (after running them all).
fn check_all(be: &CudaBackend, cases: Vec<Case>) {
    let failures = check_cases(be, cases);
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// Runs the cases; the failures, one line each.
///
/// An f32 output that misses the tolerance against the CPU's f32 result can be an ill-conditioned
/// reduction (a scalar summed from B² terms of both signs loses digits in any order): it still
/// passes when, against the f64 truth of the same inputs, the GPU is at most twice as far off
/// as the CPU f32 result is, and under 1e-3. Both distances are printed and reported.
fn check_cases(be: &CudaBackend, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for c in &cases {
        let want = match run(&CpuBackend, c, false) {
            Ok(w) => w,
            Err(e) => {
                report(&c.name, false, f64::NAN, "");
                failures.push(format!("{}: CPU reference failed: {e}", c.name));
                continue;
            }
        };
        let got = match run(be, c, true) {
            Ok(g) => g,
            Err(e) => {
                report(&c.name, false, f64::NAN, "");
                failures.push(format!("{}: CUDA failed: {e}", c.name));
                continue;
            }
        };
        let mut truth = None;
        let mut worst = 0.0f64;
        let mut pass = true;
        let mut notes = String::new();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let f64_out = w.dtype() == DType::F64;
            let tol = if f64_out {
                1e-10
            } else {
                c.tol.unwrap_or(1e-5)
            };
            let r = rel_err(g, w);
            let mut ok = if c.exact.contains(&i) {
                g == w
            } else {
                r <= tol
            };
            let mut note = String::new();
            // A half output also element by element: the norm-wise error of a large tensor
            // hides one wrong element (a last partial block), the ulp bound does not.
            if ok && g.dtype().is_half() {
                if let Some((at, d)) = half_outlier(g, w) {
                    ok = false;
                    note = format!(" element {at} off by {d:e} (> 4 ulp + 1e-3 rms)");
                }
            }
            if !ok && !f64_out && !has_half(c) && r.is_finite() && !c.exact.contains(&i) {
                let t = truth
                    .get_or_insert_with(|| widened(c).and_then(|w| run(&CpuBackend, &w, false)));
                if let Ok(t) = t {
                    let (e_gpu, e_cpu) = (rel_err(g, &t[i]), rel_err(w, &t[i]));
                    ok = e_gpu <= 2.0 * e_cpu && e_gpu <= 1e-3;
                    note = format!(" output {i} vs f64 truth: cuda {e_gpu:e}, cpu f32 {e_cpu:e}");
                }
            }
            worst = worst.max(r);
            notes.push_str(&note);
            if !ok {
                pass = false;
                failures.push(format!(
                    "{}: output {i}: rel err {r:e} (tol {tol:e});{note}",
                    c.name
                ));
            }
        }
        report(&c.name, pass, worst, notes.trim());
        eprintln!(
            "{} {:<48} rel {worst:.3e}{notes}",
            if pass { "ok  " } else { "FAIL" },
            c.name
        );
    }
    failures
}

// ---- cases ----------------------------------------------------------------------------------

const F32: DType = DType::F32;

fn basic_ops_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(1);
    let mut cs = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let sh = [37, 29];
        let (a, b) = (rnd(&mut r, &sh, dt), rnd(&mut r, &sh, dt));
        let o = vec![meta(&sh, dt)];
        for (n, op) in [("add", Op::Add), ("sub", Op::Sub), ("mul", Op::Mul)] {
            cs.push(case(
                format!("{n} {dt:?}"),
                op,
                vec![a.clone(), b.clone()],
                o.clone(),
            ));
        }
        let bias = rnd(&mut r, &[29], dt);
        cs.push(case(
            format!("add_bias {dt:?}"),
            Op::AddBias,
            vec![a.clone(), bias.clone()],
            o.clone(),
        ));
        cs.push(case(
            format!("mul_broadcast {dt:?}"),
            Op::MulBroadcast,
            vec![a.clone(), bias],
            o.clone(),
        ));
        cs.push(case(
            format!("mul_broadcast scalar {dt:?}"),
            Op::MulBroadcast,
            vec![a.clone(), scalar(0.7, dt)],
            o.clone(),
        ));
        cs.push(case(
            format!("scale {dt:?}"),
            Op::Scale(-1.3),
            vec![a.clone()],
            o.clone(),
        ));
        cs.push(case(
            format!("stop_gradient {dt:?}"),
            Op::StopGradient,
            vec![a.clone()],
            o.clone(),
        ));
        cs.push(case(
            format!("fill {dt:?}"),
            Op::Fill {
                value: 0.25,
                meta: meta(&sh, dt),
            },
            vec![],
            o.clone(),
        ));
        let x = rand_t(&mut r, &sh, dt, -3.0, 3.0);
        let g = rnd(&mut r, &sh, dt);
        let units = [
            Unary::Relu,
            Unary::Elu(1.0),
            Unary::Gelu,
            Unary::LeakyRelu(0.2),
            Unary::Exp,
            Unary::Spike {
                surrogate: Surrogate::ATan(2.0),
                smooth: false,
            },
            Unary::Spike {
                surrogate: Surrogate::Sigmoid(4.0),
                smooth: true,
            },
            Unary::Spike {
                surrogate: Surrogate::SuperSpike(3.0),
                smooth: false,
            },
            Unary::Spike {
                surrogate: Surrogate::Rectangular(1.0),
                smooth: true,
            },
        ];
        for u in units {
            let mut c = case(
                format!("unary {u:?} {dt:?}"),
                Op::Unary(u),
                vec![x.clone()],
                o.clone(),
            );
            if matches!(u, Unary::Spike { smooth: false, .. }) {
                c.exact = vec![0];
            }
            cs.push(c);
            cs.push(case(
                format!("unary_backward {u:?} {dt:?}"),
                Op::UnaryBackward(u),
                vec![x.clone(), g.clone()],
                o.clone(),
            ));
        }
        // matmul, every transpose, 2-D and batched, odd sizes
        let (m, k, n) = (37, 53, 29);
        for ta in [false, true] {
            for tb in [false, true] {
                let ash = if ta { [k, m] } else { [m, k] };
                let bsh = if tb { [n, k] } else { [k, n] };
                cs.push(case(
                    format!("matmul ta={ta} tb={tb} {dt:?}"),
                    Op::MatMul {
                        trans_a: ta,
                        trans_b: tb,
                        row_stride: 1,
                    },
                    vec![rnd(&mut r, &ash, dt), rnd(&mut r, &bsh, dt)],
                    vec![meta(&[m, n], dt)],
                ));
                cs.push(case(
                    format!("matmul batched ta={ta} tb={tb} {dt:?}"),
                    Op::MatMul {
                        trans_a: ta,
                        trans_b: tb,
                        row_stride: 1,
                    },
                    vec![
                        rnd(&mut r, &[3, ash[0], ash[1]], dt),
                        rnd(&mut r, &[3, bsh[0], bsh[1]], dt),
                    ],
                    vec![meta(&[3, m, n], dt)],
                ));
            }
        }
        cs.push(case(
            format!("matmul batched rows row_stride=16 {dt:?}"),
            Op::MatMul {
                trans_a: false,
                trans_b: false,
                row_stride: 16,
            },
            vec![rnd(&mut r, &[3 * m, k], dt), rnd(&mut r, &[k, n], dt)],
            vec![meta(&[3 * m, n], dt)],
        ));
        // a weight gradient's shape: small output, deep sum (where cuBLAS picks split-K; in
        // the half cases its partials must still add in f32)
        cs.push(case(
            format!("matmul deep k=12288 ta=true {dt:?}"),
            Op::MatMul {
                trans_a: true,
                trans_b: false,
                row_stride: 1,
            },
            vec![rnd(&mut r, &[12288, 24], dt), rnd(&mut r, &[12288, 40], dt)],
            vec![meta(&[24, 40], dt)],
        ));
        cs.push(case(
            format!("matmul k=0 {dt:?}"),
            Op::MatMul {
                trans_a: false,
                trans_b: false,
                row_stride: 1,
            },
            vec![Tensor::zeros([5, 0], dt), Tensor::zeros([0, 7], dt)],
            vec![meta(&[5, 7], dt)],
        ));
        let big = rnd(&mut r, &[129, 1001], dt);
        for red in [
            Reduce::SumLast,
            Reduce::MeanLast,
            Reduce::SumAll,
            Reduce::MeanAll,
            Reduce::SumRows,
        ] {
            let out = red.out_shape(big.shape());
            cs.push(case(
                format!("reduce {red:?} {dt:?}"),
                Op::Reduce(red),
                vec![big.clone()],
                vec![Meta::new(out.clone(), dt)],
            ));
            cs.push(case(
                format!("reduce_backward {red:?} {dt:?}"),
                Op::ReduceBackward(red, big.shape().clone()),
                vec![rnd(&mut r, out.dims(), dt)],
                vec![Meta::new(big.shape().clone(), dt)],
            ));
        }
    }
    cs
}

#[test]
fn basic_ops() {
    let Some(be) = cuda() else { return };
    check_all(&be, basic_ops_cases());
}

fn layout_ops_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(2);
    let mut cs = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let x = rnd(&mut r, &[3, 5, 7], dt);
        cs.push(case(
            format!("reshape {dt:?}"),
            Op::Reshape(Shape::new([15, 7])),
            vec![x.clone()],
            vec![meta(&[15, 7], dt)],
        ));
        cs.push(case(
            format!("permute {dt:?}"),
            Op::Permute(vec![2, 0, 1]),
            vec![x.clone()],
            vec![meta(&[7, 3, 5], dt)],
        ));
        cs.push(case(
            format!("permute4 {dt:?}"),
            Op::Permute(vec![1, 3, 0, 2]),
            vec![rnd(&mut r, &[2, 3, 4, 5], dt)],
            vec![meta(&[3, 5, 2, 4], dt)],
        ));
        let y = rnd(&mut r, &[3, 2, 7], dt);
        cs.push(case(
            format!("concat axis1 {dt:?}"),
            Op::Concat { axis: 1 },
            vec![x.clone(), y],
            vec![meta(&[3, 7, 7], dt)],
        ));
        cs.push(case(
            format!("slice {dt:?}"),
            Op::Slice {
                axis: 2,
                start: 2,
                len: 4,
            },
            vec![x.clone()],
            vec![meta(&[3, 5, 4], dt)],
        ));
        cs.push(case(
            format!("slice_backward {dt:?}"),
            Op::SliceBackward {
                axis: 1,
                start: 1,
                full: Shape::new([3, 5, 7]),
            },
            vec![rnd(&mut r, &[3, 3, 7], dt)],
            vec![meta(&[3, 5, 7], dt)],
        ));
        let table = rnd(&mut r, &[11, 33], dt);
        let ids: Vec<i32> = (0..300).map(|_| r.below(11) as i32).collect();
        cs.push(case(
            format!("gather {dt:?}"),
            Op::Gather,
            vec![table, idx(ids.clone())],
            vec![meta(&[300, 33], dt)],
        ));
        cs.push(case(
            format!("scatter_add {dt:?}"),
            Op::ScatterAdd { rows: 13 },
            vec![rnd(&mut r, &[300, 33], dt), idx(ids)],
            vec![meta(&[13, 33], dt)],
        ));
        let big = rnd(&mut r, &[1001, 37], dt);
        let seed = Tensor::scalar(12345i32);
        for p in [0.0, 0.3, 0.9] {
            cs.push(case(
                format!("dropout p={p} {dt:?}"),
                Op::Dropout { p },
                vec![big.clone(), seed.clone()],
                vec![meta(&[1001, 37], dt)],
            ));
            cs.push(case(
                format!("dropout_backward p={p} {dt:?}"),
                Op::DropoutBackward { p },
                vec![big.clone(), seed.clone()],
                vec![meta(&[1001, 37], dt)],
            ));
        }
    }
    // index tensors move too
    let ii = Tensor::new([4, 6], (0..24).collect::<Vec<i32>>()).unwrap();
    cs.push(case(
        "permute i32",
        Op::Permute(vec![1, 0]),
        vec![ii.clone()],
        vec![meta(&[6, 4], DType::I32)],
    ));
    cs.push(case(
        "slice i32",
        Op::Slice {
            axis: 1,
            start: 1,
            len: 3,
        },
        vec![ii.clone()],
        vec![meta(&[4, 3], DType::I32)],
    ));
    cs.push(case(
        "concat i32",
        Op::Concat { axis: 0 },
        vec![ii.clone(), ii],
        vec![meta(&[8, 6], DType::I32)],
    ));
    cs
}

#[test]
fn layout_ops() {
    let Some(be) = cuda() else { return };
    check_all(&be, layout_ops_cases());
}

fn norm_ops_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(3);
    let mut cs = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let (rows, c) = (131, 77);
        let x = rnd(&mut r, &[rows, c], dt);
        let (gm, bt) = (rnd(&mut r, &[c], dt), rnd(&mut r, &[c], dt));
        cs.push(case(
            format!("layer_norm {dt:?}"),
            Op::LayerNorm {
                eps: 1e-5,
                row_stride: 1,
            },
            vec![x.clone(), gm.clone(), bt],
            vec![meta(&[rows, c], dt), meta(&[rows], dt), meta(&[rows], dt)],
        ));
        // mean / rstd from the CPU forward feed the backward
        let mean = rand_t(&mut r, &[rows], dt, -0.1, 0.1);
        let rstd = rand_t(&mut r, &[rows], dt, 0.5, 2.0);
        cs.push(case(
            format!("layer_norm_backward {dt:?}"),
            Op::LayerNormBackward {
                eps: 1e-5,
                row_stride: 1,
            },
            vec![
                rnd(&mut r, &[rows, c], dt),
                x.clone(),
                gm.clone(),
                mean.clone(),
                rstd.clone(),
            ],
            vec![meta(&[rows, c], dt), meta(&[c], dt), meta(&[c], dt)],
        ));
        cs.push(case(
            format!("layer_norm row_stride=24 {dt:?}"),
            Op::LayerNorm {
                eps: 1e-5,
                row_stride: 24,
            },
            vec![x.clone(), gm.clone(), rnd(&mut r, &[c], dt)],
            vec![meta(&[rows, c], dt), meta(&[rows], dt), meta(&[rows], dt)],
        ));
        cs.push(case(
            format!("layer_norm_backward row_stride=24 {dt:?}"),
            Op::LayerNormBackward {
                eps: 1e-5,
                row_stride: 24,
            },
            vec![rnd(&mut r, &[rows, c], dt), x.clone(), gm, mean, rstd],
            vec![meta(&[rows, c], dt), meta(&[c], dt), meta(&[c], dt)],
        ));
        cs.push(case(
            format!("l2_normalize {dt:?}"),
            Op::L2Normalize { eps: 1e-12 },
            vec![x.clone()],
            vec![meta(&[rows, c], dt), meta(&[rows], dt)],
        ));
        let norm = rand_t(&mut r, &[rows], dt, 0.5, 3.0);
        cs.push(case(
            format!("l2_normalize_backward {dt:?}"),
            Op::L2NormalizeBackward { eps: 1e-12 },
            vec![
                rnd(&mut r, &[rows, c], dt),
                rnd(&mut r, &[rows, c], dt),
                norm,
            ],
            vec![meta(&[rows, c], dt)],
        ));
        let (b, g, l) = (3, 5, 37);
        let mut keep: Vec<f64> = (0..b * l)
            .map(|_| (r.uniform() < 0.7) as i32 as f64)
            .collect();
        for v in &mut keep[l..2 * l] {
            *v = 0.0; // one batch row fully masked
        }
        let keep = Tensor::new([b, l], keep).unwrap().to_dtype(dt).unwrap();
        cs.push(case(
            format!("masked_softmax {dt:?}"),
            Op::MaskedSoftmax,
            vec![rand_t(&mut r, &[b, g, l], dt, -4.0, 4.0), keep],
            vec![meta(&[b, g, l], dt)],
        ));
        cs.push(case(
            format!("masked_softmax_backward {dt:?}"),
            Op::MaskedSoftmaxBackward,
            vec![
                rnd(&mut r, &[b, g, l], dt),
                rand_t(&mut r, &[b, g, l], dt, 0.0, 0.2),
            ],
            vec![meta(&[b, g, l], dt)],
        ));
    }
    cs
}

#[test]
fn norm_ops() {
    let Some(be) = cuda() else { return };
    check_all(&be, norm_ops_cases());
}

fn lif_all_options_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(4);
    let mut cs = Vec::new();
    // step counts that reach each kernel form: _t8, _t16 and the plain loop (kernels/lif.cu)
    let (steps, n) = ([7, 12, 19], 1037);
    let surrogates = [
        Surrogate::ATan(2.0),
        Surrogate::Sigmoid(4.0),
        Surrogate::SuperSpike(3.0),
        Surrogate::Rectangular(1.0),
    ];
    let mut k = 0;
    for dt in [DType::F32, DType::F64] {
        for v_reset in [Some(0.0), Some(-0.2), None] {
            for decay_input in [true, false] {
                for detach_reset in [false, true] {
                    for learnable_tau in [false, true] {
                        for smooth in [false, true] {
                            let surrogate = surrogates[k % 4];
                            let t = steps[k % 3];
                            // every kernel form with and without V written
                            let membrane = (k / 3) % 2 == 1;
                            k += 1;
                            let cfg = LifConfig {
                                tau: 2.0,
                                v_th: 0.6,
                                v_reset,
                                decay_input,
                                detach_reset,
                                surrogate,
                                learnable_tau,
                                smooth,
                                membrane,
                                u8_spikes: false,
                            };
                            let tag = format!(
                                "T={t} reset={v_reset:?} decay={decay_input} detach={detach_reset} learn={learnable_tau} smooth={smooth} v={membrane} {surrogate:?} {dt:?}"
                            );
                            let x = rand_t(&mut r, &[t, n], dt, -0.5, 2.0);
                            let tau = scalar(2.5, dt);
                            let mut ins = vec![x];
                            if learnable_tau {
                                ins.push(tau.clone());
                            }
                            let v_shape = if membrane { vec![t, n] } else { vec![0] };
                            let mut c = case(
                                format!("lif {tag}"),
                                Op::Lif(cfg),
                                ins,
                                vec![meta(&[t, n], dt), meta(&v_shape, dt), meta(&[t, n], dt)],
                            );
                            if !smooth {
                                c.exact = vec![0];
                            }
                            cs.push(c);
                            let h = rand_t(&mut r, &[t, n], dt, -0.5, 1.5);
                            for (has_gs, has_gv) in [(true, false), (true, true), (false, true)] {
                                let mut ins = vec![h.clone()];
                                if has_gs {
                                    ins.push(rnd(&mut r, &[t, n], dt));
                                }
                                if has_gv {
                                    ins.push(rnd(&mut r, &[t, n], dt));
                                }
                                let mut outs = vec![meta(&[t, n], dt)];
                                if learnable_tau {
                                    ins.push(tau.clone());
                                    outs.push(meta(&[], dt));
                                }
                                cs.push(case(
                                    format!("lif_backward gs={has_gs} gv={has_gv} {tag}"),
                                    Op::LifBackward {
                                        cfg,
                                        has_gs,
                                        has_gv,
                                    },
                                    ins,
                                    outs,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    cs
}

#[test]
fn lif_all_options() {
    let Some(be) = cuda() else { return };
    check_all(&be, lif_all_options_cases());
}

/// GAT's four ops and aggregation's two on one graph: `n` nodes of in-degree `deg` (0: no
/// edges), a fraction `zero_frac` of them with none; `h` heads of `f` features, aggregation
/// over `c` channels.
#[allow(clippy::too_many_arguments)]
fn gat_cases(
    r: &mut SplitMix64,
    dt: DType,
    n: usize,
    zero_frac: f64,
    deg: usize,
    (h, f): (usize, usize),
    c: usize,
    tag: &str,
) -> Vec<Case> {
    let g = if deg == 0 {
        let z = idx(vec![]);
        [idx(vec![0; n + 1]), z.clone(), idx(vec![0; n + 1]), z]
    } else {
        graph(r, n, deg, zero_frac)
    };
    let e = g[1].numel();
    let mut cs = Vec::new();
    for edge_bias in [false, true] {
        let at = GatAttrs {
            negative_slope: 0.2,
            edge_bias,
        };
        let z = rnd(r, &[n, h, f], dt);
        let (a_s, a_d) = (rnd(r, &[h, f], dt), rnd(r, &[h, f], dt));
        let be_ = rnd(r, &[e, h], dt);
        let bias = |v: &mut Vec<Tensor>| {
            if edge_bias {
                v.push(be_.clone());
            }
        };
        let t = format!("{tag} bias={edge_bias} {dt:?}");
        let mut ins = vec![z.clone(), a_s.clone(), a_d.clone()];
        bias(&mut ins);
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("gat {t}"),
            Op::Gat(at),
            ins,
            vec![meta(&[n, h, f], dt), meta(&[n, h], dt)],
        ));
        // Saved tensors from the CPU forward, so backward inputs are consistent.
        let mut fwd_in = vec![z.clone(), a_s.clone(), a_d.clone()];
        bias(&mut fwd_in);
        fwd_in.extend(g.iter().cloned());
        let fwd = case(
            "",
            Op::Gat(at),
            fwd_in,
            vec![meta(&[n, h, f], dt), meta(&[n, h], dt)],
        );
        let saved = run(&CpuBackend, &fwd, false).expect("the CPU GAT forward of a case");
        let (out, lse) = (saved[0].clone(), saved[1].clone());
        let mut ins = vec![z.clone(), a_s.clone(), a_d.clone()];
        bias(&mut ins);
        ins.push(lse.clone());
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("gat_alpha {t}"),
            Op::GatAlpha(at),
            ins,
            vec![meta(&[e, h], dt)],
        ));
        let mut grads = vec![meta(&[n, h, f], dt), meta(&[h, f], dt), meta(&[h, f], dt)];
        if edge_bias {
            grads.push(meta(&[e, h], dt));
        }
        let mut ins = vec![rnd(r, &[n, h, f], dt), z.clone(), a_s.clone(), a_d.clone()];
        bias(&mut ins);
        ins.push(out);
        ins.push(lse.clone());
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("gat_backward {t}"),
            Op::GatBackward(at),
            ins,
            grads.clone(),
        ));
        let alpha = rand_t(r, &[e, h], dt, 0.05, 1.0);
        let mut ins = vec![
            rnd(r, &[e, h], dt),
            alpha,
            z.clone(),
            a_s.clone(),
            a_d.clone(),
        ];
        bias(&mut ins);
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("gat_alpha_backward {t}"),
            Op::GatAlphaBackward(at),
            ins,
            grads,
        ));
    }
    let tn = 3;
    let alpha = rand_t(r, &[e, h], dt, 0.05, 1.0);
    let s = rand_t(r, &[tn, n, c], dt, 0.0, 1.0);
    let mut ins = vec![alpha.clone(), s.clone()];
    ins.extend(g.iter().cloned());
    cs.push(case(
        format!("aggregate {tag} {dt:?}"),
        Op::Aggregate,
        ins,
        vec![meta(&[tn, n, c], dt)],
    ));
    let mut ins = vec![rnd(r, &[tn, n, c], dt), alpha, s];
    ins.extend(g.iter().cloned());
    cs.push(case(
        format!("aggregate_backward {tag} {dt:?}"),
        Op::AggregateBackward,
        ins,
        vec![meta(&[e, h], dt), meta(&[tn, n, c], dt)],
    ));
    cs
}

fn gat_and_aggregate_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(5);
    let mut cs = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let (hf, c) = ((3, 37), 66);
        cs.extend(gat_cases(
            &mut r,
            dt,
            301,
            0.1,
            40,
            hf,
            c,
            "N=301 zero-in-degree",
        ));
        cs.extend(gat_cases(&mut r, dt, 17, 0.0, 0, hf, c, "N=17 no edges"));
        cs.extend(gat_cases(&mut r, dt, 0, 0.0, 0, hf, c, "N=0"));
        // past the kernels' 128-wide feature and channel passes: a second, partial pass
        let wide = "N=97 F=133 C=134 (two passes)";
        cs.extend(gat_cases(&mut r, dt, 97, 0.1, 9, (2, 133), 134, wide));
    }
    cs
}

#[test]
fn gat_and_aggregate() {
    let Some(be) = cuda() else { return };
    check_all(&be, gat_and_aggregate_cases());
}

/// Unit rows `[b, d]`, f32.
fn unit_rows(r: &mut SplitMix64, b: usize, d: usize) -> Tensor {
    let t = rnd(r, &[b, d], F32);
    let v = t.data::<f32>().unwrap();
    let mut o = Vec::with_capacity(v.len());
    for row in v.chunks(d) {
        let nrm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        o.extend(row.iter().map(|x| x / nrm));
    }
    Tensor::new([b, d], o).unwrap()
}

/// The forward, the backward and the backward with gradients into the lse outputs of one
/// InfoNCE call (the backward's saved inputs from the CPU forward).
fn infonce_cases(
    r: &mut SplitMix64,
    t: &str,
    a: &Tensor,
    p: &Tensor,
    at: InfoNceAttrs,
    tol: Option<f64>,
) -> Vec<Case> {
    let (b, pb, d) = (a.dims()[0], p.dims()[0], a.dims()[1]);
    let col = at.lse_col_len(b);
    let ls = scalar((1.0f64 / 0.07).ln(), F32);
    let fwd_outs = vec![meta(&[], F32), meta(&[b], F32), meta(&[col], F32)];
    let fwd = case(
        format!("infonce {t}"),
        Op::InfoNce(at),
        vec![a.clone(), p.clone(), ls.clone()],
        fwd_outs,
    );
    let o = run(&CpuBackend, &fwd, false).expect("the CPU InfoNCE forward of a case");
    let (lr, lc) = (o[1].clone(), o[2].clone());
    let outs = vec![meta(&[b, d], F32), meta(&[pb, d], F32), meta(&[], F32)];
    let base = vec![scalar(0.8, F32), a.clone(), p.clone(), ls, lr, lc];
    let bwd = case(
        format!("infonce_backward {t}"),
        Op::InfoNceBackward(at),
        base.clone(),
        outs.clone(),
    );
    let mut with_g = base;
    with_g.push(rnd(r, &[b], F32));
    with_g.push(rnd(r, &[col], F32));
    let bwd_g = case(
        format!("infonce_backward g_lse {t}"),
        Op::InfoNceBackward(at),
        with_g,
        outs,
    );
    // B = 1 without lse gradients: the gradient is exactly 0 (the one logit's softmax is 1), so
    // the GPU's rounding residue would be judged as an absolute error; with them it is not 0
    let mut cs = match b {
        1 => vec![fwd, bwd_g],
        _ => vec![fwd, bwd, bwd_g],
    };
    for c in &mut cs {
        c.tol = tol;
    }
    cs
}

fn infonce_batches_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(6);
    let mut cs = Vec::new();
    for b in [1usize, 7, 1000, 4097] {
        let d = 67;
        let (a, p) = (unit_rows(&mut r, b, d), unit_rows(&mut r, b, d));
        for symmetric in [true, false] {
            let at = InfoNceAttrs {
                symmetric,
                ..InfoNceAttrs::default()
            };
            let t = format!("B={b} sym={symmetric}");
            cs.extend(infonce_cases(&mut r, &t, &a, &p, at, None));
        }
    }
    cs
}

/// The tensor-core modes and gathered negatives (a[B_local] against p[B_all], the local block at
/// the start, middle and end). The CPU reference rounds the same operands as the tensor cores
/// read them, so the two differ only in summation order and in the rare logit gradient rounded
/// the other way (estimated 2e-5 in tf32, 6e-5 in bf16); a GPU that ignored the mode would be
/// about 1e-3 (tf32) and 8e-3 (bf16) off. The modes' bounds against f64 (5e-3, 2e-2) are the
/// CPU tests' (tests/infonce_modes.rs).
fn infonce_modes_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(12);
    let mut cs = Vec::new();
    for precision in Precision::ALL {
        let tol = match precision {
            Precision::F32 => None,
            Precision::Tf32 => Some(2e-4),
            Precision::Bf16 => Some(1e-3),
        };
        let name = precision.name();
        if precision != Precision::F32 {
            for b in [7usize, 65, 1000] {
                let (a, p) = (unit_rows(&mut r, b, 67), unit_rows(&mut r, b, 67));
                for base in [InfoNceAttrs::SYMMETRIC, InfoNceAttrs::ONE_DIRECTIONAL] {
                    let at = InfoNceAttrs { precision, ..base };
                    let t = format!("{name} B={b} sym={}", at.symmetric);
                    cs.extend(infonce_cases(&mut r, &t, &a, &p, at, tol));
                }
            }
        }
        let (bl, ba, d) = (100usize, 1000usize, 67);
        let p = unit_rows(&mut r, ba, d);
        for offset in [0, 450, 900] {
            let a = unit_rows(&mut r, bl, d);
            let at = InfoNceAttrs {
                precision,
                offset,
                ..InfoNceAttrs::ONE_DIRECTIONAL
            };
            let t = format!("{name} gathered B={bl} of {ba} at {offset}");
            cs.extend(infonce_cases(&mut r, &t, &a, &p, at, tol));
        }
    }
    cs
}

#[test]
fn infonce_modes_and_gathered_negatives() {
    let Some(be) = cuda() else { return };
    check_all(&be, infonce_modes_cases());
}

#[test]
fn infonce_batches() {
    let Some(be) = cuda() else { return };
    check_all(&be, infonce_batches_cases());
}

fn segment_and_optim_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(7);
    let mut cs = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let (pn, c, s) = (1037, 35, 13);
        // segment 12 stays empty; ~10% void pixels
        let seg: Vec<i32> = (0..pn)
            .map(|_| {
                if r.uniform() < 0.1 {
                    -1
                } else {
                    r.below(s - 1) as i32
                }
            })
            .collect();
        let x = rnd(&mut r, &[pn, c], dt);
        cs.push(case(
            format!("segment_mean {dt:?}"),
            Op::SegmentMean { segments: s },
            vec![x, idx(seg.clone())],
            vec![meta(&[s, c], dt), meta(&[s], dt)],
        ));
        let mut count = vec![0.0f64; s];
        for &v in &seg {
            if v >= 0 {
                count[v as usize] += 1.0;
            }
        }
        let count = Tensor::new([s], count).unwrap().to_dtype(dt).unwrap();
        // a count that disagrees with the ids: a populated segment counted 0 gets no gradient
        let mut wrong = count.to_f64_vec();
        let populated = seg.iter().find(|&&v| v >= 0).copied().unwrap_or(0) as usize;
        wrong[populated] = 0.0;
        let wrong = Tensor::new([s], wrong).unwrap().to_dtype(dt).unwrap();
        let gy = rnd(&mut r, &[s, c], dt);
        cs.push(case(
            format!("segment_mean_backward, a segment counted 0 {dt:?}"),
            Op::SegmentMeanBackward,
            vec![gy.clone(), idx(seg.clone()), wrong],
            vec![meta(&[pn, c], dt)],
        ));
        cs.push(case(
            format!("segment_mean_backward {dt:?}"),
            Op::SegmentMeanBackward,
            vec![gy, idx(seg), count],
            vec![meta(&[pn, c], dt)],
        ));
        let gs = vec![
            rnd(&mut r, &[301, 7], dt),
            rnd(&mut r, &[5000], dt),
            rnd(&mut r, &[3], dt),
        ];
        for max_norm in [0.5, 1e6] {
            cs.push(case(
                format!("clip_scale max={max_norm} {dt:?}"),
                Op::ClipScale { max_norm },
                gs.clone(),
                vec![meta(&[], dt), meta(&[], dt)],
            ));
        }
        // Gradients whose squares overflow f32 (|g| ≥ 1e19): the norm sums in f64 on both
        // sides, so the step is clipped, not skipped.
        cs.push(case(
            format!("clip_scale of huge gradients {dt:?}"),
            Op::ClipScale { max_norm: 1.0 },
            vec![
                rand_t(&mut r, &[301, 7], dt, 1e19, 1e20),
                rand_t(&mut r, &[5000], dt, -1e20, -1e19),
            ],
            vec![meta(&[], dt), meta(&[], dt)],
        ));
        let n = 3001;
        let cfg = AdamWConfig::default();
        let hyper = Tensor::new([2], vec![1e-3, 7.0])
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        cs.push(case(
            format!("adamw {dt:?}"),
            Op::AdamW(cfg),
            vec![
                rnd(&mut r, &[n], dt),
                rand_t(&mut r, &[n], dt, -0.1, 0.1),
                rand_t(&mut r, &[n], dt, 0.01, 0.1),
                rnd(&mut r, &[n], dt),
                scalar(0.7, dt),
                hyper,
            ],
            vec![meta(&[n], dt); 3],
        ));
        // The first step (moments zero): v is (1 − β2)·g², so a (1 − β2) rounded from an f32
        // β2 (1.3e-5 off for 0.999) shows in v here, where older moments hide it.
        let first = Tensor::new([2], vec![1e-3, 1.0])
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        cs.push(case(
            format!("adamw first step {dt:?}"),
            Op::AdamW(cfg),
            vec![
                rnd(&mut r, &[n], dt),
                rand_t(&mut r, &[n], dt, -0.1, 0.1),
                Tensor::zeros([n], dt),
                Tensor::zeros([n], dt),
                scalar(1.0, dt),
                first,
            ],
            vec![meta(&[n], dt); 3],
        ));
    }
    cs
}

#[test]
fn segment_and_optim() {
    let Some(be) = cuda() else { return };
    check_all(&be, segment_and_optim_cases());
}

/// A small graph end to end on both executors (forward, backward, fetch).
#[test]
fn executor_end_to_end() {
    let Some(be) = cuda() else { return };
    use gshn::{Executor, Graph};
    let mut g = Graph::new();
    let x = g.input("x", [67, 33], F32);
    let w = g.param("w", [33, 19], F32);
    let b = g.param("b", [19], F32);
    let h = g.linear(x, w, Some(b)).unwrap();
    let h = g.gelu(h).unwrap();
    let loss = g.mean(h).unwrap();
    let grads = g.backward(loss, &[w, b]).unwrap();
    let mut fetch = vec![loss, h];
    fetch.extend(grads.iter().copied());
    let mut r = SplitMix64::new(8);
    let feeds = [
        (x, rnd(&mut r, &[67, 33], F32)),
        (w, rnd(&mut r, &[33, 19], F32)),
        (b, rnd(&mut r, &[19], F32)),
    ];
    let mut cpu = Executor::new(CpuBackend, g.clone(), &fetch).unwrap();
    let mut gpu = Executor::new(be, g, &fetch).unwrap();
    for (v, t) in &feeds {
        cpu.set(*v, t).unwrap();
        gpu.set(*v, t).unwrap();
    }
    cpu.run().unwrap();
    gpu.run().unwrap();
    let mut failures = Vec::new();
    for (i, &f) in fetch.iter().enumerate() {
        let e = rel_err(&gpu.get(f).unwrap(), &cpu.get(f).unwrap());
        report(&format!("executor fetch {i}"), e <= 1e-5, e, "");
        if e > 1e-5 {
            failures.push(format!("fetch {i}: rel err {e:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// CUDA-graph replay (issue 17): a training step whose ops build index tables on the host
/// (SegmentMean's rows per segment, ScatterAdd's rows per table row, GAT's graph checks),
/// recorded on its first run and replayed on 20 batches of new inputs — features, segment ids
/// with a changing share of padding, gather indices, edges — gives the op-by-op executor's
/// loss bit for bit at every step, and the same parameters at the end.
#[test]
fn graph_replay_matches_op_by_op() {
    let Some(be) = cuda() else { return };
    use gshn::ops::GraphInputs;
    use gshn::{Executor, Graph};
    let be = std::sync::Arc::new(be);
    let (p, n, e, h, f, vocab) = (53, 13, 40, 2, 12, 29);
    let c = h * f;
    let mut g = Graph::new();
    let x = g.input("x", [p, c], F32);
    let seg = g.input("seg", [p], DType::I32);
    let tok = g.input("tok", [n], DType::I32);
    let gi = GraphInputs::new(&mut g, "", n, e);
    let table = g.param("table", [vocab, c], F32);
    let w = g.param("w", [c, c], F32);
    let a_src = g.param("a_src", [h, f], F32);
    let a_dst = g.param("a_dst", [h, f], F32);
    let w2 = g.param("w2", [c, 5], F32);
    let loss = (|| {
        let pooled = g.segment_mean(x, seg, n)?.mean;
        let emb = g.gather(table, tok)?;
        let hidden = g.add(pooled, emb)?;
        let z = g.matmul(hidden, w)?;
        let z = g.reshape(z, [n, h, f])?;
        let att = g.gat(z, a_src, a_dst, None, &gi, GatAttrs::default())?.out;
        // LIF over 4 time steps of n·c/4 neurons
        let att = g.reshape(att, [4, n * c / 4])?;
        let spikes = g.lif(att, LifConfig::default())?.spikes;
        let spikes = g.reshape(spikes, [n, c])?;
        let y = g.matmul(spikes, w2)?;
        let y = g.gelu(y)?;
        let l1 = g.mean(y)?;
        let sq = g.mul(att, att)?;
        let l2 = g.mean(sq)?;
        g.add(l1, l2)
    })()
    .unwrap();
    let params = [table, w, a_src, a_dst, w2];
    let grads = g.backward(loss, &params).unwrap();
    let opt = g
        .adamw_step(&params, &grads, AdamWConfig::default(), Some(1.0))
        .unwrap();
    let mut executors = [false, true].map(|replay| {
        let mut ex = Executor::new(be.clone(), g.clone(), &[loss]).unwrap();
        let mut r = SplitMix64::new(5);
        for &v in &params {
            let shape = ex.graph().meta(v).unwrap().shape.clone();
            ex.set(v, &rnd(&mut r, shape.dims(), F32)).unwrap();
        }
        opt.zero_state(&mut ex).unwrap();
        ex.replay_runs(replay);
        ex
    });
    let mut r = SplitMix64::new(9);
    let mut failures = Vec::new();
    let mut ops = [0u64; 2];
    for step in 0..20u64 {
        let xs = rnd(&mut r, &[p, c], F32);
        let padded = (step as usize * 5) % p;
        let segs = idx((0..p)
            .map(|i| match i < p - padded {
                true => r.below(n) as i32,
                false => -1,
            })
            .collect());
        let toks = idx((0..n).map(|_| r.below(vocab) as i32).collect());
        let edges: Vec<(usize, usize)> = (0..e).map(|_| (r.below(n), r.below(n))).collect();
        let csr = CsrGraph::from_edges(n, &edges).unwrap();
        let mut losses = Vec::new();
        for (k, ex) in executors.iter_mut().enumerate() {
            ex.set(x, &xs).unwrap();
            ex.set(seg, &segs).unwrap();
            ex.set(tok, &toks).unwrap();
            gi.feed(ex, &csr).unwrap();
            opt.set_hyper(ex, 1e-2, step + 1).unwrap();
            let before = be.device_ops().unwrap();
            ex.run().unwrap();
            ops[k] = be.device_ops().unwrap() - before;
            losses.push(ex.get(loss).unwrap());
        }
        let same = losses[0] == losses[1];
        let note = format!(
            "device ops per step: op by op {}, replayed {}",
            ops[0], ops[1]
        );
        report(
            &format!("graph replay step {step}"),
            same,
            rel_err(&losses[1], &losses[0]),
            &note,
        );
        if !same {
            failures.push(format!("step {step}: {:?} vs {:?}", losses[1], losses[0]));
        }
    }
    assert!(executors[1].replaying(), "the step was not recorded");
    for &v in &params {
        let (a, b) = (executors[0].get(v).unwrap(), executors[1].get(v).unwrap());
        if a != b {
            failures.push(format!(
                "parameter {v:?} differs: rel {:e}",
                rel_err(&b, &a)
            ));
        }
    }
    assert!(ops[1] < 4, "a replay queued {} operations", ops[1]);
    assert!(failures.is_empty(), "{failures:?}");
}

/// Every op family's cases on bf16 and f16 storage (issue 15): the families with half kernels
/// (`_bf16` / `_f16`) and those that run through f32 copies alike.
#[test]
fn half_storage() {
    let Some(be) = cuda() else { return };
    // every family runs (and is reported) before the one assertion
    let cases: Vec<Case> = all_cases().iter().flat_map(|c| halved_all(c)).collect();
    check_all(&be, cases);
}

/// Casts between the float types (`cast_<from>_<to>`, exact): random values over a wide range
/// and the edges of each rounding: ties of bf16 and f16 (to even, both ways), f64 values just
/// past a tie (one rounding, not two through f32), half subnormals, the end of f16's range (→
/// inf) and of f32's (f64 → inf); no NaN (NaN ≠ NaN in an exact comparison).
fn cast_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(13);
    let mut vals: Vec<f64> = (0..1001)
        .map(|_| r.range(-3.0, 3.0) * 10f64.powi(r.below(9) as i32 - 4))
        .collect();
    let p2 = |e: i32| 2f64.powi(e);
    vals.extend([
        1.0 + p2(-8),
        1.0 + 3.0 * p2(-8),
        1.0 + p2(-8) + p2(-40),
        1.0 + p2(-11),
        1.0 + 3.0 * p2(-11),
        1.0 + p2(-11) + p2(-40),
        p2(-20),
        -3.0 * p2(-24),
        p2(-130),
        65504.0,
        65520.0,
        -70000.0,
        1e39,
        -1e300,
        1e-310,
        f64::INFINITY,
        -0.0,
    ]);
    let n = vals.len();
    let floats = [DType::F32, DType::F64, DType::BF16, DType::F16];
    let mut cs = Vec::new();
    for from in floats {
        let x = Tensor::new([n], vals.clone())
            .unwrap()
            .to_dtype(from)
            .unwrap();
        for to in floats.into_iter().filter(|&t| t != from) {
            let mut c = case(
                format!("cast {from:?} -> {to:?}"),
                Op::Cast(to),
                vec![x.clone()],
                vec![meta(&[n], to)],
            );
            c.exact = vec![0];
            cs.push(c);
        }
    }
    cs
}

/// Ops on empty tensors whose outputs are not empty: the host must fill them (zeros, or the
/// norm of nothing), since no kernel runs (outputs poisoned, so a missing fill shows).
fn empty_inputs_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(14);
    let mut cs = Vec::new();
    let (c, s) = (37, 5);
    let e = Tensor::zeros([0, c], F32);
    cs.push(case(
        "layer_norm_backward rows=0",
        Op::LayerNormBackward {
            eps: 1e-5,
            row_stride: 1,
        },
        vec![
            e.clone(),
            e.clone(),
            rnd(&mut r, &[c], F32),
            Tensor::zeros([0], F32),
            Tensor::zeros([0], F32),
        ],
        vec![meta(&[0, c], F32), meta(&[c], F32), meta(&[c], F32)],
    ));
    // rows of no columns: each norm is 0
    cs.push(case(
        "l2_normalize of [6, 0]",
        Op::L2Normalize { eps: 1e-12 },
        vec![Tensor::zeros([6, 0], F32)],
        vec![meta(&[6, 0], F32), meta(&[6], F32)],
    ));
    for (red, x) in [
        (Reduce::SumRows, e.clone()),
        (Reduce::SumLast, Tensor::zeros([7, 0], F32)),
        (Reduce::SumAll, Tensor::zeros([0], F32)),
    ] {
        let out = red.out_shape(x.shape());
        cs.push(case(
            format!("reduce {red:?} of nothing"),
            Op::Reduce(red),
            vec![x],
            vec![Meta::new(out, F32)],
        ));
    }
    cs.push(case(
        "matmul m=0",
        Op::MatMul {
            trans_a: false,
            trans_b: false,
            row_stride: 1,
        },
        vec![Tensor::zeros([0, 9], F32), rnd(&mut r, &[9, 7], F32)],
        vec![meta(&[0, 7], F32)],
    ));
    cs.push(case(
        "segment_mean P=0",
        Op::SegmentMean { segments: s },
        vec![e.clone(), idx(vec![])],
        vec![meta(&[s, c], F32), meta(&[s], F32)],
    ));
    cs.push(case(
        "gather of no ids",
        Op::Gather,
        vec![rnd(&mut r, &[11, c], F32), idx(vec![])],
        vec![meta(&[0, c], F32)],
    ));
    cs.push(case(
        "clip_scale of an empty gradient",
        Op::ClipScale { max_norm: 1.0 },
        vec![Tensor::zeros([0], F32)],
        vec![meta(&[], F32), meta(&[], F32)],
    ));
    let hyper = Tensor::new([2], vec![1e-3f32, 7.0]).unwrap();
    let none = Tensor::zeros([0], F32);
    cs.push(case(
        "adamw n=0",
        Op::AdamW(AdamWConfig::default()),
        vec![
            none.clone(),
            none.clone(),
            none.clone(),
            none,
            scalar(0.7, F32),
            hyper,
        ],
        vec![meta(&[0], F32); 3],
    ));
    cs
}

#[test]
fn casts_and_empty_inputs() {
    let Some(be) = cuda() else { return };
    let mut cases = cast_cases();
    cases.extend(empty_inputs_cases());
    check_all(&be, cases);
}

/// Every case list of this file.
/// u8 spikes (`LifConfig::u8_spikes`): LIF writing them in every kernel form and storage type,
/// and everything that reads them (matmul on either side, aggregation and its backward, the cast
/// to each float type, the layout moves), on random 0/1 spikes.
fn u8_spikes_cases() -> Vec<Case> {
    let mut r = SplitMix64::new(11);
    let mut cs = Vec::new();
    // some spikes as bytes other than 1, which read as 1 on both backends
    let spikes = |r: &mut SplitMix64, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<u8> = (0..n)
            .map(|i| u8::from(r.uniform() < 0.4) * [1, 1, 2, 255][i % 4])
            .collect();
        Tensor::new(shape.to_vec(), v).unwrap()
    };
    let u8 = DType::U8;
    for dt in [DType::F32, DType::F64] {
        // LIF: the _t8, _t16 and plain forms, with and without V
        for (k, t) in [5usize, 13, 21].into_iter().enumerate() {
            let n = 1037;
            let cfg = LifConfig {
                v_th: 0.6,
                membrane: k % 2 == 0,
                u8_spikes: true,
                learnable_tau: k == 1,
                ..LifConfig::default()
            };
            let mut ins = vec![rand_t(&mut r, &[t, n], dt, -0.5, 2.0)];
            if cfg.learnable_tau {
                ins.push(scalar(2.5, dt));
            }
            let v_shape = if cfg.membrane { vec![t, n] } else { vec![0] };
            let mut c = case(
                format!("lif u8 spikes T={t} v={} {dt:?}", cfg.membrane),
                Op::Lif(cfg),
                ins,
                vec![meta(&[t, n], u8), meta(&v_shape, dt), meta(&[t, n], dt)],
            );
            c.exact = vec![0];
            cs.push(c);
        }
        // matmul: spikes on the left (s·W, batched too) and on the right (the rate readout)
        let (m, k, n) = (37, 53, 29);
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            let op = Op::MatMul {
                trans_a: ta,
                trans_b: tb,
                row_stride: 1,
            };
            cs.push(case(
                format!("matmul u8 a ta={ta} tb={tb} {dt:?}"),
                op.clone(),
                vec![spikes(&mut r, &ash), rnd(&mut r, &bsh, dt)],
                vec![meta(&[m, n], dt)],
            ));
            cs.push(case(
                format!("matmul u8 b ta={ta} tb={tb} {dt:?}"),
                op,
                vec![rnd(&mut r, &ash, dt), spikes(&mut r, &bsh)],
                vec![meta(&[m, n], dt)],
            ));
        }
        cs.push(case(
            format!("matmul batched u8 a {dt:?}"),
            Op::MatMul {
                trans_a: false,
                trans_b: false,
                row_stride: 1,
            },
            vec![spikes(&mut r, &[3, m, k]), rnd(&mut r, &[3, k, n], dt)],
            vec![meta(&[3, m, n], dt)],
        ));
        // aggregation and its backward on u8 spikes, zero in-degree nodes included
        let (tn, nodes, h) = (3, 301, 2);
        let c = 2 * h * 11;
        let g = graph(&mut r, nodes, 40, 0.1);
        let e = g[1].numel();
        let alpha = rand_t(&mut r, &[e, h], dt, 0.05, 1.0);
        let s = spikes(&mut r, &[tn, nodes, c]);
        let mut ins = vec![alpha.clone(), s.clone()];
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("aggregate u8 {dt:?}"),
            Op::Aggregate,
            ins,
            vec![meta(&[tn, nodes, c], dt)],
        ));
        let mut ins = vec![rnd(&mut r, &[tn, nodes, c], dt), alpha, s];
        ins.extend(g.iter().cloned());
        cs.push(case(
            format!("aggregate_backward u8 {dt:?}"),
            Op::AggregateBackward,
            ins,
            vec![meta(&[e, h], dt), meta(&[tn, nodes, c], dt)],
        ));
    }
    // the cast to every float type, and the layout moves on u8 (1-byte words)
    let s = spikes(&mut r, &[7, 33, 5]);
    for to in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let mut c = case(
            format!("cast u8 -> {to:?}"),
            Op::Cast(to),
            vec![s.clone()],
            vec![meta(&[7, 33, 5], to)],
        );
        c.exact = vec![0];
        cs.push(c);
    }
    let moves = [
        (Op::Permute(vec![2, 0, 1]), vec![s.clone()], [5, 7, 33]),
        (
            Op::Concat { axis: 1 },
            vec![s.clone(), s.clone()],
            [7, 66, 5],
        ),
        (
            Op::Slice {
                axis: 1,
                start: 3,
                len: 20,
            },
            vec![s.clone()],
            [7, 20, 5],
        ),
        (Op::Reshape(Shape::new([33, 7, 5])), vec![s], [33, 7, 5]),
    ];
    for (op, ins, shape) in moves {
        let mut c = case(format!("{} u8", op.name()), op, ins, vec![meta(&shape, u8)]);
        c.exact = vec![0];
        cs.push(c);
    }
    cs
}

#[test]
fn u8_spikes() {
    let Some(be) = cuda() else { return };
    let cases = u8_spikes_cases();
    let half = halved_all(&cases);
    check_all(&be, cases.into_iter().chain(half).collect());
}

fn all_cases() -> [Vec<Case>; 11] {
    [
        u8_spikes_cases(),
        cast_cases(),
        empty_inputs_cases(),
        basic_ops_cases(),
        layout_ops_cases(),
        norm_ops_cases(),
        lif_all_options_cases(),
        gat_and_aggregate_cases(),
        infonce_batches_cases(),
        infonce_modes_cases(),
        segment_and_optim_cases(),
    ]
}

/// Runs here too (no GPU needed): every case is accepted by the CPU reference, so the cases
/// themselves (arity, shapes, dtypes, index validity) are right before they reach a GPU; the
/// same for their bf16 and f16 forms.
#[test]
fn cpu_reference_accepts_every_case() {
    let mut bad = Vec::new();
    let mut n = 0;
    for cases in all_cases() {
        let half = halved_all(&cases);
        for c in cases.into_iter().chain(half) {
            n += 1;
            match run(&CpuBackend, &c, false) {
                Ok(out) => {
                    for (i, (o, m)) in out.iter().zip(&c.outs).enumerate() {
                        if o.shape() != &m.shape || o.to_f64_vec().iter().any(|v| v.is_nan()) {
                            bad.push(format!("{}: output {i} is NaN or misshaped", c.name));
                        }
                    }
                }
                Err(e) => bad.push(format!("{}: {e}", c.name)),
            }
            // The f64 truth that check_all falls back on must exist for every f32 case.
            if c.outs.iter().any(|o| o.dtype == F32) && !has_half(&c) {
                if let Err(e) = widened(&c).and_then(|w| run(&CpuBackend, &w, false)) {
                    bad.push(format!("{} (f64 truth): {e}", c.name));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {n} cases rejected:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The host check of a graph runs once per upload (`CudaBackend::check_graph` remembers it), so
/// the same buffers rewritten with a bad edge must be checked, and rejected, again.
#[test]
fn rewritten_graph_is_checked_again() {
    let Some(be) = cuda() else { return };
    let mut r = SplitMix64::new(12);
    let (n, h, f) = (9, 2, 5);
    let [row_ptr, src, _, _] = graph(&mut r, n, 3, 0.2);
    let e = src.numel();
    let ins = [
        rnd(&mut r, &[n, h, f], F32),
        rnd(&mut r, &[h, f], F32),
        rnd(&mut r, &[h, f], F32),
        row_ptr,
        src.clone(),
    ];
    let mut bufs = Vec::new();
    for t in &ins {
        let mut b = be.alloc(t.dtype(), t.numel()).unwrap();
        be.write(&mut b, t).unwrap();
        bufs.push(b);
    }
    let outs = [meta(&[n, h, f], F32), meta(&[n, h], F32)];
    let mut out_bufs: Vec<_> = outs
        .iter()
        .map(|o| be.alloc(o.dtype, o.shape.numel()).unwrap())
        .collect();
    let op = Op::Gat(GatAttrs {
        negative_slope: 0.2,
        edge_bias: false,
    });
    let in_metas: Vec<Meta> = ins
        .iter()
        .map(|t| Meta::new(t.shape().clone(), t.dtype()))
        .collect();
    let mut gat = |bufs: &[gshn::backend::CudaBuffer]| {
        execute_buffers(&be, &op, bufs.iter().zip(&in_metas), &mut out_bufs, &outs)
    };
    gat(&bufs).expect("a valid graph runs");
    gat(&bufs).expect("and runs again (checked once)");
    let mut bad = src.data::<i32>().unwrap().to_vec();
    bad[e - 1] = n as i32;
    be.write(&mut bufs[4], &idx(bad)).unwrap();
    let err = gat(&bufs).expect_err("a rewritten src with node n must be rejected");
    assert!(err.to_string().contains("is not a node"), "{err}");
}

/// The eager fused-op API (`gshn::fused`) on GPU memory, as `examples/cuda_borrowed.rs` uses
/// it: uploads once, chains ops on the device, compares with the CPU.
#[path = "../examples/cuda_borrowed.rs"]
mod cuda_borrowed;

#[test]
fn eager_api_on_device_memory() {
    cuda_borrowed::main().unwrap();
}

/// LIF forward on `be` over CudaSlices lent to it, allocated and uploaded on the stream `st`
/// (the backend's or another): spikes, v, h of x[T, N] (f32), written in place.
fn lif_on_lent(
    be: &CudaBackend,
    st: &std::sync::Arc<cudarc::driver::CudaStream>,
    xs: &[f32],
    t: usize,
    n: usize,
) -> Vec<cudarc::driver::CudaSlice<f32>> {
    use gshn::backend::Lent;
    let dx = st.clone_htod(xs).unwrap();
    let mut outs: Vec<_> = (0..3)
        .map(|_| st.clone_htod(&vec![f32::NAN; t * n]).unwrap())
        .collect();
    {
        let ins = [Lent::slice(be, &dx, [t, n]).unwrap()];
        let [o0, o1, o2] = &mut outs[..] else {
            unreachable!()
        };
        let mut lent = [o0, o1, o2].map(|o| Lent::slice_mut(be, o, [t, n]).unwrap());
        be.execute_lent(&Op::Lif(LifConfig::default()), &ins, &mut lent)
            .unwrap();
    }
    outs
}

/// LIF forward through the C ABI's CPU entry point: spikes, v, h of x[T, N] (f32).
fn lif_cpu_c_abi(xs: &[f32], t: usize, n: usize) -> [Vec<f32>; 3] {
    use gshn::capi::{gshn_lif_forward_cpu, gshn_lif_params_default, GSHN_F32, GSHN_OK};
    let params = gshn_lif_params_default();
    let [mut s, mut v, mut h] = [(); 3].map(|_| vec![0f32; t * n]);
    // SAFETY: every buffer holds T·N f32.
    let rc = unsafe {
        gshn_lif_forward_cpu(
            &params,
            GSHN_F32,
            t as i64,
            n as i64,
            xs.as_ptr().cast(),
            s.as_mut_ptr().cast(),
            v.as_mut_ptr().cast(),
            h.as_mut_ptr().cast(),
        )
    };
    assert_eq!(rc, GSHN_OK);
    [s, v, h]
}

/// Caller-owned device memory (issue 18): the C ABI's CUDA path lends the caller's buffers to
/// the kernels and writes its outputs in place, with the CPU path's results, also when the
/// spikes are written over the input (that input is copied first); the Rust API runs the same
/// op on `CudaSlice`s (`Lent`).
#[test]
fn lent_device_buffers() {
    use cudarc::driver::{CudaSlice, DevicePtr};
    use gshn::backend::Lent;
    use gshn::capi::{gshn_lif_forward_cuda, gshn_lif_params_default};
    use gshn::capi::{GSHN_F32, GSHN_OK};
    use std::ffi::c_void;
    let Some(be) = cuda() else { return };
    let (t, n) = (5usize, 1037usize);
    let x = rand_t(&mut SplitMix64::new(21), &[t, n], F32, -0.5, 2.0);
    let xs = x.data::<f32>().unwrap().to_vec();
    let params = gshn_lif_params_default();
    let [s0, v0, h0] = &lif_cpu_c_abi(&xs, t, n);
    let st = be.stream();
    let ptr = |s: &CudaSlice<f32>| s.device_ptr(st).0 as *mut c_void;
    let read = |s: &CudaSlice<f32>| st.clone_dtoh(s).unwrap();
    let close = |what: &str, got: &[f32], want: &[f32]| close_f32(what, got, want, 1e-6);
    for aliased in [false, true] {
        let dx = st.clone_htod(&xs).unwrap();
        let outs: Vec<CudaSlice<f32>> = (0..3)
            .map(|_| st.clone_htod(&vec![f32::NAN; t * n]).unwrap())
            .collect();
        st.synchronize().unwrap();
        // aliased: the spikes are written over x
        let spikes = if aliased { ptr(&dx) } else { ptr(&outs[0]) };
        // SAFETY: device buffers of T·N f32 on device 0; the legacy default stream (NULL)
        let rc = unsafe {
            gshn_lif_forward_cuda(
                &params,
                GSHN_F32,
                t as i64,
                n as i64,
                ptr(&dx),
                spikes,
                ptr(&outs[1]),
                ptr(&outs[2]),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, GSHN_OK, "aliased={aliased}");
        be.context().synchronize().unwrap();
        let s = if aliased { read(&dx) } else { read(&outs[0]) };
        assert_eq!(&s, s0, "C ABI spikes, aliased={aliased}");
        close("C ABI v", &read(&outs[1]), v0);
        close("C ABI h", &read(&outs[2]), h0);
    }
    // the same op on lent CudaSlices, written in place
    let outs = lif_on_lent(&be, st, &xs, t, n);
    be.synchronize().unwrap();
    assert_eq!(&read(&outs[0]), s0, "Lent spikes");
    close("Lent v", &read(&outs[1]), v0);
    close("Lent h", &read(&outs[2]), h0);
    // ... and on slices of a stream of the caller's (its own context handle, as a library
    // user has): the op waits for the upload queued there, and the read queued there waits
    // for the op, with no synchronisation in between (large, so that a missing order shows)
    let (t2, n2) = (4usize, 1usize << 21);
    let x2 = rand_t(&mut SplitMix64::new(22), &[t2, n2], F32, -0.5, 2.0);
    let xs2 = x2.data::<f32>().unwrap().to_vec();
    let [s2, v2, h2] = &lif_cpu_c_abi(&xs2, t2, n2);
    let theirs = cudarc::driver::CudaContext::new(be.ordinal())
        .unwrap()
        .new_stream()
        .unwrap();
    let outs = lif_on_lent(&be, &theirs, &xs2, t2, n2);
    let read_theirs = |s: &CudaSlice<f32>| theirs.clone_dtoh(s).unwrap();
    assert_eq!(&read_theirs(&outs[0]), s2, "spikes on the caller's stream");
    close("v on the caller's stream", &read_theirs(&outs[1]), v2);
    close("h on the caller's stream", &read_theirs(&outs[2]), h2);
    // a slice shorter than the shape is refused before anything runs
    let short: CudaSlice<f32> = st.alloc_zeros(t * n - 1).unwrap();
    assert!(Lent::slice(&be, &short, [t, n]).is_err());
}

/// The `*_cuda` entry points run on the caller's stream itself (issue 18), from several
/// threads at once, each with its own stream; and `CudaBackend::on_stream` gives Rust callers
/// the same: a backend on their stream, sharing the loaded kernels.
#[test]
fn ops_run_on_the_callers_streams() {
    use cudarc::driver::{CudaSlice, DevicePtr};
    use gshn::capi::{gshn_lif_forward_cuda, gshn_lif_params_default};
    use gshn::capi::{GSHN_F32, GSHN_OK};
    let Some(be) = cuda() else { return };
    let (t, n) = (4usize, 2113usize);
    let params = gshn_lif_params_default();
    // input k and the CPU's spikes for it
    let input = |k: u64| {
        let x = rand_t(&mut SplitMix64::new(40 + k), &[t, n], F32, -0.5, 2.0);
        x.data::<f32>().unwrap().to_vec()
    };
    let cpu_spikes = |xs: &[f32]| lif_cpu_c_abi(xs, t, n)[0].clone();
    let streams: Vec<_> = (0..3).map(|_| be.context().new_stream().unwrap()).collect();
    // three threads, each on its own stream, several calls each
    std::thread::scope(|scope| {
        for (k, st) in streams.iter().enumerate() {
            let params = &params;
            scope.spawn(move || {
                for round in 0..4u64 {
                    let xs = input(10 * k as u64 + round);
                    let dx = st.clone_htod(&xs).unwrap();
                    let outs: Vec<CudaSlice<f32>> = (0..3)
                        .map(|_| st.clone_htod(&vec![f32::NAN; t * n]).unwrap())
                        .collect();
                    let ptr = |s: &CudaSlice<f32>| s.device_ptr(st).0 as *mut std::ffi::c_void;
                    // SAFETY: device buffers of T·N f32 on device 0, allocated on `st`.
                    let rc = unsafe {
                        gshn_lif_forward_cuda(
                            params,
                            GSHN_F32,
                            t as i64,
                            n as i64,
                            ptr(&dx),
                            ptr(&outs[0]),
                            ptr(&outs[1]),
                            ptr(&outs[2]),
                            0,
                            st.cu_stream().cast(),
                        )
                    };
                    assert_eq!(rc, GSHN_OK, "stream {k}, round {round}");
                    // read back in the stream's order, with no other synchronisation
                    let got = st.clone_dtoh(&outs[0]).unwrap();
                    let same = got == cpu_spikes(&xs);
                    report(
                        &format!("C ABI on caller stream {k} round {round}"),
                        same,
                        0.0,
                        "",
                    );
                    assert!(same, "stream {k}, round {round}: spikes differ");
                }
            });
        }
    });
    // Rust: a backend on the caller's stream, lent slices
    let st = &streams[0];
    let mine = be.on_stream(st.clone()).unwrap();
    let xs = input(99);
    let outs = lif_on_lent(&mine, mine.stream(), &xs, t, n);
    let same = st.clone_dtoh(&outs[0]).unwrap() == cpu_spikes(&xs);
    report("Lent on the caller's stream", same, 0.0, "");
    assert!(same, "Lent on the caller's stream: spikes differ");
    assert_eq!(mine.stream().cu_stream(), st.cu_stream());
}

/// Masked softmax rows with an infinite or NaN kept logit are NaN on both backends (a GPU that
/// tested the sum `> 0` for "a kept key" wrote such rows as zeros), a fully masked row 0.
#[test]
fn masked_softmax_non_finite_rows() {
    let l = 41;
    let mut r = SplitMix64::new(24);
    let mut x = rand_t(&mut r, &[4, 2, l], F32, -3.0, 3.0).to_f64_vec();
    x[3] = f64::INFINITY; // batch 0, group 0: a kept +inf
    x[2 * l + 40] = f64::NAN; // batch 1, group 0: a kept NaN
    x[5 * l + 7] = f64::NEG_INFINITY; // batch 2, group 1: one kept −inf (finite row)
    let mut keep = vec![1.0; 4 * l];
    keep[l + 5] = 0.0;
    keep[3 * l..].fill(0.0); // batch 3 fully masked
    let c = case(
        "masked_softmax non-finite rows",
        Op::MaskedSoftmax,
        vec![
            Tensor::new([4, 2, l], x).unwrap().to_dtype(F32).unwrap(),
            Tensor::new([4, l], keep).unwrap().to_dtype(F32).unwrap(),
        ],
        vec![meta(&[4, 2, l], F32)],
    );
    let want = run(&CpuBackend, &c, false).unwrap()[0].to_f64_vec();
    // the reference itself (checked without a GPU too): rows 0 and 2 NaN, the others finite,
    // batch 3 zeros
    for (i, row) in want.chunks(l).enumerate() {
        let nan = i == 0 || i == 2;
        assert!(
            row.iter().all(|v| v.is_nan() == nan),
            "CPU row {i}: {row:?}"
        );
    }
    assert!(want[6 * l..].iter().all(|&v| v == 0.0));
    let Some(be) = cuda() else { return };
    let got = run(&be, &c, true).unwrap()[0].to_f64_vec();
    let bad = (got.iter().zip(&want))
        .position(|(g, w)| (g.is_nan() != w.is_nan()) || (!w.is_nan() && (g - w).abs() > 1e-6));
    report(&c.name, bad.is_none(), 0.0, "");
    assert_eq!(bad, None, "first difference; CPU {want:?}, GPU {got:?}");
}

/// PLIF through the C ABI with tau in device memory (`gshn_lif_*_tau_cuda`: no host
/// synchronisation to read it): the CPU entry points' results for a valid tau; for one the
/// host cannot check (not > 1), NaN membranes and gradients and no spike, with success codes.
#[test]
fn c_abi_tau_from_device_memory() {
    use cudarc::driver::{CudaSlice, DevicePtr};
    use gshn::capi::gshn_lif_forward_u8_tau_cuda;
    use gshn::capi::{gshn_lif_backward_tau_cpu, gshn_lif_backward_tau_cuda};
    use gshn::capi::{gshn_lif_forward_tau_cpu, gshn_lif_forward_tau_cuda};
    use gshn::capi::{gshn_lif_params_default, GSHN_F32, GSHN_OK};
    use std::ffi::c_void;
    let Some(be) = cuda() else { return };
    let (t, n) = (6usize, 1531usize);
    let mut rng = SplitMix64::new(23);
    let mut host = |lo, hi| {
        rand_t(&mut rng, &[t, n], F32, lo, hi)
            .data::<f32>()
            .unwrap()
            .to_vec()
    };
    let (xs, gs, gv) = (host(-0.5, 2.0), host(-1.0, 1.0), host(-1.0, 1.0));
    let mut params = gshn_lif_params_default();
    params.tau = 7.0; // not used by the _tau entries
    let (ti, ni) = (t as i64, n as i64);
    // the CPU: spikes, v, h, grad_x and grad_tau at tau 2.5
    let tau = [2.5f32];
    let [mut s, mut v, mut h, mut gx] = [(); 4].map(|_| vec![0f32; t * n]);
    let mut gtau = [0f32];
    // SAFETY: host buffers of T·N f32, tau and grad_tau one each.
    unsafe {
        let rc = gshn_lif_forward_tau_cpu(
            &params,
            GSHN_F32,
            ti,
            ni,
            tau.as_ptr().cast(),
            xs.as_ptr().cast(),
            s.as_mut_ptr().cast(),
            v.as_mut_ptr().cast(),
            h.as_mut_ptr().cast(),
        );
        assert_eq!(rc, GSHN_OK);
        let rc = gshn_lif_backward_tau_cpu(
            &params,
            GSHN_F32,
            ti,
            ni,
            tau.as_ptr().cast(),
            h.as_ptr().cast(),
            gs.as_ptr().cast(),
            gv.as_ptr().cast(),
            gx.as_mut_ptr().cast(),
            gtau.as_mut_ptr().cast(),
        );
        assert_eq!(rc, GSHN_OK);
    }
    let st = be.stream();
    let ptr = |b: &CudaSlice<f32>| b.device_ptr(st).0 as *mut c_void;
    let read = |b: &CudaSlice<f32>| st.clone_dtoh(b).unwrap();
    let close = |what: &str, got: &[f32], want: &[f32], tol: f64| {
        close_f32(&format!("C ABI tau on the device: {what}"), got, want, tol)
    };
    for fed in [2.5f32, 0.5] {
        let up = |v: &[f32]| st.clone_htod(v).unwrap();
        let (dtau, dx, dgs, dgv) = (up(&[fed]), up(&xs), up(&gs), up(&gv));
        // poisoned: NaN where the results are finite, finite where they must be NaN
        let poison = if fed > 1.0 { f32::NAN } else { 7.0 };
        let outs: Vec<CudaSlice<f32>> = (0..4).map(|_| up(&vec![poison; t * n])).collect();
        let dgtau = up(&[poison]);
        // SAFETY: device buffers of T·N f32 (tau and grad_tau one) on device 0, on `st`.
        unsafe {
            let rc = gshn_lif_forward_tau_cuda(
                &params,
                GSHN_F32,
                ti,
                ni,
                ptr(&dtau),
                ptr(&dx),
                ptr(&outs[0]),
                ptr(&outs[1]),
                ptr(&outs[2]),
                0,
                st.cu_stream().cast(),
            );
            assert_eq!(rc, GSHN_OK, "forward, tau {fed}");
            let rc = gshn_lif_backward_tau_cuda(
                &params,
                GSHN_F32,
                ti,
                ni,
                ptr(&dtau),
                ptr(&outs[2]),
                ptr(&dgs),
                ptr(&dgv),
                ptr(&outs[3]),
                ptr(&dgtau),
                0,
                st.cu_stream().cast(),
            );
            assert_eq!(rc, GSHN_OK, "backward, tau {fed}");
        }
        let got: Vec<Vec<f32>> = outs.iter().map(read).collect();
        let g_tau = read(&dgtau);
        if fed > 1.0 {
            let same = got[0] == s;
            report("C ABI tau on the device: spikes", same, 0.0, "");
            assert!(same, "spikes differ");
            // the u8 form writes the same spikes as bytes
            let s8: CudaSlice<u8> = st.clone_htod(&vec![0xa5u8; t * n]).unwrap();
            // SAFETY: as above; s8 holds T·N bytes; v and h are rewritten with their values.
            let rc = unsafe {
                gshn_lif_forward_u8_tau_cuda(
                    &params,
                    GSHN_F32,
                    ti,
                    ni,
                    ptr(&dtau),
                    ptr(&dx),
                    s8.device_ptr(st).0 as *mut u8,
                    ptr(&outs[1]),
                    ptr(&outs[2]),
                    0,
                    st.cu_stream().cast(),
                )
            };
            assert_eq!(rc, GSHN_OK, "u8 forward");
            let bytes: Vec<f32> = st
                .clone_dtoh(&s8)
                .unwrap()
                .iter()
                .map(|&b| f32::from(b))
                .collect();
            let same = bytes == s;
            report("C ABI tau on the device: u8 spikes", same, 0.0, "");
            assert!(same, "u8 spikes differ");
            close("v", &got[1], &v, 1e-6);
            close("h", &got[2], &h, 1e-6);
            close("grad_x", &got[3], &gx, 1e-5);
            // a sum of T·N terms of both signs, each an ulp apart at most: cancellation
            // can lift the relative error of the sum past 1e-5
            close("grad_tau", &g_tau, &gtau, 1e-4);
        } else {
            let nan = |b: &[f32]| b.iter().all(|x| x.is_nan());
            let ok = got[0].iter().all(|&x| x == 0.0)
                && nan(&got[1])
                && nan(&got[2])
                && nan(&got[3])
                && nan(&g_tau);
            report("C ABI tau on the device: tau 0.5 gives NaN", ok, 0.0, "");
            assert!(
                ok,
                "a tau of 0.5 read on the device must give NaN outputs and no spike"
            );
        }
    }
}

/// The C ABI's `*_cuda` entry points on bf16 and f16 buffers (statistics f32): the same bits
/// as the CUDA backend's own run of the op on the same input.
#[test]
fn c_abi_half_buffers_on_cuda() {
    use cudarc::driver::{CudaSlice, DevicePtr};
    use gshn::capi::{gshn_lif_forward_cuda, gshn_lif_params_default};
    use gshn::capi::{GSHN_BF16, GSHN_F16, GSHN_OK};
    let Some(be) = cuda() else { return };
    let (t, n) = (3usize, 777usize);
    let st = be.stream();
    let words = |x: &Tensor| -> Vec<u16> {
        match x.dtype() {
            DType::BF16 => bytemuck::cast_slice(x.data::<half::bf16>().unwrap()).to_vec(),
            _ => bytemuck::cast_slice(x.data::<half::f16>().unwrap()).to_vec(),
        }
    };
    for (dt, code) in [(DType::BF16, GSHN_BF16), (DType::F16, GSHN_F16)] {
        let x = rand_t(&mut SplitMix64::new(7), &[t, n], dt, -0.5, 2.0);
        let op = Op::Lif(LifConfig::default());
        let metas = op.infer(&[meta(&[t, n], dt)]).unwrap();
        let want = run(&be, &case("lif", op, vec![x.clone()], metas), false).unwrap();
        let dx = st.clone_htod(&words(&x)).unwrap();
        let s: CudaSlice<u16> = st.clone_htod(&vec![0xFFFFu16; t * n]).unwrap();
        let v: CudaSlice<u16> = st.clone_htod(&vec![0xFFFFu16; t * n]).unwrap();
        let h: CudaSlice<f32> = st.clone_htod(&vec![f32::NAN; t * n]).unwrap();
        let p = |a: u64| a as *mut std::ffi::c_void;
        // SAFETY: device buffers of T·N 16-bit words (h: f32) on device 0, allocated on `st`.
        let rc = unsafe {
            gshn_lif_forward_cuda(
                &gshn_lif_params_default(),
                code,
                t as i64,
                n as i64,
                p(dx.device_ptr(st).0),
                p(s.device_ptr(st).0),
                p(v.device_ptr(st).0),
                p(h.device_ptr(st).0),
                0,
                st.cu_stream().cast(),
            )
        };
        assert_eq!(rc, GSHN_OK, "{dt:?}");
        let same = st.clone_dtoh(&s).unwrap() == words(&want[0])
            && st.clone_dtoh(&v).unwrap() == words(&want[1])
            && st.clone_dtoh(&h).unwrap() == want[2].data::<f32>().unwrap();
        report(&format!("C ABI LIF {dt:?} on cuda"), same, 0.0, "");
        assert!(
            same,
            "{dt:?}: the C ABI's outputs differ from the backend's"
        );
    }
}

/// The C ABI's `_u8` CUDA entries: `gshn_lif_forward_u8_cuda` writes the CPU path's spikes as
/// bytes, and `gshn_aggregate_{forward,backward}_u8_cuda` on those bytes give what the CPU's
/// float entries give on the same spikes as floats (f32; sums in another order: 1e-5, and a
/// non-finite output fails).
#[test]
fn c_abi_u8_spikes_on_cuda() {
    use cudarc::driver::{CudaSlice, DevicePtr};
    use gshn::capi::*;
    let Some(be) = cuda() else { return };
    let st = be.stream();
    let p = |a: u64| a as *mut std::ffi::c_void;
    // LIF, T = 3, N = 1000 (not a multiple of a block)
    let (t, n) = (3usize, 1000usize);
    let mut rng = SplitMix64::new(21);
    let xs: Vec<f32> = (0..t * n).map(|_| rng.range(-0.5, 2.5) as f32).collect();
    let want = lif_cpu_c_abi(&xs, t, n);
    let dx = st.clone_htod(&xs).unwrap();
    let s8: CudaSlice<u8> = st.clone_htod(&vec![0xFFu8; t * n]).unwrap();
    let (v, h): (CudaSlice<f32>, CudaSlice<f32>) = (
        st.clone_htod(&vec![f32::NAN; t * n]).unwrap(),
        st.clone_htod(&vec![f32::NAN; t * n]).unwrap(),
    );
    let params = gshn_lif_params_default();
    // SAFETY: device buffers of T·N elements on device 0, allocated on `st`.
    let rc = unsafe {
        gshn_lif_forward_u8_cuda(
            &params,
            GSHN_F32,
            t as i64,
            n as i64,
            p(dx.device_ptr(st).0),
            p(s8.device_ptr(st).0).cast(),
            p(v.device_ptr(st).0),
            p(h.device_ptr(st).0),
            0,
            st.cu_stream().cast(),
        )
    };
    assert_eq!(rc, GSHN_OK);
    let spikes: Vec<f32> = st
        .clone_dtoh(&s8)
        .unwrap()
        .iter()
        .map(|&b| f32::from(b))
        .collect();
    let same = spikes == want[0] && st.clone_dtoh(&h).unwrap() == want[2];
    report("C ABI LIF u8 spikes on cuda", same, 0.0, "");
    assert!(same, "u8 spikes or h differ from the CPU path");
    // the aggregation on a ring of 700 nodes with self-loops (E = 1400), T = 2, C = 8, H = 2
    let (nn, tt, c, heads) = (700usize, 2usize, 8usize, 2usize);
    let row_ptr: Vec<i32> = (0..=nn as i32).map(|i| 2 * i).collect();
    let src: Vec<i32> = (0..nn as i32)
        .flat_map(|i| [i, (i + 1) % nn as i32])
        .collect();
    let g = GshnGraph {
        num_nodes: nn as i64,
        num_edges: src.len() as i64,
        row_ptr: row_ptr.as_ptr(),
        src: src.as_ptr(),
    };
    let e = src.len();
    let alpha: Vec<f32> = (0..e * heads).map(|_| rng.range(0.0, 1.0) as f32).collect();
    let bytes: Vec<u8> = (0..tt * nn * c)
        .map(|_| (rng.range(0.0, 1.0) < 0.3) as u8)
        .collect();
    let floats: Vec<f32> = bytes.iter().map(|&b| f32::from(b)).collect();
    let gy: Vec<f32> = (0..tt * nn * c)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    let (mut y, mut ga, mut gs) = (
        vec![0f32; tt * nn * c],
        vec![0f32; e * heads],
        vec![0f32; tt * nn * c],
    );
    let (hi, ti, ci) = (heads as i64, tt as i64, c as i64);
    // SAFETY: host buffers of the sizes the header asks for.
    unsafe {
        let cp = |v: &[f32]| v.as_ptr().cast();
        assert_eq!(
            gshn_aggregate_forward_cpu(
                GSHN_F32,
                &g,
                hi,
                ti,
                ci,
                cp(&alpha),
                cp(&floats),
                y.as_mut_ptr().cast()
            ),
            GSHN_OK
        );
        let rc = gshn_aggregate_backward_cpu(
            GSHN_F32,
            &g,
            hi,
            ti,
            ci,
            cp(&alpha),
            cp(&floats),
            cp(&gy),
            ga.as_mut_ptr().cast(),
            gs.as_mut_ptr().cast(),
        );
        assert_eq!(rc, GSHN_OK);
    }
    let (da, ds, dgy) = (
        st.clone_htod(&alpha).unwrap(),
        st.clone_htod(&bytes).unwrap(),
        st.clone_htod(&gy).unwrap(),
    );
    let [dy, dgs]: [CudaSlice<f32>; 2] = [(); 2].map(|_| st.alloc_zeros(tt * nn * c).unwrap());
    let dga: CudaSlice<f32> = st.alloc_zeros(e * heads).unwrap();
    let cu = |s: u64| p(s).cast_const();
    // SAFETY: device buffers of the sizes the header asks for, on device 0, allocated on `st`.
    unsafe {
        let rc = gshn_aggregate_forward_u8_cuda(
            GSHN_F32,
            &g,
            hi,
            ti,
            ci,
            cu(da.device_ptr(st).0),
            cu(ds.device_ptr(st).0).cast(),
            p(dy.device_ptr(st).0),
            0,
            st.cu_stream().cast(),
        );
        assert_eq!(rc, GSHN_OK);
        let rc = gshn_aggregate_backward_u8_cuda(
            GSHN_F32,
            &g,
            hi,
            ti,
            ci,
            cu(da.device_ptr(st).0),
            cu(ds.device_ptr(st).0).cast(),
            cu(dgy.device_ptr(st).0),
            p(dga.device_ptr(st).0),
            p(dgs.device_ptr(st).0),
            0,
            st.cu_stream().cast(),
        );
        assert_eq!(rc, GSHN_OK);
    }
    for (name, got, want) in [
        ("y", st.clone_dtoh(&dy).unwrap(), y),
        ("grad_alpha", st.clone_dtoh(&dga).unwrap(), ga),
        ("grad_s", st.clone_dtoh(&dgs).unwrap(), gs),
    ] {
        let tensor = |v: Vec<f32>| Tensor::new([v.len()], v).unwrap();
        let rel = rel_err(&tensor(got), &tensor(want));
        report(
            &format!("C ABI aggregate u8 {name} on cuda"),
            rel <= 1e-5,
            rel,
            "",
        );
        assert!(rel <= 1e-5, "{name}: rel err {rel}");
    }
}
