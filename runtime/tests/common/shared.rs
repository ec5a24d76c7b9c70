//! Test support shared by the runtime's and the facade's integration tests
//! (the facade includes this file by path): ranks on threads under a hard
//! timeout, and a seeded generator.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use maskddp_runtime::ThreadCollective;

/// A rank's outcome: its value, or its panic message.
pub type RankResult<T> = Result<T, String>;

/// Runs `body(rank, collective)` on one thread per collective and returns the
/// results by rank. Fails the test (instead of hanging) if any rank has not
/// finished within `limit`.
pub fn run_ranks<T, F>(
    collectives: Vec<ThreadCollective>,
    limit: Duration,
    body: F,
) -> Vec<RankResult<T>>
where
    T: Send + 'static,
    F: Fn(usize, ThreadCollective) -> T + Send + Sync + 'static,
{
    let world = collectives.len();
    let body = Arc::new(body);
    let (sender, receiver) = mpsc::channel();
    for (rank, collective) in collectives.into_iter().enumerate() {
        let body = Arc::clone(&body);
        let sender = sender.clone();
        std::thread::Builder::new()
            .name(format!("rank {rank}"))
            .spawn(move || {
                let result =
                    catch_unwind(AssertUnwindSafe(|| body(rank, collective))).map_err(|panic| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    });
                let _ = sender.send((rank, result));
            })
            .expect("spawn rank thread");
    }
    drop(sender);
    let deadline = Instant::now() + limit;
    let mut results: Vec<Option<RankResult<T>>> = (0..world).map(|_| None).collect();
    for _ in 0..world {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok((rank, result)) => results[rank] = Some(result),
            Err(_) => {
                let missing: Vec<usize> = (0..world).filter(|&r| results[r].is_none()).collect();
                panic!("ranks {missing:?} did not finish within {limit:?}: a hang");
            }
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

/// Unwraps every rank's result, naming the rank that panicked.
pub fn all_ok<T>(results: Vec<RankResult<T>>) -> Vec<T> {
    results
        .into_iter()
        .enumerate()
        .map(|(rank, result)| {
            result.unwrap_or_else(|panic| panic!("rank {rank} panicked: {panic}"))
        })
        .collect()
}

/// SplitMix64: tiny, seedable, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[-1, 1)`.
    pub fn signed(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// `values` cut into separately allocated parts of the given lengths (which
/// must add up to its length), as a scattered buffer.
pub fn cut_into(values: &[f32], lengths: &[usize]) -> Vec<Vec<f32>> {
    let mut rest = values;
    let parts = lengths
        .iter()
        .map(|&n| {
            let (part, tail) = rest.split_at(n);
            rest = tail;
            part.to_vec()
        })
        .collect();
    assert!(rest.is_empty(), "the lengths cover the values");
    parts
}
