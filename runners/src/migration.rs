//! `[migration]`: long-term pins of pages in ZONE_MOVABLE (docs/mm.md).
//!
//! ZONE_MOVABLE promises that its memory can always be migrated (and so offlined), so a
//! long-term pin (FOLL_LONGTERM) must not hold a page there: GUP migrates such pages out
//! before it pins them (d1e153fea2a8 "mm/gup: migrate pinned pages out of movable zone",
//! 5.13). Each round, per pin path:
//!
//! 1. map a fresh anonymous region and fault it in (user memory comes from ZONE_MOVABLE
//!    first where there is one: `movablecore=`, `pinstorm lab --movablecore`), read its
//!    frames (`/proc/self/pagemap`, root) and which of them lie in a Movable zone span of
//!    `/proc/zoneinfo`;
//! 2. pin it (timed), read the frames again: which pages moved out, which are still in
//!    ZONE_MOVABLE under the pin; unpin;
//! 3. pin it again (timed: the pages are out already), unpin;
//! 4. map another fresh region, hold its pages with a pipe (vmsplice: page references, which
//!    no migration can move past) and pin it: what the pin does when it cannot migrate.
//!
//! The facts (`moved_out_at_pin`, `pinned_in_movable`, `first_pin_cost`,
//! `pin_of_held_pages`) are judged against `[[fact]]` rules of scenario `pin-migration`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;

use pinstorm_analysis::expect::judge_fact;
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{FactVerdict, MigrationResult, RunResult, Verdict};
use pinstorm_workloads::backing::BackingKind;
use pinstorm_workloads::pin::{Availability, PinError, PinKind, PinTarget};
use pinstorm_workloads::scenario::MigrationJob;
use pinstorm_workloads::sys::{MapMode, Mapping};

use crate::job::{Job, JobContext, Progress};
use crate::storm::frames;

/// The scenario name of the `[[fact]]` rules.
pub const SCENARIO: &str = "pin-migration";

impl Job for MigrationJob {
    fn name(&self) -> &'static str {
        "migration"
    }

    /// Its regions are its own anonymous mappings: no backing to set up.
    fn backings(&self) -> &[BackingKind] {
        &[]
    }

    fn hugepages(&self, _hp_size: u64) -> u64 {
        0
    }

    fn cells(&self) -> u64 {
        self.pins.len() as u64
    }

    fn run(&self, ctx: &JobContext, progress: &Progress, result: &mut RunResult) -> Result<()> {
        for pin in &self.pins {
            let r = measure(self, ctx, *pin)?;
            progress.step(&format!("migration {pin}: {}", r.outcome));
            result.migration.push(r);
        }
        Ok(())
    }
}

