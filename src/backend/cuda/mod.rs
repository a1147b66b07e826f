//! The CUDA backend (feature `cuda`, DESIGN §6): the kernels of `kernels/*.cu` driven through
//! `cudarc`, matmul through cuBLAS.
//!
//! - **Start-up** never panics: `libcuda` is probed first (`is_culib_present`), every driver call
//!   is wrapped, and a panic inside cudarc (e.g. a symbol missing from an old driver) is caught;
//!   all failures become `Error::Cuda` with a message saying what is missing.
//! - **Kernels**: one cache of loaded modules, each kernel file loaded once, lazily, from the PTX
//!   that build.rs embedded (nvcc), or compiled at run time by NVRTC for the device's compute
//!   capability when the build had no nvcc. Functions are cached by name.
//! - **Memory**: one stream; buffers are stream-ordered allocations (`cuMemAllocAsync`, the device
//!   memory pool) made only by `alloc` (the executor allocates its plan's slots once). Kernel
//!   scratch (GAT el/er/alpha/gpre, reduction partials, InfoNCE tiles, index CSRs) comes from one
//!   per-backend arena that grows on demand and is reused by every op (the stream orders all
//!   uses), so a training step allocates nothing.
//! - **Index host work**: buffers written from the host (`Backend::write`) keep a host copy when
//!   they hold indices (i32) or are tiny, so the CSR of rows per segment (SegmentMean), the
//!   per-row CSR of ScatterAdd and the validation of index inputs are built on the host with no
//!   device→host copy in the normal case (indices are fed inputs). Index tensors computed on the
//!   device fall back to one copy (a stream sync). Validation errors are `Error::Invalid`, as on
//!   the CPU.
//! - **Semantics** match the CPU backend op for op; `tests/cuda_parity.rs` checks. One file per
//!   op family (`basic.rs`, `lif.rs`, …, as in `src/ops/` and `kernels/`), every launch through
//!   `launch.rs`. Not supported on CUDA: InfoNCE in f64 (the tiled kernels are f32) →
//!   `Error::Unsupported`.
//! - **Half precision** (bf16, f16): the kernels are templated on the storage type and compute
//!   in f32 (`kernels/common.cuh`); matmul is cuBLAS `GemmEx` (f32 accumulation). The families
//!   without half kernels (InfoNCE) run on f32 copies of their half data (`run_in_f32`).

mod basic;
mod gat;
mod infonce;
mod launch;
mod layout;
mod lent;
mod lif;
mod norm;
mod optim;
mod replay;
mod segment;
mod signature;

use super::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::{Family, Op};
use crate::tensor::{DType, Shape, Storage, Tensor};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, PushKernelArg,
};
use launch::{Arg, Output};
pub use lent::Lent;
pub use replay::Recording;
use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

#[allow(dead_code)]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

/// Host copies are kept for i32 buffers and for float buffers up to this many elements.
const HOST_SHADOW_MAX_FLOAT: usize = 16;

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// Runs `f`, turning a panic inside cudarc into `Error::Cuda`.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = crate::util::panic_message(&*p);
            Err(Error::Cuda(format!("{what}: {msg}")))
        }
    }
}

/// Whether libcuda can be loaded (no driver call is made before this says so). Probed once:
/// cudarc's probe opens and closes the library each time, and the C ABI asks on every call.
pub(crate) fn driver_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: only tries to dlopen libcuda.
    *PRESENT.get_or_init(|| {
        catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
    })
}

/// Number of CUDA devices; `Error::Cuda` when the driver library is missing or fails.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::Cuda(
            "libcuda (the NVIDIA driver library) was not found: no usable GPU".into(),
        ));
    }
    guarded("cuda device count", || {
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .map_err(|e| cuda_err("cannot query CUDA devices (cuInit failed)", e))
    })
}

/// A device buffer: raw bytes of `len` elements of `dtype`, plus (for index and tiny buffers
/// written from the host) a host copy of the contents.
pub struct CudaBuffer {
    /// gshn's allocation, or None for the caller's memory (`borrow_raw`: never freed here).
    slice: Option<CudaSlice<u8>>,
    ptr: u64,
    dtype: DType,
    len: usize,
    host: Option<Storage>,
    /// Unique per host copy (0: none): identifies contents already validated (`checked_graphs`).
    stamp: u64,
}

