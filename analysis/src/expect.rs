//! Expectations: what a kernel is expected to do, per kernel version range, kept in data
//! files under `configs/expectations/`. The probe measures first and only then looks up the
//! expectation, to flag where the kernel differs; an expectation never produces a result.
//!
//! A file is a list of `[[expect]]` rules. A rule matches a cell when every key it sets
//! matches (a key it leaves out matches anything); among matching rules the **last** wins,
//! so files go from general to specific.

use serde::Deserialize;

use crate::kernel::{KernelRange, KernelRelease};

/// The compiled-in expectation files, in the order they are read.
pub const BUILTIN: &[(&str, &str)] = &[(
    "configs/expectations/pins.toml",
    include_str!("../../configs/expectations/pins.toml"),
)];

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn matches(&self, v: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == v || s == "*",
            OneOrMany::Many(l) => l.iter().any(|s| s == v || s == "*"),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pin: Option<OneOrMany>,
    backing: Option<OneOrMany>,
    fs: Option<OneOrMany>,
    map: Option<OneOrMany>,
    access: Option<OneOrMany>,
    dax: Option<bool>,
    /// RDMA device name(s) or name prefixes (`rxe` matches `rxe0`); rules with it match only
    /// cells of the `rdma` pin paths measured on such a device.
    rdma_device: Option<OneOrMany>,
    kernel: Option<KernelRange>,
    /// `ok` or an errno name.
    pub outcome: String,
    /// Why (a commit, a measurement): shown next to every difference.
    pub why: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    expect: Vec<Rule>,
}

/// The facts of one probe cell that rules match on.
#[derive(Clone, Debug)]
pub struct Cell<'a> {
    pub pin: &'a str,
    pub backing: &'a str,
    pub fs: &'a str,
    pub map: &'a str,
    pub access: &'a str,
    pub dax: Option<bool>,
    /// The RDMA device the cell used (`rxe0`, `mlx5_0`), for the `rdma` pin paths.
    pub rdma_device: Option<&'a str>,
}

#[derive(Clone, Debug, Default)]
pub struct Expectations {
    pub origin: String,
    rules: Vec<Rule>,
}

impl Expectations {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Expectations> {
        let f: File = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        for (i, r) in f.expect.iter().enumerate() {
            if r.outcome != "ok"
                && !(r.outcome.starts_with('E') && r.outcome.len() > 1)
                && !r.outcome.starts_with("IBV_WC_")
            {
                anyhow::bail!(
                    "{origin}: rule {} ([[expect]] number {}): outcome {:?} must be \"ok\" or an errno name like \"EFAULT\"",
                    i + 1,
                    i + 1,
                    r.outcome
                );
            }
        }
        Ok(Expectations {
            origin: origin.to_string(),
            rules: f.expect,
        })
    }

    pub fn builtin() -> Expectations {
        let mut all = Expectations {
            origin: BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            rules: Vec::new(),
        };
        for (name, text) in BUILTIN {
            let e = Expectations::parse(text, name).expect("built-in expectations parse");
            all.rules.extend(e.rules);
        }
        all
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The expectation for a cell on a kernel: the last matching rule.
    pub fn lookup(&self, cell: &Cell, kernel: &KernelRelease) -> Option<&Rule> {
        self.rules.iter().rev().find(|r| {
            r.pin.as_ref().is_none_or(|m| m.matches(cell.pin))
                && r.backing.as_ref().is_none_or(|m| m.matches(cell.backing))
                && r.fs.as_ref().is_none_or(|m| m.matches(cell.fs))
                && r.map.as_ref().is_none_or(|m| m.matches(cell.map))
                && r.access.as_ref().is_none_or(|m| m.matches(cell.access))
                && r.dax.is_none_or(|d| cell.dax == Some(d))
                && r.rdma_device.as_ref().is_none_or(|m| {
                    cell.rdma_device.is_some_and(|dev| match m {
                        OneOrMany::One(p) => dev.starts_with(p.as_str()) || p == "*",
                        OneOrMany::Many(l) => {
                            l.iter().any(|p| dev.starts_with(p.as_str()) || p == "*")
                        }
                    })
                })
                && r.kernel.as_ref().is_none_or(|k| k.contains(kernel))
        })
    }
}

/// Expectations for the facts of lease lifecycle scenarios
/// (`configs/expectations/leases.toml`): `[[fact]]` rules with `scenario`, `fact`, `value`,
/// optional `kernel`, and `why`. Last match wins.
#[derive(Clone, Debug, Default)]
pub struct FactExpectations {
    pub origin: String,
    rules: Vec<FactRule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactRule {
    scenario: OneOrMany,
    fact: String,
    pub value: String,
    kernel: Option<KernelRange>,
    pub why: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FactFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    fact: Vec<FactRule>,
}

pub const BUILTIN_FACTS: (&str, &str) = (
    "configs/expectations/leases.toml",
    include_str!("../../configs/expectations/leases.toml"),
);

impl FactExpectations {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<FactExpectations> {
        let f: FactFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        Ok(FactExpectations {
            origin: origin.into(),
            rules: f.fact,
        })
    }

