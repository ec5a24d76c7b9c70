//! Non-finite checks on buffers the reducer and the thread group read
//! anyway, and the division of sums by the averaging divisor.
//!
//! The scans test the exponent bits of blocks of elements and branch once
//! per block, so the compiler vectorizes them; the exact element is located
//! only once a block is known to hold one.

use crate::half_float::Half;

const F32_EXPONENT: u32 = 0x7f80_0000;
const BLOCK: usize = 64;

/// Copies `src` into `out` (equal lengths) and says whether every value is
/// finite, reading each value once.
pub(crate) fn copy_checked(src: &[f32], out: &mut [f32]) -> bool {
    debug_assert_eq!(src.len(), out.len());
    let mut bad = false;
    for (src, out) in src.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let mut block = 0u32;
        for (&x, o) in src.iter().zip(out.iter_mut()) {
            *o = x;
            block |= u32::from(x.to_bits() & F32_EXPONENT == F32_EXPONENT);
        }
        bad |= block != 0;
    }
    !bad
}

/// Writes `sums / divisor` to `out` (equal lengths) and says whether every
/// sum is finite, reading each sum once.
pub(crate) fn scale_checked(sums: &[f32], divisor: f32, out: &mut [f32]) -> bool {
    debug_assert_eq!(sums.len(), out.len());
    let pairs = sums.iter().zip(out.iter_mut());
    match exact_inverse(divisor) {
        Some(inverse) => map_checked(pairs, |sum| sum * inverse),
        None => map_checked(pairs, |sum| sum / divisor),
    }
}

/// Writes `(sums + last) / divisor` to `out` (equal lengths; the sum in f32,
/// then the division) and says whether every total is finite: the last
/// summand and the averaging of an all-reduce in one loop.
#[inline(always)]
pub(crate) fn add_scale_checked(sums: &[f32], last: &[f32], divisor: f32, out: &mut [f32]) -> bool {
    debug_assert!(sums.len() == out.len() && last.len() == out.len());
    let totals = sums.iter().zip(last).map(|(sum, x)| sum + x);
    let pairs = totals.zip(out.iter_mut());
    match exact_inverse(divisor) {
        Some(inverse) => map_checked(pairs, |total| total * inverse),
        None => map_checked(pairs, |total| total / divisor),
    }
}

/// Divides `values` by `divisor` in place and says whether every value was
/// finite, reading each once.
pub(crate) fn scale_in_place_checked(values: &mut [f32], divisor: f32) -> bool {
    let cells = values.iter_mut().map(|value| (*value, value));
    match exact_inverse(divisor) {
        Some(inverse) => map_checked(cells, |value| value * inverse),
        None => map_checked(cells, |value| value / divisor),
    }
}

/// Writes `f(x)` for every `(x, out)` and says whether every `x` is finite:
/// one loop, which the compiler vectorizes (the test is on exponent bits,
/// folded without a branch).
#[inline(always)]
fn map_checked<'a>(
    pairs: impl Iterator<Item = (impl std::borrow::Borrow<f32>, &'a mut f32)>,
    f: impl Fn(f32) -> f32,
) -> bool {
    let mut bad = 0u32;
    for (x, out) in pairs {
        let x = *x.borrow();
        bad |= u32::from(x.to_bits() & F32_EXPONENT == F32_EXPONENT);
        *out = f(x);
    }
    bad == 0
}

/// Writes `sums / divisor` to `out` (equal lengths).
pub(crate) fn scale(sums: &[f32], divisor: f32, out: &mut [f32]) {
    let pairs = out.iter_mut().zip(sums);
    match exact_inverse(divisor) {
        Some(inverse) => pairs.for_each(|(out, sum)| *out = sum * inverse),
        None => pairs.for_each(|(out, sum)| *out = sum / divisor),
    }
}

/// Divides `values` by `divisor` in place.
pub(crate) fn scale_in_place(values: &mut [f32], divisor: f32) {
    match exact_inverse(divisor) {
        Some(inverse) => values.iter_mut().for_each(|value| *value *= inverse),
        None => values.iter_mut().for_each(|value| *value /= divisor),
    }
}

/// The inverse of a power of two (a world size of 2, 4, 8, ...): multiplying
/// by it gives the bits of the division at a fraction of its cost.
fn exact_inverse(divisor: f32) -> Option<f32> {
    let inverse = divisor.recip();
    (divisor.to_bits() & 0x007f_ffff == 0 && inverse * divisor == 1.0).then_some(inverse)
}

