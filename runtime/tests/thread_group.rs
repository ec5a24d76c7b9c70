//! The in-process collective: sums, broadcasts and gathers are correct and
//! identical on every rank, and every failure ends in an error on every rank
//! within the timeout, never a hang.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use half::{bf16, f16};
use maskddp_runtime::{
    Collective, CollectiveError, NonFiniteFound, Op, ScatteredPart, Tag, ThreadGroup,
    ThreadGroupConfig, WireBuf,
};

const LIMIT: Duration = Duration::from_secs(30);

fn short_timeout(world: usize, timeout: Duration) -> Vec<maskddp_runtime::ThreadCollective> {
    ThreadGroup::with_config(world, ThreadGroupConfig::default().with_timeout(timeout))
}

/// Rank `r`'s element `i`: distinct small integers, so sums are exact.
fn value(rank: usize, i: usize) -> f32 {
    ((rank * 31 + i * 7) % 97) as f32 - 40.0
}

#[test]
fn all_reduce_sums_any_length_on_any_world_size() {
    for world in 1..=8 {
        // Empty, fewer elements than ranks, odd, and larger buffers.
        let lengths = [0usize, 1, 3, 5, 7, 64, 1001];
        let results = all_ok(run_ranks(
            ThreadGroup::new(world),
            LIMIT,
            move |rank, mut collective| {
                let mut out = Vec::new();
                for (index, &len) in lengths.iter().enumerate() {
                    let mut data: Vec<f32> = (0..len).map(|i| value(rank, i)).collect();
                    collective
                        .all_reduce_sum(
                            Tag::new(1, Op::Bucket(index as u32)),
                            WireBuf::F32(&mut data),
                        )
                        .unwrap();
                    out.push(data);
                }
                out
            },
        ));
        for (index, &len) in lengths.iter().enumerate() {
            let expected: Vec<f32> = (0..len)
                .map(|i| (0..world).map(|r| value(r, i)).sum())
                .collect();
            for rank_result in &results {
                assert_eq!(rank_result[index], expected, "world {world}, length {len}");
            }
        }
    }
}

#[test]
fn sums_are_bit_identical_across_ranks() {
    let world = 5;
    let results = all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, mut collective| {
            let mut rng = Rng::new(rank as u64);
            let mut data: Vec<f32> = (0..333).map(|_| rng.unit() * 1e3 - 5e2).collect();
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::F32(&mut data))
                .unwrap();
            data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        },
    ));
    for result in &results[1..] {
        assert_eq!(result, &results[0]);
    }
}

