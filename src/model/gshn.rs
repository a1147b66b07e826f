//! The GSHN as one graph of ops (DESIGN §4): segment graph → GAT branch (F_GAT) and SNN
//! branch (E_SNN) → fusion V' = r·E_SNN + F_GAT → image embedding; captions → text
//! encoder → text embedding; losses ITC + STL + node CL (+ an optional hard-negative margin),
//! weighted by fed scalars so that the pre-training → alignment schedule needs no second graph.

use super::branches::{fuse, gat_branch, node_features, snn_branch};
use super::config::{ModelConfig, TextSource, Variant};
use super::losses::{
    add_weighted, hard_negative_loss, infonce_attrs, relation_term, stl_and_node_cl,
};
use super::text::text_encoder;
use crate::data::graph::{EDGE_FEAT_DIM, GEOMETRY_DIM};
use crate::data::{BatchCapacity, DataShape};
use crate::error::Result;
use crate::graph::params::{Init, ParamSet, ParamSpec};
use crate::graph::{Graph, ValueId};
use crate::tensor::DType;

/// Static sizes of one batch (padded), fixed for the life of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Images (and captions) per batch.
    pub batch: usize,
    /// Node slots of the batch graph (all images' nodes + padding).
    pub nodes: usize,
    /// Edge slots (padding edges are self-loops of a padding node).
    pub edges: usize,
    /// Feature-map pixels of all images of the batch.
    pub pixels: usize,
    /// Channels of the pixel feature map.
    pub pixel_channels: usize,
    /// Its x channel (y is the next), if it has position channels.
    pub position_channel: Option<usize>,
    /// Node categories (a category index is in 0..categories; the global node has its own).
    pub categories: usize,
    /// Edge feature width.
    pub edge_features: usize,
    /// Node geometry width.
    pub geometry: usize,
    /// Nodes sampled per batch for node-level contrastive learning.
    pub node_samples: usize,
    /// Text vocabulary size.
    pub vocab: usize,
    /// Each batch row also carries a hard-negative caption (see `ModelInputs::negatives`).
    pub negatives: bool,
    /// Build the relation loss (`train.lambda_rel > 0`; needs ≥ 2 node samples per image).
    pub relations: bool,
    /// Width of precomputed caption features (`model.text.source = "features"`), else 0.
    pub text_features: usize,
}

impl Capacity {
    /// The model's sizes for batches of capacity `data` of data of shape `shape` (the only place
    /// they are derived; `negatives` and `relations` start off).
    pub fn of_batch(
        data: &BatchCapacity,
        shape: &DataShape,
        vocab: usize,
        node_samples_per_graph: usize,
    ) -> Capacity {
        Capacity {
            batch: data.batch_size,
            nodes: data.node_cap(),
            edges: data.edge_cap(),
            pixels: data.pixel_cap(),
            pixel_channels: shape.pixel_channels,
            position_channel: shape.position_channel,
            categories: shape.categories,
            edge_features: EDGE_FEAT_DIM,
            geometry: GEOMETRY_DIM,
            node_samples: data.batch_size * node_samples_per_graph,
            vocab,
            negatives: false,
            relations: false,
            text_features: shape.text_features,
        }
    }
}

