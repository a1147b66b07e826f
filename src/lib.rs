//! # gshn — Graph Spiking Hybrid Networks
//!
//! A graph-of-ops engine with CPU and CUDA backends, the GSHN model and its training.
//! The contracts are in DESIGN.md (shipped beside the crate as `../shared/DESIGN.md`).
//!
//! Features: `cuda` (the CUDA backend), `model` (the GSHN model, its data readers, training,
//! evaluation and plots) and `cli` (the `gshn` program); all on by default. With
//! `default-features = false` the crate is the core: [`tensor`], [`ops`], [`backend`],
//! [`graph`] (executor, autodiff, parameters), [`fused`], [`capi`] and [`opcli`].
//!
//! A graph is built once, differentiated symbolically and run by an [`Executor`]: here a
//! linear layer trained with AdamW, evaluated without a step by `run_forward`.
//!
//! ```
//! use gshn::graph::{initial_values, Init, ParamSet};
//! use gshn::ops::AdamWConfig;
//! use gshn::{CpuBackend, DType, Executor, Graph, Tensor};
//!
//! let mut g = Graph::new();
//! let x = g.input("x", [4, 3], DType::F32);
//! let mut ps = ParamSet::new(&mut g, DType::F32);
//! let (w, b) = ps.linear("layer", 3, 2, true);
//! let specs = ps.finish()?;
//! let y = g.linear(x, w, b)?;
//! let sq = g.mul(y, y)?;
//! let loss = g.mean(sq)?;
//! let params: Vec<_> = specs.iter().map(|s| s.id).collect();
//! let grads = g.backward(loss, &params)?;
//! let opt = g.adamw_step(&params, &grads, AdamWConfig::default(), Some(1.0))?;
//!
//! let mut ex = Executor::new(CpuBackend, g, &[loss])?;
//! for (id, t) in initial_values(&specs, DType::F32, 0)? {
//!     ex.set(id, &t)?;
//! }
//! opt.zero_state(&mut ex)?;
//! ex.set(x, &Tensor::new([4, 3], vec![0.5f32, -1.0, 0.2, 0.3, 0.8, -0.4, 1.0, 0.1, 0.6, -0.7, 0.2, 0.9])?)?;
//! ex.run_forward()?;
//! let before = ex.get(loss)?.data::<f32>()?[0];
//! for step in 1..=20 {
//!     opt.set_hyper(&mut ex, 0.05, step)?;
//!     ex.run()?;
//! }
//! ex.run_forward()?;
//! assert!(ex.get(loss)?.data::<f32>()?[0] < before);
//! # Ok::<(), gshn::Error>(())
//! ```

// Every public item is documented; CI builds the docs with `-D missing_docs`.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
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
/// Small helpers: bounded file reads, deterministic RNGs, progress bars, panic messages.
pub mod util;

pub use backend::{Backend, CpuBackend};
pub use error::{Error, Result};
pub use graph::{Executor, Graph, ValueId};
pub use tensor::{DType, Meta, Shape, Tensor};