/// `len` elements cut into parts at random points, empty parts included.
fn cut(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut left = len;
    while left > 0 {
        let part = ((rng.unit() * 1.5 * (len as f32).sqrt()) as usize).min(left);
        lengths.push(part);
        left -= part;
    }
    lengths.push(0);
    lengths
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// [`NonFiniteFound`] with the value as bits, so that NaN compares.
fn found_bits(found: &NonFiniteFound) -> (bool, bool, Option<(usize, u32)>) {
    let here = found
        .here
        .map(|(element, value)| (element, value.to_bits()));
    (found.in_sums, found.in_values, here)
}

/// Scattered parts sum to the bits of one contiguous buffer, each part
/// divided by its divisor (1 leaves it, a power of two multiplies by the
/// exact inverse, others divide: all must give the bits of `sum / divisor`),
/// and report per part what is not finite: every rank learns whether a
/// finished value is (non-finite values on some ranks, or a sum that
/// overflows) and whether some rank's value is, and each rank its own first
/// non-finite value in the part.
#[test]
fn scattered_parts_sum_to_the_bits_of_one_buffer_divided_and_checked() {
    for world in [1, 2, 3, 4, 7] {
        for len in [0usize, 1, 5, 64, 1000, 5000] {
            // Every rank cuts its buffer the same way (a shared seed).
            let lengths = cut(&mut Rng::new(len as u64 + 11), len);
            let divisors: Vec<f32> = (0..lengths.len())
                .map(|part| [1.0, 2.0, 3.0, world as f32, 0.1, 8.0][part % 6])
                .collect();
            // Non-finite values: (element, rank, value); two on one rank,
            // one on the next, on longer buffers.
            let first = len % world;
            let mut poisoned = Vec::new();
            if len > 1 {
                let poison = if len % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                };
                poisoned.push((len / 3, first, poison));
            }
            if len >= 64 {
                poisoned.push((len / 3 + 1, first, f32::INFINITY));
                poisoned.push((len / 2, (first + 1) % world, f32::NAN));
            }
            let (divs, cuts, poison) = (divisors.clone(), lengths.clone(), poisoned.clone());
            let results = all_ok(run_ranks(
                ThreadGroup::new(world),
                LIMIT,
                move |rank, mut collective| {
                    assert!(collective.sums_scattered());
                    let mut rng = Rng::new(rank as u64);
                    let mut whole: Vec<f32> = (0..len).map(|_| rng.unit() * 1e3 - 5e2).collect();
                    for &(element, at, value) in &poison {
                        if at == rank {
                            whole[element] = value;
                        }
                    }
                    // The last element overflows once two ranks add it.
                    if len >= 64 {
                        whole[len - 1] = 3e38;
                    }
                    let mut contiguous = whole.clone();
                    collective
                        .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::F32(&mut contiguous))
                        .unwrap();
                    let mut parts = cut_into(&whole, &cuts);
                    let mut views: Vec<ScatteredPart<'_>> = parts
                        .iter_mut()
                        .zip(&divs)
                        .map(|(part, &divisor)| ScatteredPart::new(part, divisor))
                        .collect();
                    collective
                        .all_reduce_scattered(Tag::new(1, Op::Bucket(1)), &mut views)
                        .unwrap();
                    let found: Vec<_> = views.iter().map(|part| found_bits(&part.found)).collect();
                    drop(views);
                    (contiguous, bits(&parts.concat()), found, whole)
                },
            ));
            let sums = &results[0].0;
            let context = format!("world {world}, length {len}");
            let (mut expected, mut start) = (Vec::new(), 0);
            let mut expected_found = vec![Vec::new(); world];
            for (&part_len, &divisor) in lengths.iter().zip(&divisors) {
                let range = start..start + part_len;
                let finished: Vec<f32> = sums[range.clone()]
                    .iter()
                    .map(|&sum| if divisor == 1.0 { sum } else { sum / divisor })
                    .collect();
                let in_sums = finished.iter().any(|x| !x.is_finite());
                let firsts: Vec<Option<(usize, u32)>> = results
                    .iter()
                    .map(|(.., whole)| {
                        let values = &whole[range.clone()];
                        let element = values.iter().position(|x| !x.is_finite())?;
                        Some((element, values[element].to_bits()))
                    })
                    .collect();
                let in_values = firsts.iter().any(Option::is_some);
                for (rank, here) in firsts.into_iter().enumerate() {
                    expected_found[rank].push((in_sums, in_values, here));
                }
                expected.extend(bits(&finished));
                start += part_len;
            }
            if len >= 64 && world > 1 {
                let found = expected_found.concat();
                assert!(found.iter().any(|f| f.0 && !f.1), "{context}: no overflow");
                assert!(
                    found.iter().any(|f| f.2.is_some()),
                    "{context}: no value found"
                );
            }
            for (rank, (contiguous, scattered, found, _)) in results.iter().enumerate() {
                assert_eq!(bits(contiguous), bits(sums), "{context}");
                assert_eq!(scattered, &expected, "{context}");
                assert_eq!(found, &expected_found[rank], "{context}, rank {rank}");
            }
        }
    }
}

#[test]
fn scattered_parts_of_different_lengths_are_an_error_on_every_rank() {
    let results = run_ranks(ThreadGroup::new(3), LIMIT, |rank, mut collective| {
        // The same total length, cut differently on rank 2.
        let lengths: &[usize] = if rank == 2 { &[3, 5] } else { &[4, 4] };
        let mut parts: Vec<Vec<f32>> = lengths.iter().map(|&n| vec![1.0; n]).collect();
        let mut views: Vec<ScatteredPart<'_>> = parts
            .iter_mut()
            .map(|part| ScatteredPart::new(part, 1.0))
            .collect();
        collective.all_reduce_scattered(Tag::new(2, Op::Bucket(0)), &mut views)
    });
    for result in all_ok(results) {
        let err = result.expect_err("parts of different lengths").to_string();
        assert!(err.contains("in 2 part(s) of the same lengths"), "{err}");
        assert!(err.contains("step 2, all-reduce of bucket 0"), "{err}");
    }
}

