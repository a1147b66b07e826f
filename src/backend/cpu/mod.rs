//! The CPU backend: the reference implementation of every op, and a fast one (rayon over
//! rows, a real GEMM, no per-element allocation). Generic over f32 and f64.

mod basic;
mod gat;
#[cfg(target_arch = "x86_64")]
mod gelu;
mod gemm;
mod in_f32;
mod infonce;
mod layout;
mod lif;
mod norm;
mod optim;
mod segment;

use super::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::{Family, Op};
use crate::tensor::{DType, Element, Shape, Storage, Tensor};
pub(crate) use in_f32::Stored;
use in_f32::{in_f32, spikes_widened};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Float element type of the CPU kernels.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + Element
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::MulAssign
{
    /// `x` converted to this type (rounded for f32).
    fn of(x: f64) -> Self;
}
impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
}
impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }
}

/// Runs a generic kernel call at the float dtype given: `float_dispatch!(dtype, f(args))`.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            $crate::tensor::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::DType::F64 => $f::<f64>($($arg),*),
            d => Err($crate::error::Error::Unsupported { backend: "cpu", what: format!("{} on {d:?}", $op) }),
        }
    };
}
pub(crate) use float_dispatch;

/// Runs `$f::<T, S>(args)` for the storage dtype `S` of a kernel that converts in its own
/// loops ([`Stored`]): f32 and f64 compute in themselves, bf16 and f16 in f32 (what such an
/// op keeps for its backward is then f32: `Op::half_stats`).
macro_rules! storage_dispatch {
    ($op:expr, $dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            $crate::tensor::DType::F32 => $f::<f32, f32>($($arg),*),
            $crate::tensor::DType::F64 => $f::<f64, f64>($($arg),*),
            $crate::tensor::DType::BF16 => $f::<f32, half::bf16>($($arg),*),
            $crate::tensor::DType::F16 => $f::<f32, half::f16>($($arg),*),
            d => Err($crate::error::Error::Unsupported { backend: "cpu", what: format!("{} on {d:?}", $op) }),
        }
    };
}
pub(crate) use storage_dispatch;

/// Whether this CPU runs the AVX2 paths of the kernels (InfoNCE's tile loops, LayerNorm's
/// row statistics): runtime detection, cached by the standard library. Those paths do the
/// portable code's operations in its order, so results never depend on it.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX-512 paths (GELU's eight lanes), as `has_avx2`.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// `x` as `&[f32]` when `T` is f32 (for the f32-only SIMD paths of generic kernels).
pub(crate) fn as_f32<T: Float>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (checked), so the slice's memory is `len` f32s.
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
    })
}

/// `y` as `&mut [f32]` when `T` is f32.
pub(crate) fn as_f32_mut<T: Float>(y: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (checked), so the slice's memory is `len` f32s.
        unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<f32>(), y.len()) }
    })
}

/// Whether the op's CPU kernels read and write half-precision storage themselves, converting
/// in their loops ([`Stored`]): the bandwidth-bound ones, where whole-buffer passes would cost
/// more than the op.
fn converts_in_its_loops(op: &Op) -> bool {
    matches!(op.family(), Family::Lif | Family::Segment)
        || matches!(op, Op::LayerNormBackward { .. })
        || basic::converts_in_its_loops(op)
}

/// A read-only CPU buffer seen as a tensor.
pub type CpuView<'a> = View<'a, Storage>;
/// A writable CPU buffer seen as a tensor.
pub type CpuViewMut<'a> = ViewMut<'a, Storage>;

/// The elements of an input view, typed.
pub(crate) fn read<'a, T: Element>(v: &CpuView<'a>) -> Result<&'a [T]> {
    let n = v.shape.numel();
    v.buf
        .as_slice::<T>()
        .map(|s| &s[..n])
        .ok_or_else(|| dtype_error::<T>(v.dtype))
}

/// The elements of an output view, typed.
pub(crate) fn write<'b, T: Element>(v: &'b mut CpuViewMut<'_>) -> Result<&'b mut [T]> {
    let n = v.shape.numel();
    let dt = v.dtype;
    v.buf
        .as_mut_slice::<T>()
        .map(|s| &mut s[..n])
        .ok_or_else(|| dtype_error::<T>(dt))
}

fn dtype_error<T: Element>(got: DType) -> Error {
    Error::Unsupported {
        backend: "cpu",
        what: format!("buffer holds {got:?}, kernel expects {:?}", T::DTYPE),
    }
}

