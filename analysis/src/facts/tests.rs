use std::collections::BTreeMap;

use super::*;
use crate::catalog::{parse_result, Catalog};
use crate::disturbance::SideNoise;
use crate::hist::Sparse;

/// A real result (a `fuzz-seed` run on 6.18.44: benchmark rows, a storm, lease breaks and
/// lease-check overhead), as the fuzzers start from it.
const REAL: &str = include_str!("../../../fuzz/corpus/result/real-run.json");

fn real() -> RunResult {
    parse_result(REAL.as_bytes()).unwrap()
}

#[test]
fn facts_hold_what_analysis_reads_of_the_whole_result() {
    let r = real();
    let path = Path::new("/results/6.18.44/run/result.json");
    let f = RunFacts::of(path, &r).unwrap();

    let full = metrics::latencies(&r);
    let kinds: std::collections::BTreeSet<&str> = full.iter().map(|l| l.kind).collect();
    assert!(
        ["pin", "storm-pin", "lease-break", "lease-check"]
            .iter()
            .all(|k| kinds.contains(k)),
        "the real result measures every kind but layout-op: {kinds:?}"
    );
    assert_eq!(f.latencies.len(), full.len());
    for (s, l) in f.latencies.iter().zip(&full) {
        assert_eq!((s.kind, &s.key), (l.kind, &l.key));
        assert_eq!(s.hist, Sparse::of(&l.hist), "{}", l.key);
    }
    assert_eq!(f.cells, metrics::cells(&r));
    assert_eq!(
        f.violations().collect::<BTreeMap<_, _>>(),
        metrics::violations(&r)
    );
    for k in OracleKind::VIOLATIONS {
        assert_eq!(f.oracle_count(k), r.oracle_count(k), "{k}");
        assert_eq!(f.oracle_ran(k), r.oracle_ran(k), "{k}");
    }
    assert!(f.judged > 0);
    assert_eq!(
        (f.differs, f.judged),
        (metrics::differs(&r), metrics::judged(&r))
    );
    assert_eq!(f.notrun, metrics::notrun(&r));
    let storms: Vec<_> = r.storms.iter().filter(|s| s.outcome == "ok").collect();
    assert!(!storms.is_empty());
    assert_eq!(f.timelines.len(), storms.len());
    for ((cell, points), s) in f.timelines.iter().zip(storms) {
        assert_eq!(*cell, s.cell());
        let want: Timeline = s
            .timeline
            .iter()
            .map(|p| (p.second, p.registrations, p.layout_ops))
            .collect();
        assert_eq!(*points, want);
    }
    assert_eq!(SideNoise::of([&f]), SideNoise::of([&r]));
    assert_eq!(f.reference.run_id, r.run_id);
    assert_eq!(f.reference.path, path.display().to_string());
    assert_eq!(
        f.environment[0],
        ("result file", path.display().to_string())
    );
    assert!(f
        .environment
        .iter()
        .any(|(k, v)| *k == "kernel" && v.contains(&r.environment.kernel_release)));
}

#[test]
fn a_histogram_that_does_not_decode_refuses_the_facts_as_it_refuses_the_whole_result() {
    let mut r = real();
    r.bench[1].histogram = Some("AAAA".into());
    let bytes = serde_json::to_vec(&r).unwrap();
    let whole = format!("{:#}", parse_result(&bytes).unwrap_err());
    let facts = format!("{:#}", RunFacts::of(Path::new("/r.json"), &r).unwrap_err());
    assert_eq!(facts, whole);
    assert!(
        facts.starts_with("bench[1].histogram does not decode"),
        "{facts}"
    );
}

#[test]
fn facts_catalogs_load_and_skip_the_same_files_as_whole_ones() {
    let d = std::env::temp_dir().join(format!("pinstorm-facts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let write = |sub: &str, text: &str| {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        std::fs::write(d.join(sub).join("result.json"), text).unwrap();
    };
    let r = real();
    write("a", REAL);
    // The same run again, a second run, a result with a broken histogram, a half file.
    write("b", REAL);
    let mut other = r.clone();
    other.run_id.push_str("-other");
    other.label = Some("other".into());
    write("c", &serde_json::to_string(&other).unwrap());
    let mut broken = r.clone();
    broken.run_id.push_str("-broken");
    broken.storms[0].register_histogram = Some("not a histogram".into());
    write("d", &serde_json::to_string(&broken).unwrap());
    write("e", &REAL[..REAL.len() / 2]);

    let whole = Catalog::load(std::slice::from_ref(&d)).unwrap();
    let facts = Catalog::load_facts(std::slice::from_ref(&d)).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    let ids = |runs: Vec<(&str, &PathBuf)>| -> Vec<(String, PathBuf)> {
        runs.into_iter()
            .map(|(id, p)| (id.to_string(), p.clone()))
            .collect()
    };
    assert_eq!(
        ids(facts.runs.iter().map(|r| (r.run_id(), &r.path)).collect()),
        ids(whole.runs.iter().map(|r| (r.run_id(), &r.path)).collect())
    );
    assert_eq!(facts.runs.len(), 2);
    assert_eq!(facts.skipped, whole.skipped);
    assert_eq!(facts.skipped.len(), 3, "{:?}", facts.skipped);
    assert!(facts.skipped.iter().any(|s| s
        .reason
        .contains("storms[0].register_histogram does not decode")));
    assert_eq!(
        facts
            .groups()
            .iter()
            .map(|(g, runs)| (g.clone(), runs.len()))
            .collect::<Vec<_>>(),
        whole
            .groups()
            .iter()
            .map(|(g, runs)| (g.clone(), runs.len()))
            .collect::<Vec<_>>()
    );
}
