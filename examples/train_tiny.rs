//! Your own graph trained with gshn: a linear projection learned with InfoNCE and AdamW
//! (gradient clipping on), its parameters saved to safetensors and reloaded exactly. Uses only
//! the core (`default-features = false` suffices).
//!
//!     cargo run --release --example train_tiny

use gshn::graph::{initial_values, Init, ParamSet};
use gshn::ops::{AdamWConfig, InfoNceAttrs};
use gshn::tensor::io::{load_safetensors, save_safetensors};
use gshn::{CpuBackend, DType, Executor, Graph, Result, Tensor};

fn data(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + k * 11) % 17) as f32 / 8.0 - 0.9)
        .collect()
}

/// A linear projection trained with InfoNCE and AdamW; its parameters saved and reloaded.
pub fn main() -> Result<()> {
    let (b, din, d) = (8, 5, 4);
    let mut g = Graph::new();
    let x = g.input("x", [b, din], DType::F32);
    let p = g.input("p", [b, d], DType::F32);
    let mut ps = ParamSet::new(&mut g, DType::F32);
    let (w, _) = ps.linear("proj", din, d, false);
    let scale = ps.param("logit_scale", [], Init::Constant(1.0));
    let specs = ps.finish()?;
    let a = g.matmul(x, w)?;
    let a = g.l2_normalize(a, 1e-6)?;
    let attrs = InfoNceAttrs {
        chunk: 4,
        ..InfoNceAttrs::SYMMETRIC
    };
    let loss = g.infonce(a, p, scale, attrs)?.loss;
    let grads = g.backward(loss, &[w, scale])?;
    let opt = g.adamw_step(&[w, scale], &grads, AdamWConfig::default(), Some(1.0))?;
    let mut ex = Executor::new(CpuBackend, g, &[loss])?;
    for (id, t) in initial_values(&specs, DType::F32, 0)? {
        ex.set(id, &t)?;
    }
    opt.zero_state(&mut ex)?;
    ex.set(x, &Tensor::new([b, din], data(b * din, 7))?)?;
    let targets: Vec<f32> = (0..b * d)
        .map(|i| if i % d == i / d % d { 1.0 } else { 0.0 })
        .collect();
    ex.set(p, &Tensor::new([b, d], targets)?)?;
    let mut losses = Vec::new();
    for step in 1..=30 {
        opt.set_hyper(&mut ex, 0.05, step)?;
        ex.run()?;
        losses.push(ex.get(loss)?.data::<f32>()?[0]);
    }
    assert!(losses[29] < losses[0], "no learning: {losses:?}");
    // Evaluate with the trained parameters: the forward alone, no optimizer step.
    ex.run_forward()?;
    let trained = ex.get(loss)?.data::<f32>()?[0];
    assert!(
        trained < losses[0],
        "evaluation {trained}, first step {}",
        losses[0]
    );
    let dir = std::env::temp_dir().join(format!("gshn-train-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| gshn::Error::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    let file = dir.join("params.safetensors");
    let mut saved: Vec<(String, Tensor)> = specs
        .iter()
        .map(|s| Ok((s.name.clone(), ex.get(s.id)?)))
        .collect::<Result<_>>()?;
    save_safetensors(&file, &saved, None)?;
    let (mut loaded, _) = load_safetensors(&file)?;
    saved.sort_by(|a, b| a.0.cmp(&b.0));
    loaded.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(loaded, saved, "parameters did not reload exactly");
    std::fs::remove_dir_all(dir).ok();
    println!(
        "train_tiny: loss {:.4} -> {trained:.4} after 30 AdamW steps",
        losses[0]
    );
    Ok(())
}
