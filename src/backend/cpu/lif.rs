//! CPU kernels: multi-step LIF (DESIGN §3.1).
//!
//! Layout `[T, N]`, time-major. Neurons are independent, so the work is split into column
//! *tasks* of `TASK` neurons (run in parallel with rayon); inside a task, blocks of `LANES`
//! neurons keep their state on the stack and the time loop walks contiguous row pieces, so
//! every load and store is unit-stride and the lane loop vectorises.
//!
//! Forward and backward share `charge`, `fire` and `reset` (one definition, `#[inline]`,
//! generic over the element type), so the backward's recomputed spikes and `V_{t−1}` are
//! bit-identical to the forward's. `g_tau` is reduced deterministically: per-lane sums inside
//! a task, a fixed-order sum per task, then the task partials in task order — the task width
//! depends only on `N`, never on the thread count.
//!
//! On bf16 / f16 storage the activations (X, S, V and their gradients) are converted row piece
//! by row piece inside the task ([`Stored`]), and H and the arithmetic stay f32: the results
//! are the f32 kernel's, rounded once, without whole-buffer conversion passes.

use super::{read, storage_dispatch, write, CpuView, CpuViewMut, Float, Stored, PAR_MIN};
use crate::error::{Error, Result};
use crate::ops::lif::{validate_tau, LifBackwardArgs};
use crate::ops::{LifConfig, Op, Surrogate};
use rayon::prelude::*;

/// Neurons whose state lives on the stack at once.
const LANES: usize = 256;
/// Neurons per parallel task (fixed, so reductions do not depend on the thread count).
const TASK: usize = 4096;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    // the activations' dtype: X's (forward) or the input gradient's (backward)
    let dtype = match op {
        Op::Lif(_) => inputs[0].dtype,
        _ => outputs[0].dtype,
    };
    match op {
        Op::Lif(cfg) => storage_dispatch!(op.name(), dtype, forward(cfg, inputs, outputs)),
        Op::LifBackward {
            cfg,
            has_gs,
            has_gv,
        } => storage_dispatch!(
            op.name(),
            dtype,
            backward(cfg, *has_gs, *has_gv, inputs, outputs)
        ),
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in lif kernels", other.name()),
        }),
    }
}

/// Scalar parameters in the element type.
struct Params<T> {
    tau: T,
    /// ∂H_t/∂V_{t−1} = 1 − 1/tau
    keep: T,
    v_th: T,
    /// v_reset (hard) or 0 (soft): the leak target and V_0.
    v_r: T,
    surrogate: Surrogate,
    alpha: T,
    /// π α / 2 (ATan)
    pi2a: T,
    detach: bool,
}

impl<T: Float> Params<T> {
    fn new(op: &'static str, cfg: &LifConfig, fed_tau: Option<T>) -> Result<Self> {
        cfg.validate(op)?;
        let tau = match fed_tau {
            Some(t) => {
                validate_tau(op, t.to_f64().unwrap_or(f64::NAN))?;
                t
            }
            None => {
                // Checked as rounded to T, as the shape rule does (`validate_tau_as`).
                let t = T::of(cfg.tau);
                validate_tau(op, t.to_f64().unwrap_or(f64::NAN))?;
                t
            }
        };
        let alpha = T::of(cfg.surrogate.alpha());
        Ok(Params {
            tau,
            keep: T::one() - T::one() / tau,
            v_th: T::of(cfg.v_th),
            v_r: T::of(cfg.v_rest()),
            surrogate: cfg.surrogate,
            alpha,
            pi2a: T::of(std::f64::consts::FRAC_PI_2) * alpha,
            detach: cfg.detach_reset,
        })
    }

