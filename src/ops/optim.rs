//! AdamW with a fused update and global-norm gradient clipping.

use super::{Meta, Op};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub(crate) fn infer(op: &Op, _inputs: &[Meta]) -> Result<Vec<Meta>> {
    Err(Error::Unsupported {
        backend: "graph",
        what: format!("{}: shape rule not implemented yet", op.name()),
    })
}
