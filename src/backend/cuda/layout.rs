//! CUDA: the layout family (`src/ops/layout.rs`) on `kernels/layout.cu`.

use super::launch::{unsupported, Inputs, Kernels, Output, PermMeta};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::ops::index::{group_positions, validate_indices};
use crate::ops::Op;
use crate::tensor::Shape;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let y = &outs[0];
    match op {
        Op::Reshape(_) => be.copy_d2d(y.ptr, ins[0].buf.ptr, y.shape.numel() * y.dtype.size()),
        Op::Permute(perm) => permute(be, op, perm, ins, y),
        Op::Concat { axis } => {
            let (outer, total, inner) = split(&y.shape, *axis);
            let k = Kernels::words(be, op, y.dtype);
            let mut offset = 0usize;
            for v in ins {
                let width = v.shape.at(*axis) * inner;
                copy_cols(
                    &k,
                    v.buf.ptr,
                    y.ptr,
                    outer,
                    width,
                    (width, 0),
                    (total * inner, offset * inner),
                )?;
                offset += v.shape.at(*axis);
            }
            Ok(())
        }
        Op::Slice { axis, start, len } => {
            let (outer, d, inner) = split(ins[0].shape, *axis);
            copy_cols(
                &Kernels::words(be, op, y.dtype),
                ins[0].buf.ptr,
                y.ptr,
                outer,
                len * inner,
                (d * inner, start * inner),
                (len * inner, 0),
            )
        }
        Op::SliceBackward { axis, start, full } => {
            let (outer, d, inner) = split(full, *axis);
            let len = ins[0].shape.at(*axis);
            be.memset0(y.ptr, full.numel() * y.dtype.size())?;
            copy_cols(
                &Kernels::words(be, op, y.dtype),
                ins[0].buf.ptr,
                y.ptr,
                outer,
                len * inner,
                (len * inner, 0),
                (d * inner, start * inner),
            )
        }
        Op::Gather => {
            let k = Kernels::words(be, op, y.dtype);
            let (rows, c) = (ins[0].shape.at(0), ins[0].shape.at(1));
            let n = ins[1].shape.numel();
            if CudaBackend::has_host(&ins[1]) {
                validate_indices(op.name(), &be.host_i32(&ins[1])?, rows)?;
            }
            k.flat("embed_fwd", n * c)
                .input(&ins[0])
                .input(&ins[1])
                .ptr(y.ptr)
                .dim("K", n)
                .dim("C", c)
                .dim("rows", rows)
                .run()
        }
        Op::ScatterAdd { rows } => {
            let k = Kernels::float(be, op, y.dtype)?;
            let c = ins[0].shape.at(1);
            let idx = be.host_i32(&ins[1])?;
            validate_indices(op.name(), &idx, *rows)?;
            if rows * c == 0 {
                return Ok(());
            }
            // Row r sums its positions in increasing k (as the CPU).
            let (row_ptr, positions) = group_positions(&idx, *rows, |v| Some(v as usize));
            let s = be.scratch(&[row_ptr.len() * 4, positions.len() * 4])?;
            be.upload(s[0], &row_ptr)?;
            be.upload(s[1], &positions)?;
            k.flat("embed_bwd", rows * c)
                .input(&ins[0])
                .ptr(s[1])
                .ptr(s[0])
                .ptr(y.ptr)
                .dim("rows", *rows)
                .dim("C", c)
                .run()
        }
        Op::Dropout { p } | Op::DropoutBackward { p } => {
            let k = Kernels::float(be, op, y.dtype)?;
            let n = y.shape.numel();
            k.flat("dropout_hash", n)
                .input(&ins[0])
                .ptr(y.ptr)
                .dim("n", n)
                .input(&ins[1])
                .bits(crate::util::rng::hash_threshold(*p))
                .scalar(1.0 / (1.0 - p))
                .run()
        }
        other => Err(Error::graph(format!("{} is not a layout op", other.name()))),
    }
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

fn permute(be: &CudaBackend, op: &Op, perm: &[usize], ins: Inputs, y: &Output) -> Result<()> {
    let n = y.shape.numel();
    let rank = perm.len();
    if n == 0 {
        return Ok(());
    }
    if rank <= 1 {
        return be.copy_d2d(y.ptr, ins[0].buf.ptr, n * y.dtype.size());
    }
    if rank > 6 {
        return Err(unsupported(op, format!("rank {rank} > 6")));
    }
    let k = Kernels::words(be, op, y.dtype);
    let in_dims = ins[0].shape.dims();
    let mut in_stride = vec![1i64; rank];
    for i in (0..rank - 1).rev() {
        in_stride[i] = in_stride[i + 1] * in_dims[i + 1] as i64;
    }
    let mut meta = PermMeta {
        rank: rank as i32,
        ..Default::default()
    };
    for (i, &axis) in perm.iter().enumerate() {
        meta.dims[i] = k.to_int("dim", in_dims[axis])?;
        meta.stride[i] = in_stride[axis];
    }
    k.flat("permute", n)
        .input(&ins[0])
        .ptr(y.ptr)
        .long(n as i64)
        .perm(meta)
        .run()
}

/// copy_cols: `dst[r*ld_d + off_d + j] = src[r*ld_s + off_s + j]` for r < rows, j < width.
fn copy_cols(
    k: &Kernels,
    src: u64,
    dst: u64,
    rows: usize,
    width: usize,
    (ld_src, off_src): (usize, usize),
    (ld_dst, off_dst): (usize, usize),
) -> Result<()> {
    k.flat("copy_cols", rows * width)
        .ptr(src)
        .ptr(dst)
        .dim("rows", rows)
        .dim("width", width)
        .dim("ld", ld_src)
        .dim("offset", off_src)
        .dim("ld", ld_dst)
        .dim("offset", off_dst)
        .run()
}
