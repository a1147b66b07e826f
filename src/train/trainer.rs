//! The training loop: AdamW with warm-up + cosine, clipping, the STL/node-CL → ITC schedule,
//! per-epoch retrieval on the val split, atomic checkpoints with exact resume, a metrics log
//! and plots.

use super::batches::LossWeights;
use super::checkpoint::{Checkpoint, TrainState};
use super::config::{open_split, RunConfig, TrainConfig};
use super::engine::{Engine, StepStats};
use super::retrieval::Recall;
use super::schedule::WarmupCosine;
use crate::backend::Backend;
use crate::data::{prepare, DataShape, Encoded, PreparedSplit, SceneGraph, Vocab};
use crate::error::{Error, Result};
use crate::graph::profile::Profile;
use crate::util::progress::progress;
use crate::util::rng::{mix64, SplitMix64};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `gshn train`.
pub struct TrainOptions {
    /// Dataset root holding the splits.
    pub data: PathBuf,
    /// Run folder: checkpoint, `metrics.jsonl`, plots.
    pub out: PathBuf,
    /// Continue the run in `out` (it must hold a checkpoint) with the checkpoint's config.
    pub resume: bool,
    /// Start over in an `out` that already holds a run (otherwise that is an error, so a
    /// finished run is never replaced by accident).
    pub overwrite: bool,
    /// Train to this many epochs in total, also when resuming (a finished run is extended;
    /// its learning-rate schedule then follows the new length).
    pub epochs: Option<usize>,
    /// No progress bar and no per-epoch log lines.
    pub quiet: bool,
    /// Stop (with a checkpoint) once this many optimizer steps are done in total; `--resume`
    /// continues from there to exactly the numbers of an uninterrupted run.
    pub stop_after_steps: Option<usize>,
    /// Time every op of the training step; the summary then holds the profile by model
    /// part and op kind, also written to `out/profile.json`.
    pub profile: bool,
    /// With `resume`: a config the user asked for (`--resume --config`). It may differ from
    /// the checkpoint's only in [`RunConfig::RESUMABLE_KEYS`], which it then sets; any other
    /// difference is an error naming each key.
    pub resume_config: Option<RunConfig>,
    /// Replay the training step as a CUDA graph: recorded on the first step, then one launch
    /// per step (see `Executor::replay_runs`; the same numbers, bit for bit). Only a GPU
    /// records; `--profile` runs op by op.
    pub cuda_graph: bool,
}

/// Summary of a finished run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Optimizer steps done in total (resumed ones included).
    pub steps: usize,
    /// Wall time of this invocation's training loop.
    pub seconds: f64,
    /// Training throughput of this invocation (images per second).
    pub graphs_per_second: f64,
    /// Validation recalls after the last epoch.
    pub final_recall: Recall,
    /// Best validation rsum of the run.
    pub best_rsum: f64,
    /// Fusion ratio r at the last step (mean over channels), when the variant fuses.
    pub final_r: Option<f64>,
    /// Mean firing rate per SNN layer at the last step.
    pub final_spike_rates: Vec<f64>,
    /// Where the training step's time went (`TrainOptions::profile`).
    pub profile: Option<Profile>,
    /// Device operations the last step queued (CUDA: kernel launches, cuBLAS calls, copies).
    pub device_ops_per_step: Option<u64>,
    /// Whether the steps replayed a CUDA graph (`TrainOptions::cuda_graph` on a GPU).
    pub replayed: bool,
}

