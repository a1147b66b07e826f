//! CPU kernels: InfoNCE (DESIGN §3.4).
//!
//! Two paths with the same contract:
//! - `chunk == 0`, the dense reference: materialises the `B × B` logits (simplest code).
//! - `chunk > 0`: `chunk × chunk` tiles of `s a pᵀ` (one `gemm` per tile into a scratch
//!   tile), never a `B × B` buffer. Memory is O(B·D + groups·B + workers·chunk²).
//!
//! Forward: row tiles are split into at most `MAX_GROUPS` contiguous groups (a partition that
//! depends only on B and the chunk, never on the thread count); each group walks its row tiles
//! and, per row tile, the column tiles in order, keeping an online (max, sum) per row and, for
//! the symmetric loss, per column. The per-group column statistics are merged in group order.
//! Backward: the tiles are recomputed twice, once per row tile (→ `ga` and the `logit_scale`
//! gradient) and once per column tile (→ `gp`), so every output row is owned by one task and
//! every sum has a fixed order: results do not depend on the number of threads.

use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float};
use crate::error::{Error, Result};
use crate::ops::infonce::InfoNceBackwardArgs;
use crate::ops::{InfoNceAttrs, Op};
use rayon::prelude::*;
use std::ops::Range;

/// Upper bound on the forward's row-tile groups (each holds two `[B]` column statistics).
const MAX_GROUPS: usize = 32;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    match op {
        Op::InfoNce(at) => {
            let dt = dtype_of(op, inputs, 0)?;
            float_dispatch!(op.name(), dt, forward(*at, inputs, outputs))
        }
        Op::InfoNceBackward(at) => {
            let dt = dtype_of(op, inputs, 1)?;
            float_dispatch!(op.name(), dt, backward(*at, inputs, outputs))
        }
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in infonce kernels", other.name()),
        }),
    }
}

fn dtype_of(op: &Op, inputs: &[CpuView], i: usize) -> Result<crate::tensor::DType> {
    inputs
        .get(i)
        .map(|v| v.dtype)
        .ok_or_else(|| Error::shape(op.name(), format!("missing input {i}")))
}

/// `s = min(exp(logit_scale), 100)` and whether the clamp is active (→ zero gradient).
fn scale<T: Float>(ls: T) -> (T, bool) {
    let e = ls.exp();
    let cap = T::of(100.0);
    if e > cap {
        (cap, true)
    } else {
        (e, false)
    }
}

/// Validated geometry of one call.
struct Dims {
    b: usize,
    d: usize,
}

fn dims(op: &'static str, a: &CpuView, p: &CpuView) -> Result<Dims> {
    let sa = a.shape.dims();
    if sa.len() != 2 || p.shape.dims() != sa || sa[0] == 0 {
        return Err(Error::shape(
            op,
            format!(
                "a and p must both be [B, D] with B ≥ 1, got {:?} and {:?}",
                a.shape, p.shape
            ),
        ));
    }
    Ok(Dims { b: sa[0], d: sa[1] })
}

fn expect_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::shape(
            op,
            format!("{what} has {len} elements, expected {want}"),
        ));
    }
    Ok(())
}

/// The exponential used in the tile loops: for f32 a branch-free polynomial (Cephes `expf`,
/// about 1 ulp) that the compiler vectorises; for f64 the library `exp`. NaN propagates,
/// underflow gives 0.
pub(crate) trait TileExp: Float {
    fn texp(self) -> Self;
}

impl TileExp for f64 {
    #[inline(always)]
    fn texp(self) -> f64 {
        self.exp()
    }
}

impl TileExp for f32 {
    #[inline(always)]
    fn texp(self) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
        let x = self;
        let xc = x.clamp(-87.0, 88.0);
        let t = xc * LOG2E + MAGIC;
        let n = t - MAGIC;
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let r = xc - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_2e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        let scale = f32::from_bits(((ni + 127) as u32) << 23);
        let e = y * scale;
        if x < -87.0 {
            0.0
        } else if x > 88.0 {
            f32::INFINITY
        } else if x.is_nan() {
            x
        } else {
            e
        }
    }
}

