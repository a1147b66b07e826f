//! Criterion over `gshn bench`'s cases on the CPU (default shapes, f32, and InfoNCE's tf32 and
//! bf16 modes): the same shapes, byte and FLOP counts and prepared buffers as `gshn bench`
//! (`gshn::bench`), tracked for regressions. Throughput is the case's compulsory bytes, or its
//! FLOPs as "elements" (InfoNCE: 2·B²·D forward, 3 × that backward).
//! The training step has its own bench (`train_step`).
//!
//!     cargo bench --bench kernels

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::backend::AnyBackend;
use gshn::bench::{cases, parse_dtype, prepare, Overrides, Size, OPS};
use gshn::util::rng::SplitMix64;
use gshn::CpuBackend;
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let be = Arc::new(AnyBackend::Cpu(CpuBackend));
    let ops: Vec<String> = OPS
        .iter()
        .filter(|&&op| op != "step")
        .map(|s| s.to_string())
        .collect();
    let dtypes = ["f32", "tf32", "bf16"].map(|d| parse_dtype(d).unwrap());
    let list = cases(Size::Default, &Overrides::new(), &ops, &dtypes).unwrap();
    let mut rng = SplitMix64::new(42);
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);
    for case in list {
        let mut p = prepare(&be, &case, &mut rng).unwrap();
        group.throughput(if case.flops > 0.0 {
            Throughput::Elements(case.flops as u64)
        } else {
            Throughput::Bytes(case.bytes as u64)
        });
        group.bench_function(case.label(), |b| b.iter(|| p.call(&be).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
