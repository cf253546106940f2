//! The `rdma` and `rdma-odp` pin paths through the real binary.
//!
//! Where there is no RDMA device (a host without CONFIG_INFINIBAND, or a build without
//! `--features rdma`) every cell must be `notrun` with the reason and the hint, never a
//! failure. Where there is one (the lab guest's soft-RoCE, a real NIC), the same tests check
//! real outcomes: a registration the kernel allows carries a device write and read (RDMA
//! WRITE and READ over the loopback queue pair) that the CPU sees. Run this test binary in a
//! guest with `rdma link add rxe0 type rxe netdev IF` to take the second branch.

mod common;

use common::*;

/// Whether the rdma paths can run here, asked of the binary under test.
fn rdma_usable() -> bool {
    let o = pinstorm()
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    let v = json(&o);
    v["pin_paths"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "rdma" && p["status"] == "usable")
}

fn assert_notrun_reason(reason: &str) {
    if cfg!(feature = "rdma") {
        assert!(
            reason.contains("rdma link add") || reason.contains("--rdma"),
            "a notrun without the soft-RoCE hint: {reason}"
        );
    } else {
        assert!(
            reason.contains("--features rdma"),
            "a notrun that does not name the feature: {reason}"
        );
    }
}

#[test]
fn list_shows_both_rdma_paths_and_the_devices_or_why_there_are_none() {
    let o = pinstorm()
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    for name in ["rdma", "rdma-odp"] {
        let p = v["pin_paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from list"));
        match p["status"].as_str().unwrap() {
            "usable" if !cfg!(feature = "rdma") => panic!("usable without the feature: {p}"),
            "usable" => {}
            "notrun" => assert_notrun_reason(p["reason"].as_str().unwrap()),
            s => panic!("status {s}: {p}"),
        }
    }
    let devs = &v["rdma_devices"];
    match devs["status"].as_str().unwrap() {
        "usable" => {
            for d in devs["devices"].as_array().unwrap() {
                assert!(!d["name"].as_str().unwrap().is_empty(), "{d}");
                assert!(!d["ports"].as_array().unwrap().is_empty(), "{d}");
                for k in ["transport", "fw_ver", "odp"] {
                    assert!(d.get(k).is_some(), "device lacks {k}: {d}");
                }
                for port in d["ports"].as_array().unwrap() {
                    for k in ["state", "link_layer", "active_mtu"] {
                        assert!(port.get(k).is_some(), "port lacks {k}: {port}");
                    }
                }
            }
        }
        "notrun" => assert_notrun_reason(devs["reason"].as_str().unwrap()),
        s => panic!("rdma_devices status {s}"),
    }
}

#[test]
fn probe_of_rdma_is_measured_with_device_io_or_notrun_with_the_hint() {
    let sb = Sandbox::new("rdmaprobe");
    let o = sb.run(&[
        "probe",
        "--pins",
        "rdma,rdma-odp",
        "--backings",
        "anon,memfd",
        "--format",
        "json",
    ]);
    // 3 = a cell differs from the expectations: reported, not a failure of the tool.
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let rows = json(&o);
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * 2 * 2,
        "2 paths x 2 backings x 2 maps x 2 accesses"
    );
    let usable = rdma_usable();
    for r in rows {
        let outcome = r["outcome"].as_str().unwrap();
        if !usable {
            assert_eq!(outcome, "notrun", "{r}");
            assert_notrun_reason(r["reason"].as_str().unwrap());
            continue;
        }
        assert_ne!(
            outcome, "notrun",
            "a device is here: every cell is measured: {r}"
        );
        assert!(outcome == "ok" || outcome.starts_with('E'), "{r}");
        if outcome == "ok" && r["pin"] == "rdma" && r["access"] == "rw" {
            assert_eq!(
                r["device_io"], "ok",
                "an RDMA WRITE through an allowed registration must land and read back: {r}"
            );
        }
    }
    let res = read_json(&sb.results()[0]);
    let env_rdma = res["environment"]["rdma"].as_str().unwrap();
    if usable {
        assert!(env_rdma.contains("port"), "{env_rdma}");
    } else {
        assert!(env_rdma.starts_with("none: "), "{env_rdma}");
    }
}

