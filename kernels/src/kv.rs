//! Streaming primitives for attention over a block of cached keys and values, in f32 or bf16
//! storage: `scores = scale · K·q` and `acc += Σ_i w_i·v_i`. Both read each row once, in
//! memory order, and always compute in f32 (bf16 widens exactly to f32).

use crate::arch::{Simd, prefetch, with_simd};
use crate::error::{KernelError, Result, check_dim, check_len};
use crate::exec::Exec;
use crate::softmax::OnlineSoftmax;

/// A bfloat16 value: the upper 16 bits of an f32 (8-bit exponent, 7-bit mantissa).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Rounds to nearest, ties to even; NaN stays NaN, ±∞ and ±0 are exact.
    pub fn from_f32(x: f32) -> Self {
        let bits = x.to_bits();
        if x.is_nan() {
            return Bf16(((bits >> 16) | 0x0040) as u16);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(round) >> 16) as u16)
    }
    /// The exact f32 value.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// Element type of stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 4 bytes per element.
    F32,
    /// 2 bytes per element; half the bytes read per decode step.
    Bf16,
}

impl KvDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
        }
    }
    /// Lower-case name (`"f32"`, `"bf16"`).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(KvDtype::F32),
            "bf16" => Ok(KvDtype::Bf16),
            other => Err(format!("unknown KV dtype `{other}` (expected f32 or bf16)")),
        }
    }
}

/// Row-major rows of stored keys or values, in either storage type.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// bf16 storage.
    Bf16(&'a [Bf16]),
}

impl KvRows<'_> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(x) => x.len(),
            KvRows::Bf16(x) => x.len(),
        }
    }
    /// True when no elements are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How one storage type is loaded as f32 vectors.
pub(crate) trait Elem: Copy {
    /// # Safety
    /// `p .. p + LANES` readable.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::V;
    /// # Safety
    /// `p .. p + n` readable, `n < LANES`.
    unsafe fn load_partial<S: Simd>(s: S, p: *const Self, n: usize) -> S::V;
    /// Whether [`load_vecs`](Self::load_vecs) has a cheaper permuted form.
    const PAIRS: bool = false;
    /// `N` consecutive vectors from `p`. With `PERM` (only when [`PAIRS`](Self::PAIRS), `N`
    /// even), vectors `2j` and `2j+1` hold the even- and odd-indexed elements of the
    /// `2·LANES`-element chunk `j` instead: see [`permute_pairs`].
    ///
    /// # Safety
    /// `p .. p + N·LANES` readable.
    #[inline(always)]
    unsafe fn load_vecs<S: Simd, const N: usize, const PERM: bool>(
        s: S,
        p: *const Self,
    ) -> [S::V; N] {
        // SAFETY: vector v reads `p + v·LANES .. + LANES`, inside what the caller vouched for.
        std::array::from_fn(|v| unsafe { Self::load(s, p.add(v * S::LANES)) })
    }
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::V {
        // SAFETY: forwarded from the caller.
        unsafe { s.load(p) }
    }
    #[inline(always)]
    unsafe fn load_partial<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
        // SAFETY: forwarded from the caller.
        unsafe { s.load_partial(p, n) }
    }
}

impl Elem for Bf16 {
    const PAIRS: bool = true;
    #[inline(always)]
    unsafe fn load_vecs<S: Simd, const N: usize, const PERM: bool>(
        s: S,
        p: *const Bf16,
    ) -> [S::V; N] {
        if !PERM {
            // SAFETY: vector v reads `p + v·LANES .. + LANES`, inside what the caller vouched for.
            return std::array::from_fn(|v| unsafe { Self::load(s, p.add(v * S::LANES)) });
        }
        let mut out = [s.zero(); N];
        for j in 0..N / 2 {
            // SAFETY: chunk j reads `p + 2j·LANES .. + 2·LANES`, inside the N·LANES vouched for.
            let (even, odd) = unsafe { s.load_bf16_pairs(p.add(2 * j * S::LANES) as *const u16) };
            out[2 * j] = even;
            out[2 * j + 1] = odd;
        }
        out
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const Bf16) -> S::V {
        // SAFETY: forwarded from the caller; `Bf16` is `repr(transparent)` over u16.
        unsafe { s.load_bf16(p as *const u16) }
    }
    #[inline(always)]
    unsafe fn load_partial<S: Simd>(s: S, p: *const Bf16, n: usize) -> S::V {
        let mut buf = [0u16; 64];
        // SAFETY: `n < LANES ≤ 64` readable elements at `p`; the padding is +0.
        unsafe {
            std::ptr::copy_nonoverlapping(p as *const u16, buf.as_mut_ptr(), n);
            s.load_bf16(buf.as_ptr())
        }
    }
}

