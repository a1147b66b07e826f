//! u8 spike storage (issue 15, `LifConfig::u8_spikes`): the consumers of spikes (matmul on
//! either side, aggregation) read u8 as their float type and give the same bits as on float
//! spikes, forward and gradients; the spikes' gradient is that float type; ops that do not
//! read spikes refuse u8 with a typed error; u8 tensors round-trip through safetensors. (A whole
//! training run with u8 spikes: `tests/mixed_precision.rs`.)

use gshn::graph::gradcheck::random;
use gshn::ops::{CsrGraph, GraphInputs};
use gshn::tensor::io::{load_safetensors, save_safetensors};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor};

const FLOATS: [DType; 4] = [DType::F64, DType::F32, DType::BF16, DType::F16];

/// Random 0/1 spikes, about a third of them 1.
fn spikes(n: usize, rng: &mut SplitMix64) -> Vec<u8> {
    (0..n).map(|_| u8::from(rng.uniform() < 0.35)).collect()
}

/// A graph with self-loops, a node without in-edges and repeated edges.
fn graph(n: usize, rng: &mut SplitMix64) -> CsrGraph {
    let mut edges = Vec::new();
    for i in 1..n {
        edges.push((i, i));
        for _ in 0..rng.below(3) {
            edges.push((rng.below(n), i));
        }
    }
    CsrGraph::from_edges(n, &edges).unwrap()
}

/// Every spike consumer of the model on `s[T, N, C]`, fed as `s_dtype`:
/// `s·W` (spikes on the left), `m·s` (on the right, the rate readout) and the aggregation,
/// with `L = Σ r ⊙ outputs`. Returns the outputs, then d/dW, d/dm, d/dalpha and d/ds.
fn consumers(s01: &[u8], float: DType, s_dtype: DType, seed: u64) -> Vec<Tensor> {
    let (t, n, c, h) = (3, 9, 8, 2);
    let mut rng = SplitMix64::new(seed);
    let csr = graph(n, &mut rng);
    let e = csr.edges();
    let mut g = Graph::new();
    let s = g.input("s", [t, n, c], s_dtype);
    let w = g.input("w", [c, 5], float);
    let m = g.input("m", [1, t], float);
    let alpha = g.input("alpha", [e, h], float);
    let gi = GraphInputs::new(&mut g, "", n, e);
    let rows = g.reshape(s, [t * n, c]).unwrap();
    let left = g.matmul(rows, w).unwrap();
    let trace = g.reshape(s, [t, n * c]).unwrap();
    let right = g.matmul(m, trace).unwrap();
    let agg = g.aggregate(alpha, s, &gi).unwrap();
    let mut feeds = vec![
        (
            s,
            Tensor::new([t, n, c], s01.to_vec())
                .unwrap()
                .to_dtype(s_dtype)
                .unwrap(),
        ),
        (w, random([c, 5], -1.0, 1.0, &mut rng)),
        (m, random([1, t], 0.1, 1.0, &mut rng)),
        (alpha, random([e, h], 0.0, 1.0, &mut rng)),
    ];
    let mut loss = None;
    for (k, y) in [left, right, agg].into_iter().enumerate() {
        let shape = g.meta(y).unwrap().shape.clone();
        let r = g.input(format!("r{k}"), shape.clone(), float);
        feeds.push((r, random(shape, -1.0, 1.0, &mut rng)));
        let p = g.mul(y, r).unwrap();
        let term = g.sum(p).unwrap();
        loss = Some(match loss {
            Some(l) => g.add(l, term).unwrap(),
            None => term,
        });
    }
    let grads = g.backward(loss.unwrap(), &[w, m, alpha, s]).unwrap();
    assert_eq!(g.dtype(grads[3]).unwrap(), float, "the spikes' gradient");
    let fetch: Vec<_> = [left, right, agg].into_iter().chain(grads).collect();
    let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
    for (id, v) in &feeds {
        let v = match ex.graph().dtype(*id).unwrap() {
            DType::U8 => v.clone(),
            d => v.to_dtype(d).unwrap(),
        };
        ex.set(*id, &v).unwrap();
    }
    gi.feed(&mut ex, &csr).unwrap();
    ex.run().unwrap();
    fetch.iter().map(|&v| ex.get(v).unwrap()).collect()
}

