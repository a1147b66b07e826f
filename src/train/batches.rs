//! From prepared scene graphs and captions to the tensors a model graph is fed with.

use crate::backend::Backend;
use crate::data::{collate, BatchCapacity, Encoded, GraphBatch, SceneGraph};
use crate::error::Result;
use crate::graph::Executor;
use crate::model::{Capacity, ModelConfig, ModelInputs};
use crate::tensor::Tensor;
use crate::util::rng::SplitMix64;

/// Loss weights of one step (the schedule of DESIGN §4.4 feeds these).
#[derive(Clone, Copy, Debug)]
pub struct LossWeights {
    /// Weight of the image–text InfoNCE (ITC).
    pub itc: f32,
    /// Weight of Spiked Text Learning (STL).
    pub stl: f32,
    /// Weight of the node-level contrastive loss (node CL).
    pub node: f32,
    /// Hard-negative margin loss (only in graphs built with `Capacity::negatives`).
    pub neg: f32,
    /// Relation loss (only in graphs built with `Capacity::relations`).
    pub rel: f32,
}

/// Feeds batches into any executor of a model graph.
pub struct Feeder {
    /// Input handles of the model graph.
    pub inputs: ModelInputs,
    /// Capacities the images are collated to.
    pub data_cap: BatchCapacity,
    /// Static sizes of the model graph.
    pub cap: Capacity,
    /// SNN time steps T (for the per-node spike-rate weights).
    pub time_steps: usize,
    /// GAT heads (for the uniform attention of the SNN-only ablation).
    pub heads: usize,
    /// Tokens per caption.
    pub max_len: usize,
}

impl Feeder {
    /// A feeder for a graph with `inputs` and `cap`, batches collated to `data_cap`.
    pub fn new(
        inputs: ModelInputs,
        data_cap: BatchCapacity,
        cap: Capacity,
        cfg: &ModelConfig,
    ) -> Self {
        Feeder {
            inputs,
            data_cap,
            cap,
            time_steps: cfg.time_steps,
            heads: cfg.heads,
            max_len: cfg.text.max_len,
        }
    }

    /// Sets every image-side input from `graphs` (≤ batch; missing slots are empty graphs).
    /// The per-pixel, per-node and per-edge arrays move into the executor; the returned batch
    /// keeps the CSR (`row_ptr`, `src`), the masks and the global nodes for callers that draw
    /// or inspect it.
    pub fn feed_images<B: Backend, G: std::borrow::Borrow<SceneGraph>>(
        &self,
        ex: &mut Executor<B>,
        graphs: &[G],
        rng: &mut SplitMix64,
    ) -> Result<GraphBatch> {
        let mut b = collate(graphs, &self.data_cap)?;
        let i = &self.inputs;
        let take = std::mem::take::<Vec<f32>>;
        let take_i = std::mem::take::<Vec<i32>>;
        let (n, e) = (b.node_cap(), b.edge_cap());
        let set = |ex: &mut Executor<B>, v, t: Result<Tensor>| set_as(ex, v, t?);
        set(
            ex,
            i.pixel_feats,
            Tensor::new(
                [self.cap.pixels, self.cap.pixel_channels],
                take(&mut b.pixel_feats),
            ),
        )?;
        set(
            ex,
            i.pixel_node,
            Tensor::new([self.cap.pixels], take_i(&mut b.pixel_node)),
        )?;
        set(
            ex,
            i.geometry,
            Tensor::new([n, self.cap.geometry], take(&mut b.geometry)),
        )?;
        set(ex, i.category, Tensor::new([n], take_i(&mut b.category)))?;
        set(
            ex,
            i.node_graph,
            Tensor::new([n], take_i(&mut b.node_graph)),
        )?;
        let real = b.node_mask.iter().filter(|&&m| m > 0.0).count().max(1);
        let w = 1.0 / (self.time_steps * real) as f32;
        set(
            ex,
            i.node_weight,
            Tensor::new(
                [n],
                b.node_mask.iter().map(|&m| m * w).collect::<Vec<f32>>(),
            ),
        )?;
        set(ex, i.graph.row_ptr, Tensor::new([n + 1], b.row_ptr.clone()))?;
        set(ex, i.graph.src, Tensor::new([e], b.src.clone()))?;
        set(
            ex,
            i.graph.col_ptr,
            Tensor::new([n + 1], take_i(&mut b.col_ptr)),
        )?;
        set(
            ex,
            i.graph.col_edge,
            Tensor::new([e], take_i(&mut b.col_edge)),
        )?;
        set(
            ex,
            i.edge_feats,
            Tensor::new([e, self.cap.edge_features], take(&mut b.edge_feats)),
        )?;
        if let Some(u) = i.uniform_alpha {
            let alpha: Vec<f32> = b
                .in_degree_of_edge
                .iter()
                .flat_map(|&d| std::iter::repeat_n(1.0 / d as f32, self.heads))
                .collect();
            set(ex, u, Tensor::new([e, self.heads], alpha))?;
        }
        set(
            ex,
            i.node_sample,
            Tensor::new([self.cap.node_samples], self.sample_nodes(&b, rng)),
        )?;
        Ok(b)
    }

