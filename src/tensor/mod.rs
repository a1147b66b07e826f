//! Host tensors: a shape, a dtype and a contiguous row-major buffer.
//!
//! `Tensor` is what users feed into and fetch from an executor; inside a backend the data
//! lives in that backend's buffers.

// Sizes are computed here for every op: no cast may narrow or wrap one silently.
#![deny(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

mod half_slices;
pub mod io;

pub(crate) use half_slices::HalfSlices;

use crate::error::{Error, Result};
use std::fmt;

/// Element type of a tensor or a backend buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float (gradient checks and references).
    F64,
    /// Indices (CSR offsets, segment ids, token ids). Never differentiated.
    I32,
    /// bfloat16 storage (8-bit exponent, 8-bit mantissa); ops compute in f32.
    BF16,
    /// IEEE half-precision storage (5-bit exponent, 11-bit mantissa); ops compute in f32.
    F16,
    /// Spikes, exactly 0 or 1, one byte each: what LIF writes with
    /// [`LifConfig::u8_spikes`](crate::ops::LifConfig::u8_spikes). Matmul and aggregation read
    /// them as their float type; their gradient is that float type (DESIGN §3).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }
    /// Whether this is a float type (f32, f64, bf16, f16).
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32 | DType::U8)
    }
    /// Whether gradients flow through values of this type: the float types, and u8 spikes
    /// (through the surrogate; their gradient has the float type of the ops that read them).
    pub fn is_differentiable(self) -> bool {
        self != DType::I32
    }
    /// Its lower-case name: `f32`, `f64`, `i32`, `bf16`, `f16`, `u8`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U8 => "u8",
        }
    }
    /// Whether this is a half-precision storage type (`BF16`, `F16`): stored in 16 bits,
    /// computed in f32.
    pub fn is_half(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
}

/// Dimensions, outermost first. `[]` is a scalar.
#[derive(Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape from its dimensions, outermost first.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The rank-0 shape `[]` of a scalar (one element).
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Number of elements, the product of the dims (1 for a scalar); sizes from outside are
    /// checked with [`Shape::checked_numel`] instead.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// The element count, or None when the product of the dims overflows (sizes that come
    /// from outside, e.g. the C ABI, are checked with this before anything is allocated).
    pub fn checked_numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
    /// Dimension `i` (outermost is 0), or an error when `i` is not below the rank.
    pub fn dim(&self, i: usize) -> Result<usize> {
        self.0.get(i).copied().ok_or_else(|| {
            Error::shape(
                "shape",
                format!("no axis {i} in {self:?} (rank {})", self.rank()),
            )
        })
    }
    /// Dimension `i` where the rank is already checked (the op set's shape rules and kernels).
    pub(crate) fn at(&self, i: usize) -> usize {
        self.0[i]
    }
    /// Last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