#[test]
fn consumers_read_u8_spikes_as_their_float_type() {
    let mut rng = SplitMix64::new(5);
    for float in FLOATS {
        for seed in 0..3 {
            let s01 = spikes(3 * 9 * 8, &mut rng);
            let on_float = consumers(&s01, float, float, seed);
            let on_u8 = consumers(&s01, float, DType::U8, seed);
            for (k, (a, b)) in on_u8.iter().zip(&on_float).enumerate() {
                assert_eq!(a.dtype(), float, "{float:?} #{k}");
                assert_eq!(a, b, "{float:?} seed {seed}: output #{k}");
            }
            // not a vacuous comparison: the spikes' gradient is there and nonzero
            assert!(on_u8[6].to_f64_vec().iter().any(|&x| x != 0.0));
        }
    }
}

/// A byte other than 0 or 1, fed from outside, is a spike (1) wherever spikes are read, as on
/// the GPU (`kernels/common.cuh` `widen(u8s)`): the matmuls, the aggregation and a cast.
#[test]
fn any_nonzero_byte_is_one_spike() {
    let mut rng = SplitMix64::new(6);
    let s01 = spikes(3 * 9 * 8, &mut rng);
    let bytes: Vec<u8> = (s01.iter().enumerate())
        .map(|(i, &b)| b * [1, 2, 7, 255][i % 4])
        .collect();
    assert!(bytes.iter().any(|&b| b > 1));
    for float in [DType::F32, DType::BF16] {
        let on_float = consumers(&s01, float, float, 1);
        let on_bytes = consumers(&bytes, float, DType::U8, 1);
        assert_eq!(on_bytes, on_float, "{float:?}");
    }
    let mut g = Graph::new();
    let s = g.input("s", [4], DType::U8);
    let f = g.cast(s, DType::F32).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[f]).unwrap();
    ex.set(s, &Tensor::new([4], vec![0u8, 1, 2, 255]).unwrap())
        .unwrap();
    ex.run().unwrap();
    assert_eq!(ex.get(f).unwrap().to_f64_vec(), [0.0, 1.0, 1.0, 1.0]);
}

#[test]
fn ops_that_do_not_read_spikes_refuse_u8() {
    let mut g = Graph::new();
    let s = g.input("s", [4, 3], DType::U8);
    let x = g.input("x", [4, 3], DType::F32);
    let w = g.input("w", [3, 2], DType::F32);
    let refused = |r: gshn::Result<gshn::ValueId>, what: &str| match r {
        Err(Error::Shape { msg, .. }) => assert!(msg.contains("u8"), "{what}: {msg}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(g.add(s, x), "add");
    refused(g.mean_last(s), "mean_last");
    refused(g.layer_norm(s, w, w, 1e-5), "layer_norm");
    let s2 = g.input("s2", [3, 2], DType::U8);
    refused(g.matmul(s, s2), "matmul of two u8 operands");
    refused(g.cast(x, DType::U8), "cast to u8");
    // what reads them: matmul, a cast, layout moves
    let (y, c, r) = (
        g.matmul(s, w).unwrap(),
        g.cast(s, DType::BF16).unwrap(),
        g.reshape(s, [12]).unwrap(),
    );
    let dtypes = [y, c, r].map(|v| g.dtype(v).unwrap());
    assert_eq!(dtypes, [DType::F32, DType::BF16, DType::U8]);
}

#[test]
fn u8_tensors_round_trip_through_safetensors() {
    let mut rng = SplitMix64::new(9);
    let t = Tensor::new([5, 7], spikes(35, &mut rng)).unwrap();
    let path = std::env::temp_dir().join(format!("gshn-u8-{}.safetensors", std::process::id()));
    save_safetensors(&path, &[("s".to_string(), t.clone())], None).unwrap();
    let back = load_safetensors(&path).unwrap().0;
    std::fs::remove_file(&path).ok();
    assert_eq!(back, vec![("s".to_string(), t.clone())]);
    assert_eq!(t.to_dtype(DType::F32).unwrap().to_f64_vec(), t.to_f64_vec());
}
