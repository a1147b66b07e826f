//! Multi-step LIF (DESIGN §3.1): finite-difference checks of the whole BPTT in smooth mode,
//! an independent plain-loop reference (forward + hand-written BPTT), an unfused composition
//! of simple graph ops, SpikingJelly spot values, typed errors and deterministic `g_tau`.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::{LifConfig, Surrogate, Unary};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor, ValueId};
use num_traits::Float;

const SURROGATES: [Surrogate; 4] = [
    Surrogate::ATan(2.0),
    Surrogate::Sigmoid(4.0),
    Surrogate::SuperSpike(3.0),
    Surrogate::Rectangular(1.0),
];

/// Every combination of (hard, decay_input, surrogate, learnable).
fn all_configs() -> Vec<(LifConfig, bool)> {
    let mut out = Vec::new();
    for hard in [true, false] {
        for decay in [true, false] {
            for sur in SURROGATES {
                for learn in [false, true] {
                    let cfg = LifConfig {
                        tau: 2.0,
                        v_th: 1.0,
                        v_reset: hard.then_some(0.0),
                        decay_input: decay,
                        detach_reset: false,
                        surrogate: sur,
                        learnable_tau: false,
                        smooth: false,
                        membrane: true,
                        u8_spikes: false,
                    };
                    out.push((cfg, learn));
                }
            }
        }
    }
    out
}

fn tensor(shape: &[usize], data: Vec<f64>, dtype: DType) -> Tensor {
    Tensor::new(shape, data).unwrap().to_dtype(dtype).unwrap()
}

/// Inputs that make neurons cross threshold: H settles near x (decay_input) or x·tau.
fn inputs(cfg: &LifConfig, t: usize, n: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let hi = if cfg.decay_input { 3.0 } else { 1.4 };
    (0..t * n).map(|_| rng.range(-0.4, hi)).collect()
}

// ---- plain-loop reference ------------------------------------------------------------------

fn cast<F: Float>(x: f64) -> F {
    F::from(x).unwrap()
}

/// Forward of DESIGN §3.1, written out per neuron: (S, V, H).
fn ref_forward<F: Float>(
    cfg: &LifConfig,
    tau: f64,
    x: &[F],
    t: usize,
    n: usize,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (tau, v_th) = (cast::<F>(tau), cast::<F>(cfg.v_th));
    let v_r = cast::<F>(cfg.v_reset.unwrap_or(0.0));
    let (mut s, mut v, mut h) = (
        vec![F::zero(); t * n],
        vec![F::zero(); t * n],
        vec![F::zero(); t * n],
    );
    for j in 0..n {
        let mut vp = v_r;
        for k in 0..t {
            let i = k * n + j;
            let hk = if cfg.decay_input {
                vp + (x[i] - (vp - v_r)) / tau
            } else {
                vp - (vp - v_r) / tau + x[i]
            };
            let z = hk - v_th;
            let sk = if cfg.smooth {
                cast(cfg.surrogate.primitive(z.to_f64().unwrap()))
            } else if z >= F::zero() {
                F::one()
            } else {
                F::zero()
            };
            let vk = match cfg.v_reset {
                Some(_) => hk * (F::one() - sk) + v_r * sk,
                None => hk - v_th * sk,
            };
            (s[i], v[i], h[i]) = (sk, vk, hk);
            vp = vk;
        }
    }
    (s, v, h)
}

/// Hand-written BPTT in f64 from the forward values: (gX, g_tau). g_tau uses the
/// X form of ∂H/∂tau (the kernel uses an H form), so the two are independent.
fn ref_backward(
    cfg: &LifConfig,
    tau: f64,
    x: &[f64],
    gs: &[f64],
    gv: &[f64],
    t: usize,
    n: usize,
) -> (Vec<f64>, f64) {
    let (s, v, h) = ref_forward(cfg, tau, x, t, n);
    let v_r = cfg.v_reset.unwrap_or(0.0);
    let mut gx = vec![0.0; t * n];
    let mut gtau = 0.0;
    for j in 0..n {
        let mut carry = 0.0;
        for k in (0..t).rev() {
            let i = k * n + j;
            let sg = cfg.surrogate.grad(h[i] - cfg.v_th);
            let reset_sg = if cfg.detach_reset { 0.0 } else { sg };
            let dvdh = match cfg.v_reset {
                Some(vr) => 1.0 - s[i] + (vr - h[i]) * reset_sg,
                None => 1.0 - cfg.v_th * reset_sg,
            };
            let gh = gs[i] * sg + (gv[i] + carry) * dvdh;
            gx[i] = if cfg.decay_input { gh / tau } else { gh };
            carry = gh * (1.0 - 1.0 / tau);
            let vp = if k > 0 { v[i - n] } else { v_r };
            let dh_dtau = if cfg.decay_input {
                -(x[i] - (vp - v_r)) / (tau * tau)
            } else {
                (vp - v_r) / (tau * tau)
            };
            gtau += gh * dh_dtau;
        }
    }
    (gx, gtau)
}

