//! Helpers shared by the integration tests that train on the synthetic data.

use gshn::train::RunConfig;

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
