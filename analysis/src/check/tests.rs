use super::*;
use crate::hist::Latency;
use crate::schema::*;

fn probe(backing: &str, map: &str, access: &str, outcome: &str) -> ProbeRow {
    ProbeRow {
        pin: "io_uring".into(),
        backing: backing.into(),
        fs: backing.into(),
        map: map.into(),
        access: access.into(),
        size: 2 << 20,
        outcome: outcome.into(),
        reason: (outcome == "notrun").then(|| "no DAX directory given".into()),
        dax: None,
        device_io: None,
        expected: None,
        verdict: if outcome == "notrun" {
            Verdict::NotRun
        } else {
            Verdict::NoExpectation
        },
        expected_because: None,
    }
}

fn bench(backing: &str, op: &str, outcome: &str, p50_ns: u64) -> BenchRow {
    let hist = (outcome == "ok").then(|| {
        let mut l = Latency::new();
        for _ in 0..100 {
            l.record(p50_ns);
        }
        l.encode()
    });
    BenchRow {
        pin: "io_uring".into(),
        backing: backing.into(),
        fs: backing.into(),
        map: "shared".into(),
        access: "rw".into(),
        size: 2 << 20,
        op: op.into(),
        threads: 1,
        outcome: outcome.into(),
        reason: (outcome != "ok").then(|| "planted".into()),
        stats: None,
        ops_per_sec: None,
        ns_per_4k_page: None,
        baseline_p50_ns: None,
        overhead_pct: None,
        histogram: hist,
        baseline_histogram: None,
        errors: Default::default(),
        baseline_errors: Default::default(),
        dax: None,
        expected: None,
        verdict: None,
        expected_because: None,
    }
}

/// A storm and its judged facts, as a run stores them.
fn storm(r: &mut RunResult, backing: &str, lost: u64, lost_notrun: Option<&str>) {
    let s = StormResult {
        pin: "io_uring".into(),
        backing: backing.into(),
        fs: backing.into(),
        map: "shared".into(),
        outcome: "ok".into(),
        reason: None,
        dax: None,
        pinners: 1,
        disruptors: 1,
        file_size: 2 << 20,
        hold_ns: 1,
        duration_ms: 1,
        seed: 1,
        totals: StormTotals::default(),
        register: None,
        register_histogram: None,
        layout_ops: vec![],
        timeline: vec![],
        oracle: Oracle {
            lost_write: OracleFinding {
                count: lost,
                notrun: lost_notrun.map(str::to_string),
                ..OracleFinding::default()
            },
            ..Oracle::default()
        },
        sequence_head: vec![],
        control: false,
        shapes: vec![],
        shapes_notrun: vec![],
        placement: vec![],
    };
    let exp = crate::expect::Expectations::parse("", "none.toml").unwrap();
    let k = crate::kernel::KernelRelease::parse("6.18.0").unwrap();
    for fact in verdict::judge_storm(&exp, &s, &k, None) {
        r.storm_verdicts.push(StormVerdict {
            pin: s.pin.clone(),
            backing: s.backing.clone(),
            map: s.map.clone(),
            control: false,
            fact,
        });
    }
    r.storms.push(s);
}

fn run() -> RunResult {
    let mut r = crate::schema::planted();
    r.probe = vec![
        probe("xfs", "shared", "rw", "EFAULT"),
        probe("xfs", "private", "rw", "ok"),
        probe("xfs-dax", "shared", "rw", "notrun"),
    ];
    r.bench = vec![
        bench("anon", "register", "ok", 40_000),
        bench("devdax", "register", "notrun", 0),
        bench("xfs", "register", "EFAULT", 0),
    ];
    storm(&mut r, "tmpfs", 7, None);
    storm(&mut r, "anon", 0, Some("no canary memory"));
    r
}

