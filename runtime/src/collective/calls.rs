//! A rank's call (tag, length, root) as four words for the all-gather that
//! precedes every MPI and NCCL operation (neither carries tags), and the
//! comparison of the gathered calls.

use crate::collective::{CallView, Op, Tag};

/// Words per call.
pub(super) const WORDS: usize = 4;

/// The words of `call`: step, operation, length, root (`u64::MAX` for none).
pub(super) fn encode(call: &CallView) -> [u64; WORDS] {
    let (kind, index) = match call.tag.op {
        Op::Layout => (0, 0),
        Op::Broadcast => (1, 0),
        Op::Usage => (2, 0),
        Op::Bucket(index) => (3, index),
        Op::Barrier => (4, 0),
    };
    [
        call.tag.step,
        (kind << 32) | u64::from(index),
        call.len as u64,
        call.root.map_or(u64::MAX, |root| root as u64),
    ]
}

/// The call `rank` sent as `words`. Only [`encode`] writes these words: the
/// communicator is private to the collective.
fn decode(rank: usize, words: &[u64]) -> CallView {
    let index = words[1] as u32;
    let op = match words[1] >> 32 {
        0 => Op::Layout,
        1 => Op::Broadcast,
        2 => Op::Usage,
        3 => Op::Bucket(index),
        4 => Op::Barrier,
        kind => unreachable!("operation kind {kind} was not written by `encode`"),
    };
    CallView {
        rank,
        tag: Tag::new(words[0], op),
        len: words[2] as usize,
        root: (words[3] != u64::MAX).then_some(words[3] as usize),
    }
}

/// The first call (in rank order) that differs from rank 0's, as
/// `(rank 0's call, that call)`; `None` when every rank made the same call.
pub(super) fn first_mismatch(gathered: &[u64]) -> Option<(CallView, CallView)> {
    let mut ranks = gathered.chunks_exact(WORDS);
    let first = ranks.next()?;
    let (index, words) = ranks.enumerate().find(|(_, words)| *words != first)?;
    Some((decode(0, first), decode(index + 1, words)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(rank: usize, step: u64, op: Op, len: usize, root: Option<usize>) -> CallView {
        CallView {
            rank,
            tag: Tag::new(step, op),
            len,
            root,
        }
    }

    #[test]
    fn calls_round_trip() {
        for op in [
            Op::Layout,
            Op::Broadcast,
            Op::Usage,
            Op::Bucket(7),
            Op::Barrier,
        ] {
            for root in [None, Some(0), Some(3)] {
                let view = call(2, 41, op, 1000, root);
                assert_eq!(decode(2, &encode(&view)), view);
            }
        }
    }

    #[test]
    fn the_first_differing_rank_is_reported() {
        let mut gathered = Vec::new();
        for (rank, step) in [(0, 5), (1, 5), (2, 6), (3, 7)] {
            gathered.extend(encode(&call(rank, step, Op::Usage, 10, None)));
        }
        let (first, other) = first_mismatch(&gathered).unwrap();
        assert_eq!(first, call(0, 5, Op::Usage, 10, None));
        assert_eq!(other, call(2, 6, Op::Usage, 10, None));
    }

    #[test]
    fn lengths_and_operations_count() {
        let a = encode(&call(0, 3, Op::Bucket(1), 10, None));
        let b = encode(&call(1, 3, Op::Bucket(1), 11, None));
        let c = encode(&call(1, 3, Op::Bucket(2), 10, None));
        assert!(first_mismatch(&[a, a].concat()).is_none());
        assert!(first_mismatch(&[a, b].concat()).is_some());
        assert!(first_mismatch(&[a, c].concat()).is_some());
    }
}
