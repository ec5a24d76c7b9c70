//! The two 16-bit float types a wire can carry, and whole-slice conversions
//! between them and f32.
//!
//! `half`'s own slice conversions cost more than the memory they touch: for
//! f16 they call the F16C instruction through a function pointer for every
//! eight values, and for bf16 they convert one value at a time. Here each
//! direction is one loop, built a second time for AVX2 (with F16C for f16)
//! and chosen by CPU detection once per slice. The results have the bits of
//! `half`'s conversions, NaNs included: rounded to nearest, ties to even, and
//! a NaN quieted.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A 16-bit float type of a wire.
pub(crate) trait Half: Copy {
    /// Whether this value is an infinity.
    fn is_infinite(self) -> bool;

    /// Writes each value of `src` to `dst` (equal lengths), exactly.
    fn widen(src: &[Self], dst: &mut [f32]);

    /// Writes each value of `src` to `dst` (equal lengths), rounded to
    /// nearest, ties to even.
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl Half for f16 {
    fn is_infinite(self) -> bool {
        self.to_bits() & 0x7fff == 0x7c00
    }

    fn widen(src: &[f16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if x86::has_f16c() {
            // SAFETY: the CPU has AVX and F16C.
            return unsafe { x86::widen_f16(src, dst) };
        }
        src.convert_to_f32_slice(dst);
    }

    fn narrow(src: &[f32], dst: &mut [f16]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if x86::has_f16c() {
            // SAFETY: the CPU has AVX and F16C.
            return unsafe { x86::narrow_f16(src, dst) };
        }
        dst.convert_from_f32_slice(src);
    }
}

impl Half for bf16 {
    fn is_infinite(self) -> bool {
        self.to_bits() & 0x7fff == 0x7f80
    }

    fn widen(src: &[bf16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::widen_bf16(src, dst) };
        }
        widen_bf16(src, dst);
    }

    fn narrow(src: &[f32], dst: &mut [bf16]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::narrow_bf16(src, dst) };
        }
        narrow_bf16(src, dst);
    }
}

/// `bf16::to_f32` for each value, without a branch, so that it vectorizes.
#[inline(always)]
fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    for (out, value) in dst.iter_mut().zip(src) {
        let bits = u32::from(value.to_bits());
        // A NaN is quieted, as `half` does.
        let quiet = if bits & 0x7fff > 0x7f80 { 0x0040 } else { 0 };
        *out = f32::from_bits((bits | quiet) << 16);
    }
}