/// Σ exp(x − m) with 8 independent lanes (vectorisable, fixed order).
#[inline]
fn sum_exp<T: TileExp>(row: &[T], m: T) -> T {
    let mut acc = [T::zero(); 8];
    let mut chunks = row.chunks_exact(8);
    for ch in &mut chunks {
        for k in 0..8 {
            acc[k] += (ch[k] - m).texp();
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        acc[k] += (x - m).texp();
    }
    reduce8(acc)
}

// ---- forward ----------------------------------------------------------------------------

fn forward<T: TileExp>(
    at: InfoNceAttrs,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "infonce";
    if inputs.len() != 3 {
        return Err(Error::shape(
            OP,
            format!("expects 3 inputs, got {}", inputs.len()),
        ));
    }
    let Dims { b, d } = dims(OP, &inputs[0], &inputs[1])?;
    let (a, p) = (read::<T>(&inputs[0])?, read::<T>(&inputs[1])?);
    let ls = read::<T>(&inputs[2])?;
    expect_len(OP, "logit_scale", ls.len(), 1)?;
    let (s, _) = scale(ls[0]);
    let [loss, lse_row, lse_col] = outputs else {
        return Err(Error::shape(OP, "expects 3 outputs"));
    };
    let loss = write::<T>(loss)?;
    let lse_row = write::<T>(lse_row)?;
    let lse_col = write::<T>(lse_col)?;
    expect_len(OP, "loss", loss.len(), 1)?;
    expect_len(OP, "lse_row", lse_row.len(), b)?;
    expect_len(OP, "lse_col", lse_col.len(), at.lse_col_len(b))?;
    let sym = at.symmetric;

    let mut diag = vec![T::zero(); b];
    if at.chunk == 0 {
        dense_forward(a, p, b, d, s, sym, lse_row, lse_col, &mut diag);
    } else {
        chunked_forward(a, p, b, d, s, at.chunk, sym, lse_row, lse_col, &mut diag);
    }

    // The two means are accumulated in f64 (B terms, in row order).
    let mean_gap = |lse: &[T]| {
        let mut acc = 0.0f64;
        for (&l, &g) in lse.iter().zip(&diag) {
            acc += (l - g).to_f64().unwrap_or(f64::NAN);
        }
        acc / b as f64
    };
    let row_term = mean_gap(lse_row);
    loss[0] = T::of(if sym {
        0.5 * (row_term + mean_gap(lse_col))
    } else {
        row_term
    });
    Ok(())
}

/// Dense reference: the whole logits matrix, then max-subtracted LSE over rows and columns.
#[allow(clippy::too_many_arguments)]
fn dense_forward<T: Float>(
    a: &[T],
    p: &[T],
    b: usize,
    d: usize,
    s: T,
    sym: bool,
    lse_row: &mut [T],
    lse_col: &mut [T],
    diag: &mut [T],
) {
    let mut l = vec![T::zero(); b * b];
    logits_tile(a, p, d, 0..b, 0..b, s, &mut l, true);
    for i in 0..b {
        let row = &l[i * b..(i + 1) * b];
        let m = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let sum: T = row.iter().map(|&x| (x - m).exp()).sum();
        lse_row[i] = m + sum.ln();
        diag[i] = row[i];
    }
    if sym {
        for j in 0..b {
            let m = (0..b).fold(T::neg_infinity(), |m, i| m.max(l[i * b + j]));
            let sum: T = (0..b).map(|i| (l[i * b + j] - m).exp()).sum();
            lse_col[j] = m + sum.ln();
        }
    }
}

/// Per-group results of the chunked forward.
struct Group<T> {
    /// Rows `rows.start..rows.end` of lse_row and of the diagonal.
    rows: Range<usize>,
    lse_row: Vec<T>,
    diag: Vec<T>,
    /// Online column statistics over this group's rows (empty when one-directional).
    col_m: Vec<T>,
    col_l: Vec<T>,
}

#[allow(clippy::too_many_arguments)]
fn chunked_forward<T: TileExp>(
    a: &[T],
    p: &[T],
    b: usize,
    d: usize,
    s: T,
    chunk: usize,
    sym: bool,
    lse_row: &mut [T],
    lse_col: &mut [T],
    diag: &mut [T],
) {
    let c = chunk.min(b);
    let nt = b.div_ceil(c);
    let groups = nt.min(MAX_GROUPS);
    let tile_rows = |t: usize| t * c..((t + 1) * c).min(b);
    let results: Vec<Group<T>> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let (t0, t1) = (gi * nt / groups, (gi + 1) * nt / groups);
            let rows = t0 * c..(t1 * c).min(b);
            let mut g = Group {
                lse_row: vec![T::zero(); rows.len()],
                diag: vec![T::zero(); rows.len()],
                col_m: vec![T::neg_infinity(); if sym { b } else { 0 }],
                col_l: vec![T::zero(); if sym { b } else { 0 }],
                rows,
            };
            let mut tile = vec![T::zero(); c * c];
            let mut rm = vec![T::zero(); c];
            let mut rl = vec![T::zero(); c];
            let mut cm = vec![T::zero(); c];
            for t in t0..t1 {
                let r = tile_rows(t);
                let m = r.len();
                let off = r.start - g.rows.start;
                rm[..m].fill(T::neg_infinity());
                rl[..m].fill(T::zero());
                for u in 0..nt {
                    let cols = tile_rows(u);
                    let n = cols.len();
                    logits_tile(a, p, d, r.clone(), cols.clone(), s, &mut tile, false);
                    let tl = &tile[..m * n];
                    for i in 0..m {
                        let row = &tl[i * n..(i + 1) * n];
                        let mx = row.iter().fold(T::neg_infinity(), |m, &x| max(m, x));
                        let sum = sum_exp(row, mx);
                        merge(&mut rm[i], &mut rl[i], mx, sum);
                    }
                    if u == t {
                        for i in 0..m {
                            g.diag[off + i] = tl[i * n + i];
                        }
                    }
                    if sym {
                        let (m_c, l_c) = (&mut g.col_m[cols.clone()], &mut g.col_l[cols]);
                        column_update(tl, m, n, m_c, l_c, &mut cm[..n]);
                    }
                }
                for i in 0..m {
                    g.lse_row[off + i] = rm[i] + rl[i].ln();
                }
            }
            g
        })
        .collect();

    for g in &results {
        lse_row[g.rows.clone()].copy_from_slice(&g.lse_row);
        diag[g.rows.clone()].copy_from_slice(&g.diag);
    }
    if sym {
        const CHUNK: usize = 2048;
        lse_col
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(k, out)| {
                for (jj, o) in out.iter_mut().enumerate() {
                    let j = k * CHUNK + jj;
                    let m = results
                        .iter()
                        .fold(T::neg_infinity(), |m, g| max(m, g.col_m[j]));
                    let mut l = T::zero();
                    for g in &results {
                        l += g.col_l[j] * (g.col_m[j] - m).exp();
                    }
                    *o = m + l.ln();
                }
            });
    }
}

