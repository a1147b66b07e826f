//! CUDA: the GAT family (`src/ops/gat.rs`) on `kernels/gat.cu`: the fused edge-softmax
//! attention (one warp per destination node and head) and the fixed-attention aggregation.
//! Inputs are named by the ops' typed signatures (`GatArgs`, `AggregateArgs`).

use super::launch::{row_chunks, Inputs, Kernels, Output};
use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::gat::{required, validate_csc, validate_csr, AggregateArgs, GatArgs, GraphArgs};
use crate::ops::{GatAttrs, Op};
use crate::tensor::DType;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let k = Kernels::float(be, op, outs[0].dtype)?;
    match op {
        Op::Gat(at) => forward(&k, op, at, &GatArgs::of(op, ins)?, outs),
        Op::GatAlpha(at) => alpha(&k, op, at, &GatArgs::of(op, ins)?, outs),
        Op::GatBackward(at) | Op::GatAlphaBackward(at) => {
            backward(&k, op, at, &GatArgs::of(op, ins)?, outs)
        }
        Op::Aggregate => aggregate(&k, op, &AggregateArgs::of(op, ins)?, outs),
        Op::AggregateBackward => aggregate_backward(&k, op, &AggregateArgs::of(op, ins)?, outs),
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
        g: &GraphArgs<View<CudaBuffer>>,
        with_csc: bool,
    ) -> Result<()> {
        let (row_ptr, src) = (g.row_ptr, g.src);
        if !(Self::has_host(row_ptr) && Self::has_host(src)) {
            return Ok(());
        }
        let csc = Some((g.col_ptr, g.col_edge))
            .filter(|(cp, ce)| with_csc && Self::has_host(cp) && Self::has_host(ce));
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

/// The named inputs of a GAT form and of an aggregation.
type Args<'a, 'b> = GatArgs<'a, View<'b, CudaBuffer>>;
type AggArgs<'a, 'b> = AggregateArgs<'a, View<'b, CudaBuffer>>;

/// [N, H, F] (or [T, N, C]) of a rank-3 input.
fn dims3(v: &View<CudaBuffer>) -> [usize; 3] {
    let d = v.shape.dims();
    [d[0], d[1], d[2]]
}

/// The device address of the edge bias, or nullptr.
fn edge_bias_ptr(x: &Args) -> u64 {
    x.edge_bias.map_or(0, |v| v.buf.ptr)
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
    let [n, h, f] = dims3(z);
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

/// z, a_src, a_dst (, be), graph → out[N,H,F], lse[N,H]
fn forward(k: &Kernels, op: &Op, at: &GatAttrs, x: &Args, outs: &[Output]) -> Result<()> {
    let [n, h, f] = dims3(x.z);
    k.be.check_graph(op.name(), n, &x.graph, false)?;
    if n * h == 0 {
        return Ok(());
    }
    k.to_int("N*H*F", n * h * f.max(1))?;
    let nh = n * h * k.acc_bytes();
    let s = k.be.scratch(&[nh, nh])?;
    el_er(k, x.z, x.a_src.buf.ptr, x.a_dst.buf.ptr, s[0], s[1])?;
    k.warps("gat_fwd", n * h)
        .input(x.z)
        .ptr(s[0])
        .ptr(s[1])
        .ptr(edge_bias_ptr(x))
        .input(x.graph.row_ptr)
        .input(x.graph.src)
        .ptr(outs[0].ptr)
        .ptr(outs[1].ptr)
        .dim("N", n)
        .dim("H", h)
        .dim("F", f)
        .scalar(at.negative_slope)
        .run()
}

/// z, a_src, a_dst (, be), lse, graph → alpha[E,H]
fn alpha(k: &Kernels, op: &Op, at: &GatAttrs, x: &Args, outs: &[Output]) -> Result<()> {
    let [n, h, _] = dims3(x.z);
    let lse = required(op.name(), "lse", x.lse)?;
    k.be.check_graph(op.name(), n, &x.graph, false)?;
    let e = x.graph.src.shape.numel();
    if e * h == 0 || n == 0 {
        return Ok(());
    }
    k.to_int("E*H", e * h)?;
    let nh = n * h * k.acc_bytes();
    let s = k.be.scratch(&[nh, nh])?;
    el_er(k, x.z, x.a_src.buf.ptr, x.a_dst.buf.ptr, s[0], s[1])?;
    k.flat("gat_alpha_fwd", e * h)
        .ptr(s[0])
        .ptr(s[1])
        .ptr(edge_bias_ptr(x))
        .input(lse)
        .input(x.graph.row_ptr)
        .input(x.graph.src)
        .ptr(outs[0].ptr)
        .dim("N", n)
        .dim("E", e)
        .dim("H", h)
        .scalar(at.negative_slope)
        .run()
}

/// GatBackward (g_out, z, a_src, a_dst (, be), out, lse, row_ptr, src, col_ptr, col_edge)
/// and GatAlphaBackward (g_alpha, alpha, z, a_src, a_dst (, be), row_ptr, src, col_ptr,
/// col_edge) → gz, g_a_src, g_a_dst (, g_be). gpre doubles as g_be on f32 / f64; on half
/// storage gpre stays f32 scratch (gz and the parameter gradients read it unrounded) and is
/// rounded into g_be once (a cast).
fn backward(k: &Kernels, op: &Op, at: &GatAttrs, x: &Args, outs: &[Output]) -> Result<()> {
    let name = op.name();
    let z = x.z;
    let (a_src, a_dst) = (x.a_src.buf.ptr, x.a_dst.buf.ptr);
    let be = edge_bias_ptr(x);
    let GraphArgs {
        row_ptr,
        src,
        col_ptr,
        col_edge,
    } = x.graph;
    let [n, h, f] = dims3(z);
    let e = src.shape.numel();
    let hf = h * f;
    let (g_z, g_a_src, g_a_dst) = (outs[0].ptr, outs[1].ptr, outs[2].ptr);
    let grad = required(name, "the upstream gradient", x.grad)?;
    k.be.check_graph(name, n, &x.graph, true)?;
    if n * h == 0 {
        k.be.memset0(g_a_src, hf * k.elem_bytes())?;
        k.be.memset0(g_a_dst, hf * k.elem_bytes())?;
        return Ok(());
    }
    k.to_int("N*H*F", n * hf)?;
    k.to_int("E*H", e * h)?;
    let (per_chunk, chunks) = row_chunks(n);
    // Scratch holds the kernels' arithmetic type T (f32 for half storage).
    let nh = n * h * k.acc_bytes();
    let eh = e * h * k.acc_bytes();
    // el, er, ger, gel, alpha (GatBackward), gpre (unless it is g_be), partials
    let s =
        k.be.scratch(&[nh, nh, nh, nh, eh, eh, 2 * chunks * hf * k.acc_bytes()])?;
    let (el, er, ger, gel, partials) = (s[0], s[1], s[2], s[3], s[6]);
    // gpre (T) is g_be itself where the storage is the arithmetic type (f32, f64); on half
    // storage it stays in scratch and is rounded into g_be after pass 1.
    let g_be = at.edge_bias.then(|| outs[3].ptr);
    let half = outs[0].dtype.is_half();
    let gpre = g_be.filter(|_| !half).unwrap_or(s[5]);
    el_er(k, z, a_src, a_dst, el, er)?;
    let (alpha, g_out) = if let Some(alpha) = x.alpha {
        // GatAlphaBackward: the upstream gradient is g_alpha.
        k.warps("gat_alpha_bwd_dst", n * h)
            .input(alpha)
            .input(grad)
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
        // no aggregation term: gat_bwd_src reads no alpha
        (0, 0)
    } else {
        let (out, lse) = (required(name, "out", x.out)?, required(name, "lse", x.lse)?);
        if e > 0 {
            k.warps("gat_bwd_dst", n * h)
                .input(grad)
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
        (s[4], grad.buf.ptr)
    };
    if let Some(g_be) = g_be.filter(|_| half) {
        super::basic::cast(k.be, op, gpre, DType::F32, g_be, outs[3].dtype, e * h)?;
    }
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
    if h == 0 || !c.is_multiple_of(h) {
        return Err(Error::shape(
            op.name(),
            format!("C = {c} is not a multiple of H = {h}"),
        ));
    }
    Ok(())
}

/// The aggregation kernel `base` for the spikes' storage: `<base>_u8s` reads u8 spikes.
fn for_spikes(base: &str, s: &View<CudaBuffer>) -> String {
    match s.dtype {
        DType::U8 => format!("{base}_u8s"),
        _ => base.to_string(),
    }
}

/// alpha[E,H], s[T,N,C] (float or u8 spikes), graph → y[T,N,C]
fn aggregate(k: &Kernels, op: &Op, x: &AggArgs, outs: &[Output]) -> Result<()> {
    let h = x.alpha.shape.at(1);
    let [steps, n, c] = dims3(x.s);
    k.be.check_graph(op.name(), n, &x.graph, false)?;
    if steps * n * c == 0 {
        return Ok(());
    }
    heads(op, h, c)?;
    k.to_int("T*N*C", steps * n * c)?;
    k.warps(&for_spikes("agg_fwd", x.s), steps * n)
        .input(x.alpha)
        .input(x.s)
        .input(x.graph.row_ptr)
        .input(x.graph.src)
        .ptr(outs[0].ptr)
        .dim("T", steps)
        .dim("N", n)
        .dim("C", c)
        .dim("H", h)
        .run()
}

/// g_y, alpha, s, row_ptr, src, col_ptr, col_edge → g_alpha[E,H], g_s[T,N,C]
fn aggregate_backward(k: &Kernels, op: &Op, x: &AggArgs, outs: &[Output]) -> Result<()> {
    let (alpha, s) = (x.alpha, x.s);
    let g_y = required(op.name(), "g_y", x.grad)?;
    let GraphArgs {
        row_ptr,
        src,
        col_ptr,
        col_edge,
    } = x.graph;
    let (e, h) = (alpha.shape.at(0), alpha.shape.at(1));
    let [steps, n, c] = dims3(s);
    k.be.check_graph(op.name(), n, &x.graph, true)?;
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
        k.warps(&for_spikes("agg_bwd_alpha", s), n * h)
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
