//! `run`, `probe` and `bench pin`: scenarios (files, presets, or one made from the flags)
//! run on this machine; with `--check`, judged for `git bisect run`.

use std::num::{NonZeroU64, NonZeroUsize};
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{BenchPinArgs, Format, Global, ProbeArgs, RunArgs};
use crate::cmd::check;
use crate::cmd::common::{apply_overrides, bad, configure_rdma, expectations, BadInput};
use crate::cmd::paths::RunPaths;
use pinstorm_analysis::check::{evaluate, subjects_by_release, Check};
use pinstorm_analysis::summary;
use pinstorm_runners::run::{self, RunOptions, RunOutcome};
use pinstorm_runners::shard::{Plan, Shard};
use pinstorm_workloads::scenario::{self, BenchJob, ProbeJob, Scenario};

/// What `--format json` prints on stdout: the rows of the job asked for, or the whole result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonOut {
    ProbeRows,
    BenchRows,
    Result,
}

/// Run one scenario; the result is on disk when this returns.
fn run_one(g: &Global, mut scenario: Scenario, origin: String) -> Result<RunOutcome> {
    configure_rdma(g, Some(&mut scenario));
    // Operations that damage memory run only in lab guests; this command never runs in one
    // (the guest calls runners::run::run with RunOptions::lab set).
    if let Some(why) = run::lab_only_refusal(&scenario, false) {
        return bad(Err(anyhow::anyhow!(why)));
    }
    let paths = RunPaths::check(g)?;
    let opts = RunOptions {
        scenario,
        origin,
        results_root: paths.results_root,
        scratch_root: paths.scratch_root,
        scratch_dir: paths.scratch_dir,
        scratch_devs: paths.scratch_devs,
        dax_dirs: g.dax_dirs()?,
        devdax: g.devdax.clone(),
        unavailable: Default::default(),
        label: g.label.clone(),
        expectations: expectations(g)?,
        command: std::env::args().collect(),
        progress: !g.quiet,
        verbose: !g.quiet,
        holder_exe: None,
        reproduce_as: Vec::new(),
        lab: None,
    };
    run::run(&opts)
}

fn json_of(o: &RunOutcome, json_out: JsonOut) -> Result<serde_json::Value> {
    Ok(match json_out {
        JsonOut::ProbeRows => serde_json::to_value(&o.result.probe)?,
        JsonOut::BenchRows => {
            let mut rows = o.result.bench.clone();
            for r in &mut rows {
                r.histogram = None;
                r.baseline_histogram = None;
            }
            serde_json::to_value(rows)?
        }
        JsonOut::Result => serde_json::to_value(&o.result)?,
    })
}

/// Print what the runs measured: each summary, or JSON (one value, or an array of them
/// when several scenarios were asked for).
fn print(g: &Global, outcomes: &[RunOutcome], json_out: JsonOut, several: bool) -> Result<()> {
    match g.format {
        Format::Text => {
            for o in outcomes {
                print!("{}", summary::render(&o.result, Some(&o.path)));
            }
        }
        Format::Markdown => unreachable!("refused before the run"),
        Format::Json => {
            let values = outcomes
                .iter()
                .map(|o| json_of(o, json_out))
                .collect::<Result<Vec<_>>>()?;
            let value = match (several, values.len()) {
                (false, 1) => values.into_iter().next().expect("one value"),
                _ => serde_json::Value::Array(values),
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
            if !g.quiet {
                for o in outcomes {
                    eprintln!("pinstorm: result written to {}", o.path.display());
                }
            }
        }
    }
    Ok(())
}

/// The exit status of several runs: a signal, else the worst of error (1), differs (3),
/// as expected (0); with checks, the checks' status (a signal still wins: bisect stops).
fn finish(outcomes: &[RunOutcome], checks: &[Check]) -> ExitCode {
    let codes: Vec<i32> = outcomes.iter().map(RunOutcome::exit_code).collect();
    if let Some(sig) = codes.iter().find_map(|c| check::interrupted(*c)) {
        return sig;
    }
    if !checks.is_empty() {
        let results: Vec<_> = outcomes.iter().map(|o| &o.result).collect();
        return check::exit(&evaluate(checks, &subjects_by_release(&results)));
    }
    let rank = |c: i32| match c {
        0 => 0,
        3 => 1,
        _ => 2,
    };
    let worst = codes.into_iter().max_by_key(|c| rank(*c)).unwrap_or(0);
    ExitCode::from(worst.clamp(0, 255) as u8)
}

/// Run scenarios one after the other, stopping at a signal.
fn run_all(
    g: &Global,
    scenarios: Vec<(Scenario, String)>,
    json_out: JsonOut,
    several: bool,
    checks: &[Check],
) -> Result<ExitCode> {
    // Refused before anything runs, not after the scenarios before it.
    for (s, _) in &scenarios {
        if let Some(why) = run::lab_only_refusal(s, false) {
            return bad(Err(anyhow::anyhow!(why)));
        }
    }
    let mut outcomes = Vec::new();
    for (s, origin) in scenarios {
        let o = run_one(g, s, origin)?;
        let stop = o.result.interrupted.is_some();
        outcomes.push(o);
        if stop {
            break;
        }
    }
    print(g, &outcomes, json_out, several)?;
    Ok(finish(&outcomes, checks))
}

/// The running kernel's release, as the host's matrix names it.
fn this_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this-kernel".into())
}

