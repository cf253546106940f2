use std::path::PathBuf;

use super::*;
use crate::hist::Latency;
use crate::schema::*;

fn probe(backing: &str, outcome: &str, verdict: Verdict) -> ProbeRow {
    ProbeRow {
        pin: "io_uring".into(),
        backing: backing.into(),
        fs: backing.into(),
        map: "shared".into(),
        access: "rw".into(),
        size: 2 << 20,
        outcome: outcome.into(),
        reason: (outcome == "notrun").then(|| "no --dax-dir xfs=DIR given".into()),
        dax: None,
        device_io: None,
        expected: (verdict.is_judged()).then(|| "EFAULT".into()),
        verdict,
        expected_because: verdict.is_judged().then(|| "planted rule".into()),
    }
}

fn bench() -> BenchRow {
    let mut l = Latency::new();
    for _ in 0..50 {
        l.record(40_000);
    }
    BenchRow {
        pin: "io_uring".into(),
        backing: "anon".into(),
        fs: "anon".into(),
        map: "shared".into(),
        access: "rw".into(),
        size: 2 << 20,
        op: "register".into(),
        threads: 1,
        outcome: "ok".into(),
        reason: None,
        stats: None,
        ops_per_sec: None,
        ns_per_4k_page: None,
        baseline_p50_ns: None,
        overhead_pct: None,
        histogram: Some(l.encode()),
        baseline_histogram: None,
        errors: Default::default(),
        baseline_errors: Default::default(),
        dax: None,
        expected: None,
        verdict: None,
        expected_because: None,
    }
}

fn run(id: &str) -> RunResult {
    let mut r = crate::schema::planted();
    r.run_id = id.into();
    r.environment.machine = "x86_64".into();
    r.environment.hostname = "box".into();
    r.environment.kernel_version = "#1 SMP PREEMPT_DYNAMIC Debian 6.18.0-1".into();
    r.label = Some("gup-v3".into());
    r.probe = vec![
        probe("xfs", "EFAULT", Verdict::AsExpected),
        probe("tmpfs", "ok", Verdict::Differs),
        probe("xfs-dax", "notrun", Verdict::NotRun),
        probe("memfd", "ok", Verdict::NoExpectation),
    ];
    r.bench = vec![bench()];
    r
}

fn loaded(r: RunResult) -> LoadedRun {
    LoadedRun {
        path: PathBuf::from(format!("/r/{}/result.json", r.run_id)),
        result: r,
    }
}

fn doc(runs: Vec<RunResult>) -> Value {
    let l: Vec<LoadedRun> = runs.into_iter().map(loaded).collect();
    let refs: Vec<&LoadedRun> = l.iter().collect();
    document(&refs)
}

fn test_at<'a>(d: &'a Value, path: &str) -> &'a Value {
    d["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == path)
        .unwrap_or_else(|| panic!("no test {path} in {:#}", d["tests"]))
}

/// The schema's path pattern: `^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$`.
fn valid_path(p: &str) -> bool {
    p.split('.').all(|c| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    })
}

#[test]
fn every_fact_is_a_test_whose_status_keeps_fail_skip_done_and_error_apart() {
    let d = doc(vec![run("r1")]);
    assert_eq!(d["version"], json!({"major": 5, "minor": 3}));
    let t = test_at(&d, "pinstorm.probe.io_uring.xfs.shared.rw");
    assert_eq!(t["status"], "PASS");
    assert_eq!(t["comment"], "measured EFAULT");
    let t = test_at(&d, "pinstorm.probe.io_uring.tmpfs.shared.rw");
    assert_eq!(t["status"], "FAIL", "measured but different");
    assert!(t["comment"]
        .as_str()
        .unwrap()
        .contains("measured ok, expected EFAULT"));
    let t = test_at(&d, "pinstorm.probe.io_uring.xfs-dax.shared.rw");
    assert_eq!(t["status"], "SKIP");
    assert_eq!(t["comment"], "notrun: no --dax-dir xfs=DIR given");
    assert_eq!(
        test_at(&d, "pinstorm.probe.io_uring.memfd.shared.rw")["status"],
        "DONE",
        "measured without an expectation: a measurement, not a verdict"
    );
    assert_eq!(test_at(&d, "pinstorm.run")["status"], "PASS");

    let mut broken = run("r2");
    broken.complete = false;
    broken.error = Some("no space left on device".into());
    let d = doc(vec![broken]);
    let t = test_at(&d, "pinstorm.run");
    assert_eq!(t["status"], "ERROR", "a tool error is not a kernel failure");
    assert!(t["log_excerpt"]
        .as_str()
        .unwrap()
        .contains("no space left on device"));
}

#[test]
fn latencies_are_numbers_in_seconds_and_oracle_counts_carry_their_unit() {
    let mut r = run("r1");
    r.storms.push(StormResult {
        pin: "io_uring".into(),
        backing: "tmpfs".into(),
        fs: "tmpfs".into(),
        map: "shared".into(),
        outcome: "ok".into(),
        reason: None,
        dax: None,
        pinners: 1,
        disruptors: 1,
        file_size: 1,
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
                count: 3,
                ..OracleFinding::default()
            },
            ..Oracle::default()
        },
        sequence_head: vec![],
        control: false,
        shapes: vec![],
        shapes_notrun: vec![],
        placement: vec![],
    });
    let d = doc(vec![r]);
    let t = test_at(&d, "pinstorm.bench.io_uring.anon.shared.rw.2M.register.p50");
    assert_eq!(t["status"], "DONE");
    assert_eq!(t["number"]["unit"], "s");
    assert_eq!(t["number"]["prefix"], "metric");
    let v = t["number"]["value"].as_f64().unwrap();
    assert!((v - 40e-6).abs() < 0.1e-6, "{v}");
    assert!(
        test_at(&d, "pinstorm.bench.io_uring.anon.shared.rw.2M.register.p99")["number"]["value"]
            .is_number()
    );
    let t = test_at(&d, "pinstorm.storm.io_uring.tmpfs.shared.lost_write");
    assert_eq!(t["number"], json!({"value": 3, "unit": "device writes"}));
    assert_eq!(t["status"], "DONE", "no rule judged it");
}

