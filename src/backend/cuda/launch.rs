//! The one launch path of the CUDA backend, in the style of candle's `get_or_load_func` plus
//! builder arguments. For each op, [`Kernels`] fixes once the kernel file (its family's
//! `kernels/<family>.cu`) and the element type (the `_f32` / `_f64` / … suffix and the type of
//! `T` scalars); each [`Launch`] then converts sizes to the kernels' `int` with a check and is
//! skipped when it has no work. Every error names the op.

use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

/// Threads per block of every launch (the contracts' "block 256").
pub(super) const BLOCK: u32 = 256;
/// The most arguments a kernel takes (lif_bwd has 17).
const MAX_ARGS: usize = 24;
/// The largest grid x of the grid-stride kernels (any grid ≥ 1 is correct), and CUDA's
/// largest grid y.
const MAX_GRID: usize = 65535;
/// CUDA's largest grid x.
const MAX_GRID_X: usize = (1 << 31) - 1;

/// An op's inputs as the kernels see them.
pub(super) type Inputs<'a, 'b> = &'a [View<'b, CudaBuffer>];

/// One output of an op: its device address, shape and dtype.
pub(super) struct Output {
    pub ptr: u64,
    pub shape: Shape,
    pub dtype: DType,
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A device pointer (0 = nullptr).
    Ptr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Perm(PermMeta),
}

/// `PermMeta` of layout.cu (passed by value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PermMeta {
    pub rank: i32,
    pub dims: [i32; 6],
    pub stride: [i64; 6],
}
// SAFETY: plain repr(C) data matching the kernel's struct layout (int, int[6], long long[6]).
unsafe impl cudarc::driver::DeviceRepr for PermMeta {}

/// Blocks of a flat grid over `n` items: ceil(n/256), clamped to [1, 65535].
pub(super) fn flat_blocks(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID) as u32
}

/// Rows per chunk and chunk count of the two-stage column reductions (kernel contracts:
/// rows_per_chunk = max(64, ceil(R/1024))).
pub(super) fn row_chunks(rows: usize) -> (usize, usize) {
    let per_chunk = rows.div_ceil(1024).max(64);
    (per_chunk, rows.div_ceil(per_chunk).max(1))
}

/// `what = v` as the kernels' `int`, or `Error::Unsupported` naming the op.
fn to_i32(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Unsupported {
        backend: "cuda",
        what: format!("{op}: {what} = {v} exceeds the kernels' i32 sizes"),
    })
}

/// The kernel-name suffix of a dtype (`kernels/common.cuh`).
pub(super) fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I32 => "i32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::U8 => "u8",
    }
}

/// An error for what the CUDA backend does not support, naming the op.
pub(super) fn unsupported(op: &Op, what: impl Into<String>) -> Error {
    Error::Unsupported {
        backend: "cuda",
        what: format!("{}: {}", op.name(), what.into()),
    }
}

/// The kernels of one op at one element type.
pub(super) struct Kernels<'a> {
    pub be: &'a CudaBackend,
    op: &'static str,
    file: &'static str,
    suffix: &'static str,
    dtype: DType,
}

impl<'a> Kernels<'a> {
    /// Float kernels (`_f32`, `_f64`, `_bf16`, `_f16`) of `op` at `dtype`; other dtypes are
    /// unsupported. Half-precision kernels compute in f32 (`Acc<S>` in common.cuh).
    pub fn float(be: &'a CudaBackend, op: &Op, dtype: DType) -> Result<Self> {
        match dtype {
            DType::I32 | DType::U8 => Err(unsupported(op, format!("{dtype:?} data"))),
            _ => Ok(Self::typed(be, op, dtype)),
        }
    }

    /// Kernels suffixed by any dtype (`_f32`, `_f64`, `_i32`, `_bf16`, `_f16`, `_u8`).
    pub fn typed(be: &'a CudaBackend, op: &Op, dtype: DType) -> Self {
        Kernels {
            be,
            op: op.name(),
            file: op.family().name(),
            suffix: suffix(dtype),
            dtype,
        }
    }

    /// Kernels that move words of the dtype's size (`_b1`, `_b2`, `_b4`, `_b8`), whatever it
    /// holds.
    pub fn words(be: &'a CudaBackend, op: &Op, dtype: DType) -> Self {
        let suffix = match dtype.size() {
            1 => "b1",
            2 => "b2",
            8 => "b8",
            _ => "b4",
        };
        Kernels {
            suffix,
            ..Self::typed(be, op, dtype)
        }
    }

    /// Bytes of one element.
    pub fn elem_bytes(&self) -> usize {
        self.dtype.size()
    }

    /// Bytes of one element of the kernels' arithmetic (`T` scalars, reduction partials): f64
    /// for f64 kernels, f32 for the others.
    pub fn acc_bytes(&self) -> usize {
        if self.dtype == DType::F64 {
            8
        } else {
            4
        }
    }

