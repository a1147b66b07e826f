//! CUDA: the GAT family (`src/ops/gat.rs`) on `kernels/gat.cu`: the fused edge-softmax
//! attention (one warp per destination node and head) and the fixed-attention aggregation.
//!
//! Inputs are located by position from the front, so the GAT ops accept both the CSR-only and
//! the CSR+CSC input lists of their forward ops.

use super::launch::{row_chunks, Inputs, Kernels, Output};
use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::gat::{validate_csc, validate_csr};
use crate::ops::{GatAttrs, Op};

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let k = Kernels::float(be, op, outs[0].dtype)?;
    match op {
        Op::Gat(at) => forward(&k, op, at, ins, outs),
        Op::GatAlpha(at) => alpha(&k, op, at, ins, outs),
        Op::GatBackward(at) | Op::GatAlphaBackward(at) => backward(&k, op, at, ins, outs),
        Op::Aggregate => aggregate(&k, op, ins, outs),
        Op::AggregateBackward => aggregate_backward(&k, op, ins, outs),
        other => Err(Error::graph(format!("{} is not a GAT op", other.name()))),
    }
}

impl CudaBackend {
    /// Validates a CSR (and CSC) on the host with the ops' rules when the index inputs have
    /// host copies, once per upload: the O(E) host pass cost more than the GAT kernels
    /// themselves on an H200.
    fn check_graph(
        &self,
        op: &'static str,
        n: usize,
        row_ptr: &View<CudaBuffer>,
        src: &View<CudaBuffer>,
        csc: Option<(&View<CudaBuffer>, &View<CudaBuffer>)>,
    ) -> Result<()> {
        if !(Self::has_host(row_ptr) && Self::has_host(src)) {
            return Ok(());
        }
        let csc = csc.filter(|(cp, ce)| Self::has_host(cp) && Self::has_host(ce));
        let csc_stamps = csc.map_or((0, 0), |(cp, ce)| (cp.buf.stamp, ce.buf.stamp));
        // The edge count is part of the key: the same buffers can be viewed at another length.
        let key = [
            n as u64,
            src.shape.numel() as u64,
            row_ptr.buf.stamp,
            src.buf.stamp,
            csc_stamps.0,
            csc_stamps.1,
        ];
        let mut seen = self
            .checked_graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A check with the CSC also covers the same CSR without it.
        if seen
            .iter()
            .any(|k| k[..4] == key[..4] && (csc.is_none() || k[4..] == key[4..]))
        {
            return Ok(());
        }
        let src_host = self.host_i32(src)?;
        validate_csr(op, n, &self.host_i32(row_ptr)?, &src_host)?;
        if let Some((cp, ce)) = csc {
            validate_csc(op, n, &src_host, &self.host_i32(cp)?, &self.host_i32(ce)?)?;
        }
        if seen.len() >= 16 {
            seen.remove(0);
        }
        seen.push(key);
        Ok(())
    }
}

/// el, er [N,H] into scratch.
fn el_er(
    k: &Kernels,
    z: &View<CudaBuffer>,
    a_src: u64,
    a_dst: u64,
    el: u64,
    er: u64,
) -> Result<()> {
    let d = z.shape.dims();
    let (n, h, f) = (d[0], d[1], d[2]);
    k.warps("gat_el_er", n * h)
        .input(z)
        .ptr(a_src)
        .ptr(a_dst)
        .ptr(el)
        .ptr(er)
        .dim("N", n)
        .dim("H", h)
        .dim("F", f)
        .run()
}

/// z, a_src, a_dst (, be), row_ptr, src (, col_ptr, col_edge) → out[N,H,F], lse[N,H]
fn forward(k: &Kernels, op: &Op, at: &GatAttrs, ins: Inputs, outs: &[Output]) -> Result<()> {
    let eb = at.edge_bias as usize;
    let d = ins[0].shape.dims();
    let (n, h, f) = (d[0], d[1], d[2]);
    let (row_ptr, src) = (&ins[3 + eb], &ins[4 + eb]);
    k.be.check_graph(op.name(), n, row_ptr, src, None)?;
    if n * h == 0 {
        return Ok(());
    }
    k.to_int("N*H*F", n * h * f.max(1))?;
    let nh = n * h * k.elem_bytes();
    let s = k.be.scratch(&[nh, nh])?;
    el_er(k, &ins[0], ins[1].buf.ptr, ins[2].buf.ptr, s[0], s[1])?;
    let be = if at.edge_bias { ins[3].buf.ptr } else { 0 };
    k.warps("gat_fwd", n * h)
        .input(&ins[0])
        .ptr(s[0])
        .ptr(s[1])
        .ptr(be)
        .input(row_ptr)
        .input(src)
        .ptr(outs[0].ptr)
        .ptr(outs[1].ptr)
        .dim("N", n)
        .dim("H", h)
        .dim("F", f)
        .scalar(at.negative_slope)
        .run()
}

