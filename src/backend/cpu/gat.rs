//! CPU kernels: GAT (edge-softmax attention), its attention export, their backward, and the
//! fixed-attention aggregation (DESIGN §3.2, §3.3; the math is in `ops/gat.rs`).
//!
//! Parallel over fixed blocks of destination nodes (forward, backward pass 1: everything that
//! sums over the edges entering a node) and of source nodes (backward pass 2: everything that
//! sums over the edges leaving a node, through the CSC transpose). Every sum runs in a fixed
//! order (edge order, CSC order, block order), so results are bit-identical for any number of
//! threads; there are no atomics. The graph arrays are validated before use: a bad index is an
//! `Error::Invalid`, never a panic.

use super::{float_dispatch, read, write, CpuView, CpuViewMut, Float};
use crate::error::{Error, Result};
use crate::ops::gat::{
    required, validate_csc, validate_csr, AggregateArgs, GatArgs, GatAttrs, GraphArgs,
};
use crate::ops::Op;
use rayon::prelude::*;
use std::ops::Range;

/// Nodes per parallel task. Fixed, so block partial sums do not depend on the thread count.
const BLOCK: usize = 64;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = inputs
        .first()
        .map(|v| v.dtype)
        .ok_or_else(|| Error::graph(format!("{}: no inputs", op.name())))?;
    let name = op.name();
    match op {
        Op::Gat(a) => {
            let x = GatArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, gat_forward(a, &x, outputs))
        }
        Op::GatAlpha(a) => {
            let x = GatArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, gat_alpha(a, &x, outputs))
        }
        Op::GatBackward(a) => {
            let x = GatArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, gat_backward(a, &x, outputs))
        }
        Op::GatAlphaBackward(a) => {
            let x = GatArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, gat_alpha_backward(a, &x, outputs))
        }
        Op::Aggregate => {
            let x = AggregateArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, aggregate(&x, outputs))
        }
        Op::AggregateBackward => {
            let x = AggregateArgs::of(op, inputs)?;
            float_dispatch!(name, dtype, aggregate_backward(&x, outputs))
        }
        other => Err(Error::Unsupported {
            backend: "cpu",
            what: format!("{} in gat kernels", other.name()),
        }),
    }
}

// ---- graph access ------------------------------------------------------------------------

/// A validated CSR by destination.
#[derive(Clone, Copy)]
struct Csr<'a> {
    n: usize,
    row_ptr: &'a [i32],
    src: &'a [i32],
}

impl Csr<'_> {
    #[inline]
    fn edges(&self, i: usize) -> Range<usize> {
        self.row_ptr[i] as usize..self.row_ptr[i + 1] as usize
    }
    fn num_edges(&self) -> usize {
        self.src.len()
    }
    /// Destination of every edge.
    fn dst(&self) -> Vec<u32> {
        let mut dst = vec![0u32; self.num_edges()];
        for i in 0..self.n {
            dst[self.edges(i)].fill(i as u32);
        }
        dst
    }
    /// Edge range of node block `b`.
    fn block_edges(&self, b: usize) -> Range<usize> {
        let lo = b * BLOCK;
        let hi = ((b + 1) * BLOCK).min(self.n);
        self.row_ptr[lo] as usize..self.row_ptr[hi] as usize
    }
    fn blocks(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }
}

/// A validated CSC transpose.
#[derive(Clone, Copy)]
struct Csc<'a> {
    col_ptr: &'a [i32],
    col_edge: &'a [i32],
}

impl Csc<'_> {
    /// Positions in `col_edge` of the edges leaving `j`.
    #[inline]
    fn range(&self, j: usize) -> Range<usize> {
        self.col_ptr[j] as usize..self.col_ptr[j + 1] as usize
    }
}

