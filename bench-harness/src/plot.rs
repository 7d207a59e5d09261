//! SVG plot of throughput against context length: one line per thread count × KV dtype (× shape
//! and ISA when several were swept), from the attention records — or, when the run has none,
//! from kv-vs-recompute (cached and recompute lines).

use crate::error::{HarnessError, Result};
use crate::record::Record;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn series(records: &[Record]) -> Option<(Series, &'static str)> {
    let pick = |suite: &str, keep: &dyn Fn(&Record) -> bool| -> Series {
        let recs: Vec<&Record> = records
            .iter()
            .filter(|r| r.suite == suite && keep(r))
            .collect();
        let distinct = |f: &dyn Fn(&Record) -> String| {
            let mut v: Vec<String> = recs.iter().map(|r| f(r)).collect();
            v.sort();
            v.dedup();
            v.len() > 1
        };
        let many_shapes = distinct(&|r| {
            format!(
                "{:?}{:?}{:?}{:?}{:?}",
                r.shape, r.heads, r.kv_heads, r.head_dim, r.layers
            )
        });
        let many_isas = distinct(&|r| format!("{:?}", r.isa));
        let mut out: Series = BTreeMap::new();
        for r in recs {
            let (Some(x), Some(y)) = (r.seq_len, r.tokens_per_s) else {
                continue;
            };
            let mut name = String::new();
            if many_shapes {
                name.push_str(&format!(
                    "{} h{}/kv{} ",
                    r.shape.as_deref().unwrap_or(""),
                    r.heads.unwrap_or(0),
                    r.kv_heads.unwrap_or(0)
                ));
            }
            if suite != "attention" {
                name.push_str(&format!("{} ", r.implementation));
            }
            name.push_str(&format!(
                "{} {}t",
                r.kv_dtype.as_deref().unwrap_or(""),
                r.threads.unwrap_or(0)
            ));
            if many_isas {
                name.push_str(&format!(" {}", r.isa.as_deref().unwrap_or("")));
            }
            out.entry(name).or_default().push((x as f64, y));
        }
        for pts in out.values_mut() {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    };
    let a = pick("attention", &|r| r.implementation == "kernels");
    if !a.is_empty() {
        return Some((a, "decode attention: tokens/s per step vs context length"));
    }
    let k = pick("kv-vs-recompute", &|_| true);
    if !k.is_empty() {
        return Some((k, "kv-vs-recompute: tokens/s vs context length"));
    }
    None
}

/// Writes the plot; `Ok(false)` when the records hold nothing to plot.
pub fn write_plot(path: &Path, records: &[Record]) -> Result<bool> {
    let Some((lines, title)) = series(records) else {
        return Ok(false);
    };
    let pts = lines.values().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let (x0, x1) = (x0 / 1.3, x1 * 1.3);
    let (y0, y1) = ((y0 / 1.5).max(1e-9), y1 * 1.5);
    let err =
        |e: &dyn std::fmt::Display| HarnessError::msg(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .caption(title, ("sans-serif", 22))
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale().base(2.0), (y0..y1).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("context length (tokens)")
        .y_desc("tokens/s")
        .x_label_formatter(&|x| format!("{:.0}", x))
        .y_label_formatter(&|y| crate::report::fmt_si(*y))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}
