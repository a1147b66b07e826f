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
//! on an AVX2 CPU), so every result is the one an AVX2 machine computes, and every
//! recorded number keeps its bits. `tests::each_product_has_the_bits_of_the_avx2_kernels`
//! checks this on the CPU it runs on.

use super::Float;
pub(crate) use gemm::Parallelism;

/// `dst := alpha·dst + beta·lhs·rhs` (`dst` read only when `read_dst`), `m × n` from `m × k`
/// by `k × n`, each matrix given by a pointer and its row and column strides, as
/// `gemm::gemm` (no conjugation). The strides are positive.
///
/// # Safety
/// The pointers and strides describe in-bounds matrices of those sizes; `dst` does not
/// overlap the others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const T,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const T,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: T,
    beta: T,
    parallelism: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() && !wide_keeps_bits(m, n, k) {
        // SAFETY: as the caller promised; the CPU has AVX2 and FMA (it has AVX-512).
        let done = unsafe {
            avx2::gemm(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                alpha,
                beta,
                parallelism,
            )
        };
        if done {
            return;
        }
    }
    // SAFETY: as the caller promised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether the AVX-512 kernels give the AVX2 kernels' bits for an `m × n × k` product: one
/// `kc` block (`gemm` never makes `kc` shorter than 512), not a matrix–vector product (`m`
/// or `n` of 1) and not a small one (`m·n ≤ 256`, where the dot-product kernels may run).
/// Each condition is needed: the test finds other bits without it.
fn wide_keeps_bits(m: usize, n: usize, k: usize) -> bool {
    k <= 512 && m > 1 && n > 1 && m * n > 256
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Float, Parallelism};
    use gemm_common::simd::V3;
    use std::any::TypeId;

    /// The crate's AVX2 path for f32 and f64 (false, doing nothing, for other types): its
    /// generic driver with the AVX2 microkernels, after the same normalisation `gemm::gemm`
    /// makes (a row-major destination is computed as the transposed product).
    /// SAFETY: as `super::gemm`, and the CPU has AVX2 and FMA.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm<T: Float>(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut T,
        dst_cs: isize,
        dst_rs: isize,
        read_dst: bool,
        lhs: *const T,
        lhs_cs: isize,
        lhs_rs: isize,
        rhs: *const T,
        rhs_cs: isize,
        rhs_rs: isize,
        alpha: T,
        beta: T,
        parallelism: Parallelism,
    ) -> bool {
        let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) =
            if dst_cs.abs() < dst_rs.abs() {
                (
                    n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs,
                )
            } else {
                (
                    m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs,
                )
            };
        macro_rules! run {
            ($t:ty, $kernels:path, $lanes:expr) => {{
                use $kernels as ukr;
                let simd = V3::try_new().expect("the caller checked AVX2 and FMA");
                let cast = |x: T| -> $t { *(&x as *const T).cast::<$t>() };
                // SAFETY: T is $t (checked by the caller of the macro).
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
                    m,
                    n,
                    k,
                    dst.cast(),
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs.cast(),
                    lhs_cs,
                    lhs_rs,
                    rhs.cast(),
                    rhs_cs,
                    rhs_rs,
                    cast(alpha),
                    cast(beta),
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    parallelism,
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
            let (p, (one, s)) = (y.as_mut_ptr(), (T::one(), T::of(0.75)));
            let (a, b, par) = (a.as_ptr(), b.as_ptr(), Parallelism::Rayon(0));
            // SAFETY: the strides describe a (m × k), b (k × n) and y (m × n) in bounds; the
            // test runs the AVX2 path only where the CPU has it.
            unsafe {
                if avx2_only {
                    let ran = avx2::gemm(
                        m, n, k, p, 1, n as isize, acc, a, a_cs, a_rs, b, b_cs, b_rs, one, s, par,
                    );
                    assert!(ran);
                } else {
                    gemm(
                        m, n, k, p, 1, n as isize, acc, a, a_cs, a_rs, b, b_cs, b_rs, one, s, par,
                    );
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