/// Reads and validates the graph inputs for `n` nodes (the CSC only when `with_csc`).
fn graph<'a>(
    op: &'static str,
    g: &GraphArgs<CpuView<'a>>,
    n: usize,
    with_csc: bool,
) -> Result<(Csr<'a>, Csc<'a>)> {
    let row_ptr = read::<i32>(g.row_ptr)?;
    let src = read::<i32>(g.src)?;
    let col_ptr = read::<i32>(g.col_ptr)?;
    let col_edge = read::<i32>(g.col_edge)?;
    validate_csr(op, n, row_ptr, src)?;
    if with_csc {
        validate_csc(op, n, src, col_ptr, col_edge)?;
    }
    Ok((Csr { n, row_ptr, src }, Csc { col_ptr, col_edge }))
}

/// Splits per-edge rows of `w` elements at the edge ranges of the node blocks.
fn split_edges<'a, T>(mut buf: &'a mut [T], g: &Csr, w: usize) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(g.blocks());
    for b in 0..g.blocks() {
        let len = g.block_edges(b).len() * w;
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        parts.push(head);
        buf = tail;
    }
    parts
}

fn dims<const R: usize>(v: &CpuView) -> [usize; R] {
    let mut d = [0; R];
    for (x, &s) in d.iter_mut().zip(v.shape.dims()) {
        *x = s;
    }
    d
}

/// z, a_src, a_dst and the optional edge bias of a GAT form.
type Params<'a, T> = (&'a [T], &'a [T], &'a [T], Option<&'a [T]>);

fn params<'a, T: Float>(x: &GatArgs<CpuView<'a>>) -> Result<Params<'a, T>> {
    let be = match x.edge_bias {
        Some(v) => Some(read::<T>(v)?),
        None => None,
    };
    Ok((
        read::<T>(x.z)?,
        read::<T>(x.a_src)?,
        read::<T>(x.a_dst)?,
        be,
    ))
}

fn next_out<'a, 'b>(
    it: &mut std::slice::IterMut<'a, CpuViewMut<'b>>,
    op: &'static str,
) -> Result<&'a mut CpuViewMut<'b>> {
    it.next()
        .ok_or_else(|| Error::graph(format!("{op}: missing an output buffer")))
}

// ---- memory ------------------------------------------------------------------------------

/// How many edges ahead the gathers of feature rows are prefetched. The kernels are bound by
/// the latency of these random row gathers; a prefetch keeps several in flight.
const PF: usize = 4;

/// Hints the cache to load `row` (every 64-byte line of it).
#[inline(always)]
fn prefetch_row<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = row.as_ptr() as *const i8;
        for off in (0..std::mem::size_of_val(row)).step_by(64) {
            // SAFETY: a prefetch is only a hint and never faults; the address is inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Prefetches row `idx[k]` (of width `w`) of `table`, if there is such an edge.
#[inline(always)]
fn prefetch_gather<T>(table: &[T], idx: &[i32], k: usize, w: usize) {
    if let Some(&j) = idx.get(k) {
        if let Some(row) = table.get(j as usize * w..(j as usize + 1) * w) {
            prefetch_row(row);
        }
    }
}

// ---- arithmetic --------------------------------------------------------------------------

/// Dot product with 8 fixed lanes (vectorisable, and the same order on every call).
#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// y += a x
#[inline]
fn axpy<T: Float>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The per-(node, head) attention scores `el = z·a_src`, `er = z·a_dst`, each `[N, H]`.
fn scores<T: Float>(z: &[T], a_src: &[T], a_dst: &[T], h: usize, f: usize) -> (Vec<T>, Vec<T>) {
    let n = z.len() / (h * f);
    let mut el = vec![T::zero(); n * h];
    let mut er = vec![T::zero(); n * h];
    el.par_chunks_mut(h)
        .zip(er.par_chunks_mut(h))
        .zip(z.par_chunks(h * f))
        .with_min_len(256)
        .for_each(|((l, r), zn)| {
            for hh in 0..h {
                let zh = &zn[hh * f..(hh + 1) * f];
                l[hh] = dot(zh, &a_src[hh * f..(hh + 1) * f]);
                r[hh] = dot(zh, &a_dst[hh * f..(hh + 1) * f]);
            }
        });
    (el, er)
}

/// Everything that defines the attention logits of a GAT layer.
struct Logits<'a, T> {
    el: Vec<T>,
    er: Vec<T>,
    be: Option<&'a [T]>,
    h: usize,
    slope: T,
}

