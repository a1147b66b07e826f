//! CPU kernels: InfoNCE (DESIGN §3.4).
//!
//! Two paths with the same contract:
//! - `chunk == 0`, the dense reference: materialises the `B × B` logits (simplest code).
//! - `chunk > 0`: `chunk × chunk` tiles of `s a pᵀ` (one `gemm` per tile into a scratch
//!   tile), never a `B × B` buffer. Memory is O(B·D + groups·B + workers·chunk²).
//!
//! Forward, one pass: row tiles are split into at most `MAX_GROUPS` contiguous groups (a
//! partition that depends only on B and the chunk, never on the thread count); each group
//! walks its row tiles and, per row tile, the column tiles in order, keeping an online
//! (max, sum) per row and, for the symmetric loss, per column, from the same tile. The
//! per-group column statistics are merged in group order. One GEMM-equivalent.
//! Backward, one recompute: each tile (t, u) is recomputed once and gives both its
//! contribution to `ga[t]` (`G pᵤ`) and to `gp[u]` (`Gᵀ aₜ`). The tiles run along
//! anti-diagonals (step k takes every tile with t + u = k), so within a step no two tasks
//! share a `ga` or a `gp` block, and every block still sums its tiles in index order: no
//! atomics, no partial buffers, and results independent of the thread count. Three
//! GEMM-equivalents, four with the forward.
//! Precision modes round the products' operands (`a`, `p`, and the logit gradient `G`) to
//! tf32 / bf16 as tensor cores read them, and accumulate in the dtype: the reference the
//! GPU's tensor-core paths are held to.

use super::gemm::{threads, Parallelism, Product, Strided, PARALLEL_WORK};
use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float};
#[cfg(target_arch = "x86_64")]
use super::{has_avx2, has_avx512};
use crate::error::{Error, Result};
use crate::ops::infonce::{InfoNceBackwardArgs, InfoNceGeometry, Precision};
use crate::ops::{InfoNceAttrs, Op};
use rayon::prelude::*;
use std::borrow::Cow;
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

fn geometry(
    op: &'static str,
    at: &InfoNceAttrs,
    a: &CpuView,
    p: &CpuView,
) -> Result<InfoNceGeometry> {
    at.geometry(op, a.shape.dims(), p.shape.dims())
}

/// The operand as the products read it: itself in f32 mode, a rounded copy otherwise.
fn operand<T: Float>(x: &[T], precision: Precision) -> Cow<'_, [T]> {
    if precision == Precision::F32 {
        return Cow::Borrowed(x);
    }
    Cow::Owned(x.par_iter().map(|&v| round(v, precision)).collect())
}

#[inline]
fn round<T: Float>(v: T, precision: Precision) -> T {
    match (T::DTYPE, v.to_f32()) {
        (crate::tensor::DType::F32, Some(x)) => T::of(f64::from(precision.round_f32(x))),
        _ => T::of(precision.round(v.to_f64().unwrap_or(f64::NAN))),
    }
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

/// The exponential of the tile loops, the three exp-heavy loops over a tile row, and the
/// maxima of a tile. For f32 the exponential is a polynomial (Cephes `expf`, about 1 ulp; NaN
/// propagates, underflow gives 0) and the loops run on AVX-512 or AVX2 when the CPU has it,
/// with the same operations in the same order as the portable loops (8 accumulators, no fused
/// multiply-add), so the results are the same bits on every machine
/// (`tests::simd_loops_equal_the_portable_ones`). For f64 the library `exp` and the portable
/// loops.
pub(crate) trait TileExp: Float {
    fn texp(self) -> Self;

    /// Σ exp(x − m) over `row`.
    fn sum_exp(row: &[Self], m: Self) -> Self {
        sum_exp(row, m)
    }

    /// `l[j] += exp(x[j] − m[j])` (a row's contribution to running column sums).
    fn add_exp(l: &mut [Self], m: &[Self], x: &[Self]) {
        add_exp(l, m, x)
    }

    /// One row of a gradient tile: `row[j] ← wr·exp(l − lr) (+ wc[j]·exp(l − lc[j]))` for
    /// the logits `l = row[j]` (`cols` = (lc, wc) when symmetric); returns Σ row'[j] · l.
    fn grad_row(row: &mut [Self], lr: Self, wr: Self, cols: Cols<Self>) -> Self {
        grad_row(row, lr, wr, cols)
    }

    /// The largest of `row`, NaNs ignored (−∞ when there is none).
    fn row_max(row: &[Self]) -> Self {
        row_max(row)
    }

    /// `acc[j] = max(acc[j], x[j])` (a row's contribution to running column maxima).
    fn max_into(acc: &mut [Self], x: &[Self]) {
        max_into(acc, x)
    }
}

/// The portable [`TileExp::row_max`].
#[inline]
fn row_max<T: Float>(row: &[T]) -> T {
    row.iter().fold(T::neg_infinity(), |m, &x| max(m, x))
}

/// The portable [`TileExp::max_into`].
#[inline]
fn max_into<T: Float>(acc: &mut [T], x: &[T]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a = max(*a, x);
    }
}

