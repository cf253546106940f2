//! The storm's oracles, apart from the storm's threads and any kernel object, so a planted
//! interleaving can be replayed against them (see the tests). One module per oracle:
//!
//! - [`lost_write`]: where each device write went;
//! - [`diverged`]: whether the pin and the process's mapping still show the same page, both
//!   ways, and whether a pinned page changed frame (`moved`);
//! - [`foreign`]: stale exposure and cross-file pages (a page holding what it should not);
//! - [`leaked_pins`]: FOLL_PIN pages still held after the storm;
//! - [`unexpected`]: registrations the expectations did not expect;
//! - [`blocked`]: operations stuck beyond the threshold (from the watchdog);
//! - [`kernel_warnings`]: kernel report headers in the kernel log during the storm.
//!
//! This module holds what the write oracles share: the storm's events and each file's
//! layout operations. Each file counts the layout operations running on it and bumps a generation whenever one
//! starts or ends. A pinner looks at both before and after each window it cares about (the
//! registration; the device write up to its check): the window was quiet when nothing ran at
//! its start and nothing started or ended until its end. Any number of disruptors may
//! overlap; the count never hides one behind another.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use pinstorm_analysis::oracle::{Oracle, OracleKind};
use pinstorm_analysis::schema::{OracleFinding, Violation};
use pinstorm_workloads::layout::{Effect, LayoutKind};

pub mod blocked;
pub mod diverged;
pub mod foreign;
pub mod kernel_warnings;
pub mod leaked_pins;
pub mod lost_write;
pub mod placement;
pub mod unexpected;

/// The device writes and checks one 4 KiB page at a time, whatever the backing's page size.
pub const PAGE: u64 = 4096;

/// The findings of the oracles the threads feed as they go: the storm's `oracle` object,
/// whose other oracles are filled in when the cell ends.
#[derive(Default)]
pub struct Findings {
    pub oracle: Oracle,
    /// (file, page, event, oracle) already counted: a page found twice counts once.
    pub seen: HashSet<(u32, u64, u64, OracleKind)>,
}

impl Findings {
    /// Count `v` for `kind`, keeping it as an example while there are fewer than `examples`.
    pub fn add(&mut self, kind: OracleKind, examples: usize, v: Violation) {
        let f = self
            .oracle
            .finding_mut(kind)
            .unwrap_or_else(|| panic!("{kind} records no located findings"));
        f.count += 1;
        if f.examples.len() < examples {
            f.examples.push(v);
        }
    }

    /// [`Findings::add`], attributed to `cause` (the operations that ran on the page since
    /// the pin, see [`FileState::cause`]) in the finding's `by_op`.
    pub fn add_by(&mut self, kind: OracleKind, examples: usize, v: Violation, cause: String) {
        self.add(kind, examples, v);
        *self.get(kind).by_op.entry(cause).or_default() += 1;
    }

    /// The located finding of `kind`, to annotate.
    pub fn get(&mut self, kind: OracleKind) -> &mut OracleFinding {
        self.oracle
            .finding_mut(kind)
            .unwrap_or_else(|| panic!("{kind} records no located findings"))
    }
}

/// The storm-wide event counter shared by pins, device writes and layout operations, and
/// when each device write completed.
#[derive(Default)]
pub struct Events {
    next: AtomicU64,
    /// For each device write (by the event taken before it was issued), the event taken
    /// after it completed.
    write_done: Mutex<BTreeMap<u64, u64>>,
}

impl Events {
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, SeqCst) + 1
    }

    /// The device write issued at event `started` has completed.
    pub fn write_done(&self, started: u64) {
        let done = self.next();
        self.write_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(started, done);
    }

    /// Whether the device write that started at `started` completed before `event`.
    pub fn write_completed_before(&self, started: u64, event: u64) -> bool {
        self.write_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&started)
            .is_some_and(|done| *done < event)
    }
}

/// What a file's layout operations were doing at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Operations started plus operations ended, ever.
    generation: u64,
    /// Operations running now.
    in_flight: u64,
}

