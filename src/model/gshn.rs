//! The GSHN as one graph of ops (DESIGN §4): segment graph → GAT branch (F_GAT) and SNN
//! branch (E_SNN) → fusion V' = r·E_SNN + F_GAT → image embedding; captions → text
//! encoder → text embedding; losses ITC + STL + node CL (+ an optional hard-negative margin),
//! weighted by fed scalars so that the pre-training → alignment schedule needs no second graph.

use super::config::{Fusion, ModelConfig, Readout, TextSource, Variant};
use super::params::{Init, ParamSet, ParamSpec};
use super::text::text_encoder;
use crate::data::graph::{EDGE_FEAT_DIM, GEOMETRY_DIM};
use crate::data::{BatchCapacity, DataShape};
use crate::error::Result;
use crate::graph::{Graph, ValueId};
use crate::ops::{GatAttrs, InfoNceAttrs};
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
    /// [pixels] i32: node of each feature pixel (−1 = void).
    pub pixel_node: ValueId,
    /// [nodes, geometry] f32
    pub geometry: ValueId,
    /// [nodes] i32 category index
    pub category: ValueId,
    /// [nodes] i32 image of each node (−1 = padding)
    pub node_graph: ValueId,
    /// [nodes] f32: 1/(T·real nodes) on real nodes, 0 on padding (spike-rate weights)
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
    /// [node_samples] i32 real nodes for node CL
    pub node_sample: ValueId,
    /// Hard-negative captions, when `Capacity::negatives`.
    pub negatives: Option<NegativeInputs>,
    /// [] loss weights
    pub w_itc: ValueId,
    pub w_stl: ValueId,
    pub w_node: ValueId,
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
    /// [batch] f32: 1/(rows with a negative) on such rows, 0 elsewhere
    pub row_weight: ValueId,
    /// [] loss weight
    pub weight: ValueId,
}

/// Values worth reading after a step.
#[derive(Clone, Debug)]
pub struct ModelOutputs {
    pub loss: ValueId,
    pub itc: ValueId,
    pub stl: Option<ValueId>,
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
    /// [nodes]: each node's firing rate in the last SNN layer (mean over time and channels).
    pub node_spike_rate: Option<ValueId>,
    pub r: Option<ValueId>,
    pub logit_scale: ValueId,
}

pub struct Gshn {
    pub graph: Graph,
    pub inputs: ModelInputs,
    pub outputs: ModelOutputs,
    pub params: Vec<ParamSpec>,
    pub config: ModelConfig,
    pub capacity: Capacity,
}

const LN_EPS: f64 = 1e-5;
const NORM_EPS: f64 = 1e-12;

impl Gshn {
    /// Builds the forward graph (no backward, no optimizer: see `train`).
    pub fn build(config: &ModelConfig, cap: Capacity) -> Result<Gshn> {
        Self::build_in(config, cap, DType::F32)
    }

