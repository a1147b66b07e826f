//! CPU kernels: layout ops (reshape, permute, concat, slice, gather/scatter-add, dropout).
//!
//! The pure data-movement ops work on every dtype (f32, f64, i32); gather/scatter/dropout
//! follow their shape rules (float data, i32 indices and seeds). Work is split into
//! contiguous chunks of the output, in parallel once the output is big enough (`PAR_MIN`);
//! every output element is written by exactly one chunk, so results never depend on the
//! thread count.

use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float, PAR_MIN};
use crate::error::{Error, Result};
use crate::ops::index::{group_positions, validate_indices};
use crate::ops::layout::{dropout_scale, dropout_seed};
use crate::ops::Op;
use crate::tensor::{DType, Element, Shape};
use crate::util::rng::{hash_threshold, hash_u24};
use rayon::prelude::*;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = outputs[0].dtype;
    if !op.only_moves() {
        return float_dispatch!(op.name(), dtype, float_kernels(op, inputs, outputs));
    }
    match dtype {
        DType::F32 => run::<f32>(op, inputs, outputs),
        DType::F64 => run::<f64>(op, inputs, outputs),
        DType::I32 => run::<i32>(op, inputs, outputs),
        // layout ops copy elements: half-precision values move as they are
        DType::BF16 => run::<half::bf16>(op, inputs, outputs),
        DType::F16 => run::<half::f16>(op, inputs, outputs),
        DType::U8 => run::<u8>(op, inputs, outputs),
    }
}

/// Runs `f(chunk_index, chunk)` over `y` cut into chunks of `chunk` elements (the last one
/// may be shorter), in parallel when `y` is large.
fn chunks_do<T: Element>(y: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if y.is_empty() || chunk == 0 {
        return;
    }
    if y.len() >= PAR_MIN && y.len() > chunk {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        y.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Chunk size for element-wise work: a multiple of `unit` near 4096 elements.
fn chunk_of(unit: usize) -> usize {
    let unit = unit.max(1);
    unit * (4096 / unit).max(1)
}

/// (outer, axis length, inner) of `s` around `axis`.
fn split(s: &Shape, axis: usize) -> (usize, usize, usize) {
    let d = s.dims();
    (
        d[..axis].iter().product(),
        d[axis],
        d[axis + 1..].iter().product(),
    )
}

fn run<T: Element>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let name = op.name();
    let out_shape = outputs[0].shape.clone();
    let y = write::<T>(&mut outputs[0])?;
    match op {
        Op::Reshape(_) => {
            let x = read::<T>(&inputs[0])?;
            chunks_do(y, 1 << 16, |i, c| {
                let o = i << 16;
                c.copy_from_slice(&x[o..o + c.len()])
            });
        }
        Op::Permute(perm) => permute(read::<T>(&inputs[0])?, inputs[0].shape, perm, y),
        Op::Concat { axis } => {
            let (outer, total, inner) = split(&out_shape, *axis);
            let parts = inputs
                .iter()
                .map(|v| Ok((read::<T>(v)?, v.shape.at(*axis) * inner)))
                .collect::<Result<Vec<_>>>()?;
            let block = total * inner;
            if outer == 0 || block == 0 {
                return Ok(());
            }
            // One output block per outer index, or whole groups of blocks when they are small.
            let per = (4096 / block).max(1);
            chunks_do(y, block * per, |ci, c| {
                for (b, yb) in c.chunks_mut(block).enumerate() {
                    let o = ci * per + b;
                    let mut at = 0;
                    for &(x, len) in &parts {
                        yb[at..at + len].copy_from_slice(&x[o * len..(o + 1) * len]);
                        at += len;
                    }
                }
            });
        }
        Op::Slice { axis, start, len } => {
            let x = read::<T>(&inputs[0])?;
            let (outer, d, inner) = split(inputs[0].shape, *axis);
            let (block, off) = (len * inner, start * inner);
            if outer == 0 || block == 0 {
                return Ok(());
            }
            let per = (4096 / block).max(1);
            chunks_do(y, block * per, |ci, c| {
                for (b, yb) in c.chunks_mut(block).enumerate() {
                    let src = (ci * per + b) * d * inner + off;
                    yb.copy_from_slice(&x[src..src + block]);
                }
            });
        }
        Op::SliceBackward { axis, start, full } => {
            let g = read::<T>(&inputs[0])?;
            let (outer, d, inner) = split(full, *axis);
            let len = inputs[0].shape.at(*axis);
            let (block, part, off) = (d * inner, len * inner, start * inner);
            if outer == 0 || block == 0 {
                return Ok(());
            }
            let per = (4096 / block).max(1);
            chunks_do(y, block * per, |ci, c| {
                for (b, yb) in c.chunks_mut(block).enumerate() {
                    let o = ci * per + b;
                    yb[..off].fill(T::default());
                    yb[off..off + part].copy_from_slice(&g[o * part..(o + 1) * part]);
                    yb[off + part..].fill(T::default());
                }
            });
        }
        Op::Gather => {
            let table = read::<T>(&inputs[0])?;
            let idx = read::<i32>(&inputs[1])?;
            let (rows, c) = (inputs[0].shape.at(0), inputs[0].shape.at(1));
            validate_indices(name, idx, rows)?;
            chunks_do(y, chunk_of(c), |ci, chunk| {
                let first = ci * chunk_of(c) / c.max(1);
                for (k, yr) in chunk.chunks_mut(c).enumerate() {
                    let r = idx[first + k] as usize;
                    yr.copy_from_slice(&table[r * c..(r + 1) * c]);
                }
            });
        }
        other => {
            return Err(Error::Unsupported {
                backend: "cpu",
                what: format!("{} in layout kernels", other.name()),
            })
        }
    }
    Ok(())
}

fn float_kernels<T: Float>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let name = op.name();
    let y = write::<T>(&mut outputs[0])?;
    match op {
        Op::ScatterAdd { rows } => {
            let g = read::<T>(&inputs[0])?;
            let idx = read::<i32>(&inputs[1])?;
            let c = inputs[0].shape.at(1);
            validate_indices(name, idx, *rows)?;
            // Positions grouped by row (stable: ascending k within a row), then each output
            // row sums its contributions in that order.
            let (start, order) = group_positions(idx, *rows, |i| Some(i as usize));
            let unit = c.max(1);
            let chunk = chunk_of(unit);
            chunks_do(y, chunk, |ci, part| {
                let first = ci * chunk / unit;
                for (j, yr) in part.chunks_mut(unit).enumerate() {
                    let r = first + j;
                    yr.fill(T::zero());
                    for &k in &order[start[r] as usize..start[r + 1] as usize] {
                        let k = k as usize;
                        for (a, &b) in yr.iter_mut().zip(&g[k * c..(k + 1) * c]) {
                            *a += b;
                        }
                    }
                }
            });
        }
        Op::Dropout { p } | Op::DropoutBackward { p } => {
            let x = read::<T>(&inputs[0])?;
            let seed = dropout_seed(read::<i32>(&inputs[1])?[0]);
            let thr = hash_threshold(*p);
            let scale = T::of(dropout_scale(*p));
            const CH: usize = 4096;
            chunks_do(y, CH, |ci, part| {
                let base = ci * CH;
                for (j, (yv, &xv)) in part.iter_mut().zip(&x[base..]).enumerate() {
                    let keep = hash_u24(seed, (base + j) as u64) >= thr;
                    *yv = if keep { xv * scale } else { T::zero() };
                }
            });
        }
        other => {
            return Err(Error::Unsupported {
                backend: "cpu",
                what: format!("{} in layout kernels", other.name()),
            })
        }
    }
    Ok(())
}