/// The graph inputs fed for every batch.
#[derive(Clone, Debug)]
pub struct ModelInputs {
    /// [pixels, pixel_channels] f32: the feature map of every image, pixel-major.
    pub pixel_feats: ValueId,
    /// \[pixels\] i32: node of each feature pixel (−1 = void).
    pub pixel_node: ValueId,
    /// [nodes, geometry] f32
    pub geometry: ValueId,
    /// \[nodes\] i32 category index
    pub category: ValueId,
    /// \[nodes\] i32 image of each node (−1 = padding)
    pub node_graph: ValueId,
    /// \[nodes\] f32: 1/(T·real nodes) on real nodes, 0 on padding (spike-rate weights)
    pub node_weight: ValueId,
    /// CSR by destination and its CSC transpose.
    pub graph: crate::ops::gat::GraphInputs,
    /// [edges, edge_features] f32
    pub edge_feats: ValueId,
    /// [edges, heads] f32: 1/in-degree (uniform attention, SNN-only ablation)
    pub uniform_alpha: Option<ValueId>,
    /// [batch · max_len] i32 token ids
    pub tokens: ValueId,
    /// [batch, max_len] f32 1 = real token
    pub token_keep: ValueId,
    /// [batch, text_features] f32 precomputed caption features (text source "features")
    pub text_features: Option<ValueId>,
    /// \[node_samples\] i32 real nodes for node CL
    pub node_sample: ValueId,
    /// Hard-negative captions, when `Capacity::negatives`.
    pub negatives: Option<NegativeInputs>,
    /// [] loss weights
    pub w_itc: ValueId,
    /// `[]` weight of the STL loss.
    pub w_stl: ValueId,
    /// `[]` weight of the node CL loss.
    pub w_node: ValueId,
    /// `[]` weight of the relation loss.
    pub w_rel: ValueId,
}

/// One hard-negative caption per batch row: a caption that is false for the row's image but
/// close to its true caption (same words, objects exchanged).
#[derive(Clone, Debug)]
pub struct NegativeInputs {
    /// [batch · max_len] i32 token ids
    pub tokens: ValueId,
    /// [batch, max_len] f32 1 = real token
    pub token_keep: ValueId,
    /// \[batch\] f32: 1/(rows with a negative) on such rows, 0 elsewhere
    pub row_weight: ValueId,
    /// [] loss weight
    pub weight: ValueId,
}

/// Values worth reading after a step.
#[derive(Clone, Debug)]
pub struct ModelOutputs {
    /// `[]` the weighted total loss.
    pub loss: ValueId,
    /// `[]` image–text InfoNCE (ITC).
    pub itc: ValueId,
    /// `[]` Spiked Text Learning loss (full variant only).
    pub stl: Option<ValueId>,
    /// `[]` node-level contrastive loss (full variant only).
    pub node_cl: Option<ValueId>,
    /// Hard-negative margin loss.
    pub neg: Option<ValueId>,
    /// Relation loss (see `relation_loss`).
    pub rel: Option<ValueId>,
    /// [batch, dim] normalised image embeddings
    pub z_img: ValueId,
    /// [batch, dim] normalised text embeddings
    pub z_txt: ValueId,
    /// Per SNN layer: mean firing rate over real nodes, time and channels ([]).
    pub spike_rates: Vec<ValueId>,
    /// Per GAT layer: attention [edges, heads] (for plots and `gshn show`).
    pub attention: Vec<ValueId>,
    /// \[nodes\]: each node's firing rate in the last SNN layer (mean over time and channels).
    pub node_spike_rate: Option<ValueId>,
    /// The fusion ratio r, `[]` or `[dim]` (variants that fuse only).
    pub r: Option<ValueId>,
    /// `[]` learned InfoNCE temperature parameter, `s = min(exp(logit_scale), 100)`.
    pub logit_scale: ValueId,
}

/// The built model: its forward graph with the input and output handles and its parameters.
pub struct Gshn {
    /// The forward graph (no backward, no optimizer).
    pub graph: Graph,
    /// Handles of the per-batch inputs to feed.
    pub inputs: ModelInputs,
    /// Handles of the values worth reading after a step.
    pub outputs: ModelOutputs,
    /// The learned parameters, in creation order.
    pub params: Vec<ParamSpec>,
    /// The config it was built from.
    pub config: ModelConfig,
    /// The static batch sizes it was built for.
    pub capacity: Capacity,
}

pub(super) const LN_EPS: f64 = 1e-5;
pub(super) const NORM_EPS: f64 = 1e-12;

impl Gshn {
    /// Builds the forward graph (no backward, no optimizer: see `train`).
    pub fn build(config: &ModelConfig, cap: Capacity) -> Result<Gshn> {
        Self::build_in(config, cap, DType::F32)
    }

