//! Scenario files: what to run, written like a fio job file.
//!
//! A scenario is a TOML file with a name, a seed and one section per job (`[probe]`,
//! `[bench]`, `[storm]`, `[lease]`). Every key is known: an unknown key or
//! a bad value is an error naming the file, the line and the key. The presets under
//! `configs/` are compiled in, so `pinstorm run default` works from any directory; a path
//! to a file always wins over a preset name.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backing::{Access, BackingKind, MapKind};
use crate::layout::LayoutKind;
use crate::lease::{Behaviour, BreakerKind, LeaseKind, Lifecycle};
use crate::pin::PinKind;
use crate::shape::WriteShape;
use crate::units::{Size, Span};

/// The presets shipped in `configs/`, compiled in.
pub const PRESETS: &[(&str, &str)] = &[
    ("default", include_str!("../../configs/default.toml")),
    ("quick", include_str!("../../configs/quick.toml")),
    ("lab", include_str!("../../configs/lab.toml")),
    ("dax-vs-pin", include_str!("../../configs/dax-vs-pin.toml")),
    (
        "truncate-vs-pin",
        include_str!("../../configs/truncate-vs-pin.toml"),
    ),
    (
        "punch-vs-pin",
        include_str!("../../configs/punch-vs-pin.toml"),
    ),
    (
        "reflink-vs-pin",
        include_str!("../../configs/reflink-vs-pin.toml"),
    ),
    (
        "mixed-layout-storm",
        include_str!("../../configs/mixed-layout-storm.toml"),
    ),
    ("odp-on-dax", include_str!("../../configs/odp-on-dax.toml")),
    ("mm-vs-pin", include_str!("../../configs/mm-vs-pin.toml")),
    (
        "mm-vs-pin-lab",
        include_str!("../../configs/mm-vs-pin-lab.toml"),
    ),
    (
        "pin-migration",
        include_str!("../../configs/pin-migration.toml"),
    ),
    (
        "rdma-vs-layout",
        include_str!("../../configs/rdma-vs-layout.toml"),
    ),
    (
        "lease-break-storm",
        include_str!("../../configs/lease-break-storm.toml"),
    ),
    (
        "lease-check-overhead",
        include_str!("../../configs/lease-check-overhead.toml"),
    ),
    (
        "lease-lifecycle",
        include_str!("../../configs/lease-lifecycle.toml"),
    ),
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
    pub storm: Option<StormJob>,
    pub lease: Option<LeaseJob>,
    /// `[migration]`: long-term pins of pages in ZONE_MOVABLE (docs/mm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationJob>,
    /// `[rdma]`: device, port and MR access flags of the `rdma` and `rdma-odp` pin paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<crate::pin::rdma::RdmaConfig>,
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
    /// After each recorded registration, time one device write of a 4 KiB page through it
    /// (op `device-write`): for `rdma-odp` the device's page fault (first touch) or, with
    /// `[rdma] prefetch`, a write into prefetched pages.
    #[serde(default)]
    pub device_write: bool,
    /// The device writes to time after each recorded registration, by length (implies
    /// `device_write`; empty: one of 4 KiB). Each length is written twice at an offset of its
    /// own: right after the registration (op `device-write-LEN`: the first touch, an ODP
    /// fault) and again (`device-rewrite-LEN`); a 4 KiB write keeps the plain op names.
    #[serde(default)]
    pub write_sizes: Vec<Size>,
}

impl BenchJob {
    /// The lengths of the device writes timed after each registration; none without
    /// `device_write` or `write_sizes`.
    pub fn device_writes(&self) -> Vec<Size> {
        match (self.device_write, self.write_sizes.is_empty()) {
            (_, false) => self.write_sizes.clone(),
            (true, true) => vec![Size(4096)],
            (false, true) => vec![],
        }
    }
}

