//! From what the threads of one cell measured to its result rows: which rows, their
//! outcome, their statistics and throughput, and the cell's verdict.
//!
//! The outcome says what happened to the row's calls, and nothing is judged here: a row
//! whose calls failed even once takes the errno as its outcome, so the one judgement of
//! outcomes against the expectations (`expect::judge`, as for probe cells) sees a cell that
//! should be `ok` differ. A row with fewer than [`MIN_SAMPLES`] samples is `notrun`, saying
//! how many it got and why the loop ended.

use pinstorm_analysis::expect::{self, Cell as ExpectCell, Expectations};
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::BenchRow;

use pinstorm_workloads::units::Size;

use super::worker::{plan_writes, Ended, ErrnoCounts, Op, Side};
use crate::job::{with_memlock_hint, JobContext};

/// What turning measurements into rows needs from the run.
pub(super) struct RowContext<'a> {
    pub expectations: &'a Expectations,
    pub kernel: &'a KernelRelease,
    /// Why a pin may be refused with ENOMEM here, added to such a refusal's reason.
    pub memlock_hint: Option<&'a str>,
}

impl<'a> RowContext<'a> {
    pub fn of(ctx: &'a JobContext) -> RowContext<'a> {
        RowContext {
            expectations: ctx.expectations,
            kernel: ctx.kernel,
            memlock_hint: ctx.memlock_hint.as_deref(),
        }
    }
}

/// The fewest samples a row's statistics are reported from. Below it a median is one of a
/// handful of numbers and a p99 is the maximum: the row is `notrun` with the count and why
/// the loop stopped (`--max-time 0s`, a signal during warm-up, a tiny `--iterations`).
pub const MIN_SAMPLES: u64 = 10;

/// The cell every row of it names.
pub(super) struct CellKey<'a> {
    pub pin: &'a str,
    pub backing: &'a str,
    pub fs: &'a str,
    pub map: &'a str,
    pub access: &'a str,
    /// Requested bytes.
    pub size: u64,
    pub threads: usize,
    pub dax: Option<bool>,
    /// The device the pin path drives, for expectation rules with `rdma_device`.
    pub device: Option<&'a str>,
}

impl CellKey<'_> {
    /// A row of this cell with nothing measured yet.
    pub fn row(&self, op: &str, outcome: String, reason: Option<String>) -> BenchRow {
        BenchRow {
            pin: self.pin.into(),
            backing: self.backing.into(),
            fs: self.fs.into(),
            map: self.map.into(),
            access: self.access.into(),
            size: self.size,
            op: op.into(),
            threads: self.threads,
            outcome,
            reason,
            dax: self.dax,
            ..BenchRow::default()
        }
    }

    /// Judge a `cycle` row's outcome against the expectations, as a probe cell's.
    pub fn judge(&self, ctx: &RowContext, row: &mut BenchRow) {
        let cell = ExpectCell {
            pin: self.pin,
            backing: self.backing,
            fs: self.fs,
            map: self.map,
            access: self.access,
            dax: self.dax,
            rdma_device: self.device,
        };
        let (verdict, rule) = expect::judge(ctx.expectations, &cell, ctx.kernel, &row.outcome);
        row.verdict = Some(verdict);
        row.expected = rule.map(|r| r.outcome.clone());
        row.expected_because = rule.map(|r| r.why.clone());
    }
}

/// The errno that failed most often (the first by name among equals).
fn most_frequent(counts: &ErrnoCounts) -> Option<&str> {
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(name, _)| name.as_str())
}

/// The reason of a row whose calls failed: the first failure in the kernel's words (the
/// counts are in the row's `errors` and `baseline_errors`).
fn error_reason(ctx: &RowContext, side: &Side, base: &Side) -> String {
    match side.first_error.as_ref().or(base.first_error.as_ref()) {
        Some((name, text)) => with_memlock_hint(text.clone(), name, ctx.memlock_hint),
        None => "failed".into(),
    }
}

fn too_few(samples: u64, ended: &Ended) -> String {
    format!(
        "stopped after {samples} samples ({}); at least {MIN_SAMPLES} needed",
        ended.why()
    )
}

