//! How ops run on storage their kernels do not compute in: half precision (bf16, f16) in
//! f32, and u8 spikes as floats. Storage in 16 bits, arithmetic and reductions in f32
//! (DESIGN §3); the results are the f32 kernels' on the widened inputs, rounded once to
//! nearest even.
//!
//! Three ways, cheapest first:
//! - kernels generic over [`Stored`] convert in their own loops (LIF, segment mean, the
//!   LayerNorm backward and the elementwise arithmetic: bandwidth-bound, where whole-buffer
//!   passes would cost more than the op);
//! - any other row-local op ([`Op::row_split`]: activations, row reductions, the norms, masked
//!   softmax) runs block by block of rows: each block widened into an f32 copy that
//!   stays in cache, computed, and rounded into place, the blocks in parallel;
//! - any other op (matmul, GAT, aggregation, InfoNCE) runs once on whole f32 copies of its
//!   half buffers, converted in parallel, in f32 buffers kept between ops ([`KEPT`]).

use super::{read, write, CpuView, CpuViewMut, Float};
use crate::backend::{View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::{Op, RowSplit};
use crate::tensor::{DType, Element, HalfSlices, Shape, Storage};
use rayon::prelude::*;

/// A storage element a kernel computing in `T` reads and writes: `T` itself, or (for `T` =
/// f32) bf16 / f16, widened exactly on load and rounded to nearest even on store, as
/// [`Storage::store_f32`] rounds. Kernels generic over it convert in their loops instead of
/// in whole-buffer passes (`in_f32`).
pub(crate) trait Stored<T>: Element {
    /// The value in the compute type.
    fn load(self) -> T;
    /// `v` rounded to this type.
    fn store(v: T) -> Self;
    /// `src` in the compute type: `src` itself when this is `T`, else widened into `buf`
    /// (of `src`'s length).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [T]) -> &'a [T];
    /// `dst` as compute-type elements to write in place, when this is `T`.
    fn compute_mut(dst: &mut [Self]) -> Option<&mut [T]>;
    /// `src` rounded into `dst` (of the same length).
    fn narrow(src: &[T], dst: &mut [Self]);
}
impl<T: Float> Stored<T> for T {
    #[inline(always)]
    fn load(self) -> T {
        self
    }
    #[inline(always)]
    fn store(v: T) -> T {
        v
    }
    fn widen<'a>(src: &'a [T], _: &'a mut [T]) -> &'a [T] {
        src
    }
    fn compute_mut(dst: &mut [T]) -> Option<&mut [T]> {
        Some(dst)
    }
    fn narrow(src: &[T], dst: &mut [T]) {
        dst.copy_from_slice(src)
    }
}
/// The half types, stored as 16-bit words and computed in f32 (slice conversions vectorised
/// where the CPU allows: [`crate::tensor::HalfSlices`]).
macro_rules! stored_half {
    ($h:ty) => {
        impl Stored<f32> for $h {
            #[inline(always)]
            fn load(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn store(v: f32) -> Self {
                <$h>::from_f32(v)
            }
            fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
                crate::tensor::HalfSlices::to_f32(src, buf);
                buf
            }
            fn compute_mut(_: &mut [Self]) -> Option<&mut [f32]> {
                None
            }
            fn narrow(src: &[f32], dst: &mut [Self]) {
                crate::tensor::HalfSlices::from_f32(src, dst)
            }
        }
    };
}
stored_half!(half::bf16);
stored_half!(half::f16);

/// u8 spikes (`LifConfig::u8_spikes`): 0 and 1 load exactly; a store writes 1 for any
/// nonzero value (LIF stores only 0 or 1).
macro_rules! stored_spike {
    ($t:ty) => {
        impl Stored<$t> for u8 {
            #[inline(always)]
            fn load(self) -> $t {
                <$t>::from(self)
            }
            #[inline(always)]
            fn store(v: $t) -> u8 {
                u8::from(v != 0.0)
            }
            fn widen<'a>(src: &'a [u8], buf: &'a mut [$t]) -> &'a [$t] {
                buf.iter_mut().zip(src).for_each(|(b, &s)| *b = s.load());
                buf
            }
            fn compute_mut(_: &mut [u8]) -> Option<&mut [$t]> {
                None
            }
            fn narrow(src: &[$t], dst: &mut [u8]) {
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = Self::store(v));
            }
        }
    };
}
stored_spike!(f32);
stored_spike!(f64);

