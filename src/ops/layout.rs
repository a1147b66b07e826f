//! Layout ops: reshape, permute, concat, slice, gather/scatter of rows, dropout.

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{Meta, Shape};
use crate::util::rng::{hash_threshold, hash_u24};

/// Highest rank `Permute` accepts (matches the CUDA kernel's fixed-size index arrays).
pub const MAX_PERMUTE_RANK: usize = 6;

/// The hash seed of a dropout `seed` value: the i32's bit pattern, zero-extended
/// (`seed as u32 as u64`; on the GPU `(unsigned long long)(unsigned int)seed`).
pub fn dropout_seed(seed: i32) -> u64 {
    seed as u32 as u64
}

/// Whether dropout with probability `p` keeps element `index` (the flat row-major index):
/// `hash_uniform(dropout_seed(seed), index) >= p`, decided exactly as the integer compare
/// `hash_u24(..) >= hash_threshold(p)` (see `crate::util::rng`).
pub fn dropout_keeps(seed: i32, index: u64, p: f64) -> bool {
    hash_u24(dropout_seed(seed), index) >= hash_threshold(p)
}

/// The factor applied to kept elements, `1 / (1 − p)`, computed in f64 and then rounded once
/// to the element type: `y = x · scale` if kept, else exactly 0.
pub fn dropout_scale(p: f64) -> f64 {
    1.0 / (1.0 - p)
}

/// Rank of a shape, checking that `axis` is one of its axes.
fn check_axis(op: &'static str, what: &str, s: &Shape, axis: usize) -> Result<()> {
    if axis >= s.rank() {
        return Err(Error::shape(
            op,
            format!("axis {axis} out of range for {what} of shape {s:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::Reshape(shape) => {
            check::arity(name, inputs, 1)?;
            let x = &inputs[0];
            if x.shape.numel() != shape.numel() {
                return Err(Error::shape(
                    name,
                    format!(
                        "cannot reshape {:?} ({} elements) to {shape:?} ({} elements)",
                        x.shape,
                        x.shape.numel(),
                        shape.numel()
                    ),
                ));
            }
            Ok(vec![Meta::new(shape.clone(), x.dtype)])
        }
        Op::Permute(perm) => {
            check::arity(name, inputs, 1)?;
            let x = &inputs[0];
            let r = x.shape.rank();
            if perm.len() != r {
                return Err(Error::shape(
                    name,
                    format!(
                        "permutation {perm:?} has {} axes, x {:?} has {r}",
                        perm.len(),
                        x.shape
                    ),
                ));
            }
            if r > MAX_PERMUTE_RANK {
                return Err(Error::shape(
                    name,
                    format!("rank {r} exceeds the supported {MAX_PERMUTE_RANK}"),
                ));
            }
            let mut seen = [false; MAX_PERMUTE_RANK];
            for &p in perm {
                if p >= r || seen[p] {
                    return Err(Error::shape(
                        name,
                        format!("{perm:?} is not a permutation of 0..{r}"),
                    ));
                }
                seen[p] = true;
            }
            let dims: Vec<usize> = perm.iter().map(|&p| x.shape.at(p)).collect();
            Ok(vec![Meta::new(dims, x.dtype)])
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err(Error::shape(name, "expects at least one input, got 0"));
            }
            let first = &inputs[0];
            check_axis(name, "input 0", &first.shape, *axis)?;
            let mut dims = first.shape.dims().to_vec();
            for (i, m) in inputs.iter().enumerate().skip(1) {
                check::same_dtype(name, &format!("input 0 and input {i}"), first, m)?;
                let ok = m.shape.rank() == first.shape.rank()
                    && m.shape
                        .dims()
                        .iter()
                        .zip(first.shape.dims())
                        .enumerate()
                        .all(|(d, (a, b))| d == *axis || a == b);
                if !ok {
                    return Err(Error::shape(
                        name,
                        format!(
                            "input {i} has shape {:?}, input 0 has {:?}: all dims but axis {axis} must match",
                            m.shape, first.shape
                        ),
                    ));
                }
                dims[*axis] += m.shape.at(*axis);
            }
            Ok(vec![Meta::new(dims, first.dtype)])
        }
        Op::Slice { axis, start, len } => {
            check::arity(name, inputs, 1)?;
            let x = &inputs[0];
            check_axis(name, "x", &x.shape, *axis)?;
            let d = x.shape.at(*axis);
            if start.checked_add(*len).is_none_or(|end| end > d) {
                return Err(Error::shape(
                    name,
                    format!(
                        "range {start}..{start}+{len} out of bounds for axis {axis} of {:?}",
                        x.shape
                    ),
                ));
            }
            let mut dims = x.shape.dims().to_vec();
            dims[*axis] = *len;
            Ok(vec![Meta::new(dims, x.dtype)])
        }
        Op::SliceBackward { axis, start, full } => {
            check::arity(name, inputs, 1)?;
            let gm = &inputs[0];
            check_axis(name, "the full shape", full, *axis)?;
            let ok = gm.shape.rank() == full.rank()
                && gm
                    .shape
                    .dims()
                    .iter()
                    .zip(full.dims())
                    .enumerate()
                    .all(|(d, (a, b))| if d == *axis { start + a <= *b } else { a == b });
            if !ok {
                return Err(Error::shape(
                    name,
                    format!(
                        "gradient {:?} does not fit {full:?} at {start} along axis {axis}",
                        gm.shape
                    ),
                ));
            }
            Ok(vec![Meta::new(full.clone(), gm.dtype)])
        }
        Op::Gather => {
            check::arity(name, inputs, 2)?;
            let (t, idx) = (&inputs[0], &inputs[1]);
            check::float(name, "table", t)?;
            check::rank(name, "table", t, 2)?;
            check::index(name, "idx", idx)?;
            check::rank(name, "idx", idx, 1)?;
            Ok(vec![Meta::new([idx.shape.at(0), t.shape.at(1)], t.dtype)])
        }
        Op::ScatterAdd { rows } => {
            check::arity(name, inputs, 2)?;
            let (gm, idx) = (&inputs[0], &inputs[1]);
            check::float(name, "g", gm)?;
            check::rank(name, "g", gm, 2)?;
            check::index(name, "idx", idx)?;
            check::dims(name, "idx", idx, &[gm.shape.at(0)])?;
            Ok(vec![Meta::new([*rows, gm.shape.at(1)], gm.dtype)])
        }
        Op::Dropout { p } | Op::DropoutBackward { p } => {
            check::arity(name, inputs, 2)?;
            if !(0.0..1.0).contains(p) {
                return Err(Error::invalid(
                    name,
                    format!("drop probability {p} must be in [0, 1)"),
                ));
            }
            check::float(name, "x", &inputs[0])?;
            check::index(name, "seed", &inputs[1])?;
            check::dims(name, "seed", &inputs[1], &[])?;
            Ok(vec![inputs[0].clone()])
        }
        _ => Err(Error::graph(format!("{name} is not a layout op"))),
    }
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let x = &node.inputs;
    let Some(gy) = og[0] else {
        return Ok(vec![None; x.len()]);
    };
    Ok(match &node.op {
        Op::Reshape(_) => vec![Some(g.reshape(gy, g.shape(x[0])?.clone())?)],
        Op::Permute(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.push1(Op::Permute(inv), &[gy])?)]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut out = Vec::new();
            for &xi in x {
                let len = g.shape(xi)?.at(*axis);
                out.push(Some(g.push1(
                    Op::Slice {
                        axis: *axis,
                        start,
                        len,
                    },
                    &[gy],
                )?));
                start += len;
            }
            out
        }
        Op::Slice { axis, start, .. } => {
            let full = g.shape(x[0])?.clone();
            vec![Some(g.push1(
                Op::SliceBackward {
                    axis: *axis,
                    start: *start,
                    full,
                },
                &[gy],
            )?)]
        }
        Op::Gather => {
            let rows = g.shape(x[0])?.at(0);
            vec![Some(g.push1(Op::ScatterAdd { rows }, &[gy, x[1]])?), None]
        }
        Op::Dropout { p } => vec![
            Some(g.push1(Op::DropoutBackward { p: *p }, &[gy, x[1]])?),
            None,
        ],
        op => return Err(Error::graph(format!("{} has no gradient rule", op.name()))),
    })
}

