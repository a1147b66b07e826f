//! CPU kernels: LayerNorm, L2-normalise, masked softmax (and their backward ops).
//!
//! Every op works row by row over the last axis, rows in parallel (blocks of rows of about
//! 4096 elements). Row arithmetic is sequential in `T`, so results do not depend on the thread
//! count. The LayerNorm parameter gradients are reduced in fixed blocks of `LN_BLOCK_ROWS`
//! rows: rows in order inside a block, then the block partials in order.

use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float};
use crate::error::{Error, Result};
use crate::ops::Op;
use rayon::prelude::*;

/// Rows per partial sum of `ggamma`/`gbeta` in the LayerNorm backward (fixed, so the
/// reduction order never depends on the number of threads).
pub(crate) const LN_BLOCK_ROWS: usize = 64;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = outputs[0].dtype;
    float_dispatch!(op.name(), dtype, run(op, inputs, outputs))
}

/// Rows per parallel chunk for rows of `c` elements.
fn rows_per_chunk(c: usize) -> usize {
    (4096 / c.max(1)).max(1)
}

fn run<T: Float>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    match op {
        Op::LayerNorm { eps, .. } => {
            let [y, mean, rstd] = outputs else {
                return Err(arity(op));
            };
            let x = read::<T>(&inputs[0])?;
            let (gamma, beta) = (read::<T>(&inputs[1])?, read::<T>(&inputs[2])?);
            let c = inputs[0].shape.last();
            let (y, mean, rstd) = (write::<T>(y)?, write::<T>(mean)?, write::<T>(rstd)?);
            layer_norm(x, gamma, beta, T::of(*eps), c, y, mean, rstd);
        }
        Op::LayerNormBackward { row_stride, .. } => {
            let [gx, gg, gb] = outputs else {
                return Err(arity(op));
            };
            let g = read::<T>(&inputs[0])?;
            let x = read::<T>(&inputs[1])?;
            let gamma = read::<T>(&inputs[2])?;
            let (mean, rstd) = (read::<T>(&inputs[3])?, read::<T>(&inputs[4])?);
            let c = inputs[1].shape.last();
            let (gx, gg, gb) = (write::<T>(gx)?, write::<T>(gg)?, write::<T>(gb)?);
            layer_norm_backward(g, x, gamma, mean, rstd, c, *row_stride, gx, gg, gb);
        }
        Op::L2Normalize { eps } => {
            let [y, norm] = outputs else {
                return Err(arity(op));
            };
            let x = read::<T>(&inputs[0])?;
            let c = inputs[0].shape.last();
            let (y, norm) = (write::<T>(y)?, write::<T>(norm)?);
            l2_normalize(x, T::of(*eps), c, y, norm);
        }
        Op::L2NormalizeBackward { eps } => {
            let g = read::<T>(&inputs[0])?;
            let y = read::<T>(&inputs[1])?;
            let norm = read::<T>(&inputs[2])?;
            let c = inputs[1].shape.last();
            let gx = write::<T>(&mut outputs[0])?;
            l2_normalize_backward(g, y, norm, T::of(*eps), c, gx);
        }
        Op::MaskedSoftmax => {
            let x = read::<T>(&inputs[0])?;
            let keep = read::<T>(&inputs[1])?;
            let d = inputs[0].shape.dims();
            let (groups, l) = (d[1], d[2]);
            let y = write::<T>(&mut outputs[0])?;
            masked_softmax(x, keep, groups, l, y);
        }
        Op::MaskedSoftmaxBackward => {
            let g = read::<T>(&inputs[0])?;
            let y = read::<T>(&inputs[1])?;
            let l = inputs[1].shape.last();
            let gx = write::<T>(&mut outputs[0])?;
            softmax_backward(g, y, l, gx);
        }
        other => {
            return Err(Error::Unsupported {
                backend: "cpu",
                what: format!("{} in norm kernels", other.name()),
            })
        }
    }
    Ok(())
}

fn arity(op: &Op) -> Error {
    Error::graph(format!("{}: wrong number of outputs", op.name()))
}

#[allow(clippy::too_many_arguments)]
fn layer_norm<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: T,
    c: usize,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    if c == 0 {
        return;
    }
    let rpc = rows_per_chunk(c);
    let inv_c = T::one() / T::of(c as f64);
    y.par_chunks_mut(rpc * c)
        .zip(mean.par_chunks_mut(rpc))
        .zip(rstd.par_chunks_mut(rpc))
        .enumerate()
        .for_each(|(ci, ((yc, mc), rc))| {
            let x = &x[ci * rpc * c..];
            let rows = mc.len();
            let mut r = 0;
            while r < rows {
                // Statistics of 8 rows at once where AVX2 can (f32), else of one row.
                let n = if rows - r >= 8
                    && row_sums8(
                        &x[r * c..(r + 8) * c],
                        c,
                        &mut mc[r..r + 8],
                        &mut rc[r..r + 8],
                    ) {
                    8
                } else {
                    let xr = &x[r * c..(r + 1) * c];
                    let mut s = T::zero();
                    for &v in xr {
                        s += v;
                    }
                    let mu = s * inv_c;
                    let mut ss = T::zero();
                    for &v in xr {
                        let d = v - mu;
                        ss += d * d;
                    }
                    (mc[r], rc[r]) = (mu, ss);
                    1
                };
                for k in r..r + n {
                    let (xr, yr) = (&x[k * c..(k + 1) * c], &mut yc[k * c..(k + 1) * c]);
                    let mu = mc[k];
                    let rs = T::one() / (rc[k] * inv_c + eps).sqrt();
                    for j in 0..c {
                        yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
                    }
                    rc[k] = rs;
                }
                r += n;
            }
        });
}

