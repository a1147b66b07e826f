//! A run's configuration: one TOML file with `[model]`, `[train]` and `[data]` tables.
//! Every field has a default (documented here and in the README), so an empty file is a
//! valid config; unknown keys are errors, so a typo never silently changes nothing.

use crate::data::{Dataset, FeatureConfig, GraphConfig, LoadOptions, PrepareOptions, SplitPaths};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, TextSource};
use crate::tensor::DType;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Training hyper-parameters (the `[train]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split (≥ 1; default 30).
    pub epochs: usize,
    /// Images per step (each with one of its captions, drawn per step).
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Steps of linear learning-rate warm-up before the cosine decay (default 100).
    pub warmup_steps: usize,
    /// The cosine decays to `min_lr_ratio · lr`.
    pub min_lr_ratio: f64,
    /// Decoupled AdamW weight decay (≥ 0; default 0.01).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip_norm: f64,
    /// Seed of every random draw of the run (default 0).
    pub seed: u64,
    /// Epochs of STL + node-CL pre-training before ITC joins (DESIGN §4.4).
    pub pretrain_epochs: usize,
    /// Weight of STL after pre-training (default 0.5).
    pub lambda_stl: f64,
    /// Weight of node CL after pre-training (default 0.1).
    pub lambda_node: f64,
    /// Weight of the hard-negative margin loss: each image must prefer its caption, by
    /// `model.negative_margin` in cosine, over the same words with the two objects exchanged
    /// (`synth::exchange_objects`; captions of other shapes have no negative). 0 = off.
    pub lambda_neg: f64,
    /// Weight of the relation loss (`model::losses::relation_loss`): z_img and z_txt must tell
    /// the centroid offset of pairs of the image's segments from their appearance. 0 = off.
    pub lambda_rel: f64,
    /// Epochs over which the relation loss weight rises linearly from 0 to `lambda_rel` (by
    /// epoch: `lambda_rel · min(1, epoch / rel_warmup_epochs)`); 0 = full weight from the start.
    pub rel_warmup_epochs: usize,
    /// Nodes per image sampled for node-level contrastive learning; every ordered pair of them
    /// is also an example of the relation loss.
    pub node_samples_per_graph: usize,
    /// Also write a checkpoint every this many steps (0: only at the end of each epoch).
    pub checkpoint_every: usize,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Storage type of the step's activations and their gradients (default f32). In bf16
    /// and f16 the parameters and AdamW moments stay f32 master weights, the fused ops'
    /// statistics and the losses f32, every op computes in f32; f16 adds dynamic loss
    /// scaling. Checkpoints are f32 whatever the precision.
    pub precision: StepPrecision,
}

/// `train.precision`: what the training step stores activations in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepPrecision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 activations (f32's range: no loss scaling).
    Bf16,
    /// IEEE half activations, with dynamic loss scaling (their range ends at 65504).
    F16,
}

impl std::str::FromStr for StepPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(StepPrecision::F32),
            "bf16" => Ok(StepPrecision::Bf16),
            "f16" => Ok(StepPrecision::F16),
            _ => Err(format!("precision must be f32, bf16 or f16, got {s:?}")),
        }
    }
}

impl StepPrecision {
    /// The activations' dtype.
    pub fn dtype(self) -> DType {
        match self {
            StepPrecision::F32 => DType::F32,
            StepPrecision::Bf16 => DType::BF16,
            StepPrecision::F16 => DType::F16,
        }
    }
}

impl TrainConfig {
    /// The relation loss weight of an epoch (see `rel_warmup_epochs`).
    pub fn relation_weight(&self, epoch: usize) -> f64 {
        match self.rel_warmup_epochs {
            0 => self.lambda_rel,
            n => self.lambda_rel * (epoch as f64 / n as f64).min(1.0),
        }
    }
}

impl TrainConfig {
    /// The largest batch: InfoNCE's B × B logits are tiled, but every per-batch buffer scales with
    /// it, and 2^16 images per step is far past what contrastive training of this model uses.
    pub const MAX_BATCH_SIZE: usize = 1 << 16;

    /// Checks every value a config may set; the error names the key and the allowed range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let range = |key: &str, v: f64, ok: bool, want: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(format!("train.{key} must be {want}, got {v}"))
            }
        };
        // Above 1 an AdamW step moves every weight by about lr: the run can only diverge.
        range("lr", self.lr, self.lr > 0.0 && self.lr <= 1.0, "in (0, 1]")?;
        range(
            "min_lr_ratio",
            self.min_lr_ratio,
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "in [0, 1]",
        )?;
        range(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "≥ 0",
        )?;
        range("clip_norm", self.clip_norm, self.clip_norm > 0.0, "> 0")?;
        for (key, v) in [
            ("lambda_stl", self.lambda_stl),
            ("lambda_node", self.lambda_node),
            ("lambda_neg", self.lambda_neg),
            ("lambda_rel", self.lambda_rel),
        ] {
            range(key, v, v >= 0.0, "≥ 0")?;
        }
        if !(2..=Self::MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(format!(
                "train.batch_size must be in 2..={} (contrastive learning needs negatives), got {}",
                Self::MAX_BATCH_SIZE,
                self.batch_size
            ));
        }
        if self.epochs == 0 {
            return Err("train.epochs must be ≥ 1".into());
        }
        if self.log_every == 0 {
            return Err("train.log_every must be ≥ 1".into());
        }
        if self.node_samples_per_graph == 0 {
            return Err("train.node_samples_per_graph must be ≥ 1".into());
        }
        if self.lambda_rel > 0.0 && self.node_samples_per_graph < 2 {
            return Err("train.lambda_rel needs train.node_samples_per_graph ≥ 2 (its examples are pairs of segments)".into());
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 64,
            lr: 2e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            weight_decay: 0.01,
            clip_norm: 1.0,
            seed: 0,
            pretrain_epochs: 1,
            lambda_stl: 0.5,
            lambda_node: 0.1,
            lambda_neg: 0.0,
            lambda_rel: 0.0,
            rel_warmup_epochs: 10,
            node_samples_per_graph: 2,
            checkpoint_every: 0,
            log_every: 10,
            precision: StepPrecision::F32,
        }
    }
}

/// Folder names of a dataset root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `root/<split>/{images, panoptic, panoptic.json, captions.json}` (what `gshn synth` writes).
    #[default]
    Gshn,
    /// COCO 2017's own names (`val2017/`, `panoptic_val2017/`, `annotations/…`).
    Coco2017,
}

/// Where the data is and how it is read (the `[data]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// File layout of the dataset root (default the gshn layout).
    pub layout: Layout,
    /// Name of the training split (default "train").
    pub train_split: String,
    /// Name of the validation split (default "val").
    pub val_split: String,
    /// How segments become graph nodes and edges.
    pub graph: GraphConfig,
    /// The built-in feature extractor's grid.
    pub features: FeatureConfig,
    /// How the splits are opened (bad samples, crowd segments, limits).
    pub load: LoadOptions,
    /// Per-split path overrides (images, panoptic, panoptic_json, captions_json, features).
    pub train_paths: crate::data::coco::SplitPathsOverride,
    /// Path overrides of the validation split (see `train_paths`).
    pub val_paths: crate::data::coco::SplitPathsOverride,
    /// Words seen fewer times in the training captions map to \[UNK\].
    pub vocab_min_count: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            layout: Layout::Gshn,
            train_split: "train".into(),
            val_split: "val".into(),
            graph: GraphConfig::default(),
            features: FeatureConfig::default(),
            load: LoadOptions::default(),
            train_paths: Default::default(),
            val_paths: Default::default(),
            vocab_min_count: 1,
        }
    }
}

