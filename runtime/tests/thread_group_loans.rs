//! The thread group reduces straight out of the ranks' own buffers and
//! writes the sums straight into them, so a rank must not release its buffer
//! while another still reads or writes it — on the way out of a healthy
//! operation, and when a rank gives up mid-operation.
//! Miri and loom do not run on this toolchain; these stress tests make the
//! races happen many times instead:
//!
//! - After every operation each rank overwrites its buffer (contiguous, or
//!   scattered over parts) with NaN at once and frees it. A rank that left
//!   while a slower peer still read its buffer would hand that peer NaN, and
//!   one that left before a peer wrote its share of the sums would see the
//!   wrong values: every successful result is checked against the exact sum.
//! - Failures are injected mid-operation (a timeout of a few microseconds
//!   against buffers that take milliseconds to sum, ranks that abort or
//!   leave, ranks that disagree about the element type) in random places:
//!   every rank must end with the exact sum or an error, never a wrong
//!   value, a crash or a hang.

mod common;

use std::time::Duration;

use common::*;
use half::bf16;
use maskddp_runtime::{
    Collective, CollectiveError, Op, ScatteredPart, Tag, ThreadCollective, ThreadGroup,
    ThreadGroupConfig, WireBuf,
};

const LIMIT: Duration = Duration::from_secs(120);

/// Rank `r`'s element `i` in operation `op`: small integers, so every sum
/// is exact whatever the order.
fn value(op: usize, rank: usize, i: usize) -> f32 {
    ((op * 13 + rank * 31 + i * 7) % 97) as f32 - 48.0
}

/// One all-reduce of a fresh buffer, contiguous in even operations and
/// scattered over separately allocated parts (one of them empty) in odd
/// ones; on success every element must be the exact sum. Then the buffer is
/// poisoned and freed.
fn reduce_and_poison(
    collective: &mut ThreadCollective,
    op: usize,
    world: usize,
    len: usize,
) -> Result<(), CollectiveError> {
    let rank = collective.rank();
    let tag = Tag::new(op as u64 + 1, Op::Bucket(0));
    let data: Vec<f32> = (0..len).map(|i| value(op, rank, i)).collect();
    let cuts = if op.is_multiple_of(2) {
        vec![len]
    } else {
        vec![len / 3, 0, len - len / 3]
    };
    let mut parts = cut_into(&data, &cuts);
    let result = match parts.as_mut_slice() {
        [whole] => collective.all_reduce_sum(tag, WireBuf::F32(whole)),
        parts => {
            let mut views: Vec<ScatteredPart<'_>> = parts
                .iter_mut()
                .map(|part| ScatteredPart::new(part, 1.0))
                .collect();
            collective.all_reduce_scattered(tag, &mut views)
        }
    };
    if result.is_ok() {
        for (i, &x) in parts.iter().flatten().enumerate() {
            let expected: f32 = (0..world).map(|r| value(op, r, i)).sum();
            assert_eq!(
                x, expected,
                "op {op}: rank {rank} got a wrong sum at element {i} of {len}"
            );
        }
    }
    // A peer still reading this buffer would now see NaN, then freed memory.
    for mut part in parts {
        part.fill(f32::NAN);
        drop(part);
    }
    result
}

#[test]
fn no_rank_leaves_while_a_peer_still_reads_its_buffer() {
    for world in [2usize, 3, 4, 5] {
        all_ok(run_ranks(
            ThreadGroup::new(world),
            LIMIT,
            move |rank, mut collective| {
                let mut rng = Rng::new(7 + rank as u64);
                for op in 0..60 {
                    // Lengths from empty to a few hundred KiB; the ranks'
                    // speeds vary with the scheduler and with `rng`.
                    let len = [0, 1, world - 1, 4_097, 65_536, 200_003][op % 6];
                    if rng.chance(0.3) {
                        std::thread::yield_now();
                    }
                    reduce_and_poison(&mut collective, op, world, len).unwrap();
                }
            },
        ));
    }
}

#[test]
fn failures_mid_operation_never_hand_out_wrong_values() {
    let mut failed = 0;
    let mut succeeded = 0;
    for case in 0..120u64 {
        let mut rng = Rng::new(0x10a5 + case);
        let world = 2 + rng.below(4);
        // Microseconds: ranks that arrive a little apart time out while the
        // others sum or copy from their buffers.
        let timeout = Duration::from_micros(1 + rng.below(400) as u64);
        let victim = rng.below(world);
        let fault = rng.below(4);
        let group =
            ThreadGroup::with_config(world, ThreadGroupConfig::default().with_timeout(timeout));
        let outcomes = all_ok(run_ranks(group, LIMIT, move |rank, mut collective| {
            let mut outcomes = Vec::new();
            for op in 0..6 {
                let len = [50_000, 3, 120_001, 0, 65_536, 7][op];
                if rank == victim && op == 3 {
                    match fault {
                        // Leaves the group: its collective is dropped.
                        0 => return outcomes,
                        // Aborts the group.
                        1 => collective.abort(Tag::new(op as u64 + 1, Op::Bucket(0)), "injected"),
                        // Sums another element type of the same length.
                        2 => {
                            let mut halves = vec![bf16::ONE; len];
                            let result = collective.all_reduce_sum(
                                Tag::new(op as u64 + 1, Op::Bucket(0)),
                                WireBuf::Bf16(&mut halves),
                            );
                            outcomes.push(result.is_ok());
                            continue;
                        }
                        // Only the tiny timeout.
                        _ => {}
                    }
                }
                let result = reduce_and_poison(&mut collective, op, world, len);
                outcomes.push(result.is_ok());
            }
            outcomes
        }));
        for outcome in outcomes.iter().flatten() {
            if *outcome {
                succeeded += 1;
            } else {
                failed += 1;
            }
        }
    }
    // Both paths were exercised many times.
    assert!(failed > 100, "only {failed} failed operations");
    assert!(succeeded > 100, "only {succeeded} successful operations");
}

#[test]
fn a_different_element_type_is_an_error_not_a_misread() {
    let results = all_ok(run_ranks(
        ThreadGroup::new(2),
        LIMIT,
        |rank, mut collective| {
            let tag = Tag::new(1, Op::Bucket(0));
            if rank == 0 {
                let mut data = vec![1.0f32; 8];
                collective.all_reduce_sum(tag, WireBuf::F32(&mut data))
            } else {
                let mut data = vec![bf16::ONE; 8];
                collective.all_reduce_sum(tag, WireBuf::Bf16(&mut data))
            }
        },
    ));
    for result in results {
        let err = result
            .expect_err("mixed element types must fail")
            .to_string();
        assert!(err.contains("lent 8 elements of"), "{err}");
        assert!(err.contains("bf16") && err.contains("f32"), "{err}");
        assert!(err.contains("step 1, all-reduce of bucket 0"), "{err}");
    }
}
