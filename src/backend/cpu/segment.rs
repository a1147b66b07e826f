//! CPU kernels: segment mean pooling (DESIGN §3.5).
//!
//! Forward: one pass counts each segment's rows; then one part per worker, each a range of
//! segments, streams the rows in order and sums those of its segments, so every segment adds
//! its rows in increasing row order (deterministic for any thread count, no atomics).
//! Backward: rows in parallel, each reading its segment's gradient row.

use super::{read, storage_dispatch, write, CpuView, CpuViewMut, Float, Stored, PAR_MIN};
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
            storage_dispatch!(op.name(), dt, forward(*segments, inputs, outputs))
        }
        Op::SegmentMeanBackward => storage_dispatch!(op.name(), dt, backward(inputs, outputs)),
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in segment kernels", other.name()),
        }),
    }
}

/// The forward on `S` storage: x's rows widened as they are read, each part's sums kept in
/// `T` and rounded once into y; the counts (a statistic) in `T`.
fn forward<T: Float, S: Stored<T>>(
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
    let (x, seg) = (read::<S>(xv)?, read::<i32>(segv)?);
    let (y, count) = (write::<S>(yv)?, write::<T>(countv)?);
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

    // One pass validates the ids (reporting the first bad one) and counts each segment's rows.
    let mut rows_of = vec![0usize; segments];
    for (row, &id) in seg.iter().enumerate() {
        if id >= 0 {
            match rows_of.get_mut(id as usize) {
                Some(n) => *n += 1,
                None => return Err(segment_id_error(OP, row, id, segments)),
            }
        } else if id != -1 {
            return Err(segment_id_error(OP, row, id, segments));
        }
    }
    for (n, &r) in count.iter_mut().zip(&rows_of) {
        *n = T::of(r as f64);
    }
    if c == 0 {
        return Ok(());
    }
    // One part per worker: a range of segments holding about P / workers rows. Each part reads
    // the rows in order and adds those of its own segments, so every segment sums its rows in
    // increasing row order, whatever the parts (no atomics; the same bits for any thread
    // count), and x streams from memory instead of being gathered row by row.
    let parts = if p * c >= PAR_MIN {
        rayon::current_num_threads().min(segments).max(1)
    } else {
        1
    };
    let mut blocks: Vec<(usize, &mut [S])> = Vec::with_capacity(parts);
    let (mut rest, mut first, mut seen) = (&mut y[..], 0, 0);
    for part in 1..=parts {
        let mut end = first;
        while end < segments && (part == parts || seen + rows_of[end] <= part * p / parts) {
            seen += rows_of[end];
            end += 1;
        }
        let (head, tail) = std::mem::take(&mut rest).split_at_mut((end - first) * c);
        blocks.push((first, head));
        (rest, first) = (tail, end);
    }
    let work = |(first, ys): (usize, &mut [S])| {
        let mine = ys.len() / c;
        // the sums in T: in y itself when it is T
        let mut sums_buf = Vec::new();
        let sums = match S::compute_mut(ys) {
            Some(sums) => sums,
            None => {
                sums_buf.resize(mine * c, T::zero());
                &mut sums_buf[..]
            }
        };
        sums.fill(T::zero());
        if mine == 0 {
            return;
        }
        let mut row_buf = vec![T::zero(); c];
        for (row, &id) in seg.iter().enumerate() {
            // A void id (−1) wraps to a huge index and is skipped like another part's.
            let k = (id as usize).wrapping_sub(first);
            if k < mine {
                let xr = S::widen(&x[row * c..(row + 1) * c], &mut row_buf);
                for (a, &b) in sums[k * c..(k + 1) * c].iter_mut().zip(xr) {
                    *a += b;
                }
            }
        }
        for (yr, &n) in sums.chunks_mut(c).zip(&rows_of[first..first + mine]) {
            if n > 0 {
                let n = T::of(n as f64);
                yr.iter_mut().for_each(|a| *a = *a / n);
            }
        }
        if !sums_buf.is_empty() {
            S::narrow(&sums_buf, ys);
        }
    };
    if parts > 1 {
        blocks.into_par_iter().for_each(work);
    } else {
        blocks.into_iter().for_each(work);
    }
    Ok(())
}

/// The backward on `S` storage: g_y widened once (it is one row a segment), each row of gx
/// computed in `T` and rounded once.
fn backward<T: Float, S: Stored<T>>(inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    const OP: &str = "segment_mean_backward";
    let [gyv, segv, countv] = inputs else {
        return Err(Error::shape(OP, "expects 3 inputs"));
    };
    let [gxv] = outputs else {
        return Err(Error::shape(OP, "expects 1 output"));
    };
    let (gy, seg, count) = (read::<S>(gyv)?, read::<i32>(segv)?, read::<T>(countv)?);
    let gxsh = gxv.shape;
    let gx = write::<S>(gxv)?;
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
    let mut gy_buf = vec![T::zero(); gy.len()];
    let gy = S::widen(gy, &mut gy_buf);
    let work = |row_buf: &mut Vec<T>, (gr, &id): (&mut [S], &i32)| {
        let fill = |out: &mut [T]| {
            // A void row, or (with an inconsistent count) an empty segment: no gradient.
            if id < 0 || count[id as usize] <= T::zero() {
                out.fill(T::zero());
                return;
            }
            let k = id as usize;
            let n = count[k];
            for (g, &v) in out.iter_mut().zip(&gy[k * c..(k + 1) * c]) {
                *g = v / n;
            }
        };
        match S::compute_mut(gr) {
            Some(out) => fill(out),
            None => {
                fill(row_buf);
                S::narrow(row_buf, gr);
            }
        }
    };
    let row_buf = || vec![T::zero(); c];
    if p * c >= PAR_MIN {
        gx.par_chunks_mut(c)
            .zip(seg.par_iter())
            .with_min_len((PAR_MIN / c).max(1))
            .for_each_init(row_buf, work);
    } else {
        let mut buf = row_buf();
        gx.chunks_mut(c)
            .zip(seg.iter())
            .for_each(|row| work(&mut buf, row));
    }
    Ok(())
}
