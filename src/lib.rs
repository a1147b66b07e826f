//! # gshn — Graph Spiking Hybrid Networks
//!
//! A graph-of-ops engine with CPU and CUDA backends, the GSHN model and its training.
//! The contracts are in DESIGN.md (shipped beside the crate as `../shared/DESIGN.md`).
//!
//! Features: `cuda` (the CUDA backend), `model` (the GSHN model, its data readers, training,
//! evaluation and plots) and `cli` (the `gshn` program); all on by default. With
//! `default-features = false` the crate is the core: [`tensor`], [`ops`], [`backend`],
//! [`graph`] (executor, autodiff, parameters), [`fused`], [`capi`] and [`opcli`].

pub mod backend;
pub mod capi;
#[cfg(feature = "model")]
pub mod data;
pub mod error;
pub mod fused;
pub mod graph;
#[cfg(feature = "model")]
pub mod model;
pub mod opcli;
pub mod ops;
pub mod tensor;
#[cfg(feature = "model")]
pub mod train;
pub mod util;

pub use backend::{Backend, CpuBackend};
pub use error::{Error, Result};
pub use graph::{Executor, Graph, ValueId};
pub use tensor::{DType, Meta, Shape, Tensor};