impl<'a, T: Float> Logits<'a, T> {
    fn new(
        z: &[T],
        a_src: &[T],
        a_dst: &[T],
        be: Option<&'a [T]>,
        h: usize,
        f: usize,
        slope: f64,
    ) -> Self {
        let (el, er) = scores(z, a_src, a_dst, h, f);
        Logits {
            el,
            er,
            be,
            h,
            slope: T::of(slope),
        }
    }
    /// Pre-activation of edge `k` from `j` into `i`, head `hh`.
    #[inline]
    fn pre(&self, k: usize, j: usize, i: usize, hh: usize) -> T {
        let h = self.h;
        let p = self.el[j * h + hh] + self.er[i * h + hh];
        match self.be {
            Some(be) => p + be[k * h + hh],
            None => p,
        }
    }
    #[inline]
    fn leaky(&self, p: T) -> T {
        if p > T::zero() {
            p
        } else {
            self.slope * p
        }
    }
    #[inline]
    fn dleaky(&self, p: T) -> T {
        if p > T::zero() {
            T::one()
        } else {
            self.slope
        }
    }
}

/// α from a logit and its node's log-sum-exp: the one definition every kernel uses.
#[inline]
fn alpha_of<T: Float>(logit: T, lse: T) -> T {
    (logit - lse).exp()
}

// ---- GAT forward -------------------------------------------------------------------------

fn gat_forward<T: Float>(
    a: &GatAttrs,
    x: &GatArgs<CpuView>,
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    let [n, h, f] = dims::<3>(x.z);
    let hf = h * f;
    let (z, a_src, a_dst, be) = params::<T>(x)?;
    let (g, _) = graph("gat", &x.graph, n, false)?;
    let (o_out, o_lse) = super::two(outputs);
    let out = write::<T>(o_out)?;
    let lse = write::<T>(o_lse)?;
    let lg = Logits::new(z, a_src, a_dst, be, h, f, a.negative_slope);

    out.par_chunks_mut(BLOCK * hf)
        .zip(lse.par_chunks_mut(BLOCK * h))
        .enumerate()
        .for_each_init(Vec::new, |logit: &mut Vec<T>, (b, (out_b, lse_b))| {
            for (ii, (out_i, lse_i)) in out_b.chunks_mut(hf).zip(lse_b.chunks_mut(h)).enumerate() {
                let i = b * BLOCK + ii;
                out_i.fill(T::zero());
                lse_i.fill(T::zero());
                let r = g.edges(i);
                if r.is_empty() {
                    continue;
                }
                logit.clear();
                for k in r.clone() {
                    let j = g.src[k] as usize;
                    for hh in 0..h {
                        logit.push(lg.leaky(lg.pre(k, j, i, hh)));
                    }
                }
                log_sum_exp(logit, h, lse_i);
                for (d, k) in r.enumerate() {
                    prefetch_gather(z, g.src, k + PF, hf);
                    let zj = &z[g.src[k] as usize * hf..][..hf];
                    for hh in 0..h {
                        let al = alpha_of(logit[d * h + hh], lse_i[hh]);
                        axpy(&mut out_i[hh * f..][..f], al, &zj[hh * f..][..f]);
                    }
                }
            }
        });
    Ok(())
}