/// z, a_src, a_dst (, be), lse, row_ptr, src (, col_ptr, col_edge) → alpha[E,H]
fn alpha(k: &Kernels, op: &Op, at: &GatAttrs, ins: Inputs, outs: &[Output]) -> Result<()> {
    let eb = at.edge_bias as usize;
    let d = ins[0].shape.dims();
    let (n, h) = (d[0], d[1]);
    let (lse, row_ptr, src) = (&ins[3 + eb], &ins[4 + eb], &ins[5 + eb]);
    k.be.check_graph(op.name(), n, row_ptr, src, None)?;
    let e = src.shape.numel();
    if e * h == 0 || n == 0 {
        return Ok(());
    }
    k.to_int("E*H", e * h)?;
    let nh = n * h * k.elem_bytes();
    let s = k.be.scratch(&[nh, nh])?;
    el_er(k, &ins[0], ins[1].buf.ptr, ins[2].buf.ptr, s[0], s[1])?;
    let be = if at.edge_bias { ins[3].buf.ptr } else { 0 };
    k.flat("gat_alpha_fwd", e * h)
        .ptr(s[0])
        .ptr(s[1])
        .ptr(be)
        .input(lse)
        .input(row_ptr)
        .input(src)
        .ptr(outs[0].ptr)
        .dim("N", n)
        .dim("E", e)
        .dim("H", h)
        .scalar(at.negative_slope)
        .run()
}

/// GatBackward (g_out, z, a_src, a_dst (, be), out, lse, row_ptr, src, col_ptr, col_edge)
/// and GatAlphaBackward (g_alpha, alpha, z, a_src, a_dst (, be), row_ptr, src, col_ptr,
/// col_edge) → gz, g_a_src, g_a_dst (, g_be). gpre doubles as g_be.
fn backward(k: &Kernels, op: &Op, at: &GatAttrs, ins: Inputs, outs: &[Output]) -> Result<()> {
    let alpha_mode = matches!(op, Op::GatAlphaBackward(_));
    let eb = at.edge_bias as usize;
    let (zi, gi) = if alpha_mode { (2, 5 + eb) } else { (1, 6 + eb) };
    let z = &ins[zi];
    let (a_src, a_dst) = (ins[zi + 1].buf.ptr, ins[zi + 2].buf.ptr);
    let be = if at.edge_bias { ins[zi + 3].buf.ptr } else { 0 };
    let (row_ptr, src, col_ptr, col_edge) = (&ins[gi], &ins[gi + 1], &ins[gi + 2], &ins[gi + 3]);
    let d = z.shape.dims();
    let (n, h, f) = (d[0], d[1], d[2]);
    let e = src.shape.numel();
    let hf = h * f;
    let (g_z, g_a_src, g_a_dst) = (outs[0].ptr, outs[1].ptr, outs[2].ptr);
    k.be.check_graph(op.name(), n, row_ptr, src, Some((col_ptr, col_edge)))?;
    if n * h == 0 {
        k.be.memset0(g_a_src, hf * k.elem_bytes())?;
        k.be.memset0(g_a_dst, hf * k.elem_bytes())?;
        return Ok(());
    }
    k.to_int("N*H*F", n * hf)?;
    k.to_int("E*H", e * h)?;
    let (per_chunk, chunks) = row_chunks(n);
    let nh = n * h * k.elem_bytes();
    let eh = e * h * k.elem_bytes();
    // el, er, ger, gel, alpha (forward mode), gpre (without edge bias), partials
    let s =
        k.be.scratch(&[nh, nh, nh, nh, eh, eh, 2 * chunks * hf * k.elem_bytes()])?;
    let (el, er, ger, gel, partials) = (s[0], s[1], s[2], s[3], s[6]);
    let gpre = if at.edge_bias { outs[3].ptr } else { s[5] };
    el_er(k, z, a_src, a_dst, el, er)?;
    let (alpha, g_out) = if alpha_mode {
        k.warps("gat_alpha_bwd_dst", n * h)
            .input(&ins[1])
            .input(&ins[0])
            .ptr(el)
            .ptr(er)
            .ptr(be)
            .input(row_ptr)
            .input(src)
            .ptr(gpre)
            .ptr(ger)
            .dim("N", n)
            .dim("H", h)
            .scalar(at.negative_slope)
            .run()?;
        (ins[1].buf.ptr, 0)
    } else {
        let (out, lse) = (&ins[4 + eb], &ins[5 + eb]);
        if e > 0 {
            k.warps("gat_bwd_dst", n * h)
                .input(&ins[0])
                .input(z)
                .input(out)
                .ptr(el)
                .ptr(er)
                .ptr(be)
                .input(lse)
                .input(row_ptr)
                .input(src)
                .ptr(s[4])
                .ptr(gpre)
                .ptr(ger)
                .dim("N", n)
                .dim("H", h)
                .dim("F", f)
                .scalar(at.negative_slope)
                .run()?;
        } else {
            k.be.memset0(ger, nh)?;
        }
        (s[4], ins[0].buf.ptr)
    };
    k.warps("gat_bwd_src", n * h)
        .ptr(g_out)
        .ptr(alpha)
        .ptr(gpre)
        .ptr(ger)
        .ptr(a_src)
        .ptr(a_dst)
        .input(row_ptr)
        .input(col_ptr)
        .input(col_edge)
        .ptr(g_z)
        .ptr(gel)
        .dim("N", n)
        .dim("H", h)
        .dim("F", f)
        .run()?;
    if hf == 0 {
        return Ok(());
    }
    k.grid("gat_ga_partial", hf.div_ceil(256), chunks)
        .input(z)
        .ptr(gel)
        .ptr(ger)
        .ptr(partials)
        .dim("N", n)
        .dim("H", h)
        .dim("F", f)
        .dim("rows_per_chunk", per_chunk)
        .run()?;
    k.flat("gat_ga_final", hf)
        .ptr(partials)
        .ptr(g_a_src)
        .ptr(g_a_dst)
        .dim("chunks", chunks)
        .dim("H*F", hf)
        .run()
}

