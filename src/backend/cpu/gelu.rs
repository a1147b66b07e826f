//! Exact GELU on f32 storage, bit for bit the reference, several times faster (AVX2).
//!
//! The reference ([`Unary::forward`], [`Unary::derivative`]) evaluates `erf` in f64 one
//! element at a time (libm, a branch per range) and rounds the result to f32. Here four
//! elements go at once in AVX2 registers: each range of libm's `erf` (the same formulas and
//! constants, with an `exp` of Cody–Waite reduction and Taylor to degree 13) is evaluated in
//! f64 for the four lanes when any of them needs it, and each lane selects its own. That f64
//! result is within a
//! bounded distance of the reference's f64 result; whenever the bound straddles an f32
//! rounding boundary (a few elements in a million), the element is computed by the
//! reference itself. So the f32 outputs are the reference's exactly, and every recorded
//! number stays as it was. CPUs without AVX2 run the reference.

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
/// rounded to f32. Only on CPUs with AVX2 (the caller checks `has_avx2`).
pub(super) fn forward(x: &[f32], y: &mut [f32]) {
    in_tasks(x, None, y, |x, _, y| {
        let split = x.len() / avx2::STEP * avx2::STEP;
        // SAFETY: the caller checked AVX2; the loads and stores are in bounds.
        unsafe { avx2::forward(&x[..split], &mut y[..split]) };
        for (yi, &xi) in y[split..].iter_mut().zip(&x[split..]) {
            *yi = reference_forward(xi);
        }
    });
}

