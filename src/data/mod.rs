//! Data side of GSHN (DESIGN §4.1, §5), readable straight through:
//!
//! panoptic PNG + captions ([`coco`]) → segments ([`coco::Sample`]) → pixel features
//! ([`features`]) → segment graph ([`graph`]) → padded disjoint batch ([`batch`]), the layout
//! the model's graph inputs take; captions → token ids ([`text`]). [`prepare()`] decodes a whole
//! split once and fixes the batch sizes ([`DataShape`]). [`synth`] writes the built-in
//! synthetic relational scenes in the same COCO layout.
//!
//! Every output is a plain `Vec<f32>` / `Vec<i32>` with its layout documented; the batch is
//! checked with the graph ops' own CSR / CSC rules. Every failure is a [`DataError`] naming
//! the file (or the batch) and what is wrong; bad input never panics.

pub mod batch;
pub mod coco;
pub mod error;
pub mod features;
pub mod graph;
pub mod prepare;
pub mod rng;
pub mod synth;
pub mod text;

pub use batch::{collate, BatchCapacity, GraphBatch};
pub use coco::{
    Category, CrowdPolicy, Dataset, LoadOptions, LoadStats, Sample, Segment, SegmentMap, Skipped,
    SplitPaths, SplitPathsOverride,
};
pub use error::{DataError, Result};
pub use features::{
    builtin_features, load_feature_map, load_text_features, FeatureConfig, FeatureMap,
};
pub use graph::{build_scene_graph, graph_from_sample, GraphConfig, SceneGraph};
pub use prepare::{prepare, DataShape, PrepareOptions, PreparedSplit};
pub use synth::{write_synthetic, SynthStats};
pub use text::{tokenize, Encoded, Vocab};