/// `max` that ignores a NaN candidate (the NaN still reaches the sum of exponentials).
#[inline]
fn max<T: Float>(m: T, x: T) -> T {
    if x > m {
        x
    } else {
        m
    }
}

/// Merges a partial (max `tm`, Σ exp(x − tm) = `ts`) into the running (`m`, `l`).
#[inline]
fn merge<T: Float>(m: &mut T, l: &mut T, tm: T, ts: T) {
    if tm > *m {
        *l = *l * (*m - tm).exp() + ts;
        *m = tm;
    } else {
        *l += ts * (tm - *m).exp();
    }
}

/// Folds the rows of an `m × n` tile into running per-column (max, sum) statistics.
fn column_update<T: TileExp>(
    tl: &[T],
    m: usize,
    n: usize,
    cm: &mut [T],
    cl: &mut [T],
    new_m: &mut [T],
) {
    new_m.copy_from_slice(cm);
    for i in 0..m {
        for (nm, &x) in new_m.iter_mut().zip(&tl[i * n..(i + 1) * n]) {
            *nm = max(*nm, x);
        }
    }
    for j in 0..n {
        cl[j] *= (cm[j] - new_m[j]).exp();
    }
    for i in 0..m {
        for ((l, &nm), &x) in cl.iter_mut().zip(new_m.iter()).zip(&tl[i * n..(i + 1) * n]) {
            *l += (x - nm).texp();
        }
    }
    cm.copy_from_slice(new_m);
}

/// `out[|rows| × |cols|] = s · x[rows] · y[cols]ᵀ` (x, y row-major with `d` columns).
#[allow(clippy::too_many_arguments)]
fn logits_tile<T: Float>(
    x: &[T],
    y: &[T],
    d: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    s: T,
    out: &mut [T],
    parallel: bool,
) {
    let (m, n) = (rows.len(), cols.len());
    let out = &mut out[..m * n];
    if d == 0 || m == 0 || n == 0 {
        out.fill(T::zero());
        return;
    }
    let lhs = &x[rows.start * d..rows.end * d];
    let rhs = &y[cols.start * d..cols.end * d];
    // SAFETY: lhs is m×d row-major (col stride 1, row stride d); rhs = y[cols]ᵀ is d×n with
    // element (k, j) at j·d + k; out is m×n row-major. All three slices hold exactly these.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            d as isize,
            rhs.as_ptr(),
            d as isize,
            1,
            T::zero(),
            s,
            false,
            false,
            false,
            par(parallel, m * n * d),
        );
    }
}

