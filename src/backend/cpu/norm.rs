//! CPU kernels: LayerNorm, L2-normalise, masked softmax (and their backward ops).
//!
//! Every op works row by row over the last axis, rows in parallel (blocks of rows of about
//! 4096 elements). Row arithmetic is sequential in `T`, so results do not depend on the thread
//! count. The LayerNorm parameter gradients are reduced in fixed blocks of `LN_BLOCK_ROWS`
//! rows: rows in order inside a block, then the block partials in order.

use super::{float_dispatch, read, storage_dispatch, write, CpuView, CpuViewMut, Float, Stored};
use crate::error::{Error, Result};
use crate::ops::Op;
use rayon::prelude::*;

/// Rows per partial sum of `ggamma`/`gbeta` in the LayerNorm backward (fixed, so the
/// reduction order never depends on the number of threads).
pub(crate) const LN_BLOCK_ROWS: usize = 64;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = outputs[0].dtype;
    if let Op::LayerNormBackward { row_stride, .. } = op {
        return storage_dispatch!(
            op.name(),
            dtype,
            layer_norm_backward_views(*row_stride, inputs, outputs)
        );
    }
    float_dispatch!(op.name(), dtype, run(op, inputs, outputs))
}

/// The LayerNorm backward on `S` storage (half precision converted row by row in its loops:
/// it is bandwidth-bound), the statistics in `T`.
fn layer_norm_backward_views<T: Float, S: Stored<T>>(
    row_stride: usize,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    let [gx, gg, gb] = outputs else {
        return Err(Error::graph("layer_norm_backward: expects 3 outputs"));
    };
    let [g, x, gamma, mean, rstd] = inputs else {
        return Err(Error::graph("layer_norm_backward: expects 5 inputs"));
    };
    let c = x.shape.last();
    let (g, x, gamma) = (read::<S>(g)?, read::<S>(x)?, read::<S>(gamma)?);
    let (mean, rstd) = (read::<T>(mean)?, read::<T>(rstd)?);
    let (gx, gg, gb) = (write::<S>(gx)?, write::<S>(gg)?, write::<S>(gb)?);
    layer_norm_backward(g, x, gamma, mean, rstd, c, row_stride, gx, gg, gb);
    Ok(())
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
    let norm = Norm { gamma, beta, eps };
    y.par_chunks_mut(rpc * c)
        .zip(mean.par_chunks_mut(rpc))
        .zip(rstd.par_chunks_mut(rpc))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (ci, ((yc, mc), rc))| {
            let x = &x[ci * rpc * c..];
            let rows = mc.len();
            let mut r = 0;
            while r < rows {
                // 8 rows at once where AVX2 can (f32), else one row.
                if rows - r >= 8 {
                    let (band, elems) = (r..r + 8, r * c..(r + 8) * c);
                    let (mc8, rc8) = (&mut mc[band.clone()], &mut rc[band]);
                    if norm.rows8(&x[elems.clone()], &mut yc[elems], mc8, rc8, scratch) {
                        r += 8;
                        continue;
                    }
                }
                let (xr, yr) = (&x[r * c..(r + 1) * c], &mut yc[r * c..(r + 1) * c]);
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
                let rs = T::one() / (ss * inv_c + eps).sqrt();
                for j in 0..c {
                    yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
                }
                (mc[r], rc[r]) = (mu, rs);
                r += 1;
            }
        });
}

/// LayerNorm's affine parameters and epsilon.
struct Norm<'a, T> {
    gamma: &'a [T],
    beta: &'a [T],
    eps: T,
}

