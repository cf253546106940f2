//! Charts per kernel version (plotters; SVG and PNG): pin latency p50/p99 bars with error
//! bars, latency percentile curves (HdrHistogram style, log-scaled percentile axis), the
//! capability matrix as a heatmap per kernel, violations per kernel, and storm time series.
//!
//! Runs are grouped by kernel release and label (`6.12.0 (baseline)`); every group gets
//! the same colour in every chart. Text is drawn with DejaVu Sans compiled into the binary
//! (ab_glyph), so PNGs render the same on any machine, with or without fontconfig.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::catalog::RunFacts;
use crate::hist::Sparse;
use crate::metrics::VIOLATION_KINDS;
use crate::stats::{interval, Ranked};

mod draw;
use draw::{draw, rows_cols};

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1400;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both faces are valid TrueType files shipped by the dejavu crate.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Distinct colours (Tableau 10), one per kernel group.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// A quantile with its 95% interval.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    value: f64,
    low: f64,
    high: f64,
}

/// Per cell (its label), one value per kernel group (none where the group lacks the cell).
pub type PerGroup<T> = Vec<(String, Vec<Option<T>>)>;

/// Charts not drawn, and why.
pub type NotDrawn = Vec<(Chart, &'static str)>;

/// Everything the charts draw, computed once from the runs.
pub struct PlotData {
    pub groups: Vec<String>,
    /// Bench `cycle` cells: per cell, per group, (p50, p99).
    bars: PerGroup<(Estimate, Estimate)>,
    /// Per latency cell, per group: (x = -log10(1 - q), latency ns): x = 2 is p99.
    curves: PerGroup<Vec<(f64, f64)>>,
    /// Per group: (row = pin map access, column = backing) -> outcome.
    matrices: Vec<BTreeMap<(String, String), String>>,
    /// Per group: violations per run by oracle.
    violations: Vec<BTreeMap<&'static str, f64>>,
    /// Every pin-latency cell, per group: (p50, p99) of all runs together, in ns.
    pub pin_table: PerGroup<(u64, u64)>,
    /// Per storm cell, per group: (second, registrations/s, layout ops/s), mean over runs.
    timelines: PerGroup<Vec<(f64, f64, f64)>>,
}

fn estimate(r: &Ranked, q: f64, seed: u64) -> Estimate {
    let (low, high) = interval(r.bootstrap_quantile(q, 1000, seed), 0.95);
    Estimate {
        value: r.quantile(q) as f64,
        low,
        high,
    }
}

fn curve(h: &Sparse) -> Vec<(f64, f64)> {
    let n = h.count() as f64;
    // Up to the quantile the samples support: 1 / (1 - q) <= n.
    let xmax = n.log10().min(5.0);
    let mut pts = Vec::new();
    let mut x = 0.0;
    while x <= xmax + 1e-9 {
        let q = 1.0 - 10f64.powf(-x);
        pts.push((x, h.value_at_quantile(q).max(1) as f64));
        x += 0.02;
    }
    pts
}

impl PlotData {
    pub fn new(groups: &[(String, Vec<&RunFacts>)]) -> PlotData {
        use rayon::prelude::*;
        let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
        // Latency histograms merged per group and cell.
        let per_group: Vec<BTreeMap<(String, String), Sparse>> = groups
            .iter()
            .map(|(_, runs)| {
                let mut m: BTreeMap<(&str, &str), Vec<&Sparse>> = BTreeMap::new();
                for r in runs {
                    for l in &r.latencies {
                        m.entry((l.kind, &l.key)).or_default().push(&l.hist);
                    }
                }
                let m: Vec<_> = m.into_iter().collect();
                m.into_par_iter()
                    .map(|((kind, key), hists)| {
                        ((kind.to_string(), key.to_string()), Sparse::sum(hists))
                    })
                    .collect()
            })
            .collect();
        let keys: BTreeSet<(String, String)> =
            per_group.iter().flat_map(|m| m.keys().cloned()).collect();
        let bars: Vec<_> = keys
            .iter()
            .filter(|(k, key)| k == "pin" && key.ends_with(" cycle"))
            .map(|kk| {
                let label = kk.1.trim_end_matches(" cycle").to_string();
                let v = per_group
                    .par_iter()
                    .map(|m| {
                        m.get(kk).map(|h| {
                            let r = Ranked::from_sparse(h);
                            (estimate(&r, 0.5, 1), estimate(&r, 0.99, 2))
                        })
                    })
                    .collect();
                (label, v)
            })
            .collect();
        let pin_table = keys
            .iter()
            .filter(|(k, _)| k == "pin")
            .map(|kk| {
                let per = per_group
                    .iter()
                    .map(|m| {
                        m.get(kk)
                            .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
                    })
                    .collect();
                (kk.1.clone(), per)
            })
            .collect();
        let curves = keys
            .iter()
            .filter(|(k, key)| (k == "pin" && key.ends_with(" cycle")) || k == "storm-pin")
            .map(|kk| {
                let label = format!("{}: {}", kk.0, kk.1);
                (
                    label,
                    per_group.iter().map(|m| m.get(kk).map(curve)).collect(),
                )
            })
            .collect();
        let matrices = groups
            .iter()
            .map(|(_, runs)| {
                let mut m: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
                for r in runs {
                    for c in &r.cells {
                        m.entry((
                            format!("{} {} {}", c.pin, c.map, c.access),
                            c.backing.clone(),
                        ))
                        .or_default()
                        .insert(c.outcome.clone());
                    }
                }
                m.into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>().join("|")))
                    .collect()
            })
            .collect();
        let violations = groups
            .iter()
            .map(|(_, runs)| {
                let mut m: BTreeMap<&'static str, f64> =
                    VIOLATION_KINDS.iter().map(|k| (*k, 0.0)).collect();
                for r in runs {
                    for (k, v) in r.violations() {
                        *m.get_mut(k).unwrap() += v as f64 / runs.len() as f64;
                    }
                }
                m
            })
            .collect();
        let mut storm_cells = BTreeSet::new();
        for (_, runs) in groups {
            for r in runs {
                for (cell, _) in &r.timelines {
                    storm_cells.insert(cell.clone());
                }
            }
        }
        let timelines = storm_cells
            .into_iter()
            .map(|cell| {
                let per = groups
                    .iter()
                    .map(|(_, runs)| {
                        let mut sum: BTreeMap<u64, (f64, f64, f64)> = BTreeMap::new();
                        for r in runs {
                            for (_, timeline) in r.timelines.iter().filter(|t| t.0 == cell) {
                                for (second, registrations, layout_ops) in timeline {
                                    let e = sum.entry(*second).or_default();
                                    e.0 += *registrations as f64;
                                    e.1 += *layout_ops as f64;
                                    e.2 += 1.0;
                                }
                            }
                        }
                        (!sum.is_empty()).then(|| {
                            sum.into_iter()
                                .map(|(s, (r, l, n))| (s as f64, r / n, l / n))
                                .collect()
                        })
                    })
                    .collect();
                (cell, per)
            })
            .collect();
        PlotData {
            groups: names,
            bars,
            pin_table,
            curves,
            matrices,
            violations,
            timelines,
        }
    }
}