/// `dst[m × d] (+)= s · g[m × k] · y[y0 .. y0 + k]` (accumulates unless `first`).
#[allow(clippy::too_many_arguments)]
fn accumulate_product<T: Float>(
    dst: &mut [T],
    g: &[T],
    m: usize,
    k: usize,
    y: &[T],
    y0: usize,
    d: usize,
    s: T,
    first: bool,
    parallel: bool,
) {
    if m == 0 || d == 0 {
        return;
    }
    if k == 0 {
        if first {
            dst[..m * d].fill(T::zero());
        }
        return;
    }
    let dst = &mut dst[..m * d];
    let g = &g[..m * k];
    let rhs = &y[y0 * d..(y0 + k) * d];
    // SAFETY: dst is m×d, g is m×k, rhs is k×d, all row-major and exactly that long.
    unsafe {
        gemm::gemm(
            m,
            d,
            k,
            dst.as_mut_ptr(),
            1,
            d as isize,
            !first,
            g.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            d as isize,
            T::one(),
            s,
            false,
            false,
            false,
            par(parallel, m * k * d),
        );
    }
}

fn par(parallel: bool, work: usize) -> gemm::Parallelism {
    if parallel && work >= 1 << 15 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

// ---- backward ---------------------------------------------------------------------------

/// Per-row / per-column coefficients of `gLogit = u_i P_ij + v_j Q_ij − δ_ij (w_r + w_c)`,
/// `P = exp(logits − lse_row)`, `Q = exp(logits − lse_col)`, `u = w_r + g_lse_row`,
/// `v = w_c + g_lse_col`, `w_r = w_c = g_loss / 2B` (one-directional: `w_r = g_loss / B`, no Q).
struct Coef<'a, T> {
    lse_row: &'a [T],
    lse_col: &'a [T],
    u: Vec<T>,
    v: Vec<T>,
    diag: T,
}

fn backward<T: TileExp>(
    at: InfoNceAttrs,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "infonce_backward";
    let x = InfoNceBackwardArgs::of(OP, inputs)?;
    let Dims { b, d } = dims(OP, x.a, x.p)?;
    let g_loss = read::<T>(x.g_loss)?;
    let (a, p) = (read::<T>(x.a)?, read::<T>(x.p)?);
    let ls = read::<T>(x.logit_scale)?;
    let lse_row = read::<T>(x.lse_row)?;
    let lse_col = read::<T>(x.lse_col)?;
    let sym = at.symmetric;
    let col_len = at.lse_col_len(b);
    expect_len(OP, "g_loss", g_loss.len(), 1)?;
    expect_len(OP, "logit_scale", ls.len(), 1)?;
    expect_len(OP, "lse_row", lse_row.len(), b)?;
    expect_len(OP, "lse_col", lse_col.len(), col_len)?;
    let (g_row, g_col) = if let Some((gr, gc)) = x.g_lse {
        let (gr, gc) = (read::<T>(gr)?, read::<T>(gc)?);
        expect_len(OP, "g_lse_row", gr.len(), b)?;
        expect_len(OP, "g_lse_col", gc.len(), col_len)?;
        (Some(gr), Some(gc))
    } else {
        (None, None)
    };
    let [ga, gp, gls] = outputs else {
        return Err(Error::shape(OP, "expects 3 outputs"));
    };
    let ga = write::<T>(ga)?;
    let gp = write::<T>(gp)?;
    let gls = write::<T>(gls)?;
    expect_len(OP, "ga", ga.len(), b * d)?;
    expect_len(OP, "gp", gp.len(), b * d)?;
    expect_len(OP, "g_logit_scale", gls.len(), 1)?;

    let (s, clamped) = scale(ls[0]);
    let bf = T::of(b as f64);
    let (wr, wc) = if sym {
        let w = g_loss[0] / (bf + bf);
        (w, w)
    } else {
        (g_loss[0] / bf, T::zero())
    };
    let coef = Coef {
        lse_row,
        lse_col,
        u: (0..b)
            .map(|i| wr + g_row.map_or(T::zero(), |g| g[i]))
            .collect(),
        v: (0..col_len)
            .map(|j| wc + g_col.map_or(T::zero(), |g| g[j]))
            .collect(),
        diag: wr + wc,
    };
    let total = if at.chunk == 0 {
        dense_backward(a, p, b, d, s, sym, &coef, ga, gp)
    } else {
        chunked_backward(a, p, b, d, s, at.chunk, sym, &coef, ga, gp)
    };
    // d logits / d logit_scale = logits while exp(logit_scale) ≤ 100; the clamp stops it.
    gls[0] = if clamped { T::zero() } else { total };
    Ok(())
}

