//! CUDA: the norm family (`src/ops/norm.rs`) on `kernels/norm.cu`.

use super::launch::{row_chunks, Inputs, Kernels, Output};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::ops::Op;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let k = Kernels::float(be, op, outs[0].dtype)?;
    let y = outs[0].ptr;
    match op {
        Op::LayerNorm { eps, .. } => {
            let (rows, c) = (ins[0].shape.rows(), ins[0].shape.last());
            k.warps("layernorm_fwd", rows)
                .input(&ins[0])
                .input(&ins[1])
                .input(&ins[2])
                .ptr(y)
                .ptr(outs[1].ptr)
                .ptr(outs[2].ptr)
                .dim("R", rows)
                .dim("C", c)
                .scalar(*eps)
                .run()
        }
        // The row stride fixes the CPU's order of addition for γ and β only (its rows are
        // then summed as the long batch's); here they are summed by chunks of rows alone.
        Op::LayerNormBackward { .. } => {
            // g, x, gamma, mean, rstd -> gx, ggamma, gbeta
            let (g, x, gamma, mean, rstd) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]);
            let (rows, c) = (x.shape.rows(), x.shape.last());
            let (g_gamma, g_beta) = (outs[1].ptr, outs[2].ptr);
            if rows == 0 {
                be.memset0(g_gamma, c * k.elem_bytes())?;
                return be.memset0(g_beta, c * k.elem_bytes());
            }
            k.warps("layernorm_bwd", rows)
                .input(x)
                .input(g)
                .input(gamma)
                .input(mean)
                .input(rstd)
                .ptr(y)
                .dim("R", rows)
                .dim("C", c)
                .run()?;
            if c == 0 {
                return Ok(());
            }
            let (per_chunk, chunks) = row_chunks(rows);
            let s = be.scratch(&[2 * chunks * c * k.acc_bytes()])?;
            k.grid("layernorm_bwd_params_partial", c.div_ceil(256), chunks)
                .input(x)
                .input(g)
                .input(mean)
                .input(rstd)
                .ptr(s[0])
                .dim("R", rows)
                .dim("C", c)
                .dim("rows_per_chunk", per_chunk)
                .run()?;
            k.flat("layernorm_bwd_params_final", c)
                .ptr(s[0])
                .ptr(g_gamma)
                .ptr(g_beta)
                .dim("chunks", chunks)
                .dim("C", c)
                .run()
        }
        Op::L2Normalize { eps } => {
            let (rows, c) = (ins[0].shape.rows(), ins[0].shape.last());
            if c == 0 {
                // rows of nothing (`rows()` counts none): each norm is 0, as on the CPU
                let norm = &outs[1];
                return be.memset0(norm.ptr, norm.shape.numel() * norm.dtype.size());
            }
            k.warps("l2norm_fwd", rows)
                .input(&ins[0])
                .ptr(y)
                .ptr(outs[1].ptr)
                .dim("R", rows)
                .dim("C", c)
                .scalar(*eps)
                .run()
        }
        Op::L2NormalizeBackward { eps } => {
            // g, y, norm -> gx
            let (rows, c) = (ins[1].shape.rows(), ins[1].shape.last());
            k.warps("l2norm_bwd", rows)
                .input(&ins[0])
                .input(&ins[1])
                .input(&ins[2])
                .ptr(y)
                .dim("R", rows)
                .dim("C", c)
                .scalar(*eps)
                .run()
        }
        Op::MaskedSoftmax => {
            // x[B, G, L], keep[B, L]
            let d = ins[0].shape.dims();
            let (rows, c) = (ins[0].shape.rows(), ins[0].shape.last());
            let groups = if d.len() >= 3 { d[d.len() - 2] } else { 1 };
            if c == 0 {
                return Ok(());
            }
            k.warps("softmax_fwd", rows)
                .input(&ins[0])
                .input(&ins[1])
                .ptr(y)
                .dim("R", rows)
                .dim("C", c)
                .dim("G", groups.max(1))
                .scalar(1.0)
                .run()
        }
        Op::MaskedSoftmaxBackward => {
            // g, y -> gx
            let (rows, c) = (ins[1].shape.rows(), ins[1].shape.last());
            if c == 0 {
                return Ok(());
            }
            k.warps("softmax_bwd", rows)
                .input(&ins[1])
                .input(&ins[0])
                .ptr(y)
                .dim("R", rows)
                .dim("C", c)
                .scalar(1.0)
                .run()
        }
        other => Err(Error::graph(format!("{} is not a norm op", other.name()))),
    }
}
