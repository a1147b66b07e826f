//! Training: schedule, metrics, checkpoints, retrieval evaluation, plots.

pub mod plot;
pub mod retrieval;
pub mod schedule;