/// `[storm]`: pinners register, hold, let the device write and read, and unregister, while
/// disruptors change the layout of the pinned files; the oracles judge every write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormJob {
    #[serde(default = "storm_pins")]
    pub pins: Vec<PinKind>,
    #[serde(default = "storm_backings")]
    pub backings: Vec<BackingKind>,
    #[serde(default = "storm_maps")]
    pub maps: Vec<MapKind>,
    /// Layout operations the disruptors pick from, uniformly.
    #[serde(default = "storm_ops")]
    pub ops: Vec<LayoutKind>,
    /// Size of each pinned file (one per pinner), rounded up to the backing's page size.
    #[serde(default = "two_mib")]
    pub file_size: Size,
    /// Pinner threads, each with its own file and pinner.
    #[serde(default = "two")]
    pub pinners: NonZeroUsize,
    /// Disruptor threads; 0 runs the pinners alone (a baseline that must find nothing).
    #[serde(default = "one_usize")]
    pub disruptors: usize,
    /// How long each pin is held before the device writes through it.
    #[serde(default = "default_hold")]
    pub hold: Span,
    /// How long each pin path x backing x map cell storms.
    #[serde(default = "default_duration")]
    pub duration: Span,
    /// Layout operations per second per disruptor; 0 is as fast as possible.
    #[serde(default)]
    pub rate: f64,
    /// A syscall running longer than this is reported as blocked.
    #[serde(default = "default_block_threshold")]
    pub block_threshold: Span,
    /// Examples kept per oracle.
    #[serde(default = "default_examples")]
    pub examples: usize,
    /// The shapes of the device's writes, one drawn per write (`page`, `sub-page`,
    /// `page-crossing`, `huge-page-crossing`, `multi-page`, `packets`).
    #[serde(default = "page_shape")]
    pub shapes: Vec<WriteShape>,
    /// Also run every cell as a control: the same pinners and writes with no layout
    /// operation, so a pin-path or device defect is told apart from a layout race.
    #[serde(default)]
    pub control: bool,
    /// Every device write exactly here, `"OFFSET+LEN"` (a reproducer's replay; see
    /// `--write-at`), instead of drawn from `shapes`.
    #[serde(default)]
    pub write_at: Option<WriteAt>,
}

fn page_shape() -> Vec<WriteShape> {
    vec![WriteShape::Page]
}

/// `[migration]`: does a long-term pin migrate pages out of ZONE_MOVABLE before it pins
/// them, what does it cost, and what happens when they cannot move. Each round maps a fresh
/// anonymous region (its pages come from ZONE_MOVABLE first where there is one), pins it,
/// pins it again, and once more with its pages also referenced by a pipe (vmsplice), which
/// no migration can move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationJob {
    /// The long-term pin paths measured.
    #[serde(default = "io_uring_only")]
    pub pins: Vec<PinKind>,
    #[serde(default = "two_mib")]
    pub size: Size,
    #[serde(default = "migration_rounds")]
    pub rounds: u32,
}

fn io_uring_only() -> Vec<PinKind> {
    vec![PinKind::IoUring]
}

fn migration_rounds() -> u32 {
    8
}