/// Per head, `lse = m + ln Σ exp(l − m)` over rows of `logit[deg, h]`, `m` the row max.
fn log_sum_exp<T: Float>(logit: &[T], h: usize, lse: &mut [T]) {
    for (hh, out) in lse.iter_mut().enumerate() {
        let m = logit
            .iter()
            .skip(hh)
            .step_by(h)
            .fold(T::neg_infinity(), |m, &l| m.max(l));
        let s: T = logit
            .iter()
            .skip(hh)
            .step_by(h)
            .fold(T::zero(), |s, &l| s + (l - m).exp());
        *out = m + s.ln();
    }
}

// ---- GAT attention export ------------------------------------------------------------------

fn gat_alpha<T: Float>(
    a: &GatAttrs,
    x: &GatArgs<CpuView>,
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "gat_alpha";
    let [n, h, f] = dims::<3>(x.z);
    let (z, a_src, a_dst, be) = params::<T>(x)?;
    let lse = read::<T>(required(OP, "lse", x.lse)?)?;
    let (g, _) = graph(OP, &x.graph, n, false)?;
    let alpha = write::<T>(&mut outputs[0])?;
    let lg = Logits::new(z, a_src, a_dst, be, h, f, a.negative_slope);
    let dst = g.dst();
    alpha
        .par_chunks_mut(h)
        .enumerate()
        .with_min_len(1024)
        .for_each(|(k, al)| {
            let (i, j) = (dst[k] as usize, g.src[k] as usize);
            for (hh, x) in al.iter_mut().enumerate() {
                *x = alpha_of(lg.leaky(lg.pre(k, j, i, hh)), lse[i * h + hh]);
            }
        });
    Ok(())
}

// ---- GAT backward (both) -------------------------------------------------------------------

/// What the gradient arrives on.
#[derive(Clone, Copy)]
enum Upstream<'a, T> {
    /// `GatBackward`: the aggregated output's gradient, the output and the saved lse.
    Out {
        g_out: &'a [T],
        out: &'a [T],
        lse: &'a [T],
    },
    /// `GatAlphaBackward`: the attention's gradient and the attention.
    Alpha { g_alpha: &'a [T], alpha: &'a [T] },
}

/// The upstream `g_out` rows (empty in `Alpha` mode).
#[inline]
fn g_out_rows<T>(up: Upstream<'_, T>) -> &[T] {
    match up {
        Upstream::Out { g_out, .. } => g_out,
        Upstream::Alpha { .. } => &[],
    }
}

struct Grads<'a, T> {
    gz: &'a mut [T],
    g_a_src: &'a mut [T],
    g_a_dst: &'a mut [T],
    g_be: Option<&'a mut [T]>,
}

fn gat_grads<'a, T: Float>(
    outputs: &'a mut [CpuViewMut<'_>],
    edge_bias: bool,
    op: &'static str,
) -> Result<Grads<'a, T>> {
    let mut it = outputs.iter_mut();
    let gz = write::<T>(next_out(&mut it, op)?)?;
    let g_a_src = write::<T>(next_out(&mut it, op)?)?;
    let g_a_dst = write::<T>(next_out(&mut it, op)?)?;
    let g_be = if edge_bias {
        Some(write::<T>(next_out(&mut it, op)?)?)
    } else {
        None
    };
    Ok(Grads {
        gz,
        g_a_src,
        g_a_dst,
        g_be,
    })
}

fn gat_backward<T: Float>(
    a: &GatAttrs,
    x: &GatArgs<CpuView>,
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "gat_backward";
    let [n, h, f] = dims::<3>(x.z);
    let up = Upstream::Out {
        g_out: read::<T>(required(OP, "g_out", x.grad)?)?,
        out: read::<T>(required(OP, "out", x.out)?)?,
        lse: read::<T>(required(OP, "lse", x.lse)?)?,
    };
    let (g, c) = graph(OP, &x.graph, n, true)?;
    let grads = gat_grads(outputs, a.edge_bias, OP)?;
    let (z, a_src, a_dst, be) = params::<T>(x)?;
    backward_impl(a, [h, f], z, a_src, a_dst, be, g, c, up, grads);
    Ok(())
}

