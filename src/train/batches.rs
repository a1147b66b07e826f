//! From prepared scene graphs and captions to the tensors a model graph is fed with.

use crate::backend::Backend;
use crate::data::{collate, BatchCapacity, Encoded, GraphBatch, SceneGraph};
use crate::error::Result;
use crate::graph::Executor;
use crate::model::{Capacity, ModelConfig, ModelInputs};
use crate::tensor::Tensor;
use crate::util::rng::SplitMix64;

/// A split decoded once: one scene graph and the encoded captions of every image.
pub struct PreparedSplit {
    pub graphs: Vec<SceneGraph>,
    pub captions: Vec<Vec<Encoded>>,
    pub caption_text: Vec<Vec<String>>,
    pub image_ids: Vec<u64>,
}

impl PreparedSplit {
    pub fn len(&self) -> usize {
        self.graphs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }
    pub fn max_edges(&self) -> usize {
        self.graphs.iter().map(|g| g.num_edges()).max().unwrap_or(1)
    }
    pub fn max_nodes(&self) -> usize {
        self.graphs.iter().map(|g| g.num_nodes).max().unwrap_or(1)
    }
}

/// Loss weights of one step (the schedule of DESIGN §4.4 feeds these).
#[derive(Clone, Copy, Debug)]
pub struct LossWeights {
    pub itc: f32,
    pub stl: f32,
    pub node: f32,
}

/// Static sizes shared by the data side (`BatchCapacity`) and the model (`Capacity`).
pub fn capacities(
    batch: usize,
    nodes_per_graph: usize,
    edges_per_graph: usize,
    pixels_per_graph: usize,
    pixel_channels: usize,
    categories: usize,
    vocab: usize,
    node_samples_per_graph: usize,
) -> (BatchCapacity, Capacity) {
    let data = BatchCapacity {
        batch_size: batch,
        max_nodes_per_graph: nodes_per_graph,
        max_edges_per_graph: edges_per_graph,
        pixels_per_graph,
    };
    let model = Capacity {
        batch,
        nodes: data.node_cap(),
        edges: data.edge_cap(),
        pixels: data.pixel_cap(),
        pixel_channels,
        categories,
        edge_features: crate::data::graph::EDGE_FEAT_DIM,
        geometry: crate::data::graph::GEOMETRY_DIM,
        node_samples: batch * node_samples_per_graph,
        vocab,
    };
    (data, model)
}

/// Feeds batches into any executor of a model graph.
pub struct Feeder {
    pub inputs: ModelInputs,
    pub data_cap: BatchCapacity,
    pub cap: Capacity,
    pub time_steps: usize,
    pub heads: usize,
    pub max_len: usize,
}

impl Feeder {
    pub fn new(inputs: ModelInputs, data_cap: BatchCapacity, cap: Capacity, cfg: &ModelConfig) -> Self {
        Feeder { inputs, data_cap, cap, time_steps: cfg.time_steps, heads: cfg.heads, max_len: cfg.text.max_len }
    }

    /// Sets every image-side input from `graphs` (≤ batch; missing slots are empty graphs).
    pub fn feed_images<B: Backend>(&self, ex: &mut Executor<B>, graphs: &[SceneGraph], rng: &mut SplitMix64) -> Result<GraphBatch> {
        let b = collate(graphs, &self.data_cap)?;
        let i = &self.inputs;
        let (n, e) = (b.node_cap, b.edge_cap);
        let set = |ex: &mut Executor<B>, v, t: Result<Tensor>| -> Result<()> { ex.set(v, &t?) };
        set(ex, i.pixel_feats, Tensor::new([self.cap.pixels, self.cap.pixel_channels], b.pixel_feats.clone()))?;
        set(ex, i.pixel_node, Tensor::new([self.cap.pixels], b.pixel_node.clone()))?;
        set(ex, i.geometry, Tensor::new([n, self.cap.geometry], b.geometry.clone()))?;
        set(ex, i.category, Tensor::new([n], b.category.clone()))?;
        set(ex, i.node_graph, Tensor::new([n], b.node_graph.clone()))?;
        let real = b.node_mask.iter().filter(|&&m| m > 0.0).count().max(1);
        let w = 1.0 / (self.time_steps * real) as f32;
        set(ex, i.node_weight, Tensor::new([n], b.node_mask.iter().map(|&m| m * w).collect::<Vec<f32>>()))?;
        set(ex, i.graph.row_ptr, Tensor::new([n + 1], b.row_ptr.clone()))?;
        set(ex, i.graph.src, Tensor::new([e], b.src.clone()))?;
        set(ex, i.graph.col_ptr, Tensor::new([n + 1], b.col_ptr.clone()))?;
        set(ex, i.graph.col_edge, Tensor::new([e], b.col_edge.clone()))?;
        set(ex, i.edge_feats, Tensor::new([e, self.cap.edge_features], b.edge_feats.clone()))?;
        if let Some(u) = i.uniform_alpha {
            let mut alpha = vec![0f32; e * self.heads];
            for d in 0..n {
                let (lo, hi) = (b.row_ptr[d] as usize, b.row_ptr[d + 1] as usize);
                for k in lo..hi {
                    alpha[k * self.heads..(k + 1) * self.heads].fill(1.0 / (hi - lo) as f32);
                }
            }
            set(ex, u, Tensor::new([e, self.heads], alpha))?;
        }
        set(ex, i.node_sample, Tensor::new([self.cap.node_samples], self.sample_nodes(&b, rng)))?;
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

    /// Sets the caption inputs: one encoded caption per slot (missing slots: [CLS] only).
    pub fn feed_text<B: Backend>(&self, ex: &mut Executor<B>, captions: &[&Encoded]) -> Result<()> {
        let (bs, l) = (self.cap.batch, self.max_len);
        let mut ids = vec![crate::data::text::PAD; bs * l];
        let mut keep = vec![0f32; bs * l];
        for s in 0..bs {
            ids[s * l] = crate::data::text::CLS;
            keep[s * l] = 1.0;
            if let Some(c) = captions.get(s) {
                for j in 0..c.len.min(l) {
                    ids[s * l + j] = c.ids[j];
                    keep[s * l + j] = 1.0;
                }
            }
        }
        ex.set(self.inputs.tokens, &Tensor::new([bs * l], ids)?)?;
        ex.set(self.inputs.token_keep, &Tensor::new([bs, l], keep)?)
    }

    pub fn feed_weights<B: Backend>(&self, ex: &mut Executor<B>, w: LossWeights) -> Result<()> {
        ex.set(self.inputs.w_itc, &Tensor::scalar(w.itc))?;
        ex.set(self.inputs.w_stl, &Tensor::scalar(w.stl))?;
        ex.set(self.inputs.w_node, &Tensor::scalar(w.node))
    }
}
