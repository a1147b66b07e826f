//! CUDA: the InfoNCE family (`src/ops/infonce.rs`) on `kernels/infonce.cu`: tiled, log-sum-exp
//! only (the B×B logits never exist in memory). f32 only.

use super::launch::{unsupported, Inputs, Kernels, Output};
use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::infonce::InfoNceBackwardArgs;
use crate::ops::{InfoNceAttrs, Op};
use crate::tensor::DType;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let backward_args = match op {
        Op::InfoNceBackward(_) => Some(InfoNceBackwardArgs::of(op.name(), ins)?),
        _ => None,
    };
    let a = backward_args.as_ref().map_or(&ins[0], |x| x.a);
    if a.dtype != DType::F32 {
        return Err(unsupported(op, "the tiled InfoNCE kernels are f32 only"));
    }
    let k = Kernels::typed(be, op, DType::F32);
    let (b, d) = (a.shape.at(0), a.shape.at(1));
    if b == 0 {
        return Err(Error::shape(op.name(), "the batch is empty (B = 0)"));
    }
    k.to_int("B*D", b * d)?;
    match (op, backward_args) {
        (Op::InfoNce(at), _) => forward(&k, at, b, d, ins, outs),
        (Op::InfoNceBackward(at), Some(x)) => backward(&k, at, b, d, &x, outs),
        (other, _) => Err(Error::graph(format!(
            "{} is not an InfoNCE op",
            other.name()
        ))),
    }
}

/// (row tiles, column splits KS) of the InfoNCE tile grid: enough blocks for two per SM.
fn tile_grid(be: &CudaBackend, b: usize) -> (usize, usize) {
    let row_tiles = b.div_ceil(64);
    let splits = (2 * be.sm_count as usize)
        .div_ceil(row_tiles)
        .clamp(1, row_tiles.min(65535));
    (row_tiles, splits)
}

/// a[B,D], p[B,D], logit_scale[] → loss[], lse_row[B], lse_col[B]
fn forward(
    k: &Kernels,
    at: &InfoNceAttrs,
    b: usize,
    d: usize,
    ins: Inputs,
    outs: &[Output],
) -> Result<()> {
    let (row_tiles, splits) = tile_grid(k.be, b);
    let s = k.be.scratch(&[splits * b * 4, splits * b * 4, b * 4])?;
    let (a, p, scale) = (ins[0].buf.ptr, ins[1].buf.ptr, ins[2].buf.ptr);
    let (loss, lse_row, lse_col) = (outs[0].ptr, outs[1].ptr, outs[2].ptr);
    let sides: &[(u64, u64, u64)] = if at.symmetric {
        &[(a, p, lse_row), (p, a, lse_col)]
    } else {
        &[(a, p, lse_row)]
    };
    for &(x, y, lse) in sides {
        k.grid("infonce_lse_partial", row_tiles, splits)
            .ptr(x)
            .ptr(y)
            .ptr(scale)
            .ptr(s[0])
            .ptr(s[1])
            .dim("B", b)
            .dim("D", d)
            .run()?;
        k.flat("infonce_lse_merge", b)
            .ptr(s[0])
            .ptr(s[1])
            .ptr(lse)
            .dim("B", b)
            .dim("KS", splits)
            .run()?;
    }
    k.warps("infonce_diag", b)
        .ptr(a)
        .ptr(p)
        .ptr(scale)
        .ptr(s[2])
        .dim("B", b)
        .dim("D", d)
        .run()?;
    k.grid("infonce_loss", 1, 1)
        .ptr(lse_row)
        .ptr(if at.symmetric { lse_col } else { 0 })
        .ptr(s[2])
        .ptr(loss)
        .dim("B", b)
        .run()
}

/// g_loss, a, p, logit_scale, lse_row, lse_col (, g_lse_row, g_lse_col) → ga, gp, g_scale
fn backward(
    k: &Kernels,
    at: &InfoNceAttrs,
    b: usize,
    d: usize,
    x: &InfoNceBackwardArgs<View<CudaBuffer>>,
    outs: &[Output],
) -> Result<()> {
    let (row_tiles, splits) = tile_grid(k.be, b);
    let s = k.be.scratch(&[
        if splits > 1 { splits * b * d * 4 } else { 4 },
        row_tiles * splits * 4,
    ])?;
    let (g_loss, a, p, scale, lse_row, lse_col) = (
        x.g_loss.buf.ptr,
        x.a.buf.ptr,
        x.p.buf.ptr,
        x.logit_scale.buf.ptr,
        x.lse_row.buf.ptr,
        x.lse_col.buf.ptr,
    );
    let (g_lse_row, g_lse_col) = x.g_lse.map_or((0, 0), |(r, c)| (r.buf.ptr, c.buf.ptr));
    /// One direction of the backward: the kernel's (X, Y, lse_x, lse_y, g_lse_x, g_lse_y),
    /// the gradient it writes, whether it also writes the logit-scale partials, and its mode.
    struct Side {
        x: u64,
        y: u64,
        lse: (u64, u64),
        g_lse: (u64, u64),
        out: u64,
        g_scale: bool,
        mode: i32,
    }
    let sides = if at.symmetric {
        [
            Side {
                x: a,
                y: p,
                lse: (lse_row, lse_col),
                g_lse: (g_lse_row, g_lse_col),
                out: outs[0].ptr,
                g_scale: true,
                mode: 0,
            },
            Side {
                x: p,
                y: a,
                lse: (lse_col, lse_row),
                g_lse: (g_lse_col, g_lse_row),
                out: outs[1].ptr,
                g_scale: false,
                mode: 0,
            },
        ]
    } else {
        [
            Side {
                x: a,
                y: p,
                lse: (lse_row, 0),
                g_lse: (g_lse_row, 0),
                out: outs[0].ptr,
                g_scale: true,
                mode: 1,
            },
            Side {
                x: p,
                y: a,
                lse: (0, lse_row),
                g_lse: (0, g_lse_row),
                out: outs[1].ptr,
                g_scale: false,
                mode: 2,
            },
        ]
    };
    for side in sides {
        let target = if splits > 1 { s[0] } else { side.out };
        k.grid("infonce_bwd", row_tiles, splits)
            .ptr(side.x)
            .ptr(side.y)
            .ptr(side.lse.0)
            .ptr(side.lse.1)
            .ptr(side.g_lse.0)
            .ptr(side.g_lse.1)
            .ptr(scale)
            .ptr(g_loss)
            .ptr(target)
            .ptr(if side.g_scale { s[1] } else { 0 })
            .dim("B", b)
            .dim("D", d)
            .int(side.mode)
            .run()?;
        if splits > 1 {
            k.flat("infonce_sum_parts", b * d)
                .ptr(s[0])
                .ptr(side.out)
                .dim("KS", splits)
                .dim("B*D", b * d)
                .run()?;
        }
    }
    k.grid("infonce_gscale", 1, 1)
        .ptr(s[1])
        .dim("partials", row_tiles * splits)
        .ptr(scale)
        .ptr(outs[2].ptr)
        .run()
}