/// The portable [`TileExp::add_exp`].
#[inline]
fn add_exp<T: TileExp>(l: &mut [T], m: &[T], x: &[T]) {
    for ((l, &m), &x) in l.iter_mut().zip(m).zip(x) {
        *l += (x - m).texp();
    }
}

/// The portable [`TileExp::grad_row`], in 8 lanes.
#[inline]
fn grad_row<T: TileExp>(row: &mut [T], lr: T, wr: T, cols: Cols<T>) -> T {
    match cols {
        Some((lc, wc)) => lanes2(row, lc, wc, |l, lcj, wcj| {
            wr * (l - lr).texp() + wcj * (l - lcj).texp()
        }),
        None => lanes(row, |l| wr * (l - lr).texp()),
    }
}

impl TileExp for f64 {
    #[inline(always)]
    fn texp(self) -> f64 {
        self.exp()
    }
}

/// Constants of the f32 tile exponential (shared by the scalar and the AVX2 code).
mod expf {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 · 2²³: adding it rounds to an integer.
    pub const MAGIC: f32 = 12_582_912.0;
    /// The polynomial's coefficients, highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

impl TileExp for f32 {
    #[inline(always)]
    fn texp(self) -> f32 {
        use expf::*;
        let x = self;
        let xc = x.clamp(-87.0, 88.0);
        let t = xc * LOG2E + MAGIC;
        let n = t - MAGIC;
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let r = xc - n * LN2_HI - n * LN2_LO;
        let mut p = P[0];
        for c in &P[1..] {
            p = p * r + c;
        }
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

    // SAFETY (each method): `loops` gives only loops this CPU runs.
    fn sum_exp(row: &[f32], m: f32) -> f32 {
        unsafe { (loops().sum_exp)(row, m) }
    }

    fn add_exp(l: &mut [f32], m: &[f32], x: &[f32]) {
        unsafe { (loops().add_exp)(l, m, x) }
    }

    fn grad_row(row: &mut [f32], lr: f32, wr: f32, cols: Cols<f32>) -> f32 {
        unsafe { (loops().grad_row)(row, lr, wr, cols) }
    }

    fn row_max(row: &[f32]) -> f32 {
        unsafe { (loops().row_max)(row) }
    }

    fn max_into(acc: &mut [f32], x: &[f32]) {
        unsafe { (loops().max_into)(acc, x) }
    }
}

/// Each column's (LSE, weight) of a gradient tile's row, when the loss is symmetric.
type Cols<'a, T> = Option<(&'a [T], &'a [T])>;

/// The f32 tile loops of one width (the portable ones, or [`simd`]'s), behind [`TileExp`]'s
/// f32 methods.
struct Loops {
    sum_exp: unsafe fn(&[f32], f32) -> f32,
    add_exp: unsafe fn(&mut [f32], &[f32], &[f32]),
    grad_row: unsafe fn(&mut [f32], f32, f32, Cols<'_, f32>) -> f32,
    row_max: unsafe fn(&[f32]) -> f32,
    max_into: unsafe fn(&mut [f32], &[f32]),
}

static PORTABLE: Loops = Loops {
    sum_exp: sum_exp::<f32>,
    add_exp: add_exp::<f32>,
    grad_row: grad_row::<f32>,
    row_max: row_max::<f32>,
    max_into: max_into::<f32>,
};

/// The widest tile loops this CPU runs.
#[inline]
fn loops() -> &'static Loops {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return &simd::AVX512;
        }
        if has_avx2() {
            return &simd::AVX2;
        }
    }
    &PORTABLE
}

#[cfg(target_arch = "x86_64")]
mod simd;

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

