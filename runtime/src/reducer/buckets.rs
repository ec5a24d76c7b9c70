//! Packing globally used parameter slots into buckets.
//!
//! The layout is a pure function of the slot sizes, the global usage mask and
//! the cap, so every rank computes the same buckets without talking. Masks
//! repeat (an MoE model has few routing patterns per step), so layouts are
//! cached by mask.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// Where one slot's gradient lives inside its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotSpan {
    /// The parameter slot.
    pub slot: usize,
    /// Offset of its first element in the bucket.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl SlotSpan {
    /// Its elements' range in the bucket.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// One bucket: a run of consecutive entries of [`BucketLayout::spans`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Total elements.
    pub numel: usize,
    spans: Range<usize>,
}

/// The buckets of one global usage mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketLayout {
    pub buckets: Vec<Bucket>,
    spans: Vec<SlotSpan>,
}

impl BucketLayout {
    /// Greedy packing in slot order: a bucket is closed when the next slot
    /// would take it past `cap_elems`; a slot larger than the cap therefore
    /// sits alone in its bucket.
    pub fn build(numels: &[usize], used: impl Fn(usize) -> bool, cap_elems: usize) -> Self {
        let cap_elems = cap_elems.max(1);
        let mut buckets = Vec::new();
        let mut spans = Vec::new();
        let mut start = 0;
        let mut numel = 0;
        for (slot, &len) in numels.iter().enumerate() {
            if !used(slot) || len == 0 {
                continue;
            }
            if numel > 0 && numel + len > cap_elems {
                buckets.push(Bucket {
                    numel,
                    spans: start..spans.len(),
                });
                start = spans.len();
                numel = 0;
            }
            spans.push(SlotSpan {
                slot,
                offset: numel,
                len,
            });
            numel += len;
        }
        if numel > 0 {
            buckets.push(Bucket {
                numel,
                spans: start..spans.len(),
            });
        }
        Self { buckets, spans }
    }

    /// The slots of `bucket`, in slot order.
    pub fn spans(&self, bucket: &Bucket) -> &[SlotSpan] {
        &self.spans[bucket.spans.clone()]
    }
}

/// The first bucket of every step when the gradient counts travel in it:
/// slots planned always, so the same on every rank and every step whatever
/// the counts say, packed from the start of the slot order up to the cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeadBucket {
    /// Its slots, in slot order.
    pub spans: Vec<SlotSpan>,
    /// Total elements (the counts follow them).
    pub numel: usize,
    /// Per slot: whether it travels here (and so in no other bucket).
    member: Vec<bool>,
}

impl LeadBucket {
    /// The first bucket [`BucketLayout::build`] makes of the slots for which
    /// `always` holds.
    pub fn build(numels: &[usize], always: impl Fn(usize) -> bool, cap_elems: usize) -> Self {
        let layout = BucketLayout::build(numels, always, cap_elems);
        let spans = layout
            .buckets
            .first()
            .map_or(&[][..], |bucket| layout.spans(bucket))
            .to_vec();
        let mut member = vec![false; numels.len()];
        spans.iter().for_each(|span| member[span.slot] = true);
        Self {
            numel: spans.iter().map(|span| span.len).sum(),
            spans,
            member,
        }
    }

    /// Whether `slot` travels in this bucket.
    pub fn holds(&self, slot: usize) -> bool {
        self.member.get(slot).copied().unwrap_or(false)
    }
}

/// Layouts by global mask (one bit per slot), at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct BucketCache {
    layouts: HashMap<Box<[u64]>, Arc<BucketLayout>>,
    capacity: usize,
}

