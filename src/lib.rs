//! # gshn — Graph Spiking Hybrid Networks
//!
//! A graph-of-ops engine with CPU and CUDA backends, the GSHN model and its training. The math
//! of every op is on its variant of [`ops::Op`] and in its family's module of [`ops`].
//!
//! Features: `cuda` (the CUDA backend), `model` (the GSHN model, its data readers, training,
//! evaluation and plots) and `cli` (the `gshn` program); all on by default. With
//! `default-features = false` the crate is the core: [`tensor`], [`ops`], [`backend`],
//! [`graph`] (executor, autodiff, parameters), [`fused`] (the fused ops, called eagerly),
//! [`bench`](mod@bench) (the kernel benchmark), [`capi`] and [`opcli`].
//!
//! One fused op, eagerly — [`fused`] has one function per op form, on borrowed views:
//!
//! ```
//! use gshn::fused::{infonce_forward, lif_forward};
//! use gshn::ops::{InfoNceAttrs, LifConfig};
//! use gshn::{CpuBackend, Tensor};
//!
//! let x = Tensor::new([2, 3], vec![0.4f32, 1.2, 2.0, 0.9, 0.1, 2.0])?; // [T, N]
//! let lif = lif_forward(&CpuBackend, x.view(), None, &LifConfig::default())?;
//! assert_eq!(lif.spikes.into_tensor()?.data::<f32>()?, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
//!
//! let a = Tensor::new([2, 2], vec![1.0f32, 0.0, 0.0, 1.0])?; // rows: the positive pairs
//! let ls = Tensor::scalar(0.0f32); // logit scale: s = e^0 = 1
//! let nce = infonce_forward(&CpuBackend, a.view(), a.view(), ls.view(), InfoNceAttrs::default())?;
//! let loss = nce.loss.into_tensor()?.data::<f32>()?[0];
//! assert!((loss - (1.0 + 1f32.exp()).ln() + 1.0).abs() < 1e-6); // LSE(1, 0) − 1
//! # Ok::<(), gshn::Error>(())
//! ```
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