/// `scores[i] = scale · (q · rows[i])` for the `scores.len()` rows of `d = q.len()` elements.
pub fn dot_rows(
    exec: &Exec,
    q: &[f32],
    rows: KvRows<'_>,
    scale: f32,
    scores: &mut [f32],
) -> Result<()> {
    let d = q.len();
    let needed = scores
        .len()
        .checked_mul(d)
        .ok_or(KernelError::SizeOverflow)?;
    check_dim("rows length vs scores.len() * q.len()", needed, rows.len())?;
    with_simd!(exec.isa(), |s| s.vectorize(
        #[inline(always)]
        || match rows {
            KvRows::F32(r) => dot_rows_impl(s, q, r, scale, scores),
            KvRows::Bf16(r) => dot_rows_impl(s, q, r, scale, scores),
        }
    ));
    Ok(())
}

/// `acc += Σ_i weights[i] · rows[i]` over the `weights.len()` rows of `d = acc.len()` elements.
pub fn accumulate_rows(
    exec: &Exec,
    weights: &[f32],
    rows: KvRows<'_>,
    acc: &mut [f32],
) -> Result<()> {
    let d = acc.len();
    let needed = weights
        .len()
        .checked_mul(d)
        .ok_or(KernelError::SizeOverflow)?;
    check_dim(
        "rows length vs weights.len() * acc.len()",
        needed,
        rows.len(),
    )?;
    with_simd!(exec.isa(), |s| s.vectorize(
        #[inline(always)]
        || match rows {
            KvRows::F32(r) => accumulate_rows_impl(s, weights, r, acc),
            KvRows::Bf16(r) => accumulate_rows_impl(s, weights, r, acc),
        }
    ));
    Ok(())
}

/// The most rows [`attend_block_rows`] ever returns: `g × MAX_ATTEND_BLOCK_ROWS` floats of
/// score scratch serve every head size and storage type.
pub const MAX_ATTEND_BLOCK_ROWS: usize = 512;

/// Floats of scratch [`attend_partial`] needs for `g` heads of `head_dim`: a score block per
/// head, and room to hold q and the accumulators in the bf16 fast path's element order.
pub fn attend_scratch_len(g: usize, head_dim: usize) -> usize {
    g * (MAX_ATTEND_BLOCK_ROWS + 2 * head_dim)
}

/// Rows of keys (and of values) per block of [`attend_partial`]: each key and value row is
/// loaded once for all heads of the group, so blocks need not stay in L1; 32 KiB of K per
/// block keeps the per-block softmax bookkeeping small against the streaming.
pub fn attend_block_rows(head_dim: usize, dtype: KvDtype) -> usize {
    (32 * 1024 / (head_dim.max(1) * dtype.bytes())).clamp(8, MAX_ATTEND_BLOCK_ROWS)
}

/// The flash-decoding inner loop for a group of `g` query heads that share one KV head:
/// streams `n` keys and values block by block ([`attend_block_rows`] rows each), and for every
/// head folds `scale · K·q_h` into its running softmax state `states[h]` and
/// `Σ weight · v` into its unnormalised accumulator `acc[h·d ..]`. Keys and values are read
/// from memory once for the whole group. `q`: `g × d`; `keys`, `values`: `n × d`; `scores`:
/// scratch of at least [`attend_scratch_len`]`(g, d)` floats. Call again with more rows to continue; the result
/// is `acc[h] · states[h].inverse_sum()`.
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
    if T::PAIRS && d.is_multiple_of(4 * S::LANES) && d / S::LANES <= 8 {
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
        dot_rows_group::<S, T, PERM>(s, q, kb, d, rows, block, scale, scores);
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

/// How far ahead of use the streaming loops prefetch: enough lines in flight to cover DRAM
/// latency while the group's heads compute on the current row. The hardware prefetchers alone
/// left one core at ~60% of its read bandwidth on GQA decode; distances of 2–16 KiB measured
/// alike, and the hint never faults past the end of the cache.
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the `bytes` bytes at `p`, one hint per cache line.
#[inline(always)]
fn prefetch_row(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        prefetch(p.wrapping_add(off));
    }
}

