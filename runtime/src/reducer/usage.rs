//! Local usage and global gradient counts of one step.
//!
//! Two different things are tracked per slot:
//!
//! - **usage** (always ∪ recorded, local to this rank): what *may* carry a
//!   gradient here. A gradient outside it is an error; usage never decides
//!   what is reduced.
//! - **gradient counts** (global): how many ranks' backward really produced a
//!   gradient for the slot. These travel in the usage exchange, one `u32` per
//!   trainable slot (always and conditional; frozen slots and tied-weight
//!   repeats never carry one), and decide everything that follows: the global
//!   mask (count > 0), the bucket layout and the contributors divisor.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use burn::module::ParamId;

use crate::plan::{Usage, UsagePlan};

#[derive(Debug)]
pub(crate) struct UsageTracker {
    /// Recorded ids to slots; built once, since ids stay fixed for a model's
    /// lifetime (optimizers keep them).
    slot_of: HashMap<ParamId, usize>,
    kinds: Vec<Usage>,
    /// Per slot: a second visit of a parameter already seen (tied weights).
    /// burn keys gradients by id, so only the first slot carries it; aliases
    /// are never used, reduced or counted.
    alias: Vec<bool>,
    /// The slots whose gradient counts are exchanged (neither frozen nor an
    /// alias), in slot order; `counts[i]` belongs to `exchanged[i]`.
    exchanged: Vec<usize>,
    /// Per slot: used (planned always or recorded) by this rank in this step.
    local: Vec<bool>,
    /// Per exchanged slot: whether this rank has a gradient, then the number
    /// of ranks that have one.
    counts: Vec<u32>,
    /// Per slot: the number of ranks with a gradient for it in this step.
    contributors: Vec<u32>,
    /// One bit per slot: some rank has a gradient for it.
    mask: Vec<u64>,
}

impl UsageTracker {
    pub fn new(plan: &UsagePlan) -> Self {
        let slots = plan.layout().slots();
        let mut slot_of = HashMap::with_capacity(slots.len());
        let mut alias = vec![false; slots.len()];
        for (index, slot) in slots.iter().enumerate() {
            match slot_of.entry(slot.id) {
                Entry::Occupied(_) => alias[index] = true,
                Entry::Vacant(entry) => {
                    entry.insert(index);
                }
            }
        }
        let kinds = plan.usage().to_vec();
        let exchanged: Vec<usize> = (0..slots.len())
            .filter(|&slot| kinds[slot] != Usage::Frozen && !alias[slot])
            .collect();
        Self {
            slot_of,
            kinds,
            alias,
            counts: vec![0; exchanged.len()],
            exchanged,
            local: vec![false; slots.len()],
            contributors: vec![0; slots.len()],
            mask: vec![0; slots.len().div_ceil(64)],
        }
    }

    /// Sets the local usage to always ∪ `recorded`. Ids of parameters outside
    /// the model (another model recorded in the same scope) are ignored.
    pub fn set_local(&mut self, recorded: &[ParamId]) {
        for ((used, kind), alias) in self.local.iter_mut().zip(&self.kinds).zip(&self.alias) {
            *used = *kind == Usage::Always && !alias;
        }
        for id in recorded {
            if let Some(&slot) = self.slot_of.get(id) {
                self.local[slot] = true;
            }
        }
    }

    /// Whether `slot` repeats an earlier slot's parameter (tied weights).
    pub fn is_alias(&self, slot: usize) -> bool {
        self.alias[slot]
    }

    /// Whether this rank used `slot` in this step (planned always or recorded).
    pub fn is_local(&self, slot: usize) -> bool {
        self.local[slot]
    }

    /// This rank's gradient presence per exchanged slot (`has_grad(slot)`),
    /// as counts to all-reduce.
    pub fn local_counts(&mut self, has_grad: impl Fn(usize) -> bool) -> &mut [u32] {
        for (count, &slot) in self.counts.iter_mut().zip(&self.exchanged) {
            *count = u32::from(has_grad(slot));
        }
        &mut self.counts
    }

    /// [`Self::set_global`] from `summed`, the counts summed over ranks as
    /// f32 (exact: a count never exceeds the world size), as the lead bucket
    /// carries them.
    pub fn set_global_from(&mut self, summed: &[f32]) {
        for (count, &sum) in self.counts.iter_mut().zip(summed) {
            *count = sum as u32;
        }
        self.set_global();
    }

    /// Derives the global mask and the contributor counts from the counts,
    /// summed over ranks (or this rank's own, in a world of one).
    pub fn set_global(&mut self) {
        self.mask.iter_mut().for_each(|word| *word = 0);
        self.contributors.iter_mut().for_each(|count| *count = 0);
        for (&count, &slot) in self.counts.iter().zip(&self.exchanged) {
            self.contributors[slot] = count;
            if count > 0 {
                self.mask[slot / 64] |= 1 << (slot % 64);
            }
        }
    }

    /// One bit per slot: some rank has a gradient for it in this step.
    pub fn global_mask(&self) -> &[u64] {
        &self.mask
    }

    /// Whether some rank has a gradient for `slot` in this step.
    pub fn is_global(&self, slot: usize) -> bool {
        self.mask[slot / 64] >> (slot % 64) & 1 == 1
    }

    /// How many ranks have a gradient for `slot` in this step.
    pub fn contributors(&self, slot: usize) -> u32 {
        self.contributors[slot]
    }
}
