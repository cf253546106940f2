//! The rows a cell's measurements become: planted measurements and failures, real
//! expectations, and the one verdict (`analysis::verdict::judge`) reading the rows.

use std::time::Duration;

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{BenchRow, Environment, RunResult, ScenarioRecord};
use pinstorm_analysis::verdict::{self, Status, Verdict};
use pinstorm_workloads::pin::PinError;
use pinstorm_workloads::sys::Errno;

use super::rows::{cell_rows, CellKey, RowContext, MIN_SAMPLES};
use pinstorm_workloads::units::Size;

use super::worker::{plan_writes, Ended, Op, Side};

const OK_RULE: &str = r#"
[[expect]]
pin = "io_uring"
fs = "anon"
outcome = "ok"
why = "anonymous memory is long-term pinnable"
"#;

fn key() -> CellKey<'static> {
    CellKey {
        pin: "io_uring",
        backing: "anon",
        fs: "anon",
        map: "private",
        access: "rw",
        size: 2 << 20,
        threads: 1,
        dax: Some(false),
        device: None,
    }
}

/// A side that completed `n` cycles of 40 us + 10 us in `wall`.
fn side(n: u64, wall: Duration) -> Side {
    let mut s = Side::default();
    for _ in 0..n {
        s.record(Duration::from_micros(40), Duration::from_micros(10));
    }
    s.wall = wall;
    s.close();
    s
}

fn kernel_errno(op: &'static str, errno: i32) -> PinError {
    PinError::Kernel {
        op,
        errno: Errno(errno),
    }
}

fn rows(ours: &Side, base: &Side, ended: Ended) -> Vec<BenchRow> {
    rows_writing(ours, base, ended, &[])
}

fn rows_writing(ours: &Side, base: &Side, ended: Ended, writes: &[Size]) -> Vec<BenchRow> {
    let exp = Expectations::parse(OK_RULE, "test.toml").unwrap();
    let kernel = KernelRelease::parse("6.18.0").unwrap();
    let ctx = RowContext {
        expectations: &exp,
        kernel: &kernel,
        memlock_hint: None,
    };
    cell_rows(&ctx, &key(), ours, base, &ended, None, writes)
}

fn row<'a>(rows: &'a [BenchRow], op: &str) -> &'a BenchRow {
    rows.iter().find(|r| r.op == op).unwrap()
}

fn judged(rows: Vec<BenchRow>) -> verdict::Judgement {
    let scenario = ScenarioRecord {
        name: "t".into(),
        origin: "test".into(),
        seed: 1,
        text: String::new(),
    };
    let r = RunResult {
        bench: rows,
        ..RunResult::new("t", String::new(), scenario, Environment::default())
    };
    verdict::judge(&r)
}

#[test]
fn one_failed_register_mid_run_makes_the_rows_errno_and_the_cell_differ_from_ok() {
    let mut ours = side(500, Duration::from_millis(30));
    ours.failed(
        Op::Register,
        kernel_errno("IORING_REGISTER_BUFFERS", libc::ENOMEM),
    )
    .unwrap_or_else(|_| panic!("a kernel errno is counted, not a stop"));
    let base = side(500, Duration::from_millis(30));
    let rows = rows(&ours, &base, Ended::Iterations(500));

    let reg = row(&rows, "register");
    assert_eq!(reg.outcome, "ENOMEM");
    assert_eq!(reg.errors.get("ENOMEM"), Some(&1));
    assert!(
        reg.stats.is_some(),
        "the calls that succeeded keep their statistics"
    );
    assert_eq!(row(&rows, "unregister").outcome, "ok");
    let cycle = row(&rows, "cycle");
    assert_eq!(cycle.outcome, "ENOMEM");
    assert_eq!(cycle.expected.as_deref(), Some("ok"));
    assert_eq!(cycle.verdict, Some(Verdict::Differs));

    let j = judged(rows);
    let fact = j
        .facts
        .iter()
        .find(|f| f.name.starts_with("bench io_uring anon"))
        .expect("the bench cell is a fact of the run");
    assert_eq!(fact.verdict, Verdict::Differs, "{fact:?}");
    assert!(
        fact.note.as_deref().unwrap().contains("ENOMEM x1"),
        "{fact:?}"
    );
    assert_eq!(j.status, Status::Differs);
    assert_eq!(j.exit_code(), 3);
}

