//! Training: batches fed to the model, the engine that runs it, the training loop, evaluation,
//! checkpoints, metrics, retrieval, plots.

pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod dump;
pub mod engine;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod retrieval;
pub mod scaler;
pub mod schedule;
pub mod show;
pub mod trainer;

pub use config::RunConfig;
pub use engine::{load_engine, Engine};
pub use trainer::{train, TrainOptions, TrainSummary};
