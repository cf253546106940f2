//! Scenario files: what to run, written like a fio job file.
//!
//! A scenario is a TOML file with a name, a seed and one section per job (`[probe]`,
//! `[bench]`; later issues add `[storm]`, `[lease]`). Every key is known: an unknown key or
//! a bad value is an error naming the file, the line and the key. The presets under
//! `configs/` are compiled in, so `pinstorm run default` works from any directory; a path
//! to a file always wins over a preset name.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backing::{Access, BackingKind, MapKind};
use crate::pin::PinKind;
use crate::units::{Size, Span};

/// The presets shipped in `configs/`, compiled in.
pub const PRESETS: &[(&str, &str)] = &[
    ("default", include_str!("../../configs/default.toml")),
    ("quick", include_str!("../../configs/quick.toml")),
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed for everything random in the run, so a run can be replayed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub probe: Option<ProbeJob>,
    pub bench: Option<BenchJob>,
}

/// `[probe]`: is a pin allowed? One registration per pin path x backing x map x access.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeJob {
    #[serde(default = "all_pins")]
    pub pins: Vec<PinKind>,
    #[serde(default = "all_backings")]
    pub backings: Vec<BackingKind>,
    #[serde(default = "all_maps")]
    pub maps: Vec<MapKind>,
    #[serde(default = "all_access")]
    pub access: Vec<Access>,
    /// Size of each probed region.
    #[serde(default = "two_mib")]
    pub size: Size,
    /// After a successful pin, let the device write a pattern and read it back.
    #[serde(default = "yes")]
    pub device_io: bool,
}

/// `[bench]`: register + unregister latency per pin path x backing x size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchJob {
    #[serde(default = "all_pins")]
    pub pins: Vec<PinKind>,
    #[serde(default = "bench_backings")]
    pub backings: Vec<BackingKind>,
    #[serde(default = "bench_sizes")]
    pub sizes: Vec<Size>,
    #[serde(default = "shared")]
    pub map: MapKind,
    #[serde(default = "rw")]
    pub access: Access,
    /// Pinning threads, each with its own pinner and region.
    #[serde(default = "one")]
    pub threads: NonZeroUsize,
    /// Unrecorded cycles per thread before measuring.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// Recorded cycles per thread and cell (fewer if `max_time` runs out first).
    #[serde(default = "default_iterations")]
    pub iterations: NonZeroU64,
    /// Time budget per cell.
    #[serde(default = "default_max_time")]
    pub max_time: Span,
    /// Also run the same syscalls in a tight loop, interleaved, to show harness overhead.
    #[serde(default = "yes")]
    pub baseline: bool,
}

fn default_seed() -> u64 {
    1
}
fn all_pins() -> Vec<PinKind> {
    PinKind::ALL.to_vec()
}
fn all_backings() -> Vec<BackingKind> {
    BackingKind::ALL.to_vec()
}
fn bench_backings() -> Vec<BackingKind> {
    vec![
        BackingKind::Anon,
        BackingKind::AnonHugetlb,
        BackingKind::Memfd,
        BackingKind::Tmpfs,
        BackingKind::Hugetlbfs,
    ]
}
fn all_maps() -> Vec<MapKind> {
    MapKind::ALL.to_vec()
}
fn all_access() -> Vec<Access> {
    Access::ALL.to_vec()
}
fn two_mib() -> Size {
    Size(2 << 20)
}
fn bench_sizes() -> Vec<Size> {
    vec![Size(4 << 10), Size(64 << 10), Size(2 << 20), Size(64 << 20)]
}
fn shared() -> MapKind {
    MapKind::Shared
}
fn rw() -> Access {
    Access::Rw
}
fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}
fn default_warmup() -> u64 {
    16
}
fn default_iterations() -> NonZeroU64 {
    NonZeroU64::new(2000).unwrap()
}
fn default_max_time() -> Span {
    Span(std::time::Duration::from_secs(1))
}
fn yes() -> bool {
    true
}

