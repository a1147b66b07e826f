//! The model compiled for a run: one training-step executor and two forward-only encoders
//! (image, text), the optimizer state they share, and loading a run's checkpoint into them.

use super::batches::{Feeder, LossWeights};
use super::checkpoint::Checkpoint;
use super::config::{RunConfig, StepPrecision};
use super::scaler::LossScaler;
use crate::backend::Backend;
use crate::data::{DataShape, Vocab};
use crate::error::{Error, Result};
use crate::graph::initial_values;
use crate::graph::{Executor, ValueId};
use crate::model::{Capacity, Gshn, ModelOutputs};
use crate::ops::AdamWConfig;
use crate::tensor::{DType, Tensor};
use crate::util::rng::SplitMix64;
use std::path::Path;
use std::sync::Arc;

/// The model compiled three ways: a training step (forward, backward, clipping, AdamW in
/// one graph), an image encoder and a text encoder (forward only, for evaluation).
pub struct Engine<B: Backend> {
    /// The run's config.
    pub cfg: RunConfig,
    /// The static data sizes the graphs are built for.
    pub shape: DataShape,
    /// The caption vocabulary.
    pub vocab: Vocab,
    /// Output handles of the model graph (shared by the three executors).
    pub model_outputs: ModelOutputs,
    /// The model's parameters (same ids in all three executors).
    pub params: Vec<crate::graph::ParamSpec>,
    /// Turns batches into the executors' inputs.
    pub feeder: Feeder,
    /// The training step: forward, backward, clipping and AdamW.
    pub train: Executor<Arc<B>>,
    /// Forward-only image encoder (embeddings, attention, spike rates).
    pub image: Executor<Arc<B>>,
    /// Forward-only text encoder (caption embeddings).
    pub text: Executor<Arc<B>>,
    opt_state: Vec<ValueId>,
    hyper: ValueId,
    /// f16 only: the inputs of the loss scale and its inverse, fed each step from `scaler`.
    scaling: Option<(ValueId, ValueId)>,
    /// Dynamic loss scaling (f16 runs); the trainer saves and restores it with checkpoints.
    pub scaler: Option<LossScaler>,
    pub(super) grad_norm: ValueId,
    /// d(loss)/d(param) in `params` order (fetched only with `inspect`: [`Engine::new_in`]).
    pub(super) grads: Vec<ValueId>,
    pub(super) image_fetch: Vec<ValueId>,
    /// Device operations the last step queued, where the backend counts them (CUDA).
    last_step_ops: Option<u64>,
}
impl<B: Backend> Engine<B> {
    /// Builds and compiles the three executors for `cfg` and `shape` (parameters not yet set: see [`Engine::init`]).
    pub fn new(backend: B, cfg: RunConfig, shape: DataShape, vocab: Vocab) -> Result<Self> {
        let activations = cfg.train.precision.dtype();
        Self::new_in(backend, cfg, shape, vocab, activations, false)
    }