    /// `out[i] = σ'(h[i] − v_th)` in the element type; in f64 the same operations, in the
    /// same order, as `Surrogate::grad`. One tight loop per kind, so it vectorises.
    #[inline(always)]
    fn surrogate_grads(&self, h: &[T], out: &mut [T]) {
        let (one, two, a, th) = (T::one(), T::of(2.0), self.alpha, self.v_th);
        let it = out.iter_mut().zip(h);
        match self.surrogate {
            Surrogate::ATan(_) => it.for_each(|(o, &h)| {
                let u = self.pi2a * (h - th);
                *o = a / (two * (one + u * u));
            }),
            Surrogate::Sigmoid(_) => it.for_each(|(o, &h)| {
                let s = one / (one + (-a * (h - th)).exp());
                *o = a * s * (one - s);
            }),
            Surrogate::SuperSpike(_) => it.for_each(|(o, &h)| {
                let d = one + a * (h - th).abs();
                *o = one / (d * d);
            }),
            Surrogate::Rectangular(_) => {
                let (half, inv) = (a / two, one / a);
                it.for_each(|(o, &h)| {
                    *o = if (h - th).abs() < half {
                        inv
                    } else {
                        T::zero()
                    };
                })
            }
        }
    }
}

/// Charge: `H_t` from `V_{t−1}` and `X_t`.
#[inline(always)]
fn charge<T: Float, const DECAY: bool>(p: &Params<T>, v: T, x: T) -> T {
    if DECAY {
        v + (x - (v - p.v_r)) / p.tau
    } else {
        v - (v - p.v_r) / p.tau + x
    }
}

/// Fire: returns `(H − v_th, S)`; `S` is the step, or the surrogate's primitive in smooth mode.
#[inline(always)]
fn fire<T: Float, const SMOOTH: bool>(p: &Params<T>, h: T) -> (T, T) {
    let x = h - p.v_th;
    let s = if SMOOTH {
        T::of(p.surrogate.primitive(x.to_f64().unwrap_or(f64::NAN)))
    } else if x >= T::zero() {
        T::one()
    } else {
        T::zero()
    };
    (x, s)
}

/// Reset: `V_t` from `H_t` and `S_t`.
#[inline(always)]
fn reset<T: Float, const HARD: bool>(p: &Params<T>, h: T, s: T) -> T {
    if HARD {
        h * (T::one() - s) + p.v_r * s
    } else {
        h - p.v_th * s
    }
}

/// One whole time step of one neuron: `(H_t, S_t, V_t)` from `V_{t−1}` and `X_t`.
#[inline(always)]
fn step<T: Float, const HARD: bool, const DECAY: bool, const SMOOTH: bool>(
    p: &Params<T>,
    v: T,
    x: T,
) -> (T, T, T) {
    let h = charge::<T, DECAY>(p, v, x);
    let (_, s) = fire::<T, SMOOTH>(p, h);
    (h, s, reset::<T, HARD>(p, h, s))
}

/// `V_t` recomputed from the saved `H_t` (identical to the forward's).
#[inline(always)]
fn membrane_from_charge<T: Float, const HARD: bool, const SMOOTH: bool>(p: &Params<T>, h: T) -> T {
    let (_, s) = fire::<T, SMOOTH>(p, h);
    reset::<T, HARD>(p, h, s)
}

/// Calls `$f::<types.., HARD, DECAY, SMOOTH>($args)` for runtime booleans.
macro_rules! dispatch3 {
    ($f:ident::<$($ty:ty),+>, $hard:expr, $decay:expr, $smooth:expr, ($($arg:expr),*)) => {
        match ($hard, $decay, $smooth) {
            (false, false, false) => $f::<$($ty),+, false, false, false>($($arg),*),
            (false, false, true) => $f::<$($ty),+, false, false, true>($($arg),*),
            (false, true, false) => $f::<$($ty),+, false, true, false>($($arg),*),
            (false, true, true) => $f::<$($ty),+, false, true, true>($($arg),*),
            (true, false, false) => $f::<$($ty),+, true, false, false>($($arg),*),
            (true, false, true) => $f::<$($ty),+, true, false, true>($($arg),*),
            (true, true, false) => $f::<$($ty),+, true, true, false>($($arg),*),
            (true, true, true) => $f::<$($ty),+, true, true, true>($($arg),*),
        }
    };
}

