//! The C ABI (`include/gshn.h`): the fused ops' forward and backward on caller-owned buffers,
//! for users who link gshn into their own stack (e.g. `python/gshn_torch.py`).
//!
//! - Every function returns a [`GSHN_OK`]-style code; on failure `gshn_last_error()` gives a
//!   message (thread-local, valid until the next gshn call on that thread).
//! - No panic crosses the boundary: every entry point runs under `catch_unwind`
//!   ([`GSHN_ERR_PANIC`]).
//! - `*_cpu` functions take host pointers. `*_cuda` functions take device pointers for the
//!   float tensors plus a `CUstream` (the caller's; `NULL` = the legacy default stream) and the
//!   device ordinal; index arrays (`row_ptr`, `src`) are **host** pointers on both paths (the
//!   backends validate them and build the CSC transpose on the host). The CUDA path runs the
//!   kernels on the caller's stream itself, in order with the caller's work, with no host
//!   synchronisation (except for GAT index uploads of pageable memory): gshn keeps a backend
//!   per device and stream seen ([`crate::backend::CudaBackend::on_stream`]: a scratch arena
//!   allocated stream-ordered on that stream, a cuBLAS handle; calls on different streams run
//!   at once), up to 64 streams per device, beyond which calls run on gshn's own stream,
//!   ordered with the caller's by events. It is zero-copy: the caller's device buffers are lent to
//!   the kernels as they are ([`crate::backend::CudaBuffer::borrow_raw`], address and alignment
//!   checked), outputs are written in place, and only an input that shares memory with an
//!   output is copied first (so aliasing gives the separate-buffer result on both paths).
//! - Float buffers are all f32, f64, bf16 or f16 (`dtype`), row-major, contiguous; with bf16
//!   and f16 the statistics buffers are f32 ([`GSHN_BF16`]; the CUDA path's half kernels
//!   have not run on a GPU yet).
//!
//! From Rust the same functions can be called directly (from C, include `gshn.h` and link
//! `libgshn_capi.so`): LIF over x[T = 2, N = 3], then its backward.
//!
//! ```
//! use gshn::capi::*;
//! use std::ffi::CStr;
//! let params = gshn_lif_params_default(); // tau 2, v_th 1, hard reset to 0
//! let x = [0.5f32, 2.5, 1.0, 1.8, 0.1, 1.2];
//! let (mut spikes, mut v, mut h) = ([0f32; 6], [0f32; 6], [0f32; 6]);
//! // SAFETY: every buffer holds T·N = 6 f32.
//! let rc = unsafe {
//!     gshn_lif_forward_cpu(&params, GSHN_F32, 2, 3, x.as_ptr().cast(),
//!         spikes.as_mut_ptr().cast(), v.as_mut_ptr().cast(), h.as_mut_ptr().cast())
//! };
//! assert_eq!(rc, GSHN_OK);
//! assert_eq!(spikes, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]); // H = V + (x − V) / 2 ≥ 1
//! let (gs, mut gx) = ([1f32; 6], [0f32; 6]);
//! // SAFETY: as above; grad_v and grad_tau are optional (NULL).
//! let rc = unsafe {
//!     gshn_lif_backward_cpu(&params, GSHN_F32, 2, 3, h.as_ptr().cast(), gs.as_ptr().cast(),
//!         std::ptr::null(), gx.as_mut_ptr().cast(), std::ptr::null_mut())
//! };
//! assert_eq!(rc, GSHN_OK);
//! // A bad call is an error code with a message, never a crash.
//! let rc = unsafe {
//!     gshn_lif_forward_cpu(&params, GSHN_F32, -1, 3, x.as_ptr().cast(),
//!         spikes.as_mut_ptr().cast(), v.as_mut_ptr().cast(), h.as_mut_ptr().cast())
//! };
//! assert_eq!(rc, GSHN_ERR_INVALID_ARGUMENT);
//! let msg = unsafe { CStr::from_ptr(gshn_last_error()) }.to_string_lossy();
//! assert!(msg.contains("T = -1 is negative"));
//! ```

// User input reaches this module directly: every failure is an `Err`, so nothing here
// indexes, unwraps or panics (checked by clippy).
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo
)]
// Sizes cross this boundary as int64: every narrowing or sign change is checked, never `as`.
#![deny(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
#![allow(clippy::missing_safety_doc, clippy::too_many_arguments)]

use crate::backend::{CpuBackend, View};
use crate::error::Error;
use crate::fused;
use crate::ops::gat::{AggregateArgs, GatArgs, GraphArgs};
use crate::ops::infonce::InfoNceBackwardArgs;
use crate::ops::lif::{validate_tau, LifBackwardArgs};
use crate::ops::{CsrGraph, GatAttrs, InfoNceAttrs, LifConfig, Op, Precision, Surrogate};
use crate::tensor::{try_copy, DType, Meta, Shape, Storage, Tensor};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const GSHN_OK: c_int = 0;
/// A NULL pointer, a negative size, an unknown enum value.
pub const GSHN_ERR_INVALID_ARGUMENT: c_int = 1;
/// Sizes that do not fit together (gshn's shape rules).
pub const GSHN_ERR_SHAPE: c_int = 2;
/// A value an op cannot accept (invalid CSR, tau <= 1, ...).
pub const GSHN_ERR_INVALID_VALUE: c_int = 3;
/// Not available in this build / on this backend (e.g. CUDA without the `cuda` feature).
pub const GSHN_ERR_UNSUPPORTED: c_int = 4;
/// CUDA driver / kernel failure, or no usable GPU.
pub const GSHN_ERR_CUDA: c_int = 5;
/// A bug: a panic inside gshn was caught at the boundary.
pub const GSHN_ERR_PANIC: c_int = 6;
/// Any other failure inside gshn (an inconsistency that should not happen: a bug).
pub const GSHN_ERR_INTERNAL: c_int = 7;
/// A buffer gshn needs cannot be allocated (sizes too large for the machine).
pub const GSHN_ERR_OUT_OF_MEMORY: c_int = 8;

/// `dtype` of the float buffers: f32 (C `float`).
pub const GSHN_F32: c_int = 0;
/// `dtype` of the float buffers: f64 (C `double`).
pub const GSHN_F64: c_int = 1;
/// `dtype` of the float buffers: bfloat16 (16-bit words). The statistics buffers
/// are f32 then (see [`Op::half_stats`]): LIF `h`, GAT `lse`, InfoNCE `loss`, `lse_row`,
/// `lse_col` and their gradients.
pub const GSHN_BF16: c_int = 2;
/// `dtype` of the float buffers: IEEE half (16-bit words); statistics f32 as for
/// [`GSHN_BF16`].
pub const GSHN_F16: c_int = 3;

/// Surrogate numbers: [`Surrogate::code`] (checked equal by a test).
pub const GSHN_SURROGATE_ATAN: c_int = 0;
/// Sigmoid surrogate: σ'(x) = α s (1 − s), s = sigmoid(α x) (usual α 4).
pub const GSHN_SURROGATE_SIGMOID: c_int = 1;
/// SuperSpike surrogate: σ'(x) = 1 / (1 + α |x|)².
pub const GSHN_SURROGATE_SUPER_SPIKE: c_int = 2;
/// Rectangular surrogate: σ'(x) = 1/α where |x| < α/2, else 0.
pub const GSHN_SURROGATE_RECTANGULAR: c_int = 3;

/// `gshn_infonce_params::precision`: exact f32 products.
pub const GSHN_PRECISION_F32: c_int = 0;
/// Products on operands rounded to tf32 (f32 accumulation, LSE and loss).
pub const GSHN_PRECISION_TF32: c_int = 1;
/// Products on operands rounded to bfloat16 (f32 accumulation, LSE and loss).
pub const GSHN_PRECISION_BF16: c_int = 2;

/// Version of this ABI (bumped on any incompatible change of `gshn.h`; new entry points keep
/// it).
pub const GSHN_ABI_VERSION: c_int = 1;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// An error at the boundary: code and message.
struct CErr(c_int, String);

impl From<Error> for CErr {
    fn from(e: Error) -> CErr {
        let code = match &e {
            Error::Shape { .. } => GSHN_ERR_SHAPE,
            Error::Invalid { .. } => GSHN_ERR_INVALID_VALUE,
            Error::Unsupported { .. } => GSHN_ERR_UNSUPPORTED,
            Error::Cuda(_) => GSHN_ERR_CUDA,
            Error::OutOfMemory { .. } => GSHN_ERR_OUT_OF_MEMORY,
            _ => GSHN_ERR_INTERNAL,
        };
        CErr(code, e.to_string())
    }
}

