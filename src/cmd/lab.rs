//! `pinstorm lab`: scenarios on other kernels, each kernel and scenario in a QEMU guest; the
//! matrix can be printed (`--plan`) and cut into shards (`--shard`), and judged by checks
//! for `git bisect run` (`--check`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{self, Format, Global};
use crate::cmd::check;
use crate::cmd::common::{apply_overrides, bad, configure_rdma, expectation_sources};
use crate::cmd::paths::{lab_cache, results_root};
use pinstorm_analysis::check::{evaluate, Check, Subject};
use pinstorm_analysis::schema::RunResult;
use pinstorm_lab::{self as lab, guest::PmemMode, kernels::KernelSpec, KernelOutcome, LabOutcome};
use pinstorm_runners::shard::{Plan, Shard};
use pinstorm_workloads::scenario::Scenario;

/// `tree:.` and other relative trees, made absolute from the current directory (what
/// `git bisect run` runs in is the tree's top directory).
fn absolute_tree(k: &str) -> Result<String> {
    match k.strip_prefix("tree:") {
        Some(p) if !p.is_empty() && !Path::new(p).is_absolute() => {
            let abs = std::env::current_dir()
                .context("the current directory is gone; give tree: an absolute path")?
                .join(p);
            let abs = abs.canonicalize().unwrap_or(abs);
            Ok(format!("tree:{}", abs.display()))
        }
        _ => Ok(k.to_string()),
    }
}

/// The options for one scenario of the matrix (all kernels; the caller narrows them).
fn options(
    g: &Global,
    a: &cli::LabArgs,
    name: &str,
    kernels: &[KernelSpec],
) -> Result<lab::LabOptions> {
    let (mut scenario, mut text, origin) =
        bad(Scenario::resolve(name).map_err(anyhow::Error::from))?;
    // `--rdma-*` and the override flags reach the guests inside the scenario they run (the
    // seed goes on its own, as the matrix records it).
    let o = &a.overrides;
    let overridden = !o.backing.is_empty()
        || !o.pin.is_empty()
        || o.map.is_some()
        || o.duration.is_some()
        || o.write_at.is_some();
    if overridden {
        apply_overrides(name, &mut scenario, o, None)?;
    }
    if g.rdma_dev.is_some() || g.rdma_port.is_some() || g.rdma_no_prefetch {
        configure_rdma(g, Some(&mut scenario));
    }
    if overridden || g.rdma_dev.is_some() || g.rdma_port.is_some() || g.rdma_no_prefetch {
        text = scenario.to_text();
    }
    Ok(lab::LabOptions {
        plan: lab::LabPlan {
            kernels: kernels.to_vec(),
            scenario_text: text,
            seed: a.seed,
            label: g.label.clone(),
            expectations: expectation_sources(g)?,
            accel: a.accel.clone(),
            pmem: match a.pmem {
                cli::PmemArg::Nvdimm => PmemMode::Nvdimm,
                cli::PmemArg::Memmap => PmemMode::Memmap,
                cli::PmemArg::None => PmemMode::None,
            },
            devdax: a.devdax_namespace,
            rxe: !a.no_rxe,
            memory_mib: a.memory,
            cpus: a.cpus,
            inject: bad(a.inject.as_deref().map(lab::Inject::parse).transpose())?,
            guest_exec: a.guest_exec.clone(),
            pmem_scratch_dev: a.pmem_scratch_dev,
            kmem_node: a.kmem_node,
            movablecore: a.movablecore.clone(),
            kselftests: match &a.kselftests {
                Some(s) => bad(lab::kselftest::parse_names(s).map_err(anyhow::Error::msg))?,
                None => Vec::new(),
            },
            kselftest_source: a.kselftest_source.clone(),
            build: a.build,
        },
        origin,
        scenario_name: scenario.name.clone(),
        results_root: results_root(g)?,
        cache: lab_cache(a.cache.as_ref())?,
        vng: a.vng.clone(),
        timeout: a.timeout.0,
        jobs: match a.jobs {
            Some(0) => bad(Err(anyhow::anyhow!("--jobs 0: at least one guest")))?,
            Some(n) => n,
            None => lab::default_jobs(a.memory),
        },
        refresh: a.refresh,
        fresh: a.fresh,
        mirror: a.mirror.clone(),
        security_mirror: a.security_mirror.clone(),
        guest_exe: None,
        verbose: !g.quiet,
    })
}

