//! Input that once panicked pinstorm: out-of-range durations, sizes, counts and signals on
//! the command line and in scenario files, and result files whose histograms come from
//! another HdrHistogram producer or were edited by hand. Each is refused with exit status 2
//! and a message naming the flag, key or file and what is allowed, or (histograms of other
//! producers) simply works; none may panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use common::*;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};
use hdrhistogram::Histogram;
use pinstorm_analysis::hist::Latency;

/// A real result made by `pinstorm run` on a test machine (the fuzz corpus's seed).
const REAL_RESULT: &str = include_str!("../fuzz/corpus/result/real-run.json");

fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(
        !e.contains("panicked") && o.status.code() != Some(101),
        "pinstorm panicked:\n{e}"
    );
}

/// Exit status 2, and stderr names every one of `needles`.
fn refused(o: &Output, needles: &[&str]) {
    no_panic(o);
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr:\n{e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
}

fn scenario_file(sb: &Sandbox, text: &str) -> String {
    let f = sb.base.join("s.toml");
    std::fs::write(&f, text).unwrap();
    f.display().to_string()
}

#[test]
fn a_duration_too_large_for_a_duration_is_exit_2_naming_the_flag_and_the_range() {
    let sb = Sandbox::new("in-huge-duration");
    for args in [
        &["run", "quick", "--duration", "20000000000000000000s"][..],
        &["bench", "pin", "--max-time", "20000000000000000000s"],
        &["lab", "--timeout", "20000000000000000000s"],
    ] {
        let o = sb.run(args);
        refused(&o, &[args[args.len() - 2], "between 0s and 168h"]);
    }
    assert!(sb.results().is_empty());
}

#[test]
fn lab_with_no_guests_at_once_is_exit_2_naming_jobs() {
    let sb = Sandbox::new("in-lab-jobs");
    let o = sb.run(&["lab", "--kernels", "deb:6.1", "--jobs", "0"]);
    refused(&o, &["--jobs 0"]);
    assert!(sb.results().is_empty());
}

#[test]
fn a_duration_that_would_overflow_a_deadline_is_exit_2_naming_the_flag_and_the_range() {
    let sb = Sandbox::new("in-far-deadline");
    for args in [
        &["bench", "pin", "--max-time", "10000000000000s"][..],
        &["run", "truncate-vs-pin", "--duration", "5000000000h"],
        &["bench", "pin", "--max-time", "169h"],
    ] {
        let o = sb.run(args);
        refused(&o, &[args[args.len() - 2], "168h"]);
    }
    assert!(sb.results().is_empty());
}

#[test]
fn huge_durations_in_a_scenario_file_are_exit_2_naming_file_line_key_and_range() {
    let sb = Sandbox::new("in-scenario-duration");
    for (text, line, key) in [
        (
            "name = \"x\"\n[storm]\nduration = \"20000000000000000000s\"\n",
            "line 3",
            "duration",
        ),
        (
            "name = \"x\"\n[bench]\nmax_time = \"100000000h\"\n",
            "line 3",
            "max_time",
        ),
        (
            "name = \"x\"\n\n[lease]\ndelay = \"1e300s\"\n",
            "line 4",
            "delay",
        ),
        (
            "name = \"x\"\n[rdma]\ncompletion_timeout = \"9999999999999999999999s\"\n[probe]\n",
            "line 3",
            "completion_timeout",
        ),
    ] {
        let f = scenario_file(&sb, text);
        let o = sb.run(&["run", &f]);
        refused(&o, &[&f, line, key]);
    }
    assert!(sb.results().is_empty());
}

#[test]
fn sizes_near_u64_max_are_exit_2_naming_the_flag_or_key_and_the_range() {
    let sb = Sandbox::new("in-huge-size");
    for args in [
        &["probe", "--size", "18446744073709551615"][..],
        &["probe", "--size", "16777215T"],
        &["bench", "pin", "--sizes", "4K,18446744073709551615"],
    ] {
        let o = sb.run(args);
        refused(&o, &[args[args.len() - 2], "between 1 byte and 1T"]);
    }
    for (text, key) in [
        (
            "name = \"x\"\n[storm]\nfile_size = 9223372036854775807\n",
            "file_size",
        ),
        (
            "name = \"x\"\n[probe]\nsize = \"18446744073709551615\"\n",
            "size",
        ),
        ("name = \"x\"\n[lease]\npin_size = \"2T\"\n", "pin_size"),
    ] {
        let f = scenario_file(&sb, text);
        let o = sb.run(&["run", &f]);
        refused(&o, &[&f, "line 3", key, "1T"]);
    }
    assert!(sb.results().is_empty());
}

#[test]
fn a_lease_signal_past_sigrtmax_is_exit_2_naming_the_key_and_the_range() {
    let sb = Sandbox::new("in-signal");
    let max = libc::SIGRTMAX() - libc::SIGRTMIN();
    for v in ["1000", "-1", &(max + 1).to_string()] {
        let f = scenario_file(
            &sb,
            &format!("name = \"x\"\n[lease]\nrounds = 1\nsignal = {v}\n"),
        );
        let o = sb.run(&["run", &f]);
        refused(
            &o,
            &[
                &f,
                "line 4",
                "[lease] signal",
                &format!("between 0 and {max}"),
                "SIGRTMAX",
            ],
        );
    }
    assert!(sb.results().is_empty());
}

#[test]
fn thread_and_cycle_counts_out_of_range_are_exit_2_naming_the_flag_or_key_and_the_range() {
    let sb = Sandbox::new("in-counts");
    for (args, needle) in [
        (
            &["bench", "pin", "--threads", "0"][..],
            "between 1 and 1024",
        ),
        (
            &["bench", "pin", "--threads", "100000"],
            "between 1 and 1024",
        ),
        (
            &["bench", "pin", "--iterations", "18446744073709551615"],
            "between 1 and 1000000000",
        ),
        (
            &["bench", "pin", "--warmup", "18446744073709551615"],
            "between 0 and 10000000",
        ),
        (&["bench", "pin", "--max-time", "0s"], "greater than zero"),
        (
            &["compare", "a", "b", "--min-effect", "NaN"],
            "between 0 and 1000",
        ),
        (
            &["compare", "a", "b", "--single-run-noise", "inf"],
            "between 0 and 1000",
        ),
    ] {
        let o = sb.run(args);
        refused(&o, &[args[args.len() - 2], needle]);
    }
    for (text, needle) in [
        (
            "name = \"x\"\n[storm]\npinners = 100000\n",
            "[storm] pinners: must be between 1 and 1024",
        ),
        (
            "name = \"x\"\n[storm]\nrate = 1e-300\n",
            "[storm] rate: must be 0 (as fast as possible) or between 0.001 and 1000000000",
        ),
        (
            "name = \"x\"\n[lease]\noverhead_cycles = 4000000000\n",
            "[lease] overhead_cycles: must be between 0 and 10000000",
        ),
    ] {
        let f = scenario_file(&sb, text);
        let o = sb.run(&["run", &f]);
        refused(&o, &[&f, "line 3", needle]);
    }
    assert!(sb.results().is_empty());
}

#[test]
fn lab_guest_sizes_out_of_range_are_exit_2_naming_the_flag_and_the_range() {
    let sb = Sandbox::new("in-lab");
    let cache = sb.base.join("cache");
    for (flag, v, needle) in [
        ("--cpus", "0", "between 1 and 256"),
        (
            "--memory",
            "18446744073709551615",
            "between 1024 and 1048576",
        ),
        ("--timeout", "0s", "greater than zero"),
        ("--movablecore", "100%", "a percentage of memory"),
        ("--movablecore", "1G mem=4G", "a size"),
    ] {
        let o = sb.run(&[
            "lab",
            "--cache",
            cache.to_str().unwrap(),
            "--kernels",
            "deb:6.12",
            flag,
            v,
            "quick",
        ]);
        refused(&o, &[flag, needle]);
    }
}

/// Selftest names reach the lab cache as file names: only the allow-list gets through, and a
/// source series is a series.
#[test]
fn lab_kselftests_outside_the_allow_list_are_exit_2_naming_the_flag() {
    let sb = Sandbox::new("in-lab-kselftests");
    let cache = sb.base.join("cache");
    for (args, needle) in [
        (&["--kselftests", "../../bin/sh"][..], "unknown kselftest"),
        (
            &["--kselftests", "gup_longterm,run_vmtests.sh"][..],
            "unknown kselftest",
        ),
        (
            &["--kselftests", "cow", "--kselftest-source", "../6.12"][..],
            "a kernel series such as 6.12",
        ),
    ] {
        let mut a = vec![
            "lab",
            "--cache",
            cache.to_str().unwrap(),
            "--kernels",
            "deb:6.12",
        ];
        a.extend_from_slice(args);
        a.push("quick");
        let o = sb.run(&a);
        refused(&o, &[args[args.len() - 2], needle]);
    }
}

/// A real result with every count of its storms at `u64::MAX` (two storms, so that sums
/// overflow), more cells without an expectation than were checked, and pin counters at the
/// ends of `i64`.
const COUNTS_AT_MAX: &str = include_str!("../fuzz/corpus/result/counts-at-u64-max.json");

#[test]
fn counts_at_u64_max_in_a_result_file_are_compared_plotted_reported_and_exported() {
    let sb = Sandbox::new("in-max-counts");
    let base = write_result(&sb.base, "base", REAL_RESULT);
    let cand = write_result(&sb.base, "max", COUNTS_AT_MAX);
    let o = sb
        .cmd()
        .args(["--format", "json", "compare"])
        .arg(&base)
        .arg(&cand)
        .args(["--fail-on", "violations>0", "--fail-on", "lost_write>+50%"])
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let v = json(&o);
    let lost = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "lost_write")
        .unwrap();
    assert_eq!(
        lost["cand_total"].as_u64(),
        Some(u64::MAX),
        "saturated: {lost}"
    );
    let o = sb
        .cmd()
        .arg("plot")
        .arg(&base)
        .arg(&cand)
        .arg("--out")
        .arg(sb.base.join("plots"))
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = sb
        .cmd()
        .arg("report")
        .arg(&base)
        .arg(&cand)
        .arg("--out")
        .arg(sb.base.join("report.html"))
        .output()
        .unwrap();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for to in ["csv", "ktap", "junit"] {
        let o = sb.cmd().args(["export", to]).arg(&cand).output().unwrap();
        no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{to}: {}", stderr(&o));
    }
}

