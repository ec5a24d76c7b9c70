//! One pass each way between f32 gradients and a 16-bit wire.
//!
//! Packing converts each gradient straight into its span of the wire, and
//! unpacking converts each span of sums straight into the gradient's own
//! buffer: no f32 copy of the bucket in between. Both work a block at a time,
//! so that the checks and the division run on values still in L1, and the
//! conversions take whole blocks (see [`crate::half_float`]).

use crate::finite;
use crate::half_float::Half;

/// Values per block: the block and its conversion stay in L1.
const BLOCK: usize = 1024;

/// What a checked [`pack`] found in one gradient.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct PackFound {
    /// The first value that is not finite, with its index.
    pub non_finite: Option<(usize, f32)>,
    /// The first finite value that the conversion turned into an infinity.
    pub overflow: Option<usize>,
}

/// Converts `src` into `wire` (equal lengths), rounding each value to
/// nearest; with `check`, says what is not finite and what overflowed.
pub(super) fn pack<H: Half>(src: &[f32], wire: &mut [H], check: bool) -> PackFound {
    debug_assert_eq!(src.len(), wire.len());
    let mut found = PackFound::default();
    for (index, (src, wire)) in src.chunks(BLOCK).zip(wire.chunks_mut(BLOCK)).enumerate() {
        H::narrow(src, wire);
        if !check {
            continue;
        }
        let at = |element| index * BLOCK + element;
        if found.non_finite.is_none() && !finite::all_finite(src) {
            found.non_finite = finite::first_non_finite(src).map(|(i, value)| (at(i), value));
        }
        if found.overflow.is_none() && finite::any_infinite(wire) {
            found.overflow = finite::first_overflow(src, wire).map(at);
        }
    }
    found
}

/// Writes the sums `wire`, widened and divided by `divisor`, to `out` (equal
/// lengths); with `check`, says whether every sum is finite.
pub(super) fn unpack<H: Half>(wire: &[H], divisor: f32, out: &mut [f32], check: bool) -> bool {
    debug_assert_eq!(wire.len(), out.len());
    let mut all_finite = true;
    for (wire, out) in wire.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        H::widen(wire, out);
        if check {
            all_finite &= finite::scale_in_place_checked(out, divisor);
        } else {
            finite::scale_in_place(out, divisor);
        }
    }
    all_finite
}

#[cfg(test)]
mod tests {
    use half::slice::HalfFloatSliceExt;
    use half::{bf16, f16};

    use super::*;

    /// Values over several blocks, some of which round.
    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919) % 10_007) as f32 * 3.1e-3 - 15.0)
            .collect()
    }

    #[test]
    fn pack_and_unpack_give_the_bits_of_whole_slice_conversions() {
        let src = values(3 * BLOCK + 17);
        let mut wire = vec![f16::ZERO; src.len()];
        assert_eq!(pack(&src, &mut wire, true), PackFound::default());
        let mut expected = vec![f16::ZERO; src.len()];
        expected.convert_from_f32_slice(&src);
        assert!(
            wire.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );

        for divisor in [2.0, 3.0] {
            let mut out = vec![0.0; src.len()];
            assert!(unpack(&wire, divisor, &mut out, true));
            let expected: Vec<f32> = expected.iter().map(|x| x.to_f32() / divisor).collect();
            assert_eq!(
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                expected.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn pack_finds_the_first_non_finite_value_and_the_first_overflow() {
        let mut src = values(4 * BLOCK);
        src[2 * BLOCK + 5] = f32::NAN;
        src[3 * BLOCK + 1] = f32::NEG_INFINITY;
        src[BLOCK + 3] = 1.0e6; // beyond f16, within bf16
        src[3 * BLOCK + 9] = -2.0e6;
        let mut wire = vec![f16::ZERO; src.len()];
        let found = pack(&src, &mut wire, true);
        assert_eq!(found.overflow, Some(BLOCK + 3));
        let (element, value) = found.non_finite.expect("a NaN");
        assert!(element == 2 * BLOCK + 5 && value.is_nan());

        let mut wire = vec![bf16::ZERO; src.len()];
        let found = pack(&src, &mut wire, true);
        assert_eq!(found.overflow, None);
        assert_eq!(
            found.non_finite.map(|(element, _)| element),
            Some(2 * BLOCK + 5)
        );

        // Unchecked, nothing is looked for.
        assert_eq!(pack(&src, &mut wire, false), PackFound::default());
    }

    #[test]
    fn unpack_says_whether_every_sum_is_finite() {
        let mut wire: Vec<bf16> = values(2 * BLOCK).into_iter().map(bf16::from_f32).collect();
        let mut out = vec![0.0; wire.len()];
        assert!(unpack(&wire, 4.0, &mut out, true));
        wire[BLOCK + 100] = bf16::INFINITY;
        assert!(!unpack(&wire, 4.0, &mut out, true));
        assert!(out[BLOCK + 100].is_infinite());
        assert!(unpack(&wire, 4.0, &mut out, false));
    }
}
