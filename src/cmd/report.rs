//! `pinstorm report`: one HTML file with the results, their comparisons and charts.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{Global, ReportArgs};
use crate::cmd::common::BadInput;
use crate::cmd::paths::load_facts;
use crate::cmd::paths::out_path;
use pinstorm_analysis::compare::CompareOptions;
use pinstorm_analysis::report;

pub fn run(g: &Global, a: &ReportArgs) -> Result<ExitCode> {
    let out = out_path(&a.out, "--out")?;
    let cat = load_facts(&a.paths, g)?;
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
