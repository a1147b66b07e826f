//! The three fused ops of gshn on your own data, each checked against a naive reference:
//! LIF (SpikingJelly's multi-step LIFNode), one GAT head (PyG's GATConv) and the symmetric
//! InfoNCE of open_clip. Uses only the core (`default-features = false` suffices).
//!
//!     cargo run --release --example fused_ops

use gshn::ops::{CsrGraph, GatAttrs, GraphInputs, InfoNceAttrs, LifConfig};
use gshn::{CpuBackend, DType, Executor, Graph, Result, Tensor};

fn data(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + k * 11) % 17) as f32 / 8.0 - 0.9)
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// LIF (hard reset to 0, tau 2, threshold 1) over x[T, N].
fn lif() -> Result<()> {
    let (t, n) = (6, 5);
    let x = data(t * n, 1)
        .iter()
        .map(|v| v * 2.0 + 0.6)
        .collect::<Vec<_>>();
    let mut g = Graph::new();
    let xi = g.input("x", [t, n], DType::F32);
    let out = g.lif(xi, LifConfig::default())?;
    let mut ex = Executor::new(CpuBackend, g, &[out.spikes])?;
    ex.set(xi, &Tensor::new([t, n], x.clone())?)?;
    ex.run()?;
    let mut v = vec![0f32; n];
    let mut want = Vec::new();
    for row in x.chunks(n) {
        for (vj, xj) in v.iter_mut().zip(row) {
            let h = *vj + (xj - *vj) / 2.0;
            let s = if h >= 1.0 { 1.0 } else { 0.0 };
            want.push(s);
            *vj = h * (1.0 - s);
        }
    }
    close("lif spikes", ex.get(out.spikes)?.data::<f32>()?, &want);
    Ok(())
}

/// One-head GAT on a 4-node graph (node 3 has no in-edge).
fn gat() -> Result<()> {
    let (n, f) = (4, 3);
    let csr = CsrGraph::from_csr(vec![0, 2, 3, 5, 5], vec![1, 2, 0, 0, 1])?;
    let (z, a_src, a_dst) = (data(n * f, 2), data(f, 3), data(f, 4));
    let mut g = Graph::new();
    let zi = g.input("z", [n, 1, f], DType::F32);
    let si = g.input("a_src", [1, f], DType::F32);
    let di = g.input("a_dst", [1, f], DType::F32);
    let gi = GraphInputs::new(&mut g, "", n, 5);
    let attrs = GatAttrs {
        negative_slope: 0.2,
        edge_bias: false,
    };
    let out = g.gat(zi, si, di, None, &gi, attrs)?.out;
    let mut ex = Executor::new(CpuBackend, g, &[out])?;
    ex.set(zi, &Tensor::new([n, 1, f], z.clone())?)?;
    ex.set(si, &Tensor::new([1, f], a_src.clone())?)?;
    ex.set(di, &Tensor::new([1, f], a_dst.clone())?)?;
    gi.feed(&mut ex, &csr)?;
    ex.run()?;
    let dot = |u: &[f32], w: &[f32]| u.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
    let (row_ptr, src) = ([0, 2, 3, 5, 5], [1, 2, 0, 0, 1]);
    let mut want = vec![0f32; n * f];
    for i in 0..n {
        let edges = row_ptr[i]..row_ptr[i + 1];
        let logit = |j: usize| {
            let e = dot(&z[j * f..][..f], &a_src) + dot(&z[i * f..][..f], &a_dst);
            if e > 0.0 {
                e
            } else {
                0.2 * e
            }
        };
        let total: f32 = edges.clone().map(|k| logit(src[k]).exp()).sum();
        for k in edges {
            let w = logit(src[k]).exp() / total;
            for c in 0..f {
                want[i * f + c] += w * z[src[k] * f + c];
            }
        }
    }
    close("gat out", ex.get(out)?.data::<f32>()?, &want);
    Ok(())
}

/// Symmetric InfoNCE (open_clip's ClipLoss) on B = 3 pairs.
fn infonce() -> Result<()> {
    let (b, d) = (3, 4);
    let (a, p) = (data(b * d, 5), data(b * d, 6));
    let mut g = Graph::new();
    let ai = g.input("a", [b, d], DType::F32);
    let pi = g.input("p", [b, d], DType::F32);
    let li = g.input("logit_scale", [], DType::F32);
    let attrs = InfoNceAttrs {
        symmetric: true,
        chunk: 2,
    };
    let loss = g.infonce(ai, pi, li, attrs)?.loss;
    let mut ex = Executor::new(CpuBackend, g, &[loss])?;
    ex.set(ai, &Tensor::new([b, d], a.clone())?)?;
    ex.set(pi, &Tensor::new([b, d], p.clone())?)?;
    ex.set(li, &Tensor::scalar(0.5f32))?;
    ex.run()?;
    let s = 0.5f32.exp();
    let logit = |i: usize, j: usize| s * (0..d).map(|c| a[i * d + c] * p[j * d + c]).sum::<f32>();
    let lse = |f: &dyn Fn(usize) -> f32| (0..b).map(f).map(f32::exp).sum::<f32>().ln();
    let want: f32 = (0..b)
        .map(|i| lse(&|j| logit(i, j)) + lse(&|j| logit(j, i)) - 2.0 * logit(i, i))
        .sum::<f32>()
        / (2 * b) as f32;
    close("infonce loss", ex.get(loss)?.data::<f32>()?, &[want]);
    Ok(())
}

pub fn main() -> Result<()> {
    lif()?;
    gat()?;
    infonce()?;
    println!("fused_ops: LIF, GAT and InfoNCE match their references");
    Ok(())
}