/// Splits `outputs` into two disjoint mutable views.
pub(crate) fn two<'a, 'b>(
    o: &'a mut [CpuViewMut<'b>],
) -> (&'a mut CpuViewMut<'b>, &'a mut CpuViewMut<'b>) {
    let (a, b) = o.split_at_mut(1);
    (&mut a[0], &mut b[0])
}

impl Tensor {
    /// The tensor as a CPU view, without a copy: what [`crate::fused`]'s eager ops and
    /// [`Backend::execute`] on the CPU take.
    pub fn view(&self) -> CpuView<'_> {
        View {
            buf: self.storage(),
            shape: self.shape(),
            dtype: self.dtype(),
        }
    }
}

/// Rows of at least this many elements are processed in parallel chunks.
pub(crate) const PAR_MIN: usize = 1 << 14;

/// The CPU backend: f32/f64 kernels parallelised with rayon.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// Makes the calling thread a worker of rayon's global pool (with `threads` workers in
    /// all; 0 = rayon's default: `RAYON_NUM_THREADS`, else one per core). Call it once, first
    /// in `main`, before anything uses rayon, on the thread that will run the ops.
    ///
    /// Why: a parallel loop started from a thread outside the pool is handed to the pool as a
    /// job, and the caller sleeps until a worker has finished it; from a worker, the loop
    /// splits in place and the caller works on its share. A training step runs hundreds of
    /// ops of a few hundred microseconds each, so the hand-offs add up: the default step at
    /// batch 64 runs 13–15 % faster on a 2-core machine (BENCHMARKS.md), with bit-identical
    /// results (the kernels' arithmetic never depends on which thread does it). `gshn`'s CLI
    /// does this. An error if the global pool already exists.
    pub fn pool_on_current_thread(threads: usize) -> Result<()> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global()
            .map_err(|e| Error::invalid("cpu pool", e.to_string()))
    }

    /// Keeps the other workers of the calling thread's pool (or of the global pool) looking
    /// for work without pause until the returned guard drops, instead of letting them fall
    /// asleep between parallel loops. An executor's run holds one ([`Backend::run_many`]).
    ///
    /// Why: an idle rayon worker sleeps after a few dozen yields, and waking it costs tens
    /// of microseconds (more on a VM, where the idle core is halted). A training step runs
    /// hundreds of parallel loops, each of which then starts on one thread: the default step
    /// at batch 64 runs 15 % faster on a 2-core VM with the workers kept busy (400 context
    /// switches a step fall to 40; BENCHMARKS.md). The price: those cores spin while the
    /// guard lives. Results are the same bit for bit (no kernel's arithmetic depends on
    /// which thread runs it).
    pub fn busy_workers() -> BusyWorkers {
        let state = Arc::new(Keepers::default());
        let (keepers, here) = (state.clone(), rayon::current_thread_index());
        rayon::spawn_broadcast(move |worker| {
            // never on the thread that holds the guard: it would spin instead of working
            if Some(worker.index()) == here {
                return;
            }
            keepers.started.fetch_add(1, Ordering::Relaxed);
            keepers.spinning.fetch_add(1, Ordering::Relaxed);
            let mut worked = std::time::Instant::now();
            while !keepers.stop.load(Ordering::Relaxed) && worked.elapsed() < BUSY_LEASE {
                match rayon::yield_now() {
                    Some(rayon::Yield::Executed) => worked = std::time::Instant::now(),
                    _ => std::hint::spin_loop(),
                }
            }
            keepers.spinning.fetch_sub(1, Ordering::Relaxed);
        });
        BusyWorkers(state)
    }
}

/// How long a busy worker goes on looking for work after its last job. Rayon may start a
/// keeper inside a job the worker runs (while that job waits on another thread); the job
/// then goes on once the keeper finds no work for this long, so that a keeper never holds
/// up the work it was meant to speed (several threads running executors at once).
const BUSY_LEASE: std::time::Duration = std::time::Duration::from_millis(2);

/// While it lives, the pool's workers look for work without pause
/// ([`CpuBackend::busy_workers`]).
#[must_use = "the workers go back to sleeping when it drops"]
#[derive(Debug)]
pub struct BusyWorkers(Arc<Keepers>);

#[derive(Debug, Default)]
struct Keepers {
    stop: AtomicBool,
    /// Workers that took up the guard's broadcast, and those spinning now.
    started: AtomicUsize,
    spinning: AtomicUsize,
}

impl Drop for BusyWorkers {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

impl Backend for CpuBackend {
    type Buffer = Storage;
    /// The CPU records nothing: it runs ops as they come.
    type Recording = std::convert::Infallible;

    fn replay(&self, rec: &Self::Recording, _host: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        match *rec {}
    }

