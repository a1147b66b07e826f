//! CPU kernels: elementwise ops, activations, matmul, reductions, fill.

use super::gemm::{threads, Product, Strided, PARALLEL_WORK};
use super::{
    as_f32, as_f32_mut, float_dispatch, has_avx2, read, write, CpuView, CpuViewMut, Float, Stored,
    PAR_MIN,
};
use crate::error::{Error, Result};
use crate::ops::basic::MatMulDims;
use crate::ops::{Op, Reduce, Unary};
use crate::tensor::DType;
use rayon::prelude::*;

pub(crate) fn execute(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let dtype = outputs[0].dtype;
    match dtype {
        DType::BF16 => on_half::<half::bf16>(op, inputs, outputs),
        DType::F16 => on_half::<half::f16>(op, inputs, outputs),
        _ => float_dispatch!(op.name(), dtype, run(op, inputs, outputs)),
    }
}

/// Whether the op runs on half storage here, converting in its loops: the elementwise
/// arithmetic, bandwidth-bound (the activations run a block of rows at a time instead, on
/// their f32 vector kernels).
pub(crate) fn converts_in_its_loops(op: &Op) -> bool {
    matches!(
        op,
        Op::Add | Op::Sub | Op::Mul | Op::AddBias | Op::MulBroadcast
    )
}

/// The elementwise arithmetic on half storage `S`: chunks widened on the stack, computed in
/// f32 and rounded once, so each element is what the f32 kernel gives on the widened inputs.
fn on_half<S: Stored<f32>>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let c = outputs[0].shape.last().max(1);
    let y = write::<S>(&mut outputs[0])?;
    match op {
        Op::Add => zip2_half(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a + b),
        Op::Sub => zip2_half(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a - b),
        Op::Mul => zip2_half(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a * b),
        Op::AddBias | Op::MulBroadcast => {
            let (x, w) = (read::<S>(&inputs[0])?, read::<S>(&inputs[1])?);
            let mut wide = vec![0f32; w.len()];
            let w = S::widen(w, &mut wide);
            let add = matches!(op, Op::AddBias);
            let scalar = broadcasts_a_scalar(&inputs[1], c);
            let row = |bufs: &mut (Vec<f32>, Vec<f32>), (yr, xr): (&mut [S], &[S])| {
                let (xb, yb) = (&mut bufs.0[..xr.len()], &mut bufs.1[..xr.len()]);
                let xr = S::widen(xr, xb);
                for j in 0..yb.len() {
                    let wj = if scalar { w[0] } else { w[j] };
                    yb[j] = if add { xr[j] + wj } else { xr[j] * wj };
                }
                S::narrow(yb, yr);
            };
            let bufs = || (vec![0f32; c], vec![0f32; c]);
            if y.len() >= PAR_MIN {
                (y.par_chunks_mut(c).zip(x.par_chunks(c))).for_each_init(bufs, row);
            } else {
                let mut b = bufs();
                y.chunks_mut(c)
                    .zip(x.chunks(c))
                    .for_each(|r| row(&mut b, r));
            }
        }
        other => {
            return Err(Error::Unsupported {
                backend: "cpu",
                what: format!("{} on half storage in basic kernels", other.name()),
            })
        }
    }
    Ok(())
}

/// `y[i] = f(a[i], b[i])` on half storage, in chunks of [`HALF_CHUNK`] widened on the stack.
fn zip2_half<S: Stored<f32>>(a: &[S], b: &[S], y: &mut [S], f: impl Fn(f32, f32) -> f32 + Sync) {
    let chunk = |(yc, (ac, bc)): (&mut [S], (&[S], &[S]))| {
        let n = yc.len();
        let mut wide = [[0f32; HALF_CHUNK]; 3];
        let [wa, wb, out] = &mut wide;
        let (a, b) = (S::widen(ac, &mut wa[..n]), S::widen(bc, &mut wb[..n]));
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
        S::narrow(&out[..n], yc);
    };
    if y.len() >= PAR_MIN {
        let pairs = a.par_chunks(HALF_CHUNK).zip(b.par_chunks(HALF_CHUNK));
        y.par_chunks_mut(HALF_CHUNK).zip(pairs).for_each(chunk);
    } else {
        let pairs = a.chunks(HALF_CHUNK).zip(b.chunks(HALF_CHUNK));
        y.chunks_mut(HALF_CHUNK).zip(pairs).for_each(chunk);
    }
}

/// Whether `w`, the operand of `AddBias` / `MulBroadcast` on rows of `c`, is one scalar for
/// every element rather than one value per column.
fn broadcasts_a_scalar(w: &CpuView, c: usize) -> bool {
    w.shape.numel() == 1 && (c != 1 || w.shape.rank() == 0)
}

/// Elements a half-precision elementwise chunk widens on the stack (three f32 copies in L1).
const HALF_CHUNK: usize = 1024;

