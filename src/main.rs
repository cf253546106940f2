//! `pinstorm`: a thin command line over the workloads, runners and analysis libraries.

mod cli;

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cli::{
    BenchCommand, Cli, Command, CompareArgs, ExportArgs, ExportFormat, Format, Global, ImageArg,
    PlotArgs, ReportArgs,
};
use pinstorm_analysis::catalog::{Catalog, LoadedRun, Selector, SELECTOR_KEYS};
use pinstorm_analysis::compare::{self, CompareOptions};
use pinstorm_analysis::expect::{self, Expectations};
use pinstorm_analysis::gate::{self, Gate};
use pinstorm_analysis::{export, plot, render, report, summary};
use pinstorm_runners::run::{self, RunOptions, ScratchDir, WriteDir};
use pinstorm_workloads::backing::{BackingKind, SetupEnv};
use pinstorm_workloads::layout::LayoutKind;
use pinstorm_workloads::pin::{rdma, Availability, PinKind, PinSettings};
use pinstorm_workloads::scenario::{BenchJob, ProbeJob, Scenario, PRESETS};
use pinstorm_workloads::scratch::{self, ScratchRoot};

/// An error in what the user gave us (exit 2), as opposed to one met while running (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadInput(anyhow::Error);

fn bad<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| BadInput(e).into())
}

fn results_root(g: &Global) -> Result<WriteDir> {
    let p = match (&g.results, std::env::var_os("PINSTORM_RESULTS")) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => PathBuf::from(v),
        (None, None) => std::env::current_dir()
            .context("the current directory is gone; give --results")?
            .join("results"),
    };
    bad(WriteDir::new(&p, "--results (or PINSTORM_RESULTS)"))
}

impl Global {
    /// `--dax-dir FS=DIR`, each checked: FS is xfs or ext4, DIR an existing scratch directory.
    fn dax_dirs(&self) -> Result<std::collections::BTreeMap<String, PathBuf>> {
        let mut out = std::collections::BTreeMap::new();
        for v in &self.dax_dir {
            let Some((fs, dir)) = v.split_once('=') else {
                return bad(Err(anyhow::anyhow!(
                    "--dax-dir {v:?}: expected FS=DIR, e.g. --dax-dir xfs=/mnt/pmem0/scratch"
                )));
            };
            if !matches!(fs, "xfs" | "ext4") {
                return bad(Err(anyhow::anyhow!(
                    "--dax-dir {v:?}: filesystem {fs:?} is not one of xfs, ext4"
                )));
            }
            let flag = format!("--dax-dir {fs}=");
            let d = bad(scratch::checked_scratch_dir(
                std::path::Path::new(dir),
                &flag,
            ))?;
            if out.insert(fs.to_string(), d).is_some() {
                return bad(Err(anyhow::anyhow!("--dax-dir {fs}= given twice")));
            }
        }
        Ok(out)
    }
}

fn scratch_root(g: &Global) -> Result<WriteDir> {
    let p = match (&g.scratch_root, std::env::var_os("PINSTORM_SCRATCH_ROOT")) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => PathBuf::from(v),
        (None, None) => bad(scratch::default_scratch_root())?,
    };
    bad(WriteDir::new(
        &p,
        "--scratch-root (or PINSTORM_SCRATCH_ROOT)",
    ))
}

/// `--expectations` (files or directories, repeatable) as (origin, text) per file, checked;
/// None when none were given (the built-in files apply).
fn expectation_sources(g: &Global) -> Result<Option<Vec<(String, String)>>> {
    if g.expectations.is_empty() {
        return Ok(None);
    }
    let sources = bad(expect::read_sources(&g.expectations))?;
    bad(Expectations::from_sources(&sources))?;
    Ok(Some(sources))
}

fn expectations(g: &Global) -> Result<Expectations> {
    match expectation_sources(g)? {
        None => Ok(Expectations::builtin()),
        Some(sources) => bad(Expectations::from_sources(&sources)),
    }
}

/// What `--format json` prints on stdout: the rows of the job asked for, or the whole result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonOut {
    ProbeRows,
    BenchRows,
    Result,
}

