//! The matrix a nightly spreads over machines: kernels x scenarios, one entry per pair, cut
//! into shards for CI engines (`--plan` prints it, `--shard K/N` runs one slice).
//!
//! The unit of a shard is one entry: one kernel booted with one scenario (in the lab: one
//! guest; on a host: one run of a scenario on the running kernel). An entry is the unit
//! because it is what produces one result file: the shards' result directories together
//! then hold exactly the results of an unsharded run, each run once, and per-run figures
//! (violations per run, the runs behind a comparison) stay what they would have been.
//! Splitting one scenario's cells over several guests instead would pay a boot per piece
//! and leave a kernel's result in several partial runs.
//!
//! Entries are numbered kernel by kernel, scenario by scenario within a kernel, in the
//! order the command line names them; entry `i` (from 0) belongs to shard `i mod N + 1`.
//! Round-robin keeps the shards within one entry of each other whatever the shape of the
//! matrix, and depends only on the lists: every shard of a CI job must be given the same
//! kernels and scenarios in the same order (the examples in configs/nightly/ do).

use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

/// The most shards a matrix is cut into: far more than any fleet, so a typo is refused.
pub const MAX_SHARDS: usize = 10_000;

/// Shard `index` of `total`, counted from 1 (as GitLab's `CI_NODE_INDEX`; a Kubernetes
/// Indexed Job's `JOB_COMPLETION_INDEX` counts from 0: add one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

impl Shard {
    /// The whole matrix.
    pub const WHOLE: Shard = Shard { index: 1, total: 1 };

    /// Parse `K/N`; the error names the flag's value and what is wrong.
    pub fn parse(s: &str) -> Result<Shard> {
        let parsed = s.split_once('/').and_then(|(k, n)| {
            Some((
                k.trim().parse::<usize>().ok()?,
                n.trim().parse::<usize>().ok()?,
            ))
        });
        match parsed {
            Some((index, total)) if (1..=MAX_SHARDS).contains(&total) && (1..=total).contains(&index) => {
                Ok(Shard { index, total })
            }
            Some((_, total)) if !(1..=MAX_SHARDS).contains(&total) => {
                bail!("--shard {s:?}: N must be between 1 and {MAX_SHARDS}")
            }
            Some(_) => bail!("--shard {s:?}: K counts from 1 to N (a Kubernetes JOB_COMPLETION_INDEX counts from 0: add one)"),
            None => bail!("--shard {s:?}: expected K/N, e.g. 2/3 for the second of three shards"),
        }
    }

    /// Whether entry `i` (from 0) of the matrix belongs to this shard.
    pub fn takes(self, i: usize) -> bool {
        i % self.total == self.index - 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

/// One kernel with one scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its number in the matrix, from 0.
    pub index: usize,
    /// The shard that runs it, from 1.
    pub shard: usize,
    pub kernel: String,
    pub scenario: String,
}

/// The matrix, with each entry's shard; what `--plan` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The shard this command runs (`--shard`, default 1/1).
    pub shard: Shard,
    pub kernels: Vec<String>,
    pub scenarios: Vec<String>,
    /// Every entry of the matrix, whichever shard runs it.
    pub entries: Vec<Entry>,
}

impl Plan {
    /// The matrix of `kernels` x `scenarios` cut into `shard.total` shards. A kernel or
    /// scenario named twice is refused: it would be run (and counted) twice.
    pub fn new(kernels: &[String], scenarios: &[String], shard: Shard) -> Result<Plan> {
        for (what, list) in [("--kernels", kernels), ("scenario", scenarios)] {
            if list.is_empty() {
                bail!("the matrix has no {what}");
            }
            for (i, x) in list.iter().enumerate() {
                if list[..i].contains(x) {
                    bail!("{what} {x} is named twice: it would run twice");
                }
            }
        }
        let mut entries = Vec::new();
        for k in kernels {
            for s in scenarios {
                let index = entries.len();
                entries.push(Entry {
                    index,
                    shard: index % shard.total + 1,
                    kernel: k.clone(),
                    scenario: s.clone(),
                });
            }
        }
        Ok(Plan {
            shard,
            kernels: kernels.to_vec(),
            scenarios: scenarios.to_vec(),
            entries,
        })
    }

