//! CPU kernels: segment mean pooling (DESIGN §3.5).
//!
//! Forward: a counting sort of the rows by segment (one O(P) pass, one buffer per call),
//! then segments in parallel, each summing its rows in increasing row order (deterministic
//! for any thread count, no atomics). Backward: rows in parallel, each reading its
//! segment's gradient row.

use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float, PAR_MIN};
use crate::error::{Error, Result};
use crate::ops::segment::{segment_id_error, validate_segment_ids};
use crate::ops::Op;
use rayon::prelude::*;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dt = inputs
        .first()
        .map(|v| v.dtype)
        .ok_or_else(|| Error::shape(op.name(), "missing inputs"))?;
    match op {
        Op::SegmentMean { segments } => {
            float_dispatch!(op.name(), dt, forward(*segments, inputs, outputs))
        }
        Op::SegmentMeanBackward => float_dispatch!(op.name(), dt, backward(inputs, outputs)),
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in segment kernels", other.name()),
        }),
    }
}

fn forward<T: Float>(
    segments: usize,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "segment_mean";
    let [xv, segv] = inputs else {
        return Err(Error::shape(OP, "expects 2 inputs"));
    };
    let [yv, countv] = outputs else {
        return Err(Error::shape(OP, "expects 2 outputs"));
    };
    let (ysh, csh) = (yv.shape, countv.shape);
    let (x, seg) = (read::<T>(xv)?, read::<i32>(segv)?);
    let (y, count) = (write::<T>(yv)?, write::<T>(countv)?);
    let p = seg.len();
    let c = x.len().checked_div(p).unwrap_or_else(|| ysh.last());
    if x.len() != p * c || y.len() != segments * c || count.len() != segments {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?}, seg {:?}, y {:?}, count {:?} do not fit",
                xv.shape, segv.shape, ysh, csh
            ),
        ));
    }
    if p >= u32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("{p} rows exceed the u32 row index"),
        ));
    }

    // Counting sort: buf = [end offset of each segment (S) | rows grouped by segment (P)].
    // The counting pass also validates the ids (the first bad one is reported).
    let mut buf = vec![0u32; segments + p];
    let (off, order) = buf.split_at_mut(segments);
    for (row, &id) in seg.iter().enumerate() {
        if id >= 0 {
            match off.get_mut(id as usize) {
                Some(n) => *n += 1,
                None => return Err(segment_id_error(OP, row, id, segments)),
            }
        } else if id != -1 {
            return Err(segment_id_error(OP, row, id, segments));
        }
    }
    let mut run = 0u32;
    for o in off.iter_mut() {
        let n = *o;
        *o = run;
        run += n;
    }
    for (row, &id) in seg.iter().enumerate() {
        if id >= 0 {
            let o = &mut off[id as usize];
            order[*o as usize] = row as u32;
            *o += 1;
        }
    }
    // Now off[k] is the end of segment k; its start is off[k − 1] (0 for k = 0).
    let (off, order) = (&*off, &*order);
    let range = |k: usize| (if k == 0 { 0 } else { off[k - 1] as usize })..off[k] as usize;

    count
        .iter_mut()
        .enumerate()
        .for_each(|(k, n)| *n = T::of(range(k).len() as f64));
    if c == 0 {
        return Ok(());
    }
    let work = |(k, yr): (usize, &mut [T])| {
        yr.fill(T::zero());
        let rows = &order[range(k)];
        for &row in rows {
            let xr = &x[row as usize * c..(row as usize + 1) * c];
            for (a, &b) in yr.iter_mut().zip(xr) {
                *a += b;
            }
        }
        if !rows.is_empty() {
            let n = T::of(rows.len() as f64);
            yr.iter_mut().for_each(|a| *a = *a / n);
        }
    };
    if p * c >= PAR_MIN {
        let min_len = (PAR_MIN / (p * c / segments.max(1)).max(1)).max(1);
        y.par_chunks_mut(c)
            .enumerate()
            .with_min_len(min_len)
            .for_each(work);
    } else {
        y.chunks_mut(c).enumerate().for_each(work);
    }
    Ok(())
}

fn backward<T: Float>(inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    const OP: &str = "segment_mean_backward";
    let [gyv, segv, countv] = inputs else {
        return Err(Error::shape(OP, "expects 3 inputs"));
    };
    let [gxv] = outputs else {
        return Err(Error::shape(OP, "expects 1 output"));
    };
    let (gy, seg, count) = (read::<T>(gyv)?, read::<i32>(segv)?, read::<T>(countv)?);
    let gxsh = gxv.shape;
    let gx = write::<T>(gxv)?;
    let segments = count.len();
    let p = seg.len();
    let c = gxsh.last();
    if gy.len() != segments * c || gx.len() != p * c {
        return Err(Error::shape(
            OP,
            format!(
                "g_y {:?}, seg {:?}, count {:?}, gx {:?} do not fit",
                gyv.shape, segv.shape, countv.shape, gxsh
            ),
        ));
    }
    validate_segment_ids(OP, seg, segments)?;
    if c == 0 {
        return Ok(());
    }
    let work = |(gr, &id): (&mut [T], &i32)| {
        // A void row, or (with an inconsistent count) an empty segment: no gradient.
        if id < 0 || count[id as usize] <= T::zero() {
            gr.fill(T::zero());
            return;
        }
        let k = id as usize;
        let n = count[k];
        for (g, &v) in gr.iter_mut().zip(&gy[k * c..(k + 1) * c]) {
            *g = v / n;
        }
    };
    if p * c >= PAR_MIN {
        gx.par_chunks_mut(c)
            .zip(seg.par_iter())
            .with_min_len((PAR_MIN / c).max(1))
            .for_each(work);
    } else {
        gx.chunks_mut(c).zip(seg.iter()).for_each(work);
    }
    Ok(())
}
