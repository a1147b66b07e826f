//! LayerNorm, L2-normalise, masked softmax.
//!
//! - `LayerNorm { eps }` over the last axis, PyTorch `nn.LayerNorm` semantics: biased variance,
//!   `eps` inside the square root: `y = (x − μ) · rstd · γ + β`, `rstd = 1 / sqrt(σ² + eps)`.
//!   The per-row `mean` and `rstd` are outputs too, saved for the backward.
//! - `L2Normalize { eps }`: `y = x / max(‖x‖₂, eps)` over the last axis
//!   (`torch.nn.functional.normalize`); the unclamped `norm = ‖x‖₂` is an output.
//! - `MaskedSoftmax`: softmax over the last axis of `x[B, G, L]` restricted to the keys with
//!   `keep[b, l] ≠ 0`; masked keys get exactly 0 and a row with no kept key is all zeros.
//!
//! The auxiliary outputs (`mean`, `rstd`, `norm`) exist for the backward ops; no gradient
//! flows through them (using them in a differentiated loss is an error, not a silent zero).

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{Meta, Shape};

/// The leading ("row") dimensions of `s`: all but the last.
fn row_shape(s: &Shape) -> Shape {
    Shape::new(&s.dims()[..s.rank().saturating_sub(1)])
}

fn check_eps(op: &'static str, eps: f64, positive: bool) -> Result<()> {
    let ok = eps.is_finite() && if positive { eps > 0.0 } else { eps >= 0.0 };
    if !ok {
        return Err(Error::invalid(
            op,
            format!(
                "eps = {eps} must be finite and {}",
                if positive { "> 0" } else { "≥ 0" }
            ),
        ));
    }
    Ok(())
}

fn check_row_stride(op: &'static str, row_stride: usize) -> Result<()> {
    if row_stride == 0 {
        return Err(Error::invalid(op, "row_stride must be at least 1"));
    }
    Ok(())
}

/// `x[.., C]` of rank ≥ 1, float.
fn rows_input(op: &'static str, what: &str, m: &Meta) -> Result<()> {
    check::float(op, what, m)?;
    if m.shape.rank() == 0 {
        return Err(Error::shape(
            op,
            format!("{what} must have rank ≥ 1 (normalised over the last axis), got a scalar"),
        ));
    }
    Ok(())
}

/// An input that must have exactly `want`'s shape and dtype.
fn like(op: &'static str, what: &str, m: &Meta, want: &Meta) -> Result<()> {
    check::same_dtype(op, what, m, want)?;
    check::dims(op, what, m, want.shape.dims())
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::LayerNorm { eps, row_stride } => {
            check_eps(name, *eps, false)?;
            check_row_stride(name, *row_stride)?;
            check::arity(name, inputs, 3)?;
            let x = &inputs[0];
            rows_input(name, "x", x)?;
            if x.shape.last() == 0 {
                return Err(Error::shape(
                    name,
                    format!("x {:?} has an empty normalised axis", x.shape),
                ));
            }
            let c = Meta::new([x.shape.last()], x.dtype);
            like(name, "gamma", &inputs[1], &c)?;
            like(name, "beta", &inputs[2], &c)?;
            let r = Meta::new(row_shape(&x.shape), x.dtype);
            Ok(vec![x.clone(), r.clone(), r])
        }
        Op::LayerNormBackward { eps, row_stride } => {
            check_eps(name, *eps, false)?;
            check_row_stride(name, *row_stride)?;
            check::arity(name, inputs, 5)?;
            let x = &inputs[1];
            rows_input(name, "x", x)?;
            like(name, "g", &inputs[0], x)?;
            let c = Meta::new([x.shape.last()], x.dtype);
            like(name, "gamma", &inputs[2], &c)?;
            let r = Meta::new(row_shape(&x.shape), x.dtype);
            like(name, "mean", &inputs[3], &r)?;
            like(name, "rstd", &inputs[4], &r)?;
            Ok(vec![x.clone(), c.clone(), c])
        }
        Op::L2Normalize { eps } => {
            check_eps(name, *eps, true)?;
            check::arity(name, inputs, 1)?;
            let x = &inputs[0];
            rows_input(name, "x", x)?;
            Ok(vec![x.clone(), Meta::new(row_shape(&x.shape), x.dtype)])
        }
        Op::L2NormalizeBackward { eps } => {
            check_eps(name, *eps, true)?;
            check::arity(name, inputs, 3)?;
            let y = &inputs[1];
            rows_input(name, "y", y)?;
            like(name, "g", &inputs[0], y)?;
            like(
                name,
                "norm",
                &inputs[2],
                &Meta::new(row_shape(&y.shape), y.dtype),
            )?;
            Ok(vec![y.clone()])
        }
        Op::MaskedSoftmax => {
            check::arity(name, inputs, 2)?;
            let (x, keep) = (&inputs[0], &inputs[1]);
            check::float(name, "x", x)?;
            check::rank(name, "x", x, 3)?;
            let d = x.shape.dims();
            like(name, "keep", keep, &Meta::new([d[0], d[2]], x.dtype))?;
            Ok(vec![x.clone()])
        }
        Op::MaskedSoftmaxBackward => {
            check::arity(name, inputs, 2)?;
            let y = &inputs[1];
            check::float(name, "y", y)?;
            check::rank(name, "y", y, 3)?;
            like(name, "g", &inputs[0], y)?;
            Ok(vec![y.clone()])
        }
        _ => Err(Error::graph(format!("{name} is not a norm op"))),
    }
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let name = node.op.name();
    if og.iter().skip(1).any(Option::is_some) {
        return Err(Error::graph(format!(
            "{name}: its auxiliary outputs (statistics for the backward) are not differentiable; \
             compute them with ordinary ops if the loss needs them"
        )));
    }
    let x = &node.inputs;
    let o = &node.outputs;
    let Some(gy) = og[0] else {
        return Ok(vec![None; x.len()]);
    };
    Ok(match &node.op {
        &Op::LayerNorm { eps, row_stride } => {
            let r = g.push(
                Op::LayerNormBackward { eps, row_stride },
                &[gy, x[0], x[1], o[1], o[2]],
            )?;
            vec![Some(r[0]), Some(r[1]), Some(r[2])]
        }
        Op::L2Normalize { eps } => vec![Some(
            g.push1(Op::L2NormalizeBackward { eps: *eps }, &[gy, o[0], o[1]])?,
        )],
        Op::MaskedSoftmax => vec![Some(g.push1(Op::MaskedSoftmaxBackward, &[gy, o[0]])?), None],
        op => return Err(Error::graph(format!("{} has no gradient rule", op.name()))),
    })
}

