//! Segment mean pooling forward and backward, f32 (DESIGN §3.5), in GB/s of compulsory
//! traffic: forward reads x[P,C] and seg[P] and writes y[S,C] and count[S]; backward reads
//! seg[P], count[S], g_y[S,C] and writes gx[P,C].

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::ops::Op;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph, Tensor};
use std::hint::black_box;

/// `images` images of `side × side` pixels, each split into 32 blocky segments
/// (`images · 32` in all) with ~5 % void pixels; row-major pixels, image after image.
fn scene(images: usize, side: usize, rng: &mut SplitMix64) -> (Vec<i32>, usize) {
    let per = 32;
    let mut seg = Vec::with_capacity(images * side * side);
    for img in 0..images {
        for y in 0..side {
            for x in 0..side {
                let local = ((y * 8 / side) * 4 + x * 4 / side) % per;
                seg.push(if rng.uniform() < 0.05 {
                    -1
                } else {
                    (img * per + local) as i32
                });
            }
        }
    }
    (seg, images * per)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("segment_mean");
    group.sample_size(20);
    let mut rng = SplitMix64::new(1);
    // 256 images × 16×16 = 65 536 pixels × C = 32; 4096 images × 16×16 = 1 048 576 pixels × C = 16.
    for &(images, side, ch) in &[(256usize, 16usize, 32usize), (4096, 16, 16)] {
        let (seg, s) = scene(images, side, &mut rng);
        let p = seg.len();
        let x: Vec<f32> = (0..p * ch).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        let x = Tensor::new([p, ch], x).unwrap();
        let gy: Vec<f32> = (0..s * ch).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        let gy = Tensor::new([s, ch], gy).unwrap();
        let seg = Tensor::new([p], seg).unwrap();

        // Forward.
        let mut g = Graph::new();
        let xv = g.input("x", [p, ch], DType::F32);
        let sv = g.input("seg", [p], DType::I32);
        let out = g.segment_mean(xv, sv, s).unwrap();
        let mut fwd = Executor::new(CpuBackend, g, &[out.mean, out.count]).unwrap();
        fwd.set(xv, &x).unwrap();
        fwd.set(sv, &seg).unwrap();
        let bytes = (p * ch * 4 + p * 4 + s * ch * 4 + s * 4) as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(format!("fwd_P{p}_C{ch}_S{s}_f32"), |b| {
            b.iter(|| {
                fwd.run().unwrap();
                black_box(&fwd);
            })
        });

        // Backward op alone.
        let mut g = Graph::new();
        let gv = g.input("g_y", [s, ch], DType::F32);
        let sv = g.input("seg", [p], DType::I32);
        let cv = g.input("count", [s], DType::F32);
        let gx = g.push1(Op::SegmentMeanBackward, &[gv, sv, cv]).unwrap();
        let mut bwd = Executor::new(CpuBackend, g, &[gx]).unwrap();
        bwd.set(gv, &gy).unwrap();
        bwd.set(sv, &seg).unwrap();
        bwd.set(cv, &fwd.get(out.count).unwrap()).unwrap();
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(format!("bwd_P{p}_C{ch}_S{s}_f32"), |b| {
            b.iter(|| {
                bwd.run().unwrap();
                black_box(&bwd);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
