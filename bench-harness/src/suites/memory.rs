//! KV cache bytes per token and at each context length, per preset and dtype: the arithmetic
//! that limits context windows (`2 × layers × kv_heads × head_dim × dtype bytes` per token;
//! a sliding window caps the tokens held). Nothing is allocated.

use super::attn_fields;
use crate::config::RunConfig;
use crate::record::Record;

/// The memory records: one per shape and context length.
pub fn run(cfg: &RunConfig) -> Vec<Record> {
    let mut out = Vec::new();
    for s in &cfg.memory {
        for &c in &cfg.memory_contexts {
            let mut r = Record {
                seq_len: Some(c),
                kv_bytes_per_token: Some(s.kv_bytes_per_token()),
                kv_bytes_total: Some(s.kv_bytes(c)),
                bytes: Some(s.kv_bytes(c)),
                ..Record::new("memory", "arithmetic")
            };
            attn_fields(&mut r, s);
            out.push(r);
        }
    }
    out
}
