//! Where ops run. The executor talks to a `Backend` only through this trait, so the same
//! graph runs on the CPU (always available) or on CUDA (feature `cuda`, when a GPU is there).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Meta, Shape, Tensor};

pub use cpu::{BusyWorkers, CpuBackend};
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaBuffer, Lent};
pub use device::{cuda_available, AnyBackend, AnyBuffer, Device};

/// A buffer of a backend seen as a tensor of `shape` (the buffer may be longer).
pub struct View<'a, B> {
    /// The buffer; its front holds the tensor.
    pub buf: &'a B,
    /// The tensor's shape.
    pub shape: &'a Shape,
    /// The tensor's element type (the buffer's).
    pub dtype: DType,
}

impl<B> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for View<'_, B> {}

impl<B> std::fmt::Debug for View<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({:?} {:?})", self.dtype, self.shape)
    }
}

/// A writable buffer seen as a tensor of `shape`.
pub struct ViewMut<'a, B> {
    /// The buffer; the tensor is written to its front.
    pub buf: &'a mut B,
    /// The tensor's shape.
    pub shape: &'a Shape,
    /// The tensor's element type (the buffer's).
    pub dtype: DType,
}

/// Whether an op runs on half-precision data: any of its views is bf16 or f16.
pub(crate) fn any_half<B>(inputs: &[View<B>], outputs: &[ViewMut<B>]) -> bool {
    inputs.iter().any(|v| v.dtype.is_half()) || outputs.iter().any(|o| o.dtype.is_half())
}

/// The views of a half-precision op as its f32 kernels see them: each view with an f32
/// stand-in (`Some`, in view order) swapped for it, the others as they are. Both backends run
/// the families without half kernels this way (the CPU's `in_f32`, CUDA's `run_in_f32`).
pub(crate) fn f32_views<'a, B>(
    inputs: &[View<'a, B>],
    wide: impl IntoIterator<Item = Option<&'a B>>,
) -> Vec<View<'a, B>> {
    views_as(inputs, wide, DType::F32)
}

/// [`f32_views`] with stand-ins of `dtype` (u8 spikes widened to an op's float type).
pub(crate) fn views_as<'a, B>(
    inputs: &[View<'a, B>],
    wide: impl IntoIterator<Item = Option<&'a B>>,
    dtype: DType,
) -> Vec<View<'a, B>> {
    inputs
        .iter()
        .zip(wide)
        .map(|(v, w)| match w {
            Some(buf) => View {
                buf,
                shape: v.shape,
                dtype,
            },
            None => *v,
        })
        .collect()
}

/// Whether an op reads u8 spikes through float stand-ins ([`Op::reads_spikes`]; a cast
/// converts them itself, layout moves carry them as they are).
pub(crate) fn reads_u8<B>(op: &Op, inputs: &[View<B>]) -> bool {
    !op.only_moves() && !matches!(op, Op::Cast(_)) && inputs.iter().any(|v| v.dtype == DType::U8)
}

/// [`f32_views`] for the outputs.
pub(crate) fn f32_views_mut<'a, B>(
    outputs: &'a mut [ViewMut<'_, B>],
    wide: impl IntoIterator<Item = Option<&'a mut B>>,
) -> Vec<ViewMut<'a, B>> {
    outputs
        .iter_mut()
        .zip(wide)
        .map(|(v, w)| ViewMut {
            dtype: if w.is_some() { DType::F32 } else { v.dtype },
            buf: w.unwrap_or(&mut *v.buf),
            shape: v.shape,
        })
        .collect()
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

/// The contract of [`Backend::execute`]: the outputs are what the op gives for the inputs
/// (for an in-place op, the updated inputs come first), and every buffer holds its view.
fn check_views<Buf>(
    op: &Op,
    inputs: &[View<Buf>],
    outputs: &[ViewMut<Buf>],
    held: impl Fn(&Buf) -> (DType, usize),
) -> Result<()> {
    let name = op.name();
    let mutated = op.mutated_inputs();
    if outputs.len() < mutated {
        return Err(Error::graph(format!(
            "{name}: {} outputs given; the op updates {mutated} inputs in place",
            outputs.len()
        )));
    }
    let meta = |shape: &Shape, dtype| Meta::new(shape.clone(), dtype);
    let given: Vec<Meta> = outputs[..mutated]
        .iter()
        .map(|v| meta(v.shape, v.dtype))
        .chain(inputs.iter().map(|v| meta(v.shape, v.dtype)))
        .collect();
    // An in-place op's outputs are its updated inputs, then what it gives besides.
    let mut want = given[..mutated].to_vec();
    want.extend(op.infer(&given)?);
    let got: Vec<Meta> = outputs.iter().map(|v| meta(v.shape, v.dtype)).collect();
    if got != want {
        return Err(Error::graph(format!(
            "{name}: outputs {got:?} given; the op gives {want:?}"
        )));
    }
    let views = inputs
        .iter()
        .map(|v| (v.buf, v.shape, v.dtype))
        .chain(outputs.iter().map(|v| (&*v.buf, v.shape, v.dtype)));
    for (k, (buf, shape, dtype)) in views.enumerate() {
        let (has, len) = held(buf);
        if has != dtype || len < shape.numel() {
            return Err(Error::graph(format!(
                "{name}: view {k} is {dtype:?} {shape:?}, its buffer holds {len} {has:?} elements"
            )));
        }
    }
    Ok(())
}

