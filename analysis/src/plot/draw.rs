//! Drawing the charts of [`super`] with plotters: one function per chart, each from the
//! chart's `PlotData`.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::*;
use crate::summary::human_ns;

pub(super) fn rows_cols(m: &BTreeMap<(String, String), String>) -> (Vec<String>, Vec<String>) {
    let rows: BTreeSet<String> = m.keys().map(|k| k.0.clone()).collect();
    let cols: BTreeSet<String> = m.keys().map(|k| k.1.clone()).collect();
    (rows.into_iter().collect(), cols.into_iter().collect())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// Axes of latencies are linear in log10(ns) and labelled in time units: plotters' own log
/// axes crowd their labels within a decade.
fn log_ns_label(v: &f64) -> String {
    human_ns(10f64.powf(*v))
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi == 0.0 {
        return (0.0, 1.0);
    }
    (
        (lo / 1.3).log10(),
        (hi * 1.3).log10().max((lo / 1.3).log10() + 0.5),
    )
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    groups: &[String],
    y: i32,
) -> Result<()> {
    let mut x = 20;
    for (i, g) in groups.iter().enumerate() {
        area.draw(&Rectangle::new(
            [(x, y), (x + 14, y + 14)],
            colour(i).filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(g.clone(), (x + 20, y), font(15)))
            .map_err(err)?;
        x += 40 + 9 * g.len() as i32;
    }
    Ok(())
}

fn draw_pin_latency<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &PlotData) -> Result<()> {
    let (title, body) = root.split_vertically(70);
    title
        .draw(&Text::new(Chart::PinLatency.title(), (20, 8), font(22)))
        .map_err(err)?;
    legend(&title, &d.groups, 42)?;
    let panels = body.split_evenly((1, 2));
    let g = d.groups.len().max(1);
    let n = d.bars.len();
    for (pi, (stat, pick)) in [
        (
            "p50",
            (|e: &(Estimate, Estimate)| e.0) as fn(&(Estimate, Estimate)) -> Estimate,
        ),
        ("p99", |e| e.1),
    ]
    .into_iter()
    .enumerate()
    {
        let all = d
            .bars
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().map(pick));
        let (lo, hi) = log_range(all.flat_map(|e| [e.value, e.low, e.high]));
        let labels: Vec<String> = d.bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&panels[pi])
            .caption(format!("{stat}, 95% interval as error bar"), font(17))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(if pi == 0 { 230 } else { 10 })
            .build_cartesian_2d(lo..hi, 0f64..n as f64)
            .map_err(err)?;
        let fmt = |y: &f64| {
            let i = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        };
        let blank = |_: &f64| String::new();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("latency (log scale)")
            .x_labels(8)
            .x_label_formatter(&log_ns_label)
            .y_labels(n * 2 + 1)
            .y_label_formatter(if pi == 0 { &fmt } else { &blank })
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()
            .map_err(err)?;
        for (ci, (_, per)) in d.bars.iter().enumerate() {
            let band = 0.8 / g as f64;
            for (gi, e) in per.iter().enumerate() {
                let Some(e) = e.as_ref().map(pick) else {
                    continue;
                };
                // Top to bottom in group order within each cell.
                let y0 = ci as f64 + 0.9 - (gi + 1) as f64 * band;
                let y1 = y0 + band * 0.85;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(lo, y0), (e.value.log10(), y1)],
                        colour(gi).mix(0.8).filled(),
                    )))
                    .map_err(err)?;
                let ym = (y0 + y1) / 2.0;
                chart
                    .draw_series(std::iter::once(ErrorBar::new_horizontal(
                        ym,
                        e.low.log10().max(lo),
                        e.value.log10(),
                        e.high.log10().max(lo),
                        BLACK.stroke_width(1),
                        6,
                    )))
                    .map_err(err)?;
            }
        }
    }
    Ok(())
}