    /// The entries this shard runs, in matrix order.
    pub fn selected(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| self.shard.takes(e.index))
    }

    /// The kernels this shard boots with `scenario`, in the order they were named.
    pub fn kernels_for(&self, scenario: &str) -> Vec<&str> {
        self.selected()
            .filter(|e| e.scenario == scenario)
            .map(|e| e.kernel.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_parse_from_k_of_n_and_refuse_the_rest() {
        assert_eq!(Shard::parse("2/3").unwrap(), Shard { index: 2, total: 3 });
        assert_eq!(Shard::parse("1/1").unwrap(), Shard::WHOLE);
        for (bad, says) in [
            ("0/3", "counts from 1"),
            ("4/3", "counts from 1"),
            ("1/0", "between 1 and"),
            ("3", "expected K/N"),
            ("a/b", "expected K/N"),
            ("1/10001", "between 1 and"),
        ] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(Shard { index: 2, total: 3 }.to_string(), "2/3");
    }

    #[test]
    fn every_entry_of_the_matrix_is_in_exactly_one_shard_and_shards_are_balanced() {
        let kernels = names(&["deb:6.1", "deb:6.12", "deb:sid", "tree:/src/linux"]);
        let scenarios = names(&["quick", "dax-vs-pin", "lease-lifecycle"]);
        let whole = Plan::new(&kernels, &scenarios, Shard::WHOLE).unwrap();
        assert_eq!(whole.entries.len(), 12);
        assert_eq!(whole.selected().count(), 12);
        for total in 1..=14 {
            let mut seen = Vec::new();
            let mut sizes = Vec::new();
            for index in 1..=total {
                let p = Plan::new(&kernels, &scenarios, Shard { index, total }).unwrap();
                assert_eq!(
                    p.entries
                        .iter()
                        .map(|e| (&e.kernel, &e.scenario))
                        .collect::<Vec<_>>(),
                    whole
                        .entries
                        .iter()
                        .map(|e| (&e.kernel, &e.scenario))
                        .collect::<Vec<_>>(),
                    "every shard's plan shows the same matrix"
                );
                let mine: Vec<(String, String)> = p
                    .selected()
                    .map(|e| {
                        assert_eq!(e.shard, index);
                        (e.kernel.clone(), e.scenario.clone())
                    })
                    .collect();
                // The lab runs a shard scenario by scenario: the same entries.
                let by_scenario: usize = scenarios.iter().map(|s| p.kernels_for(s).len()).sum();
                assert_eq!(by_scenario, mine.len());
                sizes.push(mine.len());
                seen.extend(mine);
            }
            seen.sort();
            let mut all: Vec<_> = whole
                .entries
                .iter()
                .map(|e| (e.kernel.clone(), e.scenario.clone()))
                .collect();
            all.sort();
            assert_eq!(seen, all, "{total} shards: each entry once, none lost");
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{total} shards: sizes {sizes:?}");
        }
    }

    #[test]
    fn slicing_is_deterministic_and_depends_only_on_the_lists() {
        let k = names(&["deb:6.1", "deb:6.12", "deb:sid"]);
        let s = names(&["default"]);
        let a = Plan::new(&k, &s, Shard { index: 2, total: 3 }).unwrap();
        let b = Plan::new(&k, &s, Shard { index: 2, total: 3 }).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.kernels_for("default"), ["deb:6.12"]);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["shard"], serde_json::json!({"index": 2, "total": 3}));
        assert_eq!(
            json["entries"][1],
            serde_json::json!({"index": 1, "shard": 2, "kernel": "deb:6.12", "scenario": "default"})
        );
    }

    #[test]
    fn a_kernel_or_scenario_named_twice_is_refused() {
        let e = Plan::new(
            &names(&["deb:6.1", "deb:6.1"]),
            &names(&["quick"]),
            Shard::WHOLE,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("deb:6.1 is named twice"), "{e}");
        let e = Plan::new(
            &names(&["deb:6.1"]),
            &names(&["quick", "quick"]),
            Shard::WHOLE,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("scenario quick is named twice"), "{e}");
        assert!(Plan::new(&[], &names(&["quick"]), Shard::WHOLE).is_err());
    }
}
