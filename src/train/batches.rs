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
    /// Per caption, its hard negative (`synth::exchange_objects`) when it has one; empty per
    /// image unless the run trains with hard negatives (`RunConfig::hard_negatives`).
    pub negatives: Vec<Vec<Option<Encoded>>>,
    pub caption_text: Vec<Vec<String>>,
    pub image_ids: Vec<u64>,
}

impl PreparedSplit {
    /// The hard negative of caption `c` of image `i`, if it has one.
    pub fn negative(&self, i: usize, c: usize) -> Option<&Encoded> {
        self.negatives.get(i)?.get(c)?.as_ref()
    }
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
    /// Hard-negative margin loss (only in graphs built with `Capacity::negatives`).
    pub neg: f32,
    /// Relation loss (only in graphs built with `Capacity::relations`).
    pub rel: f32,
}

/// The static sizes a model is built for, fixed by the data it was trained on (saved in
/// checkpoints, so a run can be evaluated on other data of no larger graphs).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataShape {
    /// Node slots per image: the largest graph plus one spare (the unused edge slots become
    /// self-loops of padding nodes, see `PaddedCsr`).
    pub nodes_per_graph: usize,
    pub edges_per_graph: usize,
    pub pixels_per_graph: usize,
    pub pixel_channels: usize,
    /// See [`crate::data::FeatureMap::position_channel`].
    #[serde(default)]
    pub position_channel: Option<usize>,
    pub categories: usize,
    /// Width of precomputed caption features (0: captions are tokens).
    #[serde(default)]
    pub text_features: usize,
}

impl DataShape {
    /// Capacities that fit every graph of `splits`.
    pub fn of(splits: &[&PreparedSplit], categories: usize) -> Result<DataShape> {
        let first = splits
            .iter()
            .flat_map(|s| s.graphs.first())
            .next()
            .ok_or_else(|| crate::Error::invalid("data", "no images"))?;
        Ok(DataShape {
            nodes_per_graph: splits.iter().map(|s| s.max_nodes()).max().unwrap_or(1) + 1,
            edges_per_graph: splits.iter().map(|s| s.max_edges()).max().unwrap_or(1),
            pixels_per_graph: first.num_pixels(),
            pixel_channels: first.feat_dim,
            position_channel: first.position_channel,
            categories,
            text_features: splits
                .iter()
                .find_map(|s| s.captions.first().and_then(|c| c.first()))
                .map_or(0, |c| c.features.len()),
        })
    }

