//! Leases on this host's kernel: holder behaviours, breaker kinds, lifecycle scenarios
//! (checked against an independent probe), lease-check overhead, the layout-lease probe, and
//! fs/lease-break-time put back on every exit path.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pinstorm_analysis::hist::Latency;

const LBT: &str = "/proc/sys/fs/lease-break-time";

fn lbt() -> String {
    std::fs::read_to_string(LBT).unwrap().trim().to_string()
}

/// Sets fs/lease-break-time for the independent probe; puts it back on drop, also when the
/// test fails.
struct LeaseBreakTime(String);

impl LeaseBreakTime {
    fn set(v: u64) -> LeaseBreakTime {
        let old = lbt();
        std::fs::write(LBT, v.to_string()).unwrap();
        LeaseBreakTime(old)
    }
}

impl Drop for LeaseBreakTime {
    fn drop(&mut self) {
        let _ = std::fs::write(LBT, &self.0);
    }
}

fn run_json(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let o = sb.run(args);
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    read_json(sb.results().last().unwrap())
}

fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, "shortening fs/lease-break-time needs root");
    false
}

#[test]
fn every_holder_behaviour_and_breaker_kind_runs_and_reports_what_the_kernel_did() {
    if !need_root("break storm") {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("lease-breaks");
    let before = lbt();
    let f = sb.base.join("breaks.toml");
    std::fs::write(
        &f,
        "name = \"breaks\"\n[lease]\nbackings = [\"tmpfs\"]\nrounds = 2\nhung_rounds = 1\nlease_break_time = \"1s\"\nlayout_probe = false\n",
    )
    .unwrap();
    let r = run_json(&sb, &["run", f.to_str().unwrap()]);
    assert_eq!(lbt(), before, "fs/lease-break-time is put back");
    let l = &r["leases"];
    assert_eq!(l["lease_break_time"]["used_s"], 1);
    let breaks = l["breaks"].as_array().unwrap();
    assert_eq!(
        breaks.len(),
        2 * 4 * 6 + 6,
        "2 leases x 4 behaviours x 6 breakers, and a no-pin twin of each pinned cooperative cell"
    );
    let cell = |lease: &str, holder: &str, breaker: &str, pinned: bool| {
        breaks
            .iter()
            .find(|b| {
                b["lease"] == lease
                    && b["behaviour"] == holder
                    && b["breaker"] == breaker
                    && b["pinned"] == pinned
            })
            .unwrap_or_else(|| panic!("{lease} {holder} {breaker} pinned={pinned}"))
    };
    for b in breaks {
        if b["outcome"] == "notrun" {
            assert_eq!(b["lease"], "read", "only read + downgrading is notrun: {b}");
            assert!(b["reason"].as_str().unwrap().contains("downgrade"));
            continue;
        }
        let rounds = b["rounds"].as_u64().unwrap();
        assert!(rounds >= 1, "{b}");
        assert!(b["acquire"]["stats"]["p50_ns"].as_u64().unwrap() > 0, "{b}");
        assert_eq!(b["report_after_release"], true, "{b}");
        // The histogram holds one breaker wait per round, and is the one the stats came from.
        let h = Latency::decode(b["breaker_wait"]["histogram"].as_str().unwrap()).unwrap();
        assert_eq!(h.count(), rounds, "{b}");
        assert_eq!(
            h.stats().p50_ns,
            b["breaker_wait"]["stats"]["p50_ns"].as_u64().unwrap(),
            "{b}"
        );
        // Only a holder with a pin unpins, and its release includes the unpin.
        if b["pinned"] == true && b["ended"]["unlock"].as_u64().is_some() {
            let unpin = b["unpin"]["stats"]["p50_ns"].as_u64().unwrap();
            assert!(
                unpin <= b["release"]["stats"]["p50_ns"].as_u64().unwrap(),
                "{b}"
            );
            assert_eq!(b["unpin"]["stats"]["count"], b["ended"]["unlock"], "{b}");
        } else {
            assert!(b["unpin"].is_null(), "{b}");
        }
    }
    // What the kernel does with each breaker against a cooperative holder, pinned or not,
    // against what it does for a C program that holds the lease and answers with F_UNLCK:
    // who is signalled, what the breaking call returns, how the lease ends. (io_uring's
    // OPENAT is left out: the witness uses plain syscalls only.)
    let witness = build_break_witness();
    let shm = std::path::PathBuf::from(format!("/dev/shm/pinstorm-witness-{}", std::process::id()));
    std::fs::write(&shm, vec![0u8; 2 << 20]).unwrap();
    let mut compared = 0;
    for lease in ["write", "read"] {
        for breaker in [
            "open-rdwr",
            "open-rdonly",
            "truncate",
            "open-rdwr-nonblock",
            "open-rdonly-nonblock",
        ] {
            let Some(w) = &witness else { break };
            let theirs = run_break_witness(w, &shm, lease, breaker, 2);
            let pins: &[bool] = if lease == "write" {
                &[false, true]
            } else {
                &[false]
            };
            for &pinned in pins {
                let b = cell(lease, "cooperative", breaker, pinned);
                let rounds = b["rounds"].as_u64().unwrap();
                let per_round = |k: &str| theirs[k] * rounds / theirs["rounds"];
                let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
                assert_eq!(
                    count(&b["signalled"]),
                    per_round("signalled"),
                    "{b} vs {theirs:?}"
                );
                assert_eq!(
                    count(&b["ended"]["unlock"]),
                    per_round("ended_unlock"),
                    "{b} vs {theirs:?}"
                );
                assert_eq!(
                    count(&b["breaker_results"]["ok"]),
                    per_round("breaker_ok"),
                    "{b} vs {theirs:?}"
                );
                assert_eq!(
                    count(&b["breaker_results"]["EAGAIN"]),
                    per_round("breaker_EAGAIN"),
                    "{b} vs {theirs:?}"
                );
                compared += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&shm);
    if witness.is_some() {
        assert_eq!(compared, 15);
    }
    // A cooperative write-lease holder is signalled every time and releases; the breaker
    // waits only for it. The notification latency is measured across processes.
    for breaker in ["open-rdwr", "open-rdonly", "truncate", "io-uring-openat"] {
        for pinned in [false, true] {
            let b = cell("write", "cooperative", breaker, pinned);
            assert_eq!(b["signalled"], b["rounds"], "{b}");
            assert_eq!(b["ended"]["unlock"], b["rounds"], "{b}");
            assert!(b["notify"]["stats"]["p50_ns"].as_u64().unwrap() > 0);
            assert!(
                b["breaker_wait"]["stats"]["max_ns"].as_u64().unwrap() < 500_000_000,
                "{b}"
            );
        }
    }
    // O_NONBLOCK breakers get EAGAIN at once, and the holder is still told.
    for breaker in ["open-rdwr-nonblock", "open-rdonly-nonblock"] {
        let b = cell("write", "cooperative", breaker, true);
        assert_eq!(b["breaker_results"]["EAGAIN"], b["rounds"], "{b}");
        assert_eq!(b["signalled"], b["rounds"], "{b}");
    }
    // A reader does not break a read lease.
    let b = cell("read", "cooperative", "open-rdonly", false);
    assert_eq!(b["signalled"], 0, "{b}");
    // A hung holder makes a blocking breaker wait the lease-break-time in force (1 s).
    for breaker in ["open-rdwr", "truncate", "io-uring-openat"] {
        let b = cell("write", "hung", breaker, true);
        let wait = b["breaker_wait"]["stats"]["p50_ns"].as_u64().unwrap();
        assert!(
            (800_000_000..3_000_000_000).contains(&wait),
            "breaker wait {wait} ns with a 1 s lease-break-time: {b}"
        );
        assert_eq!(b["ended"]["revoked"], 1, "{b}");
    }
    // A delayed holder makes the breaker wait about the delay (5 ms by default).
    let b = cell("write", "delayed", "open-rdwr", true);
    assert!(
        b["breaker_wait"]["stats"]["p50_ns"].as_u64().unwrap() >= 4_000_000,
        "{b}"
    );
}

/// Build the C lease-break witness; `None` (with the reason printed) without a C compiler.
fn build_break_witness() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/lease_break_witness.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("independent-lease-break-witness");
    match Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!("the lease-break witness does not build:\n{}", stderr(&o)),
        Err(e) => {
            skip("lease-break witness", &format!("no C compiler ({e})"));
            None
        }
    }
}

/// The witness's counts and medians (`key=value` lines) for `rounds` breaks of `lease` by
/// `breaker` on `file`.
fn run_break_witness(
    witness: &Path,
    file: &Path,
    lease: &str,
    breaker: &str,
    rounds: u32,
) -> BTreeMap<String, u64> {
    let o = Command::new(witness)
        .arg(file)
        .args([lease, breaker, &rounds.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "lease-break witness: {}", stderr(&o));
    let kv: BTreeMap<String, u64> = stdout(&o)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    assert_eq!(kv.get("rounds"), Some(&u64::from(rounds)), "{kv:?}");
    kv
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The filesystem type mounted at `mount_point`, from /proc/self/mountinfo.
fn fs_type(mount_point: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4)? == mount_point)
            .then(|| post.split(' ').next().map(str::to_string))?
    })
}