impl CudaBuffer {
    /// The dtype and element count it holds.
    pub(crate) fn held(&self) -> (DType, usize) {
        (self.dtype, self.len)
    }
}

impl CudaBuffer {
    /// Replaces the host copy, with a fresh stamp when there is one.
    fn set_host(&mut self, host: Option<Storage>) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        self.stamp = match host {
            Some(_) => NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            None => 0,
        };
        self.host = host;
    }
    /// The element type it holds.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements it holds.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address (for kernels launched by callers, e.g. benches).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// Bytes of device memory held (a lent buffer: the bytes of its elements).
    pub fn bytes(&self) -> usize {
        self.slice
            .as_ref()
            .map_or(self.len * self.dtype.size(), |s| s.len())
    }
}

/// The kernel modules and functions loaded on a device, each once.
#[derive(Default)]
struct KernelCache {
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Each loaded kernel with its parameters as its PTX declares them.
    funcs: Mutex<HashMap<String, (CudaFunction, Params)>>,
    /// The parameters of every kernel of the loaded modules, by name.
    params: Mutex<HashMap<String, Params>>,
}

/// A kernel's parameters as its PTX declares them.
type Params = Arc<[signature::Param]>;

#[derive(Default)]
struct Scratch {
    buf: Option<CudaSlice<u8>>,
    ptr: u64,
    cap: usize,
}

/// The CUDA backend of one device and stream. Use each backend from one thread at a time: its
/// ops share one scratch arena and one cuBLAS handle, valid for one op at a time. Threads that
/// run ops at once each take a backend of their own stream ([`CudaBackend::on_stream`]).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Option<cudarc::cublas::CudaBlas>,
    /// cuBLAS's workspace, gshn's own, given to the handle before its first call: cuBLAS then
    /// never allocates one itself (which a CUDA-graph capture could not hold) and chooses its
    /// algorithms within the same space in every run. Declared after `blas`: freed after it.
    blas_workspace: std::sync::OnceLock<CudaSlice<u8>>,
    ordinal: usize,
    device_name: String,
    cc: (i32, i32),
    sm_count: u32,
    /// Loaded kernels, shared with the backends of other streams ([`CudaBackend::on_stream`]).
    kernels: Arc<KernelCache>,
    scratch: Mutex<Scratch>,
    /// f32 copies of half-precision data for the families without half kernels (`run_in_f32`).
    staging: Mutex<Vec<CudaBuffer>>,
    /// The last few graphs (node and edge counts, stamps of their index buffers) validated on
    /// the host, so a graph is checked once per upload, not once per op that reads it.
    checked_graphs: Mutex<Vec<[u64; 6]>>,
    /// Operations queued on the stream so far ([`Backend::device_ops`]).
    queued: std::sync::atomic::AtomicU64,
    /// CUDA-graph recording and replay (`replay.rs`).
    recorder: replay::Recorder,
}

impl CudaBackend {
    /// Opens device `ordinal`. Without libcuda, without that device, or on any driver failure:
    /// `Error::Cuda` with a clear message (never a panic).
    pub fn new(ordinal: usize) -> Result<Self> {
        let n = device_count()?;
        if n == 0 {
            return Err(Error::Cuda(
                "the NVIDIA driver reports no CUDA device".into(),
            ));
        }
        if ordinal >= n {
            return Err(Error::Cuda(format!(
                "CUDA device {ordinal} requested, but only {n} device(s) present"
            )));
        }
        guarded("cuda init", || {
            let ctx = CudaContext::new(ordinal).map_err(|e| {
                cuda_err(&format!("cannot create a context on device {ordinal}"), e)
            })?;
            // One stream per backend: no cross-stream event bookkeeping needed.
            // SAFETY: every buffer of a backend is used on its stream only (the backends of
            // other streams, `on_stream`, have buffers of their own).
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx
                .new_stream()
                .map_err(|e| cuda_err("cannot create a stream", e))?;
            let cc = ctx
                .compute_capability()
                .map_err(|e| cuda_err("compute capability", e))?;
            let sm_count = ctx
                .attribute(
                    cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                )
                .map_err(|e| cuda_err("multiprocessor count", e))?
                .max(1) as u32;
            let device_name = ctx.name().unwrap_or_else(|_| "unknown".into());
            Self::assemble(
                ctx,
                stream,
                ordinal,
                device_name,
                cc,
                sm_count,
                Default::default(),
            )
        })
    }

