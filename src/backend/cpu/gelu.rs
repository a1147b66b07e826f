//! Exact GELU on f32 storage, bit for bit the reference, several times faster (AVX2 or
//! AVX-512).
//!
//! The reference ([`Unary::forward`], [`Unary::derivative`]) evaluates `erf` in f64 one
//! element at a time (libm, a branch per range) and rounds the result to f32. Here four
//! elements go at once in AVX2 registers, eight in AVX-512 ones (one kernel, generic over
//! [`Lanes`]: each lane does the same operations at either width). Each range of libm's
//! `erf` (the same formulas and constants, with an `exp` of Cody–Waite reduction and Taylor
//! to degree 13) is evaluated in f64 for all lanes when any of them needs it, and each lane
//! selects its own. That f64 result is within a bounded distance of the reference's f64
//! result; whenever the bound straddles an f32 rounding boundary (a few elements in a
//! million), the element is computed by the reference itself. So the f32 outputs are the
//! reference's exactly, and every recorded number stays as it was. CPUs without AVX2 run
//! the reference.

// libm's constants are copied digit for digit (the same f64 bits), not rounded to 17 digits.
#![allow(clippy::excessive_precision)]

use crate::ops::Unary;

/// Bound on |fast erf − libm erf| (absolute): the two agree to a few f64 ulps (the tail's
/// exp differs from libm's by ≤ 2 ulps; measured by the tests); 2⁻⁴⁶ is 64× that.
const ERF_SLACK: f64 = 1.0 / (1u64 << 46) as f64;
/// Relative bound on the rounding differences after erf (each later operation may round
/// differently once its input differs): 2⁻⁴⁸ is 32× the 4 ulps they can add up to.
const REL_SLACK: f64 = 1.0 / (1u64 << 48) as f64;
/// Elements per parallel task.
const TASK: usize = 4096;

/// GELU forward of `x` into `y` (equal lengths), bit-identical to `Unary::Gelu.forward`
/// rounded to f32. Only on CPUs with AVX2 (the caller checks `has_avx2`); eight lanes at a
/// time where the CPU has AVX-512.
pub(super) fn forward(x: &[f32], y: &mut [f32]) {
    // SAFETY: the caller checked AVX2; `widest` checks AVX-512.
    unsafe { forward_in(widest(), x, y) }
}

/// GELU backward, `y = g · f32(GELU'(x))`, bit-identical to the reference backward.
pub(super) fn backward(x: &[f32], g: &[f32], y: &mut [f32]) {
    // SAFETY: as in `forward`.
    unsafe { backward_in(widest(), x, g, y) }
}

/// A vector kernel on whole registers of `x` (and `g`, which the forward ignores) into `y`.
type Kernel = unsafe fn(&[f32], &[f32], &mut [f32]);

/// One register width's kernels.
#[derive(Clone, Copy)]
struct Width {
    step: usize,
    forward: Kernel,
    backward: Kernel,
}

const AVX2: Width = Width {
    step: avx2::STEP,
    forward: avx2::forward,
    backward: avx2::backward,
};
const AVX512: Width = Width {
    step: avx512::STEP,
    forward: avx512::forward,
    backward: avx512::backward,
};

fn widest() -> Width {
    if super::has_avx512() {
        AVX512
    } else {
        AVX2
    }
}

/// SAFETY: the CPU has the width's instructions.
unsafe fn forward_in(w: Width, x: &[f32], y: &mut [f32]) {
    in_registers(w.step, w.forward, x, None, y, |x, _| reference_forward(x))
}

/// SAFETY: as `forward_in`.
unsafe fn backward_in(w: Width, x: &[f32], g: &[f32], y: &mut [f32]) {
    in_registers(w.step, w.backward, x, Some(g), y, |x, g| {
        g * reference_derivative(x)
    })
}

