//! The random stream of the synthetic data generator.

use crate::util::rng::SplitMix64;

/// splitmix64 bits ([`SplitMix64::next_u64`]) with the generator's own reductions to ranges:
/// multiply-shift [`SynthRng::below`] and 24-bit [`SynthRng::unit_f32`]. They differ from
/// `util::rng::SplitMix64`'s float-based `below`, so the same seed gives other draws there;
/// this type keeps them because every synthetic dataset (and every number recorded on one)
/// is drawn with them. Not cryptographic; same seed → same stream on every platform.
#[derive(Debug, Clone)]
pub struct SynthRng(SplitMix64);

impl SynthRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n` (n > 0; returns 0 for n == 0). Uses the multiply-shift reduction.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
    /// Uniform in `[lo, hi]` inclusive.
    pub fn range_i32(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi - lo + 1).max(1) as usize) as i32
    }
    /// Uniform in `[0, 1)`.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit_f32() < p
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
    /// A derived, independent seed (for per-item sub-streams).
    pub fn fork(&mut self) -> u64 {
        self.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values_and_ranges() {
        // Reference values of splitmix64 seeded with 0.
        let mut r = SynthRng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SynthRng::new(7);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            let x = r.below(5);
            seen[x] += 1;
            let f = r.unit_f32();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
