//! Lifecycle scenarios, the runner's side: start the holder with the scenario, break the
//! lease the way the scenario's row of `pinstorm_workloads::lease::SCENARIOS` says, ask for
//! the device write if it says so, and turn what both sides saw into facts, each judged
//! against the `[[fact]]` expectations.

use std::collections::BTreeMap;
use std::time::Duration;

use pinstorm_analysis::expect::judge_fact;
use pinstorm_analysis::schema::{FactVerdict, LifecycleResult, Violation};
use pinstorm_workloads::backing::{Backing, BackingKind};
use pinstorm_workloads::lease::{break_lease, Command, Event, LeaseKind, Lifecycle};
use pinstorm_workloads::scenario::LeaseJob;

use super::holder::Holder;
use super::{holder_config, lease_file, LeaseContext};

pub(super) fn notrun(l: Lifecycle, kind: BackingKind, fs: &str, reason: String) -> LifecycleResult {
    LifecycleResult {
        scenario: l.name().into(),
        backing: kind.name().into(),
        fs: fs.into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        breaker: String::new(),
        breaker_result: None,
        breaker_wait_ms: None,
        facts: BTreeMap::new(),
        verdicts: Vec::new(),
        violations: Vec::new(),
    }
}

/// How long a killing scenario lets its breaker block before killing the holder, and the
/// breaker wait from which that breaker counts as released by the holder's death.
const KILL_AFTER: Duration = Duration::from_millis(300);
const RELEASED_BY_DEATH_MS: f64 = 250.0;

pub(super) fn run(
    job: &LeaseJob,
    ctx: &LeaseContext,
    b: &dyn Backing,
    l: Lifecycle,
) -> anyhow::Result<LifecycleResult> {
    let spec = l.spec();
    let kind = b.kind();
    let fs = b.info().fs.clone();
    if spec.waits_for_expiry {
        if let Some(r) = &ctx.expiry_notrun {
            return Ok(notrun(l, kind, &fs, r.clone()));
        }
    }
    let size = job.pin_size.bytes();
    let file = match lease_file(b, &format!("lifecycle-{}", l.name()), size) {
        Ok(f) => f,
        Err(e) => return Ok(notrun(l, kind, &fs, e)),
    };
    let path = file.path().to_path_buf();
    let mut cfg = holder_config(job, ctx, &path, LeaseKind::Write, spec.behaviour);
    cfg.lifecycle = Some(l);
    cfg.pin_len = Some(size as usize);
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let mut events = h.until_ready();
    match events.last() {
        Some(Event::Ready { .. }) => {}
        Some(Event::Refused { what, errno }) => {
            let reason = format!("the holder's {what} was refused: {errno}");
            return Ok(notrun(l, kind, &fs, reason));
        }
        Some(Event::Error { message }) => anyhow::bail!("lease holder ({}): {message}", l.name()),
        _ => anyhow::bail!("the lease holder of {} did not become ready", l.name()),
    }
    let broke = if spec.kills_holder {
        // Break from a thread; kill the holder while the breaker waits.
        let (p, bk) = (path.clone(), spec.breaker);
        let t = std::thread::spawn(move || break_lease(bk, &p, 0));
        std::thread::sleep(KILL_AFTER);
        h.kill_all();
        t.join().expect("breaker thread")
    } else {
        break_lease(spec.breaker, &path, 0)
    };
    events.extend(h.until(Duration::from_millis(500), |_| false));
    if spec.writes_after_break {
        h.send(Command::Write);
        events.extend(h.until(
            Duration::from_secs(10),
            |e| matches!(e, Event::DeviceWrite { phase, .. } if phase == "after-break"),
        ));
    }
    events.extend(h.until(Duration::from_millis(200), |_| false));
    let pids = h.pids().to_vec();
    drop(broke.fd);
    drop(h);
    drop(file);
    let facts = facts(ctx, l, &events, &pids, broke.wait_ns, &broke.result);
    let wait_ms = broke.wait_ns as f64 / 1e6;
    let mut violations = Vec::new();
    if facts.get("device_write_after_break").map(String::as_str) == Some("lost") {
        violations.push(Violation {
            file: path.display().to_string(),
            offset: 0,
            len: 4096,
            what: "after the lease was gone and the breaker truncated the file, the device's write through the still-registered pin is not in the file".into(),
            at_ms: wait_ms,
            history: events.iter().filter_map(describe).collect(),
        });
    }
    let verdicts = facts
        .iter()
        .map(|(k, v)| {
            let (verdict, rule) = judge_fact(ctx.facts, l.name(), k, ctx.kernel, v);
            FactVerdict {
                fact: k.clone(),
                measured: v.clone(),
                expected: rule.map(|r| r.value.clone()),
                verdict,
                why: rule.map(|r| r.why.clone()),
            }
        })
        .collect();
    Ok(LifecycleResult {
        scenario: l.name().into(),
        backing: kind.name().into(),
        fs,
        outcome: "ok".into(),
        reason: None,
        breaker: spec.breaker.name().into(),
        breaker_result: Some(broke.result),
        breaker_wait_ms: Some(wait_ms),
        facts,
        verdicts,
        violations,
    })
}

