//! Training: data → batches, the training loop, checkpoints, metrics, retrieval, plots.

pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod plot;
pub mod retrieval;
pub mod schedule;
pub mod show;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::{load_engine, train, Engine, TrainOptions, TrainSummary};
