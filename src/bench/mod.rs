//! The kernel benchmark behind `gshn bench`: one implementation of the benchmarked shapes, their
//! byte and FLOP counts, and the timing, for the CPU and CUDA backends.
//!
//! A run measures the device's floors first — memory bandwidth (a parallel copy, read and STREAM
//! triad on the CPU, a device-to-device copy on CUDA) and GEMM throughput per dtype (the `MatMul`
//! op: the GEMM crate on the CPU, cuBLAS on CUDA) — then each kernel, forward and backward, through
//! [`Backend::execute`] on buffers prepared beforehand (outputs preallocated, the forward's
//! saved values computed once). Each [`Row`] gives the median and spread of the timed calls,
//! the compulsory bytes or the FLOPs of the call (see [`Case`]), the achieved GB/s or TFLOP/s and
//! its fraction of the measured floor. [`compare`] runs the same cases through PyTorch (and PyG /
//! SpikingJelly where importable) with a given Python, in the same run.
//!
//! **Timing.** Two warm-up calls; then samples until the time budget is spent (at least 3, at
//! most 50). A sample is a batch of calls sized so that it takes ≥ 1 ms, divided by its length
//! ([`Backend::time_calls`]): on CUDA timed by events recorded on the stream around the batch,
//! on the CPU by the host clock (a batch is one call for anything above a millisecond).

mod cases;

pub use cases::{cases, prepare, Case, Overrides, Pass, Prepared, Size, OPS};

use crate::backend::{AnyBackend, AnyBuffer, Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::{Op, Precision};
use crate::tensor::{DType, Meta, Shape, Tensor};
use crate::util::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Problem sizes.
    pub size: Size,
    /// Dims set by hand on top of `size`.
    pub overrides: Overrides,
    /// Which kernels (names of [`OPS`]).
    pub ops: Vec<String>,
    /// Float dtypes (and InfoNCE tensor-core modes) to run each kernel in.
    pub dtypes: Vec<Numerics>,
    /// Time spent sampling each case (after warm-up).
    pub budget: Duration,
    /// The training step (`step`) replayed as a CUDA graph on a GPU, as `gshn train` runs it;
    /// false: op by op (`--no-cuda-graph`).
    pub cuda_graph: bool,
}

impl Options {
    /// Every kernel in f32 at `size`, with the budget that size gets by default.
    pub fn new(size: Size) -> Options {
        Options {
            size,
            overrides: Overrides::new(),
            ops: OPS.iter().map(|s| s.to_string()).collect(),
            dtypes: vec![Numerics::F32],
            budget: Duration::from_millis(match size {
                Size::Small => 30,
                Size::Default => 600,
                Size::Large => 1500,
            }),
            cuda_graph: true,
        }
    }
}

/// The device's measured floors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Floors {
    /// The memory floor of the memory-bound rows: the highest of `copy_gbps`, `read_gbps` and
    /// `triad_gbps`.
    pub bandwidth_gbps: f64,
    /// Copy bandwidth in GB/s (read + write bytes per second, as STREAM counts them; the CPU's
    /// write-allocate reads of the destination are not counted).
    pub copy_gbps: f64,
    /// Read bandwidth in GB/s (a parallel reduction over the same bytes; CPU only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub read_gbps: Option<f64>,
    /// STREAM triad bandwidth in GB/s (`a = b + s·c`, two streams read and one written; CPU
    /// only): the pattern of the optimizer and the elementwise kernels.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub triad_gbps: Option<f64>,
    /// Bytes copied per call.
    pub copy_bytes: f64,
    /// GEMM throughput per dtype.
    pub gemm: Vec<GemmFloor>,
}

/// The GEMM floor of one dtype.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GemmFloor {
    /// The dtype (`f32`, `f64`).
    pub dtype: String,
    /// M = N of the product.
    pub n: usize,
    /// Its depth K: `n` on a GPU, at most 512 on the CPU, the longest depth that its fastest
    /// kernels compute (longer ones run kernels whose bits they keep: `src/backend/cpu/gemm.rs`).
    pub k: usize,
    /// Achieved TFLOP/s (2·n²·k FLOPs per call).
    pub tflops: f64,
}

