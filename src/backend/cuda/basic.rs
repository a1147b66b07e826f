//! CUDA: the basic family (`src/ops/basic.rs`) on `kernels/basic.cu`; matmul on cuBLAS.

use super::launch::{row_chunks, suffix, Inputs, Kernels, Output};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::ops::{MatMulDims, Op, Reduce, Unary};
use crate::tensor::DType;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let y = &outs[0];
    if let Op::StopGradient = op {
        return be.copy_d2d(y.ptr, ins[0].buf.ptr, y.shape.numel() * y.dtype.size());
    }
    if let Op::Cast(to) = op {
        let from = ins[0].dtype;
        if from == *to {
            return be.copy_d2d(y.ptr, ins[0].buf.ptr, y.shape.numel() * y.dtype.size());
        }
        return cast(be, op, ins[0].buf.ptr, from, y.ptr, *to, y.shape.numel());
    }
    let k = Kernels::float(be, op, y.dtype)?;
    let n = y.shape.numel();
    match op {
        Op::Add | Op::Sub | Op::Mul | Op::AddBias | Op::MulBroadcast => {
            let code = match op {
                Op::Add | Op::AddBias => 0,
                Op::Sub => 1,
                _ => 2,
            };
            let nb = ins[1].shape.numel();
            if n > 0 && nb == 0 {
                return Err(Error::shape(op.name(), "empty operand"));
            }
            k.flat("ew_binary", n)
                .input(&ins[0])
                .input(&ins[1])
                .ptr(y.ptr)
                .dim("n", n)
                .dim("n", nb)
                .int(code)
                .run()
        }
        Op::Scale(c) => k
            .flat("ew_axpby", n)
            .input(&ins[0])
            .ptr(0)
            .ptr(y.ptr)
            .dim("n", n)
            .scalar(*c)
            .scalar(0.0)
            .run(),
        Op::Unary(u) => unary(&k, *u, ins, None, y),
        Op::UnaryBackward(u) => unary(&k, *u, &ins[..1], Some(&ins[1]), y),
        Op::Fill { value, .. } => k
            .flat("ew_fill", n)
            .ptr(y.ptr)
            .dim("n", n)
            .scalar(*value)
            .run(),
        // the row stride fixes the CPU's order of addition only
        Op::MatMul {
            trans_a, trans_b, ..
        } => matmul(&k, ins, *trans_a, *trans_b, y),
        Op::Reduce(r) => reduce(&k, *r, ins, y),
        Op::ReduceBackward(r, full) => {
            let n = full.numel();
            let c = full.last().max(1);
            let (groups, inner, scale) = match r {
                Reduce::SumLast => (n / c, c, 1.0),
                Reduce::MeanLast => (n / c, c, 1.0 / c as f64),
                Reduce::SumAll => (1, 1, 1.0),
                Reduce::MeanAll => (1, 1, 1.0 / n as f64),
                Reduce::SumRows => (c, 1, 1.0),
            };
            k.flat("ew_broadcast", n)
                .input(&ins[0])
                .ptr(y.ptr)
                .dim("n", n)
                .dim("ng", groups)
                .dim("inner", inner)
                .scalar(scale)
                .run()
        }
        other => Err(Error::graph(format!("{} is not a basic op", other.name()))),
    }
}

/// `cast_<from>_<to>` of `n` elements at `x` into `y`: each rounded once (kernels/basic.cu).
pub(super) fn cast(
    be: &CudaBackend,
    op: &Op,
    x: u64,
    from: DType,
    y: u64,
    to: DType,
    n: usize,
) -> Result<()> {
    // u8 spikes widen to any float type; nothing narrows to u8
    if !(from.is_float() || from == DType::U8) || !to.is_float() {
        return Err(super::launch::unsupported(
            op,
            format!("cast {from:?} → {to:?}"),
        ));
    }
    // basic.cu's kernels, whatever the family of the op that needs the cast
    Kernels::typed(be, &Op::Cast(to), to)
        .flat(&format!("cast_{}", suffix(from)), n)
        .ptr(x)
        .ptr(y)
        .dim("n", n)
        .run()
}