fn arg_err(f: &str, msg: impl std::fmt::Display) -> CErr {
    CErr(GSHN_ERR_INVALID_ARGUMENT, format!("{f}: {msg}"))
}

/// Runs an entry point: clears the last error, catches panics, maps errors to codes.
fn ffi(name: &str, f: impl FnOnce() -> Result<(), CErr>) -> c_int {
    set_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => GSHN_OK,
        Ok(Err(CErr(code, msg))) => {
            if msg.starts_with(name) {
                set_error(&msg);
            } else {
                set_error(&format!("{name}: {msg}"));
            }
            code
        }
        Err(p) => {
            let msg = crate::util::panic_message(&*p);
            set_error(&format!("{name}: internal panic (a bug in gshn): {msg}"));
            GSHN_ERR_PANIC
        }
    }
}

/// The message of the last failed call on this thread ("" after a successful one). Valid until
/// the next gshn call on the same thread. Never NULL.
#[no_mangle]
pub extern "C" fn gshn_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// [`GSHN_ABI_VERSION`] of this library (compare with the header's `GSHN_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn gshn_abi_version() -> c_int {
    GSHN_ABI_VERSION
}

/// 1 when this library was built with CUDA support and a CUDA device is usable, else 0.
#[no_mangle]
pub extern "C" fn gshn_cuda_available() -> c_int {
    catch_unwind(crate::backend::cuda_available).unwrap_or(false) as c_int
}

// ---- parameters ----------------------------------------------------------------------------

/// LIF parameters (`gshn_lif_params` in gshn.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GshnLifParams {
    /// Membrane time constant, in time steps (> 1).
    pub tau: f64,
    /// Firing threshold.
    pub v_th: f64,
    /// Used when `hard_reset` != 0.
    pub v_reset: f64,
    /// Nonzero: hard reset to `v_reset`; 0: soft reset (V −= v_th S; leak toward 0).
    pub hard_reset: c_int,
    /// Nonzero: H = V + (X − (V − v_r)) / tau; 0: H = V − (V − v_r) / tau + X.
    pub decay_input: c_int,
    /// Nonzero: no surrogate gradient through the reset.
    pub detach_reset: c_int,
    /// `GSHN_SURROGATE_*`.
    pub surrogate: c_int,
    /// Surrogate parameter (> 0).
    pub alpha: f64,
}

/// tau 2, v_th 1, hard reset to 0, decay_input, no detach, ATan(2).
#[no_mangle]
pub extern "C" fn gshn_lif_params_default() -> GshnLifParams {
    GshnLifParams {
        tau: 2.0,
        v_th: 1.0,
        v_reset: 0.0,
        hard_reset: 1,
        decay_input: 1,
        detach_reset: 0,
        surrogate: GSHN_SURROGATE_ATAN,
        alpha: 2.0,
    }
}

/// Where a LIF call's time constant comes from.
#[derive(Clone, Copy)]
enum Tau {
    /// `params->tau`, fixed.
    Fixed,
    /// `params->tau`, learnable: the backward writes `grad_tau` at it.
    FixedWithGrad,
    /// A one-element tensor of the call's dtype in the call's memory (the `_tau` entries):
    /// read by the kernels, so a CUDA call needs no host synchronisation for it.
    Fed(*const c_void),
}

impl Tau {
    fn learnable(self) -> bool {
        !matches!(self, Tau::Fixed)
    }
}

fn lif_config(f: &str, p: *const GshnLifParams, tau: Tau) -> Result<LifConfig, CErr> {
    // SAFETY: the caller passes a valid pointer or NULL (checked).
    let p = unsafe { p.as_ref() }.ok_or_else(|| arg_err(f, "params is NULL"))?;
    let surrogate = Surrogate::from_code(p.surrogate, p.alpha)
        .ok_or_else(|| arg_err(f, format!("unknown surrogate {}", p.surrogate)))?;
    let cfg = LifConfig {
        tau: p.tau,
        v_th: p.v_th,
        v_reset: (p.hard_reset != 0).then_some(p.v_reset),
        decay_input: p.decay_input != 0,
        detach_reset: p.detach_reset != 0,
        surrogate,
        learnable_tau: tau.learnable(),
        smooth: false,
        membrane: true,
        u8_spikes: false,
    };
    cfg.validate("lif")?;
    // params->tau is the value fed as the learnable one too; a fed tensor is checked where it
    // is read (the CPU kernels; CUDA's make every output NaN, see gshn.h)
    if !matches!(tau, Tau::Fed(_)) {
        validate_tau("lif", p.tau)?;
    }
    Ok(cfg)
}

/// A graph given by host index arrays (`gshn_graph` in gshn.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GshnGraph {
    /// Number of nodes N (≥ 0, within the int32 range).
    pub num_nodes: i64,
    /// Number of edges E (≥ 0, within the int32 range).
    pub num_edges: i64,
    /// Host pointer, `num_nodes + 1` entries: CSR by destination.
    pub row_ptr: *const i32,
    /// Host pointer, `num_edges` entries: source node of each edge.
    pub src: *const i32,
}

/// The graph as the op inputs row_ptr, src, col_ptr, col_edge (validated, CSC built on the
/// host), with its node and edge counts.
fn graph_inputs(f: &str, g: *const GshnGraph) -> Result<(Inputs, usize, usize), CErr> {
    // SAFETY: valid pointer or NULL (checked).
    let g = unsafe { g.as_ref() }.ok_or_else(|| arg_err(f, "graph is NULL"))?;
    // CSR indices are int32: a larger count cannot describe a valid graph, and must be refused
    // before the arrays are read (their length is what the count claims).
    let index_count = |what: &str, v: i64| {
        let n = size(f, what, v)?;
        if n > i32::MAX as usize {
            return Err(CErr(
                GSHN_ERR_SHAPE,
                format!("{f}: {what} = {v} exceeds the int32 range of CSR indices"),
            ));
        }
        Ok(n)
    };
    let n = index_count("graph.num_nodes", g.num_nodes)?;
    let e = index_count("graph.num_edges", g.num_edges)?;
    let row_ptr = try_copy(host_slice(
        f,
        "graph.row_ptr",
        g.row_ptr,
        n.saturating_add(1),
    )?)?;
    let src = try_copy(host_slice(f, "graph.src", g.src, e)?)?;
    let g = CsrGraph::from_csr(row_ptr, src)?;
    let tensors = vec![
        (Src::Host(g.row_ptr), m([n + 1], DType::I32)),
        (Src::Host(g.src), m([e], DType::I32)),
        (Src::Host(g.col_ptr), m([n + 1], DType::I32)),
        (Src::Host(g.col_edge), m([e], DType::I32)),
    ];
    Ok((tensors, n, e))
}

fn size(f: &str, what: &str, v: i64) -> Result<usize, CErr> {
    usize::try_from(v).map_err(|_| arg_err(f, format!("{what} = {v} is negative")))
}

fn host_slice<'a, T>(f: &str, what: &str, p: *const T, n: usize) -> Result<&'a [T], CErr> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(arg_err(f, format!("{what} is NULL")));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(arg_err(
            f,
            format!("{what}: {n} elements do not fit in memory"),
        ));
    }
    // SAFETY: the caller guarantees `p` points to `n` readable elements (header contract).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn dtype_of(f: &str, d: c_int) -> Result<DType, CErr> {
    match d {
        GSHN_F32 => Ok(DType::F32),
        GSHN_F64 => Ok(DType::F64),
        GSHN_BF16 => Ok(DType::BF16),
        GSHN_F16 => Ok(DType::F16),
        _ => Err(arg_err(
            f,
            format!("dtype {d} is not GSHN_F32 (0), GSHN_F64 (1), GSHN_BF16 (2) or GSHN_F16 (3)"),
        )),
    }
}

// ---- running one op on caller buffers -----------------------------------------------------

/// Where the caller's float buffers live.
#[derive(Clone, Copy)]
enum Mem {
    Host,
    Cuda { device: c_int, stream: *mut c_void },
}