/// `bf16::from_f32` for each value, without a branch, so that it vectorizes.
#[inline(always)]
fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    for (out, value) in dst.iter_mut().zip(src) {
        let bits = value.to_bits();
        // Adding 0x7fff, plus one when the kept part is odd, carries into the
        // kept part exactly when the dropped part is above half, or half with
        // an odd kept part: ties to even. An infinity stays one; the largest
        // finite values round up to it, as they should.
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        // A NaN keeps its top bits, quieted.
        let nan = (bits >> 16) | 0x0040;
        let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
        *out = bf16::from_bits((if is_nan { nan } else { rounded }) as u16);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _MM_FROUND_TO_NEAREST_INT, _mm_loadu_si128, _mm_storeu_si128, _mm256_cvtph_ps,
        _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_storeu_ps,
    };

    use half::{bf16, f16};

    /// Values per F16C instruction.
    const LANES: usize = 8;

    pub(super) fn has_f16c() -> bool {
        std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
    }

    /// [`super::widen_bf16`] built for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        super::widen_bf16(src, dst);
    }

    /// [`super::narrow_bf16`] built for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
        super::narrow_bf16(src, dst);
    }

    /// Eight values a time with F16C.
    ///
    /// # Safety
    /// The CPU must have AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        by_eights(src, dst, |src, dst| {
            // SAFETY: eight two-byte values to read, eight f32 to write.
            unsafe {
                let halves = _mm_loadu_si128(src.as_ptr().cast::<__m128i>());
                _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_cvtph_ps(halves));
            }
        });
    }

    /// Eight values a time with F16C.
    ///
    /// # Safety
    /// The CPU must have AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow_f16(src: &[f32], dst: &mut [f16]) {
        by_eights(src, dst, |src, dst| {
            // SAFETY: eight f32 to read, eight two-byte values to write.
            unsafe {
                let wide = _mm256_loadu_ps(src.as_ptr());
                let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(wide);
                _mm_storeu_si128(dst.as_mut_ptr().cast::<__m128i>(), halves);
            }
        });
    }

    /// Runs `convert8` on each eight values of `src` and of `dst` (equal
    /// lengths); the last few go through eight-value buffers, so that every
    /// value takes the same instruction. Inlined into its callers, so it is
    /// built with their CPU features.
    #[inline(always)]
    fn by_eights<S: Copy + Default, D: Copy + Default>(
        src: &[S],
        dst: &mut [D],
        convert8: impl Fn(&[S; LANES], &mut [D; LANES]),
    ) {
        let mut src_chunks = src.chunks_exact(LANES);
        let mut dst_chunks = dst.chunks_exact_mut(LANES);
        for (src, dst) in (&mut src_chunks).zip(&mut dst_chunks) {
            convert8(src.try_into().unwrap(), dst.try_into().unwrap());
        }
        let (src, dst) = (src_chunks.remainder(), dst_chunks.into_remainder());
        if !src.is_empty() {
            let (mut src_buffer, mut dst_buffer) = ([S::default(); LANES], [D::default(); LANES]);
            src_buffer[..src.len()].copy_from_slice(src);
            convert8(&src_buffer, &mut dst_buffer);
            dst.copy_from_slice(&dst_buffer[..dst.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `half`'s software conversions (which no CPU feature changes) and bits.
    trait Reference: Half {
        fn from_bits(bits: u16) -> Self;
        fn bits(self) -> u16;
        fn to_f32(self) -> f32;
        fn from_f32(value: f32) -> Self;
    }

    macro_rules! reference {
        ($ty:ty) => {
            impl Reference for $ty {
                fn from_bits(bits: u16) -> Self {
                    <$ty>::from_bits(bits)
                }
                fn bits(self) -> u16 {
                    self.to_bits()
                }
                fn to_f32(self) -> f32 {
                    self.to_f32_const()
                }
                fn from_f32(value: f32) -> Self {
                    <$ty>::from_f32_const(value)
                }
            }
        };
    }

    reference!(f16);
    reference!(bf16);

    /// Every 16-bit value, in an order whose length is not a multiple of
    /// eight, so that the tails are converted too.
    fn every_value<H: Reference>() -> Vec<H> {
        (0..=u16::MAX).chain(0..5).map(H::from_bits).collect()
    }

    /// The f32 values where rounding to `H` changes, and their neighbours:
    /// each finite value of `H`, the point half-way to the next one away
    /// from zero (past the largest, where an infinity begins) and the f32
    /// values on either side of it; then a sweep of every f32 range.
    fn rounding_points<H: Reference>() -> Vec<f32> {
        let mut points = Vec::new();
        for bits in 0..=u16::MAX {
            let value = H::from_bits(bits).to_f32();
            if !value.is_finite() {
                points.push(value);
                continue;
            }
            let next = H::from_bits(bits + 1).to_f32();
            let step = if next.is_finite() {
                f64::from(next) - f64::from(value)
            } else {
                f64::from(value) - f64::from(H::from_bits(bits - 1).to_f32())
            };
            // Exact: half a step needs one bit more than `H` has.
            let half_way = (f64::from(value) + step / 2.0) as f32;
            let bits = half_way.to_bits();
            points.extend([value, half_way, f32::from_bits(bits - 1)]);
            points.push(f32::from_bits(bits + 1));
        }
        points.extend((0..u32::MAX / 4093).map(|i| f32::from_bits(i * 4093)));
        points
    }

    /// Checks `widen` on every value of `H` and `narrow` on every rounding
    /// point against `half`'s software conversions: the same bits, NaNs'
    /// included.
    fn check<H: Reference>(widen: impl Fn(&[H], &mut [f32]), narrow: impl Fn(&[f32], &mut [H])) {
        let values = every_value::<H>();
        let mut wide = vec![0.0; values.len()];
        widen(&values, &mut wide);
        for (&value, &got) in values.iter().zip(&wide) {
            let expected = value.to_f32();
            assert_eq!(
                got.to_bits(),
                expected.to_bits(),
                "{:#06x} widened to {got:e} ({:#010x}), not {expected:e}",
                value.bits(),
                got.to_bits(),
            );
        }

        let points = rounding_points::<H>();
        let mut narrowed = vec![H::from_bits(0); points.len()];
        narrow(&points, &mut narrowed);
        for (&point, &got) in points.iter().zip(&narrowed) {
            let expected = H::from_f32(point);
            assert_eq!(
                got.bits(),
                expected.bits(),
                "{point:e} ({:#010x}) narrowed to {:#06x}, not {:#06x}",
                point.to_bits(),
                got.bits(),
                expected.bits()
            );
        }
    }

    #[test]
    fn conversions_have_the_bits_of_halfs_own() {
        check::<f16>(f16::widen, f16::narrow);
        check::<bf16>(bf16::widen, bf16::narrow);
    }

    #[test]
    fn the_portable_bf16_loops_have_the_bits_of_halfs_own() {
        check::<bf16>(widen_bf16, narrow_bf16);
    }

    /// The builds the CPU picks are checked above; these are checked even
    /// where it would pick another.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_builds_have_the_bits_of_halfs_own() {
        if x86::has_f16c() {
            // SAFETY (both): the CPU has AVX and F16C.
            let widen = |src: &[f16], dst: &mut [f32]| unsafe { x86::widen_f16(src, dst) };
            let narrow = |src: &[f32], dst: &mut [f16]| unsafe { x86::narrow_f16(src, dst) };
            check::<f16>(widen, narrow);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY (both): the CPU has AVX2.
            let widen = |src: &[bf16], dst: &mut [f32]| unsafe { x86::widen_bf16(src, dst) };
            let narrow = |src: &[f32], dst: &mut [bf16]| unsafe { x86::narrow_bf16(src, dst) };
            check::<bf16>(widen, narrow);
        }
    }
}