/// `y[o] = x[Σ_i o_i · stride_in(perm[i])]`, walking the output in order with an odometer.
fn permute<T: Element>(x: &[T], in_shape: &Shape, perm: &[usize], y: &mut [T]) {
    let r = perm.len();
    if r == 0 {
        y.copy_from_slice(x);
        return;
    }
    let ind = in_shape.dims();
    let mut in_stride = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_stride[i] = in_stride[i + 1] * ind[i + 1];
    }
    let od: Vec<usize> = perm.iter().map(|&p| ind[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| in_stride[p]).collect();
    let inner = od[r - 1];
    let s = st[r - 1];
    if inner == 0 {
        return;
    }
    let chunk = chunk_of(inner);
    chunks_do(y, chunk, |ci, part| {
        // Multi-index (over the outer r-1 axes) of the chunk's first row.
        let mut row = ci * chunk / inner;
        let mut idx = [0usize; crate::ops::layout::MAX_PERMUTE_RANK];
        for a in (0..r - 1).rev() {
            idx[a] = row % od[a];
            row /= od[a];
        }
        let mut base: usize = (0..r - 1).map(|a| idx[a] * st[a]).sum();
        for yr in part.chunks_mut(inner) {
            if s == 1 {
                yr.copy_from_slice(&x[base..base + inner]);
            } else {
                for (j, v) in yr.iter_mut().enumerate() {
                    *v = x[base + j * s];
                }
            }
            // Advance the odometer over the outer axes.
            for a in (0..r - 1).rev() {
                idx[a] += 1;
                base += st[a];
                if idx[a] < od[a] {
                    break;
                }
                base -= st[a] * od[a];
                idx[a] = 0;
            }
        }
    });
}