/// An input: a caller pointer (in the memory space of the call) or host data made here.
enum Src {
    Ptr(*const c_void, &'static str),
    Host(Tensor),
}

/// Inputs of one op with their shapes.
type Inputs = Vec<(Src, Meta)>;

/// An output the caller receives (NULL = not wanted, allowed only where `required` is false).
struct Dst {
    ptr: *mut c_void,
    name: &'static str,
    required: bool,
}

fn dst(ptr: *mut c_void, name: &'static str) -> Dst {
    Dst {
        ptr,
        name,
        required: true,
    }
}
fn dst_opt(ptr: *mut c_void, name: &'static str) -> Dst {
    Dst {
        ptr,
        name,
        required: false,
    }
}

/// Sizes from the caller are checked before anything uses them: an element count or byte
/// size that overflows (e.g. [4, 2^62 + 1]) is an argument error, not a wrapped small number.
fn fits_in_memory(f: &str, name: &str, m: &Meta) -> Result<(), CErr> {
    if m.checked_bytes().is_some() {
        Ok(())
    } else {
        Err(arg_err(
            f,
            format!("{name} of shape {:?} is larger than any memory", m.shape),
        ))
    }
}

/// The names of the inputs, for messages (host-made inputs are named by their role).
fn input_names(ins: &Inputs) -> Vec<&'static str> {
    ins.iter()
        .map(|(s, _)| match s {
            Src::Ptr(_, name) => *name,
            Src::Host(_) => "graph or tau",
        })
        .collect()
}

/// Runs `op` with inputs `ins` (metas `metas`) and writes its outputs into `outs`.
fn exec(f: &str, mem: Mem, op: Op, mut ins: Inputs, outs: Vec<Dst>) -> Result<(), CErr> {
    if ins.iter().any(|i| i.1.dtype.is_half()) {
        // on half storage the op's statistics (what the forward saved, the loss gradients)
        // are f32 buffers
        for k in op.half_stats(ins.len())?.0 {
            if let Some(i) = ins.get_mut(k) {
                i.1.dtype = DType::F32;
            }
        }
    }
    let metas: Vec<Meta> = ins.iter().map(|i| i.1.clone()).collect();
    for ((_, m), name) in ins.iter().zip(input_names(&ins)) {
        fits_in_memory(f, name, m)?;
    }
    let out_metas = op.infer(&metas)?;
    for (m, d) in out_metas.iter().zip(&outs) {
        fits_in_memory(f, d.name, m)?;
    }
    if out_metas.len() != outs.len() {
        return Err(CErr(
            GSHN_ERR_INTERNAL,
            format!(
                "{f}: {} outputs expected, {} given",
                out_metas.len(),
                outs.len()
            ),
        ));
    }
    let misaligned = |p: usize, m: &Meta| !p.is_multiple_of(m.dtype.size());
    for (src, m) in &ins {
        if let Src::Ptr(p, name) = src {
            if p.is_null() && m.shape.numel() > 0 {
                return Err(arg_err(f, format!("{name} is NULL")));
            }
            if misaligned(*p as usize, m) {
                return Err(arg_err(
                    f,
                    format!("{name} is not aligned for {:?}", m.dtype),
                ));
            }
        }
    }
    for (d, m) in outs.iter().zip(&out_metas) {
        if d.required && d.ptr.is_null() && m.shape.numel() > 0 {
            return Err(arg_err(f, format!("{} is NULL", d.name)));
        }
        if misaligned(d.ptr as usize, m) {
            return Err(arg_err(
                f,
                format!("{} is not aligned for {:?}", d.name, m.dtype),
            ));
        }
    }
    match mem {
        Mem::Host => exec_host(op, ins, outs),
        Mem::Cuda { device, stream } => {
            exec_cuda(f, device, stream, op, ins, outs, (&metas, &out_metas))
        }
    }
}

fn host_storage(p: *const c_void, m: &Meta) -> Result<Storage, CErr> {
    let n = m.shape.numel();
    if n == 0 {
        return Ok(Storage::zeros(m.dtype, 0));
    }
    // SAFETY: non-NULL when n > 0 and n elements fit in memory (checked by `exec`); the caller
    // guarantees n readable elements.
    Ok(unsafe {
        match m.dtype {
            DType::F32 => Storage::F32(try_copy(std::slice::from_raw_parts(p as *const f32, n))?),
            DType::F64 => Storage::F64(try_copy(std::slice::from_raw_parts(p as *const f64, n))?),
            DType::I32 => Storage::I32(try_copy(std::slice::from_raw_parts(p as *const i32, n))?),
            DType::BF16 => Storage::BF16(try_copy(std::slice::from_raw_parts(p.cast(), n))?),
            DType::F16 => Storage::F16(try_copy(std::slice::from_raw_parts(p.cast(), n))?),
            DType::U8 => Storage::U8(try_copy(std::slice::from_raw_parts(p.cast(), n))?),
        }
    })
}

/// Views over buffers in the order of their metas.
fn views<'a, B>(bufs: &'a [B], metas: &'a [Meta]) -> Vec<View<'a, B>> {
    bufs.iter()
        .zip(metas)
        .map(|(buf, m)| View {
            buf,
            shape: &m.shape,
            dtype: m.dtype,
        })
        .collect()
}

