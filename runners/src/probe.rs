//! The capability probe: for every pin path x backing x map x access, take one pin on a
//! fresh region and record what the kernel answered. Only afterwards is the expectation
//! looked up, to flag the cell.

use pinstorm_analysis::expect::{judge, Cell};
use pinstorm_analysis::schema::{ProbeRow, RunResult};
use pinstorm_workloads::backing::{Access, BackingKind, MapKind, RegionError, RegionSpec};
use pinstorm_workloads::pin::{Availability, PinError, PinPath, Pinner};
use pinstorm_workloads::scenario::ProbeJob;
use pinstorm_workloads::sysctl::hugepage_counts;

use std::time::{Duration, Instant};

use crate::job::{with_memlock_hint, Job, JobContext, Progress};
use crate::signals;
use crate::watchdog::CellWatch;

impl Job for ProbeJob {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn backings(&self) -> &[BackingKind] {
        &self.backings
    }

    /// One region per cell, one cell at a time.
    fn hugepages(&self, hp_size: u64) -> u64 {
        self.size.bytes().div_ceil(hp_size)
    }

    fn cells(&self) -> u64 {
        (self.backings.len() * self.pins.len() * self.maps.len() * self.access.len()) as u64
    }

    /// Outcomes only: it starts beside the backings' set-up.
    fn measures_time(&self) -> bool {
        false
    }

    fn run(
        &self,
        ctx: &JobContext,
        progress: &Progress,
        result: &mut RunResult,
    ) -> anyhow::Result<()> {
        run(self, ctx, progress, &mut result.probe)
    }
}

/// A deterministic byte pattern from a seed (splitmix64), so a device write is
/// recognisable and a replay writes the same bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Which bytes of `seen` differ from `want`: "1024 of 4096 bytes differ, 3072..4095".
fn differing_bytes(want: &[u8], seen: &[u8]) -> String {
    let diff: Vec<usize> = (0..want.len().min(seen.len()))
        .filter(|&i| want[i] != seen[i])
        .collect();
    match (diff.first(), diff.last()) {
        (Some(a), Some(b)) => format!("{} of {} bytes differ, {a}..{b}", diff.len(), want.len()),
        _ => format!("lengths {} and {}", want.len(), seen.len()),
    }
}

/// After a successful pin: let the device write a pattern (when the path has device writes),
/// check the CPU sees it through the mapping, let the device read it back.
fn device_io(
    path: &dyn PinPath,
    pinner: &mut dyn Pinner,
    region: &pinstorm_workloads::backing::Region,
    seed: u64,
) -> String {
    let len = 4096.min(region.mapping.len());
    let pat = pattern(seed, len);
    // A path whose pins are read-only (vmsplice) has no device write: check the read only.
    let mut read_only_path = false;
    if region.spec.access == Access::Rw && !path.device_writes().is_supported() {
        read_only_path = true;
    } else if region.spec.access == Access::Rw {
        match pinner.device_write(0, &pat) {
            Ok(n) if n == len => {
                let mut seen = vec![0u8; len];
                region.mapping.read_at(0, &mut seen);
                if seen != pat {
                    // Which bytes, and does the device read its own write back? If it does,
                    // the device wrote somewhere the CPU's mapping does not show.
                    let device_sees = match pinner.device_read(0, len) {
                        Ok(b) if b == pat => "the device reads its write back",
                        Ok(b) if b == seen => "the device reads what the CPU sees",
                        Ok(_) => "the device reads back something else",
                        Err(_) => "the device read failed",
                    };
                    return format!(
                        "mismatch(write-not-visible: {}; {device_sees})",
                        differing_bytes(&pat, &seen)
                    );
                }
            }
            Ok(n) => return format!("short-write({n}/{len})"),
            Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                return e.outcome().unwrap_or_default()
            }
            Err(PinError::NotRun(_)) => read_only_path = true,
            Err(e) => return format!("error: {e}"),
        }
    }
    match pinner.device_read(0, len) {
        Ok(back) => {
            let mut cpu = vec![0u8; len];
            region.mapping.read_at(0, &mut cpu);
            if back == cpu && read_only_path {
                "ok(read)".into()
            } else if back == cpu {
                "ok".into()
            } else {
                "mismatch(read)".into()
            }
        }
        Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
            e.outcome().unwrap_or_default()
        }
        // A device that cannot do I/O here (an iWARP device without rdma_cm): say why.
        Err(PinError::NotRun(why)) => format!("notrun: {why}"),
        Err(e) => format!("error: {e}"),
    }
}