/// Runs `op` through `f` (its f32 kernels) on half-precision storage: row-local ops block by
/// block of rows, any other on whole f32 copies. The f32 outputs `f` writes start at zero,
/// but where the op writes every element anyway (row-local ops, a product). No op that
/// updates a buffer in place (the optimizer) takes half storage.
pub(super) fn in_f32(
    op: &Op,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
    f: impl Fn(&[CpuView], &mut [CpuViewMut]) -> Result<()> + Sync,
) -> Result<()> {
    let shapes: Vec<&Shape> = inputs.iter().map(|v| v.shape).collect();
    if let (Some(split), Some(out)) = (op.row_split(&shapes), outputs.first()) {
        let dtype = out.dtype;
        if splits_as(&split, inputs, outputs, dtype) {
            match dtype {
                DType::BF16 => return by_rows::<half::bf16>(&split, inputs, outputs, f),
                DType::F16 => return by_rows::<half::f16>(&split, inputs, outputs, f),
                _ => {}
            }
        }
    }
    whole(op, inputs, outputs, f)
}

/// Whether every split tensor of `split` holds its rows, in `dtype` or f32 (statistics).
fn splits_as(split: &RowSplit, inputs: &[CpuView], outputs: &[CpuViewMut], dtype: DType) -> bool {
    let fits = |shape: &Shape, d: DType, row: &[usize]| {
        (d == dtype || d == DType::F32)
            && shape.numel() == split.rows * row.iter().product::<usize>()
    };
    inputs.len() == split.inputs.len()
        && outputs.len() == split.outputs.len()
        && inputs
            .iter()
            .zip(&split.inputs)
            .all(|(v, row)| row.as_ref().is_none_or(|r| fits(v.shape, v.dtype, r)))
        && outputs
            .iter()
            .zip(&split.outputs)
            .all(|(v, r)| fits(v.shape, v.dtype, r))
}

/// Elements of the widest split tensor in one block of rows: a block's f32 copies stay in
/// a core's L2 cache between widening, the kernel and rounding.
const BLOCK: usize = 1 << 13;

