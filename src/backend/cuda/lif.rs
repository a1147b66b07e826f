//! CUDA: the LIF family (`src/ops/lif.rs`) on `kernels/lif.cu`: one thread per neuron, the
//! time loop inside.

use super::launch::{flat_blocks, Inputs, Kernels, Launch, Output};
use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::lif::LifBackwardArgs;
use crate::ops::{LifConfig, Op};

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    // the activations' storage: X's (the spikes may be u8) or gX's
    let dtype = match op {
        Op::Lif(_) => ins[0].dtype,
        _ => outs[0].dtype,
    };
    let k = Kernels::float(be, op, dtype)?;
    match op {
        Op::Lif(cfg) => forward(&k, cfg, ins, outs),
        Op::LifBackward { cfg, .. } => backward(&k, op, cfg, ins, outs),
        other => Err(Error::graph(format!("{} is not a LIF op", other.name()))),
    }
}

/// The neuron parameters every LIF kernel takes after `tau_ptr`, up to the reset flag.
fn neuron_args<'k>(launch: Launch<'k>, cfg: &LifConfig, tau_ptr: u64) -> Launch<'k> {
    launch
        .ptr(tau_ptr)
        .scalar(cfg.tau)
        .scalar(cfg.v_th)
        .scalar(cfg.v_rest())
        .flag(cfg.v_reset.is_some())
        .flag(cfg.decay_input)
}

/// The form of a LIF kernel for `steps` time steps: `_t8` / `_t16` load every step of a
/// neuron up front (kernels/lif.cu), the plain one any number of steps and the test mode.
fn for_steps(kernel: &'static str, steps: usize, cfg: &LifConfig) -> String {
    match steps {
        _ if cfg.smooth => kernel.to_string(),
        0..=8 => format!("{kernel}_t8"),
        9..=16 => format!("{kernel}_t16"),
        _ => kernel.to_string(),
    }
}

/// The forward form for `steps`, writing u8 spikes (`_u8s`) with `cfg.u8_spikes`.
fn forward_kernel(steps: usize, cfg: &LifConfig) -> String {
    let form = for_steps("lif_fwd", steps, cfg);
    match cfg.u8_spikes {
        true => format!("{form}_u8s"),
        false => form,
    }
}

/// x[T, N] (, tau) → spikes, membrane, charge.
fn forward(k: &Kernels, cfg: &LifConfig, ins: Inputs, outs: &[Output]) -> Result<()> {
    cfg.validate("lif")?;
    let (steps, n) = (ins[0].shape.at(0), ins[0].shape.at(1));
    if steps * n == 0 {
        return Ok(());
    }
    let tau_ptr = if cfg.learnable_tau { ins[1].buf.ptr } else { 0 };
    let launch = k
        .flat(&forward_kernel(steps, cfg), n)
        .input(&ins[0])
        .ptr(outs[0].ptr)
        .ptr(if cfg.membrane { outs[1].ptr } else { 0 }) // V: nullable
        .ptr(outs[2].ptr)
        .dim("T", steps)
        .dim("N", n);
    neuron_args(launch, cfg, tau_ptr)
        .flag(cfg.smooth)
        .int(cfg.surrogate.code())
        .scalar(cfg.surrogate.alpha())
        .run()
}

/// h (, gS) (, gV) (, tau) → gx (, g_tau).
fn backward(k: &Kernels, op: &Op, cfg: &LifConfig, ins: Inputs, outs: &[Output]) -> Result<()> {
    cfg.validate("lif_backward")?;
    let x = LifBackwardArgs::of(op, ins)?;
    let ptr = |v: Option<&View<CudaBuffer>>| v.map_or(0, |v| v.buf.ptr);
    let (g_spikes, g_membrane, tau_ptr) = (ptr(x.grad_spikes), ptr(x.grad_membrane), ptr(x.tau));
    let (steps, n) = (x.charge.shape.at(0), x.charge.shape.at(1));
    if steps * n == 0 {
        if cfg.learnable_tau {
            k.be.memset0(outs[1].ptr, k.elem_bytes())?;
        }
        return Ok(());
    }
    // One thread per neuron; capped at 1024 blocks only when the per-block dL/dtau partials
    // must be reproducible (learnable tau), since a capped grid halves the memory parallelism.
    let blocks = if cfg.learnable_tau {
        n.div_ceil(256).clamp(1, 1024)
    } else {
        flat_blocks(n) as usize
    };
    let partials = if cfg.learnable_tau {
        // f64 partials: dL/dtau sums T·N terms of both signs (kernels/lif.cu).
        k.be.scratch(&[blocks * std::mem::size_of::<f64>()])?[0]
    } else {
        0
    };
    let launch = k
        .grid(&for_steps("lif_bwd", steps, cfg), blocks, 1)
        .input(x.charge)
        .ptr(g_spikes)
        .ptr(g_membrane)
        .ptr(outs[0].ptr)
        .ptr(partials)
        .dim("T", steps)
        .dim("N", n);
    neuron_args(launch, cfg, tau_ptr)
        .flag(cfg.detach_reset)
        .int(cfg.surrogate.code())
        .scalar(cfg.surrogate.alpha())
        .flag(cfg.smooth)
        .run()?;
    if cfg.learnable_tau {
        k.grid("lif_gtau_reduce", 1, 1)
            .ptr(partials)
            .dim("blocks", blocks)
            .ptr(outs[1].ptr)
            .run()?;
    }
    Ok(())
}
