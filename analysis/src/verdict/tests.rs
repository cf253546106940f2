use std::collections::BTreeMap;

use super::*;
use crate::export::{cases, Status as CaseStatus};
use crate::schema::*;

fn result() -> RunResult {
    crate::schema::planted()
}

fn probe(access: &str, outcome: &str, expected: Option<&str>, verdict: Verdict) -> ProbeRow {
    ProbeRow {
        pin: "io_uring".into(),
        backing: "anon".into(),
        fs: "anon".into(),
        map: "shared".into(),
        access: access.into(),
        size: 2 << 20,
        outcome: outcome.into(),
        reason: (outcome == "notrun").then(|| "planted reason".into()),
        dax: Some(false),
        device_io: None,
        expected: expected.map(str::to_string),
        verdict,
        expected_because: expected.map(|_| "planted rule".into()),
    }
}

fn fact(name: &str, measured: &str, expected: Option<&str>, verdict: Verdict) -> FactVerdict {
    FactVerdict {
        fact: name.into(),
        measured: measured.into(),
        expected: expected.map(str::to_string),
        verdict,
        why: expected.map(|_| "planted rule".into()),
    }
}

fn lifecycle(verdicts: Vec<FactVerdict>, violations: usize) -> LifecycleResult {
    LifecycleResult {
        scenario: "dup-close".into(),
        backing: "tmpfs".into(),
        fs: "tmpfs".into(),
        outcome: "ok".into(),
        reason: None,
        breaker: "open-rdwr".into(),
        breaker_result: Some("ok".into()),
        breaker_wait_ms: Some(0.2),
        facts: BTreeMap::new(),
        verdicts,
        violations: (0..violations)
            .map(|_| Violation {
                file: "f".into(),
                offset: 0,
                len: 4096,
                what: "the pin outlived the lease".into(),
                at_ms: 1.0,
                history: vec![],
            })
            .collect(),
    }
}

fn storm(backing: &str, fs: &str, lost: u64) -> StormResult {
    StormResult {
        pin: "io_uring".into(),
        backing: backing.into(),
        fs: fs.into(),
        map: "shared".into(),
        outcome: "ok".into(),
        reason: None,
        dax: Some(false),
        pinners: 2,
        disruptors: 1,
        file_size: 2 << 20,
        hold_ns: 2_000_000,
        duration_ms: 1000,
        seed: 1,
        totals: StormTotals {
            registrations: 100,
            ..StormTotals::default()
        },
        register: None,
        register_histogram: None,
        layout_ops: vec![],
        timeline: vec![],
        oracle: Oracle {
            lost_write: OracleFinding {
                count: lost,
                ..OracleFinding::default()
            },
            ..Oracle::default()
        },
        sequence_head: vec![],
        control: false,
        shapes: vec!["page".into()],
        shapes_notrun: vec![],
        placement: vec![],
    }
}

fn with_lease(mut r: RunResult, l: LifecycleResult) -> RunResult {
    r.leases = Some(LeaseResults {
        lifecycle: vec![l],
        ..LeaseResults::default()
    });
    r
}

/// Every exporter case fails exactly when the exit status is not 0.
fn assert_exports_agree(r: &RunResult) {
    let j = judge(r);
    let failing: Vec<_> = cases(r)
        .into_iter()
        .filter(|c| matches!(c.status, CaseStatus::Fail(_)))
        .collect();
    assert_eq!(
        failing.is_empty(),
        j.exit_code() == 0,
        "exit {} but failing cases {failing:?}",
        j.exit_code()
    );
}

#[test]
fn verdicts_serialize_to_the_strings_the_schema_has_always_used() {
    for (v, s) in [
        (Verdict::AsExpected, "as-expected"),
        (Verdict::Differs, "differs"),
        (Verdict::NoExpectation, "no-expectation"),
        (Verdict::NotRun, "notrun"),
        (Verdict::Error, "error"),
    ] {
        assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
        assert_eq!(v.as_str(), s);
        assert_eq!(serde_json::from_value::<Verdict>(s.into()).unwrap(), v);
    }
    assert!(serde_json::from_value::<Verdict>("maybe".into()).is_err());
}

