//! Segment mean pooling (DESIGN §3.5): the per-segment mean of the rows of `x`.
//!
//! Serves both the masked average pooling of a feature map over panoptic segments
//! (x = pixels × channels, seg = segment id of each pixel, −1 = void) and the node → image
//! mean pool (x = nodes, seg = graph id of each node, −1 = padding). An empty segment gets
//! a zero mean and passes no gradient.

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::Meta;
use rayon::prelude::*;

/// Outputs of [`Graph::segment_mean`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMeanOut {
    /// Per-segment mean, `[S, C]` (0 for an empty segment).
    pub mean: ValueId,
    /// Rows in each segment, `[S]`, same float dtype as x.
    pub count: ValueId,
}

/// Ids per parallel chunk of the check (as the CPU kernels' `PAR_MIN`).
const PAR_MIN_IDS: usize = 1 << 14;

/// Whether `id` lies in `-1..segments` (one unsigned compare: `id + 1 ≤ segments`).
#[inline(always)]
fn in_range(id: i32, segments: usize) -> bool {
    (id as i64 + 1) as u64 <= segments as u64
}

/// The segment-id rule of SegmentMean: every id in `-1..segments` (−1 = void); the error names
/// the first id outside. The scan is branch-free (vectorised) and parallel; the position is
/// searched for only when something is wrong.
pub fn validate_segment_ids(op: &'static str, seg: &[i32], segments: usize) -> Result<()> {
    let chunk_ok = |ch: &[i32]| ch.iter().fold(true, |ok, &id| ok & in_range(id, segments));
    let ok = if seg.len() >= PAR_MIN_IDS {
        seg.par_chunks(PAR_MIN_IDS).all(chunk_ok)
    } else {
        chunk_ok(seg)
    };
    if ok {
        return Ok(());
    }
    let p = seg
        .iter()
        .position(|&id| !in_range(id, segments))
        .unwrap_or(0);
    Err(segment_id_error(op, p, seg[p], segments))
}

/// The error for `seg[p] = id` outside `-1..segments`.
pub fn segment_id_error(op: &'static str, p: usize, id: i32, segments: usize) -> Error {
    Error::invalid(
        op,
        format!("seg[{p}] = {id} is outside -1..{segments} (-1 = void)"),
    )
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::SegmentMean { segments } => {
            check::arity(name, inputs, 2)?;
            let (x, seg) = (&inputs[0], &inputs[1]);
            check::float(name, "x", x)?;
            check::rank(name, "x", x, 2)?;
            check::index(name, "seg", seg)?;
            check::dims(name, "seg", seg, &[x.shape.at(0)])?;
            Ok(vec![
                Meta::new([*segments, x.shape.at(1)], x.dtype),
                Meta::new([*segments], x.dtype),
            ])
        }
        Op::SegmentMeanBackward => {
            check::arity(name, inputs, 3)?;
            let (gy, seg, count) = (&inputs[0], &inputs[1], &inputs[2]);
            check::float(name, "g_y", gy)?;
            check::rank(name, "g_y", gy, 2)?;
            check::index(name, "seg", seg)?;
            check::rank(name, "seg", seg, 1)?;
            check::same_dtype(name, "g_y and count", gy, count)?;
            check::dims(name, "count", count, &[gy.shape.at(0)])?;
            Ok(vec![Meta::new([seg.shape.at(0), gy.shape.at(1)], gy.dtype)])
        }
        _ => Err(Error::graph(format!("{name} is not a segment op"))),
    }
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    if !matches!(node.op, Op::SegmentMean { .. }) {
        return Err(Error::graph(format!(
            "{} has no gradient rule",
            node.op.name()
        )));
    }
    // count does not depend on x: only the mean's gradient flows back.
    let Some(gy) = og[0] else {
        return Ok(vec![None, None]);
    };
    let gx = g.push1(
        Op::SegmentMeanBackward,
        &[gy, node.inputs[1], node.outputs[1]],
    )?;
    Ok(vec![Some(gx), None])
}

impl Graph {
    /// Per-segment mean of the rows of `x[P, C]`: `seg[P]` (i32) gives each row's segment in
    /// `0..segments`, or −1 to leave it out. Ids `≥ segments` or `< −1` are rejected when the
    /// op runs (`Error::Invalid`). Differentiable in x.
    pub fn segment_mean(
        &mut self,
        x: ValueId,
        seg: ValueId,
        segments: usize,
    ) -> Result<SegmentMeanOut> {
        let out = self.push(Op::SegmentMean { segments }, &[x, seg])?;
        Ok(SegmentMeanOut {
            mean: out[0],
            count: out[1],
        })
    }
}
