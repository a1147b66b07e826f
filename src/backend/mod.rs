//! Where ops run. The executor talks to a `Backend` only through this trait, so the same
//! graph runs on the CPU (always available) or on CUDA (feature `cuda`, when a GPU is there).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;

use crate::error::Result;
use crate::ops::Op;
use crate::tensor::{DType, Meta, Shape, Tensor};

pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaBuffer};
pub use device::{cuda_available, AnyBackend, AnyBuffer, Device};

/// A buffer of a backend seen as a tensor of `shape` (the buffer may be longer).
pub struct View<'a, B> {
    pub buf: &'a B,
    pub shape: &'a Shape,
    pub dtype: DType,
}

/// A writable buffer seen as a tensor of `shape`.
pub struct ViewMut<'a, B> {
    pub buf: &'a mut B,
    pub shape: &'a Shape,
    pub dtype: DType,
}

/// Runs `op` once on whole buffers, each described by its meta (one-off callers such as the
/// C ABI; the executor has its own views over planned slots).
pub fn execute_buffers<'a, B: Backend>(
    be: &B,
    op: &Op,
    inputs: impl IntoIterator<Item = (&'a B::Buffer, &'a Meta)>,
    outputs: &mut [B::Buffer],
    out_metas: &[Meta],
) -> Result<()>
where
    B::Buffer: 'a,
{
    let views: Vec<View<B::Buffer>> = inputs
        .into_iter()
        .map(|(buf, m)| View {
            buf,
            shape: &m.shape,
            dtype: m.dtype,
        })
        .collect();
    let mut oviews: Vec<ViewMut<B::Buffer>> = outputs
        .iter_mut()
        .zip(out_metas)
        .map(|(buf, m)| ViewMut {
            buf,
            shape: &m.shape,
            dtype: m.dtype,
        })
        .collect();
    be.execute(op, &views, &mut oviews)
}

pub trait Backend {
    type Buffer: Send;
    fn name(&self) -> String;
    /// A buffer of `len` elements; contents unspecified.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;
    /// Copies `src` into the front of `dst`.
    fn write(&self, dst: &mut Self::Buffer, src: &Tensor) -> Result<()>;
    /// Copies the front of `src` out as a tensor of `shape`.
    fn read(&self, src: &Self::Buffer, shape: &Shape, dtype: DType) -> Result<Tensor>;
    /// Runs one op. `outputs` are the op's outputs, or for ops that update in place
    /// (`Op::mutated_inputs`) the updated inputs, in which case `inputs` holds the rest.
    fn execute(
        &self,
        op: &Op,
        inputs: &[View<Self::Buffer>],
        outputs: &mut [ViewMut<Self::Buffer>],
    ) -> Result<()>;
    /// Waits for queued work (no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// A shared backend: several executors (a training step and the evaluation encoders) can
/// run on one device.
impl<B: Backend> Backend for std::sync::Arc<B> {
    type Buffer = B::Buffer;
    fn name(&self) -> String {
        (**self).name()
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer> {
        (**self).alloc(dtype, len)
    }
    fn write(&self, dst: &mut Self::Buffer, src: &Tensor) -> Result<()> {
        (**self).write(dst, src)
    }
    fn read(&self, src: &Self::Buffer, shape: &Shape, dtype: DType) -> Result<Tensor> {
        (**self).read(src, shape, dtype)
    }
    fn execute(
        &self,
        op: &Op,
        inputs: &[View<Self::Buffer>],
        outputs: &mut [ViewMut<Self::Buffer>],
    ) -> Result<()> {
        (**self).execute(op, inputs, outputs)
    }
    fn synchronize(&self) -> Result<()> {
        (**self).synchronize()
    }
}