fn gat_alpha_backward<T: Float>(
    a: &GatAttrs,
    x: &GatArgs<CpuView>,
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    const OP: &str = "gat_alpha_backward";
    let [n, h, f] = dims::<3>(x.z);
    let up = Upstream::Alpha {
        g_alpha: read::<T>(required(OP, "g_alpha", x.grad)?)?,
        alpha: read::<T>(required(OP, "alpha", x.alpha)?)?,
    };
    let (g, c) = graph(OP, &x.graph, n, true)?;
    let grads = gat_grads(outputs, a.edge_bias, OP)?;
    let (z, a_src, a_dst, be) = params::<T>(x)?;
    backward_impl(a, [h, f], z, a_src, a_dst, be, g, c, up, grads);
    Ok(())
}

/// The shared backward. Pass 1 (per destination node): `gpre` for every edge (written into
/// `g_be` when there is an edge bias) and `ger`; in `Out` mode also α for every edge.
/// Pass 2 (per source node, through the CSC): `gel`, `gz` and block partials of `g_a_*`.
#[allow(clippy::too_many_arguments)]
fn backward_impl<T: Float>(
    attrs: &GatAttrs,
    [h, f]: [usize; 2],
    z: &[T],
    a_src: &[T],
    a_dst: &[T],
    be: Option<&[T]>,
    g: Csr,
    c: Csc,
    up: Upstream<T>,
    grads: Grads<T>,
) {
    let hf = h * f;
    let (n, e) = (g.n, g.num_edges());
    let lg = Logits::new(z, a_src, a_dst, be, h, f, attrs.negative_slope);
    let Grads {
        gz,
        g_a_src,
        g_a_dst,
        g_be,
    } = grads;
    let mut gpre_store = Vec::new();
    let gpre: &mut [T] = match g_be {
        Some(s) => s,
        None => {
            gpre_store.resize(e * h, T::zero());
            &mut gpre_store
        }
    };
    let with_out = matches!(up, Upstream::Out { .. });
    let mut alpha_store = vec![T::zero(); if with_out { e * h } else { 0 }];
    let mut ger = vec![T::zero(); n * h];

    // Pass 1: over destination nodes.
    {
        let gpre_blocks = split_edges(gpre, &g, h);
        let alpha_blocks = split_edges(&mut alpha_store, &g, if with_out { h } else { 0 });
        ger.par_chunks_mut(BLOCK * h)
            .zip(gpre_blocks)
            .zip(alpha_blocks)
            .enumerate()
            .for_each_init(Vec::new, |dv: &mut Vec<T>, (b, ((ger_b, gpre_b), al_b))| {
                let e0 = g.block_edges(b).start;
                for (ii, ger_i) in ger_b.chunks_mut(h).enumerate() {
                    let i = b * BLOCK + ii;
                    ger_i.fill(T::zero());
                    let r = g.edges(i);
                    if r.is_empty() {
                        continue;
                    }
                    // D per head: ⟨g_out_i, out_i⟩ or Σ_k α_k gα_k.
                    dv.clear();
                    dv.resize(h, T::zero());
                    match up {
                        Upstream::Out { g_out, out, .. } => {
                            for (hh, d) in dv.iter_mut().enumerate() {
                                let o = i * hf + hh * f;
                                *d = dot(&g_out[o..o + f], &out[o..o + f]);
                            }
                        }
                        Upstream::Alpha { g_alpha, alpha } => {
                            for k in r.clone() {
                                for (hh, d) in dv.iter_mut().enumerate() {
                                    *d += alpha[k * h + hh] * g_alpha[k * h + hh];
                                }
                            }
                        }
                    }
                    for k in r {
                        if with_out {
                            prefetch_gather(z, g.src, k + PF, hf);
                        }
                        let j = g.src[k] as usize;
                        let kl = (k - e0) * h;
                        for hh in 0..h {
                            let p = lg.pre(k, j, i, hh);
                            let ge = match up {
                                Upstream::Out { g_out, lse, .. } => {
                                    let al = alpha_of(lg.leaky(p), lse[i * h + hh]);
                                    al_b[kl + hh] = al;
                                    let ga = dot(
                                        &g_out[i * hf + hh * f..][..f],
                                        &z[j * hf + hh * f..][..f],
                                    );
                                    al * (ga - dv[hh])
                                }
                                Upstream::Alpha { g_alpha, alpha } => {
                                    alpha[k * h + hh] * (g_alpha[k * h + hh] - dv[hh])
                                }
                            };
                            let gp = ge * lg.dleaky(p);
                            gpre_b[kl + hh] = gp;
                            ger_i[hh] += gp;
                        }
                    }
                }
            });
    }
    let gpre: &[T] = gpre;
    let alpha_e: &[T] = &alpha_store;
    let ger: &[T] = &ger;

    // Pass 2: over source nodes.
    let dst = if with_out { g.dst() } else { Vec::new() };
    let partials: Vec<Vec<T>> = gz
        .par_chunks_mut(BLOCK * hf)
        .enumerate()
        .map_init(Vec::new, |gel: &mut Vec<T>, (b, gz_b)| {
            // [g_a_src | g_a_dst] of this block, summed in node order.
            let mut part = vec![T::zero(); 2 * hf];
            for (jj, gz_j) in gz_b.chunks_mut(hf).enumerate() {
                let j = b * BLOCK + jj;
                gz_j.fill(T::zero());
                gel.clear();
                gel.resize(h, T::zero());
                for p in c.range(j) {
                    let k = c.col_edge[p] as usize;
                    // Two-stage prefetch: the per-edge scalars 2·PF ahead, the g_out row of
                    // the destination PF ahead (its dst entry is in cache by then).
                    if let Some(&k2) = c.col_edge.get(p + 2 * PF) {
                        let k2 = k2 as usize;
                        prefetch_row(&gpre[k2 * h..][..h]);
                        if with_out {
                            prefetch_row(&alpha_e[k2 * h..][..h]);
                            prefetch_row(&dst[k2..k2 + 1]);
                        }
                    }
                    if with_out {
                        if let Some(&k1) = c.col_edge.get(p + PF) {
                            prefetch_row(&g_out_rows(up)[dst[k1 as usize] as usize * hf..][..hf]);
                        }
                    }
                    for (hh, gl) in gel.iter_mut().enumerate() {
                        *gl += gpre[k * h + hh];
                    }
                    if let Upstream::Out { g_out, .. } = up {
                        let go = &g_out[dst[k] as usize * hf..][..hf];
                        for hh in 0..h {
                            axpy(
                                &mut gz_j[hh * f..][..f],
                                alpha_e[k * h + hh],
                                &go[hh * f..][..f],
                            );
                        }
                    }
                }
                let zj = &z[j * hf..][..hf];
                for hh in 0..h {
                    let (gl, gr) = (gel[hh], ger[j * h + hh]);
                    let (asrc, adst) = (&a_src[hh * f..][..f], &a_dst[hh * f..][..f]);
                    let (zjh, gzh) = (&zj[hh * f..][..f], &mut gz_j[hh * f..][..f]);
                    let (ps, pd) = part.split_at_mut(hf);
                    let (ps, pd) = (&mut ps[hh * f..][..f], &mut pd[hh * f..][..f]);
                    for x in 0..f {
                        gzh[x] += gl * asrc[x] + gr * adst[x];
                        ps[x] += gl * zjh[x];
                        pd[x] += gr * zjh[x];
                    }
                }
            }
            part
        })
        .collect();
    g_a_src.fill(T::zero());
    g_a_dst.fill(T::zero());
    for part in &partials {
        axpy(g_a_src, T::one(), &part[..hf]);
        axpy(g_a_dst, T::one(), &part[hf..]);
    }
}