/// A row-local op on `H` storage, a block of rows at a time (see the module's doc).
fn by_rows<H: Element + HalfSlices>(
    split: &RowSplit,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
    f: impl Fn(&[CpuView], &mut [CpuViewMut]) -> Result<()> + Sync,
) -> Result<()> {
    let numel = |row: &[usize]| row.iter().product::<usize>();
    let widest = split.inputs.iter().flatten().chain(&split.outputs);
    let per_block = (BLOCK / widest.map(|r| numel(r)).max().unwrap_or(1).max(1)).max(1);
    // the inputs read whole, widened once; the split ones as `H`
    let whole_in = inputs
        .iter()
        .zip(&split.inputs)
        .map(|(v, row)| {
            (row.is_none() && v.dtype.is_half())
                .then(|| widened(v))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let split_in = inputs
        .iter()
        .zip(&split.inputs)
        .map(|(v, row)| row.as_ref().map(|_| Src::<H>::of(v)).transpose())
        .collect::<Result<Vec<_>>>()?;
    // each block's rows of every output
    let blocks = split.rows.div_ceil(per_block);
    let mut dst: Vec<Vec<Dst<H>>> = (0..blocks).map(|_| Vec::new()).collect();
    for (o, row) in outputs.iter_mut().zip(&split.outputs) {
        let parts = Dst::blocks(o, per_block * numel(row), blocks)?;
        dst.iter_mut().zip(parts).for_each(|(d, p)| d.push(p));
    }
    let run = dst
        .into_par_iter()
        .enumerate()
        .try_for_each(|(b, mut dst)| {
            let (first, rows) = (b * per_block, per_block.min(split.rows - b * per_block));
            let shape = |row: &[usize]| Shape::new([&[rows][..], row].concat());
            let mut spare = SPARE.take();
            // an earlier block's buffer, its values overwritten (or NaN where it grows: the
            // op writes every output element, and a test sees one it does not)
            let mut buffer = |len: usize| {
                let mut v = spare.pop().unwrap_or_default();
                v.resize(len, f32::NAN);
                v
            };
            // this block's rows of the split inputs, widened; buffers for the outputs
            let mut in_bufs = Vec::with_capacity(inputs.len());
            for (src, row) in split_in.iter().zip(&split.inputs) {
                in_bufs.push(match (src, row) {
                    (Some(src), Some(row)) => {
                        let len = numel(row);
                        let mut w = buffer(rows * len);
                        src.widen(first * len..(first + rows) * len, &mut w);
                        Some((Storage::F32(w), shape(row)))
                    }
                    _ => None,
                });
            }
            let mut out_bufs: Vec<(Storage, Shape)> = (split.outputs.iter())
                .map(|row| (Storage::F32(buffer(rows * numel(row))), shape(row)))
                .collect();
            let ins: Vec<CpuView> = (inputs.iter().zip(&in_bufs).zip(&whole_in))
                .map(|((v, part), whole)| match (part, whole) {
                    (Some((buf, shape)), _) => f32_view(buf, shape),
                    (None, Some(buf)) => f32_view(buf, v.shape),
                    (None, None) => *v,
                })
                .collect();
            let mut outs: Vec<CpuViewMut> = (out_bufs.iter_mut())
                .map(|(buf, shape)| ViewMut {
                    buf,
                    shape,
                    dtype: DType::F32,
                })
                .collect();
            f(&ins, &mut outs)?;
            drop((ins, outs));
            for (d, (s, _)) in dst.iter_mut().zip(&out_bufs) {
                d.narrow(s.as_slice::<f32>().unwrap_or_default());
            }
            // the f32 buffers serve the next block on this thread
            let bufs = in_bufs.into_iter().flatten().chain(out_bufs);
            spare.extend(bufs.filter_map(|(s, _)| match s {
                Storage::F32(v) => Some(v),
                _ => None,
            }));
            SPARE.set(spare);
            Ok(())
        });
    keep(whole_in.into_iter().flatten());
    run
}

thread_local! {
    /// The f32 buffers of the last block run on this thread, for the next one: each is at
    /// most a block of one tensor ([`BLOCK`] elements), and stays mapped and in cache.
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A split input's elements, in the half type `H` or in f32 (statistics).
enum Src<'a, H> {
    Half(&'a [H]),
    F32(&'a [f32]),
}

impl<'a, H: Element + HalfSlices> Src<'a, H> {
    fn of(v: &CpuView<'a>) -> Result<Self> {
        Ok(match v.dtype {
            DType::F32 => Src::F32(read(v)?),
            _ => Src::Half(read(v)?),
        })
    }
    /// Elements `range`, exactly, into `dst`.
    fn widen(&self, range: std::ops::Range<usize>, dst: &mut [f32]) {
        match self {
            Src::Half(s) => H::to_f32(&s[range], dst),
            Src::F32(s) => dst.copy_from_slice(&s[range]),
        }
    }
}

/// A block's rows of an output, in the half type `H` or in f32.
enum Dst<'a, H> {
    Half(&'a mut [H]),
    F32(&'a mut [f32]),
}

impl<'a, H: Element + HalfSlices> Dst<'a, H> {
    /// The output's rows in `blocks` blocks of `len` elements (the last one shorter).
    fn blocks(v: &'a mut CpuViewMut, len: usize, blocks: usize) -> Result<Vec<Self>> {
        fn parts<'a, T, D>(
            s: &'a mut [T],
            len: usize,
            n: usize,
            f: fn(&'a mut [T]) -> D,
        ) -> Vec<D> {
            if len == 0 {
                (0..n).map(|_| f(&mut [])).collect()
            } else {
                s.chunks_mut(len).map(f).collect()
            }
        }
        Ok(match v.dtype {
            DType::F32 => parts(write(v)?, len, blocks, Dst::F32),
            _ => parts(write(v)?, len, blocks, Dst::Half),
        })
    }
    /// `src` rounded (or copied) into these rows.
    fn narrow(&mut self, src: &[f32]) {
        match self {
            Dst::Half(d) => H::from_f32(src, d),
            Dst::F32(d) => d.copy_from_slice(src),
        }
    }
}

/// An f32 buffer seen as a tensor of `shape`.
fn f32_view<'a>(buf: &'a Storage, shape: &'a Shape) -> CpuView<'a> {
    View {
        buf,
        shape,
        dtype: DType::F32,
    }
}

/// An f32 copy of a half-precision view, in a kept buffer.
fn widened(v: &CpuView) -> Result<Storage> {
    let mut wide = kept_buffer(v.shape.numel());
    v.buf.widen_into(v.shape.numel(), &mut wide)?;
    Ok(Storage::F32(wide))
}

/// Runs `f` (the op) with every half-precision input widened to f32 and every half-precision
/// output computed in f32 and rounded back, on whole buffers.
fn whole(
    op: &Op,
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
    f: impl Fn(&[CpuView], &mut [CpuViewMut]) -> Result<()>,
) -> Result<()> {
    // a product writes every element of its output (the GEMM does not read it): no zeros
    let zeroed = !matches!(op, Op::MatMul { .. });
    // f32 copies of the half buffers, in view order (None: the view is used as it is)
    let wide_in = inputs
        .iter()
        .map(|v| v.dtype.is_half().then(|| widened(v)).transpose())
        .collect::<Result<Vec<_>>>()?;
    let mut wide_out = outputs
        .iter()
        .map(|v| {
            let n = v.shape.numel();
            v.dtype
                .is_half()
                .then(|| {
                    let mut out = kept_buffer(n);
                    if zeroed {
                        out.clear();
                    }
                    (out.try_reserve(n.saturating_sub(out.len())))
                        .map_err(|_| Error::OutOfMemory { bytes: n * 4 })?;
                    out.resize(n, 0.0);
                    Ok(Storage::F32(out))
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let ins = crate::backend::f32_views(inputs, wide_in.iter().map(Option::as_ref));
    let mut outs = crate::backend::f32_views_mut(outputs, wide_out.iter_mut().map(Option::as_mut));
    let run = f(&ins, &mut outs);
    drop(outs);
    if run.is_ok() {
        for (v, w) in outputs.iter_mut().zip(&wide_out) {
            if let Some(Storage::F32(w)) = w {
                v.buf.store_f32(w)?;
            }
        }
    }
    keep(wide_in.into_iter().chain(wide_out).flatten());
    run
}

/// The f32 copies of whole buffers, kept between ops for the next ones: a fresh allocation
/// of many MB is mapped page by page as it is first written, and those page faults cost
/// more than the conversions (bf16 segment mean, P = 524288, C = 64: 55 → 26 ms). The
/// [`KEEP`] largest stay.
static KEPT: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// How many f32 buffers [`KEPT`] holds at most: one op's copies.
const KEEP: usize = 8;

/// An f32 vector holding earlier values: the smallest kept one with room for `n` elements,
/// else a new (empty) one.
fn kept_buffer(n: usize) -> Vec<f32> {
    let mut kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fits = (kept.iter().enumerate())
        .filter(|(_, v)| v.capacity() >= n)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    fits.map(|i| kept.swap_remove(i)).unwrap_or_default()
}

/// Keeps the f32 buffers among `bufs` for later ops (the [`KEEP`] largest of all kept).
fn keep(bufs: impl IntoIterator<Item = Storage>) {
    let mut kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    kept.extend(bufs.into_iter().filter_map(|s| match s {
        Storage::F32(v) => Some(v),
        _ => None,
    }));
    if kept.len() > KEEP {
        kept.sort_unstable_by_key(|v| std::cmp::Reverse(v.capacity()));
        kept.truncate(KEEP);
    }
}

/// Runs `f` (the op) with its u8 spike inputs widened, exactly, to the op's float type (its
/// first float output's); then `f` runs as for any input of that type (on half storage, in
/// f32). Only the inputs [`Op::reads_spikes`] names are u8 here (the shape rule checked it).
pub(super) fn spikes_widened(
    inputs: &[CpuView],
    outputs: &mut [CpuViewMut],
    f: impl Fn(&[CpuView], &mut [CpuViewMut]) -> Result<()>,
) -> Result<()> {
    let float = outputs
        .iter()
        .map(|o| o.dtype)
        .find(|d| d.is_float())
        .ok_or_else(|| Error::graph("an op reading u8 spikes has no float output"))?;
    let wide = inputs
        .iter()
        .map(|v| {
            (v.dtype == DType::U8)
                .then(|| v.buf.spikes_as(float, v.shape.numel()))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    f(
        &crate::backend::views_as(inputs, wide.iter().map(Option::as_ref), float),
        outputs,
    )
}

#[cfg(test)]
mod tests {
    use super::super::converts_in_its_loops;
    use super::*;
    use crate::backend::Backend;
    use crate::ops::{Reduce, Unary};
    use crate::tensor::Meta;
    use crate::util::rng::SplitMix64;
    use crate::CpuBackend;

    /// How a test runs an op on half storage.
    #[derive(Clone, Copy, PartialEq)]
    enum Route {
        /// Block by block of rows.
        Rows,
        /// On whole f32 copies.
        Whole,
        /// As the backend runs it (kernels that convert in their loops).
        Backend,
    }

    /// The op's outputs on half inputs of `dtype` (random, with exact zeros for the masks;
    /// the statistics, L2 normalisation's norm and LayerNorm's mean and rstd, in f32), run by
    /// `route`; outputs poisoned first.
    fn run(op: &Op, shapes: &[&[usize]], dtype: DType, route: Route) -> Vec<Vec<f64>> {
        let mut rng = SplitMix64::new(7);
        let stat = |i| match op {
            Op::L2NormalizeBackward { .. } | Op::SegmentMeanBackward => i == 2,
            Op::LayerNormBackward { .. } => i >= 3,
            _ => false,
        };
        // segment ids: −1 (void) to 6
        let ids = matches!(op, Op::SegmentMean { .. } | Op::SegmentMeanBackward);
        let inputs: Vec<(Storage, Meta)> = (shapes.iter().enumerate())
            .map(|(i, s)| {
                let dt = match i {
                    1 if ids => DType::I32,
                    _ if stat(i) => DType::F32,
                    _ => dtype,
                };
                let meta = Meta::new(s.to_vec(), dt);
                let v: Vec<f64> = (0..meta.shape.numel())
                    .map(|i| match dt {
                        DType::I32 => (i * 5 % 8) as f64 - 1.0,
                        _ if i % 5 == 3 => 0.0,
                        _ => rng.range(0.1, 2.0),
                    })
                    .collect();
                let buf = match dt {
                    DType::I32 => Storage::I32(v.iter().map(|&x| x as i32).collect()),
                    _ => Storage::from_f64(dt, &v).unwrap(),
                };
                (buf, meta)
            })
            .collect();
        let metas: Vec<Meta> = inputs.iter().map(|i| i.1.clone()).collect();
        let out_metas = op.infer(&metas).unwrap();
        let mut bufs: Vec<Storage> = (out_metas.iter())
            .map(|m| Storage::from_f64(m.dtype, &vec![f64::NAN; m.shape.numel()]).unwrap())
            .collect();
        let views: Vec<CpuView> = (inputs.iter())
            .map(|(buf, m)| View {
                buf,
                shape: &m.shape,
                dtype: m.dtype,
            })
            .collect();
        let mut outs: Vec<CpuViewMut> = (bufs.iter_mut().zip(&out_metas))
            .map(|(buf, m)| ViewMut {
                buf,
                shape: &m.shape,
                dtype: m.dtype,
            })
            .collect();
        let f = |i: &[CpuView], o: &mut [CpuViewMut]| CpuBackend.execute_planned(op, i, o);
        if route == Route::Backend {
            CpuBackend.execute_planned(op, &views, &mut outs)
        } else if route == Route::Rows {
            let split = op.row_split(&metas.iter().map(|m| &m.shape).collect::<Vec<_>>());
            let split = split.unwrap_or_else(|| panic!("{} is not row-local", op.name()));
            assert!(splits_as(&split, &views, &outs, dtype), "{}", op.name());
            match dtype {
                DType::BF16 => by_rows::<half::bf16>(&split, &views, &mut outs, f),
                _ => by_rows::<half::f16>(&split, &views, &mut outs, f),
            }
        } else {
            whole(op, &views, &mut outs, f)
        }
        .unwrap();
        let n = out_metas.iter().map(|m| m.shape.numel());
        (bufs.iter().zip(n))
            .map(|(b, n)| {
                b.f32_prefix(n)
                    .unwrap()
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect()
            })
            .collect()
    }

    /// Every row-local op, run block by block, gives the whole run's bits: on several blocks
    /// with a short last one, on one row wider than a block, and on no rows.
    #[test]
    fn row_local_ops_give_the_same_bits_block_by_block() {
        let gelu = Unary::Gelu;
        let cases: Vec<(Op, Vec<Vec<usize>>)> = vec![
            (Op::Add, vec![vec![3, 5003], vec![3, 5003]]),
            (Op::Sub, vec![vec![9001], vec![9001]]),
            (Op::Mul, vec![vec![0, 4], vec![0, 4]]),
            (Op::Scale(0.3), vec![vec![17, 1001]]),
            (Op::Unary(gelu), vec![vec![20_000]]),
            (
                Op::UnaryBackward(gelu),
                vec![vec![100, 171], vec![100, 171]],
            ),
            (Op::AddBias, vec![vec![700, 33], vec![33]]),
            (Op::MulBroadcast, vec![vec![9000, 3], vec![1]]),
            (Op::Reduce(Reduce::MeanLast), vec![vec![5, 400, 37]]),
            (
                Op::ReduceBackward(Reduce::SumLast, [300, 41].into()),
                vec![vec![300]],
            ),
            (
                Op::LayerNorm {
                    eps: 1e-5,
                    row_stride: 1,
                },
                vec![vec![1000, 37], vec![37], vec![37]],
            ),
            (
                Op::LayerNorm {
                    eps: 1e-5,
                    row_stride: 1,
                },
                vec![vec![3, 10_000], vec![10_000], vec![10_000]],
            ),
            (Op::L2Normalize { eps: 1e-6 }, vec![vec![513, 64]]),
            (
                Op::L2NormalizeBackward { eps: 1e-6 },
                vec![vec![513, 64], vec![513, 64], vec![513]],
            ),
            (Op::MaskedSoftmax, vec![vec![70, 3, 50], vec![70, 50]]),
            (
                Op::MaskedSoftmaxBackward,
                vec![vec![70, 3, 50], vec![70, 3, 50]],
            ),
        ];
        for (op, shapes) in &cases {
            let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            for dtype in [DType::BF16, DType::F16] {
                let want = run(op, &shapes, dtype, Route::Whole);
                let got = run(op, &shapes, dtype, Route::Rows);
                for (g, w) in got.iter().zip(&want) {
                    assert!(w.iter().all(|x| !x.is_nan()), "{} left NaN", op.name());
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && g.len() == w.len(), "{} {dtype:?}", op.name());
                }
            }
        }
    }

    /// Kernels that convert half storage in their own loops give the bits of their f32
    /// kernels on whole f32 copies (row counts across several fixed reduction blocks).
    #[test]
    fn kernels_converting_in_their_loops_give_the_whole_routes_bits() {
        let ln = Op::LayerNormBackward {
            eps: 1e-5,
            row_stride: 3,
        };
        let cases: Vec<(Op, Vec<Vec<usize>>)> = vec![
            (
                ln.clone(),
                vec![vec![200, 37]; 2]
                    .into_iter()
                    .chain([vec![37], vec![200], vec![200]])
                    .collect(),
            ),
            (ln, vec![vec![0, 5], vec![0, 5], vec![5], vec![0], vec![0]]),
            // 5 003 × 3: chunks in parallel with a short last one
            (Op::Add, vec![vec![3, 5003], vec![3, 5003]]),
            (Op::Sub, vec![vec![1001], vec![1001]]),
            (Op::Mul, vec![vec![0, 4], vec![0, 4]]),
            (Op::AddBias, vec![vec![700, 33], vec![33]]),
            (Op::MulBroadcast, vec![vec![9000, 3], vec![1]]),
            (Op::MulBroadcast, vec![vec![5, 3], vec![3]]),
            // 70 000 elements: several parts in parallel
            (
                Op::SegmentMean { segments: 7 },
                vec![vec![1000, 70], vec![1000]],
            ),
            (Op::SegmentMean { segments: 7 }, vec![vec![9, 3], vec![9]]),
            (
                Op::SegmentMeanBackward,
                vec![vec![7, 70], vec![1000], vec![7]],
            ),
        ];
        for (op, shapes) in &cases {
            assert!(converts_in_its_loops(op), "{}", op.name());
            let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            for dtype in [DType::BF16, DType::F16] {
                let want = run(op, &shapes, dtype, Route::Whole);
                let got = run(op, &shapes, dtype, Route::Backend);
                for (g, w) in got.iter().zip(&want) {
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && g.len() == w.len(), "{} {dtype:?}", op.name());
                }
            }
        }
    }

    /// A product's f32 output is a kept buffer that is not zeroed first: every element is
    /// written whatever it held (NaN here), the empty product's too (k = 0).
    #[test]
    fn a_product_writes_every_element_of_its_kept_output_buffer() {
        let product = |ta: bool| Op::MatMul {
            trans_a: ta,
            trans_b: false,
            row_stride: 1,
        };
        for (op, shapes) in [
            (product(false), [vec![37, 19], vec![19, 23]]),
            (product(true), [vec![19, 37], vec![19, 23]]),
            (product(false), [vec![37, 0], vec![0, 23]]),
        ] {
            let shapes: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            KEPT.lock().unwrap().clear();
            let want = run(&op, &shapes, DType::BF16, Route::Whole);
            keep((0..KEEP).map(|_| Storage::F32(vec![f32::NAN; 37 * 23])));
            let got = run(&op, &shapes, DType::BF16, Route::Whole);
            assert!(got[0].iter().all(|x| !x.is_nan()), "{shapes:?}");
            assert_eq!(got, want, "{shapes:?}");
        }
    }

    /// Ops that are not row-local say so, and run whole.
    #[test]
    fn ops_reading_across_rows_are_not_row_local() {
        let x: Shape = [4, 8].into();
        for op in [
            Op::Reduce(Reduce::SumRows),
            Op::Reduce(Reduce::SumAll),
            Op::ReduceBackward(Reduce::SumRows, x.clone()),
        ] {
            assert!(op.row_split(&[&x]).is_none(), "{}", op.name());
        }
    }
}
