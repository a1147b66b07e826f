//! Device selection (`--device auto|cpu|cuda[:N]`, DESIGN §6) and a backend that is either the
//! CPU or a CUDA device, chosen at run time.
//!
//! ```no_run
//! use gshn::backend::{AnyBackend, Device};
//! let dev: Device = "auto".parse().unwrap();
//! let backend: AnyBackend = dev.backend().unwrap(); // CUDA 0 if usable, else CPU (one stderr line)
//! ```
//! Compiles without the `cuda` feature too: then `cuda[:N]` is an error and `auto` is the CPU.

use super::{Backend, CpuBackend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Shape, Storage, Tensor};
use std::fmt;
use std::str::FromStr;

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA device 0 when a usable GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (rayon threads).
    Cpu,
    /// CUDA device by ordinal (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Device> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => {
                if let Some(n) = t.strip_prefix("cuda:") {
                    if let Ok(i) = n.parse::<usize>() {
                        return Ok(Device::Cuda(i));
                    }
                }
                Err(Error::invalid(
                    "device",
                    format!("{s:?} is not a device: use auto, cpu, cuda or cuda:N"),
                ))
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Whether a CUDA device can be used (driver library present and at least one device).
/// Never panics, even without libcuda.
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        super::cuda::device_count().is_ok_and(|n| n > 0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

impl Device {
    /// The backend for this device. `Auto` falls back to the CPU with one line on stderr saying
    /// why; `Cuda(n)` without a usable GPU is an `Error::Cuda` naming the reason.
    pub fn backend(self) -> Result<AnyBackend> {
        match self {
            Device::Cpu => Ok(AnyBackend::Cpu(CpuBackend)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => Ok(AnyBackend::Cuda(super::cuda::CudaBackend::new(i)?)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::Cuda(
                "this build of gshn has no CUDA support (built without the `cuda` feature)".into(),
            )),
            Device::Auto => {
                #[cfg(feature = "cuda")]
                match super::cuda::CudaBackend::new(0) {
                    Ok(b) => return Ok(AnyBackend::Cuda(b)),
                    Err(e) => log::info!("no usable CUDA device ({e}); running on the CPU"),
                }
                #[cfg(not(feature = "cuda"))]
                log::info!("built without CUDA support; running on the CPU");
                Ok(AnyBackend::Cpu(CpuBackend))
            }
        }
    }
}

/// The CPU or a CUDA backend, chosen at run time (`Device::backend`).
#[allow(clippy::large_enum_variant)] // one per process; boxing buys nothing
pub enum AnyBackend {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// A CUDA device (only with the `cuda` feature).
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaBackend),
}

/// A buffer of an [`AnyBackend`].
pub enum AnyBuffer {
    /// Host memory of the CPU backend.
    Cpu(Storage),
    /// Device memory of the CUDA backend (only with the `cuda` feature).
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaBuffer),
}

impl AnyBackend {
    /// Whether this is a CUDA backend.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, AnyBackend::Cpu(_))
    }
}