#[test]
fn bench_pin_rdma_measures_histograms_or_is_notrun() {
    let sb = Sandbox::new("rdmabench");
    let o = sb.run(&[
        "bench",
        "pin",
        "--pins",
        "rdma",
        "--backings",
        "anon",
        "--sizes",
        "4K",
        "--iterations",
        "32",
        "--max-time",
        "300ms",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json(&o);
    let rows = rows.as_array().unwrap();
    if !rdma_usable() {
        assert_eq!(rows.len(), 1, "one notrun row per cell: {rows:?}");
        assert_eq!(rows[0]["outcome"], "notrun");
        assert_notrun_reason(rows[0]["reason"].as_str().unwrap());
        return;
    }
    assert_eq!(rows.len(), 3, "register, unregister, cycle");
    for r in rows {
        assert_eq!(r["outcome"], "ok", "{r}");
        let count = r["count"].as_u64().unwrap();
        assert!(count > 0 && count <= 32, "{r}");
        assert!(
            r["baseline_p50_ns"].as_u64().is_some(),
            "the ibv_reg_mr tight loop ran: {r}"
        );
    }
}

#[test]
fn an_unknown_rdma_device_is_named_in_the_reason() {
    let sb = Sandbox::new("rdmadev");
    let o = sb.run(&[
        "--rdma-dev",
        "nosuchdev9",
        "probe",
        "--pins",
        "rdma",
        "--backings",
        "anon",
        "--maps",
        "shared",
        "--access",
        "rw",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json(&o);
    let r = &rows.as_array().unwrap()[0];
    assert_eq!(r["outcome"], "notrun", "{r}");
    let reason = r["reason"].as_str().unwrap();
    if rdma_usable() {
        assert!(reason.contains("nosuchdev9"), "{reason}");
    } else {
        assert_notrun_reason(reason);
    }
    // The device asked for is recorded with the scenario.
    let res = read_json(&sb.results()[0]);
    assert!(
        res["scenario"]["text"]
            .as_str()
            .unwrap()
            .contains("nosuchdev9"),
        "{}",
        res["scenario"]["text"]
    );
}

/// Why a lab guest cannot run here, if it cannot (as tests/lab.rs decides it).
fn lab_missing() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no qemu-system-x86_64 (scripts/lab-setup.sh installs it)".into());
    }
    let cache = match std::env::var_os("PINSTORM_CACHE") {
        Some(c) => std::path::PathBuf::from(c),
        None => std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/pinstorm"),
    };
    if !cache.join("venv/bin/vng").exists()
        && std::process::Command::new("vng")
            .arg("--version")
            .output()
            .is_err()
    {
        return Some("no virtme-ng (scripts/lab-setup.sh installs it)".into());
    }
    None
}

const LAB_SCENARIO: &str = r#"
name = "rdma-lab-test"
description = "rdma registrations in a lab guest with soft-RoCE; RDMA WRITEs as the device"
seed = 1

[probe]
pins = ["rdma", "rdma-odp"]
backings = ["tmpfs", "xfs", "xfs-dax"]
maps = ["shared"]
access = ["rw"]
size = "2M"
device_io = true

[storm]
pins = ["rdma"]
backings = ["tmpfs"]
maps = ["shared"]
ops = ["truncate"]
pinners = 2
disruptors = 1
hold = "2ms"
rate = 100
duration = "1s"
shapes = ["page", "sub-page", "page-crossing", "multi-page", "packets"]
control = true
"#;

/// The done-when of the rdma work, in CI: a Debian kernel booted by `pinstorm lab` with
/// soft-RoCE, the rdma paths measured there (not notrun), every registration the kernel
/// allowed carrying an RDMA WRITE and READ that the CPU sees, and a storm whose device is the
/// NIC (RDMA WRITEs counted). Outcomes themselves are judged by the expectations, not here.
#[test]
fn in_a_lab_guest_the_rdma_paths_are_measured_with_rxe_as_the_device() {
    if !cfg!(feature = "rdma") {
        eprintln!("skipped: built without the rdma feature (scripts/test.sh uses --all-features)");
        return;
    }
    if let Some(why) = lab_missing() {
        if std::env::var_os("CI").is_some() {
            panic!("the lab cannot run in CI: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let _g = serial();
    let sb = Sandbox::new("rdmalab");
    let scenario = sb.base.join("rdma-lab-test.toml");
    std::fs::write(&scenario, LAB_SCENARIO).unwrap();
    let o = sb
        .cmd()
        .args(["lab", "--fresh", "--kernels", "deb:6.1", "--timeout", "8m"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "lab failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let results = sb.results();
    assert_eq!(results.len(), 1, "{results:?}");
    let r = read_json(&results[0]);
    assert!(
        r["environment"]["rdma"]
            .as_str()
            .is_some_and(|d| d.starts_with("rxe0 port 1")),
        "the guest's rxe0 was used: {}",
        r["environment"]["rdma"]
    );
    let rows = r["probe"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3, "{rows:?}");
    for row in rows {
        assert_ne!(row["outcome"], "notrun", "measured in the guest: {row}");
        if row["pin"] == "rdma" && row["outcome"] == "ok" {
            assert_eq!(
                row["device_io"], "ok",
                "the RDMA WRITE through an allowed registration landed: {row}"
            );
        }
    }
    let storms = r["storms"].as_array().unwrap();
    assert_eq!(
        storms.len(),
        2,
        "the storm and its control cell: {storms:?}"
    );
    for storm in storms {
        assert_eq!(storm["outcome"], "ok", "{storm}");
        assert!(
            storm["totals"]["device_writes"].as_u64().unwrap() > 0,
            "the NIC wrote through the pins: {storm}"
        );
        // Every shape was drawn, packets around the rxe path MTU included, and RDMA WRITEs of
        // any offset and length (over 1 to 4 SGEs) land whole, exactly where they were sent.
        let by_shape = storm["totals"]["writes_by_shape"].as_object().unwrap();
        for shape in ["page", "sub-page", "page-crossing", "multi-page", "packets"] {
            assert!(by_shape.contains_key(shape), "{shape}: {}", storm["totals"]);
        }
        for oracle in ["misplaced_write", "torn_write", "spill"] {
            assert_eq!(storm["oracle"][oracle]["count"], 0, "{oracle}: {storm}");
        }
        check_shmem_storm_oracles(storm);
    }
    // With no layout change, no write is lost either.
    let control = storms.iter().find(|s| s["control"] == true).unwrap();
    assert_eq!(control["oracle"]["lost_write"]["count"], 0, "{control}");
    assert_eq!(
        control["totals"]["verified"], control["totals"]["device_writes"],
        "{control}"
    );
    // A finding in a guest is reproduced with the lab on the same kernel, not with a
    // `pinstorm run` the host cannot do.
    let lab_line = format!(
        "pinstorm lab --kernels deb:6.1 {} --pin rdma --backing tmpfs --map shared",
        scenario.display()
    );
    for storm in storms {
        for (oracle, f) in storm["oracle"].as_object().unwrap() {
            for line in f["reproduce"].as_array().into_iter().flatten() {
                assert!(
                    line.as_str().unwrap().starts_with(&lab_line),
                    "{oracle}: {line} (want {lab_line} ...)"
                );
            }
        }
    }
    // And the reproducer's replay of one write runs in the guest: `lab` takes `--write-at`
    // and the other override flags of `run` into the scenario it hands the guest.
    let replay = Sandbox::new("rdmalab-replay");
    let o = replay
        .cmd()
        .args(["lab", "--fresh", "--kernels", "deb:6.1", "--timeout", "8m"])
        .arg(&scenario)
        .args(["--pin", "rdma", "--backing", "tmpfs", "--map", "shared"])
        .args(["--write-at", "4097+1100", "--duration", "300ms"])
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "lab replay failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let r = read_json(&replay.results()[0]);
    let storms = r["storms"].as_array().unwrap();
    assert_eq!(storms.len(), 1, "one cell, no control cell: {storms:?}");
    let s = &storms[0];
    assert_eq!(
        (s["pinners"].as_u64(), s["disruptors"].as_u64()),
        (Some(1), Some(0))
    );
    let t = &s["totals"];
    let writes = t["device_writes"].as_u64().unwrap();
    assert!(writes > 0, "{t}");
    assert_eq!(
        t["writes_by_shape"]["write-at"].as_u64(),
        Some(writes),
        "{t}"
    );
    // 1100 bytes at an odd offset (more than one packet at the lab's path MTU) into a
    // pinned MR, with no layout change: every write lands where it was sent.
    assert_eq!(t["verified"].as_u64(), Some(writes), "{t}");
}

/// What the kernel is expected to do in the lab test's storm (pinned MRs on tmpfs, shared,
/// truncated; oracles.toml): nothing ties a pinned MR on shmem to the file, so a truncate
/// below a pinned page leaves the NIC writing into a page the file no longer has, and the
/// write is lost. How many writes race a truncate is up to the scheduler (a short storm under
/// TCG may lose none), so the count is checked against its own evidence instead of a
/// threshold: every device write is verified, ambiguous or lost, each lost one was truncated
/// away between its pin and its write, and the data a pin exposes is never stale or another
/// file's.
fn check_shmem_storm_oracles(storm: &serde_json::Value) {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    let totals = &storm["totals"];
    let lost = &storm["oracle"]["lost_write"];
    let judged: u64 = ["lost_write", "misplaced_write", "torn_write", "spill"]
        .iter()
        .map(|o| n(&storm["oracle"][o]["count"]))
        .sum();
    assert_eq!(
        n(&totals["verified"]) + n(&totals["ambiguous"]) + judged,
        n(&totals["device_writes"]),
        "every device write is verified, ambiguous or a finding: {storm}"
    );
    let examples = lost["examples"].as_array().unwrap();
    assert!(
        n(&lost["count"]) == 0 || !examples.is_empty(),
        "lost writes come with examples: {lost}"
    );
    for ex in examples {
        let off = n(&ex["offset"]);
        let truncated_below = ex["history"].as_array().unwrap().iter().any(|h| {
            h.as_str()
                .and_then(|h| h.split_once(": truncate to "))
                .and_then(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
                .is_some_and(|to| to <= off)
        });
        assert!(
            truncated_below,
            "a lost write that no truncate between its pin and its write explains: {ex}"
        );
    }
    for oracle in ["stale_exposure", "cross_file", "unexpected_outcomes"] {
        assert_eq!(n(&storm["oracle"][oracle]["count"]), 0, "{oracle}: {storm}");
    }
}