// ---- running the fused op ------------------------------------------------------------------

struct Fused {
    s: Vec<f64>,
    v: Vec<f64>,
    h: Vec<f64>,
    gx: Vec<f64>,
    gtau: Option<f64>,
}

/// Runs `lif`/`plif` and the backward of `L = Σ ws ⊙ S + Σ wv ⊙ V` (either term optional).
fn run_fused(
    cfg: &LifConfig,
    learn: bool,
    tau: f64,
    x: &Tensor,
    ws: Option<&Tensor>,
    wv: Option<&Tensor>,
) -> gshn::Result<Fused> {
    let dt = x.dtype();
    let mut g = Graph::new();
    let xv = g.input("x", x.shape().clone(), dt);
    let tv = g.input("tau", [], dt);
    let out = if learn {
        g.plif(xv, tv, *cfg)?
    } else {
        g.lif(xv, *cfg)?
    };
    let mut feeds = vec![(xv, x.clone()), (tv, tensor(&[], vec![tau], dt))];
    let mut loss = None;
    for (o, w) in [(out.spikes, ws), (out.membrane, wv)] {
        let Some(w) = w else { continue };
        // u8 spikes are read through a cast (Mul reads floats only)
        let o = match g.dtype(o)? {
            DType::U8 => g.cast(o, dt)?,
            _ => o,
        };
        let wid = g.input("w", x.shape().clone(), dt);
        feeds.push((wid, w.clone()));
        let p = g.mul(o, wid)?;
        let term = g.sum(p)?;
        loss = Some(match loss {
            Some(l) => g.add(l, term)?,
            None => term,
        });
    }
    let mut fetch = vec![out.spikes, out.membrane, out.charge];
    let mut wrt = vec![xv];
    if learn {
        wrt.push(tv);
    }
    let grads = match loss {
        Some(l) => g.backward(l, &wrt)?,
        None => vec![],
    };
    fetch.extend(&grads);
    let mut ex = Executor::new(CpuBackend, g, &fetch)?;
    for (id, t) in &feeds {
        ex.set(*id, t)?;
    }
    ex.run()?;
    let get = |v: ValueId| ex.get(v).map(|t| t.to_f64_vec());
    Ok(Fused {
        s: get(out.spikes)?,
        v: get(out.membrane)?,
        h: get(out.charge)?,
        gx: match grads.first() {
            Some(&gx) => get(gx)?,
            None => vec![],
        },
        gtau: match grads.get(1) {
            Some(&gt) => Some(get(gt)?[0]),
            None => None,
        },
    })
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: got {a}, want {b}"
        );
    }
}

// ---- (1) finite differences over the whole BPTT (smooth mode) -------------------------------

#[test]
fn fd_gradients_all_options_smooth() {
    let mut total_checked = 0;
    for (ci, (base, learn)) in all_configs().into_iter().enumerate() {
        let mut spiking = 0;
        for seed in 0..3u64 {
            let mut rng = SplitMix64::new(1000 * ci as u64 + seed);
            let (t, n) = (1 + rng.below(6), 1 + rng.below(40));
            let cfg = LifConfig {
                smooth: true,
                tau: rng.range(1.5, 3.0),
                v_th: rng.range(0.7, 1.2),
                v_reset: base.v_reset.map(|_| rng.range(-0.4, 0.2)),
                ..base
            };
            let x = tensor(&[t, n], inputs(&cfg, t, n, &mut rng), DType::F64);
            let tau = tensor(&[], vec![cfg.tau], DType::F64);
            let fwd = run_fused(&cfg, learn, cfg.tau, &x, None, None).unwrap();
            spiking += fwd.s.iter().filter(|&&s| s >= 0.5).count();
            // Exercise both outputs, spikes only (no gV) and membrane only (no gS).
            let which = seed % 3;
            let reports = GradCheck {
                seed,
                ..GradCheck::default()
            }
            .run(&[("x", x), ("tau", tau)], &[true, learn], |g, v| {
                let o = if learn {
                    g.plif(v[0], v[1], cfg)?
                } else {
                    g.lif(v[0], cfg)?
                };
                Ok(match which {
                    0 => vec![o.spikes, o.membrane],
                    1 => vec![o.spikes],
                    _ => vec![o.membrane],
                })
            })
            .unwrap_or_else(|e| panic!("{cfg:?} learn={learn} T={t} N={n}: {e}"));
            total_checked += reports.iter().map(|r| r.checked).sum::<usize>();
        }
        assert!(
            spiking > 0,
            "{base:?}: no neuron crossed threshold, the check is vacuous"
        );
    }
    assert!(total_checked > 1000);
}

