//! What a pinner checks besides where its device write went: that the pin and the
//! process's mapping still show the same pages (the diverged oracle, both ways) and that
//! the pinned pages kept their frames (the moved oracle). Fed from `pinner.rs`; judged in
//! `oracle/diverged.rs`.
//!
//! The CPU reads and writes the mapping here only where the cell allows it
//! (`StormState::cpu_view`: no operation of the storm cuts a file short, so no page of the
//! mapping can SIGBUS).

use std::fs::File;

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_analysis::schema::Violation;
use pinstorm_workloads::canary::{self, PageContent};
use pinstorm_workloads::pin::Pinner;

use super::frames;
use super::oracle::diverged::{self, Direction, View, ViewFacts};
use super::oracle::{Snapshot, PAGE};
use super::state::{PinnerOut, StormState, TrackedFile};
use crate::watchdog::Slot;

/// The pin the checks are about.
pub struct Pin {
    pub around: (Snapshot, Snapshot),
    pub event: u64,
    pub at_ms: f64,
}

impl Pin {
    fn quiet(&self) -> bool {
        super::oracle::quiet(self.around.0, self.around.1)
    }
}

/// What a page holds, in words, for a violation.
fn describe(content: &[u8]) -> String {
    match canary::decode(content) {
        PageContent::Zero => "zeros".into(),
        PageContent::Fill(b) => format!("a fill of {b:#04x} bytes"),
        PageContent::Canary(c) => format!("a canary of file {} event {}", c.file_id, c.event),
        PageContent::Torn => "a torn page".into(),
        PageContent::Other => "other data".into(),
    }
}

/// What the CPU writes for the CPU-to-device check: records that name the run, the file,
/// the offset and the event, and never decode as a canary or a fill.
fn cpu_pattern(run_tag: u32, file: u32, off: u64, event: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(32);
    r.extend_from_slice(b"CPUWRITE");
    r.extend_from_slice(&run_tag.to_le_bytes());
    r.extend_from_slice(&file.to_le_bytes());
    r.extend_from_slice(&off.to_le_bytes());
    r.extend_from_slice(&event.to_le_bytes());
    r.repeat(PAGE as usize / 32)
}

fn report(
    storm: &StormState,
    f: &TrackedFile,
    pin: &Pin,
    (dir, off, seen): (Direction, u64, &[u8]),
    wrote_ms: f64,
) {
    let cause = f.state.cause(pin.event, off / PAGE);
    let mut history = vec![format!(
        "{:.3} ms: pinned the whole range (event {})",
        pin.at_ms, pin.event
    )];
    history.extend(f.history(pin.event));
    let who = match dir {
        Direction::DeviceToCpu => "device",
        Direction::CpuToDevice => "process",
    };
    history.push(format!(
        "{wrote_ms:.3} ms: the {who} wrote the page at offset {off}; operations on it since the pin: {cause}"
    ));
    storm.findings().add_by(
        OracleKind::Diverged,
        storm.examples,
        Violation {
            file: f.name.clone(),
            offset: off,
            len: PAGE,
            what: dir.describe(&describe(seen)),
            at_ms: wrote_ms,
            history,
        },
        cause,
    );
}

/// Device to CPU: the device wrote `data` at `off` and read back `back`; the CPU read
/// `view` through the mapping, all within `window`.
#[allow(clippy::too_many_arguments)]
pub fn device_to_cpu(
    storm: &StormState,
    f: &TrackedFile,
    out: &mut PinnerOut,
    pin: &Pin,
    off: u64,
    (data, back, view): (&[u8], Option<&[u8]>, Option<&[u8]>),
    window: (Snapshot, Snapshot),
    wrote_ms: f64,
) {
    let facts = ViewFacts {
        pin: pin.around,
        window,
        wrote: data,
        landed: back == Some(data),
        seen: view,
    };
    match diverged::judge(&facts) {
        View::Ambiguous => {}
        View::Same => out.view_checks += 1,
        View::Diverged => {
            out.view_checks += 1;
            let seen = view.expect("a view was read");
            report(storm, f, pin, (Direction::DeviceToCpu, off, seen), wrote_ms);
        }
    }
}