/// Activations and the spike function, forward (`grad` = None) or backward.
fn unary(
    k: &Kernels,
    u: Unary,
    ins: Inputs,
    grad: Option<&crate::backend::View<super::CudaBuffer>>,
    y: &Output,
) -> Result<()> {
    let n = y.shape.numel();
    if let Unary::Spike { surrogate, smooth } = u {
        let (code, alpha) = (surrogate.code(), surrogate.alpha());
        return match grad {
            None => k
                .flat("spike_fwd", n)
                .input(&ins[0])
                .ptr(y.ptr)
                .dim("n", n)
                .int(code)
                .scalar(alpha)
                .flag(smooth)
                .run(),
            Some(g) => k
                .flat("spike_bwd", n)
                .input(&ins[0])
                .input(g)
                .ptr(y.ptr)
                .dim("n", n)
                .int(code)
                .scalar(alpha)
                .run(),
        };
    }
    // The `kind` codes of act_fwd / act_bwd (kernels/basic.cu).
    let (kind, param) = match u {
        Unary::Relu => (0, 0.0),
        Unary::Elu(a) => (1, a),
        Unary::Gelu => (2, 0.0),
        Unary::LeakyRelu(s) => (3, s),
        Unary::Exp => (6, 0.0),
        Unary::Spike { .. } => unreachable!("handled above"),
    };
    let launch = match grad {
        None => k.flat("act_fwd", n).input(&ins[0]),
        Some(g) => k.flat("act_bwd", n).input(&ins[0]).input(g),
    };
    launch.ptr(y.ptr).dim("n", n).int(kind).scalar(param).run()
}

