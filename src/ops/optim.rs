//! AdamW with a fused update and global-norm gradient clipping.
//!
//! - `ClipScale { max_norm }`: gradients `g₀, g₁, …` (any shapes, one float dtype) →
//!   `scale[] = min(1, max_norm / (‖g‖ + 1e-6))` and `norm[] = ‖g‖`, the global L2 norm over
//!   all of them (`torch.nn.utils.clip_grad_norm_`'s factor). The sum of squares is accumulated
//!   in f64 in a fixed order (tensors in input order, each in fixed chunks of 4096 elements
//!   summed in order), so it is deterministic and does not overflow for large f32 gradients.
//!   **Non-finite gradients**: if the norm is NaN or ±inf, `scale` is 0 and `norm` is reported
//!   as computed (non-finite), so a trainer can detect the bad step from `norm`.
//! - `AdamW(cfg)`: `torch.optim.AdamW` (non-amsgrad, non-maximize), in place on `p, m, v` with
//!   `ĝ = g · clip_scale` and `hyper = (lr, step)`, `step ≥ 1` (the 1-based step number):
//!   ```text
//!   p ← p · (1 − lr·wd)                                   (decoupled weight decay)
//!   m ← β1 m + (1 − β1) ĝ          v ← β2 v + (1 − β2) ĝ²
//!   p ← p − (lr / (1 − β1^step)) · m / (sqrt(v) / sqrt(1 − β2^step) + eps)
//!   ```
//!   evaluated in that order, the scalar factors (`1 − lr·wd`, `lr / bc1`, `sqrt(bc2)`) in f64
//!   and rounded once to the element type, as PyTorch does. A `clip_scale` of 0 (what
//!   `ClipScale` reports for non-finite gradients) or a non-finite one **skips the update**:
//!   p, m and v are left unchanged (like `GradScaler` skipping `optimizer.step()`).

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId, ValueKind};
use crate::tensor::Meta;

/// AdamW hyperparameters (PyTorch defaults); learning rate and step come as the `hyper` input.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Decay rate of the first moment `m` (default 0.9).
    pub beta1: f64,
    /// Decay rate of the second moment `v` (default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)` in the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay, multiplied by `lr` (default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// The checks `torch.optim.AdamW` makes: `0 ≤ β < 1`, `eps ≥ 0`, `weight_decay ≥ 0`.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(Error::invalid(
                "adamw",
                format!("{what} = {v} is out of range"),
            ))
        };
        for (what, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(what, b);
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return bad("eps", self.eps);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", self.weight_decay);
        }
        Ok(())
    }
}

/// The constant in the clip factor's denominator, `max_norm / (norm + CLIP_EPS)` (PyTorch's).
pub const CLIP_EPS: f64 = 1e-6;

/// The clip factor for a global gradient norm: `min(1, max_norm / (norm + 1e-6))`, or 0 when
/// `norm` is not finite.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if norm.is_finite() {
        (max_norm / (norm + CLIP_EPS)).min(1.0)
    } else {
        0.0
    }
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::ClipScale { max_norm } => {
            if max_norm.is_nan() || *max_norm <= 0.0 {
                return Err(Error::invalid(
                    name,
                    format!("max_norm = {max_norm} must be > 0"),
                ));
            }
            let Some(first) = inputs.first() else {
                return Err(Error::shape(name, "expects at least one gradient, got 0"));
            };
            check::float(name, "g0", first)?;
            for (i, m) in inputs.iter().enumerate().skip(1) {
                check::same_dtype(name, &format!("g0 and g{i}"), first, m)?;
            }
            let s = Meta::new([], first.dtype);
            Ok(vec![s.clone(), s])
        }
        Op::AdamW(cfg) => {
            cfg.validate()?;
            check::arity(name, inputs, 6)?;
            let p = &inputs[0];
            check::float(name, "p", p)?;
            for (i, what) in [(1, "m"), (2, "v"), (3, "g")] {
                check::same_dtype(name, &format!("p and {what}"), p, &inputs[i])?;
                check::dims(name, what, &inputs[i], p.shape.dims())?;
            }
            check::same_dtype(name, "p and clip_scale", p, &inputs[4])?;
            check::dims(name, "clip_scale", &inputs[4], &[])?;
            check::same_dtype(name, "p and hyper", p, &inputs[5])?;
            check::dims(name, "hyper (lr, step)", &inputs[5], &[2])?;
            Ok(vec![])
        }
        _ => Err(Error::graph(format!("{name} is not an optimizer op"))),
    }
}