    /// A backend on `stream` with the device facts and kernel cache given; everything else
    /// (cuBLAS handle, scratch arena, staging, counters) its own.
    fn assemble(
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        ordinal: usize,
        device_name: String,
        cc: (i32, i32),
        sm_count: u32,
        kernels: Arc<KernelCache>,
    ) -> Result<Self> {
        // cuBLAS is optional until a matmul runs (then a missing library is a clear error).
        // SAFETY: only tries to dlopen libcublas.
        let blas = if catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() })
            .unwrap_or(false)
        {
            Some(
                cudarc::cublas::CudaBlas::new(stream.clone())
                    .map_err(|e| cuda_err("cannot create a cuBLAS handle", e))?,
            )
        } else {
            None
        };
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            blas_workspace: Default::default(),
            ordinal,
            device_name,
            cc,
            sm_count,
            kernels,
            scratch: Mutex::new(Scratch::default()),
            staging: Mutex::new(Vec::new()),
            checked_graphs: Mutex::new(Vec::new()),
            queued: Default::default(),
            recorder: Default::default(),
        })
    }

    /// A backend of the same device whose ops run on `stream` — a caller's, e.g. wrapped with
    /// `CudaContext::wrap_borrowed_stream` — in stream order with the caller's other work: no
    /// events, no host synchronisation. It shares this backend's loaded kernels; its scratch
    /// arena and staging buffers are its own, allocated stream-ordered on `stream` (the
    /// device's memory pool), and so is its cuBLAS handle. The stream must belong to the
    /// device's primary context, as gshn's and PyTorch's do. Backends of different streams
    /// can run ops from different threads at once.
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<CudaBackend> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::Cuda(format!(
                "the stream belongs to another CUDA context than device {}'s primary context",
                self.ordinal
            )));
        }
        guarded("cuda stream backend", || {
            Self::assemble(
                self.ctx.clone(),
                stream,
                self.ordinal,
                self.device_name.clone(),
                self.cc,
                self.sm_count,
                self.kernels.clone(),
            )
        })
    }

    /// The CUDA device ordinal it runs on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The GPU's name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    /// The device's compute capability `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// The one stream every op of this backend is launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The CUDA context of the device.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Loads every kernel module now (otherwise each loads on first use); returns how many.
    pub fn preload_kernels(&self) -> Result<usize> {
        for (file, _, _) in ptx::KERNEL_SOURCES {
            self.module(file)?;
        }
        Ok(ptx::KERNEL_SOURCES.len())
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut mods = self
            .kernels
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(file) {
            return Ok(m.clone());
        }
        let (_, ptx_src, cu_src) = ptx::KERNEL_SOURCES
            .iter()
            .find(|(n, _, _)| *n == file)
            .ok_or_else(|| Error::Cuda(format!("no kernel file {file}.cu in this build")))?;
        let ptx = match ptx_src {
            Some(p) => cudarc::nvrtc::Ptx::from_src(*p),
            None => self.nvrtc(file, cu_src)?,
        };
        let params = signature::entries(&ptx.to_src());
        let m = guarded(&format!("loading kernels/{file}.cu"), || {
            self.ctx
                .load_module(ptx)
                .map_err(|e| cuda_err(&format!("cannot load the PTX of kernels/{file}.cu"), e))
        })?;
        (self
            .kernels
            .params
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
        .extend(params);
        mods.insert(file, m.clone());
        Ok(m)
    }

    /// Compiles a kernel file with NVRTC for this device (no nvcc at build time).
    fn nvrtc(&self, file: &str, src: &str) -> Result<cudarc::nvrtc::Ptx> {
        // SAFETY: only tries to dlopen libnvrtc.
        let present =
            catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false);
        if !present {
            return Err(Error::Cuda(format!(
                "kernels/{file}.cu: this build embeds no PTX (no nvcc at build time) and libnvrtc \
                 was not found to compile it at run time (install nvidia-cuda-nvrtc or rebuild \
                 with nvcc, see scripts/install_nvcc.sh)"
            )));
        }
        let arch: &'static str = Box::leak(format!("compute_{}{}", self.cc.0, self.cc.1).into());
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            options: vec!["-std=c++17".into()],
            ..Default::default()
        };
        guarded(&format!("nvrtc kernels/{file}.cu"), || {
            cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
                cudarc::nvrtc::CompileError::CompileError { log, .. } => Error::Cuda(format!(
                    "NVRTC failed to compile kernels/{file}.cu for {arch}:\n{}",
                    log.to_string_lossy()
                )),
                other => cuda_err(&format!("NVRTC on kernels/{file}.cu"), other),
            })
        })
    }

    /// The kernel `name` of `kernels/<file>.cu` with its declared parameters, loaded once.
    fn func(&self, file: &'static str, name: &str) -> Result<(CudaFunction, Params)> {
        let mut funcs = self.kernels.funcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = funcs.get(name) {
            return Ok(f.clone());
        }
        let m = self.module(file)?;
        let f = m
            .load_function(name)
            .map_err(|e| cuda_err(&format!("kernel {name} not found in kernels/{file}.cu"), e))?;
        let params = (self
            .kernels
            .params
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
        .get(name)
        .cloned()
        .ok_or_else(|| {
            Error::Cuda(format!(
                "kernel {name}: no parameter list found in the PTX of kernels/{file}.cu"
            ))
        })?;
        funcs.insert(name.to_string(), (f.clone(), params.clone()));
        Ok((f, params))
    }

    /// Launches `file::name` with a 1-D block of `block` threads; checks the launch error.
    pub(crate) fn launch(
        &self,
        file: &'static str,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<()> {
        if !self.issue() {
            return Ok(());
        }
        let (f, params) = self.func(file, name)?;
        signature::check(name, &params, args)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
                Arg::Perm(v) => b.arg(v),
            };
        }
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument lists follow the launch contracts in the kernels' header
        // comments; pointers come from live buffers of this backend with the sizes checked by
        // the ops' shape rules.
        unsafe { b.launch(cfg) }
            .map_err(|e| cuda_err(&format!("launch of {name} (grid {grid:?})"), e))?;
        Ok(())
    }

    /// Accounts for one operation about to be queued on the stream (a launch, a cuBLAS call,
    /// a copy or a fill); false in a replay's host pass, where device work is left out.
    pub(crate) fn issue(&self) -> bool {
        if self.recorder.phase() == replay::Phase::HostPass {
            return false;
        }
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Disjoint scratch regions of the given sizes (bytes, each 256-byte aligned) from the
    /// per-backend arena, grown on demand. Valid until the next call (one call per op).
    pub(crate) fn scratch(&self, sizes: &[usize]) -> Result<Vec<u64>> {
        let mut offs = Vec::with_capacity(sizes.len());
        let mut total = 0usize;
        for &s in sizes {
            offs.push(total);
            total += s.max(1).div_ceil(256) * 256;
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if total > sc.cap {
            self.recorder.check_eager("growing the scratch arena")?;
            let cap = total.max(sc.cap + sc.cap / 2).max(1 << 20);
            // stream-ordered free (earlier kernels finish first), unless a recording uses it
            if let Some(old) = sc.buf.take() {
                self.recorder.retire(old);
            }
            // SAFETY: scratch contents are always written before being read.
            let buf = unsafe { self.stream.alloc::<u8>(cap) }
                .map_err(|e| cuda_err(&format!("cannot allocate {cap} bytes of scratch"), e))?;
            sc.ptr = buf.device_ptr(&self.stream).0;
            sc.buf = Some(buf);
            sc.cap = cap;
        }
        Ok(offs.into_iter().map(|o| sc.ptr + o as u64).collect())
    }

    /// Bytes of the scratch arena (for reports).
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.lock().map(|s| s.cap).unwrap_or(0)
    }

    /// Copies host data to a device address (stream ordered). While a run is recorded or
    /// replayed, the data goes through the recording's pinned buffer (`replay.rs`).
    pub(crate) fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: plain values (numbers, half words) seen as their bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), std::mem::size_of_val(src))
        };
        let staged = self.recorder.stage(bytes)?;
        if !self.issue() {
            return Ok(());
        }
        // SAFETY: a staged copy is a pinned region of the same length, alive as long as the
        // recording that reads it.
        let from = staged.map_or(bytes, |p| unsafe {
            std::slice::from_raw_parts(p, bytes.len())
        });
        // SAFETY: `dst` is a live device region of at least `size_of_val(src)` bytes (scratch
        // sized by the caller); pageable sources are staged before the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, from, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("host-to-device copy", e))
    }

    pub(crate) fn memset0(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 || !self.issue() {
            return Ok(());
        }
        // SAFETY: `dst` is a live device region of at least `bytes` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("memset", e))
    }

    pub(crate) fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 || !self.issue() {
            return Ok(());
        }
        // SAFETY: both are live device regions of at least `bytes` bytes.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream())
        }
        .map_err(|e| cuda_err("device-to-device copy", e))
    }

    /// Copies `len` elements from a device address to the host (waits for the stream).
    pub(crate) fn download<T: Default + Clone>(&self, src: u64, len: usize) -> Result<Vec<T>> {
        self.recorder
            .check_eager("reading device data on the host")?;
        let mut v = vec![T::default(); len];
        if len > 0 {
            self.issue();
            // SAFETY: `src` is a live device region of at least `len` elements of T.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(&mut v, src, self.stream.cu_stream())
            }
            .map_err(|e| cuda_err("device-to-host copy", e))?;
        }
        self.synchronize()?;
        Ok(v)
    }

    /// The cuBLAS handle, or a clear error when libcublas is missing.
    pub(crate) fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        let blas = self.blas.as_ref().ok_or_else(|| {
            Error::Cuda(
                "libcublas was not found (matmul needs cuBLAS: put the nvidia/cublas/lib folder \
                 on LD_LIBRARY_PATH)"
                    .into(),
            )
        })?;
        if self.blas_workspace.get().is_none() {
            // cuBLAS's recommended sizes: 32 MiB on Hopper and later, 4 MiB before.
            let bytes = if self.cc.0 >= 9 { 32 << 20 } else { 4 << 20 };
            self.recorder.check_eager("cuBLAS's workspace")?;
            // SAFETY: scratch for cuBLAS, never read by gshn.
            let ws = unsafe { self.stream.alloc::<u8>(bytes) }
                .map_err(|e| cuda_err(&format!("cuBLAS workspace of {bytes} bytes"), e))?;
            let ptr = ws.device_ptr(&self.stream).0;
            // SAFETY: a live handle on this backend's stream and a device buffer of `bytes`
            // (256-byte aligned, as cuBLAS asks), kept until after the handle is destroyed.
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    bytes,
                )
            }
            .result()
            .map_err(|e| cuda_err("cublasSetWorkspace", e))?;
            // Half products accumulate in f32 to the end, as the op's contract and the CPU do:
            // without this, cuBLAS may add split-K partials in bf16/f16 (more roundings than
            // the one of each result). PyTorch's `allow_bf16_reduced_precision_reduction`.
            let mode =
                cudarc::cublas::sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
            // SAFETY: a live handle; the mode is one of cuBLAS's values.
            unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), mode) }
                .result()
                .map_err(|e| cuda_err("cublasSetMathMode", e))?;
            let _ = self.blas_workspace.set(ws);
        }
        Ok(blas)
    }

    /// Host view of an index input: the host copy kept by `write`, or a device→host copy.
    fn host_i32<'a>(&self, v: &'a View<CudaBuffer>) -> Result<Cow<'a, [i32]>> {
        let n = v.shape.numel();
        if let Some(Storage::I32(h)) = &v.buf.host {
            if h.len() >= n {
                return Ok(Cow::Borrowed(&h[..n]));
            }
        }
        if v.dtype != DType::I32 {
            return Err(Error::graph("an index input must be i32"));
        }
        Ok(Cow::Owned(self.download::<i32>(v.buf.ptr, n)?))
    }

    fn has_host(v: &View<CudaBuffer>) -> bool {
        v.buf.host.is_some()
    }

    /// Runs one op on its family's kernels, then keeps the host copies of its outputs right.
    fn run_op(
        &self,
        op: &Op,
        inputs: &[View<CudaBuffer>],
        outputs: &mut [ViewMut<CudaBuffer>],
    ) -> Result<()> {
        // the aggregation kernels read u8 spikes themselves
        if super::reads_u8(op, inputs) && op.family() != Family::Gat {
            return self.run_spikes_widened(op, inputs, outputs);
        }
        let half = super::any_half(inputs, outputs);
        if half && !matches!(op, Op::Cast(_)) && !half_kernels(op.family()) {
            return self.run_in_f32(op, inputs, outputs);
        }
        let outs: Vec<Output> = outputs
            .iter()
            .map(|o| Output {
                ptr: o.buf.ptr,
                shape: o.shape.clone(),
                dtype: o.dtype,
            })
            .collect();
        let run = match op.family() {
            Family::Basic => basic::execute(self, op, inputs, &outs),
            Family::Layout => layout::execute(self, op, inputs, &outs),
            Family::Norm => norm::execute(self, op, inputs, &outs),
            Family::Lif => lif::execute(self, op, inputs, &outs),
            Family::Gat => gat::execute(self, op, inputs, &outs),
            Family::InfoNce => infonce::execute(self, op, inputs, &outs),
            Family::Segment => segment::execute(self, op, inputs, &outs),
            Family::Optim => optim::execute(self, op, inputs, &outs),
        };
        // Host copies of outputs: derived on the host for index-valued layout ops whose inputs
        // all have one (so e.g. a reshaped index tensor keeps its host copy), else dropped.
        let derive = run.is_ok()
            && outs.iter().any(|o| o.dtype == DType::I32)
            && !inputs.is_empty()
            && inputs.iter().all(Self::has_host);
        let mut shadows = if derive {
            host_layout(op, inputs, &outs)
        } else {
            None
        };
        for (i, o) in outputs.iter_mut().enumerate() {
            o.buf.set_host(
                shadows
                    .as_mut()
                    .map(|s| std::mem::replace(&mut s[i], Storage::I32(vec![]))),
            );
        }
        run
    }
}