fn exit(exprs: &[&str], r: &RunResult) -> (u8, Report) {
    let checks: Vec<Check> = exprs.iter().map(|e| Check::parse(e).unwrap()).collect();
    let report = evaluate(&checks, &subjects_by_release(&[r]));
    (report.exit_code(), report)
}

#[test]
fn a_probe_check_that_holds_exits_0_and_one_that_fails_exits_1() {
    let r = run();
    let (code, rep) = exit(&["io_uring:xfs:shared:rw=EFAULT"], &r);
    assert_eq!(code, EXIT_GOOD, "{}", rep.render());
    assert_eq!(exit(&["io_uring:xfs:shared:rw=ok|EFAULT"], &r).0, EXIT_GOOD);
    assert_eq!(exit(&["io_uring:xfs:shared:rw!=ok"], &r).0, EXIT_GOOD);
    assert_eq!(exit(&["io_uring:xfs:shared:rw=efault"], &r).0, EXIT_GOOD);
    let (code, rep) = exit(&["io_uring:xfs:shared:rw=ok"], &r);
    assert_eq!(code, EXIT_BAD);
    let text = rep.render();
    assert!(
        text.contains("check io_uring:xfs:shared:rw=ok on 6.18.0: FAILS: measured EFAULT"),
        "{text}"
    );
    assert!(text.contains("exit status 1 (git bisect: bad)"), "{text}");
    assert_eq!(exit(&["io_uring:xfs:shared:rw!=EFAULT"], &r).0, EXIT_BAD);
}

#[test]
fn a_notrun_cell_or_one_no_result_has_exits_125() {
    let r = run();
    let (code, rep) = exit(&["io_uring:xfs-dax:shared:rw=EFAULT"], &r);
    assert_eq!(code, EXIT_SKIP);
    assert!(
        rep.render().contains("did not run: no DAX directory given"),
        "{}",
        rep.render()
    );
    let (code, rep) = exit(&["io_uring:btrfs:shared:rw=ok"], &r);
    assert_eq!(code, EXIT_SKIP);
    assert!(
        rep.render().contains("no result has this cell"),
        "{}",
        rep.render()
    );
    // Nothing measured at all (no run, e.g. no kernel of the lab came back).
    let c = [Check::parse("io_uring:xfs:shared:rw=ok").unwrap()];
    assert_eq!(evaluate(&c, &[]).exit_code(), EXIT_SKIP);
}

#[test]
fn a_failure_outranks_a_cell_that_could_not_be_measured_which_outranks_holding() {
    let r = run();
    let fail = "io_uring:xfs:shared:rw=ok";
    let skip = "io_uring:xfs-dax:shared:rw=ok";
    let hold = "io_uring:xfs:private:rw=ok";
    assert_eq!(exit(&[skip, fail, hold], &r).0, EXIT_BAD);
    assert_eq!(exit(&[hold, skip], &r).0, EXIT_SKIP);
    assert_eq!(exit(&[hold], &r).0, EXIT_GOOD);
}

#[test]
fn oracle_checks_read_the_judged_storm_counts() {
    let r = run();
    assert_eq!(exit(&["lost_write@io_uring:tmpfs=7"], &r).0, EXIT_GOOD);
    assert_eq!(
        exit(&["lost_write@io_uring:tmpfs:shared<=7"], &r).0,
        EXIT_GOOD
    );
    let (code, rep) = exit(&["lost_write@io_uring:tmpfs=0"], &r);
    assert_eq!(code, EXIT_BAD);
    assert!(
        rep.render().contains("shared lost_write measured 7"),
        "{}",
        rep.render()
    );
    // The oracle could not judge on anon: skip, with its reason.
    let (code, rep) = exit(&["lost_write@io_uring:anon=0"], &r);
    assert_eq!(code, EXIT_SKIP);
    assert!(
        rep.render().contains("no canary memory"),
        "{}",
        rep.render()
    );
    // No storm on xfs, or one on the other mapping only.
    assert_eq!(exit(&["lost_write@io_uring:xfs=0"], &r).0, EXIT_SKIP);
    assert_eq!(
        exit(&["lost_write@io_uring:tmpfs:private=0"], &r).0,
        EXIT_SKIP
    );
    // A storm that did not run at all.
    let mut r2 = run();
    r2.storms[0].outcome = "notrun".into();
    r2.storms[0].reason = Some("no reflink".into());
    r2.storm_verdicts.retain(|v| v.backing != "tmpfs");
    let (code, rep) = exit(&["lost_write@io_uring:tmpfs=0"], &r2);
    assert_eq!(code, EXIT_SKIP);
    assert!(rep.render().contains("no reflink"), "{}", rep.render());
}

