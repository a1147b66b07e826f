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
//!
//! **Gathered negatives** (one-directional only): `a[B_local, D]` against the candidates
//! `p[B_all, D]`, the positive of row `i` being `p[offset + i]`: open_clip's `local_loss` with
//! `gather_with_grad`, so a data-parallel caller never forms `B_all × B_all`. The symmetric
//! data-parallel loss is two of them ([`Graph::infonce_gathered`]).
//!
//! **Precision** ([`Precision`]): the operands of the two products (`a`, `p` for the logits;
//! the logit gradient and `a`, `p` for the backward) are rounded to tf32 or bf16, as tensor
//! cores read them; accumulation, log-sum-exp, softmax and the loss stay in the tensor's dtype.

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::Meta;

/// Operand precision of InfoNCE's products (DESIGN §3.4).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact in the tensor's dtype (the default).
    #[default]
    F32,
    /// Operands rounded to tf32 (10 explicit mantissa bits, to nearest, ties away from zero,
    /// as `cvt.rna.tf32.f32`), products accumulated in the tensor's dtype.
    Tf32,
    /// Operands rounded to bfloat16 (7 explicit mantissa bits, to nearest even), products
    /// accumulated in the tensor's dtype.
    Bf16,
}

impl Precision {
    /// Every mode, in the order of [`Precision::name`].
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// `f32`, `tf32` or `bf16`: the spelling of the config key and of `gshn op`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The inverse of [`Precision::name`].
    pub fn parse(s: &str) -> Result<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::graph(format!(
                    "unknown InfoNCE precision {s:?}: expected f32, tf32 or bf16"
                ))
            })
    }

    /// Rounds an f32 operand as this mode's tensor cores read it, on its bits: tf32 keeps 10
    /// mantissa bits, to nearest, ties away from zero (`cvt.rna.tf32.f32`); bf16 keeps 7, to
    /// nearest even (`__float2bfloat16_rn`). inf and NaN pass through; a carry past the largest
    /// finite value gives inf. `kernels/infonce.cu` (`round_operand`) does the same operations.
    pub fn round_f32(self, x: f32) -> f32 {
        let u = x.to_bits();
        if self == Precision::F32 || u & 0x7f80_0000 == 0x7f80_0000 {
            return x;
        }
        f32::from_bits(match self {
            Precision::Tf32 => u.wrapping_add(0x1000) & 0xffff_e000,
            _ => u.wrapping_add(0x7fff + ((u >> 16) & 1)) & 0xffff_0000,
        })
    }

    /// Rounds an f64 operand's mantissa to this mode's width (the same rules as
    /// [`Precision::round_f32`], for f64 tensors; zeros, inf and NaN pass through).
    pub fn round(self, x: f64) -> f64 {
        let bits = match self {
            Precision::F32 => return x,
            Precision::Tf32 => 10,
            Precision::Bf16 => 7,
        };
        if !x.is_finite() || x == 0.0 {
            return x;
        }
        // f64 has 52 explicit mantissa bits; keep `bits` of them.
        let drop = 52 - bits;
        let u = x.to_bits();
        let half = 1u64 << (drop - 1);
        let rest = u & ((1u64 << drop) - 1);
        let up = match self {
            Precision::Tf32 => rest >= half,
            _ => rest > half || (rest == half && (u >> drop) & 1 == 1),
        };
        let kept = u & !((1u64 << drop) - 1);
        f64::from_bits(if up { kept + (1u64 << drop) } else { kept })
    }
}

/// Attributes of the InfoNCE ops (DESIGN §3.4); the default is symmetric, exact f32, with
/// 256-wide tiles and no gathered negatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceAttrs {
    /// Both directions (a→p and p→a); false = a→p only (STL).
    pub symmetric: bool,
    /// Tile edge of the chunked evaluation; 0 = dense (materialises B×B, for reference).
    pub chunk: usize,
    /// Operand precision of the products.
    pub precision: Precision,
    /// Gathered negatives (one-directional only): row `i` of `a` is positive with row
    /// `offset + i` of `p`, which may have more rows than `a`. 0 with equal batches is the
    /// plain loss.
    pub offset: usize,
}

impl Default for InfoNceAttrs {
    fn default() -> Self {
        InfoNceAttrs::SYMMETRIC
    }
}

impl InfoNceAttrs {
    /// The symmetric loss with `chunk`-wide tiles, exact f32, no gathered negatives.
    pub const SYMMETRIC: InfoNceAttrs = InfoNceAttrs {
        symmetric: true,
        chunk: 256,
        precision: Precision::F32,
        offset: 0,
    };

    /// The one-directional loss (a → p), otherwise as [`InfoNceAttrs::SYMMETRIC`].
    pub const ONE_DIRECTIONAL: InfoNceAttrs = InfoNceAttrs {
        symmetric: false,
        ..InfoNceAttrs::SYMMETRIC
    };

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

/// The shape of one InfoNCE call: `a[rows, d]` against `p[cols, d]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoNceGeometry {
    /// Rows of `a` (anchors; the batch, or the local batch with gathered negatives).
    pub rows: usize,
    /// Rows of `p` (candidates).
    pub cols: usize,
    /// Feature width.
    pub d: usize,
}