/// Splits a `[t, n]` buffer into column tasks: `out[k][t]` is row `t`'s piece of task `k`.
/// An empty buffer has no tasks, however large the other dimension.
fn split_columns<E>(buf: &mut [E], t: usize, n: usize) -> Vec<Vec<&mut [E]>> {
    let tasks = if t == 0 { 0 } else { n.div_ceil(TASK) };
    let mut out: Vec<Vec<&mut [E]>> = (0..tasks).map(|_| Vec::with_capacity(t)).collect();
    if n > 0 {
        for row in buf.chunks_mut(n).take(t) {
            for (k, piece) in row.chunks_mut(TASK).enumerate() {
                out[k].push(piece);
            }
        }
    }
    out
}

/// Runs `f(task, item)` over the tasks, in parallel when the op is big enough. The results
/// come back in task order.
fn over_tasks<I: Send, R: Send>(
    items: Vec<I>,
    work: usize,
    f: impl Fn(usize, I) -> R + Sync + Send,
) -> Vec<R> {
    if items.len() > 1 && work >= PAR_MIN {
        items
            .into_par_iter()
            .enumerate()
            .map(|(k, it)| f(k, it))
            .collect()
    } else {
        items
            .into_iter()
            .enumerate()
            .map(|(k, it)| f(k, it))
            .collect()
    }
}

fn dims2(v: &CpuView) -> (usize, usize) {
    (v.shape.at(0), v.shape.at(1))
}

fn read_opt<'a, S: super::Element>(v: Option<&CpuView<'a>>) -> Result<Option<&'a [S]>> {
    v.map(read::<S>).transpose()
}

/// The fed time constant (learnable tau: an activation, stored as `S`) in the compute type.
fn fed_tau<T: Float, S: Stored<T>>(v: Option<&CpuView>) -> Result<Option<T>> {
    Ok(match v {
        Some(v) => Some(read::<S>(v)?[0].load()),
        None => None,
    })
}

// ---- forward ------------------------------------------------------------------------------

