//! Measures the roofs (FMA per ISA and thread count; read bandwidth per tier and thread count)
//! into [`Ctx::roofline`](crate::runner::Ctx).

use crate::config::RunConfig;
use crate::error::Result;
use crate::peak::{Tier, filled_array, measure_fma, measure_read};
use crate::record::Record;
use crate::runner::Ctx;

/// Thread counts the roofs are measured at: the sweep's, plus 1 and all cores.
pub fn thread_counts(cfg: &RunConfig) -> Vec<usize> {
    let mut t = cfg.threads.clone();
    t.push(1);
    t.push(crate::machine::cores());
    t.sort_unstable();
    t.dedup();
    t
}

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (thread_counts(cfg).len() * (cfg.isas.len() + 3)) as u64
}

/// The DRAM tier's array: the requested size, capped at a quarter of the available memory.
pub fn dram_bytes(cfg: &RunConfig) -> usize {
    let want = cfg.roof_sizes.dram;
    match crate::machine::mem_available() {
        // A quarter of free memory, but never forced below 1 MiB (nor raised above `want`).
        Some(avail) => want.min(((avail / 4) as usize).max(1 << 20)),
        None => want,
    }
}

/// The largest roof array (they are filled one at a time): checked against free memory
/// before anything runs.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    let max_t = *thread_counts(cfg).last().unwrap_or(&1);
    let largest = cfg
        .roof_sizes
        .l2
        .saturating_mul(max_t)
        .max(cfg.roof_sizes.llc)
        .max(dram_bytes(cfg));
    vec![("peak roof arrays".into(), largest as u64)]
}

/// Measures every roof and returns the peak records.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let threads = thread_counts(cfg);
    let max_t = *threads.last().unwrap_or(&1);
    for &isa in &cfg.isas {
        for &t in &threads {
            ctx.bar.set_message(format!("peak: fma {isa} {t}t"));
            let opts = cfg.measure;
            let p = measure_fma(ctx.pool(t)?, isa, &opts)?;
            ctx.roofline.fma.push(p);
            ctx.bar.inc(1);
        }
    }
    // Bandwidth with the widest ISA of the run (the dispatcher's pick by default).
    let isa = cfg
        .isas
        .iter()
        .copied()
        .max()
        .unwrap_or(kernels::Isa::Portable);
    let sizes = [
        (Tier::L2, cfg.roof_sizes.l2.saturating_mul(max_t)),
        (Tier::Llc, cfg.roof_sizes.llc),
        (Tier::Dram, dram_bytes(cfg)),
    ];
    for (tier, bytes) in sizes {
        ctx.bar.set_message(format!(
            "peak: filling {}",
            crate::machine::fmt_bytes(bytes as u64)
        ));
        let data = filled_array(ctx.pool(max_t)?, bytes / 4)?;
        for &t in &threads {
            // The L2 tier gives every thread its own L2-sized part.
            let part = match tier {
                Tier::L2 => &data[..(cfg.roof_sizes.l2 / 4) * t],
                _ => &data[..],
            };
            ctx.bar
                .set_message(format!("peak: read {} {t}t", tier.name()));
            let opts = cfg.measure;
            let p = measure_read(ctx.pool(t)?, isa, tier, part, &opts)?;
            ctx.roofline.bw.push(p);
            ctx.bar.inc(1);
        }
    }
    Ok(ctx.roofline.records())
}
