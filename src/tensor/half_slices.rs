//! Half ↔ f32 slice conversions, one place for every whole-slice conversion. f16 uses the
//! `half` crate's (F16C instructions where the CPU has them). bf16 uses branch-free lane code
//! the compiler vectorises, on AVX2 where the CPU has it, with the bits of the crate's scalar
//! `to_f32` and `from_f32` (a NaN keeps its payload with the quiet bit set; rounding to nearest
//! even): the crate converts bf16 slices one element at a time.

use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements one task converts: long slices convert in parallel, in tasks of this many.
const TASK: usize = 1 << 14;

/// A half type's slice conversions (lengths must match). Long slices convert in parallel:
/// the other cores would wait on the conversion otherwise (every element's result is the
/// same either way).
pub(crate) trait HalfSlices: Sized + Copy + Send + Sync {
    /// `dst[i] = src[i]`, exactly, on this thread.
    fn to_f32_here(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = src[i]` rounded to nearest even, on this thread.
    fn from_f32_here(src: &[f32], dst: &mut [Self]);

    /// `dst[i] = src[i]`, exactly.
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "half → f32: lengths differ");
        in_tasks(src, dst, Self::to_f32_here);
    }
    /// `dst[i] = src[i]` rounded to nearest even.
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        assert_eq!(src.len(), dst.len(), "f32 → half: lengths differ");
        in_tasks(src, dst, Self::from_f32_here);
    }
    /// `out` made `src` widened, each element written once (not zeroed first); an
    /// `Error::OutOfMemory` when it cannot grow.
    fn to_f32_vec(src: &[Self], out: &mut Vec<f32>) -> Result<()> {
        let n = src.len();
        out.clear();
        (out.try_reserve_exact(n)).map_err(|_| Error::OutOfMemory { bytes: n * 4 })?;
        let spare = &mut out.spare_capacity_mut()[..n];
        in_tasks(src, spare, |src, dst| {
            let mut wide = [0f32; 1024];
            for (d, s) in dst.chunks_mut(wide.len()).zip(src.chunks(wide.len())) {
                let w = &mut wide[..s.len()];
                Self::to_f32_here(s, w);
                d.iter_mut().zip(w.iter()).for_each(|(d, &w)| {
                    d.write(w);
                });
            }
        });
        // SAFETY: the first n elements were all written just above (the chunks cover them).
        unsafe { out.set_len(n) };
        Ok(())
    }
}

/// `f` on `src` and `dst` (of one length): at once when short, else on pieces of [`TASK`]
/// elements in parallel.
fn in_tasks<A: Sync, B: Send>(src: &[A], dst: &mut [B], f: impl Fn(&[A], &mut [B]) + Sync) {
    if src.len() <= TASK {
        return f(src, dst);
    }
    (dst.par_chunks_mut(TASK).zip(src.par_chunks(TASK))).for_each(|(d, s)| f(s, d));
}

impl HalfSlices for f16 {
    fn to_f32_here(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    fn from_f32_here(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src)
    }
}

impl HalfSlices for bf16 {
    fn to_f32_here(src: &[bf16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "bf16 → f32: lengths differ");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked).
            return unsafe { widen_avx2(src, dst) };
        }
        widen(src, dst)
    }
    fn from_f32_here(src: &[f32], dst: &mut [bf16]) {
        assert_eq!(src.len(), dst.len(), "f32 → bf16: lengths differ");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked).
            return unsafe { narrow_avx2(src, dst) };
        }
        narrow(src, dst)
    }
}

#[inline(always)]
fn widen(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        let h = s.to_bits();
        let quiet = if h & 0x7FFF > 0x7F80 { 0x40 } else { 0 };
        *d = f32::from_bits(u32::from(h | quiet) << 16);
    }
}

#[inline(always)]
#[allow(clippy::cast_possible_truncation)] // h < 2¹⁶: the upper half of a u32
fn narrow(src: &[f32], dst: &mut [bf16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        let b = x.to_bits();
        // Adding 0x7FFF plus the kept part's lowest bit carries into it exactly when the
        // dropped half is above one half, or equal to it with that bit odd.
        let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
        let h = if b & 0x7FFF_FFFF > 0x7F80_0000 {
            (b >> 16) | 0x40
        } else {
            rounded
        };
        *d = bf16::from_bits(h as u16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_avx2(src: &[bf16], dst: &mut [f32]) {
    widen(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn narrow_avx2(src: &[f32], dst: &mut [bf16]) {
    narrow(src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_has_the_half_crates_bits_for_every_bf16() {
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let mut fast = vec![0f32; all.len()];
        <bf16 as HalfSlices>::to_f32(&all, &mut fast);
        let mut portable = vec![0f32; all.len()];
        widen(&all, &mut portable);
        for ((h, f), p) in all.iter().zip(&fast).zip(&portable) {
            let want = h.to_f32().to_bits();
            assert_eq!(f.to_bits(), want, "{:#06x}", h.to_bits());
            assert_eq!(p.to_bits(), want, "{:#06x}", h.to_bits());
        }
    }

    /// Every upper half (sign, exponent, the 7 kept bits) with the dropped halves that decide
    /// the rounding: 0, the smallest, just under, at and just over one half, the largest.
    #[test]
    fn narrowing_has_the_half_crates_bits_at_every_rounding_edge() {
        let lows = [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF];
        let src: Vec<f32> = (0..=u32::from(u16::MAX))
            .flat_map(|hi| lows.map(|lo| f32::from_bits(hi << 16 | lo)))
            .collect();
        let mut fast = vec![bf16::ZERO; src.len()];
        <bf16 as HalfSlices>::from_f32(&src, &mut fast);
        let mut portable = vec![bf16::ZERO; src.len()];
        narrow(&src, &mut portable);
        for ((x, f), p) in src.iter().zip(&fast).zip(&portable) {
            let want = bf16::from_f32(*x).to_bits();
            assert_eq!(f.to_bits(), want, "{:#010x}", x.to_bits());
            assert_eq!(p.to_bits(), want, "{:#010x}", x.to_bits());
        }
    }
}