    /// [`Engine::new`] with every float value in `float` (f64: the step as an exact
    /// reference; a half type: mixed precision, parameters in f32), the training step
    /// keeping its parameter gradients and both embeddings readable when `inspect` (see
    /// `gshn dump-batch`).
    pub fn new_in(
        backend: B,
        cfg: RunConfig,
        shape: DataShape,
        vocab: Vocab,
        float: DType,
        inspect: bool,
    ) -> Result<Self> {
        let backend = Arc::new(backend);
        let t = &cfg.train;
        let data_cap = shape.batch_capacity(t.batch_size);
        let mut cap = Capacity::of_batch(&data_cap, &shape, vocab.len(), t.node_samples_per_graph);
        cap.negatives = cfg.hard_negatives();
        cap.relations = t.lambda_rel > 0.0;
        let model = match float.is_half() {
            true => Gshn::build_mixed(&cfg.model, cap, float)?,
            false => Gshn::build_in(&cfg.model, cap, float)?,
        };
        let out = model.outputs.clone();
        let ids: Vec<ValueId> = model.params.iter().map(|p| p.id).collect();

        let mut train_graph = model.graph.clone();
        let (grads, scaling) = match float {
            DType::F16 => {
                // f16 gradients underflow: differentiate loss · scale, then unscale the f32
                // parameter gradients before clipping (see `LossScaler`)
                let g = &mut train_graph;
                let (scale, inverse) = (
                    g.input("loss_scale", [], DType::F32),
                    g.input("loss_scale.inverse", [], DType::F32),
                );
                let scaled = g.mul(out.loss, scale)?;
                let grads = g.backward(scaled, &ids)?;
                let grads = grads
                    .into_iter()
                    .map(|d| match g.shape(d)?.rank() {
                        0 => g.mul(d, inverse),
                        _ => g.mul_broadcast(d, inverse),
                    })
                    .collect::<Result<Vec<_>>>()?;
                (grads, Some((scale, inverse)))
            }
            _ => (train_graph.backward(out.loss, &ids)?, None),
        };
        let adam = AdamWConfig {
            weight_decay: t.weight_decay,
            ..AdamWConfig::default()
        };
        let opt = train_graph.adamw_step(&ids, &grads, adam, Some(t.clip_norm))?;
        let grad_norm = opt.grad_norm;
        let mut fetch = vec![out.loss, out.itc, grad_norm];
        fetch.extend(out.stl);
        fetch.extend(out.node_cl);
        fetch.extend(out.neg);
        fetch.extend(out.rel);
        fetch.extend(&out.spike_rates);
        if inspect {
            fetch.extend([out.z_img, out.z_txt]);
            fetch.extend(&grads);
        }
        let train = Executor::new(backend.clone(), train_graph, &fetch)?;

        let mut image_fetch = vec![out.z_img];
        image_fetch.extend(&out.attention);
        image_fetch.extend(out.node_spike_rate);
        let image = Executor::new(backend.clone(), model.graph.clone(), &image_fetch)?;
        let text = Executor::new(backend, model.graph, &[out.z_txt])?;
        let mut opt_state = opt.m.clone();
        opt_state.extend(&opt.v);
        let feeder = Feeder::new(model.inputs, data_cap, cap, &cfg.model);
        Ok(Engine {
            cfg,
            shape,
            vocab,
            model_outputs: out,
            params: model.params,
            feeder,
            train,
            image,
            text,
            opt_state,
            hyper: opt.hyper,
            scaling,
            scaler: scaling.map(|_| LossScaler::default()),
            grad_norm,
            grads: if inspect { grads } else { Vec::new() },
            image_fetch,
            last_step_ops: None,
        })
    }

    /// Fresh parameters (deterministic in the seed; drawn in f32 whatever the engine's float
    /// type, so an f64 engine starts from the f32 run's values) and zeroed optimizer state.
    pub fn init(&mut self) -> Result<()> {
        for (id, t) in initial_values(&self.params, DType::F32, self.cfg.train.seed)? {
            let want = self.train.graph().dtype(id)?;
            self.train.set(id, &t.to_dtype(want)?)?;
        }
        for &s in &self.opt_state {
            let m = self.train.graph().meta(s)?.clone();
            self.train.set(s, &Tensor::zeros(m.shape, m.dtype))?;
        }
        Ok(())
    }

