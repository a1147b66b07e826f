//! Device memory the caller owns, lent to gshn's kernels without a copy (issue 18): the C ABI's
//! `*_cuda` entry points and Rust callers who hold their own `CudaSlice`s.
//!
//! A lent buffer is a [`CudaBuffer`] that gshn never frees. Its address, length and alignment
//! are checked when it is made ([`CudaBuffer::borrow_raw`]), so a bad pointer from C is an
//! error, not a fault in a kernel. The kernels still run on the backend's stream: the C ABI
//! orders that stream after the caller's (an event each way, no host synchronisation), and
//! [`CudaBackend::execute_lent`] does the same with the stream each `CudaSlice` lives on.
//! (cudarc's own stream tracking cannot be relied on for that: the backend's context keeps no
//! events, so nothing would be recorded on its stream.)

use super::{cuda_err, CudaBackend, CudaBuffer};
use crate::backend::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Element, Shape};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use std::sync::Arc;

impl CudaBuffer {
    /// `len` elements of `dtype` at the device address `ptr`, lent by the caller: used in
    /// place (no copy) and never freed by gshn. Checked here: the address is not null (unless
    /// `len` is 0), it is aligned for `dtype`, and the byte size does not overflow.
    ///
    /// # Safety
    /// `ptr` must address at least `len` elements of `dtype` in the device memory of the
    /// backend that will use the buffer, and stay valid (not freed, not reused by other work)
    /// until that work is done.
    pub unsafe fn borrow_raw(ptr: u64, dtype: DType, len: usize) -> Result<CudaBuffer> {
        let what = || format!("lent device buffer of {len} {dtype:?} at {ptr:#x}");
        let bytes = len
            .checked_mul(dtype.size())
            .filter(|&b| ptr.checked_add(b as u64).is_some())
            .ok_or_else(|| Error::invalid("cuda", format!("{}: larger than memory", what())))?;
        if ptr == 0 && bytes > 0 {
            return Err(Error::invalid("cuda", format!("{}: null", what())));
        }
        if !ptr.is_multiple_of(dtype.size() as u64) {
            return Err(Error::invalid(
                "cuda",
                format!("{}: not aligned for {dtype:?}", what()),
            ));
        }
        Ok(CudaBuffer {
            slice: None,
            ptr,
            dtype,
            len,
            host: None,
            stamp: 0,
        })
    }

    /// Whether the memory is the caller's ([`CudaBuffer::borrow_raw`]), not gshn's.
    pub fn is_borrowed(&self) -> bool {
        self.slice.is_none()
    }
}

/// A caller's `CudaSlice` lent to one op run by [`CudaBackend::execute_lent`], seen as a
/// tensor of a shape: no copy. The op waits for the work queued before it on the slice's
/// stream, and the work queued there after it (the slice's free included) waits for the op.
pub struct Lent<'a> {
    buf: CudaBuffer,
    shape: Shape,
    /// The stream the slice lives on (`CudaSlice::stream`).
    home: Arc<CudaStream>,
    _sync: SyncOnDrop<'a>,
}

impl<'a> Lent<'a> {
    /// `slice` read as a tensor of `shape` (the slice may be longer) by an op on `be`.
    pub fn slice<T: Element>(
        be: &'a CudaBackend,
        slice: &'a CudaSlice<T>,
        shape: impl Into<Shape>,
    ) -> Result<Self> {
        let shape = shape.into();
        let len = check_lent(be, slice, &shape)?;
        let (ptr, sync) = slice.device_ptr(be.stream());
        Self::new(ptr, T::DTYPE, len, shape, slice.stream().clone(), sync)
    }

    /// `slice` written as a tensor of `shape` by an op on `be`.
    pub fn slice_mut<T: Element>(
        be: &'a CudaBackend,
        slice: &'a mut CudaSlice<T>,
        shape: impl Into<Shape>,
    ) -> Result<Self> {
        let shape = shape.into();
        let len = check_lent(be, slice, &shape)?;
        let home = slice.stream().clone();
        let (ptr, sync) = slice.device_ptr_mut(be.stream());
        Self::new(ptr, T::DTYPE, len, shape, home, sync)
    }

    /// `len`: the shape's element count, checked against the slice by `check_lent`.
    fn new(
        ptr: u64,
        dtype: DType,
        len: usize,
        shape: Shape,
        home: Arc<CudaStream>,
        sync: SyncOnDrop<'a>,
    ) -> Result<Self> {
        // SAFETY: a live allocation of the backend's context holding at least `len` elements
        // (checked by `check_lent`), borrowed for 'a, which outlives the op.
        let buf = unsafe { CudaBuffer::borrow_raw(ptr, dtype, len)? };
        Ok(Lent {
            buf,
            shape,
            home,
            _sync: sync,
        })
    }

