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
