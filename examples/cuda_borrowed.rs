//! Eager fused ops on GPU memory: the inputs are uploaded once, LIF forward feeds its backward
//! and the GAT forward feeds its attention export without leaving the device, and only the
//! results are read back, to be compared with the CPU. Skips (exit 0) without a CUDA device.
//!
//!     cargo run --release --example cuda_borrowed

use gshn::backend::{cuda_available, Backend, CudaBackend};
use gshn::fused::{self, Array, GatParams, GraphArrays};
use gshn::ops::{CsrGraph, LifConfig};
use gshn::{CpuBackend, Result, Tensor};

fn data(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + k * 11) % 17) as f32 / 8.0 - 0.9)
        .collect()
}

fn close(what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    let (g, w) = (got.data::<f32>()?, want.data::<f32>()?);
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (i, (g, w)) in g.iter().zip(w).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
    Ok(())
}

pub fn main() -> Result<()> {
    if !cuda_available() {
        println!("cuda_borrowed: no CUDA device, skipped");
        return Ok(());
    }
    let gpu = CudaBackend::new(0)?;

    // LIF: x[T, N] on the device; the forward's charge and spikes feed the backward there.
    let (t, n) = (8, 1000);
    let x = Tensor::new([t, n], data(t * n, 1))?;
    let cfg = LifConfig::default();
    let xd = Array::upload(&gpu, &x)?;
    let f = fused::lif_forward(&gpu, xd.view(), None, &cfg)?;
    let g = fused::lif_backward(
        &gpu,
        f.charge.view(),
        Some(f.spikes.view()),
        None,
        None,
        &cfg,
    )?;
    let fc = fused::lif_forward(&CpuBackend, x.view(), None, &cfg)?;
    let gc = fused::lif_backward(
        &CpuBackend,
        fc.charge.view(),
        Some(fc.spikes.view()),
        None,
        None,
        &cfg,
    )?;
    close(
        "lif spikes",
        &f.spikes.to_tensor(&gpu)?,
        &fc.spikes.into_tensor()?,
    )?;
    close("lif grad x", &g.x.to_tensor(&gpu)?, &gc.x.into_tensor()?)?;

    // GAT: the graph is uploaded once and reused by the forward and the attention export.
    let (nodes, h, fe) = (50, 2, 8);
    let edges: Vec<(usize, usize)> = (0..nodes * 3)
        .map(|k| ((k * 7) % nodes, (k * 11 + 1) % nodes))
        .collect();
    let csr = CsrGraph::from_edges(nodes, &edges)?;
    let (z, a_s, a_d) = (
        Tensor::new([nodes, h, fe], data(nodes * h * fe, 2))?,
        Tensor::new([h, fe], data(h * fe, 3))?,
        Tensor::new([h, fe], data(h * fe, 4))?,
    );
    let (zd, sd, dd) = (
        Array::upload(&gpu, &z)?,
        Array::upload(&gpu, &a_s)?,
        Array::upload(&gpu, &a_d)?,
    );
    let graph = GraphArrays::upload(&gpu, &csr)?;
    let params = GatParams {
        z: zd.view(),
        a_src: sd.view(),
        a_dst: dd.view(),
        edge_bias: None,
    };
    let fw = fused::gat_forward(&gpu, params, graph.view(), 0.2)?;
    let alpha = fused::gat_alpha(&gpu, params, fw.lse.view(), graph.view(), 0.2)?;
    let cpu_params = GatParams {
        z: z.view(),
        a_src: a_s.view(),
        a_dst: a_d.view(),
        edge_bias: None,
    };
    let fwc = fused::gat_forward(&CpuBackend, cpu_params, csr.view(), 0.2)?;
    let alc = fused::gat_alpha(&CpuBackend, cpu_params, fwc.lse.view(), csr.view(), 0.2)?;
    close("gat out", &fw.out.to_tensor(&gpu)?, &fwc.out.into_tensor()?)?;
    close("gat alpha", &alpha.to_tensor(&gpu)?, &alc.into_tensor()?)?;

    println!("cuda_borrowed: LIF and GAT on {} match the CPU", gpu.name());
    Ok(())
}
