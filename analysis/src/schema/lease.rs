//! The `leases` part of the result schema (docs/result-schema.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{FactVerdict, Measured, Violation};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseResults {
    /// `fs/lease-break-time` before the run, the value the run used, and whether it was
    /// put back.
    pub lease_break_time: LeaseBreakTime,
    pub breaks: Vec<LeaseBreakResult>,
    pub overhead: Vec<LeaseOverhead>,
    pub lifecycle: Vec<LifecycleResult>,
    pub layout_lease: Option<LayoutLeaseProbe>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseBreakTime {
    pub original_s: Option<u64>,
    pub used_s: Option<u64>,
    pub restored: bool,
}

/// One lease x holder behaviour x breaker x backing cell of a break storm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseBreakResult {
    pub backing: String,
    pub fs: String,
    pub lease: String,
    pub behaviour: String,
    pub breaker: String,
    pub pinned: bool,
    pub outcome: String,
    pub reason: Option<String>,
    pub rounds: u32,
    /// Rounds in which the holder received the break signal.
    pub signalled: u32,
    /// How the lease ended, by count: unlock, downgrade, revoked, none (not broken), ...
    pub ended: BTreeMap<String, u32>,
    /// What the breaking syscall returned, by count (`ok`, `EAGAIN`, ...).
    pub breaker_results: BTreeMap<String, u32>,
    pub acquire: Option<Measured>,
    /// The holder's answer: unpin (pinned holders) and `F_UNLCK` (or the downgrade).
    pub release: Option<Measured>,
    /// The unpin's part of `release` (pinned holders; absent in older results).
    #[serde(default)]
    pub unpin: Option<Measured>,
    /// Breaker start to the holder's signal.
    pub notify: Option<Measured>,
    /// How long the breaking syscall took.
    pub breaker_wait: Option<Measured>,
    pub lease_break_time_s: Option<u64>,
    /// The holder wrote its events only after the breaker's call returned. Older results
    /// (false) had the holder report the signal before releasing, inside `breaker_wait`.
    #[serde(default)]
    pub report_after_release: bool,
}

/// Pin register + unregister with a lease held versus without, on one backing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseOverhead {
    pub backing: String,
    pub fs: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub without: Option<Measured>,
    pub with: Option<Measured>,
    /// Median with minus median without, and its bootstrap confidence interval.
    pub overhead_ns: Option<f64>,
    pub ci_low_ns: Option<f64>,
    pub ci_high_ns: Option<f64>,
    pub confidence: f64,
    pub overhead_pct: Option<f64>,
    /// Whether the interval excludes zero.
    pub significant: Option<bool>,
}

/// One lifecycle scenario: what the kernel did, and the verdict per fact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleResult {
    pub scenario: String,
    pub backing: String,
    pub fs: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub breaker: String,
    pub breaker_result: Option<String>,
    pub breaker_wait_ms: Option<f64>,
    pub facts: BTreeMap<String, String>,
    pub verdicts: Vec<FactVerdict>,
    pub violations: Vec<Violation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayoutLeaseProbe {
    /// `notrun` when the kernel has no layout leases (upstream: EINVAL), else `ok`.
    pub outcome: String,
    pub reason: Option<String>,
    pub f_layout: i32,
    pub f_exclusive: i32,
    /// What `F_SETLEASE` answered for each flag combination tried.
    pub answers: BTreeMap<String, String>,
    /// The RFC's promises, checked where layout leases exist.
    pub checks: BTreeMap<String, String>,
}
