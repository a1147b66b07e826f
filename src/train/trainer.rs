//! The training loop: AdamW with warm-up + cosine, clipping, the STL/node-CL → ITC schedule,
//! per-epoch retrieval on the val split, atomic checkpoints with exact resume, a metrics log
//! and plots.

use super::batches::{Feeder, LossWeights};
use super::checkpoint::{Checkpoint, TrainState};
use super::config::{Layout, RunConfig};
use super::retrieval::{recall, Recall};
use super::schedule::WarmupCosine;
use crate::backend::Backend;
use crate::data::{prepare, DataShape, Dataset, PreparedSplit, SplitPaths, Vocab};
use crate::error::{Error, Result};
use crate::graph::{Executor, ValueId};
use crate::model::params::initial_values;
use crate::model::{Capacity, Gshn, ModelOutputs};
use crate::ops::AdamWConfig;
use crate::tensor::{DType, Tensor};
use crate::util::progress::progress;
use crate::util::rng::{mix64, SplitMix64};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Opens one split of a dataset root with the config's layout and overrides.
pub fn open_split(root: &Path, cfg: &RunConfig, split: &str) -> Result<Dataset> {
    let d = &cfg.data;
    let base = match d.layout {
        Layout::Gshn => SplitPaths::standard(root, split),
        Layout::Coco2017 => SplitPaths::coco2017(root, split),
    };
    let over = if split == d.train_split {
        &d.train_paths
    } else {
        &d.val_paths
    };
    Ok(Dataset::open(&base.with_overrides(over, root), &d.load)?)
}

/// The model compiled three ways: a training step (forward, backward, clipping, AdamW in
/// one graph), an image encoder and a text encoder (forward only, for evaluation).
pub struct Engine<B: Backend> {
    pub cfg: RunConfig,
    pub shape: DataShape,
    pub vocab: Vocab,
    pub model_outputs: ModelOutputs,
    pub params: Vec<crate::model::params::ParamSpec>,
    pub feeder: Feeder,
    pub train: Executor<Arc<B>>,
    pub image: Executor<Arc<B>>,
    pub text: Executor<Arc<B>>,
    opt_state: Vec<ValueId>,
    hyper: ValueId,
    grad_norm: ValueId,
    image_fetch: Vec<ValueId>,
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: B, cfg: RunConfig, shape: DataShape, vocab: Vocab) -> Result<Self> {
        let backend = Arc::new(backend);
        let t = &cfg.train;
        let data_cap = shape.batch_capacity(t.batch_size);
        let mut cap = Capacity::of_batch(&data_cap, &shape, vocab.len(), t.node_samples_per_graph);
        cap.negatives = cfg.hard_negatives();
        cap.relations = t.lambda_rel > 0.0;
        let model = Gshn::build(&cfg.model, cap)?;
        let out = model.outputs.clone();
        let ids: Vec<ValueId> = model.params.iter().map(|p| p.id).collect();

        let mut train_graph = model.graph.clone();
        let grads = train_graph.backward(out.loss, &ids)?;
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
            grad_norm,
            image_fetch,
        })
    }

    /// Fresh parameters (deterministic in the seed) and zeroed optimizer state.
    pub fn init(&mut self) -> Result<()> {
        for (id, t) in initial_values(&self.params, DType::F32, self.cfg.train.seed)? {
            self.train.set(id, &t)?;
        }
        for &s in &self.opt_state {
            let m = self.train.graph().meta(s).clone();
            self.train.set(s, &Tensor::zeros(m.shape, m.dtype))?;
        }
        Ok(())
    }

    /// Named parameters and optimizer state, for checkpoints.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let g = self.train.graph();
        self.params
            .iter()
            .map(|p| p.id)
            .chain(self.opt_state.iter().copied())
            .map(|id| Ok((g.value(id).name.clone(), self.train.get(id)?)))
            .collect()
    }

    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let ids: Vec<ValueId> = self
            .params
            .iter()
            .map(|p| p.id)
            .chain(self.opt_state.iter().copied())
            .collect();
        for id in ids {
            let name = self.train.graph().value(id).name.clone();
            let t = tensors
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::invalid("checkpoint", format!("missing tensor {name:?}")))?;
            self.train.set(id, &t.1)?;
        }
        Ok(())
    }

    /// One optimizer step on `graphs` with one caption each (and, when the model takes them,
    /// that caption's hard negative). Reads back only the loss and gradient norm (to stop on
    /// non-finite values); [`Engine::stats`] reads the rest when it is logged.
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
    ) -> Result<()> {
        self.feeder.feed_images(&mut self.train, graphs, rng)?;
        self.feeder.feed_text(&mut self.train, captions)?;
        self.feeder.feed_negatives(&mut self.train, negatives)?;
        self.feeder.feed_weights(&mut self.train, w)?;
        self.train.set(
            self.hyper,
            &Tensor::new([2], vec![lr as f32, (step + 1) as f32])?,
        )?;
        self.train.run()?;
        let loss = self.scalar(self.model_outputs.loss)?;
        let grad_norm = self.scalar(self.grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::invalid(
                "train",
                format!("non-finite loss or gradient at step {step} (loss {loss}, grad norm {grad_norm}); lower train.lr or check the data"),
            ));
        }
        Ok(())
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

    /// Image and caption embeddings of a whole split (with the current parameters), and each
    /// caption's image index.
    pub fn embed(&mut self, split: &PreparedSplit) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
        self.sync_eval()?;
        let b = self.cfg.train.batch_size;
        let mut rng = SplitMix64::new(0);
        let mut img = Vec::new();
        for chunk in split.graphs.chunks(b) {
            self.feeder.feed_images(&mut self.image, chunk, &mut rng)?;
            self.image.run()?;
            let z = self.image.get(self.model_outputs.z_img)?;
            img.extend_from_slice(&z.data::<f32>()?[..chunk.len() * self.cfg.model.dim]);
        }
        let caps: Vec<(&crate::data::Encoded, usize)> = split
            .captions
            .iter()
            .enumerate()
            .flat_map(|(i, cs)| cs.iter().map(move |c| (c, i)))
            .collect();
        let mut txt = Vec::new();
        for chunk in caps.chunks(b) {
            let enc: Vec<&crate::data::Encoded> = chunk.iter().map(|(c, _)| *c).collect();
            self.feeder.feed_text(&mut self.text, &enc)?;
            self.text.run()?;
            let z = self.text.get(self.model_outputs.z_txt)?;
            txt.extend_from_slice(&z.data::<f32>()?[..chunk.len() * self.cfg.model.dim]);
        }
        Ok((img, txt, caps.iter().map(|(_, i)| *i).collect()))
    }

    pub fn evaluate(&mut self, split: &PreparedSplit) -> Result<Recall> {
        let (img, txt, owner) = self.embed(split)?;
        Ok(recall(&img, &txt, self.cfg.model.dim, &owner))
    }

    /// Image-side outputs for one batch (for `gshn show`): attention per layer and node spike rates.
    pub fn inspect(
        &mut self,
        graphs: &[crate::data::SceneGraph],
    ) -> Result<(crate::data::GraphBatch, Vec<Tensor>)> {
        self.sync_eval()?;
        let b = self
            .feeder
            .feed_images(&mut self.image, graphs, &mut SplitMix64::new(0))?;
        self.image.run()?;
        let outs = self
            .image_fetch
            .iter()
            .map(|&v| self.image.get(v))
            .collect::<Result<_>>()?;
        Ok((b, outs))
    }
}