/// Holds `dir/.lock` exclusively for as long as it lives: one trainer per run folder. The OS
/// releases the lock when the process ends, however it ends, so a killed run never blocks.
pub fn lock_run_folder(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(".lock");
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    // A link or a device there is not ours to truncate.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(Error::invalid(
            "train",
            format!("{} is not a regular file: remove it", path.display()),
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            f.read_to_string(&mut holder).ok();
            return Err(Error::invalid(
                "train",
                format!(
                    "{} is in use by another gshn train ({})",
                    dir.display(),
                    holder.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // Name the holder for whoever finds the folder locked.
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "pid {}", std::process::id()).map_err(io)?;
    Ok(f)
}

/// The log target of the per-epoch lines (the CLI prints them without a prefix).
pub const PROGRESS: &str = "gshn::progress";

/// Trains (or resumes) a run in `opts.out` and returns its summary.
pub fn train<B: Backend>(backend: B, cfg: RunConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    let _lock = lock_run_folder(out)?;
    let resumed = if opts.resume {
        let ck = Checkpoint::load_latest(out)?;
        Some(ck.ok_or_else(|| {
            Error::invalid(
                "resume",
                format!(
                    "{} holds no checkpoint to resume (train without --resume to start it)",
                    out.display()
                ),
            )
        })?)
    } else {
        if !opts.overwrite && Checkpoint::exists(out) {
            return Err(Error::invalid(
                "train",
                format!(
                    "{} already holds a run: --resume continues it, --overwrite starts it over",
                    out.display()
                ),
            ));
        }
        None
    };
    let mut cfg = match (&resumed, &opts.resume_config) {
        (Some(ck), Some(asked)) => ck.config.resumed_with(asked)?,
        (Some(ck), None) => ck.config.clone(),
        (None, _) => cfg,
    };
    if let Some(e) = opts.epochs {
        cfg.train.epochs = e;
    }
    cfg.train
        .validate()
        .map_err(|m| Error::invalid("config", m))?;
    let RunData {
        vocab,
        train_split,
        val_split,
        shape,
    } = RunData::load(&opts.data, &cfg, resumed.as_ref())?;
    let mut engine = Engine::new(backend, cfg.clone(), shape.clone(), vocab.clone())?;
    let t = &cfg.train;
    let steps_per_epoch = train_split.len() / t.batch_size;
    let sched = schedule(t, steps_per_epoch);

    let mut state = TrainState::default();
    match &resumed {
        Some(ck) => {
            engine.load_state(&ck.tensors)?;
            state = ck.state.clone();
            if let (Some(s), Some(saved)) = (&mut engine.scaler, state.loss_scale) {
                *s = saved;
            }
            // Exact resume needs the same steps per epoch; a state that does not fit them
            // (edited, or another dataset or batch size) would skip or repeat batches.
            if state.batch >= steps_per_epoch.max(1)
                || state.step != state.epoch * steps_per_epoch + state.batch
            {
                return Err(crate::Error::invalid(
                    "resume",
                    format!(
                        "the checkpoint's state (epoch {}, batch {}, step {}) does not fit this \
                         run's {steps_per_epoch} steps per epoch",
                        state.epoch, state.batch, state.step
                    ),
                ));
            }
            if state.epoch > t.epochs {
                return Err(crate::Error::invalid(
                    "resume",
                    format!(
                        "the run has done {} epochs; it cannot be resumed to {} (give at least {})",
                        state.epoch, t.epochs, state.epoch
                    ),
                ));
            }
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
            state: TrainState {
                loss_scale: engine.scaler,
                ..state.clone()
            },
            tensors: engine.state_tensors()?,
        }
        .save(out)
    };

    if !opts.quiet {
        log::info!(
            "{} train / {} val images, {} steps/epoch × {} epochs, model {:?}, {} parameters, plan peak {:.1} MiB",
            train_split.len(),
            val_split.len(),
            steps_per_epoch,
            t.epochs,
            cfg.model.variant,
            engine.params.iter().map(|p| p.shape.numel()).sum::<usize>(),
            engine.train.plan().memory.peak_intermediate_bytes as f64 / (1 << 20) as f64
        );
    }
    engine.train.profile(opts.profile);
    engine.train.replay_runs(opts.cuda_graph);
    let mut step_seconds = 0.0;
    let started = Instant::now();
    let mut last = StepStats::default();
    let mut final_recall = state.last_recall.unwrap_or_default();
    let mut graphs_done = 0usize;
    'epochs: while state.epoch < t.epochs {
        let epoch = state.epoch;
        let order = epoch_order(t.seed, epoch, train_split.len());
        let bar = if opts.quiet {
            ProgressBar::hidden()
        } else {
            progress(
                steps_per_epoch as u64,
                &format!("epoch {}/{}", epoch + 1, t.epochs),
            )
        };
        bar.set_position(state.batch as u64);
        let w = loss_weights(t, epoch, engine.model_outputs.stl.is_some());
        let epoch_start = Instant::now();
        while state.batch < steps_per_epoch {
            let (batch, mut rng) =
                StepBatch::at_step(&train_split, t, &order, state.batch, state.step);
            let lr = sched.at(state.step);
            let step_started = Instant::now();
            engine.step(
                &batch.graphs,
                &batch.captions,
                &batch.negatives,
                w,
                lr,
                state.step,
                &mut rng,
            )?;
            step_seconds += step_started.elapsed().as_secs_f64();
            let ran = state.step;
            state.step += 1;
            state.batch += 1;
            graphs_done += t.batch_size;
            bar.inc(1);
            let stop = opts.stop_after_steps.is_some_and(|n| state.step >= n);
            let log_now = state.step % t.log_every.max(1) == 0 || state.batch == steps_per_epoch;
            let periodic = t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0;
            // The loss is read back (a wait for the device) only when it is logged, before a
            // checkpoint, and on this invocation's first step (weights from a checkpoint).
            if log_now || stop || periodic || graphs_done == t.batch_size {
                engine.check_finite(ran)?;
            }
            if log_now || stop {
                last = engine.stats()?;
            }
            if log_now {
                let gps = graphs_done as f64 / started.elapsed().as_secs_f64();
                log.step(state.step, epoch, lr, &last, gps)?;
                bar.set_message(format!("loss {:.3}", last.loss));
            }
            if (periodic || stop) && state.batch < steps_per_epoch {
                save(&engine, &state)?;
                if stop {
                    bar.finish_and_clear();
                    break 'epochs;
                }
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
        // A plot that cannot be written costs nothing of the run: warn and go on.
        if let Err(e) = super::metrics::plot_run(out) {
            log::warn!("plots not updated: {e}");
        }
        if !opts.quiet {
            log::info!(
                target: PROGRESS,
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
        // A stop on an epoch's last step ends after its evaluation and checkpoint.
        if opts.stop_after_steps.is_some_and(|n| state.step >= n) {
            break;
        }
    }
    log.flush()?;
    let profile = finish_profile(&engine, step_seconds, out)?;
    Ok(TrainSummary {
        replayed: engine.train.replaying(),
        ..summary(&state, &last, final_recall, started, graphs_done, profile)
    })
}

/// The profile of this invocation's steps (when on), also written to `out/profile.json`.
fn finish_profile<B: Backend>(
    engine: &Engine<B>,
    step_seconds: f64,
    out: &Path,
) -> Result<Option<Profile>> {
    let Some(mut p) = engine.train.profile_report() else {
        return Ok(None);
    };
    p.step_ms = Some(1e3 * step_seconds / p.runs.max(1) as f64);
    let json = serde_json::to_string_pretty(&p).expect("a profile serialises");
    crate::tensor::io::write_atomic(&out.join("profile.json"), json.as_bytes())?;
    Ok(Some(p))
}

/// The data of a run: its vocabulary, both splits prepared, and the shape its model is built
/// for (a resumed run keeps its checkpoint's vocabulary and shape).
pub struct RunData {
    /// The caption vocabulary.
    pub vocab: Vocab,
    /// The training split, prepared.
    pub train_split: PreparedSplit,
    /// The validation split, prepared.
    pub val_split: PreparedSplit,
    /// The static sizes the model is built for.
    pub shape: DataShape,
}

impl RunData {
    /// Opens and prepares both splits of `cfg` under `root`.
    pub fn load(root: &Path, cfg: &RunConfig, resumed: Option<&Checkpoint>) -> Result<RunData> {
        let train_ds = open_split(root, cfg, &cfg.data.train_split)?;
        let val_ds = open_split(root, cfg, &cfg.data.val_split)?;
        let vocab = match resumed {
            Some(ck) => ck.vocab.clone(),
            None => Vocab::build(train_ds.all_captions(), cfg.data.vocab_min_count, None),
        };
        let train_split = prepare(&train_ds, &cfg.prepare_options(), &vocab, "train")?;
        let val_split = prepare(&val_ds, &cfg.prepare_options(), &vocab, "val")?;
        let shape = match resumed {
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
        Ok(RunData {
            vocab,
            train_split,
            val_split,
            shape,
        })
    }
}

/// The learning-rate schedule of a run with `steps_per_epoch` steps per epoch.
pub fn schedule(t: &TrainConfig, steps_per_epoch: usize) -> WarmupCosine {
    let total = steps_per_epoch * t.epochs;
    WarmupCosine {
        lr: t.lr,
        warmup_steps: t.warmup_steps.min(total / 2),
        total_steps: total,
        min_ratio: t.min_lr_ratio,
    }
}

/// The order in which epoch `epoch` visits the `n` training images.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(mix64(seed ^ 0x5eed) ^ epoch as u64).shuffle(&mut order);
    order
}

/// Loss weights of an epoch: STL + node CL alone while pre-training (only for models with an
/// STL head), then everything.
pub fn loss_weights(t: &TrainConfig, epoch: usize, has_stl: bool) -> LossWeights {
    let pretrain = epoch < t.pretrain_epochs && has_stl;
    LossWeights {
        itc: if pretrain { 0.0 } else { 1.0 },
        stl: t.lambda_stl as f32,
        node: t.lambda_node as f32,
        neg: if pretrain { 0.0 } else { t.lambda_neg as f32 },
        rel: t.relation_weight(epoch) as f32,
    }
}

/// The random stream of optimizer step `step`: every random choice of a step derives from
/// (seed, step), so resuming repeats it.
pub fn step_rng(seed: u64, step: usize) -> SplitMix64 {
    SplitMix64::new(mix64(seed) ^ mix64(step as u64 + 1))
}

/// What one step trains on: the images `idx`, one caption of each drawn from the step's
/// stream, and that caption's hard negative.
pub struct StepBatch<'a> {
    /// The step's scene graphs, one per image.
    pub graphs: Vec<&'a SceneGraph>,
    /// One caption per image.
    pub captions: Vec<&'a Encoded>,
    /// Each caption's hard negative, if it has one.
    pub negatives: Vec<Option<&'a Encoded>>,
}

impl<'a> StepBatch<'a> {
    /// The batch of optimizer step `step`, the `batch`-th of its epoch (`order`: that epoch's
    /// [`epoch_order`]), and the step's random stream, past the caption picks: what
    /// `gshn train` feeds, and `gshn dump-batch` writes.
    pub fn at_step(
        split: &'a PreparedSplit,
        t: &TrainConfig,
        order: &[usize],
        batch: usize,
        step: usize,
    ) -> (StepBatch<'a>, SplitMix64) {
        let idx = &order[batch * t.batch_size..(batch + 1) * t.batch_size];
        let mut rng = step_rng(t.seed, step);
        (Self::pick(split, idx, &mut rng), rng)
    }

    /// Picks images `idx` of `split`, one caption of each drawn from `rng`.
    pub fn pick(split: &'a PreparedSplit, idx: &[usize], rng: &mut SplitMix64) -> StepBatch<'a> {
        let graphs: Vec<&SceneGraph> = idx.iter().map(|&i| &split.graphs[i]).collect();
        let picked: Vec<(usize, usize)> = idx
            .iter()
            .map(|&i| (i, rng.below(split.captions[i].len())))
            .collect();
        let captions: Vec<&Encoded> = picked.iter().map(|&(i, c)| &split.captions[i][c]).collect();
        let negatives: Vec<Option<&Encoded>> =
            picked.iter().map(|&(i, c)| split.negative(i, c)).collect();
        StepBatch {
            graphs,
            captions,
            negatives,
        }
    }
}

fn summary(
    state: &TrainState,
    last: &StepStats,
    final_recall: Recall,
    started: Instant,
    graphs: usize,
    profile: Option<Profile>,
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
        profile,
        device_ops_per_step: last.device_ops,
        replayed: false,
    }
}