/// One call's operands (rounded to the precision mode) and shape, as the tile loops see them.
struct Problem<'a, T> {
    /// `[rows, d]`.
    a: &'a [T],
    /// `[cols, d]`.
    p: &'a [T],
    rows: usize,
    cols: usize,
    d: usize,
    /// The clamped scale `s`.
    s: T,
    sym: bool,
    /// Row i's positive is column `offset + i`.
    offset: usize,
}

impl<T> Problem<'_, T> {
    /// The local column of row `i`'s positive in a tile whose rows start at `r0` and whose
    /// `n` columns start at `c0`, if the tile holds it.
    #[inline]
    fn positive(&self, r0: usize, i: usize, c0: usize, n: usize) -> Option<usize> {
        (self.offset + r0 + i).checked_sub(c0).filter(|&j| j < n)
    }
}

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
    let InfoNceGeometry { rows, cols, d } = geometry(OP, &at, &inputs[0], &inputs[1])?;
    let a = operand(read::<T>(&inputs[0])?, at.precision);
    let p = operand(read::<T>(&inputs[1])?, at.precision);
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
    expect_len(OP, "lse_row", lse_row.len(), rows)?;
    expect_len(OP, "lse_col", lse_col.len(), at.lse_col_len(rows))?;
    let pb = Problem {
        a: &a,
        p: &p,
        rows,
        cols,
        d,
        s,
        sym: at.symmetric,
        offset: at.offset,
    };

    let mut diag = vec![T::zero(); rows];
    if at.chunk == 0 {
        dense_forward(&pb, lse_row, lse_col, &mut diag);
    } else {
        chunked_forward(&pb, at.chunk, lse_row, lse_col, &mut diag);
    }

    // The two means are accumulated in f64 (B terms, in row order).
    let mean_gap = |lse: &[T]| {
        let mut acc = 0.0f64;
        for (&l, &g) in lse.iter().zip(&diag) {
            acc += (l - g).to_f64().unwrap_or(f64::NAN);
        }
        acc / rows as f64
    };
    let row_term = mean_gap(lse_row);
    loss[0] = T::of(if pb.sym {
        0.5 * (row_term + mean_gap(lse_col))
    } else {
        row_term
    });
    Ok(())
}

