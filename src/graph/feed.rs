//! Feeding an executor the values that op builders declare: a graph's index inputs, the
//! optimizer's state and hyper-parameters. These run-time helpers live beside the executor, not
//! in `src/ops`, which describes ops and never runs them.

use super::Executor;
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::optim::OptimizerValues;
use crate::ops::{CsrGraph, GraphInputs};
use crate::tensor::{DType, Tensor};

impl GraphInputs {
    /// Feeds a host graph into an executor.
    pub fn feed<B: Backend>(&self, ex: &mut Executor<B>, graph: &CsrGraph) -> Result<()> {
        ex.set(self.row_ptr, &graph.row_ptr)?;
        ex.set(self.src, &graph.src)?;
        ex.set(self.col_ptr, &graph.col_ptr)?;
        ex.set(self.col_edge, &graph.col_edge)
    }
}

impl OptimizerValues {
    /// Sets every moment to zero (a fresh optimizer); call once before the first run.
    pub fn zero_state<B: Backend>(&self, ex: &mut Executor<B>) -> Result<()> {
        for &s in self.m.iter().chain(&self.v) {
            let meta = ex.graph().meta(s)?.clone();
            ex.set(s, &Tensor::zeros(meta.shape, meta.dtype))?;
        }
        Ok(())
    }

    /// Feeds `hyper = (lr, step)` for the next run (`step` is 1-based).
    pub fn set_hyper<B: Backend>(&self, ex: &mut Executor<B>, lr: f64, step: u64) -> Result<()> {
        let t = match ex.graph().dtype(self.hyper)? {
            DType::F32 => Tensor::new([2], vec![lr as f32, step as f32])?,
            _ => Tensor::new([2], vec![lr, step as f64])?,
        };
        ex.set(self.hyper, &t)
    }
}