/// `[lease]`: lease holders in processes of their own, breakers, lease-check overhead, the
/// lifecycle scenarios of the 2019 debate, and a probe for layout leases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseJob {
    /// File backings (a breaker needs a path: memfd and anonymous memory cannot take part).
    #[serde(default = "lease_backings")]
    pub backings: Vec<BackingKind>,
    /// Lease-break rounds per lease x behaviour x breaker x backing; 0 skips break storms.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// Rounds for holders that may leave the breaker waiting out the lease-break-time (hung,
    /// and downgrading ones whose downgrade the kernel refuses).
    #[serde(default = "one_u32")]
    pub hung_rounds: u32,
    #[serde(default = "all_leases")]
    pub leases: Vec<LeaseKind>,
    #[serde(default = "all_behaviours")]
    pub behaviours: Vec<Behaviour>,
    #[serde(default = "all_breakers")]
    pub breakers: Vec<BreakerKind>,
    /// Breaks per second; 0 is back to back.
    #[serde(default)]
    pub rate: f64,
    /// How long a delayed holder waits before releasing.
    #[serde(default = "default_delay")]
    pub delay: Span,
    /// Write-lease holders also pin the file (io_uring, shared read-write mapping).
    #[serde(default = "yes")]
    pub pin: bool,
    #[serde(default = "two_mib")]
    pub pin_size: Size,
    /// With `pin`, each cooperative write-lease cell runs a second time with a holder that
    /// pins nothing: the lease break alone, beside the pinned cell (the difference is the
    /// unpin) and comparable with a C program that only answers the break.
    #[serde(default = "yes")]
    pub no_pin_holder: bool,
    /// `fs/lease-break-time` for the run when something has to wait a lease out (root only;
    /// restored afterwards). Whole seconds.
    #[serde(default = "default_lbt")]
    pub lease_break_time: Span,
    /// Register + unregister cycles with and without a lease held (lease-check overhead);
    /// 0 skips it.
    #[serde(default)]
    pub overhead_cycles: u32,
    /// Lifecycle scenarios to run.
    #[serde(default)]
    pub lifecycle: Vec<Lifecycle>,
    /// Probe `F_SETLEASE` with the 2019 RFC's layout-lease flags.
    #[serde(default = "yes")]
    pub layout_probe: bool,
    /// `F_LAYOUT` and `F_EXCLUSIVE` as the RFC v2 numbered them; a patch set may renumber.
    #[serde(default = "default_f_layout")]
    pub f_layout: i32,
    #[serde(default = "default_f_exclusive")]
    pub f_exclusive: i32,
    /// The holder's F_SETSIG signal, as SIGRTMIN + this.
    #[serde(default = "one_i32")]
    pub signal: i32,
}

fn lease_backings() -> Vec<BackingKind> {
    vec![BackingKind::Tmpfs]
}
fn default_rounds() -> u32 {
    20
}
fn one_u32() -> u32 {
    1
}
fn one_i32() -> i32 {
    1
}
fn all_leases() -> Vec<LeaseKind> {
    vec![LeaseKind::Write, LeaseKind::Read]
}
fn all_behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour::Cooperative,
        Behaviour::Delayed,
        Behaviour::Downgrading,
        Behaviour::Hung,
    ]
}
fn all_breakers() -> Vec<BreakerKind> {
    BreakerKind::ALL.to_vec()
}
fn default_delay() -> Span {
    Span(std::time::Duration::from_millis(5))
}
fn default_lbt() -> Span {
    Span(std::time::Duration::from_secs(2))
}
fn default_f_layout() -> i32 {
    16
}
fn default_f_exclusive() -> i32 {
    32
}

