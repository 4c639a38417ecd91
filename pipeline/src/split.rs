//! Cross-validation splits: a pipeline's cases divided into a held-out test part and `k`
//! folds, stratified by a case attribute the source knows without loading (the grade of a
//! BraTS case), and the same on every machine and every run.
//!
//! ```yaml
//! split: {folds: 5, fold: 0, part: train}   # train on folds 1–4; `val`: fold 0; `test`: held out
//! ```
//!
//! The test part is drawn first and no fold contains it, so a checkpoint chosen on a fold is
//! never scored on the cases that chose it. Which cases go where depends only on the case ids,
//! their strata, `seed`, `folds` and `test_fraction` — not on the pipeline's seed — so a
//! training, a validation and a test pipeline with the same `split` agree.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rng::stable_hash;

/// Which cases of the split a pipeline runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Every fold but `fold`.
    Train,
    /// Fold `fold` (validation: chooses checkpoints).
    Val,
    /// The held-out cases, the same for every fold.
    Test,
}

/// A top-level `split:` of a pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Number of folds (at least 2).
    pub folds: usize,
    /// The fold held out for validation, from 0.
    pub fold: usize,
    /// `train`, `val` or `test`.
    pub part: Part,
    /// Fraction of each stratum held out for testing before the folds are drawn (0 for none).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Seed of the assignment (independent of the pipeline's seed).
    #[serde(default)]
    pub seed: u64,
}

fn default_test_fraction() -> f64 {
    0.2
}

/// Where one case went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    Test,
    Fold(usize),
}

impl Split {
    /// Every mistake in the numbers, as messages naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.folds < 2 {
            p.push(format!(
                "`split.folds` must be at least 2 (got {})",
                self.folds
            ));
        }
        if self.fold >= self.folds.max(1) {
            p.push(format!(
                "`split.fold` must be below `folds` (got fold {} of {}: folds count from 0)",
                self.fold, self.folds
            ));
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            p.push(format!(
                "`split.test_fraction` must be at least 0 and below 1 (got {})",
                self.test_fraction
            ));
        }
        p
    }

    /// The part of every case. Within each stratum the cases are ordered by a hash of the
    /// seed and their id; the first `round(n · test_fraction)` are held out, the rest dealt
    /// to the folds in turn, the turn carried from one stratum to the next so fold sizes
    /// differ by at most one.
    pub fn assign(&self, cases: &[(String, Option<String>)]) -> BTreeMap<String, Assigned> {
        let mut strata: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (case, stratum) in cases {
            strata
                .entry(stratum.as_deref().unwrap_or(""))
                .or_default()
                .push(case);
        }
        let mut out = BTreeMap::new();
        let mut turn = 0;
        for members in strata.values_mut() {
            // the key hashes (and allocates) once per case, not once per comparison
            members.sort_by_cached_key(|id| {
                let mut bytes = self.seed.to_le_bytes().to_vec();
                bytes.extend_from_slice(id.as_bytes());
                (stable_hash(&bytes), *id)
            });
            let held_out = (members.len() as f64 * self.test_fraction).round() as usize;
            for (i, id) in members.iter().enumerate() {
                let assigned = if i < held_out {
                    Assigned::Test
                } else {
                    turn += 1;
                    Assigned::Fold((turn - 1) % self.folds.max(1))
                };
                out.insert(id.to_string(), assigned);
            }
        }
        out
    }

    /// The cases of this split's part, in their original order.
    pub fn select(&self, cases: &[(String, Option<String>)]) -> Vec<String> {
        let assigned = self.assign(cases);
        cases
            .iter()
            .filter(|(id, _)| {
                let a = assigned[id];
                match self.part {
                    Part::Test => a == Assigned::Test,
                    Part::Val => a == Assigned::Fold(self.fold),
                    Part::Train => matches!(a, Assigned::Fold(f) if f != self.fold),
                }
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The same split, another part (a training run's validation pipeline uses `val`).
    pub fn with_part(&self, part: Part) -> Split {
        Split {
            part,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(hgg: usize, lgg: usize) -> Vec<(String, Option<String>)> {
        (0..hgg)
            .map(|i| (format!("H{i:03}"), Some("HGG".to_string())))
            .chain((0..lgg).map(|i| (format!("L{i:03}"), Some("LGG".to_string()))))
            .collect()
    }

    fn split(part: Part, fold: usize) -> Split {
        Split {
            folds: 5,
            fold,
            part,
            test_fraction: 0.2,
            seed: 0,
        }
    }

    #[test]
    fn parts_cover_every_case_once_and_folds_are_stratified() {
        let all = cases(70, 30);
        let test = split(Part::Test, 0).select(&all);
        assert_eq!(test.len(), 20);
        assert_eq!(test.iter().filter(|c| c.starts_with('H')).count(), 14);
        let mut seen = test.clone();
        for fold in 0..5 {
            let val = split(Part::Val, fold).select(&all);
            let train = split(Part::Train, fold).select(&all);
            assert_eq!(val.len(), 16, "fold {fold}");
            assert_eq!(train.len(), 64, "fold {fold}");
            // 56 HGG and 24 LGG in the folds: 11 or 12 HGG per fold, 4 or 5 LGG
            let h = val.iter().filter(|c| c.starts_with('H')).count();
            assert!((11..=12).contains(&h), "fold {fold}: {h} HGG");
            assert!(val.iter().all(|c| !train.contains(c) && !test.contains(c)));
            seen.extend(val);
        }
        seen.sort();
        let mut ids: Vec<String> = all.iter().map(|c| c.0.clone()).collect();
        ids.sort();
        assert_eq!(seen, ids);
    }

    #[test]
    fn the_assignment_depends_on_the_seed_not_on_the_order_given() {
        let all = cases(20, 10);
        let mut reversed = all.clone();
        reversed.reverse();
        let a = split(Part::Test, 0).select(&all);
        let mut b = split(Part::Test, 0).select(&reversed);
        b.reverse();
        assert_eq!(a, b);
        let other_seed = Split {
            seed: 9,
            ..split(Part::Test, 0)
        };
        assert_ne!(a, other_seed.select(&all));
    }

    #[test]
    fn bad_numbers_are_named() {
        let bad = Split {
            folds: 1,
            fold: 3,
            part: Part::Train,
            test_fraction: 1.0,
            seed: 0,
        };
        let p = bad.problems().join("\n");
        assert!(p.contains("`split.folds` must be at least 2"), "{p}");
        assert!(p.contains("`split.fold` must be below"), "{p}");
        assert!(p.contains("`split.test_fraction`"), "{p}");
    }
}
