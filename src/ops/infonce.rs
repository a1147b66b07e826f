//! Symmetric and one-directional InfoNCE (DESIGN §3.4, open_clip `ClipLoss` semantics).
//!
//! `s = min(exp(logit_scale), 100)`, `logits = s a pᵀ`,
//! symmetric: `L = ½ (mean_i [LSE_j logits_ij − logits_ii] + mean_j [LSE_i logits_ij − logits_jj])`,
//! one-directional (a → p, STL): `L = mean_i [LSE_j logits_ij − logits_ii]`.
//!
//! The forward saves the row (and, when symmetric, column) log-sum-exp; the backward
//! recomputes the logits tile by tile, so with `chunk > 0` no `B × B` matrix ever exists.
//! The lse outputs are differentiable too (their gradients, when something consumes them,
//! travel as two optional trailing inputs of `InfoNceBackward`).

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::Meta;

/// Attributes of the InfoNCE ops (DESIGN §3.4); the default is symmetric with 256-wide tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceAttrs {
    /// Both directions (a→p and p→a); false = a→p only (STL).
    pub symmetric: bool,
    /// Tile edge of the chunked evaluation; 0 = dense (materialises B×B, for reference).
    pub chunk: usize,
}

impl Default for InfoNceAttrs {
    fn default() -> Self {
        InfoNceAttrs {
            symmetric: true,
            chunk: 256,
        }
    }
}

impl InfoNceAttrs {
    /// Length of the `lse_col` output for a batch of `b`: `b` when symmetric, 0 otherwise
    /// (the one-directional loss never needs column statistics, so none are computed).
    pub fn lse_col_len(&self, b: usize) -> usize {
        if self.symmetric {
            b
        } else {
            0
        }
    }
}

/// Outputs of [`Graph::infonce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoNceOut {
    /// The loss, `[]`.
    pub loss: ValueId,
    /// `LSE_j logits_ij`, `[B]`.
    pub lse_row: ValueId,
    /// `LSE_i logits_ij`, `[B]` when symmetric, `[0]` for the one-directional variant.
    pub lse_col: ValueId,
}

/// Checks a[B,D], p[B,D], logit_scale[] and returns (B, D).
fn check_abs(op: &'static str, a: &Meta, p: &Meta, ls: &Meta) -> Result<(usize, usize)> {
    check::float(op, "a", a)?;
    check::rank(op, "a", a, 2)?;
    check::same_dtype(op, "a and p", a, p)?;
    check::same_dtype(op, "a and logit_scale", a, ls)?;
    if p.shape != a.shape {
        return Err(Error::shape(
            op,
            format!(
                "a and p must have the same shape, got {:?} and {:?}",
                a.shape, p.shape
            ),
        ));
    }
    check::dims(op, "logit_scale", ls, &[])?;
    let (b, d) = (a.shape.at(0), a.shape.at(1));
    if b == 0 {
        return Err(Error::shape(op, "the batch is empty (B = 0)"));
    }
    Ok((b, d))
}

/// The inputs of `Op::InfoNceBackward`, by name: `g_loss, a, p, logit_scale, lse_row, lse_col
/// (, g_lse_row, g_lse_col)`, the one definition of that order, generic over what an input is.
#[derive(Clone, Copy, Debug)]
pub struct InfoNceBackwardArgs<'a, T> {
    /// The gradient of the loss, `[]`.
    pub g_loss: &'a T,
    /// The anchor embeddings `[B,D]`.
    pub a: &'a T,
    /// The positive embeddings `[B,D]`.
    pub p: &'a T,
    /// Log of the logit scale (`s = min(exp(logit_scale), 100)`), `[]`.
    pub logit_scale: &'a T,
    /// The forward's row log-sum-exp, `[B]`.
    pub lse_row: &'a T,
    /// The forward's column log-sum-exp, `[B]` (`[0]` when one-directional).
    pub lse_col: &'a T,
    /// Gradients into (lse_row, lse_col), when a consumer of the lse outputs sends them.
    pub g_lse: Option<(&'a T, &'a T)>,
}

impl<'a, T> InfoNceBackwardArgs<'a, T> {
    /// Names the 6 or 8 inputs of an `InfoNceBackward`.
    pub fn of(op: &'static str, inputs: &'a [T]) -> Result<Self> {
        match inputs {
            [g_loss, a, p, logit_scale, lse_row, lse_col, rest @ ..]
                if matches!(rest.len(), 0 | 2) =>
            {
                Ok(InfoNceBackwardArgs {
                    g_loss,
                    a,
                    p,
                    logit_scale,
                    lse_row,
                    lse_col,
                    g_lse: rest.first().zip(rest.get(1)),
                })
            }
            _ => Err(Error::shape(
                op,
                format!(
                    "expects 6 inputs (g_loss, a, p, logit_scale, lse_row, lse_col) or 8 \
                     (+ g_lse_row, g_lse_col), got {}",
                    inputs.len()
                ),
            )),
        }
    }

