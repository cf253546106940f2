//! What `compare` does with runs whose machine was disturbed, on copies of a real result
//! with planted disturbance records (the real sampler is tested against a busy process in
//! `runners/src/disturbance/tests.rs`; genuine reruns in tests/analysis.rs).

mod common;

use std::path::Path;

use common::results::*;
use common::*;

#[test]
fn a_disturbed_side_is_named_and_not_judged_unless_asked_and_unrecorded_ones_are_unknown() {
    let sb = Sandbox::new("an-disturbed");
    let real = read(&real_run(
        &sb,
        &[
            "bench",
            "pin",
            "--backings",
            "anon",
            "--sizes",
            "4K",
            "--iterations",
            "300",
            "--max-time",
            "300ms",
            "--no-baseline",
        ],
    ));
    // The real run's machine, whatever it was, is replaced by planted records: a quiet base
    // and a candidate twice as slow while another process used 61% of a CPU, as in the
    // hugetlbfs incident of #12.
    let dir = sb.base.join("planted");
    let base = write(&dir, &with_disturbance(&real, 3.0));
    let cand = write(&dir, &with_disturbance(&planted_2x(&real), 61.0));

    let (code, v, err) = compare_json(&sb, &base, &cand, &["p50>+50%"]);
    assert_eq!(code, Some(5), "inconclusive: {err}\n{v:#}");
    assert_eq!(v["base"]["noise"]["quiet"], 1, "{:#}", v["base"]["noise"]);
    assert_eq!(
        v["cand"]["noise"]["disturbed"], 1,
        "{:#}",
        v["cand"]["noise"]
    );
    let g = &v["gates"][0];
    assert_eq!(
        (g["inconclusive"].clone(), g["judged"].clone()),
        (true.into(), 0.into()),
        "{g:#}"
    );
    let why = format!(
        "cand run {}: bench job: other processes used 61% of a CPU (threshold 20%)",
        read(&cand).run_id
    );
    assert_eq!(g["disturbed_by"][0], why.as_str(), "{g:#}");
    assert!(err.contains(&why) && err.contains("exit 5"), "{err}");
    // Another gate that fails (a bench has no oracle: `lost_write>0` judged nothing)
    // outranks the inconclusive one.
    let (code, v, _) = compare_json(&sb, &base, &cand, &["p50>+50%", "lost_write>0"]);
    assert_eq!(code, Some(4), "{:#}", v["gates"]);
    assert_eq!(v["gate_status"], "failed");

    // The text shows both sides' machines and the gate that was not judged.
    let o = sb
        .cmd()
        .arg("compare")
        .arg(&base)
        .arg(&cand)
        .args(["--fail-on", "p50>+50%"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.contains("Machine while measuring"), "{t}");
    assert!(t.contains(": quiet: other processes 3.0% of a CPU"), "{t}");
    assert!(
        t.contains(": DISTURBED: bench job: other processes used 61%"),
        "{t}"
    );
    assert!(t.contains("slower (disturbed)"), "{t}");
    assert!(t.contains("INCONCLUSIVE p50>+50%"), "{t}");

    // Asked to, it judges them: the doubling crosses the gate.
    let (code, v, err) =
        compare_json_with(&sb, &base, &cand, &["p50>+50%"], &["--judge-disturbed"]);
    assert_eq!(code, Some(4), "{err}\n{:#}", v["gates"]);
    assert_eq!(v["gates"][0]["crossed"], true);
    assert_eq!(v["gates"][0]["disturbed_judged"], true);

    // Results written before disturbance was recorded load, are judged as measured, and are
    // shown as unknown, not quiet.
    let strip = |p: &Path| {
        let mut j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        j.as_object_mut().unwrap().remove("disturbance");
        std::fs::write(p, j.to_string()).unwrap();
    };
    strip(&base);
    strip(&cand);
    let (code, v, err) = compare_json(&sb, &base, &cand, &["p50>+50%"]);
    assert_eq!(code, Some(4), "judged: {err}\n{v:#}");
    assert_eq!(
        v["cand"]["noise"]["not_recorded"], 1,
        "{:#}",
        v["cand"]["noise"]
    );
    assert!(
        v["latency"][0]["noise_unknown"][0]
            .as_str()
            .is_some_and(|u| u.starts_with("base run ")),
        "{:#}",
        v["latency"][0]
    );
    let o = sb
        .cmd()
        .arg("compare")
        .arg(&base)
        .arg(&cand)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("not recorded"), "{}", stdout(&o));
}