/// Whether no layout operation ran on the file at any time between two snapshots: none was
/// running at the first, and none started or ended until the second.
pub fn quiet(from: Snapshot, to: Snapshot) -> bool {
    from == to && from.in_flight == 0
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PageTrack {
    /// Start event of the last operation that removed this page's data.
    pub invalidated_at: u64,
    /// End event of the last operation that moved data here (collapse/insert): a canary
    /// written before it may legitimately sit here, so only later writes are judged stale.
    pub shifted_until: u64,
}

/// A layout operation in flight: only [`FileState::op_begin`] makes one, and
/// [`FileState::op_end`] takes it, so every start has exactly one end.
#[derive(Debug)]
pub struct OpStart {
    pub event: u64,
    /// Which operation, for the attribution of diverged and moved pages.
    pub kind: Option<LayoutKind>,
}

/// Operations remembered per file for attributing pages (more than run during one pin).
const TOUCHES: usize = 256;

/// An operation that ended having worked on pages `from..to` of the file or its mapping.
#[derive(Clone, Copy, Debug)]
struct Touch {
    event: u64,
    kind: Option<LayoutKind>,
    from: u64,
    to: u64,
}

/// What [`FileState::cause`] names when no operation worked on a page since the pin.
pub const NO_OPERATION: &str = "none";

/// The oracles' view of one file: its layout operations and what they did to its pages.
pub struct FileState {
    pub id: u32,
    ops: Mutex<Snapshot>,
    pages: Mutex<Vec<PageTrack>>,
    touches: Mutex<VecDeque<Touch>>,
}

impl FileState {
    pub fn new(id: u32, pages: usize) -> FileState {
        FileState {
            id,
            ops: Mutex::new(Snapshot::default()),
            pages: Mutex::new(vec![PageTrack::default(); pages]),
            touches: Mutex::new(VecDeque::new()),
        }
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.ops()
    }

    /// A layout operation starts. Busy first, then the event: an operation that runs after a
    /// clean pin then always has an event number above that pin's.
    pub fn op_begin(&self, events: &Events) -> OpStart {
        {
            let mut s = self.ops();
            s.generation += 1;
            s.in_flight += 1;
        }
        OpStart {
            event: events.next(),
            kind: None,
        }
    }

    /// The operations that worked on `page` and started after `pin_event` (a quiet pin's
    /// event: every operation that did not overlap it either ended before or started after
    /// it), by name, sorted and joined with `+`; [`NO_OPERATION`] when there were none.
    /// Diverged and moved pages are attributed to these, so expectations can say which
    /// operation leaves the pin and the mapping apart by design.
    pub fn cause(&self, pin_event: u64, page: u64) -> String {
        let names: BTreeSet<&str> = self
            .touches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|t| t.event > pin_event && (t.from..t.to).contains(&page))
            .map(|t| t.kind.map_or("unnamed", LayoutKind::name))
            .collect();
        if names.is_empty() {
            NO_OPERATION.to_string()
        } else {
            names.into_iter().collect::<Vec<_>>().join("+")
        }
    }

    /// The operation ended, having done `effect` (if anything). The page marks are made
    /// before the operation stops counting as in flight, so a pinner that sees it ended
    /// sees its marks (and the caller's log, written before this call).
    pub fn op_end(&self, op: OpStart, effect: Option<Effect>, events: &Events) {
        if let Some(effect) = effect {
            let end = events.next();
            let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
            let n = pages.len() as u64;
            let span =
                |offset: u64, len: u64| (offset / PAGE, offset.saturating_add(len).div_ceil(PAGE));
            let (from, to, shifted) = match effect {
                Effect::Invalidated { offset, len } => {
                    let (a, b) = span(offset, len);
                    (a, b, false)
                }
                Effect::Shifted { offset } => (offset / PAGE, n, true),
                Effect::Shared { .. } => (0, 0, false),
                Effect::Remapped {
                    offset,
                    len,
                    contents,
                } => {
                    let (a, b) = span(offset, len);
                    self.touched(op.event, op.kind, a, b);
                    // Only dropped or rewritten contents make an earlier canary stale.
                    if contents {
                        (a, b, false)
                    } else {
                        (0, 0, false)
                    }
                }
            };
            if !matches!(effect, Effect::Remapped { .. } | Effect::Shared { .. }) {
                self.touched(op.event, op.kind, from, to.min(n));
            }
            for p in pages
                .iter_mut()
                .take(to.min(n) as usize)
                .skip(from as usize)
            {
                // Operations on one file may overlap and end in any order: keep the latest.
                p.invalidated_at = p.invalidated_at.max(op.event);
                if shifted {
                    p.shifted_until = p.shifted_until.max(end);
                }
            }
        }
        let mut s = self.ops();
        s.generation += 1;
        s.in_flight -= 1;
    }

    fn touched(&self, event: u64, kind: Option<LayoutKind>, from: u64, to: u64) {
        let mut t = self.touches.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TOUCHES {
            t.pop_front();
        }
        t.push_back(Touch {
            event,
            kind,
            from,
            to,
        });
    }

    pub fn page(&self, page: usize) -> PageTrack {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(page)
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
