//! `run`, `probe` and `bench pin`: a scenario (a file, a preset, or one made from the flags)
//! run on this machine.

use std::num::{NonZeroU64, NonZeroUsize};
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{BenchPinArgs, Format, Global, ProbeArgs, RunArgs};
use crate::cmd::common::{bad, configure_rdma, expectations, BadInput};
use crate::cmd::paths::RunPaths;
use pinstorm_analysis::summary;
use pinstorm_runners::run::{self, RunOptions};
use pinstorm_workloads::scenario::{self, BenchJob, OverrideError, Overrides, ProbeJob, Scenario};

/// What `--format json` prints on stdout: the rows of the job asked for, or the whole result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonOut {
    ProbeRows,
    BenchRows,
    Result,
}

fn run_scenario(
    g: &Global,
    mut scenario: Scenario,
    origin: String,
    json_out: JsonOut,
) -> Result<ExitCode> {
    configure_rdma(g, Some(&mut scenario));
    let paths = RunPaths::check(g)?;
    let opts = RunOptions {
        scenario,
        origin,
        results_root: paths.results_root,
        scratch_root: paths.scratch_root,
        scratch_dir: paths.scratch_dir,
        dax_dirs: g.dax_dirs()?,
        devdax: g.devdax.clone(),
        unavailable: Default::default(),
        label: g.label.clone(),
        expectations: expectations(g)?,
        command: std::env::args().collect(),
        progress: !g.quiet,
        verbose: !g.quiet,
        holder_exe: None,
    };
    let outcome = run::run(&opts)?;
    match g.format {
        Format::Text => print!("{}", summary::render(&outcome.result, Some(&outcome.path))),
        Format::Markdown => unreachable!("refused before the run"),
        Format::Json => {
            let value = match json_out {
                JsonOut::ProbeRows => serde_json::to_value(&outcome.result.probe)?,
                JsonOut::BenchRows => {
                    let mut rows = outcome.result.bench.clone();
                    for r in &mut rows {
                        r.histogram = None;
                        r.baseline_histogram = None;
                    }
                    serde_json::to_value(rows)?
                }
                JsonOut::Result => serde_json::to_value(&outcome.result)?,
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
            if !g.quiet {
                eprintln!("pinstorm: result written to {}", outcome.path.display());
            }
        }
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

fn or_default<T: Clone>(v: Vec<T>, default: Vec<T>) -> Vec<T> {
    if v.is_empty() {
        default
    } else {
        v
    }
}

/// `pinstorm run`: a scenario file or preset, with the flags over it.
pub fn scenario(g: &Global, a: &RunArgs) -> Result<ExitCode> {
    let (mut s, _text, origin) = bad(Scenario::resolve(&a.scenario).map_err(anyhow::Error::from))?;
    let overrides = Overrides {
        backings: a.backing.clone(),
        pins: a.pin.clone(),
        map: a.map.map(Into::into),
        duration: a.duration,
        seed: a.seed,
        write_at: a.write_at,
    };
    match s.apply_overrides(&overrides) {
        Ok(()) => {}
        Err(OverrideError::ZeroDuration) => bail!(BadInput(anyhow::anyhow!(
            "--duration must be greater than zero (and at most 168h)"
        ))),
        Err(OverrideError::NoStorm) => bail!(BadInput(anyhow::anyhow!(
            "--duration and --write-at apply to storms, and {} has no [storm] section",
            a.scenario
        ))),
    }
    run_scenario(g, s, origin, JsonOut::Result)
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
    let s = Scenario {
        name: "probe".into(),
        description: "pinstorm probe".into(),
        seed: 1,
        probe: Some(job),
        bench: None,
        storm: None,
        lease: None,
        rdma: None,
    };
    run_scenario(g, s, "command line".into(), JsonOut::ProbeRows)
}

/// `pinstorm bench pin`: the bench job made from the flags.
pub fn bench_pin(g: &Global, a: &BenchPinArgs) -> Result<ExitCode> {
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
    };
    let s = Scenario {
        name: "bench-pin".into(),
        description: "pinstorm bench pin".into(),
        seed: 1,
        probe: None,
        bench: Some(job),
        storm: None,
        lease: None,
        rdma: None,
    };
    run_scenario(g, s, "command line".into(), JsonOut::BenchRows)
}