#[test]
fn a_cell_without_failures_is_ok_and_as_expected() {
    let rows = rows(
        &side(500, Duration::from_millis(30)),
        &side(500, Duration::from_millis(30)),
        Ended::Iterations(500),
    );
    assert!(
        rows.iter()
            .all(|r| r.outcome == "ok" && r.errors.is_empty()),
        "{rows:?}"
    );
    assert_eq!(row(&rows, "cycle").verdict, Some(Verdict::AsExpected));
    assert_eq!(judged(rows).status, Status::AsExpected);
}

#[test]
fn a_failure_of_the_baseline_alone_makes_the_row_not_ok() {
    let ours = side(500, Duration::from_millis(30));
    let mut base = side(500, Duration::from_millis(30));
    base.failed(
        Op::Unregister,
        kernel_errno("IORING_UNREGISTER_BUFFERS", libc::EINTR),
    )
    .unwrap_or_else(|_| panic!("counted"));
    let rows = rows(&ours, &base, Ended::Iterations(500));
    let unreg = row(&rows, "unregister");
    assert_eq!(unreg.outcome, "EINTR");
    assert!(unreg.errors.is_empty());
    assert_eq!(unreg.baseline_errors.get("EINTR"), Some(&1));
    assert_eq!(row(&rows, "register").outcome, "ok");
    assert_eq!(row(&rows, "cycle").verdict, Some(Verdict::Differs));
}

#[test]
fn a_cell_whose_every_registration_failed_is_one_cycle_row_with_the_errno_and_its_count() {
    let mut ours = Side::default();
    for _ in 0..16 {
        ours.failed(
            Op::Register,
            kernel_errno("IORING_REGISTER_BUFFERS", libc::EFAULT),
        )
        .unwrap_or_else(|_| panic!("counted"));
    }
    let rows = rows(&ours, &Side::default(), Ended::Iterations(16));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].op, "cycle");
    assert_eq!(rows[0].outcome, "EFAULT");
    assert_eq!(rows[0].errors.get("EFAULT"), Some(&16));
    assert!(rows[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("IORING_REGISTER_BUFFERS"));
    assert!(rows[0].stats.is_none());
}

#[test]
fn a_signal_during_warm_up_gives_a_notrun_row_saying_so_not_an_ok_row_with_count_0() {
    let rows = rows(
        &Side::default(),
        &Side::default(),
        Ended::Signal("SIGINT", true),
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "notrun");
    assert_eq!(
        rows[0].reason.as_deref(),
        Some("stopped after 0 samples (SIGINT during warm-up); at least 10 needed")
    );
    assert!(rows[0].stats.is_none() && rows[0].ops_per_sec.is_none());
    assert_eq!(judged(rows).count(Verdict::NotRun), 1);
}

#[test]
fn rows_with_fewer_samples_than_the_minimum_are_notrun_with_the_count_and_the_cause() {
    let n = MIN_SAMPLES - 1;
    let rows = rows(
        &side(n, Duration::from_micros(500)),
        &side(n, Duration::from_micros(500)),
        Ended::Deadline(Duration::from_millis(1)),
    );
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.outcome, "notrun", "{r:?}");
        assert_eq!(
            r.reason.as_deref(),
            Some("stopped after 9 samples (max-time 1ms ran out); at least 10 needed")
        );
        assert!(r.stats.is_none() && r.histogram.is_none(), "{r:?}");
    }
    let enough = rows_with(MIN_SAMPLES);
    assert!(enough.iter().all(|r| r.outcome == "ok"), "{enough:?}");
}

