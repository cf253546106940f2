//! Tests that need root: scratch filesystems on loop devices, hugetlbfs, sysctls, and the
//! promise that the machine is left as found on every exit path. They skip with a printed
//! reason elsewhere; CI runs as root.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, "needs root (mount, losetup, sysctls)");
    false
}

fn need_tools(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            skip(test, &format!("{t} not installed"));
            return false;
        }
    }
    true
}

const LONG_SCENARIO: &str = r#"
name = "interrupt-me"
description = "probe loop filesystems and hugetlbfs, then a benchmark long enough to be interrupted"
seed = 3

[probe]
pins = ["io_uring", "vmsplice"]
backings = ["hugetlbfs", "xfs", "ext4"]
size = "2M"

[bench]
pins = ["io_uring"]
backings = ["hugetlbfs", "tmpfs"]
sizes = ["64M"]
iterations = 100000000
max_time = "120s"
"#;

/// Start the long scenario and wait until its probe rows are on disk (so there is
/// something to keep, and mounts and huge pages to clean up).
fn start_long_run(sb: &Sandbox) -> Child {
    let f = sb.base.join("long.toml");
    std::fs::write(&f, LONG_SCENARIO).unwrap();
    let child = sb
        .cmd()
        .args(["run", f.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let probed = sb
            .results()
            .first()
            .map(|p| {
                read_json(p)["probe"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if probed > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run never finished its probe"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("pinstorm did not exit within {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn probe_measures_loop_filesystems_and_hugetlb_then_leaves_the_machine_as_found() {
    if !need_root("loop probe")
        || !need_tools(
            "loop probe",
            &["mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "losetup"],
        )
    {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("loopprobe");
    let before = machine_state(&sb.base);
    let o = sb.run(&[
        "probe",
        "--pins",
        "io_uring,vmsplice",
        "--backings",
        "ext4,xfs,btrfs,hugetlbfs,memfd-hugetlb,anon-hugetlb",
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
        6 * 2 * 4,
        "6 backings x 2 pin paths x 2 maps x 2 accesses"
    );
    for r in rows {
        let outcome = r["outcome"].as_str().unwrap();
        assert_ne!(
            outcome, "notrun",
            "as root with the tools installed every cell must be measured: {r}"
        );
        assert!(outcome == "ok" || outcome.starts_with('E'), "{r}");
        let b = r["backing"].as_str().unwrap();
        if ["ext4", "xfs", "btrfs"].contains(&b) {
            assert_eq!(r["fs"], b, "the region must really live on a {b}: {r}");
            assert_eq!(r["dax"], false, "a loop device has no DAX: {r}");
        }
    }
    let res = read_json(&sb.results()[0]);
    for b in res["backings"].as_array().unwrap() {
        assert_eq!(b["outcome"], "ok", "{b}");
        if ["ext4", "xfs", "btrfs", "hugetlbfs"].contains(&b["backing"].as_str().unwrap()) {
            assert!(
                b["mount_options"]
                    .as_str()
                    .is_some_and(|o| o.contains("rw")),
                "{b}"
            );
            assert!(b["mount_source"].as_str().is_some(), "{b}");
        }
    }
    assert!(
        res["hugepages"]["requested"].as_u64().unwrap() > 0,
        "hugetlb backings need a reservation"
    );
    assert_left_as_found(&sb.base, &before);
    assert!(sb.leftover_run_dirs().is_empty());
}

#[test]
fn default_suite_twice_leaves_the_machine_as_found_each_time() {
    if !need_root("default twice")
        || !need_tools("default twice", &["mkfs.ext4", "mkfs.xfs", "mkfs.btrfs"])
    {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("twice");
    let before = machine_state(&sb.base);
    for i in 0..2 {
        let o = sb.run(&["run"]);
        assert!(
            matches!(o.status.code(), Some(0) | Some(3)),
            "run {i}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        assert_left_as_found(&sb.base, &before);
    }
    let files = sb.results();
    assert_eq!(files.len(), 2);
    for f in files {
        let r = read_json(&f);
        assert_eq!(r["complete"], true);
        assert!(r["bench"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["outcome"] == "ok"));
        assert!(
            r["pin_counters"]["outstanding_after"].as_i64()
                <= r["pin_counters"]["outstanding_before"].as_i64(),
            "no pages left pinned by the run: {}",
            r["pin_counters"]
        );
    }
}

#[test]
fn sigint_mid_run_keeps_what_was_measured_and_cleans_up() {
    if !need_root("SIGINT") || !need_tools("SIGINT", &["mkfs.ext4", "mkfs.xfs"]) {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("sigint");
    let before = machine_state(&sb.base);
    let child = start_long_run(&sb);
    let during = machine_state(&sb.base);
    assert!(
        !during.mounts_below.is_empty(),
        "the run should hold its mounts now: {during:?}"
    );
    signal(&child, libc::SIGINT);
    let o = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("INTERRUPTED by SIGINT"),
        "{}",
        stdout(&o)
    );
    let r = read_json(&sb.results()[0]);
    assert_eq!(r["complete"], false);
    assert_eq!(r["interrupted"], "SIGINT");
    assert_eq!(
        r["probe"].as_array().unwrap().len(),
        3 * 2 * 4,
        "the probe's rows must survive the interruption"
    );
    assert!(r["finished"].as_str().is_some());
    assert_left_as_found(&sb.base, &before);
    assert!(sb.leftover_run_dirs().is_empty());
    assert!(sb.stray_result_files().is_empty());
}

#[test]
fn sigterm_mid_run_cleans_up_too() {
    if !need_root("SIGTERM") || !need_tools("SIGTERM", &["mkfs.ext4", "mkfs.xfs"]) {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("sigterm");
    let before = machine_state(&sb.base);
    let child = start_long_run(&sb);
    signal(&child, libc::SIGTERM);
    let o = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert_eq!(read_json(&sb.results()[0])["interrupted"], "SIGTERM");
    assert_left_as_found(&sb.base, &before);
}

#[test]
fn sigkill_leftovers_are_found_and_removed_by_the_next_run() {
    if !need_root("SIGKILL") || !need_tools("SIGKILL", &["mkfs.ext4", "mkfs.xfs"]) {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("sigkill");
    let before = machine_state(&sb.base);
    let child = start_long_run(&sb);
    signal(&child, libc::SIGKILL);
    let _ = wait_with_timeout(child, Duration::from_secs(30));
    let left = machine_state(&sb.base);
    assert!(
        !left.mounts_below.is_empty(),
        "a killed run leaves its mounts: {left:?}"
    );
    assert!(
        !left.loops_below.is_empty(),
        "a killed run leaves its loop devices: {left:?}"
    );
    assert_ne!(
        left.nr_hugepages, before.nr_hugepages,
        "a killed run leaves its huge page reservation"
    );
    assert_eq!(sb.leftover_run_dirs().len(), 1);

    // The next run, whatever it is, cleans up first and says so.
    let o = sb.run(&["probe", "--backings", "anon"]);
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let e = stderr(&o);
    assert!(
        e.contains("cleaning up after a run that did not finish"),
        "{e}"
    );
    assert!(
        e.contains("unmounted") && e.contains("detached") && e.contains("restored vm/nr_hugepages"),
        "{e}"
    );
    assert!(!e.contains("PROBLEM"), "{e}");
    assert_left_as_found(&sb.base, &before);
    assert!(sb.leftover_run_dirs().is_empty());
}

#[test]
fn cleanup_command_removes_what_a_killed_run_left() {
    if !need_root("cleanup") || !need_tools("cleanup", &["mkfs.ext4", "mkfs.xfs"]) {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("cleanupcmd");
    let before = machine_state(&sb.base);
    let child = start_long_run(&sb);
    signal(&child, libc::SIGKILL);
    let _ = wait_with_timeout(child, Duration::from_secs(30));
    assert_ne!(machine_state(&sb.base), before);
    let o = sb.run(&["cleanup"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unmounted"), "{}", stdout(&o));
    assert_left_as_found(&sb.base, &before);
    let o = sb.run(&["cleanup"]);
    assert!(stdout(&o).contains("nothing to clean"), "{}", stdout(&o));
}

/// Run pinstorm as `nobody`: no CAP_IPC_LOCK, no mounts, the memlock limit applies.
#[test]
fn without_root_unavailable_backings_are_notrun_with_a_reason() {
    if !need_root("non-root (needs root to drop to nobody)")
        || !need_tools("non-root", &["setpriv"])
    {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("nonroot");
    let exe = nobody_exe().display().to_string();
    if !nobody_can_run_pinstorm() {
        skip("non-root", &format!("user nobody cannot execute {exe}"));
        return;
    }
    std::fs::set_permissions(
        &sb.base,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let before = machine_state(&sb.base);
    let o = pinstorm_as_nobody()
        .arg("--results")
        .arg(&sb.results)
        .arg("--scratch-root")
        .arg(&sb.scratch)
        .args([
            "-q",
            "probe",
            "--pins",
            "io_uring,vmsplice",
            "--backings",
            "anon,tmpfs,ext4,hugetlbfs",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let rows = json(&o);
    for r in rows.as_array().unwrap() {
        match r["backing"].as_str().unwrap() {
            "anon" | "tmpfs" => assert_ne!(r["outcome"], "notrun", "{r}"),
            _ => {
                assert_eq!(r["outcome"], "notrun", "{r}");
                assert!(r["reason"].as_str().unwrap().contains("root"), "{r}");
            }
        }
    }
    let memlock = read_json(&sb.results()[0])["environment"]["memlock_soft_bytes"].as_u64();
    if let Some(limit) = memlock.filter(|l| *l < (64 << 20)) {
        let o = pinstorm_as_nobody()
            .arg("--results")
            .arg(&sb.results)
            .arg("--scratch-root")
            .arg(&sb.scratch)
            .args([
                "-q",
                "bench",
                "pin",
                "--pins",
                "io_uring",
                "--backings",
                "anon",
                "--sizes",
                "64M",
                "--iterations",
                "5",
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        let rows = json(&o);
        let r = &rows.as_array().unwrap()[0];
        assert_eq!(
            r["outcome"], "ENOMEM",
            "64 MiB over a {limit}-byte memlock limit: {r}"
        );
        assert!(
            r["reason"].as_str().unwrap().contains("RLIMIT_MEMLOCK"),
            "{r}"
        );
    } else {
        eprintln!("memlock limit is at least 64 MiB here; the ENOMEM case is not exercised");
    }
    assert_left_as_found(&sb.base, &before);
}

#[test]
fn a_loop_filesystem_is_made_before_its_gate_and_attached_only_after_it() {
    use pinstorm_workloads::backing::{BackingKind, Gate, LoopFs, SetupEnv};
    use pinstorm_workloads::scratch::ScratchRoot;
    use std::sync::{Arc, Mutex};
    let test = "loop gate";
    if !need_root(test) || !need_tools(test, &["mkfs.ext4", "losetup", "blkid"]) {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("loopgate");
    let before = machine_state(&sb.base);
    let root = ScratchRoot::open(&sb.scratch).unwrap();
    // What the machine showed while the set-up stood at the gate: the image's filesystem
    // (blkid, not pinstorm, reads it) and the loop devices on the sandbox's files.
    let at_gate = |image: std::path::PathBuf, open: bool, seen: Arc<Mutex<Vec<String>>>| {
        let base = sb.base.clone();
        Gate::new(move || {
            let fs = std::process::Command::new("blkid")
                .args(["-p", "-o", "value", "-s", "TYPE"])
                .arg(&image)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let loops = machine_state(&base).loops_below;
            seen.lock()
                .unwrap()
                .push(format!("fs={fs} loops={loops:?}"));
            if open {
                Ok(())
            } else {
                Err("the test's modules never came".into())
            }
        })
    };
    // A gate that never opens: the filesystem was made, nothing was attached, and the
    // gate's reason is the backing's.
    let run = root.new_run("closed").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let env = SetupEnv {
        before_attach: Some(at_gate(run.owned().join("ext4.img"), false, seen.clone())),
        ..SetupEnv::default()
    };
    let e = LoopFs::create(BackingKind::Ext4, &env, &run).err().unwrap();
    assert_eq!(e.0, "the test's modules never came");
    assert_eq!(*seen.lock().unwrap(), ["fs=ext4 loops=[]"]);
    assert!(machine_state(&sb.base).loops_below.is_empty());
    drop(run);
    // A gate that opens: attached and mounted after it.
    let run = root.new_run("open").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let env = SetupEnv {
        before_attach: Some(at_gate(run.owned().join("ext4.img"), true, seen.clone())),
        ..SetupEnv::default()
    };
    let l = LoopFs::create(BackingKind::Ext4, &env, &run).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["fs=ext4 loops=[]"]);
    let now = machine_state(&sb.base);
    assert_eq!(now.loops_below.len(), 1, "{now:?}");
    assert!(
        now.mounts_below
            .iter()
            .any(|m| m.contains(&*l.mount_point().to_string_lossy())),
        "{now:?}"
    );
    drop(l);
    drop(run);
    drop(root);
    assert_left_as_found(&sb.base, &before);
}
