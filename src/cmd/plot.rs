//! `pinstorm plot`: charts of results, as SVG or PNG files.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{Format, Global, ImageArg, PlotArgs};
use crate::cmd::common::BadInput;
use crate::cmd::paths::load_facts;
use crate::cmd::paths::out_path;
use pinstorm_analysis::plot;

pub fn run(g: &Global, a: &PlotArgs) -> Result<ExitCode> {
    let out = out_path(&a.out, "--out")?;
    let cat = load_facts(&a.paths, g)?;
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