/// Runs `kernel` on the whole registers of each task and `reference(x, g)` on the rest.
/// SAFETY: the CPU has the kernel's instructions.
unsafe fn in_registers(
    step: usize,
    kernel: Kernel,
    x: &[f32],
    g: Option<&[f32]>,
    y: &mut [f32],
    reference: impl Fn(f32, f32) -> f32 + Sync,
) {
    in_tasks(x, g, y, |x, g, y| {
        let split = x.len() / step * step;
        // SAFETY: the instructions as the caller promised; the slices are of equal lengths.
        unsafe { kernel(&x[..split], &g[..split], &mut y[..split]) };
        for ((yi, &xi), &gi) in y[split..].iter_mut().zip(&x[split..]).zip(&g[split..]) {
            *yi = reference(xi, gi);
        }
    });
}

fn reference_forward(x: f32) -> f32 {
    Unary::Gelu.forward(f64::from(x)) as f32
}

fn reference_derivative(x: f32) -> f32 {
    Unary::Gelu.derivative(f64::from(x)) as f32
}

/// Splits the work into tasks of `TASK` elements, run in parallel when there are several.
fn in_tasks(
    x: &[f32],
    g: Option<&[f32]>,
    y: &mut [f32],
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let g = g.unwrap_or(x);
    y.par_chunks_mut(TASK).enumerate().for_each(|(i, yc)| {
        let r = i * TASK..i * TASK + yc.len();
        f(&x[r.clone()], &g[r], yc)
    });
}