#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub itc: f64,
    pub stl: Option<f64>,
    pub node_cl: Option<f64>,
    pub neg: Option<f64>,
    pub rel: Option<f64>,
    pub grad_norm: f64,
    pub spike_rates: Vec<f64>,
    pub r: Option<f64>,
    pub logit_scale: f64,
}

/// Options of `gshn train`.
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// Stop (with a checkpoint) once this many optimizer steps are done in total; `--resume`
    /// continues from there to exactly the numbers of an uninterrupted run.
    pub stop_after_steps: Option<usize>,
}

/// Summary of a finished run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: usize,
    pub seconds: f64,
    pub graphs_per_second: f64,
    pub final_recall: Recall,
    pub best_rsum: f64,
    pub final_r: Option<f64>,
    pub final_spike_rates: Vec<f64>,
}

/// Trains (or resumes) a run in `opts.out` and returns its summary.
pub fn train<B: Backend>(backend: B, cfg: RunConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    let resumed = if opts.resume {
        Checkpoint::load_latest(out)?
    } else {
        None
    };
    let cfg = match &resumed {
        Some(ck) => ck.config.clone(),
        None => cfg,
    };
    let train_ds = open_split(&opts.data, &cfg, &cfg.data.train_split)?;
    let val_ds = open_split(&opts.data, &cfg, &cfg.data.val_split)?;
    let vocab = match &resumed {
        Some(ck) => ck.vocab.clone(),
        None => Vocab::build(train_ds.all_captions(), cfg.data.vocab_min_count, None),
    };
    let train_split = prepare(&train_ds, &cfg.prepare_options(), &vocab, "train")?;
    let val_split = prepare(&val_ds, &cfg.prepare_options(), &vocab, "val")?;
    let shape = match &resumed {
        Some(ck) => ck.shape.clone(),
        None => DataShape::of(&[&train_split, &val_split], train_ds.num_categories())?,
    };
    if train_split.len() < cfg.train.batch_size {
        return Err(Error::invalid(
            "train",
            format!(
                "the train split has {} images, fewer than one batch ({})",
                train_split.len(),
                cfg.train.batch_size
            ),
        ));
    }
    let mut engine = Engine::new(backend, cfg.clone(), shape.clone(), vocab.clone())?;
    let t = &cfg.train;
    let steps_per_epoch = train_split.len() / t.batch_size;
    let total = steps_per_epoch * t.epochs;
    let sched = WarmupCosine {
        lr: t.lr,
        warmup_steps: t.warmup_steps.min(total / 2),
        total_steps: total,
        min_ratio: t.min_lr_ratio,
    };

    let mut state = TrainState::default();
    match &resumed {
        Some(ck) => {
            engine.load_state(&ck.tensors)?;
            state = ck.state.clone();
            super::metrics::truncate_after(&out.join("metrics.jsonl"), state.step)?;
        }
        None => {
            engine.init()?;
            std::fs::remove_file(out.join("metrics.jsonl")).ok();
        }
    }
    let mut log = super::metrics::MetricsLog::open(&out.join("metrics.jsonl"))?;
    let save = |engine: &Engine<B>, state: &TrainState| -> Result<()> {
        Checkpoint {
            config: cfg.clone(),
            vocab: vocab.clone(),
            shape: shape.clone(),
            state: state.clone(),
            tensors: engine.state_tensors()?,
        }
        .save(out)
    };

    if !opts.quiet {
        eprintln!(
            "gshn: {} train / {} val images, {} steps/epoch × {} epochs, model {:?}, {} parameters, plan peak {:.1} MiB",
            train_split.len(),
            val_split.len(),
            steps_per_epoch,
            t.epochs,
            cfg.model.variant,
            engine.params.iter().map(|p| p.shape.numel()).sum::<usize>(),
            engine.train.plan().memory.peak_intermediate_bytes as f64 / (1 << 20) as f64
        );
    }
    let started = Instant::now();
    let mut last = StepStats::default();
    let mut final_recall = state.last_recall.unwrap_or_default();
    let mut graphs_done = 0usize;
    while state.epoch < t.epochs {
        let epoch = state.epoch;
        let mut order: Vec<usize> = (0..train_split.len()).collect();
        SplitMix64::new(mix64(t.seed ^ 0x5eed) ^ epoch as u64).shuffle(&mut order);
        let bar = if opts.quiet {
            ProgressBar::hidden()
        } else {
            progress(
                steps_per_epoch as u64,
                &format!("epoch {}/{}", epoch + 1, t.epochs),
            )
        };
        bar.set_position(state.batch as u64);
        let pretrain = epoch < t.pretrain_epochs && engine.model_outputs.stl.is_some();
        let w = LossWeights {
            itc: if pretrain { 0.0 } else { 1.0 },
            stl: t.lambda_stl as f32,
            node: t.lambda_node as f32,
            neg: if pretrain { 0.0 } else { t.lambda_neg as f32 },
            rel: t.relation_weight(epoch) as f32,
        };
        let epoch_start = Instant::now();
        while state.batch < steps_per_epoch {
            let idx = &order[state.batch * t.batch_size..(state.batch + 1) * t.batch_size];
            // Every random choice of a step derives from (seed, step): resuming repeats it.
            let mut rng = SplitMix64::new(mix64(t.seed) ^ mix64(state.step as u64 + 1));
            let graphs: Vec<&crate::data::SceneGraph> =
                idx.iter().map(|&i| &train_split.graphs[i]).collect();
            let picked: Vec<(usize, usize)> = idx
                .iter()
                .map(|&i| (i, rng.below(train_split.captions[i].len())))
                .collect();
            let caps: Vec<&crate::data::Encoded> = picked
                .iter()
                .map(|&(i, c)| &train_split.captions[i][c])
                .collect();
            let negs: Vec<Option<&crate::data::Encoded>> = picked
                .iter()
                .map(|&(i, c)| train_split.negative(i, c))
                .collect();
            let lr = sched.at(state.step);
            engine.step(&graphs, &caps, &negs, w, lr, state.step, &mut rng)?;
            state.step += 1;
            state.batch += 1;
            graphs_done += t.batch_size;
            bar.inc(1);
            let stop = opts.stop_after_steps.is_some_and(|n| state.step >= n);
            let log_now = state.step % t.log_every.max(1) == 0 || state.batch == steps_per_epoch;
            if log_now || stop {
                last = engine.stats()?;
            }
            if log_now {
                let gps = graphs_done as f64 / started.elapsed().as_secs_f64();
                log.step(state.step, epoch, lr, &last, gps)?;
                bar.set_message(format!("loss {:.3}", last.loss));
            }
            let periodic = t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0;
            if (periodic || stop) && state.batch < steps_per_epoch {
                save(&engine, &state)?;
            }
            if stop {
                bar.finish_and_clear();
                log.flush()?;
                return Ok(summary(&state, &last, final_recall, started, graphs_done));
            }
        }
        bar.finish_and_clear();
        let rec = engine.evaluate(&val_split)?;
        log.eval(state.step, epoch, &rec)?;
        final_recall = rec;
        state.best_rsum = state.best_rsum.max(rec.rsum);
        state.last_recall = Some(rec);
        state.epoch += 1;
        state.batch = 0;
        save(&engine, &state)?;
        super::metrics::plot_run(out)?;
        if !opts.quiet {
            eprintln!(
                "epoch {:>3}: loss {:.4}  t2i R@1 {:5.1}  i2t R@1 {:5.1}  rsum {:6.1}  r {}  spikes {}  ({:.1}s)",
                epoch + 1,
                last.loss,
                rec.t2i_r1,
                rec.i2t_r1,
                rec.rsum,
                last.r.map_or("-".into(), |r| format!("{r:.3}")),
                last.spike_rates.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join("/"),
                epoch_start.elapsed().as_secs_f64()
            );
        }
    }
    log.flush()?;
    Ok(summary(&state, &last, final_recall, started, graphs_done))
}

