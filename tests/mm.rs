//! Memory-management operations against held pins on this host's kernel (`mm-vs-pin`):
//! every operation runs or says why not, and the diverged and moved oracles agree, operation
//! by operation, with an independent witness: a small C program
//! (tests/independent/mm_probe.c) that pins a buffer with io_uring fixed buffers, runs the
//! same operation, and checks both ways through the pin and the mapping and the frames in
//! /proc/self/pagemap.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// The witness's name for a pinstorm operation, where it has one.
fn probe_op(op: &str) -> Option<&'static str> {
    Some(match op {
        "madvise-dontneed" => "dontneed",
        "madvise-free" => "free",
        "madvise-remove" => "remove",
        "madvise-pageout" => "pageout",
        "madvise-cold" => "cold",
        "fork-cow" => "fork",
        "mremap-move" => "mremap-move",
        "mremap-grow" => "mremap-grow",
        "compact" => "compact",
        _ => return None,
    })
}

/// What the witness says for one backing, mapping and operation: `(diverged, moved)`, or
/// `None` when the operation failed there (`op:ERRNO`).
fn witness(probe: &Path, kind: &str, map: &str, op: &str) -> Option<(bool, bool)> {
    let o = Command::new(probe)
        .args([kind, map, op, "2097152"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "witness {kind} {map} {op}: {}",
        stderr(&o)
    );
    let out = stdout(&o).trim().to_string();
    if out.contains(':') {
        return None;
    }
    let (d, m) = out
        .split_once(' ')
        .unwrap_or_else(|| panic!("witness said {out:?}"));
    assert_ne!(m, "unknown", "the witness runs as root and reads frames");
    Some((d == "diverged", m == "moved"))
}

/// How many of an oracle's findings were attributed to `op` alone.
fn by_op(s: &serde_json::Value, oracle: &str, op: &str) -> u64 {
    s["oracle"][oracle]["by_op"][op].as_u64().unwrap_or(0)
}

#[test]
fn mm_operations_run_or_say_why_and_diverged_and_moved_agree_with_an_independent_witness() {
    if !is_root() {
        skip(
            "mm-vs-pin",
            "compaction and the frames in /proc/self/pagemap need root",
        );
        return;
    }
    let Some(probe) =
        build_mm_probe(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("independent-mm-probe"))
    else {
        return;
    };
    let _g = serial();
    let sb = Sandbox::new("mm");
    let before = machine_state(&sb.base);
    let o = pinstorm()
        .arg("--results")
        .arg(&sb.results)
        .arg("--scratch-root")
        .arg(&sb.scratch)
        .args(["run", "mm-vs-pin", "--pin", "io_uring", "--duration", "2s"])
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    // The summary shows both oracles.
    let text = stdout(&o);
    assert!(text.contains("DIVERG") && text.contains("MOVED"), "{text}");
    let r = read_json(sb.results().last().unwrap());
    assert_eq!(r["complete"], true);
    let storms = r["storms"].as_array().unwrap();
    let mut compared = BTreeMap::new();
    let mut missed: Vec<(String, String, String, (bool, bool))> = Vec::new();
    for s in storms {
        assert_eq!(s["outcome"], "ok", "{s}");
        let (backing, map) = (s["backing"].as_str().unwrap(), s["map"].as_str().unwrap());
        if s["control"] == true {
            // No operation: nothing may diverge or move.
            for oracle in ["diverged", "moved", "lost_write"] {
                assert_eq!(
                    s["oracle"][oracle]["count"], 0,
                    "{backing} {map} control {oracle}"
                );
            }
            continue;
        }
        let kind = match backing {
            "anon" => "anon",
            // tmpfs files are shmem like memfd: the witness uses a memfd for both.
            "memfd" | "tmpfs" => "memfd",
            b => panic!("unexpected backing {b}"),
        };
        for op in s["layout_ops"].as_array().unwrap() {
            let name = op["op"].as_str().unwrap();
            let ran = op["count"].as_u64().unwrap() > 0;
            // Every operation ran, or is notrun with the reason.
            if !ran {
                assert_eq!(op["outcome"], "notrun", "{backing} {map} {name}: {op}");
                assert!(
                    op["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{backing} {map} {name} did not run and says no reason: {op}"
                );
            }
            let Some(pop) = probe_op(name) else { continue };
            let theirs = witness(&probe, kind, map, pop);
            let Some((diverged, moved)) = theirs else {
                // The witness's call failed there: pinstorm must not have run it either.
                assert!(
                    !ran || !op["errors"].as_object().unwrap().is_empty(),
                    "{backing} {map} {name}: the witness's call fails, pinstorm's ran: {op}"
                );
                continue;
            };
            if !ran {
                // Never drawn in a short cell (a long compaction or fork can hold the one
                // disruptor for most of 2 s on a busy machine): run the cell again for longer,
                // where it must run and agree.
                eprintln!(
                    "{backing} {map} {name}: not called in this cell ({}); running the cell again for longer",
                    op["reason"]
                );
                missed.push((
                    backing.to_string(),
                    map.to_string(),
                    name.to_string(),
                    (diverged, moved),
                ));
                continue;
            }
            let ours = (by_op(s, "diverged", name) > 0, by_op(s, "moved", name) > 0);
            // A finding the witness does not make is wrong at once. A finding the witness
            // makes and the storm did not is a chance the storm did not get (it samples: an
            // operation must hit the page a pinner checks, between its pin and its check,
            // with no other operation in between, and a busy machine runs fewer cycles):
            // that cell runs again, longer, below, and must find it then.
            let extra = (ours.0 && !diverged) || (ours.1 && !moved);
            assert!(
                !extra,
                "{backing} {map} {name}: pinstorm (diverged, moved) = {ours:?}, the witness {:?}; pinstorm found {} / {}",
                (diverged, moved),
                s["oracle"]["diverged"],
                s["oracle"]["moved"],
            );
            if ours != (diverged, moved) {
                eprintln!(
                    "{backing} {map} {name}: missed {:?} in {} ops (the witness {:?}); running the cell again for longer",
                    ours,
                    op["count"],
                    (diverged, moved)
                );
                missed.push((
                    backing.to_string(),
                    map.to_string(),
                    name.to_string(),
                    (diverged, moved),
                ));
            }
            compared.insert(format!("{backing} {map} {name}"), (diverged, moved));
        }
        // Nothing diverges or moves on this kernel without an operation since the pin.
        assert_eq!(by_op(s, "diverged", "none"), 0, "{backing} {map}");
        assert_eq!(by_op(s, "moved", "none"), 0, "{backing} {map}");
    }
    for (backing, map, name, want) in &missed {
        let o = pinstorm()
            .arg("--results")
            .arg(&sb.results)
            .arg("--scratch-root")
            .arg(&sb.scratch)
            .args([
                "run",
                "mm-vs-pin",
                "--pin",
                "io_uring",
                "--backing",
                backing,
            ])
            .args(["--map", map, "--duration", "8s"])
            .output()
            .unwrap();
        assert!(
            matches!(o.status.code(), Some(0) | Some(3)),
            "{}",
            stderr(&o)
        );
        let r = read_json(sb.results().last().unwrap());
        let s = r["storms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["control"] != true)
            .expect("the storm cell");
        let op = s["layout_ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == name.as_str())
            .expect("the operation's row");
        assert!(
            op["count"].as_u64().unwrap() > 0,
            "{backing} {map} {name} never ran in an 8 s cell: {op}\n{}",
            s["layout_ops"]
        );
        let ours = (by_op(s, "diverged", name) > 0, by_op(s, "moved", name) > 0);
        assert_eq!(
            ours, *want,
            "{backing} {map} {name}, 8 s: pinstorm (diverged, moved) = {ours:?}, the witness {want:?}; pinstorm found {} / {}",
            s["oracle"]["diverged"], s["oracle"]["moved"],
        );
    }
    // Both verdicts were seen: the comparison can fail both ways.
    assert!(
        compared.values().any(|v| *v == (true, true)),
        "{compared:?}"
    );
    assert!(
        compared.values().any(|v| *v == (false, false)),
        "{compared:?}"
    );
    assert_left_as_found(&sb.base, &before);
}

/// The lab-only operations never run on a host: `pinstorm run mm-vs-pin-lab` is refused
/// with exit 2 and the reason, before anything is set up (no result, no run directory),
/// root or not. Only the lab guest's entry point tells a run it is in a lab guest.
#[test]
fn mm_vs_pin_lab_is_refused_on_a_host_with_the_reason() {
    let sb = Sandbox::new("mm-lab-refused");
    let o = sb.run(&["run", "mm-vs-pin-lab"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("only inside a lab guest"), "{err}");
    for op in ["hwpoison", "soft-offline", "memory-offline"] {
        assert!(err.contains(op), "{err}");
    }
    assert!(sb.results().is_empty());
    assert!(sb.leftover_run_dirs().is_empty());
    // Refused as a whole before an earlier scenario of the same command runs.
    let o = sb.run(&["run", "quick", "mm-vs-pin-lab"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(sb.results().is_empty());
    // The operations themselves, in a scenario file of the user's, are refused the same way.
    let file = std::env::temp_dir().join(format!("pinstorm-hwpoison-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "name = \"mine\"\n[storm]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\nops = [\"madvise-cold\", \"hwpoison\"]\n",
    )
    .unwrap();
    let o = sb.run(&["run", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("hwpoison"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("madvise-cold"), "{}", stderr(&o));
}