fn draw_percentiles<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &PlotData) -> Result<()> {
    let (title, body) = root.split_vertically(60);
    title
        .draw(&Text::new(Chart::Percentiles.title(), (20, 6), font(22)))
        .map_err(err)?;
    legend(&title, &d.groups, 36)?;
    let rows = d.curves.len().div_ceil(2);
    let panels = body.split_evenly((rows.max(1), 2));
    let pct = |x: &f64| match (x * 100.0).round() as i64 {
        0 => "0%".to_string(),
        100 => "90%".into(),
        200 => "99%".into(),
        300 => "99.9%".into(),
        400 => "99.99%".into(),
        500 => "99.999%".into(),
        _ => String::new(),
    };
    for ((label, per), area) in d.curves.iter().zip(panels.iter()) {
        let (lo, hi) = log_range(per.iter().flatten().flatten().map(|p| p.1));
        let xmax = per
            .iter()
            .flatten()
            .flat_map(|c| c.last().map(|p| p.0))
            .fold(1.0f64, f64::max)
            .ceil();
        let mut chart = ChartBuilder::on(area)
            .caption(label, font(15))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(38)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&pct)
            .y_labels(6)
            .y_label_formatter(&log_ns_label)
            .x_desc("percentile")
            .y_desc("latency (log scale)")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .draw()
            .map_err(err)?;
        for (gi, c) in per.iter().enumerate() {
            if let Some(c) = c {
                chart
                    .draw_series(LineSeries::new(
                        c.iter().map(|p| (p.0, p.1.log10())),
                        colour(gi).stroke_width(2),
                    ))
                    .map_err(err)?;
            }
        }
    }
    Ok(())
}

fn outcome_colour(o: &str) -> RGBColor {
    match o {
        "ok" => RGBColor(120, 190, 120),
        "notrun" => RGBColor(205, 205, 205),
        o if o.contains('|') => RGBColor(240, 200, 90),
        _ => RGBColor(225, 110, 100),
    }
}

fn draw_outcome_matrix<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    d: &PlotData,
) -> Result<()> {
    root.draw(&Text::new(Chart::OutcomeMatrix.title(), (20, 8), font(22)))
        .map_err(err)?;
    root.draw(&Text::new(
        "green: pinned (ok); red: refused (errno); grey: notrun; yellow: runs disagree",
        (20, 36),
        font(14),
    ))
    .map_err(err)?;
    let mut y = 70;
    let rows_max = d
        .matrices
        .iter()
        .map(|m| rows_cols(m).0.len())
        .max()
        .unwrap_or(1) as i32;
    for (gi, m) in d.matrices.iter().enumerate() {
        let (rows, cols) = rows_cols(m);
        root.draw(&Rectangle::new(
            [(20, y + 4), (34, y + 18)],
            colour(gi).filled(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            format!("kernel {}", d.groups[gi]),
            (42, y),
            ("sans-serif", 18).into_font().style(FontStyle::Bold),
        ))
        .map_err(err)?;
        let (x0, cw, rh) = (
            230,
            ((WIDTH as i32 - 250) / cols.len().max(1) as i32).min(130),
            30,
        );
        for (ci, c) in cols.iter().enumerate() {
            root.draw(&Text::new(
                c.clone(),
                (x0 + ci as i32 * cw + 4, y + 30),
                font(13),
            ))
            .map_err(err)?;
        }
        for (ri, r) in rows.iter().enumerate() {
            let ry = y + 50 + ri as i32 * rh;
            root.draw(&Text::new(r.clone(), (20, ry + 8), font(13)))
                .map_err(err)?;
            for (ci, c) in cols.iter().enumerate() {
                let cx = x0 + ci as i32 * cw;
                let o = m.get(&(r.clone(), c.clone()));
                let fill = o.map_or(WHITE, |o| outcome_colour(o));
                root.draw(&Rectangle::new(
                    [(cx, ry), (cx + cw - 3, ry + rh - 3)],
                    fill.filled(),
                ))
                .map_err(err)?;
                let text = o.map(String::as_str).unwrap_or("-");
                let max = (cw as usize / 8).max(3);
                // Outcomes come from files: cut on a character, not a byte.
                let text: String = text.chars().take(max).collect();
                root.draw(&Text::new(text, (cx + 5, ry + 7), font(12)))
                    .map_err(err)?;
            }
        }
        y += rows_max * rh + 110;
    }
    Ok(())
}

fn draw_violations<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &PlotData) -> Result<()> {
    let (title, body) = root.split_vertically(70);
    title
        .draw(&Text::new(Chart::Violations.title(), (20, 8), font(22)))
        .map_err(err)?;
    legend(&title, &d.groups, 42)?;
    let ymax = d
        .violations
        .iter()
        .flat_map(|m| m.values().copied())
        .fold(0.0f64, f64::max);
    let n = VIOLATION_KINDS.len();
    let mut chart = ChartBuilder::on(&body)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..(ymax * 1.15).max(1.0))
        .map_err(err)?;
    let fmt = |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 0.01 && i < n {
            VIOLATION_KINDS[i].to_string()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&fmt)
        .y_desc("violations per run")
        .label_style(font(13))
        .axis_desc_style(font(14))
        .draw()
        .map_err(err)?;
    let g = d.groups.len().max(1);
    for (gi, m) in d.violations.iter().enumerate() {
        let band = 0.8 / g as f64;
        chart
            .draw_series(VIOLATION_KINDS.iter().enumerate().map(|(ki, k)| {
                let x0 = ki as f64 + 0.1 + gi as f64 * band;
                Rectangle::new([(x0, 0.0), (x0 + band * 0.9, m[k])], colour(gi).filled())
            }))
            .map_err(err)?;
        // Each count over its bar: a few lost writes beside hundreds of misplaced ones would
        // otherwise be a bar one pixel high.
        chart
            .draw_series(
                VIOLATION_KINDS
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| m[*k] > 0.0)
                    .map(|(ki, k)| {
                        let x0 = ki as f64 + 0.1 + gi as f64 * band;
                        let v = m[k];
                        let label = if v >= 10.0 || v.fract() == 0.0 {
                            format!("{v:.0}")
                        } else {
                            format!("{v:.1}")
                        };
                        Text::new(label, (x0, v + ymax * 0.02), font(11))
                    }),
            )
            .map_err(err)?;
    }
    if ymax == 0.0 {
        body.draw(&Text::new("no violations in any run", (300, 200), font(18)))
            .map_err(err)?;
    }
    Ok(())
}

