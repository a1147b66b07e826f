//! Checkpoints: one safetensors file per run holding parameters, optimizer state, the
//! step counters, the config, the vocabulary and the data shape — written atomically, so a
//! crash never leaves a torn checkpoint, and enough to resume to bit-identical numbers.

use super::config::RunConfig;
use super::retrieval::Recall;
use super::scaler::LossScaler;
use crate::data::DataShape;
use crate::data::Vocab;
use crate::error::{Error, Result};
use crate::tensor::io::{load_safetensors, save_safetensors};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of a run's checkpoint inside its run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Where training stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Best validation rsum so far (percent points, 0–600).
    pub best_rsum: f64,
    /// Recalls of the latest evaluation, if any.
    pub last_recall: Option<Recall>,
    /// The f16 loss scaler (f16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaler>,
}

/// Everything a run needs to resume or be evaluated, saved as one safetensors file.
pub struct Checkpoint {
    /// The run's config (stored as TOML).
    pub config: RunConfig,
    /// The caption vocabulary the model was trained with.
    pub vocab: Vocab,
    /// The static data sizes the model was built for.
    pub shape: DataShape,
    /// Where training stands.
    pub state: TrainState,
    /// Parameters and optimizer state by name.
    pub tensors: Vec<(String, Tensor)>,
}

fn path_of(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

impl Checkpoint {
    /// Writes `dir/checkpoint.safetensors` atomically, the non-tensor parts as JSON/TOML metadata.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), "gshn-checkpoint-1".to_string()),
            (
                "state".to_string(),
                serde_json::to_string(&self.state).expect("state serialises"),
            ),
            ("config".to_string(), self.config.to_toml()),
            (
                "vocab".to_string(),
                serde_json::to_string(self.vocab.tokens()).expect("vocab serialises"),
            ),
            (
                "data_shape".to_string(),
                serde_json::to_string(&self.shape).expect("shape serialises"),
            ),
        ]);
        save_safetensors(&path_of(dir), &self.tensors, Some(meta))
    }

    /// Whether `dir` holds a checkpoint.
    pub fn exists(dir: &Path) -> bool {
        path_of(dir).exists()
    }

    /// The run's checkpoint, or `None` if it has none yet.
    pub fn load_latest(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = path_of(dir);
        if !path.exists() {
            return Ok(None);
        }
        let (tensors, meta) = load_safetensors(&path)?;
        let bad = |msg: String| Error::Format {
            path: path.display().to_string(),
            msg,
        };
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("not a gshn checkpoint (no {k:?} metadata)")))
        };
        if get("format")? != "gshn-checkpoint-1" {
            return Err(bad(format!(
                "unknown checkpoint format {:?}",
                get("format")?
            )));
        }
        let state: TrainState =
            serde_json::from_str(get("state")?).map_err(|e| bad(format!("state: {e}")))?;
        let config = RunConfig::parse(get("config")?).map_err(|e| bad(format!("config: {e}")))?;
        let tokens: Vec<String> =
            serde_json::from_str(get("vocab")?).map_err(|e| bad(format!("vocab: {e}")))?;
        let shape: DataShape = serde_json::from_str(get("data_shape")?)
            .map_err(|e| bad(format!("data shape: {e}")))?;
        shape.validate().map_err(bad)?;
        let vocab = Vocab::from_token_list(tokens);
        if let Some(t) = vocab.duplicate() {
            return Err(bad(format!(
                "vocab has a duplicate token: {t:?} is listed twice"
            )));
        }
        Ok(Some(Checkpoint {
            config,
            vocab,
            shape,
            state,
            tensors,
        }))
    }
}