fn run<T: Float>(op: &Op, inputs: &[CpuView], outputs: &mut [CpuViewMut]) -> Result<()> {
    let out_shape = outputs[0].shape.clone();
    let y = write::<T>(&mut outputs[0])?;
    match op {
        Op::Add => zip2(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a + b),
        Op::Sub => zip2(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a - b),
        Op::Mul => zip2(read(&inputs[0])?, read(&inputs[1])?, y, |a, b| a * b),
        Op::AddBias | Op::MulBroadcast => {
            let x = read::<T>(&inputs[0])?;
            let w = read::<T>(&inputs[1])?;
            let c = out_shape.last().max(1);
            let add = matches!(op, Op::AddBias);
            let scalar = broadcasts_a_scalar(&inputs[1], c);
            y.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(yr, xr)| {
                    for j in 0..yr.len() {
                        let wj = if scalar { w[0] } else { w[j] };
                        yr[j] = if add { xr[j] + wj } else { xr[j] * wj };
                    }
                });
        }
        Op::Scale(c) => {
            let c = T::of(*c);
            map1(read(&inputs[0])?, y, |a| a * c)
        }
        Op::Unary(u) => unary::<T>(*u, read(&inputs[0])?, y),
        Op::UnaryBackward(u) => unary_backward::<T>(*u, read(&inputs[0])?, read(&inputs[1])?, y),
        Op::StopGradient => y.copy_from_slice(read(&inputs[0])?),
        Op::Fill { value, .. } => y.fill(T::of(*value)),
        // the row stride only shapes the gradient (see `Op::MatMul`)
        Op::MatMul {
            trans_a, trans_b, ..
        } => matmul::<T>(&inputs[0], &inputs[1], *trans_a, *trans_b, y)?,
        Op::Reduce(r) => reduce::<T>(*r, read(&inputs[0])?, inputs[0].shape.last(), y),
        Op::ReduceBackward(r, full) => {
            let g = read::<T>(&inputs[0])?;
            let c = full.last().max(1);
            match r {
                Reduce::SumLast | Reduce::MeanLast => {
                    let k = if *r == Reduce::MeanLast {
                        T::one() / T::of(c as f64)
                    } else {
                        T::one()
                    };
                    y.par_chunks_mut(c)
                        .zip(g.par_iter())
                        .for_each(|(row, &gi)| row.fill(gi * k));
                }
                Reduce::SumAll | Reduce::MeanAll => {
                    let n = full.numel().max(1);
                    let k = if *r == Reduce::MeanAll {
                        T::one() / T::of(n as f64)
                    } else {
                        T::one()
                    };
                    y.fill(g[0] * k);
                }
                Reduce::SumRows => y.par_chunks_mut(c).for_each(|row| row.copy_from_slice(g)),
            }
        }
        other => {
            return Err(Error::Unsupported {
                backend: "cpu",
                what: format!("{} in basic kernels", other.name()),
            })
        }
    }
    Ok(())
}

fn zip2<T: Float>(a: &[T], b: &[T], y: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    if y.len() >= PAR_MIN {
        y.par_iter_mut()
            .zip(a.par_iter().zip(b.par_iter()))
            .for_each(|(y, (&a, &b))| *y = f(a, b));
    } else {
        y.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(y, (&a, &b))| *y = f(a, b));
    }
}

fn map1<T: Float>(a: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
    if y.len() >= PAR_MIN {
        y.par_iter_mut()
            .zip(a.par_iter())
            .for_each(|(y, &a)| *y = f(a));
    } else {
        y.iter_mut().zip(a).for_each(|(y, &a)| *y = f(a));
    }
}

/// Activations evaluate in the element type; the transcendental ones go through f64 so
/// f32 and f64 share one definition (`Unary::forward`).
fn unary<T: Float>(u: Unary, x: &[T], y: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if u == Unary::Gelu && has_avx2() {
        if let (Some(x), Some(y)) = (as_f32(x), as_f32_mut(y)) {
            return super::gelu::forward(x, y);
        }
    }
    match u {
        Unary::Relu => map1(x, y, |a| a.max(T::zero())),
        Unary::LeakyRelu(s) => {
            let s = T::of(s);
            map1(x, y, |a| if a > T::zero() { a } else { s * a })
        }
        _ => map1(x, y, |a| T::of(u.forward(a.to_f64().unwrap_or(f64::NAN)))),
    }
}

fn unary_backward<T: Float>(u: Unary, x: &[T], g: &[T], y: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if u == Unary::Gelu && has_avx2() {
        if let (Some(x), Some(g), Some(y)) = (as_f32(x), as_f32(g), as_f32_mut(y)) {
            return super::gelu::backward(x, g, y);
        }
    }
    zip2(x, g, y, |a, g| {
        g * T::of(u.derivative(a.to_f64().unwrap_or(f64::NAN)))
    })
}