    pub fn builtin() -> FactExpectations {
        FactExpectations::parse(BUILTIN_FACTS.1, BUILTIN_FACTS.0)
            .expect("built-in lease expectations parse")
    }

    pub fn lookup(&self, scenario: &str, fact: &str, kernel: &KernelRelease) -> Option<&FactRule> {
        self.rules.iter().rev().find(|r| {
            r.scenario.matches(scenario)
                && r.fact == fact
                && r.kernel.as_ref().is_none_or(|k| k.contains(kernel))
        })
    }
}

/// Verdict strings used in result rows.
pub mod verdict {
    pub const AS_EXPECTED: &str = "as-expected";
    pub const DIFFERS: &str = "differs";
    pub const NO_EXPECTATION: &str = "no-expectation";
    pub const NOTRUN: &str = "notrun";
}

/// Compare a measured outcome with the expectation for its cell.
pub fn judge<'r>(
    exp: &'r Expectations,
    cell: &Cell,
    kernel: &KernelRelease,
    outcome: &str,
) -> (&'static str, Option<&'r Rule>) {
    if outcome == "notrun" {
        return (verdict::NOTRUN, None);
    }
    match exp.lookup(cell, kernel) {
        None => (verdict::NO_EXPECTATION, None),
        Some(r) if r.outcome == outcome => (verdict::AS_EXPECTED, Some(r)),
        Some(r) => (verdict::DIFFERS, Some(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell<'a>(fs: &'a str, map: &'a str, access: &'a str) -> Cell<'a> {
        Cell {
            pin: "io_uring",
            backing: fs,
            fs,
            map,
            access,
            dax: Some(false),
            rdma_device: None,
        }
    }

    #[test]
    fn last_matching_rule_wins_and_kernel_ranges_apply() {
        let e = Expectations::parse(
            r#"
[[expect]]
outcome = "ok"
why = "general"
[[expect]]
fs = ["xfs", "ext4"]
map = "shared"
access = "rw"
kernel = ">=6.5"
outcome = "EFAULT"
why = "Stoakes"
"#,
            "t.toml",
        )
        .unwrap();
        let new = KernelRelease::parse("6.18.0").unwrap();
        let old = KernelRelease::parse("6.1.0").unwrap();
        assert_eq!(
            e.lookup(&cell("xfs", "shared", "rw"), &new).unwrap().why,
            "Stoakes"
        );
        assert_eq!(
            e.lookup(&cell("xfs", "shared", "rw"), &old).unwrap().why,
            "general"
        );
        assert_eq!(
            e.lookup(&cell("xfs", "private", "rw"), &new).unwrap().why,
            "general"
        );
        let (v, _) = judge(&e, &cell("xfs", "shared", "rw"), &new, "ok");
        assert_eq!(v, verdict::DIFFERS);
        let (v, _) = judge(&e, &cell("xfs", "shared", "rw"), &new, "EFAULT");
        assert_eq!(v, verdict::AS_EXPECTED);
    }

    #[test]
    fn bad_rules_are_refused_with_the_file_name() {
        let e = Expectations::parse("[[expect]]\noutcome = \"maybe\"\nwhy = \"x\"\n", "t.toml")
            .unwrap_err();
        assert!(
            e.to_string().contains("t.toml") && e.to_string().contains("errno name"),
            "{e}"
        );
        let e = Expectations::parse(
            "[[expect]]\nfsx = \"xfs\"\noutcome = \"ok\"\nwhy = \"x\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `fsx`"), "{e}");
    }

    #[test]
    fn builtin_expectations_parse() {
        assert!(!Expectations::builtin().is_empty());
    }
}
