//! Caption encoder: token + position embeddings → pre-LN transformer blocks (multi-head
//! self-attention with a padding mask, GELU MLP) → \[CLS\] → projection → L2-normalise.
//!
//! Only \[CLS\] leaves the encoder, so the last block computes the other tokens only as far
//! as \[CLS\] reads them (keys and values); after its attention it runs on the \[CLS\] rows
//! alone. Those rows are every `max_len`-th of the token batch, and the ops say so
//! (`row_stride`): their parameter gradients add up in the order of the whole token batch,
//! so training has the same bits as when every token ran through (`tests` below).

use super::config::ModelConfig;
use super::gshn::Capacity;
use crate::error::Result;
use crate::graph::params::{Init, ParamSet};
use crate::graph::ValueId;

const LN_EPS: f64 = 1e-5;

/// LayerNorm of rows taken every `row_stride`-th token (1: every token).
fn layer_norm(
    ps: &mut ParamSet,
    name: &str,
    x: ValueId,
    d: usize,
    row_stride: usize,
) -> Result<ValueId> {
    let gamma = ps.param(&format!("{name}.weight"), [d], Init::Constant(1.0));
    let beta = ps.param(&format!("{name}.bias"), [d], Init::Constant(0.0));
    Ok(ps
        .graph
        .layer_norm_strided(x, gamma, beta, LN_EPS, row_stride)?
        .y)
}

/// Returns z_txt [batch, dim], normalised.
pub fn text_encoder(
    ps: &mut ParamSet,
    cfg: &ModelConfig,
    cap: Capacity,
    tokens: ValueId,
    keep: ValueId,
) -> Result<ValueId> {
    encoder(
        ps,
        cfg,
        (cap.batch, cap.vocab),
        tokens,
        keep,
        LastBlock::Cls,
    )
}

/// What the last block computes after its attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastBlock {
    /// The \[CLS\] rows alone: the model.
    Cls,
    /// Every token, as the other blocks: the reference the model is tested against.
    #[cfg(test)]
    EveryToken,
}