    /// `build` with every float value in `float` (f64 for gradient checks). The order of the
    /// steps is the order of parameter and op creation, which fixes parameter names, their
    /// initial values and every recorded number: keep it.
    pub fn build_in(config: &ModelConfig, cap: Capacity, float: DType) -> Result<Gshn> {
        Self::build_as(config, cap, float, float)
    }

    /// Mixed precision (`train.precision = "bf16" | "f16"`): the parameters are f32 master
    /// weights, cast to `activations` where used; activations and their gradients are in
    /// `activations`; the fused ops' statistics, the losses and the parameter gradients f32.
    pub fn build_mixed(config: &ModelConfig, cap: Capacity, activations: DType) -> Result<Gshn> {
        Self::build_as(config, cap, DType::F32, activations)
    }

    /// The graph with parameters in `params` and every other float value in `float`, but
    /// the losses: f32 when `float` is a half type.
    fn build_as(config: &ModelConfig, cap: Capacity, params: DType, float: DType) -> Result<Gshn> {
        config.validate()?;
        let loss_type = if float.is_half() { DType::F32 } else { float };
        let mut graph = Graph::new();
        let inputs = ModelInputs::new(&mut graph, config, cap, float, loss_type);
        let mut ps = ParamSet::mixed(&mut graph, params, float);
        let inp = &inputs;
        // Each part names its nodes for profiles (`gshn train --profile`).
        ps.graph.set_part("node inputs");
        let nodes = node_features(&mut ps, config, cap, inp)?;
        let logit_scale = ps.param("logit_scale", [], Init::Constant(config.logit_scale_init));
        ps.graph.set_part("gat");
        let gat = gat_branch(&mut ps, config, cap, inp, &nodes)?;
        ps.graph.set_part("snn");
        let snn = snn_branch(&mut ps, config, cap, inp, &nodes, &gat.attention, float)?;
        let e_snn = snn.as_ref().map(|s| s.e_snn);
        ps.graph.set_part("fusion");
        let (fused, r) = fuse(&mut ps, config, &nodes, e_snn, gat.f_gat)?;
        ps.graph.set_part("image head");
        let z_img = image_embedding(&mut ps, config, cap, inp, fused)?;
        ps.graph.set_part("text");
        let z_txt = text_embedding(&mut ps, config, cap, inp)?;
        // Losses, each weighted by its fed scalar. Their creation order fixes the order in
        // which gradients sum: keep it.
        ps.graph.set_part("losses");
        let rel = match cap.relations {
            true => {
                let l = relation_term(&mut ps, cap, inp, &nodes, z_img, z_txt)?;
                Some(ps.graph.to_dtype(l, loss_type)?)
            }
            false => None,
        };
        let itc = ps
            .graph
            .infonce(z_img, z_txt, logit_scale, infonce_attrs(config, true))?
            .loss;
        let mut loss = ps.graph.mul(itc, inp.w_itc)?;
        if let Some(l) = rel {
            loss = add_weighted(ps.graph, loss, l, inp.w_rel)?;
        }
        let mut stl = None;
        let mut node_cl = None;
        if let (Variant::Full, Some(es), Some(fg)) = (config.variant, e_snn, gat.f_gat) {
            let (l_stl, l_node) = stl_and_node_cl(&mut ps, config, cap, inp, z_txt, es, fg)?;
            let g = &mut *ps.graph;
            let a = g.mul(l_stl, inp.w_stl)?;
            let b = g.mul(l_node, inp.w_node)?;
            let sum = g.add(loss, a)?;
            loss = g.add(sum, b)?;
            stl = Some(l_stl);
            node_cl = Some(l_node);
        }
        let mut neg = None;
        if let Some(ni) = &inp.negatives {
            let l_neg = hard_negative_loss(&mut ps, config, cap, ni, z_img, z_txt, float)?;
            let l_neg = ps.graph.to_dtype(l_neg, loss_type)?;
            loss = add_weighted(ps.graph, loss, l_neg, ni.weight)?;
            neg = Some(l_neg);
        }
        // what reads r and the logit scale after a step reads the parameters themselves
        let (r, logit_scale) = (r.map(|r| ps.master(r)), ps.master(logit_scale));
        let params = ps.finish()?;
        let (spike_rates, node_spike_rate) = match snn {
            Some(s) => (s.spike_rates, s.node_spike_rate),
            None => (Vec::new(), None),
        };
        Ok(Gshn {
            graph,
            inputs,
            outputs: ModelOutputs {
                loss,
                itc,
                stl,
                node_cl,
                neg,
                rel,
                z_img,
                z_txt,
                spike_rates,
                attention: gat.attention,
                node_spike_rate,
                r,
                logit_scale,
            },
            params,
            config: config.clone(),
            capacity: cap,
        })
    }
}