/// For f32 on an AVX2 CPU: the mean and the sum of squared deviations of 8 rows of `c` values
/// into `mu` and `ss`, each row summed in column order (lane k of the vectors is row k, fed by
/// an 8×8 transpose), so every row gets the one-row loop's bits 8 rows at a time, without its
/// chain of dependent additions. `false` (nothing written) otherwise.
fn row_sums8<T: Float>(x: &[T], c: usize, mu: &mut [T], ss: &mut [T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(x), true) = (super::as_f32(x), super::has_avx2()) {
        // SAFETY: the CPU has AVX2 (checked); x holds 8 rows of c values.
        let (m, s) = unsafe { avx2::row_sums8(x, c) };
        for k in 0..8 {
            (mu[k], ss[k]) = (T::of(f64::from(m[k])), T::of(f64::from(s[k])));
        }
        return true;
    }
    let _ = (x, c, mu, ss);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Columns `j0 .. j0 + 8` of the 8 rows: vector `jj` holds column `j0 + jj`, lane k row k.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn columns8(x: &[f32], c: usize, j0: usize) -> [__m256; 8] {
        let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(k * c + j0)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Column `j` of the 8 rows.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn column(x: &[f32], c: usize, j: usize) -> __m256 {
        let v: [f32; 8] = std::array::from_fn(|k| x[k * c + j]);
        _mm256_loadu_ps(v.as_ptr())
    }

    /// Calls `f` on every column of the 8 rows, in order.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn each_column(x: &[f32], c: usize, mut f: impl FnMut(__m256)) {
        let whole = c - c % 8;
        for j0 in (0..whole).step_by(8) {
            for v in columns8(x, c, j0) {
                f(v);
            }
        }
        for j in whole..c {
            f(column(x, c, j));
        }
    }

    /// (mean, Σ (x − mean)²) of each of the 8 rows, summed in column order.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_sums8(x: &[f32], c: usize) -> ([f32; 8], [f32; 8]) {
        let mut s = _mm256_setzero_ps();
        each_column(x, c, |v| s = _mm256_add_ps(s, v));
        let mu = _mm256_mul_ps(s, _mm256_set1_ps(1.0 / c as f32));
        let mut ss = _mm256_setzero_ps();
        each_column(x, c, |v| {
            let d = _mm256_sub_ps(v, mu);
            ss = _mm256_add_ps(ss, _mm256_mul_ps(d, d));
        });
        let (mut m, mut q) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(m.as_mut_ptr(), mu);
        _mm256_storeu_ps(q.as_mut_ptr(), ss);
        (m, q)
    }
}

/// `gx = rstd (ĝ − mean(ĝ) − x̂ mean(ĝ x̂))` with `ĝ = g γ`, `x̂ = (x − μ) rstd`;
/// `ggamma = Σ_rows g x̂`, `gbeta = Σ_rows g` in fixed row blocks.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward<T: Float>(
    g: &[T],
    x: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    c: usize,
    row_stride: usize,
    gx: &mut [T],
    gg: &mut [T],
    gb: &mut [T],
) {
    gg.fill(T::zero());
    gb.fill(T::zero());
    if c == 0 || gx.is_empty() {
        return;
    }
    let inv_c = T::one() / T::of(c as f64);
    // Row r sat at row r·row_stride of the long batch, whose blocks of LN_BLOCK_ROWS rows
    // the partial sums follow (the long batch's other rows have a zero gradient: no terms).
    let rows = gx.len() / c;
    let mut blocks: Vec<(usize, &mut [T])> = Vec::new();
    let (mut rest, mut first) = (&mut gx[..], 0);
    while first < rows {
        let block = first * row_stride / LN_BLOCK_ROWS;
        let end = ((block + 1) * LN_BLOCK_ROWS).div_ceil(row_stride).min(rows);
        let (head, tail) = std::mem::take(&mut rest).split_at_mut((end - first) * c);
        blocks.push((first, head));
        (rest, first) = (tail, end);
    }
    let partials: Vec<Vec<T>> = blocks
        .into_par_iter()
        .map(|(first, gxb)| {
            let mut part = vec![T::zero(); 2 * c];
            let (pg, pb) = part.split_at_mut(c);
            for (r, gxr) in gxb.chunks_mut(c).enumerate() {
                let row = first + r;
                let (xr, gr) = (&x[row * c..(row + 1) * c], &g[row * c..(row + 1) * c]);
                let (mu, rs) = (mean[row], rstd[row]);
                let (mut a, mut b) = (T::zero(), T::zero());
                for j in 0..c {
                    let xh = (xr[j] - mu) * rs;
                    let gh = gr[j] * gamma[j];
                    a += gh;
                    b += gh * xh;
                    pg[j] += gr[j] * xh;
                    pb[j] += gr[j];
                }
                let (a, b) = (a * inv_c, b * inv_c);
                for j in 0..c {
                    let xh = (xr[j] - mu) * rs;
                    gxr[j] = rs * (gr[j] * gamma[j] - a - xh * b);
                }
            }
            part
        })
        .collect();
    for part in &partials {
        for j in 0..c {
            gg[j] += part[j];
            gb[j] += part[c + j];
        }
    }
}