#[test]
fn latency_checks_read_the_benchmark_histograms() {
    let r = run();
    assert_eq!(
        exit(&["p50(io_uring:anon:2M:register)<50us"], &r).0,
        EXIT_GOOD
    );
    assert_eq!(
        exit(&["p50(io_uring:anon:shared:rw:2M:register)<50us"], &r).0,
        EXIT_GOOD
    );
    let (code, rep) = exit(&["p50(io_uring:anon:2M:register)<30us"], &r);
    assert_eq!(code, EXIT_BAD);
    assert!(rep.render().contains("p50 40."), "{}", rep.render());
    assert_eq!(
        exit(&["p99(io_uring:anon:2M:register)>=0.03ms"], &r).0,
        EXIT_GOOD
    );
    // Not run: skip; refused by the kernel: measured, and no latency holds the bound.
    assert_eq!(
        exit(&["p50(io_uring:devdax:2M:register)<50us"], &r).0,
        EXIT_SKIP
    );
    let (code, rep) = exit(&["p50(io_uring:xfs:2M:register)<50us"], &r);
    assert_eq!(code, EXIT_BAD);
    assert!(
        rep.render().contains("stopped on EFAULT"),
        "{}",
        rep.render()
    );
    // Another size, or another mapping: not in the run.
    assert_eq!(
        exit(&["p50(io_uring:anon:4K:register)<50us"], &r).0,
        EXIT_SKIP
    );
    assert_eq!(
        exit(&["p50(io_uring:anon:private:rw:2M:register)<50us"], &r).0,
        EXIT_SKIP
    );
}

#[test]
fn a_guest_that_panicked_or_a_kernel_without_result_cannot_be_judged() {
    let mut r = run();
    r.lab = Some(LabRecord {
        status: "panic".into(),
        reason: Some("the guest kernel panicked (console line 7):\n...".into()),
        ..LabRecord::default()
    });
    let (code, rep) = exit(&["io_uring:xfs:shared:rw=ok"], &r);
    assert_eq!(code, EXIT_SKIP, "even a check its result would fail");
    assert!(
        rep.render()
            .contains("the lab guest ended panic: the guest kernel panicked"),
        "{}",
        rep.render()
    );
    r.lab.as_mut().unwrap().status = "ok".into();
    assert_eq!(exit(&["io_uring:xfs:shared:rw=ok"], &r).0, EXIT_BAD);

    let c = [Check::parse("io_uring:xfs:shared:rw=EFAULT").unwrap()];
    let good = run();
    let subjects = [
        Subject {
            name: "deb:6.12".into(),
            runs: vec![&good],
            missing: vec![],
        },
        Subject {
            name: "tree:/src/linux".into(),
            runs: vec![],
            missing: vec!["setup-error: the build failed".into()],
        },
    ];
    let rep = evaluate(&c, &subjects);
    assert_eq!(rep.exit_code(), EXIT_SKIP);
    assert!(
        rep.render()
            .contains("on tree:/src/linux: cannot be judged: setup-error: the build failed"),
        "{}",
        rep.render()
    );
}