/// `membrane: false` (issue 15: V written only when read): V is an empty tensor, and the spikes,
/// the charge and the gradients through the spikes are the same bits as with V written, for
/// every option, in f64, f32 and bf16 (the CPU's own half loops).
#[test]
fn unwritten_membrane_changes_nothing_else() {
    let mut rng = SplitMix64::new(77);
    for (cfg, learn) in all_configs() {
        for dt in [DType::F64, DType::F32, DType::BF16] {
            // wider than one CPU task (256 neurons), with a ragged end
            let (t, n) = (5, 300);
            let x = tensor(&[t, n], inputs(&cfg, t, n, &mut rng), dt);
            let ws = tensor(
                &[t, n],
                (0..t * n).map(|_| rng.range(-1.0, 1.0)).collect(),
                dt,
            );
            let with_v = run_fused(&cfg, learn, cfg.tau, &x, Some(&ws), None).unwrap();
            let cfg_no_v = LifConfig {
                membrane: false,
                ..cfg
            };
            let no_v = run_fused(&cfg_no_v, learn, cfg.tau, &x, Some(&ws), None).unwrap();
            let what = format!("{cfg:?} learn={learn} {dt:?}");
            assert!(no_v.v.is_empty(), "{what}: V written");
            assert_eq!(with_v.v.len(), t * n, "{what}");
            assert!(with_v.s.contains(&1.0), "{what}: no spike");
            assert_eq!(no_v.s, with_v.s, "{what}: spikes");
            assert_eq!(no_v.h, with_v.h, "{what}: charge");
            assert_eq!(no_v.gx, with_v.gx, "{what}: gradient of x");
            assert_eq!(no_v.gtau, with_v.gtau, "{what}: gradient of tau");
        }
    }
}

/// `u8_spikes` (issue 15: compact spikes): S is u8 holding exactly the float run's 0/1 spikes,
/// and V, H and the gradients through the spikes (read back through a cast) are the same bits,
/// for every option, in every storage type, across CPU tasks (4096 neurons) and lane blocks.
#[test]
fn u8_spikes_equal_float_spikes() {
    let mut rng = SplitMix64::new(78);
    let mut spikes = 0;
    for (k, (cfg, learn)) in all_configs().into_iter().enumerate() {
        for dt in [DType::F64, DType::F32, DType::BF16, DType::F16] {
            // every config once past a task boundary (4096), with a ragged end
            let (t, n) = if k % 8 == 0 { (2, 4100) } else { (4, 300) };
            let x = tensor(&[t, n], inputs(&cfg, t, n, &mut rng), dt);
            let ws = tensor(
                &[t, n],
                (0..t * n).map(|_| rng.range(-1.0, 1.0)).collect(),
                dt,
            );
            let float = run_fused(&cfg, learn, cfg.tau, &x, Some(&ws), Some(&ws)).unwrap();
            let cfg_u8 = LifConfig {
                u8_spikes: true,
                ..cfg
            };
            let compact = run_fused(&cfg_u8, learn, cfg.tau, &x, Some(&ws), Some(&ws)).unwrap();
            let what = format!("{cfg:?} learn={learn} {dt:?}");
            spikes += float.s.iter().filter(|&&s| s == 1.0).count();
            assert_eq!(compact.s, float.s, "{what}: spikes");
            assert_eq!(compact.v, float.v, "{what}: membrane");
            assert_eq!(compact.h, float.h, "{what}: charge");
            assert_eq!(compact.gx, float.gx, "{what}: gradient of x");
            assert_eq!(compact.gtau, float.gtau, "{what}: gradient of tau");
        }
    }
    assert!(spikes > 1000, "too few spikes to compare: {spikes}");
    // the spikes are u8 in the graph, and the smooth test mode (fractional spikes) refuses u8
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32);
    let cfg = LifConfig {
        u8_spikes: true,
        ..LifConfig::default()
    };
    let out = g.lif(x, cfg).unwrap();
    assert_eq!(g.dtype(out.spikes).unwrap(), DType::U8);
    assert_eq!(g.dtype(out.charge).unwrap(), DType::F32);
    let smooth = LifConfig {
        smooth: true,
        ..cfg
    };
    let e = g.lif(x, smooth).unwrap_err().to_string();
    assert!(e.contains("u8_spikes"), "{e}");
}