/// A no-pin holder's break is the lease break alone: the breaker waits for the kernel and the
/// holder's answer (signal, F_UNLCK), and for nothing pinstorm adds (its holder reports only
/// after the breaker's call returned). So its medians must be close to those of a C program
/// that does nothing but answer (tests/independent/lease_break_witness.c), run on tmpfs in
/// the same test, interleaved with pinstorm's runs so that both see the same machine.
///
/// The bound is relative and generous on purpose: timings are never asserted absolutely
/// (other work on the machine moves both), and pinstorm's holder is a debug build of Rust
/// where the witness is -O2 C, which costs it a few microseconds of its own. What the bound
/// catches is a structural gap: a holder that wrote its JSON report to the runner before
/// releasing, and a runner thread woken by that report, cost the breaker ~40 us more than the
/// witness's ~10 us on the 2-CPU machine this was written on (breaker wait p50 41-64 us
/// against 10-15 us in one session; 20-29 us after the fix). Under load heavy enough to slow
/// the witness several times over, no relative bound can see that gap, and this passes.
#[test]
fn a_no_pin_holders_break_costs_what_a_c_holders_does_within_a_small_factor() {
    let Some(witness) = build_break_witness() else {
        return;
    };
    if fs_type("/dev/shm").as_deref() != Some("tmpfs") {
        skip("lease-break witness", "/dev/shm is not tmpfs here");
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("lease-witness");
    let f = sb.base.join("nopin.toml");
    const ROUNDS: u32 = 100;
    std::fs::write(
        &f,
        format!("name = \"nopin\"\n[lease]\nbackings = [\"tmpfs\"]\nleases = [\"write\"]\nbehaviours = [\"cooperative\"]\nbreakers = [\"open-rdwr\"]\nrounds = {ROUNDS}\npin = false\nlayout_probe = false\n"),
    )
    .unwrap();
    let shm = PathBuf::from(format!(
        "/dev/shm/pinstorm-witness-nopin-{}",
        std::process::id()
    ));
    std::fs::write(&shm, vec![0u8; 2 << 20]).unwrap();
    let (mut ours_wait, mut ours_notify, mut theirs_wait, mut theirs_notify) =
        (vec![], vec![], vec![], vec![]);
    for rep in 0..5 {
        let mut ours = || {
            let _ = std::fs::remove_dir_all(&sb.results);
            let r = run_json(&sb, &["run", f.to_str().unwrap()]);
            let b = &r["leases"]["breaks"][0];
            assert_eq!(b["fs"], "tmpfs", "{b}");
            assert_eq!(b["pinned"], false, "{b}");
            assert_eq!(b["signalled"], ROUNDS, "{b}");
            assert_eq!(b["ended"]["unlock"], ROUNDS, "{b}");
            ours_wait.push(b["breaker_wait"]["stats"]["p50_ns"].as_u64().unwrap());
            ours_notify.push(b["notify"]["stats"]["p50_ns"].as_u64().unwrap());
        };
        let mut theirs = || {
            let w = run_break_witness(&witness, &shm, "write", "open-rdwr", ROUNDS);
            assert_eq!(w["signalled"], u64::from(ROUNDS), "{w:?}");
            assert_eq!(w["ended_unlock"], u64::from(ROUNDS), "{w:?}");
            theirs_wait.push(w["breaker_wait_p50_ns"]);
            theirs_notify.push(w["notify_p50_ns"]);
        };
        // Alternate who goes first, so neither always follows the other's warm-up.
        if rep % 2 == 0 {
            ours();
            theirs();
        } else {
            theirs();
            ours();
        }
    }
    let _ = std::fs::remove_file(&shm);
    let (ow, on, tw, tn) = (
        median(ours_wait.clone()),
        median(ours_notify.clone()),
        median(theirs_wait.clone()),
        median(theirs_notify.clone()),
    );
    eprintln!(
        "breaker wait p50: pinstorm {ours_wait:?} (median {ow} ns), witness {theirs_wait:?} (median {tw} ns)"
    );
    eprintln!(
        "notify p50: pinstorm {ours_notify:?} (median {on} ns), witness {theirs_notify:?} (median {tn} ns)"
    );
    let bound = |theirs: u64| theirs * 5 / 2 + 10_000;
    assert!(
        ow <= bound(tw),
        "pinstorm's no-pin breaker wait ({ow} ns) is more than 2.5 x the witness's ({tw} ns) + 10 us: something of pinstorm's sits between the break and its answer"
    );
    assert!(
        on <= bound(tn),
        "pinstorm's notify ({on} ns) is more than 2.5 x the witness's ({tn} ns) + 10 us"
    );
}

/// Lifecycle facts that both pinstorm and the independent probe report.
const SHARED_FACTS: &[&str] = &[
    "signalled_process",
    "lease_ended",
    "breaker_waited_for",
    "breaker_result",
    "device_write_after_break",
    "device_write_after_munmap",
    "lease_after_close_of_original",
    "ring_over_scm_rights",
    "receiver_lease",
];

fn build_lease_probe() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/lease_probe.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("independent-lease-probe");
    match Command::new("cc")
        .args(["-O2", "-Wall", "-Wno-unused-result", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-luring")
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            skip(
                "independent lease probe",
                &format!("it needs liburing-dev: {}", stderr(&o)),
            );
            None
        }
        Err(e) => {
            skip("independent lease probe", &format!("no C compiler ({e})"));
            None
        }
    }
}

