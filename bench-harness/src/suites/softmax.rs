//! Row softmax with `kernels::softmax_rows` (in place) against a straightforward scalar
//! softmax (max, exp, sum, divide) on one thread. Rows are chosen so a call touches ~1 MiB,
//! which stays in one core's 2 MiB L2 between calls (the softmax target is for L2-resident rows).

use crate::config::RunConfig;
use crate::error::Result;
use crate::record::Record;
use crate::runner::{Ctx, MISMATCH_F64, exec_for, mismatch_note, random_vec};
use kernels::{SoftmaxOptions, softmax_rows};

/// Name of the baseline implementation.
pub const BASELINE: &str = "naive(1t)";

/// Bytes of data per call the row count aims at.
pub const TARGET_BYTES: usize = 1 << 20;

/// Rows per call for a row length.
pub fn rows_for(row_len: usize) -> usize {
    (TARGET_BYTES / 4 / row_len.max(1)).max(1)
}

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.row_lens.len() * (1 + cfg.isas.len() * cfg.threads.len())) as u64
}

/// Bytes allocated per row length (input, work buffer, reference).
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    cfg.row_lens
        .iter()
        .map(|&l| {
            (
                format!("softmax row_len {l}"),
                (rows_for(l) as u64)
                    .saturating_mul(l as u64)
                    .saturating_mul(3 * 4),
            )
        })
        .collect()
}

/// The straightforward softmax: per row, max, then exp and sum, then divide; scalar, one thread.
pub fn naive_softmax_rows(data: &mut [f32], row_len: usize) {
    for row in data.chunks_mut(row_len) {
        let mut max = f32::NEG_INFINITY;
        for &x in row.iter() {
            if x > max {
                max = x;
            }
        }
        let mut sum = 0.0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for x in row.iter_mut() {
            *x /= sum;
        }
    }
}

fn fill_rates(ctx: &Ctx, r: &mut Record, n_elems: usize, threads: usize) {
    let Some(median) = r.median_s else { return };
    let bytes = 4 * n_elems as u64;
    r.bytes = Some(bytes);
    r.elements_per_s = Some(n_elems as f64 / median);
    // One read and one write of every element is the compulsory traffic.
    let gbps = 2.0 * bytes as f64 / median / 1e9;
    r.gbps = Some(gbps);
    if let Some(roof) = ctx.roofline.bw_roof(bytes, threads) {
        r.pct_peak = roof.pct(gbps);
        r.roof = Some(roof.label);
    }
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for &len in &cfg.row_lens {
        let rows = rows_for(len);
        let input: Vec<f32> = random_vec(3, rows * len)?.iter().map(|x| 8.0 * x).collect();
        let mut work = input.clone();
        let template = Record {
            shape: Some(format!("{rows}×{len}")),
            row_len: Some(len),
            rows: Some(rows),
            baseline: Some(BASELINE.into()),
            ..Record::new("softmax", "kernels")
        };
        let base = ctx.time(1, &format!("softmax {len} {BASELINE}"), || {
            naive_softmax_rows(&mut work, len);
            Ok(())
        })?;
        // The check is against the f64 reference, not the naive f32 baseline.
        let reference: Vec<f32> = input
            .chunks(len)
            .flat_map(kernels::reference::softmax_f64)
            .map(|w| w as f32)
            .collect();
        let mut rec = Record {
            implementation: BASELINE.into(),
            isa: Some("scalar".into()),
            threads: Some(1),
            vs_baseline: Some(1.0),
            ..template.clone()
        }
        .with_stats(&base);
        fill_rates(ctx, &mut rec, rows * len, 1);
        out.push(rec);
        for &isa in &cfg.isas {
            let exec = exec_for(isa)?;
            for &t in &cfg.threads {
                let st = ctx.time(t, &format!("softmax {len} {isa} {t}t"), || {
                    softmax_rows(&exec, &mut work, len, SoftmaxOptions::default())?;
                    Ok(())
                })?;
                work.copy_from_slice(&input);
                softmax_rows(&exec, &mut work, len, SoftmaxOptions::default())?;
                let mut rec = Record {
                    isa: Some(isa.name().into()),
                    threads: Some(t),
                    vs_baseline: Some(base.median / st.median),
                    note: mismatch_note(MISMATCH_F64, &work, &reference, 1e-5),
                    ..template.clone()
                }
                .with_stats(&st);
                fill_rates(ctx, &mut rec, rows * len, t);
                out.push(rec);
            }
        }
    }
    Ok(out)
}
