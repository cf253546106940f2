//! One storm cell (pin path x backing x map): make the files, run the pinners and
//! disruptors for the job's duration, collect them with a bound, then the end scan, the
//! kernel log, the leaked-pins check and the result.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use pinstorm_analysis::expect::Cell;
use pinstorm_analysis::oracle::{Oracle, OracleKind};
use pinstorm_analysis::schema::{LeakedPins, StormResult};
use pinstorm_workloads::backing::{Access, Backing, BackingKind, MapKind, RegionError, RegionSpec};
use pinstorm_workloads::layout::{LayoutKind, Partners};
use pinstorm_workloads::pin::{Availability, PinKind, PinPath};
use pinstorm_workloads::scenario::StormJob;
use pinstorm_workloads::units::Size;

use super::disruptor::{disruptor_thread, DisruptorOut};
use super::oracle::lost_write::Mapping;
use super::oracle::{self, Events, FileState, Findings, PAGE};
use super::pinner::{pinner_thread, PinnerOut};
use super::report::{self, notrun};
use super::scan::end_scan;
use super::state::{thread_seed, StormState, TrackedFile};
use crate::job::JobContext;
use crate::signals;
use crate::watchdog::Watchdog;

enum ThreadOut {
    Pinner(Box<PinnerOut>),
    Disruptor(usize, DisruptorOut),
}

/// Whether any of the job's operations works without a file (on anonymous memory too).
pub fn any_op_without_file(job: &StormJob) -> bool {
    job.ops.iter().any(|k| !k.op().needs_file())
}

/// Why the CPU does not read and write the pinned mappings (the diverged oracle's two
/// checks) in this cell, or `None` when it does: only storms with memory-management
/// operations, which change what the process sees, check the CPU's view, and only where no
/// operation of the job cuts a file short (a cut page of a mapping would SIGBUS) or none
/// runs (their control cells). Layout storms leave the mapping to the device as before: a
/// CPU write into a pinned page-cache page is a hazard of its own (dirtying under a pin),
/// not what they measure.
fn no_cpu_view(job: &StormJob, control: bool) -> Option<String> {
    if !any_op_without_file(job) {
        return Some(
            "no memory-management operation in the storm: layout storms leave the mapping to the device and never check the CPU's view"
                .into(),
        );
    }
    if control {
        return None;
    }
    if job.ops.iter().any(|k| k.op().cuts_file()) {
        return Some("the storm's operations cut files short (truncate, collapse-range): the CPU never touches the mapping, where a cut page would SIGBUS".into());
    }
    job.ops.iter().any(|k| k.op().poisons()).then(|| {
        "the storm's operations poison pages (hwpoison): the CPU never touches the mapping, where a poisoned page would SIGBUS"
            .into()
    })
}

