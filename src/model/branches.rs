//! The image side of the GSHN up to the fused node features (DESIGN §4.1-4.4): node inputs,
//! the GAT branch (F_GAT), the SNN branch (E_SNN) and their fusion. Each function adds its
//! parameters and ops in the order `Gshn::build_in` calls it.

use super::config::{Fusion, ModelConfig, Readout};
use super::gshn::{Capacity, ModelInputs, LN_EPS};
use crate::error::Result;
use crate::graph::params::{Init, ParamSet};
use crate::graph::ValueId;
use crate::ops::{GatAttrs, LifConfig};
use crate::tensor::DType;

/// The node inputs and their parts (the relation loss reuses the parts).
pub(super) struct NodeFeatures {
    /// `[nodes, pixel_channels]` masked average of each node's feature cells.
    pub pooled: ValueId,
    /// `[nodes, category_dim]` category embedding.
    pub category: ValueId,
    /// `[nodes, x_dim]` = [pooled ; geometry ; category].
    pub x: ValueId,
    pub x_dim: usize,
}

/// Node inputs x_v = [masked_pool(F, M_v) ; geometry ; E_cat[category]].
pub(super) fn node_features(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
) -> Result<NodeFeatures> {
    let pooled = ps
        .graph
        .segment_mean(inp.pixel_feats, inp.pixel_node, cap.nodes)?
        .mean;
    let cat_table = ps.param(
        "category_embedding",
        [cap.categories + 1, config.category_dim],
        Init::Normal(0.1),
    );
    let cat = ps.graph.gather(cat_table, inp.category)?;
    let x = ps.graph.concat(&[pooled, inp.geometry, cat], 1)?;
    Ok(NodeFeatures {
        pooled,
        category: cat,
        x,
        x_dim: cap.pixel_channels + cap.geometry + config.category_dim,
    })
}

/// The GAT branch's output and the attention of each of its layers.
pub(super) struct GatBranch {
    /// `[nodes, dim]`, `None` without a GAT branch.
    pub f_gat: Option<ValueId>,
    /// Per layer `[edges, heads]` (the SNN branch aggregates with it).
    pub attention: Vec<ValueId>,
}

/// GAT branch: h ← LayerNorm(h + ELU(GAT(h))), last layer heads averaged.
pub(super) fn gat_branch(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
    nodes: &NodeFeatures,
) -> Result<GatBranch> {
    let (n, d, heads) = (cap.nodes, config.dim, config.heads);
    let mut attention = Vec::new();
    if !config.has_gat() {
        return Ok(GatBranch {
            f_gat: None,
            attention,
        });
    }
    let (w0, b0) = ps.linear("gat.input", nodes.x_dim, d, true);
    let mut h = ps.graph.linear(nodes.x, w0, b0)?;
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
        attention.push(g.gat_alpha(z, a_src, a_dst, Some(be), out.lse, &inp.graph, attrs)?);
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
    Ok(GatBranch {
        f_gat: Some(h),
        attention,
    })
}

/// The SNN branch's output and what is logged of its spikes.
pub(super) struct SnnBranch {
    /// `[nodes, dim]`.
    pub e_snn: ValueId,
    /// Per layer: mean firing rate over real nodes, time and channels (`[]`).
    pub spike_rates: Vec<ValueId>,
    /// `[nodes]` firing rate of each node in the last layer.
    pub node_spike_rate: Option<ValueId>,
}

/// SNN branch: S^l = LIF(LN(Agg_α(S^{l−1}) W^l)), E_SNN = mean_t(S^L) W_out.
/// `None` without an SNN branch.
pub(super) fn snn_branch(
    ps: &mut ParamSet,
    config: &ModelConfig,
    cap: Capacity,
    inp: &ModelInputs,
    nodes: &NodeFeatures,
    attention: &[ValueId],
    float: DType,
) -> Result<Option<SnnBranch>> {
    if !config.has_snn() {
        return Ok(None);
    }
    let (n, d, t_steps) = (cap.nodes, config.dim, config.time_steps);
    let mut spike_rates = Vec::new();
    let mut node_spike_rate = None;
    let (w_in, b_in) = ps.linear("snn.input", nodes.x_dim, d, true);
    let g = &mut *ps.graph;
    let current = g.linear(nodes.x, w_in, b_in)?;
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
        // V is written only where it is read: the last layer's, by a membrane readout
        let cfg = LifConfig {
            membrane: config.readout == Readout::Membrane && l + 1 == config.snn_layers,
            ..config.lif
        };
        let lif = match tau {
            Some(tau) => g.plif(cur, tau, cfg)?,
            None => g.lif(cur, cfg)?,
        };
        // firing rate over real nodes: mean over channels, then weighted over (t, node)
        let per_node = g.reshape(lif.spikes, [t_steps, n, d])?;
        let per_node = match cfg.u8_spikes {
            true => g.cast(per_node, float)?, // the mean reads floats (0/1 exactly)
            false => per_node,
        };
        let per_node = g.mean_last(per_node)?;
        let weighted = g.mul_broadcast(per_node, inp.node_weight)?;
        spike_rates.push(g.sum(weighted)?);
        if l + 1 == config.snn_layers {
            let ones = g.fill(1.0 / t_steps as f64, [1, t_steps], float)?;
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
    let mean_t = g.fill(1.0 / t_steps as f64, [1, t_steps], float)?;
    let rate = g.matmul(mean_t, trace)?;
    let rate = g.reshape(rate, [n, d])?;
    Ok(Some(SnnBranch {
        e_snn: g.linear(rate, w_out, b_out)?,
        spike_rates,
        node_spike_rate,
    }))
}

/// Fusion V' = r ⊙ E_SNN + F_GAT.
/// The fused node features and `r` (only when both branches exist); with neither branch, the
/// mean-pool MLP baseline.
pub(super) fn fuse(
    ps: &mut ParamSet,
    config: &ModelConfig,
    nodes: &NodeFeatures,
    e_snn: Option<ValueId>,
    f_gat: Option<ValueId>,
) -> Result<(ValueId, Option<ValueId>)> {
    let d = config.dim;
    Ok(match (e_snn, f_gat) {
        (Some(es), Some(fg)) => {
            let r_shape: Vec<usize> = if config.fusion == Fusion::Channel {
                vec![d]
            } else {
                vec![]
            };
            let rv = ps.param("fusion.r", r_shape, Init::Constant(config.r_init));
            let scaled = ps.graph.mul_broadcast(es, rv)?;
            (ps.graph.add(scaled, fg)?, Some(rv))
        }
        (Some(es), None) => (es, None),
        (None, Some(fg)) => (fg, None),
        (None, None) => {
            // mean-pool MLP baseline: a two-layer MLP on x_v
            let (w1, b1) = ps.linear("mlp.0", nodes.x_dim, d, true);
            let (w2, b2) = ps.linear("mlp.1", d, d, true);
            let g = &mut *ps.graph;
            let hdn = g.linear(nodes.x, w1, b1)?;
            let hdn = g.gelu(hdn)?;
            (g.linear(hdn, w2, b2)?, None)
        }
    })
}