/// `x` as f32 rounded to odd: the f32 next to `x` toward zero with its last bit set when `x`
/// is not an f32. Rounding that to a narrower type (≥ 2 bits fewer) is the correct rounding
/// of `x` itself, which f64 → f32 → bf16 to nearest twice is not.
fn f32_round_to_odd(x: f64) -> f32 {
    #[allow(clippy::cast_possible_truncation)] // rounded on purpose, then corrected
    let r = x as f32;
    if !r.is_finite() || f64::from(r) == x {
        return r;
    }
    let toward_zero = if f64::from(r).abs() > x.abs() {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

/// Contiguous element storage of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// `i32` elements (indices).
    I32(Vec<i32>),
    /// bfloat16 elements.
    BF16(Vec<half::bf16>),
    /// IEEE half-precision elements.
    F16(Vec<half::f16>),
    /// Spikes (0 or 1).
    U8(Vec<u8>),
}

impl Storage {
    /// `len` zeros of `dtype` (aborts when out of memory; see [`Storage::try_zeros`]).
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; len]),
            DType::F64 => Storage::F64(vec![0.0; len]),
            DType::I32 => Storage::I32(vec![0; len]),
            DType::BF16 => Storage::BF16(vec![half::bf16::ZERO; len]),
            DType::F16 => Storage::F16(vec![half::f16::ZERO; len]),
            DType::U8 => Storage::U8(vec![0; len]),
        }
    }
    /// f32 values as storage of the float type `dtype`, rounded to nearest even.
    pub fn from_f32(dtype: DType, v: &[f32]) -> Result<Self> {
        let mut s = Storage::try_zeros(dtype, v.len())?;
        s.store_f32(v)?;
        Ok(s)
    }
    /// Overwrites the first `src.len()` elements with `src`'s values in this storage's float
    /// type (rounded to nearest even for the half types, exact for f64).
    pub fn store_f32(&mut self, src: &[f32]) -> Result<()> {
        let n = src.len();
        if self.len() < n || !self.dtype().is_float() {
            return Err(Error::graph(format!(
                "buffer of {} {:?} cannot hold {n} f32 values",
                self.len(),
                self.dtype()
            )));
        }
        match self {
            Storage::F32(d) => d[..n].copy_from_slice(src),
            Storage::F64(d) => d[..n].iter_mut().zip(src).for_each(|(d, &x)| *d = x.into()),
            Storage::BF16(d) => HalfSlices::from_f32(src, &mut d[..n]),
            Storage::F16(d) => HalfSlices::from_f32(src, &mut d[..n]),
            Storage::I32(_) | Storage::U8(_) => unreachable!("checked above"),
        }
        Ok(())
    }
    /// `out` made the first `n` elements of a half-precision storage, widened (exactly); an
    /// error for any other dtype (see [`Storage::f32_prefix`]).
    pub(crate) fn widen_into(&self, n: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Storage::BF16(v) if v.len() >= n => HalfSlices::to_f32_vec(&v[..n], out),
            Storage::F16(v) if v.len() >= n => HalfSlices::to_f32_vec(&v[..n], out),
            _ => Err(Error::graph(format!(
                "{n} half-precision values asked of a buffer of {} {:?}",
                self.len(),
                self.dtype()
            ))),
        }
    }
    /// The first `n` elements of a float or spike storage as f32: borrowed when they are f32,
    /// else converted (exact for the half types and spikes, rounded for f64).
    pub fn f32_prefix(&self, n: usize) -> Result<std::borrow::Cow<'_, [f32]>> {
        use std::borrow::Cow;
        if self.len() < n || !self.dtype().is_differentiable() {
            return Err(Error::graph(format!(
                "{n} f32 values asked of a buffer of {} {:?}",
                self.len(),
                self.dtype()
            )));
        }
        #[allow(clippy::cast_possible_truncation)] // values, rounded on purpose
        Ok(match self {
            Storage::F32(v) => Cow::Borrowed(&v[..n]),
            Storage::F64(v) => Cow::Owned(v[..n].iter().map(|&x| x as f32).collect()),
            Storage::BF16(_) | Storage::F16(_) => {
                let mut wide = Vec::new();
                self.widen_into(n, &mut wide)?;
                Cow::Owned(wide)
            }
            // spikes: any byte but 0 is one (as `spikes_as` and the CUDA kernels read them)
            Storage::U8(v) => Cow::Owned(
                v[..n]
                    .iter()
                    .map(|&s| f32::from(u8::from(s != 0)))
                    .collect(),
            ),
            Storage::I32(_) => unreachable!("checked above"),
        })
    }
    /// The first `n` u8 spikes as the float type `dtype`, in one pass (exact: 0 or 1).
    pub fn spikes_as(&self, dtype: DType, n: usize) -> Result<Self> {
        let spikes = match self {
            Storage::U8(s) if s.len() >= n => &s[..n],
            _ => {
                return Err(Error::graph(format!(
                    "{n} spikes asked of a buffer of {} {:?}",
                    self.len(),
                    self.dtype()
                )))
            }
        };
        let mut out = Storage::try_zeros(dtype, n)?;
        fn put<T: Copy>(d: &mut [T], s: &[u8], one: T) {
            d.iter_mut()
                .zip(s)
                .filter(|(_, &b)| b != 0)
                .for_each(|(d, _)| *d = one);
        }
        match &mut out {
            Storage::F32(d) => put(d, spikes, 1.0),
            Storage::F64(d) => put(d, spikes, 1.0),
            Storage::BF16(d) => put(d, spikes, half::bf16::ONE),
            Storage::F16(d) => put(d, spikes, half::f16::ONE),
            _ => {
                return Err(Error::graph(format!(
                    "spikes read as {dtype:?}: not a float type"
                )))
            }
        }
        Ok(out)
    }
    /// f64 values as storage of the float type `dtype`, rounded to nearest even.
    pub fn from_f64(dtype: DType, v: &[f64]) -> Result<Self> {
        #[allow(clippy::cast_possible_truncation)] // values, rounded on purpose
        Ok(match dtype {
            DType::F32 => Storage::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Storage::F64(v.to_vec()),
            // through f32 rounded to odd: one correct rounding (f32 keeps ≥ 2 more bits)
            DType::BF16 => Storage::BF16(
                v.iter()
                    .map(|&x| half::bf16::from_f32(f32_round_to_odd(x)))
                    .collect(),
            ),
            DType::F16 => Storage::F16(
                v.iter()
                    .map(|&x| half::f16::from_f32(f32_round_to_odd(x)))
                    .collect(),
            ),
            DType::I32 | DType::U8 => {
                return Err(Error::shape(
                    "tensor",
                    format!("cannot convert f64 to {dtype:?}"),
                ))
            }
        })
    }
    /// The elements of a float storage as f32 (exact for the half types).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        self.f32_prefix(self.len()).ok().map(|v| v.into_owned())
    }
    /// Overwrites the first `src.len()` elements with `src`'s, which must be of the same
    /// dtype and fit.
    pub fn write_prefix(&mut self, src: &Storage) -> Result<()> {
        let n = src.len();
        if self.len() < n || self.dtype() != src.dtype() {
            return Err(Error::graph(format!(
                "buffer of {} {:?} cannot hold {n} {:?}",
                self.len(),
                self.dtype(),
                src.dtype()
            )));
        }
        match (self, src) {
            (Storage::F32(d), Storage::F32(s)) => d[..n].copy_from_slice(s),
            (Storage::F64(d), Storage::F64(s)) => d[..n].copy_from_slice(s),
            (Storage::I32(d), Storage::I32(s)) => d[..n].copy_from_slice(s),
            (Storage::BF16(d), Storage::BF16(s)) => d[..n].copy_from_slice(s),
            (Storage::F16(d), Storage::F16(s)) => d[..n].copy_from_slice(s),
            (Storage::U8(d), Storage::U8(s)) => d[..n].copy_from_slice(s),
            _ => unreachable!("dtypes checked above"),
        }
        Ok(())
    }
    /// Keeps the first `n` elements.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Storage::F32(v) => v.truncate(n),
            Storage::F64(v) => v.truncate(n),
            Storage::I32(v) => v.truncate(n),
            Storage::BF16(v) => v.truncate(n),
            Storage::F16(v) => v.truncate(n),
            Storage::U8(v) => v.truncate(n),
        }
    }
    /// Like [`Storage::zeros`], but running out of memory is an error, not an abort.
    pub fn try_zeros(dtype: DType, len: usize) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Storage::F32(try_filled(len, 0.0)?),
            DType::F64 => Storage::F64(try_filled(len, 0.0)?),
            DType::I32 => Storage::I32(try_filled(len, 0)?),
            DType::BF16 => Storage::BF16(try_filled(len, half::bf16::ZERO)?),
            DType::F16 => Storage::F16(try_filled(len, half::f16::ZERO)?),
            DType::U8 => Storage::U8(try_filled(len, 0)?),
        })
    }
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::I32(_) => DType::I32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::U8(_) => DType::U8,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::U8(v) => v.len(),
        }
    }
    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as a `&[T]`, or None when the dtype is not `T`'s.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice(self)
    }
    /// The elements as a `&mut [T]`, or None when the dtype is not `T`'s.
    pub fn as_mut_slice<T: Element>(&mut self) -> Option<&mut [T]> {
        T::slice_mut(self)
    }
}

