use super::*;
use crate::schema::BenchRow;

fn notrun_row(reason: &str) -> BenchRow {
    BenchRow {
        pin: "io_uring".into(),
        backing: "devdax".into(),
        fs: "-".into(),
        map: "shared".into(),
        access: "rw".into(),
        size: 2 << 20,
        op: "cycle".into(),
        threads: 1,
        outcome: "notrun".into(),
        reason: Some(reason.into()),
        stats: None,
        ..BenchRow::default()
    }
}

#[test]
fn a_long_notrun_reason_goes_below_the_bench_table_and_widens_no_column() {
    let reason = "no --devdax given: name a device-dax character device you own as scratch (e.g. /dev/dax0.0 from `ndctl create-namespace -m devdax`), or run `pinstorm lab` which makes one in a guest";
    let out = bench_table(&[notrun_row(reason)]);
    let widest_table_line = out
        .lines()
        .filter(|l| !l.contains(reason))
        .map(str::len)
        .max()
        .unwrap();
    assert!(widest_table_line < 120, "{out}");
    assert_eq!(out.matches(reason).count(), 1, "{out}");
    assert!(
        out.contains(&format!("notrun (io_uring devdax): {reason}")),
        "{out}"
    );
}

#[test]
fn mount_options_are_printed_once_each() {
    assert_eq!(once_each("rw,relatime,rw"), "rw,relatime");
    assert_eq!(
        once_each("rw,nosuid,nodev,relatime,rw,size=1024k"),
        "rw,nosuid,nodev,relatime,size=1024k"
    );
    assert_eq!(once_each(""), "");
}

#[test]
fn a_bench_row_with_failed_calls_shows_its_errno_and_the_counts_of_both_sides() {
    let mut l = crate::hist::Latency::new();
    for ns in [40_000, 45_000, 50_000] {
        l.record(ns);
    }
    let row = BenchRow {
        op: "register".into(),
        outcome: "EFAULT".into(),
        reason: Some("IORING_REGISTER_BUFFERS: EFAULT (Bad address)".into()),
        stats: Some(l.stats()),
        errors: [("EFAULT".to_string(), 7)].into(),
        baseline_errors: [("EFAULT".to_string(), 5)].into(),
        ..notrun_row("")
    };
    let out = bench_table(&[row]);
    let line = out.lines().nth(1).unwrap();
    assert!(line.contains("EFAULT") && line.contains("45.0"), "{out}");
    assert!(
        out.contains("failed calls (io_uring devdax 2M register): EFAULT x7; tight loop EFAULT x5"),
        "{out}"
    );
    assert!(
        out.contains("IORING_REGISTER_BUFFERS: EFAULT (Bad address)"),
        "{out}"
    );
}

#[test]
fn pin_migration_rows_show_what_moved_what_it_cost_and_a_differing_fact() {
    use crate::schema::{FactVerdict, MigrationResult};
    let stats = |p50: u64| crate::hist::Stats {
        count: 4,
        min_ns: p50,
        p50_ns: p50,
        p90_ns: p50,
        p99_ns: p50,
        p999_ns: p50,
        max_ns: p50,
        mean_ns: p50 as f64,
        stdev_ns: 0.0,
    };
    let fact = |name: &str, measured: &str, verdict: Verdict| FactVerdict {
        fact: name.into(),
        measured: measured.into(),
        expected: Some("0".into()),
        verdict,
        why: None,
    };
    let rows = vec![
        MigrationResult {
            pin: "io_uring".into(),
            backing: "anon".into(),
            outcome: "ok".into(),
            reason: None,
            rounds: 4,
            pages: 1024,
            movable_before: 4096,
            migrated: 4096,
            movable_while_pinned: 3,
            first_pin: Some(stats(12_050_000)),
            repin: Some(stats(470_000)),
            held: "ENOMEM x4".into(),
            verdicts: vec![
                fact("movable_while_pinned", "3", Verdict::Differs),
                fact("migrated_all", "true", Verdict::AsExpected),
            ],
        },
        MigrationResult::notrun(
            "vmsplice",
            "anon",
            0,
            0,
            "no ZONE_MOVABLE (boot with movablecore=)".into(),
        ),
    ];
    let mut out = String::new();
    migration(&mut out, &rows);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[2].contains("moved out") && lines[2].contains("first pin p50"),
        "{out}"
    );
    // A notrun reason does not widen the table: it is below it.
    assert!(lines[2].len() < 160, "{out}");
    let io = lines.iter().find(|l| l.contains("io_uring")).unwrap();
    assert!(
        io.contains("4096/4096") && io.contains("12.05ms") && io.contains("470.00us"),
        "{out}"
    );
    assert!(
        io.contains("DIFFERS: movable_while_pinned = 3 (expected 0)"),
        "{out}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("vmsplice anon: notrun: no ZONE_MOVABLE"),
        "{out}"
    );
}
