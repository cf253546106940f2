//! Analysis of 1,000 result files: load them (in parallel), then compare 500 against 500
//! (two kernels). The budget is 5 s on the 2-core development machine.
//!
//! The files are generated here, in two sizes: small ones with 12 benchmark rows (2
//! backings x 2 sizes x 3 ops, 2,000 samples each, as `pinstorm run quick` writes with more
//! iterations) and 24 probe cells; and full-size ones shaped like `pinstorm run default`
//! (~170 KB, 132 histograms, 104 probe cells, storms; see `analysis/full.rs`), for which the
//! fleet budget is compare within 5 s and report within 10 s (docs/analysis.md, Scale).
//! Timings only: what the numbers mean is tested on real runs in tests/analysis.rs.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use pinstorm_analysis::catalog::{Catalog, Selector};
use pinstorm_analysis::compare::{compare, CompareOptions};
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::report;
use pinstorm_analysis::schema::*;

// Under a directory of its own: a file directly in benches/ would be a benchmark target.
#[path = "analysis/full.rs"]
mod full;

fn result(i: usize, kernel: &str) -> RunResult {
    let mut bench = Vec::new();
    let mut seed = i as u64 * 7919 + 1;
    for backing in ["anon", "tmpfs"] {
        for size in [4096u64, 2 << 20] {
            for op in ["register", "unregister", "cycle"] {
                let mut l = Latency::new();
                for _ in 0..2000 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    l.record(size / 4 + 500 + (seed >> 33) % (size / 8 + 200));
                }
                bench.push(BenchRow {
                    pin: "io_uring".into(),
                    backing: backing.into(),
                    fs: backing.into(),
                    map: "shared".into(),
                    access: "rw".into(),
                    size,
                    op: op.into(),
                    threads: 1,
                    outcome: "ok".into(),
                    reason: None,
                    stats: Some(l.stats()),
                    histogram: Some(l.encode()),
                    baseline_histogram: Some(l.encode()),
                    ..BenchRow::default()
                });
            }
        }
    }
    let mut probe = Vec::new();
    for backing in ["anon", "memfd", "tmpfs", "hugetlbfs", "ext4", "xfs"] {
        for map in ["shared", "private"] {
            for access in ["rw", "ro"] {
                probe.push(ProbeRow {
                    pin: "io_uring".into(),
                    backing: backing.into(),
                    fs: backing.into(),
                    map: map.into(),
                    access: access.into(),
                    size: 2 << 20,
                    outcome: if access == "rw" {
                        "ok".into()
                    } else {
                        "EFAULT".into()
                    },
                    reason: None,
                    dax: Some(false),
                    device_io: Some("ok".into()),
                    expected: None,
                    verdict: pinstorm_analysis::verdict::Verdict::NoExpectation,
                    expected_because: None,
                });
            }
        }
    }
    RunResult {
        command: vec!["pinstorm".into(), "run".into(), "quick".into()],
        tool: Tool {
            name: "pinstorm".into(),
            version: "bench".into(),
        },
        probe,
        bench,
        ..RunResult::new(
            &format!("20260101T000000.000Z-{i:04}"),
            format!("2026-01-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60),
            ScenarioRecord {
                name: "quick".into(),
                origin: "preset".into(),
                seed: 1,
                text: String::new(),
            },
            Environment {
                kernel_release: kernel.into(),
                hostname: "bench".into(),
                ..Environment::default()
            },
        )
    }
}

fn make_files(dir: &Path, n: usize) {
    let _ = std::fs::remove_dir_all(dir);
    for i in 0..n {
        let kernel = if i % 2 == 0 { "6.12.0" } else { "7.0.0" };
        let r = result(i, kernel);
        pinstorm_analysis::store::write_result(&dir.join(kernel).join(&r.run_id), &r).unwrap();
    }
}

/// `n` full-size results, half of them labelled `base`, half `cand`.
fn make_full_files(dir: &Path, n: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let pool = full::Pool::new();
    for i in 0..n {
        let label = if i % 2 == 0 { "base" } else { "cand" };
        let r = full::result(&pool, i, "6.18.44", label);
        pinstorm_analysis::store::write_result(&dir.join("6.18.44").join(&r.run_id), &r).unwrap();
    }
}

fn bench_full(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("pinstorm-bench-full-{}", std::process::id()));
    make_full_files(&dir, 1000);
    let paths: Vec<PathBuf> = vec![dir.clone()];
    let mut g = c.benchmark_group("analysis of full-size results");
    g.sample_size(10);
    g.bench_function("load 1000 full-size results", |b| {
        b.iter(|| {
            let cat = Catalog::load_facts(&paths).unwrap();
            assert_eq!(cat.runs.len(), 1000);
        })
    });
    g.bench_function("load and compare 500 vs 500 full-size runs", |b| {
        b.iter(|| {
            let cat = Catalog::load_facts(&paths).unwrap();
            let base = cat.select(&Selector::parse("label=base").unwrap());
            let cand = cat.select(&Selector::parse("label=cand").unwrap());
            let cmp = compare("base", &base, "cand", &cand, &CompareOptions::default());
            assert_eq!(cmp.latency.len(), 144);
        })
    });
    g.bench_function("load and report 1000 full-size runs", |b| {
        b.iter(|| {
            let cat = Catalog::load_facts(&paths).unwrap();
            let groups = cat.groups();
            let html = report::render(&cat, &groups, &CompareOptions::default(), "bench").unwrap();
            assert!(html.contains("1000 run(s) in 2 group(s)"));
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("pinstorm-bench-analysis-{}", std::process::id()));
    make_files(&dir, 1000);
    let paths: Vec<PathBuf> = vec![dir.clone()];
    let mut g = c.benchmark_group("analysis");
    g.sample_size(10);
    g.bench_function("load 1000 result files", |b| {
        b.iter(|| {
            let cat = Catalog::load_facts(&paths).unwrap();
            assert_eq!(cat.runs.len(), 1000);
        })
    });
    g.bench_function("load and compare 500 vs 500 runs", |b| {
        b.iter(|| {
            let cat = Catalog::load_facts(&paths).unwrap();
            let base = cat.select(&Selector::parse("kernel=6.12").unwrap());
            let cand = cat.select(&Selector::parse("kernel=7.0").unwrap());
            let cmp = compare("6.12", &base, "7.0", &cand, &CompareOptions::default());
            assert_eq!(cmp.latency.len(), 24);
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench, bench_full);
criterion_main!(benches);