/// One timed case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// What was timed and its floor.
    #[serde(flatten)]
    pub case: Case,
    /// Median milliseconds per call.
    pub ms: f64,
    /// Fastest sample, ms per call.
    pub ms_min: f64,
    /// Slowest sample, ms per call.
    pub ms_max: f64,
    /// Calls timed in all.
    pub calls: usize,
    /// `bytes / time`, GB/s (0 for compute-bound cases).
    pub gbps: f64,
    /// `flops / time`, TFLOP/s (0 for memory-bound cases).
    pub tflops: f64,
    /// `items / time` per second (graphs/s of a training step; 0 otherwise).
    #[serde(default)]
    pub items_per_s: f64,
    /// Achieved GB/s over the copy floor, or TFLOP/s over the GEMM floor of the dtype.
    pub of_floor: f64,
    /// The same case in the reference library, when `--compare` ran it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<Reference>,
}

/// A reference library's time for a case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reference {
    /// What was timed (library and call).
    pub implementation: String,
    /// Its median milliseconds per call.
    pub ms: f64,
    /// Reference time over gshn's (above 1: gshn is faster).
    pub speedup: f64,
}

/// A whole run: where, what, and every row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// gshn's version.
    pub gshn: String,
    /// The commit it was built from (`unknown` outside a git checkout).
    pub commit: String,
    /// Hash of `kernels/*.cu` it was built with (FNV-1a 64).
    pub kernels: String,
    /// The backend (`cpu (2 threads)`, or the GPU's name).
    pub device: String,
    /// The CUDA driver version, on a GPU.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver: Option<String>,
    /// `small`, `default` or `large`.
    pub size: Size,
    /// Dims set by hand on top of `size`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub overrides: Overrides,
    /// The floors every row is compared with.
    pub floors: Floors,
    /// One per case, in the order run.
    pub rows: Vec<Row>,
    /// The reference libraries `--compare` found, with versions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reference_libraries: Option<serde_json::Value>,
}

/// Where a run is; given to the progress callback before each step.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Steps done so far.
    pub done: usize,
    /// Steps in all (floors, then cases).
    pub total: usize,
    /// What runs now.
    pub what: String,
}

/// Runs the floors and then every case of `opts` on `shared` (an `Arc`: the training-step case
/// builds an engine on the same device).
pub fn run(
    shared: &std::sync::Arc<AnyBackend>,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    let be: &AnyBackend = shared;
    let mut list = cases(opts.size, &opts.overrides, &opts.ops, &opts.dtypes)?;
    for c in list
        .iter_mut()
        .filter(|c| c.op == "step" && !opts.cuda_graph)
    {
        c.op_by_op = true;
        c.id.push_str("_op_by_op");
    }
    // One GEMM floor per storage dtype (the tensor-core modes are held to the f32 one: the
    // project's GEMM has no tf32/bf16 mode to measure).
    let mut storage: Vec<DType> = Vec::new();
    for n in &opts.dtypes {
        if !storage.contains(&n.dtype) {
            storage.push(n.dtype);
        }
    }
    let total = list.len() + 1 + storage.len();
    let mut step = |done: usize, what: String| progress(&Progress { done, total, what });
    step(0, "memory bandwidth".into());
    let (copy_gbps, read_gbps, triad_gbps, copy_bytes) = bandwidth_floor(be, opts)?;
    let mut gemm = Vec::new();
    for (k, &dt) in storage.iter().enumerate() {
        step(1 + k, format!("GEMM {}", dtype_name(dt)));
        gemm.push(gemm_floor(be, dt, opts)?);
    }
    let floors = Floors {
        bandwidth_gbps: copy_gbps
            .max(read_gbps.unwrap_or(0.0))
            .max(triad_gbps.unwrap_or(0.0)),
        copy_gbps,
        read_gbps,
        triad_gbps,
        copy_bytes,
        gemm,
    };
    let mut rows = Vec::new();
    let mut rng = SplitMix64::new(42);
    for (k, case) in list.into_iter().enumerate() {
        step(1 + storage.len() + k, case.label());
        let mut prepared = prepare(shared, &case, &mut rng)?;
        let t = time(be, opts.budget, || prepared.call(be))?;
        rows.push(row(case, t, &floors));
    }
    step(total, "done".into());
    Ok(Report {
        gshn: env!("CARGO_PKG_VERSION").into(),
        commit: option_env!("GSHN_GIT_COMMIT").unwrap_or("unknown").into(),
        kernels: env!("GSHN_KERNELS_HASH").into(),
        device: be.name(),
        driver: driver_version(be),
        size: opts.size,
        overrides: opts.overrides.clone(),
        floors,
        rows,
        reference_libraries: None,
    })
}