/// The pin path and backing of a row, and the device the path drives (what expectation
/// rules with a device match).
struct RowKey<'a> {
    pin: &'a str,
    backing: &'a str,
    device: Option<&'a str>,
}

#[allow(clippy::too_many_arguments)]
fn row(
    ctx: &JobContext,
    key: &RowKey,
    fs: &str,
    spec: &RegionSpec,
    outcome: String,
    reason: Option<String>,
    dax: Option<bool>,
    device_io: Option<String>,
) -> ProbeRow {
    let RowKey {
        pin,
        backing,
        device,
    } = *key;
    let cell = Cell {
        pin,
        backing,
        fs,
        map: spec.map.name(),
        access: spec.access.name(),
        dax,
        rdma_device: device,
    };
    let (verdict, rule) = judge(ctx.expectations, &cell, ctx.kernel, &outcome);
    ProbeRow {
        pin: pin.into(),
        backing: backing.into(),
        fs: fs.into(),
        map: spec.map.name().into(),
        access: spec.access.name().into(),
        size: spec.size.bytes(),
        outcome,
        reason,
        dax,
        device_io,
        expected: rule.map(|r| r.outcome.clone()),
        verdict,
        expected_because: rule.map(|r| r.why.clone()),
    }
}

/// Run the probe job; rows are appended to `out` as they are measured, so an interrupted
/// probe keeps what it saw.
fn run(
    job: &ProbeJob,
    ctx: &JobContext,
    progress: &Progress,
    out: &mut Vec<ProbeRow>,
) -> anyhow::Result<()> {
    // A cell takes milliseconds on a host and about a second at most in a TCG guest; one
    // stuck in the kernel says where, on the log (the lab's console), while it is stuck.
    let watch = CellWatch::start(CELL_REPORT_AFTER, |r| eprintln!("pinstorm: probe {r}"));
    // The backings as their set-up ends (in a lab guest the DAX filesystems may be ready
    // before the loop devices' ones); the rows go back to the scenario's order at the end.
    let mut left = job.backings.clone();
    while let Some(kind) = ctx.backings.next_ready(&left) {
        left.retain(|&k| k != kind);
        for &pin in &job.pins {
            let path: Box<dyn PinPath> = pin.path(ctx.pins);
            let path_avail = path.availability();
            let device = path.device();
            let key = RowKey {
                pin: pin.name(),
                backing: kind.name(),
                device: device.as_deref(),
            };
            for &map in &job.maps {
                for &access in &job.access {
                    signals::check()?;
                    let spec = RegionSpec {
                        size: job.size,
                        map,
                        access,
                    };
                    let label = format!("{pin} {kind} {} {}", map.name(), access.name());
                    progress.step(&format!("probe {label}"));
                    watch.enter(label);
                    // A cell of this pin path and backing, and the same with `notrun`.
                    let cell = |fs: &str,
                                spec: &RegionSpec,
                                outcome: String,
                                reason: Option<String>,
                                dax,
                                dio| {
                        row(ctx, &key, fs, spec, outcome, reason, dax, dio)
                    };
                    let notrun = |fs: &str, spec: &RegionSpec, reason: String, dax| {
                        cell(fs, spec, "notrun".into(), Some(reason), dax, None)
                    };
                    let backing = match ctx.backings.get(kind) {
                        Ok(b) => b,
                        Err(reason) => {
                            out.push(notrun("", &spec, reason.to_string(), None));
                            continue;
                        }
                    };
                    let fs = backing.info().fs.clone();
                    if let Availability::NotRun(r) = &path_avail {
                        out.push(notrun(&fs, &spec, r.clone(), None));
                        continue;
                    }
                    if kind.uses_hugetlb() {
                        huge_pages_back(&spec);
                    }
                    let region = match backing.region(&spec) {
                        Ok(r) => r,
                        Err(RegionError::Kernel { op, errno }) => {
                            let mut why = format!("making the region failed: {op}: {errno}");
                            if kind.uses_hugetlb() {
                                let (total, free, _) = hugepage_counts();
                                why.push_str(&format!(
                                    " (not enough free huge pages? {free} of {total} free)"
                                ));
                            }
                            out.push(notrun(&fs, &spec, why, None));
                            continue;
                        }
                        Err(RegionError::Tool(e)) => {
                            return Err(e.context(format!("making a {kind} region")))
                        }
                    };
                    let spec = region.spec;
                    let mut pinner = match path.pinner() {
                        Ok(p) => p,
                        Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                            let why = format!("setting up the pin path: {e}");
                            out.push(notrun(&fs, &spec, why, region.dax));
                            continue;
                        }
                        Err(PinError::NotRun(r)) => {
                            out.push(notrun(&fs, &spec, r, region.dax));
                            continue;
                        }
                        Err(PinError::Tool(e)) => return Err(e),
                    };
                    let r = match pinner.register(region.pin_target()) {
                        Ok(()) => {
                            let dio = job
                                .device_io
                                .then(|| device_io(&*path, pinner.as_mut(), &region, ctx.seed));
                            pinner.unregister().map_err(|e| {
                                anyhow::anyhow!("unregister after a successful probe: {e}")
                            })?;
                            cell(&fs, &spec, "ok".into(), pinner.note(), region.dax, dio)
                        }
                        Err(PinError::Kernel { op, errno }) => {
                            let reason = with_memlock_hint(
                                format!("{op}: {errno}"),
                                &errno.name(),
                                ctx.memlock_hint.as_deref(),
                            );
                            cell(&fs, &spec, errno.name(), Some(reason), region.dax, None)
                        }
                        Err(PinError::Device { op, status }) => cell(
                            &fs,
                            &spec,
                            status.clone(),
                            Some(format!("{op}: {status}")),
                            region.dax,
                            None,
                        ),
                        Err(PinError::NotRun(r)) => notrun(&fs, &spec, r, region.dax),
                        Err(PinError::Tool(e)) => return Err(e),
                    };
                    out.push(r);
                    watch.leave();
                }
            }
        }
    }
    // The scenario's order (a stable sort: within a backing, the order measured).
    out.sort_by_key(|r| {
        job.backings
            .iter()
            .position(|k| k.name() == r.backing)
            .unwrap_or(usize::MAX)
    });
    // Interrupted while waiting for a backing: say so, as at any other step.
    signals::check()?;
    Ok(())
}

