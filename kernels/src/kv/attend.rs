//! The fused flash-decoding loop for a group of query heads sharing one KV head.

use super::scores::dot_rows_group;
use super::types::{Elem, KvDtype, KvRows};
use super::values::accumulate_group;
use crate::arch::{Simd, with_simd};
use crate::error::{KernelError, Result, check_dim, check_len};
use crate::exec::Exec;
use crate::softmax::OnlineSoftmax;

/// The most rows [`attend_block_rows`] ever returns: `g × MAX_ATTEND_BLOCK_ROWS` floats of
/// score scratch serve every head size and storage type.
pub const MAX_ATTEND_BLOCK_ROWS: usize = 512;

/// Floats of scratch [`attend_partial`] needs for `g` heads of `head_dim`: a score block per
/// head, and room to hold q and the accumulators in the bf16 fast path's element order.
/// Saturates at `usize::MAX` (a size no buffer has) rather than wrapping.
pub fn attend_scratch_len(g: usize, head_dim: usize) -> usize {
    head_dim
        .saturating_mul(2)
        .saturating_add(MAX_ATTEND_BLOCK_ROWS)
        .saturating_mul(g)
}

/// Rows of keys (and of values) per block of [`attend_partial`]: each key and value row is
/// loaded once for all heads of the group, so blocks need not stay in L1; 64 KiB of K per
/// block keeps the per-block softmax bookkeeping small against the streaming (against 32 KiB:
/// 0.97× the time for a group of 4 heads over a 32 MiB cache, paired in-process; 1.0× for one
/// head; 128 KiB measured the same as 64).
pub fn attend_block_rows(head_dim: usize, dtype: KvDtype) -> usize {
    (64 * 1024 / head_dim.max(1).saturating_mul(dtype.bytes())).clamp(8, MAX_ATTEND_BLOCK_ROWS)
}