    /// A size as the kernels' `int`, or an error when it does not fit.
    pub fn to_int(&self, what: &str, v: usize) -> Result<i32> {
        to_i32(self.op, what, v)
    }

    /// A launch of `<base>_<suffix>` over a flat grid of `n` items; skipped when `n` is 0.
    pub fn flat(&self, base: &str, n: usize) -> Launch<'_> {
        self.launch(base, (flat_blocks(n), 1, 1), n)
    }

    /// A launch with one warp per item; skipped when `items` is 0.
    pub fn warps(&self, base: &str, items: usize) -> Launch<'_> {
        let blocks = items.saturating_mul(32).div_ceil(BLOCK as usize);
        self.launch(base, (blocks.clamp(1, MAX_GRID) as u32, 1, 1), items)
    }

    /// A launch on an explicit grid (blocks x, y); always runs (the contract decides). The
    /// kernels may index by block, so a grid beyond the device's limits (x < 2³¹, y ≤ 65535)
    /// is an error, never clamped.
    pub fn grid(&self, base: &str, x: usize, y: usize) -> Launch<'_> {
        let (x, y) = (x.max(1), y.max(1));
        let mut l = self.launch(
            base,
            (x.min(MAX_GRID_X) as u32, y.min(MAX_GRID) as u32, 1),
            1,
        );
        if x > MAX_GRID_X || y > MAX_GRID {
            l.err = Some(Error::Unsupported {
                backend: "cuda",
                what: format!(
                    "{}: a grid of {x} x {y} blocks exceeds CUDA's limits",
                    self.op
                ),
            });
        }
        l
    }

    fn launch(&self, base: &str, grid: (u32, u32, u32), work: usize) -> Launch<'_> {
        Launch {
            k: self,
            name: format!("{base}_{}", self.suffix),
            grid,
            block: BLOCK,
            work,
            args: [Arg::I32(0); MAX_ARGS],
            len: 0,
            err: None,
        }
    }
}

/// One kernel launch being built: arguments in the order of the kernel's contract.
pub(super) struct Launch<'k> {
    k: &'k Kernels<'k>,
    name: String,
    grid: (u32, u32, u32),
    block: u32,
    work: usize,
    /// The arguments, inline: a launch allocates nothing for them.
    args: [Arg; MAX_ARGS],
    len: usize,
    /// The first size that did not fit (reported by `run`).
    err: Option<Error>,
}

impl Launch<'_> {
    fn arg(mut self, a: Arg) -> Self {
        match self.args.get_mut(self.len) {
            Some(slot) => *slot = a,
            None => {
                let e = Error::graph(format!("{}: more than {MAX_ARGS} arguments", self.name));
                self.err.get_or_insert(e);
            }
        }
        self.len += 1;
        self
    }
    /// A device pointer (0 = nullptr).
    pub fn ptr(self, p: u64) -> Self {
        self.arg(Arg::Ptr(p))
    }
    /// The device address of an input.
    pub fn input(self, v: &View<CudaBuffer>) -> Self {
        self.ptr(v.buf.ptr)
    }
    /// A size, checked to fit the kernel's `int`.
    pub fn dim(mut self, what: &str, v: usize) -> Self {
        match to_i32(self.k.op, what, v) {
            Ok(i) => self.arg(Arg::I32(i)),
            Err(e) => {
                self.err.get_or_insert(e);
                self.arg(Arg::I32(0))
            }
        }
    }
    /// A code or flag (`int`).
    pub fn int(self, v: i32) -> Self {
        self.arg(Arg::I32(v))
    }
    pub fn flag(self, b: bool) -> Self {
        self.int(b as i32)
    }
    /// A `T` scalar: f64 for f64 kernels, else f32 (half-precision kernels compute in f32).
    pub fn scalar(self, v: f64) -> Self {
        match self.k.dtype {
            DType::F64 => self.arg(Arg::F64(v)),
            _ => self.arg(Arg::F32(v as f32)),
        }
    }
    /// A `double` argument, whatever the element type.
    pub fn double(self, v: f64) -> Self {
        self.arg(Arg::F64(v))
    }
    pub fn bits(self, v: u32) -> Self {
        self.arg(Arg::U32(v))
    }
    pub fn long(self, v: i64) -> Self {
        self.arg(Arg::I64(v))
    }
    pub fn perm(self, m: PermMeta) -> Self {
        self.arg(Arg::Perm(m))
    }
    /// Threads per block, when the contract asks for other than 256.
    pub fn block(mut self, threads: u32) -> Self {
        self.block = threads;
        self
    }
    /// Launches (unless there is no work); the first size that did not fit is the error.
    pub fn run(self) -> Result<()> {
        if let Some(e) = self.err {
            return Err(e);
        }
        if self.work == 0 {
            return Ok(());
        }
        self.k.be.launch(
            self.k.file,
            &self.name,
            self.grid,
            self.block,
            &self.args[..self.len],
        )
    }
}
