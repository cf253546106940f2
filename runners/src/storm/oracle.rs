//! The storm's write oracles, apart from any kernel object, so a planted interleaving can be
//! replayed against them (see the tests).
//!
//! Each file counts the layout operations running on it and bumps a generation whenever one
//! starts or ends. A pinner looks at both before and after each window it cares about (the
//! registration; the device write up to its check): the window was quiet when nothing ran at
//! its start and nothing started or ended until its end. Any number of disruptors may
//! overlap; the count never hides one behind another.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use pinstorm_analysis::schema::LeakedPins;
use pinstorm_workloads::canary::{self, PageContent};
use pinstorm_workloads::layout::Effect;

/// The device writes and checks one 4 KiB page at a time, whatever the backing's page size.
pub const PAGE: u64 = 4096;

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
}

/// The oracles' view of one file: its layout operations and what they did to its pages.
pub struct FileState {
    pub id: u32,
    ops: Mutex<Snapshot>,
    pages: Mutex<Vec<PageTrack>>,
}

impl FileState {
    pub fn new(id: u32, pages: usize) -> FileState {
        FileState {
            id,
            ops: Mutex::new(Snapshot::default()),
            pages: Mutex::new(vec![PageTrack::default(); pages]),
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
            let (from, to, shifted) = match effect {
                Effect::Invalidated { offset, len } => (
                    offset / PAGE,
                    offset.saturating_add(len).div_ceil(PAGE),
                    false,
                ),
                Effect::Shifted { offset } => (offset / PAGE, n, true),
                Effect::Shared { .. } => (0, 0, false),
            };
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

    pub fn page(&self, page: usize) -> PageTrack {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(page)
            .copied()
            .unwrap_or_default()
    }
}

/// How the pinned memory relates to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Anonymous memory: no file, never truncated; the CPU reads it back.
    Anon,
    /// A shared mapping of a file: the device's writes belong in the file.
    SharedFile,
    /// A private mapping of a file: the device's writes land in private copies.
    PrivateFile,
}

/// Everything one device write's verdict depends on.
pub struct WriteFacts<'a> {
    pub mapping: Mapping,
    /// Before and after the registration of the pin the write went through.
    pub pin: (Snapshot, Snapshot),
    /// Before the device write was issued, and after the file (or memory) was read back.
    pub write: (Snapshot, Snapshot),
    /// After the device read the page back through the pin.
    pub readback_done: Snapshot,
    /// What the device wrote.
    pub data: &'a [u8],
    /// What the file (or the anonymous memory) held afterwards; `None` if it could not be
    /// read.
    pub file: Option<&'a [u8]>,
    /// What the device read back through the pin; `None` if the read failed.
    pub readback: Option<&'a [u8]>,
}

/// Where the evidence of a lost write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The file (or memory) does not hold the data.
    File,
    /// The device did not read back what it wrote.
    ReadBack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    /// A layout operation overlapped the pin or the check: not judged.
    Ambiguous,
    Lost(Evidence),
}

