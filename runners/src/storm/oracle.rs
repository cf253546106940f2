//! The storm's write oracles, apart from any kernel object, so a planted interleaving can be
//! replayed against them (see the tests).
//!
//! AS-IS EXTRACTION of the logic of `check_write`, the per-file sequence number and the page
//! marks, unchanged, so the tests below can be run against it first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

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
pub type Snapshot = u64;

/// Whether no layout operation ran on the file at any time between two snapshots.
pub fn quiet(from: Snapshot, to: Snapshot) -> bool {
    from == to && from % 2 == 0
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PageTrack {
    /// Start event of the last operation that removed this page's data.
    pub invalidated_at: u64,
    /// Data here may have moved (collapse/insert): no stale check for this page.
    pub shifted: bool,
}

/// A layout operation in flight.
#[derive(Debug)]
pub struct OpStart {
    pub event: u64,
}

/// The oracles' view of one file: its layout operations and what they did to its pages.
pub struct FileState {
    pub id: u32,
    /// Odd while a layout operation on this file is in flight.
    seq: AtomicU64,
    pages: Mutex<Vec<PageTrack>>,
}

impl FileState {
    pub fn new(id: u32, pages: usize) -> FileState {
        FileState {
            id,
            seq: AtomicU64::new(0),
            pages: Mutex::new(vec![PageTrack::default(); pages]),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.seq.load(SeqCst)
    }

    /// A layout operation starts. Busy first, then the event: an operation that runs after a
    /// clean pin then always has an event number above that pin's.
    pub fn op_begin(&self, events: &Events) -> OpStart {
        self.seq.fetch_add(1, SeqCst);
        OpStart {
            event: events.next(),
        }
    }

    /// The operation ended, having done `effect` (if anything). Only now may a pinner judge
    /// writes again: the page marks (and the caller's log) are complete.
    pub fn op_end(&self, op: OpStart, effect: Option<Effect>, _events: &Events) {
        if let Some(effect) = effect {
            let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
            let n = pages.len();
            let (from, to, shifted) = match effect {
                Effect::Invalidated { offset, len } => {
                    (offset / PAGE, (offset + len).div_ceil(PAGE), false)
                }
                Effect::Shifted { offset } => (offset / PAGE, n as u64, true),
                Effect::Shared { .. } => (0, 0, false),
            };
            for p in pages
                .iter_mut()
                .take(to.min(n as u64) as usize)
                .skip(from as usize)
            {
                p.invalidated_at = op.event;
                p.shifted |= shifted;
            }
        }
        self.seq.fetch_add(1, SeqCst);
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

/// Where did the device's write go? See the storm module's documentation.
pub fn judge(w: &WriteFacts) -> Verdict {
    if w.mapping == Mapping::PrivateFile {
        return Verdict::Verified;
    }
    if w.file == Some(w.data) {
        return Verdict::Verified;
    }
    if w.mapping == Mapping::SharedFile
        && (!quiet(w.pin.0, w.pin.1) || !quiet(w.write.0, w.write.1) || w.file.is_none())
    {
        return Verdict::Ambiguous;
    }
    Verdict::Lost(Evidence::File)
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
        && !track.shifted
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

#[cfg(test)]
mod tests;
