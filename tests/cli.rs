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
fn a_duration_that_cannot_apply_to_the_scenario_is_bad_input() {
    // quick has no [storm]: a storm duration has nothing to apply to.
    let o = pinstorm()
        .args(["run", "quick", "--duration", "5s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "--duration and --write-at apply to storms, and quick has no [storm] section"
        ),
        "{}",
        stderr(&o)
    );
    let o = pinstorm()
        .args(["run", "truncate-vs-pin", "--duration", "0s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--duration must be greater than zero"),
        "{}",
        stderr(&o)
    );
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

/// Whether a test whose real path needs root can run; in CI (`CI` set) it must, so not being
/// root there is a failure rather than a silent pass.
fn root_or_ci(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (mounts), and CI must run it");
    }
    eprintln!("skipped {test}: needs root (mounts)");
    false
}

/// What a run said about itself: exit status, summary, and the KTAP and JUnit exports of the
/// result it wrote.
struct Verdicts {
    code: i32,
    summary: String,
    ktap: String,
    junit: String,
    result: serde_json::Value,
}

fn run_and_export(sb: &Sandbox, args: &[&str]) -> Verdicts {
    let before = sb.results();
    let o = sb.run(args);
    let code = o
        .status
        .code()
        .unwrap_or_else(|| panic!("pinstorm {args:?} killed by a signal: {}", stderr(&o)));
    assert!(
        matches!(code, 0 | 3),
        "pinstorm {args:?}: exit {code}\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let new: Vec<_> = sb
        .results()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "{args:?}: one new result: {new:?}");
    let export = |to: &str| {
        let e = sb.run(&["export", to, new[0].to_str().unwrap()]);
        assert!(e.status.success(), "export {to}: {}", stderr(&e));
        stdout(&e)
    };
    Verdicts {
        code,
        summary: stdout(&o),
        ktap: export("ktap"),
        junit: export("junit"),
        result: read_json(&new[0]),
    }
}