#[test]
fn compressed_and_count_reductions() {
    let world = 3;
    let results = all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, mut collective| {
            let mut b: Vec<bf16> = (0..10).map(|i| bf16::from_f32(value(rank, i))).collect();
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::Bf16(&mut b))
                .unwrap();
            let mut h: Vec<f16> = (0..10).map(|i| f16::from_f32(value(rank, i))).collect();
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(1)), WireBuf::F16(&mut h))
                .unwrap();
            let mut counts: Vec<u32> = (0..4).map(|i| u32::from(i % world == rank)).collect();
            collective
                .all_reduce_counts(Tag::new(1, Op::Usage), &mut counts)
                .unwrap();
            (
                b.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
                h.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
                counts,
            )
        },
    ));
    let expected: Vec<f32> = (0..10)
        .map(|i| (0..world).map(|r| value(r, i)).sum())
        .collect();
    for (b, h, counts) in results {
        assert_eq!(b, expected); // small integers are exact in bf16
        assert_eq!(h, expected);
        assert_eq!(counts, vec![1, 1, 1, 1]);
    }
}

/// 16-bit wires over several blocks, with values that round: every rank
/// gets, bit for bit, each element's f32 sum in rank order rounded once.
#[test]
fn sixteen_bit_sums_are_f32_sums_in_rank_order_rounded_once() {
    let (world, len) = (3, 2 * 1024 + 517);
    let wide =
        |rank: usize, i: usize| ((rank * 7919 + i * 104_729) % 20_011) as f32 * 1.37e-3 - 13.0;
    let results = all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, mut collective| {
            let mut b: Vec<bf16> = (0..len).map(|i| bf16::from_f32(wide(rank, i))).collect();
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::Bf16(&mut b))
                .unwrap();
            let mut h: Vec<f16> = (0..len).map(|i| f16::from_f32(wide(rank, i))).collect();
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(1)), WireBuf::F16(&mut h))
                .unwrap();
            (b, h)
        },
    ));
    let sum_of = |widen: &dyn Fn(usize, usize) -> f32| -> Vec<f32> {
        (0..len)
            .map(|i| (1..world).fold(widen(0, i), |sum, rank| sum + widen(rank, i)))
            .collect()
    };
    let bf16_sums: Vec<bf16> = sum_of(&|r, i| bf16::from_f32(wide(r, i)).to_f32())
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let f16_sums: Vec<f16> = sum_of(&|r, i| f16::from_f32(wide(r, i)).to_f32())
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (b, h) in results {
        assert!(
            b.iter()
                .zip(&bf16_sums)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert_eq!(bits(&h), bits(&f16_sums));
    }
}

#[test]
fn broadcast_gather_and_barrier() {
    let world = 4;
    let results = all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, mut collective| {
            let mut data = vec![rank as f32; 9];
            collective
                .broadcast(Tag::new(0, Op::Broadcast), 2, &mut data)
                .unwrap();
            let all = collective
                .all_gather_bytes(Tag::new(0, Op::Layout), &vec![rank as u8; rank])
                .unwrap();
            collective.barrier(Tag::new(0, Op::Barrier)).unwrap();
            (data, all)
        },
    ));
    for (data, all) in results {
        assert_eq!(data, vec![2.0; 9]);
        assert_eq!(
            all,
            (0..world).map(|r| vec![r as u8; r]).collect::<Vec<_>>()
        );
    }
}

#[test]
fn many_operations_in_a_row_do_not_deadlock() {
    let world = 4;
    all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, mut collective| {
            for step in 1..=2000u64 {
                let mut counts = vec![1u32; 3];
                collective
                    .all_reduce_counts(Tag::new(step, Op::Usage), &mut counts)
                    .unwrap();
                assert_eq!(counts, vec![world as u32; 3]);
                let mut data = vec![rank as f32; (step % 13) as usize];
                collective
                    .all_reduce_sum(Tag::new(step, Op::Bucket(0)), WireBuf::F32(&mut data))
                    .unwrap();
                assert!(data.iter().all(|&x| x == 6.0));
            }
        },
    ));
}

fn errors(results: Vec<RankResult<Result<(), CollectiveError>>>) -> Vec<CollectiveError> {
    all_ok(results)
        .into_iter()
        .map(|r| r.expect_err("expected an error"))
        .collect()
}

