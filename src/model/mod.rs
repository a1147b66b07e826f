//! The GSHN model (DESIGN §4) written as a graph of ops.

pub mod config;
pub mod gshn;
pub mod params;
pub mod text;

pub use config::{ModelConfig, TextSource, Variant};
pub use gshn::{Capacity, Gshn, ModelInputs, ModelOutputs};
