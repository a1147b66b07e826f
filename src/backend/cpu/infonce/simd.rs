//! InfoNCE's f32 tile loops on AVX2 (8 lanes) and AVX-512 (16 lanes), written once over a
//! vector [`Width`]. Every lane does the portable loops' operations in their order (no fused
//! multiply-add), and every sum adds into the portable loops' 8 accumulators in their order
//! (a 16-lane vector's low half, then its high half), so both widths give the portable bits.
//! Lanes past a row's end load as 0 and add nothing.

use super::expf::*;
use super::{reduce8, Cols, Loops};
use std::arch::x86_64::*;

/// One vector width. Its functions inline into the `#[target_feature]` entry points below.
trait Width {
    type V: Copy;
    /// A per-lane condition.
    type M: Copy;
    const LANES: usize;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a > b ? a : b` per lane: `b` where `a` is NaN, as the portable `max(b, a)`.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// 2ⁿ per lane, where `t = n + MAGIC` exactly.
    unsafe fn pow2(t: Self::V) -> Self::V;
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    unsafe fn gt(a: Self::V, b: Self::V) -> Self::M;
    unsafe fn is_nan(a: Self::V) -> Self::M;
    /// `if m { a } else { b }` per lane.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// The lanes of `x` from `j` on that lie before `n` (≤ `x.len()`); 0 in the others.
    unsafe fn load(x: &[f32], j: usize, n: usize) -> Self::V;
    /// Stores the lanes of `v` that lie before `n` (≤ `x.len()`) at `x[j..]`.
    unsafe fn store(x: &mut [f32], j: usize, n: usize, v: Self::V);
    /// `v` in the lanes from `j` on that lie before `n`; `fill` in the others.
    unsafe fn within(j: usize, n: usize, v: Self::V, fill: Self::V) -> Self::V;
    /// Adds the lanes of `v` to the 8 accumulators `acc`, 8 lanes at a time in lane order.
    unsafe fn add_to(acc: __m256, v: Self::V) -> __m256;
    /// The lanes, in order (the first `LANES`).
    unsafe fn lanes(v: Self::V) -> [f32; 16];
}

/// [`super::TileExp::texp`] per lane: the scalar code's operations.
#[inline(always)]
unsafe fn texp<W: Width>(x: W::V) -> W::V {
    // No closures here: a closure is compiled without the caller's target features, and the
    // intrinsics inside it would stay calls.
    let c = W::splat;
    let xc = W::min(W::max(x, c(-87.0)), c(88.0));
    let t = W::add(W::mul(xc, c(LOG2E)), c(MAGIC));
    let n = W::sub(t, c(MAGIC));
    let r = W::sub(W::sub(xc, W::mul(n, c(LN2_HI))), W::mul(n, c(LN2_LO)));
    let mut p = c(P[0]);
    for &k in &P[1..] {
        p = W::add(W::mul(p, r), c(k));
    }
    let y = W::add(W::add(W::mul(W::mul(p, r), r), r), c(1.0));
    let e = W::mul(y, W::pow2(t));
    let e = W::select(W::lt(x, c(-87.0)), c(0.0), e);
    let e = W::select(W::gt(x, c(88.0)), c(f32::INFINITY), e);
    W::select(W::is_nan(x), x, e)
}

/// The sum of the 8 accumulators, as the portable loops reduce theirs.
#[inline(always)]
unsafe fn total(acc: __m256) -> f32 {
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    reduce8(a)
}

#[inline(always)]
unsafe fn sum_exp<W: Width>(row: &[f32], m: f32) -> f32 {
    let (n, mv, zero) = (row.len(), W::splat(m), W::splat(0.0));
    let mut acc = _mm256_setzero_ps();
    for j in (0..n).step_by(W::LANES) {
        let e = texp::<W>(W::sub(W::load(row, j, n), mv));
        acc = W::add_to(acc, W::within(j, n, e, zero));
    }
    total(acc)
}

#[inline(always)]
unsafe fn add_exp<W: Width>(l: &mut [f32], m: &[f32], x: &[f32]) {
    let n = l.len().min(m.len()).min(x.len());
    for j in (0..n).step_by(W::LANES) {
        let e = texp::<W>(W::sub(W::load(x, j, n), W::load(m, j, n)));
        W::store(l, j, n, W::add(W::load(l, j, n), e));
    }
}

#[inline(always)]
unsafe fn grad_row<W: Width>(row: &mut [f32], lr: f32, wr: f32, cols: Cols<f32>) -> f32 {
    let n = row.len();
    let cols = cols.map(|(lc, wc)| (&lc[..n], &wc[..n]));
    let (lrv, wrv, zero) = (W::splat(lr), W::splat(wr), W::splat(0.0));
    let mut acc = _mm256_setzero_ps();
    for j in (0..n).step_by(W::LANES) {
        let l = W::load(row, j, n);
        let mut g = W::mul(wrv, texp::<W>(W::sub(l, lrv)));
        if let Some((lc, wc)) = cols {
            let e_c = texp::<W>(W::sub(l, W::load(lc, j, n)));
            g = W::add(g, W::mul(W::load(wc, j, n), e_c));
        }
        acc = W::add_to(acc, W::within(j, n, W::mul(g, l), zero));
        W::store(row, j, n, g);
    }
    total(acc)
}

#[inline(always)]
unsafe fn row_max<W: Width>(row: &[f32]) -> f32 {
    let (n, lowest) = (row.len(), W::splat(f32::NEG_INFINITY));
    let mut acc = lowest;
    for j in (0..n).step_by(W::LANES) {
        acc = W::max(W::within(j, n, W::load(row, j, n), lowest), acc);
    }
    // A row's maximum in any order: the same value (a zero's sign may differ, which changes
    // no output: the maximum is only subtracted, and an LSE of −0 + ln 1 is +0).
    W::lanes(acc)[..W::LANES]
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| super::max(m, x))
}

#[inline(always)]
unsafe fn max_into<W: Width>(acc: &mut [f32], x: &[f32]) {
    let n = acc.len().min(x.len());
    for j in (0..n).step_by(W::LANES) {
        W::store(acc, j, n, W::max(W::load(x, j, n), W::load(acc, j, n)));
    }
}

/// The entry points of one width, compiled for its instructions.
macro_rules! loops {
    ($name:ident, $width:ty, $feature:literal) => {
        pub(super) static $name: Loops = {
            #[target_feature(enable = $feature)]
            unsafe fn sum_exp(row: &[f32], m: f32) -> f32 {
                self::sum_exp::<$width>(row, m)
            }
            #[target_feature(enable = $feature)]
            unsafe fn add_exp(l: &mut [f32], m: &[f32], x: &[f32]) {
                self::add_exp::<$width>(l, m, x)
            }
            #[target_feature(enable = $feature)]
            unsafe fn grad_row(row: &mut [f32], lr: f32, wr: f32, cols: Cols<f32>) -> f32 {
                self::grad_row::<$width>(row, lr, wr, cols)
            }
            #[target_feature(enable = $feature)]
            unsafe fn row_max(row: &[f32]) -> f32 {
                self::row_max::<$width>(row)
            }
            #[target_feature(enable = $feature)]
            unsafe fn max_into(acc: &mut [f32], x: &[f32]) {
                self::max_into::<$width>(acc, x)
            }
            Loops {
                sum_exp,
                add_exp,
                grad_row,
                row_max,
                max_into,
            }
        };
    };
}

loops!(AVX2, Avx2, "avx2");
loops!(AVX512, Avx512, "avx512f");

struct Avx2;

impl Avx2 {
    /// The lanes from `j` that lie before `n`, as an AVX2 load/store mask.
    #[inline(always)]
    unsafe fn mask(j: usize, n: usize) -> __m256i {
        let rest = (n - j).min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(rest),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

impl Width for Avx2 {
    type V = __m256;
    type M = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn pow2(t: __m256) -> __m256 {
        let n = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(MAGIC.to_bits() as i32),
        );
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )))
    }
    #[inline(always)]
    unsafe fn lt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn gt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn is_nan(a: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a)
    }
    #[inline(always)]
    unsafe fn select(m: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_blendv_ps(b, a, m)
    }
    #[inline(always)]
    unsafe fn load(x: &[f32], j: usize, n: usize) -> __m256 {
        debug_assert!(n <= x.len());
        let p = x.as_ptr().add(j);
        if j + 8 <= n {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, Self::mask(j, n))
        }
    }
    #[inline(always)]
    unsafe fn store(x: &mut [f32], j: usize, n: usize, v: __m256) {
        debug_assert!(n <= x.len());
        let p = x.as_mut_ptr().add(j);
        if j + 8 <= n {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, Self::mask(j, n), v)
        }
    }
    #[inline(always)]
    unsafe fn within(j: usize, n: usize, v: __m256, fill: __m256) -> __m256 {
        if j + 8 <= n {
            v
        } else {
            _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(Self::mask(j, n)))
        }
    }
    #[inline(always)]
    unsafe fn add_to(acc: __m256, v: __m256) -> __m256 {
        _mm256_add_ps(acc, v)
    }
    #[inline(always)]
    unsafe fn lanes(v: __m256) -> [f32; 16] {
        let mut a = [0f32; 16];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a
    }
}

struct Avx512;

impl Avx512 {
    /// The lanes from `j` that lie before `n`.
    #[inline(always)]
    fn mask(j: usize, n: usize) -> __mmask16 {
        match n - j {
            r if r >= 16 => 0xffff,
            r => (1u16 << r) - 1,
        }
    }
}

impl Width for Avx512 {
    type V = __m512;
    type M = __mmask16;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn pow2(t: __m512) -> __m512 {
        let n = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(MAGIC.to_bits() as i32),
        );
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n,
            _mm512_set1_epi32(127),
        )))
    }
    #[inline(always)]
    unsafe fn lt(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn gt(a: __m512, b: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b)
    }
    #[inline(always)]
    unsafe fn is_nan(a: __m512) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a)
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, a: __m512, b: __m512) -> __m512 {
        _mm512_mask_blend_ps(m, b, a)
    }
    #[inline(always)]
    unsafe fn load(x: &[f32], j: usize, n: usize) -> __m512 {
        debug_assert!(n <= x.len());
        _mm512_maskz_loadu_ps(Self::mask(j, n), x.as_ptr().add(j))
    }
    #[inline(always)]
    unsafe fn store(x: &mut [f32], j: usize, n: usize, v: __m512) {
        debug_assert!(n <= x.len());
        _mm512_mask_storeu_ps(x.as_mut_ptr().add(j), Self::mask(j, n), v)
    }
    #[inline(always)]
    unsafe fn within(j: usize, n: usize, v: __m512, fill: __m512) -> __m512 {
        _mm512_mask_blend_ps(Self::mask(j, n), fill, v)
    }
    #[inline(always)]
    unsafe fn add_to(acc: __m256, v: __m512) -> __m256 {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        _mm256_add_ps(_mm256_add_ps(acc, _mm512_castps512_ps256(v)), high)
    }
    #[inline(always)]
    unsafe fn lanes(v: __m512) -> [f32; 16] {
        let mut a = [0f32; 16];
        _mm512_storeu_ps(a.as_mut_ptr(), v);
        a
    }
}