/// Where did the device's write go?
///
/// - Shared mapping: the write belongs in the file. If the file does not hold it, the write
///   is lost when the pin was taken while the range was part of the file (no operation
///   overlapped the registration) and no operation overlapped the window from the write to
///   the read that checked it; otherwise ambiguous.
/// - Private mapping: the write lands in the private copy the pin holds and never reaches the
///   file by design; the device's own read-back checks it. A mismatch is lost unless an
///   operation overlapped the window from the write to the read-back (an ODP device mirrors
///   the page tables, which an operation may change).
/// - Anonymous memory has no file: the memory must hold the write.
pub fn judge(w: &WriteFacts) -> Verdict {
    match w.mapping {
        Mapping::PrivateFile => match w.readback {
            Some(back) if back == w.data => Verdict::Verified,
            Some(_) if quiet(w.write.0, w.readback_done) => Verdict::Lost(Evidence::ReadBack),
            _ => Verdict::Ambiguous,
        },
        Mapping::Anon => match w.file {
            Some(mem) if mem == w.data => Verdict::Verified,
            Some(_) => Verdict::Lost(Evidence::File),
            None => Verdict::Ambiguous,
        },
        Mapping::SharedFile => match w.file {
            Some(file) if file == w.data => Verdict::Verified,
            Some(_) if quiet(w.pin.0, w.pin.1) && quiet(w.write.0, w.write.1) => {
                Verdict::Lost(Evidence::File)
            }
            _ => Verdict::Ambiguous,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignKind {
    Stale,
    Cross,
}

/// A page that holds what it should not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub kind: ForeignKind,
    /// The event of the write whose canary the page holds (to count each finding once).
    pub event: u64,
    pub what: String,
}

/// Judge what page `page_off` of file `f` holds instead of what it should: stale or
/// cross-file, or nothing to report.
pub fn classify_foreign(
    run_tag: u32,
    f: &FileState,
    events: &Events,
    page_off: u64,
    content: &[u8],
) -> Option<Foreign> {
    let PageContent::Canary(c) = canary::decode(content) else {
        return None;
    };
    let track = f.page((page_off / PAGE) as usize);
    if c.run_tag != run_tag {
        Some(Foreign {
            kind: ForeignKind::Stale,
            event: c.event,
            what: format!(
                "holds a canary of another run (tag {:#x}, file {}, offset {})",
                c.run_tag, c.file_id, c.offset
            ),
        })
    } else if c.file_id != f.id {
        Some(Foreign {
            kind: ForeignKind::Cross,
            event: c.event,
            what: format!(
                "holds data the device wrote for file {} at offset {} (event {})",
                c.file_id, c.offset, c.event
            ),
        })
    } else if c.offset == page_off
        && c.event > track.shifted_until
        && events.write_completed_before(c.event, track.invalidated_at)
    {
        Some(Foreign {
            kind: ForeignKind::Stale,
            event: c.event,
            what: format!(
                "still holds the device's write of event {} although an operation at event {} removed that data",
                c.event, track.invalidated_at
            ),
        })
    } else {
        None
    }
}

/// `nr_foll_pin_acquired` and `nr_foll_pin_released` read at the start and the end of a
/// window in which this storm pinned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleWindow {
    pub start: (u64, u64),
    pub end: (u64, u64),
    pub ms: u64,
}

impl IdleWindow {
    /// Both counters only grow, so any pin taken or released anywhere meanwhile moves them.
    pub fn moved(&self) -> bool {
        self.start != self.end
    }

    /// Pages pinned system-wide at the end of the window.
    pub fn outstanding(&self) -> i64 {
        self.end.0 as i64 - self.end.1 as i64
    }
}

/// What the leaked-pins oracle read around one storm cell (pages outstanding are
/// `acquired - released`, system-wide).
#[derive(Clone, Copy, Debug)]
pub struct PinCounts {
    /// Just before the storm's threads started.
    pub before: IdleWindow,
    /// Outstanding after every pin handle was released (waiting up to the bound).
    pub released: i64,
    pub settle_ms: u64,
    /// Outstanding after the pinned files were unmapped and closed.
    pub torn_down: i64,
    /// Just after the teardown.
    pub after: IdleWindow,
    /// Whether the per-CPU deltas were folded before each reading (root); without that, the
    /// kernel folding them lazily moves the counters too.
    pub folded: bool,
}

/// Leaked pins, or why they cannot be judged: the counters are system-wide, so pins taken or
/// released by anything else on the machine around the storm cannot be told from a leak.
pub fn judge_leak(c: &PinCounts) -> LeakedPins {
    let base = c.before.outstanding();
    let held = (c.released - base).max(0) as u64;
    let left = (c.torn_down - base).max(0) as u64;
    let mut l = LeakedPins {
        settle_ms: c.settle_ms,
        ..LeakedPins::default()
    };
    let moved = [
        ("before the storm", &c.before),
        ("after the teardown", &c.after),
    ]
    .into_iter()
    .find(|(_, w)| w.moved());
    match moved {
        Some((when, w)) => {
            l.notrun = Some(format!(
                "not judged: FOLL_PIN pins were taken or released elsewhere on this machine in the {} ms idle window {when} (acquired +{}, released +{}) while this storm pinned nothing, so other pinning cannot be told from a leak ({left} page(s) above the baseline after the teardown){}",
                w.ms,
                w.end.0.wrapping_sub(w.start.0),
                w.end.1.wrapping_sub(w.start.1),
                if c.folded {
                    ""
                } else {
                    "; without root the kernel folds its per-CPU counts lazily, which moves them too: run as root"
                }
            ));
        }
        None => {
            l.count = left;
            l.held_until_teardown = held - left.min(held);
        }
    }
    l
}

#[cfg(test)]
mod tests;
