//! Model hyper-parameters (the `[model]` table of a run's TOML config). Every field has a
//! documented default, so an empty table is a valid config.

use crate::ops::LifConfig;
use crate::ops::Precision;
use serde::{Deserialize, Serialize};

/// Which encoder produces the image embedding (ablations of DESIGN §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// GAT + SNN fused as V' = r·E_SNN + F_GAT.
    #[default]
    Full,
    /// V' = F_GAT.
    GatOnly,
    /// V' = E_SNN, with uniform attention (1/in-degree) in place of the GAT's.
    SnnOnly,
    /// No graph: an MLP on the mean of the node inputs.
    MeanPoolMlp,
}

/// What the SNN branch reads out over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Readout {
    /// mean_t of the spikes (firing rate), DESIGN §4.3.
    #[default]
    Rate,
    /// mean_t of the membrane potential after reset.
    Membrane,
}

/// Shape of the fusion ratio r.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// One ratio r shared by every channel (default).
    #[default]
    Scalar,
    /// One ratio per channel, `[dim]`.
    Channel,
}

/// Where caption embeddings come from (DESIGN §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    /// The built-in transformer over word tokens.
    #[default]
    Encoder,
    /// Precomputed features of an external encoder (`text_features.safetensors` per split),
    /// followed by a learned projection.
    Features,
}

/// Caption encoder settings (the `[model.text]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Where caption embeddings come from (default: the built-in encoder).
    pub source: TextSource,
    /// Pre-LN transformer blocks.
    pub layers: usize,
    /// Attention heads per block (must divide `model.dim`; default 4).
    pub heads: usize,
    /// Tokens per caption including \[CLS\]; longer captions are truncated.
    pub max_len: usize,
    /// MLP hidden width = mlp_ratio · dim.
    pub mlp_ratio: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            source: TextSource::Encoder,
            layers: 2,
            heads: 4,
            max_len: 24,
            mlp_ratio: 2,
        }
    }
}

/// Model hyper-parameters (the `[model]` table of a run config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Which encoder builds the image embedding (default [`Variant::Full`]).
    pub variant: Variant,
    /// Width of node features, text features and embeddings.
    pub dim: usize,
    /// Width of the category embedding in the node input.
    pub category_dim: usize,
    /// GAT layers of the GAT branch (default 2).
    pub gat_layers: usize,
    /// GAT attention heads (must divide `dim`; default 4).
    pub heads: usize,
    /// Spiking layers of the SNN branch (default 2).
    pub snn_layers: usize,
    /// Time steps T of the direct encoding.
    pub time_steps: usize,
    /// LIF neuron parameters of the SNN branch.
    pub lif: LifConfig,
    /// What the SNN branch reads out over time (default firing rate).
    pub readout: Readout,
    /// Shape of the fusion ratio r (default one scalar).
    pub fusion: Fusion,
    /// Initial fusion ratio r.
    pub r_init: f64,
    /// Initial InfoNCE logit scale (ln(1/0.07), as CLIP).
    pub logit_scale_init: f64,
    /// Operand precision of every InfoNCE loss's products: `f32` (exact, the default),
    /// `tf32` or `bf16` (tensor-core operands, f32 accumulation and log-sum-exp).
    pub infonce_precision: Precision,
    /// Stop the SNN branch's gradient at the GAT attention it aggregates with (the GAT then
    /// learns its attention from its own path only).
    pub detach_attention: bool,
    /// Add each node's own previous-layer spikes through a separate weight to its SNN input
    /// current (a root weight, as PyG's GraphConv): `Agg_α(S) W + S U + b`.
    pub snn_root_weight: bool,
    /// Cosine margin of the hard-negative loss (`train.lambda_neg`).
    pub negative_margin: f64,
    /// Caption encoder settings.
    pub text: TextConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            variant: Variant::Full,
            dim: 128,
            category_dim: 16,
            gat_layers: 2,
            heads: 4,
            snn_layers: 2,
            time_steps: 4,
            lif: LifConfig::default(),
            readout: Readout::Rate,
            fusion: Fusion::Scalar,
            r_init: 0.5,
            logit_scale_init: (1.0f64 / 0.07).ln(),
            infonce_precision: Precision::F32,
            detach_attention: false,
            snn_root_weight: true,
            negative_margin: 0.2,
            text: TextConfig::default(),
        }
    }
}

impl ModelConfig {
    /// `true` when the variant has a GAT branch (full, GAT-only).
    pub fn has_gat(&self) -> bool {
        matches!(self.variant, Variant::Full | Variant::GatOnly)
    }
    /// `true` when the variant has an SNN branch (full, SNN-only).
    pub fn has_snn(&self) -> bool {
        matches!(self.variant, Variant::Full | Variant::SnnOnly)
    }
    /// Checks the combinations the graph cannot be built from.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |msg: String| Err(crate::Error::invalid("config", msg));
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "model.dim ({}) must be a positive multiple of model.heads ({})",
                self.dim, self.heads
            ));
        }
        if self.text.heads == 0 || !self.dim.is_multiple_of(self.text.heads) {
            return bad(format!(
                "model.dim ({}) must be a multiple of model.text.heads ({})",
                self.dim, self.text.heads
            ));
        }
        if self.time_steps == 0
            || self.snn_layers == 0 && self.has_snn()
            || self.gat_layers == 0 && self.has_gat()
        {
            return bad(
                "time_steps, gat_layers and snn_layers must be ≥ 1 for the branches in use".into(),
            );
        }
        if self.text.max_len < 2 {
            return bad("model.text.max_len must be ≥ 2 ([CLS] and one word)".into());
        }
        // The op's own rules (tau, v_th, v_reset, surrogate alpha), named by their table.
        self.lif.validate("model.lif")?;
        for (key, v) in [
            ("r_init", self.r_init),
            ("logit_scale_init", self.logit_scale_init),
            ("negative_margin", self.negative_margin),
        ] {
            if !v.is_finite() {
                return bad(format!("model.{key} must be finite, got {v}"));
            }
        }
        Ok(())
    }
}
