//! `pinstorm export`: results as CSV, KTAP, JUnit XML or KCIDB JSON.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{ExportArgs, ExportFormat, Global};
use crate::cmd::paths::load;
use crate::cmd::paths::out_path;
use pinstorm_analysis::catalog::LoadedRun;
use pinstorm_analysis::export;

pub fn run(g: &Global, a: &ExportArgs) -> Result<ExitCode> {
    let out = a.out.as_deref().map(|p| out_path(p, "--out")).transpose()?;
    let cat = load(&a.paths, g)?;
    let runs: Vec<&LoadedRun> = cat.runs.iter().collect();
    let text = match a.to {
        ExportFormat::Csv => export::csv::render(&runs),
        ExportFormat::Ktap => export::ktap::render(&runs),
        ExportFormat::Junit => export::junit::render(&runs),
        ExportFormat::Kcidb => export::kcidb::render(&runs),
    };
    match out {
        Some(p) => pinstorm_analysis::store::write_atomic(&p, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