#[test]
fn a_fact_is_judged_in_whichever_run_of_the_kernel_measured_it() {
    let with = run();
    let mut without = crate::schema::planted();
    without.run_id = "other".into();
    let c = [Check::parse("io_uring:xfs:shared:rw=EFAULT").unwrap()];
    let subjects = subjects_by_release(&[&without, &with]);
    assert_eq!(subjects.len(), 1, "one kernel");
    assert_eq!(evaluate(&c, &subjects).exit_code(), EXIT_GOOD);
    // Two kernels: each is judged, and one that fails makes the whole bad.
    let mut old = run();
    old.environment.kernel_release = "6.1.0".into();
    old.probe[0].outcome = "ok".into();
    let rep = evaluate(&c, &subjects_by_release(&[&old, &with]));
    assert_eq!(rep.exit_code(), EXIT_BAD);
    assert_eq!(rep.findings.len(), 2);
}

#[test]
fn bad_expressions_are_refused_naming_the_expression_and_the_forms() {
    for (expr, says) in [
        ("io_uring:xfs:shared=ok", "4 fields"),
        ("io_uring:xfs:shared:rw", "no comparison"),
        ("io_uring:xfs:shared:rw<ok", "= or !="),
        (
            "io_uring:xfs:sharde:rw=ok",
            "\"sharde\" is not shared or private",
        ),
        ("io_uring:xfs:shared:wr=ok", "\"wr\" is not rw or ro"),
        ("io_uring:xfs:shared:rw=fine", "not ok or an errno"),
        ("io_uring:xfs:shared:rw=notrun", "exit 125"),
        ("io uring:xfs:shared:rw=ok", "not a pin path"),
        ("lost_writes@io_uring:xfs=0", "not a storm oracle"),
        ("lifecycle@io_uring:xfs=0", "not a storm oracle"),
        ("lost_write@io_uring=0", "PIN:BACKING or PIN:BACKING:MAP"),
        ("lost_write@io_uring:xfs=-1", "whole number"),
        ("p42(io_uring:anon:2M:register)<5us", "not a quantile"),
        ("p50(io_uring:anon:2M:register<5us", "no ')'"),
        ("p50(io_uring:anon:2M:register)=5us", "<, <=, > or >="),
        ("p50(io_uring:anon:2M:register)<5", "duration with a unit"),
        ("p50(io_uring:anon:2Q:register)<5us", "not a size"),
        ("p50(io_uring:anon:register)<5us", "PIN:BACKING:SIZE:OP"),
    ] {
        let e = format!("{:#}", Check::parse(expr).unwrap_err());
        assert!(e.contains(says), "{expr}: {e}");
        assert!(e.contains(&format!("--check {expr:?}")), "{expr}: {e}");
        assert!(e.contains("the forms are"), "{expr}: {e}");
    }
}

#[test]
fn checks_name_their_pin_and_backing_for_the_command_line_to_verify() {
    for (expr, pin, backing) in [
        ("io_uring:xfs-dax:shared:rw=ok", "io_uring", "xfs-dax"),
        ("lost_write@vmsplice:tmpfs=0", "vmsplice", "tmpfs"),
        ("p50(rdma:devdax:2M:register)<50us", "rdma", "devdax"),
    ] {
        assert_eq!(
            Check::parse(expr).unwrap().pin_and_backing(),
            (pin, backing),
            "{expr}"
        );
    }
}

#[test]
fn sizes_and_durations_parse_with_their_units() {
    assert_eq!(parse_size("4K").unwrap(), 4096);
    assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
    assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("0").is_err());
    assert!(parse_size("99999999999G").is_err());
    assert_eq!(parse_duration("850ns").unwrap(), 850.0);
    assert_eq!(parse_duration("50us").unwrap(), 50_000.0);
    assert_eq!(parse_duration("50µs").unwrap(), 50_000.0);
    assert_eq!(parse_duration("1.5ms").unwrap(), 1_500_000.0);
    assert_eq!(parse_duration("2s").unwrap(), 2e9);
    assert!(parse_duration("-1us").is_err());
    assert!(parse_duration("fast").is_err());
}