#[test]
fn lease_lifecycle_facts_agree_with_an_independent_probe() {
    if !need_root("lease lifecycle") {
        return;
    }
    let Some(probe) = build_lease_probe() else {
        return;
    };
    let _g = serial();
    let sb = Sandbox::new("lease-lifecycle");
    let before = lbt();
    let r = run_json(&sb, &["run", "lease-lifecycle"]);
    assert_eq!(lbt(), before, "fs/lease-break-time is put back");
    let l = &r["leases"];
    let used = l["lease_break_time"]["used_s"].as_u64().unwrap();
    let scenarios = l["lifecycle"].as_array().unwrap();
    assert_eq!(scenarios.len(), 7);
    let _set = LeaseBreakTime::set(used);
    let dir = PathBuf::from(format!(
        "/dev/shm/pinstorm-lease-probe-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap();
        assert_eq!(s["outcome"], "ok", "{s}");
        // The breaker's wait says what it waited for, against the lease-break-time in force.
        let wait_ms = s["breaker_wait_ms"].as_f64().unwrap();
        let lbt_ms = used as f64 * 1000.0;
        match s["facts"]["breaker_waited_for"].as_str().unwrap() {
            "lease-break-time" => assert!(
                (lbt_ms * 0.8..lbt_ms + 2000.0).contains(&wait_ms),
                "{name}: {wait_ms} ms with lease-break-time {used} s"
            ),
            _ => assert!(wait_ms < lbt_ms * 0.8, "{name}: {wait_ms} ms: {s}"),
        }
        let file = dir.join(name);
        std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
        let o = Command::new(&probe)
            .args([name, file.to_str().unwrap(), &used.to_string()])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        let theirs: BTreeMap<String, String> = stdout(&o)
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        assert!(
            !theirs.contains_key("error"),
            "{name}: independent probe: {theirs:?}"
        );
        // These three every scenario has, on both sides.
        for fact in ["signalled_process", "lease_ended", "breaker_waited_for"] {
            let ours = s["facts"][fact].as_str();
            assert_eq!(
                ours,
                theirs.get(fact).map(String::as_str),
                "{name}: {fact}: pinstorm {ours:?}, the independent probe {theirs:?}"
            );
        }
        let mut compared = 0;
        for fact in SHARED_FACTS {
            if let (Some(ours), Some(t)) = (s["facts"][fact].as_str(), theirs.get(*fact)) {
                assert_eq!(
                    ours, t,
                    "{name}: pinstorm says {fact} = {ours}, the independent probe {t}"
                );
                compared += 1;
            }
        }
        assert!(
            compared >= 3,
            "{name}: compared only {compared} facts: ours {} theirs {theirs:?}",
            s["facts"]
        );
        // A lost device write after the break is reported as a violation.
        if s["facts"]["device_write_after_break"] == "lost" {
            assert_eq!(s["violations"].as_array().unwrap().len(), 1, "{s}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let probe = &l["layout_lease"];
    assert_eq!(
        probe["outcome"], "notrun",
        "upstream has no layout leases: {probe}"
    );
    assert!(
        probe["reason"].as_str().unwrap().contains("EINVAL"),
        "{probe}"
    );
}

#[test]
fn lease_check_overhead_comes_with_a_confidence_interval() {
    let _g = serial();
    let sb = Sandbox::new("lease-overhead");
    let f = sb.base.join("overhead.toml");
    std::fs::write(&f, "name = \"overhead\"\n[lease]\nbackings = [\"tmpfs\"]\nrounds = 0\noverhead_cycles = 500\nlayout_probe = false\n").unwrap();
    let r = run_json(&sb, &["run", f.to_str().unwrap()]);
    let o = &r["leases"]["overhead"][0];
    assert_eq!(o["outcome"], "ok", "{o}");
    let (d, lo, hi) = (
        o["overhead_ns"].as_f64().unwrap(),
        o["ci_low_ns"].as_f64().unwrap(),
        o["ci_high_ns"].as_f64().unwrap(),
    );
    assert!(lo <= d && d <= hi, "the estimate lies in its interval: {o}");
    assert_eq!(o["confidence"], 0.95);
    assert_eq!(o["without"]["stats"]["count"], 500);
    assert_eq!(o["with"]["stats"]["count"], 500);
    assert!(o["with"]["histogram"].as_str().unwrap().len() > 10);
}

#[test]
fn lease_break_time_is_restored_when_the_run_is_interrupted_or_killed() {
    if !need_root("lease-break-time restore") {
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("lease-lbt");
    let before = lbt();
    for (sig, code) in [(libc::SIGINT, Some(130)), (libc::SIGKILL, None)] {
        let mut child = sb
            .cmd()
            .args(["run", "lease-lifecycle"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while lbt() == before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the run never shortened fs/lease-break-time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), code);
        if sig == libc::SIGKILL {
            assert_ne!(lbt(), before, "a killed run cannot restore it itself");
            let o = sb.run(&["cleanup"]);
            assert!(
                stdout(&o).contains("restored fs/lease-break-time"),
                "{}",
                stdout(&o)
            );
        }
        assert_eq!(lbt(), before);
        // No holder process outlives the run (a killed run's holders die with their pipes or
        // wait on them; give them a moment).
        let start = Instant::now();
        loop {
            let left = Command::new("pgrep")
                .args(["-f", "__lease-holder"])
                .output()
                .map(|o| stdout(&o))
                .unwrap_or_default();
            if left.trim().is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "lease holders left behind: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Without root the lease-break-time cannot be shortened: scenarios that wait a lease out
/// are notrun with the reason, the others run, quickly (a holder that broke its own lease
/// would make them wait the default 45 s).
#[test]
fn without_root_expiry_scenarios_are_notrun_and_the_rest_run() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        skip(
            "lease non-root",
            "needs root (to drop to nobody) and setpriv",
        );
        return;
    }
    let exe = nobody_exe().display().to_string();
    if !nobody_can_run_pinstorm() {
        skip(
            "lease non-root",
            &format!("user nobody cannot execute {exe}"),
        );
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("lease-nonroot");
    // Sticky, like /tmp: pinstorm refuses a scratch root whose parent others can rename in.
    std::fs::set_permissions(
        &sb.base,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let f = sb.base.join("nonroot.toml");
    std::fs::write(&f, "name = \"nonroot\"\n[lease]\nrounds = 0\nlifecycle = [\"dup-close\", \"munmap-before-unregister\", \"hung-expiry\"]\nlayout_probe = false\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let start = Instant::now();
    let o = pinstorm_as_nobody()
        .arg("--results")
        .arg(&sb.results)
        .arg("--scratch-root")
        .arg(&sb.scratch)
        .args(["-q", "run", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let r = read_json(sb.results().last().unwrap());
    let l = &r["leases"]["lifecycle"];
    for s in l.as_array().unwrap() {
        if s["scenario"] == "hung-expiry" {
            assert_eq!(s["outcome"], "notrun", "{s}");
            assert!(
                s["reason"].as_str().unwrap().contains("lease-break-time"),
                "{s}"
            );
        } else {
            assert_eq!(s["outcome"], "ok", "{s}");
            assert_eq!(s["facts"]["lease_at_ready"], "write", "{s}");
            assert_eq!(s["facts"]["breaker_waited_for"], "holder", "{s}");
        }
    }
}