/// `pinstorm run`: scenario files or presets, with the flags over each; the matrix of this
/// kernel x the scenarios, or one shard of it.
pub fn scenario(g: &Global, a: &RunArgs) -> Result<ExitCode> {
    let checks = check::parse(&a.check.checks)?;
    let mut scenarios = Vec::new();
    for name in &a.scenarios {
        let (mut s, _text, origin) = bad(Scenario::resolve(name).map_err(anyhow::Error::from))?;
        apply_overrides(name, &mut s, &a.overrides, a.seed)?;
        scenarios.push((s, origin));
    }
    let shard = match &a.matrix.shard {
        Some(s) => bad(Shard::parse(s))?,
        None => Shard::WHOLE,
    };
    let plan = bad(Plan::new(&[this_kernel()], &a.scenarios, shard))?;
    if a.matrix.plan {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    if shard != Shard::WHOLE && !checks.is_empty() {
        bail!(BadInput(anyhow::anyhow!(
            "--check judges the whole matrix, and --shard runs a part of it: give one or the other"
        )));
    }
    // One kernel: entry i is scenario i.
    let mine: Vec<usize> = plan.selected().map(|e| e.index).collect();
    if mine.is_empty() {
        eprintln!(
            "pinstorm: shard {shard} of this matrix ({} entries) is empty: nothing to run",
            plan.entries.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let several = a.scenarios.len() > 1;
    let selected = scenarios
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mine.contains(i))
        .map(|(_, s)| s)
        .collect();
    run_all(g, selected, JsonOut::Result, several, &checks)
}

fn or_default<T: Clone>(v: Vec<T>, default: Vec<T>) -> Vec<T> {
    if v.is_empty() {
        default
    } else {
        v
    }
}

/// `pinstorm probe`: the probe job made from the flags.
pub fn probe(g: &Global, a: &ProbeArgs) -> Result<ExitCode> {
    let d = ProbeJob::default();
    let job = ProbeJob {
        pins: or_default(a.pins.clone(), d.pins),
        backings: or_default(a.backings.clone(), d.backings),
        maps: or_default(a.maps.iter().map(|m| (*m).into()).collect(), d.maps),
        access: or_default(a.access.iter().map(|m| (*m).into()).collect(), d.access),
        size: a.size,
        device_io: !a.no_device_io,
    };
    let checks = check::parse(&a.check.checks)?;
    let s = Scenario {
        name: "probe".into(),
        description: "pinstorm probe".into(),
        seed: 1,
        probe: Some(job),
        bench: None,
        storm: None,
        lease: None,
        migration: None,
        rdma: None,
    };
    run_all(
        g,
        vec![(s, "command line".into())],
        JsonOut::ProbeRows,
        false,
        &checks,
    )
}

/// `pinstorm bench pin`: the bench job made from the flags.
pub fn bench_pin(g: &Global, a: &BenchPinArgs) -> Result<ExitCode> {
    let checks = check::parse(&a.check.checks)?;
    let d = BenchJob::default();
    let Some(threads) = NonZeroUsize::new(a.threads).filter(|t| t.get() <= scenario::MAX_THREADS)
    else {
        bail!(BadInput(anyhow::anyhow!(
            "--threads {}: must be between 1 and {}",
            a.threads,
            scenario::MAX_THREADS
        )))
    };
    let Some(iterations) =
        NonZeroU64::new(a.iterations).filter(|i| i.get() <= scenario::MAX_ITERATIONS)
    else {
        bail!(BadInput(anyhow::anyhow!(
            "--iterations {}: must be between 1 and {}",
            a.iterations,
            scenario::MAX_ITERATIONS
        )))
    };
    if a.warmup > scenario::MAX_WARMUP {
        bail!(BadInput(anyhow::anyhow!(
            "--warmup {}: must be between 0 and {}",
            a.warmup,
            scenario::MAX_WARMUP
        )));
    }
    if a.max_time.0.is_zero() {
        bail!(BadInput(anyhow::anyhow!(
            "--max-time must be greater than zero (and at most 168h)"
        )));
    }
    if a.write_sizes.iter().any(|w| w.bytes() == 0)
        || a.write_sizes.len() > scenario::MAX_WRITE_SIZES
    {
        bail!(BadInput(anyhow::anyhow!(
            "--write-sizes: at most {} lengths, each at least 1 byte",
            scenario::MAX_WRITE_SIZES
        )));
    }
    let job = BenchJob {
        pins: or_default(a.pins.clone(), d.pins),
        backings: or_default(a.backings.clone(), d.backings),
        sizes: or_default(a.sizes.clone(), d.sizes),
        map: a.map.into(),
        access: a.access.into(),
        threads,
        warmup: a.warmup,
        iterations,
        max_time: a.max_time,
        baseline: !a.no_baseline,
        device_write: a.device_write,
        write_sizes: a.write_sizes.clone(),
    };
    let s = Scenario {
        name: "bench-pin".into(),
        description: "pinstorm bench pin".into(),
        seed: 1,
        probe: None,
        bench: Some(job),
        storm: None,
        lease: None,
        migration: None,
        rdma: None,
    };
    run_all(
        g,
        vec![(s, "command line".into())],
        JsonOut::BenchRows,
        false,
        &checks,
    )
}