#[test]
fn differing_steps_are_a_mismatch_on_every_rank() {
    let errors = errors(run_ranks(
        short_timeout(3, LIMIT),
        LIMIT,
        |rank, mut collective| {
            // Rank 1 skipped a step.
            let step = if rank == 1 { 5 } else { 4 };
            let mut counts = vec![1u32; 2];
            collective.all_reduce_counts(Tag::new(step, Op::Usage), &mut counts)
        },
    ));
    for err in &errors {
        let message = err.to_string();
        assert!(matches!(err, CollectiveError::Mismatch { .. }), "{message}");
        assert!(
            message.contains("rank 1 is at step 5, usage exchange"),
            "{message}"
        );
        assert!(message.contains("at step 4, usage exchange"), "{message}");
    }
}

#[test]
fn differing_lengths_and_operations_are_mismatches() {
    let errors = errors(run_ranks(
        short_timeout(2, LIMIT),
        LIMIT,
        |rank, mut collective| {
            let mut data = vec![0.0f32; 3 + rank];
            collective.all_reduce_sum(Tag::new(2, Op::Bucket(0)), WireBuf::F32(&mut data))
        },
    ));
    for err in &errors {
        assert!(err.to_string().contains("with 3 elements"), "{err}");
        assert!(err.to_string().contains("with 4 elements"), "{err}");
    }
    let errors = errors_of_ops();
    for err in &errors {
        assert!(err.to_string().contains("all-reduce of bucket 0"), "{err}");
        assert!(err.to_string().contains("all-reduce of bucket 1"), "{err}");
    }
}

fn errors_of_ops() -> Vec<CollectiveError> {
    errors(run_ranks(
        short_timeout(2, LIMIT),
        LIMIT,
        |rank, mut collective| {
            let mut data = vec![0.0f32; 3];
            collective.all_reduce_sum(
                Tag::new(2, Op::Bucket(rank as u32)),
                WireBuf::F32(&mut data),
            )
        },
    ))
}

#[test]
fn a_rank_that_never_arrives_is_named_in_a_timeout() {
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let results = all_ok(run_ranks(
        short_timeout(4, timeout),
        LIMIT,
        move |rank, mut collective| {
            if rank == 3 {
                // Stuck in something else for longer than the timeout.
                std::thread::sleep(timeout * 4);
            }
            collective.barrier(Tag::new(7, Op::Barrier))
        },
    ));
    assert!(start.elapsed() < LIMIT);
    for (rank, result) in results.into_iter().enumerate() {
        let err = result.expect_err("expected a timeout");
        let message = err.to_string();
        // Rank 3 itself arrives after the others gave up: it sees their error.
        assert!(
            message.contains("step 7, barrier"),
            "rank {rank}: {message}"
        );
        assert!(
            message.contains("rank 3 did not arrive"),
            "rank {rank}: {message}"
        );
    }
}

#[test]
fn a_dropped_rank_fails_its_waiting_peers_promptly() {
    let timeout = Duration::from_secs(20);
    let start = Instant::now();
    let results = run_ranks(short_timeout(3, timeout), LIMIT, |rank, mut collective| {
        if rank == 2 {
            std::thread::sleep(Duration::from_millis(100));
            panic!("rank 2 fails on purpose");
        }
        collective.barrier(Tag::new(3, Op::Barrier))
    });
    assert!(
        start.elapsed() < timeout,
        "peers waited for the timeout instead of noticing the departure"
    );
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Err(panic) => assert_eq!(rank, 2, "{panic}"),
            Ok(result) => {
                let message = result.unwrap_err().to_string();
                assert!(message.contains("step 3, barrier"), "{message}");
                assert!(
                    message.contains("rank 2 left the group (its thread panicked)"),
                    "{message}"
                );
            }
        }
    }
}

#[test]
fn a_rank_arriving_after_a_peer_left_fails_at_once() {
    let (mut collectives, gate) = (short_timeout(2, LIMIT), Arc::new(Barrier::new(2)));
    let second = collectives.pop().unwrap();
    let first = collectives.pop().unwrap();
    let gate2 = Arc::clone(&gate);
    let leaver = std::thread::spawn(move || {
        drop(second); // returns without panicking
        gate2.wait();
    });
    gate.wait();
    leaver.join().unwrap();
    let mut first = first;
    let start = Instant::now();
    let err = first.barrier(Tag::new(1, Op::Barrier)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        err.to_string()
            .contains("rank 1 left the group (it returned or dropped its collective)"),
        "{err}"
    );
    // The group stays broken.
    assert_eq!(first.barrier(Tag::new(2, Op::Barrier)).unwrap_err(), err);
}