/// A device that holds buffers and runs ops on them: the CPU or a CUDA GPU.
pub trait Backend {
    /// A buffer of elements of one dtype (host memory on the CPU, device memory on CUDA).
    type Buffer: Send;
    /// A readable description of the device for reports, e.g. `cpu (16 threads)`.
    fn name(&self) -> String;
    /// A buffer of `len` elements; contents unspecified.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;
    /// Copies `src` into the front of `dst`.
    fn write(&self, dst: &mut Self::Buffer, src: &Tensor) -> Result<()>;
    /// Copies the front of `src` out as a tensor of `shape`.
    fn read(&self, src: &Self::Buffer, shape: &Shape, dtype: DType) -> Result<Tensor>;
    /// The dtype and element count a buffer holds.
    fn held(&self, buf: &Self::Buffer) -> (DType, usize);
    /// Runs one op. `outputs` are the op's outputs, or for ops that update in place
    /// (`Op::mutated_inputs`) the updated inputs, in which case `inputs` holds the rest.
    /// Views that do not fit the op (count, shape or dtype of an output, a buffer shorter than
    /// its view) are an error, checked before any kernel runs.
    fn execute(
        &self,
        op: &Op,
        inputs: &[View<Self::Buffer>],
        outputs: &mut [ViewMut<Self::Buffer>],
    ) -> Result<()> {
        check_views(op, inputs, outputs, |b| self.held(b))?;
        self.execute_planned(op, inputs, outputs)
    }
    /// [`Backend::execute`] without its checks, for views an executor's plan already matched
    /// to the op (the hot path). Views that do not fit the op may panic.
    fn execute_planned(
        &self,
        op: &Op,
        inputs: &[View<Self::Buffer>],
        outputs: &mut [ViewMut<Self::Buffer>],
    ) -> Result<()>;
    /// Waits for queued work (no-op on the CPU).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Runs `ops`, many ops in a row (an executor's run), as this backend runs them best:
    /// the CPU keeps its pool's workers busy meanwhile ([`CpuBackend::busy_workers`]).
    fn run_many(&self, ops: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        ops()
    }
    /// The device work of one [`Backend::record`]ed call, kept to be replayed (a CUDA graph).
    type Recording;
    /// Runs `run` once, then records the device work it queues so that [`Backend::replay`] can
    /// queue all of it again at once. `None` where the device cannot record (the CPU, which runs
    /// ops as they come) or this call could not be recorded; `run` has run once either way.
    fn record(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        run()?;
        Ok(None)
    }
    /// Queues a recording again. First `host` runs — the recorded calls once more with their
    /// device work left out, so their host part (checks of index inputs, index tables built
    /// on the host for the recording's copies to carry) sees this run's inputs — then the
    /// recorded device work, in one launch.
    fn replay(&self, rec: &Self::Recording, host: &mut dyn FnMut() -> Result<()>) -> Result<()>;
    /// Device operations queued so far (kernel launches, library calls, copies, fills), where
    /// the device has a queue (CUDA); None on the CPU, which runs ops as they come.
    fn device_ops(&self) -> Option<u64> {
        None
    }
    /// Milliseconds per call of `n` calls of `f`: on the host clock between two
    /// synchronisations, unless the device has its own (CUDA events on the backend's stream).
    fn time_calls(&self, n: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            f()?;
        }
        self.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64)
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
    fn held(&self, buf: &Self::Buffer) -> (DType, usize) {
        (**self).held(buf)
    }
    fn execute_planned(
        &self,
        op: &Op,
        inputs: &[View<Self::Buffer>],
        outputs: &mut [ViewMut<Self::Buffer>],
    ) -> Result<()> {
        (**self).execute_planned(op, inputs, outputs)
    }
    fn synchronize(&self) -> Result<()> {
        (**self).synchronize()
    }
    type Recording = B::Recording;
    fn run_many(&self, ops: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        (**self).run_many(ops)
    }
    fn record(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        (**self).record(run)
    }
    fn replay(&self, rec: &Self::Recording, host: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        (**self).replay(rec, host)
    }
    fn device_ops(&self) -> Option<u64> {
        (**self).device_ops()
    }
    fn time_calls(&self, n: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        (**self).time_calls(n, f)
    }
}
