//! f32 matmul through the executor (the `gemm` crate on the CPU backend).
//! Throughput is reported as elements/s where one element = one flop (2·M·N·K per product),
//! so "Gelem/s" reads as GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::graph::gradcheck::random;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph};
use std::hint::black_box;

fn bench_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(10);
    for (m, k, n) in [(1024usize, 1024usize, 1024usize), (4096, 256, 256)] {
        let mut g = Graph::new();
        let a = g.input("a", [m, k], DType::F32);
        let b = g.input("b", [k, n], DType::F32);
        let y = g.matmul(a, b).unwrap();
        let mut ex = Executor::new(CpuBackend, g, &[y]).unwrap();
        let mut rng = SplitMix64::new(1);
        let at = random([m, k], -1.0, 1.0, &mut rng)
            .to_dtype(DType::F32)
            .unwrap();
        let bt = random([k, n], -1.0, 1.0, &mut rng)
            .to_dtype(DType::F32)
            .unwrap();
        ex.set(a, &at).unwrap();
        ex.set(b, &bt).unwrap();
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(format!("{m}x{k}x{n}"), |bench| {
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
