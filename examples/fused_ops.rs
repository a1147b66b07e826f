//! gshn's fused ops called eagerly on your own data, each checked against a naive reference:
//! LIF (SpikingJelly's multi-step LIFNode) forward and backward, one GAT head (PyG's GATConv),
//! the symmetric InfoNCE of open_clip with its gradient, and segment mean pooling. Uses only
//! the core (`default-features = false` suffices).
//!
//!     cargo run --release --example fused_ops

use gshn::fused::{self, GatParams, InfoNceSaved, InfoNceUpstream};
use gshn::ops::{CsrGraph, InfoNceAttrs, LifConfig};
use gshn::{CpuBackend, Result, Tensor};

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

/// LIF (hard reset to 0, tau 2, threshold 1) over x[T, N], and the gradient of Σ spikes
/// through the ATan surrogate.
fn lif() -> Result<()> {
    let (t, n) = (6, 5);
    let x: Vec<f32> = data(t * n, 1).iter().map(|v| v * 2.0 + 0.6).collect();
    let cfg = LifConfig::default();
    let xt = Tensor::new([t, n], x.clone())?;
    let out = fused::lif_forward(&CpuBackend, xt.view(), None, &cfg)?;
    let ones = Tensor::new([t, n], vec![1f32; t * n])?;
    let grads = fused::lif_backward(
        &CpuBackend,
        out.charge.view(),
        Some(ones.view()),
        None,
        None,
        &cfg,
    )?;

    // Forward: H = V + (X − V)/τ, S = [H ≥ 1], V = H (1 − S). Backward (BPTT, reset not
    // detached): dL/dH_t = dS_t σ'(H_t − 1) + dV_t ∂V_t/∂H_t, dL/dV_{t−1} = dL/dH_t (1 − 1/τ).
    let sg = |h: f32| {
        let u = std::f32::consts::FRAC_PI_2 * 2.0 * (h - 1.0);
        1.0 / (1.0 + u * u) // ATan surrogate, alpha = 2: σ'(u) = α/2 / (1 + (π/2 α u)²)
    };
    let (mut v, mut h_all, mut spikes) = (vec![0f32; n], Vec::new(), Vec::new());
    for row in x.chunks(n) {
        for (vj, xj) in v.iter_mut().zip(row) {
            let h = *vj + (xj - *vj) / 2.0;
            let s = if h >= 1.0 { 1.0 } else { 0.0 };
            h_all.push(h);
            spikes.push(s);
            *vj = h * (1.0 - s);
        }
    }
    let mut gx = vec![0f32; t * n];
    let mut gv = vec![0f32; n]; // dL/dV_t flowing back from step t + 1
    for step in (0..t).rev() {
        for (j, gvj) in gv.iter_mut().enumerate() {
            let k = step * n + j;
            let (h, s) = (h_all[k], spikes[k]);
            // V = H (1 − S(H)): ∂V/∂H = (1 − S) − H σ'(H − 1).
            let gh = sg(h) + *gvj * ((1.0 - s) - h * sg(h));
            gx[k] = gh / 2.0;
            *gvj = gh * (1.0 - 0.5);
        }
    }
    close(
        "lif spikes",
        out.spikes.into_tensor()?.data::<f32>()?,
        &spikes,
    );
    close("lif grad x", grads.x.into_tensor()?.data::<f32>()?, &gx);
    Ok(())
}

/// One-head GAT on a 4-node graph (node 3 has no in-edge).
fn gat() -> Result<()> {
    let (n, f) = (4, 3);
    let (row_ptr, src) = ([0usize, 2, 3, 5, 5], [1usize, 2, 0, 0, 1]);
    let to_i32 = |v: &[usize]| v.iter().map(|&i| i as i32).collect();
    let csr = CsrGraph::from_csr(to_i32(&row_ptr), to_i32(&src))?;
    let (z, a_src, a_dst) = (data(n * f, 2), data(f, 3), data(f, 4));
    let (zt, st, dt) = (
        Tensor::new([n, 1, f], z.clone())?,
        Tensor::new([1, f], a_src.clone())?,
        Tensor::new([1, f], a_dst.clone())?,
    );
    let params = GatParams {
        z: zt.view(),
        a_src: st.view(),
        a_dst: dt.view(),
        edge_bias: None,
    };
    let out = fused::gat_forward(&CpuBackend, params, csr.view(), 0.2)?.out;

    let dot = |u: &[f32], w: &[f32]| u.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
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
    close("gat out", out.into_tensor()?.data::<f32>()?, &want);
    Ok(())
}