/// Dense reference backward; returns Σ gLogit ⊙ logits.
#[allow(clippy::too_many_arguments)]
fn dense_backward<T: Float>(
    a: &[T],
    p: &[T],
    b: usize,
    d: usize,
    s: T,
    sym: bool,
    k: &Coef<T>,
    ga: &mut [T],
    gp: &mut [T],
) -> T {
    let mut g = vec![T::zero(); b * b];
    logits_tile(a, p, d, 0..b, 0..b, s, &mut g, true);
    let mut total = T::zero();
    for i in 0..b {
        for j in 0..b {
            let l = g[i * b + j];
            let mut gv = k.u[i] * (l - k.lse_row[i]).exp();
            if sym {
                gv += k.v[j] * (l - k.lse_col[j]).exp();
            }
            if i == j {
                gv = gv - k.diag;
            }
            total += gv * l;
            g[i * b + j] = gv;
        }
    }
    if d > 0 {
        // ga = s G p ; gp = s Gᵀ a (Gᵀ through strides).
        accumulate_product(ga, &g, b, b, p, 0, d, s, true, true);
        // SAFETY: gp is b×d, Gᵀ is g read with column stride b and row stride 1, a is b×d.
        unsafe {
            gemm::gemm(
                b,
                d,
                b,
                gp.as_mut_ptr(),
                1,
                d as isize,
                false,
                g.as_ptr(),
                b as isize,
                1,
                a.as_ptr(),
                1,
                d as isize,
                T::zero(),
                s,
                false,
                false,
                false,
                par(true, b * b * d),
            );
        }
    }
    total
}

/// Chunked backward: pass 1 over row tiles (ga, Σ gLogit ⊙ logits), pass 2 over column
/// tiles (gp). Returns Σ gLogit ⊙ logits summed in row-tile order.
#[allow(clippy::too_many_arguments)]
fn chunked_backward<T: TileExp>(
    a: &[T],
    p: &[T],
    b: usize,
    d: usize,
    s: T,
    chunk: usize,
    sym: bool,
    k: &Coef<T>,
    ga: &mut [T],
    gp: &mut [T],
) -> T {
    let c = chunk.min(b);
    let nt = b.div_ceil(c);
    let tile_rows = |t: usize| t * c..((t + 1) * c).min(b);
    let row_side = Side {
        lse: k.lse_row,
        w: &k.u,
    };
    let col_side = sym.then_some(Side {
        lse: k.lse_col,
        w: &k.v,
    });

    // Pass 1: tile (rows of a) × (rows of p) → ga rows and the logit_scale partials.
    let partials: Vec<T> = (0..nt)
        .into_par_iter()
        .zip(par_rows(ga, c * d.max(1), nt))
        .map(|(t, ga_rows)| {
            let r = tile_rows(t);
            let m = r.len();
            let mut tile = vec![T::zero(); c * c];
            let mut acc = T::zero();
            for u in 0..nt {
                let cols = tile_rows(u);
                let n = cols.len();
                logits_tile(a, p, d, r.clone(), cols.clone(), s, &mut tile, false);
                acc += grad_tile(
                    &mut tile[..m * n],
                    m,
                    n,
                    r.start,
                    cols.start,
                    Some(row_side),
                    col_side,
                    (u == t).then_some(k.diag),
                );
                accumulate_product(ga_rows, &tile, m, n, p, cols.start, d, s, u == 0, false);
            }
            acc
        })
        .collect();

    // Pass 2: tile (rows of p) × (rows of a), i.e. the transposed logits → gp rows.
    (0..nt)
        .into_par_iter()
        .zip(par_rows(gp, c * d.max(1), nt))
        .for_each(|(u, gp_rows)| {
            let cols = tile_rows(u);
            let n = cols.len();
            let mut tile = vec![T::zero(); c * c];
            for t in 0..nt {
                let r = tile_rows(t);
                let m = r.len();
                logits_tile(p, a, d, cols.clone(), r.clone(), s, &mut tile, false);
                grad_tile(
                    &mut tile[..n * m],
                    n,
                    m,
                    cols.start,
                    r.start,
                    col_side,
                    Some(row_side),
                    (u == t).then_some(k.diag),
                );
                accumulate_product(gp_rows, &tile, n, m, a, r.start, d, s, t == 0, false);
            }
        });

    let mut total = 0.0f64;
    for x in partials {
        total += x.to_f64().unwrap_or(f64::NAN);
    }
    T::of(total)
}