/// The rows of a cell that ran: `cycle` alone when no cycle of pinstorm's completed, else
/// one per op, and two per device write length (`writes`: the first write after the
/// registration and the same write again).
pub(super) fn cell_rows(
    ctx: &RowContext,
    key: &CellKey,
    ours: &Side,
    base: &Side,
    ended: &Ended,
    note: Option<String>,
    writes: &[Size],
) -> Vec<BenchRow> {
    let none = ErrnoCounts::new();
    let op_errors = |side: &Side, op: Op| side.errors.get(&op).cloned().unwrap_or_default();
    if ours.cycle.count() == 0 {
        let (errors, base_errors) = (ours.all_errors(), base.all_errors());
        let (outcome, reason) = match most_frequent(&errors).or(most_frequent(&base_errors)) {
            Some(e) => (e.to_string(), error_reason(ctx, ours, base)),
            None => ("notrun".to_string(), too_few(0, ended)),
        };
        let mut row = key.row("cycle", outcome, Some(reason));
        row.errors = errors;
        row.baseline_errors = base_errors;
        key.judge(ctx, &mut row);
        return vec![row];
    }
    let pages = (key.size.div_ceil(4096)).max(1) as f64;
    let mut specs: Vec<(String, &Latency, &Latency, ErrnoCounts, ErrnoCounts, f64)> = vec![
        (
            "register".to_string(),
            &ours.register,
            &base.register,
            op_errors(ours, Op::Register),
            op_errors(base, Op::Register),
            ours.rates.register,
        ),
        (
            "unregister".to_string(),
            &ours.unregister,
            &base.unregister,
            op_errors(ours, Op::Unregister),
            op_errors(base, Op::Unregister),
            ours.rates.unregister,
        ),
        (
            "cycle".to_string(),
            &ours.cycle,
            &base.cycle,
            ours.all_errors(),
            base.all_errors(),
            ours.rates.cycle,
        ),
    ];
    let no_baseline = Latency::default();
    let no_times = Default::default();
    let lens: Vec<u64> = writes.iter().map(|w| w.bytes()).collect();
    let mut unfit = Vec::new();
    for (i, (len, at)) in writes.iter().zip(plan_writes(&lens, key.size)).enumerate() {
        let (first, again) = write_ops(*len);
        if at.is_none() {
            let why = format!(
                "a {len} write does not fit the {} region after the writes before it",
                Size(key.size)
            );
            unfit.push(key.row(&first, "notrun".into(), Some(why.clone())));
            unfit.push(key.row(&again, "notrun".into(), Some(why)));
            continue;
        }
        let t = ours.writes.get(i).unwrap_or(&no_times);
        specs.push((
            first,
            &t.first,
            &no_baseline,
            op_errors(ours, Op::DeviceWrite(i)),
            none.clone(),
            t.first_rate,
        ));
        specs.push((
            again,
            &t.again,
            &no_baseline,
            op_errors(ours, Op::DeviceRewrite(i)),
            none.clone(),
            t.again_rate,
        ));
    }
    let mut rows: Vec<BenchRow> = specs
        .into_iter()
        .map(|(op, h, b, errors, base_errors, rate)| {
            let failed = most_frequent(&errors).or(most_frequent(&base_errors));
            let mut row = match failed {
                Some(e) => {
                    let reason = error_reason(ctx, ours, base);
                    key.row(&op, e.to_string(), Some(reason))
                }
                None if h.count() < MIN_SAMPLES => {
                    key.row(&op, "notrun".into(), Some(too_few(h.count(), ended)))
                }
                None => key.row(&op, "ok".into(), note.clone()),
            };
            if row.outcome != "notrun" && h.count() > 0 {
                let st = h.stats();
                let bst = (b.count() > 0).then(|| b.stats());
                row.ops_per_sec = Some(rate);
                row.ns_per_4k_page = (op == "cycle").then(|| st.p50_ns as f64 / pages);
                row.baseline_p50_ns = bst.as_ref().map(|b| b.p50_ns);
                row.overhead_pct = bst
                    .as_ref()
                    .map(|b| (st.p50_ns as f64 / b.p50_ns.max(1) as f64 - 1.0) * 100.0);
                row.histogram = Some(h.encode());
                row.baseline_histogram = (b.count() > 0).then(|| b.encode());
                row.stats = Some(st);
            }
            row.errors = errors;
            row.baseline_errors = base_errors;
            if op == "cycle" {
                key.judge(ctx, &mut row);
            }
            row
        })
        .collect();
    rows.extend(unfit);
    rows
}

/// The ops of the first write of `len` bytes after a registration and of the same write
/// again: `device-write`/`device-rewrite` for 4 KiB (as in results before `write_sizes`),
/// else with the length (`device-write-64K`).
pub(super) fn write_ops(len: Size) -> (String, String) {
    match len.bytes() {
        4096 => ("device-write".into(), "device-rewrite".into()),
        _ => (
            format!("device-write-{len}"),
            format!("device-rewrite-{len}"),
        ),
    }
}