fn l2_normalize<T: Float>(x: &[T], eps: T, c: usize, y: &mut [T], norm: &mut [T]) {
    if c == 0 {
        norm.fill(T::zero());
        return;
    }
    let rpc = rows_per_chunk(c);
    y.par_chunks_mut(rpc * c)
        .zip(norm.par_chunks_mut(rpc))
        .enumerate()
        .for_each(|(ci, (yc, nc))| {
            let x = &x[ci * rpc * c..];
            for (r, yr) in yc.chunks_mut(c).enumerate() {
                let xr = &x[r * c..(r + 1) * c];
                let mut ss = T::zero();
                for &v in xr {
                    ss += v * v;
                }
                let n = ss.sqrt();
                let d = n.max(eps);
                for j in 0..c {
                    yr[j] = xr[j] / d;
                }
                nc[r] = n;
            }
        });
}

/// Unclamped rows (`norm ≥ eps`): `gx = (g − y ⟨g, y⟩) / norm`. Clamped rows (`norm < eps`,
/// where `y = x / eps` is linear in x): `gx = g / eps`.
fn l2_normalize_backward<T: Float>(g: &[T], y: &[T], norm: &[T], eps: T, c: usize, gx: &mut [T]) {
    if c == 0 {
        return;
    }
    let rpc = rows_per_chunk(c);
    gx.par_chunks_mut(rpc * c).enumerate().for_each(|(ci, gc)| {
        for (r, gxr) in gc.chunks_mut(c).enumerate() {
            let row = ci * rpc + r;
            let (gr, yr) = (&g[row * c..(row + 1) * c], &y[row * c..(row + 1) * c]);
            let n = norm[row];
            if n >= eps {
                let mut dot = T::zero();
                for j in 0..c {
                    dot += gr[j] * yr[j];
                }
                for j in 0..c {
                    gxr[j] = (gr[j] - yr[j] * dot) / n;
                }
            } else {
                for j in 0..c {
                    gxr[j] = gr[j] / eps;
                }
            }
        }
    });
}

fn masked_softmax<T: Float>(x: &[T], keep: &[T], groups: usize, l: usize, y: &mut [T]) {
    if l == 0 {
        return;
    }
    let rpc = rows_per_chunk(l);
    y.par_chunks_mut(rpc * l).enumerate().for_each(|(ci, yc)| {
        for (r, yr) in yc.chunks_mut(l).enumerate() {
            let row = ci * rpc + r;
            let b = row / groups.max(1);
            let (xr, kr) = (&x[row * l..(row + 1) * l], &keep[b * l..(b + 1) * l]);
            let mut m = T::neg_infinity();
            let mut any = false;
            for j in 0..l {
                if kr[j] != T::zero() {
                    any = true;
                    m = m.max(xr[j]);
                }
            }
            if !any {
                yr.fill(T::zero());
                continue;
            }
            let mut s = T::zero();
            for j in 0..l {
                yr[j] = if kr[j] != T::zero() {
                    let e = (xr[j] - m).exp();
                    s += e;
                    e
                } else {
                    T::zero()
                };
            }
            for v in yr.iter_mut() {
                *v = *v / s;
            }
        }
    });
}

/// `gx = y ⊙ (g − ⟨g, y⟩)` per row (masked keys have y = 0, hence gx = 0).
fn softmax_backward<T: Float>(g: &[T], y: &[T], l: usize, gx: &mut [T]) {
    if l == 0 {
        return;
    }
    let rpc = rows_per_chunk(l);
    gx.par_chunks_mut(rpc * l).enumerate().for_each(|(ci, gc)| {
        for (r, gxr) in gc.chunks_mut(l).enumerate() {
            let row = ci * rpc + r;
            let (gr, yr) = (&g[row * l..(row + 1) * l], &y[row * l..(row + 1) * l]);
            let mut dot = T::zero();
            for j in 0..l {
                dot += gr[j] * yr[j];
            }
            for j in 0..l {
                gxr[j] = yr[j] * (gr[j] - dot);
            }
        }
    });
}