#[test]
fn a_run_whose_facts_all_agree_exits_0_whatever_has_no_expectation_or_did_not_run() {
    let mut r = result();
    r.probe = vec![
        probe("rw", "ok", Some("ok"), Verdict::AsExpected),
        probe("ro", "EFAULT", None, Verdict::NoExpectation),
        probe("rw", "notrun", None, Verdict::NotRun),
    ];
    let r = with_lease(
        r,
        lifecycle(
            vec![
                fact("lease_ended", "unlock", Some("unlock"), Verdict::AsExpected),
                fact("new_fact", "x", None, Verdict::NoExpectation),
            ],
            0,
        ),
    );
    let j = judge(&r);
    assert_eq!(j.status, Status::AsExpected);
    assert_eq!(j.exit_code(), 0);
    assert_eq!(j.count(Verdict::AsExpected), 2);
    assert_eq!(j.count(Verdict::NoExpectation), 2);
    assert_eq!(j.count(Verdict::NotRun), 1);
    assert_exports_agree(&r);
}

#[test]
fn a_lease_fact_alone_that_differs_makes_the_run_exit_3_and_is_the_only_failing_case() {
    let r = with_lease(
        result(),
        lifecycle(
            vec![
                fact("lease_ended", "unlock", Some("revoked"), Verdict::Differs),
                fact(
                    "signalled_process",
                    "holder",
                    Some("holder"),
                    Verdict::AsExpected,
                ),
            ],
            0,
        ),
    );
    let j = judge(&r);
    assert_eq!(j.status, Status::Differs);
    assert_eq!(j.exit_code(), 3);
    let differing: Vec<&str> = j.differing().map(|f| f.name.as_str()).collect();
    assert_eq!(differing, ["lifecycle dup-close tmpfs lease_ended"]);
    let failing: Vec<String> = cases(&r)
        .into_iter()
        .filter(|c| matches!(c.status, CaseStatus::Fail(_)))
        .map(|c| c.name)
        .collect();
    assert_eq!(failing, ["lifecycle dup-close tmpfs lease_ended"]);
    assert_exports_agree(&r);
}

#[test]
fn a_probe_cell_that_differs_makes_the_run_exit_3() {
    let mut r = result();
    r.probe = vec![
        probe("rw", "ok", Some("ok"), Verdict::AsExpected),
        probe("ro", "ok", Some("EFAULT"), Verdict::Differs),
    ];
    let j = judge(&r);
    assert_eq!(j.exit_code(), 3);
    let f = j.differing().next().unwrap();
    assert_eq!(f.name, "probe io_uring anon shared ro (anon)");
    assert_eq!(
        (f.measured.as_str(), f.expected.as_deref()),
        ("ok", Some("EFAULT"))
    );
    assert_exports_agree(&r);
}

#[test]
fn a_pin_that_outlived_its_lease_is_judged_by_its_fact_not_failed_on_its_own() {
    let r = with_lease(
        result(),
        lifecycle(
            vec![fact(
                "device_write_after_break",
                "lost",
                Some("lost"),
                Verdict::AsExpected,
            )],
            1,
        ),
    );
    let j = judge(&r);
    assert_eq!(j.exit_code(), 0);
    let f = j
        .facts
        .iter()
        .find(|f| f.name.ends_with("device_write_after_break"))
        .unwrap();
    assert!(f.note.as_deref().unwrap().contains("outlived"), "{f:?}");
    assert_exports_agree(&r);
    // The same violation where the expectations say the write must land: differs.
    let r = with_lease(
        result(),
        lifecycle(
            vec![fact(
                "device_write_after_break",
                "lost",
                Some("in-file"),
                Verdict::Differs,
            )],
            1,
        ),
    );
    assert_eq!(judge(&r).exit_code(), 3);
    assert_exports_agree(&r);
}