// ---- fixed-attention aggregation ---------------------------------------------------------

fn aggregate<T: Float>(x: &AggregateArgs<CpuView>, outputs: &mut [CpuViewMut]) -> Result<()> {
    // alpha[E,H], s[T,N,C], graph → y[T,N,C]
    let [_, h] = dims::<2>(x.alpha);
    let [_, n, c] = dims::<3>(x.s);
    let ch = c / h;
    let alpha = read::<T>(x.alpha)?;
    let s = read::<T>(x.s)?;
    let (g, _) = graph("aggregate", &x.graph, n, false)?;
    let y = write::<T>(&mut outputs[0])?;
    y.par_chunks_mut(c)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, yr)| {
            let (t, i) = (row / n, row % n);
            yr.fill(T::zero());
            let st = &s[t * n * c..(t + 1) * n * c];
            for k in g.edges(i) {
                prefetch_gather(st, g.src, k + PF, c);
                let sr = &st[g.src[k] as usize * c..][..c];
                for hh in 0..h {
                    let o = hh * ch;
                    axpy(&mut yr[o..o + ch], alpha[k * h + hh], &sr[o..o + ch]);
                }
            }
        });
    Ok(())
}

fn aggregate_backward<T: Float>(
    x: &AggregateArgs<CpuView>,
    outputs: &mut [CpuViewMut],
) -> Result<()> {
    // g_y, alpha, s, graph → g_alpha, g_s
    const OP: &str = "aggregate_backward";
    let [_, h] = dims::<2>(x.alpha);
    let [tt, n, c] = dims::<3>(x.s);
    let ch = c / h;
    let gy = read::<T>(required(OP, "g_y", x.grad)?)?;
    let alpha = read::<T>(x.alpha)?;
    let s = read::<T>(x.s)?;
    let (g, csc) = graph(OP, &x.graph, n, true)?;
    let (o_ga, o_gs) = super::two(outputs);
    let g_alpha = write::<T>(o_ga)?;
    let g_s = write::<T>(o_gs)?;
    let dst = g.dst();
    // g_s[t, j, :] = Σ_{k out of j} α_k g_y[t, dst_k, :] (per head), in CSC order.
    g_s.par_chunks_mut(c)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, gr)| {
            let (t, j) = (row / n, row % n);
            gr.fill(T::zero());
            let gyt = &gy[t * n * c..(t + 1) * n * c];
            for p in csc.range(j) {
                let k = csc.col_edge[p] as usize;
                if let Some(&k2) = csc.col_edge.get(p + 2 * PF) {
                    prefetch_row(&dst[k2 as usize..k2 as usize + 1]);
                    prefetch_row(&alpha[k2 as usize * h..][..h]);
                }
                if let Some(&k1) = csc.col_edge.get(p + PF) {
                    prefetch_row(&gyt[dst[k1 as usize] as usize * c..][..c]);
                }
                let gyr = &gyt[dst[k] as usize * c..][..c];
                for hh in 0..h {
                    let o = hh * ch;
                    axpy(&mut gr[o..o + ch], alpha[k * h + hh], &gyr[o..o + ch]);
                }
            }
        });
    // g_alpha[k, h] = Σ_t ⟨g_y[t, dst_k, h-channels], s[t, src_k, h-channels]⟩.
    g_alpha
        .par_chunks_mut(h)
        .enumerate()
        .with_min_len(256)
        .for_each(|(k, ga)| {
            let (i, j) = (dst[k] as usize, g.src[k] as usize);
            if let Some(&j2) = g.src.get(k + PF) {
                for t in 0..tt {
                    prefetch_row(&s[(t * n + j2 as usize) * c..][..c]);
                }
            }
            for (hh, out) in ga.iter_mut().enumerate() {
                let mut acc = T::zero();
                for t in 0..tt {
                    let o = hh * ch;
                    acc += dot(
                        &gy[(t * n + i) * c + o..][..ch],
                        &s[(t * n + j) * c + o..][..ch],
                    );
                }
                *out = acc;
            }
        });
    Ok(())
}