/// The scenario's facts, from what each side saw: the holder side's events (its own facts
/// and device writes among them), its processes, and the breaker's call.
fn facts(
    ctx: &LeaseContext,
    l: Lifecycle,
    events: &[Event],
    pids: &[(u32, String)],
    breaker_wait_ns: u64,
    breaker_result: &str,
) -> BTreeMap<String, String> {
    let spec = l.spec();
    let mut facts: BTreeMap<String, String> = BTreeMap::new();
    let signal_from = events.iter().find_map(|e| match e {
        Event::Signal { pid, .. } => Some(*pid),
        _ => None,
    });
    let holder_pid = pids.iter().find(|(_, r)| r == "holder").map(|(p, _)| *p);
    facts.insert(
        "signalled_process".into(),
        match signal_from {
            None => "none".into(),
            Some(p) if Some(p) == holder_pid => "holder".into(),
            Some(p) => pids
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| "other".into()),
        },
    );
    let ended = events.iter().rev().find_map(|e| match e {
        Event::Released { how, .. } => Some(how.clone()),
        Event::Revoked { to, .. } => Some(if to == "read" {
            "downgraded-by-kernel".into()
        } else {
            "revoked".into()
        }),
        Event::ReleaseFailed { how, errno } => Some(format!("{how}-failed:{errno}")),
        _ => None,
    });
    facts.insert(
        "lease_ended".into(),
        ended.unwrap_or_else(|| {
            if spec.kills_holder {
                "holder-killed".into()
            } else {
                "not-by-the-holder".into()
            }
        }),
    );
    let wait_ms = breaker_wait_ns as f64 / 1e6;
    let lbt_ms = ctx.lease_break_time_s as f64 * 1000.0;
    facts.insert(
        "breaker_waited_for".into(),
        if wait_ms >= lbt_ms * 0.8 {
            "lease-break-time".into()
        } else if spec.kills_holder && wait_ms >= RELEASED_BY_DEATH_MS {
            "holder-death".into()
        } else {
            "holder".into()
        },
    );
    facts.insert("breaker_result".into(), breaker_result.into());
    for e in events {
        match e {
            Event::Fact { key, value } => {
                facts.insert(key.clone(), value.clone());
            }
            Event::DeviceWrite { phase, result } => {
                facts.insert(
                    format!("device_write_{}", phase.replace('-', "_")),
                    result.clone(),
                );
            }
            _ => {}
        }
    }
    facts
}

/// One line of a violation's history.
fn describe(e: &Event) -> Option<String> {
    Some(match e {
        Event::Ready { acquire_ns, .. } => format!("lease taken ({acquire_ns} ns), pin registered"),
        Event::Signal { pid, .. } => format!("break signal delivered to pid {pid}"),
        Event::Released { how, .. } => format!("holder released the lease ({how})"),
        Event::Revoked { .. } => "lease revoked after lease-break-time".into(),
        Event::DeviceWrite { phase, result } => format!("device write {phase}: {result}"),
        Event::Fact { key, value } => format!("{key} = {value}"),
        _ => return None,
    })
}
