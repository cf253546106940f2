//! The command line as a user meets it: real runs on this host, bad input, output formats.

mod common;

use common::*;

#[test]
fn help_teaches_commands_exit_codes_and_examples() {
    let o = pinstorm().arg("--help").output().unwrap();
    assert!(o.status.success());
    let h = stdout(&o);
    for needle in [
        "probe",
        "bench",
        "list",
        "cleanup",
        "Exit status",
        "Examples",
        "--scratch-dir",
    ] {
        assert!(h.contains(needle), "--help lacks {needle:?}:\n{h}");
    }
}

#[test]
fn list_shows_every_pin_path_and_backing_with_a_status_and_a_reason_when_unusable() {
    let o = pinstorm()
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let pins = v["pin_paths"].as_array().unwrap();
    assert!(pins.iter().any(|p| p["name"] == "io_uring"));
    let backings = v["backings"].as_array().unwrap();
    for name in [
        "anon",
        "anon-hugetlb",
        "memfd",
        "memfd-hugetlb",
        "tmpfs",
        "hugetlbfs",
        "ext4",
        "xfs",
        "btrfs",
        "scratch-dir",
    ] {
        let b = backings
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let status = b["status"].as_str().unwrap();
        assert!(status == "usable" || status == "notrun", "{b}");
        if status == "notrun" {
            assert!(
                !b["reason"].as_str().unwrap().is_empty(),
                "notrun without a reason: {b}"
            );
        }
    }
    // No --scratch-dir given: that backing cannot run, and says why.
    let sd = backings
        .iter()
        .find(|b| b["name"] == "scratch-dir")
        .unwrap();
    assert_eq!(sd["status"], "notrun");
    assert!(sd["reason"].as_str().unwrap().contains("--scratch-dir"));
    assert!(v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "default"));
}