/// Whether a family's kernels take half-precision storage themselves (`_bf16` / `_f16`
/// instantiations); the others run on half data through f32 copies (`run_in_f32`).
fn half_kernels(family: Family) -> bool {
    matches!(
        family,
        Family::Basic | Family::Layout | Family::Norm | Family::Segment | Family::Gat | Family::Lif
    )
}

impl CudaBackend {
    /// Runs a matmul that reads u8 spikes (cuBLAS has no u8 × float product) as the CPU
    /// backend does: each u8 input widened exactly by basic.cu's cast to the op's float type
    /// (its output's), in the scratch arena — no allocation per call; the GEMM takes no
    /// scratch of its own, so the regions stay valid for it.
    fn run_spikes_widened(
        &self,
        op: &Op,
        inputs: &[View<CudaBuffer>],
        outputs: &mut [ViewMut<CudaBuffer>],
    ) -> Result<()> {
        if !matches!(op, Op::MatMul { .. }) {
            return Err(launch::unsupported(op, "u8 spikes through float copies"));
        }
        let float = outputs[0].dtype;
        let spikes: Vec<usize> = (0..inputs.len())
            .filter(|&i| inputs[i].dtype == DType::U8)
            .collect();
        let bytes: Vec<usize> = spikes
            .iter()
            .map(|&i| inputs[i].shape.numel() * float.size())
            .collect();
        let mut wide = Vec::with_capacity(spikes.len());
        for (&i, ptr) in spikes.iter().zip(self.scratch(&bytes)?) {
            let (v, n) = (&inputs[i], inputs[i].shape.numel());
            basic::cast(self, op, v.buf.ptr, DType::U8, ptr, float, n)?;
            // SAFETY: a scratch region of n elements of `float`, valid until the next scratch
            // call, which the GEMM below does not make.
            wide.push(unsafe { CudaBuffer::borrow_raw(ptr, float, n)? });
        }
        let mut wide = wide.iter();
        let stand_ins = inputs
            .iter()
            .map(|v| (v.dtype == DType::U8).then(|| wide.next()).flatten());
        let views = super::views_as(inputs, stand_ins, float);
        self.run_op(op, &views, outputs)
    }

