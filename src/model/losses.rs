//! The heads and loss terms of the GSHN (DESIGN §4.4) besides ITC: the relation loss, STL and
//! node CL (full model), and the hard-negative margin. `Gshn::build_in` sums them with the fed
//! loss weights, so that the pre-training → alignment schedule needs no second graph.

use super::branches::NodeFeatures;
use super::config::ModelConfig;
use super::gshn::{Capacity, ModelInputs, NORM_EPS};
use super::text::text_encoder;
use crate::error::Result;
use crate::graph::params::{Init, ParamSet};
use crate::graph::{Graph, ValueId};
use crate::ops::InfoNceAttrs;
use crate::tensor::DType;

/// The relation loss of the image's node samples (see [`relation_loss`]).
pub(super) fn relation_term(
    ps: &mut ParamSet,
    cap: Capacity,
    inp: &ModelInputs,
    nodes: &NodeFeatures,
    z_img: ValueId,
    z_txt: ValueId,
) -> Result<ValueId> {
    let appearance = segment_appearance(ps.graph, cap, nodes.pooled, inp.geometry, nodes.category)?;
    relation_loss(ps, cap, inp, appearance, z_img, z_txt)
}

/// `loss + weight · term`.
pub(super) fn add_weighted(
    g: &mut Graph,
    loss: ValueId,
    term: ValueId,
    weight: ValueId,
) -> Result<ValueId> {
    let weighted = g.mul(term, weight)?;
    g.add(loss, weighted)
}

/// The attributes of the model's InfoNCE losses: ITC and node CL both directions, STL one.
pub(super) fn infonce_attrs(config: &ModelConfig, symmetric: bool) -> InfoNceAttrs {
    InfoNceAttrs {
        symmetric,
        precision: config.infonce_precision,
        ..InfoNceAttrs::SYMMETRIC
    }
}

/// STL: spiking branch → (frozen) text features, one direction; node CL: the SNN and (frozen)
/// GAT views of the same segment are positives. Returns both unweighted.
pub(super) fn stl_and_node_cl(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
    z_txt: ValueId,
    es: ValueId,
    fg: ValueId,
) -> Result<(ValueId, ValueId)> {
    let d = config.dim;
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
    let l_stl = g
        .infonce(s_img, txt_target, stl_scale, infonce_attrs(config, false))?
        .loss;
    let sn = g.gather(es, inp.node_sample)?;
    let sn = g.l2_normalize(sn, NORM_EPS)?;
    let gn = g.gather(fg, inp.node_sample)?;
    let gn = g.stop_gradient(gn)?;
    let gn = g.l2_normalize(gn, NORM_EPS)?;
    let l_node = g
        .infonce(sn, gn, node_scale, infonce_attrs(config, true))?
        .loss;
    Ok((l_stl, l_node))
}

/// Hard negatives (VSE++-style margin on cosine similarity): each image must score its
/// caption at least `negative_margin` above the same words with the objects exchanged.
/// Unweighted: the mean over rows with a negative (`row_weight`).
pub(super) fn hard_negative_loss(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    ni: &super::gshn::NegativeInputs,
    z_img: ValueId,
    z_txt: ValueId,
    float: DType,
) -> Result<ValueId> {
    let z_neg = text_encoder(ps, config, cap, ni.tokens, ni.token_keep)?;
    let g = &mut *ps.graph;
    let row_dot = |g: &mut Graph, a: ValueId, b: ValueId| -> Result<ValueId> {
        let p = g.mul(a, b)?;
        g.sum_last(p)
    };
    let pos = row_dot(g, z_img, z_txt)?;
    let negs = row_dot(g, z_img, z_neg)?;
    let gap = g.sub(negs, pos)?;
    let margin = g.fill(config.negative_margin, [cap.batch], float)?;
    let gap = g.add(gap, margin)?;
    let hinge = g.relu(gap)?;
    let hinge = g.mul(hinge, ni.row_weight)?;
    g.sum(hinge)
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
        ps.graph.shape(appearance)?.at(1),
        ps.graph.shape(z_img)?.at(1),
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
        let w = g.shape(x)?.at(2);
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