    /// The inputs in their positional order (the inverse of [`InfoNceBackwardArgs::of`]).
    pub fn list(&self) -> Vec<&'a T> {
        let mut v = vec![
            self.g_loss,
            self.a,
            self.p,
            self.logit_scale,
            self.lse_row,
            self.lse_col,
        ];
        if let Some((r, c)) = self.g_lse {
            v.extend([r, c]);
        }
        v
    }
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::InfoNce(at) => {
            check::arity(name, inputs, 3)?;
            let (b, _) = check_abs(name, &inputs[0], &inputs[1], &inputs[2])?;
            let dt = inputs[0].dtype;
            Ok(vec![
                Meta::new([], dt),
                Meta::new([b], dt),
                Meta::new([at.lse_col_len(b)], dt),
            ])
        }
        Op::InfoNceBackward(at) => {
            let x = InfoNceBackwardArgs::of(name, inputs)?;
            let (b, _) = check_abs(name, x.a, x.p, x.logit_scale)?;
            let dt = x.a.dtype;
            check::same_dtype(name, "g_loss and a", x.g_loss, x.a)?;
            check::dims(name, "g_loss", x.g_loss, &[])?;
            let col = at.lse_col_len(b);
            let mut per_row = vec![(x.lse_row, "lse_row", b), (x.lse_col, "lse_col", col)];
            if let Some((r, c)) = x.g_lse {
                per_row.extend([(r, "g_lse_row", b), (c, "g_lse_col", col)]);
            }
            for (m, what, len) in per_row {
                check::same_dtype(name, what, m, x.a)?;
                check::dims(name, what, m, &[len])?;
            }
            Ok(vec![x.a.clone(), x.p.clone(), Meta::new([], dt)])
        }
        _ => Err(Error::graph(format!("{name} is not an InfoNCE op"))),
    }
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let Op::InfoNce(at) = node.op else {
        return Err(Error::graph(format!(
            "{} has no gradient rule",
            node.op.name()
        )));
    };
    let x = &node.inputs;
    let o = &node.outputs;
    // A gradient into lse_col of the one-directional op ([0] elements) carries nothing.
    let g_col = og[2].filter(|_| at.symmetric);
    if og[0].is_none() && og[1].is_none() && g_col.is_none() {
        return Ok(vec![None; x.len()]);
    }
    let dt = g.dtype(x[0])?;
    let zeros = |g: &mut Graph, v: ValueId| {
        let meta = g.meta(v)?.clone();
        g.push1(Op::Fill { value: 0.0, meta }, &[])
    };
    let g_loss = match og[0] {
        Some(v) => v,
        None => g.fill(0.0, [], dt)?,
    };
    let g_lse = if og[1].is_some() || g_col.is_some() {
        let gr = match og[1] {
            Some(v) => v,
            None => zeros(g, o[1])?,
        };
        let gc = match g_col {
            Some(v) => v,
            None => zeros(g, o[2])?,
        };
        Some((gr, gc))
    } else {
        None
    };
    let args = InfoNceBackwardArgs {
        g_loss: &g_loss,
        a: &x[0],
        p: &x[1],
        logit_scale: &x[2],
        lse_row: &o[1],
        lse_col: &o[2],
        g_lse: g_lse.as_ref().map(|(r, c)| (r, c)),
    };
    let ins: Vec<ValueId> = args.list().into_iter().copied().collect();
    let out = g.push(Op::InfoNceBackward(at), &ins)?;
    Ok(vec![Some(out[0]), Some(out[1]), Some(out[2])])
}

impl Graph {
    /// InfoNCE between a\[B,D\] and p\[B,D\] (rows i of both are the positive pair) with the
    /// learnable temperature `logit_scale[]` (`s = min(exp(logit_scale), 100)`).
    /// `attrs.chunk > 0` evaluates in `chunk × chunk` tiles (memory O(B·D)); 0 is the dense
    /// reference. Differentiable in a, p and logit_scale.
    pub fn infonce(
        &mut self,
        a: ValueId,
        p: ValueId,
        logit_scale: ValueId,
        attrs: InfoNceAttrs,
    ) -> Result<InfoNceOut> {
        let out = self.push(Op::InfoNce(attrs), &[a, p, logit_scale])?;
        Ok(InfoNceOut {
            loss: out[0],
            lse_row: out[1],
            lse_col: out[2],
        })
    }
}
