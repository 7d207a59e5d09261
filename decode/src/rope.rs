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
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(DecodeError::InvalidConfig(format!(
                "RoPE needs an even, nonzero head_dim, got {head_dim}"
            )));
        }
        if !(self.base.is_finite() && self.base > 1.0) {
            return Err(DecodeError::InvalidConfig("RoPE base must be > 1".into()));
        }
        Ok(())
    }

    /// Rotates every `head_dim`-long head in `x` for position `pos`. The angles depend only on
    /// the position and the pair index, so they are computed once per call and shared by every
    /// head. Errors (leaving `x` unchanged) for a zero or odd `head_dim`, a base ≤ 1, or an `x`
    /// that is not a whole number of heads.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) -> Result<()> {
        self.check(head_dim)?;
        if !x.len().is_multiple_of(head_dim) {
            return Err(DecodeError::ShapeMismatch {
                what: "RoPE input length vs a multiple of head_dim",
                expected: x.len().div_ceil(head_dim) * head_dim,
                got: x.len(),
            });
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head rotated at a position against the definition, pair by pair, in f64.
    #[test]
    fn rotates_pairs_by_position_angles() {
        let rope = Rope { base: 10_000.0 };
        let (d, pos) = (8, 37);
        let x: Vec<f32> = (0..2 * d).map(|i| i as f32 * 0.25 - 1.0).collect();
        let mut y = x.clone();
        rope.apply(&mut y, d, pos).unwrap();
        for head in 0..2 {
            for i in 0..d / 2 {
                let theta = pos as f64 * 10_000f64.powf(-2.0 * i as f64 / d as f64);
                let (a, b) = (x[head * d + i] as f64, x[head * d + i + d / 2] as f64);
                let want = [
                    a * theta.cos() - b * theta.sin(),
                    a * theta.sin() + b * theta.cos(),
                ];
                let got = [y[head * d + i], y[head * d + i + d / 2]];
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-6,
                        "head {head} pair {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Odd or zero head_dim, a bad base and a partial head are errors and leave x unchanged.
    #[test]
    fn bad_shapes_are_errors() {
        let x = vec![1.0f32; 12];
        for (rope, d) in [
            (Rope::default(), 3),
            (Rope::default(), 0),
            (Rope::default(), 8),
            (Rope { base: 1.0 }, 4),
        ] {
            let mut y = x.clone();
            assert!(
                rope.apply(&mut y, d, 5).is_err(),
                "base {} d {d}",
                rope.base
            );
            assert_eq!(y, x);
        }
    }
}
