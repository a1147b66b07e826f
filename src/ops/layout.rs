//! Layout ops: reshape, permute, concat, slice, gather/scatter of rows, dropout.

use super::{Meta, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::Shape;

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    Err(Error::Unsupported {
        backend: "graph",
        what: format!(
            "{}: shape rule not implemented yet ({} inputs)",
            op.name(),
            inputs.len()
        ),
    })
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let x = &node.inputs;
    let Some(gy) = og[0] else {
        return Ok(vec![None; x.len()]);
    };
    Ok(match &node.op {
        Op::Reshape(_) => vec![Some(g.reshape(gy, g.shape(x[0]).clone())?)],
        Op::Permute(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.push1(Op::Permute(inv), &[gy])?)]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut out = Vec::new();
            for &xi in x {
                let len = g.shape(xi).dim(*axis);
                out.push(Some(g.push1(
                    Op::Slice {
                        axis: *axis,
                        start,
                        len,
                    },
                    &[gy],
                )?));
                start += len;
            }
            out
        }
        Op::Slice { axis, start, .. } => {
            let full = g.shape(x[0]).clone();
            vec![Some(g.push1(
                Op::SliceBackward {
                    axis: *axis,
                    start: *start,
                    full,
                },
                &[gy],
            )?)]
        }
        Op::Gather => {
            let rows = g.shape(x[0]).dim(0);
            vec![Some(g.push1(Op::ScatterAdd { rows }, &[gy, x[1]])?), None]
        }
        Op::Dropout { p } => vec![
            Some(g.push1(Op::DropoutBackward { p: *p }, &[gy, x[1]])?),
            None,
        ],
        op => return Err(Error::graph(format!("{} has no gradient rule", op.name()))),
    })
}

impl Graph {
    pub fn reshape(&mut self, x: ValueId, shape: impl Into<Shape>) -> Result<ValueId> {
        let shape = shape.into();
        if self.shape(x) == &shape {
            return Ok(x);
        }
        self.push1(Op::Reshape(shape), &[x])
    }
}