/// A run's whole configuration: the `[model]`, `[train]` and `[data]` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The `[model]` table.
    pub model: ModelConfig,
    /// The `[train]` table.
    pub train: TrainConfig,
    /// The `[data]` table.
    pub data: DataConfig,
}

impl RunConfig {
    /// Reads and validates a TOML config file (size-bounded); errors name the file.
    pub fn load(path: &Path) -> Result<RunConfig> {
        use crate::util::bounded::{read_bounded, MAX_CONFIG_BYTES};
        let limit = "a config file's fixed limit";
        let bytes = read_bounded(path, MAX_CONFIG_BYTES, limit).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Format {
            path: path.display().to_string(),
            msg: "not UTF-8 text".into(),
        })?;
        Self::parse(&text).map_err(|msg| Error::Format {
            path: path.display().to_string(),
            msg,
        })
    }
    /// Parses and validates a TOML config; the error message names the bad key.
    pub fn parse(text: &str) -> std::result::Result<RunConfig, String> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.model.validate().map_err(|e| e.to_string())?;
        cfg.train.validate()?;
        cfg.data.features.validate()?;
        cfg.data.graph.validate()?;
        if cfg.train.lambda_neg > 0.0 && cfg.model.text.source == TextSource::Features {
            return Err("train.lambda_neg needs the built-in text encoder: hard-negative captions have no precomputed features".into());
        }
        Ok(cfg)
    }
    /// The keys a resumed run may change: they steer how long it runs and what it logs, not
    /// the numbers of a step.
    pub const RESUMABLE_KEYS: [&str; 3] =
        ["train.epochs", "train.log_every", "train.checkpoint_every"];

    /// This (a checkpoint's) config with the resumable keys of `asked`; an error that names every
    /// other key in which they differ, with both values.
    pub fn resumed_with(&self, asked: &RunConfig) -> Result<RunConfig> {
        let (mine, theirs) = (flat_keys(self), flat_keys(asked));
        let differing: Vec<String> = mine
            .iter()
            .filter(|(k, v)| {
                theirs.get(*k) != Some(*v) && !Self::RESUMABLE_KEYS.contains(&k.as_str())
            })
            .map(|(k, v)| {
                let other = theirs
                    .get(k)
                    .map_or("(absent)".to_string(), |o| o.to_string());
                format!("{k} (checkpoint {v}, --config {other})")
            })
            .collect();
        if !differing.is_empty() {
            return Err(Error::invalid(
                "resume",
                format!(
                    "--config differs from the run's checkpoint in keys a resumed run cannot \
                     change: {}; only {} may change",
                    differing.join(", "),
                    Self::RESUMABLE_KEYS.join(", ")
                ),
            ));
        }
        let mut cfg = self.clone();
        cfg.train.epochs = asked.train.epochs;
        cfg.train.log_every = asked.train.log_every;
        cfg.train.checkpoint_every = asked.train.checkpoint_every;
        Ok(cfg)
    }

    /// Whether training feeds hard-negative captions: `lambda_neg > 0` with the built-in text
    /// encoder (negatives exist only as tokens; `parse` rejects them with text features).
    pub fn hard_negatives(&self) -> bool {
        self.train.lambda_neg > 0.0 && self.model.text.source == TextSource::Encoder
    }
    /// How splits are decoded and encoded for this run.
    pub fn prepare_options(&self) -> PrepareOptions {
        PrepareOptions {
            graph: self.data.graph,
            features: self.data.features,
            max_len: self.model.text.max_len,
            text_features: self.model.text.source == TextSource::Features,
            hard_negatives: self.hard_negatives(),
            skip_bad: self.data.load.skip_bad,
        }
    }
    /// The configuration of `gshn demo`: the defaults, sized to finish in minutes on a
    /// 2-core CPU.
    pub fn demo() -> RunConfig {
        let mut c = RunConfig::default();
        c.train.epochs = 30;
        c
    }
    /// The config as TOML (every key, defaults included), as stored in checkpoints.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Every leaf of a config as `table.key` → value (TOML), for comparing two configs key by key.
