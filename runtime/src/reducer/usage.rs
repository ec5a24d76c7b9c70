//! Local and global parameter usage of one step.
//!
//! Only conditional slots travel: always-used slots are used by every rank and
//! frozen slots by none, so both are known without talking.

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
    /// The conditional slots, in slot order; `counts[i]` belongs to `conditional[i]`.
    conditional: Vec<usize>,
    /// Per slot: used by this rank in this step.
    local: Vec<bool>,
    /// Per conditional slot: this rank's use, then the number of ranks using it.
    counts: Vec<u32>,
    /// Per slot: ranks that used it (world size for always-used slots).
    contributors: Vec<u32>,
    /// One bit per slot: used by some rank.
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
        let conditional: Vec<usize> = plan.conditional_slots().collect();
        Self {
            slot_of,
            kinds: plan.usage().to_vec(),
            alias,
            counts: vec![0; conditional.len()],
            conditional,
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

    /// Whether this rank used `slot` in this step.
    pub fn is_local(&self, slot: usize) -> bool {
        self.local[slot]
    }

    /// This rank's usage of the conditional slots, as counts to all-reduce.
    pub fn local_counts(&mut self) -> &mut [u32] {
        for (count, &slot) in self.counts.iter_mut().zip(&self.conditional) {
            *count = u32::from(self.local[slot]);
        }
        &mut self.counts
    }

    /// Derives the global mask and contributor counts from the summed counts
    /// (or from the local usage alone when there is no conditional slot).
    pub fn set_global(&mut self, world_size: usize) {
        self.mask.iter_mut().for_each(|word| *word = 0);
        for (slot, kind) in self.kinds.iter().enumerate() {
            self.contributors[slot] = match kind {
                Usage::Always if !self.alias[slot] => world_size as u32,
                _ => 0,
            };
        }
        for (&count, &slot) in self.counts.iter().zip(&self.conditional) {
            self.contributors[slot] = count;
        }
        for (slot, &count) in self.contributors.iter().enumerate() {
            if count > 0 {
                self.mask[slot / 64] |= 1 << (slot % 64);
            }
        }
    }

    /// One bit per slot: used by some rank in this step.
    pub fn global_mask(&self) -> &[u64] {
        &self.mask
    }

    /// Whether some rank used `slot` in this step.
    pub fn is_global(&self, slot: usize) -> bool {
        self.mask[slot / 64] >> (slot % 64) & 1 == 1
    }

    /// How many ranks used `slot` in this step.
    pub fn contributors(&self, slot: usize) -> u32 {
        self.contributors[slot]
    }
}
