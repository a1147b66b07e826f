//! A split decoded once for training or evaluation: every image's scene graph and its encoded
//! captions (and hard negatives), and the static sizes ([`DataShape`]) the batches are built for.

use rayon::prelude::*;

use super::coco::Dataset;
use super::error::{DataError, Result};
use super::features::{load_text_features, FeatureConfig};
use super::graph::{graph_from_sample, GraphConfig, SceneGraph};
use super::synth::grammar::exchange_objects;
use super::text::{Encoded, Vocab};
use super::BatchCapacity;
use crate::util::progress::progress;

/// A split decoded once: one scene graph and the encoded captions of every image.
pub struct PreparedSplit {
    /// One scene graph per image, in dataset order.
    pub graphs: Vec<SceneGraph>,
    /// Per image, its encoded captions.
    pub captions: Vec<Vec<Encoded>>,
    /// Per caption, its hard negative (`synth::grammar::exchange_objects`) when it has one;
    /// empty per image unless the split is prepared with [`PrepareOptions::hard_negatives`].
    pub negatives: Vec<Vec<Option<Encoded>>>,
    /// Per image, its raw caption strings (parallel to `captions`).
    pub caption_text: Vec<Vec<String>>,
    /// Per image, its COCO image id.
    pub image_ids: Vec<u64>,
}

impl PreparedSplit {
    /// The hard negative of caption `c` of image `i`, if it has one.
    pub fn negative(&self, i: usize, c: usize) -> Option<&Encoded> {
        self.negatives.get(i)?.get(c)?.as_ref()
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.graphs.len()
    }
    /// `true` when the split has no image.
    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }
    /// Edges of the largest graph (1 if the split is empty).
    pub fn max_edges(&self) -> usize {
        self.graphs.iter().map(|g| g.num_edges()).max().unwrap_or(1)
    }
    /// Nodes of the largest graph, global node included (1 if empty).
    pub fn max_nodes(&self) -> usize {
        self.graphs.iter().map(|g| g.num_nodes).max().unwrap_or(1)
    }
}

/// How [`prepare`] turns samples into graphs and token ids (a run config's data and text parts).
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// How segments become graph nodes and edges.
    pub graph: GraphConfig,
    /// The built-in feature extractor's grid.
    pub features: FeatureConfig,
    /// Tokens per caption.
    pub max_len: usize,
    /// Captions come with precomputed features (the split's text-feature file).
    pub text_features: bool,
    /// Encode each caption's hard negative too.
    pub hard_negatives: bool,
    /// Skip samples that fail to decode instead of failing.
    pub skip_bad: bool,
}

/// Decodes every image of a split into its scene graph and encodes its captions (in
/// parallel, with a progress bar).
pub fn prepare(
    ds: &Dataset,
    opts: &PrepareOptions,
    vocab: &Vocab,
    label: &str,
) -> Result<PreparedSplit> {
    let text_features = match opts.text_features {
        true => Some(load_text_features(ds)?),
        false => None,
    };
    let bar = progress(ds.len() as u64, &format!("{label}: decoding"));
    let ncat = ds.num_categories();
    let results: Vec<Result<_>> = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let s = ds.get(i)?;
            let g = graph_from_sample(&s, ncat, &opts.graph, &opts.features)?;
            bar.inc(1);
            let max_len = opts.max_len;
            let enc = match &text_features {
                Some(f) => f[i]
                    .iter()
                    .zip(&s.captions)
                    .map(|(f, c)| Encoded {
                        features: f.clone(),
                        ..vocab.encode(c, max_len)
                    })
                    .collect(),
                None => s
                    .captions
                    .iter()
                    .map(|c| vocab.encode(c, max_len))
                    .collect(),
            };
            let neg = match opts.hard_negatives {
                true => s
                    .captions
                    .iter()
                    .map(|c| exchange_objects(c).map(|n| vocab.encode(&n, max_len)))
                    .collect(),
                false => Vec::new(),
            };
            Ok((g, enc, neg, s.captions, s.image_id))
        })
        .collect();
    bar.finish_and_clear();
    let mut p = PreparedSplit {
        graphs: vec![],
        captions: vec![],
        negatives: vec![],
        caption_text: vec![],
        image_ids: vec![],
    };
    // Samples that only fail when decoded are skipped here under `data.load.skip_bad`.
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok((g, enc, neg, text, id)) => {
                p.graphs.push(g);
                p.captions.push(enc);
                p.negatives.push(neg);
                p.caption_text.push(text);
                p.image_ids.push(id);
            }
            Err(e) if opts.skip_bad => skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if !skipped.is_empty() {
        log::warn!(
            "{label}: skipped {} bad samples (data.load.skip_bad), e.g. {}",
            skipped.len(),
            skipped[..skipped.len().min(3)].join("; ")
        );
    }
    Ok(p)
}

/// The static sizes a model is built for, fixed by the data it was trained on (saved in
/// checkpoints, so a run can be evaluated on other data of no larger graphs). The one source
/// of every batch size: [`DataShape::batch_capacity`] derives the data side, and
/// `model::Capacity::of_batch` the model side from that.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataShape {
    /// Node slots per image: the largest graph plus one spare (the unused edge slots become
    /// self-loops of padding nodes, see [`super::batch`]).
    pub nodes_per_graph: usize,
    /// Edge slots per image: the most edges of any graph.
    pub edges_per_graph: usize,
    /// Feature cells P per image.
    pub pixels_per_graph: usize,
    /// Channels C of a feature cell.
    pub pixel_channels: usize,
    /// See [`crate::data::FeatureMap::position_channel`].
    #[serde(default)]
    pub position_channel: Option<usize>,
    /// Category count of the dataset (the global node's category is this value).
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
            .ok_or_else(|| DataError::contract("data shape: no images"))?;
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

    /// Checks a shape read from a checkpoint before anything is sized by it: every field within
    /// what data gshn prepares can produce (so a corrupt or hostile file cannot ask for terabytes).
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::{FeatureConfig, GraphConfig};
        let max_cells = FeatureConfig::MAX_SIDE * FeatureConfig::MAX_SIDE;
        let max_nodes = GraphConfig::MAX_NODES + 1;
        for (key, v, lo, hi) in [
            ("nodes_per_graph", self.nodes_per_graph, 2, max_nodes),
            (
                "edges_per_graph",
                self.edges_per_graph,
                0,
                max_nodes * max_nodes,
            ),
            ("pixels_per_graph", self.pixels_per_graph, 1, max_cells),
            ("pixel_channels", self.pixel_channels, 1, Self::MAX_WIDTH),
            ("categories", self.categories, 1, Self::MAX_WIDTH),
            ("text_features", self.text_features, 0, Self::MAX_WIDTH),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("data_shape.{key} must be in {lo}..={hi}, got {v}"));
            }
        }
        // The position channel holds x; y is the next one.
        if self
            .position_channel
            .is_some_and(|c| c + 1 >= self.pixel_channels)
        {
            return Err(format!(
                "data_shape.position_channel {:?}: channels x, y are not among the {} pixel channels",
                self.position_channel, self.pixel_channels
            ));
        }
        Ok(())
    }

    /// The widest feature vector or category table a shape may declare.
    pub const MAX_WIDTH: usize = 1 << 16;

    /// The capacities of a batch of `batch` images.
    pub fn batch_capacity(&self, batch: usize) -> BatchCapacity {
        BatchCapacity {
            batch_size: batch,
            max_nodes_per_graph: self.nodes_per_graph,
            max_edges_per_graph: self.edges_per_graph,
            pixels_per_graph: self.pixels_per_graph,
        }
    }
}