/// GELU backward, `y = g · f32(GELU'(x))`, bit-identical to the reference backward.
pub(super) fn backward(x: &[f32], g: &[f32], y: &mut [f32]) {
    in_tasks(x, Some(g), y, |x, g, y| {
        let split = x.len() / avx2::STEP * avx2::STEP;
        // SAFETY: as in `forward`.
        unsafe { avx2::backward(&x[..split], &g[..split], &mut y[..split]) };
        for ((yi, &xi), &gi) in y[split..].iter_mut().zip(&x[split..]).zip(&g[split..]) {
            *yi = gi * reference_derivative(xi);
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

mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    type V = __m256d;

    #[inline(always)]
    unsafe fn splat(v: f64) -> V {
        _mm256_set1_pd(v)
    }
    #[inline(always)]
    unsafe fn add(a: V, b: V) -> V {
        _mm256_add_pd(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: V, b: V) -> V {
        _mm256_sub_pd(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: V, b: V) -> V {
        _mm256_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: V, b: V) -> V {
        _mm256_div_pd(a, b)
    }
    #[inline(always)]
    unsafe fn abs(a: V) -> V {
        _mm256_andnot_pd(splat(-0.0), a)
    }
    /// `if mask { a } else { b }` per lane.
    #[inline(always)]
    unsafe fn select(mask: V, a: V, b: V) -> V {
        _mm256_blendv_pd(b, a, mask)
    }
    #[inline(always)]
    unsafe fn lt(a: V, b: V) -> V {
        _mm256_cmp_pd::<_CMP_LT_OQ>(a, b)
    }
    /// Whether any lane of a comparison's mask is set.
    #[inline(always)]
    unsafe fn any(mask: V) -> bool {
        _mm256_movemask_pd(mask) != 0
    }

    /// Horner's rule, highest coefficient last: c₀ + s(c₁ + s(c₂ + …)), as libm nests it.
    #[inline(always)]
    unsafe fn poly(c: &[f64], s: V) -> V {
        let (&last, rest) = c.split_last().expect("a coefficient");
        rest.iter()
            .rev()
            .fold(splat(last), |acc, &ci| add(splat(ci), mul(s, acc)))
    }
    /// `1 + s·poly(c, s)`: libm's denominators.
    #[inline(always)]
    unsafe fn poly1(c: &[f64], s: V) -> V {
        add(splat(1.0), mul(s, poly(c, s)))
    }

    /// erf(x/√2) in every lane, each of libm's ranges evaluated and the lane's selected.
    #[inline(always)]
    unsafe fn erf_of(x: V) -> V {
        let u = div(x, splat(std::f64::consts::SQRT_2));
        let a = abs(u);
        // |u| < 0.84375: u + u·P/Q (most lanes: the other ranges only run when a lane
        // needs them)
        let z = mul(u, u);
        let small = add(u, mul(u, div(poly(&PP, z), poly1(&QQ, z))));
        let is_small = lt(a, splat(0.84375));
        if _mm256_movemask_pd(is_small) == 0b1111 {
            return small;
        }
        // 0.84375 ≤ |u| < 1.25: 1 − erfc, erfc = 1 − erx − P/Q around 1
        let is_mid = lt(a, splat(1.25));
        let mut big = splat(1.0); // |u| ≥ 6: 1 − 2⁻¹⁰²², which is 1
        if any(_mm256_andnot_pd(is_small, is_mid)) {
            let s = sub(a, splat(1.0));
            let erfc = sub(
                sub(splat(1.0), splat(ERX)),
                div(poly(&PA, s), poly1(&QA, s)),
            );
            big = select(is_mid, sub(splat(1.0), erfc), big);
        }
        // 1.25 ≤ |u| < 6: erfc = exp(−z² − 0.5625) · exp((z − a)(z + a) + R/S) / a, with z
        // = a with its low 32 bits cleared (so z² is exact)
        let is_tail = _mm256_andnot_pd(is_mid, lt(a, splat(6.0)));
        if any(is_tail) {
            let ak = _mm256_min_pd(_mm256_max_pd(a, splat(1.25)), splat(6.0));
            let s = div(splat(1.0), mul(ak, ak));
            let near = lt(ak, splat(1.0 / 0.35));
            let (r, big_s) = match _mm256_movemask_pd(near) {
                0b1111 => (poly(&RA, s), poly1(&SA, s)),
                0 => (poly(&RB, s), poly1(&SB, s)),
                _ => (
                    select(near, poly(&RA, s), poly(&RB, s)),
                    select(near, poly1(&SA, s), poly1(&SB, s)),
                ),
            };
            let hi = _mm256_castsi256_pd(_mm256_set1_epi64x(0xffff_ffff_0000_0000_u64 as i64));
            let zt = _mm256_and_pd(ak, hi);
            let e1 = sub(mul(sub(splat(0.0), zt), zt), splat(0.5625));
            let e2 = add(mul(sub(zt, ak), add(zt, ak)), div(r, big_s));
            let tail = sub(splat(1.0), div(mul(exp(e1), exp(e2)), ak));
            big = select(is_tail, tail, big);
        }
        let signed = _mm256_or_pd(big, _mm256_and_pd(u, splat(-0.0)));
        select(is_small, small, signed)
    }

    /// e^x for x in [−700, 700] (arguments here lie in [−40, 2]).
    #[inline(always)]
    unsafe fn exp(x: V) -> V {
        const LN2_HI: f64 = 6.93147180369123816490e-01; // 32 bits: n·LN2_HI is exact
        const LN2_LO: f64 = 1.90821492927058770002e-10;
        // 1.5·2⁵²: adding it rounds to an integer held in the low mantissa bits
        const ROUND: f64 = 6755399441055744.0;
        let x = _mm256_min_pd(_mm256_max_pd(x, splat(-700.0)), splat(700.0));
        let t = add(mul(x, splat(std::f64::consts::LOG2_E)), splat(ROUND));
        let n = sub(t, splat(ROUND));
        let r = sub(sub(x, mul(n, splat(LN2_HI))), mul(n, splat(LN2_LO))); // |r| ≤ ln2/2
                                                                           // e^r = Σ r^d/d! to d = 13: truncation < 2⁻⁵⁶ relative
        let mut p = splat(1.0 / 6227020800.0);
        for &c in INV_FACT[1..].iter().rev() {
            p = add(mul(p, r), splat(c));
        }
        let er = add(splat(1.0), mul(r, p));
        // t and ROUND share their exponent, so their bits differ by n
        let n_int = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(splat(ROUND)));
        let scale = _mm256_slli_epi64::<52>(_mm256_add_epi64(n_int, _mm256_set1_epi64x(1023)));
        mul(er, _mm256_castsi256_pd(scale))
    }

    /// The f32 roundings of `v` when every value within `slack` rounds alike, with a mask of
    /// the lanes where they do (finite ones only).
    #[inline(always)]
    unsafe fn certain(v: V, slack: V) -> (__m128, i32) {
        let lo = _mm256_cvtpd_ps(sub(v, slack));
        let hi = _mm256_cvtpd_ps(add(v, slack));
        let same = _mm_cmpeq_epi32(_mm_castps_si128(lo), _mm_castps_si128(hi));
        let finite = _mm256_cvtpd_ps(lt(abs(add(v, slack)), splat(f64::INFINITY)));
        let ok = _mm_and_si128(same, _mm_castps_si128(finite));
        (lo, _mm_movemask_ps(_mm_castsi128_ps(ok)))
    }

    /// Elements per step.
    pub(super) const STEP: usize = 4;

    #[inline(always)]
    unsafe fn load(x: &[f32], i: usize) -> V {
        _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i)))
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn forward(x: &[f32], y: &mut [f32]) {
        for i in (0..x.len()).step_by(STEP) {
            let xv = load(x, i);
            let e = erf_of(xv);
            let fast = mul(mul(splat(0.5), xv), add(splat(1.0), e));
            let slack = add(
                mul(splat(0.5 * ERF_SLACK), abs(xv)),
                mul(abs(fast), splat(REL_SLACK)),
            );
            let (out, ok) = certain(fast, slack);
            _mm_storeu_ps(y.as_mut_ptr().add(i), out);
            for k in (0..4).filter(|k| ok & (1 << k) == 0) {
                y[i + k] = reference_forward(x[i + k]);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn backward(x: &[f32], g: &[f32], y: &mut [f32]) {
        let sqrt_2pi = splat((2.0 * std::f64::consts::PI).sqrt());
        for i in (0..x.len()).step_by(STEP) {
            let xv = load(x, i);
            let e = erf_of(xv);
            let cdf = mul(splat(0.5), add(splat(1.0), e));
            let pdf = div(exp(mul(mul(splat(-0.5), xv), xv)), sqrt_2pi);
            let xpdf = mul(xv, pdf);
            let fast = add(cdf, xpdf);
            let slack = add(
                splat(0.5 * ERF_SLACK),
                mul(add(abs(xpdf), abs(fast)), splat(REL_SLACK)),
            );
            let (d, ok) = certain(fast, slack);
            let out = _mm_mul_ps(_mm_loadu_ps(g.as_ptr().add(i)), d);
            _mm_storeu_ps(y.as_mut_ptr().add(i), out);
            for k in (0..4).filter(|k| ok & (1 << k) == 0) {
                y[i + k] = g[i + k] * reference_derivative(x[i + k]);
            }
        }
    }

    /// The vector erf and exp of `STEP` lanes, for the tests.
    #[cfg(test)]
    pub(super) fn erf_and_exp(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
        #[target_feature(enable = "avx2")]
        unsafe fn go(x: &[f64], arg: &[f64]) -> (Vec<f64>, Vec<f64>) {
            let e = erf_of(_mm256_loadu_pd(x.as_ptr()));
            let ex = exp(_mm256_loadu_pd(arg.as_ptr()));
            let (mut eo, mut exo) = (vec![0.0; STEP], vec![0.0; STEP]);
            _mm256_storeu_pd(eo.as_mut_ptr(), e);
            _mm256_storeu_pd(exo.as_mut_ptr(), ex);
            (eo, exo)
        }
        assert!(crate::backend::cpu::has_avx2());
        // SAFETY: AVX2 checked.
        unsafe { go(x, arg) }
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

    #[test]
    fn forward_and_backward_are_the_reference_bit_for_bit() {
        if !super::super::has_avx2() {
            eprintln!("skipped: no AVX2 (the reference runs)");
            return;
        }
        let x = inputs();
        let g: Vec<f32> = x.iter().map(|v| 0.75 - v * 0.01).collect();
        let mut y = vec![f32::NAN; x.len()];
        forward(&x, &mut y);
        for (xi, yi) in x.iter().zip(&y) {
            let want = reference_forward(*xi);
            assert_eq!(
                yi.to_bits(),
                want.to_bits(),
                "forward at {xi:e}: {yi:e} vs {want:e}"
            );
        }
        y.fill(f32::NAN);
        backward(&x, &g, &mut y);
        for ((xi, gi), yi) in x.iter().zip(&g).zip(&y) {
            let want = gi * reference_derivative(*xi);
            assert_eq!(
                yi.to_bits(),
                want.to_bits(),
                "backward at {xi:e}: {yi:e} vs {want:e}"
            );
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
        let (mut worst_erf, mut worst_exp) = (0f64, 0f64);
        for xl in x.chunks_exact(avx2::STEP) {
            let args: Vec<f64> = xl.iter().map(|v| (-0.5 * v * v).max(-700.0)).collect();
            let (e, ex) = avx2::erf_and_exp(xl, &args);
            for k in 0..avx2::STEP {
                let u = xl[k] / std::f64::consts::SQRT_2;
                worst_erf = worst_erf.max((e[k] - libm::erf(u)).abs());
                let want = args[k].exp();
                if want > 0.0 {
                    worst_exp = worst_exp.max(((ex[k] - want) / want).abs());
                }
            }
        }
        assert!(worst_erf < ERF_SLACK / 16.0, "erf {worst_erf:e}");
        assert!(worst_exp < 8.0 * f64::EPSILON, "exp {worst_exp:e}");
    }
}
