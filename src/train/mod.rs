//! Training: data → batches, the training loop, checkpoints, metrics, retrieval, plots.

pub mod plot;
pub mod retrieval;
pub mod schedule;
