//! Helpers shared by the integration tests that train on the synthetic data.

use gshn::train::{RunConfig, TrainOptions};
use std::path::Path;

/// A model and schedule small enough to train in a test.
pub fn tiny_config() -> RunConfig {
    let mut c = RunConfig::default();
    c.model.dim = 16;
    c.model.heads = 2;
    c.model.category_dim = 4;
    c.model.time_steps = 3;
    c.model.text.layers = 1;
    c.model.text.heads = 2;
    c.model.text.max_len = 10;
    c.train.batch_size = 8;
    c.train.epochs = 2;
    c.train.warmup_steps = 2;
    c.train.pretrain_epochs = 1;
    c.train.log_every = 1;
    c
}

/// Options of a fresh, quiet training run on `data`, written to `data/out`.
#[allow(dead_code)] // not every test binary trains
pub fn fresh_run(data: &Path, out: &str) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        out: data.join(out),
        resume: false,
        overwrite: false,
        epochs: None,
        quiet: true,
        stop_after_steps: None,
        resume_config: None,
        profile: false,
        cuda_graph: true,
    }
}