/// The Movable zones' pfn spans `[start, end)` from `/proc/zoneinfo`.
pub fn movable_spans(zoneinfo: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut movable = false;
    let mut start: Option<u64> = None;
    let mut spanned: Option<u64> = None;
    let mut flush = |movable: bool, start: &mut Option<u64>, spanned: &mut Option<u64>| {
        if let (true, Some(s), Some(n)) = (movable, start.take(), spanned.take()) {
            if n > 0 {
                out.push((s, s + n));
            }
        }
        *start = None;
        *spanned = None;
    };
    for l in zoneinfo.lines() {
        if let Some(rest) = l.strip_prefix("Node ") {
            flush(movable, &mut start, &mut spanned);
            movable = rest.trim_end().ends_with("Movable");
            continue;
        }
        let t = l.trim();
        if let Some(v) = t.strip_prefix("spanned") {
            spanned = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("start_pfn:") {
            start = v.trim().parse().ok();
        }
    }
    flush(movable, &mut start, &mut spanned);
    out
}

fn in_spans(pfn: u64, spans: &[(u64, u64)]) -> bool {
    spans.iter().any(|(s, e)| (*s..*e).contains(&pfn))
}

fn region(len: usize) -> Result<Mapping> {
    let m = Mapping::anonymous(
        len,
        MapMode {
            shared: false,
            writable: true,
            hugetlb: false,
            populate: true,
        },
    )
    .map_err(|e| anyhow::anyhow!("mmap of {len} bytes: {}", e.name()))?;
    m.write_at(0, &vec![0x6d; len]);
    Ok(m)
}

fn target(m: &Mapping) -> PinTarget {
    PinTarget::of(m, m.len())
}

fn outcome_of(r: &Result<(), PinError>) -> Result<Option<String>> {
    match r {
        Ok(()) => Ok(None),
        Err(PinError::Kernel { errno, .. }) => Ok(Some(errno.name())),
        Err(PinError::Device { status, .. }) => Ok(Some(status.clone())),
        Err(PinError::NotRun(why)) => Ok(Some(format!("notrun: {why}"))),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

fn notrun(pin: PinKind, job: &MigrationJob, pages: u64, why: String) -> MigrationResult {
    MigrationResult::notrun(pin.name(), "anon", job.rounds, pages, why)
}

/// What the facts are, from what was measured.
pub struct Measured {
    pub movable_before: u64,
    pub migrated: u64,
    pub movable_while_pinned: u64,
    pub first_p50: Option<u64>,
    pub repin_p50: Option<u64>,
    pub held: BTreeMap<String, u32>,
}

/// The facts' values: categorical, so that the expectations can name them.
pub fn facts(m: &Measured) -> Vec<(&'static str, String)> {
    let moved = if m.migrated == m.movable_before {
        "all"
    } else if m.migrated == 0 {
        "none"
    } else {
        "some"
    };
    let mut out = vec![
        ("moved_out_at_pin", moved.to_string()),
        (
            "pinned_in_movable",
            if m.movable_while_pinned == 0 {
                "none"
            } else {
                "some"
            }
            .to_string(),
        ),
    ];
    if let (Some(a), Some(b)) = (m.first_p50, m.repin_p50) {
        // Migration copies every page: the first pin of pages in ZONE_MOVABLE costs more
        // than pinning the same pages again once they are out (by half again at least).
        let slower = a * 2 > b * 3;
        out.push((
            "first_pin_cost",
            if slower { "slower" } else { "not slower" }.to_string(),
        ));
    }
    if !m.held.is_empty() {
        let v = if m.held.len() == 1 {
            m.held.keys().next().expect("one").clone()
        } else {
            format!(
                "mixed: {}",
                m.held
                    .iter()
                    .map(|(k, n)| format!("{k} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push(("pin_of_held_pages", v));
    }
    out
}

fn measure(job: &MigrationJob, ctx: &JobContext, pin: PinKind) -> Result<MigrationResult> {
    let len = job.size.bytes() as usize;
    let pages = (len / 4096) as u64;
    let path = pin.path(ctx.pins);
    if let Availability::NotRun(why) = path.availability() {
        return Ok(notrun(pin, job, pages, why));
    }
    if matches!(
        path.foll_pins(),
        pinstorm_workloads::pin::FollPins::NotTaken(_)
    ) {
        return Ok(notrun(
            pin,
            job,
            pages,
            "not a long-term pin (FOLL_LONGTERM): nothing makes it leave ZONE_MOVABLE".into(),
        ));
    }
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let spans = movable_spans(&zoneinfo);
    if spans.is_empty() {
        return Ok(notrun(
            pin,
            job,
            pages,
            "no ZONE_MOVABLE here (/proc/zoneinfo): boot with movablecore= (pinstorm lab --movablecore 25%)".into(),
        ));
    }
    let pagemap = match frames::open() {
        Ok(p) => p,
        Err(why) => return Ok(notrun(pin, job, pages, why)),
    };
    let movable = |f: &Option<u64>| f.is_some_and(|pfn| in_spans(pfn, &spans));
    let mut first = Latency::default();
    let mut again = Latency::default();
    let mut m = Measured {
        movable_before: 0,
        migrated: 0,
        movable_while_pinned: 0,
        first_p50: None,
        repin_p50: None,
        held: BTreeMap::new(),
    };
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..job.rounds {
        let r = region(len)?;
        let before = frames::read(&pagemap, r.addr(), r.len()).map_err(anyhow::Error::msg)?;
        if let Some(why) = frames::hidden(&before) {
            return Ok(notrun(pin, job, pages, why));
        }
        let mut pinner = match path.pinner() {
            Ok(p) => p,
            Err(PinError::NotRun(why)) => return Ok(notrun(pin, job, pages, why)),
            Err(e) => anyhow::bail!("{e}"),
        };
        let t0 = Instant::now();
        let reg = pinner.register(target(&r));
        let took = t0.elapsed().as_nanos() as u64;
        if let Some(e) = outcome_of(&reg)? {
            *errors.entry(e).or_default() += 1;
            continue;
        }
        first.record(took);
        let during = frames::read(&pagemap, r.addr(), r.len()).map_err(anyhow::Error::msg)?;
        for (b, d) in before.iter().zip(&during) {
            if movable(b) {
                m.movable_before += 1;
                if d.is_some() && d != b && !movable(d) {
                    m.migrated += 1;
                }
            }
            if movable(d) {
                m.movable_while_pinned += 1;
            }
        }
        let _ = pinner.unregister();
        let t1 = Instant::now();
        if pinner.register(target(&r)).is_ok() {
            again.record(t1.elapsed().as_nanos() as u64);
            let _ = pinner.unregister();
        }
        drop(pinner);

        // Pages held by a pipe cannot be migrated: what does the long-term pin do?
        let h = region(len)?;
        let held_before = frames::read(&pagemap, h.addr(), h.len()).map_err(anyhow::Error::msg)?;
        if !held_before.iter().any(movable) {
            continue;
        }
        let refs = PinKind::Vmsplice.path(ctx.pins);
        let mut holder = match refs.pinner() {
            Ok(p) => p,
            Err(_) => continue,
        };
        if holder.register(target(&h)).is_err() {
            continue;
        }
        let mut pinner = match path.pinner() {
            Ok(p) => p,
            Err(e) => anyhow::bail!("{e}"),
        };
        let reg = pinner.register(target(&h));
        let what = match outcome_of(&reg)? {
            Some(e) => e,
            None => {
                let d = frames::read(&pagemap, h.addr(), h.len()).map_err(anyhow::Error::msg)?;
                let _ = pinner.unregister();
                if d.iter().any(movable) {
                    "ok, pinned in ZONE_MOVABLE".into()
                } else {
                    "ok, moved out".into()
                }
            }
        };
        *m.held.entry(what).or_default() += 1;
        drop(pinner);
        let _ = holder.unregister();
    }
    if m.movable_before == 0 {
        let mut r = notrun(
            pin,
            job,
            pages,
            format!(
                "no page of a fresh region was in ZONE_MOVABLE before its pin (Movable spans {spans:?}){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; registrations failed: {errors:?}")
                }
            ),
        );
        r.first_pin = (first.count() > 0).then(|| first.stats());
        return Ok(r);
    }
    m.first_p50 = (first.count() > 0).then(|| first.stats().p50_ns);
    m.repin_p50 = (again.count() > 0).then(|| again.stats().p50_ns);
    let verdicts = facts(&m)
        .into_iter()
        .map(|(fact, measured)| {
            let (verdict, rule) = judge_fact(
                ctx.expectations.facts(),
                SCENARIO,
                fact,
                ctx.kernel,
                &measured,
            );
            FactVerdict {
                fact: fact.into(),
                measured,
                expected: rule.map(|r| r.value.clone()),
                verdict,
                why: rule.map(|r| r.why.clone()),
            }
        })
        .collect::<Vec<_>>();
    let held = m
        .held
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(MigrationResult {
        pin: pin.name().into(),
        backing: "anon".into(),
        outcome: "ok".into(),
        reason: (!errors.is_empty()).then(|| format!("registrations failed: {errors:?}")),
        rounds: job.rounds,
        pages,
        movable_before: m.movable_before,
        migrated: m.migrated,
        movable_while_pinned: m.movable_while_pinned,
        first_pin: (first.count() > 0).then(|| first.stats()),
        repin: (again.count() > 0).then(|| again.stats()),
        held,
        verdicts: if verdicts.iter().all(|v| v.verdict == Verdict::NotRun) {
            Vec::new()
        } else {
            verdicts
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movable_spans_come_from_zoneinfo() {
        let z = "Node 0, zone   Normal\n  pages free     1\n        spanned  262144\n        present  262144\n  start_pfn:           1048576\nNode 0, zone  Movable\n  pages free     5\n        spanned  131072\n        present  131072\n  start_pfn:           1310720\nNode 1, zone  Movable\n        spanned  0\n  start_pfn:           0\n";
        assert_eq!(movable_spans(z), vec![(1310720, 1310720 + 131072)]);
        assert!(in_spans(1310720, &movable_spans(z)));
        assert!(!in_spans(1048576, &movable_spans(z)));
        assert!(movable_spans("Node 0, zone   Normal\n spanned 5\n start_pfn: 1\n").is_empty());
    }

    #[test]
    fn facts_are_categorical() {
        let m = Measured {
            movable_before: 512,
            migrated: 512,
            movable_while_pinned: 0,
            first_p50: Some(900_000),
            repin_p50: Some(100_000),
            held: [("ENOMEM".to_string(), 3)].into(),
        };
        let f: BTreeMap<_, _> = facts(&m).into_iter().collect();
        assert_eq!(f["moved_out_at_pin"], "all");
        assert_eq!(f["pinned_in_movable"], "none");
        assert_eq!(f["first_pin_cost"], "slower");
        assert_eq!(f["pin_of_held_pages"], "ENOMEM");
        let m = Measured {
            migrated: 0,
            movable_while_pinned: 512,
            first_p50: Some(100),
            repin_p50: Some(100),
            held: [("ENOMEM".to_string(), 1), ("ok, moved out".to_string(), 2)].into(),
            ..m
        };
        let f: BTreeMap<_, _> = facts(&m).into_iter().collect();
        assert_eq!(f["moved_out_at_pin"], "none");
        assert_eq!(f["pinned_in_movable"], "some");
        assert_eq!(f["first_pin_cost"], "not slower");
        assert_eq!(f["pin_of_held_pages"], "mixed: ENOMEM x1, ok, moved out x2");
    }
}