#[test]
fn ids_are_deterministic_unique_and_prefixed_with_the_origin() {
    let a = doc(vec![run("r1"), run("r2")]);
    let b = doc(vec![run("r1"), run("r2")]);
    assert_eq!(a, b, "a re-export gives the same document");
    let tests = a["tests"].as_array().unwrap();
    let ids: BTreeSet<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), tests.len(), "test ids are unique");
    assert!(ids.contains("pinstorm:r1:pinstorm.probe.io_uring.xfs.shared.rw"));
    for t in tests {
        assert!(valid_path(t["path"].as_str().unwrap()), "{}", t["path"]);
        assert_eq!(t["origin"], "pinstorm");
        assert!(t["id"].as_str().unwrap().starts_with("pinstorm:"));
    }
    // Two runs of one kernel: one checkout and one build, which every test points at.
    assert_eq!(a["checkouts"].as_array().unwrap().len(), 1);
    assert_eq!(a["builds"].as_array().unwrap().len(), 1);
    let build = &a["builds"][0];
    assert_eq!(build["checkout_id"], a["checkouts"][0]["id"]);
    assert_eq!(build["architecture"], "x86_64");
    assert!(tests.iter().all(|t| t["build_id"] == build["id"]));
    assert_eq!(a["checkouts"][0]["id"], "pinstorm:6.18.0@gup-v3");
    // Another kernel release: its own checkout and build.
    let mut other = run("r3");
    other.environment.kernel_release = "6.1.0-56-amd64".into();
    let c = doc(vec![run("r1"), other]);
    assert_eq!(c["checkouts"].as_array().unwrap().len(), 2);
    assert_eq!(c["builds"].as_array().unwrap().len(), 2);
}

#[test]
fn a_lab_guest_has_a_boot_test_with_its_console_events_and_a_built_tree_its_commit() {
    let mut r = run("r1");
    r.lab = Some(LabRecord {
        kernel_spec: "tree:/src/linux".into(),
        kernel_source: vec![
            "tree:/src/linux (built by --build)".into(),
            format!("git:{}", "a".repeat(40)),
        ],
        status: "panic".into(),
        reason: Some("the guest kernel panicked (console line 7):\n[ 1.0] Kernel panic".into()),
        accel: "tcg".into(),
        console_events: vec![ConsoleEvent {
            kind: "panic".into(),
            line: 7,
            text: "Kernel panic - not syncing: sysrq\0 triggered crash".into(),
        }],
        wall_seconds: 31.5,
        ..LabRecord::default()
    });
    let d = doc(vec![r.clone()]);
    let t = test_at(&d, "pinstorm.boot");
    assert_eq!(t["status"], "FAIL");
    let log = t["log_excerpt"].as_str().unwrap();
    assert!(log.contains("console.log:7: [panic] Kernel panic"), "{log}");
    assert!(!log.contains('\0'), "NULs are replaced");
    assert_eq!(t["duration"], 31.5);
    assert_eq!(d["checkouts"][0]["git_commit_hash"], "a".repeat(40));
    assert!(d["checkouts"][0]["id"]
        .as_str()
        .unwrap()
        .ends_with(&format!("#{}", "a".repeat(40))));

    for (status, events, want) in [
        ("ok", vec![], "PASS"),
        ("ok", vec!["warning"], "FAIL"),
        ("oops", vec![], "FAIL"),
        ("timeout", vec![], "ERROR"),
        ("guest-error", vec![], "ERROR"),
        ("interrupted", vec![], "MISS"),
    ] {
        let lab = r.lab.as_mut().unwrap();
        lab.status = status.into();
        lab.console_events = events
            .iter()
            .map(|k| ConsoleEvent {
                kind: k.to_string(),
                line: 1,
                text: "WARNING: CPU: 0 PID: 1 at mm/gup.c:1 x".into(),
            })
            .collect();
        assert_eq!(
            test_at(&doc(vec![r.clone()]), "pinstorm.boot")["status"],
            want,
            "{status} {events:?}"
        );
    }
}

#[test]
fn hostile_strings_become_valid_paths_and_bounded_excerpts() {
    assert_eq!(
        test_path(&["probe", "io uring", "a.b", "", "ok/../x"]),
        "pinstorm.probe.io_uring.a_b._.ok____x"
    );
    let mut r = run("r1");
    r.complete = false;
    r.error = Some("x".repeat(40_000));
    let d = doc(vec![r]);
    let log = test_at(&d, "pinstorm.run")["log_excerpt"].as_str().unwrap();
    assert!(log.chars().count() <= EXCERPT_MAX, "{}", log.len());
    assert!(log.ends_with("cut to the KCIDB excerpt limit]"));
    // Two facts on one path get distinct, stable ids.
    let mut r = run("r1");
    let dup = r.probe[0].clone();
    r.probe.push(dup);
    let d = doc(vec![r]);
    test_at(&d, "pinstorm.probe.io_uring.xfs.shared.rw");
    test_at(&d, "pinstorm.probe.io_uring.xfs.shared.rw_2");
}