/// Dense reference: the whole logits matrix, then max-subtracted LSE over rows and columns.
fn dense_forward<T: Float>(pb: &Problem<T>, lse_row: &mut [T], lse_col: &mut [T], diag: &mut [T]) {
    let (rows, cols) = (pb.rows, pb.cols);
    let mut l = vec![T::zero(); rows * cols];
    logits_tile(pb, 0..rows, 0..cols, &mut l, true);
    for i in 0..rows {
        let row = &l[i * cols..(i + 1) * cols];
        let m = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let sum: T = row.iter().map(|&x| (x - m).exp()).sum();
        lse_row[i] = m + sum.ln();
        diag[i] = row[pb.offset + i];
    }
    if pb.sym {
        for j in 0..cols {
            let m = (0..rows).fold(T::neg_infinity(), |m, i| m.max(l[i * cols + j]));
            let sum: T = (0..rows).map(|i| (l[i * cols + j] - m).exp()).sum();
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

/// The tile edge and the `t`-th tile's index range along an axis of `len`.
fn tiling(chunk: usize, pb: &Problem<impl Sized>) -> usize {
    chunk.min(pb.rows.max(pb.cols))
}

fn tile_range(c: usize, len: usize, t: usize) -> Range<usize> {
    t * c..((t + 1) * c).min(len)
}

fn chunked_forward<T: TileExp>(
    pb: &Problem<T>,
    chunk: usize,
    lse_row: &mut [T],
    lse_col: &mut [T],
    diag: &mut [T],
) {
    let c = tiling(chunk, pb);
    let (ntr, ntc) = (pb.rows.div_ceil(c), pb.cols.div_ceil(c));
    let groups = ntr.min(MAX_GROUPS);
    let col_len = if pb.sym { pb.cols } else { 0 };
    let results: Vec<Group<T>> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let (t0, t1) = (gi * ntr / groups, (gi + 1) * ntr / groups);
            let rows = t0 * c..(t1 * c).min(pb.rows);
            let mut g = Group {
                lse_row: vec![T::zero(); rows.len()],
                diag: vec![T::zero(); rows.len()],
                col_m: vec![T::neg_infinity(); col_len],
                col_l: vec![T::zero(); col_len],
                rows,
            };
            let mut tile = vec![T::zero(); c * c];
            let mut rm = vec![T::zero(); c];
            let mut rl = vec![T::zero(); c];
            let mut cm = vec![T::zero(); c];
            for t in t0..t1 {
                let r = tile_range(c, pb.rows, t);
                let m = r.len();
                let off = r.start - g.rows.start;
                rm[..m].fill(T::neg_infinity());
                rl[..m].fill(T::zero());
                for u in 0..ntc {
                    let cols = tile_range(c, pb.cols, u);
                    let n = cols.len();
                    logits_tile(pb, r.clone(), cols.clone(), &mut tile, false);
                    let tl = &tile[..m * n];
                    for i in 0..m {
                        let row = &tl[i * n..(i + 1) * n];
                        let mx = T::row_max(row);
                        let sum = T::sum_exp(row, mx);
                        merge(&mut rm[i], &mut rl[i], mx, sum);
                        if let Some(j) = pb.positive(r.start, i, cols.start, n) {
                            g.diag[off + i] = row[j];
                        }
                    }
                    if pb.sym {
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
    if pb.sym {
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
        T::max_into(new_m, &tl[i * n..(i + 1) * n]);
    }
    for j in 0..n {
        cl[j] *= (cm[j] - new_m[j]).exp();
    }
    for i in 0..m {
        T::add_exp(cl, new_m, &tl[i * n..(i + 1) * n]);
    }
    cm.copy_from_slice(new_m);
}

/// `out[|rows| × |cols|] = s · a[rows] · p[cols]ᵀ` (a, p row-major with `d` columns).
fn logits_tile<T: Float>(
    pb: &Problem<T>,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &mut [T],
    parallel: bool,
) {
    let (m, n, d) = (rows.len(), cols.len(), pb.d);
    let out = &mut out[..m * n];
    if d == 0 || m == 0 || n == 0 {
        out.fill(T::zero());
        return;
    }
    let lhs = &pb.a[rows.start * d..rows.end * d];
    let rhs = &pb.p[cols.start * d..cols.end * d];
    // SAFETY: lhs is m×d row-major (col stride 1, row stride d); rhs = p[cols]ᵀ is d×n with
    // element (k, j) at j·d + k; out is m×n row-major. All three slices hold exactly these.
    unsafe {
        Product {
            m,
            n,
            k: d,
            dst: Strided::rows(out.as_mut_ptr(), n),
            read_dst: false,
            lhs: Strided::rows(lhs.as_ptr(), d),
            rhs: Strided::rows(rhs.as_ptr(), d).transposed(),
            alpha: T::zero(),
            beta: pb.s,
            parallelism: par(parallel, m * n * d),
        }
        .run()
    }
}

/// An `m × k` matrix read from a slice with the given strides: a gradient tile `G` as it is
/// (row stride k) or transposed (`Gᵀ` of a `k × m` tile: row stride 1, column stride m).
#[derive(Clone, Copy)]
struct Lhs<'a, T> {
    data: &'a [T],
    m: usize,
    k: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Lhs<'a, T> {
    fn of(data: &'a [T], m: usize, k: usize) -> Self {
        Lhs {
            data,
            m,
            k,
            row_stride: k,
            col_stride: 1,
        }
    }

    fn transposed(data: &'a [T], k: usize, m: usize) -> Self {
        Lhs {
            data,
            m,
            k,
            row_stride: 1,
            col_stride: m,
        }
    }
}

/// `dst[m × d] (+)= s · g[m × k] · y[y0 .. y0 + k]` (accumulates unless `first`).
#[allow(clippy::too_many_arguments)]
fn accumulate_product<T: Float>(
    dst: &mut [T],
    g: Lhs<T>,
    y: &[T],
    y0: usize,
    d: usize,
    s: T,
    first: bool,
    parallel: bool,
) {
    let (m, k) = (g.m, g.k);
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
    let g_data = &g.data[..m * k];
    let rhs = &y[y0 * d..(y0 + k) * d];
    // SAFETY: dst is m×d and rhs is k×d, row-major and exactly that long; g's m×k elements
    // at i·row_stride + j·col_stride all lie inside its m·k-element slice (Lhs::of and
    // Lhs::transposed are the only two layouts).
    unsafe {
        Product {
            m,
            n: d,
            k,
            dst: Strided::rows(dst.as_mut_ptr(), d),
            read_dst: !first,
            lhs: Strided {
                ptr: g_data.as_ptr(),
                rs: g.row_stride as isize,
                cs: g.col_stride as isize,
            },
            rhs: Strided::rows(rhs.as_ptr(), d),
            alpha: T::one(),
            beta: s,
            parallelism: par(parallel, m * k * d),
        }
        .run()
    }
}

fn par(parallel: bool, work: usize) -> Parallelism {
    threads(parallel && work >= PARALLEL_WORK)
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
    /// The products read `G` at this precision.
    precision: Precision,
}

impl<T: Float> Coef<'_, T> {
    /// Rounds a gradient tile to the precision the products read it at (after Σ G ⊙ logits,
    /// which uses the exact G).
    fn round_tile(&self, g: &mut [T]) {
        if self.precision != Precision::F32 {
            g.iter_mut().for_each(|x| *x = round(*x, self.precision));
        }
    }
}

fn backward<T: TileExp>(
    at: InfoNceAttrs,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "infonce_backward";
    let x = InfoNceBackwardArgs::of(OP, inputs)?;
    let InfoNceGeometry { rows, cols, d } = geometry(OP, &at, x.a, x.p)?;
    let g_loss = read::<T>(x.g_loss)?;
    let a = operand(read::<T>(x.a)?, at.precision);
    let p = operand(read::<T>(x.p)?, at.precision);
    let ls = read::<T>(x.logit_scale)?;
    let lse_row = read::<T>(x.lse_row)?;
    let lse_col = read::<T>(x.lse_col)?;
    let sym = at.symmetric;
    let col_len = at.lse_col_len(rows);
    expect_len(OP, "g_loss", g_loss.len(), 1)?;
    expect_len(OP, "logit_scale", ls.len(), 1)?;
    expect_len(OP, "lse_row", lse_row.len(), rows)?;
    expect_len(OP, "lse_col", lse_col.len(), col_len)?;
    let (g_row, g_col) = if let Some((gr, gc)) = x.g_lse {
        let (gr, gc) = (read::<T>(gr)?, read::<T>(gc)?);
        expect_len(OP, "g_lse_row", gr.len(), rows)?;
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
    expect_len(OP, "ga", ga.len(), rows * d)?;
    expect_len(OP, "gp", gp.len(), cols * d)?;
    expect_len(OP, "g_logit_scale", gls.len(), 1)?;

    let (s, clamped) = scale(ls[0]);
    let bf = T::of(rows as f64);
    let (wr, wc) = if sym {
        let w = g_loss[0] / (bf + bf);
        (w, w)
    } else {
        (g_loss[0] / bf, T::zero())
    };
    let coef = Coef {
        lse_row,
        lse_col,
        u: (0..rows)
            .map(|i| wr + g_row.map_or(T::zero(), |g| g[i]))
            .collect(),
        v: (0..col_len)
            .map(|j| wc + g_col.map_or(T::zero(), |g| g[j]))
            .collect(),
        diag: wr + wc,
        precision: at.precision,
    };
    let pb = Problem {
        a: &a,
        p: &p,
        rows,
        cols,
        d,
        s,
        sym,
        offset: at.offset,
    };
    let total = if at.chunk == 0 {
        dense_backward(&pb, &coef, ga, gp)
    } else {
        chunked_backward(&pb, at.chunk, &coef, ga, gp)
    };
    // d logits / d logit_scale = logits while exp(logit_scale) ≤ 100; the clamp stops it.
    gls[0] = if clamped { T::zero() } else { total };
    Ok(())
}

/// Dense reference backward; returns Σ gLogit ⊙ logits.
fn dense_backward<T: TileExp>(pb: &Problem<T>, k: &Coef<T>, ga: &mut [T], gp: &mut [T]) -> T {
    let (rows, cols, d) = (pb.rows, pb.cols, pb.d);
    let mut g = vec![T::zero(); rows * cols];
    logits_tile(pb, 0..rows, 0..cols, &mut g, true);
    let mut total = T::zero();
    for i in 0..rows {
        for j in 0..cols {
            let l = g[i * cols + j];
            let mut gv = k.u[i] * (l - k.lse_row[i]).exp();
            if pb.sym {
                gv += k.v[j] * (l - k.lse_col[j]).exp();
            }
            if j == pb.offset + i {
                gv = gv - k.diag;
            }
            total += gv * l;
            g[i * cols + j] = gv;
        }
    }
    k.round_tile(&mut g);
    // ga = s G p ; gp = s Gᵀ a.
    accumulate_product(ga, Lhs::of(&g, rows, cols), pb.p, 0, d, pb.s, true, true);
    accumulate_product(
        gp,
        Lhs::transposed(&g, rows, cols),
        pb.a,
        0,
        d,
        pb.s,
        true,
        true,
    );
    total
}

/// Chunked backward, one recompute per tile, along anti-diagonals (see the module doc).
/// Returns Σ gLogit ⊙ logits, summed per row tile in column order, then over row tiles.
fn chunked_backward<T: TileExp>(
    pb: &Problem<T>,
    chunk: usize,
    k: &Coef<T>,
    ga: &mut [T],
    gp: &mut [T],
) -> T {
    let (rows, cols, d) = (pb.rows, pb.cols, pb.d);
    let c = tiling(chunk, pb);
    let (ntr, ntc) = (rows.div_ceil(c), cols.div_ceil(c));
    let row_side = Side {
        lse: k.lse_row,
        w: &k.u,
    };
    let col_side = pb.sym.then_some(Side {
        lse: k.lse_col,
        w: &k.v,
    });
    let mut ga_blocks = row_blocks(ga, c * d, ntr);
    let mut gp_blocks = row_blocks(gp, c * d, ntc);
    let mut partials = vec![T::zero(); ntr];
    // One scratch tile per worker, allocated once for all the steps (a worker runs one task
    // at a time: nothing inside a task is parallel).
    let tiles: Vec<std::sync::Mutex<Vec<T>>> = (0..rayon::current_num_threads())
        .map(|_| std::sync::Mutex::new(vec![T::zero(); c * c]))
        .collect();
    for step in 0..ntr + ntc - 1 {
        // Tiles (t, step − t): distinct t and distinct u, so each task owns its two blocks.
        let (t_lo, t_hi) = (step.saturating_sub(ntc - 1), step.min(ntr - 1));
        let tasks: Vec<_> = ga_blocks[t_lo..=t_hi]
            .iter_mut()
            .zip(gp_blocks[step - t_hi..=step - t_lo].iter_mut().rev())
            .zip(&mut partials[t_lo..=t_hi])
            .enumerate()
            .map(|(i, ((ga_t, gp_u), acc))| (t_lo + i, ga_t, gp_u, acc))
            .collect();
        tasks.into_par_iter().for_each(|(t, ga_t, gp_u, acc)| {
            let slot = rayon::current_thread_index().unwrap_or(0) % tiles.len();
            let mut tile = tiles[slot].lock().unwrap_or_else(|e| e.into_inner());
            let tile = &mut tile[..];
            let u = step - t;
            let (r, cl) = (tile_range(c, rows, t), tile_range(c, cols, u));
            let (m, n) = (r.len(), cl.len());
            logits_tile(pb, r.clone(), cl.clone(), tile, false);
            let g = &mut tile[..m * n];
            let positive = |i| pb.positive(r.start, i, cl.start, n);
            *acc += grad_tile(
                g, m, n, r.start, cl.start, row_side, col_side, k.diag, positive,
            );
            k.round_tile(g);
            accumulate_product(
                ga_t,
                Lhs::of(g, m, n),
                pb.p,
                cl.start,
                d,
                pb.s,
                u == 0,
                false,
            );
            let gt = Lhs::transposed(g, m, n);
            accumulate_product(gp_u, gt, pb.a, r.start, d, pb.s, t == 0, false);
        });
    }
    let mut total = 0.0f64;
    for x in partials {
        total += x.to_f64().unwrap_or(f64::NAN);
    }
    T::of(total)
}

/// `nt` mutable row blocks of `len` elements (the last one shorter; empty ones when d = 0).
fn row_blocks<T>(x: &mut [T], len: usize, nt: usize) -> Vec<&mut [T]> {
    let mut blocks: Vec<&mut [T]> = x.chunks_mut(len.max(1)).collect();
    blocks.resize_with(nt, Default::default);
    blocks
}

/// The log-sum-exp and weight of the index that runs along one axis of a tile.
#[derive(Clone, Copy)]
struct Side<'a, T> {
    lse: &'a [T],
    w: &'a [T],
}

/// Turns an `m × n` tile of logits (rows start at global row `r0`, columns at global column
/// `c0`) into gLogit in place; returns Σ gLogit ⊙ logits. `positive(i)` is the local column
/// of row i's positive when the tile holds it; `diag` is subtracted there.
#[allow(clippy::too_many_arguments)]
fn grad_tile<T: TileExp>(
    tile: &mut [T],
    m: usize,
    n: usize,
    r0: usize,
    c0: usize,
    rows: Side<T>,
    cols: Option<Side<T>>,
    diag: T,
    positive: impl Fn(usize) -> Option<usize>,
) -> T {
    let mut total = T::zero();
    for i in 0..m {
        let row = &mut tile[i * n..(i + 1) * n];
        let pos = positive(i).map(|j| (j, row[j]));
        let (lr, wr) = (rows.lse[r0 + i], rows.w[r0 + i]);
        let cols = cols.map(|cs| (&cs.lse[c0..c0 + n], &cs.w[c0..c0 + n]));
        let mut acc = T::grad_row(row, lr, wr, cols);
        if let Some((j, l)) = pos {
            row[j] = row[j] - diag;
            acc = acc - diag * l;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits as they come, plus the edges of the exponential: both clamps, ±inf, NaN, ±0.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::util::rng::SplitMix64::new(seed);
        let edges = [
            -87.5,
            -87.0,
            88.0,
            88.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
        ];
        (0..n)
            .map(|k| match k % 11 {
                0 => edges[(k / 11) % edges.len()],
                _ => rng.range(-120.0, 120.0) as f32,
            })
            .collect()
    }

    /// Finite logits of a plausible range, where the order of a sum shows in its bits.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::util::rng::SplitMix64::new(seed);
        (0..n).map(|_| rng.range(-12.0, 4.0) as f32).collect()
    }

    fn same(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan())
    }

    /// Each SIMD width's loops give the portable loops' bits (the maxima of a row: the same
    /// value; see `simd::row_max`).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_loops_equal_the_portable_ones() {
        let mut widths = Vec::new();
        if has_avx2() {
            widths.push(("avx2", &simd::AVX2));
        }
        if has_avx512() {
            widths.push(("avx512", &simd::AVX512));
        }
        if widths.is_empty() {
            eprintln!("skipped: no AVX2");
        }
        let kinds: [fn(usize, u64) -> Vec<f32>; 2] = [values, logits];
        for ((name, w), values) in widths.iter().flat_map(|w| kinds.map(|k| (w, k))) {
            for n in [0usize, 1, 7, 8, 13, 15, 16, 17, 31, 33, 64, 259] {
                let (x, m, lc, wc) = (values(n, 1), values(n, 2), values(n, 3), values(n, 4));
                // SAFETY (each call): `widths` holds only what this CPU runs (checked above).
                for mx in [0.0f32, 3.5, -40.0] {
                    let fast = unsafe { (w.sum_exp)(&x, mx) };
                    let slow = sum_exp(&x, mx);
                    assert!(
                        same(&[fast], &[slow]),
                        "{name} sum_exp n={n}: {fast} vs {slow}"
                    );
                }
                let (mut fast, mut slow) = (values(n, 5), values(n, 5));
                unsafe { (w.add_exp)(&mut fast, &m, &x) };
                add_exp(&mut slow, &m, &x);
                assert!(same(&fast, &slow), "{name} add_exp n={n}");
                for cols in [None, Some((&lc[..], &wc[..]))] {
                    let (mut fast, mut slow) = (x.clone(), x.clone());
                    let tf = unsafe { (w.grad_row)(&mut fast, 1.25, 0.3, cols) };
                    let ts = grad_row(&mut slow, 1.25, 0.3, cols);
                    assert!(
                        same(&fast, &slow) && same(&[tf], &[ts]),
                        "{name} grad_row n={n}"
                    );
                }
                for row in [&x, &vec![f32::NAN; n]] {
                    let (fast, slow) = (unsafe { (w.row_max)(row) }, row_max(row));
                    assert!(fast == slow, "{name} row_max n={n}: {fast} vs {slow}");
                }
                let (mut fast, mut slow) = (values(n, 6), values(n, 6));
                unsafe { (w.max_into)(&mut fast, &x) };
                max_into(&mut slow, &x);
                assert!(same(&fast, &slow), "{name} max_into n={n}");
            }
        }
    }
}