/// One register of f64 lanes and what the kernels do with it: AVX2 (4 lanes) or AVX-512
/// (8). Every lane computes the same IEEE operations in the same order whatever the width,
/// so both give the same bits. The functions inline into `#[target_feature]` callers.
trait Lanes {
    /// f64 lanes.
    type V: Copy;
    /// A per-lane comparison.
    type M: Copy;
    /// f32 lanes, one per f64 lane.
    type F: Copy;
    /// Lanes per register.
    const STEP: usize;
    /// `bits` of a mask with every lane set.
    const ALL: u32;
    unsafe fn splat(v: f64) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn abs(a: Self::V) -> Self::V;
    /// `a` with its low 32 mantissa bits cleared.
    unsafe fn high_half(a: Self::V) -> Self::V;
    /// `|a|` with the sign of `s`.
    unsafe fn with_sign_of(a: Self::V, s: Self::V) -> Self::V;
    /// 2ⁿ in each lane, where `t` = n + `round` exactly (`round` = 1.5·2⁵²).
    unsafe fn pow2(t: Self::V, round: Self::V) -> Self::V;
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    /// Lanes set in `b` and not in `a`.
    unsafe fn and_not(a: Self::M, b: Self::M) -> Self::M;
    /// One bit per lane.
    unsafe fn bits(m: Self::M) -> u32;
    /// `if m { a } else { b }` per lane.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn load(x: &[f32], i: usize) -> Self::V;
    #[cfg(test)]
    unsafe fn load_f64(x: &[f64], i: usize) -> Self::V;
    unsafe fn load_f32(x: &[f32], i: usize) -> Self::F;
    unsafe fn mul_f32(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn store_f32(y: &mut [f32], i: usize, v: Self::F);
    /// The f32 roundings of `v − slack`, with the bits of the lanes where `v ± slack` round
    /// alike and are finite.
    unsafe fn certain(v: Self::V, slack: Self::V) -> (Self::F, u32);
}

/// Horner's rule, highest coefficient last: c₀ + s(c₁ + s(c₂ + …)), as libm nests it.
#[inline(always)]
unsafe fn poly<L: Lanes>(c: &[f64], s: L::V) -> L::V {
    let (&last, rest) = c.split_last().expect("a coefficient");
    rest.iter().rev().fold(L::splat(last), |acc, &ci| {
        L::add(L::splat(ci), L::mul(s, acc))
    })
}
/// `1 + s·poly(c, s)`: libm's denominators.
#[inline(always)]
unsafe fn poly1<L: Lanes>(c: &[f64], s: L::V) -> L::V {
    L::add(L::splat(1.0), L::mul(s, poly::<L>(c, s)))
}

/// erf(x/√2) in every lane, each of libm's ranges evaluated and the lane's selected.
#[inline(always)]
unsafe fn erf_of<L: Lanes>(x: L::V) -> L::V {
    let u = L::div(x, L::splat(std::f64::consts::SQRT_2));
    let a = L::abs(u);
    // |u| < 0.84375: u + u·P/Q (most lanes: the other ranges only run when a lane needs
    // them)
    let z = L::mul(u, u);
    let small = L::add(u, L::mul(u, L::div(poly::<L>(&PP, z), poly1::<L>(&QQ, z))));
    let is_small = L::lt(a, L::splat(0.84375));
    if L::bits(is_small) == L::ALL {
        return small;
    }
    // 0.84375 ≤ |u| < 1.25: 1 − erfc, erfc = 1 − erx − P/Q around 1
    let is_mid = L::lt(a, L::splat(1.25));
    let mut big = L::splat(1.0); // |u| ≥ 6: 1 − 2⁻¹⁰²², which is 1
    if L::bits(L::and_not(is_small, is_mid)) != 0 {
        let s = L::sub(a, L::splat(1.0));
        let erfc = L::sub(
            L::sub(L::splat(1.0), L::splat(ERX)),
            L::div(poly::<L>(&PA, s), poly1::<L>(&QA, s)),
        );
        big = L::select(is_mid, L::sub(L::splat(1.0), erfc), big);
    }
    // 1.25 ≤ |u| < 6: erfc = exp(−z² − 0.5625) · exp((z − a)(z + a) + R/S) / a, with z = a
    // with its low 32 bits cleared (so z² is exact)
    let is_tail = L::and_not(is_mid, L::lt(a, L::splat(6.0)));
    if L::bits(is_tail) != 0 {
        let ak = L::min(L::max(a, L::splat(1.25)), L::splat(6.0));
        let s = L::div(L::splat(1.0), L::mul(ak, ak));
        let near = L::lt(ak, L::splat(1.0 / 0.35));
        let (r, big_s) = match L::bits(near) {
            b if b == L::ALL => (poly::<L>(&RA, s), poly1::<L>(&SA, s)),
            0 => (poly::<L>(&RB, s), poly1::<L>(&SB, s)),
            _ => (
                L::select(near, poly::<L>(&RA, s), poly::<L>(&RB, s)),
                L::select(near, poly1::<L>(&SA, s), poly1::<L>(&SB, s)),
            ),
        };
        let zt = L::high_half(ak);
        let e1 = L::sub(L::mul(L::sub(L::splat(0.0), zt), zt), L::splat(0.5625));
        let e2 = L::add(L::mul(L::sub(zt, ak), L::add(zt, ak)), L::div(r, big_s));
        let tail = L::sub(
            L::splat(1.0),
            L::div(L::mul(exp::<L>(e1), exp::<L>(e2)), ak),
        );
        big = L::select(is_tail, tail, big);
    }
    L::select(is_small, small, L::with_sign_of(big, u))
}

/// e^x for x in [−700, 700] (arguments here lie in [−40, 2]).
#[inline(always)]
unsafe fn exp<L: Lanes>(x: L::V) -> L::V {
    const LN2_HI: f64 = 6.93147180369123816490e-01; // 32 bits: n·LN2_HI is exact
    const LN2_LO: f64 = 1.90821492927058770002e-10;
    // 1.5·2⁵²: adding it rounds to an integer held in the low mantissa bits
    const ROUND: f64 = 6755399441055744.0;
    let x = L::min(L::max(x, L::splat(-700.0)), L::splat(700.0));
    let t = L::add(
        L::mul(x, L::splat(std::f64::consts::LOG2_E)),
        L::splat(ROUND),
    );
    let n = L::sub(t, L::splat(ROUND));
    let r = L::sub(
        L::sub(x, L::mul(n, L::splat(LN2_HI))),
        L::mul(n, L::splat(LN2_LO)),
    ); // |r| ≤ ln2/2; e^r = Σ r^d/d! to d = 13: truncation < 2⁻⁵⁶ relative
    let mut p = L::splat(1.0 / 6227020800.0);
    for &c in INV_FACT[1..].iter().rev() {
        p = L::add(L::mul(p, r), L::splat(c));
    }
    let er = L::add(L::splat(1.0), L::mul(r, p));
    L::mul(er, L::pow2(t, L::splat(ROUND)))
}

#[inline(always)]
unsafe fn forward_lanes<L: Lanes>(x: &[f32], y: &mut [f32]) {
    for i in (0..x.len()).step_by(L::STEP) {
        let xv = L::load(x, i);
        let e = erf_of::<L>(xv);
        let fast = L::mul(L::mul(L::splat(0.5), xv), L::add(L::splat(1.0), e));
        let slack = L::add(
            L::mul(L::splat(0.5 * ERF_SLACK), L::abs(xv)),
            L::mul(L::abs(fast), L::splat(REL_SLACK)),
        );
        let (out, ok) = L::certain(fast, slack);
        L::store_f32(y, i, out);
        for k in (0..L::STEP).filter(|k| ok & (1 << k) == 0) {
            y[i + k] = reference_forward(x[i + k]);
        }
    }
}

#[inline(always)]
unsafe fn backward_lanes<L: Lanes>(x: &[f32], g: &[f32], y: &mut [f32]) {
    let sqrt_2pi = L::splat((2.0 * std::f64::consts::PI).sqrt());
    for i in (0..x.len()).step_by(L::STEP) {
        let xv = L::load(x, i);
        let e = erf_of::<L>(xv);
        let cdf = L::mul(L::splat(0.5), L::add(L::splat(1.0), e));
        let pdf = L::div(exp::<L>(L::mul(L::mul(L::splat(-0.5), xv), xv)), sqrt_2pi);
        let xpdf = L::mul(xv, pdf);
        let fast = L::add(cdf, xpdf);
        let slack = L::add(
            L::splat(0.5 * ERF_SLACK),
            L::mul(L::add(L::abs(xpdf), L::abs(fast)), L::splat(REL_SLACK)),
        );
        let (d, ok) = L::certain(fast, slack);
        L::store_f32(y, i, L::mul_f32(L::load_f32(g, i), d));
        for k in (0..L::STEP).filter(|k| ok & (1 << k) == 0) {
            y[i + k] = g[i + k] * reference_derivative(x[i + k]);
        }
    }
}

/// The vector erf and exp of whole registers of `x` and `arg`, for the tests.
#[cfg(test)]
#[inline(always)]
unsafe fn erf_and_exp_lanes<L: Lanes>(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / L::STEP * L::STEP;
    let (mut e, mut ex) = (vec![0.0; n], vec![0.0; n]);
    for i in (0..n).step_by(L::STEP) {
        let (ev, xv) = (
            erf_of::<L>(L::load_f64(x, i)),
            exp::<L>(L::load_f64(arg, i)),
        );
        // a register's bytes are its lanes in order
        let (ev, xv) = (
            &ev as *const L::V as *const f64,
            &xv as *const L::V as *const f64,
        );
        e[i..i + L::STEP].copy_from_slice(std::slice::from_raw_parts(ev, L::STEP));
        ex[i..i + L::STEP].copy_from_slice(std::slice::from_raw_parts(xv, L::STEP));
    }
    (e, ex)
}

mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX2: 4 lanes; masks are vectors of all-ones lanes.
    pub(super) struct Avx2;