pub fn run(g: &Global, a: &cli::LabArgs) -> Result<ExitCode> {
    let checks = check::parse(&a.check.checks)?;
    let kernels = bad(a
        .kernels
        .iter()
        .map(|k| {
            KernelSpec::parse(&absolute_tree(k.trim())?, a.modules.as_deref())
                .map_err(|e| anyhow::anyhow!("--kernels: {e}"))
        })
        .collect::<Result<Vec<_>>>())?;
    if a.modules.is_some() && !kernels.iter().any(|k| matches!(k, KernelSpec::Path { .. })) {
        return bad(Err(anyhow::anyhow!(
            "--modules only applies to path: kernels"
        )));
    }
    if let Some(m) = &a.modules {
        if !m.is_absolute() {
            return bad(Err(anyhow::anyhow!(
                "--modules must be an absolute path, got {:?}",
                m
            )));
        }
    }
    for (given, flag) in [
        (!g.dax_dir.is_empty(), "--dax-dir"),
        (g.devdax.is_some(), "--devdax"),
        (g.scratch_dir.is_some(), "--scratch-dir"),
        (!g.scratch_dev.is_empty(), "--scratch-dev"),
    ] {
        if given {
            return bad(Err(anyhow::anyhow!(
                "{flag} does not apply to `pinstorm lab`: each guest makes its own DAX targets and scratch space (--scratch-root is the host's and the guests do not use it)"
            )));
        }
    }
    if a.kmem_node && a.pmem != cli::PmemArg::Nvdimm {
        return bad(Err(anyhow::anyhow!(
            "--kmem-node onlines a device-dax namespace as system RAM, which needs --pmem nvdimm"
        )));
    }
    if a.pmem_scratch_dev && a.pmem != cli::PmemArg::Nvdimm {
        return bad(Err(anyhow::anyhow!(
            "--pmem-scratch-dev makes an fsdax namespace, which needs --pmem nvdimm"
        )));
    }
    // Every scenario's options, checked with the whole matrix before anything is fetched.
    let mut per_scenario = Vec::new();
    for name in &a.scenarios {
        let opts = options(g, a, name, &kernels)?;
        bad(lab::check(&opts))?;
        per_scenario.push((name.clone(), opts));
    }
    let shard = match &a.matrix.shard {
        Some(s) => bad(Shard::parse(s))?,
        None => Shard::WHOLE,
    };
    let names: Vec<String> = kernels.iter().map(|k| k.to_string()).collect();
    let plan = bad(Plan::new(&names, &a.scenarios, shard))?;
    if a.matrix.plan {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    if shard != Shard::WHOLE && !checks.is_empty() {
        return bad(Err(anyhow::anyhow!(
            "--check judges the whole matrix, and --shard runs a part of it: give one or the other"
        )));
    }
    // This shard's kernels, scenario by scenario.
    let mut work = Vec::new();
    for (name, mut opts) in per_scenario {
        let mine = plan.kernels_for(&name);
        opts.plan
            .kernels
            .retain(|k| mine.contains(&k.to_string().as_str()));
        if !opts.plan.kernels.is_empty() {
            work.push(opts);
        }
    }
    if work.is_empty() {
        eprintln!(
            "pinstorm lab: shard {shard} of this matrix ({} entries) is empty: nothing to run",
            plan.entries.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.fetch_only {
        return fetch_only(g, &work);
    }
    if !pinstorm_workloads::is_root() {
        anyhow::bail!(
            "pinstorm lab needs root on the host (the guest runs as the host user, and makes namespaces, filesystems and mounts); --fetch-only and --plan do not"
        );
    }
    let mut outcomes: Vec<(String, LabOutcome)> = Vec::new();
    for opts in &work {
        let out = lab::run(opts)?;
        let stop = out.interrupted.is_some();
        outcomes.push((opts.scenario_name.clone(), out));
        if stop {
            break;
        }
    }
    print(g, &outcomes)?;
    let interrupted = outcomes.iter().find_map(|(_, o)| o.interrupted);
    let code = lab::status::exit_code(
        outcomes
            .iter()
            .flat_map(|(_, o)| o.kernels.iter().map(|k| k.status)),
        interrupted,
    );
    if let Some(sig) = check::interrupted(code) {
        return Ok(sig);
    }
    if !checks.is_empty() {
        return judge(&checks, &outcomes);
    }
    Ok(ExitCode::from(code as u8))
}

/// `--fetch-only`: every kernel this shard boots, once, fetched and unpacked (or built).
fn fetch_only(g: &Global, work: &[lab::LabOptions]) -> Result<ExitCode> {
    let mut opts = work[0].clone();
    opts.plan.kernels.clear();
    for o in work {
        for k in &o.plan.kernels {
            if !opts.plan.kernels.contains(k) {
                opts.plan.kernels.push(k.clone());
            }
        }
    }
    let ks = lab::fetch(&opts)?;
    match g.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&ks)?),
        Format::Text | Format::Markdown => {
            for k in ks {
                println!(
                    "{}\t{}\t{}\t{}",
                    k.spec,
                    k.release,
                    k.boot.display(),
                    k.source.join(" ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(g: &Global, outcomes: &[(String, LabOutcome)]) -> Result<()> {
    match g.format {
        Format::Json => {
            // One line per kernel and scenario; the scenario is added to each kernel's line.
            let mut all = Vec::new();
            for (scenario, out) in outcomes {
                for k in &out.kernels {
                    let mut v = serde_json::to_value(k)?;
                    v["scenario"] = serde_json::Value::from(scenario.as_str());
                    all.push(v);
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        Format::Text | Format::Markdown => {
            for (scenario, out) in outcomes {
                println!(
                    "pinstorm lab: {} kernel(s), scenario {scenario}",
                    out.kernels.len()
                );
                for k in &out.kernels {
                    println!(
                        "  {:<14} {:<28} {:<11} {:>6.1}s  {}",
                        k.spec,
                        k.release.as_deref().unwrap_or("?"),
                        k.status,
                        k.wall_seconds,
                        k.summary
                    );
                    if let Some(t) = &k.timings {
                        println!("  {:<14} phases: {}", "", pinstorm_lab::describe_timings(t));
                    }
                    if let Some(p) = &k.result {
                        println!("  {:<14} result: {}", "", p.display());
                    }
                }
                println!("matrix state: {}", out.state_file.display());
            }
        }
    }
    Ok(())
}

/// The checks on every kernel of the matrix: its results (one per scenario), or why a
/// kernel has none (it could not be fetched, built or started).
fn judge(checks: &[Check], outcomes: &[(String, LabOutcome)]) -> Result<ExitCode> {
    let lines: Vec<&KernelOutcome> = outcomes.iter().flat_map(|(_, o)| &o.kernels).collect();
    let mut results: Vec<(String, Result<RunResult, String>)> = Vec::new();
    for k in &lines {
        let r = match &k.result {
            Some(p) => pinstorm_analysis::store::read_result(p).map_err(|e| format!("{e:#}")),
            None => Err(format!("{}: {}", k.status, k.summary)),
        };
        results.push((k.spec.clone(), r));
    }
    let mut subjects: Vec<Subject> = Vec::new();
    for (spec, r) in &results {
        let i = match subjects.iter().position(|s| s.name == *spec) {
            Some(i) => i,
            None => {
                subjects.push(Subject {
                    name: spec.clone(),
                    runs: Vec::new(),
                    missing: Vec::new(),
                });
                subjects.len() - 1
            }
        };
        match r {
            Ok(r) => subjects[i].runs.push(r),
            Err(why) => subjects[i].missing.push(why.clone()),
        }
    }
    Ok(check::exit(&evaluate(checks, &subjects)))
}
