//! CUDA: the optimizer family (`src/ops/optim.rs`) on `kernels/optim.cu`.

use super::launch::{Inputs, Kernels, Output};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::ops::Op;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let k = Kernels::float(be, op, outs[0].dtype)?;
    match op {
        Op::ClipScale { max_norm } => {
            // g₀, g₁, … → scale[], norm[]: one slice of partial squared norms (f64) per gradient.
            let parts: Vec<usize> = ins
                .iter()
                .map(|v| v.shape.numel().div_ceil(2048).clamp(1, 256))
                .collect();
            let total: usize = parts.iter().sum();
            let f64_bytes = std::mem::size_of::<f64>();
            let s = be.scratch(&[total.max(1) * f64_bytes])?;
            let mut offset = 0usize;
            for (v, &g) in ins.iter().zip(&parts) {
                k.grid("sqnorm_partial", g, 1)
                    .input(v)
                    .dim("n", v.shape.numel())
                    .ptr(s[0] + (offset * f64_bytes) as u64)
                    .run()?;
                offset += g;
            }
            k.grid("clip_coef", 1, 1)
                .ptr(s[0])
                .dim("parts", total)
                .double(*max_norm)
                .ptr(outs[0].ptr)
                .ptr(outs[1].ptr)
                .run()
        }
        Op::AdamW(cfg) => {
            // in place: p, m, v (the outputs); inputs g, clip_scale[], hyper[2] = (lr, step)
            let n = outs[0].shape.numel();
            if n == 0 {
                return Ok(());
            }
            let s = be.scratch(&[3 * k.elem_bytes()])?;
            k.grid("adamw_coefs", 1, 1)
                .block(32)
                .input(&ins[2])
                .ptr(s[0])
                .double(cfg.beta1)
                .double(cfg.beta2)
                .double(cfg.weight_decay)
                .run()?;
            k.flat("adamw_step", n)
                .ptr(outs[0].ptr)
                .input(&ins[0])
                .ptr(outs[1].ptr)
                .ptr(outs[2].ptr)
                .dim("n", n)
                .ptr(s[0])
                .scalar(cfg.beta1)
                .scalar(1.0 - cfg.beta1)
                .scalar(cfg.beta2)
                .scalar(1.0 - cfg.beta2)
                .scalar(cfg.eps)
                .input(&ins[1])
                .run()
        }
        other => Err(Error::graph(format!(
            "{} is not an optimizer op",
            other.name()
        ))),
    }
}