    /// Elements per step.
    pub(super) const STEP: usize = 4;

    impl Lanes for Avx2 {
        type V = __m256d;
        type M = __m256d;
        type F = __m128;
        const STEP: usize = STEP;
        const ALL: u32 = 0b1111;
        #[inline(always)]
        unsafe fn splat(v: f64) -> __m256d {
            _mm256_set1_pd(v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256d, b: __m256d) -> __m256d {
            _mm256_add_pd(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256d, b: __m256d) -> __m256d {
            _mm256_sub_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256d, b: __m256d) -> __m256d {
            _mm256_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256d, b: __m256d) -> __m256d {
            _mm256_div_pd(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256d, b: __m256d) -> __m256d {
            _mm256_min_pd(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256d, b: __m256d) -> __m256d {
            _mm256_max_pd(a, b)
        }
        #[inline(always)]
        unsafe fn abs(a: __m256d) -> __m256d {
            _mm256_andnot_pd(_mm256_set1_pd(-0.0), a)
        }
        #[inline(always)]
        unsafe fn high_half(a: __m256d) -> __m256d {
            let hi = _mm256_set1_epi64x(0xffff_ffff_0000_0000_u64 as i64);
            _mm256_and_pd(a, _mm256_castsi256_pd(hi))
        }
        #[inline(always)]
        unsafe fn with_sign_of(a: __m256d, s: __m256d) -> __m256d {
            _mm256_or_pd(a, _mm256_and_pd(s, _mm256_set1_pd(-0.0)))
        }
        #[inline(always)]
        unsafe fn pow2(t: __m256d, round: __m256d) -> __m256d {
            // t and round share their exponent, so their bits differ by n
            let n = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(round));
            let e = _mm256_slli_epi64::<52>(_mm256_add_epi64(n, _mm256_set1_epi64x(1023)));
            _mm256_castsi256_pd(e)
        }
        #[inline(always)]
        unsafe fn lt(a: __m256d, b: __m256d) -> __m256d {
            _mm256_cmp_pd::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn and_not(a: __m256d, b: __m256d) -> __m256d {
            _mm256_andnot_pd(a, b)
        }
        #[inline(always)]
        unsafe fn bits(m: __m256d) -> u32 {
            _mm256_movemask_pd(m) as u32
        }
        #[inline(always)]
        unsafe fn select(m: __m256d, a: __m256d, b: __m256d) -> __m256d {
            _mm256_blendv_pd(b, a, m)
        }
        #[inline(always)]
        unsafe fn load(x: &[f32], i: usize) -> __m256d {
            _mm256_cvtps_pd(Self::load_f32(x, i))
        }
        #[cfg(test)]
        unsafe fn load_f64(x: &[f64], i: usize) -> __m256d {
            _mm256_loadu_pd(x[i..i + STEP].as_ptr())
        }
        #[inline(always)]
        unsafe fn load_f32(x: &[f32], i: usize) -> __m128 {
            _mm_loadu_ps(x[i..i + STEP].as_ptr())
        }
        #[inline(always)]
        unsafe fn mul_f32(a: __m128, b: __m128) -> __m128 {
            _mm_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_f32(y: &mut [f32], i: usize, v: __m128) {
            _mm_storeu_ps(y[i..i + STEP].as_mut_ptr(), v)
        }
        #[inline(always)]
        unsafe fn certain(v: __m256d, slack: __m256d) -> (__m128, u32) {
            let lo = _mm256_cvtpd_ps(Self::sub(v, slack));
            let hi = _mm256_cvtpd_ps(Self::add(v, slack));
            let same = _mm_cmpeq_epi32(_mm_castps_si128(lo), _mm_castps_si128(hi));
            let finite = Self::bits(Self::lt(
                Self::abs(Self::add(v, slack)),
                Self::splat(f64::INFINITY),
            ));
            (lo, _mm_movemask_ps(_mm_castsi128_ps(same)) as u32 & finite)
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn forward(x: &[f32], _: &[f32], y: &mut [f32]) {
        forward_lanes::<Avx2>(x, y)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn backward(x: &[f32], g: &[f32], y: &mut [f32]) {
        backward_lanes::<Avx2>(x, g, y)
    }

    /// The vector erf and exp, for the tests.
    #[cfg(test)]
    pub(super) fn erf_and_exp(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
        #[target_feature(enable = "avx2")]
        unsafe fn go(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
            erf_and_exp_lanes::<Avx2>(x, arg)
        }
        assert!(crate::backend::cpu::has_avx2());
        // SAFETY: AVX2 checked.
        unsafe { go(x, arg) }
    }
}

mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX-512F: 8 lanes; masks are bit masks.
    pub(super) struct Avx512;

    /// Elements per step.
    pub(super) const STEP: usize = 8;

    #[inline(always)]
    unsafe fn and_bits(a: __m512d, bits: i64) -> __m512d {
        _mm512_castsi512_pd(_mm512_and_si512(
            _mm512_castpd_si512(a),
            _mm512_set1_epi64(bits),
        ))
    }

    impl Lanes for Avx512 {
        type V = __m512d;
        type M = __mmask8;
        type F = __m256;
        const STEP: usize = STEP;
        const ALL: u32 = 0xff;
        #[inline(always)]
        unsafe fn splat(v: f64) -> __m512d {
            _mm512_set1_pd(v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
            _mm512_add_pd(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512d, b: __m512d) -> __m512d {
            _mm512_sub_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512d, b: __m512d) -> __m512d {
            _mm512_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512d, b: __m512d) -> __m512d {
            _mm512_div_pd(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512d, b: __m512d) -> __m512d {
            _mm512_min_pd(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512d, b: __m512d) -> __m512d {
            _mm512_max_pd(a, b)
        }
        #[inline(always)]
        unsafe fn abs(a: __m512d) -> __m512d {
            and_bits(a, i64::MAX)
        }
        #[inline(always)]
        unsafe fn high_half(a: __m512d) -> __m512d {
            and_bits(a, 0xffff_ffff_0000_0000_u64 as i64)
        }
        #[inline(always)]
        unsafe fn with_sign_of(a: __m512d, s: __m512d) -> __m512d {
            _mm512_castsi512_pd(_mm512_or_si512(
                _mm512_castpd_si512(a),
                _mm512_castpd_si512(and_bits(s, i64::MIN)),
            ))
        }
        #[inline(always)]
        unsafe fn pow2(t: __m512d, round: __m512d) -> __m512d {
            let n = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(round));
            let e = _mm512_slli_epi64::<52>(_mm512_add_epi64(n, _mm512_set1_epi64(1023)));
            _mm512_castsi512_pd(e)
        }
        #[inline(always)]
        unsafe fn lt(a: __m512d, b: __m512d) -> __mmask8 {
            _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn and_not(a: __mmask8, b: __mmask8) -> __mmask8 {
            !a & b
        }
        #[inline(always)]
        unsafe fn bits(m: __mmask8) -> u32 {
            m as u32
        }
        #[inline(always)]
        unsafe fn select(m: __mmask8, a: __m512d, b: __m512d) -> __m512d {
            _mm512_mask_blend_pd(m, b, a)
        }
        #[inline(always)]
        unsafe fn load(x: &[f32], i: usize) -> __m512d {
            _mm512_cvtps_pd(Self::load_f32(x, i))
        }
        #[cfg(test)]
        unsafe fn load_f64(x: &[f64], i: usize) -> __m512d {
            _mm512_loadu_pd(x[i..i + STEP].as_ptr())
        }
        #[inline(always)]
        unsafe fn load_f32(x: &[f32], i: usize) -> __m256 {
            _mm256_loadu_ps(x[i..i + STEP].as_ptr())
        }
        #[inline(always)]
        unsafe fn mul_f32(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_f32(y: &mut [f32], i: usize, v: __m256) {
            _mm256_storeu_ps(y[i..i + STEP].as_mut_ptr(), v)
        }
        #[inline(always)]
        unsafe fn certain(v: __m512d, slack: __m512d) -> (__m256, u32) {
            let lo = _mm512_cvtpd_ps(Self::sub(v, slack));
            let hi = _mm512_cvtpd_ps(Self::add(v, slack));
            let same = _mm256_cmpeq_epi32(_mm256_castps_si256(lo), _mm256_castps_si256(hi));
            let finite = Self::lt(Self::abs(Self::add(v, slack)), Self::splat(f64::INFINITY));
            let same = _mm256_movemask_ps(_mm256_castsi256_ps(same)) as u32;
            (lo, same & finite as u32)
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(x: &[f32], _: &[f32], y: &mut [f32]) {
        forward_lanes::<Avx512>(x, y)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward(x: &[f32], g: &[f32], y: &mut [f32]) {
        backward_lanes::<Avx512>(x, g, y)
    }

    /// The vector erf and exp, for the tests (None without AVX-512).
    #[cfg(test)]
    pub(super) fn erf_and_exp(x: &[f64], arg: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
        #[target_feature(enable = "avx512f")]
        unsafe fn go(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
            erf_and_exp_lanes::<Avx512>(x, arg)
        }
        // SAFETY: AVX-512F checked.
        crate::backend::cpu::has_avx512().then(|| unsafe { go(x, arg) })
    }
}

// libm's erf (FreeBSD s_erf.c) constants.
const ERX: f64 = 8.45062911510467529297e-01;
const PP: [f64; 5] = [
    1.28379167095512558561e-01,
    -3.25042107247001499370e-01,
    -2.84817495755985104766e-02,
    -5.77027029648944159157e-03,
    -2.37630166566501626084e-05,
];
const QQ: [f64; 5] = [
    3.97917223959155352819e-01,
    6.50222499887672944485e-02,
    5.08130628187576562776e-03,
    1.32494738004321644526e-04,
    -3.96022827877536812320e-06,
];
const PA: [f64; 7] = [
    -2.36211856075265944077e-03,
    4.14856118683748331666e-01,
    -3.72207876035701323847e-01,
    3.18346619901161753674e-01,
    -1.10894694282396677476e-01,
    3.54783043256182359371e-02,
    -2.16637559486879084300e-03,
];
const QA: [f64; 6] = [
    1.06420880400844228286e-01,
    5.40397917702171048937e-01,
    7.18286544141962662868e-02,
    1.26171219808761642112e-01,
    1.36370839120290507362e-02,
    1.19844998467991074170e-02,
];
const RA: [f64; 8] = [
    -9.86494403484714822705e-03,
    -6.93858572707181764372e-01,
    -1.05586262253232909814e+01,
    -6.23753324503260060396e+01,
    -1.62396669462573470355e+02,
    -1.84605092906711035994e+02,
    -8.12874355063065934246e+01,
    -9.81432934416914548592e+00,
];
const SA: [f64; 8] = [
    1.96512716674392571292e+01,
    1.37657754143519042600e+02,
    4.34565877475229228821e+02,
    6.45387271733267880336e+02,
    4.29008140027567833386e+02,
    1.08635005541779435134e+02,
    6.57024977031928170135e+00,
    -6.04244152148580987438e-02,
];
const RB: [f64; 7] = [
    -9.86494292470009928597e-03,
    -7.99283237680523006574e-01,
    -1.77579549177547519889e+01,
    -1.60636384855821916062e+02,
    -6.37566443368389627722e+02,
    -1.02509513161107724954e+03,
    -4.83519191608651397019e+02,
];
const SB: [f64; 7] = [
    3.03380607434824582924e+01,
    3.25792512996573918826e+02,
    1.53672958608443695994e+03,
    3.19985821950859553908e+03,
    2.55305040643316442583e+03,
    4.74528541206955367215e+02,
    -2.24409524465858183362e+01,
];

/// 1/d! for d = 0…12.
const INV_FACT: [f64; 13] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362880.0,
    1.0 / 3628800.0,
    1.0 / 39916800.0,
    1.0 / 479001600.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs covering every range of erf, both signs, the boundaries and specials.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = Vec::new();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..400_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let unit = (s >> 11) as f64 / (1u64 << 53) as f64;
            let scale = [0.1, 1.0, 3.0, 12.0][i % 4];
            v.push(((unit * 2.0 - 1.0) * scale) as f32);
        }
        for b in [0.84375f64, 1.25, 1.0 / 0.35, 6.0] {
            let x = (b * std::f64::consts::SQRT_2) as f32;
            let (mut up, mut down) = (x, x);
            for _ in 0..200 {
                v.extend([up, -up, down, -down]);
                up = f32::from_bits(up.to_bits() + 1);
                down = f32::from_bits(down.to_bits() - 1);
            }
        }
        v.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e-9, 40.0, -40.0, 1e30, -1e30, 1e-40,
        ]);
        v.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ]);
        v.push(0.5); // an odd length: the reference finishes the tail
        v
    }

    /// Each width's forward and backward (whole registers, the tail by the reference), and
    /// the widest one's that `forward` / `backward` run, against the reference.
    #[test]
    fn forward_and_backward_are_the_reference_bit_for_bit() {
        if !super::super::has_avx2() {
            eprintln!("skipped: no AVX2 (the reference runs)");
            return;
        }
        let x = inputs();
        let g: Vec<f32> = x.iter().map(|v| 0.75 - v * 0.01).collect();
        let mut widths = vec![("dispatch", widest()), ("avx2", AVX2)];
        if super::super::has_avx512() {
            widths.push(("avx512", AVX512));
        } else {
            eprintln!("no AVX-512 here: its kernel is not checked");
        }
        for (name, width) in widths {
            let mut y = vec![f32::NAN; x.len()];
            // SAFETY: AVX2, and AVX-512 where it runs, checked.
            unsafe { forward_in(width, &x, &mut y) };
            for (xi, yi) in x.iter().zip(&y) {
                let want = reference_forward(*xi);
                assert_eq!(
                    yi.to_bits(),
                    want.to_bits(),
                    "{name} forward at {xi:e}: {yi:e} vs {want:e}"
                );
            }
            y.fill(f32::NAN);
            // SAFETY: as above.
            unsafe { backward_in(width, &x, &g, &mut y) };
            for ((xi, gi), yi) in x.iter().zip(&g).zip(&y) {
                let want = gi * reference_derivative(*xi);
                assert_eq!(
                    yi.to_bits(),
                    want.to_bits(),
                    "{name} backward at {xi:e}: {yi:e} vs {want:e}"
                );
            }
        }
    }

    #[test]
    fn the_vector_erf_and_exp_are_far_inside_their_slack() {
        if !super::super::has_avx2() {
            eprintln!("skipped: no AVX2");
            return;
        }
        let x: Vec<f64> = inputs()
            .into_iter()
            .filter(|v| v.is_finite())
            .map(f64::from)
            .collect();
        let args: Vec<f64> = x.iter().map(|v| (-0.5 * v * v).max(-700.0)).collect();
        let mut widths = vec![("avx2", avx2::erf_and_exp(&x, &args))];
        widths.extend(avx512::erf_and_exp(&x, &args).map(|r| ("avx512", r)));
        for (name, (e, ex)) in widths {
            let (mut worst_erf, mut worst_exp) = (0f64, 0f64);
            for k in 0..e.len() {
                let u = x[k] / std::f64::consts::SQRT_2;
                worst_erf = worst_erf.max((e[k] - libm::erf(u)).abs());
                let want = args[k].exp();
                if want > 0.0 {
                    worst_exp = worst_exp.max(((ex[k] - want) / want).abs());
                }
            }
            assert!(worst_erf < ERF_SLACK / 16.0, "{name}: erf {worst_erf:e}");
            assert!(worst_exp < 8.0 * f64::EPSILON, "{name}: exp {worst_exp:e}");
        }
    }
}