/// `acc[h] += Σ_r weights[h·block + r] · vb[r]` for every head `h` of the group. With heads
/// of whole 4-vector chunks, up to four heads share each loaded (and widened) value row, their
/// 4×4 accumulators in registers; other shapes take the per-head path.
#[inline(always)]
fn accumulate_group<S: Simd, T: Elem, const PERM: bool>(
    s: S,
    weights: &[f32],
    vb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    acc: &mut [f32],
) {
    const W: usize = 4;
    let g = acc.len() / d;
    if !d.is_multiple_of(W * S::LANES) {
        for h in 0..g {
            let w = &weights[h * block..h * block + rows];
            accumulate_rows_impl(s, w, vb, &mut acc[h * d..(h + 1) * d]);
        }
        return;
    }
    debug_assert!(vb.len() >= rows * d && weights.len() >= g * block);
    let mut h0 = 0;
    while h0 < g {
        let heads = (g - h0).min(4);
        for c0 in (0..d).step_by(W * S::LANES) {
            let (w, v, a) = (
                weights[h0 * block..].as_ptr(),
                vb[c0..].as_ptr(),
                acc[h0 * d + c0..].as_mut_ptr(),
            );
            // SAFETY: heads h0.. h0+heads ≤ g, columns c0 .. c0 + W·LANES ≤ d, rows ≤ block:
            // all inside `weights`, `vb` and `acc`.
            unsafe {
                match heads {
                    4 => accumulate_chunk_heads::<S, T, 4, W, PERM>(s, w, block, v, d, rows, a),
                    3 => accumulate_chunk_heads::<S, T, 3, W, PERM>(s, w, block, v, d, rows, a),
                    2 => accumulate_chunk_heads::<S, T, 2, W, PERM>(s, w, block, v, d, rows, a),
                    _ => accumulate_chunk_heads::<S, T, 1, W, PERM>(s, w, block, v, d, rows, a),
                }
            }
        }
        h0 += heads;
    }
}

/// `G` heads × `W` vectors of accumulators in registers; each value row chunk is loaded once.
///
/// # Safety
/// `weights` holds `G·block` floats (`rows ≤ block`), `vb` points at `rows` rows of stride `d`
/// with `W·LANES` readable elements each, `acc` at `G` rows of stride `d` with `W·LANES`
/// writable floats each.
#[inline(always)]
unsafe fn accumulate_chunk_heads<
    S: Simd,
    T: Elem,
    const G: usize,
    const W: usize,
    const PERM: bool,
>(
    s: S,
    weights: *const f32,
    block: usize,
    vb: *const T,
    d: usize,
    rows: usize,
    acc: *mut f32,
) {
    let lanes = S::LANES;
    // SAFETY: every offset below is inside the ranges the caller vouched for.
    unsafe {
        let mut a: [[S::V; W]; G] =
            std::array::from_fn(|h| std::array::from_fn(|w| s.load(acc.add(h * d + w * lanes))));
        let chunk_bytes = W * lanes * std::mem::size_of::<T>();
        for r in 0..rows {
            let row = vb.add(r * d);
            prefetch_row((row as *const u8).wrapping_add(PREFETCH_BYTES), chunk_bytes);
            let v: [S::V; W] = T::load_vecs::<S, W, PERM>(s, row);
            for (h, ah) in a.iter_mut().enumerate() {
                let wt = s.splat(*weights.add(h * block + r));
                for (x, vw) in ah.iter_mut().zip(&v) {
                    *x = s.fmadd(wt, *vw, *x);
                }
            }
        }
        for (h, ah) in a.iter().enumerate() {
            for (w, x) in ah.iter().enumerate() {
                s.store(acc.add(h * d + w * lanes), *x);
            }
        }
    }
}

