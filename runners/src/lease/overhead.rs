//! Lease-check overhead: the holder times register + unregister with and without a lease
//! held; this side turns the samples into histograms and a bootstrap interval of the
//! difference of the medians.

use std::time::Duration;

use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::LeaseOverhead;
use pinstorm_analysis::stats;
use pinstorm_workloads::backing::Backing;
use pinstorm_workloads::lease::{Behaviour, Event, LeaseKind};
use pinstorm_workloads::scenario::LeaseJob;

use super::holder::Holder;
use super::{holder_config, lease_file, measured, LeaseContext};

pub(super) fn notrun(backing: &str, fs: &str, reason: String) -> LeaseOverhead {
    LeaseOverhead {
        backing: backing.into(),
        fs: fs.into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        without: None,
        with: None,
        overhead_ns: None,
        ci_low_ns: None,
        ci_high_ns: None,
        confidence: 0.95,
        overhead_pct: None,
        significant: None,
    }
}

pub(super) fn run(
    job: &LeaseJob,
    ctx: &LeaseContext,
    b: &dyn Backing,
) -> anyhow::Result<LeaseOverhead> {
    let fs = b.info().fs.clone();
    let mut r = notrun(b.kind().name(), &fs, String::new());
    r.reason = None;
    let size = job.pin_size.bytes();
    let file = match lease_file(b, "lease-overhead", size) {
        Ok(f) => f,
        Err(e) => {
            r.reason = Some(e);
            return Ok(r);
        }
    };
    let path = file.path().to_path_buf();
    let mut cfg = holder_config(job, ctx, &path, LeaseKind::Write, Behaviour::Cooperative);
    cfg.pin_len = Some(size as usize);
    cfg.overhead_cycles = Some(job.overhead_cycles);
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let evs = h.until(Duration::from_secs(600), |e| {
        matches!(
            e,
            Event::Samples { .. } | Event::Refused { .. } | Event::Error { .. } | Event::Done
        )
    });
    drop(h);
    drop(file);
    match evs.last() {
        Some(Event::Samples { without, with }) => {
            let mut lw = Latency::new();
            let mut ll = Latency::new();
            without.iter().for_each(|v| lw.record(*v));
            with.iter().for_each(|v| ll.record(*v));
            let (d, lo, hi) = stats::bootstrap_median_diff(without, with, 1000, 0.95, ctx.seed);
            let base = stats::median(without);
            r.outcome = "ok".into();
            r.without = measured(&lw);
            r.with = measured(&ll);
            r.overhead_ns = Some(d);
            r.ci_low_ns = Some(lo);
            r.ci_high_ns = Some(hi);
            r.overhead_pct = Some(d / base * 100.0);
            r.significant = Some(lo > 0.0 || hi < 0.0);
        }
        // The outcome stays `notrun`, with the refusal as the reason.
        Some(Event::Refused { what, errno }) => r.reason = Some(format!("{what}: {errno}")),
        Some(Event::Error { message }) => anyhow::bail!("lease holder: {message}"),
        _ => anyhow::bail!("the lease-check overhead holder sent no samples"),
    }
    Ok(r)
}