impl BucketCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            layouts: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The layout for `mask`, built by `build` on a miss. When the cache is
    /// full it is emptied: patterns that keep changing gain nothing from
    /// caching, and a fixed bound keeps memory flat.
    pub fn get_or_build(
        &mut self,
        mask: &[u64],
        build: impl FnOnce() -> BucketLayout,
    ) -> Arc<BucketLayout> {
        if let Some(layout) = self.layouts.get(mask) {
            return Arc::clone(layout);
        }
        if self.layouts.len() >= self.capacity {
            self.layouts.clear();
        }
        let layout = Arc::new(build());
        self.layouts.insert(mask.into(), Arc::clone(&layout));
        layout
    }

    /// Number of cached layouts.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.layouts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots_of(layout: &BucketLayout) -> Vec<Vec<usize>> {
        layout
            .buckets
            .iter()
            .map(|b| layout.spans(b).iter().map(|s| s.slot).collect())
            .collect()
    }

    #[test]
    fn respects_the_cap_and_keeps_slot_order() {
        let numels = [3, 4, 2, 5, 1];
        let layout = BucketLayout::build(&numels, |_| true, 7);
        assert_eq!(slots_of(&layout), vec![vec![0, 1], vec![2, 3], vec![4]]);
        for bucket in &layout.buckets {
            assert!(bucket.numel <= 7);
            let spans = layout.spans(bucket);
            let mut offset = 0;
            for span in spans {
                assert_eq!(span.offset, offset);
                assert_eq!(span.len, numels[span.slot]);
                offset += span.len;
            }
            assert_eq!(offset, bucket.numel);
        }
    }

    #[test]
    fn oversize_slot_gets_its_own_bucket() {
        let layout = BucketLayout::build(&[2, 100, 2, 2], |_| true, 5);
        assert_eq!(slots_of(&layout), vec![vec![0], vec![1], vec![2, 3]]);
        assert_eq!(layout.buckets[1].numel, 100);
    }

    #[test]
    fn skips_unused_and_empty_slots() {
        let layout = BucketLayout::build(&[2, 3, 0, 4], |slot| slot != 1, 100);
        assert_eq!(slots_of(&layout), vec![vec![0, 3]]);
        let nothing = BucketLayout::build(&[2, 3], |_| false, 100);
        assert!(nothing.buckets.is_empty());
    }

    #[test]
    fn zero_cap_means_one_slot_per_bucket() {
        let layout = BucketLayout::build(&[1, 1, 1], |_| true, 0);
        assert_eq!(slots_of(&layout), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn the_lead_bucket_is_the_first_bucket_of_the_always_slots() {
        let numels = [3, 4, 0, 2, 5, 1];
        let always = |slot: usize| slot != 1;
        let lead = LeadBucket::build(&numels, always, 6);
        assert_eq!(
            lead.spans.iter().map(|span| span.slot).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(lead.numel, 5);
        assert_eq!(lead.spans[1].offset, 3);
        assert!(lead.holds(0) && lead.holds(3));
        assert!(!lead.holds(1) && !lead.holds(2) && !lead.holds(4) && !lead.holds(9));
        assert_eq!(LeadBucket::build(&numels, |_| false, 6).numel, 0);
    }

    #[test]
    fn deterministic() {
        let numels: Vec<usize> = (0..50).map(|i| (i * 7919) % 13 + 1).collect();
        let used = |slot: usize| !slot.is_multiple_of(3);
        assert_eq!(
            BucketLayout::build(&numels, used, 20),
            BucketLayout::build(&numels, used, 20)
        );
    }

    #[test]
    fn cache_hits_and_stays_bounded() {
        let mut cache = BucketCache::new(2);
        let builds = std::cell::Cell::new(0);
        let get = |cache: &mut BucketCache, mask: u64| {
            cache.get_or_build(&[mask], || {
                builds.set(builds.get() + 1);
                BucketLayout::build(&[1, 1], |s| mask >> s & 1 == 1, 4)
            })
        };
        let a = get(&mut cache, 0b01);
        let again = get(&mut cache, 0b01);
        assert!(Arc::ptr_eq(&a, &again));
        get(&mut cache, 0b10);
        get(&mut cache, 0b11);
        assert!(cache.len() <= 2);
        assert_eq!(builds.get(), 3);
    }
}