fn encoder(
    ps: &mut ParamSet,
    cfg: &ModelConfig,
    (b, vocab): (usize, usize),
    tokens: ValueId,
    keep: ValueId,
    last: LastBlock,
) -> Result<ValueId> {
    let (l, d) = (cfg.text.max_len, cfg.dim);
    let (nh, dh) = (cfg.text.heads, cfg.dim / cfg.text.heads);
    let table = ps.param("text.token_embedding", [vocab, d], Init::Normal(0.02));
    let pos = ps.param("text.position_embedding", [l * d], Init::Normal(0.01));
    let g = &mut *ps.graph;
    let x = g.gather(table, tokens)?; // [b·l, d]
    let x = g.reshape(x, [b, l * d])?;
    let x = g.add_bias(x, pos)?;
    let mut h = g.reshape(x, [b * l, d])?;
    // [CLS] (token 0) of each caption: [b·l, d] → [b, d], rows every l-th token
    let cls = |g: &mut crate::graph::Graph, v: ValueId| -> Result<ValueId> {
        let v = g.reshape(v, [b, l, d])?;
        let v = g.slice(v, 1, 0, 1)?;
        g.reshape(v, [b, d])
    };
    let mut stride = 1; // every token's row
    let heads = |g: &mut crate::graph::Graph, v: ValueId| -> Result<ValueId> {
        let v = g.reshape(v, [b, l, nh, dh])?;
        let v = g.permute(v, &[0, 2, 1, 3])?;
        g.reshape(v, [b * nh, l, dh])
    };
    for i in 0..cfg.text.layers {
        let p = format!("text.{i}");
        let a = layer_norm(ps, &format!("{p}.ln1"), h, d, 1)?;
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
        let mut ctx = g.reshape(ctx, [b * l, d])?;
        if i + 1 == cfg.text.layers && last == LastBlock::Cls {
            (ctx, h, stride) = (cls(g, ctx)?, cls(g, h)?, l);
        }
        let o = g.linear_strided(ctx, wo, bo, stride)?;
        h = g.add(h, o)?;
        let m = layer_norm(ps, &format!("{p}.ln2"), h, d, stride)?;
        let hidden = cfg.text.mlp_ratio * d;
        let (w1, b1) = ps.linear(&format!("{p}.mlp.0"), d, hidden, true);
        let (w2, b2) = ps.linear(&format!("{p}.mlp.1"), hidden, d, true);
        let g = &mut *ps.graph;
        let m = g.linear_strided(m, w1, b1, stride)?;
        let m = g.gelu(m)?;
        let m = g.linear_strided(m, w2, b2, stride)?;
        h = g.add(h, m)?;
    }
    let h = layer_norm(ps, "text.ln_final", h, d, stride)?;
    let (wt, bt) = ps.linear("text.proj", d, d, true);
    let g = &mut *ps.graph;
    let h = if stride == 1 { cls(g, h)? } else { h };
    let z = g.linear(h, wt, bt)?;
    g.l2_normalize(z, 1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::graph::params::initial_values;
    use crate::graph::{Executor, Graph};
    use crate::tensor::{DType, Tensor};
    use crate::util::rng::SplitMix64;

    /// z_txt and every parameter gradient of the default encoder, as bits, for a batch of
    /// `b` captions of random lengths.
    fn z_and_gradients(b: usize, last: LastBlock) -> Vec<(String, Vec<u32>)> {
        let cfg = ModelConfig::default();
        let (l, d, vocab) = (cfg.text.max_len, cfg.dim, 40);
        let mut g = Graph::new();
        let mut ps = ParamSet::new(&mut g, DType::F32);
        let tokens = ps.graph.input("tokens", [b * l], DType::I32);
        let keep = ps.graph.input("keep", [b, l], DType::F32);
        let z = encoder(&mut ps, &cfg, (b, vocab), tokens, keep, last).unwrap();
        let specs = ps.finish().unwrap();
        let w = g.input("w", [b, d], DType::F32);
        let zw = g.mul(z, w).unwrap();
        let loss = g.sum(zw).unwrap();
        let ids: Vec<_> = specs.iter().map(|s| s.id).collect();
        let grads = g.backward(loss, &ids).unwrap();
        let mut ex = Executor::new(CpuBackend, g, &[&[z][..], &grads].concat()).unwrap();
        for (id, t) in initial_values(&specs, DType::F32, 7).unwrap() {
            ex.set(id, &t).unwrap();
        }
        let mut rng = SplitMix64::new(11);
        let (mut tok, mut kept) = (vec![0i32; b * l], vec![0f32; b * l]);
        for i in 0..b {
            let len = 2 + rng.below(l - 1); // [CLS] and at least one word
            for j in 0..len {
                tok[i * l + j] = 1 + rng.below(vocab - 1) as i32;
                kept[i * l + j] = 1.0;
            }
        }
        let ws: Vec<f32> = (0..b * d).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        ex.set(tokens, &Tensor::new([b * l], tok).unwrap()).unwrap();
        ex.set(keep, &Tensor::new([b, l], kept).unwrap()).unwrap();
        ex.set(w, &Tensor::new([b, d], ws).unwrap()).unwrap();
        ex.run().unwrap();
        let bits = |v| {
            let t = ex.get(v).unwrap();
            t.data::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let mut out = vec![("z".to_string(), bits(z))];
        out.extend(
            specs
                .iter()
                .zip(&grads)
                .map(|(s, &gv)| (s.name.clone(), bits(gv))),
        );
        out
    }

    #[test]
    fn the_cls_only_last_block_trains_with_the_bits_of_every_token() {
        // 48 × 24 = 1152 token rows: the weight gradients' sums span several of the GEMM's
        // depth blocks and of LayerNorm's 64-row blocks, where the [CLS] rows alone would
        // add in another order (checked: without the row strides this fails).
        let (cls, every) = (
            z_and_gradients(48, LastBlock::Cls),
            z_and_gradients(48, LastBlock::EveryToken),
        );
        assert_eq!(cls.len(), every.len());
        for ((name, a), (_, b)) in cls.iter().zip(&every) {
            assert!(a.iter().any(|&x| x != 0), "{name}: all zero");
            assert!(a == b, "{name} differs from the every-token encoder's");
        }
    }
}