/// The head count and channels of an aggregation, checked: C must split into H heads.
fn heads(op: &Op, h: usize, c: usize) -> Result<()> {
    if h == 0 || c % h != 0 {
        return Err(Error::shape(
            op.name(),
            format!("C = {c} is not a multiple of H = {h}"),
        ));
    }
    Ok(())
}

/// alpha[E,H], s[T,N,C], row_ptr, src (, col_ptr, col_edge) → y[T,N,C]
fn aggregate(k: &Kernels, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let h = ins[0].shape.dim(1);
    let d = ins[1].shape.dims();
    let (steps, n, c) = (d[0], d[1], d[2]);
    k.be.check_graph(op.name(), n, &ins[2], &ins[3], None)?;
    if steps * n * c == 0 {
        return Ok(());
    }
    heads(op, h, c)?;
    k.to_int("T*N*C", steps * n * c)?;
    k.warps("agg_fwd", steps * n)
        .input(&ins[0])
        .input(&ins[1])
        .input(&ins[2])
        .input(&ins[3])
        .ptr(outs[0].ptr)
        .dim("T", steps)
        .dim("N", n)
        .dim("C", c)
        .dim("H", h)
        .run()
}

/// g_y, alpha, s, row_ptr, src, col_ptr, col_edge → g_alpha[E,H], g_s[T,N,C]
fn aggregate_backward(k: &Kernels, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let (g_y, alpha, s) = (&ins[0], &ins[1], &ins[2]);
    let (row_ptr, src, col_ptr, col_edge) = (&ins[3], &ins[4], &ins[5], &ins[6]);
    let (e, h) = (alpha.shape.dim(0), alpha.shape.dim(1));
    let d = s.shape.dims();
    let (steps, n, c) = (d[0], d[1], d[2]);
    k.be.check_graph(op.name(), n, row_ptr, src, Some((col_ptr, col_edge)))?;
    heads(op, h, c)?;
    k.to_int("T*N*C", steps * n * c)?;
    if steps * n * c > 0 {
        k.warps("agg_bwd_s", steps * n)
            .input(alpha)
            .input(g_y)
            .input(row_ptr)
            .input(col_ptr)
            .input(col_edge)
            .ptr(outs[1].ptr)
            .dim("T", steps)
            .dim("N", n)
            .dim("C", c)
            .dim("H", h)
            .run()?;
    }
    if e * h > 0 && n > 0 {
        k.warps("agg_bwd_alpha", n * h)
            .input(g_y)
            .input(s)
            .input(row_ptr)
            .input(src)
            .ptr(outs[0].ptr)
            .dim("T", steps)
            .dim("N", n)
            .dim("C", c)
            .dim("H", h)
            .run()?;
    }
    Ok(())
}
