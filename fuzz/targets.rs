//! The fuzz targets: one function per input pinstorm parses, taking arbitrary bytes. Each
//! must return (accepting or refusing the input) and never panic; where a parsed value
//! goes on to be used (a result file is compared, plotted, exported), the target uses it
//! the way the commands do, so a value that parses but breaks a consumer is found too.
//!
//! Shared by the stable-Rust harness that runs in the test command (tests/fuzz.rs) and by
//! the optional cargo-fuzz targets (fuzz/fuzz_targets/), so both exercise the same code.
//! Seeds: [`seeds`] (the shipped configs and generated histograms) and the files under
//! fuzz/corpus/<target>/ (including every input that once crashed).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use pinstorm_analysis::catalog::{self, Catalog, LoadedRun, Selector};
use pinstorm_analysis::check::{self, Check};
use pinstorm_analysis::compare::{self, CompareOptions};
use pinstorm_analysis::expect::{self, Expectations};
use pinstorm_analysis::gate::{self, Gate};
use pinstorm_analysis::hist::{Latency, Sparse};
use pinstorm_analysis::kernel::{KernelRange, KernelRelease};
use pinstorm_analysis::stats::Ranked;
use pinstorm_analysis::{export, metrics, render, report, summary};
use pinstorm_lab::guest::{GuestPlan, GuestReport};
use pinstorm_lab::kernels::KernelSpec;
use pinstorm_workloads::scenario::{Scenario, PRESETS};
use pinstorm_workloads::scratch::{journal, JournalEntry};
use pinstorm_workloads::units::{Size, Span};

pub type Target = fn(&[u8]) -> bool;

/// Every target, by the name of its corpus directory. A target returns whether the input
/// was accepted (parsed), so that the harness can say how much of its input got past the
/// parsers.
pub const TARGETS: &[(&str, Target)] = &[
    ("scenario", scenario),
    ("expectations", expectations),
    ("journal", journal),
    ("result", result),
    ("histogram", histogram),
    ("selector", selector),
    ("gate", gate),
    ("check", check),
    ("gates-toml", gates_toml),
    ("units", units),
    ("kernel", kernel),
    ("lab", lab),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A scenario file, and what the lab does with one that parses: serialize it for the guest,
/// which parses it again.
pub fn scenario(data: &[u8]) -> bool {
    let t = text(data);
    let Ok(s) = Scenario::parse(&t, "fuzz.toml") else {
        return false;
    };
    let again = s.to_text();
    if let Err(e) = Scenario::parse(&again, "re-serialized") {
        panic!("a scenario that parsed does not parse once re-serialized: {e}\n{again}");
    }
    true
}

/// Pin and lease expectation files, and looking cells up in them.
pub fn expectations(data: &[u8]) -> bool {
    let t = text(data);
    let kernels = [
        "6.1.0",
        "6.12.0-1-amd64",
        "7.0",
        "4294967295.4294967295.99999999999",
    ];
    let kernels: Vec<KernelRelease> = kernels
        .iter()
        .filter_map(|k| KernelRelease::parse(k))
        .collect();
    let pins = Expectations::parse(&t, "fuzz.toml");
    if let Ok(e) = &pins {
        for k in &kernels {
            for (pin, backing, dax, dev) in [
                ("io_uring", "xfs", Some(false), None),
                ("rdma", "xfs-dax", Some(true), Some("rxe0")),
                ("vmsplice", "anon", None, None),
            ] {
                let cell = expect::Cell {
                    pin,
                    backing,
                    fs: backing,
                    map: "shared",
                    access: "rw",
                    dax,
                    rdma_device: dev,
                };
                let _ = expect::judge(e, &cell, k, "ok");
            }
        }
    }
    // One parser reads every kind of rule (pins, lease facts, oracles).
    if let Ok(e) = &pins {
        for k in &kernels {
            let _ = e.facts().lookup("dup-close", "holder_signalled", k);
        }
    }
    pins.is_ok()
}

/// The scratch journal (what `cleanup` reads after a killed run): each line alone, and the
/// whole text as a journal of run "x".
pub fn journal(data: &[u8]) -> bool {
    let t = text(data);
    let mut any = false;
    for line in t.lines() {
        any |= JournalEntry::parse(line).is_ok();
    }
    any | journal::parse(&t, "x").is_ok()
}

/// The base run a fuzzed result is compared against: a real result in the corpus.
const BASE_RESULT: &[u8] = include_bytes!("corpus/result/real-run.json");

fn base_run() -> &'static LoadedRun {
    static BASE: std::sync::OnceLock<LoadedRun> = std::sync::OnceLock::new();
    BASE.get_or_init(|| LoadedRun {
        path: PathBuf::from("/fuzz/base.json"),
        result: catalog::parse_result(BASE_RESULT).expect("the corpus's real result parses"),
    })
}