/// Why the moved oracle cannot judge frames in this process, if it cannot: a reading of a
/// page of this process's own memory shows its frame only with CAP_SYS_ADMIN.
fn frames_notrun(files: &[TrackedFile]) -> Option<String> {
    let f = files.first()?;
    let pagemap = match super::frames::open() {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    match super::frames::read(&pagemap, f.region.mapping.addr(), f.region.mapping.len()) {
        Ok(frames) => super::frames::hidden(&frames),
        Err(e) => Some(e),
    }
}

/// One file per pinner, mapped as asked, with the partners the job's operations declared;
/// `Ok(Err(why))` when the backing cannot make one.
fn make_files(
    job: &StormJob,
    backing: &dyn Backing,
    map: MapKind,
    size: u64,
) -> Result<Result<Vec<TrackedFile>, String>> {
    let fs = &backing.info().fs;
    let mut files = Vec::new();
    for i in 0..job.pinners.get() {
        let spec = RegionSpec {
            size: Size(size),
            map,
            access: Access::Rw,
        };
        let region = match backing.region(&spec) {
            Ok(r) => r,
            Err(RegionError::Kernel { op, errno }) => {
                return Ok(Err(format!("making region {i} failed: {op}: {errno}")))
            }
            Err(RegionError::Tool(e)) => return Err(e),
        };
        let partners = match &region.file {
            Some(file) => Partners::prepare(file, fs, i, size, &job.ops),
            None => Partners::default(),
        };
        let name = match region.file.as_ref().and_then(|f| f.path()) {
            Some(p) => p.display().to_string(),
            None if region.file.is_some() => format!("memfd:{i}"),
            None => format!("anon:{i}"),
        };
        files.push(TrackedFile {
            state: FileState::new(i as u32 + 1, region.mapping.len() / PAGE as usize),
            name,
            log: Mutex::new(VecDeque::new()),
            region,
            partners,
        });
    }
    Ok(Ok(files))
}

/// The command lines that reproduce each oracle's first example: the cell with its seed,
/// then that write alone with no layout operation.
fn reproducers(
    findings: &mut Findings,
    ctx: &JobContext,
    path: &dyn PinPath,
    (pin, kind, map): (PinKind, BackingKind, MapKind),
) {
    let mut cell: Vec<String> = match ctx.reproduce_as {
        [] => vec!["pinstorm".into(), "run".into()],
        lab => lab.to_vec(),
    };
    cell.extend([
        ctx.scenario.to_string(),
        "--pin".into(),
        pin.name().into(),
        "--backing".into(),
        kind.name().into(),
        "--map".into(),
        map.name().into(),
    ]);
    cell.extend(path.run_flags());
    let line = |extra: &[String]| {
        cell.iter()
            .chain(extra)
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for &k in OracleKind::STORM {
        let Some(f) = findings.oracle.finding_mut(k) else {
            continue;
        };
        if let Some(v) = f.examples.first() {
            f.reproduce = vec![
                line(&["--seed".into(), ctx.seed.to_string()]),
                line(&["--write-at".into(), format!("{}+{}", v.offset, v.len)]),
            ];
        }
    }
}

/// `s` as one word of a POSIX shell command line.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./+=:,@".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Why the diverged and moved oracles judged nothing in a cell, if they did not.
fn view_notes(
    findings: &mut Findings,
    (no_cpu_view, frames_notrun): (Option<String>, Option<String>),
    (view_checks, frame_checks): (u64, u64),
) {
    let d = findings.get(OracleKind::Diverged);
    if let Some(why) = no_cpu_view {
        d.notrun = Some(why);
    } else if view_checks == 0 {
        d.notrun =
            Some("no write was checked with no operation overlapping its pin or its check".into());
    }
    let m = findings.get(OracleKind::Moved);
    if let Some(why) = frames_notrun {
        m.notrun = Some(why);
    } else if frame_checks == 0 {
        m.notrun = Some(
            "no pin was taken and held with no operation overlapping its registration or the second reading of its frames"
                .into(),
        );
    }
}

/// Each operation's [`pinstorm_workloads::layout::LayoutOp::prepare`] on every file where it
/// can run: what each did, one line per file and operation.
fn place(storm: &StormState, ops: &[LayoutKind]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..storm.files.len() {
        let target = storm.target(i);
        for k in ops {
            let op = k.op();
            if op.cannot_run(&target).is_none() {
                if let Some(done) = op.prepare(&target) {
                    out.push(format!("file={i} {k}: {done}"));
                }
            }
        }
    }
    out
}

/// One cell; a `control` cell runs the same pinners and writes with no disruptor.
pub fn run(
    job: &StormJob,
    ctx: &JobContext,
    pin: PinKind,
    kind: BackingKind,
    map: MapKind,
    control: bool,
) -> Result<StormResult> {
    let mut r = run_cell(job, ctx, pin, kind, map, control)?;
    r.control = control;
    Ok(r)
}

fn run_cell(
    job: &StormJob,
    ctx: &JobContext,
    pin: PinKind,
    kind: BackingKind,
    map: MapKind,
    control: bool,
) -> Result<StormResult> {
    let cell_name = format!("{pin}/{kind}/{}", map.name());
    let backing = match ctx.backings.get(kind) {
        Ok(b) => b,
        Err(e) => return Ok(notrun(pin, kind, "", map, job, ctx.seed, e.0)),
    };
    let info = backing.info().clone();
    let path = pin.path(ctx.pins);
    if let Availability::NotRun(r) = path.availability() {
        return Ok(notrun(pin, kind, &info.fs, map, job, ctx.seed, r));
    }
    let align = info.page_size.max(PAGE);
    let size = job.file_size.round_up(align).bytes();
    let files = match make_files(job, backing, map, size)? {
        Ok(f) => f,
        Err(why) => return Ok(notrun(pin, kind, &info.fs, map, job, ctx.seed, why)),
    };
    let dax = files[0].region.dax;
    let file_backed = files[0].file_backed();
    let device = path.device();
    let expected = ctx
        .expectations
        .lookup(
            &Cell {
                pin: pin.name(),
                backing: kind.name(),
                fs: &info.fs,
                map: map.name(),
                access: Access::Rw.name(),
                dax,
                rdma_device: device.as_deref(),
            },
            ctx.kernel,
        )
        .map(|r| (r.outcome.clone(), r.why.clone()));
    let disruptors = if !control && (file_backed || any_op_without_file(job)) {
        job.disruptors
    } else {
        0
    };
    let no_cpu_view = no_cpu_view(job, control);
    let cpu_view = no_cpu_view.is_none();
    let frames_notrun = frames_notrun(&files);
    let mut names: Vec<String> = (0..job.pinners.get())
        .map(|i| format!("pinner-{i}"))
        .collect();
    names.extend((0..disruptors).map(|j| format!("disruptor-{j}")));
    let wd = Watchdog::new(job.block_threshold.0, &names);
    let wd_thread = wd.run();
    oracle::kernel_warnings::start(ctx.kmsg);
    let foll_pins = path.foll_pins();
    let idle_before = oracle::leaked_pins::baseline(foll_pins);
    let no_write = path.device_writes().reason().map(str::to_string);

    let storm = Arc::new(StormState {
        files,
        path,
        events: Events::default(),
        stop: AtomicBool::new(false),
        wd: wd.clone(),
        unsupported: Mutex::new(BTreeMap::new()),
        findings: Mutex::new(Findings::default()),
        run_tag: ctx.run_tag,
        hold: job.hold.0,
        examples: job.examples,
        mapping: match (file_backed, map) {
            (false, _) => Mapping::Anon,
            (true, MapKind::Shared) => Mapping::SharedFile,
            (true, MapKind::Private) => Mapping::PrivateFile,
        },
        expected,
        size,
        align,
        hugetlb: kind.uses_hugetlb(),
        rate: job.rate,
        shapes: job.shapes.clone(),
        write_at: job.write_at,
        cpu_view,
        frames_notrun: frames_notrun.clone(),
        env: pinstorm_workloads::layout::OpEnv {
            lab: ctx.lab.cloned(),
            journal: Some(ctx.scratch.journal()),
        },
    });
    // Memory placed where the operations need it, before anything is pinned; control cells
    // too, so they differ from their storm only by the operations.
    let placement = place(&storm, &job.ops);
    let (tx, rx) = mpsc::channel::<ThreadOut>();
    let mut started = 0;
    for i in 0..job.pinners.get() {
        let (storm, tx) = (storm.clone(), tx.clone());
        let seed = thread_seed(ctx.seed, &cell_name, 1, i as u64);
        std::thread::Builder::new()
            .name(format!("pinner-{i}"))
            .spawn(move || {
                let o = pinner_thread(storm, i, seed);
                let _ = tx.send(ThreadOut::Pinner(Box::new(o)));
            })?;
        started += 1;
    }
    for j in 0..disruptors {
        let (storm, tx, ops) = (storm.clone(), tx.clone(), job.ops.clone());
        let seed = thread_seed(ctx.seed, &cell_name, 2, j as u64);
        let slot = job.pinners.get() + j;
        std::thread::Builder::new()
            .name(format!("disruptor-{j}"))
            .spawn(move || {
                let o = disruptor_thread(storm, slot, ops, seed);
                let _ = tx.send(ThreadOut::Disruptor(j, o));
            })?;
        started += 1;
    }
    drop(tx);
    let t_start = Instant::now();
    let end = t_start + job.duration.0;
    while Instant::now() < end && signals::pending().is_none() {
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    storm.stop.store(true, SeqCst);
    let ran_for = t_start.elapsed();
    // Collect, with a bound: a thread stuck in the kernel must not hang the run. Stopping
    // made every pinner release its pin, which is what unblocks a waiting layout operation.
    let bound = Duration::from_secs(30).max(job.block_threshold.0 * 4);
    let deadline = Instant::now() + bound;
    let mut pinners_out = Vec::new();
    let mut disruptors_out = BTreeMap::new();
    while pinners_out.len() + disruptors_out.len() < started {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ThreadOut::Pinner(p)) => pinners_out.push(*p),
            Ok(ThreadOut::Disruptor(j, d)) => {
                disruptors_out.insert(j, d);
            }
            Err(_) => break,
        }
    }
    let stuck = started - pinners_out.len() - disruptors_out.len();
    wd.stop();
    let _ = wd_thread.join();

    let pinners = report::pinners(pinners_out).with_context(|| format!("storm {cell_name}"))?;
    if let Some(r) = pinners.notrun {
        return Ok(notrun(pin, kind, &info.fs, map, job, ctx.seed, r));
    }
    let mut totals = pinners.totals;
    let mut timeline = pinners.timeline;
    // The end scan: every page of every file and partner. A file it cannot read is counted
    // and named: its pages were not judged.
    let scan_errors = if stuck == 0 {
        end_scan(&storm, wd.elapsed_ms())
    } else {
        Vec::new()
    };
    totals.end_scan_errors = scan_errors.len() as u64;
    let kernel_warnings = oracle::kernel_warnings::judge(ctx.kmsg);

    let ops_not_run = if control {
        Some("a control cell: the same writes with no layout operation")
    } else if !file_backed && disruptors == 0 {
        Some("anonymous memory has no file whose layout could change")
    } else if disruptors == 0 {
        Some("no disruptors in this scenario (disruptors = 0)")
    } else {
        None
    };
    let layout_ops =
        report::layout_ops(&job.ops, &disruptors_out, &storm.unsupported(), ops_not_run);
    for d in disruptors_out.values() {
        timeline.merge(&d.timeline);
    }
    let mut findings = std::mem::take(&mut *storm.findings());
    reproducers(&mut findings, ctx, &*storm.path, (pin, kind, map));
    let no_write = no_write.or(pinners.write_notrun);
    oracle::lost_write::cell_notes(&mut findings, no_write, map);
    view_notes(
        &mut findings,
        (no_cpu_view, frames_notrun),
        (pinners.view_checks, pinners.frame_checks),
    );
    // The oracles the end scan feeds.
    let scanned = [OracleKind::StaleExposure, OracleKind::CrossFile];
    if stuck > 0 {
        for k in scanned {
            findings.get(k).notrun = Some(format!(
                "{stuck} storm thread(s) never returned; the end scan was skipped"
            ));
        }
    }
    if let Some(first) = scan_errors.first() {
        let why = format!(
            "the end scan could not read {} file(s), whose pages were not judged (first: {first})",
            scan_errors.len()
        );
        for k in scanned {
            let f = findings.get(k);
            f.note = Some(match f.note.take() {
                Some(n) => format!("{n}; {why}"),
                None => why.clone(),
            });
        }
    }
    let leaked = if stuck > 0 {
        // Threads still inside the kernel hold the shared state; never unmap it under them.
        std::mem::forget(storm);
        LeakedPins {
            notrun: Some(format!(
                "{stuck} storm thread(s) never returned; their pins may still be held"
            )),
            ..LeakedPins::default()
        }
    } else {
        // Every thread has returned, so this is the last reference: unmap and close.
        let teardown = || match Arc::try_unwrap(storm) {
            Ok(storm) => drop(storm),
            Err(_) => unreachable!("storm threads all returned"),
        };
        oracle::leaked_pins::after(foll_pins, idle_before, teardown)
    };
    Ok(StormResult {
        pin: pin.name().into(),
        backing: kind.name().into(),
        fs: info.fs.clone(),
        map: map.name().into(),
        outcome: "ok".into(),
        reason: None,
        dax,
        pinners: job.pinners.get(),
        disruptors,
        file_size: size,
        hold_ns: job.hold.0.as_nanos() as u64,
        duration_ms: ran_for.as_millis() as u64,
        seed: ctx.seed,
        totals,
        register: (pinners.register.count() > 0).then(|| pinners.register.stats()),
        register_histogram: (pinners.register.count() > 0).then(|| pinners.register.encode()),
        layout_ops,
        timeline: timeline.0,
        oracle: Oracle {
            leaked_pins: leaked,
            blocked: oracle::blocked::judge(wd.reports(), job.block_threshold.0, job.examples),
            kernel_warnings,
            ..findings.oracle
        },
        sequence_head: disruptors_out.into_values().map(|d| d.head).collect(),
        control,
        shapes: job.shapes.iter().map(|s| s.name().to_string()).collect(),
        shapes_notrun: pinners.shapes_notrun.into_iter().collect(),
        placement,
    })
}
