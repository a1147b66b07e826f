//! The GSHN model (DESIGN §4) written as a graph of ops.

mod branches;
pub mod config;
pub mod gshn;
mod losses;
pub mod text;

pub use config::{ModelConfig, TextSource, Variant};
pub use gshn::{Capacity, Gshn, ModelInputs, ModelOutputs};