/// The `rdma` pin paths' configuration: the scenario's `[rdma]`, with `--rdma-dev` and
/// `--rdma-port` over it. Recorded in the scenario (and so in the result, and the paths the
/// run builds from it) when anything was set.
fn configure_rdma(g: &Global, scenario: Option<&mut Scenario>) -> rdma::RdmaConfig {
    let mut cfg = scenario
        .as_ref()
        .and_then(|s| s.rdma.clone())
        .unwrap_or_default();
    if let Some(d) = &g.rdma_dev {
        cfg.device = Some(d.clone());
    }
    if let Some(p) = g.rdma_port {
        cfg.port = Some(p);
    }
    if g.rdma_no_prefetch {
        cfg.prefetch = false;
    }
    if let Some(s) = scenario {
        if s.rdma.is_some() || g.rdma_dev.is_some() || g.rdma_port.is_some() || g.rdma_no_prefetch {
            s.rdma = Some(cfg.clone());
        }
    }
    cfg
}

fn run_scenario(
    g: &Global,
    mut scenario: Scenario,
    origin: String,
    json_out: JsonOut,
) -> Result<ExitCode> {
    configure_rdma(g, Some(&mut scenario));
    let scratch_dir = match &g.scratch_dir {
        Some(d) => Some(bad(ScratchDir::new(d, "--scratch-dir"))?),
        None => None,
    };
    let opts = RunOptions {
        scenario,
        origin,
        results_root: results_root(g)?,
        scratch_root: scratch_root(g)?,
        scratch_dir,
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

/// The RDMA devices section of `pinstorm list`: devices, ports, link layer, firmware, ODP.
fn print_rdma_devices(v: &serde_json::Value, cfg: &rdma::RdmaConfig) {
    println!("RDMA devices (for the rdma pin paths; --rdma-dev NAME, --rdma-port N):");
    let devs = v["devices"].as_array().cloned().unwrap_or_default();
    if devs.is_empty() {
        println!("  none: {}", v["reason"].as_str().unwrap_or(""));
        println!();
        return;
    }
    let selected = rdma::selected(cfg);
    for d in &devs {
        let name = d["name"].as_str().unwrap_or("");
        println!(
            "  {name:<14} {:<5} fw {:<12} vendor {:#x}:{:#x}  ODP: {}",
            d["transport"].as_str().unwrap_or(""),
            d["fw_ver"]
                .as_str()
                .filter(|f| !f.is_empty())
                .unwrap_or("-"),
            d["vendor_id"].as_u64().unwrap_or(0),
            d["vendor_part_id"].as_u64().unwrap_or(0),
            d["odp"].as_str().unwrap_or("")
        );
        for p in d["ports"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {:<14} port {}: {:<7} {:<10} mtu {:<5} gid {}",
                "",
                p["port"],
                p["state"].as_str().unwrap_or(""),
                p["link_layer"].as_str().unwrap_or(""),
                p["active_mtu"],
                p["gid"].as_str().unwrap_or("-")
            );
        }
        if let Some(e) = d["error"].as_str() {
            println!("  {:<14} error: {e}", "");
        }
    }
    match selected {
        Ok(s) => println!("  the rdma pin paths use: {s}"),
        Err(why) => println!("  the rdma pin paths cannot run: {why}"),
    }
    println!();
}

fn cmd_list(g: &Global) -> Result<ExitCode> {
    let pin_settings = PinSettings {
        rdma: configure_rdma(g, None),
    };
    let env = SetupEnv {
        is_root: pinstorm_workloads::is_root(),
        scratch_dir: g.scratch_dir.clone(),
        dax_dirs: g.dax_dirs()?,
        devdax: g.devdax.clone(),
        unavailable: Default::default(),
    };
    let avail = |a: Availability| match a {
        Availability::Usable => ("usable".to_string(), String::new()),
        Availability::NotRun(r) => ("notrun".to_string(), r),
    };
    let pins: Vec<_> = PinKind::ALL
        .iter()
        .map(|p| {
            let (s, r) = avail(p.path(&pin_settings).availability());
            serde_json::json!({"name": p.name(), "status": s, "reason": r, "description": p.describe()})
        })
        .collect();
    let backings: Vec<_> = BackingKind::ALL
        .iter()
        .map(|b| {
            let (s, r) = avail(b.availability(&env));
            serde_json::json!({"name": b.name(), "status": s, "reason": r, "description": b.describe()})
        })
        .collect();
    let scenarios: Vec<_> = PRESETS
        .iter()
        .map(|(name, text)| {
            let desc = Scenario::parse(text, name).map(|s| s.description).unwrap_or_default();
            serde_json::json!({"name": name, "file": format!("configs/{name}.toml"), "description": desc})
        })
        .collect();
    let layout_ops: Vec<_> = LayoutKind::ALL
        .iter()
        .map(|k| {
            serde_json::json!({"name": k.name(), "status": "usable", "reason": "", "description": k.describe(),
                "note": "whether a filesystem has it is measured in each storm (notrun with the reason when not)"})
        })
        .collect();
    let rdma_devices = match rdma::inventory() {
        Ok(devs) => serde_json::json!({"status": "usable", "devices": devs}),
        Err(why) => serde_json::json!({"status": "notrun", "reason": why, "devices": []}),
    };
    if g.format == Format::Json {
        let v = serde_json::json!({"pin_paths": pins, "backings": backings, "layout_operations": layout_ops, "scenarios": scenarios, "rdma_devices": rdma_devices});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let section = |title: &str, items: &[serde_json::Value]| {
        println!("{title}:");
        for i in items {
            let status = i["status"].as_str().unwrap_or("");
            println!(
                "  {:<14} {:<7} {}",
                i["name"].as_str().unwrap_or(""),
                status,
                i["description"].as_str().unwrap_or("")
            );
            if let Some(r) = i["reason"].as_str().filter(|r| !r.is_empty()) {
                println!("  {:<14} {:<7} why: {r}", "", "");
            }
        }
        println!();
    };
    section("Pin paths", &pins);
    print_rdma_devices(&rdma_devices, &pin_settings.rdma);
    section("Backings", &backings);
    println!("Layout operations (whether a filesystem has one is measured per storm; notrun with the reason if not):");
    for l in &layout_ops {
        println!(
            "  {:<18} {}",
            l["name"].as_str().unwrap_or(""),
            l["description"].as_str().unwrap_or("")
        );
    }
    println!();
    println!("Scenarios (presets compiled in from configs/NAME.toml; a file path works too):");
    for s in &scenarios {
        println!(
            "  {:<21} {}",
            s["name"].as_str().unwrap_or(""),
            s["description"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The lab's cache: --cache, $PINSTORM_CACHE, $XDG_CACHE_HOME/pinstorm, ~/.cache/pinstorm.
fn lab_cache(flag: Option<&PathBuf>) -> Result<PathBuf> {
    let p = match (flag, std::env::var_os("PINSTORM_CACHE")) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => PathBuf::from(v),
        (None, None) => match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("pinstorm"),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache/pinstorm"),
            _ => bad(Err(anyhow::anyhow!(
                "no HOME or XDG_CACHE_HOME to put the lab cache in; give --cache DIR"
            )))?,
        },
    };
    bad(scratch::checked_write_path(
        &p,
        "--cache (or PINSTORM_CACHE)",
    ))
}

fn cmd_lab(g: &Global, a: &cli::LabArgs) -> Result<ExitCode> {
    use pinstorm_runners::lab::{self, guest::PmemMode, kernels::KernelSpec};
    let (mut scenario, mut text, origin) =
        bad(Scenario::resolve(&a.scenario).map_err(anyhow::Error::from))?;
    // `--rdma-*` reach the guests inside the scenario's `[rdma]`.
    if g.rdma_dev.is_some() || g.rdma_port.is_some() || g.rdma_no_prefetch {
        configure_rdma(g, Some(&mut scenario));
        text = scenario.to_text();
    }
    let kernels = bad(a
        .kernels
        .iter()
        .map(|k| {
            KernelSpec::parse(k.trim(), a.modules.as_deref())
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
    let expectations = expectation_sources(g)?;
    let opts = lab::LabOptions {
        kernels,
        scenario_text: text,
        origin,
        scenario_name: scenario.name.clone(),
        seed: a.seed,
        label: g.label.clone(),
        expectations,
        results_root: results_root(g)?.path().to_path_buf(),
        cache: lab_cache(a.cache.as_ref())?,
        vng: a.vng.clone(),
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
        timeout: a.timeout.0,
        refresh: a.refresh,
        fresh: a.fresh,
        mirror: a.mirror.clone(),
        security_mirror: a.security_mirror.clone(),
        inject: a.inject.clone(),
        guest_exec: a.guest_exec.clone(),
        guest_exe: None,
        verbose: !g.quiet,
    };
    if let Some(i) = &a.inject {
        let kind = i.split_once(':').map_or(i.as_str(), |(k, _)| k);
        if !matches!(kind, "panic" | "hang") {
            return bad(Err(anyhow::anyhow!(
                "--inject {i:?}: KIND is panic or hang"
            )));
        }
    }
    bad(lab::check(&opts))?;
    for (given, flag) in [
        (!g.dax_dir.is_empty(), "--dax-dir"),
        (g.devdax.is_some(), "--devdax"),
        (g.scratch_dir.is_some(), "--scratch-dir"),
    ] {
        if given {
            return bad(Err(anyhow::anyhow!(
                "{flag} does not apply to `pinstorm lab`: each guest makes its own DAX targets and scratch space (--scratch-root is the host's and the guests do not use it)"
            )));
        }
    }
    if a.fetch_only {
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
        return Ok(ExitCode::SUCCESS);
    }
    if !pinstorm_workloads::is_root() {
        anyhow::bail!(
            "pinstorm lab needs root on the host (the guest runs as the host user, and makes namespaces, filesystems and mounts); --fetch-only does not"
        );
    }
    let out = lab::run(&opts)?;
    match g.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out.kernels)?),
        Format::Text | Format::Markdown => {
            println!(
                "pinstorm lab: {} kernel(s), scenario {}",
                out.kernels.len(),
                opts.scenario_name
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
                if let Some(p) = &k.result {
                    println!("  {:<14} result: {}", "", p.display());
                }
            }
            println!("matrix state: {}", out.state_file.display());
        }
    }
    Ok(ExitCode::from(out.exit_code() as u8))
}

fn cmd_cleanup(g: &Global, a: &cli::CleanupArgs) -> Result<ExitCode> {
    let mut lab_lines = Vec::new();
    if let Some(c) = &a.cache {
        let c = lab_cache(Some(c))?;
        lab_lines = pinstorm_runners::lab::cleanup(&c)?;
    }
    let root_path = scratch_root(g)?.path().to_path_buf();
    if !root_path.exists() {
        for l in &lab_lines {
            println!("{l}");
        }
        println!("nothing to clean: {} does not exist", root_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let root = ScratchRoot::open(&root_path)?;
    let mut lines = lab_lines;
    lines.extend(pinstorm_runners::cleanup::clean_leftovers(&root));
    if lines.is_empty() {
        println!("nothing to clean under {}", root_path.display());
    }
    let problems = lines.iter().any(|l| l.contains("PROBLEM"));
    for l in lines {
        println!("{l}");
    }
    Ok(if problems {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A path to write to: checked like every other (absolute, no `..`).
fn out_path(p: &std::path::Path, what: &str) -> Result<PathBuf> {
    bad(scratch::checked_write_path(p, what))
}

/// Load results, saying on stderr which files were skipped and why.
fn load(paths: &[PathBuf], g: &Global) -> Result<Catalog> {
    let paths = if paths.is_empty() {
        vec![results_root(g)?.path().to_path_buf()]
    } else {
        paths.to_vec()
    };
    let c = bad(Catalog::load(&paths))?;
    for s in &c.skipped {
        eprintln!("pinstorm: skipped {}: {}", s.path.display(), s.reason);
    }
    Ok(c)
}

/// One side of a comparison: a file or directory, or a selector over the results root.
fn side(arg: &str, what: &str, g: &Global, root: &mut Option<Catalog>) -> Result<Vec<LoadedRun>> {
    let p = PathBuf::from(arg);
    let runs = if p.exists() {
        load(&[p], g)?.runs
    } else if Selector::looks_like(arg) {
        let sel = bad(Selector::parse(arg).map_err(|e| anyhow::anyhow!("{what}: {e}")))?;
        if root.is_none() {
            *root = Some(load(&[], g)?);
        }
        let cat = root.as_ref().expect("loaded above");
        let runs: Vec<LoadedRun> = cat.select(&sel).into_iter().cloned().collect();
        if runs.is_empty() {
            // Name what there is, so a typo or a renamed label is seen at once.
            let set = |f: &dyn Fn(&LoadedRun) -> Option<String>| {
                let s: std::collections::BTreeSet<String> = cat.runs.iter().filter_map(f).collect();
                if s.is_empty() {
                    "none".to_string()
                } else {
                    s.into_iter().collect::<Vec<_>>().join(", ")
                }
            };
            bail!(BadInput(anyhow::anyhow!(
                "{what} {arg:?} selects no run: it holds no result of the {} loaded from {} (their kernels: {}; labels: {}; scenarios: {})",
                cat.runs.len(),
                results_root(g)?.path().display(),
                set(&|r| Some(r.kernel().to_string())),
                set(&|r| r.label().map(str::to_string)),
                set(&|r| Some(r.result.scenario.name.clone())),
            )));
        }
        runs
    } else {
        bail!(BadInput(anyhow::anyhow!(
            "{what} {arg:?}: no such file or directory, and not a selector ({SELECTOR_KEYS})"
        )))
    };
    if runs.is_empty() {
        bail!(BadInput(anyhow::anyhow!(
            "{what} {arg:?} holds no result that could be loaded"
        )));
    }
    Ok(runs)
}

fn cmd_compare(g: &Global, a: &CompareArgs) -> Result<ExitCode> {
    let mut gates: Vec<Gate> = bad(a.fail_on.iter().map(|e| Gate::parse(e)).collect())?;
    if let Some(f) = &a.gates {
        let text =
            bad(std::fs::read_to_string(f).with_context(|| format!("--gates {}", f.display())))?;
        gates.extend(bad(gate::from_toml(&text, &f.display().to_string()))?);
    }
    if !(a.confidence > 0.0 && a.confidence < 1.0) {
        bail!(BadInput(anyhow::anyhow!(
            "--confidence must be between 0 and 1, e.g. 0.95"
        )));
    }
    if a.min_effect < 0.0 || a.single_run_noise < 0.0 {
        bail!(BadInput(anyhow::anyhow!(
            "--min-effect and --single-run-noise are percentages >= 0"
        )));
    }
    if let Some(s) = a.stats.iter().find(|s| compare::stat_quantile(s).is_none()) {
        bail!(BadInput(anyhow::anyhow!(
            "--stats {s:?}: known are {}",
            compare::STATS
        )));
    }
    let md_out = a
        .markdown_out
        .as_deref()
        .map(|p| out_path(p, "--markdown-out"))
        .transpose()?;
    let json_out = a
        .json_out
        .as_deref()
        .map(|p| out_path(p, "--json-out"))
        .transpose()?;
    let mut root = None;
    let base = side(&a.base, "BASE", g, &mut root)?;
    let cand = side(&a.cand, "CAND", g, &mut root)?;
    let opts = CompareOptions {
        confidence: a.confidence,
        min_effect_pct: a.min_effect,
        single_run_noise_pct: a.single_run_noise,
        stats: a.stats.clone(),
        ..CompareOptions::default()
    };
    let (b, c): (Vec<&LoadedRun>, Vec<&LoadedRun>) = (base.iter().collect(), cand.iter().collect());
    let mut cmp = compare::compare(&a.base, &b, &a.cand, &c, &opts);
    let failed = gate::apply(&mut cmp, &gates, a.allow_empty_gates);
    let json = serde_json::to_string_pretty(&cmp)? + "\n";
    match g.format {
        Format::Text => print!("{}", render::text(&cmp)),
        Format::Markdown => print!("{}", render::markdown(&cmp)),
        Format::Json => print!("{json}"),
    }
    if let Some(p) = md_out {
        pinstorm_analysis::store::write_atomic(&p, render::markdown(&cmp).as_bytes())?;
    }
    if let Some(p) = json_out {
        pinstorm_analysis::store::write_atomic(&p, json.as_bytes())?;
    }
    for gr in &cmp.gates {
        if gr.crossed {
            let shown = gr.by.len().min(render::GATE_EXAMPLES);
            eprintln!(
                "pinstorm: gate {} crossed by {} metric(s){}: {}{}",
                gr.expr,
                gr.by.len(),
                if shown < gr.by.len() {
                    format!(", the worst {shown}")
                } else {
                    String::new()
                },
                gr.by[..shown].join("; "),
                if shown < gr.by.len() {
                    " (--format json or --json-out lists them all)"
                } else {
                    ""
                }
            );
        } else if let Some(missing) = &gr.missing {
            if gr.failed {
                eprintln!(
                    "pinstorm: gate {} judged nothing: {missing}; it fails (exit 4) so that a missing metric cannot silence it (--allow-empty-gates lets it pass)",
                    gr.expr
                );
            } else {
                eprintln!(
                    "pinstorm: gate {} judged nothing ({missing}); passed because of --allow-empty-gates",
                    gr.expr
                );
            }
        }
    }
    if failed {
        return Ok(ExitCode::from(4));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_plot(g: &Global, a: &PlotArgs) -> Result<ExitCode> {
    let out = out_path(&a.out, "--out")?;
    let cat = load(&a.paths, g)?;
    if cat.runs.is_empty() {
        bail!(BadInput(anyhow::anyhow!(
            "no result could be loaded from the paths given"
        )));
    }
    let groups = cat.groups();
    let data = plot::PlotData::new(&groups);
    let formats: Vec<plot::ImageFormat> = a
        .formats
        .iter()
        .map(|f| match f {
            ImageArg::Svg => plot::ImageFormat::Svg,
            ImageArg::Png => plot::ImageFormat::Png,
        })
        .collect();
    let (files, missing) = plot::write_all(&data, &out, &formats)?;
    if g.format == Format::Json {
        let v = serde_json::json!({
            "groups": data.groups,
            "files": files,
            "not_drawn": missing.iter().map(|(c, why)| serde_json::json!({"chart": c, "why": why})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} run(s) in {} group(s): {}",
            cat.runs.len(),
            groups.len(),
            data.groups.join(", ")
        );
        for f in &files {
            println!("  {} ({}x{})", f.path.display(), f.width, f.height);
        }
        for (c, why) in &missing {
            println!("  {}: not drawn, {why}", c.name());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_report(g: &Global, a: &ReportArgs) -> Result<ExitCode> {
    let out = out_path(&a.out, "--out")?;
    let cat = load(&a.paths, g)?;
    if cat.runs.is_empty() {
        bail!(BadInput(anyhow::anyhow!(
            "no result could be loaded from the paths given"
        )));
    }
    let mut groups = cat.groups();
    if let Some(b) = &a.base {
        let Some(i) = groups.iter().position(|(name, _)| {
            name == b || pinstorm_analysis::catalog::release_matches(name, b)
        }) else {
            bail!(BadInput(anyhow::anyhow!(
                "--base {b:?} names no group; the groups are: {}",
                groups
                    .iter()
                    .map(|g| g.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        };
        let base = groups.remove(i);
        groups.insert(0, base);
    }
    let html = report::render(&cat, &groups, &CompareOptions::default(), &a.title)?;
    pinstorm_analysis::store::write_atomic(&out, html.as_bytes())?;
    if !g.quiet {
        eprintln!(
            "pinstorm: report of {} run(s) in {} group(s) written to {}",
            cat.runs.len(),
            groups.len(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_export(g: &Global, a: &ExportArgs) -> Result<ExitCode> {
    let out = a.out.as_deref().map(|p| out_path(p, "--out")).transpose()?;
    let cat = load(&a.paths, g)?;
    let runs: Vec<&LoadedRun> = cat.runs.iter().collect();
    let text = match a.to {
        ExportFormat::Csv => export::csv::render(&runs),
        ExportFormat::Ktap => export::ktap::render(&runs),
        ExportFormat::Junit => export::junit::render(&runs),
    };
    match out {
        Some(p) => pinstorm_analysis::store::write_atomic(&p, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let g = &cli.global;
    if g.format == Format::Markdown && !matches!(cli.command, Command::Compare(_)) {
        bail!(BadInput(anyhow::anyhow!(
            "--format markdown is for pinstorm compare; use text or json here"
        )));
    }
    match &cli.command {
        Command::Run(a) => {
            let (mut s, _text, origin) =
                bad(Scenario::resolve(&a.scenario).map_err(anyhow::Error::from))?;
            if let Some(seed) = a.seed {
                s.seed = seed;
            }
            if !a.backing.is_empty() {
                if let Some(p) = &mut s.probe {
                    p.backings = a.backing.clone();
                }
                if let Some(b) = &mut s.bench {
                    b.backings = a.backing.clone();
                }
                if let Some(st) = &mut s.storm {
                    st.backings = a.backing.clone();
                }
            }
            if let Some(m) = a.map {
                if let Some(p) = &mut s.probe {
                    p.maps = vec![m.into()];
                }
                if let Some(b) = &mut s.bench {
                    b.map = m.into();
                }
                if let Some(st) = &mut s.storm {
                    st.maps = vec![m.into()];
                }
            }
            if let Some(d) = a.duration {
                match &mut s.storm {
                    Some(st) if !d.0.is_zero() => st.duration = d,
                    Some(_) => bail!(BadInput(anyhow::anyhow!(
                        "--duration must be greater than zero"
                    ))),
                    None => bail!(BadInput(anyhow::anyhow!(
                        "--duration applies to storms, and {} has no [storm] section",
                        a.scenario
                    ))),
                }
            }
            run_scenario(g, s, origin, JsonOut::Result)
        }
        Command::Probe(a) => {
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
        Command::Bench(BenchCommand::Pin(a)) => {
            let d = BenchJob::default();
            let Some(threads) = NonZeroUsize::new(a.threads) else {
                bail!(BadInput(anyhow::anyhow!("--threads must be at least 1")))
            };
            let Some(iterations) = NonZeroU64::new(a.iterations) else {
                bail!(BadInput(anyhow::anyhow!("--iterations must be at least 1")))
            };
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
        Command::List => cmd_list(g),
        Command::Lab(a) => cmd_lab(g, a),
        Command::Cleanup(a) => cmd_cleanup(g, a),
        Command::Compare(a) => cmd_compare(g, a),
        Command::Plot(a) => cmd_plot(g, a),
        Command::Report(a) => cmd_report(g, a),
        Command::Export(a) => cmd_export(g, a),
    }
}

fn main() -> ExitCode {
    // The lease holder: a process of its own that pinstorm starts (not for people to call).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__lease-holder") {
        let code =
            pinstorm_workloads::lease::holder_main(args.get(2).map(String::as_str).unwrap_or(""));
        return ExitCode::from(code as u8);
    }
    // The lab's guest agent: runs inside a QEMU guest that `pinstorm lab` booted.
    if args.get(1).map(String::as_str) == Some("__lab-guest") {
        let plan = std::path::PathBuf::from(args.get(2).map(String::as_str).unwrap_or(""));
        return match pinstorm_runners::lab::guest::main(&plan) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("pinstorm lab guest: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pinstorm: error: {e:#}");
            // A scratch root or directory that is not provably ours is refused like bad
            // input: the user names another path, nothing ran.
            if e.downcast_ref::<BadInput>().is_some()
                || e.chain().any(|c| c.is::<scratch::Untrusted>())
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
