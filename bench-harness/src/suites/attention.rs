//! One decode step (append one token's K/V and attend, on every layer) over a KV cache holding
//! `seq_len` tokens, with the decode crate's kernels on every ISA and thread count, against its
//! straightforward single-threaded step. Decode attention reads the whole cache once per step,
//! so it is compared with a plain sum over exactly the bytes it reads, timed in the same run on
//! the same threads.

use super::attn_fields;
use crate::config::{AttnSpec, RunConfig};
use crate::error::Result;
use crate::record::Record;
use crate::runner::{Ctx, PairedRoof, dec, exec_for};
use decode::bench::{DecodeBench, estimate_bytes};

/// Name of the baseline implementation.
pub const BASELINE: &str = "naive(1t)";

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.attention.len() * cfg.seq_lens.len() * (1 + cfg.isas.len() * cfg.threads.len())) as u64
}

/// Bytes a [`DecodeBench`] allocates, plus the f32 K/V it is filled from.
pub fn bench_bytes(s: &AttnSpec, seq_len: usize) -> u64 {
    let fill = s.cached_tokens(seq_len) as u64;
    let source = 2 * 4 * fill * (s.shape.kv_heads as u64) * (s.shape.head_dim as u64);
    (estimate_bytes(&s.shape, seq_len) as u64).saturating_add(source)
}

/// Bytes allocated per configuration.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for s in &cfg.attention {
        for &len in &cfg.seq_lens {
            v.push((
                format!("attention {} {} seq_len {len}", s.describe(), s.shape.dtype),
                bench_bytes(s, len),
            ));
        }
    }
    v
}

/// Useful FLOPs of one step: q·k and p·v over every cached token, all heads and layers.
pub fn step_flops(s: &AttnSpec, tokens: usize) -> f64 {
    let a = &s.shape;
    4.0 * a.layers as f64 * a.heads as f64 * tokens as f64 * a.head_dim as f64
}

fn fill_rates(
    ctx: &mut Ctx,
    r: &mut Record,
    s: &AttnSpec,
    kv_bytes: u64,
    threads: usize,
) -> Result<()> {
    let Some(median) = r.median_s else {
        return Ok(());
    };
    let tokens = (kv_bytes / s.kv_bytes_per_token().max(1)) as usize;
    r.tokens_per_s = Some(1.0 / median);
    r.gflops = Some(step_flops(s, tokens) / median / 1e9);
    let gbps = kv_bytes as f64 / median / 1e9;
    r.gbps = Some(gbps);
    r.bytes = Some(kv_bytes);
    // The roof is a plain sum over exactly the KV bytes a step reads, on the same threads.
    if let Some(roof) = ctx.same_bytes_roof(kv_bytes, threads, 1)? {
        r.pct_peak = roof.pct(gbps);
        r.roof = Some(roof.label);
    }
    Ok(())
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for s in &cfg.attention {
        for &len in &cfg.seq_lens {
            let name = format!("attention {} {} {len}", s.describe(), s.shape.dtype);
            ctx.bar.set_message(format!("{name}: filling the cache"));
            let mut bench = DecodeBench::new(s.shape, len).map_err(dec)?;
            let kv_bytes = bench.kv_bytes_per_step() as u64;
            let mut template = Record {
                seq_len: Some(len),
                baseline: Some(BASELINE.into()),
                ..Record::new("attention", "kernels")
            };
            attn_fields(&mut template, s);
            let base = ctx.time(1, &format!("{name} {BASELINE}"), || {
                bench.step_naive().map_err(dec)
            })?;
            let reference = bench.output().to_vec();
            let mut rec = Record {
                implementation: BASELINE.into(),
                isa: Some("scalar".into()),
                threads: Some(1),
                vs_baseline: Some(1.0),
                ..template.clone()
            }
            .with_stats(&base);
            fill_rates(ctx, &mut rec, s, kv_bytes, 1)?;
            out.push(rec);
            for &isa in &cfg.isas {
                let exec = exec_for(isa)?;
                for &t in &cfg.threads {
                    let pair = PairedRoof::SameBytes {
                        bytes: kv_bytes,
                        copies: 1,
                    };
                    let (st, paired) = ctx.time_paired(
                        t,
                        &format!("{name} {isa} {t}t"),
                        || bench.step(&exec).map_err(dec),
                        Some(pair),
                    )?;
                    let mut rec = Record {
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        vs_baseline: Some(base.median / st.median),
                        note: crate::runner::mismatch_note(
                            crate::runner::MISMATCH_BASELINE,
                            bench.output(),
                            &reference,
                            1e-3,
                        ),
                        pct_peak_paired: paired,
                        ..template.clone()
                    }
                    .with_stats(&st);
                    fill_rates(ctx, &mut rec, s, kv_bytes, t)?;
                    out.push(rec);
                }
            }
        }
    }
    Ok(out)
}
