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

#[cfg(test)]
mod tests {
    use super::shard_range;

    #[test]
    fn shards_are_disjoint_equal_and_cover_all_but_the_remainder() {
        for items in 0..40 {
            for world in 1..6 {
                let shards: Vec<_> = (0..world)
                    .map(|rank| shard_range(items, rank, world))
                    .collect();
                for pair in shards.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "{items} items, {world} ranks");
                    assert_eq!(pair[0].len(), pair[1].len());
                }
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[world - 1].end, items - items % world);
            }
        }
    }
}