/// The values `Graph::adamw_step` created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptimizerValues {
    /// First moments, one per parameter (persistent state `adam_m.<param name>`).
    pub m: Vec<ValueId>,
    /// Second moments (`adam_v.<param name>`).
    pub v: Vec<ValueId>,
    /// Input `[2]` = (learning rate, step ≥ 1) to feed before each run (`set_hyper`).
    pub hyper: ValueId,
    /// The clip factor `[]` applied to the gradients (1 when not clipping, 0 on a non-finite
    /// gradient norm, which skips the update).
    pub clip_scale: ValueId,
    /// The global gradient L2 norm `[]` before clipping: fetch it for logging and to detect
    /// non-finite gradients.
    pub grad_norm: ValueId,
}

/// Builders for the optimizer ops.
impl Graph {
    /// Global-norm clipping factor and norm of `grads`: returns `(scale[], norm[])`.
    pub fn clip_scale(&mut self, grads: &[ValueId], max_norm: f64) -> Result<(ValueId, ValueId)> {
        let o = self.push(Op::ClipScale { max_norm }, grads)?;
        Ok((o[0], o[1]))
    }

    /// One AdamW step on `params` (persistent, trainable or not) from `grads` (same shapes),
    /// with optional global-norm clipping at `max_norm`. Creates the moment states
    /// (`adam_m.<name>`, `adam_v.<name>`; zero them with `OptimizerValues::zero_state`), the
    /// `hyper` input (`adamw.hyper`: lr, step) and a `ClipScale` node (always: without
    /// `max_norm` it clips at +inf, i.e. scale 1, but still reports the norm and still skips
    /// the step on a non-finite gradient). The AdamW nodes run on every `Executor::run`.
    pub fn adamw_step(
        &mut self,
        params: &[ValueId],
        grads: &[ValueId],
        cfg: AdamWConfig,
        max_norm: Option<f64>,
    ) -> Result<OptimizerValues> {
        cfg.validate()?;
        if params.len() != grads.len() {
            return Err(Error::graph(format!(
                "adamw_step: {} parameters but {} gradients",
                params.len(),
                grads.len()
            )));
        }
        let Some(&first) = params.first() else {
            return Err(Error::graph("adamw_step: no parameters"));
        };
        let dtype = self.dtype(first)?;
        for (&p, &g) in params.iter().zip(grads) {
            let v = self.value(p)?;
            if !matches!(v.kind, ValueKind::Persistent { .. }) {
                return Err(Error::graph(format!(
                    "adamw_step: {:?} is not a parameter or state (it is updated in place)",
                    v.name
                )));
            }
            if self.meta(p)? != self.meta(g)? || v.meta.dtype != dtype {
                return Err(Error::shape(
                    "adamw",
                    format!(
                        "parameter {:?} is {:?}, its gradient {:?} (all parameters must be {dtype:?})",
                        v.name,
                        self.meta(p)?,
                        self.meta(g)?
                    ),
                ));
            }
        }
        self.set_part("optimizer");
        let (clip_scale, grad_norm) = self.clip_scale(grads, max_norm.unwrap_or(f64::INFINITY))?;
        let hyper = self.input("adamw.hyper", [2], dtype);
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (&p, &g) in params.iter().zip(grads) {
            let (name, shape) = (self.value(p)?.name.clone(), self.shape(p)?.clone());
            let mi = self.state(format!("adam_m.{name}"), shape.clone(), dtype);
            let vi = self.state(format!("adam_v.{name}"), shape, dtype);
            self.push(Op::AdamW(cfg), &[p, mi, vi, g, clip_scale, hyper])?;
            m.push(mi);
            v.push(vi);
        }
        Ok(OptimizerValues {
            m,
            v,
            hyper,
            clip_scale,
            grad_norm,
        })
    }
}
