//! Rotary position embeddings, applied to q and k at their absolute positions before k is
//! cached, so the ring's slot order never changes results.
//!
//! Rotate-half convention (Llama / GPT-NeoX): element `i < d/2` pairs with `i + d/2`, rotated by
//! `pos · base^(−2i/d)`. Angles are computed in f64 so long positions keep their accuracy.

use crate::error::{DecodeError, Result};

/// RoPE parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Frequency base (10 000 in Llama 2, 500 000 in Llama 3).
    pub base: f64,
}

impl Default for Rope {
    fn default() -> Self {
        Self { base: 10_000.0 }
    }
}

impl Rope {
    pub(crate) fn check(&self, head_dim: usize) -> Result<()> {
        if !head_dim.is_multiple_of(2) {
            return Err(DecodeError::InvalidConfig(format!(
                "RoPE needs an even head_dim, got {head_dim}"
            )));
        }
        if !(self.base.is_finite() && self.base > 1.0) {
            return Err(DecodeError::InvalidConfig("RoPE base must be > 1".into()));
        }
        Ok(())
    }

    /// Rotates every `head_dim`-long head in `x` for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let half = head_dim / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let theta = pos as f64 * self.base.powf(-2.0 * i as f64 / head_dim as f64);
                let (sin, cos) = theta.sin_cos();
                let (a, b) = (head[i] as f64, head[i + half] as f64);
                head[i] = (a * cos - b * sin) as f32;
                head[i + half] = (a * sin + b * cos) as f32;
            }
        }
    }
}