/// Whether every value is finite.
pub(crate) fn all_finite(values: &[f32]) -> bool {
    values.chunks(BLOCK).all(|block| {
        block.iter().fold(0u32, |acc, x| {
            acc | u32::from(x.to_bits() & F32_EXPONENT == F32_EXPONENT)
        }) == 0
    })
}

/// The first non-finite value, with its index.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .position(|x| !x.is_finite())
        .map(|index| (index, values[index]))
}

/// How a non-finite value reads in a message: `NaN`, `inf` or `-inf`.
pub(crate) fn describe(value: f32) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else {
        value.to_string()
    }
}

/// Whether any wire value is an infinity.
pub(crate) fn any_infinite<H: Half>(wire: &[H]) -> bool {
    wire.chunks(BLOCK).any(|block| {
        block
            .iter()
            .fold(0u32, |acc, h| acc | u32::from(h.is_infinite()))
            != 0
    })
}

/// The first element that is finite in `src` but infinite on the `wire`:
/// an overflow of the conversion.
pub(crate) fn first_overflow<H: Half>(src: &[f32], wire: &[H]) -> Option<usize> {
    src.iter()
        .zip(wire)
        .position(|(x, h)| x.is_finite() && h.is_infinite())
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    #[test]
    fn finds_every_kind_of_non_finite_anywhere() {
        for len in [0, 1, 63, 64, 65, 200] {
            let clean: Vec<f32> = (0..len).map(|i| i as f32 - 50.0).collect();
            let mut out = vec![0.0; len];
            assert!(copy_checked(&clean, &mut out));
            assert_eq!(out, clean);
            for divisor in [1.0, 3.0, 4.0, 0.5, 6.0] {
                let mut scaled = vec![7.0; len];
                assert!(scale_checked(&clean, divisor, &mut scaled));
                let expected: Vec<f32> = clean.iter().map(|x| x / divisor).collect();
                assert_eq!(scaled, expected);
                let mut in_place = clean.clone();
                assert!(scale_in_place_checked(&mut in_place, divisor));
                assert_eq!(in_place, expected);
            }
            assert!(all_finite(&clean));
            assert_eq!(first_non_finite(&clean), None);
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut values = clean.clone();
                    values[at] = bad;
                    assert!(!copy_checked(&values, &mut out), "{len} {at} {bad}");
                    assert!(!all_finite(&values));
                    assert!(!scale_checked(&values, 2.0, &mut out));
                    assert!(!scale_in_place_checked(&mut values, 2.0));
                    assert_eq!(first_non_finite(&values).map(|(i, _)| i), Some(at));
                }
            }
        }
        assert!(all_finite(&[
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            0.0,
            -0.0
        ]));
        assert_eq!(describe(f32::NAN), "NaN");
        assert_eq!(describe(f32::INFINITY), "inf");
        assert_eq!(describe(f32::NEG_INFINITY), "-inf");
    }

    #[test]
    fn scaling_by_a_power_of_two_has_the_bits_of_a_division() {
        let sums: Vec<f32> = (0..10_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) % 0x7f80_0000))
            .chain([0.0, -0.0, f32::MIN_POSITIVE, 1e-45, f32::MAX, -f32::MAX])
            .collect();
        for divisor in [1.0f32, 2.0, 4.0, 8.0, 64.0, 1024.0, 3.0, 5.0, 12.0] {
            let mut out = vec![0.0; sums.len()];
            scale(&sums, divisor, &mut out);
            let mut in_place = sums.clone();
            scale_in_place(&mut in_place, divisor);
            for ((sum, out), in_place) in sums.iter().zip(&out).zip(&in_place) {
                assert_eq!(
                    out.to_bits(),
                    (sum / divisor).to_bits(),
                    "{sum} / {divisor}"
                );
                assert_eq!(in_place.to_bits(), out.to_bits(), "{sum} / {divisor}");
            }
        }
    }

    #[test]
    fn finds_conversion_overflow() {
        let src = [1.0, 65504.0, 70000.0, f32::INFINITY, -1e6];
        let wire: Vec<f16> = src.iter().map(|&x| f16::from_f32(x)).collect();
        assert!(any_infinite(&wire));
        assert_eq!(first_overflow(&src, &wire), Some(2));
        assert_eq!(first_overflow(&src[3..], &wire[3..]), Some(1));
        let fits: Vec<f16> = [1.0f32, 65504.0]
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        assert!(!any_infinite(&fits));
        let wide: Vec<bf16> = [3.0e38f32, f32::MAX]
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        assert!(any_infinite(&wide));
        assert_eq!(first_overflow(&[3.0e38, f32::MAX], &wide), Some(1));
    }
}
