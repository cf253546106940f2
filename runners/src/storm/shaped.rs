//! A device write of any shape through a held pin, checked byte by byte: the window around
//! its target is read before and after (the file with `pread`, anonymous memory through the
//! mapping, a private mapping through the device), and [`placement::classify`] says where
//! every byte went. Page-shaped writes keep the canary path of `pinner.rs`, whose pages the
//! end scan can decode.

use std::os::unix::fs::FileExt;

use pinstorm_analysis::oracle::OracleKind;
use pinstorm_analysis::schema::Violation;
use pinstorm_workloads::pin::{PinError, Pinner};
use pinstorm_workloads::shape::{pattern, PAGE};

use super::oracle::lost_write::Mapping;
use super::oracle::placement::{self, Placement, Window};
use super::oracle::{quiet, Snapshot};
use super::state::{PinnerOut, StormState, TrackedFile};
use crate::watchdog::Slot;

/// The most runs of a write's byte map kept in an example's history.
const MAP_LINES: usize = 24;

/// The pin the write goes through: the file's layout snapshots around its registration, its
/// event and when it was taken.
pub struct Pin {
    pub around: (Snapshot, Snapshot),
    pub event: u64,
    pub at_ms: f64,
}

/// Read `len` bytes at `start` the way this mapping's contents are checked; `None` if they
/// cannot be read (a file cut short by a layout operation, a failed device read).
fn read_window(
    f: &TrackedFile,
    mapping: Mapping,
    pinner: &mut dyn Pinner,
    start: u64,
    len: usize,
) -> Option<Vec<u8>> {
    match (&f.region.file, mapping) {
        (None, _) => {
            let mut buf = vec![0u8; len];
            f.region.mapping.read_at(start as usize, &mut buf);
            Some(buf)
        }
        // A private mapping's writes never reach the file by design: ask the device.
        (Some(_), Mapping::PrivateFile) => pinner
            .device_read(start as usize, len)
            .ok()
            .filter(|b| b.len() == len),
        // Never touch a file mapping with the CPU (a truncated page would SIGBUS).
        (Some(rf), _) => {
            let mut buf = vec![0u8; len];
            rf.file().read_exact_at(&mut buf, start).ok().map(|_| buf)
        }
    }
}

/// One write of `len` bytes at `off` through `pinner` (drawn as `shape`, or `write-at`),
/// judged and counted in `out`.
#[allow(clippy::too_many_arguments)]
pub fn write(
    storm: &StormState,
    f: &TrackedFile,
    pinner: &mut dyn Pinner,
    slot: &Slot,
    out: &mut PinnerOut,
    shape: &str,
    (off, len): (u64, u64),
    pin: &Pin,
) {
    let range = f.region.mapping.len() as u64;
    // The pages around the target and one more on each side: a write shifted by up to a
    // page, or spilling past its end, lands inside.
    let start = (off / PAGE).saturating_sub(1) * PAGE;
    let end = ((off + len).div_ceil(PAGE) + 1)
        .saturating_mul(PAGE)
        .min(range);
    let wlen = (end - start) as usize;
    let lo = (off - start) as usize;
    let s0 = f.state.snapshot();
    let Some(before) = read_window(f, storm.mapping, pinner, start, wlen) else {
        // Not written at all, so neither verified nor ambiguous: every device write stays
        // verified, ambiguous or a finding.
        out.totals.skipped_writes += 1;
        return;
    };
    let ev = storm.events.next();
    let data = pattern(
        storm.run_tag,
        f.state.id,
        ev,
        off,
        &before[lo..lo + len as usize],
    );
    storm.wd.begin(slot, "device-write");
    let w = pinner.device_write(off as usize, &data);
    storm.wd.end(slot);
    storm.events.write_done(ev);
    let wrote_ms = storm.wd.elapsed_ms();
    match w {
        Ok(_) => {}
        Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
            let name = e.outcome().unwrap_or_default();
            *out.totals.device_write_errors.entry(name).or_default() += 1;
            return;
        }
        Err(PinError::NotRun(m)) => {
            out.write_notrun = Some(m);
            return;
        }
        Err(PinError::Tool(e)) => {
            out.error = Some(anyhow::anyhow!("device write {off}+{len}: {e:#}"));
            return;
        }
    }
    out.totals.device_writes += 1;
    *out.totals
        .writes_by_shape
        .entry(shape.to_string())
        .or_default() += 1;
    out.timeline.at(wrote_ms).device_writes += 1;
    let after = read_window(f, storm.mapping, pinner, start, wlen);
    let s1 = f.state.snapshot();
    // The device's own read-back of the target, through the pin.
    if storm.mapping != Mapping::PrivateFile {
        let back = pinner.device_read(off as usize, len as usize).ok();
        if matches!(&back, Some(b) if *b != data) {
            out.totals.readback_mismatches += 1;
        }
    }
    // Anonymous memory is read through the mapping, which a memory operation since the pin
    // may have pointed at other pages than the pin's: judged only when none ran (the
    // diverged oracle judges the mapping).
    let since_pin = storm.mapping != Mapping::Anon || quiet(pin.around.1, s1);
    let judged = after.filter(|_| quiet(pin.around.0, pin.around.1) && quiet(s0, s1) && since_pin);
    let Some(after) = judged else {
        out.totals.ambiguous += 1;
        return;
    };
    let window = Window {
        start,
        before: &before,
        after: &after,
    };
    let target = off..off + len;
    let (kind, what) = match placement::classify(target.clone(), &data, &window) {
        Placement::Exact => {
            out.totals.verified += 1;
            return;
        }
        Placement::Lost => (
            OracleKind::LostWrite,
            "none of its bytes are where it was sent, nor anywhere near".to_string(),
        ),
        Placement::Spill { changed } => (
            OracleKind::Spill,
            format!(
                "it arrived, and also changed bytes {} outside its range",
                placement::show(&changed)
            ),
        ),
        Placement::Misplaced { shift, found } => (
            OracleKind::MisplacedWrite,
            format!(
                "its data is at {}..{} instead ({shift:+} bytes)",
                found.start, found.end
            ),
        ),
        Placement::Repeated { at, from } => (
            OracleKind::MisplacedWrite,
            format!(
                "bytes {}..{} hold its data of offset {from} again (a repeated chunk)",
                at.start, at.end
            ),
        ),
        Placement::Torn { written, missing } => (
            OracleKind::TornWrite,
            format!(
                "bytes {} arrived, bytes {} did not",
                placement::show(&written),
                placement::show(&missing)
            ),
        ),
    };
    let mut history = vec![format!(
        "{:.3} ms: pinned the whole file (event {})",
        pin.at_ms, pin.event
    )];
    history.extend(f.history(pin.event));
    history.push(format!(
        "{wrote_ms:.3} ms: device wrote {len} bytes ({shape}) at offset {off} (event {ev})"
    ));
    // Where every byte went, run by run: what a driver developer needs to see the pattern
    // (an in-page offset dropped, packets overwriting each other, a chunk cut short).
    history.push(format!("then the file at {start}..{end} held, run by run:"));
    let map = placement::map(target.clone(), &data, &window);
    history.extend(
        placement::describe(&map, &target, MAP_LINES)
            .into_iter()
            .map(|l| format!("  {l}")),
    );
    storm.findings().add(
        kind,
        storm.examples,
        Violation {
            file: f.name.clone(),
            offset: off,
            len,
            what: format!("{shape} write {off}+{len}: {what}"),
            at_ms: wrote_ms,
            history,
        },
    );
}

#[cfg(test)]
#[path = "shaped_tests.rs"]
mod tests;