impl<T: Float> Norm<'_, T> {
    /// For f32 on an AVX2 CPU: LayerNorm of 8 rows of `c` values at once, with the one-row
    /// loop's bits: each row's mean and sum of squared deviations summed in column order (lane
    /// k of the vectors is row k, fed by an 8×8 transpose done once into `scratch`), then the
    /// same per-element operations 8 columns at a time. `false` (nothing written) otherwise.
    fn rows8(
        &self,
        x: &[T],
        y: &mut [T],
        mu: &mut [T],
        rstd: &mut [T],
        scratch: &mut Vec<f32>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(x), Some(y), Some(gamma), Some(beta), Some(eps), true) = (
            super::as_f32(x),
            super::as_f32_mut(y),
            super::as_f32(self.gamma),
            super::as_f32(self.beta),
            self.eps.to_f32(),
            super::has_avx2(),
        ) {
            // SAFETY: the CPU has AVX2 (checked); x and y hold 8 rows of gamma.len() values.
            let (m, r) = unsafe { avx2::layer_norm8(x, y, gamma, beta, eps, scratch) };
            for k in 0..8 {
                (mu[k], rstd[k]) = (T::of(f64::from(m[k])), T::of(f64::from(r[k])));
            }
            return true;
        }
        let _ = (x, y, mu, rstd, scratch);
        false
    }
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

    /// LayerNorm of 8 rows (`c = gamma.len()` values each) into `y`; returns each row's
    /// (mean, rstd). The statistics are summed in column order, the transposed rows kept in
    /// `scratch` between the two passes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn layer_norm8(
        x: &[f32],
        y: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        scratch: &mut Vec<f32>,
    ) -> ([f32; 8], [f32; 8]) {
        let c = gamma.len();
        assert!(x.len() >= 8 * c && y.len() >= 8 * c && beta.len() >= c);
        scratch.resize(8 * c, 0.0);
        let (mut s, mut j) = (_mm256_setzero_ps(), 0);
        each_column(x, c, |v| {
            s = _mm256_add_ps(s, v);
            _mm256_storeu_ps(scratch.as_mut_ptr().add(8 * j), v);
            j += 1;
        });
        let inv_c = _mm256_set1_ps(1.0 / c as f32);
        let mu = _mm256_mul_ps(s, inv_c);
        let mut ss = _mm256_setzero_ps();
        for v in scratch.chunks_exact(8) {
            let d = _mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), mu);
            ss = _mm256_add_ps(ss, _mm256_mul_ps(d, d));
        }
        let var = _mm256_add_ps(_mm256_mul_ps(ss, inv_c), _mm256_set1_ps(eps));
        let rs = _mm256_div_ps(_mm256_set1_ps(1.0), _mm256_sqrt_ps(var));
        let (mut m, mut r) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(m.as_mut_ptr(), mu);
        _mm256_storeu_ps(r.as_mut_ptr(), rs);
        let whole = c - c % 8;
        for k in 0..8 {
            let (xr, yr) = (&x[k * c..(k + 1) * c], &mut y[k * c..(k + 1) * c]);
            let (muv, rsv) = (_mm256_set1_ps(m[k]), _mm256_set1_ps(r[k]));
            for j in (0..whole).step_by(8) {
                let v = _mm256_loadu_ps(xr.as_ptr().add(j));
                let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(v, muv), rsv), g8(gamma, j));
                _mm256_storeu_ps(yr.as_mut_ptr().add(j), _mm256_add_ps(v, g8(beta, j)));
            }
            for j in whole..c {
                yr[j] = (xr[j] - m[k]) * r[k] * gamma[j] + beta[j];
            }
        }
        (m, r)
    }

    /// `p[j .. j + 8]`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn g8(p: &[f32], j: usize) -> __m256 {
        _mm256_loadu_ps(p.as_ptr().add(j))
    }
}

/// `gx = rstd (ĝ − mean(ĝ) − x̂ mean(ĝ x̂))` with `ĝ = g γ`, `x̂ = (x − μ) rstd`;
/// `ggamma = Σ_rows g x̂`, `gbeta = Σ_rows g` in fixed row blocks. Rows of `S` storage are
/// widened into the task's buffers as they are read and rounded once as they are written.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward<T: Float, S: Stored<T>>(
    g: &[S],
    x: &[S],
    gamma: &[S],
    mean: &[T],
    rstd: &[T],
    c: usize,
    row_stride: usize,
    gx: &mut [S],
    gg: &mut [S],
    gb: &mut [S],
) {
    let (mut sum_g, mut sum_b) = (vec![T::zero(); gg.len()], vec![T::zero(); gb.len()]);
    if c > 0 && !gx.is_empty() {
        let mut gamma_buf = vec![T::zero(); c];
        let gamma = S::widen(gamma, &mut gamma_buf);
        let inv_c = T::one() / T::of(c as f64);
        // Row r sat at row r·row_stride of the long batch, whose blocks of LN_BLOCK_ROWS rows
        // the partial sums follow (the long batch's other rows have a zero gradient: no terms).
        let rows = gx.len() / c;
        let mut blocks: Vec<(usize, &mut [S])> = Vec::new();
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
                // this row's g, x and gx in T (unused when S is T)
                let mut row_bufs = vec![T::zero(); 3 * c];
                let (pg, pb) = part.split_at_mut(c);
                for (r, gxr) in gxb.chunks_mut(c).enumerate() {
                    let row = first + r;
                    let (g_buf, rest) = row_bufs.split_at_mut(c);
                    let (x_buf, gx_buf) = rest.split_at_mut(c);
                    let xr = S::widen(&x[row * c..(row + 1) * c], x_buf);
                    let gr = S::widen(&g[row * c..(row + 1) * c], g_buf);
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
                    let write = |out: &mut [T]| {
                        for j in 0..c {
                            let xh = (xr[j] - mu) * rs;
                            out[j] = rs * (gr[j] * gamma[j] - a - xh * b);
                        }
                    };
                    match S::compute_mut(gxr) {
                        Some(out) => write(out),
                        None => {
                            write(gx_buf);
                            S::narrow(gx_buf, gxr);
                        }
                    }
                }
                part
            })
            .collect();
        for part in &partials {
            for j in 0..c {
                sum_g[j] += part[j];
                sum_b[j] += part[c + j];
            }
        }
    }
    S::narrow(&sum_g, gg);
    S::narrow(&sum_b, gb);
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