/// `scores[h·block + r] = scale · (q_h · kb[r])` for every head `h` of the group and row `r`.
/// Each key row is loaded (and widened, for bf16) once into registers and reused by every
/// head, when the head fits in 8 vectors; other head sizes take the per-head path.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dot_rows_group<S: Simd, T: Elem, const PERM: bool>(
    s: S,
    q: &[f32],
    kb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let g = q.len() / d;
    macro_rules! fixed {
        ($v:literal) => {{
            // On 16-lane paths, whole groups of 16 (row, head) pairs go through the shared
            // transposed reduction; the remaining rows take the per-pair reduction.
            let mut done = 0;
            if S::HAS_TRANSPOSE_SUM16 && $v % 2 == 0 && matches!(g, 1 | 2 | 4) {
                let per = 16 / g;
                done = rows / per * per;
                // SAFETY: d = $v·LANES, `kb` holds rows·d elements, `q` g·d, `scores` g·block.
                unsafe {
                    match g {
                        1 => dot_rows_transposed::<S, T, $v, PERM, 1>(
                            s, q, kb, done, block, scale, scores,
                        ),
                        2 => dot_rows_transposed::<S, T, $v, PERM, 2>(
                            s, q, kb, done, block, scale, scores,
                        ),
                        _ => dot_rows_transposed::<S, T, $v, PERM, 4>(
                            s, q, kb, done, block, scale, scores,
                        ),
                    }
                }
            }
            let d = $v * S::LANES;
            // SAFETY: rows done.. of `kb` (rows·d elements); scores from offset `done` keep the
            // per-head stride `block`, and g·block − done ≥ (g−1)·block + rows − done.
            unsafe {
                dot_rows_group_fixed::<S, T, $v, PERM>(
                    s,
                    q,
                    &kb[done * d..],
                    g,
                    rows - done,
                    block,
                    scale,
                    &mut scores[done..],
                )
            }
        }};
    }
    if d.is_multiple_of(S::LANES) {
        match d / S::LANES {
            8 => return fixed!(8),
            7 => return fixed!(7),
            6 => return fixed!(6),
            5 => return fixed!(5),
            4 => return fixed!(4),
            3 => return fixed!(3),
            2 => return fixed!(2),
            1 => return fixed!(1),
            _ => {}
        }
    }
    for h in 0..g {
        let sc = &mut scores[h * block..h * block + rows];
        dot_rows_impl(s, &q[h * d..(h + 1) * d], kb, scale, sc);
    }
}

/// [`dot_rows_group`] for `rows` (a multiple of 16/G) rows and `G` heads of exactly `V`
/// vectors, 16 (row, head) pairs at a time: their partial products accumulate lane-wise in 16
/// registers (two key vectors and 2·G query vectors live at once), and one
/// [`Simd::transpose_sum16`] turns them into 16 scores, head-major, so each head's run of
/// 16/G scores is stored with one (masked) vector store.
///
/// # Safety
/// `S::LANES == 16`, `V` even, `d = V·16`; `kb` holds `rows·d`, `q` holds `G·d` and `scores`
/// holds `G·block` elements, `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_transposed<
    S: Simd,
    T: Elem,
    const V: usize,
    const PERM: bool,
    const G: usize,
>(
    s: S,
    q: &[f32],
    kb: &[T],
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let lanes = S::LANES;
    let d = V * lanes;
    let per = 16 / G;
    debug_assert!(lanes == 16 && V.is_multiple_of(2) && rows.is_multiple_of(per));
    debug_assert!(
        kb.len() >= rows * d && q.len() >= G * d && scores.len() >= (G - 1) * block + rows
    );
    let vscale = s.splat(scale);
    let row_bytes = d * std::mem::size_of::<T>();
    let mut r0 = 0;
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        while r0 < rows {
            let mut acc = [s.zero(); 16];
            for v in (0..V).step_by(2) {
                let qv: [[S::V; 2]; G] = std::array::from_fn(|h| {
                    let qh = q.as_ptr().add(h * d + v * lanes);
                    [s.load(qh), s.load(qh.add(lanes))]
                });
                for r in 0..per {
                    let row = kb.as_ptr().add((r0 + r) * d);
                    if v == 0 {
                        prefetch_row((row as *const u8).wrapping_add(PREFETCH_BYTES), row_bytes);
                    }
                    let k = T::load_vecs::<S, 2, PERM>(s, row.add(v * lanes));
                    for (h, qh) in qv.iter().enumerate() {
                        let a = &mut acc[h * per + r];
                        *a = s.fmadd(qh[0], k[0], *a);
                        *a = s.fmadd(qh[1], k[1], *a);
                    }
                }
            }
            let sums = s.mul(s.transpose_sum16(&acc), vscale);
            let mut lanes_out = [0.0f32; 16];
            s.store(lanes_out.as_mut_ptr(), sums);
            for h in 0..G {
                scores[h * block + r0..h * block + r0 + per]
                    .copy_from_slice(&lanes_out[h * per..(h + 1) * per]);
            }
            r0 += per;
        }
    }
}

