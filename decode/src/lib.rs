//! Attention for LLM decode on CPU: single-head, multi-head and grouped-query attention over a
//! contiguous ring-buffer KV cache, built on the `kernels` crate.
//!
//! - [`KvCache`]: one allocation for every layer's keys and values, a fixed number of token
//!   slots (the attention window), optional sinks, f32 or bf16 storage, rollback.
//! - [`decode_attention`] / [`prefill_attention`]: one token, or a causal chunk, against the
//!   cache; [`AttentionLayer`] adds the projections, RoPE and the output projection.
//! - [`reference`](mod@reference): the f64 full-recompute oracle; [`bench`](mod@bench):
//!   workloads for the harness.
//!
//! ```
//! use decode::{AttentionLayer, CacheConfig, HeadConfig, KvCache, LayerConfig, LayerScratch,
//!              LayerWeights, Rope};
//! use kernels::{Exec, KvDtype};
//! let heads = HeadConfig { heads: 4, kv_heads: 2, head_dim: 8 }; // grouped-query, 2 per KV head
//! let cfg = LayerConfig { d_model: 16, heads, rope: Some(Rope::default()) };
//! let w = |n: usize| (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.05).collect::<Vec<f32>>();
//! let layer = AttentionLayer::new(cfg, LayerWeights {
//!     w_q: w(16 * 32), w_k: w(16 * 16), w_v: w(16 * 16), w_o: Some(w(32 * 16)),
//! })?;
//! let mut cache = KvCache::new(CacheConfig {
//!     layers: 1, kv_heads: 2, head_dim: 8, capacity: 64, sinks: 0, dtype: KvDtype::F32,
//! })?;
//! let exec = Exec::new();
//! let mut scratch = LayerScratch::new(&cfg, 1)?;
//! let prompt = w(5 * 16);                      // five tokens of width 16
//! let mut out = vec![0.0; 5 * 16];
//! layer.prefill(&exec, &mut cache, 0, &prompt, &mut out, &mut scratch)?;
//! let mut next = vec![0.0; 16];
//! layer.decode(&exec, &mut cache, 0, &w(16), &mut next, &mut scratch)?;
//! assert_eq!(cache.len(), 6);
//! # Ok::<(), decode::DecodeError>(())
//! ```
#![warn(missing_docs)]

mod attention;
pub mod bench;
mod cache;
mod error;
mod layer;
pub mod reference;
mod rope;
pub mod teaching;
pub use attention::{
    DecodeOptions, DecodeScratch, HeadConfig, MAX_SPLITS, MIN_SPLIT, PrefillScratch, choose_splits,
    decode_attention, prefill_attention, visible,
};
pub use cache::{CacheConfig, KvCache};
pub use error::{DecodeError, Result};
pub use kernels::{Exec, KvDtype};
pub use layer::{AttentionLayer, LayerConfig, LayerScratch, LayerWeights};
pub use rope::Rope;
