//! A storm cell's result from what its threads measured: totals and latencies summed over
//! the pinners, each layout operation over the disruptors, and the `notrun` row of a cell
//! that could not run.

use std::collections::BTreeMap;

use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{LayoutOpResult, Oracle, StormResult, StormTotals};
use pinstorm_workloads::backing::{BackingKind, MapKind};
use pinstorm_workloads::layout::LayoutKind;
use pinstorm_workloads::pin::PinKind;
use pinstorm_workloads::scenario::StormJob;

use super::disruptor::DisruptorOut;
use super::pinner::PinnerOut;
use super::state::Timeline;

/// The row of a cell that did not run, with why.
pub fn notrun(
    pin: PinKind,
    kind: BackingKind,
    fs: &str,
    map: MapKind,
    job: &StormJob,
    seed: u64,
    reason: String,
) -> StormResult {
    StormResult {
        pin: pin.name().into(),
        backing: kind.name().into(),
        fs: fs.into(),
        map: map.name().into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        dax: None,
        pinners: job.pinners.get(),
        disruptors: job.disruptors,
        file_size: job.file_size.bytes(),
        hold_ns: job.hold.0.as_nanos() as u64,
        duration_ms: 0,
        seed,
        totals: StormTotals::default(),
        register: None,
        register_histogram: None,
        layout_ops: Vec::new(),
        timeline: Vec::new(),
        oracle: Oracle::default(),
        sequence_head: Vec::new(),
        control: false,
        shapes: job.shapes.iter().map(|s| s.name().to_string()).collect(),
        shapes_notrun: Vec::new(),
        placement: Vec::new(),
    }
}

/// What the pinners measured, together.
#[derive(Default)]
pub struct Pinners {
    pub totals: StormTotals,
    pub register: Latency,
    pub timeline: Timeline,
    /// Why the device could not write here (a device without I/O here), if a pinner said so.
    pub write_notrun: Option<String>,
    /// Why the pin path could not run here, if a pinner said so.
    pub notrun: Option<String>,
    /// Write shapes of the job that could not be drawn here, with why.
    pub shapes_notrun: std::collections::BTreeSet<String>,
    /// Judged checks of the two views, and of the frames.
    pub view_checks: u64,
    pub frame_checks: u64,
}

/// Sum the pinners' outputs; the first tool error of any of them is the cell's error.
pub fn pinners(outs: Vec<PinnerOut>) -> anyhow::Result<Pinners> {
    let mut all = Pinners::default();
    for mut p in outs {
        if let Some(e) = p.error.take() {
            return Err(e);
        }
        all.register.merge(&p.register);
        all.timeline.merge(&p.timeline);
        let t = &mut all.totals;
        t.registrations += p.totals.registrations;
        t.device_writes += p.totals.device_writes;
        t.verified += p.totals.verified;
        t.ambiguous += p.totals.ambiguous;
        t.readback_mismatches += p.totals.readback_mismatches;
        t.skipped_writes += p.totals.skipped_writes;
        for (k, v) in p.totals.register_errors {
            *t.register_errors.entry(k).or_default() += v;
        }
        for (k, v) in p.totals.device_write_errors {
            *t.device_write_errors.entry(k).or_default() += v;
        }
        for (k, v) in p.totals.writes_by_shape {
            *t.writes_by_shape.entry(k).or_default() += v;
        }
        all.shapes_notrun.extend(p.shapes_notrun);
        all.view_checks += p.view_checks;
        all.frame_checks += p.frame_checks;
        all.write_notrun = all.write_notrun.or(p.write_notrun);
        all.notrun = all.notrun.or(p.notrun);
    }
    Ok(all)
}

/// Each of the job's layout operations over all disruptors: count, latency, errors, or why it
/// did not run (`not_run`: why none ran in this cell at all; else what `unsupported` says).
pub fn layout_ops(
    ops: &[LayoutKind],
    disruptors: &BTreeMap<usize, DisruptorOut>,
    unsupported: &BTreeMap<LayoutKind, String>,
    not_run: Option<&str>,
) -> Vec<LayoutOpResult> {
    ops.iter()
        .map(|&k| {
            let mut lat = Latency::new();
            let mut count = 0;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            for s in disruptors.values().filter_map(|d| d.ops.get(&k)) {
                lat.merge(&s.latency);
                count += s.count;
                for (e, n) in &s.errors {
                    *errors.entry(e.clone()).or_default() += n;
                }
            }
            let reason = not_run
                .map(str::to_string)
                .or_else(|| unsupported.get(&k).cloned())
                .or_else(|| {
                    (count == 0 && errors.is_empty()).then(|| {
                        "never called in this cell: the disruptors did not draw it before the cell ended"
                            .to_string()
                    })
                });
            LayoutOpResult {
                op: k.name().into(),
                outcome: if reason.is_some() && count == 0 {
                    "notrun"
                } else {
                    "ok"
                }
                .into(),
                reason,
                count,
                errors,
                stats: (lat.count() > 0).then(|| lat.stats()),
                histogram: (lat.count() > 0).then(|| lat.encode()),
            }
        })
        .collect()
}
