//! LIF forward and backward on the CPU backend at T = 8, N = 1M (f32; the forward also on
//! bf16 storage), in GB/s.
//!
//! Bytes counted: forward reads X and writes S, V, H (4 · T·N · 4 B); backward reads H, gS,
//! gV and writes gX (4 · T·N · 4 B; the learnable-tau variant also re-reads H_{t−1}, which
//! is served from cache). Write-allocate traffic is not counted.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::backend::{Backend, View, ViewMut};
use gshn::ops::{LifConfig, Op};
use gshn::tensor::Storage;
use gshn::{CpuBackend, DType, Shape};

const T: usize = 8;
const N: usize = 1 << 20;

fn buf(f: impl Fn(usize) -> f32) -> Storage {
    Storage::F32((0..T * N).map(f).collect())
}

/// A whole buffer as a tensor of `shape`, of the buffer's dtype.
fn view<'a>(buf: &'a Storage, shape: &'a Shape) -> View<'a, Storage> {
    View {
        buf,
        shape,
        dtype: buf.dtype(),
    }
}

/// [`view`], writable.
fn out<'a>(buf: &'a mut Storage, shape: &'a Shape) -> ViewMut<'a, Storage> {
    let dtype = buf.dtype();
    ViewMut { buf, shape, dtype }
}

fn bench(c: &mut Criterion) {
    let be = CpuBackend;
    let shape = Shape::new([T, N]);
    let scalar = Shape::scalar();
    // Deterministic pseudo-random inputs with roughly 20–30 % firing.
    let hash = |i: usize| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f32 / 1000.0;
    let x = buf(|i| 3.0 * hash(i) - 0.4);
    let gs = buf(|i| hash(i + 17) - 0.5);
    let gv = buf(|i| hash(i + 91) - 0.5);
    let tau = Storage::F32(vec![2.0]);
    let (mut s, mut v, mut h, mut gx) = (
        Storage::zeros(DType::F32, T * N),
        Storage::zeros(DType::F32, T * N),
        Storage::zeros(DType::F32, T * N),
        Storage::zeros(DType::F32, T * N),
    );
    let mut gtau = Storage::zeros(DType::F32, 1);
    let cfg = LifConfig::default();
    let plif = LifConfig {
        learnable_tau: true,
        ..cfg
    };

    let elems = (T * N) as u64;
    let bytes = 4 * elems * 4;
    let threads = rayon::current_num_threads();
    let floor_ms = bytes as f64 / (10e9 * threads as f64) * 1e3;
    println!(
        "lif T={T} N={N} f32: {} MB per pass; floor at ~10 GB/s per core × {threads} threads: {floor_ms:.2} ms per pass",
        bytes / 1_000_000
    );

    let mut g = c.benchmark_group("lif");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("forward", |b| {
        b.iter(|| {
            let mut outs = [
                out(&mut s, &shape),
                out(&mut v, &shape),
                out(&mut h, &shape),
            ];
            be.execute(&Op::Lif(cfg), &[view(&x, &shape)], &mut outs)
                .unwrap();
        })
    });
    let spikes: f64 = match &s {
        Storage::F32(d) => d.iter().map(|&v| v as f64).sum(),
        _ => 0.0,
    };
    println!("firing rate {:.3}", spikes / elems as f64);
    g.bench_function("backward (gS, gV)", |b| {
        b.iter(|| {
            let mut outs = [out(&mut gx, &shape)];
            let op = Op::LifBackward {
                cfg,
                has_gs: true,
                has_gv: true,
            };
            let ins = [view(&h, &shape), view(&gs, &shape), view(&gv, &shape)];
            be.execute(&op, &ins, &mut outs).unwrap();
        })
    });
    g.bench_function("backward (gS, gV, learnable tau)", |b| {
        b.iter(|| {
            let mut outs = [out(&mut gx, &shape), out(&mut gtau, &scalar)];
            let op = Op::LifBackward {
                cfg: plif,
                has_gs: true,
                has_gv: true,
            };
            let ins = [
                view(&h, &shape),
                view(&gs, &shape),
                view(&gv, &shape),
                view(&tau, &scalar),
            ];
            be.execute(&op, &ins, &mut outs).unwrap();
        })
    });
    // bf16 storage (issue 15): X, S, V in bf16 (2 B), H in f32; bytes counted as stored
    // (2 + 2 + 2 + 4 per neuron-step), throughput against the f32 pass's 16.
    let to_bf16 = |s: &Storage| Storage::from_f32(DType::BF16, &s.to_f32_vec().unwrap()).unwrap();
    let xb = to_bf16(&x);
    let (mut sb, mut vb, mut hb) = (
        Storage::zeros(DType::BF16, T * N),
        Storage::zeros(DType::BF16, T * N),
        Storage::zeros(DType::F32, T * N),
    );
    g.throughput(Throughput::Bytes(10 * elems));
    g.bench_function("forward, bf16 storage", |b| {
        b.iter(|| {
            let mut outs = [
                out(&mut sb, &shape),
                out(&mut vb, &shape),
                out(&mut hb, &shape),
            ];
            be.execute(&Op::Lif(cfg), &[view(&xb, &shape)], &mut outs)
                .unwrap();
        })
    });
    // backward: H f32 in, gS, gV bf16 in, gX bf16 out (4 + 2 + 2 + 2 bytes)
    let (gsb, gvb) = (to_bf16(&gs), to_bf16(&gv));
    let mut gxb = Storage::zeros(DType::BF16, T * N);
    g.bench_function("backward (gS, gV), bf16 storage", |b| {
        b.iter(|| {
            let mut outs = [out(&mut gxb, &shape)];
            let op = Op::LifBackward {
                cfg,
                has_gs: true,
                has_gv: true,
            };
            let ins = [view(&h, &shape), view(&gsb, &shape), view(&gvb, &shape)];
            be.execute(&op, &ins, &mut outs).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
