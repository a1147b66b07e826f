//! GAT and fixed-attention aggregation on the CPU backend (f32).
//!
//! Graph: N = 50 000 nodes, 16 random in-edges per node plus a self-loop (E = 850 000).
//! GAT: H = 4 heads, F = 32 features per head. Aggregate: T = 4 steps, C = 128 channels.
//! Throughput counts edges (elements) and the bytes the kernels must move at least: every
//! per-edge gather of a feature row, the per-node reads and writes, per-edge scalars and the
//! index arrays (see `gat_bytes` / `aggregate_bytes`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::ops::gat::{CsrGraph, GatAttrs, GraphInputs};
use gshn::ops::Op;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph, Tensor, ValueId};

const N: usize = 50_000;
const DEG: usize = 16;
const H: usize = 4;
const F: usize = 32;
const T: usize = 4;
const C: usize = 128;
const S: usize = 4; // bytes per f32

fn random_f32(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    Tensor::new(shape.to_vec(), v).unwrap()
}

fn graph(rng: &mut SplitMix64) -> CsrGraph {
    let mut edges = Vec::with_capacity(N * (DEG + 1));
    for i in 0..N {
        edges.push((i, i));
        for _ in 0..DEG {
            edges.push((rng.below(N), i));
        }
    }
    CsrGraph::from_edges(N, &edges).unwrap()
}

/// (forward, backward) bytes of one GAT layer.
fn gat_bytes(e: usize) -> (u64, u64) {
    let (n, hf) = (N, H * F);
    let idx = (n + 1) * 4 + e * 4;
    // scores read z; gather z[src] per edge; write out, lse.
    let fwd = n * hf * S + e * hf * S + n * hf * S + n * H * S + idx;
    // scores (z), D (g_out, out); pass 1: gather z[src] per edge, g_out per node, write α
    // and gpre per edge; pass 2: gather g_out[dst] per edge, read α, gpre per edge, z per
    // node, write gz; CSR + CSC + dst indices.
    let bwd = n * hf * S
        + 2 * n * hf * S
        + e * hf * S
        + n * hf * S
        + 2 * e * H * S
        + e * hf * S
        + 2 * e * H * S
        + 2 * n * hf * S
        + 2 * idx
        + e * 4;
    (fwd as u64, bwd as u64)
}

/// (forward, backward) bytes of the aggregation.
fn aggregate_bytes(e: usize) -> (u64, u64) {
    let n = N;
    let idx = (n + 1) * 4 + e * 4;
    // gather s[t, src] per edge and step, α per edge, write y.
    let fwd = T * e * C * S + e * H * S + T * n * C * S + idx;
    // g_s: gather g_y[t, dst] per edge and step, α per edge, write g_s;
    // g_α: per edge and step read g_y[t, dst] and s[t, src], write g_α.
    let bwd =
        T * e * C * S + e * H * S + T * n * C * S + 2 * T * e * C * S + e * H * S + 2 * idx + e * 4;
    (fwd as u64, bwd as u64)
}

struct Feeds(Vec<(ValueId, Tensor)>);

fn executor(
    g: Graph,
    fetch: &[ValueId],
    feeds: &Feeds,
    gi: &GraphInputs,
    csr: &CsrGraph,
) -> Executor<CpuBackend> {
    let mut ex = Executor::new(CpuBackend, g, fetch).unwrap();
    for (v, t) in &feeds.0 {
        ex.set(*v, t).unwrap();
    }
    gi.feed(&mut ex, csr).unwrap();
    ex
}

fn bench(c: &mut Criterion) {
    let mut rng = SplitMix64::new(1);
    let csr = graph(&mut rng);
    let e = csr.edges();
    let attrs = GatAttrs::default();

    // ---- GAT ----
    let mut g = Graph::new();
    let z = g.input("z", [N, H, F], DType::F32);
    let a_src = g.input("a_src", [H, F], DType::F32);
    let a_dst = g.input("a_dst", [H, F], DType::F32);
    let gi = GraphInputs::new(&mut g, "", N, e);
    let o = g.gat(z, a_src, a_dst, None, &gi, attrs).unwrap();
    let g_out = g.input("g_out", [N, H, F], DType::F32);
    let grads = g
        .push(
            Op::GatBackward(attrs),
            &[
                g_out,
                z,
                a_src,
                a_dst,
                o.out,
                o.lse,
                gi.row_ptr,
                gi.src,
                gi.col_ptr,
                gi.col_edge,
            ],
        )
        .unwrap();
    let feeds = Feeds(vec![
        (z, random_f32(&[N, H, F], &mut rng)),
        (a_src, random_f32(&[H, F], &mut rng)),
        (a_dst, random_f32(&[H, F], &mut rng)),
        (g_out, random_f32(&[N, H, F], &mut rng)),
    ]);
    let mut fwd = executor(g.clone(), &[o.out, o.lse], &feeds, &gi, &csr);
    let mut both = executor(g, &grads, &feeds, &gi, &csr);
    let (fb, bb) = gat_bytes(e);

    let mut group = c.benchmark_group("gat");
    group.sample_size(10);
    group.throughput(Throughput::ElementsAndBytes {
        elements: e as u64,
        bytes: fb,
    });
    group.bench_function("forward N=50k E=850k H=4 F=32", |b| {
        b.iter(|| fwd.run().unwrap())
    });
    group.throughput(Throughput::ElementsAndBytes {
        elements: e as u64,
        bytes: fb + bb,
    });
    group.bench_function("forward+backward N=50k E=850k H=4 F=32", |b| {
        b.iter(|| both.run().unwrap())
    });
    group.finish();

    // ---- Aggregate ----
    let mut g = Graph::new();
    let alpha = g.input("alpha", [e, H], DType::F32);
    let s = g.input("s", [T, N, C], DType::F32);
    let gi = GraphInputs::new(&mut g, "", N, e);
    let y = g.aggregate(alpha, s, &gi).unwrap();
    let g_y = g.input("g_y", [T, N, C], DType::F32);
    let grads = g
        .push(
            Op::AggregateBackward,
            &[g_y, alpha, s, gi.row_ptr, gi.src, gi.col_ptr, gi.col_edge],
        )
        .unwrap();
    let feeds = Feeds(vec![
        (alpha, random_f32(&[e, H], &mut rng)),
        (s, random_f32(&[T, N, C], &mut rng)),
        (g_y, random_f32(&[T, N, C], &mut rng)),
    ]);
    let mut fwd = executor(g.clone(), &[y], &feeds, &gi, &csr);
    let mut both = executor(g, &grads, &feeds, &gi, &csr);
    let (fb, bb) = aggregate_bytes(e);
    let mut group = c.benchmark_group("aggregate");
    group.sample_size(10);
    group.throughput(Throughput::ElementsAndBytes {
        elements: e as u64,
        bytes: fb,
    });
    group.bench_function("forward T=4 C=128", |b| b.iter(|| fwd.run().unwrap()));
    group.throughput(Throughput::ElementsAndBytes {
        elements: e as u64,
        bytes: fb + bb,
    });
    group.bench_function("forward+backward T=4 C=128", |b| {
        b.iter(|| both.run().unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
