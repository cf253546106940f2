//! `pinstorm cleanup`: what killed runs left behind under the scratch root (and in the lab
//! cache).

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{CleanupArgs, Global};
use crate::cmd::paths::{lab_cache, scratch_root};
use pinstorm_workloads::scratch::ScratchRoot;

pub fn run(g: &Global, a: &CleanupArgs) -> Result<ExitCode> {
    let mut lab_lines = Vec::new();
    if let Some(c) = &a.cache {
        let c = lab_cache(Some(c))?;
        lab_lines = pinstorm_lab::cleanup(&c)?;
    }
    let root_path = scratch_root(g)?;
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