/// A Rust scalar type that a `Storage` can hold.
pub trait Element: Copy + Send + Sync + Default + PartialEq + fmt::Debug + 'static {
    /// The dtype that holds this type.
    const DTYPE: DType;
    /// The elements of `s`, or None when it holds another dtype.
    fn slice(s: &Storage) -> Option<&[Self]>;
    /// The elements of `s`, mutably, or None when it holds another dtype.
    fn slice_mut(s: &mut Storage) -> Option<&mut [Self]>;
    /// Wraps `v` as storage of this type's dtype (no copy).
    fn into_storage(v: Vec<Self>) -> Storage;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut Storage) -> Option<&mut [Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> Storage {
                Storage::$variant(v)
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(i32, I32);
element!(half::bf16, BF16);
element!(half::f16, F16);
element!(u8, U8);

/// A host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
}

impl Tensor {
    /// A tensor of `shape` holding `data` in row-major order; an error unless the sizes match.
    pub fn new<T: Element>(shape: impl Into<Shape>, data: Vec<T>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {:?} holds {} elements, got {}",
                    shape,
                    shape.numel(),
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            storage: T::into_storage(data),
        })
    }
    /// Like [`Tensor::new`], from storage of any dtype.
    pub fn from_storage(shape: impl Into<Shape>, storage: Storage) -> Result<Self> {
        let shape = shape.into();
        if shape.numel() != storage.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {:?} holds {} elements, got {}",
                    shape,
                    shape.numel(),
                    storage.len()
                ),
            ));
        }
        Ok(Tensor { shape, storage })
    }
    /// A tensor of `shape` filled with zeros of `dtype`.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Self {
        let shape = shape.into();
        let storage = Storage::zeros(dtype, shape.numel());
        Tensor { shape, storage }
    }
    /// A rank-0 tensor holding `v`.
    pub fn scalar<T: Element>(v: T) -> Self {
        Tensor {
            shape: Shape::scalar(),
            storage: T::into_storage(vec![v]),
        }
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.storage.len()
    }
    /// The elements, untyped.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The elements, untyped, consuming the tensor (no copy).
    pub fn into_storage(self) -> Storage {
        self.storage
    }
    /// The elements, if the dtype is `T`.
    pub fn data<T: Element>(&self) -> Result<&[T]> {
        T::slice(&self.storage).ok_or_else(|| {
            Error::shape(
                "tensor",
                format!("holds {:?}, asked for {:?}", self.dtype(), T::DTYPE),
            )
        })
    }
    /// The elements, mutably, if the dtype is `T`.
    pub fn data_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let dt = self.dtype();
        T::slice_mut(&mut self.storage).ok_or_else(|| {
            Error::shape("tensor", format!("holds {dt:?}, asked for {:?}", T::DTYPE))
        })
    }
    /// The same elements under another shape of equal size.
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Self> {
        Tensor::from_storage(shape, self.storage)
    }
    /// Elements converted to f64 (any dtype); handy for comparisons and reports.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.storage {
            Storage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::F64(v) => v.clone(),
            Storage::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
        }
    }
    /// A tensor converted to the float type `dtype`, rounding to nearest even (indices convert
    /// to floats, floats never to indices).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !dtype.is_float() && self.dtype() != dtype {
            return Err(Error::shape(
                "tensor",
                format!("cannot convert {:?} to {dtype:?}", self.dtype()),
            ));
        }
        let storage = match (&self.storage, dtype) {
            (s, d) if s.dtype() == d => s.clone(),
            (Storage::F32(v), d) => Storage::from_f32(d, v)?,
            (Storage::F64(v), d) => Storage::from_f64(d, v)?,
            // exact: every i32 (indices), u8 (spikes), bf16 and f16 value is an f64
            (_, d) => Storage::from_f64(d, &self.to_f64_vec())?,
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }
    /// The flat index of the first NaN or infinity (None for index and spike tensors).
    pub fn first_non_finite(&self) -> Option<usize> {
        match &self.storage {
            Storage::F32(v) => v.iter().position(|x| !x.is_finite()),
            Storage::F64(v) => v.iter().position(|x| !x.is_finite()),
            Storage::I32(_) | Storage::U8(_) => None,
            Storage::BF16(v) => v.iter().position(|x| !x.is_finite()),
            Storage::F16(v) => v.iter().position(|x| !x.is_finite()),
        }
    }
    /// Error unless every element is finite (`what` names the tensor in the message).
    pub fn check_finite(&self, what: &str) -> Result<()> {
        match self.first_non_finite() {
            Some(i) => Err(Error::invalid(
                "tensor",
                format!("{what} has a non-finite value at flat index {i}"),
            )),
            None => Ok(()),
        }
    }
}

