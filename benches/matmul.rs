//! f32 matmul through the executor (the `gemm` crate on the CPU backend): square, and the
//! training step's three kinds of product at batch 128 (the caption encoder's MLP: forward
//! `[3072, 128]·[128, 256]`, input gradient `[3072, 256]·[128, 256]ᵀ`, weight gradient
//! `[3072, 256]ᵀ·[3072, 128]`, depth 3072: the AVX2 kernels run it, see
//! `src/backend/cpu/gemm.rs`). Throughput is reported as elements/s where one element = one
//! flop (2·M·N·K per product), so "Gelem/s" reads as GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::graph::gradcheck::random;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph};
use std::hint::black_box;

fn bench_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(10);
    let shapes = [
        // (m, k, n, transpose a, transpose b, name)
        (1024usize, 1024usize, 1024usize, false, false, "square"),
        (4096, 256, 256, false, false, "tall"),
        (3072, 128, 256, false, false, "step_forward"),
        (3072, 128, 256, false, true, "step_input_grad"),
        (256, 3072, 128, true, false, "step_weight_grad"),
    ];
    for (m, k, n, ta, tb, name) in shapes {
        let a_shape = if ta { [k, m] } else { [m, k] };
        let b_shape = if tb { [n, k] } else { [k, n] };
        let mut g = Graph::new();
        let a = g.input("a", a_shape, DType::F32);
        let b = g.input("b", b_shape, DType::F32);
        let y = g.matmul_t(a, b, ta, tb).unwrap();
        let mut ex = Executor::new(CpuBackend, g, &[y]).unwrap();
        let mut rng = SplitMix64::new(1);
        let at = random(a_shape, -1.0, 1.0, &mut rng)
            .to_dtype(DType::F32)
            .unwrap();
        let bt = random(b_shape, -1.0, 1.0, &mut rng)
            .to_dtype(DType::F32)
            .unwrap();
        ex.set(a, &at).unwrap();
        ex.set(b, &bt).unwrap();
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(format!("{name}_{m}x{k}x{n}"), |bench| {
            bench.iter(|| {
                ex.run().unwrap();
                black_box(&ex);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
