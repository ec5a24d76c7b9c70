//! One rank per process (`--collective mpi` under mpirun, `--collective
//! nccl` torchrun-style): this process trains its rank; every rank takes part
//! in the replica check; rank 0 shows the progress bar and prints the report.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use maskddp::{Collective, Op, Tag};

use super::{
    Args, Bar, Failure, LossSummary, RankError, RankOutcome, check_memory, first_cause,
    initial_models, report, train_rank,
};

/// Trains this process's rank of `collective` on `device`.
pub fn run<B: AutodiffBackend, C: Collective + ?Sized>(
    mut args: Args,
    collective: &mut C,
    device: &B::Device,
) -> Result<bool, Failure> {
    let rank = collective.rank();
    // `-np` sets the number of ranks; on one machine they share its memory.
    args.ranks = u16::try_from(collective.world_size()).unwrap_or(u16::MAX);
    check_memory(&args).map_err(Failure::Usage)?;

    let started = Instant::now();
    let model = initial_models::<B>(&args, std::slice::from_ref(device)).remove(0);
    let mut bar = (rank == 0).then(|| Bar::new(args.steps as usize));
    let trained = train_rank(rank, model, &mut *collective, &args, device, |progress| {
        if let Some(bar) = &mut bar {
            bar.update(progress);
        }
    });
    if let Some(bar) = &bar {
        bar.bar.finish();
    }
    let trained = match trained {
        Ok(trained) => trained,
        Err(err) => {
            let diverged_at = match err {
                RankError::Diverged { step, .. } => Some(step),
                _ => None,
            };
            let message = first_cause(&args, vec![(rank, err)]);
            if let Some(step) = diverged_at {
                // Only this rank knows: the others would wait for it until
                // their timeout. Ends the job.
                collective.abort(Tag::new(step as u64 + 1, Op::Usage), &message);
            }
            // The collective's errors reach every rank alike.
            return Err(Failure::Run(message));
        }
    };

    let tag = Tag::new(u64::from(args.steps) + 1, Op::Barrier);
    let outcomes: Vec<RankOutcome> = collective
        .all_gather_bytes(tag, &to_bytes(&trained.outcome))
        .map_err(|err| Failure::Run(err.to_string()))?
        .iter()
        .enumerate()
        .map(|(rank, bytes)| from_bytes(rank, bytes))
        .collect();
    if rank == 0 {
        Ok(report(&args, started.elapsed(), &trained, &outcomes))
    } else {
        Ok(outcomes.iter().all(|o| o.checksum == outcomes[0].checksum))
    }
}

/// The checksum and the loss summary, as eight-byte words.
fn to_bytes(outcome: &RankOutcome) -> Vec<u8> {
    let losses = &outcome.losses;
    [
        outcome.checksum,
        losses.first.to_bits(),
        losses.head.0.to_bits(),
        losses.head.1 as u64,
        losses.tail.0.to_bits(),
        losses.tail.1 as u64,
    ]
    .iter()
    .flat_map(|word| word.to_le_bytes())
    .collect()
}

fn from_bytes(rank: usize, bytes: &[u8]) -> RankOutcome {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().expect("eight bytes")))
        .collect();
    RankOutcome {
        rank,
        checksum: words[0],
        losses: LossSummary {
            first: f64::from_bits(words[1]),
            head: (f64::from_bits(words[2]), words[3] as usize),
            tail: (f64::from_bits(words[4]), words[5] as usize),
        },
    }
}