/// x, S, V stored as `S` (the spikes as u8 with `u8_spikes`); H and the arithmetic in `T`.
fn forward<T: Float, S: Stored<T>>(
    cfg: &LifConfig,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()>
where
    u8: Stored<T>,
{
    match cfg.u8_spikes {
        true => forward_as::<T, S, u8>(cfg, inputs, outputs),
        false => forward_as::<T, S, S>(cfg, inputs, outputs),
    }
}

/// x and V stored as `S`, the spikes as `P`; H and the arithmetic in `T`.
fn forward_as<T: Float, S: Stored<T>, P: Stored<T>>(
    cfg: &LifConfig,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    let op = "lif";
    let tau = fed_tau::<T, S>(cfg.learnable_tau.then(|| &inputs[1]))?;
    let p = Params::<T>::new(op, cfg, tau)?;
    let x = read::<S>(&inputs[0])?;
    let (t, n) = dims2(&inputs[0]);
    let [s, v, h] = outputs else {
        return Err(Error::graph("lif: expects 3 outputs"));
    };
    let s = split_columns(write::<P>(s)?, t, n);
    let h = split_columns(write::<T>(h)?, t, n);
    // V per task, or None per task when the membrane is not written (an empty output)
    let v: Vec<Option<_>> = if cfg.membrane {
        let v = split_columns(write::<S>(v)?, t, n);
        v.into_iter().map(Some).collect()
    } else {
        s.iter().map(|_| None).collect()
    };
    let tasks: Vec<_> = s.into_iter().zip(v).zip(h).collect();
    let (hard, decay, smooth) = (cfg.v_reset.is_some(), cfg.decay_input, cfg.smooth);
    over_tasks(tasks, t * n, |k, ((mut s, mut v), mut h)| {
        dispatch3!(
            forward_task::<T, S, P>,
            hard,
            decay,
            smooth,
            (&p, x, n, k * TASK, &mut s, v.as_deref_mut(), &mut h)
        )
    });
    Ok(())
}

fn forward_task<
    T: Float,
    S: Stored<T>,
    P: Stored<T>,
    const HARD: bool,
    const DECAY: bool,
    const SMOOTH: bool,
>(
    p: &Params<T>,
    x: &[S],
    n: usize,
    c0: usize,
    s: &mut [&mut [P]],
    mut v: Option<&mut [&mut [S]]>,
    h: &mut [&mut [T]],
) {
    let width = s.first().map_or(0, |r| r.len());
    let mut state = [T::zero(); LANES];
    // row pieces of X, S and V in the compute type, when they are stored otherwise (V's also
    // when it is not written; S's when it is u8)
    let (mut x_buf, mut s_buf, mut v_buf) =
        ([T::zero(); LANES], [T::zero(); LANES], [T::zero(); LANES]);
    for l0 in (0..width).step_by(LANES) {
        let l1 = (l0 + LANES).min(width);
        let w = l1 - l0;
        let st = &mut state[..w];
        st.fill(p.v_r);
        for (t, (sr, hr)) in s.iter_mut().zip(h.iter_mut()).enumerate() {
            let base = t * n + c0;
            let xr = S::widen(&x[base + l0..base + l1], &mut x_buf[..w]);
            let (sr, hr) = (&mut sr[l0..l1], &mut hr[l0..l1]);
            let mut vr = v.as_deref_mut().map(|v| &mut v[t][l0..l1]);
            let sd = P::compute_mut(sr);
            let vd = vr.as_deref_mut().and_then(S::compute_mut);
            let (s_staged, v_staged) = (sd.is_none(), vd.is_none());
            let (sc, vc) = (sd.unwrap_or(&mut s_buf[..w]), vd.unwrap_or(&mut v_buf[..w]));
            for i in 0..w {
                let (hh, ss, vv) = step::<T, HARD, DECAY, SMOOTH>(p, st[i], xr[i]);
                hr[i] = hh;
                sc[i] = ss;
                vc[i] = vv;
                // the membrane carried on is the exact one (as in f32 with rounded outputs)
                st[i] = vv;
            }
            if s_staged {
                P::narrow(&s_buf[..w], sr);
            }
            if let (true, Some(vr)) = (v_staged, vr) {
                S::narrow(&v_buf[..w], vr);
            }
        }
    }
}

// ---- backward -----------------------------------------------------------------------------

/// The read-only inputs of the backward: the charge in the compute type, the upstream
/// gradients stored as `S`.
struct Grads<'a, T, S> {
    h: &'a [T],
    gs: Option<&'a [S]>,
    gv: Option<&'a [S]>,
    n: usize,
    learn: bool,
}

/// gS, gV, gX (and tau, g_tau) stored as `S`; H and the arithmetic in `T`.
fn backward<T: Float, S: Stored<T>>(
    cfg: &LifConfig,
    has_gs: bool,
    has_gv: bool,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    let op = "lif_backward";
    let x = LifBackwardArgs::of(
        &Op::LifBackward {
            cfg: *cfg,
            has_gs,
            has_gv,
        },
        inputs,
    )?;
    let (gs, gv) = (
        read_opt::<S>(x.grad_spikes)?,
        read_opt::<S>(x.grad_membrane)?,
    );
    let p = Params::<T>::new(op, cfg, fed_tau::<T, S>(x.tau)?)?;
    let (t, n) = dims2(x.charge);
    let g = Grads {
        h: read::<T>(x.charge)?,
        gs,
        gv,
        n,
        learn: cfg.learnable_tau,
    };
    let (gx_out, rest) = outputs.split_at_mut(1);
    let gx = split_columns(write::<S>(&mut gx_out[0])?, t, n);
    let (hard, decay, smooth) = (cfg.v_reset.is_some(), cfg.decay_input, cfg.smooth);
    let partials = over_tasks(gx, t * n, |k, mut gx| {
        dispatch3!(
            backward_task::<T, S>,
            hard,
            decay,
            smooth,
            (&p, &g, k * TASK, &mut gx)
        )
    });
    if cfg.learnable_tau {
        let gtau = rest
            .first_mut()
            .ok_or_else(|| Error::graph("lif_backward: expects a g_tau output"))?;
        let mut sum = T::zero();
        for v in partials {
            sum += v;
        }
        write::<S>(gtau)?[0] = S::store(sum);
    }
    Ok(())
}