#[test]
fn storm_oracle_counts_are_judged_by_oracle_rules_and_registrations_by_pin_rules() {
    let exp = Expectations::parse(
        r#"
[[expect]]
pin = "io_uring"
outcome = "ok"
why = "pinnable"
[[oracle]]
oracle = "*"
max = 0
why = "nothing may go wrong"
[[oracle]]
oracle = "lost_write"
fs = "tmpfs"
why = "known hazard"
"#,
        "t.toml",
    )
    .unwrap();
    let k = KernelRelease::parse("6.18.0").unwrap();
    let verdict_of =
        |v: &[FactVerdict], fact: &str| v.iter().find(|f| f.fact == fact).unwrap().verdict;
    // Lost writes on tmpfs: any number is expected.
    let v = judge_storm(&exp, &storm("tmpfs", "tmpfs", 90), &k, None);
    assert_eq!(verdict_of(&v, "lost_write"), Verdict::AsExpected);
    assert_eq!(verdict_of(&v, REGISTRATIONS), Verdict::AsExpected);
    assert_eq!(verdict_of(&v, "cross_file"), Verdict::AsExpected);
    // On anonymous memory one lost write differs.
    let v = judge_storm(&exp, &storm("anon", "anon", 1), &k, None);
    assert_eq!(verdict_of(&v, "lost_write"), Verdict::Differs);
    let lw = v.iter().find(|f| f.fact == "lost_write").unwrap();
    assert_eq!(
        (lw.measured.as_str(), lw.expected.as_deref()),
        ("1", Some("0"))
    );
    // A notrun oracle is notrun whatever the rules say.
    let mut s = storm("anon", "anon", 0);
    s.oracle.leaked_pins.notrun = Some("no counters".into());
    let v = judge_storm(&exp, &s, &k, None);
    assert_eq!(verdict_of(&v, "leaked_pins"), Verdict::NotRun);
    // A registration the storm counted as unexpected differs from its [[expect]] rule.
    let mut s = storm("anon", "anon", 0);
    s.oracle.unexpected_outcomes.count = 2;
    let v = judge_storm(&exp, &s, &k, None);
    assert_eq!(verdict_of(&v, REGISTRATIONS), Verdict::Differs);
    // Without rules, nothing is judged.
    let none = Expectations::parse("", "empty.toml").unwrap();
    let v = judge_storm(&none, &storm("anon", "anon", 5), &k, None);
    assert!(
        v.iter().all(|f| f.verdict == Verdict::NoExpectation),
        "{v:?}"
    );

    // In a run: the stored rows decide, and the exporters agree with the exit status.
    let mut r = result();
    for (b, fs, lost) in [("tmpfs", "tmpfs", 90), ("anon", "anon", 1)] {
        let s = storm(b, fs, lost);
        r.storm_verdicts
            .extend(
                judge_storm(&exp, &s, &k, None)
                    .into_iter()
                    .map(|fact| StormVerdict {
                        pin: s.pin.clone(),
                        backing: s.backing.clone(),
                        map: s.map.clone(),
                        control: false,
                        fact,
                    }),
            );
        r.storms.push(s);
    }
    let j = judge(&r);
    assert_eq!(j.exit_code(), 3);
    let differing: Vec<&str> = j.differing().map(|f| f.name.as_str()).collect();
    assert_eq!(differing, ["storm io_uring anon shared lost_write"]);
    assert_exports_agree(&r);
}

#[test]
fn results_written_before_storms_were_judged_fail_only_on_unexpected_registrations() {
    let mut r = result();
    r.storms.push(storm("tmpfs", "tmpfs", 90));
    assert_eq!(
        judge(&r).exit_code(),
        0,
        "lost writes without a rule: reported"
    );
    assert_exports_agree(&r);
    r.storms[0].oracle.unexpected_outcomes.count = 1;
    assert_eq!(judge(&r).exit_code(), 3);
    assert_exports_agree(&r);
}

