//! Every path the command line names, checked here and only here: absolute, no `..`, and
//! for directories pinstorm works in, an existing directory of the right owner.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::Global;
use crate::cmd::common::bad;
use pinstorm_analysis::catalog::{Catalog, RunFacts};
use pinstorm_runners::run::{ScratchDir, WriteDir};
use pinstorm_workloads::scratch;

/// The paths a run writes to, each checked once before anything runs.
pub struct RunPaths {
    pub results_root: WriteDir,
    pub scratch_root: WriteDir,
    pub scratch_dir: Option<ScratchDir>,
    pub scratch_devs: Vec<scratch::ScratchDevice>,
}

impl RunPaths {
    /// The run's paths, checked once here at the edge and carried as checked types from
    /// here on. Errors name the first bad one, in this order: --scratch-dir, --results,
    /// --scratch-root.
    pub fn check(g: &Global) -> Result<RunPaths> {
        let scratch_dir = match &g.scratch_dir {
            Some(d) => Some(bad(ScratchDir::new(d, "--scratch-dir"))?),
            None => None,
        };
        Ok(RunPaths {
            results_root: bad(WriteDir::new(
                &results_root(g)?,
                "--results (or PINSTORM_RESULTS)",
            ))?,
            scratch_root: bad(WriteDir::new(
                &scratch_root(g)?,
                "--scratch-root (or PINSTORM_SCRATCH_ROOT)",
            ))?,
            scratch_dir,
            scratch_devs: scratch_devs(g)?,
        })
    }
}

/// `--scratch-dev [FS=]DEV`, each checked: one device per filesystem, and not a filesystem
/// `--dax-dir` names too.
fn scratch_devs(g: &Global) -> Result<Vec<scratch::ScratchDevice>> {
    if g.scratch_dev_force && g.scratch_dev.is_empty() {
        return bad(Err(anyhow::anyhow!(
            "--scratch-dev-force applies to --scratch-dev, which was not given"
        )));
    }
    let mut devs: Vec<scratch::ScratchDevice> = Vec::new();
    for v in &g.scratch_dev {
        let d = bad(scratch::ScratchDevice::new(v, g.scratch_dev_force))?;
        if devs
            .iter()
            .any(|o| o.fs() == d.fs() || o.path() == d.path())
        {
            return bad(Err(anyhow::anyhow!(
                "--scratch-dev {v}: one device per filesystem, and each device once"
            )));
        }
        if g.dax_dir
            .iter()
            .any(|dd| dd.starts_with(&format!("{}=", d.fs())))
        {
            return bad(Err(anyhow::anyhow!(
                "--scratch-dev {v}: --dax-dir names a {} directory too; give one or the other",
                d.fs()
            )));
        }
        devs.push(d);
    }
    Ok(devs)
}

pub fn results_root(g: &Global) -> Result<PathBuf> {
    let p = match (&g.results, std::env::var_os("PINSTORM_RESULTS")) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => PathBuf::from(v),
        (None, None) => std::env::current_dir()
            .context("the current directory is gone; give --results")?
            .join("results"),
    };
    bad(scratch::checked_write_path(
        &p,
        "--results (or PINSTORM_RESULTS)",
    ))
}

pub fn scratch_root(g: &Global) -> Result<PathBuf> {
    let p = match (&g.scratch_root, std::env::var_os("PINSTORM_SCRATCH_ROOT")) {
        (Some(p), _) => p.clone(),
        (None, Some(v)) => PathBuf::from(v),
        (None, None) => bad(scratch::default_scratch_root())?,
    };
    bad(scratch::checked_write_path(
        &p,
        "--scratch-root (or PINSTORM_SCRATCH_ROOT)",
    ))
}

impl Global {
    /// `--dax-dir FS=DIR`, each checked: FS is xfs or ext4, DIR an existing scratch directory.
    pub fn dax_dirs(&self) -> Result<std::collections::BTreeMap<String, ScratchDir>> {
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
            let d = bad(ScratchDir::new(std::path::Path::new(dir), &flag))?;
            if out.insert(fs.to_string(), d).is_some() {
                return bad(Err(anyhow::anyhow!("--dax-dir {fs}= given twice")));
            }
        }
        Ok(out)
    }
}

/// The lab's cache: --cache, $PINSTORM_CACHE, $XDG_CACHE_HOME/pinstorm, ~/.cache/pinstorm.
pub fn lab_cache(flag: Option<&PathBuf>) -> Result<PathBuf> {
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

/// A path to write to: checked like every other (absolute, no `..`).
pub fn out_path(p: &std::path::Path, what: &str) -> Result<PathBuf> {
    bad(scratch::checked_write_path(p, what))
}

/// Load whole results (under `--results` when no path is given), saying on stderr which files were skipped and why.
pub fn load(paths: &[PathBuf], g: &Global) -> Result<Catalog> {
    load_with(paths, g, Catalog::load)
}

/// Load as [`load`], keeping only what compare, plot and report read of each run.
pub fn load_facts(paths: &[PathBuf], g: &Global) -> Result<Catalog<RunFacts>> {
    load_with(paths, g, Catalog::load_facts)
}

fn load_with<R>(
    paths: &[PathBuf],
    g: &Global,
    load: fn(&[PathBuf]) -> Result<Catalog<R>>,
) -> Result<Catalog<R>> {
    let paths = if paths.is_empty() {
        vec![results_root(g)?]
    } else {
        paths.to_vec()
    };
    let c = bad(load(&paths))?;
    for s in &c.skipped {
        eprintln!("pinstorm: skipped {}: {}", s.path.display(), s.reason);
    }
    Ok(c)
}
