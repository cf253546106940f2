//! `--check` for `git bisect run`, for real: checks judged on the probe cells, benchmark
//! latencies and storm oracles this kernel measures, with the exit statuses bisect reads
//! (0 good, 1 bad, 125 skip) and 128 (abort) for every usage or tool error; and a lab
//! kernel that does not build making the checks exit 125.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{is_root, pinstorm, skip, stderr, Sandbox};

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", stderr(o)))
}

/// `pinstorm probe` of io_uring on memfd and xfs-dax (notrun: no --dax-dir) with checks.
fn probe_with(sb: &Sandbox, checks: &[&str]) -> Output {
    let mut c = sb.cmd();
    c.args([
        "probe",
        "--pins",
        "io_uring",
        "--backings",
        "memfd,xfs-dax",
        "--maps",
        "shared",
        "--access",
        "rw",
    ]);
    for e in checks {
        c.arg("--check").arg(e);
    }
    c.output().unwrap()
}

#[test]
fn probe_checks_exit_0_when_they_hold_1_when_one_fails_and_125_when_a_cell_was_not_measured() {
    let sb = Sandbox::new("bisect-probe");
    let hold = "io_uring:memfd:shared:rw=ok";
    let fail = "io_uring:memfd:shared:rw=EFAULT";
    let notrun = "io_uring:xfs-dax:shared:rw=EFAULT";
    let absent = "io_uring:btrfs:shared:rw=ok";
    for (checks, want, says) in [
        (vec![hold], 0, "holds: ok"),
        (vec![fail], 1, "FAILS: measured ok"),
        (vec![notrun], 125, "the cell did not run"),
        (vec![absent], 125, "no result has this cell"),
        (vec![hold, notrun, fail], 1, "(git bisect: bad)"),
        (vec![hold, absent], 125, "(git bisect: skip)"),
        (
            vec![hold, "io_uring:memfd:shared:rw!=EFAULT"],
            0,
            "(git bisect: good)",
        ),
    ] {
        let o = probe_with(&sb, &checks);
        assert_eq!(code(&o), want, "{checks:?}\n{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{checks:?}: {}", stderr(&o));
    }
    // Every check ran a real probe and left its result.
    assert_eq!(sb.results().len(), 7);
}

