//! The set-up check that every rank built the same model and reducer.
//!
//! Each rank describes its set-up as text: one line per reducer setting that
//! must agree across ranks, then one line per parameter slot. Ranks
//! all-gather the texts and compare them line by line, so every rank finds
//! the same first difference and can name it: the setting and both values,
//! or the parameter slot and both views.

use std::fmt::Write as _;

use burn::tensor::DType;

use crate::plan::{Usage, UsagePlan};

use super::ReducerConfig;

/// Marks a setting line: `setting <name> <value>`.
const SETTING: &str = "setting ";

/// The description of this rank's set-up that ranks compare.
pub(crate) fn fingerprint(plan: &UsagePlan, dtypes: &[DType], config: &ReducerConfig) -> String {
    // Destructured so that a new setting cannot be left out.
    let ReducerConfig {
        bucket_cap_bytes,
        averaging,
        broadcast_parameters,
        wire,
        non_finite,
        // A rank's own choice: the calls and results are the same either way.
        pipeline: _,
    } = config;
    let mut text = String::new();
    let settings: [(&str, String); 5] = [
        ("bucket_cap_bytes", bucket_cap_bytes.to_string()),
        ("averaging", format!("{averaging:?}")),
        ("broadcast_parameters", broadcast_parameters.to_string()),
        ("wire", format!("{wire:?}")),
        ("non_finite", format!("{non_finite:?}")),
    ];
    for (name, value) in settings {
        let _ = writeln!(text, "{SETTING}{name} {value}");
    }
    for ((slot, usage), dtype) in plan.layout().slots().iter().zip(plan.usage()).zip(dtypes) {
        let kind = match usage {
            Usage::Always => "always",
            Usage::Conditional { .. } => "conditional",
            Usage::Frozen => "frozen",
        };
        // Branch texts are left out: they are for reports, and equal builds
        // of the same source produce equal plans anyway.
        let _ = writeln!(text, "`{}` {:?} {dtype:?} {kind}", slot.path, slot.shape);
    }
    text
}

/// The first way another rank's set-up differs from rank 0's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
    /// A reducer setting.
    Setting {
        rank: usize,
        name: String,
        value: String,
        rank0_value: String,
    },
    /// The parameter layout or plan, in words naming both views.
    Layout(String),
}

fn setting(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix(SETTING)?.split_once(' ')
}

/// The first difference between rank 0's description and another rank's,
/// or `None` when all agree.
pub(crate) fn first_difference(all: &[Vec<u8>]) -> Option<Difference> {
    let reference = String::from_utf8_lossy(all.first()?);
    for (rank, other) in all.iter().enumerate().skip(1) {
        let other = String::from_utf8_lossy(other);
        if other == reference {
            continue;
        }
        let ours: Vec<&str> = reference.lines().collect();
        let theirs: Vec<&str> = other.lines().collect();
        // Settings first, by name, so that every differing setting is named
        // as such even if the lists differ in length.
        let our_settings: Vec<(&str, &str)> = ours.iter().filter_map(|l| setting(l)).collect();
        let their_settings: Vec<(&str, &str)> = theirs.iter().filter_map(|l| setting(l)).collect();
        for &(name, rank0_value) in &our_settings {
            let value = their_settings
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("(not set)", |(_, v)| v);
            if value != rank0_value {
                return Some(Difference::Setting {
                    rank,
                    name: name.to_owned(),
                    value: value.to_owned(),
                    rank0_value: rank0_value.to_owned(),
                });
            }
        }
        let ours: Vec<&str> = ours.into_iter().filter(|l| setting(l).is_none()).collect();
        let theirs: Vec<&str> = theirs
            .into_iter()
            .filter(|l| setting(l).is_none())
            .collect();
        for slot in 0..ours.len().max(theirs.len()) {
            let (a, b) = (ours.get(slot).copied(), theirs.get(slot).copied());
            if a == b {
                continue;
            }
            let what = |text: Option<&str>| text.unwrap_or("no further parameter").to_owned();
            return Some(Difference::Layout(format!(
                "rank {rank} has {} where rank 0 has {} (at parameter slot {slot})",
                what(b),
                what(a)
            )));
        }
        // Only the settings' order or a setting rank 0 lacks can remain.
        return Some(Difference::Layout(format!(
            "rank {rank}'s reducer settings are {their_settings:?} where rank 0's are \
             {our_settings:?}"
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{Difference, first_difference};

    #[test]
    fn names_the_first_differing_line_and_both_views() {
        let a = b"setting wire F32\n`a.weight` [2, 3] F32 always\n`head.weight` [8, 5] F32 conditional\n"
            .to_vec();
        let b = b"setting wire F32\n`a.weight` [2, 3] F32 always\n`head.weight` [8, 4] F32 conditional\n"
            .to_vec();
        assert_eq!(first_difference(&[a.clone(), a.clone()]), None);
        let difference = first_difference(&[a.clone(), a.clone(), b]).unwrap();
        assert_eq!(
            difference,
            Difference::Layout(
                "rank 2 has `head.weight` [8, 4] F32 conditional where rank 0 has \
                 `head.weight` [8, 5] F32 conditional (at parameter slot 1)"
                    .to_owned()
            )
        );
        let short = b"setting wire F32\n`a.weight` [2, 3] F32 always\n".to_vec();
        let Some(Difference::Layout(message)) = first_difference(&[a, short]) else {
            panic!("a layout difference");
        };
        assert!(message.contains("rank 1 has no further parameter where rank 0 has `head.weight`"));
    }

    #[test]
    fn names_a_differing_setting_before_any_slot() {
        let a =
            b"setting wire F32\nsetting broadcast_parameters true\n`a` [2] F32 always\n".to_vec();
        let b =
            b"setting wire F32\nsetting broadcast_parameters false\n`a` [3] F32 always\n".to_vec();
        assert_eq!(
            first_difference(&[a.clone(), b]),
            Some(Difference::Setting {
                rank: 1,
                name: "broadcast_parameters".to_owned(),
                value: "false".to_owned(),
                rank0_value: "true".to_owned(),
            })
        );
        let missing = b"setting wire F32\n`a` [2] F32 always\n".to_vec();
        assert_eq!(
            first_difference(&[a, missing]),
            Some(Difference::Setting {
                rank: 1,
                name: "broadcast_parameters".to_owned(),
                value: "(not set)".to_owned(),
                rank0_value: "true".to_owned(),
            })
        );
    }
}