/// [`dot_rows_group`] for a head of exactly `V` vectors, the key row held in `V` registers.
///
/// # Safety
/// `d = V·LANES`; `kb` holds `rows·d`, `q` holds `g·d` and `scores` holds `g·block` elements,
/// `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_group_fixed<S: Simd, T: Elem, const V: usize, const PERM: bool>(
    s: S,
    q: &[f32],
    kb: &[T],
    g: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let lanes = S::LANES;
    let d = V * lanes;
    debug_assert!(kb.len() >= rows * d && q.len() >= g * d && scores.len() >= g * block);
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        let row_bytes = d * std::mem::size_of::<T>();
        for r in 0..rows {
            let row = kb.as_ptr().add(r * d);
            prefetch_row((row as *const u8).wrapping_add(PREFETCH_BYTES), row_bytes);
            let k: [S::V; V] = T::load_vecs::<S, V, PERM>(s, row);
            for h in 0..g {
                let qh = q.as_ptr().add(h * d);
                // Two chains per head; heads are independent, so their chains overlap.
                let mut even = s.mul(s.load(qh), k[0]);
                let mut odd = s.zero();
                for (v, kv) in k.iter().enumerate().skip(1) {
                    let qv = s.load(qh.add(v * lanes));
                    if v % 2 == 0 {
                        even = s.fmadd(qv, *kv, even);
                    } else {
                        odd = s.fmadd(qv, *kv, odd);
                    }
                }
                *scores.get_unchecked_mut(h * block + r) = scale * s.reduce_add(s.add(even, odd));
            }
        }
    }
}

/// `acc *= factor` (used to rescale an output accumulator when the running max grows).
pub fn scale_slice(exec: &Exec, acc: &mut [f32], factor: f32) {
    let (p, n) = (acc.as_mut_ptr(), acc.len());
    with_simd!(exec.isa(), |s| s.vectorize(
        #[inline(always)]
        // SAFETY: `p` spans the `n` floats of the borrowed `acc`.
        || unsafe { crate::softmax::scale_in_place(s, p, n, factor) }
    ));
}

/// Converts f32 to bf16 (round to nearest even), element by element.
pub fn to_bf16(src: &[f32], dst: &mut [Bf16]) -> Result<()> {
    check_len("bf16 destination", src.len(), dst.len())?;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = Bf16::from_f32(*s);
    }
    Ok(())
}

#[inline(always)]
fn dot_rows_impl<S: Simd, T: Elem>(s: S, q: &[f32], rows: &[T], scale: f32, scores: &mut [f32]) {
    debug_assert!(rows.len() >= scores.len() * q.len());
    // SAFETY: the `scores.len()` rows of `q.len()` elements, `q.len()` apart, lie in `rows`.
    unsafe {
        dot_strided_rows(
            s,
            q,
            rows.as_ptr(),
            q.len(),
            scores.len(),
            scale,
            scores.as_mut_ptr(),
        )
    }
}

/// `out[i] = scale · (q · row_i)` for `n` rows of `q.len()` contiguous elements starting at
/// `rows`, `stride` elements apart: four rows at a time, two accumulators each to cover the
/// FMA latency. Shared by the attention primitives and the column-contiguous GEMV.
///
/// # Safety
/// Rows `0..n` (each `q.len()` elements at `rows + i·stride`) are readable; `out` has `n`
/// writable floats.
#[inline(always)]
pub(crate) unsafe fn dot_strided_rows<S: Simd, T: Elem>(
    s: S,
    q: &[f32],
    rows: *const T,
    stride: usize,
    n: usize,
    scale: f32,
    out: *mut f32,
) {
    let (d, lanes) = (q.len(), S::LANES);
    let full = d / lanes * lanes;
    let tail = d - full;
    let mut i = 0;
    // SAFETY: row pointers index rows < n, offsets stay below d, `q` has d floats, `out` n.
    unsafe {
        while i < n {
            let count = 4.min(n - i);
            let r: [*const T; 4] =
                std::array::from_fn(|u| rows.add((i + u.min(count - 1)) * stride));
            let mut lo = [s.zero(); 4];
            let mut hi = [s.zero(); 4];
            let mut p = 0;
            while p + 2 * lanes <= full {
                let q0 = s.load(q.as_ptr().add(p));
                let q1 = s.load(q.as_ptr().add(p + lanes));
                for u in 0..4 {
                    lo[u] = s.fmadd(q0, T::load(s, r[u].add(p)), lo[u]);
                    hi[u] = s.fmadd(q1, T::load(s, r[u].add(p + lanes)), hi[u]);
                }
                p += 2 * lanes;
            }
            if p < full {
                let q0 = s.load(q.as_ptr().add(p));
                for u in 0..4 {
                    lo[u] = s.fmadd(q0, T::load(s, r[u].add(p)), lo[u]);
                }
            }
            if tail > 0 {
                let q0 = s.load_partial(q.as_ptr().add(full), tail);
                for u in 0..4 {
                    hi[u] = s.fmadd(q0, T::load_partial(s, r[u].add(full), tail), hi[u]);
                }
            }
            for u in 0..count {
                *out.add(i + u) = scale * s.reduce_add(s.add(lo[u], hi[u]));
            }
            i += count;
        }
    }
}