/// A result file, as `compare`, `plot`, `report`, `export` and the run summary use it.
pub fn result(data: &[u8]) -> bool {
    let Ok(r) = catalog::parse_result(data) else {
        return false;
    };
    let base = base_run();
    let fuzzed = LoadedRun {
        path: PathBuf::from("/fuzz/result.json"),
        result: r,
    };
    let _ = summary::render(&fuzzed.result, Some(Path::new("/fuzz/result.json")));
    let _ = metrics::latencies(&fuzzed.result);
    let _ = metrics::notrun(&fuzzed.result);
    let _ = export::csv::render(&[&fuzzed]);
    let _ = export::ktap::render(&[&fuzzed]);
    let _ = export::junit::render(&[&fuzzed]);
    let _ = export::kcidb::render(&[&fuzzed]);
    let checks: Vec<Check> = [
        "io_uring:anon:shared:rw=ok",
        "lost_write@io_uring:tmpfs<=3",
        "p50(io_uring:anon:4K:register)<50us",
    ]
    .iter()
    .map(|c| Check::parse(c).expect("valid check"))
    .collect();
    let _ = check::evaluate(&checks, &check::subjects_by_release(&[&fuzzed.result])).render();
    // Few bootstrap replicates: the statistics are not what is tested here.
    let opts = CompareOptions {
        iterations: 20,
        stats: vec!["p50".into(), "p99".into(), "p999".into()],
        ..CompareOptions::default()
    };
    let gates: Vec<Gate> = [
        "p50>+10%",
        "p99[tmpfs]>+20%",
        "violations>0",
        "lost_write>+50%",
        "differs>+1",
        "refused>0",
        "allowed>0",
        "outcomes>0",
    ]
    .iter()
    .map(|g| Gate::parse(g).expect("valid gate"))
    .collect();
    let facts = |r: &LoadedRun| r.facts().expect("a result that parsed has facts");
    let mut cmp = compare::compare("base", &[&facts(base)], "cand", &[&facts(&fuzzed)], &opts);
    let _ = gate::apply(&mut cmp, &gates, &gate::GateOptions::default());
    let _ = render::text(&cmp);
    let _ = render::markdown(&cmp);
    let _ = serde_json::to_string(&cmp).expect("a comparison serializes");
    // The report draws every chart and compares each group with the first: the fuzzed run
    // in a group of its own (a copy under another label) and next to the real one.
    let mut copy = fuzzed.clone();
    copy.result.run_id.push_str("-copy");
    copy.result.label = Some("fuzz-copy".into());
    let catalog = Catalog {
        runs: vec![facts(base), facts(&fuzzed), facts(&copy)],
        skipped: Vec::new(),
    };
    let groups = catalog.groups();
    let _ = report::render(&catalog, &groups, &opts, "fuzz");
    true
}