    /// Runs an op whose family has no half-precision kernels on half data, as the CPU backend
    /// does: its half inputs widened into f32 staging buffers, the f32 kernels, its half outputs
    /// rounded once from f32. Statistics that stay f32 (`Op::half_stats`) pass through as they
    /// are. The staging buffers are kept and reused (grown on demand), like the scratch arena.
    fn run_in_f32(
        &self,
        op: &Op,
        inputs: &[View<CudaBuffer>],
        outputs: &mut [ViewMut<CudaBuffer>],
    ) -> Result<()> {
        if op.mutated_inputs() > 0 {
            return Err(launch::unsupported(op, "half-precision data in place"));
        }
        let half_in: Vec<usize> = (0..inputs.len())
            .filter(|&i| inputs[i].dtype.is_half())
            .collect();
        let half_out: Vec<usize> = (0..outputs.len())
            .filter(|&i| outputs[i].dtype.is_half())
            .collect();
        for &i in &half_out {
            outputs[i].buf.set_host(None); // overwritten below: its host copy goes stale
        }
        let needs = half_in
            .iter()
            .map(|&i| inputs[i].shape.numel())
            .chain(half_out.iter().map(|&i| outputs[i].shape.numel()));
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, n) in needs.enumerate() {
            if staging.len() <= slot {
                staging.push(self.alloc(DType::F32, n.max(1 << 16))?);
            } else if staging[slot].len < n {
                let grown = self.alloc(DType::F32, n.max(staging[slot].len * 3 / 2))?;
                let old = std::mem::replace(&mut staging[slot], grown);
                if let Some(slice) = old.slice {
                    self.recorder.retire(slice);
                }
            }
        }
        let (st_in, st_out) = staging.split_at_mut(half_in.len());
        for (buf, &i) in st_in.iter().zip(&half_in) {
            let v = &inputs[i];
            basic::cast(
                self,
                op,
                v.buf.ptr,
                v.dtype,
                buf.ptr,
                DType::F32,
                v.shape.numel(),
            )?;
        }
        // the same views, the half ones swapped for their staging buffers (one each, in order)
        let mut st_in = st_in.iter();
        let wide_in = super::f32_views(
            inputs,
            inputs
                .iter()
                .map(|v| v.dtype.is_half().then(|| st_in.next()).flatten()),
        );
        let mut st_out = st_out.iter_mut();
        let half: Vec<bool> = outputs.iter().map(|o| o.dtype.is_half()).collect();
        let mut wide_out = super::f32_views_mut(
            outputs,
            half.into_iter().map(|h| h.then(|| st_out.next()).flatten()),
        );
        self.run_op(op, &wide_in, &mut wide_out)?;
        drop(wide_out);
        let staged = staging[half_in.len()..].iter();
        for (buf, &i) in staged.zip(&half_out) {
            let o = &outputs[i];
            basic::cast(
                self,
                op,
                buf.ptr,
                DType::F32,
                o.buf.ptr,
                o.dtype,
                o.shape.numel(),
            )?;
        }
        Ok(())
    }
}