#[test]
fn fd_check_catches_a_detached_reset() {
    // With detach_reset the backward is not the derivative of the smooth forward: the
    // checker must see it (it is what makes the check above meaningful for reset paths).
    let cfg = LifConfig {
        smooth: true,
        detach_reset: true,
        ..LifConfig::default()
    };
    let mut rng = SplitMix64::new(3);
    let x = tensor(&[4, 6], inputs(&cfg, 4, 6, &mut rng), DType::F64);
    let r = GradCheck::default().run(&[("x", x)], &[true], |g, v| {
        Ok(vec![g.lif(v[0], cfg)?.membrane])
    });
    assert!(
        r.is_err(),
        "a detached reset passed the finite-difference check"
    );
}

// ---- (2) + (3) independent plain-loop reference --------------------------------------------

#[test]
fn matches_plain_loop_reference_forward_and_bptt() {
    let mut rng = SplitMix64::new(42);
    for (base, learn) in all_configs() {
        for detach in [false, true] {
            for smooth in [false, true] {
                // Small shapes, and one above the lane/task widths and the parallel threshold.
                for (t, n) in [(1 + rng.below(6), 1 + rng.below(40)), (5, 4096 + 300)] {
                    let cfg = LifConfig {
                        detach_reset: detach,
                        smooth,
                        tau: rng.range(1.5, 3.0),
                        v_reset: base.v_reset.map(|_| rng.range(-0.3, 0.2)),
                        ..base
                    };
                    let xd = inputs(&cfg, t, n, &mut rng);
                    let gs: Vec<f64> = (0..t * n).map(|_| rng.normal()).collect();
                    let gv: Vec<f64> = (0..t * n).map(|_| rng.normal()).collect();
                    let x = tensor(&[t, n], xd.clone(), DType::F64);
                    let f = run_fused(
                        &cfg,
                        learn,
                        cfg.tau,
                        &x,
                        Some(&tensor(&[t, n], gs.clone(), DType::F64)),
                        Some(&tensor(&[t, n], gv.clone(), DType::F64)),
                    )
                    .unwrap();
                    let (s, v, h) = ref_forward(&cfg, cfg.tau, &xd, t, n);
                    // The forward is exactly the reference (same operations in f64).
                    assert_eq!(f.s, s, "{cfg:?}: spikes");
                    assert_eq!(f.v, v, "{cfg:?}: membrane");
                    assert_eq!(f.h, h, "{cfg:?}: charge");
                    if !smooth && n > 4096 {
                        // Not vacuous: both firing and silent steps occur.
                        assert!(s.contains(&1.0) && s.contains(&0.0));
                    }
                    let (gx, gtau) = ref_backward(&cfg, cfg.tau, &xd, &gs, &gv, t, n);
                    assert_close("gx", &f.gx, &gx, 1e-12);
                    if learn {
                        let got = f.gtau.unwrap();
                        let scale: f64 = 1.0 + gx.iter().map(|g| g.abs()).sum::<f64>();
                        assert!(
                            (got - gtau).abs() <= 1e-11 * scale,
                            "{cfg:?}: g_tau {got} vs {gtau}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f32_forward_matches_reference() {
    let mut rng = SplitMix64::new(7);
    for (base, learn) in all_configs() {
        let (t, n) = (6, 5000);
        let cfg = LifConfig {
            tau: rng.range(1.5, 3.0),
            ..base
        };
        let xd = inputs(&cfg, t, n, &mut rng);
        let x32: Vec<f32> = xd.iter().map(|&v| v as f32).collect();
        let tau32 = cfg.tau as f32 as f64;
        let f = run_fused(
            &cfg,
            learn,
            tau32,
            &tensor(&[t, n], xd, DType::F32),
            None,
            None,
        )
        .unwrap();
        // Fixed tau is cast to f32 by the kernel, a fed tau is f32 already: the same value.
        let (s, v, h) = ref_forward::<f32>(&cfg, tau32, &x32, t, n);
        let up = |a: Vec<f32>| a.into_iter().map(f64::from).collect::<Vec<_>>();
        let (s, v, h) = (up(s), up(v), up(h));
        assert_close("f32 charge", &f.h, &h, 1e-6);
        assert_close("f32 membrane", &f.v, &v, 1e-6);
        let count = |s: &[f64]| s.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(count(&f.s), count(&s), "{cfg:?}: spike counts");
        assert!(count(&s) > 0);
        assert_eq!(f.s, s);
    }
}

// ---- (4) SpikingJelly semantics, hand-computed ----------------------------------------------

#[test]
fn spikingjelly_spot_values() {
    let x = |t: usize, v: f64| tensor(&[t, 1], vec![v; t], DType::F64);
    // tau 2, v_th 1, hard reset to 0, decay_input, constant 1.5:
    // H = 0.75, 1.125 (fire → 0), 0.75, 1.125, …
    let hard = LifConfig::default();
    let f = run_fused(&hard, false, 2.0, &x(4, 1.5), None, None).unwrap();
    assert_eq!(f.h, [0.75, 1.125, 0.75, 1.125]);
    assert_eq!(f.s, [0.0, 1.0, 0.0, 1.0]);
    assert_eq!(f.v, [0.75, 0.0, 0.75, 0.0]);
    // Soft reset: V = H − v_th after a spike; H = .75, 1.125, .8125, 1.15625.
    let soft = LifConfig {
        v_reset: None,
        ..hard
    };
    let f = run_fused(&soft, false, 2.0, &x(4, 1.5), None, None).unwrap();
    assert_eq!(f.h, [0.75, 1.125, 0.8125, 1.15625]);
    assert_eq!(f.s, [0.0, 1.0, 0.0, 1.0]);
    assert_eq!(f.v, [0.75, 0.125, 0.8125, 0.15625]);
    // No input decay, constant 0.6: H = .6, .9, 1.05 (fire → 0), .6.
    let nodecay = LifConfig {
        decay_input: false,
        ..hard
    };
    let f = run_fused(&nodecay, false, 2.0, &x(4, 0.6), None, None).unwrap();
    assert_close("h", &f.h, &[0.6, 0.9, 1.05, 0.6], 1e-15);
    assert_eq!(f.s, [0.0, 0.0, 1.0, 0.0]);
    // Hard reset to −0.5, the leak pulls toward it: H1 = −0.5 + (2 − 0)/2 = 0.5,
    // H2 = 0.5 + (2 − 1)/2 = 1.0 (exactly at threshold: fires), V2 = −0.5.
    let neg = LifConfig {
        v_reset: Some(-0.5),
        ..hard
    };
    let f = run_fused(&neg, false, 2.0, &x(3, 2.0), None, None).unwrap();
    assert_eq!(f.h, [0.5, 1.0, 0.5]);
    assert_eq!(f.s, [0.0, 1.0, 0.0]);
    assert_eq!(f.v, [0.5, -0.5, 0.5]);

    // Backward, one step, x = 1.5: H = 0.75, z = −0.25, ATan(2): σ' = 1/(1 + π²/16).
    let sg = Surrogate::ATan(2.0).grad(-0.25);
    assert!((sg - 0.618_486_458).abs() < 1e-9);
    let one = tensor(&[1, 1], vec![1.0], DType::F64);
    let f = run_fused(&hard, false, 2.0, &x(1, 1.5), Some(&one), None).unwrap();
    assert!((f.gx[0] - sg / 2.0).abs() < 1e-15, "{}", f.gx[0]);
    // Through V only: ∂V/∂H = 1 − S + (v_reset − H)σ' = 1 − 0.75σ'; gX = that / 2.
    let f = run_fused(&hard, false, 2.0, &x(1, 1.5), None, Some(&one)).unwrap();
    assert!((f.gx[0] - 0.268_067_578).abs() < 1e-9, "{}", f.gx[0]);
    // Two steps, gradient of S_2 only, tau 2: gX_1 = σ'(H_2 − 1)·(1 − 1/2)·∂V_1/∂H_1 / 2.
    let w = tensor(&[2, 1], vec![0.0, 1.0], DType::F64);
    let f = run_fused(&hard, false, 2.0, &x(2, 1.5), Some(&w), None).unwrap();
    let sg2 = Surrogate::ATan(2.0).grad(0.125);
    let dv1 = 1.0 - 0.75 * sg;
    assert!((f.gx[1] - sg2 / 2.0).abs() < 1e-15);
    assert!((f.gx[0] - sg2 * 0.5 * dv1 / 2.0).abs() < 1e-15);
    // Learnable tau, one step, decay_input: H = x/tau → ∂H/∂tau = −x/tau² = −0.375.
    let f = run_fused(&hard, true, 2.0, &x(1, 1.5), Some(&one), None).unwrap();
    assert!((f.gtau.unwrap() - sg * -0.375).abs() < 1e-15);
}

// ---- (5) the fused op equals an unfused composition of simple ops --------------------------

/// One time step at a time on separate `[N]` inputs: Sub/Scale (or MulBroadcast by 1/tau),
/// `Unary::Spike`, Mul/Add and `StopGradient` for detach_reset.
fn unfused(
    g: &mut Graph,
    cfg: &LifConfig,
    xs: &[ValueId],
    inv_tau: Option<ValueId>,
    n: usize,
) -> gshn::Result<(Vec<ValueId>, Vec<ValueId>)> {
    let c = |g: &mut Graph, v: f64| g.fill(v, [n], DType::F64);
    let v_r = cfg.v_reset.unwrap_or(0.0);
    let mut v = c(g, v_r)?;
    let over_tau = |g: &mut Graph, a: ValueId| match inv_tau {
        Some(k) => g.mul_broadcast(a, k),
        None => g.scale(a, 1.0 / cfg.tau),
    };
    let (mut ss, mut vs) = (vec![], vec![]);
    for &x in xs {
        let vr = c(g, v_r)?;
        let leak = g.sub(v, vr)?;
        let h = if cfg.decay_input {
            let d = g.sub(x, leak)?;
            let d = over_tau(g, d)?;
            g.add(v, d)?
        } else {
            let d = over_tau(g, leak)?;
            let a = g.sub(v, d)?;
            g.add(a, x)?
        };
        let th = c(g, cfg.v_th)?;
        let z = g.sub(h, th)?;
        let s = g.unary(
            Unary::Spike {
                surrogate: cfg.surrogate,
                smooth: cfg.smooth,
            },
            z,
        )?;
        let sr = if cfg.detach_reset {
            g.stop_gradient(s)?
        } else {
            s
        };
        v = match cfg.v_reset {
            Some(vreset) => {
                let one = c(g, 1.0)?;
                let keep = g.sub(one, sr)?;
                let a = g.mul(h, keep)?;
                let b = g.scale(sr, vreset)?;
                g.add(a, b)?
            }
            None => {
                let b = g.scale(sr, cfg.v_th)?;
                g.sub(h, b)?
            }
        };
        ss.push(s);
        vs.push(v);
    }
    Ok((ss, vs))
}

#[test]
fn fused_equals_unfused_composition() {
    let mut rng = SplitMix64::new(99);
    for (base, learn) in all_configs() {
        for detach in [false, true] {
            for smooth in [false, true] {
                let (t, n) = (1 + rng.below(5), 1 + rng.below(30));
                // tau = 2 or 4: 1/tau is exact, so the unfused forward is bit-identical.
                let tau = if rng.uniform() < 0.5 { 2.0 } else { 4.0 };
                let cfg = LifConfig {
                    tau,
                    detach_reset: detach,
                    smooth,
                    v_reset: base.v_reset.map(|_| -0.25),
                    ..base
                };
                let xd = inputs(&cfg, t, n, &mut rng);
                let ws: Vec<f64> = (0..t * n).map(|_| rng.normal()).collect();
                let wv: Vec<f64> = (0..t * n).map(|_| rng.normal()).collect();
                let fused = run_fused(
                    &cfg,
                    learn,
                    tau,
                    &tensor(&[t, n], xd.clone(), DType::F64),
                    Some(&tensor(&[t, n], ws.clone(), DType::F64)),
                    Some(&tensor(&[t, n], wv.clone(), DType::F64)),
                )
                .unwrap();

                let mut g = Graph::new();
                let xs: Vec<ValueId> = (0..t)
                    .map(|k| g.input(format!("x{k}"), [n], DType::F64))
                    .collect();
                let k = g.input("inv_tau", [], DType::F64);
                let (ss, vs) = unfused(&mut g, &cfg, &xs, learn.then_some(k), n).unwrap();
                let mut feeds = vec![(k, tensor(&[], vec![1.0 / tau], DType::F64))];
                let mut loss = None;
                for step in 0..t {
                    for (o, w) in [(ss[step], &ws), (vs[step], &wv)] {
                        let wid = g.input("w", [n], DType::F64);
                        feeds.push((
                            wid,
                            tensor(&[n], w[step * n..(step + 1) * n].to_vec(), DType::F64),
                        ));
                        let p = g.mul(o, wid).unwrap();
                        let term = g.sum(p).unwrap();
                        loss = Some(match loss {
                            Some(l) => g.add(l, term).unwrap(),
                            None => term,
                        });
                    }
                    feeds.push((
                        xs[step],
                        tensor(&[n], xd[step * n..(step + 1) * n].to_vec(), DType::F64),
                    ));
                }
                let mut wrt = xs.clone();
                wrt.push(k);
                let grads = g.backward(loss.unwrap(), &wrt).unwrap();
                let mut fetch = ss.clone();
                fetch.extend(&vs);
                fetch.extend(&grads);
                let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
                for (id, tv) in &feeds {
                    ex.set(*id, tv).unwrap();
                }
                ex.run().unwrap();
                let cat = |ids: &[ValueId]| -> Vec<f64> {
                    ids.iter()
                        .flat_map(|&i| ex.get(i).unwrap().to_f64_vec())
                        .collect()
                };
                assert_eq!(fused.s, cat(&ss), "{cfg:?}: spikes");
                assert_eq!(fused.v, cat(&vs), "{cfg:?}: membrane");
                assert_close("gx vs unfused", &fused.gx, &cat(&grads[..t]), 1e-12);
                if learn {
                    // k = 1/tau: dL/dtau = dL/dk · (−1/tau²).
                    let gk = ex.get(grads[t]).unwrap().to_f64_vec()[0];
                    let want = -gk / (tau * tau);
                    let got = fused.gtau.unwrap();
                    assert!(
                        (got - want).abs() <= 1e-11 * (1.0 + want.abs()),
                        "{cfg:?}: g_tau {got} vs unfused {want}"
                    );
                }
            }
        }
    }
}

// ---- (6) typed errors ---------------------------------------------------------------------

#[test]
fn typed_errors() {
    let cfg = LifConfig::default();
    let mut g = Graph::new();
    let x1 = g.input("x1", [5], DType::F64);
    assert!(matches!(
        g.lif(x1, cfg),
        Err(Error::Shape { op: "lif", .. })
    ));
    let xi = g.input("xi", [2, 5], DType::I32);
    assert!(matches!(g.lif(xi, cfg), Err(Error::Shape { .. })));
    let x = g.input("x", [2, 5], DType::F64);
    for bad in [
        LifConfig { tau: 1.0, ..cfg },
        LifConfig { tau: 0.5, ..cfg },
        LifConfig {
            tau: f64::NAN,
            ..cfg
        },
        LifConfig {
            v_th: f64::INFINITY,
            ..cfg
        },
        LifConfig {
            v_reset: Some(f64::NAN),
            ..cfg
        },
        LifConfig {
            surrogate: Surrogate::Rectangular(0.0),
            ..cfg
        },
    ] {
        assert!(
            matches!(g.lif(x, bad), Err(Error::Invalid { op: "lif", .. })),
            "{bad:?} was accepted"
        );
    }
    // A learnable config through the fixed-tau builder.
    let learn = LifConfig {
        learnable_tau: true,
        ..cfg
    };
    assert!(matches!(g.lif(x, learn), Err(Error::Invalid { .. })));
    // tau must be a scalar of x's dtype.
    let tau1 = g.input("tau1", [1], DType::F64);
    assert!(matches!(g.plif(x, tau1, cfg), Err(Error::Shape { .. })));
    let tau32 = g.input("tau32", [], DType::F32);
    assert!(matches!(g.plif(x, tau32, cfg), Err(Error::Shape { .. })));
    // Backward op shapes.
    let gs_bad = g.input("gs", [2, 4], DType::F64);
    let op = gshn::ops::Op::LifBackward {
        cfg,
        has_gs: true,
        has_gv: false,
    };
    assert!(matches!(
        g.push(op.clone(), &[x, gs_bad]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(g.push(op, &[x]), Err(Error::Shape { .. })));

    // A fed tau ≤ 1 or non-finite: a run-time typed error, forward and backward.
    let tau = g.input("tau", [], DType::F64);
    let o = g.plif(x, tau, cfg).unwrap();
    let l = g.sum(o.spikes).unwrap();
    let gr = g.backward(l, &[x, tau]).unwrap();
    let mut ex = Executor::new(CpuBackend, g.clone(), &[o.spikes]).unwrap();
    ex.set(x, &tensor(&[2, 5], vec![1.0; 10], DType::F64))
        .unwrap();
    for bad in [1.0, 0.3, f64::NAN, f64::INFINITY] {
        ex.set(tau, &Tensor::scalar(bad)).unwrap();
        assert!(
            matches!(ex.run(), Err(Error::Invalid { op: "lif", .. })),
            "tau {bad} accepted"
        );
    }
    ex.set(tau, &Tensor::scalar(2.0)).unwrap();
    ex.run().unwrap();
    let mut ex = Executor::new(CpuBackend, g.clone(), &gr).unwrap();
    ex.set(x, &tensor(&[2, 5], vec![1.0; 10], DType::F64))
        .unwrap();
    ex.set(tau, &Tensor::scalar(0.9)).unwrap();
    assert!(matches!(ex.run(), Err(Error::Invalid { .. })));

    // A tau just above 1 that rounds to 1 in f32 is refused in f32 (forward and backward
    // alike, as a fed f32 tau is), and accepted in f64.
    let near_one = LifConfig {
        tau: 1.00000001,
        ..LifConfig::default()
    };
    let x32 = g.input("x32", [2, 5], DType::F32);
    assert!(matches!(g.lif(x32, near_one), Err(Error::Invalid { .. })));
    assert!(g.lif(x, near_one).is_ok());

    // Differentiating through the saved charge H is refused, not silently wrong.
    let lh = g.sum(o.charge).unwrap();
    assert!(matches!(g.backward(lh, &[x]), Err(Error::Graph(_))));
}

#[test]
fn empty_shapes() {
    for (t, n) in [(0, 5), (3, 0)] {
        let x = tensor(&[t, n], vec![], DType::F64);
        let w = tensor(&[t, n], vec![], DType::F64);
        let f = run_fused(&LifConfig::default(), true, 2.0, &x, Some(&w), Some(&w)).unwrap();
        assert!(f.s.is_empty() && f.gx.is_empty());
        assert_eq!(f.gtau, Some(0.0));
    }
}

// ---- (7) g_tau is deterministic across thread counts ----------------------------------------

#[test]
fn gtau_deterministic_across_thread_counts() {
    let (t, n) = (3, 3 * 4096 + 777);
    let mut rng = SplitMix64::new(5);
    let cfg = LifConfig {
        v_reset: None,
        ..LifConfig::default()
    };
    let mut g = Graph::new();
    let xv = g.input("x", [t, n], DType::F32);
    let tv = g.input("tau", [], DType::F32);
    let o = g.plif(xv, tv, cfg).unwrap();
    let wv = g.input("w", [t, n], DType::F32);
    let p = g.mul(o.membrane, wv).unwrap();
    let l = g.sum(p).unwrap();
    let gr = g.backward(l, &[xv, tv]).unwrap();
    let x = tensor(&[t, n], inputs(&cfg, t, n, &mut rng), DType::F32);
    let w = random([t, n], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let mut results = Vec::new();
    for threads in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let r = pool.install(|| {
            let mut ex = Executor::new(CpuBackend, g.clone(), &gr).unwrap();
            ex.set(xv, &x).unwrap();
            ex.set(tv, &Tensor::scalar(2.5f32)).unwrap();
            ex.set(wv, &w).unwrap();
            ex.run().unwrap();
            (
                ex.get(gr[0]).unwrap(),
                ex.get(gr[1]).unwrap().data::<f32>().unwrap()[0],
            )
        });
        results.push(r);
    }
    assert!(results[0].1 != 0.0);
    for r in &results[1..] {
        assert_eq!(
            r.1.to_bits(),
            results[0].1.to_bits(),
            "g_tau differs by thread count"
        );
        assert_eq!(r.0, results[0].0);
    }
}
