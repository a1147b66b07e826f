//! GPU bench of the CUDA kernel families, timed with CUDA events (DESIGN §8).
//!
//! Prints one JSON line per measurement:
//! `{"bench", "shape", "ms", "bytes", "gbps", "flops", "tflops"}` where `bytes` / `flops` are the
//! physical floor of the op (compulsory memory traffic / arithmetic), and one line
//! `{"bench":"copy_d2d", ...}` with the device-to-device memcpy bandwidth (the peak for ratios).
//! `--short` (or `GSHN_BENCH_SHORT=1`): fewer repetitions (scripts/gpu_run.sh uses it).
//! Without a GPU: prints `{"skipped":"no CUDA device ..."}` and exits 0.

use gshn::backend::{Backend, CudaBackend, CudaBuffer, View, ViewMut};
use gshn::ops::{AdamWConfig, CsrGraph, GatAttrs, InfoNceAttrs, LifConfig, Op};
use gshn::tensor::{DType, Shape, Tensor};
use gshn::util::rng::SplitMix64;
use gshn::Result;

struct Val {
    buf: CudaBuffer,
    shape: Shape,
    dtype: DType,
}

fn upload(be: &CudaBackend, t: &Tensor) -> Result<Val> {
    let mut buf = be.alloc(t.dtype(), t.numel())?;
    be.write(&mut buf, t)?;
    Ok(Val {
        buf,
        shape: t.shape().clone(),
        dtype: t.dtype(),
    })
}

fn empty(be: &CudaBackend, shape: &[usize], dtype: DType) -> Result<Val> {
    let shape = Shape::new(shape.to_vec());
    Ok(Val {
        buf: be.alloc(dtype, shape.numel())?,
        shape,
        dtype,
    })
}

fn rand(r: &mut SplitMix64, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| r.range(lo as f64, hi as f64) as f32)
        .collect();
    Tensor::new(shape.to_vec(), v).unwrap()
}

fn exec(be: &CudaBackend, op: &Op, ins: &[&Val], outs: &mut [&mut Val]) -> Result<()> {
    let iv: Vec<View<CudaBuffer>> = ins
        .iter()
        .map(|v| View {
            buf: &v.buf,
            shape: &v.shape,
            dtype: v.dtype,
        })
        .collect();
    let mut ov: Vec<ViewMut<CudaBuffer>> = outs
        .iter_mut()
        .map(|v| ViewMut {
            buf: &mut v.buf,
            shape: &v.shape,
            dtype: v.dtype,
        })
        .collect();
    be.execute(op, &iv, &mut ov)
}

/// Milliseconds per call of `f`, by CUDA events around `reps` calls after 2 warm-ups.
fn time(be: &CudaBackend, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let err = |e| gshn::Error::Cuda(format!("event: {e:?}"));
    for _ in 0..2 {
        f()?;
    }
    be.synchronize()?;
    // cudarc's default event flags disable timing (elapsed_ms would fail with INVALID_HANDLE).
    let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let a = be.context().new_event(timed).map_err(err)?;
    let b = be.context().new_event(timed).map_err(err)?;
    a.record(be.stream()).map_err(err)?;
    for _ in 0..reps {
        f()?;
    }
    b.record(be.stream()).map_err(err)?;
    b.synchronize().map_err(err)?;
    Ok(a.elapsed_ms(&b).map_err(err)? as f64 / reps as f64)
}

fn emit(bench: &str, shape: &str, ms: f64, bytes: f64, flops: f64) {
    let s = ms * 1e-3;
    println!(
        "{{\"bench\":{bench:?},\"shape\":{shape:?},\"ms\":{ms:.5},\"bytes\":{bytes:.0},\"gbps\":{:.2},\"flops\":{flops:.0},\"tflops\":{:.3}}}",
        if bytes > 0.0 { bytes / s / 1e9 } else { 0.0 },
        if flops > 0.0 { flops / s / 1e12 } else { 0.0 },
    );
}

/// A random CSR (by destination) with exactly `deg` in-edges per node, and its CSC.
fn graph(r: &mut SplitMix64, n: usize, deg: usize) -> [Tensor; 4] {
    let src: Vec<i32> = (0..n * deg).map(|_| r.below(n) as i32).collect();
    let row_ptr: Vec<i32> = (0..=n).map(|i| (i * deg) as i32).collect();
    let g = CsrGraph::from_csr(row_ptr, src).unwrap();
    [g.row_ptr, g.src, g.col_ptr, g.col_edge]
}

