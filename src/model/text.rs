//! Caption encoder: token + position embeddings → pre-LN transformer blocks (multi-head
//! self-attention with a padding mask, GELU MLP) → \[CLS\] → projection → L2-normalise.

use super::config::ModelConfig;
use super::gshn::Capacity;
use crate::error::Result;
use crate::graph::params::{Init, ParamSet};
use crate::graph::ValueId;

const LN_EPS: f64 = 1e-5;

fn layer_norm(ps: &mut ParamSet, name: &str, x: ValueId, d: usize) -> Result<ValueId> {
    let gamma = ps.param(&format!("{name}.weight"), [d], Init::Constant(1.0));
    let beta = ps.param(&format!("{name}.bias"), [d], Init::Constant(0.0));
    ps.graph.layer_norm(x, gamma, beta, LN_EPS)
}

/// Returns z_txt [batch, dim], normalised.
pub fn text_encoder(
    ps: &mut ParamSet,
    cfg: &ModelConfig,
    cap: Capacity,
    tokens: ValueId,
    keep: ValueId,
) -> Result<ValueId> {
    let (b, l, d) = (cap.batch, cfg.text.max_len, cfg.dim);
    let (nh, dh) = (cfg.text.heads, cfg.dim / cfg.text.heads);
    let table = ps.param("text.token_embedding", [cap.vocab, d], Init::Normal(0.02));
    let pos = ps.param("text.position_embedding", [l * d], Init::Normal(0.01));
    let g = &mut *ps.graph;
    let x = g.gather(table, tokens)?; // [b·l, d]
    let x = g.reshape(x, [b, l * d])?;
    let x = g.add_bias(x, pos)?;
    let mut h = g.reshape(x, [b * l, d])?;
    let heads = |g: &mut crate::graph::Graph, v: ValueId| -> Result<ValueId> {
        let v = g.reshape(v, [b, l, nh, dh])?;
        let v = g.permute(v, &[0, 2, 1, 3])?;
        g.reshape(v, [b * nh, l, dh])
    };
    for i in 0..cfg.text.layers {
        let p = format!("text.{i}");
        let a = layer_norm(ps, &format!("{p}.ln1"), h, d)?;
        let (wq, bq) = ps.linear(&format!("{p}.q"), d, d, true);
        let (wk, bk) = ps.linear(&format!("{p}.k"), d, d, true);
        let (wv, bv) = ps.linear(&format!("{p}.v"), d, d, true);
        let (wo, bo) = ps.linear(&format!("{p}.o"), d, d, true);
        let g = &mut *ps.graph;
        let q = g.linear(a, wq, bq)?;
        let k = g.linear(a, wk, bk)?;
        let v = g.linear(a, wv, bv)?;
        let (q, k, v) = (heads(g, q)?, heads(g, k)?, heads(g, v)?);
        let scores = g.matmul_t(q, k, false, true)?; // [b·nh, l, l]
        let scores = g.scale(scores, 1.0 / (dh as f64).sqrt())?;
        let scores = g.reshape(scores, [b, nh * l, l])?;
        let attn = g.masked_softmax(scores, keep)?;
        let attn = g.reshape(attn, [b * nh, l, l])?;
        let ctx = g.matmul(attn, v)?; // [b·nh, l, dh]
        let ctx = g.reshape(ctx, [b, nh, l, dh])?;
        let ctx = g.permute(ctx, &[0, 2, 1, 3])?;
        let ctx = g.reshape(ctx, [b * l, d])?;
        let o = g.linear(ctx, wo, bo)?;
        h = g.add(h, o)?;
        let m = layer_norm(ps, &format!("{p}.ln2"), h, d)?;
        let hidden = cfg.text.mlp_ratio * d;
        let (w1, b1) = ps.linear(&format!("{p}.mlp.0"), d, hidden, true);
        let (w2, b2) = ps.linear(&format!("{p}.mlp.1"), hidden, d, true);
        let g = &mut *ps.graph;
        let m = g.linear(m, w1, b1)?;
        let m = g.gelu(m)?;
        let m = g.linear(m, w2, b2)?;
        h = g.add(h, m)?;
    }
    let h = layer_norm(ps, "text.ln_final", h, d)?;
    let (wt, bt) = ps.linear("text.proj", d, d, true);
    let g = &mut *ps.graph;
    let h = g.reshape(h, [b, l, d])?;
    let cls = g.slice(h, 1, 0, 1)?; // [CLS] is token 0
    let cls = g.reshape(cls, [b, d])?;
    let z = g.linear(cls, wt, bt)?;
    g.l2_normalize(z, 1e-12)
}