/// BPTT over one column task; returns the task's partial `dL/dtau` (0 unless learnable).
fn backward_task<
    T: Float,
    S: Stored<T>,
    const HARD: bool,
    const DECAY: bool,
    const SMOOTH: bool,
>(
    p: &Params<T>,
    g: &Grads<T, S>,
    c0: usize,
    gx: &mut [&mut [S]],
) -> T {
    let (one, zero) = (T::one(), T::zero());
    let n = g.n;
    let width = gx.first().map_or(0, |r| r.len());
    let zeros = [zero; LANES];
    // the row pieces of gS, gV and gX in the compute type, when they are stored otherwise
    let (mut gs_buf, mut gv_buf, mut gx_buf) = ([zero; LANES], [zero; LANES], [zero; LANES]);
    // gH_{t+1} (1 − 1/tau): the gradient reaching V_t through the next charge.
    let mut carry = [zero; LANES];
    let mut gtau = [zero; LANES];
    // gH_t of the current row piece (for dL/dtau).
    let mut ghb = [zero; LANES];
    // σ'(H_t − v_th) of the current row piece.
    let mut sgb = [zero; LANES];
    for l0 in (0..width).step_by(LANES) {
        let l1 = (l0 + LANES).min(width);
        let w = l1 - l0;
        carry[..w].fill(zero);
        for t in (0..gx.len()).rev() {
            let base = t * n + c0;
            let range = base + l0..base + l1;
            let hr = &g.h[range.clone()];
            let gsr = g.gs.map_or(&zeros[..w], |b| {
                S::widen(&b[range.clone()], &mut gs_buf[..w])
            });
            let gvr = g.gv.map_or(&zeros[..w], |b| {
                S::widen(&b[range.clone()], &mut gv_buf[..w])
            });
            let direct = S::compute_mut(&mut gx[t][l0..l1]);
            let staged = direct.is_none();
            let gxr = direct.unwrap_or(&mut gx_buf[..w]);
            let sgr = &mut sgb[..w];
            p.surrogate_grads(hr, sgr);
            for i in 0..w {
                let h = hr[i];
                let (_, s) = fire::<T, SMOOTH>(p, h);
                let sg = sgr[i];
                // σ' inside ∂V/∂H vanishes with detach_reset.
                let rs = if p.detach { zero } else { sg };
                let dvdh = if HARD {
                    one - s + (p.v_r - h) * rs
                } else {
                    one - p.v_th * rs
                };
                let gh = gsr[i] * sg + (gvr[i] + carry[i]) * dvdh;
                gxr[i] = if DECAY { gh / p.tau } else { gh };
                carry[i] = gh * p.keep;
                ghb[i] = gh;
            }
            if staged {
                S::narrow(&gx_buf[..w], &mut gx[t][l0..l1]);
            }
            if g.learn {
                // ∂H_t/∂tau with V_{t−1} recomputed from H_{t−1} (V_0 = v_r):
                // decay: −(X_t − (V_{t−1} − v_r))/tau² = −(H_t − V_{t−1})/tau;
                // else:  (V_{t−1} − v_r)/tau².
                let prev = (t > 0).then(|| &g.h[range.start - n..range.end - n]);
                let tau2 = p.tau * p.tau;
                for i in 0..w {
                    let vp = prev.map_or(p.v_r, |hp| {
                        membrane_from_charge::<T, HARD, SMOOTH>(p, hp[i])
                    });
                    let dhdtau = if DECAY {
                        -(hr[i] - vp) / p.tau
                    } else {
                        (vp - p.v_r) / tau2
                    };
                    gtau[i] += ghb[i] * dhdtau;
                }
            }
        }
    }
    let mut sum = zero;
    for v in gtau {
        sum += v;
    }
    sum
}
