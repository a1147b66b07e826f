//! InfoNCE forward and forward + backward, chunked, f32 (DESIGN §3.4).
//!
//! Throughput is in FLOP/s ("elem/s" = FLOP/s), counting the nominal work of the op:
//! forward 2·B²·D, forward + backward 2·B²·D + 2 × 2·B²·D + 2·B²·D (tile recompute).
//! (The CPU backward recomputes the tiles twice, once per pass: its actual work is
//! 10·B²·D for forward + backward.)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::ops::InfoNceAttrs;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph, Tensor};
use std::hint::black_box;

fn unit_rows(b: usize, d: usize, rng: &mut SplitMix64) -> Tensor {
    let mut v: Vec<f32> = (0..b * d).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    for row in v.chunks_mut(d) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    Tensor::new([b, d], v).unwrap()
}

fn bench(c: &mut Criterion) {
    let (b, d) = (4096usize, 256usize);
    let mut rng = SplitMix64::new(1);
    let a = unit_rows(b, d, &mut rng);
    let p = unit_rows(b, d, &mut rng);
    let ls = Tensor::scalar((1.0f32 / 0.07).ln());
    let bbd = (b * b * d) as u64;

    let mut group = c.benchmark_group("infonce");
    group.sample_size(10);
    for symmetric in [true, false] {
        let at = InfoNceAttrs {
            symmetric,
            chunk: 256,
        };
        let tag = if symmetric { "sym" } else { "onedir" };
        for backward in [false, true] {
            let mut g = Graph::new();
            let av = g.input("a", [b, d], DType::F32);
            let pv = g.input("p", [b, d], DType::F32);
            let lv = g.input("ls", [], DType::F32);
            let out = g.infonce(av, pv, lv, at).unwrap();
            let fetch = if backward {
                g.backward(out.loss, &[av, pv, lv]).unwrap()
            } else {
                vec![out.loss]
            };
            let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
            ex.set(av, &a).unwrap();
            ex.set(pv, &p).unwrap();
            ex.set(lv, &ls).unwrap();
            let flops = if backward { 8 * bbd } else { 2 * bbd };
            group.throughput(Throughput::Elements(flops));
            let name = format!(
                "{}_{tag}_B{b}_D{d}_chunk256_f32",
                if backward { "fwd_bwd" } else { "fwd" }
            );
            group.bench_function(name, |bn| {
                bn.iter(|| {
                    ex.run().unwrap();
                    black_box(&ex);
                })
            });
        }
    }
    // Reference point on the same machine: the plain logits GEMM a pᵀ (2·B²·D FLOP, writes
    // the B×B matrix the chunked op never builds).
    let mut g = Graph::new();
    let av = g.input("a", [b, d], DType::F32);
    let pv = g.input("p", [b, d], DType::F32);
    let l = g.matmul_t(av, pv, false, true).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[l]).unwrap();
    ex.set(av, &a).unwrap();
    ex.set(pv, &p).unwrap();
    group.throughput(Throughput::Elements(2 * bbd));
    group.bench_function(format!("gemm_reference_apT_B{b}_D{d}_f32"), |bn| {
        bn.iter(|| {
            ex.run().unwrap();
            black_box(&ex);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