/// Symmetric InfoNCE (open_clip's ClipLoss) on B = 3 pairs, and its gradient in a.
fn infonce() -> Result<()> {
    let (b, d) = (3, 4);
    let (a, p) = (data(b * d, 5), data(b * d, 6));
    let (at, pt) = (
        Tensor::new([b, d], a.clone())?,
        Tensor::new([b, d], p.clone())?,
    );
    let ls = Tensor::scalar(0.5f32);
    let attrs = InfoNceAttrs {
        chunk: 2,
        ..InfoNceAttrs::SYMMETRIC
    };
    let f = fused::infonce_forward(&CpuBackend, at.view(), pt.view(), ls.view(), attrs)?;
    let one = Tensor::scalar(1f32);
    let saved = InfoNceSaved {
        lse_row: f.lse_row.view(),
        lse_col: f.lse_col.view(),
    };
    let upstream = InfoNceUpstream {
        loss: one.view(),
        lse: None,
    };
    let g = fused::infonce_backward(
        &CpuBackend,
        at.view(),
        pt.view(),
        ls.view(),
        saved,
        upstream,
        attrs,
    )?;

    let s = 0.5f32.exp();
    let logit = |i: usize, j: usize| s * (0..d).map(|c| a[i * d + c] * p[j * d + c]).sum::<f32>();
    let lse = |f: &dyn Fn(usize) -> f32| (0..b).map(f).map(f32::exp).sum::<f32>().ln();
    let want: f32 = (0..b)
        .map(|i| lse(&|j| logit(i, j)) + lse(&|j| logit(j, i)) - 2.0 * logit(i, i))
        .sum::<f32>()
        / (2 * b) as f32;
    // dL/da_i = s/(2B) Σ_j (softmax_row_i(j) + softmax_col_j(i) − 2 [i = j]) p_j
    let row = |i: usize, j: usize| (logit(i, j) - lse(&|k| logit(i, k))).exp();
    let col = |i: usize, j: usize| (logit(i, j) - lse(&|k| logit(k, j))).exp();
    let mut ga = vec![0f32; b * d];
    for i in 0..b {
        for j in 0..b {
            let w = row(i, j) + col(i, j) - if i == j { 2.0 } else { 0.0 };
            for c in 0..d {
                ga[i * d + c] += s / (2 * b) as f32 * w * p[j * d + c];
            }
        }
    }
    close(
        "infonce loss",
        f.loss.into_tensor()?.data::<f32>()?,
        &[want],
    );
    close("infonce grad a", g.a.into_tensor()?.data::<f32>()?, &ga);
    Ok(())
}

/// Segment mean pooling of 5 rows into 3 segments (row 3 is void, segment 2 is empty).
fn segment_mean() -> Result<()> {
    let x = Tensor::new([5, 2], data(10, 7))?;
    let seg = Tensor::new([5], vec![1i32, 0, 1, -1, 0])?;
    let out = fused::segment_mean_forward(&CpuBackend, x.view(), seg.view(), 3)?;
    let v = x.data::<f32>()?;
    let mean = |a: usize, b: usize, c: usize| (v[a * 2 + c] + v[b * 2 + c]) / 2.0;
    let want = [
        mean(1, 4, 0),
        mean(1, 4, 1),
        mean(0, 2, 0),
        mean(0, 2, 1),
        0.0,
        0.0,
    ];
    close(
        "segment mean",
        out.mean.into_tensor()?.data::<f32>()?,
        &want,
    );
    close(
        "segment count",
        out.count.into_tensor()?.data::<f32>()?,
        &[2.0, 2.0, 0.0],
    );
    Ok(())
}

pub fn main() -> Result<()> {
    lif()?;
    gat()?;
    infonce()?;
    segment_mean()?;
    println!("fused_ops: LIF, GAT, InfoNCE (forward and backward) and segment mean match their references");
    Ok(())
}