/// `f32`, `f64`, `i32`, `bf16`, `f16`.
pub fn dtype_name(dt: DType) -> &'static str {
    dt.name()
}

/// What one `--dtype` entry names: a storage dtype (`f32`, `f64`, `bf16`, `f16`: every op's
/// tensors in that type; half storage computes in f32 and keeps the statistics in f32, as
/// `train.precision` does), or `tf32`, InfoNCE's tensor-core mode on f32 tensors (the other ops
/// skip it). On bf16 tensors InfoNCE runs its `bf16` mode (its operands are bf16 values); the
/// optimizer and the training step, which take f32 master weights, skip the half types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numerics {
    /// The tensors' dtype.
    pub dtype: DType,
    /// InfoNCE's operand precision.
    pub precision: Precision,
}

impl Numerics {
    /// Exact f32.
    pub const F32: Numerics = Numerics {
        dtype: DType::F32,
        precision: Precision::F32,
    };

    /// `f32`, `f64`, `bf16`, `f16` or `tf32`.
    pub fn name(self) -> &'static str {
        match self.precision {
            Precision::Tf32 => self.precision.name(),
            _ => dtype_name(self.dtype),
        }
    }

    /// Whether `op` runs at this entry (see [`Numerics`]).
    pub fn applies_to(self, op: &str) -> bool {
        if self.precision == Precision::Tf32 {
            op == "infonce"
        } else {
            !(self.dtype.is_half() && matches!(op, "adamw" | "step"))
        }
    }

    /// The dtype of the statistics the fused ops keep beside their outputs (LIF's charge, the
    /// log-sum-exps, LayerNorm's mean and rstd, segment counts): f32 on half storage.
    pub fn stat_dtype(self) -> DType {
        if self.dtype.is_half() {
            DType::F32
        } else {
            self.dtype
        }
    }
}

/// A `--dtype` entry by name (see [`Numerics`]).
pub fn parse_dtype(s: &str) -> Result<Numerics> {
    let (dtype, precision) = match s.trim() {
        "f32" => (DType::F32, Precision::F32),
        "f64" => (DType::F64, Precision::F32),
        "bf16" => (DType::BF16, Precision::Bf16),
        "f16" => (DType::F16, Precision::F32),
        "tf32" => (DType::F32, Precision::Tf32),
        other => {
            return Err(Error::invalid(
                "bench",
                format!(
                    "dtype {other:?}: the storage types are f32, f64, bf16 and f16; tf32 is \
                     InfoNCE's tensor-core mode on f32 tensors"
                ),
            ))
        }
    };
    Ok(Numerics { dtype, precision })
}

fn row(case: Case, t: Timing, floors: &Floors) -> Row {
    let s = t.median_ms * 1e-3;
    let gbps = if case.flops > 0.0 {
        0.0
    } else {
        case.bytes / s / 1e9
    };
    let tflops = if case.flops > 0.0 {
        case.flops / s / 1e12
    } else {
        0.0
    };
    let gemm = floors
        .gemm
        .iter()
        .find(|g| g.dtype == case.dtype)
        .or_else(|| floors.gemm.iter().find(|g| g.dtype == "f32"))
        .map_or(0.0, |g| g.tflops);
    let of_floor = if case.flops > 0.0 {
        tflops / gemm.max(f64::MIN_POSITIVE)
    } else if case.bytes > 0.0 {
        gbps / floors.bandwidth_gbps.max(f64::MIN_POSITIVE)
    } else {
        0.0
    };
    let items_per_s = case.items / s;
    Row {
        case,
        ms: t.median_ms,
        ms_min: t.min_ms,
        ms_max: t.max_ms,
        calls: t.calls,
        gbps,
        tflops,
        items_per_s,
        of_floor,
        reference: None,
    }
}

// ---- timing ----------------------------------------------------------------------------------

/// Per-call times of a case.
#[derive(Clone, Copy, Debug)]
struct Timing {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    calls: usize,
}

/// Times `f` (see the module doc): 2 warm-ups, then samples of batched calls.
fn time<B: Backend>(be: &B, budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    let batch = |n: usize, f: &mut dyn FnMut() -> Result<()>| be.time_calls(n, f);
    batch(1, &mut f)?;
    let one = batch(1, &mut f)?;
    let per_batch = (1.0 / one.max(1e-6)).ceil().clamp(1.0, 1000.0) as usize;
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 3 || (start.elapsed() < budget && samples.len() < 50) {
        samples.push(batch(per_batch, &mut f)?);
    }
    samples.sort_by(f64::total_cmp);
    let (min_ms, max_ms) = (samples[0], samples[samples.len() - 1]);
    Ok(Timing {
        median_ms: samples[samples.len() / 2],
        min_ms,
        max_ms,
        calls: samples.len() * per_batch,
    })
}

