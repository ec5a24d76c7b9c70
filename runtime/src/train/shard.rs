//! Which training items each rank sees.

use std::ops::Range;

/// The items of a training set of `items` that `rank` of `world_size` ranks
/// trains on: contiguous shards of `items / world_size` items each, so no
/// two ranks see the same item in an epoch and every rank runs the same
/// number of steps (a rank with more batches than the others would wait
/// for them forever). The last `items % world_size` items are left out, as
/// PyTorch's `DistributedSampler` does with `drop_last`.
///
/// The shards are fixed slices of the dataset, shuffled within by the data
/// loader if it shuffles: shuffle the dataset itself (burn's
/// `ShuffledDataset`) if its order is meaningful, for example sorted by
/// class.
pub fn shard_range(items: usize, rank: usize, world_size: usize) -> Range<usize> {
    let per_rank = items / world_size;
    rank * per_rank..(rank + 1) * per_rank
}