fn summary(
    state: &TrainState,
    last: &StepStats,
    final_recall: Recall,
    started: Instant,
    graphs: usize,
) -> TrainSummary {
    let seconds = started.elapsed().as_secs_f64();
    TrainSummary {
        steps: state.step,
        seconds,
        graphs_per_second: graphs as f64 / seconds.max(1e-9),
        final_recall,
        best_rsum: state.best_rsum,
        final_r: last.r,
        final_spike_rates: last.spike_rates.clone(),
    }
}

/// Loads a run's checkpoint into a fresh engine (for `eval` and `show`).
pub fn load_engine<B: Backend>(backend: B, run: &Path) -> Result<Engine<B>> {
    let ck = Checkpoint::load_latest(run)?.ok_or_else(|| {
        Error::invalid("checkpoint", format!("no checkpoint in {}", run.display()))
    })?;
    let mut engine = Engine::new(
        backend,
        ck.config.clone(),
        ck.shape.clone(),
        ck.vocab.clone(),
    )?;
    engine.load_state(&ck.tensors)?;
    Ok(engine)
}

/// Retrieval of a trained run on one split of a dataset root.
pub fn evaluate_run<B: Backend>(
    backend: B,
    run: &Path,
    data: &Path,
    split: &str,
    save_embeddings: Option<&Path>,
) -> Result<Recall> {
    let mut engine = load_engine(backend, run)?;
    let ds = open_split(data, &engine.cfg, split)?;
    let vocab = engine.vocab.clone();
    let cfg = engine.cfg.clone();
    let prepared = prepare(&ds, &cfg.prepare_options(), &vocab, split)?;
    let (img, txt, owner) = engine.embed(&prepared)?;
    let d = cfg.model.dim;
    let r = recall(&img, &txt, d, &owner);
    if let Some(path) = save_embeddings {
        // For error analysis outside gshn: rows follow the split's image order and, per image,
        // its caption order; image_id maps rows back to the dataset.
        let ids = prepared
            .image_ids
            .iter()
            .map(|&i| i32::try_from(i))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| Error::invalid("save_embeddings", "an image id exceeds i32"))?;
        let owner_i32: Vec<i32> = owner.iter().map(|&i| i as i32).collect();
        let tensors = vec![
            ("image".to_string(), Tensor::new([img.len() / d, d], img)?),
            ("text".to_string(), Tensor::new([txt.len() / d, d], txt)?),
            (
                "caption_image".to_string(),
                Tensor::new([owner.len()], owner_i32)?,
            ),
            ("image_id".to_string(), Tensor::new([ids.len()], ids)?),
        ];
        crate::tensor::io::save_safetensors(path, &tensors, None)?;
    }
    Ok(r)
}