    fn view(&self) -> View<'_, CudaBuffer> {
        View {
            buf: &self.buf,
            shape: &self.shape,
            dtype: self.buf.dtype,
        }
    }
}

/// A slice lent to `be` belongs to its context (device) and holds the shape: the shape's
/// element count.
fn check_lent<T>(be: &CudaBackend, slice: &CudaSlice<T>, shape: &Shape) -> Result<usize> {
    if slice.context().cu_ctx() != be.context().cu_ctx() {
        return Err(Error::invalid(
            "cuda",
            format!(
                "a slice of another CUDA context (device {}) lent to the backend of device {}'s \
                 primary context",
                slice.context().ordinal(),
                be.context().ordinal()
            ),
        ));
    }
    match shape.checked_numel() {
        Some(n) if n <= slice.len() => Ok(n),
        _ => Err(Error::shape(
            "cuda",
            format!(
                "a slice of {} elements cannot hold shape {shape:?}",
                slice.len()
            ),
        )),
    }
}

impl CudaBackend {
    /// Runs `op` on the caller's device slices, with no copies: `outputs` are written in
    /// place. The views are checked as [`Backend::execute`] checks them (count, shapes,
    /// dtypes). The op is queued on the backend's stream after the work already queued on the
    /// slices' streams, and the work queued on those streams afterwards waits for it (an
    /// event each way, no host synchronisation; none when a slice lives on the backend's
    /// stream).
    pub fn execute_lent(&self, op: &Op, inputs: &[Lent], outputs: &mut [Lent]) -> Result<()> {
        let mut homes: Vec<Arc<CudaStream>> = Vec::new();
        for l in inputs.iter().chain(outputs.iter()) {
            let s = &l.home;
            let ours = s.cu_stream() == self.stream.cu_stream();
            if !ours && !homes.iter().any(|h| h.cu_stream() == s.cu_stream()) {
                homes.push(s.clone());
            }
        }
        for h in &homes {
            (self.stream.join(h)).map_err(|e| cuda_err("ordering a lent slice's stream", e))?;
        }
        let views: Vec<View<CudaBuffer>> = inputs.iter().map(Lent::view).collect();
        let mut outs: Vec<ViewMut<CudaBuffer>> = outputs
            .iter_mut()
            .map(|l| ViewMut {
                dtype: l.buf.dtype,
                buf: &mut l.buf,
                shape: &l.shape,
            })
            .collect();
        let ran = self.execute(op, &views, &mut outs);
        // Whatever was queued, even by a failed op, comes before the caller's next work.
        for h in &homes {
            (h.join(&self.stream)).map_err(|e| cuda_err("ordering a lent slice's stream", e))?;
        }
        ran
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks of a raw loan run on the host: no GPU is needed to see them refuse.
    #[test]
    fn raw_loans_are_checked_before_any_kernel() {
        // SAFETY (all calls): the buffers are only inspected and dropped, never used by a
        // kernel; dropping a lent buffer frees nothing (there is no device on the test host).
        let err = |r: Result<CudaBuffer>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(unsafe { CudaBuffer::borrow_raw(0, DType::F32, 4) }).contains("null"));
        assert!(err(unsafe { CudaBuffer::borrow_raw(0x1002, DType::F32, 4) }).contains("aligned"));
        assert!(err(unsafe { CudaBuffer::borrow_raw(0x1004, DType::F64, 1) }).contains("aligned"));
        let huge = unsafe { CudaBuffer::borrow_raw(0x1000, DType::F64, usize::MAX / 4) };
        assert!(err(huge).contains("larger than memory"));
        let end = unsafe { CudaBuffer::borrow_raw(u64::MAX - 3, DType::U8, 8) };
        assert!(err(end).contains("larger than memory"));
        // a null address holding nothing is fine (an empty tensor), as is any u8 address
        let empty = unsafe { CudaBuffer::borrow_raw(0, DType::F32, 0) }.unwrap();
        assert!(empty.is_borrowed() && empty.is_empty());
        let b = unsafe { CudaBuffer::borrow_raw(0x2002, DType::BF16, 6) }.unwrap();
        assert_eq!(
            (b.held(), b.device_ptr(), b.bytes()),
            ((DType::BF16, 6), 0x2002, 12)
        );
        let s = unsafe { CudaBuffer::borrow_raw(0x3001, DType::U8, 3) }.unwrap();
        assert!(s.is_borrowed());
        drop((b, s)); // frees nothing: no driver call, so no panic without a GPU
    }
}