impl InfoNceAttrs {
    /// Validates the shapes of `a` and `p` against these attributes: both `[_, D]`, at least
    /// one anchor, and either equal batches (offset 0) or, one-directional only, the anchors'
    /// positives `p[offset .. offset + rows]` inside `p`. The one check every backend uses.
    pub fn geometry(&self, op: &'static str, a: &[usize], p: &[usize]) -> Result<InfoNceGeometry> {
        let (&[rows, d], &[cols, dp]) = (a, p) else {
            return Err(Error::shape(
                op,
                format!("a and p must both be [B, D], got {a:?} and {p:?}"),
            ));
        };
        if dp != d {
            return Err(Error::shape(
                op,
                format!("a and p must have the same width D, got {a:?} and {p:?}"),
            ));
        }
        if rows == 0 {
            return Err(Error::shape(op, "the batch is empty (B = 0)"));
        }
        let gathered = rows != cols || self.offset != 0;
        if gathered && self.symmetric {
            return Err(Error::shape(
                op,
                format!(
                    "the symmetric loss needs a and p of the same shape and offset 0, got {a:?}, \
                     {p:?}, offset {}; gathered negatives are one-directional (two of them make \
                     the symmetric data-parallel loss, see Graph::infonce_gathered)",
                    self.offset
                ),
            ));
        }
        if self.offset.checked_add(rows).is_none_or(|end| end > cols) {
            return Err(Error::shape(
                op,
                format!(
                    "the positives p[{} .. {} + {rows}] lie outside p's {cols} rows",
                    self.offset, self.offset
                ),
            ));
        }
        Ok(InfoNceGeometry { rows, cols, d })
    }
}

/// Checks a[B,D], p[B',D], logit_scale[] against the attributes.
fn check_abs(
    op: &'static str,
    at: &InfoNceAttrs,
    a: &Meta,
    p: &Meta,
    ls: &Meta,
) -> Result<InfoNceGeometry> {
    check::float(op, "a", a)?;
    check::same_dtype(op, "a and p", a, p)?;
    check::same_dtype(op, "a and logit_scale", a, ls)?;
    check::dims(op, "logit_scale", ls, &[])?;
    at.geometry(op, a.shape.dims(), p.shape.dims())
}

/// The inputs of `Op::InfoNceBackward`, by name: `g_loss, a, p, logit_scale, lse_row, lse_col
/// (, g_lse_row, g_lse_col)`, the one definition of that order, generic over what an input is.
#[derive(Clone, Copy, Debug)]
pub struct InfoNceBackwardArgs<'a, T> {
    /// The gradient of the loss, `[]`.
    pub g_loss: &'a T,
    /// The anchor embeddings `[B,D]`.
    pub a: &'a T,
    /// The positive (candidate) embeddings `[B,D]` (`[B_all, D]` with gathered negatives).
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
            let b = check_abs(name, at, &inputs[0], &inputs[1], &inputs[2])?.rows;
            let dt = inputs[0].dtype;
            Ok(vec![
                Meta::new([], dt),
                Meta::new([b], dt),
                Meta::new([at.lse_col_len(b)], dt),
            ])
        }
        Op::InfoNceBackward(at) => {
            let x = InfoNceBackwardArgs::of(name, inputs)?;
            let b = check_abs(name, at, x.a, x.p, x.logit_scale)?.rows;
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
    let zeros = |g: &mut Graph, v: ValueId| {
        let meta = g.meta(v)?.clone();
        g.push1(Op::Fill { value: 0.0, meta }, &[])
    };
    let g_loss = match og[0] {
        Some(v) => v,
        None => zeros(g, o[0])?,
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
    /// reference. With `attrs.offset` (one-directional), `p` may be `[B_all, D]`: gathered
    /// negatives. Differentiable in a, p and logit_scale.
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

    /// The symmetric loss of one data-parallel rank (open_clip `ClipLoss` with `local_loss`
    /// and `gather_with_grad`): `½ (InfoNCE(a_local → p_all) + InfoNCE(p_local → a_all))`,
    /// the local rows being rows `offset .. offset + B_local` of the gathered `[B_all, D]`
    /// tensors. No `B_all × B_all` matrix is formed; averaging this loss's gradients over the
    /// ranks gives the gradient of the global symmetric loss. `attrs.symmetric` and
    /// `attrs.offset` are set here; chunk and precision are taken from `attrs`.
    pub fn infonce_gathered(
        &mut self,
        local: (ValueId, ValueId),
        all: (ValueId, ValueId),
        offset: usize,
        logit_scale: ValueId,
        attrs: InfoNceAttrs,
    ) -> Result<ValueId> {
        let one = InfoNceAttrs {
            symmetric: false,
            offset,
            ..attrs
        };
        let a_to_p = self.infonce(local.0, all.1, logit_scale, one)?.loss;
        let p_to_a = self.infonce(local.1, all.0, logit_scale, one)?.loss;
        let sum = self.add(a_to_p, p_to_a)?;
        self.scale(sum, 0.5)
    }
}
