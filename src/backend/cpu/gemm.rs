//! Matrix products through the `gemm` crate: its AVX-512 kernels where they give the bits of
//! its AVX2 ones, the AVX2 kernels everywhere else.
//!
//! Both kernel families accumulate each output element over `k` in order, one fused
//! multiply-add at a time, in blocks of `kc` that are then added up. They differ in two
//! ways only: the block length `kc` (computed from the register tile and the L1 cache:
//! 1024 on the Xeon this was measured on for AVX2, 512 for AVX-512) and the paths for
//! thin products (dot-product kernels that sum their lanes at the end, whose order follows
//! the register width). So where `k` fits in one block of either (`k ≤ 512`, the floor of
//! `kc`) and the product is not thin, the AVX-512 kernels give the same bits, about 1.75×
//! faster; there they run (the crate's own dispatch). Anywhere else the AVX2 kernels run
//! (the crate's generic driver with its AVX2 microkernels, exactly what its dispatch runs
//! on an AVX2 CPU), so every result has the bits the AVX2 kernels alone give on this CPU,
//! and every recorded number keeps its bits. `tests::each_product_has_the_bits_of_the_avx2_kernels`
//! checks this on the CPU it runs on.

use super::Float;
pub(crate) use gemm::Parallelism;

/// Products of at least this many multiply-adds (`m·n·k`) are worth the pool's threads.
pub(crate) const PARALLEL_WORK: usize = 1 << 15;

/// The pool's threads when `threads`, the calling thread alone otherwise.
pub(crate) fn threads(threads: bool) -> Parallelism {
    match threads {
        true => Parallelism::Rayon(0),
        false => Parallelism::None,
    }
}

/// A matrix in memory: element (i, j) at `ptr + i·rs + j·cs` (strides in elements, positive).
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    pub ptr: P,
    pub rs: isize,
    pub cs: isize,
}

impl<P> Strided<P> {
    /// A row-major matrix whose rows hold `len` elements.
    pub(crate) fn rows(ptr: P, len: usize) -> Self {
        Strided {
            ptr,
            rs: len as isize,
            cs: 1,
        }
    }

