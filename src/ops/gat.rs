//! Multi-head GAT with edge softmax (DESIGN §3.2, PyG `GATConv` semantics), its attention
//! export, and the fixed-attention aggregation used by the SNN branch (§3.3).

use super::{Meta, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatAttrs {
    /// LeakyReLU slope of the attention logits (PyG default 0.2).
    pub negative_slope: f64,
    /// An edge bias `be[E, H]` is the 4th input.
    pub edge_bias: bool,
}

impl Default for GatAttrs {
    fn default() -> Self {
        GatAttrs {
            negative_slope: 0.2,
            edge_bias: false,
        }
    }
}

pub(crate) fn infer(op: &Op, _inputs: &[Meta]) -> Result<Vec<Meta>> {
    Err(Error::Unsupported {
        backend: "graph",
        what: format!("{}: shape rule not implemented yet", op.name()),
    })
}

pub(crate) fn grad(
    _g: &mut Graph,
    node: &Node,
    _og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    Err(Error::graph(format!(
        "{} has no gradient rule yet",
        node.op.name()
    )))
}
