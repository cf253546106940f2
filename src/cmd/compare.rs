//! `pinstorm compare`: two sets of results, with gates that fail the command.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::{CompareArgs, Format, Global};
use crate::cmd::common::{bad, BadInput};
use crate::cmd::paths::load_facts;
use crate::cmd::paths::{out_path, results_root};
use pinstorm_analysis::catalog::{Catalog, Indexed, RunFacts, Selector, SELECTOR_KEYS};
use pinstorm_analysis::compare::{self, CompareOptions};
use pinstorm_analysis::gate::{self, Gate, GateOptions, EXIT_FAILED, EXIT_INCONCLUSIVE};
use pinstorm_analysis::render;

/// The runs of one side: loaded for it from a path, or picked out of the results root
/// (which both sides share, so its runs are borrowed rather than copied).
enum SideRuns<'a> {
    Loaded(Vec<RunFacts>),
    Selected(Vec<&'a RunFacts>),
}

impl SideRuns<'_> {
    fn runs(&self) -> Vec<&RunFacts> {
        match self {
            SideRuns::Loaded(v) => v.iter().collect(),
            SideRuns::Selected(v) => v.clone(),
        }
    }
}

/// One side of a comparison: a file or directory, or a selector over the results root
/// (loaded when a side first needs it).
fn side<'a>(
    arg: &str,
    what: &str,
    g: &Global,
    root: &'a OnceCell<Catalog<RunFacts>>,
) -> Result<SideRuns<'a>> {
    let p = PathBuf::from(arg);
    let runs = if p.exists() {
        SideRuns::Loaded(load_facts(&[p], g)?.runs)
    } else if Selector::looks_like(arg) {
        let sel = bad(Selector::parse(arg).map_err(|e| anyhow::anyhow!("{what}: {e}")))?;
        if root.get().is_none() {
            let _ = root.set(load_facts(&[], g)?);
        }
        let cat = root.get().expect("loaded above");
        let runs = cat.select(&sel);
        if runs.is_empty() {
            // Name what there is, so a typo or a renamed label is seen at once.
            let set = |f: &dyn Fn(&RunFacts) -> Option<String>| {
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
                results_root(g)?.display(),
                set(&|r| Some(r.kernel().to_string())),
                set(&|r| r.label().map(str::to_string)),
                set(&|r| Some(r.scenario().to_string())),
            )));
        }
        SideRuns::Selected(runs)
    } else {
        bail!(BadInput(anyhow::anyhow!(
            "{what} {arg:?}: no such file or directory, and not a selector ({SELECTOR_KEYS})"
        )))
    };
    if runs.runs().is_empty() {
        bail!(BadInput(anyhow::anyhow!(
            "{what} {arg:?} holds no result that could be loaded"
        )));
    }
    Ok(runs)
}

pub fn run(g: &Global, a: &CompareArgs) -> Result<ExitCode> {
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
    for (flag, v) in [
        ("--min-effect", a.min_effect),
        ("--single-run-noise", a.single_run_noise),
    ] {
        // NaN fails this too: a noise floor of NaN would make every change insignificant.
        if !(0.0..=1000.0).contains(&v) {
            bail!(BadInput(anyhow::anyhow!(
                "{flag} {v}: must be a percentage between 0 and 1000"
            )));
        }
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
    let root = OnceCell::new();
    let base = side(&a.base, "BASE", g, &root)?;
    let cand = side(&a.cand, "CAND", g, &root)?;
    let opts = CompareOptions {
        confidence: a.confidence,
        min_effect_pct: a.min_effect,
        single_run_noise_pct: a.single_run_noise,
        stats: a.stats.clone(),
        ..CompareOptions::default()
    };
    let (b, c) = (base.runs(), cand.runs());
    let mut cmp = compare::compare(&a.base, &b, &a.cand, &c, &opts);
    let status = gate::apply(
        &mut cmp,
        &gates,
        &GateOptions {
            allow_empty: a.allow_empty_gates,
            judge_disturbed: a.judge_disturbed,
        },
    );
    // Only when asked for: a thousand runs' comparison is tens of MB of JSON.
    let json = (g.format == Format::Json || json_out.is_some())
        .then(|| serde_json::to_string_pretty(&cmp).map(|j| j + "\n"))
        .transpose()?;
    match g.format {
        Format::Text => print!("{}", render::text(&cmp)),
        Format::Markdown => print!("{}", render::markdown(&cmp)),
        Format::Json => print!("{}", json.as_deref().unwrap_or_default()),
    }
    if let Some(p) = md_out {
        pinstorm_analysis::store::write_atomic(&p, render::markdown(&cmp).as_bytes())?;
    }
    if let (Some(p), Some(json)) = (json_out, &json) {
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
        } else if gr.inconclusive {
            eprintln!(
                "pinstorm: gate {} not judged: {} of {} metric(s) were measured on a disturbed machine ({}); inconclusive (exit {EXIT_INCONCLUSIVE} unless another gate fails): rerun on a quiet machine, or pass --judge-disturbed to judge them anyway",
                gr.expr,
                gr.disturbed,
                gr.matched,
                gr.disturbed_by.join("; ")
            );
        } else if let Some(missing) = &gr.missing {
            if gr.failed {
                eprintln!(
                    "pinstorm: gate {} judged nothing: {missing}; it fails (exit {EXIT_FAILED}) so that a missing metric cannot silence it (--allow-empty-gates lets it pass)",
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
    Ok(ExitCode::from(status.exit_code()))
}