impl AnyBuffer {
    fn cpu(&self) -> Option<&Storage> {
        match self {
            AnyBuffer::Cpu(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    fn cpu_mut(&mut self) -> Option<&mut Storage> {
        match self {
            AnyBuffer::Cpu(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Option<&super::cuda::CudaBuffer> {
        match self {
            AnyBuffer::Cuda(s) => Some(s),
            _ => None,
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_mut(&mut self) -> Option<&mut super::cuda::CudaBuffer> {
        match self {
            AnyBuffer::Cuda(s) => Some(s),
            _ => None,
        }
    }
}

/// The views of one backend inside views of `AnyBuffer`s (an error if a buffer belongs to
/// another backend).
fn unwrap_views<'a, T>(
    views: &[View<'a, AnyBuffer>],
    get: fn(&AnyBuffer) -> Option<&T>,
) -> Result<Vec<View<'a, T>>> {
    views
        .iter()
        .map(|v| {
            get(v.buf)
                .map(|buf| View {
                    buf,
                    shape: v.shape,
                    dtype: v.dtype,
                })
                .ok_or_else(mismatch)
        })
        .collect()
}

fn unwrap_views_mut<'a, 'b, T>(
    views: &'a mut [ViewMut<'b, AnyBuffer>],
    get: fn(&mut AnyBuffer) -> Option<&mut T>,
) -> Result<Vec<ViewMut<'a, T>>> {
    views
        .iter_mut()
        .map(|v| {
            let (shape, dtype) = (v.shape, v.dtype);
            get(&mut *v.buf)
                .map(|buf| ViewMut { buf, shape, dtype })
                .ok_or_else(mismatch)
        })
        .collect()
}

fn mismatch() -> Error {
    Error::graph("a buffer of another backend was passed to this backend")
}

impl Backend for AnyBackend {
    type Buffer = AnyBuffer;

    fn name(&self) -> String {
        match self {
            AnyBackend::Cpu(b) => b.name(),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.name(),
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<AnyBuffer> {
        match self {
            AnyBackend::Cpu(b) => b.alloc(dtype, len).map(AnyBuffer::Cpu),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.alloc(dtype, len).map(AnyBuffer::Cuda),
        }
    }

    fn write(&self, dst: &mut AnyBuffer, src: &Tensor) -> Result<()> {
        match (self, dst) {
            (AnyBackend::Cpu(b), AnyBuffer::Cpu(d)) => b.write(d, src),
            #[cfg(feature = "cuda")]
            (AnyBackend::Cuda(b), AnyBuffer::Cuda(d)) => b.write(d, src),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }

    fn read(&self, src: &AnyBuffer, shape: &Shape, dtype: DType) -> Result<Tensor> {
        match (self, src) {
            (AnyBackend::Cpu(b), AnyBuffer::Cpu(s)) => b.read(s, shape, dtype),
            #[cfg(feature = "cuda")]
            (AnyBackend::Cuda(b), AnyBuffer::Cuda(s)) => b.read(s, shape, dtype),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }

    fn held(&self, buf: &AnyBuffer) -> (DType, usize) {
        match buf {
            AnyBuffer::Cpu(s) => (s.dtype(), s.len()),
            #[cfg(feature = "cuda")]
            AnyBuffer::Cuda(b) => b.held(),
        }
    }
    fn execute_planned(
        &self,
        op: &Op,
        inputs: &[View<AnyBuffer>],
        outputs: &mut [ViewMut<AnyBuffer>],
    ) -> Result<()> {
        match self {
            AnyBackend::Cpu(b) => b.execute_planned(
                op,
                &unwrap_views(inputs, AnyBuffer::cpu)?,
                &mut unwrap_views_mut(outputs, AnyBuffer::cpu_mut)?,
            ),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.execute_planned(
                op,
                &unwrap_views(inputs, AnyBuffer::cuda)?,
                &mut unwrap_views_mut(outputs, AnyBuffer::cuda_mut)?,
            ),
        }
    }

    fn synchronize(&self) -> Result<()> {
        match self {
            AnyBackend::Cpu(b) => b.synchronize(),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.synchronize(),
        }
    }

    #[cfg(feature = "cuda")]
    type Recording = super::cuda::Recording;
    #[cfg(not(feature = "cuda"))]
    type Recording = std::convert::Infallible;

    fn run_many(&self, ops: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        match self {
            AnyBackend::Cpu(b) => b.run_many(ops),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.run_many(ops),
        }
    }

    fn record(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        match self {
            AnyBackend::Cpu(b) => b.record(run).map(|r| r.map(|never| match never {})),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.record(run),
        }
    }

    fn replay(&self, rec: &Self::Recording, host: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        match self {
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.replay(rec, host),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (rec, host);
                Err(Error::graph(
                    "a recording of another backend was passed to this backend",
                ))
            }
        }
    }

    fn device_ops(&self) -> Option<u64> {
        match self {
            AnyBackend::Cpu(b) => b.device_ops(),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.device_ops(),
        }
    }

    fn time_calls(&self, n: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        match self {
            AnyBackend::Cpu(b) => b.time_calls(n, f),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.time_calls(n, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("CPU".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        // Never panics, with or without a GPU.
        let _ = cuda_available();
        assert!(!Device::Cpu.backend().unwrap().is_cuda());
    }
}
