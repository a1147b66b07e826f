//! Symmetric and one-directional InfoNCE (DESIGN §3.4, open_clip `ClipLoss` semantics).

use super::{Meta, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceAttrs {
    /// Both directions (a→p and p→a); false = a→p only (STL).
    pub symmetric: bool,
    /// Tile edge of the chunked evaluation; 0 = dense (materialises B×B, for reference).
    pub chunk: usize,
}

impl Default for InfoNceAttrs {
    fn default() -> Self {
        InfoNceAttrs {
            symmetric: true,
            chunk: 256,
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
