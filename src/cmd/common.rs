//! What several commands share: the bad-input error (exit 2), expectations and the RDMA
//! configuration.

use anyhow::Result;

use crate::cli::{Global, OverrideArgs};
use pinstorm_analysis::expect::{self, Expectations};
use pinstorm_workloads::pin::rdma;
use pinstorm_workloads::scenario::{OverrideError, Overrides, Scenario};

/// An error in what the user gave us (exit 2), as opposed to one met while running (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadInput(pub anyhow::Error);

pub fn bad<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| BadInput(e).into())
}

/// `--expectations` (files or directories, repeatable) as (origin, text) per file, checked;
/// None when none were given (the built-in files apply).
pub fn expectation_sources(g: &Global) -> Result<Option<Vec<(String, String)>>> {
    if g.expectations.is_empty() {
        return Ok(None);
    }
    let sources = bad(expect::read_sources(&g.expectations))?;
    bad(Expectations::from_sources(&sources))?;
    Ok(Some(sources))
}

pub fn expectations(g: &Global) -> Result<Expectations> {
    match expectation_sources(g)? {
        None => Ok(Expectations::builtin()),
        Some(sources) => bad(Expectations::from_sources(&sources)),
    }
}

/// The `rdma` pin paths' configuration: the scenario's `[rdma]`, with `--rdma-dev` and
/// `--rdma-port` over it. Recorded in the scenario (and so in the result, and the paths the
/// run builds from it) when anything was set.
pub fn configure_rdma(g: &Global, scenario: Option<&mut Scenario>) -> rdma::RdmaConfig {
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

/// The override flags (`--pin`, `--backing`, `--map`, `--duration`, `--write-at`) and
/// `--seed` over scenario `name`; a flag that cannot apply is bad input naming it.
pub fn apply_overrides(
    name: &str,
    s: &mut Scenario,
    a: &OverrideArgs,
    seed: Option<u64>,
) -> Result<()> {
    let overrides = Overrides {
        backings: a.backing.clone(),
        pins: a.pin.clone(),
        map: a.map.map(Into::into),
        duration: a.duration,
        seed,
        write_at: a.write_at,
    };
    match s.apply_overrides(&overrides) {
        Ok(()) => Ok(()),
        Err(OverrideError::ZeroDuration) => bad(Err(anyhow::anyhow!(
            "--duration must be greater than zero (and at most 168h)"
        ))),
        Err(OverrideError::NoStorm) => bad(Err(anyhow::anyhow!(
            "--duration and --write-at apply to storms, and {name} has no [storm] section"
        ))),
    }
}
