//! Symbolic reverse-mode differentiation: gradient ops are appended to the same graph.

use super::{Graph, NodeId, Part, ValueId, ValueKind};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;
use std::collections::HashMap;

impl Graph {
    /// Appends the ops that compute d`loss`/d`wrt` and returns one gradient value per `wrt`
    /// (a zero-filled value where the loss does not depend on it). `loss` must be a float
    /// value with one element.
    pub fn backward(&mut self, loss: ValueId, wrt: &[ValueId]) -> Result<Vec<ValueId>> {
        // Ids from another graph are an error here, not an index out of range below.
        for &w in wrt {
            self.meta(w)?;
        }
        let loss_meta = self.meta(loss)?.clone();
        if loss_meta.shape.numel() != 1 || !loss_meta.dtype.is_float() {
            return Err(Error::graph(format!(
                "backward needs a float loss with one element, got {:?} {:?}",
                loss_meta.dtype, loss_meta.shape
            )));
        }
        let forward_nodes = self.nodes.len();

        // Values through which wrt can influence anything (forward sweep) …
        let mut from_wrt = vec![false; self.values.len()];
        for &w in wrt {
            from_wrt[w.0 as usize] = true;
        }
        for node in &self.nodes {
            if node.inputs.iter().any(|v| from_wrt[v.0 as usize])
                && !matches!(node.op, Op::StopGradient)
            {
                for o in &node.outputs {
                    from_wrt[o.0 as usize] = true;
                }
            }
        }
        // … and values that influence the loss (backward sweep).
        let mut to_loss = vec![false; self.values.len()];
        to_loss[loss.0 as usize] = true;
        for node in self.nodes.iter().rev() {
            if node.outputs.iter().any(|v| to_loss[v.0 as usize]) {
                for i in &node.inputs {
                    to_loss[i.0 as usize] = true;
                }
            }
        }

        let mut grads: HashMap<ValueId, ValueId> = HashMap::new();
        let forward_part = self.part;
        self.part = Part {
            name: "loss",
            backward: true,
        };
        let seed = self.push1(
            Op::Fill {
                value: 1.0,
                meta: loss_meta,
            },
            &[],
        )?;
        grads.insert(loss, seed);

        for n in (0..forward_nodes).rev() {
            let node = self.nodes[n].clone();
            if !node
                .outputs
                .iter()
                .any(|v| to_loss[v.0 as usize] && from_wrt[v.0 as usize])
            {
                continue;
            }
            let out_grads: Vec<Option<ValueId>> =
                node.outputs.iter().map(|v| grads.get(v).copied()).collect();
            if out_grads.iter().all(Option::is_none) {
                continue;
            }
            self.part = Part {
                backward: true,
                ..node.part
            };
            let in_grads = node.op.grad(self, &node, &out_grads)?;
            if in_grads.len() != node.inputs.len() {
                return Err(Error::graph(format!(
                    "{} gradient rule returned {} gradients for {} inputs (node {n})",
                    node.op.name(),
                    in_grads.len(),
                    node.inputs.len()
                )));
            }
            for (&input, g) in node.inputs.iter().zip(in_grads) {
                let Some(g) = g else { continue };
                if !from_wrt[input.0 as usize] || !self.dtype(input)?.is_differentiable() {
                    continue;
                }
                let (gm, im) = (self.meta(g)?, self.meta(input)?);
                // u8 spikes get their gradient in the float type they were read in
                let fits = match im.dtype {
                    DType::U8 => gm.shape == im.shape && gm.dtype.is_float(),
                    _ => gm == im,
                };
                if !fits {
                    return Err(Error::graph(format!(
                        "{} gradient for input {:?} has {:?}, the input has {:?}",
                        node.op.name(),
                        self.value(input)?.name,
                        self.meta(g)?,
                        self.meta(input)?
                    )));
                }
                let total = match grads.get(&input) {
                    Some(&prev) => self.push1(Op::Add, &[prev, g])?,
                    None => g,
                };
                grads.insert(input, total);
            }
        }

        let grads = wrt
            .iter()
            .map(|&w| match grads.get(&w) {
                Some(&g) => Ok(g),
                None => self.push1(
                    Op::Fill {
                        value: 0.0,
                        meta: self.meta(w)?.clone(),
                    },
                    &[],
                ),
            })
            .collect();
        self.part = forward_part;
        grads
    }

    /// The node that produced `v`, if it was computed.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).ok()?.kind {
            ValueKind::Computed { node, .. } => Some(node),
            _ => None,
        }
    }
}
