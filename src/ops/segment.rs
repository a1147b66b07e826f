//! Segment mean pooling (DESIGN §3.5).

use super::{Meta, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};

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