fn rows_with(n: u64) -> Vec<BenchRow> {
    rows(
        &side(n, Duration::from_millis(1)),
        &side(n, Duration::from_millis(1)),
        Ended::Iterations(n),
    )
}

/// 1000 cycles of 50 us each took 100 ms of wall time (half of it outside the two calls):
/// 10,000 cycles per second, not the 20,000 that 1e9 / mean would claim. Two threads that ran
/// at the same time add their rates.
#[test]
fn throughput_is_what_completed_over_the_wall_time_not_the_inverse_of_the_mean() {
    let one = side(1000, Duration::from_millis(100));
    let rows1 = rows(&one, &Side::default(), Ended::Iterations(1000));
    let cycle = row(&rows1, "cycle");
    let mean = cycle.stats.as_ref().unwrap().mean_ns;
    assert!((1e9 / mean - 20_000.0).abs() < 100.0, "mean {mean}");
    assert!(
        (cycle.ops_per_sec.unwrap() - 10_000.0).abs() < 1e-6,
        "{cycle:?}"
    );

    let mut two = side(1000, Duration::from_millis(100));
    two.merge(&side(500, Duration::from_millis(100)));
    let rows2 = rows(&two, &Side::default(), Ended::Iterations(1000));
    assert!((row(&rows2, "cycle").ops_per_sec.unwrap() - 15_000.0).abs() < 1e-6);
}

#[test]
fn each_write_length_gets_untouched_pages_of_its_own_and_one_that_does_not_fit_gets_none() {
    // 1 byte at 0; 4K from the next page; 64K after that; 2M cannot follow in 2M.
    assert_eq!(
        plan_writes(&[1, 4096, 65536, 2 << 20], 2 << 20),
        vec![Some(0), Some(4096), Some(8192), None]
    );
    // A write that fits after one that did not still goes where it fits.
    assert_eq!(plan_writes(&[3 << 20, 100], 2 << 20), vec![None, Some(0)]);
    assert_eq!(plan_writes(&[u64::MAX, 1], 4096), vec![None, Some(0)]);
}

#[test]
fn every_write_length_has_a_first_write_and_a_rewrite_row_and_a_length_that_does_not_fit_is_notrun()
{
    let mut ours = side(50, Duration::from_millis(10));
    let base = side(50, Duration::from_millis(10));
    for i in 0..2 {
        let w = ours.write(i);
        for n in 0..50 {
            w.first.record(20_000 + n);
            w.again.record(5_000 + n);
        }
    }
    assert!(ours
        .failed(
            Op::DeviceRewrite(1),
            kernel_errno("device write", libc::EIO)
        )
        .is_ok());
    let rows = rows_writing(
        &ours,
        &base,
        Ended::Iterations(50),
        &[Size(4096), Size(64 << 10), Size(4 << 20)],
    );
    let first = row(&rows, "device-write");
    let st = first.stats.as_ref().unwrap();
    assert_eq!((first.outcome.as_str(), st.count), ("ok", 50));
    assert!((19_900..20_100).contains(&st.min_ns), "{st:?}");
    // The rewrite's own timings, not the first write's.
    let st = row(&rows, "device-rewrite").stats.clone().unwrap();
    assert!((4_900..5_100).contains(&st.min_ns), "{st:?}");
    assert_eq!(row(&rows, "device-write-64K").outcome, "ok");
    // A failure of the 64K rewrite is that row's, not the first write's.
    let again = row(&rows, "device-rewrite-64K");
    assert_eq!(again.outcome, "EIO");
    assert_eq!(again.errors.get("EIO"), Some(&1));
    for op in ["device-write-4M", "device-rewrite-4M"] {
        let r = row(&rows, op);
        assert_eq!(r.outcome, "notrun", "{op}");
        assert_eq!(
            r.reason.as_deref(),
            Some("a 4M write does not fit the 2M region after the writes before it")
        );
    }
}
