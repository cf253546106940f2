//! What one storm cell's threads share: the pinned files and what happened to them, the
//! findings so far, and the cell's settings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{StormTotals, TimelinePoint, Violation};
use pinstorm_workloads::backing::Region;
use pinstorm_workloads::layout::{LayoutKind, LayoutTarget, Partners};
use pinstorm_workloads::pin::PinPath;

use super::oracle::foreign::classify_foreign;
use super::oracle::lost_write::Mapping;
use super::oracle::{Events, FileState, Findings, PAGE};
use crate::watchdog::Watchdog;

/// Layout log entries kept per file for violation histories.
pub const LOG: usize = 256;

/// One pinned file (or anonymous region) of a cell.
pub struct TrackedFile {
    /// What the oracles know of this file's layout operations.
    pub state: FileState,
    /// How violations name it: its path, `memfd:N` or `anon:N`.
    pub name: String,
    pub region: Region,
    /// The layout operations on it, by start event, for violation histories.
    pub log: Mutex<VecDeque<(u64, String)>>,
    /// The files next to it that the layout operations declared.
    pub partners: Partners,
}

impl TrackedFile {
    pub fn file_backed(&self) -> bool {
        self.region.file.is_some()
    }

    /// The layout operations logged after `since_event`, oldest first, at most 12.
    pub fn history(&self, since_event: u64) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(ev, _)| *ev > since_event)
            .cloned()
            .collect();
        v.sort();
        v.into_iter().take(12).map(|(_, t)| t).collect()
    }

    /// Log a layout operation that started at `event`, keeping the last `LOG`.
    pub fn record_op(&self, event: u64, text: String) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == LOG {
            log.pop_front();
        }
        log.push_back((event, text));
    }
}

/// Everything a cell's pinner and disruptor threads share.
pub struct StormState {
    pub files: Vec<TrackedFile>,
    /// The pin path every pinner pins with.
    pub path: Box<dyn PinPath>,
    pub events: Events,
    pub stop: AtomicBool,
    pub wd: Arc<Watchdog>,
    /// Layout operations the filesystem does not have (or cannot run here), with why.
    pub unsupported: Mutex<BTreeMap<LayoutKind, String>>,
    pub findings: Mutex<Findings>,
    pub run_tag: u32,
    pub hold: Duration,
    pub examples: usize,
    pub mapping: Mapping,
    /// What the expectations say a registration of this cell gives, and why.
    pub expected: Option<(String, String)>,
    pub size: u64,
    pub align: u64,
    /// Whether the memory comes from the hugetlb pool (operations declare where they apply).
    pub hugetlb: bool,
    pub rate: f64,
    /// The write shapes the job draws from.
    pub shapes: Vec<pinstorm_workloads::shape::WriteShape>,
    /// Every write exactly here instead (a reproducer's replay).
    pub write_at: Option<pinstorm_workloads::scenario::WriteAt>,
    /// Whether pinners may read and write the mapping with the CPU (no operation of the
    /// storm cuts a file short): the diverged oracle's checks.
    pub cpu_view: bool,
    /// Why the moved oracle cannot read frames here, if it cannot.
    pub frames_notrun: Option<String>,
    /// What the run offers the operations (lab guest, journal).
    pub env: pinstorm_workloads::layout::OpEnv,
}

impl StormState {
    /// What a layout operation is given to work on file `i`.
    pub fn target(&self, i: usize) -> LayoutTarget<'_> {
        let f = &self.files[i];
        LayoutTarget {
            file: f.region.file.as_ref(),
            mapping: &f.region.mapping,
            map: f.region.spec.map,
            hugetlb: self.hugetlb,
            size: self.size,
            align: self.align,
            partners: &f.partners,
            cpu_access: self.cpu_view,
            env: &self.env,
        }
    }

    pub fn findings(&self) -> MutexGuard<'_, Findings> {
        self.findings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn unsupported(&self) -> MutexGuard<'_, BTreeMap<LayoutKind, String>> {
        self.unsupported.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judge what a page holds instead of what it should: stale or cross-file.
    pub fn classify_foreign(
        &self,
        f: &TrackedFile,
        page_off: u64,
        content: &[u8],
        at_ms: f64,
        history: &[String],
    ) {
        let Some(found) = classify_foreign(self.run_tag, &f.state, &self.events, page_off, content)
        else {
            return;
        };
        let kind = found.kind.oracle();
        let mut fd = self.findings();
        if !fd.seen.insert((f.state.id, page_off, found.event, kind)) {
            return;
        }
        let v = Violation {
            file: f.name.clone(),
            offset: page_off,
            len: PAGE,
            what: found.what,
            at_ms,
            history: history.to_vec(),
        };
        fd.add(kind, self.examples, v);
    }
}

/// What happened in each second of a cell.
#[derive(Default)]
pub struct Timeline(pub Vec<TimelinePoint>);

impl Timeline {
    pub fn at(&mut self, ms: f64) -> &mut TimelinePoint {
        let s = (ms / 1000.0) as usize;
        while self.0.len() <= s {
            let second = self.0.len() as u64;
            self.0.push(TimelinePoint {
                second,
                ..Default::default()
            });
        }
        &mut self.0[s]
    }

    pub fn merge(&mut self, o: &Timeline) {
        for p in &o.0 {
            let t = self.at(p.second as f64 * 1000.0);
            t.registrations += p.registrations;
            t.register_errors += p.register_errors;
            t.device_writes += p.device_writes;
            t.layout_ops += p.layout_ops;
            t.layout_errors += p.layout_errors;
        }
    }
}

/// A seed for one thread of one cell, derived from the scenario seed.
pub fn thread_seed(seed: u64, cell: &str, role: u64, index: u64) -> u64 {
    // FNV-1a over the cell name, mixed with the seed, the role and the index.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cell.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h ^ seed.rotate_left(17) ^ (role << 56) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// What one pinner thread measured, or why it stopped.
#[derive(Default)]
pub struct PinnerOut {
    pub register: Latency,
    pub totals: StormTotals,
    pub timeline: Timeline,
    pub write_notrun: Option<String>,
    /// Write shapes of the job this pinner could not draw, with why.
    pub shapes_notrun: BTreeSet<String>,
    pub notrun: Option<String>,
    pub error: Option<anyhow::Error>,
    /// Checks of the two views (device to CPU, CPU to device) that were judged.
    pub view_checks: u64,
    /// Readings of the pinned range's frames that were compared with the pin's.
    pub frame_checks: u64,
}
