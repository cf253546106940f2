//! `pinstorm bench pin` reports what happened, not what was asked for: a cell that got too
//! few samples is `notrun` saying why, and calls that fail mid-run are counted and make the
//! cell's outcome the errno, which the run's one verdict then judges (exit status 3).
//! Real kernel paths: the failures are provoked, not planted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Every row of a bench JSON output.
fn rows(o: &std::process::Output) -> Vec<serde_json::Value> {
    json(o).as_array().unwrap().clone()
}

#[test]
fn a_time_budget_too_short_for_any_sample_gives_notrun_rows_saying_so_not_ok_rows_with_count_0() {
    let sb = Sandbox::new("bench-no-time");
    let o = sb.run(&[
        "bench",
        "pin",
        "--pins",
        "io_uring,vmsplice",
        "--backings",
        "anon",
        "--sizes",
        "4K",
        "--max-time",
        "1ns",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = rows(&o);
    assert_eq!(rows.len(), 2, "one cycle row per cell: {rows:?}");
    for r in &rows {
        assert_eq!(r["outcome"], "notrun", "{r}");
        assert_eq!(
            r["reason"], "stopped after 0 samples (max-time 1ns ran out); at least 10 needed",
            "{r}"
        );
        assert!(r["count"].is_null() && r["p50_ns"].is_null(), "{r}");
    }
}

#[test]
fn sigint_during_warm_up_leaves_a_notrun_row_that_says_so() {
    let sb = Sandbox::new("bench-sigint");
    // No --quiet: the phase messages say when the bench has begun.
    let mut child = pinstorm()
        .arg("--results")
        .arg(&sb.results)
        .arg("--scratch-root")
        .arg(&sb.scratch)
        .args([
            "bench",
            "pin",
            "--pins",
            "io_uring",
            "--backings",
            "anon",
            "--sizes",
            "2M",
            // Hours of warm-up: the signal lands in it.
            "--warmup",
            "10000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("pinstorm: bench") {
        line.clear();
    }
    assert!(line.contains("pinstorm: bench"), "the bench never began");
    // A worker thread (named `pinstorm-bench`) exists once the cell has begun: from then on
    // the signal is the cell's. Other threads (watchdog, disturbance sampler) start earlier.
    let worker_running = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| {
            d.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "pinstorm-bench")
            })
        })
    };
    let t = Instant::now();
    while !worker_running() {
        assert!(t.elapsed() < Duration::from_secs(60), "no bench worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    // A warm-up that does not look at signals would go on for hours: bound the wait.
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("SIGINT did not stop the warm-up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    let res = read_json(&sb.results()[0]);
    assert_eq!(res["interrupted"], "SIGINT");
    let bench = res["bench"].as_array().unwrap();
    assert_eq!(bench.len(), 1, "{bench:?}");
    assert_eq!(bench[0]["outcome"], "notrun");
    assert_eq!(
        bench[0]["reason"],
        "stopped after 0 samples (SIGINT during warm-up); at least 10 needed"
    );
    assert_eq!(bench[0]["verdict"], "notrun");
}

/// The pinned file is truncated to nothing while the bench cycles on it: every registration
/// from then on faults past EOF, which GUP turns into EFAULT. The failures are counted per
/// operation on both sides, the rows take EFAULT as their outcome, and the cell, which the
/// expectations say is `ok` on tmpfs, differs: exit status 3, as for any differing fact.
#[test]
fn registrations_failing_mid_run_are_counted_and_make_the_cell_differ() {
    let sb = Sandbox::new("bench-truncated");
    let dir =
        std::path::PathBuf::from(format!("/dev/shm/pinstorm-it-trunc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let child = sb
        .cmd()
        .args([
            "bench",
            "pin",
            "--pins",
            "io_uring",
            "--backings",
            "scratch-dir",
            "--scratch-dir",
            dir.to_str().unwrap(),
            "--sizes",
            "2M",
            "--iterations",
            "10000000",
            "--max-time",
            "3s",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The region file is pinstorm's, in its subdirectory of the scratch dir; cut it short
    // once it is there and has been cycled on for a moment.
    let mut truncated = false;
    let t = Instant::now();
    while !truncated && t.elapsed() < Duration::from_secs(60) {
        for sub in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let is_region = f.file_name().to_string_lossy().starts_with("region-");
                if is_region && f.metadata().is_ok_and(|m| m.len() > 0) {
                    std::thread::sleep(Duration::from_millis(300));
                    let file = std::fs::OpenOptions::new().write(true).open(f.path());
                    truncated = file.and_then(|f| f.set_len(0)).is_ok();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(truncated, "the region file never appeared: {}", stderr(&o));
    let rows = rows(&o);
    let cycle = rows.iter().find(|r| r["op"] == "cycle").unwrap();
    assert_eq!(cycle["outcome"], "EFAULT", "{cycle}");
    assert!(cycle["errors"]["EFAULT"].as_u64().unwrap() > 0, "{cycle}");
    if let Some(reg) = rows.iter().find(|r| r["op"] == "register") {
        // Some cycles completed before the truncation: the register row counts the refusals.
        assert_eq!(reg["outcome"], "EFAULT", "{reg}");
        assert_eq!(reg["errors"]["EFAULT"], cycle["errors"]["EFAULT"], "{reg}");
        assert!(reg["count"].as_u64().unwrap() > 0, "{reg}");
    }
    if cycle["expected"] == "ok" {
        assert_eq!(cycle["verdict"], "differs", "{cycle}");
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    } else {
        skip(
            "the mid-run failure's verdict",
            &format!("no `ok` expectation for io_uring on tmpfs here: {cycle}"),
        );
    }
}