impl Verdicts {
    /// The KTAP test lines that say `not ok` (the tests, not the run's subtest line).
    fn not_ok(&self) -> Vec<String> {
        self.ktap
            .lines()
            .filter(|l| l.starts_with("    not ok "))
            .map(|l| {
                l.trim_start()
                    .splitn(4, ' ')
                    .nth(3)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Exit status, summary, KTAP and JUnit say the same thing.
    fn assert_agree(&self, what: &str) {
        let ktap_fails = self
            .ktap
            .lines()
            .any(|l| l.trim_start().starts_with("not ok"));
        assert_eq!(
            self.code != 0,
            ktap_fails,
            "{what}: exit {} but KTAP {} a not ok line:\n{}\n{}",
            self.code,
            if ktap_fails { "has" } else { "has no" },
            self.ktap,
            self.summary
        );
        let failures = self.junit.matches("<failure ").count();
        assert_eq!(
            self.code != 0,
            failures > 0,
            "{what}: exit {} and {failures} JUnit failures:\n{}",
            self.code,
            self.junit
        );
        let line = self
            .summary
            .lines()
            .find(|l| l.starts_with("Verdict: "))
            .unwrap_or_else(|| {
                panic!("{what}: the summary has no Verdict line:\n{}", self.summary)
            });
        assert!(
            line.ends_with(&format!("exit status {}", self.code)),
            "{what}: {line}"
        );
        assert_eq!(line.contains("DIFFER"), self.code == 3, "{what}: {line}");
    }
}

#[test]
fn exit_status_is_non_zero_exactly_when_the_ktap_export_has_a_not_ok_line() {
    let _g = serial();
    let sb = Sandbox::new("verdict-presets");
    let mut presets = vec![vec!["run", "quick"], vec!["run", "lease-lifecycle"]];
    if root_or_ci("truncate-vs-pin in exit_status_is_non_zero_exactly_when_...") {
        presets.push(vec!["run", "truncate-vs-pin", "--duration", "1s"]);
    }
    for args in &presets {
        let v = run_and_export(&sb, args);
        v.assert_agree(&args.join(" "));
        // What the summary calls DIFFERS is what KTAP fails, one for one.
        let differs = v
            .summary
            .lines()
            .filter(|l| l.starts_with("  DIFFERS: "))
            .count();
        assert_eq!(differs, v.not_ok().len(), "{args:?}:\n{}", v.summary);
        assert_eq!(
            v.result["expectations"]["differing"].as_u64(),
            Some(differs as u64),
            "{args:?}: {}",
            v.result["expectations"]
        );
    }
}

/// A copy of the built-in expectation files in `dir`, with `extra` appended to `file` (the
/// last matching rule wins, so one appended rule flips exactly the facts it selects).
fn planted_expectations(dir: &std::path::Path, file: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/expectations");
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let mut text = std::fs::read_to_string(&p).unwrap();
        if p.file_name().unwrap() == file {
            text.push_str(extra);
        }
        std::fs::write(dir.join(p.file_name().unwrap()), text).unwrap();
    }
}

#[test]
fn expectations_planted_to_disagree_make_the_run_exit_3_for_a_probe_cell_and_for_a_lease_fact() {
    let _g = serial();
    let sb = Sandbox::new("verdict-planted");

    // One probe cell: anonymous shared rw memory is pinnable, the planted rule says EFAULT.
    let pins = sb.base.join("planted-pins");
    planted_expectations(
        &pins,
        "pins.toml",
        "\n[[expect]]\npin = \"io_uring\"\nbacking = \"anon\"\nmap = \"shared\"\naccess = \"rw\"\noutcome = \"EFAULT\"\nwhy = \"planted to disagree\"\n",
    );
    let v = run_and_export(
        &sb,
        &[
            "--expectations",
            pins.to_str().unwrap(),
            "probe",
            "--pins",
            "io_uring",
            "--backings",
            "anon",
        ],
    );
    v.assert_agree("probe with a planted pin rule");
    assert_eq!(v.code, 3, "{}", v.summary);
    assert_eq!(
        v.not_ok(),
        ["probe io_uring anon shared rw (anon)"],
        "{}",
        v.ktap
    );
    assert!(
        v.summary
            .contains("DIFFERS: probe io_uring anon shared rw (anon): measured ok, expected EFAULT (planted to disagree)"),
        "{}",
        v.summary
    );
    assert!(
        v.result["expectations"]["origin"]
            .as_str()
            .is_some_and(|o| o.contains("planted-pins") && o.contains("leases.toml")),
        "{}",
        v.result["expectations"]
    );

    // One lease lifecycle fact, in files named one by one (the flag repeats). Today's kernels
    // end a dup'd lease with F_UNLCK; the planted rule says it is revoked.
    if !root_or_ci("the lease part of expectations_planted_to_disagree_...") {
        return;
    }
    let leases = sb.base.join("planted-leases");
    planted_expectations(
        &leases,
        "leases.toml",
        "\n[[fact]]\nscenario = \"dup-close\"\nfact = \"lease_ended\"\nvalue = \"revoked\"\nwhy = \"planted to disagree\"\n",
    );
    let files: Vec<String> = ["pins.toml", "leases.toml", "oracles.toml"]
        .iter()
        .map(|f| leases.join(f).display().to_string())
        .collect();
    let mut args = Vec::new();
    for f in &files {
        args.extend(["--expectations", f.as_str()]);
    }
    args.extend(["run", "lease-lifecycle"]);
    let v = run_and_export(&sb, &args);
    v.assert_agree("lease-lifecycle with a planted fact rule");
    assert_eq!(
        v.code, 3,
        "a lease fact alone that differs exits 3:\n{}",
        v.summary
    );
    assert_eq!(
        v.not_ok(),
        ["lifecycle dup-close tmpfs lease_ended"],
        "{}",
        v.ktap
    );
    assert!(
        v.summary.contains(
            "DIFFERS: lifecycle dup-close tmpfs lease_ended: measured unlock, expected revoked (planted to disagree)"
        ),
        "{}",
        v.summary
    );

    // Expectations that leave out a kind of fact judge none of it, and the result says so.
    let only_pins = leases.join("pins.toml");
    let v = run_and_export(
        &sb,
        &[
            "--expectations",
            only_pins.to_str().unwrap(),
            "run",
            "lease-lifecycle",
        ],
    );
    v.assert_agree("lease-lifecycle judged by pin rules only");
    assert_eq!(v.code, 0, "{}", v.summary);
    assert!(
        v.result["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("no [[fact]] rules")),
        "{}",
        v.result["notes"]
    );
}

#[test]
fn bad_expectation_files_and_directories_are_refused_naming_them() {
    let sb = Sandbox::new("verdict-bad-exp");
    let empty = sb.base.join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let bad = sb.base.join("bad.toml");
    std::fs::write(
        &bad,
        "[[oracle]]\noracle = \"lost_writes\"\nmax = 0\nwhy = \"typo\"\n",
    )
    .unwrap();
    for (p, why) in [
        (empty.clone(), "holds no *.toml file"),
        (bad.clone(), "lost_writes"),
        (sb.base.join("missing.toml"), "missing.toml"),
    ] {
        let o = sb.run(&[
            "--expectations",
            p.to_str().unwrap(),
            "probe",
            "--backings",
            "anon",
        ]);
        assert_eq!(o.status.code(), Some(2), "{p:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(why)
                && stderr(&o).contains(p.file_name().unwrap().to_str().unwrap()),
            "{p:?}: {}",
            stderr(&o)
        );
    }
    assert!(sb.results().is_empty(), "bad input measures nothing");
}
