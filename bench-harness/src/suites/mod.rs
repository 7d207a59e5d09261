//! The suites. Each has `count` (measurements, for the progress bar), `estimates` (bytes each
//! configuration would allocate, checked before anything runs) and `run`.

pub mod attention;
pub mod kv_recompute;
pub mod matmul;
pub mod memory;
pub mod peak;
pub mod prefill;
pub mod softmax;

use crate::config::{AttnSpec, RunConfig, Suite};

/// Measurements `suite` will take with `cfg` (for the progress bar).
pub fn count(suite: Suite, cfg: &RunConfig) -> u64 {
    match suite {
        Suite::Peak => peak::count(cfg),
        Suite::Matmul => matmul::count(cfg),
        Suite::Softmax => softmax::count(cfg),
        Suite::Attention => attention::count(cfg),
        Suite::Prefill => prefill::count(cfg),
        Suite::KvVsRecompute => kv_recompute::count(cfg),
        Suite::Memory => 0,
    }
}

/// `(what, bytes)` of every configuration `suite` will allocate.
pub fn estimates(suite: Suite, cfg: &RunConfig) -> Vec<(String, u64)> {
    match suite {
        Suite::Peak | Suite::Memory => Vec::new(),
        Suite::Matmul => matmul::estimates(cfg),
        Suite::Softmax => softmax::estimates(cfg),
        Suite::Attention => attention::estimates(cfg),
        Suite::Prefill => prefill::estimates(cfg),
        Suite::KvVsRecompute => kv_recompute::estimates(cfg),
    }
}

/// Fills the attention-shape fields of a record.
pub fn attn_fields(r: &mut crate::record::Record, s: &AttnSpec) {
    let a = &s.shape;
    r.shape = Some(s.label.clone());
    r.heads = Some(a.heads);
    r.kv_heads = Some(a.kv_heads);
    r.head_dim = Some(a.head_dim);
    r.layers = Some(a.layers);
    r.kv_dtype = Some(a.dtype.name().into());
    r.window = a.window;
}

/// `a · b · c` in u64, saturating (estimates of absurd sizes must not wrap).
pub fn mul3(a: usize, b: usize, c: usize) -> u64 {
    (a as u64).saturating_mul(b as u64).saturating_mul(c as u64)
}
