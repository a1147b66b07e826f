//! CPU kernels: AdamW and gradient clipping (formulas in `crate::ops::optim`).

use super::{float_dispatch, read, two, write, CpuView, CpuViewMut, Float, PAR_MIN};
use crate::error::{Error, Result};
use crate::ops::optim::clip_factor;
use crate::ops::{AdamWConfig, Op};
use rayon::prelude::*;

/// Elements per partial sum of squares (fixed: the reduction order never depends on threads).
const NORM_CHUNK: usize = 4096;
/// Elements per parallel chunk of the AdamW update.
const UPDATE_CHUNK: usize = 8192;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = outputs[0].dtype;
    float_dispatch!(op.name(), dtype, run(op, inputs, outputs))
}

fn run<T: Float>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    match op {
        Op::ClipScale { max_norm } => {
            let mut ss = 0.0f64;
            for v in inputs {
                ss += sum_squares(read::<T>(v)?);
            }
            let norm = ss.sqrt();
            let (scale_out, norm_out) = two(outputs);
            write::<T>(scale_out)?[0] = T::of(clip_factor(norm, *max_norm));
            write::<T>(norm_out)?[0] = T::of(norm);
            Ok(())
        }
        Op::AdamW(cfg) => {
            let [p, m, v] = outputs else {
                return Err(Error::graph(
                    "adamw: expects p, m, v as its updated buffers",
                ));
            };
            let g = read::<T>(&inputs[0])?;
            let scale = read::<T>(&inputs[1])?[0].to_f64().unwrap_or(f64::NAN);
            let hyper = read::<T>(&inputs[2])?;
            let (lr, step) = (
                hyper[0].to_f64().unwrap_or(f64::NAN),
                hyper[1].to_f64().unwrap_or(f64::NAN),
            );
            if !(step >= 1.0 && step.is_finite()) {
                return Err(Error::invalid(
                    "adamw",
                    format!("step = {step} must be a finite number ≥ 1 (1-based)"),
                ));
            }
            if !(lr >= 0.0 && lr.is_finite()) {
                return Err(Error::invalid(
                    "adamw",
                    format!("learning rate {lr} must be finite and ≥ 0"),
                ));
            }
            if scale == 0.0 || !scale.is_finite() {
                // Non-finite gradient norm (ClipScale reports 0): skip the step.
                return Ok(());
            }
            adamw::<T>(
                cfg,
                lr,
                step,
                scale,
                g,
                write::<T>(p)?,
                write::<T>(m)?,
                write::<T>(v)?,
            );
            Ok(())
        }
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in optim kernels", other.name()),
        }),
    }
}

/// Σ x² in f64: fixed chunks summed in order (parallel over chunks when large).
fn sum_squares<T: Float>(x: &[T]) -> f64 {
    let chunk = |c: &[T]| -> f64 {
        let mut acc = [0.0f64; 4];
        let mut it = c.chunks_exact(4);
        for q in &mut it {
            for i in 0..4 {
                let v = q[i].to_f64().unwrap_or(f64::NAN);
                acc[i] += v * v;
            }
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for &r in it.remainder() {
            let v = r.to_f64().unwrap_or(f64::NAN);
            s += v * v;
        }
        s
    };
    let partial: Vec<f64> = if x.len() >= PAR_MIN {
        x.par_chunks(NORM_CHUNK).map(chunk).collect()
    } else {
        x.chunks(NORM_CHUNK).map(chunk).collect()
    };
    partial.iter().sum()
}

#[allow(clippy::too_many_arguments)]
fn adamw<T: Float>(
    cfg: &AdamWConfig,
    lr: f64,
    step: f64,
    scale: f64,
    g: &[T],
    p: &mut [T],
    m: &mut [T],
    v: &mut [T],
) {
    let decay = T::of(1.0 - lr * cfg.weight_decay);
    let bc1 = 1.0 - cfg.beta1.powf(step);
    let bc2 = 1.0 - cfg.beta2.powf(step);
    let step_size = T::of(lr / bc1);
    let bc2_sqrt = T::of(bc2.sqrt());
    let (b1, b2) = (T::of(cfg.beta1), T::of(cfg.beta2));
    let (ob1, ob2) = (T::of(1.0 - cfg.beta1), T::of(1.0 - cfg.beta2));
    let eps = T::of(cfg.eps);
    let scale = T::of(scale);
    let update = |p: &mut [T], m: &mut [T], v: &mut [T], g: &[T]| {
        for i in 0..p.len() {
            let gi = g[i] * scale;
            let pi = p[i] * decay;
            let mi = b1 * m[i] + ob1 * gi;
            let vi = b2 * v[i] + ob2 * gi * gi;
            p[i] = pi - step_size * mi / (vi.sqrt() / bc2_sqrt + eps);
            m[i] = mi;
            v[i] = vi;
        }
    };
    if p.len() >= PAR_MIN {
        p.par_chunks_mut(UPDATE_CHUNK)
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .zip(g.par_chunks(UPDATE_CHUNK))
            .for_each(|(((p, m), v), g)| update(p, m, v, g));
    } else {
        update(p, m, v, g);
    }
}