fn main() {
    let short = std::env::args().any(|a| a == "--short")
        || std::env::var("GSHN_BENCH_SHORT").is_ok_and(|v| v == "1");
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("{{\"skipped\":{:?}}}", format!("no CUDA device ({e})"));
            return;
        }
    };
    eprintln!("cuda_ops bench on {}", be.name());
    if let Err(e) = run(&be, if short { 5 } else { 20 }) {
        println!("{{\"error\":{:?}}}", e.to_string());
        std::process::exit(1);
    }
}

fn run(be: &CudaBackend, reps: usize) -> Result<()> {
    let mut r = SplitMix64::new(42);
    be.preload_kernels()?;

    // Peak: device-to-device copy of 512 MiB.
    {
        let n = 512usize << 20;
        let err = |e| gshn::Error::Cuda(format!("copy bench: {e:?}"));
        let src = be.stream().alloc_zeros::<u8>(n).map_err(err)?;
        let mut dst = be.stream().alloc_zeros::<u8>(n).map_err(err)?;
        let ms = time(be, reps, || {
            be.stream().memcpy_dtod(&src, &mut dst).map_err(err)
        })?;
        emit("copy_d2d", "512MiB", ms, 2.0 * n as f64, 0.0);
    }

    // LIF T=8 N=1M (fwd: X in, S V H out; bwd: H gS gV in, gX out), on f32 storage and on
    // bf16 / f16 storage (issue 15: H stays f32, the other tensors halve their bytes).
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let (t, n) = (8usize, 1usize << 20);
        let cfg = LifConfig::default();
        let x = upload(be, &rand(&mut r, &[t, n], -0.5, 2.0).to_dtype(dt)?)?;
        let (mut s, mut v, mut h) = (
            empty(be, &[t, n], dt)?,
            empty(be, &[t, n], dt)?,
            empty(be, &[t, n], DType::F32)?,
        );
        let op = Op::Lif(cfg);
        let ms = time(be, reps, || {
            exec(be, &op, &[&x], &mut [&mut s, &mut v, &mut h])
        })?;
        let (tn, e) = ((t * n) as f64, dt.size() as f64);
        let shape = format!("T=8 N=1048576 {}", dt.name());
        emit("lif_fwd", &shape, ms, tn * (3.0 * e + 4.0), 0.0);
        // V not written (LifConfig::membrane = false, as in training with a rate readout)
        let mut no_v = empty(be, &[0], dt)?;
        let op = Op::Lif(LifConfig {
            membrane: false,
            ..cfg
        });
        let ms = time(be, reps, || {
            exec(be, &op, &[&x], &mut [&mut s, &mut no_v, &mut h])
        })?;
        emit("lif_fwd_no_v", &shape, ms, tn * (2.0 * e + 4.0), 0.0);
        // and the spikes as u8 (LifConfig::u8_spikes): X in, S (1 byte) and H out
        let mut s8 = empty(be, &[t, n], DType::U8)?;
        let op = Op::Lif(LifConfig {
            membrane: false,
            u8_spikes: true,
            ..cfg
        });
        let ms = time(be, reps, || {
            exec(be, &op, &[&x], &mut [&mut s8, &mut no_v, &mut h])
        })?;
        emit("lif_fwd_u8", &shape, ms, tn * (e + 1.0 + 4.0), 0.0);
        let gs = upload(be, &rand(&mut r, &[t, n], -1.0, 1.0).to_dtype(dt)?)?;
        let gv = upload(be, &rand(&mut r, &[t, n], -1.0, 1.0).to_dtype(dt)?)?;
        let mut gx = empty(be, &[t, n], dt)?;
        let op = Op::LifBackward {
            cfg,
            has_gs: true,
            has_gv: true,
        };
        let ms = time(be, reps, || exec(be, &op, &[&h, &gs, &gv], &mut [&mut gx]))?;
        emit("lif_bwd", &shape, ms, tn * (3.0 * e + 4.0), 0.0);
    }

    // Host cost of one op call (issue 18, goal < 10 µs through the C ABI): a tiny LIF (T=1,
    // N=256, device work of a few µs) queued 2000 times and synchronised once, through
    // Backend::execute, the C ABI's zero-copy entry point (the caller's stream: the backend's
    // own here) and lent CudaSlices; milliseconds of host time per call.
    {
        use gshn::backend::Lent;
        use gshn::capi::{gshn_lif_forward_cuda, gshn_lif_params_default, GSHN_F32, GSHN_OK};
        let (t, n, calls) = (1usize, 256usize, 2000usize);
        let host_ms = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            f()?;
            be.synchronize()?;
            let t0 = std::time::Instant::now();
            for _ in 0..calls {
                f()?;
            }
            be.synchronize()?;
            Ok(t0.elapsed().as_secs_f64() * 1e3 / calls as f64)
        };
        let x = upload(be, &rand(&mut r, &[t, n], -0.5, 2.0))?;
        let (mut s, mut v, mut h) = (
            empty(be, &[t, n], DType::F32)?,
            empty(be, &[t, n], DType::F32)?,
            empty(be, &[t, n], DType::F32)?,
        );
        let op = Op::Lif(LifConfig::default());
        let ms = host_ms(&mut || exec(be, &op, &[&x], &mut [&mut s, &mut v, &mut h]))?;
        emit("call_overhead_execute", "lif T=1 N=256", ms, 0.0, 0.0);
        let params = gshn_lif_params_default();
        let stream = be.stream().cu_stream() as *mut std::ffi::c_void;
        let p = |v: &Val| v.buf.device_ptr() as *mut std::ffi::c_void;
        let ms = host_ms(&mut || {
            // SAFETY: device buffers of T·N f32 on device 0, live for the call
            let rc = unsafe {
                gshn_lif_forward_cuda(
                    &params,
                    GSHN_F32,
                    1,
                    256,
                    p(&x),
                    p(&s),
                    p(&v),
                    p(&h),
                    0,
                    stream,
                )
            };
            match rc {
                GSHN_OK => Ok(()),
                _ => Err(gshn::Error::Cuda(format!("gshn_lif_forward_cuda -> {rc}"))),
            }
        })?;
        emit("call_overhead_c_abi", "lif T=1 N=256", ms, 0.0, 0.0);
        let st = be.stream();
        let err = |e| gshn::Error::Cuda(format!("lent bench: {e:?}"));
        let xs = st.alloc_zeros::<f32>(t * n).map_err(err)?;
        let mut lent_outs = Vec::new();
        for _ in 0..3 {
            lent_outs.push(st.alloc_zeros::<f32>(t * n).map_err(err)?);
        }
        let ms = host_ms(&mut || {
            let ins = [Lent::slice(be, &xs, [t, n])?];
            let mut o = Vec::with_capacity(3);
            for s in lent_outs.iter_mut() {
                o.push(Lent::slice_mut(be, s, [t, n])?);
            }
            be.execute_lent(&op, &ins, &mut o)
        })?;
        emit("call_overhead_lent", "lif T=1 N=256", ms, 0.0, 0.0);
    }

    // GAT N=50k, in-degree 16, H=4, F=32, and aggregation, on f32 and on half storage (the
    // statistics lse stay f32; index bytes are 4 in every case).
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let es = dt.size() as f64;
        let (n, deg, hh, f) = (50_000usize, 16usize, 4usize, 32usize);
        let g = graph(&mut r, n, deg);
        let e = n * deg;
        let gv: Vec<Val> = g.iter().map(|t| upload(be, t)).collect::<Result<_>>()?;
        let z = upload(be, &rand(&mut r, &[n, hh, f], -1.0, 1.0).to_dtype(dt)?)?;
        let a_s = upload(be, &rand(&mut r, &[hh, f], -0.3, 0.3).to_dtype(dt)?)?;
        let a_d = upload(be, &rand(&mut r, &[hh, f], -0.3, 0.3).to_dtype(dt)?)?;
        let at = GatAttrs::default();
        let (mut out, mut lse) = (
            empty(be, &[n, hh, f], dt)?,
            empty(be, &[n, hh], DType::F32)?, // lse
        );
        let op = Op::Gat(at);
        let ms = time(be, reps, || {
            exec(
                be,
                &op,
                &[&z, &a_s, &a_d, &gv[0], &gv[1], &gv[2], &gv[3]],
                &mut [&mut out, &mut lse],
            )
        })?;
        let nhf = (n * hh * f) as f64;
        // floor: Z read once + Out written + CSR
        emit(
            "gat_fwd",
            &format!("N=50000 deg=16 H=4 F=32 {}", dt.name()),
            ms,
            2.0 * nhf * es + (e + n) as f64 * 4.0,
            0.0,
        );
        let gout = upload(be, &rand(&mut r, &[n, hh, f], -1.0, 1.0).to_dtype(dt)?)?;
        let (mut gz, mut gas, mut gad) = (
            empty(be, &[n, hh, f], dt)?,
            empty(be, &[hh, f], dt)?,
            empty(be, &[hh, f], dt)?,
        );
        let op = Op::GatBackward(at);
        let ms = time(be, reps, || {
            exec(
                be,
                &op,
                &[
                    &gout, &z, &a_s, &a_d, &out, &lse, &gv[0], &gv[1], &gv[2], &gv[3],
                ],
                &mut [&mut gz, &mut gas, &mut gad],
            )
        })?;
        // floor: gOut, Z, Out read + gZ written + CSR and CSC
        emit(
            "gat_bwd",
            &format!("N=50000 deg=16 H=4 F=32 {}", dt.name()),
            ms,
            4.0 * nhf * es + 2.0 * (e + n) as f64 * 4.0,
            0.0,
        );

        // Aggregation T=4, C=128 (H=4), same graph.
        let (t, c) = (4usize, 128usize);
        let alpha = upload(be, &rand(&mut r, &[e, hh], 0.0, 0.2).to_dtype(dt)?)?;
        let s = upload(be, &rand(&mut r, &[t, n, c], 0.0, 1.0).to_dtype(dt)?)?;
        let mut y = empty(be, &[t, n, c], dt)?;
        let op = Op::Aggregate;
        let ms = time(be, reps, || {
            exec(
                be,
                &op,
                &[&alpha, &s, &gv[0], &gv[1], &gv[2], &gv[3]],
                &mut [&mut y],
            )
        })?;
        let tnc = (t * n * c) as f64;
        emit(
            "aggregate_fwd",
            &format!("T=4 N=50000 C=128 H=4 {}", dt.name()),
            ms,
            2.0 * tnc * es + (e * hh) as f64 * es + e as f64 * 4.0,
            0.0,
        );
    }

    // InfoNCE (symmetric), fwd + bwd.
    for (b, d) in [(32_768usize, 512usize), (4096, 256)] {
        let unit = |r: &mut SplitMix64| {
            let t = rand(r, &[b, d], -1.0, 1.0);
            let v = t.data::<f32>().unwrap();
            let mut o = Vec::with_capacity(v.len());
            for row in v.chunks(d) {
                let nrm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                o.extend(row.iter().map(|x| x / nrm));
            }
            Tensor::new([b, d], o).unwrap()
        };
        let a = upload(be, &unit(&mut r))?;
        let p = upload(be, &unit(&mut r))?;
        let ls = upload(be, &Tensor::scalar((1.0f32 / 0.07).ln()))?;
        let at = InfoNceAttrs::default();
        let (mut loss, mut lr, mut lc) = (
            empty(be, &[], DType::F32)?,
            empty(be, &[b], DType::F32)?,
            empty(be, &[b], DType::F32)?,
        );
        let op = Op::InfoNce(at);
        let ms = time(be, reps.min(10), || {
            exec(be, &op, &[&a, &p, &ls], &mut [&mut loss, &mut lr, &mut lc])
        })?;
        let bbd = (b * b * d) as f64;
        let shape = format!("B={b} D={d} f32");
        emit("infonce_fwd", &shape, ms, 0.0, 2.0 * 2.0 * bbd);
        let gl = upload(be, &Tensor::scalar(1.0f32))?;
        let (mut ga, mut gp, mut gs) = (
            empty(be, &[b, d], DType::F32)?,
            empty(be, &[b, d], DType::F32)?,
            empty(be, &[], DType::F32)?,
        );
        let op = Op::InfoNceBackward(at);
        let ms = time(be, reps.min(10), || {
            exec(
                be,
                &op,
                &[&gl, &a, &p, &ls, &lr, &lc],
                &mut [&mut ga, &mut gp, &mut gs],
            )
        })?;
        emit("infonce_bwd", &shape, ms, 0.0, 2.0 * 4.0 * bbd);
    }

    // cuBLAS matmul 4096^3: f32 (SGEMM), bf16 and f16 (GemmEx on tensor cores, f32 accumulation).
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let m = 4096usize;
        let a = upload(be, &rand(&mut r, &[m, m], -1.0, 1.0).to_dtype(dt)?)?;
        let b = upload(be, &rand(&mut r, &[m, m], -1.0, 1.0).to_dtype(dt)?)?;
        let mut c = empty(be, &[m, m], dt)?;
        let op = Op::MatMul {
            trans_a: false,
            trans_b: false,
            row_stride: 1,
        };
        let ms = time(be, reps, || exec(be, &op, &[&a, &b], &mut [&mut c]))?;
        emit(
            "matmul",
            &format!("4096x4096x4096 {}", dt.name()),
            ms,
            0.0,
            2.0 * (m * m * m) as f64,
        );
    }

    // Segment mean: 8 images of 256x256 pixels, C=64, 256 segments.
    {
        let (pn, c, s) = (8 * 256 * 256usize, 64usize, 256usize);
        let x = upload(be, &rand(&mut r, &[pn, c], -1.0, 1.0))?;
        let seg: Vec<i32> = (0..pn).map(|i| ((i / 997) % s) as i32).collect();
        let seg = upload(be, &Tensor::new([pn], seg).unwrap())?;
        let (mut y, mut cnt) = (
            empty(be, &[s, c], DType::F32)?,
            empty(be, &[s], DType::F32)?,
        );
        let op = Op::SegmentMean { segments: s };
        let ms = time(be, reps, || {
            exec(be, &op, &[&x, &seg], &mut [&mut y, &mut cnt])
        })?;
        emit(
            "segment_mean_fwd",
            "P=524288 C=64 S=256 f32",
            ms,
            (pn * c + pn) as f64 * 4.0,
            0.0,
        );
    }

    // LayerNorm R=65536 C=512.
    {
        let (rows, c) = (65_536usize, 512usize);
        let x = upload(be, &rand(&mut r, &[rows, c], -1.0, 1.0))?;
        let gm = upload(be, &rand(&mut r, &[c], 0.5, 1.5))?;
        let bt = upload(be, &rand(&mut r, &[c], -0.1, 0.1))?;
        let (mut y, mut mu, mut rs) = (
            empty(be, &[rows, c], DType::F32)?,
            empty(be, &[rows], DType::F32)?,
            empty(be, &[rows], DType::F32)?,
        );
        let op = Op::LayerNorm {
            eps: 1e-5,
            row_stride: 1,
        };
        let ms = time(be, reps, || {
            exec(be, &op, &[&x, &gm, &bt], &mut [&mut y, &mut mu, &mut rs])
        })?;
        emit(
            "layernorm_fwd",
            "R=65536 C=512 f32",
            ms,
            2.0 * (rows * c) as f64 * 4.0,
            0.0,
        );
    }

    // AdamW n=16M.
    {
        let n = 16usize << 20;
        let mut p = upload(be, &rand(&mut r, &[n], -1.0, 1.0))?;
        let mut m = upload(be, &rand(&mut r, &[n], -0.1, 0.1))?;
        let mut v = upload(be, &rand(&mut r, &[n], 0.0, 0.1))?;
        let g = upload(be, &rand(&mut r, &[n], -1.0, 1.0))?;
        let cs = upload(be, &Tensor::scalar(1.0f32))?;
        let hy = upload(be, &Tensor::new([2], vec![1e-3f32, 10.0]).unwrap())?;
        let op = Op::AdamW(AdamWConfig::default());
        let ms = time(be, reps, || {
            exec(be, &op, &[&g, &cs, &hy], &mut [&mut p, &mut m, &mut v])
        })?;
        emit("adamw", "n=16777216 f32", ms, 7.0 * n as f64 * 4.0, 0.0);
    }
    Ok(())
}
