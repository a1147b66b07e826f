//! One training step written out whole (`gshn dump-batch`): the batch as the model is fed it
//! (random choices included), the parameters and optimizer state before the step, every
//! loss term, every parameter gradient, and the parameters and moments after the AdamW
//! update. An independent implementation (python/gshn_twin.py) replays it and must agree.

use super::checkpoint::Checkpoint;
use super::config::RunConfig;
use super::engine::Engine;
use super::trainer::{epoch_order, loss_weights, schedule, RunData, StepBatch};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::ValueId;
use crate::ops::AdamWConfig;
use crate::tensor::io::save_safetensors;
use crate::tensor::DType;
use std::collections::HashMap;
use std::path::PathBuf;

/// The `format` metadata of a step dump.
pub const STEP_DUMP_FORMAT: &str = "gshn-step/1";

/// Options of `gshn dump-batch`.
pub struct DumpOptions {
    /// Dataset root holding the splits.
    pub data: PathBuf,
    /// A run folder: its checkpoint's parameters, optimizer state and config (then `config`
    /// is ignored). Without one, fresh parameters from `config`'s seed.
    pub checkpoint: Option<PathBuf>,
    /// The run config when there is no checkpoint.
    pub config: RunConfig,
    /// The optimizer step whose batch, learning rate and loss weights are taken (default:
    /// the checkpoint's next step, or 0).
    pub step: Option<usize>,
    /// f32 (the training step as `gshn train` runs it) or f64 (an exact reference).
    pub float: DType,
    /// The `.safetensors` file to write.
    pub out: PathBuf,
}

/// What a dump holds, for the command's summary line.
#[derive(Clone, Debug)]
pub struct DumpSummary {
    /// The optimizer step dumped.
    pub step: usize,
    /// Tensors written.
    pub tensors: usize,
    /// The total loss of the step.
    pub loss: f64,
}

/// Runs one training step of `opts` and writes everything about it to `opts.out`: tensors
/// `input.<name>` (every graph input, `adamw.hyper` = (lr, t) included), `param.<name>` and
/// `state.adam_{m,v}.<name>` before the step, `grad.<name>` (before clipping),
/// `after.<name>` and `after.adam_{m,v}.<name>`, `output.<term>` (loss, itc, stl, node_cl,
/// neg, rel, grad_norm, `spike_rate.<layer>`, z_img, z_txt); metadata `format`, `float`,
/// `step`, `config` (JSON), `param_names` (creation order), `position_channel` (the x
/// channel of the pixel features, or null) and `adamw`.
pub fn dump_step<B: Backend>(backend: B, opts: &DumpOptions) -> Result<DumpSummary> {
    if !opts.float.is_float() {
        return Err(Error::invalid("dump-batch", "the float type is f32 or f64"));
    }
    let ck = match &opts.checkpoint {
        Some(run) => Some(Checkpoint::load_latest(run)?.ok_or_else(|| {
            Error::invalid("checkpoint", format!("no checkpoint in {}", run.display()))
        })?),
        None => None,
    };
    let cfg = ck
        .as_ref()
        .map_or_else(|| opts.config.clone(), |c| c.config.clone());
    cfg.train
        .validate()
        .map_err(|m| Error::invalid("config", m))?;
    let data = RunData::load(&opts.data, &cfg, ck.as_ref())?;
    let mut engine = Engine::new_in(
        backend,
        cfg.clone(),
        data.shape.clone(),
        data.vocab.clone(),
        opts.float,
        true,
    )?;
    match &ck {
        Some(ck) => engine.load_state(&ck.tensors)?,
        None => engine.init()?,
    }
    let t = &cfg.train;
    let steps_per_epoch = data.train_split.len() / t.batch_size;
    let step = opts
        .step
        .unwrap_or_else(|| ck.as_ref().map_or(0, |c| c.state.step));
    // The batch, loss weights and learning rate `gshn train` uses at this step.
    let (epoch, batch) = (step / steps_per_epoch, step % steps_per_epoch);
    let order = epoch_order(t.seed, epoch, data.train_split.len());
    let (picked, mut rng) = StepBatch::at_step(&data.train_split, t, &order, batch, step);
    let w = loss_weights(t, epoch, engine.model_outputs.stl.is_some());
    let lr = schedule(t, steps_per_epoch).at(step);

    let mut tensors = Vec::new();
    let before = engine.state_tensors()?;
    engine.step(
        &picked.graphs,
        &picked.captions,
        &picked.negatives,
        w,
        lr,
        step,
        &mut rng,
    )?;
    let ex = &engine.train;
    let graph = ex.graph();
    for v in graph.inputs() {
        let name = &graph.value(v)?.name;
        tensors.push((format!("input.{name}"), ex.get(v)?));
    }
    for (name, t) in before {
        let key = match name.starts_with("adam_") {
            true => format!("state.{name}"),
            false => format!("param.{name}"),
        };
        tensors.push((key, t));
    }
    for (p, &g) in engine.params.iter().zip(&engine.grads) {
        tensors.push((format!("grad.{}", p.name), ex.get(g)?));
    }
    for (name, t) in engine.state_tensors()? {
        tensors.push((format!("after.{name}"), t));
    }
    let o = &engine.model_outputs;
    let mut outputs: Vec<(String, ValueId)> = vec![
        ("loss".into(), o.loss),
        ("itc".into(), o.itc),
        ("grad_norm".into(), engine.grad_norm),
        ("z_img".into(), o.z_img),
        ("z_txt".into(), o.z_txt),
    ];
    for (name, v) in [
        ("stl", o.stl),
        ("node_cl", o.node_cl),
        ("neg", o.neg),
        ("rel", o.rel),
    ] {
        outputs.extend(v.map(|v| (name.to_string(), v)));
    }
    for (l, &v) in o.spike_rates.iter().enumerate() {
        outputs.push((format!("spike_rate.{l}"), v));
    }
    for (name, v) in outputs {
        tensors.push((format!("output.{name}"), engine.train.get(v)?));
    }
    let loss = engine.train.get(o.loss)?.to_f64_vec()[0];

    let adam = AdamWConfig {
        weight_decay: t.weight_decay,
        ..AdamWConfig::default()
    };
    let json = |v: serde_json::Value| v.to_string();
    let meta = HashMap::from([
        ("format".to_string(), STEP_DUMP_FORMAT.to_string()),
        (
            "float".to_string(),
            format!("{:?}", opts.float).to_lowercase(),
        ),
        ("step".to_string(), step.to_string()),
        (
            "config".to_string(),
            serde_json::to_string(&cfg).expect("a config serialises"),
        ),
        (
            "position_channel".to_string(),
            json(serde_json::json!(engine.feeder.cap.position_channel)),
        ),
        (
            "param_names".to_string(),
            json(engine.params.iter().map(|p| p.name.clone()).collect()),
        ),
        (
            "adamw".to_string(),
            json(serde_json::json!({
                "beta1": adam.beta1, "beta2": adam.beta2, "eps": adam.eps,
                "weight_decay": adam.weight_decay, "clip_norm": t.clip_norm,
                "lr": lr, "t": step + 1,
            })),
        ),
    ]);
    save_safetensors(&opts.out, &tensors, Some(meta))?;
    Ok(DumpSummary {
        step,
        tensors: tensors.len(),
        loss,
    })
}