/// CPU to device: the CPU writes a page at `off` through the mapping, the device reads it
/// through the pin.
pub fn cpu_to_device(
    storm: &StormState,
    f: &TrackedFile,
    pinner: &mut dyn Pinner,
    slot: &Slot,
    out: &mut PinnerOut,
    pin: &Pin,
    off: u64,
) {
    let ev = storm.events.next();
    let data = cpu_pattern(storm.run_tag, f.state.id, off, ev);
    let s0 = f.state.snapshot();
    f.region.mapping.write_at(off as usize, &data);
    let wrote_ms = storm.wd.elapsed_ms();
    storm.wd.begin(slot, "device-read");
    let back = pinner.device_read(off as usize, PAGE as usize).ok();
    storm.wd.end(slot);
    let facts = ViewFacts {
        pin: pin.around,
        window: (s0, f.state.snapshot()),
        wrote: &data,
        landed: true,
        seen: back.as_deref(),
    };
    match diverged::judge(&facts) {
        View::Ambiguous => {}
        View::Same => out.view_checks += 1,
        View::Diverged => {
            out.view_checks += 1;
            let seen = back.as_deref().expect("the device read");
            report(storm, f, pin, (Direction::CpuToDevice, off, seen), wrote_ms);
        }
    }
}

/// The frames of the pinned range right after a quiet registration, if the cell judges
/// frames.
pub fn frames_after_pin(
    storm: &StormState,
    f: &TrackedFile,
    pagemap: Option<&File>,
    pin: &Pin,
) -> Option<Vec<Option<u64>>> {
    let pagemap = pagemap.filter(|_| pin.quiet() && storm.frames_notrun.is_none())?;
    frames::read(pagemap, f.region.mapping.addr(), f.region.mapping.len()).ok()
}

/// Before the unpin: the frames again, each changed one a moved page (judged only when no
/// operation is running on the file while they are read).
pub fn moved_before_unpin(
    storm: &StormState,
    f: &TrackedFile,
    pagemap: Option<&File>,
    out: &mut PinnerOut,
    pin: &Pin,
    before: &[Option<u64>],
) {
    let Some(pagemap) = pagemap else { return };
    let s0 = f.state.snapshot();
    let Ok(after) = frames::read(pagemap, f.region.mapping.addr(), f.region.mapping.len()) else {
        return;
    };
    if !super::oracle::quiet(s0, f.state.snapshot()) {
        return;
    }
    out.frame_checks += 1;
    let at_ms = storm.wd.elapsed_ms();
    for (page, was, is) in diverged::moved(before, &after) {
        let off = page as u64 * PAGE;
        let cause = f.state.cause(pin.event, page as u64);
        let mut history = vec![format!(
            "{:.3} ms: pinned the whole range (event {}); page {page} at frame {was:#x}",
            pin.at_ms, pin.event
        )];
        history.extend(f.history(pin.event));
        history.push(format!(
            "{at_ms:.3} ms: page {page} at frame {is:#x} with the pin still held; operations on it since the pin: {cause}"
        ));
        storm.findings().add_by(
            OracleKind::Moved,
            storm.examples,
            Violation {
                file: f.name.clone(),
                offset: off,
                len: PAGE,
                what: format!(
                    "a pinned page's mapping moved from frame {was:#x} to {is:#x} while the pin was held: the mapping no longer maps the pinned page"
                ),
                at_ms,
                history,
            },
            cause,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_pattern_is_neither_a_canary_nor_a_fill() {
        let p = cpu_pattern(7, 1, 4096, 99);
        assert_eq!(p.len(), PAGE as usize);
        assert_eq!(canary::decode(&p), PageContent::Other);
        assert_ne!(p, cpu_pattern(7, 1, 4096, 100));
    }
}