/// Every output of a LayerNorm node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormValues {
    /// The normalised output, shaped like `x`.
    pub y: ValueId,
    /// Per-row mean `[..]`.
    pub mean: ValueId,
    /// Per-row `1 / sqrt(var + eps)` `[..]`.
    pub rstd: ValueId,
}

/// Builders for the norm ops.
impl Graph {
    /// LayerNorm over the last axis: `x[.., C]`, `gamma[C]`, `beta[C]` → `y` (PyTorch
    /// semantics: biased variance, `eps` inside the square root).
    pub fn layer_norm(
        &mut self,
        x: ValueId,
        gamma: ValueId,
        beta: ValueId,
        eps: f64,
    ) -> Result<ValueId> {
        Ok(self.layer_norm_values(x, gamma, beta, eps)?.y)
    }

    /// `layer_norm` returning the saved statistics as well.
    pub fn layer_norm_values(
        &mut self,
        x: ValueId,
        gamma: ValueId,
        beta: ValueId,
        eps: f64,
    ) -> Result<LayerNormValues> {
        self.layer_norm_strided(x, gamma, beta, eps, 1)
    }

    /// `layer_norm_values` of rows taken every `row_stride`-th from a batch `row_stride`
    /// times as long: the same values, and parameter gradients with the bits of the long
    /// batch's (see [`Op::LayerNorm`]).
    pub fn layer_norm_strided(
        &mut self,
        x: ValueId,
        gamma: ValueId,
        beta: ValueId,
        eps: f64,
        row_stride: usize,
    ) -> Result<LayerNormValues> {
        let o = self.push(Op::LayerNorm { eps, row_stride }, &[x, gamma, beta])?;
        Ok(LayerNormValues {
            y: o[0],
            mean: o[1],
            rstd: o[2],
        })
    }

    /// `x / max(‖x‖₂, eps)` over the last axis (`torch.nn.functional.normalize`, eps > 0).
    pub fn l2_normalize(&mut self, x: ValueId, eps: f64) -> Result<ValueId> {
        Ok(self.l2_normalize_with_norm(x, eps)?.0)
    }

    /// `l2_normalize` returning `(y, norm)`, `norm[..] = ‖x‖₂` (unclamped).
    pub fn l2_normalize_with_norm(&mut self, x: ValueId, eps: f64) -> Result<(ValueId, ValueId)> {
        let o = self.push(Op::L2Normalize { eps }, &[x])?;
        Ok((o[0], o[1]))
    }

    /// Softmax over the last axis of `x[B, G, L]` over the keys with `keep[B, L] ≠ 0`
    /// (`keep` float, same dtype as `x`); masked keys get exactly 0, and a row with no kept
    /// key is all zeros (never NaN). No gradient flows into `keep`.
    pub fn masked_softmax(&mut self, x: ValueId, keep: ValueId) -> Result<ValueId> {
        self.push1(Op::MaskedSoftmax, &[x, keep])
    }
}