fn draw_timeline<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &PlotData) -> Result<()> {
    let (title, body) = root.split_vertically(60);
    title
        .draw(&Text::new(
            format!(
                "{}: solid = pins/s, thin = layout operations/s",
                Chart::StormTimeline.title()
            ),
            (20, 6),
            font(20),
        ))
        .map_err(err)?;
    legend(&title, &d.groups, 36)?;
    let panels = body.split_evenly((d.timelines.len().max(1), 1));
    for ((cell, per), area) in d.timelines.iter().zip(panels.iter()) {
        let pts = per.iter().flatten().flatten();
        let xmax = pts.clone().map(|p| p.0).fold(0.0f64, f64::max) + 1.0;
        let ymax = pts.map(|p| p.1.max(p.2)).fold(0.0f64, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("storm {cell}"), font(15))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the storm started")
            .y_desc("per second")
            .label_style(font(12))
            .axis_desc_style(font(13))
            .draw()
            .map_err(err)?;
        for (gi, series) in per.iter().enumerate() {
            let Some(s) = series else { continue };
            chart
                .draw_series(LineSeries::new(
                    s.iter().map(|p| (p.0 + 0.5, p.1)),
                    colour(gi).stroke_width(3),
                ))
                .map_err(err)?;
            chart
                .draw_series(PointSeries::of_element(
                    s.iter().map(|p| (p.0 + 0.5, p.1)),
                    4,
                    colour(gi).filled(),
                    &|c, s, st| Circle::new(c, s, st),
                ))
                .map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    s.iter().map(|p| (p.0 + 0.5, p.2)),
                    colour(gi).stroke_width(1),
                ))
                .map_err(err)?;
        }
    }
    Ok(())
}

pub(super) fn draw<DB: DrawingBackend>(
    chart: Chart,
    root: DrawingArea<DB, Shift>,
    d: &PlotData,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    match chart {
        Chart::PinLatency => draw_pin_latency(&root, d)?,
        Chart::Percentiles => draw_percentiles(&root, d)?,
        Chart::OutcomeMatrix => draw_outcome_matrix(&root, d)?,
        Chart::Violations => draw_violations(&root, d)?,
        Chart::StormTimeline => draw_timeline(&root, d)?,
    }
    root.present().map_err(err)
}