/// Host copies of the i32 outputs of a layout op, computed by the CPU backend from the inputs'
/// host copies (None when it cannot).
fn host_layout(op: &Op, inputs: &[View<CudaBuffer>], outs: &[Output]) -> Option<Vec<Storage>> {
    let views: Vec<View<Storage>> = inputs
        .iter()
        .map(|v| {
            Some(View {
                buf: v.buf.host.as_ref()?,
                shape: v.shape,
                dtype: v.dtype,
            })
        })
        .collect::<Option<_>>()?;
    let mut bufs: Vec<Storage> = outs
        .iter()
        .map(|o| Storage::zeros(o.dtype, o.shape.numel()))
        .collect();
    let mut out_views: Vec<ViewMut<Storage>> = bufs
        .iter_mut()
        .zip(outs)
        .map(|(b, o)| ViewMut {
            buf: b,
            shape: &o.shape,
            dtype: o.dtype,
        })
        .collect();
    // The views are the CUDA op's own, already matched to it: the unchecked path (this runs
    // on every step of an executor).
    super::CpuBackend
        .execute_planned(op, &views, &mut out_views)
        .ok()?;
    drop(out_views);
    Some(bufs)
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, sm_{}{})",
            self.ordinal, self.device_name, self.cc.0, self.cc.1
        )
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        self.recorder.check_eager("an allocation")?;
        let bytes = (len * dtype.size()).max(8);
        // SAFETY: contents unspecified, as the trait says.
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }
            .map_err(|e| cuda_err(&format!("cannot allocate {bytes} bytes"), e))?;
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(CudaBuffer {
            slice: Some(slice),
            ptr,
            dtype,
            len,
            host: None,
            stamp: 0,
        })
    }

    fn write(&self, dst: &mut CudaBuffer, src: &Tensor) -> Result<()> {
        let n = src.numel();
        if dst.len < n || dst.dtype != src.dtype() {
            return Err(Error::graph(format!(
                "buffer of {} {:?} cannot hold {n} {:?}",
                dst.len,
                dst.dtype,
                src.dtype()
            )));
        }
        match src.storage() {
            Storage::F32(v) => self.upload(dst.ptr, v)?,
            Storage::F64(v) => self.upload(dst.ptr, v)?,
            Storage::I32(v) => self.upload(dst.ptr, v)?,
            // the half types are their 16-bit words (`repr(transparent)`): copied as they are
            Storage::BF16(v) => self.upload(dst.ptr, v)?,
            Storage::F16(v) => self.upload(dst.ptr, v)?,
            Storage::U8(v) => self.upload(dst.ptr, v)?,
        }
        dst.set_host(
            (src.dtype() == DType::I32 || n <= HOST_SHADOW_MAX_FLOAT)
                .then(|| src.storage().clone()),
        );
        Ok(())
    }

    fn read(&self, src: &CudaBuffer, shape: &Shape, dtype: DType) -> Result<Tensor> {
        let n = shape.numel();
        if src.dtype != dtype || src.len < n {
            return Err(Error::graph(format!(
                "buffer holds {} {:?}, value is {n} {dtype:?}",
                src.len, src.dtype
            )));
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(self.download(src.ptr, n)?),
            DType::F64 => Storage::F64(self.download(src.ptr, n)?),
            DType::I32 => Storage::I32(self.download(src.ptr, n)?),
            DType::BF16 => Storage::BF16(self.download(src.ptr, n)?),
            DType::F16 => Storage::F16(self.download(src.ptr, n)?),
            DType::U8 => Storage::U8(self.download(src.ptr, n)?),
        };
        Tensor::from_storage(shape.clone(), storage)
    }

    fn held(&self, buf: &CudaBuffer) -> (DType, usize) {
        buf.held()
    }
    fn execute_planned(
        &self,
        op: &Op,
        inputs: &[View<CudaBuffer>],
        outputs: &mut [ViewMut<CudaBuffer>],
    ) -> Result<()> {
        guarded(op.name(), || self.run_op(op, inputs, outputs))
    }

    fn synchronize(&self) -> Result<()> {
        self.recorder.check_eager("waiting for the device")?;
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("stream synchronize (an earlier kernel failed?)", e))
    }

    type Recording = Recording;

    fn record(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<Option<Recording>> {
        guarded("record", || self.record_run(run))
    }

    fn replay(&self, rec: &Recording, host: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        guarded("replay", || self.replay_run(rec, host))
    }

    fn device_ops(&self) -> Option<u64> {
        Some(self.queued.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// CUDA events recorded on the stream before the first call and after the last: the
    /// device's time for the calls, launch gaps included, without the synchronisation.
    fn time_calls(&self, n: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = || {
            self.stream
                .record_event(timed)
                .map_err(|e| cuda_err("record a timing event", e))
        };
        let start = event()?;
        for _ in 0..n {
            f()?;
        }
        let end = event()?;
        // guarded: cudarc loads cuEventElapsedTime_v2 on first use, which drivers before CUDA
        // 12.8 lack (a panic inside cudarc, here an error)
        let ms = guarded("timing events", || {
            start
                .elapsed_ms(&end)
                .map_err(|e| cuda_err("timing events (an earlier kernel failed?)", e))
        })?;
        Ok(f64::from(ms) / n.max(1) as f64)
    }
}