#[test]
fn signals_and_errors_outrank_differences_in_the_exit_status() {
    let mut r = result();
    r.probe = vec![probe("ro", "ok", Some("EFAULT"), Verdict::Differs)];
    r.complete = false;
    r.error = Some("disk full".into());
    assert_eq!(judge(&r).exit_code(), 1);
    assert_exports_agree(&r);
    r.interrupted = Some("SIGTERM".into());
    assert_eq!(judge(&r).exit_code(), 143);
    r.interrupted = Some("SIGINT".into());
    r.error = None;
    assert_eq!(judge(&r).exit_code(), 130);
    assert_exports_agree(&r);
    // A result left behind by a killed run: neither complete nor explained.
    let mut r = result();
    r.complete = false;
    let j = judge(&r);
    assert_eq!(j.exit_code(), 1);
    assert!(matches!(j.status, Status::Error(_)));
    assert_exports_agree(&r);
}

#[test]
fn a_device_write_that_does_not_land_differs_even_where_the_pin_is_as_expected() {
    let mut r = result();
    let mut cell = probe("rw", "ok", Some("ok"), Verdict::AsExpected);
    cell.device_io = Some("mismatch(write-not-visible: 4077 of 4096 bytes differ)".into());
    let mut fine = probe("rw", "ok", Some("ok"), Verdict::AsExpected);
    fine.device_io = Some("ok".into());
    r.probe = vec![cell, fine];
    let j = judge(&r);
    assert_eq!(j.status, Status::Differs);
    let differs: Vec<_> = j
        .facts
        .iter()
        .filter(|f| f.verdict == Verdict::Differs)
        .collect();
    assert_eq!(differs.len(), 1, "{differs:#?}");
    assert!(
        differs[0].name.ends_with("device_io"),
        "{:?}",
        differs[0].name
    );
    assert_eq!(j.exit_code(), 3);
    assert_exports_agree(&r);
}

#[test]
fn a_device_transfer_that_never_completed_is_a_blocked_operation_and_differs() {
    let mut r = result();
    let mut cell = probe("rw", "ok", Some("ok"), Verdict::AsExpected);
    cell.device_io =
        Some("blocked(READ_FIXED: no completion in 30 s; cancelled, then res -125)".into());
    let mut refused = probe("rw", "ok", Some("ok"), Verdict::AsExpected);
    refused.device_io = Some("EFAULT".into());
    r.probe = vec![cell, refused];
    let j = judge(&r);
    assert_eq!(j.status, Status::Differs);
    let d: Vec<_> = j
        .facts
        .iter()
        .filter(|f| f.name.ends_with("device_io"))
        .collect();
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].verdict, Verdict::Differs, "{d:#?}");
    // A refusal is the device's to make: measured, not judged.
    assert_eq!(d[1].verdict, Verdict::NoExpectation, "{d:#?}");
    assert_eq!(j.exit_code(), 3);
    assert_exports_agree(&r);
}

/// A bench row as results before bench cells were judged wrote it: no `errors`,
/// `baseline_errors`, `dax`, `expected`, `verdict` or `expected_because`.
const OLD_BENCH_ROW: &str = r#"{"pin": "io_uring", "backing": "anon", "fs": "anon",
    "map": "private", "access": "rw", "size": 2097152, "op": "cycle", "threads": 1,
    "outcome": "ok", "reason": null, "ops_per_sec": 20000.0, "ns_per_4k_page": 88.0,
    "baseline_p50_ns": 45000, "overhead_pct": 0.4, "histogram": null,
    "baseline_histogram": null}"#;

#[test]
fn bench_rows_of_older_results_load_and_their_cells_are_facts_without_expectation() {
    let row: BenchRow = serde_json::from_str(OLD_BENCH_ROW).unwrap();
    assert!(row.errors.is_empty() && row.verdict.is_none());
    let mut r = result();
    r.bench = vec![
        BenchRow {
            op: "register".into(),
            ..row.clone()
        },
        row,
    ];
    let j = judge(&r);
    let bench: Vec<_> = j
        .facts
        .iter()
        .filter(|f| f.class == FactClass::Bench)
        .collect();
    assert_eq!(
        bench.len(),
        1,
        "one fact per cell, from its cycle row: {bench:?}"
    );
    assert_eq!(bench[0].name, "bench io_uring anon private rw 2M (anon)");
    assert_eq!(bench[0].verdict, Verdict::NoExpectation);
    assert_eq!(j.status, Status::AsExpected);
}