// ---- floors ----------------------------------------------------------------------------------

/// Copy bandwidth (256 MiB, 32 MiB for small runs, read and written per call) and, on the CPU,
/// read bandwidth (the same bytes reduced) and triad bandwidth (three arrays of a third of the
/// bytes each): (copy, read, triad GB/s, bytes moved per copy).
type BandwidthFloor = (f64, Option<f64>, Option<f64>, f64);

fn bandwidth_floor(be: &AnyBackend, opts: &Options) -> Result<BandwidthFloor> {
    let bytes: usize = if opts.size == Size::Small {
        32 << 20
    } else {
        256 << 20
    };
    let gbps = |b: f64, t: Timing| b / (t.median_ms * 1e-3) / 1e9;
    let (copy, read, triad) = match be {
        AnyBackend::Cpu(_) => {
            use rayon::prelude::*;
            let n = bytes / 4;
            let src = crate::tensor::try_filled(n, 1u32)?;
            let mut dst = crate::tensor::try_filled(n, 0u32)?;
            let chunk = 1 << 18;
            let copy = time(be, opts.budget, || {
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })?;
            let mut sink = 0u32;
            let read = time(be, opts.budget, || {
                // XOR is associative: the reduction vectorises fully.
                sink ^= src
                    .par_chunks(chunk)
                    .map(|c| c.iter().fold(0u32, |a, &x| a ^ x))
                    .reduce(|| 0, |a, b| a ^ b);
                Ok(())
            })?;
            std::hint::black_box(sink);
            let third = n / 3;
            let (b, c) = (&src[..third], &src[third..2 * third]);
            let mut a = crate::tensor::try_filled(third, 0u32)?;
            let triad = time(be, opts.budget, || {
                a.par_chunks_mut(chunk)
                    .zip(b.par_chunks(chunk).zip(c.par_chunks(chunk)))
                    .for_each(|(a, (b, c))| {
                        for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                            *a = b.wrapping_add(c.wrapping_mul(3));
                        }
                    });
                Ok(())
            })?;
            let triad_bytes = 3.0 * (third * 4) as f64;
            (
                copy,
                Some(gbps(bytes as f64, read)),
                Some(gbps(triad_bytes, triad)),
            )
        }
        #[cfg(feature = "cuda")]
        AnyBackend::Cuda(c) => {
            let err = |e| Error::Cuda(format!("copy floor: {e:?}"));
            let src = c.stream().alloc_zeros::<u8>(bytes).map_err(err)?;
            let mut dst = c.stream().alloc_zeros::<u8>(bytes).map_err(err)?;
            let copy = time(be, opts.budget, || {
                c.stream().memcpy_dtod(&src, &mut dst).map_err(err)
            })?;
            (copy, None, None)
        }
    };
    let moved = 2.0 * bytes as f64;
    Ok((gbps(moved, copy), read, triad, moved))
}

/// GEMM throughput of `dt`: `[n, k]·[k, n]` with n = 2048 (512 for small runs; 4096 on a
/// GPU) and k = n, at most 512 on the CPU (the depth of one block of its AVX-512 kernels).
fn gemm_floor(be: &AnyBackend, dt: DType, opts: &Options) -> Result<GemmFloor> {
    let n = match (opts.size, be.is_cuda()) {
        (Size::Small, _) => 512,
        (_, true) => 4096,
        (_, false) => 2048,
    };
    let k = if be.is_cuda() { n } else { n.min(512) };
    let mut rng = SplitMix64::new(7);
    let (ma, mb, m) = (
        Meta::new([n, k], dt),
        Meta::new([k, n], dt),
        Meta::new([n, n], dt),
    );
    let a = upload(be, &random(&ma, &mut rng)?)?;
    let b = upload(be, &random(&mb, &mut rng)?)?;
    let mut c = be.alloc(dt, n * n)?;
    let op = Op::MatMul {
        trans_a: false,
        trans_b: false,
        row_stride: 1,
    };
    let t = time(be, opts.budget, || {
        let ins = [view(&a.0, &a.1), view(&b.0, &b.1)];
        let mut outs = [ViewMut {
            buf: &mut c,
            shape: &m.shape,
            dtype: dt,
        }];
        be.execute(&op, &ins, &mut outs)
    })?;
    Ok(GemmFloor {
        dtype: dtype_name(dt).into(),
        n,
        k,
        tflops: 2.0 * (n * n * k) as f64 / (t.median_ms * 1e-3) / 1e12,
    })
}