/// The charts there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chart {
    PinLatency,
    Percentiles,
    OutcomeMatrix,
    Violations,
    StormTimeline,
}

impl Chart {
    pub const ALL: [Chart; 5] = [
        Chart::PinLatency,
        Chart::Percentiles,
        Chart::OutcomeMatrix,
        Chart::Violations,
        Chart::StormTimeline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Chart::PinLatency => "pin-latency",
            Chart::Percentiles => "latency-percentiles",
            Chart::OutcomeMatrix => "outcome-matrix",
            Chart::Violations => "violations",
            Chart::StormTimeline => "storm-timeline",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Chart::PinLatency => "Pin latency (register + unregister cycle) per kernel",
            Chart::Percentiles => "Latency by percentile per kernel",
            Chart::OutcomeMatrix => "Which pins each kernel allows (capability probe)",
            Chart::Violations => "Correctness violations per kernel",
            Chart::StormTimeline => "Layout storms over time per kernel",
        }
    }

    /// Why a chart is not drawn for these results, if it is not.
    pub fn missing(self, d: &PlotData) -> Option<&'static str> {
        match self {
            Chart::PinLatency if d.bars.is_empty() => {
                Some("no pin benchmark rows in these results")
            }
            Chart::Percentiles if d.curves.is_empty() => {
                Some("no latency histograms in these results")
            }
            Chart::OutcomeMatrix if d.matrices.iter().all(|m| m.is_empty()) => {
                Some("no capability probe in these results")
            }
            Chart::StormTimeline if d.timelines.is_empty() => Some("no storms in these results"),
            _ => None,
        }
    }

    /// Width and height in pixels (the height grows with the rows to draw).
    pub fn size(self, d: &PlotData) -> (u32, u32) {
        let g = d.groups.len().max(1) as u32;
        let h = match self {
            Chart::PinLatency => 140 + d.bars.len() as u32 * (g * 16 + 14),
            Chart::Percentiles => 60 + d.curves.len().div_ceil(2) as u32 * 360,
            Chart::OutcomeMatrix => {
                let rows = d
                    .matrices
                    .iter()
                    .map(|m| rows_cols(m).0.len())
                    .max()
                    .unwrap_or(1) as u32;
                60 + g * (rows * 30 + 110)
            }
            Chart::Violations => 600,
            Chart::StormTimeline => 60 + d.timelines.len() as u32 * 320,
        };
        (WIDTH, h.max(300))
    }
}

/// The chart as an SVG document.
pub fn svg(chart: Chart, d: &PlotData) -> Result<String> {
    register_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, chart.size(d)).into_drawing_area();
        draw(chart, root, d)?;
    }
    Ok(s)
}

/// The chart as a PNG file.
pub fn png(chart: Chart, d: &PlotData, path: &Path) -> Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, chart.size(d)).into_drawing_area();
    draw(chart, root, d).with_context(|| format!("writing {}", path.display()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Svg,
    Png,
}

/// One image written by [`write_all`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlotFile {
    pub chart: Chart,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
}

/// Every chart that has data, in every format asked for, into `dir` (created). Returns
/// the files and, for the charts not drawn, why not.
pub fn write_all(
    d: &PlotData,
    dir: &Path,
    formats: &[ImageFormat],
) -> Result<(Vec<PlotFile>, NotDrawn)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for chart in Chart::ALL {
        if let Some(why) = chart.missing(d) {
            missing.push((chart, why));
            continue;
        }
        let (width, height) = chart.size(d);
        for f in formats {
            let path = match f {
                ImageFormat::Svg => {
                    let p = dir.join(format!("{}.svg", chart.name()));
                    crate::store::write_atomic(&p, svg(chart, d)?.as_bytes())?;
                    p
                }
                ImageFormat::Png => {
                    let p = dir.join(format!("{}.png", chart.name()));
                    png(chart, d, &p)?;
                    p
                }
            };
            files.push(PlotFile {
                chart,
                path,
                width,
                height,
            });
        }
    }
    Ok((files, missing))
}