/// A stored histogram. The first byte says how the rest is wrapped, so that mutations
/// reach the binary format under the base64 and the compression: 0 base64 text as is,
/// 1 an uncompressed V2 encoding, anything else a V2 encoding that is compressed here.
pub fn histogram(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let encoded = match mode {
        0 => text(rest),
        1 => b64(rest),
        _ => b64(&compressed_v2(rest)),
    };
    // What compare and report decode must agree with the full decoder: the same buckets,
    // or the same refusal.
    let sparse = Sparse::decode(&encoded);
    let Ok(l) = Latency::decode(&encoded) else {
        assert_eq!(
            sparse.map_err(|e| format!("{e:#}")),
            Err(format!("{:#}", Latency::decode(&encoded).unwrap_err())),
            "the sparse decoder refuses what the full one refuses, saying the same"
        );
        return false;
    };
    assert_eq!(
        sparse.expect("the sparse decoder reads what the full one reads"),
        Sparse::of(&l)
    );
    let s = l.stats();
    assert!(s.count <= pinstorm_analysis::hist::MAX_SAMPLES, "{s:?}");
    let r = Ranked::from_histogram(l.histogram());
    if !r.is_empty() {
        let _ = r.quantile(0.5);
        let _ = r.bootstrap_quantile(0.99, 5, 1);
    }
    let mut ours = Latency::new();
    for v in [1, 1000, 3_600_000_000_000, u64::MAX] {
        ours.record(v);
    }
    ours.merge(&l);
    assert_eq!(ours.count(), 4 + l.count(), "merging loses no samples");
    let back = Latency::decode(&l.encode()).expect("pinstorm's own encoding decodes");
    assert_eq!(back.stats(), l.stats(), "a decoded histogram round-trips");
    true
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// HdrHistogram's V2-compressed wrapping of a V2 encoding: cookie, length, zlib.
pub fn compressed_v2(v2: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(v2).expect("compressing to memory");
    let deflated = z.finish().expect("compressing to memory");
    let mut out = 0x1c84_9314u32.to_be_bytes().to_vec();
    out.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
    out.extend_from_slice(&deflated);
    out
}

/// A selector of `compare` (`kernel=6.12,label=base,latest`), and matching runs with it.
pub fn selector(data: &[u8]) -> bool {
    let t = text(data);
    let _ = Selector::looks_like(&t);
    let parsed = Selector::parse(&t);
    if let Ok(sel) = &parsed {
        let c = Catalog {
            runs: vec![base_run().clone()],
            skipped: Vec::new(),
        };
        let _ = c.select(sel);
        let _ = catalog::release_matches("6.12.0-1-amd64", sel.kernel.as_deref().unwrap_or(""));
    }
    parsed.is_ok()
}

/// A `--fail-on` gate.
pub fn gate(data: &[u8]) -> bool {
    Gate::parse(&text(data)).is_ok()
}

/// A `--check` expression, judged on a real result as `git bisect run` would have it.
pub fn check(data: &[u8]) -> bool {
    let Ok(c) = Check::parse(&text(data)) else {
        return false;
    };
    let _ = c.pin_and_backing();
    let report = check::evaluate(
        std::slice::from_ref(&c),
        &check::subjects_by_release(&[&base_run().result]),
    );
    let _ = (report.render(), report.exit_code());
    true
}

/// A `--gates` file.
pub fn gates_toml(data: &[u8]) -> bool {
    gate::from_toml(&text(data), "fuzz.toml").is_ok()
}

/// Sizes and durations as flags and scenario values take them; what parses prints as text
/// that parses back to the same value.
pub fn units(data: &[u8]) -> bool {
    let t = text(data);
    let size = t.parse::<Size>();
    if let Ok(s) = size {
        let again: Size = s.to_string().parse().expect("a printed size parses");
        assert_eq!(again, s, "{t:?}");
        let _ = s.round_up(1 << 30);
    }
    let span = t.parse::<Span>();
    if let Ok(s) = span {
        let printed = s.to_string();
        let again: Span = printed.parse().expect("a printed duration parses");
        let diff = again.0.abs_diff(s.0);
        assert!(
            diff <= std::time::Duration::from_micros(1),
            "{t:?} -> {printed:?} -> {again:?}"
        );
    }
    size.is_ok() || span.is_ok()
}

/// Kernel releases and version ranges (expectation files, selectors), and `--kernels`.
pub fn kernel(data: &[u8]) -> bool {
    let t = text(data);
    let release = KernelRelease::parse(&t);
    let range = t.parse::<KernelRange>();
    if let (Ok(r), Some(k)) = (&range, &release) {
        let _ = r.contains(k);
    }
    let mut specs = false;
    for spec in t.split(',') {
        specs |= KernelSpec::parse(spec.trim(), None).is_ok();
        let _ = KernelSpec::parse(spec.trim(), Some(Path::new("/lib/modules")));
    }
    release.is_some() || range.is_ok() || specs
}

/// What the lab hands a guest (its plan) and what the guest hands back (its report); the
/// plan's scenario is parsed in the guest.
pub fn lab(data: &[u8]) -> bool {
    let plan = serde_json::from_slice::<GuestPlan>(data);
    if let Ok(plan) = &plan {
        let _ = Scenario::parse(&plan.scenario_text, &plan.origin);
        if let Some(sources) = &plan.expectations {
            let _ = Expectations::from_sources(sources);
        }
    }
    plan.is_ok() || serde_json::from_slice::<GuestReport>(data).is_ok()
}

/// A histogram of pinstorm's own bounds with a few samples, in the V2 encoding.
fn v2_of(low: u64, high: u64, digits: u8, values: &[u64]) -> Vec<u8> {
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(low, high, digits).expect("valid bounds");
    for v in values {
        h.saturating_record(*v);
    }
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(&h, &mut out)
        .expect("serializing to memory");
    out
}

/// Histograms as other HdrHistogram producers write them: other bounds and precision.
pub fn foreign_histograms() -> Vec<Vec<u8>> {
    vec![
        v2_of(1, 3_600_000_000_000, 3, &[5, 100, 100, 2_000, 1_000_000]),
        v2_of(1, u64::MAX, 3, &[1, 12_345, u64::MAX / 2, u64::MAX]),
        v2_of(1, 10_000_000_000, 5, &[1, 12_345, 9_999_999_999]),
        v2_of(1000, 1_000_000_000, 2, &[1000, 5_000, 999_999_999]),
        v2_of(1, 2, 0, &[1, 2, 2]),
        v2_of(1 << 20, 1 << 40, 1, &[1 << 21, 1 << 39]),
        v2_of(1, 1_000, 3, &[]),
    ]
}

/// Seeds of a target besides its corpus directory: the shipped configs it parses, and for
/// histograms the encodings of [`foreign_histograms`].
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let configs: &[&str] = &[
        include_str!("../configs/expectations/pins.toml"),
        include_str!("../configs/expectations/leases.toml"),
    ];
    match target {
        "scenario" => PRESETS.iter().map(|(_, t)| t.as_bytes().to_vec()).collect(),
        "expectations" => configs.iter().map(|t| t.as_bytes().to_vec()).collect(),
        "gates-toml" => vec![include_bytes!("../configs/nightly/gates.toml").to_vec()],
        "gate" => gate::from_toml(include_str!("../configs/nightly/gates.toml"), "gates")
            .expect("the nightly gates parse")
            .into_iter()
            .map(|g| g.expr.into_bytes())
            .collect(),
        "check" => [
            "io_uring:xfs:shared:rw=EFAULT",
            "io_uring:anon:shared:rw=ok|EOPNOTSUPP",
            "io_uring:tmpfs:private:ro!=EFAULT",
            "lost_write@io_uring:xfs-dax=0",
            "cross_file@io_uring:tmpfs:shared<=2",
            "p50(io_uring:devdax:2M:register)<50us",
            "p999(io_uring:anon:shared:rw:4K:cycle)>=1.5ms",
        ]
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect(),
        "histogram" => foreign_histograms()
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let mut v = vec![if i % 2 == 0 { 2 } else { 1 }];
                v.extend(h);
                v
            })
            .collect(),
        "lab" => PRESETS
            .iter()
            .take(3)
            .map(|(name, t)| {
                serde_json::json!({
                    "scenario_text": t, "origin": name, "seed": 1, "label": null,
                    "expectations": [["pins.toml", configs[0]]], "stage": "/stage",
                    "pmem": "nvdimm", "devdax": false, "rxe": true, "inject": null,
                    "guest_exec": null
                })
                .to_string()
                .into_bytes()
            })
            .collect(),
        _ => Vec::new(),
    }
}