    /// `build` with every float value in `dtype` (f64 for gradient checks).
    pub fn build_in(config: &ModelConfig, cap: Capacity, dtype: DType) -> Result<Gshn> {
        config.validate()?;
        let f32_ = dtype;
        let mut graph = Graph::new();
        let (n, e, d, t_steps, heads) = (
            cap.nodes,
            cap.edges,
            config.dim,
            config.time_steps,
            config.heads,
        );
        let g = &mut graph;
        let inputs = ModelInputs {
            pixel_feats: g.input("pixel_feats", [cap.pixels, cap.pixel_channels], f32_),
            pixel_node: g.input("pixel_node", [cap.pixels], DType::I32),
            geometry: g.input("geometry", [n, cap.geometry], f32_),
            category: g.input("category", [n], DType::I32),
            node_graph: g.input("node_graph", [n], DType::I32),
            node_weight: g.input("node_weight", [n], f32_),
            graph: crate::ops::gat::GraphInputs::new(g, "", n, e),
            edge_feats: g.input("edge_feats", [e, cap.edge_features], f32_),
            uniform_alpha: (config.variant == Variant::SnnOnly)
                .then(|| g.input("uniform_alpha", [e, heads], f32_)),
            tokens: g.input("tokens", [cap.batch * config.text.max_len], DType::I32),
            token_keep: g.input("token_keep", [cap.batch, config.text.max_len], f32_),
            text_features: (config.text.source == TextSource::Features)
                .then(|| g.input("text_features", [cap.batch, cap.text_features], f32_)),
            node_sample: g.input("node_sample", [cap.node_samples], DType::I32),
            w_itc: g.input("w_itc", [], f32_),
            w_stl: g.input("w_stl", [], f32_),
            w_node: g.input("w_node", [], f32_),
            w_rel: g.input("w_rel", [], f32_),
            negatives: cap.negatives.then(|| NegativeInputs {
                tokens: g.input("neg_tokens", [cap.batch * config.text.max_len], DType::I32),
                token_keep: g.input("neg_token_keep", [cap.batch, config.text.max_len], f32_),
                row_weight: g.input("neg_row_weight", [cap.batch], f32_),
                weight: g.input("w_neg", [], f32_),
            }),
        };
        let mut ps = ParamSet::new(&mut graph, f32_);
        let inp = &inputs;

        // ---- node inputs x_v = [masked_pool(F, M_v) ; geometry ; E_cat[category]] ----------
        let pooled = ps
            .graph
            .segment_mean(inp.pixel_feats, inp.pixel_node, n)?
            .mean;
        let cat_table = ps.param(
            "category_embedding",
            [cap.categories + 1, config.category_dim],
            Init::Normal(0.1),
        );
        let cat = ps.graph.gather(cat_table, inp.category)?;
        let x = ps.graph.concat(&[pooled, inp.geometry, cat], 1)?;
        let x_dim = cap.pixel_channels + cap.geometry + config.category_dim;

        let logit_scale = ps.param("logit_scale", [], Init::Constant(config.logit_scale_init));
        let mut attention = Vec::new();
        let mut spike_rates = Vec::new();
        let mut node_spike_rate = None;
        let mut r = None;

        // ---- GAT branch: h ← LayerNorm(h + ELU(GAT(h))), last layer heads averaged ----------
        let f_gat = if config.has_gat() {
            let (w0, b0) = ps.linear("gat.input", x_dim, d, true);
            let mut h = ps.graph.linear(x, w0, b0)?;
            for l in 0..config.gat_layers {
                let last = l + 1 == config.gat_layers;
                let f = if last { d } else { d / heads };
                let (w, _) = ps.linear(&format!("gat.{l}.lin"), d, heads * f, false);
                let a_src = ps.param(&format!("gat.{l}.att_src"), [heads, f], Init::Xavier);
                let a_dst = ps.param(&format!("gat.{l}.att_dst"), [heads, f], Init::Xavier);
                let (we, _) = ps.linear(&format!("gat.{l}.edge"), cap.edge_features, heads, false);
                let g = &mut *ps.graph;
                let z = g.matmul(h, w)?;
                let z = g.reshape(z, [n, heads, f])?;
                let be = g.matmul(inp.edge_feats, we)?;
                let attrs = GatAttrs {
                    negative_slope: 0.2,
                    edge_bias: true,
                };
                let out = g.gat(z, a_src, a_dst, Some(be), &inp.graph, attrs)?;
                attention.push(g.gat_alpha(
                    z,
                    a_src,
                    a_dst,
                    Some(be),
                    out.lse,
                    &inp.graph,
                    attrs,
                )?);
                let merged = if last {
                    // average heads: [n, H, d] → [n, d, H] → mean over H
                    let p = g.permute(out.out, &[0, 2, 1])?;
                    g.mean_last(p)?
                } else {
                    g.reshape(out.out, [n, d])?
                };
                let act = g.elu(merged)?;
                let res = g.add(h, act)?;
                let gamma = ps.param(&format!("gat.{l}.norm.weight"), [d], Init::Constant(1.0));
                let beta = ps.param(&format!("gat.{l}.norm.bias"), [d], Init::Constant(0.0));
                h = ps.graph.layer_norm(res, gamma, beta, LN_EPS)?;
            }
            Some(h)
        } else {
            None
        };

        // ---- SNN branch: S^l = LIF(LN(Agg_α(S^{l−1}) W^l)), E_SNN = mean_t(S^L) W_out --------
        let e_snn = if config.has_snn() {
            let (w_in, b_in) = ps.linear("snn.input", x_dim, d, true);
            let g = &mut *ps.graph;
            let current = g.linear(x, w_in, b_in)?;
            let current = g.reshape(current, [1, n, d])?;
            let mut s = g.concat(&vec![current; t_steps], 0)?; // [T, n, d], direct encoding
            let mut last_v = None;
            for l in 0..config.snn_layers {
                let alpha = match inp.uniform_alpha {
                    Some(u) => u,
                    None if config.detach_attention => ps
                        .graph
                        .stop_gradient(attention[l.min(attention.len() - 1)])?,
                    None => attention[l.min(attention.len() - 1)],
                };
                let (w, _) = ps.linear(&format!("snn.{l}.lin"), d, d, false);
                let root = config
                    .snn_root_weight
                    .then(|| ps.linear(&format!("snn.{l}.root"), d, d, false).0);
                // PLIF: a learnable time constant per layer.
                let tau = config
                    .lif
                    .learnable_tau
                    .then(|| ps.param(&format!("snn.{l}.tau"), [], Init::Constant(config.lif.tau)));
                let gamma = ps.param(&format!("snn.{l}.norm.weight"), [d], Init::Constant(1.0));
                let beta = ps.param(&format!("snn.{l}.norm.bias"), [d], Init::Constant(0.0));
                let g = &mut *ps.graph;
                let agg = g.aggregate(alpha, s, &inp.graph)?;
                let agg = g.reshape(agg, [t_steps * n, d])?;
                let mut cur = g.matmul(agg, w)?;
                if let Some(u) = root {
                    // The node's own previous-layer spikes, apart from the attention mix: keeps
                    // each segment's identity (the GAT branch keeps it through its residual).
                    let own = g.reshape(s, [t_steps * n, d])?;
                    let own = g.matmul(own, u)?;
                    cur = g.add(cur, own)?;
                }
                // LayerNorm of each (t, node) current keeps it O(1) around the threshold, so
                // neurons fire from the first step on (without it they start silent).
                let cur = g.layer_norm(cur, gamma, beta, LN_EPS)?;
                let cur = g.reshape(cur, [t_steps, n * d])?;
                let lif = match tau {
                    Some(tau) => g.plif(cur, tau, config.lif)?,
                    None => g.lif(cur, config.lif)?,
                };
                // firing rate over real nodes: mean over channels, then weighted over (t, node)
                let per_node = g.reshape(lif.spikes, [t_steps, n, d])?;
                let per_node = g.mean_last(per_node)?;
                let weighted = g.mul_broadcast(per_node, inp.node_weight)?;
                spike_rates.push(g.sum(weighted)?);
                if l + 1 == config.snn_layers {
                    let ones = g.fill(1.0 / t_steps as f64, [1, t_steps], f32_)?;
                    let rate = g.matmul(ones, per_node)?; // [1, n]
                    node_spike_rate = Some(g.reshape(rate, [n])?);
                }
                last_v = Some(lif.membrane);
                s = g.reshape(lif.spikes, [t_steps, n, d])?;
            }
            let (w_out, b_out) = ps.linear("snn.out", d, d, true);
            let g = &mut *ps.graph;
            let trace = match config.readout {
                Readout::Rate => g.reshape(s, [t_steps, n * d])?,
                Readout::Membrane => last_v.expect("at least one SNN layer"),
            };
            let mean_t = g.fill(1.0 / t_steps as f64, [1, t_steps], f32_)?;
            let rate = g.matmul(mean_t, trace)?;
            let rate = g.reshape(rate, [n, d])?;
            Some(g.linear(rate, w_out, b_out)?)
        } else {
            None
        };

        // ---- fusion V' = r ⊙ E_SNN + F_GAT ----------------------------------------------------
        let fused = match (e_snn, f_gat) {
            (Some(es), Some(fg)) => {
                let r_shape: Vec<usize> = if config.fusion == Fusion::Channel {
                    vec![d]
                } else {
                    vec![]
                };
                let rv = ps.param("fusion.r", r_shape, Init::Constant(config.r_init));
                r = Some(rv);
                let scaled = ps.graph.mul_broadcast(es, rv)?;
                ps.graph.add(scaled, fg)?
            }
            (Some(es), None) => es,
            (None, Some(fg)) => fg,
            (None, None) => {
                // mean-pool MLP baseline: a two-layer MLP on x_v
                let (w1, b1) = ps.linear("mlp.0", x_dim, d, true);
                let (w2, b2) = ps.linear("mlp.1", d, d, true);
                let g = &mut *ps.graph;
                let hdn = g.linear(x, w1, b1)?;
                let hdn = g.gelu(hdn)?;
                g.linear(hdn, w2, b2)?
            }
        };

        // ---- image embedding --------------------------------------------------------------------
        let (w_img, b_img) = ps.linear("image.proj", d, d, true);
        let g = &mut *ps.graph;
        let img = g.segment_mean(fused, inp.node_graph, cap.batch)?.mean;
        let img = g.linear(img, w_img, b_img)?;
        let z_img = g.l2_normalize(img, NORM_EPS)?;

        // ---- text embedding ---------------------------------------------------------------------
        let z_txt = match inp.text_features {
            // an external encoder's features → learned projection → normalise
            Some(f) => {
                let (w, b) = ps.linear("text.proj", cap.text_features, d, true);
                let z = ps.graph.linear(f, w, b)?;
                ps.graph.l2_normalize(z, NORM_EPS)?
            }
            None => text_encoder(&mut ps, config, cap, inp.tokens, inp.token_keep)?,
        };

        // ---- losses -------------------------------------------------------------------------------
        let rel = if cap.relations {
            let appearance = segment_appearance(ps.graph, cap, pooled, inp.geometry, cat)?;
            Some(relation_loss(&mut ps, cap, inp, appearance, z_img, z_txt)?)
        } else {
            None
        };
        let g = &mut *ps.graph;
        let sym = InfoNceAttrs {
            symmetric: true,
            chunk: 256,
        };
        let itc = g.infonce(z_img, z_txt, logit_scale, sym)?.loss;
        let w_itc = g.mul(itc, inp.w_itc)?;
        let mut loss = w_itc;
        if let Some(l) = rel {
            let weighted = g.mul(l, inp.w_rel)?;
            loss = g.add(loss, weighted)?;
        }
        let mut stl = None;
        let mut node_cl = None;
        if let (Variant::Full, Some(es), Some(fg)) = (config.variant, e_snn, f_gat) {
            // STL: spiking branch → (frozen) text features, one direction.
            let (w_s, b_s) = ps.linear("stl.proj", d, d, true);
            let stl_scale = ps.param(
                "stl.logit_scale",
                [],
                Init::Constant(config.logit_scale_init),
            );
            let node_scale = ps.param(
                "node_cl.logit_scale",
                [],
                Init::Constant(config.logit_scale_init),
            );
            let g = &mut *ps.graph;
            let pooled_snn = g.segment_mean(es, inp.node_graph, cap.batch)?.mean;
            let s_img = g.linear(pooled_snn, w_s, b_s)?;
            let s_img = g.l2_normalize(s_img, NORM_EPS)?;
            let txt_target = g.stop_gradient(z_txt)?;
            let one_dir = InfoNceAttrs {
                symmetric: false,
                chunk: 256,
            };
            let l_stl = g.infonce(s_img, txt_target, stl_scale, one_dir)?.loss;
            // node CL: the SNN and (frozen) GAT views of the same segment are positives.
            let sn = g.gather(es, inp.node_sample)?;
            let sn = g.l2_normalize(sn, NORM_EPS)?;
            let gn = g.gather(fg, inp.node_sample)?;
            let gn = g.stop_gradient(gn)?;
            let gn = g.l2_normalize(gn, NORM_EPS)?;
            let l_node = g.infonce(sn, gn, node_scale, sym)?.loss;
            let a = g.mul(l_stl, inp.w_stl)?;
            let b = g.mul(l_node, inp.w_node)?;
            let sum = g.add(loss, a)?;
            loss = g.add(sum, b)?;
            stl = Some(l_stl);
            node_cl = Some(l_node);
        }

        // Hard negatives (VSE++-style margin on cosine similarity): each image must score its
        // caption at least `negative_margin` above the same words with the objects exchanged.
        let mut neg = None;
        if let Some(ni) = &inp.negatives {
            let z_neg = text_encoder(&mut ps, config, cap, ni.tokens, ni.token_keep)?;
            let g = &mut *ps.graph;
            let row_dot = |g: &mut Graph, a: ValueId, b: ValueId| -> Result<ValueId> {
                let p = g.mul(a, b)?;
                g.sum_last(p)
            };
            let pos = row_dot(g, z_img, z_txt)?;
            let negs = row_dot(g, z_img, z_neg)?;
            let gap = g.sub(negs, pos)?;
            let margin = g.fill(config.negative_margin, [cap.batch], f32_)?;
            let gap = g.add(gap, margin)?;
            let hinge = g.relu(gap)?;
            let hinge = g.mul(hinge, ni.row_weight)?;
            let l_neg = g.sum(hinge)?;
            let weighted = g.mul(l_neg, ni.weight)?;
            loss = g.add(loss, weighted)?;
            neg = Some(l_neg);
        }

        let params = ps.specs;
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
                attention,
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

/// What a segment looks like, without where it is: its pooled features minus their position
/// channels, its size (bbox w, h and area) and its category embedding. `[nodes, width]`.
fn segment_appearance(
    g: &mut Graph,
    cap: Capacity,
    pooled: ValueId,
    geometry: ValueId,
    category: ValueId,
) -> Result<ValueId> {
    let c = cap.pixel_channels;
    let mut parts = Vec::new();
    match cap.position_channel {
        Some(x) => {
            if x > 0 {
                parts.push(g.slice(pooled, 1, 0, x)?);
            }
            if x + 2 < c {
                parts.push(g.slice(pooled, 1, x + 2, c - x - 2)?);
            }
        }
        None => parts.push(pooled),
    }
    parts.push(g.slice(geometry, 1, 2, 3)?);
    parts.push(category);
    g.concat(&parts, 1)
}

/// The relation loss: from an embedding (z_img, and z_txt for the caption) and the appearance
/// of two segments of the image, predict their centroid offset (dx, dy). Every ordered pair of
/// the image's node samples is one example; mean squared error, summed over the two sides.
///
/// Why: contrastive losses let both encoders settle on a bag of objects (docs/EXPERIMENTS.md
/// §3, §7). This asks the image embedding who is left of / above whom, in a code the caption
/// has to share: the decoder is trilinear, `((z W_z) ⊙ (a W_a) ⊙ (b W_b)) W_o`, and one
/// decoder serves both sides. A caption is a regression target only for the pair it names, but
/// that is enough for the text encoder to learn word order (it does not under ITC alone).
fn relation_loss(
    ps: &mut ParamSet,
    cap: Capacity,
    inp: &ModelInputs,
    appearance: ValueId,
    z_img: ValueId,
    z_txt: ValueId,
) -> Result<ValueId> {
    let (b, per) = (cap.batch, cap.node_samples / cap.batch);
    let (k, d) = (
        ps.graph.shape(appearance).dim(1),
        ps.graph.shape(z_img).dim(1),
    );
    let (wz, _) = ps.linear("relation.z", d, d, false);
    let (wa, ba) = ps.linear("relation.a", k, d, true);
    let (wb, bb) = ps.linear("relation.b", k, d, true);
    let (wo, bo) = ps.linear("relation.out", d, 2, true);
    let g = &mut *ps.graph;
    // node samples are `per` consecutive slots per image
    let look = g.gather(appearance, inp.node_sample)?;
    let look = g.reshape(look, [b, per, k])?;
    let centre = g.gather(inp.geometry, inp.node_sample)?;
    let centre = g.slice(centre, 1, 0, 2)?;
    let centre = g.reshape(centre, [b, per, 2])?;
    let pairs: Vec<(usize, usize)> = (0..per)
        .flat_map(|i| (0..per).filter(move |&j| j != i).map(move |j| (i, j)))
        .collect();
    let np = pairs.len();
    // rows (image, pair) of one side of every pair. Three gathers with pair indices would
    // replace these ~4·per² slices, but they change the gradient summation order and hence
    // every recorded recipe number (grad_norm differs in its 7th digit from epoch 1): make
    // that change together with the next re-run of the recipe table.
    let side = |g: &mut Graph, x: ValueId, first: bool| -> Result<ValueId> {
        let w = g.shape(x).dim(2);
        let rows = pairs
            .iter()
            .map(|&(i, j)| g.slice(x, 1, if first { i } else { j }, 1))
            .collect::<Result<Vec<_>>>()?;
        let rows = g.concat(&rows, 1)?;
        g.reshape(rows, [b * np, w])
    };
    let (la, lb) = (side(g, look, true)?, side(g, look, false)?);
    let (ca, cb) = (side(g, centre, true)?, side(g, centre, false)?);
    let offset = g.sub(cb, ca)?;
    let fa = g.linear(la, wa, ba)?;
    let fb = g.linear(lb, wb, bb)?;
    let pair = g.mul(fa, fb)?;
    let mse = |g: &mut Graph, z: ValueId| -> Result<ValueId> {
        let z = g.reshape(z, [b, 1, d])?;
        let z = g.concat(&vec![z; np], 1)?;
        let z = g.reshape(z, [b * np, d])?;
        let z = g.matmul(z, wz)?;
        let h = g.mul(z, pair)?;
        let pred = g.linear(h, wo, bo)?;
        let err = g.sub(pred, offset)?;
        let sq = g.mul(err, err)?;
        g.mean(sq)
    };
    let image = mse(g, z_img)?;
    let text = mse(g, z_txt)?;
    g.add(image, text)
}