    /// Static sizes for the data side (`BatchCapacity`) and the model (`Capacity`).
    pub fn capacities(
        &self,
        batch: usize,
        vocab: usize,
        node_samples_per_graph: usize,
    ) -> (BatchCapacity, Capacity) {
        let data = BatchCapacity {
            batch_size: batch,
            max_nodes_per_graph: self.nodes_per_graph,
            max_edges_per_graph: self.edges_per_graph,
            pixels_per_graph: self.pixels_per_graph,
        };
        let model = Capacity {
            batch,
            nodes: data.node_cap(),
            edges: data.edge_cap(),
            pixels: data.pixel_cap(),
            pixel_channels: self.pixel_channels,
            position_channel: self.position_channel,
            categories: self.categories,
            edge_features: crate::data::graph::EDGE_FEAT_DIM,
            geometry: crate::data::graph::GEOMETRY_DIM,
            node_samples: batch * node_samples_per_graph,
            vocab,
            negatives: false,
            relations: false,
            text_features: self.text_features,
        };
        (data, model)
    }
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
    /// The per-pixel and per-node arrays move into the executor; the returned batch keeps the
    /// graph structure (CSR, masks, edges) for callers that draw or inspect it.
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
        let (n, e) = (b.node_cap, b.edge_cap);
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
        let csr = PaddedCsr::of(&b)?;
        set(ex, i.graph.row_ptr, Tensor::new([n + 1], csr.row_ptr))?;
        set(ex, i.graph.src, Tensor::new([e], csr.src))?;
        set(ex, i.graph.col_ptr, Tensor::new([n + 1], csr.col_ptr))?;
        set(ex, i.graph.col_edge, Tensor::new([e], csr.col_edge))?;
        set(
            ex,
            i.edge_feats,
            Tensor::new([e, self.cap.edge_features], csr.edge_feats),
        )?;
        if let Some(u) = i.uniform_alpha {
            let alpha: Vec<f32> = csr
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

    /// Sets the caption inputs: one encoded caption per slot (missing slots: [CLS] only).
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
    let want = ex.graph().dtype(v);
    if t.dtype() == want {
        ex.set(v, &t)
    } else {
        ex.set(v, &t.to_dtype(want)?)
    }
}

/// The batch graph with every edge slot used: the GAT/aggregation ops take a CSR whose
/// edge count is exactly the edge capacity, so the unused slots become self-loops of padding
/// nodes (spread over all of them, so no node gets a long row). Padding nodes are isolated
/// from real ones, and nothing reads their outputs.
struct PaddedCsr {
    row_ptr: Vec<i32>,
    src: Vec<i32>,
    col_ptr: Vec<i32>,
    col_edge: Vec<i32>,
    edge_feats: Vec<f32>,
    in_degree_of_edge: Vec<usize>,
}

impl PaddedCsr {
    fn of(b: &GraphBatch) -> Result<PaddedCsr> {
        let (n, cap, real) = (b.node_cap, b.edge_cap, b.num_edges);
        let fw = b.edge_feats.len() / cap.max(1);
        let pads: Vec<usize> = (0..n).filter(|&v| !b.node_real(v)).collect();
        let spare = cap - real;
        if spare > 0 && pads.is_empty() {
            return Err(crate::Error::invalid("batch", "no padding node to hold unused edge slots (node capacity must exceed the largest graph)"));
        }
        let mut degree: Vec<usize> = (0..n)
            .map(|v| (b.row_ptr[v + 1] - b.row_ptr[v]) as usize)
            .collect();
        for (k, &p) in pads.iter().enumerate() {
            degree[p] = spare / pads.len() + usize::from(k < spare % pads.len());
        }
        let mut row_ptr = vec![0i32; n + 1];
        for v in 0..n {
            row_ptr[v + 1] = row_ptr[v] + degree[v] as i32;
        }
        let mut src = vec![0i32; cap];
        let mut edge_feats = vec![0f32; cap * fw];
        let mut in_degree_of_edge = vec![1usize; cap];
        for v in 0..n {
            let (lo, hi) = (row_ptr[v] as usize, row_ptr[v + 1] as usize);
            in_degree_of_edge[lo..hi].fill(degree[v].max(1));
            if b.node_real(v) {
                let old = b.row_ptr[v] as usize;
                src[lo..hi].copy_from_slice(&b.src[old..old + hi - lo]);
                edge_feats[lo * fw..hi * fw]
                    .copy_from_slice(&b.edge_feats[old * fw..(old + hi - lo) * fw]);
            } else {
                src[lo..hi].fill(v as i32);
            }
        }
        // CSC: counting sort of edge ids by source (ascending ids inside a group).
        let mut col_ptr = vec![0i32; n + 1];
        for &s in &src {
            col_ptr[s as usize + 1] += 1;
        }
        for v in 0..n {
            col_ptr[v + 1] += col_ptr[v];
        }
        let mut next: Vec<i32> = col_ptr[..n].to_vec();
        let mut col_edge = vec![0i32; cap];
        for (k, &s) in src.iter().enumerate() {
            col_edge[next[s as usize] as usize] = k as i32;
            next[s as usize] += 1;
        }
        Ok(PaddedCsr {
            row_ptr,
            src,
            col_ptr,
            col_edge,
            edge_feats,
            in_degree_of_edge,
        })
    }
}
