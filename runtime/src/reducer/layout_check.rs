//! The set-up check that every rank built the same model and reducer.
//!
//! Each rank describes its layout as text, one line per slot after a line for
//! the reducer configuration; ranks all-gather the texts and compare them line
//! by line, so every rank finds the same first difference and can print both
//! views in words.

use std::fmt::Write as _;

use burn::tensor::DType;

use crate::plan::{Usage, UsagePlan};

use super::ReducerConfig;

/// The description of this rank's layout that ranks compare.
pub(crate) fn fingerprint(plan: &UsagePlan, dtypes: &[DType], config: &ReducerConfig) -> String {
    let mut text = format!(
        "reducer with {} wire format, {} averaging, {} byte buckets\n",
        config.wire, config.averaging, config.bucket_cap_bytes
    );
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

/// The first difference between rank 0's description and another rank's, in
/// words, or `None` when all agree.
pub(crate) fn first_difference(all: &[Vec<u8>]) -> Option<String> {
    let reference = String::from_utf8_lossy(all.first()?);
    for (rank, other) in all.iter().enumerate().skip(1) {
        let other = String::from_utf8_lossy(other);
        if other == reference {
            continue;
        }
        let mut ours = reference.lines();
        let mut theirs = other.lines();
        for line in 0.. {
            let what = |text: Option<&str>| match (line, text) {
                (_, None) => "no further parameter".to_owned(),
                (0, Some(text)) => format!("a {text}"),
                (_, Some(text)) => text.to_owned(),
            };
            match (ours.next(), theirs.next()) {
                (a, b) if a == b && a.is_some() => continue,
                (a, b) => {
                    let at = if line == 0 {
                        "in the reducer configuration".to_owned()
                    } else {
                        format!("at parameter slot {}", line - 1)
                    };
                    return Some(format!(
                        "rank {rank} has {} where rank 0 has {} ({at})",
                        what(b),
                        what(a)
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn names_the_first_differing_line_and_both_views() {
        let a =
            b"cfg\n`a.weight` [2, 3] F32 always\n`head.weight` [8, 5] F32 conditional\n".to_vec();
        let b =
            b"cfg\n`a.weight` [2, 3] F32 always\n`head.weight` [8, 4] F32 conditional\n".to_vec();
        assert_eq!(first_difference(&[a.clone(), a.clone()]), None);
        let message = first_difference(&[a.clone(), a.clone(), b]).unwrap();
        assert_eq!(
            message,
            "rank 2 has `head.weight` [8, 4] F32 conditional where rank 0 has \
             `head.weight` [8, 5] F32 conditional (at parameter slot 1)"
        );
        let short = b"cfg\n`a.weight` [2, 3] F32 always\n".to_vec();
        let message = first_difference(&[a, short]).unwrap();
        assert!(message.contains("rank 1 has no further parameter where rank 0 has `head.weight`"));
    }
}