#[test]
fn usage_and_tool_errors_with_check_exit_128_so_that_git_bisect_aborts() {
    let sb = Sandbox::new("bisect-usage");
    let bad_expr = probe_with(&sb, &["io_uring:memfd:shared=ok"]);
    assert_eq!(code(&bad_expr), 128, "{}", stderr(&bad_expr));
    assert!(
        stderr(&bad_expr).contains("PIN:BACKING:MAP:ACCESS (4 fields)"),
        "{}",
        stderr(&bad_expr)
    );
    let typo = probe_with(&sb, &["io_uring:memfdd:shared:rw=ok"]);
    assert_eq!(
        code(&typo),
        128,
        "a misspelt backing would skip every commit"
    );
    assert!(stderr(&typo).contains("memfdd"), "{}", stderr(&typo));
    // Errors clap reports: 128 with --check, 2 without (bisect would take 2 for bad).
    let o = sb
        .cmd()
        .args([
            "probe",
            "--no-such-flag",
            "--check",
            "io_uring:memfd:shared:rw=ok",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 128, "{}", stderr(&o));
    let o = sb.cmd().args(["probe", "--no-such-flag"]).output().unwrap();
    assert_eq!(code(&o), 2);
    let o = pinstorm()
        .args(["probe", "--check", "x", "--help"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "help is not an error");
    // A path pinstorm refuses (bad input, 2 without --check) and a shard of a matrix the
    // checks would judge whole.
    let o = pinstorm()
        .args([
            "--results",
            "relative/results",
            "probe",
            "--backings",
            "memfd",
        ])
        .args(["--check", "io_uring:memfd:shared:rw=ok"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 128, "{}", stderr(&o));
    let o = sb
        .cmd()
        .args([
            "run",
            "quick",
            "--shard",
            "1/2",
            "--check",
            "io_uring:memfd:shared:rw=ok",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 128, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("give one or the other"),
        "{}",
        stderr(&o)
    );
    assert!(sb.results().is_empty(), "nothing ran");
}

#[test]
fn latency_and_oracle_checks_judge_what_the_benchmark_and_the_storm_measured() {
    let sb = Sandbox::new("bisect-latency");
    let bench = |check: &str| {
        sb.cmd()
            .args(["bench", "pin", "--pins", "io_uring", "--backings", "anon"])
            .args(["--sizes", "4K", "--iterations", "50", "--max-time", "200ms"])
            .args(["--check", check])
            .output()
            .unwrap()
    };
    let o = bench("p50(io_uring:anon:4K:register)<10s");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = bench("p99(io_uring:anon:shared:rw:4K:cycle)<1ns");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("FAILS"), "{}", stderr(&o));
    let o = bench("p50(io_uring:anon:2M:register)<10s");
    assert_eq!(code(&o), 125, "no 2M cell was measured: {}", stderr(&o));

    // A short storm on anonymous memory, which must never lose a write, and two scenarios
    // in one run: each check is judged in the run that measured its fact.
    let storm = sb.base.join("anon-storm.toml");
    std::fs::write(
        &storm,
        "name = \"anon-storm\"\nseed = 3\n[storm]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\n\
         maps = [\"shared\"]\nops = [\"truncate\"]\nfile_size = \"256K\"\npinners = 1\n\
         disruptors = 1\nhold = \"1ms\"\nrate = 100\nduration = \"1s\"\n",
    )
    .unwrap();
    let probe = sb.base.join("memfd-probe.toml");
    std::fs::write(
        &probe,
        "name = \"memfd-probe\"\nseed = 1\n[probe]\npins = [\"io_uring\"]\nbackings = [\"memfd\"]\n\
         size = \"2M\"\n",
    )
    .unwrap();
    let run = |checks: &[&str]| {
        let mut c = sb.cmd();
        c.arg("run").arg(&storm).arg(&probe);
        for e in checks {
            c.arg("--check").arg(e);
        }
        c.output().unwrap()
    };
    let o = run(&["lost_write@io_uring:anon=0", "io_uring:memfd:shared:rw=ok"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds: shared lost_write 0"),
        "{}",
        stderr(&o)
    );
    let o = run(&["lost_write@io_uring:anon>0"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = run(&["lost_write@io_uring:tmpfs=0"]);
    assert_eq!(code(&o), 125, "no storm on tmpfs: {}", stderr(&o));
}

/// The vng the lab would use, if this machine has one.
fn vng() -> Option<PathBuf> {
    let cache = match (
        std::env::var_os("PINSTORM_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
    ) {
        (Some(c), _) => PathBuf::from(c),
        (None, Some(x)) if !x.is_empty() => PathBuf::from(x).join("pinstorm"),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/pinstorm"),
    };
    let v = cache.join("venv/bin/vng");
    if v.is_file() {
        return Some(v);
    }
    let o = Command::new("sh")
        .args(["-c", "command -v vng"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    p.is_file().then_some(p)
}

/// What `git bisect run pinstorm lab --kernels tree:. --build --check ...` does on a commit
/// that does not build: the kernel is a setup-error, the checks cannot judge it, exit 125.
/// Nothing boots (the build fails first); the lab's cache is the test's own.
#[test]
fn a_lab_kernel_that_does_not_build_makes_the_checks_exit_125() {
    let test = "a_lab_kernel_that_does_not_build_makes_the_checks_exit_125";
    if !is_root() {
        return skip(test, "the lab needs root");
    }
    let Some(vng) = vng() else {
        return skip(test, "no virtme-ng (scripts/lab-setup.sh installs it)");
    };
    let sb = Sandbox::new("bisect-lab");
    let tree = sb.base.join("not-a-kernel");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("Makefile"), "all:\n\tfalse\n").unwrap();
    let o = pinstorm()
        .current_dir(&tree)
        .arg("--results")
        .arg(&sb.results)
        .args(["lab", "--cache"])
        .arg(sb.base.join("cache"))
        .arg("--vng")
        .arg(&vng)
        .args(["--kernels", "tree:.,path:/nonexistent/bzImage", "--build"])
        .args(["--check", "io_uring:xfs:shared:rw=EFAULT", "quick"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 125, "{}\n{err}", common::stdout(&o));
    assert!(err.contains("not a kernel source tree"), "{err}");
    let here = tree.canonicalize().unwrap();
    assert!(
        err.contains(&format!(
            "check io_uring:xfs:shared:rw=EFAULT on tree:{}: cannot be judged: setup-error",
            here.display()
        )),
        "tree:. is the directory bisect runs in: {err}"
    );
    assert!(
        err.contains("on path:/nonexistent/bzImage: cannot be judged: setup-error"),
        "{err}"
    );
    assert!(sb.results().is_empty(), "no kernel came back");
}
