//! Small deterministic RNGs: the same seed gives the same numbers on every platform.

/// SplitMix64: a fast, well-mixed sequential generator for initialisation and sampling.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
    /// Fisher–Yates shuffle of `v` in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The SplitMix64 finaliser; also a stateless hash for counter-based randomness (dropout).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 24 random bits behind `hash_uniform`: `mix64(seed ^ mix64(index)) >> 40`, in [0, 2²⁴).
///
/// A CUDA kernel reproduces it with 64-bit unsigned integer arithmetic (`unsigned long long`,
/// wrapping multiplies): the result is an exact integer, so CPU and GPU agree bit for bit.
pub fn hash_u24(seed: u64, index: u64) -> u32 {
    (mix64(seed ^ mix64(index)) >> 40) as u32
}

/// Uniform in [0, 1) from (seed, index): the same on CPU and GPU, so masks can be recomputed.
///
/// Exact formula: `hash_u24(seed, index) as f64 / 2²⁴`, i.e.
/// `(mix64(seed ^ mix64(index)) >> 40) / 16777216`. The value has 24 significant bits, so it
/// is exactly representable in f32 as well (`(float)(h >> 40) * (1.0f / 16777216.0f)` on the
/// GPU gives the same number).
pub fn hash_uniform(seed: u64, index: u64) -> f64 {
    hash_u24(seed, index) as f64 * (1.0 / (1u64 << 24) as f64)
}

/// Integer threshold `t` with `hash_uniform(s, i) >= p  ⇔  hash_u24(s, i) >= t`
/// (`t = ceil(p · 2²⁴)`, clamped to [0, 2²⁴]): lets a kernel decide a dropout mask with one
/// integer compare, independent of how `p` would round in f32.
pub fn hash_threshold(p: f64) -> u32 {
    let t = (p * (1u64 << 24) as f64).ceil();
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= (1u64 << 24) as f64 {
        1 << 24
    } else {
        t as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_uniform_is_24_bit_exact_and_threshold_agrees() {
        for i in 0..10_000u64 {
            let u = hash_uniform(42, i);
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u as f32 as f64, u, "not exact in f32");
            for p in [0.0, 0.1, 0.3, 1.0 / 3.0, 0.5, 0.9, 0.999_999_99] {
                assert_eq!(u >= p, hash_u24(42, i) >= hash_threshold(p));
            }
        }
    }
}