fn flat_keys(cfg: &RunConfig) -> std::collections::BTreeMap<String, toml::Value> {
    fn walk(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, toml::Value>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(
        "",
        &toml::Value::try_from(cfg).expect("config serialises"),
        &mut out,
    );
    out
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        for (toml_line, key) in [
            ("[train]\nlambda_node = -5.0", "train.lambda_node"),
            ("[train]\nmin_lr_ratio = 2.0", "train.min_lr_ratio"),
            ("[train]\nlr = 1e30", "train.lr"),
            ("[train]\nlr = 0.0", "train.lr"),
            ("[train]\nclip_norm = 0.0", "train.clip_norm"),
            (
                "[train]\nnode_samples_per_graph = 0",
                "train.node_samples_per_graph",
            ),
            ("[train]\nweight_decay = nan", "train.weight_decay"),
            ("[model]\nr_init = nan", "model.r_init"),
            ("[model]\nlogit_scale_init = inf", "model.logit_scale_init"),
            ("[model.lif]\nv_th = nan", "model.lif"),
            ("[model.lif]\ntau = 0.5", "model.lif"),
            ("[train]\nlog_every = 0", "train.log_every"),
            // Sizes that would allocate without bound (issue 23, D8).
            ("[data.features]\nout_h = 100000", "data.features.out_h"),
            ("[data.features]\nout_w = 0", "data.features.out_w"),
            ("[data.graph]\nmax_nodes = 1000000", "data.graph.max_nodes"),
            ("[train]\nbatch_size = 1000000000", "train.batch_size"),
        ] {
            let e = RunConfig::parse(toml_line).unwrap_err();
            assert!(e.contains(key), "{toml_line:?}: {e}");
        }
        assert!(RunConfig::parse("").is_ok());
    }
}