impl Default for LeaseJob {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn storm_pins() -> Vec<PinKind> {
    vec![PinKind::IoUring]
}
fn storm_backings() -> Vec<BackingKind> {
    vec![BackingKind::Tmpfs]
}
fn storm_maps() -> Vec<MapKind> {
    vec![MapKind::Shared]
}
fn storm_ops() -> Vec<LayoutKind> {
    vec![LayoutKind::Truncate]
}
fn two() -> NonZeroUsize {
    NonZeroUsize::new(2).unwrap()
}
fn one_usize() -> usize {
    1
}
fn default_hold() -> Span {
    Span(std::time::Duration::from_millis(1))
}
fn default_duration() -> Span {
    Span(std::time::Duration::from_secs(2))
}
fn default_block_threshold() -> Span {
    Span(std::time::Duration::from_secs(1))
}
fn default_examples() -> usize {
    5
}

impl Default for StormJob {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
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

// The allowed ranges of the counts in a scenario (sizes and durations have theirs in
// `units`). Each is far beyond a useful run and keeps what the runners derive from it
// (threads spawned, samples kept, deadlines, intervals) from overflowing or exhausting
// memory.

/// Threads of one job: `[bench] threads`, `[storm] pinners` and `disruptors`.
pub const MAX_THREADS: usize = 1024;
/// `[bench] warmup`: unrecorded cycles per thread (not bounded by `max_time`).
pub const MAX_WARMUP: u64 = 10_000_000;
/// `[bench] write_sizes`: device writes timed after each registration.
pub const MAX_WRITE_SIZES: usize = 16;
/// `[bench] iterations`: recorded cycles per thread and cell.
pub const MAX_ITERATIONS: u64 = 1_000_000_000;
/// `[storm] examples`: violations kept per oracle.
pub const MAX_EXAMPLES: usize = 10_000;
/// `[lease] rounds` and `hung_rounds`.
pub const MAX_ROUNDS: u32 = 1_000_000;
/// `[lease] overhead_cycles` (their samples are kept for the bootstrap).
pub const MAX_OVERHEAD_CYCLES: u32 = 10_000_000;
/// `rate` of storms and lease breaks, per second, when not 0: one per 1000 s at the least
/// (the interval between two is a `Duration`), a billion at the most.
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1e9;

fn rate_ok(rate: f64) -> bool {
    rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// The largest `[lease] signal`: the holder's signal is SIGRTMIN + signal, and the C
/// library decides where the real-time signals start (glibc keeps the first two or three).
pub fn max_rt_signal_offset() -> i32 {
    libc::SIGRTMAX() - libc::SIGRTMIN()
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
    /// Every backing a job of this scenario uses.
    pub fn backings_used(&self) -> std::collections::BTreeSet<BackingKind> {
        let mut b = std::collections::BTreeSet::new();
        if let Some(j) = &self.probe {
            b.extend(j.backings.iter().copied());
        }
        if let Some(j) = &self.bench {
            b.extend(j.backings.iter().copied());
        }
        if let Some(j) = &self.storm {
            b.extend(j.backings.iter().copied());
        }
        if let Some(j) = &self.lease {
            b.extend(j.backings.iter().copied());
        }
        b
    }

    /// Every pin path a probe, benchmark or storm of this scenario drives (lease holders
    /// pin with io_uring, see the lease job).
    pub fn pins_used(&self) -> std::collections::BTreeSet<PinKind> {
        let mut p = std::collections::BTreeSet::new();
        if let Some(j) = &self.probe {
            p.extend(j.pins.iter().copied());
        }
        if let Some(j) = &self.bench {
            p.extend(j.pins.iter().copied());
        }
        if let Some(j) = &self.storm {
            p.extend(j.pins.iter().copied());
        }
        p
    }

    /// What the pin paths are told: the tables of the paths that have settings.
    pub fn pin_settings(&self) -> crate::pin::PinSettings {
        crate::pin::PinSettings {
            rdma: self.rdma.clone().unwrap_or_default(),
        }
    }

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
        if s.probe.is_none()
            && s.bench.is_none()
            && s.storm.is_none()
            && s.lease.is_none()
            && s.migration.is_none()
        {
            return Err(ScenarioError {
                origin: origin.into(),
                message:
                    "the scenario has no job: add a [probe], [bench], [storm], [lease] or [migration] section"
                        .into(),
            });
        }
        if let Some(m) = &s.migration {
            if m.pins.is_empty() || m.rounds == 0 || m.rounds > 10_000 {
                return err(
                    "[migration].",
                    "pins/rounds",
                    "name at least one pin path and 1 to 10000 rounds",
                );
            }
            if m.size.bytes() < 4096 || m.size.bytes() > 1 << 30 {
                return err("[migration].", "size", "between 4K and 1G");
            }
        }
        if let Some(l) = &s.lease {
            if l.backings.is_empty() {
                return err("lease", "backings", "must list at least one value");
            }
            if l.lease_break_time.0.as_secs() == 0 {
                return err(
                    "lease",
                    "lease_break_time",
                    "must be at least 1s (the sysctl counts whole seconds)",
                );
            }
            if !rate_ok(l.rate) {
                return err(
                    "lease",
                    "rate",
                    &format!(
                        "must be 0 (back to back) or between {MIN_RATE} and {MAX_RATE} breaks per second"
                    ),
                );
            }
            for (key, v, max) in [
                ("rounds", l.rounds, MAX_ROUNDS),
                ("hung_rounds", l.hung_rounds, MAX_ROUNDS),
                ("overhead_cycles", l.overhead_cycles, MAX_OVERHEAD_CYCLES),
            ] {
                if v > max {
                    return err("lease", key, &format!("must be between 0 and {max}"));
                }
            }
            let max_signal = max_rt_signal_offset();
            if !(0..=max_signal).contains(&l.signal) {
                return err(
                    "lease",
                    "signal",
                    &format!(
                        "must be between 0 and {max_signal} (the break signal is SIGRTMIN + signal, at most SIGRTMAX)"
                    ),
                );
            }
        }
        if let Some(r) = &s.rdma {
            if let Some(m) = r.path_mtu {
                if crate::pin::rdma::mtu_enum(m).is_none() {
                    return err("rdma", "path_mtu", "must be 256, 512, 1024, 2048 or 4096");
                }
            }
            if r.port == Some(0) {
                return err(
                    "rdma",
                    "port",
                    "must be between 1 and 255 (ports count from 1)",
                );
            }
            if r.completion_timeout.0.is_zero() {
                return err("rdma", "completion_timeout", "must be greater than zero");
            }
        }
        if let Some(st) = &s.storm {
            for (key, empty) in [
                ("pins", st.pins.is_empty()),
                ("backings", st.backings.is_empty()),
                ("maps", st.maps.is_empty()),
                ("ops", st.ops.is_empty() && st.disruptors > 0),
            ] {
                if empty {
                    return err("storm", key, "must list at least one value");
                }
            }
            if st.duration.0.is_zero() {
                return err(
                    "storm",
                    "duration",
                    "must be greater than zero (and at most 168h)",
                );
            }
            if !rate_ok(st.rate) {
                return err(
                    "storm",
                    "rate",
                    &format!(
                        "must be 0 (as fast as possible) or between {MIN_RATE} and {MAX_RATE} operations per second"
                    ),
                );
            }
            if st.file_size.bytes() < 4096 {
                return err("storm", "file_size", "must be at least 4K (one page)");
            }
            if st.pinners.get() > MAX_THREADS {
                return err(
                    "storm",
                    "pinners",
                    &format!("must be between 1 and {MAX_THREADS}"),
                );
            }
            if st.disruptors > MAX_THREADS {
                return err(
                    "storm",
                    "disruptors",
                    &format!("must be between 0 and {MAX_THREADS}"),
                );
            }
            if st.examples > MAX_EXAMPLES {
                return err(
                    "storm",
                    "examples",
                    &format!("must be between 0 and {MAX_EXAMPLES}"),
                );
            }
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
                return err(
                    "bench",
                    "max_time",
                    "must be greater than zero (and at most 168h)",
                );
            }
            if b.threads.get() > MAX_THREADS {
                return err(
                    "bench",
                    "threads",
                    &format!("must be between 1 and {MAX_THREADS}"),
                );
            }
            if b.warmup > MAX_WARMUP {
                return err(
                    "bench",
                    "warmup",
                    &format!("must be between 0 and {MAX_WARMUP}"),
                );
            }
            if b.write_sizes.iter().any(|w| w.bytes() == 0) {
                return err("bench", "write_sizes", "a write is at least 1 byte long");
            }
            if b.write_sizes.len() > MAX_WRITE_SIZES {
                return err(
                    "bench",
                    "write_sizes",
                    &format!("at most {MAX_WRITE_SIZES} lengths"),
                );
            }
            if b.iterations.get() > MAX_ITERATIONS {
                return err(
                    "bench",
                    "iterations",
                    &format!("must be between 1 and {MAX_ITERATIONS}"),
                );
            }
        }
        Ok(s)
    }

    /// The scenario as TOML (what results record, and what the lab hands a guest).
    pub fn to_text(&self) -> String {
        toml::to_string(self).unwrap_or_default()
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

mod overrides;
pub use overrides::{OverrideError, Overrides, WriteAt};

#[cfg(test)]
mod tests;