#[test]
fn a_completed_operation_survives_peers_leaving_right_after() {
    // Ranks that finish the same operations and drop their collectives must
    // not fail a slower peer that already completed the last rendezvous.
    for _ in 0..200 {
        all_ok(run_ranks(
            ThreadGroup::new(4),
            LIMIT,
            |rank, mut collective| {
                let mut data = vec![1.0f32; 8];
                collective
                    .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::F32(&mut data))
                    .unwrap_or_else(|err| panic!("rank {rank}: {err}"));
            },
        ));
    }
}

#[test]
fn abort_reaches_every_rank() {
    let results = all_ok(run_ranks(
        short_timeout(3, LIMIT),
        LIMIT,
        |rank, mut collective| {
            if rank == 0 {
                collective.abort(Tag::new(4, Op::Usage), "bad gradient");
            }
            collective.barrier(Tag::new(4, Op::Barrier))
        },
    ));
    for result in results {
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("step 4, usage exchange: rank 0 aborted the group: bad gradient"),
            "{message}"
        );
    }
}

#[test]
fn invalid_broadcast_root_is_reported() {
    let mut collectives = ThreadGroup::new(1);
    let err = collectives[0]
        .broadcast(Tag::new(0, Op::Broadcast), 3, &mut [0.0])
        .unwrap_err();
    assert!(err.to_string().contains("root 3"), "{err}");
}

#[test]
fn an_unrepresentably_long_timeout_waits_without_a_deadline() {
    // `Duration::MAX` cannot be added to an instant: it means "no deadline".
    // A late rank (so that the others really wait) still completes normally.
    let results = all_ok(run_ranks(
        short_timeout(4, Duration::MAX),
        LIMIT,
        |rank, mut collective| {
            if rank == 3 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut data = vec![rank as f32 + 1.0; 5];
            collective
                .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::F32(&mut data))
                .unwrap_or_else(|err| panic!("rank {rank}: {err}"));
            collective
                .barrier(Tag::new(1, Op::Barrier))
                .unwrap_or_else(|err| panic!("rank {rank}: {err}"));
            data
        },
    ));
    for data in results {
        assert_eq!(data, vec![10.0; 5]);
    }
}

#[test]
fn a_dropped_rank_fails_its_peers_even_without_a_deadline() {
    let results = run_ranks(
        short_timeout(3, Duration::MAX),
        LIMIT,
        |rank, mut collective| {
            if rank == 2 {
                std::thread::sleep(Duration::from_millis(50));
                panic!("rank 2 fails on purpose");
            }
            collective.barrier(Tag::new(3, Op::Barrier))
        },
    );
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Err(panic) => assert_eq!(rank, 2, "{panic}"),
            Ok(result) => {
                let message = result.unwrap_err().to_string();
                assert!(
                    message.contains("rank 2 left the group (its thread panicked)"),
                    "{message}"
                );
            }
        }
    }
}

#[test]
fn a_failure_announced_while_a_peer_spins_ends_its_wait_at_once() {
    // A waiting rank spins briefly before it parks; an abort made during the
    // spin wakes nobody, so the rank must look for it before parking, or it
    // sleeps until its (60 s) timeout.
    for _ in 0..200 {
        let start = Arc::new(Barrier::new(2));
        let results = all_ok(run_ranks(
            ThreadGroup::new(2),
            Duration::from_secs(20),
            move |rank, mut collective| {
                let tag = Tag::new(1, Op::Barrier);
                start.wait();
                if rank == 0 {
                    // Land inside the peer's 50 us spin.
                    let at = Instant::now();
                    while at.elapsed() < Duration::from_micros(15) {
                        std::hint::spin_loop();
                    }
                    collective.abort(tag, "stop");
                    Ok(())
                } else {
                    collective.barrier(tag)
                }
            },
        ));
        let err = results[1].clone().expect_err("the barrier must fail");
        assert!(matches!(err, CollectiveError::Aborted { .. }), "{err}");
    }
}