/// `nt` mutable row blocks of `len` elements (the last one shorter; empty ones when d = 0).
fn par_rows<T: Send>(x: &mut [T], len: usize, nt: usize) -> rayon::vec::IntoIter<&mut [T]> {
    let mut blocks: Vec<&mut [T]> = x.chunks_mut(len).collect();
    blocks.resize_with(nt, Default::default);
    blocks.into_par_iter()
}

/// The log-sum-exp and weight of the index that runs along one axis of a tile.
#[derive(Clone, Copy)]
struct Side<'a, T> {
    lse: &'a [T],
    w: &'a [T],
}

/// Turns an `m × n` tile of logits (tile rows start at global index `r0` of the row side,
/// columns at `c0` of the column side) into gLogit in place; returns Σ gLogit ⊙ logits.
/// `diag`: the tile sits on the diagonal and `diag` is subtracted at (i, i).
#[allow(clippy::too_many_arguments)]
fn grad_tile<T: TileExp>(
    tile: &mut [T],
    m: usize,
    n: usize,
    r0: usize,
    c0: usize,
    rows: Option<Side<T>>,
    cols: Option<Side<T>>,
    diag: Option<T>,
) -> T {
    let mut total = T::zero();
    for i in 0..m {
        let row = &mut tile[i * n..(i + 1) * n];
        let l_ii = diag.map(|_| row[i]);
        let mut acc = match (rows, cols) {
            (Some(rs), Some(cs)) => {
                let (lr, wr) = (rs.lse[r0 + i], rs.w[r0 + i]);
                let (lc, wc) = (&cs.lse[c0..c0 + n], &cs.w[c0..c0 + n]);
                lanes2(row, lc, wc, |l, lcj, wcj| {
                    wr * (l - lr).texp() + wcj * (l - lcj).texp()
                })
            }
            (Some(rs), None) => {
                let (lr, wr) = (rs.lse[r0 + i], rs.w[r0 + i]);
                lanes(row, |l| wr * (l - lr).texp())
            }
            (None, Some(cs)) => {
                let (lc, wc) = (&cs.lse[c0..c0 + n], &cs.w[c0..c0 + n]);
                lanes2(row, lc, wc, |l, lcj, wcj| wcj * (l - lcj).texp())
            }
            (None, None) => {
                row.fill(T::zero());
                T::zero()
            }
        };
        if let (Some(dg), Some(l)) = (diag, l_ii) {
            row[i] = row[i] - dg;
            acc = acc - dg * l;
        }
        total += acc;
    }
    total
}

/// Replaces each `row[j]` (a logit `l`) by `f(l)` and returns Σ f(l) · l, summed in 8 lanes
/// (vectorisable, fixed order).
#[inline(always)]
fn lanes<T: Float>(row: &mut [T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let mut chunks = row.chunks_exact_mut(8);
    for r in &mut chunks {
        for k in 0..8 {
            let l = r[k];
            let g = f(l);
            acc[k] += g * l;
            r[k] = g;
        }
    }
    for (k, x) in chunks.into_remainder().iter_mut().enumerate() {
        let l = *x;
        let g = f(l);
        acc[k] += g * l;
        *x = g;
    }
    reduce8(acc)
}

/// As [`lanes`], with two per-column operands: `row[j] ← f(row[j], a[j], b[j])`.
#[inline(always)]
fn lanes2<T: Float>(row: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let n = row.len();
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let mut rc = row.chunks_exact_mut(8);
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for ((r, a8), b8) in (&mut rc).zip(&mut ac).zip(&mut bc) {
        for k in 0..8 {
            let l = r[k];
            let g = f(l, a8[k], b8[k]);
            acc[k] += g * l;
            r[k] = g;
        }
    }
    let rem = rc.into_remainder();
    for (k, ((x, &ak), &bk)) in rem
        .iter_mut()
        .zip(ac.remainder())
        .zip(bc.remainder())
        .enumerate()
    {
        let l = *x;
        let g = f(l, ak, bk);
        acc[k] += g * l;
        *x = g;
    }
    reduce8(acc)
}

#[inline(always)]
fn reduce8<T: Float>(acc: [T; 8]) -> T {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}