#[test]
fn unknown_key_in_a_scenario_file_is_refused_naming_file_line_and_key() {
    let sb = Sandbox::new("badkey");
    let f = sb.base.join("bad.toml");
    std::fs::write(
        &f,
        "name = \"bad\"\n\n[bench]\nsizes = [\"4K\"]\nthreadz = 2\n",
    )
    .unwrap();
    let o = sb.run(&["run", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(f.to_str().unwrap()), "{e}");
    assert!(e.contains("line 5"), "{e}");
    assert!(e.contains("threadz"), "{e}");
    assert!(sb.results().is_empty(), "nothing may run on a bad scenario");
}

#[test]
fn bad_value_in_a_scenario_file_is_refused_naming_the_line() {
    let sb = Sandbox::new("badvalue");
    let f = sb.base.join("bad.toml");
    std::fs::write(&f, "name = \"bad\"\n[probe]\nsize = \"2 parsecs\"\n").unwrap();
    let o = sb.run(&["run", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("line 3") && e.contains("invalid size"), "{e}");
}

#[test]
fn a_missing_scenario_is_refused_and_presets_are_named() {
    let o = pinstorm()
        .args(["run", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("presets: default"), "{}", stderr(&o));
}

#[test]
fn relative_or_empty_results_paths_are_hard_errors() {
    let o = pinstorm()
        .args(["probe", "--backings", "anon", "--results", "results"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("must be an absolute path"),
        "{}",
        stderr(&o)
    );
    // An empty environment variable must not fall back to the working directory.
    let o = pinstorm()
        .args(["probe", "--backings", "anon"])
        .env("PINSTORM_RESULTS", "")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is empty"), "{}", stderr(&o));
    let o = pinstorm()
        .args(["probe", "--backings", "anon", "--scratch-root", "rel/dir"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--scratch-root"), "{}", stderr(&o));
}

#[test]
fn a_directory_that_is_not_scratch_is_refused_for_destructive_use() {
    let sb = Sandbox::new("notscratch");
    for dir in ["/etc", "/", "/usr"] {
        let o = sb.run(&["probe", "--backings", "scratch-dir", "--scratch-dir", dir]);
        assert_eq!(o.status.code(), Some(2), "{dir}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("system directory"),
            "{dir}: {}",
            stderr(&o)
        );
    }
    let o = sb.run(&[
        "probe",
        "--backings",
        "scratch-dir",
        "--scratch-dir",
        "relative/dir",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("absolute"), "{}", stderr(&o));
    assert!(sb.results().is_empty());
}

#[test]
fn probe_json_rows_carry_the_documented_keys_and_measured_outcomes() {
    let sb = Sandbox::new("probejson");
    let o = sb.run(&[
        "probe",
        "--pins",
        "io_uring,vmsplice",
        "--backings",
        "anon,memfd,tmpfs",
        "--format",
        "json",
    ]);
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let rows = json(&o);
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        3 * 2 * 2 * 2,
        "3 backings x 2 pin paths x shared/private x rw/ro"
    );
    for r in rows {
        for k in [
            "pin", "backing", "fs", "map", "access", "size", "outcome", "reason", "verdict",
        ] {
            assert!(r.get(k).is_some(), "row lacks {k}: {r}");
        }
        let outcome = r["outcome"].as_str().unwrap();
        assert!(
            outcome == "ok" || outcome.starts_with('E'),
            "in-memory backings must be measured: {r}"
        );
        assert_eq!(r["size"], 2 << 20);
        if outcome == "ok" && r["pin"] == "io_uring" && r["access"] == "rw" {
            assert_eq!(
                r["device_io"], "ok",
                "a device write through an allowed pin must land: {r}"
            );
        }
        if outcome == "ok" && r["pin"] == "vmsplice" {
            assert!(
                r["device_io"].as_str().unwrap().starts_with("ok"),
                "the pipe must read back the pinned pages: {r}"
            );
        }
    }
    // The result file: one, complete, schema-tagged, written atomically.
    let files = sb.results();
    assert_eq!(files.len(), 1);
    let res = read_json(&files[0]);
    assert_eq!(res["schema"], "pinstorm-result");
    assert_eq!(res["schema_version"], 1);
    assert_eq!(res["complete"], true);
    assert_eq!(res["probe"].as_array().unwrap().len(), rows.len());
    let release = res["environment"]["kernel_release"].as_str().unwrap();
    assert!(
        files[0].starts_with(sb.results.join(release)),
        "{:?}",
        files[0]
    );
    assert!(
        sb.stray_result_files().is_empty(),
        "{:?}",
        sb.stray_result_files()
    );
    assert!(sb.leftover_run_dirs().is_empty());
}

#[test]
fn bench_pin_json_rows_carry_the_documented_keys() {
    let sb = Sandbox::new("benchjson");
    let o = sb.run(&[
        "bench",
        "pin",
        "--pins",
        "io_uring,vmsplice",
        "--sizes",
        "4K,2M",
        "--backings",
        "tmpfs,anon",
        "--iterations",
        "64",
        "--max-time",
        "200ms",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json(&o);
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * 2 * 3,
        "2 pin paths x 2 backings x 2 sizes x register/unregister/cycle"
    );
    for r in rows {
        for k in [
            "pin",
            "backing",
            "size",
            "op",
            "count",
            "p50_ns",
            "p99_ns",
            "max_ns",
            "min_ns",
            "p90_ns",
            "p999_ns",
            "mean_ns",
            "ops_per_sec",
            "baseline_p50_ns",
        ] {
            assert!(r.get(k).is_some_and(|v| !v.is_null()), "row lacks {k}: {r}");
        }
        assert!(["register", "unregister", "cycle"].contains(&r["op"].as_str().unwrap()));
        assert!([4096, 2 << 20].contains(&r["size"].as_u64().unwrap()));
        let count = r["count"].as_u64().unwrap();
        assert!(count > 0 && count <= 64, "{r}");
        let (p50, p99, max) = (
            r["p50_ns"].as_u64().unwrap(),
            r["p99_ns"].as_u64().unwrap(),
            r["max_ns"].as_u64().unwrap(),
        );
        assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{r}");
        assert!(
            r.get("histogram").is_none_or(|h| h.is_null()),
            "stdout rows leave the histogram to the result file"
        );
    }
    let res = read_json(&sb.results()[0]);
    let stored = res["bench"].as_array().unwrap();
    assert!(
        stored
            .iter()
            .all(|r| r["histogram"].as_str().is_some_and(|h| h.len() > 10)),
        "histograms stored losslessly"
    );
}

#[test]
fn quick_preset_runs_and_prints_a_summary() {
    let sb = Sandbox::new("quick");
    let o = sb.run(&["run", "quick"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("Capability probe") && s.contains("Pin latency") && s.contains("result: "),
        "{s}"
    );
    let res = read_json(&sb.results()[0]);
    assert_eq!(res["complete"], true);
    assert_eq!(res["scenario"]["name"], "quick");
    assert!(res["environment"]["kernel_release"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
}

#[test]
fn cleanup_with_nothing_left_says_so() {
    let sb = Sandbox::new("cleanup-nothing");
    let o = sb.run(&["cleanup"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to clean"), "{}", stdout(&o));
}