/// The benchmark judged the cell when it ran (a failed call made the outcome `EFAULT`, the
/// rule says `ok`): the run's verdict, its exit status and every exporter see it differ.
#[test]
fn a_bench_cell_judged_differing_makes_the_run_differ_in_every_reader() {
    let mut row: BenchRow = serde_json::from_str(OLD_BENCH_ROW).unwrap();
    row.outcome = "EFAULT".into();
    row.errors = BTreeMap::from([("EFAULT".to_string(), 3)]);
    row.expected = Some("ok".into());
    row.verdict = Some(Verdict::Differs);
    row.expected_because = Some("planted rule".into());
    let mut r = result();
    r.bench = vec![row];
    let j = judge(&r);
    let fact = j
        .facts
        .iter()
        .find(|f| f.class == FactClass::Bench)
        .unwrap();
    assert_eq!(fact.verdict, Verdict::Differs);
    assert_eq!(fact.measured, "EFAULT");
    assert_eq!(fact.note.as_deref(), Some("failed calls: EFAULT x3"));
    assert_eq!(j.exit_code(), 3);
    assert_exports_agree(&r);
}

#[test]
fn a_count_split_by_operation_is_judged_part_by_part_by_the_rules_for_each_operation() {
    let exp = Expectations::parse(
        r#"
[[oracle]]
oracle = ["diverged", "moved"]
max = 0
why = "the pin sees what the process sees"
[[oracle]]
oracle = "diverged"
op = ["madvise-dontneed", "madvise-remove"]
map = "shared"
why = "by design"
"#,
        "t.toml",
    )
    .unwrap();
    let k = KernelRelease::parse("6.18.0").unwrap();
    let fact = |s: &StormResult, name: &str| {
        judge_storm(&exp, s, &k, None)
            .into_iter()
            .find(|f| f.fact == name)
            .unwrap()
    };
    let with = |parts: &[(&str, u64)]| {
        let mut s = storm("anon", "anon", 0);
        s.oracle.diverged = OracleFinding {
            count: parts.iter().map(|p| p.1).sum(),
            by_op: parts.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
            ..OracleFinding::default()
        };
        s
    };
    // Only the by-design operation: as expected, and the count stays the measured value.
    let f = fact(&with(&[("madvise-dontneed", 7)]), "diverged");
    assert_eq!((f.verdict, f.measured.as_str()), (Verdict::AsExpected, "7"));
    assert!(
        f.expected
            .as_deref()
            .unwrap()
            .contains("madvise-dontneed: any"),
        "{f:?}"
    );
    // Several operations on the page, one of them by design: explained.
    let f = fact(&with(&[("fork-cow+madvise-remove", 2)]), "diverged");
    assert_eq!(f.verdict, Verdict::AsExpected, "{f:?}");
    // A part no rule explains differs, whatever the other parts are.
    let f = fact(
        &with(&[("madvise-dontneed", 7), ("fork-cow", 1)]),
        "diverged",
    );
    assert_eq!(f.verdict, Verdict::Differs, "{f:?}");
    assert!(
        f.why.as_deref().unwrap().contains("fork-cow 1 (differs)"),
        "{f:?}"
    );
    let f = fact(&with(&[("none", 1)]), "diverged");
    assert_eq!(f.verdict, Verdict::Differs);
    // On a private mapping the by-design rule does not match: dontneed differs there.
    let mut s = with(&[("madvise-dontneed", 3)]);
    s.map = "private".into();
    assert_eq!(fact(&s, "diverged").verdict, Verdict::Differs);
    // Without a split, a rule with `op` never judges the whole count.
    let f = fact(&storm("anon", "anon", 0), "diverged");
    assert_eq!(
        (f.verdict, f.expected.as_deref()),
        (Verdict::AsExpected, Some("0"))
    );
}
