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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    pub lease: LeaseKind,
    pub behaviour: Behaviour,
    pub breaker: BreakerKind,
    /// The holder pins the file (write leases with `pin`); a no-pin holder only answers the
    /// break.
    pub pinned: bool,
}

/// The job's break cells, in the order they run: lease x behaviour x breaker, and for a
/// pinned cooperative write-lease holder (`no_pin_holder`) first the same cell with a holder
/// that pins nothing.
pub(crate) fn cells(job: &LeaseJob) -> Vec<Cell> {
    let mut v = Vec::new();
    if job.rounds == 0 {
        return v;
    }
    for &lease in &job.leases {
        for &behaviour in &job.behaviours {
            for &breaker in &job.breakers {
                // A read lease cannot be pinned: the writable mapping a pin needs is itself
                // a conflicting open.
                let pinned = job.pin && lease == LeaseKind::Write;
                let cell = |pinned| Cell {
                    lease,
                    behaviour,
                    breaker,
                    pinned,
                };
                if pinned && job.no_pin_holder && behaviour == Behaviour::Cooperative {
                    v.push(cell(false));
                }
                v.push(cell(pinned));
            }
        }
    }
    v
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
            pinned: self.pinned,
            outcome: "notrun".into(),
            reason: Some(reason),
            rounds: 0,
            signalled: 0,
            ended: BTreeMap::new(),
            breaker_results: BTreeMap::new(),
            acquire: None,
            release: None,
            unpin: None,
            notify: None,
            breaker_wait: None,
            lease_break_time_s: Some(job.lease_break_time.0.as_secs()),
            report_after_release: true,
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
    unpin: Samples,
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
        pinned,
    } = cell;
    if let Some(reason) = cell.cannot_run(ctx) {
        return Ok(cell.notrun(kind, &fs, job, reason));
    }
    let size = job.pin_size.bytes();
    let name = format!(
        "lease-{}-{}-{}{}",
        lk.name(),
        bh.name(),
        bk.name(),
        if pinned { "-pinned" } else { "" }
    );
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
    // A pinned holder pins its file like an RDMA user would.
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
                return Ok(cell.notrun(kind, &fs, job, reason));
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
        unpin: t.unpin.measured(ctx.seed),
        notify: t.notify.measured(ctx.seed),
        breaker_wait: t.breaker_wait.measured(ctx.seed),
        lease_break_time_s: Some(ctx.lease_break_time_s),
        report_after_release: true,
    })
}

/// One round on a ready holder: break, let it go on, see what it did.
fn round(h: &mut Holder, t: &mut Tally, bk: BreakerKind, path: &Path, size: i64, long: Duration) {
    let broke = break_lease(bk, path, size);
    t.breaker_wait.record(broke.wait_ns.max(1));
    *t.results.entry(broke.result.clone()).or_default() += 1;
    // The breaking call is over, and with it everything it does to the lease: a break signal
    // is queued before the call returns. Close what it opened (the holder cannot take a lease
    // again while it is open) and tell the holder, which reports only then: nothing it
    // writes can fall inside the wait measured above.
    drop(broke.fd);
    h.send(Command::Next);
    let evs = h.until(long, |e| {
        matches!(
            e,
            Event::Released { .. }
                | Event::Revoked { .. }
                | Event::ReleaseFailed { .. }
                | Event::NoSignal { .. }
                | Event::Refused { .. }
                | Event::Error { .. }
                | Event::Done
        )
    });
    let mut end = "none".to_string();
    for e in &evs {
        match e {
            Event::Signal { t: at, .. } => {
                t.signalled += 1;
                t.notify.record(at.saturating_sub(broke.t0).max(1));
            }
            Event::Released {
                release_ns,
                unpin_ns,
                how,
                ..
            } => {
                t.release.record((*release_ns).max(1));
                if let Some(u) = unpin_ns {
                    t.unpin.record((*u).max(1));
                }
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
    t.rounds += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(toml: &str) -> LeaseJob {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_pinned_cooperative_write_holder_gets_a_no_pin_twin_and_nothing_else_does() {
        let j = job("rounds = 1\nbreakers = [\"open-rdwr\"]");
        let pinned: Vec<_> = cells(&j)
            .iter()
            .map(|c| (c.lease, c.behaviour, c.pinned))
            .collect();
        use Behaviour::*;
        use LeaseKind::*;
        assert_eq!(
            pinned,
            [
                (Write, Cooperative, false),
                (Write, Cooperative, true),
                (Write, Delayed, true),
                (Write, Downgrading, true),
                (Write, Hung, true),
                (Read, Cooperative, false),
                (Read, Delayed, false),
                (Read, Downgrading, false),
                (Read, Hung, false),
            ]
        );
        // Without pins every holder is a no-pin holder already; the key turns the twin off.
        for toml in [
            "rounds = 1\npin = false",
            "rounds = 1\nno_pin_holder = false",
        ] {
            let j = job(toml);
            assert_eq!(
                cells(&j).len(),
                j.leases.len() * j.behaviours.len() * j.breakers.len(),
                "{toml}"
            );
        }
        assert!(cells(&job("rounds = 0")).is_empty());
    }
}