fn driver_version(be: &AnyBackend) -> Option<String> {
    match be {
        AnyBackend::Cpu(_) => None,
        #[cfg(feature = "cuda")]
        AnyBackend::Cuda(_) => {
            let mut v: std::ffi::c_int = 0;
            // SAFETY: a plain out-parameter query; the driver is loaded (a backend exists).
            let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
            (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
                .then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
        }
    }
}

// ---- buffers ---------------------------------------------------------------------------------

/// A random host tensor of `m`: floats in ±1 (never zero), indices need their own rule.
fn random(m: &Meta, rng: &mut SplitMix64) -> Result<Tensor> {
    let n = m.checked_bytes().map(|_| m.shape.numel()).ok_or_else(|| {
        Error::invalid("bench", format!("{:?} is larger than any memory", m.shape))
    })?;
    let x = |rng: &mut SplitMix64| {
        let v = rng.range(-1.0, 1.0);
        if v.abs() < 1e-3 {
            0.5
        } else {
            v
        }
    };
    // try_filled: out of memory is an error here, not an abort of the process.
    match m.dtype {
        DType::F32 => {
            let mut v = crate::tensor::try_filled(n, 0f32)?;
            v.iter_mut().for_each(|e| *e = x(rng) as f32);
            Tensor::new(m.shape.clone(), v)
        }
        DType::F64 => {
            let mut v = crate::tensor::try_filled(n, 0f64)?;
            v.iter_mut().for_each(|e| *e = x(rng));
            Tensor::new(m.shape.clone(), v)
        }
        DType::I32 => Err(Error::graph("bench: random indices need a rule")),
        d => random(&Meta::new(m.shape.clone(), DType::F32), rng)?.to_dtype(d),
    }
}

fn upload(be: &AnyBackend, t: &Tensor) -> Result<(AnyBuffer, Meta)> {
    let mut buf = be.alloc(t.dtype(), t.numel())?;
    be.write(&mut buf, t)?;
    Ok((buf, Meta::new(t.shape().clone(), t.dtype())))
}

fn view<'a>(buf: &'a AnyBuffer, m: &'a Meta) -> View<'a, AnyBuffer> {
    View {
        buf,
        shape: &m.shape,
        dtype: m.dtype,
    }
}

/// A shape written `a×b×c`.
pub fn shape_text(s: &Shape) -> String {
    let d: Vec<String> = s.dims().iter().map(|d| d.to_string()).collect();
    d.join("×")
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

// ---- comparison and output -------------------------------------------------------------------

/// The PyTorch side of `--compare`: a Python script fed on stdin (so the installed binary needs
/// no repository), reading the cases and printing one JSON line per case.
pub const COMPARE_SCRIPT: &str = include_str!("compare.py");

/// Runs every row of `report` through PyTorch with `python` (once per dtype) and fills in
/// `reference`; a missing interpreter, or one without torch, is an error naming it; a case the
/// script cannot run stays without a reference.
pub fn compare(report: &mut Report, python: &std::path::Path, threads: usize) -> Result<()> {
    let mut dtypes: Vec<String> = report.rows.iter().map(|r| r.case.dtype.clone()).collect();
    dtypes.sort();
    dtypes.dedup();
    let device = if report.driver.is_some() {
        "cuda:0"
    } else {
        "cpu"
    };
    for dtype in dtypes {
        let cases: Vec<serde_json::Value> = report
            .rows
            .iter()
            .filter(|r| r.case.dtype == dtype)
            .map(|r| {
                serde_json::json!({
                    "id": r.case.id, "op": r.case.op, "pass": r.case.pass,
                    "dims": r.case.dims, "reps": r.calls.clamp(3, 20),
                })
            })
            .collect();
        let spec = serde_json::json!({
            "device": device, "dtype": dtype, "threads": threads, "cases": cases,
        });
        for line in run_script(python, &spec)?.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(lib) = v.get("library") {
                report.reference_libraries = Some(lib.clone());
                continue;
            }
            let (Some(id), Some(ms)) = (v["id"].as_str(), v["ms"].as_f64()) else {
                continue;
            };
            if let Some(row) = report.rows.iter_mut().find(|r| r.case.id == id) {
                row.reference = Some(Reference {
                    implementation: v["impl"].as_str().unwrap_or("torch").to_string(),
                    ms,
                    speedup: ms / row.ms,
                });
            }
        }
    }
    Ok(())
}

/// Runs [`COMPARE_SCRIPT`] with `python` on `spec` (written to a temporary file); its stdout.
fn run_script(python: &std::path::Path, spec: &serde_json::Value) -> Result<String> {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("gshn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let file = dir.join("cases.json");
    std::fs::write(&file, spec.to_string()).map_err(|e| io_error(&file, e))?;
    let mut child = std::process::Command::new(python)
        .arg("-")
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::invalid(
                "bench",
                format!("--compare: cannot run {}: {e}", python.display()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(COMPARE_SCRIPT.as_bytes())
            .map_err(|e| io_error(python, e))?;
    }
    let out = child.wait_with_output().map_err(|e| io_error(python, e))?;
    std::fs::remove_dir_all(&dir).ok();
    if !out.status.success() {
        return Err(Error::invalid(
            "bench",
            format!(
                "--compare: {} exited with {} (is torch installed for it?)",
                python.display(),
                out.status
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Report {
    /// The human-readable table: floors, then one line per case.
    pub fn table(&self) -> String {
        let mut s = format!(
            "gshn {} on {}{} — {} shapes\nfloors: copy {:.1} GB/s ({} MiB each way)",
            self.gshn,
            self.device,
            self.driver
                .as_ref()
                .map_or(String::new(), |d| format!(" (driver {d})")),
            self.size.name(),
            self.floors.copy_gbps,
            (self.floors.copy_bytes / 2.0 / (1 << 20) as f64).round(),
        );
        if let Some(r) = self.floors.read_gbps {
            s.push_str(&format!(", read {r:.1} GB/s"));
        }
        if let Some(t) = self.floors.triad_gbps {
            s.push_str(&format!(", triad {t:.1} GB/s"));
        }
        for g in &self.floors.gemm {
            s.push_str(&format!(
                "; GEMM {} {:.3} TFLOP/s ({}×{}·{}×{})",
                g.dtype, g.tflops, g.n, g.k, g.k, g.n
            ));
        }
        s.push('\n');
        let reference = self.rows.iter().any(|r| r.reference.is_some());
        let w = self
            .rows
            .iter()
            .map(|r| r.case.label().len())
            .max()
            .unwrap_or(6);
        s.push_str(&format!(
            "{:<w$} {:>10} {:>8} {:>9} {:>9} {:>8}",
            "kernel", "ms", "±", "GB/s", "TFLOP/s", "of floor"
        ));
        if reference {
            s.push_str(&format!(" {:>10} {:>7}", "torch ms", "speedup"));
        }
        s.push('\n');
        for r in &self.rows {
            let spread = (r.ms_max - r.ms_min) / 2.0 / r.ms.max(f64::MIN_POSITIVE) * 100.0;
            let num = |x: f64, p: usize| {
                if x > 0.0 {
                    format!("{x:.p$}")
                } else {
                    "-".into()
                }
            };
            let floor = if r.of_floor > 0.0 {
                format!("{:.0}%", r.of_floor * 100.0)
            } else {
                format!("{:.0} graphs/s", r.items_per_s)
            };
            s.push_str(&format!(
                "{:<w$} {:>10.3} {:>7.0}% {:>9} {:>9} {:>8}",
                r.case.label(),
                r.ms,
                spread,
                num(r.gbps, 1),
                num(r.tflops, 3),
                floor
            ));
            if let Some(x) = &r.reference {
                s.push_str(&format!(" {:>10.3} {:>6.2}×", x.ms, x.speedup));
            } else if reference {
                s.push_str(&format!(" {:>10} {:>7}", "-", "-"));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "{}\n",
            "ms: median per call; ±: half the spread of the samples; of floor: GB/s over the \
             best of copy, read and triad bandwidth (memory-bound kernels) or TFLOP/s over the GEMM \
             floor (compute-bound); a training step shows graphs/s instead"
        ));
        if reference {
            s.push_str(
                "speedup: the reference library's time over gshn's (above 1: gshn is faster)\n",
            );
        }
        s
    }
}
