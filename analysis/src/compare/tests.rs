use super::*;
use crate::hist::Latency;

fn pooled(hs: &[Latency]) -> Pooled {
    let sparse: Vec<Sparse> = hs.iter().map(Sparse::of).collect();
    let runs: Vec<(usize, &Sparse)> = sparse.iter().enumerate().collect();
    Pooled::of(&runs, &[0.5])
}

fn lat(values: impl Iterator<Item = u64>) -> Latency {
    let mut l = Latency::new();
    for v in values {
        l.record(v);
    }
    l
}

#[test]
fn a_single_run_doubling_is_significant_and_small_shifts_are_noise() {
    let o = CompareOptions::default();
    let a = lat((0..2000).map(|i| 10_000 + (i * 7919) % 2000));
    let b2 = lat((0..2000).map(|i| 2 * (10_000 + (i * 7919) % 2000)));
    let c = latency_change(
        "pin",
        "x",
        (0, "p50"),
        &pooled(std::slice::from_ref(&a)),
        &pooled(&[b2]),
        &o,
    );
    assert!(c.significant && c.mark == "slower", "{c:?}");
    assert!(c.change_pct > 90.0 && c.ci_low_pct > 0.0);
    assert_eq!(c.method, "bootstrap");
    // +20%: the interval excludes zero, but one run per side cannot tell that from
    // run-to-run noise.
    let b12 = lat((0..2000).map(|i| (10_000 + (i * 7919) % 2000) * 12 / 10));
    let c = latency_change(
        "pin",
        "x",
        (0, "p50"),
        &pooled(std::slice::from_ref(&a)),
        &pooled(&[b12]),
        &o,
    );
    assert!(
        c.ci_low_pct > 0.0 && !c.significant && c.mark == "~",
        "{c:?}"
    );
    // The same doubling at p99 is shown but not judged from one run per side.
    let b2 = lat((0..2000).map(|i| 2 * (10_000 + (i * 7919) % 2000)));
    let c = latency_change("pin", "x", (0, "p99"), &pooled(&[a]), &pooled(&[b2]), &o);
    assert!(
        c.change_pct > 90.0 && !c.significant && c.mark == "~",
        "{c:?}"
    );
    assert!(c.method.contains("not judged"), "{c:?}");
}

#[test]
fn with_repeated_runs_welch_judges_against_run_to_run_noise() {
    let o = CompareOptions::default();
    let run = |base: u64| lat((0..1000).map(move |i| base + (i * 7919) % 100));
    let base = [run(10_000), run(10_100), run(9_900)];
    let slower = [run(12_000), run(12_100), run(11_950)];
    let c = latency_change("pin", "x", (0, "p50"), &pooled(&base), &pooled(&slower), &o);
    assert_eq!(c.method, "welch");
    assert!(c.significant && c.mark == "slower", "{c:?}");
    let noisy = [run(8_000), run(13_000), run(10_500)];
    let c = latency_change("pin", "x", (0, "p50"), &pooled(&base), &pooled(&noisy), &o);
    assert!(!c.significant, "{c:?}");
}
