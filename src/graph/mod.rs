//! The static graph of ops (DESIGN §2).
//!
//! A model is written once as a `Graph`: values (inputs fed per step, persistent parameters
//! and optimizer state, computed intermediates) and nodes (ops in insertion order, which is a
//! topological order because a node can only use values that already exist). `backward`
//! appends the gradient ops to the same graph, so forward, backward and the optimizer update
//! form one graph that an `Executor` runs with one memory plan.

mod autodiff;
mod executor;
mod feed;
pub mod gradcheck;
pub mod params;
mod plan;
pub mod profile;

pub use executor::Executor;
pub use params::{initial_values, Init, ParamSet, ParamSpec};
pub use plan::{MemoryReport, Plan};

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Meta, Shape};

/// A value of a graph: its position in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// A node of a graph: its position in [`Graph::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Fed by the caller before each run.
    Input,
    /// Kept by the executor across runs: parameters and optimizer state.
    Persistent {
        /// A parameter (in [`Graph::params`]), as opposed to optimizer state.
        trainable: bool,
    },
    /// Output `index` of `node`.
    Computed {
        /// The node that computes it.
        node: NodeId,
        /// Which of the node's outputs it is.
        index: usize,
    },
}

/// One value of a graph.
#[derive(Clone, Debug)]
pub struct Value {
    /// Its name: given for inputs and parameters, `op#node.output` for computed values.
    pub name: String,
    /// Shape and dtype.
    pub meta: Meta,
    /// Where it comes from.
    pub kind: ValueKind,
}

/// One node of a graph: an op applied to values.
#[derive(Clone, Debug)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Its inputs, in the op's positional order.
    pub inputs: Vec<ValueId>,
    /// Its outputs, in the op's order.
    pub outputs: Vec<ValueId>,
    /// The part of the model it belongs to (profiles group by it).
    pub part: Part,
}

/// Which part of a model a node belongs to, for profiles: the builder names it with
/// [`Graph::set_part`]; a gradient node has the part of the node it differentiates, with
/// `backward` set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    /// E.g. `gat`, `snn`, `text`, `losses`, `optimizer` ("" until a builder names one).
    pub name: &'static str,
    /// A node of the backward pass.
    pub backward: bool,
}

/// A static graph of ops: built once with the builder methods, differentiated with
/// [`Graph::backward`], run by an [`Executor`].
#[derive(Clone, Debug, Default)]
pub struct Graph {
    values: Vec<Value>,
    nodes: Vec<Node>,
    part: Part,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_value(&mut self, name: String, meta: Meta, kind: ValueKind) -> ValueId {
        self.values.push(Value { name, meta, kind });
        ValueId(self.values.len() as u32 - 1)
    }

    /// A value fed before each run.
    pub fn input(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> ValueId {
        self.add_value(name.into(), Meta::new(shape, dtype), ValueKind::Input)
    }

    /// A trainable parameter, kept by the executor across runs.
    pub fn param(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> ValueId {
        self.add_value(
            name.into(),
            Meta::new(shape, dtype),
            ValueKind::Persistent { trainable: true },
        )
    }

    /// Non-trainable persistent state (optimizer moments), kept across runs.
    pub fn state(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> ValueId {
        self.add_value(
            name.into(),
            Meta::new(shape, dtype),
            ValueKind::Persistent { trainable: false },
        )
    }

    /// Appends a node; checks its inputs' shapes and returns its outputs.
    pub fn push(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let metas = inputs
            .iter()
            .map(|&v| self.meta(v).cloned())
            .collect::<Result<Vec<_>>>()?;
        let out_metas = op.infer(&metas)?;
        let node = NodeId(self.nodes.len() as u32);
        let outputs = out_metas
            .into_iter()
            .enumerate()
            .map(|(index, meta)| {
                let name = format!("{}#{}.{}", op.name(), node.0, index);
                self.add_value(name, meta, ValueKind::Computed { node, index })
            })
            .collect();
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs,
            part: self.part,
        });
        Ok(self.nodes.last().unwrap().outputs.clone())
    }

    /// Names the part of the model the nodes appended from now on belong to (see [`Part`]).
    pub fn set_part(&mut self, name: &'static str) {
        self.part = Part {
            name,
            backward: false,
        };
    }

    /// Appends a single-output node.
    pub fn push1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let name = op.name();
        let out = self.push(op, inputs)?;
        match out.as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::graph(format!(
                "{name} has {} outputs, expected one",
                out.len()
            ))),
        }
    }

    /// Every value, in creation order (a [`ValueId`] indexes it).
    pub fn values(&self) -> &[Value] {
        &self.values
    }
    /// Every node, in insertion order, which is a topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Value `v` of this graph, or an error when `v` is not one of its values (an id from
    /// another graph).
    pub fn value(&self, v: ValueId) -> Result<&Value> {
        self.values
            .get(v.0 as usize)
            .ok_or_else(|| Error::graph(format!("unknown value {v:?} (from another graph?)")))
    }
    /// Node `n` of this graph, or an error when it has none of that id.
    pub fn node(&self, n: NodeId) -> Result<&Node> {
        self.nodes
            .get(n.0 as usize)
            .ok_or_else(|| Error::graph(format!("unknown node {n:?} (from another graph?)")))
    }
    /// The shape and dtype of `v` (an error like [`Graph::value`]).
    pub fn meta(&self, v: ValueId) -> Result<&Meta> {
        Ok(&self.value(v)?.meta)
    }
    /// The shape of `v` (an error like [`Graph::value`]).
    pub fn shape(&self, v: ValueId) -> Result<&Shape> {
        Ok(&self.value(v)?.meta.shape)
    }
    /// The dtype of `v` (an error like [`Graph::value`]).
    pub fn dtype(&self, v: ValueId) -> Result<DType> {
        Ok(self.value(v)?.meta.dtype)
    }
    /// The trainable parameters, in creation order.
    pub fn params(&self) -> Vec<ValueId> {
        self.ids_where(|k| matches!(k, ValueKind::Persistent { trainable: true }))
    }
    /// The values fed before each run, in creation order.
    pub fn inputs(&self) -> Vec<ValueId> {
        self.ids_where(|k| matches!(k, ValueKind::Input))
    }
    fn ids_where(&self, f: impl Fn(&ValueKind) -> bool) -> Vec<ValueId> {
        (0..self.values.len() as u32)
            .zip(&self.values)
            .filter(|(_, v)| f(&v.kind))
            .map(|(i, _)| ValueId(i))
            .collect()
    }
    /// Find a value by name (parameters and inputs are named by the model).
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }
}