#[inline(always)]
fn accumulate_rows_impl<S: Simd, T: Elem>(s: S, weights: &[f32], rows: &[T], acc: &mut [f32]) {
    let (d, lanes) = (acc.len(), S::LANES);
    // The accumulator is processed in chunks of up to 8 vectors held in registers while every
    // row streams past (head_dim 128 is one chunk on AVX-512); each chunk width has its own
    // fully unrolled loop so the accumulators never leave registers.
    let mut c0 = 0;
    while c0 + lanes <= d {
        let vecs = ((d - c0) / lanes).min(8);
        // SAFETY: columns c0 .. c0 + vecs·lanes lie inside `acc` and inside every row.
        unsafe {
            match vecs {
                8 => accumulate_chunk::<S, T, 8>(s, weights, rows, d, c0, acc),
                7 => accumulate_chunk::<S, T, 7>(s, weights, rows, d, c0, acc),
                6 => accumulate_chunk::<S, T, 6>(s, weights, rows, d, c0, acc),
                5 => accumulate_chunk::<S, T, 5>(s, weights, rows, d, c0, acc),
                4 => accumulate_chunk::<S, T, 4>(s, weights, rows, d, c0, acc),
                3 => accumulate_chunk::<S, T, 3>(s, weights, rows, d, c0, acc),
                2 => accumulate_chunk::<S, T, 2>(s, weights, rows, d, c0, acc),
                _ => accumulate_chunk::<S, T, 1>(s, weights, rows, d, c0, acc),
            }
        }
        c0 += vecs * lanes;
    }
    let tail = d - c0;
    if tail > 0 {
        // SAFETY: `tail < lanes` columns from c0 lie inside `acc` and every row.
        unsafe {
            let a = acc.as_mut_ptr().add(c0);
            let mut t = s.load_partial(a, tail);
            for (i, w) in weights.iter().enumerate() {
                let row = rows.as_ptr().add(i * d + c0);
                t = s.fmadd(s.splat(*w), T::load_partial(s, row, tail), t);
            }
            s.store_partial(a, tail, t);
        }
    }
}

/// `acc[c0 .. c0 + V·LANES] += Σ_i weights[i] · rows[i][c0 ..]` with the V accumulators in
/// registers.
///
/// # Safety
/// `c0 + V·LANES ≤ d = acc.len()` and `rows` holds `weights.len() · d` elements.
#[inline(always)]
unsafe fn accumulate_chunk<S: Simd, T: Elem, const V: usize>(
    s: S,
    weights: &[f32],
    rows: &[T],
    d: usize,
    c0: usize,
    acc: &mut [f32],
) {
    let lanes = S::LANES;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let a = acc.as_mut_ptr().add(c0);
        let mut reg: [S::V; V] = std::array::from_fn(|v| s.load(a.add(v * lanes)));
        let mut row = rows.as_ptr().add(c0);
        for w in weights {
            let w = s.splat(*w);
            for (v, r) in reg.iter_mut().enumerate() {
                *r = s.fmadd(w, T::load(s, row.add(v * lanes)), *r);
            }
            row = row.wrapping_add(d);
        }
        for (v, r) in reg.iter().enumerate() {
            s.store(a.add(v * lanes), *r);
        }
    }
}
