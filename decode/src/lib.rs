//! Attention for LLM decode on CPU: single-head, multi-head and grouped-query attention over a
//! contiguous ring-buffer KV cache, built on the `kernels` crate.
#![warn(missing_docs)]

mod attention;
pub mod bench;
mod cache;
mod error;
mod layer;
pub mod reference;
mod rope;
pub use attention::{
    DecodeOptions, DecodeScratch, HeadConfig, MIN_SPLIT, PrefillScratch, choose_splits,
    decode_attention, prefill_attention, visible,
};
pub use cache::{CacheConfig, KvCache};
pub use error::{DecodeError, Result};
pub use kernels::{Exec, KvDtype};
pub use layer::{AttentionLayer, LayerConfig, LayerScratch, LayerWeights};
pub use rope::Rope;