/// Builders for the layout ops.
impl Graph {
    /// The same elements under another shape of equal size (a no-op if the shape is equal).
    pub fn reshape(&mut self, x: ValueId, shape: impl Into<Shape>) -> Result<ValueId> {
        let shape = shape.into();
        if self.shape(x)? == &shape {
            return Ok(x);
        }
        self.push1(Op::Reshape(shape), &[x])
    }

    /// Axes permuted: output axis `i` is input axis `perm[i]` (`torch.permute` semantics).
    /// Rank ≤ 6. The identity permutation returns `x` itself.
    pub fn permute(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) && perm.len() == self.shape(x)?.rank() {
            return Ok(x);
        }
        self.push1(Op::Permute(perm.to_vec()), &[x])
    }

    /// Concatenation along `axis` (`torch.cat`); every other dimension must match.
    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> Result<ValueId> {
        self.push1(Op::Concat { axis }, xs)
    }

    /// `x[.., start..start+len, ..]` along `axis` (`torch.narrow`).
    pub fn slice(&mut self, x: ValueId, axis: usize, start: usize, len: usize) -> Result<ValueId> {
        self.push1(Op::Slice { axis, start, len }, &[x])
    }

    /// Rows of `table[R, C]` picked by `idx[K]` (i32) → `[K, C]` (embedding lookup). An index
    /// outside `[0, R)` is an `Error::Invalid` at run time.
    pub fn gather(&mut self, table: ValueId, idx: ValueId) -> Result<ValueId> {
        self.push1(Op::Gather, &[table, idx])
    }

    /// `out[r] = Σ_{k: idx[k] = r} g[k]` → `[rows, C]`, summed in ascending `k` (deterministic).
    pub fn scatter_add(&mut self, g: ValueId, idx: ValueId, rows: usize) -> Result<ValueId> {
        self.push1(Op::ScatterAdd { rows }, &[g, idx])
    }

    /// Inverted dropout: `x ⊙ mask / (1 − p)`, `mask_i = hash_uniform(seed, i) ≥ p`
    /// (see `crate::util::rng`), `seed` an i32 scalar fed per step. `p ∈ [0, 1)`; `p = 0` is
    /// the identity. Dropped elements are exactly 0.
    pub fn dropout(&mut self, x: ValueId, seed: ValueId, p: f64) -> Result<ValueId> {
        self.push1(Op::Dropout { p }, &[x, seed])
    }
}