fn exec_host(op: Op, ins: Inputs, outs: Vec<Dst>) -> Result<(), CErr> {
    let (bufs, metas): (Vec<Storage>, Vec<Meta>) = ins
        .into_iter()
        .map(|(s, m)| match s {
            Src::Ptr(p, _) => Ok((host_storage(p, &m)?, m)),
            Src::Host(t) => Ok((t.into_storage(), m)),
        })
        .collect::<Result<Vec<_>, CErr>>()?
        .into_iter()
        .unzip();
    let results = fused::run(&CpuBackend, &op, &views(&bufs, &metas))?;
    for (r, d) in results.iter().zip(&outs) {
        let n = r.shape().numel();
        if d.ptr.is_null() || n == 0 {
            continue;
        }
        // SAFETY: the caller guarantees `d.ptr` holds n writable elements of the dtype.
        unsafe {
            match r.buffer() {
                Storage::F32(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr as *mut f32, n),
                Storage::F64(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr as *mut f64, n),
                Storage::I32(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr as *mut i32, n),
                Storage::BF16(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr.cast(), n),
                Storage::F16(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr.cast(), n),
                Storage::U8(v) => std::ptr::copy_nonoverlapping(v.as_ptr(), d.ptr.cast(), n),
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn exec_cuda(
    f: &str,
    _device: c_int,
    _stream: *mut c_void,
    _op: Op,
    _ins: Inputs,
    _outs: Vec<Dst>,
    _metas: (&[Meta], &[Meta]),
) -> Result<(), CErr> {
    Err(CErr(
        GSHN_ERR_UNSUPPORTED,
        format!("{f}: this build of gshn has no CUDA support (built without the `cuda` feature)"),
    ))
}

#[cfg(feature = "cuda")]
mod cuda_path {
    use super::*;
    use crate::backend::{execute_buffers, Backend, CudaBackend, CudaBuffer};
    use cudarc::driver::{result, sys};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// A backend used by one call at a time (its scratch arena is its own).
    type Shared = Arc<Mutex<CudaBackend>>;

    /// A device's backends: gshn's own (on gshn's stream; it holds the loaded kernels) and one
    /// per caller stream seen ([`CudaBackend::on_stream`]), kept for the process's life.
    struct Device {
        own: Shared,
        streams: HashMap<StreamKey, Shared>,
    }

    /// A caller's stream as the key of its backend: its handle, and for the per-thread default
    /// stream (`CU_STREAM_PER_THREAD`, one handle for a different stream on every thread) the
    /// calling thread too, so that two threads never share a scratch arena across streams.
    #[derive(Hash, PartialEq, Eq)]
    struct StreamKey(usize, Option<std::thread::ThreadId>);

    /// `CU_STREAM_PER_THREAD` (cuda.h).
    const PER_THREAD_STREAM: usize = 0x2;

    impl StreamKey {
        fn of(stream: sys::CUstream) -> StreamKey {
            let handle = stream as usize;
            let thread = (handle == PER_THREAD_STREAM).then(|| std::thread::current().id());
            StreamKey(handle, thread)
        }
    }

    /// Caller streams given their own backend per device; calls on further streams run on
    /// gshn's stream, ordered with the caller's by events.
    const MAX_STREAMS: usize = 64;

    static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();

    /// The backend for a call on `stream`, and whether it runs on that stream itself.
    fn backend(device: usize, stream: sys::CUstream) -> Result<(Shared, bool), CErr> {
        let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        let dev = match map.entry(device) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Device {
                own: Arc::new(Mutex::new(CudaBackend::new(device)?)),
                streams: HashMap::new(),
            }),
        };
        if let Some(b) = dev.streams.get(&StreamKey::of(stream)) {
            return Ok((b.clone(), true));
        }
        if dev.streams.len() >= MAX_STREAMS {
            return Ok((dev.own.clone(), false));
        }
        let own = dev.own.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = own.context().clone();
        ctx.bind_to_thread()
            .map_err(|e| cu("binding the device context", e))?;
        let mut of = std::ptr::null_mut();
        // SAFETY: asks the driver which context the caller's stream belongs to.
        let asked = unsafe { sys::cuStreamGetCtx(stream, &mut of) };
        if asked != sys::CUresult::CUDA_SUCCESS {
            return Err(cu("the stream passed is not a valid CUDA stream", asked));
        }
        if of != ctx.cu_ctx() {
            return Err(CErr(
                GSHN_ERR_CUDA,
                format!("cuda: the stream belongs to another CUDA context than device {device}'s primary context (PyTorch's streams use the primary one)"),
            ));
        }
        // SAFETY: a stream of this context (checked above); the caller keeps it alive while it
        // calls gshn on it (gshn.h).
        let theirs = unsafe { ctx.wrap_borrowed_stream(stream) };
        let b = Arc::new(Mutex::new(own.on_stream(theirs)?));
        drop(own);
        dev.streams.insert(StreamKey::of(stream), b.clone());
        Ok((b, true))
    }

    fn cu(what: &str, e: impl std::fmt::Debug) -> CErr {
        CErr(GSHN_ERR_CUDA, format!("cuda: {what}: {e:?}"))
    }

    /// Makes `waiter` wait (on the device) for the work queued so far on `signaller`.
    fn join(signaller: sys::CUstream, waiter: sys::CUstream) -> Result<(), CErr> {
        let ev = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| cu("event create", e))?;
        // SAFETY: `ev` is a live event; the streams belong to the current context (the caller's
        // stream must belong to the device's primary context, as PyTorch's do).
        let r = unsafe {
            result::event::record(ev, signaller).and_then(|_| {
                result::stream::wait_event(
                    waiter,
                    ev,
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            })
        };
        // SAFETY: destroying a recorded event is allowed; resources go when it completes.
        unsafe { result::event::destroy(ev) }.ok();
        r.map_err(|e| cu("stream ordering with the caller's stream", e))
    }

    /// The context current on the calling thread when a call began, made current again when
    /// it ends: gshn binds its device's context to run, and a caller working on another device
    /// (PyTorch's current device, say) must not find it changed.
    struct RestoreContext(Option<sys::CUcontext>);

    impl Drop for RestoreContext {
        fn drop(&mut self) {
            if let Some(c) = self.0 {
                // SAFETY: the context that was current at the start of this call, still alive
                // (the caller's); a failure leaves gshn's bound, as before this guard.
                unsafe { result::ctx::set_current(c) }.ok();
            }
        }
    }

    pub(super) fn exec_cuda(
        f: &str,
        device: c_int,
        stream: *mut c_void,
        op: Op,
        ins: Inputs,
        outs: Vec<Dst>,
        (metas, out_metas): (&[Meta], &[Meta]),
    ) -> Result<(), CErr> {
        // (without libcuda, no driver call: the error comes from `backend`)
        let current = match crate::backend::cuda::driver_present() {
            true => result::ctx::get_current().ok().flatten(),
            false => None,
        };
        let _restore = RestoreContext(current);
        let device = usize::try_from(device).map_err(|_| arg_err(f, "device is negative"))?;
        let theirs = stream as sys::CUstream;
        let (shared, on_theirs) = backend(device, theirs)?;
        let be = shared.lock().unwrap_or_else(|p| p.into_inner());
        be.context()
            .bind_to_thread()
            .map_err(|e| cu("binding the device context", e))?;
        let ours = be.stream().cu_stream();
        if on_theirs {
            return run_lent(&be, op, ins, outs, (metas, out_metas));
        }
        // gshn's stream starts after the work the caller queued before this call, and the
        // caller's stream continues after all that gshn queued, even when the op failed
        // part-way (an input copied on gshn's stream may still be reading the caller's memory).
        join(theirs, ours)?;
        let ran = run_lent(&be, op, ins, outs, (metas, out_metas));
        let joined = join(ours, theirs);
        ran.and(joined)
    }

    /// `op` on `be`'s stream with the caller's device buffers lent to its kernels.
    fn run_lent(
        be: &CudaBackend,
        op: Op,
        ins: Inputs,
        outs: Vec<Dst>,
        (metas, out_metas): (&[Meta], &[Meta]),
    ) -> Result<(), CErr> {
        // The caller's buffers are lent to the kernels as they are: no copies. An input that
        // shares memory with an output is copied first (the kernels read inputs while they
        // write outputs), so aliasing gives the separate-buffer result, as on the CPU path.
        let aliased = |p: *const c_void, m: &Meta| {
            outs.iter()
                .zip(out_metas)
                .any(|(d, dm)| overlap((p, m), (d.ptr, dm)))
        };
        let mut bufs = Vec::with_capacity(ins.len());
        for (src, m) in &ins {
            let n = m.shape.numel();
            bufs.push(match src {
                Src::Ptr(p, _) if !aliased(*p, m) => {
                    // SAFETY: the caller's n elements of m.dtype on this device (gshn.h); the
                    // address and alignment are checked by borrow_raw.
                    unsafe { CudaBuffer::borrow_raw(*p as u64, m.dtype, n)? }
                }
                Src::Ptr(p, _) => {
                    // both hold n elements (the caller's contract; ours from alloc), copied on
                    // our stream after the caller's work
                    let buf = be.alloc(m.dtype, n)?;
                    be.copy_d2d(buf.device_ptr(), *p as u64, n * m.dtype.size())?;
                    buf
                }
                Src::Host(t) => {
                    let mut buf = be.alloc(m.dtype, n)?;
                    be.write(&mut buf, t)?;
                    buf
                }
            });
        }
        let mut out_bufs = outs
            .iter()
            .zip(out_metas)
            .map(|(d, m)| match d.ptr.is_null() {
                // an output the caller does not want: written into gshn's memory
                true => be.alloc(m.dtype, m.shape.numel()),
                // SAFETY: as for the inputs (the caller's writable buffer)
                false => unsafe { CudaBuffer::borrow_raw(d.ptr as u64, m.dtype, m.shape.numel()) },
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        // Our own buffers are freed stream-ordered on the stream when dropped; the lent ones
        // are never freed here.
        execute_buffers(be, &op, bufs.iter().zip(metas), &mut out_bufs, out_metas)?;
        Ok(())
    }
}

#[cfg(feature = "cuda")]
use cuda_path::exec_cuda;

// ---- the ops -------------------------------------------------------------------------------

/// An owned list of the given inputs (host tensors cloned, pointers copied).
fn owned(v: Vec<&(Src, Meta)>) -> Inputs {
    v.into_iter()
        .map(|(s, mt)| match s {
            Src::Host(t) => (Src::Host(t.clone()), mt.clone()),
            Src::Ptr(p, nm) => (Src::Ptr(*p, nm), mt.clone()),
        })
        .collect()
}

/// The aggregation inputs by name: `ins` = alpha, s; `graph` = the four index tensors.
fn agg_args<'a>(
    ins: &'a Inputs,
    graph: &'a Inputs,
    grad: Option<&'a (Src, Meta)>,
) -> Result<AggregateArgs<'a, (Src, Meta)>, CErr> {
    let internal = || CErr(GSHN_ERR_INTERNAL, "aggregate inputs".into());
    let [alpha, s] = ins.as_slice() else {
        return Err(internal());
    };
    Ok(AggregateArgs {
        grad,
        alpha,
        s,
        graph: GraphArgs::from_slice(graph).ok_or_else(internal)?,
    })
}

/// Checks that no caller input shares bytes with a buffer written before it is read again.
fn disjoint(f: &str, reads: &Inputs, written: &[(*mut c_void, Meta)]) -> Result<(), CErr> {
    for (src, meta) in reads {
        let Src::Ptr(p, name) = src else { continue };
        if written.iter().any(|(w, wm)| overlap((*p, meta), (*w, wm))) {
            return Err(arg_err(
                f,
                format!("{name} shares memory with an output written before it is read again"),
            ));
        }
    }
    Ok(())
}

/// Whether two caller buffers (address, meta) share a byte.
fn overlap(a: (*const c_void, &Meta), b: (*mut c_void, &Meta)) -> bool {
    let span = |p: usize, m: &Meta| {
        let bytes = m.checked_bytes()?;
        (bytes > 0).then_some((p, p.saturating_add(bytes)))
    };
    match (span(a.0 as usize, a.1), span(b.0 as usize, b.1)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
        _ => false,
    }
}

/// The forward GAT inputs by name: `params` = z, a_src, a_dst (, edge_bias), `graph` = the four
/// index tensors (the op forms' order is `GatArgs`'s, not ours).
fn gat_args<'a>(params: &'a Inputs, graph: &'a Inputs) -> Result<GatArgs<'a, (Src, Meta)>, CErr> {
    let internal = || CErr(GSHN_ERR_INTERNAL, "gat inputs".into());
    let [z, a_src, a_dst, rest @ ..] = params.as_slice() else {
        return Err(internal());
    };
    Ok(GatArgs {
        grad: None,
        alpha: None,
        z,
        a_src,
        a_dst,
        edge_bias: rest.first(),
        out: None,
        lse: None,
        graph: GraphArgs::from_slice(graph).ok_or_else(internal)?,
    })
}

fn m(shape: impl Into<Shape>, dtype: DType) -> Meta {
    Meta::new(shape, dtype)
}

/// The time constant input of a learnable-tau call, if any: `params->tau` made a tensor, or
/// the caller's.
fn tau_input(tau: Tau, cfg: &LifConfig, dt: DType) -> Result<Option<(Src, Meta)>, CErr> {
    Ok(match tau {
        Tau::Fixed => None,
        Tau::FixedWithGrad => Some((Src::Host(Tensor::scalar(cfg.tau).to_dtype(dt)?), m([], dt))),
        Tau::Fed(p) => Some((Src::Ptr(p, "tau"), m([], dt))),
    })
}

/// `spikes` is written in the float dtype, or as u8 when `u8_spikes` (`LifConfig::u8_spikes`;
/// the `_u8` entries, whose pointer type is `S` = u8).
fn lif_forward<S>(
    f: &str,
    mem: Mem,
    u8_spikes: bool,
    tau: Tau,
    params: *const GshnLifParams,
    dtype: c_int,
    t: i64,
    n: i64,
    x: *const c_void,
    spikes: *mut S,
    v: *mut c_void,
    h: *mut c_void,
) -> Result<(), CErr> {
    let cfg = LifConfig {
        u8_spikes,
        ..lif_config(f, params, tau)?
    };
    let dt = dtype_of(f, dtype)?;
    let (t, n) = (size(f, "T", t)?, size(f, "N", n)?);
    let mut ins = vec![(Src::Ptr(x, "x"), m([t, n], dt))];
    ins.extend(tau_input(tau, &cfg, dt)?);
    exec(
        f,
        mem,
        Op::Lif(cfg),
        ins,
        vec![
            dst_opt(spikes.cast(), "spikes"),
            dst_opt(v, "v"),
            dst(h, "h"),
        ],
    )
}

/// The `_tau` forward entries: [`lif_forward`] with the tensor `tau`.
fn lif_forward_tau<S>(
    f: &str,
    mem: Mem,
    u8_spikes: bool,
    params: *const GshnLifParams,
    dtype: c_int,
    t: i64,
    n: i64,
    tau: *const c_void,
    x: *const c_void,
    spikes: *mut S,
    v: *mut c_void,
    h: *mut c_void,
) -> Result<(), CErr> {
    let fed = Tau::Fed(tau);
    lif_forward(f, mem, u8_spikes, fed, params, dtype, t, n, x, spikes, v, h)
}

/// The `_tau` backward entries: [`lif_backward`] with the tensor `tau` (`grad_tau` optional).
fn lif_backward_tau(
    f: &str,
    mem: Mem,
    params: *const GshnLifParams,
    dtype: c_int,
    t: i64,
    n: i64,
    tau: *const c_void,
    h: *const c_void,
    grad_spikes: *const c_void,
    grad_v: *const c_void,
    grad_x: *mut c_void,
    grad_tau: *mut c_void,
) -> Result<(), CErr> {
    lif_backward(
        f,
        mem,
        Tau::Fed(tau),
        params,
        dtype,
        t,
        n,
        h,
        grad_spikes,
        grad_v,
        grad_x,
        grad_tau,
    )
}

/// `tau`: [`Tau::Fixed`] for the plain entries, made [`Tau::FixedWithGrad`] by a `grad_tau`.
fn lif_backward(
    f: &str,
    mem: Mem,
    tau: Tau,
    params: *const GshnLifParams,
    dtype: c_int,
    t: i64,
    n: i64,
    h: *const c_void,
    grad_spikes: *const c_void,
    grad_v: *const c_void,
    grad_x: *mut c_void,
    grad_tau: *mut c_void,
) -> Result<(), CErr> {
    let tau = match tau {
        Tau::Fixed if !grad_tau.is_null() => Tau::FixedWithGrad,
        tau => tau,
    };
    let cfg = lif_config(f, params, tau)?;
    let dt = dtype_of(f, dtype)?;
    let (t, n) = (size(f, "T", t)?, size(f, "N", n)?);
    let (has_gs, has_gv) = (!grad_spikes.is_null(), !grad_v.is_null());
    if !has_gs && !has_gv {
        return Err(arg_err(
            f,
            "grad_spikes and grad_v are both NULL (give at least one)",
        ));
    }
    let tn = |p: *const c_void, name| (Src::Ptr(p, name), m([t, n], dt));
    let (h, gs, gv) = (
        tn(h, "h"),
        tn(grad_spikes, "grad_spikes"),
        tn(grad_v, "grad_v"),
    );
    let tau_in = tau_input(tau, &cfg, dt)?;
    let ins = owned(
        LifBackwardArgs {
            charge: &h,
            grad_spikes: has_gs.then_some(&gs),
            grad_membrane: has_gv.then_some(&gv),
            tau: tau_in.as_ref(),
        }
        .list(),
    );
    let mut outs = vec![dst(grad_x, "grad_x")];
    if tau.learnable() {
        outs.push(dst_opt(grad_tau, "grad_tau"));
    }
    exec(
        f,
        mem,
        Op::LifBackward {
            cfg,
            has_gs,
            has_gv,
        },
        ins,
        outs,
    )
}

/// Inputs z, a_src, a_dst (, be) and the four graph tensors; returns them with (N, E).
fn gat_inputs(
    f: &str,
    dt: DType,
    graph: *const GshnGraph,
    heads: i64,
    feat: i64,
    z: *const c_void,
    a_src: *const c_void,
    a_dst: *const c_void,
    edge_bias: *const c_void,
) -> Result<(Inputs, Inputs, usize, usize, usize, usize), CErr> {
    let (gr, n, e) = graph_inputs(f, graph)?;
    let (h, fe) = (size(f, "heads", heads)?, size(f, "feat", feat)?);
    let mut ins = vec![
        (Src::Ptr(z, "z"), m([n, h, fe], dt)),
        (Src::Ptr(a_src, "a_src"), m([h, fe], dt)),
        (Src::Ptr(a_dst, "a_dst"), m([h, fe], dt)),
    ];
    if !edge_bias.is_null() {
        ins.push((Src::Ptr(edge_bias, "edge_bias"), m([e, h], dt)));
    }
    Ok((ins, gr, n, e, h, fe))
}

fn gat_forward(
    f: &str,
    mem: Mem,
    dtype: c_int,
    graph: *const GshnGraph,
    heads: i64,
    feat: i64,
    negative_slope: f64,
    z: *const c_void,
    a_src: *const c_void,
    a_dst: *const c_void,
    edge_bias: *const c_void,
    out: *mut c_void,
    lse: *mut c_void,
    alpha: *mut c_void,
) -> Result<(), CErr> {
    let dt = dtype_of(f, dtype)?;
    let (ins, gr, n, _, h, fe) = gat_inputs(f, dt, graph, heads, feat, z, a_src, a_dst, edge_bias)?;
    let at = GatAttrs {
        negative_slope,
        edge_bias: !edge_bias.is_null(),
    };
    let args = gat_args(&ins, &gr)?;
    if !alpha.is_null() {
        // alpha re-reads the inputs after out and lse are written: they must not alias.
        let written = [(out, m([n, h, fe], dt)), (lse, m([n, h], dt))];
        disjoint(f, &ins, &written)?;
    }
    exec(
        f,
        mem,
        Op::Gat(at),
        owned(args.list()),
        vec![dst(out, "out"), dst(lse, "lse")],
    )?;
    if !alpha.is_null() {
        // alpha from the lse just written into the caller's buffer.
        let lse = (Src::Ptr(lse as *const c_void, "lse"), m([n, h], dt));
        let alpha_args = GatArgs {
            lse: Some(&lse),
            ..args
        };
        let ins = owned(alpha_args.list());
        exec(f, mem, Op::GatAlpha(at), ins, vec![dst(alpha, "alpha")])?;
    }
    Ok(())
}

fn gat_backward(
    f: &str,
    mem: Mem,
    dtype: c_int,
    graph: *const GshnGraph,
    heads: i64,
    feat: i64,
    negative_slope: f64,
    z: *const c_void,
    a_src: *const c_void,
    a_dst: *const c_void,
    edge_bias: *const c_void,
    out: *const c_void,
    lse: *const c_void,
    grad_out: *const c_void,
    grad_z: *mut c_void,
    grad_a_src: *mut c_void,
    grad_a_dst: *mut c_void,
    grad_edge_bias: *mut c_void,
) -> Result<(), CErr> {
    let dt = dtype_of(f, dtype)?;
    let (ins, gr, n, _, h, fe) = gat_inputs(f, dt, graph, heads, feat, z, a_src, a_dst, edge_bias)?;
    let at = GatAttrs {
        negative_slope,
        edge_bias: !edge_bias.is_null(),
    };
    let grad_out = (Src::Ptr(grad_out, "grad_out"), m([n, h, fe], dt));
    let out = (Src::Ptr(out, "out"), m([n, h, fe], dt));
    let lse = (Src::Ptr(lse, "lse"), m([n, h], dt));
    let all = owned(
        GatArgs {
            grad: Some(&grad_out),
            out: Some(&out),
            lse: Some(&lse),
            ..gat_args(&ins, &gr)?
        }
        .list(),
    );
    let mut outs = vec![
        dst(grad_z, "grad_z"),
        dst(grad_a_src, "grad_a_src"),
        dst(grad_a_dst, "grad_a_dst"),
    ];
    if at.edge_bias {
        outs.push(dst_opt(grad_edge_bias, "grad_edge_bias"));
    }
    exec(f, mem, Op::GatBackward(at), all, outs)
}

/// (the float dtype, the dtype of the spikes `s`).
fn spike_types(f: &str, dtype: c_int, u8_spikes: bool) -> Result<(DType, DType), CErr> {
    let dt = dtype_of(f, dtype)?;
    Ok((dt, if u8_spikes { DType::U8 } else { dt }))
}

fn agg_inputs(
    f: &str,
    (dt, s_dt): (DType, DType),
    graph: *const GshnGraph,
    heads: i64,
    t: i64,
    c: i64,
    alpha: *const c_void,
    s: *const c_void,
) -> Result<(Inputs, Inputs, [usize; 3]), CErr> {
    let (gr, n, e) = graph_inputs(f, graph)?;
    let (h, t, c) = (size(f, "heads", heads)?, size(f, "T", t)?, size(f, "C", c)?);
    let ins = vec![
        (Src::Ptr(alpha, "alpha"), m([e, h], dt)),
        (Src::Ptr(s, "s"), m([t, n, c], s_dt)),
    ];
    Ok((ins, gr, [t, n, c]))
}

/// InfoNCE options of the one-directional entries (`gshn_infonce_params` in gshn.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GshnInfoNceParams {
    /// `GSHN_PRECISION_*`: operand precision of the products.
    pub precision: c_int,
    /// Row `i` of `a` is positive with row `offset + i` of `p` (gathered negatives).
    pub offset: i64,
}

/// Exact f32 products, offset 0.
#[no_mangle]
pub extern "C" fn gshn_infonce_params_default() -> GshnInfoNceParams {
    GshnInfoNceParams {
        precision: GSHN_PRECISION_F32,
        offset: 0,
    }
}

/// The attributes of a `gshn_infonce_1d_*` call.
fn infonce_1d_attrs(f: &str, params: *const GshnInfoNceParams) -> Result<InfoNceAttrs, CErr> {
    // SAFETY: the caller passes a valid pointer or NULL (checked).
    let p = unsafe { params.as_ref() }.ok_or_else(|| arg_err(f, "params is NULL"))?;
    let precision = match p.precision {
        GSHN_PRECISION_F32 => Precision::F32,
        GSHN_PRECISION_TF32 => Precision::Tf32,
        GSHN_PRECISION_BF16 => Precision::Bf16,
        other => return Err(arg_err(f, format!("unknown precision {other}"))),
    };
    Ok(InfoNceAttrs {
        precision,
        offset: size(f, "offset", p.offset)?,
        ..InfoNceAttrs::ONE_DIRECTIONAL
    })
}

/// The inputs a[B, D], p[P, D], logit_scale of every InfoNCE entry, with the dtype.
#[allow(clippy::too_many_arguments)]
fn infonce_inputs(
    f: &str,
    dtype: c_int,
    (b, pn, d): (usize, usize, usize),
    a: *const c_void,
    p: *const c_void,
    logit_scale: *const c_void,
) -> Result<(Inputs, DType), CErr> {
    let dt = dtype_of(f, dtype)?;
    let ins = vec![
        (Src::Ptr(a, "a"), m([b, d], dt)),
        (Src::Ptr(p, "p"), m([pn, d], dt)),
        (Src::Ptr(logit_scale, "logit_scale"), m([], dt)),
    ];
    Ok((ins, dt))
}

/// (B, P, D) of a call, checked non-negative.
fn infonce_sizes(f: &str, b: i64, pn: i64, d: i64) -> Result<(usize, usize, usize), CErr> {
    Ok((size(f, "B", b)?, size(f, "P", pn)?, size(f, "D", d)?))
}

/// The symmetric (or plain one-directional) attributes of the `gshn_infonce_*` entries.
fn infonce_attrs(symmetric: c_int) -> InfoNceAttrs {
    InfoNceAttrs {
        symmetric: symmetric != 0,
        ..InfoNceAttrs::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn infonce_forward(
    f: &str,
    mem: Mem,
    dtype: c_int,
    b: i64,
    d: i64,
    symmetric: c_int,
    a: *const c_void,
    p: *const c_void,
    logit_scale: *const c_void,
    loss: *mut c_void,
    lse_row: *mut c_void,
    lse_col: *mut c_void,
) -> Result<(), CErr> {
    let sizes = infonce_sizes(f, b, b, d)?;
    let at = infonce_attrs(symmetric);
    let ins = infonce_inputs(f, dtype, sizes, a, p, logit_scale)?.0;
    run_infonce_forward(f, mem, at, ins, [loss, lse_row, lse_col])
}

#[allow(clippy::too_many_arguments)]
fn infonce_1d_forward(
    f: &str,
    mem: Mem,
    params: *const GshnInfoNceParams,
    dtype: c_int,
    b: i64,
    pn: i64,
    d: i64,
    a: *const c_void,
    p: *const c_void,
    logit_scale: *const c_void,
    loss: *mut c_void,
    lse_row: *mut c_void,
) -> Result<(), CErr> {
    let at = infonce_1d_attrs(f, params)?;
    let sizes = infonce_sizes(f, b, pn, d)?;
    let ins = infonce_inputs(f, dtype, sizes, a, p, logit_scale)?.0;
    run_infonce_forward(f, mem, at, ins, [loss, lse_row, std::ptr::null_mut()])
}

fn run_infonce_forward(
    f: &str,
    mem: Mem,
    at: InfoNceAttrs,
    ins: Inputs,
    [loss, lse_row, lse_col]: [*mut c_void; 3],
) -> Result<(), CErr> {
    exec(
        f,
        mem,
        Op::InfoNce(at),
        ins,
        vec![
            dst(loss, "loss"),
            dst(lse_row, "lse_row"),
            dst(lse_col, "lse_col"),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
fn infonce_backward(
    f: &str,
    mem: Mem,
    dtype: c_int,
    b: i64,
    d: i64,
    symmetric: c_int,
    a: *const c_void,
    p: *const c_void,
    logit_scale: *const c_void,
    lse_row: *const c_void,
    lse_col: *const c_void,
    grad_loss: *const c_void,
    grad_a: *mut c_void,
    grad_p: *mut c_void,
    grad_logit_scale: *mut c_void,
) -> Result<(), CErr> {
    let sizes = infonce_sizes(f, b, b, d)?;
    let at = infonce_attrs(symmetric);
    let (ins, dt) = infonce_inputs(f, dtype, sizes, a, p, logit_scale)?;
    let saved = [lse_row, lse_col, grad_loss];
    let grads = [grad_a, grad_p, grad_logit_scale];
    run_infonce_backward(f, mem, at, sizes.0, dt, ins, saved, grads)
}

#[allow(clippy::too_many_arguments)]
fn infonce_1d_backward(
    f: &str,
    mem: Mem,
    params: *const GshnInfoNceParams,
    dtype: c_int,
    b: i64,
    pn: i64,
    d: i64,
    a: *const c_void,
    p: *const c_void,
    logit_scale: *const c_void,
    lse_row: *const c_void,
    grad_loss: *const c_void,
    grad_a: *mut c_void,
    grad_p: *mut c_void,
    grad_logit_scale: *mut c_void,
) -> Result<(), CErr> {
    let at = infonce_1d_attrs(f, params)?;
    let sizes = infonce_sizes(f, b, pn, d)?;
    let (ins, dt) = infonce_inputs(f, dtype, sizes, a, p, logit_scale)?;
    let saved = [lse_row, std::ptr::null(), grad_loss];
    let grads = [grad_a, grad_p, grad_logit_scale];
    run_infonce_backward(f, mem, at, sizes.0, dt, ins, saved, grads)
}

/// The backward of every InfoNCE entry: `saved` = (lse_row, lse_col, grad_loss), `grads` =
/// (grad_a, grad_p, grad_logit_scale), each optional.
#[allow(clippy::too_many_arguments)]
fn run_infonce_backward(
    f: &str,
    mem: Mem,
    at: InfoNceAttrs,
    b: usize,
    dt: DType,
    ins: Inputs,
    [lse_row, lse_col, grad_loss]: [*const c_void; 3],
    [grad_a, grad_p, grad_logit_scale]: [*mut c_void; 3],
) -> Result<(), CErr> {
    let g_loss = (Src::Ptr(grad_loss, "grad_loss"), m([], dt));
    let lse_row = (Src::Ptr(lse_row, "lse_row"), m([b], dt));
    let lse_col = (Src::Ptr(lse_col, "lse_col"), m([at.lse_col_len(b)], dt));
    let [a, p, logit_scale] = ins.as_slice() else {
        return Err(CErr(GSHN_ERR_INTERNAL, format!("{f}: infonce inputs")));
    };
    let all = owned(
        InfoNceBackwardArgs {
            g_loss: &g_loss,
            a,
            p,
            logit_scale,
            lse_row: &lse_row,
            lse_col: &lse_col,
            g_lse: None,
        }
        .list(),
    );
    exec(
        f,
        mem,
        Op::InfoNceBackward(at),
        all,
        vec![
            dst_opt(grad_a, "grad_a"),
            dst_opt(grad_p, "grad_p"),
            dst_opt(grad_logit_scale, "grad_logit_scale"),
        ],
    )
}

// ---- exported symbols: one _cpu and one _cuda per entry --------------------------------------

// `export!(/// docs, cpu, cuda, imp [consts], (args))`: the docs go to both functions, each with
// a line on its memory space appended; `imp` gets the name, the memory space, the constants
// (e.g. whether the spikes are u8) and the arguments.
macro_rules! export {
    ($(#[$doc:meta])* $cpu:ident, $cuda:ident, $imp:ident $([$($x:expr),*])?,
     ( $($a:ident : $t:ty),* $(,)? )) => {
        $(#[$doc])*
        ///
        /// Host pointers for every buffer.
        #[no_mangle]
        pub unsafe extern "C" fn $cpu($($a: $t),*) -> c_int {
            ffi(stringify!($cpu), || $imp(stringify!($cpu), Mem::Host, $($($x,)*)? $($a),*))
        }
        $(#[$doc])*
        ///
        /// Device pointers (CUDA ordinal `device`) for the float buffers, host pointers for the
        /// graph's index arrays; ordered on the caller's `stream` (NULL = legacy default stream).
        #[no_mangle]
        pub unsafe extern "C" fn $cuda($($a: $t,)* device: c_int, stream: *mut c_void) -> c_int {
            let mem = Mem::Cuda { device, stream };
            ffi(stringify!($cuda), || $imp(stringify!($cuda), mem, $($($x,)*)? $($a),*))
        }
    };
}

export!(
    /// LIF forward (DESIGN §3.1). In: `x[T, N]`. Written: `spikes[T, N]` (optional), `v[T, N]`
    /// membrane after reset (optional), `h[T, N]` membrane before firing (required: the
    /// backward's saved tensor).
    gshn_lif_forward_cpu, gshn_lif_forward_cuda, lif_forward [false, Tau::Fixed], (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64,
    x: *const c_void, spikes: *mut c_void, v: *mut c_void, h: *mut c_void,
));
export!(
    /// [`gshn_lif_forward_cpu`] writing `spikes[T, N]` as u8, exactly 0 or 1 (one byte per
    /// spike: the aggregation's `_u8` entries and the backward's inputs are unchanged, since
    /// the backward recomputes the spikes from `h`).
    gshn_lif_forward_u8_cpu, gshn_lif_forward_u8_cuda, lif_forward [true, Tau::Fixed], (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64,
    x: *const c_void, spikes: *mut u8, v: *mut c_void, h: *mut c_void,
));
export!(
    /// LIF backward (BPTT). In: `h[T, N]` from the forward; `grad_spikes[T, N]` and
    /// `grad_v[T, N]` (each optional = zeros, not both NULL). Written: `grad_x[T, N]`;
    /// `grad_tau[1]` when non-NULL (PLIF: d loss / d tau at `params->tau`).
    gshn_lif_backward_cpu, gshn_lif_backward_cuda, lif_backward [Tau::Fixed], (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64,
    h: *const c_void, grad_spikes: *const c_void, grad_v: *const c_void,
    grad_x: *mut c_void, grad_tau: *mut c_void,
));
export!(
    /// PLIF forward: [`gshn_lif_forward_cpu`] with the time constant read from `tau[1]`, a
    /// tensor of `dtype` in the call's memory (`params->tau` is not used). The CPU refuses a
    /// tau that is not finite and > 1 ([`GSHN_ERR_INVALID_VALUE`]); CUDA reads it on the device
    /// (no host synchronisation) and writes NaN into `v` and `h` instead.
    gshn_lif_forward_tau_cpu, gshn_lif_forward_tau_cuda, lif_forward_tau [false], (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64, tau: *const c_void,
    x: *const c_void, spikes: *mut c_void, v: *mut c_void, h: *mut c_void,
));
export!(
    /// [`gshn_lif_forward_tau_cpu`] writing `spikes[T, N]` as u8 (as
    /// [`gshn_lif_forward_u8_cpu`]).
    gshn_lif_forward_u8_tau_cpu, gshn_lif_forward_u8_tau_cuda, lif_forward_tau [true], (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64, tau: *const c_void,
    x: *const c_void, spikes: *mut u8, v: *mut c_void, h: *mut c_void,
));
export!(
    /// PLIF backward: [`gshn_lif_backward_cpu`] with the time constant read from `tau[1]` (as
    /// [`gshn_lif_forward_tau_cpu`]; on CUDA an invalid one makes `grad_x` NaN). Written:
    /// `grad_x[T, N]`; `grad_tau[1]`, d loss / d tau, when non-NULL.
    gshn_lif_backward_tau_cpu, gshn_lif_backward_tau_cuda, lif_backward_tau, (
    params: *const GshnLifParams, dtype: c_int, t: i64, n: i64, tau: *const c_void,
    h: *const c_void, grad_spikes: *const c_void, grad_v: *const c_void,
    grad_x: *mut c_void, grad_tau: *mut c_void,
));
export!(
    /// GAT forward (DESIGN §3.2, PyG GATConv before concat/bias). In: `z[N, H, F]`,
    /// `a_src[H, F]`, `a_dst[H, F]`, `edge_bias[E, H]` (optional). Written: `out[N, H, F]`,
    /// `lse[N, H]` (saved for the backward), `alpha[E, H]` (optional, CSR edge order; then out
    /// and lse must not share memory with the inputs: [`GSHN_ERR_INVALID_ARGUMENT`]).
    gshn_gat_forward_cpu, gshn_gat_forward_cuda, gat_forward, (
    dtype: c_int, graph: *const GshnGraph, heads: i64, feat: i64, negative_slope: f64,
    z: *const c_void, a_src: *const c_void, a_dst: *const c_void, edge_bias: *const c_void,
    out: *mut c_void, lse: *mut c_void, alpha: *mut c_void,
));
export!(
    /// GAT backward. In: the forward's inputs, its `out` and `lse`, `grad_out[N, H, F]`.
    /// Written: `grad_z[N, H, F]`, `grad_a_src[H, F]`, `grad_a_dst[H, F]`, `grad_edge_bias[E, H]`
    /// (optional; only with `edge_bias`). Deterministic.
    gshn_gat_backward_cpu, gshn_gat_backward_cuda, gat_backward, (
    dtype: c_int, graph: *const GshnGraph, heads: i64, feat: i64, negative_slope: f64,
    z: *const c_void, a_src: *const c_void, a_dst: *const c_void, edge_bias: *const c_void,
    out: *const c_void, lse: *const c_void, grad_out: *const c_void,
    grad_z: *mut c_void, grad_a_src: *mut c_void, grad_a_dst: *mut c_void,
    grad_edge_bias: *mut c_void,
));
export!(
    /// Fixed-attention aggregation (DESIGN §3.3): `y[t, i, c]` = Σ over edges k into i of
    /// `alpha[k, c / (C/H)] s[t, src_k, c]`, C a multiple of H. In: `alpha[E, H]` (CSR edge
    /// order), `s[T, N, C]`. Written: `y[T, N, C]`.
    gshn_aggregate_forward_cpu, gshn_aggregate_forward_cuda, aggregate_forward [false], (
    dtype: c_int, graph: *const GshnGraph, heads: i64, t: i64, c: i64,
    alpha: *const c_void, s: *const c_void, y: *mut c_void,
));
export!(
    /// Aggregation backward. In: `alpha`, `s`, `grad_y[T, N, C]`. Written: `grad_alpha[E, H]`
    /// (optional), `grad_s[T, N, C]` (optional).
    gshn_aggregate_backward_cpu, gshn_aggregate_backward_cuda, aggregate_backward [false], (
    dtype: c_int, graph: *const GshnGraph, heads: i64, t: i64, c: i64,
    alpha: *const c_void, s: *const c_void, grad_y: *const c_void,
    grad_alpha: *mut c_void, grad_s: *mut c_void,
));
export!(
    /// [`gshn_aggregate_forward_cpu`] on u8 spikes `s[T, N, C]` (0 or 1, as
    /// `gshn_lif_forward_u8_*` writes them), read exactly as the float dtype of `alpha` and `y`.
    gshn_aggregate_forward_u8_cpu, gshn_aggregate_forward_u8_cuda, aggregate_forward [true], (
    dtype: c_int, graph: *const GshnGraph, heads: i64, t: i64, c: i64,
    alpha: *const c_void, s: *const u8, y: *mut c_void,
));
export!(
    /// [`gshn_aggregate_backward_cpu`] on u8 spikes `s`: `grad_s[T, N, C]` (optional) is in
    /// the float dtype (the gradient LIF's backward takes as `grad_spikes`).
    gshn_aggregate_backward_u8_cpu, gshn_aggregate_backward_u8_cuda, aggregate_backward [true], (
    dtype: c_int, graph: *const GshnGraph, heads: i64, t: i64, c: i64,
    alpha: *const c_void, s: *const u8, grad_y: *const c_void,
    grad_alpha: *mut c_void, grad_s: *mut c_void,
));
export!(
    /// InfoNCE forward (DESIGN §3.4, open_clip ClipLoss; `symmetric` = 0: one-directional
    /// a → p), chunked. In: `a[B, D]`, `p[B, D]`, `logit_scale[1]`. Written: `loss[1]`,
    /// `lse_row[B]`, `lse_col[B]` (symmetric only, NULL otherwise). f64 is CPU only.
    gshn_infonce_forward_cpu, gshn_infonce_forward_cuda, infonce_forward, (
    dtype: c_int, b: i64, d: i64, symmetric: c_int,
    a: *const c_void, p: *const c_void, logit_scale: *const c_void,
    loss: *mut c_void, lse_row: *mut c_void, lse_col: *mut c_void,
));
export!(
    /// InfoNCE backward. In: `a`, `p`, `logit_scale`, `lse_row`, `lse_col` (NULL when
    /// one-directional) from the forward; `grad_loss[1]`. Written (each optional):
    /// `grad_a[B, D]`, `grad_p[B, D]`, `grad_logit_scale[1]`.
    gshn_infonce_backward_cpu, gshn_infonce_backward_cuda, infonce_backward, (
    dtype: c_int, b: i64, d: i64, symmetric: c_int,
    a: *const c_void, p: *const c_void, logit_scale: *const c_void,
    lse_row: *const c_void, lse_col: *const c_void, grad_loss: *const c_void,
    grad_a: *mut c_void, grad_p: *mut c_void, grad_logit_scale: *mut c_void,
));
export!(
    /// One-directional InfoNCE a → p with gathered negatives and a precision mode (DESIGN
    /// §3.4; open_clip `local_loss` + `gather_with_grad`). In: `a[B, D]` (this rank's rows),
    /// `p[P, D]` (every candidate; row i's positive is `p[params->offset + i]`, so
    /// `P ≥ offset + B`), `logit_scale[1]`. Written: `loss[1]`, `lse_row[B]`.
    gshn_infonce_1d_forward_cpu, gshn_infonce_1d_forward_cuda, infonce_1d_forward, (
    params: *const GshnInfoNceParams, dtype: c_int, b: i64, pn: i64, d: i64,
    a: *const c_void, p: *const c_void, logit_scale: *const c_void,
    loss: *mut c_void, lse_row: *mut c_void,
));
export!(
    /// Backward of `gshn_infonce_1d_forward`. In: `a`, `p`, `logit_scale`, `lse_row` from the
    /// forward; `grad_loss[1]`. Written (each optional): `grad_a[B, D]`, `grad_p[P, D]` (every
    /// candidate gets its gradient), `grad_logit_scale[1]`.
    gshn_infonce_1d_backward_cpu, gshn_infonce_1d_backward_cuda, infonce_1d_backward, (
    params: *const GshnInfoNceParams, dtype: c_int, b: i64, pn: i64, d: i64,
    a: *const c_void, p: *const c_void, logit_scale: *const c_void,
    lse_row: *const c_void, grad_loss: *const c_void,
    grad_a: *mut c_void, grad_p: *mut c_void, grad_logit_scale: *mut c_void,
));

/// `s` is in the float dtype, or u8 spikes when `u8_spikes` (the `_u8` entries, whose pointer
/// type is `S` = u8: read exactly as the float dtype).
fn aggregate_forward<S>(
    f: &str,
    mem: Mem,
    u8_spikes: bool,
    dtype: c_int,
    graph: *const GshnGraph,
    heads: i64,
    t: i64,
    c: i64,
    alpha: *const c_void,
    s: *const S,
    y: *mut c_void,
) -> Result<(), CErr> {
    let types = spike_types(f, dtype, u8_spikes)?;
    let s = s.cast();
    let (ins, gr, _) = agg_inputs(f, types, graph, heads, t, c, alpha, s)?;
    let args = agg_args(&ins, &gr, None)?;
    exec(f, mem, Op::Aggregate, owned(args.list()), vec![dst(y, "y")])
}

/// As [`aggregate_forward`]; `grad_s` is in the float dtype also for u8 spikes (the gradient
/// LIF's backward takes as `grad_spikes`).
fn aggregate_backward<S>(
    f: &str,
    mem: Mem,
    u8_spikes: bool,
    dtype: c_int,
    graph: *const GshnGraph,
    heads: i64,
    t: i64,
    c: i64,
    alpha: *const c_void,
    s: *const S,
    grad_y: *const c_void,
    grad_alpha: *mut c_void,
    grad_s: *mut c_void,
) -> Result<(), CErr> {
    let types = spike_types(f, dtype, u8_spikes)?;
    let (dt, s) = (types.0, s.cast());
    let (ins, gr, [t, n, c]) = agg_inputs(f, types, graph, heads, t, c, alpha, s)?;
    let grad_y = (Src::Ptr(grad_y, "grad_y"), m([t, n, c], dt));
    let all = owned(agg_args(&ins, &gr, Some(&grad_y))?.list());
    exec(
        f,
        mem,
        Op::AggregateBackward,
        all,
        vec![dst_opt(grad_alpha, "grad_alpha"), dst_opt(grad_s, "grad_s")],
    )
}