impl ModelInputs {
    /// Declares every per-batch input (`float`: the dtype of the float ones, but the loss
    /// weights: `loss`).
    fn new(
        g: &mut Graph,
        config: &ModelConfig,
        cap: Capacity,
        float: DType,
        loss: DType,
    ) -> ModelInputs {
        let (n, e, heads) = (cap.nodes, cap.edges, config.heads);
        ModelInputs {
            pixel_feats: g.input("pixel_feats", [cap.pixels, cap.pixel_channels], float),
            pixel_node: g.input("pixel_node", [cap.pixels], DType::I32),
            geometry: g.input("geometry", [n, cap.geometry], float),
            category: g.input("category", [n], DType::I32),
            node_graph: g.input("node_graph", [n], DType::I32),
            node_weight: g.input("node_weight", [n], float),
            graph: crate::ops::gat::GraphInputs::new(g, "", n, e),
            edge_feats: g.input("edge_feats", [e, cap.edge_features], float),
            uniform_alpha: (config.variant == Variant::SnnOnly)
                .then(|| g.input("uniform_alpha", [e, heads], float)),
            tokens: g.input("tokens", [cap.batch * config.text.max_len], DType::I32),
            token_keep: g.input("token_keep", [cap.batch, config.text.max_len], float),
            text_features: (config.text.source == TextSource::Features)
                .then(|| g.input("text_features", [cap.batch, cap.text_features], float)),
            node_sample: g.input("node_sample", [cap.node_samples], DType::I32),
            w_itc: g.input("w_itc", [], loss),
            w_stl: g.input("w_stl", [], loss),
            w_node: g.input("w_node", [], loss),
            w_rel: g.input("w_rel", [], loss),
            negatives: cap.negatives.then(|| NegativeInputs {
                tokens: g.input("neg_tokens", [cap.batch * config.text.max_len], DType::I32),
                token_keep: g.input("neg_token_keep", [cap.batch, config.text.max_len], float),
                row_weight: g.input("neg_row_weight", [cap.batch], float),
                weight: g.input("w_neg", [], loss),
            }),
        }
    }
}

/// Image embedding: mean of the fused node features per image → projection → normalise.
fn image_embedding(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
    fused: ValueId,
) -> Result<ValueId> {
    let d = config.dim;
    let (w_img, b_img) = ps.linear("image.proj", d, d, true);
    let g = &mut *ps.graph;
    let img = g.segment_mean(fused, inp.node_graph, cap.batch)?.mean;
    let img = g.linear(img, w_img, b_img)?;
    g.l2_normalize(img, NORM_EPS)
}

/// Text embedding: the caption encoder, or precomputed caption features projected.
fn text_embedding(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
) -> Result<ValueId> {
    let d = config.dim;
    match inp.text_features {
        // an external encoder's features → learned projection → normalise
        Some(f) => {
            let (w, b) = ps.linear("text.proj", cap.text_features, d, true);
            let z = ps.graph.linear(f, w, b)?;
            ps.graph.l2_normalize(z, NORM_EPS)
        }
        None => text_encoder(ps, config, cap, inp.tokens, inp.token_keep),
    }
}
