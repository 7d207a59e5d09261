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

    /// Rotates every `head_dim`-long head in `x` for position `pos`. The angles depend only on
    /// the position and the pair index, so they are computed once per call and shared by every
    /// head. A zero or odd `head_dim` leaves `x` unchanged (layers reject it up front).
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return;
        }
        let half = head_dim / 2;
        // Up to 256 pairs on the stack (head_dim ≤ 512); larger heads fall back to the
        // per-element computation.
        const MAX_HALF: usize = 256;
        let mut cs = [(0.0f64, 0.0f64); MAX_HALF];
        let angle = |i: usize| {
            let theta = pos as f64 * self.base.powf(-2.0 * i as f64 / head_dim as f64);
            let (sin, cos) = theta.sin_cos();
            (cos, sin)
        };
        if half <= MAX_HALF {
            for (i, c) in cs.iter_mut().enumerate().take(half) {
                *c = angle(i);
            }
        }
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (cos, sin) = if half <= MAX_HALF { cs[i] } else { angle(i) };
                let (a, b) = (head[i] as f64, head[i + half] as f64);
                head[i] = (a * cos - b * sin) as f32;
                head[i + half] = (a * sin + b * cos) as f32;
            }
        }
    }
}
