//! # gshn — Graph Spiking Hybrid Networks
//!
//! A graph-of-ops engine with CPU and CUDA backends, the GSHN model and its training.
//! The contracts are in DESIGN.md (shipped beside the crate as `../shared/DESIGN.md`).

pub mod backend;
pub mod capi;
pub mod data;
pub mod error;
pub mod fused;
pub mod graph;
pub mod model;
pub mod opcli;
pub mod ops;
pub mod tensor;
pub mod train;
pub mod util;

pub use backend::{Backend, CpuBackend};
pub use error::{Error, Result};
pub use graph::{Executor, Graph, ValueId};
pub use tensor::{DType, Meta, Shape, Tensor};
