use super::*;

#[test]
fn gates_parse_and_bad_ones_say_why() {
    for ok in [
        "p99>+10%",
        "p50[tmpfs] >= +20%",
        "violations>0",
        "lost_write>+5",
        "differs>+50%",
        "refused>0",
        "p50<-10%",
    ] {
        Gate::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        ("p99", "no comparison"),
        ("p98>+10%", "unknown metric"),
        ("p99>10", "relative change"),
        ("p99>10%", "with its sign"),
        ("refused>+1", "plain number"),
        ("violations[x]>0", "FILTER"),
        ("p99>+ten%", "not a number"),
    ] {
        let e = Gate::parse(bad).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn count_gates_compare_the_candidate_or_the_change() {
    let c = CountChange {
        what: "lost_write".into(),
        base_total: 80,
        cand_total: 90,
        base_per_run: 80.0,
        cand_per_run: 90.0,
        base_runs_measured: 1,
        cand_runs_measured: 1,
    };
    assert!(Gate::parse("lost_write>0")
        .unwrap()
        .judge_count(&c)
        .is_some());
    assert!(Gate::parse("lost_write>+5")
        .unwrap()
        .judge_count(&c)
        .is_some());
    assert!(Gate::parse("lost_write>+20")
        .unwrap()
        .judge_count(&c)
        .is_none());
    assert!(Gate::parse("lost_write>+20%")
        .unwrap()
        .judge_count(&c)
        .is_none());
    assert!(Gate::parse("lost_write>+10%")
        .unwrap()
        .judge_count(&c)
        .is_some());
}

fn strict() -> GateOptions {
    GateOptions::default()
}

/// Two runs that measured one capability cell each and nothing else.
fn probe_only_comparison() -> Comparison {
    use crate::catalog::LoadedRun;
    use crate::schema::{planted, ProbeRow};
    use crate::verdict::Verdict;
    let run = |id: &str| {
        let mut r = planted();
        r.run_id = id.into();
        r.probe.push(ProbeRow {
            pin: "io_uring".into(),
            backing: "anon".into(),
            fs: "anon".into(),
            map: "shared".into(),
            access: "rw".into(),
            size: 4096,
            outcome: "ok".into(),
            reason: None,
            dax: Some(false),
            device_io: None,
            expected: Some("ok".into()),
            verdict: Verdict::AsExpected,
            expected_because: Some("planted".into()),
        });
        LoadedRun {
            path: format!("/planted/{id}/result.json").into(),
            result: r,
        }
    };
    let (b, c) = (run("base").facts().unwrap(), run("cand").facts().unwrap());
    crate::compare::compare(
        "base",
        &[&b],
        "cand",
        &[&c],
        &crate::compare::CompareOptions::default(),
    )
}

#[test]
fn a_gate_that_matched_nothing_fails_naming_what_was_missing_unless_allowed() {
    let mut cmp = probe_only_comparison();
    let gates: Vec<Gate> = ["p50>+50%", "p90>+10%", "lost_write>0", "violations>+0"]
        .iter()
        .map(|g| Gate::parse(g).unwrap())
        .collect();
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Failed);
    assert_eq!(cmp.gate_status.exit_code(), 4);
    for (g, why) in cmp.gates.iter().zip([
        "no p50 latency metric was measured on both sides",
        "p90 was not compared (compare --stats p50,p99",
        "no run of the candidate measured lost_write (no storm ran",
        "no run of the candidate measured any oracle",
    ]) {
        assert!(g.failed && !g.crossed && g.matched == 0, "{g:?}");
        let missing = g.missing.as_deref().unwrap();
        assert!(missing.contains(why), "{}: {missing}", g.expr);
    }
    let allow = GateOptions {
        allow_empty: true,
        ..strict()
    };
    assert_eq!(apply(&mut cmp, &gates, &allow), GateStatus::Passed);
    assert!(cmp.gates.iter().all(|g| !g.failed && g.is_empty()));
}

#[test]
fn gates_that_matched_something_judge_as_before_even_when_nothing_crossed() {
    let mut cmp = probe_only_comparison();
    let gates: Vec<Gate> = ["refused>0", "outcomes>0", "differs>0"]
        .iter()
        .map(|g| Gate::parse(g).unwrap())
        .collect();
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Passed);
    for g in &cmp.gates {
        assert!(g.missing.is_none() && g.matched == 1 && !g.failed, "{g:?}");
    }
    assert_eq!(cmp.cells_compared, 1);
}