/// Shape and dtype of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    /// The dimensions.
    pub shape: Shape,
    /// The element type.
    pub dtype: DType,
}

impl Meta {
    /// The meta of a value of `shape` and `dtype`.
    pub fn new(shape: impl Into<Shape>, dtype: DType) -> Self {
        Meta {
            shape: shape.into(),
            dtype,
        }
    }
    /// Size of the data in bytes: element count times the dtype's size.
    pub fn bytes(&self) -> usize {
        self.shape.numel() * self.dtype.size()
    }
    /// [`Meta::bytes`] for sizes from outside: None when the count or the byte size overflows
    /// or exceeds what one allocation can hold (`isize::MAX`).
    pub fn checked_bytes(&self) -> Option<usize> {
        let bytes = self.shape.checked_numel()?.checked_mul(self.dtype.size())?;
        (bytes <= isize::MAX as usize).then_some(bytes)
    }
}

/// A vector of `len` copies of `v`, or `Error::OutOfMemory` when it cannot be allocated.
pub fn try_filled<T: Clone>(len: usize, v: T) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    out.resize(len, v);
    Ok(out)
}

/// A copy of `src`, or `Error::OutOfMemory` when it cannot be allocated.
pub fn try_copy<T: Clone>(src: &[T]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(src.len())
        .map_err(|_| Error::OutOfMemory {
            bytes: std::mem::size_of_val(src),
        })?;
    out.extend_from_slice(src);
    Ok(out)
}
