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