impl Default for ProbeJob {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Default for BenchJob {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// A scenario file that could not be used, with where.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScenarioError {
    pub origin: String,
    pub message: String,
}

/// 1-based line of `key` inside `[section]` (or at top level when `section` is empty), for
/// errors found after parsing.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = s.trim().to_string();
            continue;
        }
        if current == section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

impl Scenario {
    /// Parse scenario text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let err = |section: &str, key: &str, what: &str| {
            let at = line_of(text, section, key)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            let name = if section.is_empty() {
                key.to_string()
            } else {
                format!("[{section}] {key}")
            };
            Err(ScenarioError {
                origin: origin.to_string(),
                message: format!("{at}{name}: {what}"),
            })
        };
        if s.name.trim().is_empty() {
            return err("", "name", "must not be empty");
        }
        if s.probe.is_none() && s.bench.is_none() {
            return Err(ScenarioError {
                origin: origin.into(),
                message: "the scenario has no job: add a [probe] or [bench] section".into(),
            });
        }
        if let Some(p) = &s.probe {
            for (key, empty) in [
                ("pins", p.pins.is_empty()),
                ("backings", p.backings.is_empty()),
                ("maps", p.maps.is_empty()),
                ("access", p.access.is_empty()),
            ] {
                if empty {
                    return err("probe", key, "must list at least one value");
                }
            }
        }
        if let Some(b) = &s.bench {
            for (key, empty) in [
                ("pins", b.pins.is_empty()),
                ("backings", b.backings.is_empty()),
                ("sizes", b.sizes.is_empty()),
            ] {
                if empty {
                    return err("bench", key, "must list at least one value");
                }
            }
            if b.max_time.0.is_zero() {
                return err("bench", "max_time", "must be greater than zero");
            }
        }
        Ok(s)
    }

    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            origin: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// A file path, or the name of a compiled-in preset (`default`, `configs/default.toml`).
    /// Returns the scenario and its text.
    pub fn resolve(arg: &str) -> Result<(Scenario, String, String), ScenarioError> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
                origin: arg.to_string(),
                message: format!("cannot read: {e}"),
            })?;
            return Ok((Scenario::parse(&text, arg)?, text, arg.to_string()));
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let looks_like_preset = path
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || p.ends_with("configs"));
        if looks_like_preset {
            if let Some((name, text)) = PRESETS.iter().find(|(n, _)| *n == stem) {
                let origin = format!("preset {name} (configs/{name}.toml)");
                return Ok((Scenario::parse(text, &origin)?, text.to_string(), origin));
            }
        }
        let presets: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
        Err(ScenarioError {
            origin: arg.to_string(),
            message: format!(
                "no such scenario file, and not a preset (presets: {})",
                presets.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for (name, text) in PRESETS {
            Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "name = \"x\"\n[bench]\nsizes = [\"4K\"]\nbogus = 3\n";
        let e = Scenario::parse(text, "configs/x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("configs/x.toml: "), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_line_and_the_problem() {
        let e = Scenario::parse("name = \"x\"\n[bench]\nsizes = [\"4Q\"]\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("unknown suffix"), "{e}");
        let e = Scenario::parse("name = \"x\"\n[probe]\nbackings = [\"zfs\"]\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("unknown variant `zfs`"),
            "{e}"
        );
        let e = Scenario::parse("name = \"x\"\n[bench]\nthreads = 0\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = Scenario::parse("name = \"x\"\n[bench]\nsizes = []\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3: [bench] sizes: must list at least one value"),
            "{e}"
        );
    }

    #[test]
    fn a_scenario_without_jobs_is_refused() {
        let e = Scenario::parse("name = \"x\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no job"), "{e}");
    }

    #[test]
    fn presets_resolve_by_name_and_by_configs_path() {
        assert_eq!(Scenario::resolve("default").unwrap().0.name, "default");
        assert!(Scenario::resolve("no-such-preset").is_err());
    }
}
