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

pub use executor::Executor;
pub use params::{initial_values, Init, ParamSet, ParamSpec};
pub use plan::{MemoryReport, Plan};

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Meta, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Fed by the caller before each run.
    Input,
    /// Kept by the executor across runs: parameters (`trainable`) and optimizer state.
    Persistent { trainable: bool },
    /// Output `index` of `node`.
    Computed { node: NodeId, index: usize },
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub meta: Meta,
    pub kind: ValueKind,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    values: Vec<Value>,
    nodes: Vec<Node>,
}

impl Graph {
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
            .map(|&v| self.try_meta(v).cloned())
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
        });
        Ok(self.nodes.last().unwrap().outputs.clone())
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

    pub fn values(&self) -> &[Value] {
        &self.values
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Value `v` of this graph. Panics on an id from another graph; [`Graph::try_meta`] is
    /// the checked form for ids that come from elsewhere.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }
    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n.0 as usize]
    }
    /// The meta of `v` (panics like [`Graph::value`]).
    pub fn meta(&self, v: ValueId) -> &Meta {
        &self.value(v).meta
    }
    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.value(v).meta.shape
    }
    pub fn dtype(&self, v: ValueId) -> DType {
        self.value(v).meta.dtype
    }
    /// The meta of `v`, or an error when `v` is not a value of this graph.
    pub fn try_meta(&self, v: ValueId) -> Result<&Meta> {
        self.values
            .get(v.0 as usize)
            .map(|x| &x.meta)
            .ok_or_else(|| Error::graph(format!("unknown value {v:?} (from another graph?)")))
    }
    /// The trainable parameters, in creation order.
    pub fn params(&self) -> Vec<ValueId> {
        self.ids_where(|k| matches!(k, ValueKind::Persistent { trainable: true }))
    }
    pub fn inputs(&self) -> Vec<ValueId> {
        self.ids_where(|k| matches!(k, ValueKind::Input))
    }
    fn ids_where(&self, f: impl Fn(&ValueKind) -> bool) -> Vec<ValueId> {
        (0..self.values.len() as u32)
            .map(ValueId)
            .filter(|&v| f(&self.value(v).kind))
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