#[test]
fn gate_files_name_the_file() {
    let g = from_toml(
        "[compare]\nfail_on = [\"p50>+10%\", \"violations>+0\"]\n",
        "n.toml",
    )
    .unwrap();
    assert_eq!(g.len(), 2);
    let e = from_toml("[compare]\nfail_on = [\"p5>+10%\"]\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("n.toml") && e.contains("p5"), "{e}");
}

/// A run with one hugetlbfs benchmark cell whose latencies are `scale` times a fixed
/// spread, and (`other`: other processes' CPU in % of a CPU) a disturbance record.
fn bench_run(id: &str, scale: u64, other: Option<f64>) -> crate::catalog::LoadedRun {
    use crate::disturbance::{Disturbance, JobDisturbance, RunDisturbance};
    use crate::hist::Latency;
    use crate::schema::{planted, BenchRow};
    let mut h = Latency::new();
    for i in 0..2000u64 {
        h.record(scale * (10_000 + (i * 7919) % 2000));
    }
    let mut r = planted();
    r.run_id = id.into();
    r.bench.push(BenchRow {
        pin: "io_uring".into(),
        backing: "hugetlbfs".into(),
        fs: "hugetlbfs".into(),
        map: "shared".into(),
        access: "rw".into(),
        size: 2 << 20,
        op: "cycle".into(),
        threads: 1,
        outcome: "ok".into(),
        reason: None,
        stats: Some(h.stats()),
        ops_per_sec: None,
        ns_per_4k_page: None,
        baseline_p50_ns: None,
        overhead_pct: None,
        histogram: Some(h.encode()),
        baseline_histogram: None,
        errors: Default::default(),
        baseline_errors: Default::default(),
        dax: None,
        expected: None,
        verdict: None,
        expected_because: None,
    });
    r.disturbance = other.map(|other| {
        let d = Disturbance {
            wall_s: 10.0,
            cpus: 2,
            other_cpu_pct: other,
            resolution_pct: 0.4,
            ..Disturbance::default()
        }
        .judged();
        RunDisturbance {
            run: d.clone(),
            jobs: vec![JobDisturbance {
                ended_s: None,
                job: "bench".into(),
                measured: d,
            }],
        }
    });
    crate::catalog::LoadedRun {
        path: format!("/planted/{id}/result.json").into(),
        result: r,
    }
}

fn compared(
    base: &crate::catalog::LoadedRun,
    cand: &crate::catalog::LoadedRun,
) -> crate::compare::Comparison {
    crate::compare::compare(
        "base",
        &[&base.facts().unwrap()],
        "cand",
        &[&cand.facts().unwrap()],
        &crate::compare::CompareOptions::default(),
    )
}

#[test]
fn a_latency_gate_does_not_judge_a_disturbed_pair_and_is_inconclusive() {
    // The candidate doubled while another process used most of a CPU.
    let (base, cand) = (
        bench_run("base", 1, Some(3.0)),
        bench_run("cand", 2, Some(61.0)),
    );
    let mut cmp = compared(&base, &cand);
    assert_eq!(
        cmp.cand.noise.runs[0].state, "disturbed",
        "{:?}",
        cmp.cand.noise
    );
    assert_eq!(cmp.base.noise.quiet, 1);
    assert!(
        cmp.verdict.line.contains("measured on a disturbed machine"),
        "{}",
        cmp.verdict.line
    );
    let gates = [Gate::parse("p50>+50%").unwrap()];
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Inconclusive);
    assert_eq!(cmp.gate_status.exit_code(), EXIT_INCONCLUSIVE);
    let g = &cmp.gates[0];
    assert!(g.inconclusive && !g.crossed && !g.failed, "{g:?}");
    assert_eq!((g.matched, g.judged, g.disturbed), (1, 0, 1), "{g:?}");
    assert_eq!(
        g.disturbed_by,
        ["cand run cand: bench job: other processes used 61% of a CPU (threshold 20%)"]
    );
    // Asked to, it judges the same pair: the doubling crosses the gate.
    let judge = GateOptions {
        judge_disturbed: true,
        ..strict()
    };
    assert_eq!(apply(&mut cmp, &gates, &judge), GateStatus::Failed);
    let g = &cmp.gates[0];
    assert!(g.crossed && g.disturbed_judged && !g.inconclusive, "{g:?}");
}

#[test]
fn a_quiet_pair_is_judged_and_a_pair_without_records_is_judged_as_unknown() {
    let mut cmp = compared(
        &bench_run("base", 1, Some(3.0)),
        &bench_run("cand", 2, Some(4.0)),
    );
    let gates = [Gate::parse("p50>+50%").unwrap()];
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Failed);
    assert!(cmp
        .latency
        .iter()
        .all(|l| l.disturbed.is_empty() && l.noise_unknown.is_empty()));
    // Results from before disturbance was recorded: judged, and said to be unknown.
    let mut cmp = compared(
        &bench_run("base", 1, None),
        &bench_run("cand", 1, Some(4.0)),
    );
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Passed);
    assert_eq!(cmp.latency[0].noise_unknown, ["base run base"]);
    assert_eq!(cmp.base.noise.not_recorded, 1);
    assert_eq!(cmp.gates[0].judged, 1);
}

#[test]
fn a_failed_gate_outranks_an_inconclusive_one_and_count_gates_ignore_disturbance() {
    let r = |failed, inconclusive| GateResult {
        expr: "x".into(),
        crossed: failed,
        by: Vec::new(),
        matched: 1,
        judged: 0,
        missing: None,
        failed,
        disturbed: 1,
        disturbed_by: Vec::new(),
        disturbed_judged: false,
        inconclusive,
    };
    assert_eq!(
        GateStatus::of(&[r(false, true), r(true, false)]),
        GateStatus::Failed
    );
    assert_eq!(
        GateStatus::of(&[r(false, true), r(false, false)]),
        GateStatus::Inconclusive
    );
    assert_eq!(GateStatus::of(&[]), GateStatus::Passed);
    // A count gate on a disturbed pair judges as usual (a quick bench has no oracle to
    // count, so `differs` is what there is: no fact was judged, so it matched nothing).
    let mut cmp = compared(
        &bench_run("base", 1, Some(90.0)),
        &bench_run("cand", 2, Some(90.0)),
    );
    let gates = [Gate::parse("differs>0").unwrap()];
    assert_eq!(apply(&mut cmp, &gates, &strict()), GateStatus::Failed);
    assert!(cmp.gates[0].is_empty() && !cmp.gates[0].inconclusive);
}