    /// Named parameters and optimizer state, for checkpoints.
    /// Parameters and optimizer state by name (a checkpoint's tensors).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.train.persistent_values()
    }

    /// Restores parameters and optimizer state from a checkpoint's tensors (converted to the
    /// engine's float type).
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let float = self.train.graph().dtype(self.grad_norm)?;
        let converted;
        let tensors = if tensors.iter().all(|(_, t)| t.dtype() == float) {
            tensors
        } else {
            converted = tensors
                .iter()
                .map(|(n, t)| Ok((n.clone(), t.to_dtype(float)?)))
                .collect::<Result<Vec<_>>>()?;
            &converted
        };
        self.train
            .set_persistent_values(tensors)
            .map_err(|e| Error::invalid("checkpoint", e.to_string()))
    }

    /// One optimizer step on `graphs` with one caption each (and, when the model takes them,
    /// that caption's hard negative). Reads nothing back in f32 and bf16, so a GPU runs the
    /// step while the host prepares the next batch ([`Engine::check_finite`] and
    /// [`Engine::stats`] read the loss when it is wanted); in f16 it reads the gradient norm
    /// for the loss scaler. Returns whether the update was applied: an f16 step whose gradient
    /// overflowed is skipped (see [`LossScaler`]). In every precision a step with a
    /// non-finite gradient leaves the weights as they were (AdamW skips it).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        graphs: &[&crate::data::SceneGraph],
        captions: &[&crate::data::Encoded],
        negatives: &[Option<&crate::data::Encoded>],
        w: LossWeights,
        lr: f64,
        step: usize,
        rng: &mut SplitMix64,
    ) -> Result<bool> {
        let ops_before = self.train.backend().device_ops();
        self.feeder.feed_images(&mut self.train, graphs, rng)?;
        self.feeder.feed_text(&mut self.train, captions)?;
        self.feeder.feed_negatives(&mut self.train, negatives)?;
        self.feeder.feed_weights(&mut self.train, w)?;
        let adam_step = self.scaler.map_or(step + 1, |s| s.adam_step(step));
        let hyper = Tensor::new([2], vec![lr, adam_step as f64])?;
        let float = self.train.graph().dtype(self.hyper)?;
        self.train.set(self.hyper, &hyper.to_dtype(float)?)?;
        if let (Some((scale, inverse)), Some(s)) = (self.scaling, self.scaler) {
            self.train
                .set(scale, &Tensor::new([], vec![s.scale as f32])?)?;
            self.train
                .set(inverse, &Tensor::new([], vec![(1.0 / s.scale) as f32])?)?;
        }
        self.train.run()?;
        let applied = match &mut self.scaler {
            Some(s) => {
                // AdamW skipped the update itself (ClipScale reports 0 for a non-finite norm)
                let grad_norm = self.train.get(self.grad_norm)?.to_f64_vec()[0];
                s.update(grad_norm.is_finite(), step)?
            }
            None => true,
        };
        let ops_after = self.train.backend().device_ops();
        self.last_step_ops = ops_before.zip(ops_after).map(|(a, b)| b - a);
        Ok(applied)
    }

    /// Reads the last step's loss and gradient norm back: an error naming `step` when either
    /// is not finite (f16 runs: the loss; their overflowing gradients are the scaler's).
    pub fn check_finite(&self, step: usize) -> Result<()> {
        let loss = self.scalar(self.model_outputs.loss)?;
        let grad_norm = self.scalar(self.grad_norm)?;
        if loss.is_finite() && (grad_norm.is_finite() || self.scaler.is_some()) {
            return Ok(());
        }
        Err(Error::invalid(
            "train",
            format!("non-finite loss or gradient at step {step} (loss {loss}, grad norm {grad_norm}){}; lower train.lr or check the data", self.invalid_taus()),
        ))
    }

    /// The learnable time constants (PLIF) that no neuron can have (see [`invalid_taus`]).
    fn invalid_taus(&self) -> String {
        let taus = (self.params.iter())
            .filter(|p| p.name.ends_with(".tau"))
            .filter_map(|p| Some((p.name.as_str(), self.scalar(p.id).ok()?)));
        invalid_taus(taus)
    }

    fn scalar(&self, v: ValueId) -> Result<f64> {
        Ok(self.train.get(v)?.to_f64_vec()[0])
    }

    /// Loss terms, gradient norm, spike rates, `r` and logit scale of the last step.
    pub fn stats(&self) -> Result<StepStats> {
        let o = &self.model_outputs;
        let opt = |v: Option<ValueId>| v.map(|v| self.scalar(v)).transpose();
        Ok(StepStats {
            loss: self.scalar(o.loss)?,
            itc: self.scalar(o.itc)?,
            stl: opt(o.stl)?,
            node_cl: opt(o.node_cl)?,
            neg: opt(o.neg)?,
            rel: opt(o.rel)?,
            grad_norm: self.scalar(self.grad_norm)?,
            spike_rates: o
                .spike_rates
                .iter()
                .map(|&v| self.scalar(v))
                .collect::<Result<_>>()?,
            r: o.r
                .map(|v| {
                    self.train
                        .get(v)
                        .map(|t| t.to_f64_vec().iter().sum::<f64>() / t.numel() as f64)
                })
                .transpose()?,
            logit_scale: self.scalar(o.logit_scale)?,
            loss_scale: self.scaler.map(|s| s.scale),
            device_ops: self.last_step_ops,
        })
    }

    /// Copies the current parameters into the evaluation executors.
    pub fn sync_eval(&mut self) -> Result<()> {
        for p in &self.params {
            let t = self.train.get(p.id)?;
            self.image.set(p.id, &t)?;
            self.text.set(p.id, &t)?;
        }
        Ok(())
    }
}

