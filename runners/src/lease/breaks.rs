//! Lease-break storms: one cell is a lease kind x holder behaviour x breaker on one backing,
//! broken round after round.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pinstorm_analysis::schema::LeaseBreakResult;
use pinstorm_workloads::backing::{Backing, BackingKind};
use pinstorm_workloads::lease::{break_lease, Behaviour, BreakerKind, Command, Event, LeaseKind};
use pinstorm_workloads::scenario::LeaseJob;

use super::holder::Holder;
use super::{holder_config, lease_file, LeaseContext, Samples};
use crate::signals;

#[derive(Clone, Copy)]
pub(super) struct Cell {
    pub lease: LeaseKind,
    pub behaviour: Behaviour,
    pub breaker: BreakerKind,
}

impl Cell {
    /// The cell's result row before anything ran.
    pub(super) fn notrun(
        self,
        kind: BackingKind,
        fs: &str,
        job: &LeaseJob,
        reason: String,
    ) -> LeaseBreakResult {
        LeaseBreakResult {
            backing: kind.name().into(),
            fs: fs.into(),
            lease: self.lease.name().into(),
            behaviour: self.behaviour.name().into(),
            breaker: self.breaker.name().into(),
            pinned: false,
            outcome: "notrun".into(),
            reason: Some(reason),
            rounds: 0,
            signalled: 0,
            ended: BTreeMap::new(),
            breaker_results: BTreeMap::new(),
            acquire: None,
            release: None,
            notify: None,
            breaker_wait: None,
            lease_break_time_s: Some(job.lease_break_time.0.as_secs()),
        }
    }

    /// Why this cell cannot run here, if it cannot.
    fn cannot_run(self, ctx: &LeaseContext) -> Option<String> {
        if self.lease == LeaseKind::Read && self.behaviour == Behaviour::Downgrading {
            return Some("a read lease has nothing to downgrade to".into());
        }
        if self.behaviour == Behaviour::Hung {
            return ctx.expiry_notrun.clone();
        }
        None
    }
}

/// What the rounds of one cell measured.
#[derive(Default)]
struct Tally {
    acquire: Samples,
    release: Samples,
    notify: Samples,
    breaker_wait: Samples,
    /// How each round's lease ended.
    ended: BTreeMap<String, u32>,
    /// What the breaker got, per round.
    results: BTreeMap<String, u32>,
    signalled: u32,
    rounds: u32,
}

pub(super) fn run(
    job: &LeaseJob,
    ctx: &LeaseContext,
    b: &dyn Backing,
    cell: Cell,
) -> anyhow::Result<LeaseBreakResult> {
    let kind = b.kind();
    let fs = b.info().fs.clone();
    let Cell {
        lease: lk,
        behaviour: bh,
        breaker: bk,
    } = cell;
    if let Some(reason) = cell.cannot_run(ctx) {
        return Ok(cell.notrun(kind, &fs, job, reason));
    }
    let size = job.pin_size.bytes();
    let name = format!("lease-{}-{}-{}", lk.name(), bh.name(), bk.name());
    let file = match lease_file(b, &name, size) {
        Ok(f) => f,
        Err(e) => return Ok(cell.notrun(kind, &fs, job, e)),
    };
    let path = file.path().to_path_buf();
    // A hung holder, and a downgrading one whose downgrade the kernel refuses, leave the
    // breaker waiting out the lease-break-time: they get `hung_rounds`.
    let rounds = if matches!(bh, Behaviour::Hung | Behaviour::Downgrading) {
        job.hung_rounds.min(job.rounds)
    } else {
        job.rounds
    };
    let mut cfg = holder_config(job, ctx, &path, lk, bh);
    cfg.rounds = rounds;
    // A write-lease holder pins its file like an RDMA user would; a read lease cannot (the
    // writable mapping a pin needs is itself a conflicting open).
    let pinned = job.pin && lk == LeaseKind::Write;
    cfg.pin_len = pinned.then_some(size as usize);
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let mut t = Tally::default();
    let long = Duration::from_millis(cfg.wait_ms + 3000);
    let interval = (job.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / job.rate));
    for _ in 0..rounds {
        let round_start = Instant::now();
        let evs = h.until_ready();
        match evs.last() {
            Some(Event::Ready { acquire_ns, .. }) => t.acquire.record(*acquire_ns),
            Some(Event::Refused { what, errno }) => {
                let reason = format!("the holder's {what} was refused: {errno}");
                let mut r = cell.notrun(kind, &fs, job, reason);
                r.pinned = pinned;
                return Ok(r);
            }
            Some(Event::Error { message }) => anyhow::bail!("lease holder: {message}"),
            _ => anyhow::bail!(
                "the lease holder did not become ready (lease {} {} on {kind})",
                lk.name(),
                bh.name()
            ),
        }
        round(&mut h, &mut t, bk, &path, size as i64, long);
        if signals::pending().is_some() {
            break;
        }
        if let Some(iv) = interval {
            if let Some(rest) = iv.checked_sub(round_start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    drop(h);
    drop(file);
    Ok(LeaseBreakResult {
        backing: kind.name().into(),
        fs,
        lease: lk.name().into(),
        behaviour: bh.name().into(),
        breaker: bk.name().into(),
        pinned,
        outcome: "ok".into(),
        reason: None,
        rounds: t.rounds,
        signalled: t.signalled,
        ended: t.ended,
        breaker_results: t.results,
        acquire: t.acquire.measured(ctx.seed),
        release: t.release.measured(ctx.seed),
        notify: t.notify.measured(ctx.seed),
        breaker_wait: t.breaker_wait.measured(ctx.seed),
        lease_break_time_s: Some(ctx.lease_break_time_s),
    })
}

/// One round on a ready holder: break, see what the holder did, let it go on.
fn round(h: &mut Holder, t: &mut Tally, bk: BreakerKind, path: &Path, size: i64, long: Duration) {
    let broke = break_lease(bk, path, size);
    t.breaker_wait.record(broke.wait_ns.max(1));
    *t.results.entry(broke.result.clone()).or_default() += 1;
    // What happened on the holder's side; a breaker that did not break ends the wait.
    let mut evs = h.until(Duration::from_millis(300), |e| {
        matches!(e, Event::Signal { .. })
    });
    let got_signal = evs.iter().any(|e| matches!(e, Event::Signal { .. }));
    if got_signal {
        evs.extend(h.until(long, |e| {
            matches!(
                e,
                Event::Released { .. }
                    | Event::Revoked { .. }
                    | Event::ReleaseFailed { .. }
                    | Event::NoSignal { .. }
            )
        }));
    } else {
        h.send(Command::Next);
        evs.extend(h.until(long, |e| {
            matches!(e, Event::NoSignal { .. } | Event::Signal { .. })
        }));
    }
    let mut end = "none".to_string();
    for e in &evs {
        match e {
            Event::Signal { t: at, .. } => {
                t.signalled += 1;
                t.notify.record(at.saturating_sub(broke.t0).max(1));
            }
            Event::Released {
                release_ns, how, ..
            } => {
                t.release.record((*release_ns).max(1));
                end = how.clone();
            }
            Event::Revoked { to, .. } => {
                end = if to == "read" {
                    "downgraded-by-kernel".into()
                } else {
                    "revoked".into()
                }
            }
            Event::ReleaseFailed { how, errno } => end = format!("{how}-failed:{errno}"),
            _ => {}
        }
    }
    *t.ended.entry(end).or_default() += 1;
    drop(broke.fd);
    if got_signal {
        h.send(Command::Next);
    }
    t.rounds += 1;
}