    fn run_many(&self, ops: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _busy = CpuBackend::busy_workers();
        ops()
    }

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<Storage> {
        // Out of memory is an error the caller sees, not an abort of the process.
        Storage::try_zeros(dtype, len)
    }

    fn write(&self, dst: &mut Storage, src: &Tensor) -> Result<()> {
        dst.write_prefix(src.storage())
    }

    fn read(&self, src: &Storage, shape: &Shape, dtype: DType) -> Result<Tensor> {
        let n = shape.numel();
        let storage = match src {
            Storage::F32(s) => Storage::F32(s[..n].to_vec()),
            Storage::F64(s) => Storage::F64(s[..n].to_vec()),
            Storage::I32(s) => Storage::I32(s[..n].to_vec()),
            Storage::BF16(s) => Storage::BF16(s[..n].to_vec()),
            Storage::F16(s) => Storage::F16(s[..n].to_vec()),
            Storage::U8(s) => Storage::U8(s[..n].to_vec()),
        };
        if storage.dtype() != dtype {
            return Err(Error::graph(format!(
                "buffer holds {:?}, value is {dtype:?}",
                storage.dtype()
            )));
        }
        Tensor::from_storage(shape.clone(), storage)
    }

    fn held(&self, buf: &Storage) -> (DType, usize) {
        (buf.dtype(), buf.len())
    }
    fn execute_planned(
        &self,
        op: &Op,
        inputs: &[CpuView],
        outputs: &mut [CpuViewMut],
    ) -> Result<()> {
        if let Op::Cast(to) = op {
            // one rounding, from the source type straight to the target (f64 → bf16 does not
            // pass through f32)
            let (x, n) = (inputs[0].buf, inputs[0].shape.numel());
            let y = &mut outputs[0].buf;
            return match x {
                Storage::F64(v) => y.write_prefix(&Storage::from_f64(*to, &v[..n])?),
                s => y.store_f32(&s.f32_prefix(n)?),
            };
        }
        if super::reads_u8(op, inputs) {
            return spikes_widened(inputs, outputs, |i, o| self.execute_planned(op, i, o));
        }
        let half = super::any_half(inputs, outputs);
        if half && !op.only_moves() && !converts_in_its_loops(op) {
            return in_f32(op, inputs, outputs, |i, o| self.execute_planned(op, i, o));
        }
        match op.family() {
            Family::Basic => basic::execute(op, inputs, outputs),
            Family::Layout => layout::execute(op, inputs, outputs),
            Family::Norm => norm::execute(op, inputs, outputs),
            Family::Lif => lif::execute(op, inputs, outputs),
            Family::Gat => gat::execute(op, inputs, outputs),
            Family::InfoNce => infonce::execute(op, inputs, outputs),
            Family::Segment => segment::execute(op, inputs, outputs),
            Family::Optim => optim::execute(op, inputs, outputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let t0 = std::time::Instant::now();
        while !done() {
            assert!(t0.elapsed().as_secs() < 20, "timed out waiting: {what}");
            std::hint::spin_loop();
        }
    }

    fn sum_in_parallel() {
        let sum: u64 = (0..1_000_000u64).into_par_iter().map(|i| i % 7).sum();
        assert_eq!(sum, (0..1_000_000u64).map(|i| i % 7).sum::<u64>());
    }

    #[test]
    fn busy_workers_spin_while_the_guard_lives_and_never_on_its_thread() {
        for threads in [1, 2, 3] {
            // a thread that is worker 0 of its pool, as `gshn`'s main is of the global one
            std::thread::spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .use_current_thread()
                    .build()
                    .unwrap();
                let guard = CpuBackend::busy_workers();
                let keepers = guard.0.clone();
                let started = || keepers.started.load(Ordering::Relaxed);
                wait_until("the other workers spin", || started() == threads - 1);
                sum_in_parallel();
                assert_eq!(started(), threads - 1, "a keeper ran on the guard's thread");
                drop(guard);
                wait_until("the workers stop", || {
                    keepers.spinning.load(Ordering::Relaxed) == 0
                });
                drop(pool);
            })
            .join()
            .unwrap();
        }
    }

    /// Threads outside the pool (as the test harness's), each running parallel loops under
    /// its own guard: rayon may start a keeper inside a job that another thread waits for;
    /// the lease lets the job go on (without it this deadlocks).
    #[test]
    fn busy_workers_of_several_threads_never_hold_up_each_others_work() {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let _busy = CpuBackend::busy_workers();
                        sum_in_parallel();
                    }
                });
            }
        });
    }
}