fn reduce<T: Float>(r: Reduce, x: &[T], c: usize, y: &mut [T]) {
    let c = c.max(1);
    match r {
        Reduce::SumLast | Reduce::MeanLast => {
            let k = if r == Reduce::MeanLast {
                T::one() / T::of(c as f64)
            } else {
                T::one()
            };
            y.par_iter_mut()
                .zip(x.par_chunks(c))
                .for_each(|(yi, row)| *yi = sum(row) * k);
        }
        Reduce::SumAll | Reduce::MeanAll => {
            // Fixed-size chunks summed in order: deterministic for any thread count.
            let partial: Vec<T> = x.par_chunks(4096).map(sum).collect();
            let s = sum(&partial);
            y[0] = if r == Reduce::MeanAll {
                s / T::of(x.len().max(1) as f64)
            } else {
                s
            };
        }
        Reduce::SumRows => {
            // Bands of columns in parallel, each adding its rows in order: every column's
            // sum is the same whatever the split.
            let band = |(b, yb): (usize, &mut [T])| {
                let cols = b * SUM_ROWS_BAND..b * SUM_ROWS_BAND + yb.len();
                yb.fill(T::zero());
                for row in x.chunks(c) {
                    for (a, &v) in yb.iter_mut().zip(&row[cols.clone()]) {
                        *a += v;
                    }
                }
            };
            if x.len() >= PAR_MIN {
                y.par_chunks_mut(SUM_ROWS_BAND).enumerate().for_each(band);
            } else {
                y.chunks_mut(SUM_ROWS_BAND).enumerate().for_each(band);
            }
        }
    }
}

/// Columns per parallel task of `Reduce::SumRows` (two cache lines of f32).
const SUM_ROWS_BAND: usize = 32;

/// Pairwise-free but cache-friendly sum in the element type, accumulated in f64 for f32
/// inputs would change results between dtypes; we keep one rule: accumulate in `T`.
fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::zero(); 4];
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        for i in 0..4 {
            acc[i] += c[i];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &v in chunks.remainder() {
        s += v;
    }
    s
}

/// (Batched) matrix product through the `gemm` crate; transposes are strides.
fn matmul<T: Float>(a: &CpuView, b: &CpuView, ta: bool, tb: bool, y: &mut [T]) -> Result<()> {
    let MatMulDims {
        batch,
        m,
        k,
        n,
        a_rows: ar,
        a_cols: ac,
        b_rows: br,
        b_cols: bc,
        ..
    } = MatMulDims::of(a.shape, b.shape, ta, tb)?;
    let (a, b) = (read::<T>(a)?, read::<T>(b)?);
    // Row-major [rows, cols]: row stride = cols, column stride = 1; a transpose swaps them.
    let (a_rs, a_cs) = if ta {
        (1, ac as isize)
    } else {
        (ac as isize, 1)
    };
    let (b_rs, b_cs) = if tb {
        (1, bc as isize)
    } else {
        (bc as isize, 1)
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    // One product of a batch: `gemm` itself parallel when it is large enough; small ones
    // (the attention's per-head products) run side by side instead. Each product's
    // arithmetic is the same either way.
    let large = m * n * k >= PARALLEL_WORK;
    let product = |i: usize, yp: &mut [T]| {
        if k == 0 {
            yp.fill(T::zero());
            return;
        }
        let (ap, bp) = (&a[i * ar * ac..], &b[i * br * bc..]);
        // SAFETY: the pointers and strides describe the in-bounds matrices checked by the
        // shape rule (a: m×k, b: k×n, y: m×n, row-major with optional transposes).
        unsafe {
            Product {
                m,
                n,
                k,
                dst: Strided::rows(yp.as_mut_ptr(), n),
                read_dst: false,
                lhs: Strided {
                    ptr: ap.as_ptr(),
                    rs: a_rs,
                    cs: a_cs,
                },
                rhs: Strided {
                    ptr: bp.as_ptr(),
                    rs: b_rs,
                    cs: b_cs,
                },
                alpha: T::zero(),
                beta: T::one(),
                parallelism: threads(large),
            }
            .run()
        }
    };
    let y = &mut y[..batch * m * n];
    if large || batch == 1 {
        y.chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, yp)| product(i, yp));
    } else {
        y.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, yp)| product(i, yp));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column sums in bands, in parallel, have the bits of the plain row-by-row sum.
    #[test]
    fn sum_rows_in_bands_adds_each_column_in_row_order() {
        for (rows, cols) in [
            (3072, 128),
            (700, 33),
            (20_000, 1),
            (513, 100),
            (3, 31),
            (0, 5),
        ] {
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.37e-3)
                .collect();
            let mut want = vec![0f32; cols];
            for row in x.chunks(cols) {
                for (a, &b) in want.iter_mut().zip(row) {
                    *a += b;
                }
            }
            let mut y = vec![f32::NAN; cols];
            reduce(Reduce::SumRows, &x, cols, &mut y);
            let same = y.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "[{rows}, {cols}]");
        }
    }
}