/// The flash-decoding inner loop for a group of `g` query heads that share one KV head:
/// streams `n` keys and values block by block ([`attend_block_rows`] rows each), and for every
/// head folds `scale · K·q_h` into its running softmax state `states[h]` and
/// `Σ weight · v` into its unnormalised accumulator `acc[h·d ..]`. Keys and values are read
/// from memory once for the whole group. `q`: `g × d`; `keys`, `values`: `n × d`; `scores`:
/// scratch of at least [`attend_scratch_len`]`(g, d)` floats. Call again with more rows to
/// continue; the result is `acc[h] · states[h].inverse_sum()`. Unlike softmax's options,
/// `scale` is not checked: it is arithmetic, so a NaN or infinite scale spreads NaN or ±∞
/// through the states as IEEE arithmetic does.
#[allow(clippy::too_many_arguments)]
pub fn attend_partial(
    exec: &Exec,
    q: &[f32],
    keys: KvRows<'_>,
    values: KvRows<'_>,
    scale: f32,
    states: &mut [OnlineSoftmax],
    acc: &mut [f32],
    scores: &mut [f32],
) -> Result<()> {
    let g = states.len();
    check_dim("acc length vs q length", q.len(), acc.len())?;
    if g == 0 || q.is_empty() || !q.len().is_multiple_of(g) {
        return Err(KernelError::ShapeMismatch {
            what: "q length vs a positive multiple of states.len() (heads)",
            expected: q.len().div_ceil(g.max(1)).max(1) * g.max(1),
            got: q.len(),
        });
    }
    let d = q.len() / g;
    check_dim("values length vs keys length", keys.len(), values.len())?;
    if !keys.len().is_multiple_of(d) {
        return Err(KernelError::ShapeMismatch {
            what: "keys length vs a multiple of the head dimension (q.len() / states.len())",
            expected: keys.len().div_ceil(d) * d,
            got: keys.len(),
        });
    }
    let dtype = match keys {
        KvRows::F32(_) => KvDtype::F32,
        KvRows::Bf16(_) => KvDtype::Bf16,
    };
    let block = attend_block_rows(d, dtype);
    check_len("scores scratch", attend_scratch_len(g, d), scores.len())?;
    let n = keys.len() / d;
    with_simd!(exec.isa(), |s| s.vectorize(
        #[inline(always)]
        || match (keys, values) {
            (KvRows::F32(k), KvRows::F32(v)) => {
                attend_impl(s, q, k, v, n, block, scale, states, acc, scores)
            }
            (KvRows::Bf16(k), KvRows::Bf16(v)) => {
                attend_impl(s, q, k, v, n, block, scale, states, acc, scores)
            }
            _ => Err(KernelError::InvalidArgument(
                "keys and values must have the same storage type",
            )),
        }
    ))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_impl<S: Simd, T: Elem>(
    s: S,
    q: &[f32],
    keys: &[T],
    values: &[T],
    n: usize,
    block: usize,
    scale: f32,
    states: &mut [OnlineSoftmax],
    acc: &mut [f32],
    scratch: &mut [f32],
) -> Result<()> {
    let g = states.len();
    let d = q.len() / g;
    let (scores, rest) = scratch.split_at_mut(g * MAX_ATTEND_BLOCK_ROWS);
    // bf16 rows of whole 4-vector chunks are widened in the cheaper even/odd order; q and the
    // accumulators are permuted to match once per call, and permuted back at the end.
    // (Every scores and values path these head sizes take reads in that order.)
    let vecs = d / S::LANES;
    if T::PAIRS
        && d.is_multiple_of(4 * S::LANES)
        && (vecs <= 8 || super::scores::chunked_applies(vecs))
    {
        let (qp, ap) = rest.split_at_mut(g * d);
        permute_pairs(q, &mut qp[..g * d], S::LANES, false);
        permute_pairs(acc, &mut ap[..g * d], S::LANES, false);
        attend_blocks::<S, T, true>(
            s,
            &qp[..g * d],
            keys,
            values,
            n,
            block,
            scale,
            states,
            &mut ap[..g * d],
            scores,
        );
        permute_pairs(&ap[..g * d], acc, S::LANES, true);
    } else {
        attend_blocks::<S, T, false>(s, q, keys, values, n, block, scale, states, acc, scores);
    }
    Ok(())
}

/// Reorders each `2·lanes`-element chunk of `src` into `dst` as its even-indexed elements then
/// its odd-indexed ones (the order of [`Simd::load_bf16_pairs`]), or back with `inverse`.
/// Lengths are multiples of `2·lanes`.
fn permute_pairs(src: &[f32], dst: &mut [f32], lanes: usize, inverse: bool) {
    for (sc, dc) in src
        .chunks_exact(2 * lanes)
        .zip(dst.chunks_exact_mut(2 * lanes))
    {
        for j in 0..lanes {
            for parity in 0..2 {
                let (natural, permuted) = (2 * j + parity, parity * lanes + j);
                if inverse {
                    dc[natural] = sc[permuted];
                } else {
                    dc[permuted] = sc[natural];
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_blocks<S: Simd, T: Elem, const PERM: bool>(
    s: S,
    q: &[f32],
    keys: &[T],
    values: &[T],
    n: usize,
    block: usize,
    scale: f32,
    states: &mut [OnlineSoftmax],
    acc: &mut [f32],
    scores: &mut [f32],
) {
    let d = q.len() / states.len();
    let mut b0 = 0;
    while b0 < n {
        let rows = block.min(n - b0);
        let (kb, vb) = (
            &keys[b0 * d..(b0 + rows) * d],
            &values[b0 * d..(b0 + rows) * d],
        );
        dot_rows_group::<S, T, PERM>(s, q, kb, vb, d, rows, block, scale, scores);
        for (h, state) in states.iter_mut().enumerate() {
            let factor = state.absorb_in(s, &mut scores[h * block..h * block + rows]);
            if factor != 1.0 {
                let a = &mut acc[h * d..(h + 1) * d];
                // SAFETY: `a` is a borrowed slice of `d` floats.
                unsafe { crate::softmax::scale_in_place(s, a.as_mut_ptr(), d, factor) };
            }
        }
        accumulate_group::<S, T, PERM>(s, scores, vb, d, rows, block, acc);
        b0 += rows;
    }
}