/// Numbers of the last training step, for logs ([`Engine::stats`]).
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// Weighted total loss.
    pub loss: f64,
    /// Image–text InfoNCE.
    pub itc: f64,
    /// STL loss (full variant only).
    pub stl: Option<f64>,
    /// Node CL loss (full variant only).
    pub node_cl: Option<f64>,
    /// Hard-negative margin loss, when the model has negatives.
    pub neg: Option<f64>,
    /// Relation loss, when the model has it.
    pub rel: Option<f64>,
    /// Global gradient norm (the one `clip_norm` clips).
    pub grad_norm: f64,
    /// Mean firing rate of each SNN layer.
    pub spike_rates: Vec<f64>,
    /// Fusion ratio r (mean over channels), when the variant fuses.
    pub r: Option<f64>,
    /// The InfoNCE logit-scale parameter (log of the temperature's inverse).
    pub logit_scale: f64,
    /// The f16 loss scale for the next step (f16 runs only).
    pub loss_scale: Option<f64>,
    /// Device operations the step queued — kernel launches, cuBLAS calls, the batch's uploads
    /// (a replayed step: its uploads and one graph launch) — where the backend counts them
    /// (CUDA; None on the CPU).
    pub device_ops: Option<u64>,
}
/// Loads a run's checkpoint into a fresh engine (for `eval` and `show`), computing in
/// `precision` (default: the run's `train.precision`; checkpoints are f32 whatever the
/// precision they were trained in).
pub fn load_engine<B: Backend>(
    backend: B,
    run: &Path,
    precision: Option<StepPrecision>,
) -> Result<Engine<B>> {
    let ck = Checkpoint::load_latest(run)?.ok_or_else(|| {
        Error::invalid("checkpoint", format!("no checkpoint in {}", run.display()))
    })?;
    let mut cfg = ck.config.clone();
    cfg.train.precision = precision.unwrap_or(cfg.train.precision);
    let mut engine = Engine::new(backend, cfg, ck.shape.clone(), ck.vocab.clone())?;
    engine.load_state(&ck.tensors)?;
    Ok(engine)
}

/// The part of a non-finite step's error that names learnable time constants trained to
/// where no neuron has one (≤ 1 or not finite): the CPU's LIF refuses them, CUDA's reads them
/// on the device and answers NaN, so the step's loss or gradient is what shows it there.
fn invalid_taus<'a>(taus: impl Iterator<Item = (&'a str, f64)>) -> String {
    let bad: Vec<String> = taus
        .filter(|(_, tau)| !(tau.is_finite() && *tau > 1.0))
        .map(|(name, tau)| format!("{name} = {tau}"))
        .collect();
    match bad.is_empty() {
        true => String::new(),
        false => format!(", with learnable tau ≤ 1: {}", bad.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_non_finite_step_names_the_taus_no_neuron_has() {
        let taus = [
            ("snn.0.tau", 2.0),
            ("snn.1.tau", 0.9),
            ("snn.2.tau", f64::NAN),
        ];
        assert_eq!(
            super::invalid_taus(taus.into_iter()),
            ", with learnable tau ≤ 1: snn.1.tau = 0.9, snn.2.tau = NaN"
        );
        assert_eq!(super::invalid_taus([("snn.0.tau", 1.5)].into_iter()), "");
    }
}