/// Wait, at most [`HUGE_PAGES_BACK`], until the pool has the huge pages a region of `spec`
/// takes (twice its pages for a private mapping: its copy-on-write copies). The cell before
/// gave its pages back, but the kernel may free a huge page later than the unmap (from a
/// workqueue, when it must first restore the page's vmemmap); in a busy 6.12 guest a cell
/// found the pool short once and was notrun with mmap ENOMEM.
fn huge_pages_back(spec: &RegionSpec) {
    let (_, _, hp) = hugepage_counts();
    if hp == 0 {
        return;
    }
    let pages = spec.size.bytes().div_ceil(hp) * if spec.map == MapKind::Private { 2 } else { 1 };
    let start = Instant::now();
    while hugepage_counts().1 < pages && start.elapsed() < HUGE_PAGES_BACK {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a hugetlb cell waits for the pool to have its pages back.
const HUGE_PAGES_BACK: Duration = Duration::from_secs(2);

/// How long a probe cell runs before [`CellWatch`] reports what it waits on.
const CELL_REPORT_AFTER: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn differing_bytes_names_the_count_and_the_span() {
        let want = vec![1u8; 4096];
        let mut seen = want.clone();
        seen[1024..2048].fill(0);
        assert_eq!(
            super::differing_bytes(&want, &seen),
            "1024 of 4096 bytes differ, 1024..2047"
        );
    }

    #[test]
    fn patterns_are_deterministic_per_seed() {
        assert_eq!(pattern(7, 100), pattern(7, 100));
        assert_ne!(pattern(7, 100), pattern(8, 100));
        assert_eq!(pattern(7, 13).len(), 13);
    }
}