    /// Node-CL samples: per image, distinct segment nodes (never the global node), drawn
    /// with replacement only when an image has fewer segments than samples.
    fn sample_nodes(&self, b: &GraphBatch, rng: &mut SplitMix64) -> Vec<i32> {
        let per = self.cap.node_samples / self.cap.batch.max(1);
        let mut out = Vec::with_capacity(self.cap.node_samples);
        for g in 0..self.cap.batch {
            let base = g * self.data_cap.max_nodes_per_graph;
            let global = b.global_node[g];
            let mut segs: Vec<i32> = (base..base + self.data_cap.max_nodes_per_graph)
                .filter(|&v| b.node_real(v) && v as i32 != global)
                .map(|v| v as i32)
                .collect();
            if segs.is_empty() {
                segs.push(if global >= 0 { global } else { base as i32 });
            }
            rng.shuffle(&mut segs);
            for k in 0..per {
                out.push(segs[k % segs.len()]);
            }
        }
        out
    }

    /// Sets the caption inputs: one encoded caption per slot (missing slots: \[CLS\] only).
    pub fn feed_text<B: Backend>(&self, ex: &mut Executor<B>, captions: &[&Encoded]) -> Result<()> {
        let caps: Vec<Option<&Encoded>> = captions.iter().map(|&c| Some(c)).collect();
        let (ids, keep) = self.token_tensors(&caps)?;
        ex.set(self.inputs.tokens, &ids)?;
        set_as(ex, self.inputs.token_keep, keep)?;
        if let Some(v) = self.inputs.text_features {
            let w = self.cap.text_features;
            let mut f = vec![0f32; self.cap.batch * w];
            for (s, c) in captions.iter().enumerate().take(self.cap.batch) {
                if c.features.len() != w {
                    return Err(crate::Error::invalid(
                        "text features",
                        format!(
                            "a caption has {} features; the model takes {w}",
                            c.features.len()
                        ),
                    ));
                }
                f[s * w..(s + 1) * w].copy_from_slice(&c.features);
            }
            set_as(ex, v, Tensor::new([self.cap.batch, w], f)?)?;
        }
        Ok(())
    }

    /// Sets the hard-negative captions of the rows (none: the row has no negative, and its
    /// margin term weighs 0). A no-op for graphs built without negatives.
    pub fn feed_negatives<B: Backend>(
        &self,
        ex: &mut Executor<B>,
        negatives: &[Option<&Encoded>],
    ) -> Result<()> {
        let Some(ni) = &self.inputs.negatives else {
            return Ok(());
        };
        let (ids, keep) = self.token_tensors(negatives)?;
        ex.set(ni.tokens, &ids)?;
        set_as(ex, ni.token_keep, keep)?;
        let present = |s: usize| negatives.get(s).is_some_and(|n| n.is_some());
        let count = (0..self.cap.batch).filter(|&s| present(s)).count();
        let w: Vec<f32> = (0..self.cap.batch)
            .map(|s| if present(s) { 1.0 / count as f32 } else { 0.0 })
            .collect();
        set_as(ex, ni.row_weight, Tensor::new([self.cap.batch], w)?)
    }

    /// Token ids and keep mask of one caption per slot (missing slots: [CLS] only).
    fn token_tensors(&self, captions: &[Option<&Encoded>]) -> Result<(Tensor, Tensor)> {
        let (bs, l) = (self.cap.batch, self.max_len);
        let mut ids = vec![crate::data::text::PAD; bs * l];
        let mut keep = vec![0f32; bs * l];
        for s in 0..bs {
            ids[s * l] = crate::data::text::CLS;
            keep[s * l] = 1.0;
            if let Some(Some(c)) = captions.get(s) {
                for j in 0..c.len.min(l) {
                    ids[s * l + j] = c.ids[j];
                    keep[s * l + j] = 1.0;
                }
            }
        }
        Ok((Tensor::new([bs * l], ids)?, Tensor::new([bs, l], keep)?))
    }

    /// Sets the loss-weight scalars of one step (the negative weight only if the graph has negatives).
    pub fn feed_weights<B: Backend>(&self, ex: &mut Executor<B>, w: LossWeights) -> Result<()> {
        set_as(ex, self.inputs.w_itc, Tensor::scalar(w.itc))?;
        set_as(ex, self.inputs.w_stl, Tensor::scalar(w.stl))?;
        set_as(ex, self.inputs.w_node, Tensor::scalar(w.node))?;
        set_as(ex, self.inputs.w_rel, Tensor::scalar(w.rel))?;
        match &self.inputs.negatives {
            Some(ni) => set_as(ex, ni.weight, Tensor::scalar(w.neg)),
            None => Ok(()),
        }
    }
}

/// Sets a value, converting float data to the value's dtype (models built in f64 for
/// gradient checks take the same batches).
fn set_as<B: Backend>(ex: &mut Executor<B>, v: crate::graph::ValueId, t: Tensor) -> Result<()> {
    let want = ex.graph().dtype(v)?;
    if t.dtype() == want {
        ex.set(v, &t)
    } else {
        ex.set(v, &t.to_dtype(want)?)
    }
}