/// Row-major (batched) matmul through cuBLAS: C^T = op(B)^T op(A)^T in column-major terms,
/// i.e. the operands swapped.
fn matmul(k: &Kernels, ins: Inputs, ta: bool, tb: bool, y: &Output) -> Result<()> {
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let d = MatMulDims::of(ins[0].shape, ins[1].shape, ta, tb)?;
    if d.batch == 0 || d.m == 0 || d.n == 0 {
        return Ok(());
    }
    if d.k == 0 {
        return k.be.memset0(y.ptr, d.batch * d.m * d.n * k.elem_bytes());
    }
    let int = |what: &str, v: usize| k.to_int(what, v);
    let h = *k.be.blas()?.handle();
    let opa = if tb { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let opb = if ta { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let (mi, ni, ki) = (int("n", d.n)?, int("m", d.m)?, int("k", d.k)?);
    let (lda, ldb, ldc) = (
        int("ld", d.b_cols.max(1))?,
        int("ld", d.a_cols.max(1))?,
        int("ld", d.n)?,
    );
    let (sta, stb, stc) = (
        (d.b_rows * d.b_cols) as i64,
        (d.a_rows * d.a_cols) as i64,
        (d.m * d.n) as i64,
    );
    let batch = int("batch", d.batch)?;
    let (pa, pb) = (ins[1].buf.ptr, ins[0].buf.ptr);
    if !k.be.issue() {
        return Ok(());
    }
    // SAFETY: pointers/leading dimensions/strides describe the in-bounds row-major operands
    // checked by the shape rule; the handle is bound to this backend's stream.
    let res = unsafe {
        if let Some(data) = half_type(y.dtype) {
            // Tensor cores: 16-bit operands, f32 accumulation (and f32 alpha/beta), one
            // rounding of each result to the storage type.
            use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t};
            let (one, zero) = (1.0f32, 0.0f32);
            cudarc::cublas::result::gemm_strided_batched_ex(
                h,
                opa,
                opb,
                mi,
                ni,
                ki,
                (&one as *const f32).cast(),
                pa as *const std::ffi::c_void,
                data,
                lda,
                sta,
                pb as *const std::ffi::c_void,
                data,
                ldb,
                stb,
                (&zero as *const f32).cast(),
                y.ptr as *mut std::ffi::c_void,
                data,
                ldc,
                stc,
                batch,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        } else if y.dtype == DType::F32 {
            let (one, zero) = (1.0f32, 0.0f32);
            cudarc::cublas::result::sgemm_strided_batched(
                h,
                opa,
                opb,
                mi,
                ni,
                ki,
                &one,
                pa as *const f32,
                lda,
                sta,
                pb as *const f32,
                ldb,
                stb,
                &zero,
                y.ptr as *mut f32,
                ldc,
                stc,
                batch,
            )
        } else {
            let (one, zero) = (1.0f64, 0.0f64);
            cudarc::cublas::result::dgemm_strided_batched(
                h,
                opa,
                opb,
                mi,
                ni,
                ki,
                &one,
                pa as *const f64,
                lda,
                sta,
                pb as *const f64,
                ldb,
                stb,
                &zero,
                y.ptr as *mut f64,
                ldc,
                stc,
                batch,
            )
        }
    };
    res.map_err(|e| super::cuda_err("cuBLAS gemm_strided_batched", e))
}

/// cuBLAS's name for a half-precision storage type (None for the others).
fn half_type(d: DType) -> Option<cudarc::cublas::sys::cudaDataType> {
    use cudarc::cublas::sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F};
    match d {
        DType::BF16 => Some(CUDA_R_16BF),
        DType::F16 => Some(CUDA_R_16F),
        _ => None,
    }
}

fn reduce(k: &Kernels, r: Reduce, ins: Inputs, y: &Output) -> Result<()> {
    let n = ins[0].shape.numel();
    let c = ins[0].shape.last().max(1);
    match r {
        Reduce::SumLast | Reduce::MeanLast => {
            let rows = y.shape.numel();
            let scale = if r == Reduce::MeanLast {
                1.0 / c as f64
            } else {
                1.0
            };
            let cols = if n == 0 { 0 } else { c };
            k.warps("sum_last", rows)
                .input(&ins[0])
                .ptr(y.ptr)
                .dim("R", rows)
                .dim("C", cols)
                .scalar(scale)
                .run()
        }
        Reduce::SumAll | Reduce::MeanAll => {
            let parts = n.div_ceil(2048).clamp(1, 1024);
            let s = k.be.scratch(&[parts * k.acc_bytes()])?;
            k.grid("sum_all_partial", parts, 1)
                .input(&ins[0])
                .ptr(0)
                .ptr(s[0])
                .dim("n", n)
                .run()?;
            let scale = if r == Reduce::MeanAll {
                1.0 / n.max(1) as f64
            } else {
                1.0
            };
            k.grid("sum_all_final", 1, 1)
                .ptr(s[0])
                .ptr(y.ptr)
                .dim("G", parts)
                .scalar(scale)
                .run()
        }
        Reduce::SumRows => {
            let rows = n / c;
            let cols = y.shape.numel();
            if cols == 0 {
                return Ok(());
            }
            if rows == 0 {
                return k.be.memset0(y.ptr, cols * k.elem_bytes());
            }
            let (per_chunk, chunks) = row_chunks(rows);
            let s = k.be.scratch(&[chunks * cols * k.acc_bytes()])?;
            k.grid("colsum_partial", cols.div_ceil(256), chunks)
                .input(&ins[0])
                .ptr(s[0])
                .dim("R", rows)
                .dim("C", cols)
                .dim("rows_per_chunk", per_chunk)
                .run()?;
            k.flat("colsum_final", cols)
                .ptr(s[0])
                .ptr(y.ptr)
                .dim("chunks", chunks)
                .dim("C", cols)
                .scalar(1.0)
                .run()
        }
    }
}