    /// The same memory read as the transposed matrix.
    pub(crate) fn transposed(self) -> Self {
        Strided {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst := alpha·dst + beta·lhs·rhs`: `m × n` from `m × k` by `k × n`, `dst` read only when
/// `read_dst` (as `gemm::gemm`, without conjugation).
#[derive(Clone, Copy)]
pub(crate) struct Product<T> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: Strided<*mut T>,
    pub read_dst: bool,
    pub lhs: Strided<*const T>,
    pub rhs: Strided<*const T>,
    pub alpha: T,
    pub beta: T,
    pub parallelism: Parallelism,
}

impl<T: Float> Product<T> {
    /// Computes the product.
    ///
    /// # Safety
    /// The three matrices lie in bounds at their sizes; `dst` overlaps neither operand.
    pub(crate) unsafe fn run(self) {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx512() && !self.wide_keeps_bits() {
            // SAFETY: as the caller promised; the CPU has AVX2 and FMA (it has AVX-512).
            if unsafe { avx2::run(self) } {
                return;
            }
        }
        let Product {
            m,
            n,
            k,
            dst,
            lhs,
            rhs,
            ..
        } = self;
        // SAFETY: as the caller promised.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.ptr,
                dst.cs,
                dst.rs,
                self.read_dst,
                lhs.ptr,
                lhs.cs,
                lhs.rs,
                rhs.ptr,
                rhs.cs,
                rhs.rs,
                self.alpha,
                self.beta,
                false,
                false,
                false,
                self.parallelism,
            )
        }
    }

    /// Whether the AVX-512 kernels give the AVX2 kernels' bits: one `kc` block (`gemm` never
    /// makes `kc` shorter than 512), not a matrix–vector product (`m` or `n` of 1) and not a
    /// small one (`m·n ≤ 256`, where the dot-product kernels may run). Each condition is
    /// needed: the test finds other bits without it.
    #[cfg(target_arch = "x86_64")]
    fn wide_keeps_bits(&self) -> bool {
        let Product { m, n, k, .. } = *self;
        k <= 512 && m > 1 && n > 1 && m * n > 256
    }

    /// The same product computed as its transpose, `dstᵀ := rhsᵀ·lhsᵀ`.
    #[cfg(target_arch = "x86_64")]
    fn transposed(self) -> Self {
        Product {
            m: self.n,
            n: self.m,
            dst: self.dst.transposed(),
            lhs: self.rhs.transposed(),
            rhs: self.lhs.transposed(),
            ..self
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Float, Product};
    use gemm_common::simd::V3;
    use std::any::TypeId;

    /// The crate's AVX2 path for f32 and f64 (false, doing nothing, for other types): its
    /// generic driver with the AVX2 microkernels, after the normalisation `gemm::gemm` makes
    /// first (a destination with unit column stride is computed as the transposed product).
    /// SAFETY: as `Product::run`, and the CPU has AVX2 and FMA.
    pub(super) unsafe fn run<T: Float>(p: Product<T>) -> bool {
        let p = if p.dst.cs.abs() < p.dst.rs.abs() {
            p.transposed()
        } else {
            p
        };
        macro_rules! run {
            ($t:ty, $kernels:path, $lanes:expr) => {{
                use $kernels as ukr;
                let simd = V3::try_new().expect("the caller checked AVX2 and FMA");
                // SAFETY: T is $t (checked by the caller of the macro).
                let cast = |x: T| -> $t { unsafe { *(&x as *const T).cast::<$t>() } };
                gemm_common::gemm::gemm_basic_generic::<
                    V3,
                    $t,
                    $lanes,
                    { ukr::MR_DIV_N * $lanes },
                    { ukr::NR },
                    { ukr::MR_DIV_N },
                    { ukr::H_M },
                    { ukr::H_N },
                >(
                    simd,
                    p.m,
                    p.n,
                    p.k,
                    p.dst.ptr.cast(),
                    p.dst.cs,
                    p.dst.rs,
                    p.read_dst,
                    p.lhs.ptr.cast(),
                    p.lhs.cs,
                    p.lhs.rs,
                    p.rhs.ptr.cast(),
                    p.rhs.cs,
                    p.rhs.rs,
                    cast(p.alpha),
                    cast(p.beta),
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    p.parallelism,
                );
                true
            }};
        }
        // The lane counts are the crate's own for its AVX2 kernels (`4 × multiplier`).
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            run!(f32, gemm_f32::microkernel::fma::f32, 8)
        } else if TypeId::of::<T>() == TypeId::of::<f64>() {
            run!(f64, gemm_f64::microkernel::fma::f64, 4)
        } else {
            false
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn random<T: Float>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                T::of((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            })
            .collect()
    }

    /// Row-major `y (+)= 0.75 · a·b` (`a`, `b` as given or transposed) through `gemm` and
    /// through the AVX2 path alone: whether both give the same bits.
    fn same_bits<T: Float>(m: usize, n: usize, k: usize, ta: bool, tb: bool, acc: bool) -> bool {
        let (a, b) = (
            random::<T>(m * k, 1 + m as u64),
            random::<T>(k * n, 7 + n as u64),
        );
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let run = |avx2_only: bool| {
            let mut y = random::<T>(m * n, 3);
            let p = Product {
                m,
                n,
                k,
                dst: Strided::rows(y.as_mut_ptr(), n),
                read_dst: acc,
                lhs: Strided {
                    ptr: a.as_ptr(),
                    rs: a_rs,
                    cs: a_cs,
                },
                rhs: Strided {
                    ptr: b.as_ptr(),
                    rs: b_rs,
                    cs: b_cs,
                },
                alpha: T::one(),
                beta: T::of(0.75),
                parallelism: Parallelism::Rayon(0),
            };
            // SAFETY: the strides describe a (m × k), b (k × n) and y (m × n) in bounds; the
            // test runs the AVX2 path only where the CPU has it.
            unsafe {
                if avx2_only {
                    assert!(avx2::run(p));
                } else {
                    p.run();
                }
            }
            y
        };
        let (y, reference) = (run(false), run(true));
        y.iter()
            .zip(&reference)
            .all(|(p, q)| p.to_f64().unwrap().to_bits() == q.to_f64().unwrap().to_bits())
    }

    #[test]
    fn each_product_has_the_bits_of_the_avx2_kernels() {
        if !(super::super::has_avx2() && std::arch::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        // The step's shapes (forward, input and weight gradients, the attention's per-head
        // products) and thin, small, outer and long-k ones, each way of transposing.
        let shapes = [
            (3072, 256, 128),
            (3072, 128, 512),
            (1024, 512, 128),
            (256, 128, 3072),
            (128, 128, 4096),
            (24, 24, 32),
            (33, 17, 512),
            (100, 7, 300),
            (7, 300, 200),
            (3, 1, 500),
            (1, 3, 500),
            (16, 16, 9),
            (40, 50, 2),
            (65, 70, 513),
        ];
        for (m, n, k) in shapes {
            for (ta, tb, acc) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
            ] {
                let what = format!("{m}×{n}×{k} (ta {ta}, tb {tb}, accumulate {acc})");
                assert!(
                    same_bits::<f32>(m, n, k, ta, tb, acc),
                    "f32 {what}: other bits"
                );
                if m * n * k <= 1 << 20 {
                    assert!(
                        same_bits::<f64>(m, n, k, ta, tb, acc),
                        "f64 {what}: other bits"
                    );
                }
            }
        }
    }
}
