//! Device memory the caller owns, lent to gshn's kernels without a copy (issue 18): the C ABI's
//! `*_cuda` entry points and Rust callers who hold their own `CudaSlice`s.
//!
//! A lent buffer is a [`CudaBuffer`] that gshn never frees. Its address, length and alignment
//! are checked when it is made ([`CudaBuffer::borrow_raw`]), so a bad pointer from C is an
//! error, not a fault in a kernel. The kernels still run on the backend's stream: the C ABI
//! orders that stream after the caller's (an event each way, no host synchronisation), and for
//! a `CudaSlice` cudarc's own stream tracking does the same ([`Lent`]).

use super::{CudaBackend, CudaBuffer};
use crate::backend::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Element, Shape};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, SyncOnDrop};

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
/// tensor of a shape: no copy. cudarc's stream tracking orders the work (and the slice's free)
/// that the caller queues afterwards on its own stream after the op.
pub struct Lent<'a> {
    buf: CudaBuffer,
    shape: Shape,
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
        Self::new(ptr, T::DTYPE, len, shape, sync)
    }

    /// `slice` written as a tensor of `shape` by an op on `be`.
    pub fn slice_mut<T: Element>(
        be: &'a CudaBackend,
        slice: &'a mut CudaSlice<T>,
        shape: impl Into<Shape>,
    ) -> Result<Self> {
        let shape = shape.into();
        let len = check_lent(be, slice, &shape)?;
        let (ptr, sync) = slice.device_ptr_mut(be.stream());
        Self::new(ptr, T::DTYPE, len, shape, sync)
    }

    /// `len`: the shape's element count, checked against the slice by `check_lent`.
    fn new(ptr: u64, dtype: DType, len: usize, shape: Shape, sync: SyncOnDrop<'a>) -> Result<Self> {
        // SAFETY: a live allocation of the backend's context holding at least `len` elements
        // (checked by `check_lent`), borrowed for 'a, which outlives the op.
        let buf = unsafe { CudaBuffer::borrow_raw(ptr, dtype, len)? };
        Ok(Lent {
            buf,
            shape,
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

/// A slice lent to `be` belongs to its device and holds the shape: the shape's element count.
fn check_lent<T>(be: &CudaBackend, slice: &CudaSlice<T>, shape: &Shape) -> Result<usize> {
    if slice.context().ordinal() != be.context().ordinal() {
        return Err(Error::invalid(
            "cuda",
            format!(
                "a slice of device {} lent to the backend of device {}",
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
    /// dtypes). The op is queued on the backend's stream; cudarc orders it after the slices'
    /// earlier writes and the caller's later uses after it.
    pub fn execute_lent(&self, op: &Op, inputs: &[Lent], outputs: &mut [Lent]) -> Result<()> {
        let views: Vec<View<CudaBuffer>> = inputs.iter().map(Lent::view).collect();
        let mut outs: Vec<ViewMut<CudaBuffer>> = outputs
            .iter_mut()
            .map(|l| ViewMut {
                dtype: l.buf.dtype,
                buf: &mut l.buf,
                shape: &l.shape,
            })
            .collect();
        self.execute(op, &views, &mut outs)
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
