//! `pinstorm lab`: a scenario on other kernels, each in a QEMU guest.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{self, Format, Global};
use crate::cmd::common::{bad, configure_rdma, expectation_sources};
use crate::cmd::paths::{lab_cache, results_root};
use pinstorm_workloads::scenario::Scenario;

pub fn run(g: &Global, a: &cli::LabArgs) -> Result<ExitCode> {
    use pinstorm_lab::{self as lab, guest::PmemMode, kernels::KernelSpec};
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
    let inject = bad(a.inject.as_deref().map(lab::Inject::parse).transpose())?;
    let opts = lab::LabOptions {
        plan: lab::LabPlan {
            kernels,
            scenario_text: text,
            seed: a.seed,
            label: g.label.clone(),
            expectations,
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
            inject,
            guest_exec: a.guest_exec.clone(),
        },
        origin,
        scenario_name: scenario.name.clone(),
        results_root: results_root(g)?,
        cache: lab_cache(a.cache.as_ref())?,
        vng: a.vng.clone(),
        timeout: a.timeout.0,
        refresh: a.refresh,
        fresh: a.fresh,
        mirror: a.mirror.clone(),
        security_mirror: a.security_mirror.clone(),
        guest_exe: None,
        verbose: !g.quiet,
    };
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