/// Each stored histogram of `text` (a result file) replaced by `f(old)`.
fn with_histograms(text: &str, run_id: &str, f: &dyn Fn(&str) -> String) -> String {
    fn walk(v: &mut serde_json::Value, f: &dyn Fn(&str) -> String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, c) in m.iter_mut() {
                    if k.ends_with("histogram") {
                        if let Some(h) = c.as_str() {
                            *c = serde_json::Value::String(f(h));
                            continue;
                        }
                    }
                    walk(c, f);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    walk(&mut v, f);
    v["run_id"] = run_id.into();
    serde_json::to_string_pretty(&v).unwrap()
}

/// The same samples as HdrHistogram with other bounds and precision would store them, and
/// where those bounds reach past pinstorm's (one hour) a sample of two hours: merging that
/// into pinstorm's bounds is what used to panic.
fn as_other_producer(h: &str, low: u64, high: u64, digits: u8) -> String {
    let ours = Latency::decode(h).unwrap();
    let mut other = Histogram::<u64>::new_with_bounds(low, high, digits).unwrap();
    for v in ours.histogram().iter_recorded() {
        other.saturating_record_n(v.value_iterated_to(), v.count_at_value());
    }
    const TWO_HOURS_NS: u64 = 7_200_000_000_000;
    if high > TWO_HOURS_NS {
        other.record(TWO_HOURS_NS).unwrap();
    }
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(&other, &mut buf)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An uncompressed V2 histogram of pinstorm's bounds whose counts are `payload`.
fn v2_with_payload(payload: &[u8]) -> Vec<u8> {
    let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
    let mut v = Vec::new();
    V2Serializer::new().serialize(&h, &mut v).unwrap();
    v.truncate(40);
    v[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn write_result(dir: &Path, name: &str, text: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("result.json");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn histograms_from_other_hdrhistogram_producers_are_compared_and_plotted() {
    let sb = Sandbox::new("in-foreign-hist");
    let base = write_result(&sb.base, "base", REAL_RESULT);
    for (i, (low, high, digits)) in [
        (1, u64::MAX, 2),
        (1000, 100_000_000_000, 5),
        (1, 1 << 20, 1),
        (1, 1 << 50, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let text = with_histograms(REAL_RESULT, &format!("foreign-{i}"), &|h| {
            as_other_producer(h, low, high, digits)
        });
        let cand = write_result(&sb.base, &format!("foreign-{i}"), &text);
        let o = sb
            .cmd()
            .args(["--format", "json", "compare"])
            .arg(&base)
            .arg(&cand)
            .output()
            .unwrap();
        no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        let latency = v["latency"].as_array().unwrap();
        assert!(!latency.is_empty(), "no latency metric compared: {v}");
        assert!(
            latency
                .iter()
                .all(|l| l["cand"]["samples"].as_u64() > Some(0)),
            "{v}"
        );
        let out = sb.base.join(format!("plots-{i}"));
        let o = sb
            .cmd()
            .arg("plot")
            .arg(&base)
            .arg(&cand)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(out.join("pin-latency.svg").is_file(), "{}", stdout(&o));
    }
}

#[test]
fn hand_edited_histograms_make_compare_and_plot_refuse_the_file_by_name_with_exit_2() {
    let sb = Sandbox::new("in-edited-hist");
    let base = write_result(&sb.base, "base", REAL_RESULT);
    // The edits: base64 that is not, a histogram cut short, counts past 2^48 samples, a
    // varint HdrHistogram's deserializer overflows on, and a length that would make it
    // allocate 4 GiB.
    let mut huge_len = v2_with_payload(&[2]);
    huge_len[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    type Edit = Box<dyn Fn(&str) -> String>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "not base64",
            Box::new(|h: &str| h.replacen(['A', 'g'], "!", 2)),
        ),
        (
            "truncated",
            Box::new(|h: &str| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(h).unwrap();
                b64(&bytes[..bytes.len() / 2])
            }),
        ),
        (
            "2^48 samples",
            Box::new(|_: &str| {
                // zig-zag 2^60, twice
                let count = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
                b64(&v2_with_payload(&[count, count].concat()))
            }),
        ),
        (
            "zero counts is longer",
            Box::new(|_: &str| b64(&v2_with_payload(&[0xff; 9]))),
        ),
        ("truncated", Box::new(move |_: &str| b64(&huge_len))),
    ];
    for (i, (why, edit)) in edits.iter().enumerate() {
        let text = with_histograms(REAL_RESULT, &format!("edited-{i}"), edit.as_ref());
        let cand = write_result(&sb.base, &format!("edited-{i}"), &text);
        let cand_s = cand.display().to_string();
        let o = sb
            .cmd()
            .arg("compare")
            .arg(&base)
            .arg(&cand)
            .output()
            .unwrap();
        refused(&o, &[&cand_s, "histogram does not decode", why]);
        let o = sb
            .cmd()
            .arg("plot")
            .arg(&cand)
            .arg("--out")
            .arg(sb.base.join("plots"))
            .output()
            .unwrap();
        refused(&o, &[&cand_s, "histogram does not decode", why]);
        // Next to a good file, the edited one is skipped by name and the rest plotted.
        let o = sb
            .cmd()
            .arg("plot")
            .arg(&base)
            .arg(&cand)
            .arg("--out")
            .arg(sb.base.join("plots"))
            .output()
            .unwrap();
        no_panic(&o);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("skipped {cand_s}")),
            "{}",
            stderr(&o)
        );
    }
}
