//! CUDA: the segment family (`src/ops/segment.rs`) on `kernels/segment.cu`. The rows of each
//! segment are grouped on the host (the ids are a fed input with a host copy), so every
//! segment sums its rows in increasing order, as the CPU does.

use super::launch::{Inputs, Kernels, Output};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::ops::index::group_positions;
use crate::ops::segment::validate_segment_ids;
use crate::ops::Op;
use crate::tensor::DType;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let k = Kernels::float(be, op, outs[0].dtype)?;
    match op {
        Op::SegmentMean { segments } => forward(&k, op, *segments, ins, outs),
        Op::SegmentMeanBackward => {
            // g_y[S,C], seg[P], count[S] -> gx[P,C]
            let gx = &outs[0];
            let (rows, c) = (gx.shape.at(0), gx.shape.last());
            let segments = ins[0].shape.at(0);
            k.flat("segment_mean_bwd", rows * c)
                .input(&ins[0])
                .input(&ins[1])
                .input(&ins[2])
                .ptr(gx.ptr)
                .dim("P", rows)
                .dim("C", c)
                .dim("S", segments)
                .run()
        }
        other => Err(Error::graph(format!(
            "{} is not a segment op",
            other.name()
        ))),
    }
}

/// x[P,C], seg[P] → y[S,C], count[S]
fn forward(k: &Kernels, op: &Op, segments: usize, ins: Inputs, outs: &[Output]) -> Result<()> {
    let c = ins[0].shape.last();
    let seg = k.be.host_i32(&ins[1])?;
    validate_segment_ids(op.name(), &seg, segments)?;
    if segments == 0 {
        return Ok(());
    }
    let (ptr, mut rows) = group_positions(&seg, segments, |s| (s >= 0).then_some(s as usize));
    // One table size whatever the padding (ids < 0): a recorded run replays copies of the
    // sizes it was recorded with (`replay.rs`). The kernel reads only ptr's ranges.
    rows.resize(seg.len(), 0);
    let (y, count) = (outs[0].ptr, outs[1].ptr);
    if c == 0 {
        // No feature launch: the counts come straight from the host grouping.
        let counts: Vec<f64> = ptr.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        return if outs[1].dtype == DType::F64 {
            k.be.upload(count, &counts)
        } else {
            let v: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
            k.be.upload(count, &v)
        };
    }
    let s = k.be.scratch(&[ptr.len() * 4, rows.len() * 4])?;
    k.be.upload(s[0], &ptr)?;
    k.be.upload(s[1], &rows)?;
    k.flat("segment_mean_fwd", segments * c)
        .input(&ins[0])
        .ptr(s[0])
        .ptr(s[1])
        .ptr(y)
        .ptr(count)
        .dim("S", segments)
        .dim("C", c)
        .run()
}
