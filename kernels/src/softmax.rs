//! Row-wise, numerically stable softmax, and its streaming (online) form.
//!
//! `softmax(scale·x)_i = exp(scale·(x_i − max)) / Σ_j exp(scale·(x_j − max))`, computed in three
//! passes over the row (max; exp and sum; multiply by 1/sum), the third done in the same loop as
//! the next row's first (so a row's max pass, its first touch of the data, overlaps the previous
//! row's scaling instead of waiting on memory alone). Rows of 8192 floats or more (after
//! masking) take two passes, the max folded into the exponentials' loop chunk by chunk (see
//! `softmax_long_row`). The sum is accumulated in f32 over blocks of 8 vectors and in f64
//! across blocks, so rows of any length sum to 1 within a few f32 ulps; rows shorter than 16
//! vectors (and 256 floats) are summed in f32 throughout (`exp_short_row`: within 7.2e-7
//! relative). Rows (or causally masked prefixes) of up to 1½ vectors (two on paths without
//! the 16-row batch) are done one per lane, a vector's width of rows at a time (`tiny_rows`:
//! within 3e-7). Defined results for every input:
//!
//! | row contains | result |
//! |---|---|
//! | only finite values and −∞ (not all −∞) | the softmax; −∞ entries are exactly 0 |
//! | all −∞ (a fully masked row), or length 0 | all zeros, never NaN |
//! | any NaN | all NaN (a NaN is never silently dropped) |
//! | +∞ (and no NaN) | the limit: the +∞ entries share the mass equally, others are 0 |
//! | huge finite logits (±1e30) | the softmax; no inf or NaN (the max is subtracted first) |
//!
//! A row of length 1 gives exactly 1.0 (unless it is −∞ or NaN).

use crate::arch::{Simd, prefetch, with_simd};
use crate::error::{KernelError, Result, check_dim};
use crate::exec::Exec;
use std::f32::consts::LOG2_E;

/// Which entries of each row take part; the others are written as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mask {
    /// Every entry.
    #[default]
    None,
    /// Row `i` keeps columns `j <= i + offset`: causal attention of the queries of a chunk that
    /// starts `offset` positions after the first key.
    Causal {
        /// Keys before the first query of the chunk.
        offset: usize,
    },
}

/// Options of [`softmax_rows`] and [`softmax_rows_into`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftmaxOptions {
    /// Multiplies the logits before the softmax (attention uses 1/√head_dim). Must be finite
    /// and positive.
    pub scale: f32,
    /// Which entries take part.
    pub mask: Mask,
}

impl Default for SoftmaxOptions {
    fn default() -> Self {
        Self {
            scale: 1.0,
            mask: Mask::None,
        }
    }
}

fn check_rows(len: usize, row_len: usize, opts: &SoftmaxOptions) -> Result<usize> {
    if !(opts.scale.is_finite() && opts.scale > 0.0) {
        return Err(KernelError::InvalidArgument(
            "softmax scale must be finite and positive",
        ));
    }
    if row_len == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(KernelError::InvalidArgument(
                "softmax row_len is 0 but data is not empty",
            ))
        };
    }
    if !len.is_multiple_of(row_len) {
        return Err(KernelError::ShapeMismatch {
            what: "softmax data length vs a multiple of row_len",
            expected: len.div_ceil(row_len) * row_len,
            got: len,
        });
    }
    Ok(len / row_len)
}

/// Softmax of each `row_len`-long row of `data`, in place.
pub fn softmax_rows(
    exec: &Exec,
    data: &mut [f32],
    row_len: usize,
    opts: SoftmaxOptions,
) -> Result<()> {
    let rows = check_rows(data.len(), row_len, &opts)?;
    let dst = data.as_mut_ptr();
    let ptr = RowPtrs { src: dst, dst };
    run_rows(exec, ptr, rows, row_len, opts);
    Ok(())
}

/// Softmax of each `row_len`-long row of `input`, written to `output` (same length).
pub fn softmax_rows_into(
    exec: &Exec,
    input: &[f32],
    output: &mut [f32],
    row_len: usize,
    opts: SoftmaxOptions,
) -> Result<()> {
    check_dim(
        "softmax output length vs input length",
        input.len(),
        output.len(),
    )?;
    let rows = check_rows(input.len(), row_len, &opts)?;
    let ptr = RowPtrs {
        src: input.as_ptr(),
        dst: output.as_mut_ptr(),
    };
    run_rows(exec, ptr, rows, row_len, opts);
    Ok(())
}

/// Source and destination of a batch of rows; they may be the same buffer (in place), since
/// every pass reads an element before writing it.
#[derive(Clone, Copy)]
struct RowPtrs {
    src: *const f32,
    dst: *mut f32,
}
// SAFETY: built from a `&[f32]`/`&mut [f32]` pair (or one `&mut [f32]`) borrowed for the whole
// call; tasks touch disjoint rows.
unsafe impl Send for RowPtrs {}
// SAFETY: as above.
unsafe impl Sync for RowPtrs {}

impl RowPtrs {
    fn row(self, i: usize, row_len: usize) -> RowPtrs {
        RowPtrs {
            src: self.src.wrapping_add(i * row_len),
            dst: self.dst.wrapping_add(i * row_len),
        }
    }
}

fn run_rows(exec: &Exec, ptr: RowPtrs, rows: usize, row_len: usize, opts: SoftmaxOptions) {
    // Rows are independent; give each task enough elements to amortise scheduling, and at
    // least two rows (when that leaves every thread a task) so that the pipeline below has a
    // next row to overlap with.
    let min_rows = if rows >= 2 * exec.threads() { 2 } else { 1 };
    let rows_per_task = (16384 / row_len.max(1)).max(min_rows).clamp(1, rows.max(1));
    let tasks = rows.div_ceil(rows_per_task);
    exec.for_each_index(tasks, |t| {
        with_simd!(exec.isa(), |s| s.vectorize(
            #[inline(always)]
            || {
                let end = ((t + 1) * rows_per_task).min(rows);
                if row_len <= tiny_limit(s) {
                    // SAFETY: rows t·rows_per_task .. end < rows belong to this task.
                    unsafe { tiny_rows(s, ptr, t * rows_per_task..end, row_len, opts) };
                    return;
                }
                // Rows are pipelined: a max pass also applies the previous row's 1/sum, so the
                // max pass's loads (the first touch of a row, from L2 or beyond) overlap work
                // instead of running alone, and no row's scaling needs a pass of its own.
                // Short rows have their max taken a row early (see [`LOOKAHEAD_BELOW`]).
                let mut pending = Pending::NONE;
                // The max of row i, taken during row i − 1.
                let mut ahead = None;
                // Rows before this were done by a batch (see [`short_rows_batch`]), whose
                // multiplications by 1/sum are left to the next batch or done here.
                let mut batched_to = 0;
                let mut batch_pending = [Pending::NONE; BATCH_ROWS];
                for i in t * rows_per_task..end {
                    if i < batched_to {
                        continue;
                    }
                    if batches_short_rows(s)
                        && row_len <= BATCH_MAX_LEN
                        && ahead.is_none()
                        && i + BATCH_ROWS <= end
                    {
                        // SAFETY: rows i..i + BATCH_ROWS < rows belong to this task; the
                        // pending row is an earlier one.
                        unsafe {
                            scale_in_place(s, pending.dst, pending.n, pending.factor);
                            pending = Pending::NONE;
                            short_rows_batch(s, ptr, i, row_len, opts, &mut batch_pending);
                        }
                        batched_to = i + BATCH_ROWS;
                        continue;
                    }
                    if i == batched_to {
                        // SAFETY: the previous batch's rows belong to this task.
                        unsafe { finish_batch(s, &mut batch_pending) };
                    }
                    let valid = valid_len(opts.mask, i, row_len);
                    let row = ptr.row(i, row_len);
                    let long = valid >= LONG_ROW_MIN;
                    let first = if long { chunk_len(valid) } else { valid };
                    // SAFETY: row `i < rows` spans `row_len` floats of both buffers, which the
                    // public functions checked; rows are owned by one task each, and the
                    // pending row is an earlier row of this task (disjoint from row i).
                    unsafe {
                        let max = match ahead.take() {
                            Some(max) => max,
                            None => {
                                let max = max_of_while_scaling(s, row.src, first, pending);
                                pending = Pending::NONE;
                                max
                            }
                        };
                        // Short rows: row i + 1's max is taken now (while row i − 1 is
                        // scaled, before row i's exponentials), so that no row's exponentials
                        // wait on its max's loads and reduction: see [`LOOKAHEAD_BELOW`].
                        let mut next_to_fetch = i + 1;
                        if valid < LOOKAHEAD_BELOW && i + 1 < end {
                            let next_valid = valid_len(opts.mask, i + 1, row_len);
                            if next_valid < LOOKAHEAD_BELOW {
                                let next = ptr.row(i + 1, row_len).src;
                                ahead = Some(max_of_while_scaling(s, next, next_valid, pending));
                                pending = Pending::NONE;
                                next_to_fetch = i + 2;
                            }
                        }
                        scale_in_place(s, pending.dst, pending.n, pending.factor);
                        pending = Pending::NONE;
                        if finish_without_weights(s, row, valid, row_len, opts.scale) {
                            continue;
                        }
                        if long {
                            softmax_long_row(s, row.src, row.dst, valid, opts.scale, max);
                            continue;
                        }
                        if !max.is_finite() {
                            softmax_row_special(row.src, row.dst, valid);
                            continue;
                        }
                        // A NaN anywhere turns the sum, and so every output, into NaN.
                        let next = NEXT_ROW_PREFETCH
                            .contains(&row_len)
                            .then(|| ptr.row(next_to_fetch, row_len).src);
                        if valid < short_row_limit(s) {
                            let sums = exp_short_row(s, row.src, row.dst, valid, opts.scale, max);
                            let sum = s.reduce_add_as_transposed(sums);
                            pending = Pending {
                                dst: row.dst,
                                n: valid,
                                factor: 1.0 / sum,
                            };
                            continue;
                        }
                        let sum = exp_row_sum(s, row.src, row.dst, valid, opts.scale, max, next);
                        pending = Pending {
                            dst: row.dst,
                            n: valid,
                            factor: (1.0 / sum) as f32,
                        };
                    }
                }
                // SAFETY: the last pending rows are rows of this task, `n` floats long.
                unsafe {
                    scale_in_place(s, pending.dst, pending.n, pending.factor);
                    finish_batch(s, &mut batch_pending);
                }
            }
        ))
    });
}

/// Vectors per row up to which rows go one per lane ([`tiny_rows`]).
const TINY_VECTORS: usize = 2;

/// The longest rows (and causal prefixes) [`tiny_rows`] takes on `s`'s path: two vectors,
/// except on paths that batch short rows, where the batch catches up from a vector and a
/// half. In-process against a limit of one vector (one thread, 1 MiB of in-place rows, calls
/// alternating, tails stored as [`tail_weights`] says): AVX-512 0.83× the time at 17 floats,
/// 0.79× at 20, 0.90× at 22, 0.94× at 24, then 0.98× at 26, 0.99× at 28 and 1.03× at 31
/// (left to the batch); AVX2 0.67× at 9, 0.57× at 13, 0.74× at 16; portable 0.55× at 12,
/// 0.89× at 16.
#[inline(always)]
fn tiny_limit<S: Simd>(s: S) -> usize {
    if batches_short_rows(s) {
        S::LANES + S::LANES / 2
    } else {
        TINY_VECTORS * S::LANES
    }
}

/// Softmax of rows of at most [`tiny_limit`] floats (two vectors), one row per lane: `LANES`
/// rows at a time are transposed (through a stack tile, a LANES × LANES block at a time) so
/// that each vector holds one column (element `j` of every row), and the max, the
/// exponentials, the sum and the scaling are lane-wise vector operations, with no horizontal
/// reduction at all. The one-row pipeline spends a vector per row, mostly masked off, and a
/// reduction per pass on such rows: ~40 ns per row of 1–8 floats on AVX-512, slower than a
/// scalar loop. In-process against it (one thread, 1 MiB of in-place rows, calls alternating;
/// `bench-harness softmax --row-lens 1,5,8,16` for absolute rates): 0.21× the time at 1
/// float, 0.22× at 3, 0.26× at 8, 0.34× at 15 and 0.82× at 16; beyond one vector see
/// [`tiny_limit`].
///
/// Every lane's arithmetic is independent of the others, so a row's result does not depend
/// on which rows share its group (or on the thread count). Its sum adds the columns into
/// four partial sums, then `(p₀ + p₁) + (p₂ + p₃)`: at most 5 roundings, within 3e-7. The
/// exponent is `(x − max)·scale·log₂e` (the FOLDED form, as for any max).
///
/// # Safety
/// Rows `rows` lie inside both buffers (`row_len ≤ 2·LANES`, LANES ≤ 16) and nothing else
/// accesses them during the call.
#[inline(always)]
unsafe fn tiny_rows<S: Simd>(
    s: S,
    ptr: RowPtrs,
    rows: std::ops::Range<usize>,
    row_len: usize,
    opts: SoftmaxOptions,
) {
    const MAX_LANES: usize = 16;
    const MAX_LEN: usize = TINY_VECTORS * MAX_LANES;
    let lanes = S::LANES;
    debug_assert!(row_len <= TINY_VECTORS * lanes && lanes <= MAX_LANES);
    let blocks = row_len.div_ceil(lanes);
    let (form, k, _) = exponent_form::<S>(opts.scale, 0.0, false);
    // The group's rows back to back, then −∞ past the last row: the transpose reads LANES
    // floats from every row start, `row_len` apart.
    let mut input = [f32::NEG_INFINITY; MAX_LANES * MAX_LEN + MAX_LEN];
    // Column j (element j of every row) at `j·LANES` (block b of LANES columns at b·LANES²),
    // then the transposed result, block by block.
    let mut cols = [0f32; MAX_LANES * MAX_LEN];
    let cols = cols.as_mut_ptr();
    let mut out = [0f32; MAX_LANES * MAX_LEN];
    let mut first = rows.start;
    while first < rows.end {
        let count = lanes.min(rows.end - first);
        let mut valid = [0usize; MAX_LANES];
        // SAFETY: rows first .. first + count lie inside the source buffer; `input` holds
        // MAX_LANES·MAX_LEN ≥ count·row_len floats. Block b's transpose reads `row_len·r +
        // b·LANES + c < row_len·LANES + blocks·LANES ≤ input.len()` floats of `input` and
        // writes LANES² floats of `cols` from b·LANES², inside its blocks·LANES² floats.
        unsafe {
            // Vector copies (a `copy_nonoverlapping` of a run-time length is a call). What
            // lies past the group's rows is stale or −∞: it reaches only lanes or columns
            // that are never written out.
            let (src, len) = (ptr.src.add(first * row_len), count * row_len);
            let mut i = 0;
            while i + lanes <= len {
                s.store(input.as_mut_ptr().add(i), s.load(src.add(i)));
                i += lanes;
            }
            if i < len {
                let tail = s.load_partial(src.add(i), len - i);
                s.store_partial(input.as_mut_ptr().add(i), len - i, tail);
            }
            for (r, v) in valid.iter_mut().enumerate().take(count) {
                *v = valid_len(opts.mask, first + r, row_len);
                input[r * row_len + *v..(r + 1) * row_len].fill(f32::NEG_INFINITY);
            }
            for b in 0..blocks {
                let (from, to) = (input.as_ptr().add(b * lanes), cols.add(b * lanes * lanes));
                s.transpose_block(from, row_len, to, lanes);
            }
        }
        let col = |j: usize| cols.wrapping_add(j * lanes);
        let mut max = s.splat(f32::NEG_INFINITY);
        for j in 0..row_len {
            // SAFETY: column j < row_len ≤ 2·LANES of `cols` (2·LANES² floats).
            max = s.max(max, unsafe { s.load(col(j)) });
        }
        // Rows whose max is not finite (all −∞, +∞, NaN) are done element by element below;
        // their lanes compute with a max of 0, harmlessly.
        let mut maxes = [0f32; MAX_LANES];
        // SAFETY: `maxes` holds LANES floats.
        unsafe { s.store(maxes.as_mut_ptr(), max) };
        let special = maxes.map(|m| !m.is_finite());
        let neg_max = maxes.map(|m| if m.is_finite() { -m } else { 0.0 });
        // SAFETY: `neg_max` holds LANES floats.
        let kv = [
            unsafe { s.load(neg_max.as_ptr()) },
            s.splat(k[1]),
            s.splat(k[2]),
        ];
        let mut part = [s.zero(); 4];
        for j in 0..row_len {
            // SAFETY: column j < row_len ≤ 2·LANES of `cols` (2·LANES² floats), read and then
            // overwritten.
            unsafe {
                let x = s.load(col(j));
                let e = s.exp2_nonpositive(match form {
                    SPLIT => exponent::<S, SPLIT>(s, x, kv),
                    _ => exponent::<S, FOLDED>(s, x, kv),
                });
                s.store(col(j), e);
                part[j % 4] = s.add(part[j % 4], e);
            }
        }
        let sum = s.add(s.add(part[0], part[1]), s.add(part[2], part[3]));
        let inv = s.div(s.splat(1.0), sum);
        for j in 0..row_len {
            // SAFETY: as above.
            unsafe {
                let w = s.mul(s.load(col(j)), inv);
                s.store(col(j), w);
            }
        }
        for b in 0..blocks {
            let at = b * lanes * lanes;
            // SAFETY: block b of `cols` and of `out` (LANES² floats from b·LANES², inside
            // both) do not overlap.
            unsafe { s.transpose_block(cols.add(at), lanes, out.as_mut_ptr().add(at), lanes) };
        }
        for r in 0..count {
            let dst = ptr.dst.wrapping_add((first + r) * row_len);
            let n = valid[r];
            // SAFETY: row first + r spans `row_len` writable floats; the source row was copied
            // to `input` (in place, `dst` is the source), and `n ≤ row_len`. Row r's weights
            // for columns b·LANES.. are at b·LANES² + r·LANES of `out`.
            unsafe {
                if special[r] {
                    softmax_row_special(input.as_ptr().add(r * row_len), dst, n);
                } else {
                    for b in 0..n.div_ceil(lanes) {
                        let w = s.load(out.as_ptr().add(b * lanes * lanes + r * lanes));
                        let (to, left) = (dst.add(b * lanes), n - b * lanes);
                        if left >= lanes {
                            s.store(to, w);
                        } else {
                            s.store_partial(to, left, w);
                        }
                    }
                }
                // (Computed as 2^−∞·(1/sum) = +0, the masked weights are NaN in a row with a
                // NaN.)
                if n < row_len {
                    std::ptr::write_bytes(dst.add(n), 0, row_len - n);
                }
            }
        }
        first += count;
    }
}

/// Zeroes a row's masked tail (floats `valid..row_len`) and does the whole row when it needs
/// no pass of weights: empty, or short enough for [`tiny_row`]. Whether the row is done.
///
/// # Safety
/// `row` spans `row_len` floats of both buffers, `valid ≤ row_len`, and nothing else accesses
/// them during the call.
#[inline(always)]
unsafe fn finish_without_weights<S: Simd>(
    s: S,
    row: RowPtrs,
    valid: usize,
    row_len: usize,
    scale: f32,
) -> bool {
    // SAFETY: as the caller vouches.
    unsafe {
        if valid < row_len {
            // (A call even for 0 bytes: 9% of a 64-float row's time.)
            std::ptr::write_bytes(row.dst.add(valid), 0, row_len - valid);
        }
        if valid == 0 {
            return true;
        }
        if valid <= tiny_limit(s) {
            tiny_row(s, row.src, row.dst, valid, scale);
            return true;
        }
    }
    false
}

/// Softmax of one row of `n ≤` [`tiny_limit`] floats with [`tiny_rows`]' arithmetic, so
/// that a short row gives the same bits whether it is a whole row, a causally masked prefix
/// of a longer one, or one of a group.
///
/// # Safety
/// `src .. src + n` readable, `dst .. dst + n` writable (they may be equal), nothing else
/// accessing them during the call.
#[inline(always)]
unsafe fn tiny_row<S: Simd>(s: S, src: *const f32, dst: *mut f32, n: usize, scale: f32) {
    let opts = SoftmaxOptions {
        scale,
        mask: Mask::None,
    };
    // SAFETY: one row of `n` floats, as the caller vouches.
    unsafe { tiny_rows(s, RowPtrs { src, dst }, 0..1, n, opts) };
}

/// Rows of a batch: one `transpose_sum16` reduces all their sums.
const BATCH_ROWS: usize = 16;
/// Longest rows taken in batches. In-process against the one-row pipeline (one thread, 1 MiB
/// of in-place rows, calls alternating, a busy day): 0.79× the time at 16 and 32 floats,
/// 0.82–0.87× at 64, 0.85× at 96, 0.85–0.88× at 112; 0.98× at 120, and 0.95–1.04× at 128,
/// 0.97–1.01× at 144–176, 1.03–1.07× at 200–255, where the one-row pipeline (each row's max
/// taken a row ahead) overlaps as much.
const BATCH_MAX_LEN: usize = 112;

/// Whether `s`'s path takes short rows [`BATCH_ROWS`] at a time ([`short_rows_batch`]).
#[inline(always)]
fn batches_short_rows<S: Simd>(_: S) -> bool {
    S::HAS_TRANSPOSE_SUM16 && S::LANES == BATCH_ROWS
}

/// Softmax of the [`BATCH_ROWS`] short rows from row `first`, on 16-lane paths: each row's
/// max and weights as [`run_rows`] takes them one row at a time, but their sums reduced
/// together by one shuffle network (`transpose_sum16`) instead of 16 horizontal reductions
/// (~11% of a 128-float row's time, more of shorter rows'). The single-row path reduces in
/// the same order ([`Simd::reduce_add_as_transposed`]), so every row gets the same bits
/// either way.
///
/// The multiplications by 1/sum are left in `pending` (row r's for the next batch's row r,
/// done in the loop that takes that row's max, as the one-row pipeline does); whatever is in
/// `pending` on entry is done that way here.
///
/// # Safety
/// Rows `first .. first + BATCH_ROWS` lie inside both buffers (`row_len` floats each, fewer
/// than [`short_row_limit`]), `pending` holds other rows of the same task, and nothing else
/// accesses any of them during the call.
#[inline(always)]
unsafe fn short_rows_batch<S: Simd>(
    s: S,
    ptr: RowPtrs,
    first: usize,
    row_len: usize,
    opts: SoftmaxOptions,
    pending: &mut [Pending; BATCH_ROWS],
) {
    debug_assert!(S::HAS_TRANSPOSE_SUM16 && S::LANES == BATCH_ROWS);
    let valid: [usize; BATCH_ROWS] =
        std::array::from_fn(|r| valid_len(opts.mask, first + r, row_len));
    let rows: [RowPtrs; BATCH_ROWS] = std::array::from_fn(|r| ptr.row(first + r, row_len));
    let mut max = [f32::NEG_INFINITY; BATCH_ROWS];
    for r in 0..BATCH_ROWS {
        // SAFETY: row first + r spans `valid[r]` ≤ row_len readable floats; the pending row
        // (the previous batch's row r, if any) is another row of the task.
        max[r] = unsafe { max_of_while_scaling(s, rows[r].src, valid[r], pending[r]) };
        pending[r] = Pending::NONE;
    }
    let mut sums = [s.zero(); BATCH_ROWS];
    let mut weighted = [false; BATCH_ROWS];
    for r in 0..BATCH_ROWS {
        let (row, n) = (rows[r], valid[r]);
        // SAFETY: as above; the row's floats past `n` are inside its `row_len`.
        unsafe {
            if finish_without_weights(s, row, n, row_len, opts.scale) {
                continue;
            }
            if !max[r].is_finite() {
                softmax_row_special(row.src, row.dst, n);
                continue;
            }
            sums[r] = exp_short_row(s, row.src, row.dst, n, opts.scale, max[r]);
        }
        weighted[r] = true;
    }
    let mut total = [0f32; BATCH_ROWS];
    // SAFETY: `total` holds LANES = BATCH_ROWS floats.
    unsafe { s.store(total.as_mut_ptr(), s.transpose_sum16(&sums)) };
    for r in 0..BATCH_ROWS {
        if weighted[r] {
            pending[r] = Pending {
                dst: rows[r].dst,
                n: valid[r],
                factor: 1.0 / total[r],
            };
        }
    }
}

/// Multiplies the rows a batch left pending by their factors.
///
/// # Safety
/// The pending rows must be readable and writable and accessed by nobody else.
#[inline(always)]
unsafe fn finish_batch<S: Simd>(s: S, pending: &mut [Pending; BATCH_ROWS]) {
    for p in pending.iter_mut() {
        // SAFETY: the caller's rows; an empty pending entry has n = 0.
        unsafe { scale_in_place(s, p.dst, p.n, p.factor) };
        *p = Pending::NONE;
    }
}

/// Rows shorter than this (after masking) have their max taken one row early: just before
/// the previous row's exponentials, in the loop that scales the row before that, instead of
/// just before their own exponentials. A short row's time is mostly one dependency chain
/// (loads, max, its reduction, exponentials, sum, reciprocal), and the exponentials waiting on
/// the max filled the scheduler, so two rows barely overlapped.
/// In-process against taking each max just in time (one thread, 1 MiB of in-place rows, calls
/// alternating, a temporary switch): 0.83–0.88× the time at 64–200 floats,
/// 0.94–0.98× at 255–768; at 1024 1.02× and at 4096 1.10×, where a row's max pass is too long
/// to overlap the exponentials of the row before.
const LOOKAHEAD_BELOW: usize = 1024;

/// Floats of row `i` that take part under `mask`.
#[inline(always)]
fn valid_len(mask: Mask, i: usize, row_len: usize) -> usize {
    match mask {
        Mask::None => row_len,
        Mask::Causal { offset } => i.saturating_add(offset).saturating_add(1).min(row_len),
    }
}

/// Rows at least this long (after masking) take [`softmax_long_row`]. In-process against the
/// three passes, on 1 MiB of in-place rows (one thread, calls alternating): 1.17× at 8192,
/// 1.10× at 16384, 1.03× at 32768, 1.00× at 65536; at 4096 (a row fits L1) 0.85×.
const LONG_ROW_MIN: usize = 8192;
/// The least floats per chunk of a long row: the chunk being exponentiated, the next being
/// read for its max and (out of place) the chunk's output fit L1 together. 1024 measured
/// 0.94–1.0× of 2048's speed beyond 16384 rows, 4096 and 512 slower everywhere. Rows longer
/// than [`MAX_CHUNKS`] such chunks (131072 floats) get longer chunks, which no longer fit L1
/// together (not measured beyond 65536).
const CHUNK: usize = 2048;
/// Most chunks a long row is cut into: their shifts and sums live on the stack.
const MAX_CHUNKS: usize = 64;

/// Floats per chunk of a long row of `n`: a multiple of 128 (whole blocks of eight vectors on
/// every path).
fn chunk_len(n: usize) -> usize {
    CHUNK.max(n.div_ceil(MAX_CHUNKS)).next_multiple_of(128)
}

/// Softmax of a row too long for L1, in two passes instead of three: chunk by chunk, the
/// weights are taken with the running max while the next chunk's max is read in the same loop
/// (its loads hide behind the exponentials' arithmetic and bring the chunk into L1 for its own
/// exponentiation), then one pass multiplies each chunk by `2^(its shift − the row's)/sum`.
/// A weight is rounded as often as in the three-pass form: by exp2, by the final multiply, and
/// through its factor (here `2^Δshift/sum`, there `1/sum`), rounded to f32 once.
///
/// # Safety
/// `src .. src + n` readable, `dst .. dst + n` writable (they may be equal); `first_max` is the
/// max of the first [`chunk_len`]`(n)` floats (NaN lanes may be ignored).
#[inline(always)]
unsafe fn softmax_long_row<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    first_max: f32,
) {
    let chunk = chunk_len(n);
    let chunks = n.div_ceil(chunk);
    let mut sums = [0f64; MAX_CHUNKS];
    let mut shifts = [0f64; MAX_CHUNKS];
    let mut max = first_max;
    for c in 0..chunks {
        let start = c * chunk;
        if max == f32::INFINITY || max.is_nan() {
            // SAFETY: chunks before `c` are written, the rest of `src` is untouched.
            unsafe { long_row_special(src, dst, n, start, sums[..c].iter().any(|v| v.is_nan())) };
            return;
        }
        let len = chunk.min(n - start);
        let next_n = chunk.min(n - start - len);
        // SAFETY: chunk `c` and the next lie inside the row; `next` is only read, and a
        // different chunk than the one written.
        let block = unsafe {
            let (src, dst, next) = (src.add(start), dst.add(start), src.add(start + len));
            if max == f32::NEG_INFINITY {
                // Only −∞ (and perhaps NaN) so far: a shift of 0 gives them weight 0 (or NaN).
                exp_block::<S, MAX>(s, src, dst, len, scale, 0.0, false, next, next_n)
            } else {
                exp_block::<S, MAX>(s, src, dst, len, scale, max, true, next, next_n)
            }
        };
        sums[c] = block.sum;
        shifts[c] = block.shift;
        max = max.max(block.next_max);
    }
    // The last chunk was taken with the row's max: bring every chunk to its shift.
    let common = shifts[chunks - 1];
    let total: f64 = (0..chunks)
        .filter(|&c| sums[c] != 0.0)
        .map(|c| sums[c] * (shifts[c] - common).exp2())
        .sum();
    // Backwards: the last chunks written are still in L1.
    for c in (0..chunks).rev() {
        let factor = if total.is_nan() {
            f32::NAN
        } else if sums[c] == 0.0 {
            0.0
        } else {
            ((shifts[c] - common).exp2() / total) as f32
        };
        let start = c * chunk;
        // SAFETY: chunk `c` of the row.
        unsafe { scale_in_place(s, dst.add(start), chunk.min(n - start), factor) };
    }
}

/// A long row in which a +∞ or NaN max turned up at float `done`: what is written before it
/// is finite weights (NaN where `done_nan`), `src` from `done` on is untouched. Finishes the
/// row per the table in the module docs.
///
/// # Safety
/// As for [`softmax_long_row`], with `done ≤ n`.
unsafe fn long_row_special(src: *const f32, dst: *mut f32, n: usize, done: usize, done_nan: bool) {
    // SAFETY: the caller's ranges; `src` is read from `done` on, before it is written.
    unsafe {
        let rest_nan = (done..n).any(|i| (*src.add(i)).is_nan());
        let head = if done_nan || rest_nan { f32::NAN } else { 0.0 };
        for i in 0..done {
            *dst.add(i) = head;
        }
        if head.is_nan() {
            for i in done..n {
                *dst.add(i) = f32::NAN;
            }
        } else {
            softmax_row_special(src.add(done), dst.add(done), n - done);
        }
    }
}

/// A row whose exponentials are written and that still needs multiplying by `factor` (1/sum).
#[derive(Clone, Copy)]
struct Pending {
    dst: *mut f32,
    n: usize,
    factor: f32,
}

impl Pending {
    const NONE: Self = Self {
        dst: std::ptr::null_mut(),
        n: 0,
        factor: 1.0,
    };
}

/// Loads `n < LANES` floats, padding with −∞ so that padded lanes never win a max.
///
/// # Safety
/// `p .. p + n` must be readable.
#[inline(always)]
unsafe fn load_padded<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: the caller guarantees `n < LANES` readable floats at `p`.
    unsafe { s.load_partial_or(p, n, s.splat(f32::NEG_INFINITY)) }
}

/// Maximum of `n` floats at `p` (−∞ when empty; NaN lanes may be ignored).
///
/// # Safety
/// `p .. p + n` must be readable.
#[inline(always)]
pub(crate) unsafe fn max_of<S: Simd>(s: S, p: *const f32, n: usize) -> f32 {
    // SAFETY: forwarded; nothing pending.
    unsafe { max_of_while_scaling(s, p, n, Pending::NONE) }
}

/// [`max_of`], while multiplying the pending row by its factor in the same loop (the row being
/// scaled is usually still in L1; the row whose max is taken streams in meanwhile).
///
/// # Safety
/// `p .. p + n` readable; `pending.dst .. + pending.n` readable and writable, disjoint from it.
#[inline(always)]
unsafe fn max_of_while_scaling<S: Simd>(s: S, p: *const f32, n: usize, pending: Pending) -> f32 {
    let lanes = S::LANES;
    let full = n / lanes * lanes;
    let both = full.min(pending.n / lanes * lanes) / (4 * lanes) * (4 * lanes);
    let factor = s.splat(pending.factor);
    let mut m = [s.splat(f32::NEG_INFINITY); 4];
    let mut i = 0;
    // SAFETY: every offset stays below `n` (reads of `p`) or `pending.n` (the pending row).
    unsafe {
        while i < both {
            for (u, mu) in m.iter_mut().enumerate() {
                *mu = s.max(*mu, s.load(p.add(i + u * lanes)));
                let q = pending.dst.add(i + u * lanes);
                s.store(q, s.mul(s.load(q), factor));
            }
            i += 4 * lanes;
        }
        scale_in_place(
            s,
            pending.dst.wrapping_add(i),
            pending.n - i,
            pending.factor,
        );
        while i + 4 * lanes <= full {
            for (u, mu) in m.iter_mut().enumerate() {
                *mu = s.max(*mu, s.load(p.add(i + u * lanes)));
            }
            i += 4 * lanes;
        }
        while i < full {
            m[0] = s.max(m[0], s.load(p.add(i)));
            i += lanes;
        }
        if full < n {
            m[1] = s.max(m[1], load_padded(s, p.add(full), n - full));
        }
    }
    s.reduce_max(s.max(s.max(m[0], m[1]), s.max(m[2], m[3])))
}

/// Writes `exp(scale·(src_i − max))` to `dst` and returns their sum (f64-accumulated). The
/// difference is taken before scaling: `src_i − max` is exactly 0 at the max, exact within a
/// factor 2 of it (Sterbenz) and never positive, whereas `scale·src_i − scale·max` would leave
/// the rounding error of `scale·max` (huge for logits near 1e30) in every exponent.
///
/// The exponential is `2^t` with `t = (src_i − max)·(scale·log₂e)`: `exp2` needs no Cody–Waite
/// reduction, so this costs about half of `exp`'s instructions. Each weight's relative error is
/// at most `2·|t|·2⁻²⁴` (the rounding of t and of the folded constant) plus exp2's 1 ulp; the
/// first term only matters for weights far below the max (at |t| = 24, a weight 2⁻²⁴ of the
/// largest, it allows 2.9e-6 relative).
///
/// # Safety
/// `src .. src + n` readable, `dst .. dst + n` writable (they may be equal).
#[inline(always)]
pub(crate) unsafe fn exp_shifted_sum<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    max: f32,
) -> f64 {
    // SAFETY: the caller's ranges are passed on unchanged; nothing read alongside.
    unsafe { exp_block::<S, NOTHING>(s, src, dst, n, scale, max, false, src, 0).sum }
}

/// Writes the unnormalised softmax weights of one whole row to `dst` and returns their sum: the
/// weights of [`exp_shifted_sum`] up to one common factor, which normalising cancels (see
/// [`exp_block`]). `next`: the next row, to prefetch meanwhile (see [`NEXT_ROW_PREFETCH`]).
///
/// # Safety
/// As for [`exp_shifted_sum`].
#[inline(always)]
unsafe fn exp_row_sum<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    max: f32,
    next: Option<*const f32>,
) -> f64 {
    // SAFETY: the caller's ranges are passed on unchanged; prefetches never fault.
    unsafe {
        match next {
            Some(next) => exp_block::<S, PREFETCH>(s, src, dst, n, scale, max, true, next, n),
            None => exp_block::<S, NOTHING>(s, src, dst, n, scale, max, true, src, 0),
        }
        .sum
    }
}

/// What [`exp_block`] returns.
struct ExpBlock {
    /// Sum of the weights written.
    sum: f64,
    /// The weights are `2^(log₂e·scale·src_i − shift)`, up to rounding: blocks exponentiated
    /// with different maxima are brought to a common one by `2^(shift − common shift)`.
    shift: f64,
    /// Max of the block read alongside (−∞ unless `ALONG = MAX`).
    next_max: f32,
}

/// Writes the weights `2^t`, `t = (src_i − max)·scale·log₂e`, of a block whose values are at
/// most `max` (finite), and returns their sum, the shift they were taken with, and whatever
/// `ALONG` asks of the `next_n` floats at `next`.
///
/// With `fused`, where the path has an FMA and the logits are moderate, the exponent is one
/// FMA, `t = src_i·c − hi` with `c = scale·log₂e` and `hi = max·c` rounded to f32, instead of a
/// subtraction and a multiplication: the product is exact inside the FMA, so t is rounded once
/// (the two-step form rounds twice). What `hi` leaves out of `max·c` (at most half an ulp of
/// it) scales the block's weights by one factor, which the returned shift accounts for and
/// normalising cancels; see [`FUSED_MAX_SHIFT`] for how large it may be. Callers that merge
/// states by their max, not by this shift, pass `fused = false`.
///
/// # Safety
/// As for [`exp_shifted_sum_with`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_block<S: Simd, const ALONG: Alongside>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    max: f32,
    fused: bool,
    next: *const f32,
    next_n: usize,
) -> ExpBlock {
    let (form, k, shift) = exponent_form::<S>(scale, max, fused);
    // SAFETY: the caller's ranges are passed on unchanged.
    let (sum, next_max) = unsafe {
        match form {
            FUSED => exp_shifted_sum_with::<S, FUSED, ALONG>(s, src, dst, n, k, next, next_n),
            FOLDED => exp_shifted_sum_with::<S, FOLDED, ALONG>(s, src, dst, n, k, next, next_n),
            _ => exp_shifted_sum_with::<S, SPLIT, ALONG>(s, src, dst, n, k, next, next_n),
        }
    };
    ExpBlock {
        sum,
        shift,
        next_max,
    }
}

/// How [`exp_block`] forms the exponent of a block whose values are at most `max` (finite):
/// the form, its constants, and the shift the weights are then taken with.
#[inline(always)]
fn exponent_form<S: Simd>(scale: f32, max: f32, fused: bool) -> (ExponentForm, [f32; 3], f64) {
    let c = (scale as f64 * std::f64::consts::LOG2_E) as f32;
    let hi = max * c;
    if fused && S::FUSED_MULTIPLY_ADD && c.is_finite() && hi.abs() < FUSED_MAX_SHIFT {
        (FUSED, [-hi, c, 0.0], hi as f64)
    } else if c.is_finite() {
        (FOLDED, [-max, c, 0.0], max as f64 * c as f64)
    } else {
        // scale·log₂e would overflow: multiply by the two in turn (a difference that then
        // overflows to −∞ has weight 0, as it should).
        (
            SPLIT,
            [-max, scale, LOG2_E],
            max as f64 * scale as f64 * std::f64::consts::LOG2_E,
        )
    }
}

/// Rows shorter than this (and than 256 floats) take [`exp_short_row`]: 16 vectors, so that
/// each lane of its two f32 partial sums adds at most 8 weights.
#[inline(always)]
fn short_row_limit<S: Simd>(_: S) -> usize {
    (16 * S::LANES).min(*NEXT_ROW_PREFETCH.start())
}

/// [`exp_row_sum`] for a row shorter than [`short_row_limit`], summed in f32 throughout: two
/// partial sums of at most 8 weights per lane, added lane by lane and returned for the caller
/// to reduce (one row with [`Simd::reduce_add_as_transposed`], 16 together with
/// `transpose_sum16`: the same bits either way). At most 12 roundings of partial
/// sums of positive terms, so the sum is within 12·2⁻²⁴ = 7.2e-7 relative (the rows still sum
/// to 1 within 1e-6, with the reciprocal's and the products' roundings), and the row's
/// reciprocal is one f32 division. The f64 widening, its horizontal reduction and an f64
/// division sat on each row's critical path, which is most of a short row's time: in-process
/// against the f64 form, 0.81–0.93× the time for rows of 16–200 floats (AVX-512).
///
/// # Safety
/// As for [`exp_shifted_sum`], with `n < short_row_limit(s)`.
#[inline(always)]
unsafe fn exp_short_row<S: Simd>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    scale: f32,
    max: f32,
) -> S::V {
    let (form, k, _) = exponent_form::<S>(scale, max, true);
    // SAFETY: the caller's ranges are passed on unchanged.
    unsafe {
        match form {
            FUSED => exp_short_row_with::<S, FUSED>(s, src, dst, n, k),
            FOLDED => exp_short_row_with::<S, FOLDED>(s, src, dst, n, k),
            _ => exp_short_row_with::<S, SPLIT>(s, src, dst, n, k),
        }
    }
}

/// [`exp_short_row`] with the exponent formed per `FORM`.
///
/// # Safety
/// As for [`exp_short_row`].
#[inline(always)]
unsafe fn exp_short_row_with<S: Simd, const FORM: ExponentForm>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    k: [f32; 3],
) -> S::V {
    let lanes = S::LANES;
    let full = n / lanes * lanes;
    let k = k.map(|c| s.splat(c));
    let mut part = [s.zero(), s.zero()];
    let mut i = 0;
    // SAFETY: every offset stays below `n`.
    unsafe {
        // Two vectors per step, one per partial sum: a dynamic index into `part` would keep
        // the sums in memory.
        while i + 2 * lanes <= full {
            for (u, p) in part.iter_mut().enumerate() {
                *p = s.add(*p, weights_at::<S, FORM>(s, src, dst, i + u * lanes, k));
            }
            i += 2 * lanes;
        }
        if i < full {
            part[0] = s.add(part[0], weights_at::<S, FORM>(s, src, dst, i, k));
        }
        if full < n {
            part[1] = s.add(part[1], tail_weights::<S, FORM>(s, src, dst, full, n, k));
        }
    }
    s.add(part[0], part[1])
}

/// Row lengths whose next row is prefetched into L1 during the exp pass, so that the next max
/// pass (its first touch) reads L1 instead of L2. Measured against no prefetch on 1 MiB of rows
/// (in-process, alternating calls): +4–5% at 256–1024, +10% at 4096; −1% at 128, −2% at 8192
/// (two rows no longer fit L1), ±0 beyond.
const NEXT_ROW_PREFETCH: std::ops::RangeInclusive<usize> = 256..=4096;

/// [`exp_block`] fuses the exponent while `|max·scale·log₂e| < 2¹³`. Below that, what the
/// rounding of `hi` drops is at most 2⁻¹², so the largest weight, 2 to that power, lies within
/// 1.7e-4 of 1; every f32 `y` that close to 1 has `y · fl(1/y)` exactly 1 (checked for all of
/// them; the nearest exception is 1.73e-4 away), so a row with one finite entry still gives
/// exactly 1.0 there. (A bound of 2¹⁶ gave 0.99999994 for the row [5682].)
const FUSED_MAX_SHIFT: f32 = 8192.0;

/// How [`exp_shifted_sum_with`] forms the exponent from `x` and its constants `k`.
type ExponentForm = u8;
/// `(x + k₀)·k₁` (k₀ = −max, k₁ = scale·log₂e).
const FOLDED: ExponentForm = 0;
/// `(x + k₀)·k₁·k₂` (k₀ = −max, k₁ = scale, k₂ = log₂e).
const SPLIT: ExponentForm = 1;
/// `x·k₁ + k₀`, fused (k₀ = −max·scale·log₂e rounded, k₁ = scale·log₂e).
const FUSED: ExponentForm = 2;

/// The exponent `t` of `x` per `FORM` (a fn, not a closure: a closure is compiled without the
/// ISA's features unless it is inlined, and a `let` closure cannot be marked `inline(always)`).
#[inline(always)]
fn exponent<S: Simd, const FORM: ExponentForm>(s: S, x: S::V, k: [S::V; 3]) -> S::V {
    match FORM {
        FUSED => s.fmadd(x, k[1], k[0]),
        SPLIT => s.mul(s.mul(s.add(x, k[0]), k[1]), k[2]),
        _ => s.mul(s.add(x, k[0]), k[1]),
    }
}

/// Writes the weights `2^t` of the vector at float `i` of `src` to `dst` and returns them.
///
/// # Safety
/// `src + i .. + LANES` readable, `dst + i .. + LANES` writable.
#[inline(always)]
unsafe fn weights_at<S: Simd, const FORM: ExponentForm>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    i: usize,
    k: [S::V; 3],
) -> S::V {
    // SAFETY: the caller's ranges.
    unsafe {
        let e = s.exp2_nonpositive(exponent::<S, FORM>(s, s.load(src.add(i)), k));
        s.store(dst.add(i), e);
        e
    }
}

/// [`weights_at`] for the `n − full < LANES` floats after `full`, the padding lanes' weights
/// +0. The padding is the tail's first value, not −∞: where 2^t is not a normal number a path
/// may take a slower scaling (AVX2 checks per vector, and a tail of −∞ lanes took the slow
/// path and a mispredicted branch on every row), so the padded lanes get an ordinary weight
/// that is then masked to +0. In-process, AVX2, against −∞ padding: 0.39× the time at 17
/// floats, 0.44× at 20 and 33, 0.62× at 100, 0.70× at 129, 0.93× at 1001 (AVX-512, whose
/// scaling has no slow path, unchanged).
///
/// Tails here and in [`scale_in_place`] are stored with plain stores
/// ([`Simd::store_prefix`]): the next row, stored right after this one in place, is loaded
/// soon after, and its first vector overlaps a masked store's masked-off lanes, which made
/// every load of it wait for the store to reach L1. In-process against masked stores
/// (AVX-512, one thread, 1 MiB of in-place rows): 0.74–0.80× the time at 33 floats,
/// 0.76–0.83× at 40, 0.88× at 65, 0.86–0.93× at 100, 0.89–0.97× at 200; rows of whole vectors
/// are unchanged. ([`tiny_rows`] keeps masked stores: there they measured faster.)
///
/// # Safety
/// `src + full .. src + n` readable, `dst + full .. dst + n` writable.
#[inline(always)]
unsafe fn tail_weights<S: Simd, const FORM: ExponentForm>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    full: usize,
    n: usize,
    k: [S::V; 3],
) -> S::V {
    // SAFETY: the caller's ranges.
    unsafe {
        let tail = n - full;
        let x = s.load_partial_or(src.add(full), tail, s.splat(*src.add(full)));
        let e = s.keep_first(s.exp2_nonpositive(exponent::<S, FORM>(s, x, k)), tail);
        s.store_prefix(dst.add(full), tail, e);
        e
    }
}

/// What [`exp_shifted_sum_with`] does with the `next` block while it exponentiates.
type Alongside = u8;
/// Nothing.
const NOTHING: Alongside = 0;
/// Asks it into L1, one hint per vector (a line each on 16-lane paths); prefetches never
/// fault, so `next` need not be readable.
const PREFETCH: Alongside = 1;
/// Takes its max. The loads are the block's first touch (from L2 or beyond); in the
/// exponentiation's loop they hide behind its arithmetic and leave the block in L1 for its own
/// exponentiation next.
const MAX: Alongside = 2;

/// Writes `2^t` to `dst` for every `src` element, `t` formed per `FORM`, and returns the sum
/// and, with `ALONG = MAX`, the max of the `next_n` floats at `next` (−∞ otherwise).
///
/// # Safety
/// As for [`exp_shifted_sum`]; with `ALONG = MAX`, `next .. next + next_n` readable and
/// disjoint from `dst`'s range.
#[inline(always)]
unsafe fn exp_shifted_sum_with<S: Simd, const FORM: ExponentForm, const ALONG: Alongside>(
    s: S,
    src: *const f32,
    dst: *mut f32,
    n: usize,
    k: [f32; 3],
    next: *const f32,
    next_n: usize,
) -> (f64, f32) {
    let lanes = S::LANES;
    let full = n / lanes * lanes;
    let k = k.map(|c| s.splat(c));
    let mut acc = [s.acc64_zero(), s.acc64_zero()];
    let mut next_max = [s.splat(f32::NEG_INFINITY); 2];
    // The floats up to `fused_end` (whole 8-vector blocks that `next` also has) are read from
    // `next` for its max in the same loop; the rest of `next` after it.
    let fused_end = if ALONG == MAX {
        full.min(next_n / lanes * lanes) / (8 * lanes) * (8 * lanes)
    } else {
        0
    };
    let mut i = 0;
    // SAFETY: every offset stays below `n` (and below `next_n` for `next`'s loads).
    unsafe {
        // Blocks of 8 vectors are summed in f32 (8 terms per lane, so at most 7 roundings of
        // values ≤ 1.0002: a relative error under 5e-7 on the block's sum) and only the block
        // sums are widened into f64, alternating between two accumulators: the widening then
        // costs an eighth of what it would per vector (summing the block in two f32 parts and
        // widening both measured 2% slower). Two loops, so that each compiles to one body.
        while i < fused_end {
            let mut part = [s.zero(), s.zero()];
            for u in 0..8 {
                let at = i + u * lanes;
                next_max[u % 2] = s.max(next_max[u % 2], s.load(next.add(at)));
                part[u % 2] = s.add(part[u % 2], weights_at::<S, FORM>(s, src, dst, at, k));
            }
            acc = [acc[1], s.acc64_add(acc[0], s.add(part[0], part[1]))];
            i += 8 * lanes;
        }
        while i + 8 * lanes <= full {
            let mut part = [s.zero(), s.zero()];
            if ALONG == PREFETCH {
                for u in 0..8 {
                    prefetch(next.wrapping_add(i + u * lanes));
                }
            }
            for u in 0..8 {
                let e = weights_at::<S, FORM>(s, src, dst, i + u * lanes, k);
                part[u % 2] = s.add(part[u % 2], e);
            }
            // Swapping (free: registers are renamed) rather than indexing by block parity,
            // which kept both accumulators on the stack.
            acc = [acc[1], s.acc64_add(acc[0], s.add(part[0], part[1]))];
            i += 8 * lanes;
        }
        // The last partial block (under 8 vectors, and the tail) is summed in f32 as a block
        // is, and widened once.
        let mut part = s.zero();
        while i < full {
            part = s.add(part, weights_at::<S, FORM>(s, src, dst, i, k));
            i += lanes;
        }
        if full < n {
            part = s.add(part, tail_weights::<S, FORM>(s, src, dst, full, n, k));
        }
        if !n.is_multiple_of(8 * lanes) {
            acc[1] = s.acc64_add(acc[1], part);
        }
    }
    let next_max = if ALONG == MAX {
        // SAFETY: the rest of `next`'s `next_n` floats.
        let rest = unsafe { max_of(s, next.add(fused_end), next_n - fused_end) };
        s.reduce_max(s.max(next_max[0], next_max[1])).max(rest)
    } else {
        f32::NEG_INFINITY
    };
    (s.acc64_reduce(acc[0]) + s.acc64_reduce(acc[1]), next_max)
}

/// `dst[i] *= factor` for `n` floats.
///
/// # Safety
/// `dst .. dst + n` must be readable and writable.
#[inline(always)]
pub(crate) unsafe fn scale_in_place<S: Simd>(s: S, dst: *mut f32, n: usize, factor: f32) {
    let lanes = S::LANES;
    let full = n / lanes * lanes;
    let f = s.splat(factor);
    // SAFETY: every offset stays below `n`.
    unsafe {
        for i in (0..full).step_by(lanes) {
            s.store(dst.add(i), s.mul(s.load(dst.add(i)), f));
        }
        if full < n {
            let v = s.mul(s.load_partial(dst.add(full), n - full), f);
            // (Plain stores: see `tail_weights`.)
            s.store_prefix(dst.add(full), n - full, v);
        }
    }
}

/// The rare rows whose max is ±∞ (or NaN-only): handled element by element, per the table in
/// the module docs.
///
/// # Safety
/// `src .. src + n` readable, `dst .. dst + n` writable (they may be equal).
unsafe fn softmax_row_special(src: *const f32, dst: *mut f32, n: usize) {
    // SAFETY: the caller guarantees the ranges; elements are read before being written.
    let at = |i: usize| unsafe { *src.add(i) };
    let has_nan = (0..n).any(|i| at(i).is_nan());
    let infs = (0..n).filter(|&i| at(i) == f32::INFINITY).count();
    for i in 0..n {
        let v = if has_nan {
            f32::NAN
        } else if infs > 0 {
            if at(i) == f32::INFINITY {
                1.0 / infs as f32
            } else {
                0.0
            }
        } else {
            0.0
        };
        // SAFETY: `i < n`.
        unsafe { *dst.add(i) = v };
    }
}

/// The running state of a softmax computed block by block: the max seen so far and the sum of
/// `exp(score − max)`. Two states over disjoint blocks [`merge`](Self::merge) into the state of
/// their union, in any order, up to rounding (the weights agree with a one-shot softmax within
/// 1e-6; their bits may depend on the order): what split-sequence (flash-decoding) attention
/// needs.
///
/// Scores here are already scaled. A state that has seen only −∞ (or nothing) is
/// [`EMPTY`](Self::EMPTY) and contributes nothing to a merge, so empty or fully masked blocks
/// give zeros, never NaN. A NaN score makes the state's sum NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineSoftmax {
    /// Largest score absorbed (−∞ when none).
    pub max: f32,
    /// `Σ exp(score − max)` over the absorbed scores.
    pub sum: f32,
}

impl Default for OnlineSoftmax {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl OnlineSoftmax {
    /// The state before any score.
    pub const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// Absorbs a block of scores: replaces each score by its weight `exp(score − new_max)` and
    /// returns the factor `exp(old_max − new_max)` by which anything accumulated with the old
    /// weights (the sum is rescaled here; a weighted sum of values is the caller's) must be
    /// multiplied. +∞ scores take the limit: they share the mass and everything else gets 0.
    pub fn absorb(&mut self, exec: &Exec, scores: &mut [f32]) -> f32 {
        with_simd!(exec.isa(), |s| s.vectorize(
            #[inline(always)]
            || self.absorb_in(s, scores)
        ))
    }

    /// [`absorb`](Self::absorb) for a block of rows: `states[i]` absorbs row `i` of `scores`
    /// (`states.len()` rows of `row_len` floats) and `keep[i]` receives its factor. One
    /// dispatch for all rows (a dispatch per row cost about as much as the exponentials of a
    /// 512-float row).
    pub fn absorb_rows(
        exec: &Exec,
        states: &mut [Self],
        scores: &mut [f32],
        row_len: usize,
        keep: &mut [f32],
    ) -> Result<()> {
        check_dim(
            "absorb_rows scores length vs states * row_len",
            // An overflowing product matches no slice length.
            states.len().saturating_mul(row_len),
            scores.len(),
        )?;
        check_dim(
            "absorb_rows keep length vs states",
            states.len(),
            keep.len(),
        )?;
        if row_len == 0 {
            keep.fill(1.0);
            return Ok(());
        }
        with_simd!(exec.isa(), |s| s.vectorize(
            #[inline(always)]
            || {
                for ((state, row), k) in states
                    .iter_mut()
                    .zip(scores.chunks_exact_mut(row_len))
                    .zip(keep.iter_mut())
                {
                    *k = state.absorb_in(s, row);
                }
            }
        ));
        Ok(())
    }

    /// [`absorb`](Self::absorb) inside an already vectorised context.
    #[inline(always)]
    pub(crate) fn absorb_in<S: Simd>(&mut self, s: S, scores: &mut [f32]) -> f32 {
        let n = scores.len();
        let p = scores.as_mut_ptr();
        // SAFETY: `p` spans `n` floats of the borrowed `scores`.
        let block_max = unsafe { max_of(s, p, n) };
        self.absorb_with_max(s, p, n, block_max)
    }

    #[inline(always)]
    fn absorb_with_max<S: Simd>(&mut self, s: S, p: *mut f32, n: usize, block_max: f32) -> f32 {
        let new_max = self.max.max(block_max);
        if new_max == f32::NEG_INFINITY {
            // Nothing but −∞ so far: every weight is 0 and the state stays empty (NaN scores
            // still poison the sum).
            let mut nan = false;
            for i in 0..n {
                // SAFETY: `i < n`.
                unsafe {
                    nan |= (*p.add(i)).is_nan();
                    *p.add(i) = if (*p.add(i)).is_nan() { f32::NAN } else { 0.0 };
                }
            }
            if nan {
                self.sum = f32::NAN;
            }
            return 1.0;
        }
        if new_max == f32::INFINITY {
            let carried = if self.max == f32::INFINITY { 1.0 } else { 0.0 };
            let mut added = 0.0;
            for i in 0..n {
                // SAFETY: `i < n`.
                unsafe {
                    let v = *p.add(i);
                    *p.add(i) = if v == f32::INFINITY {
                        1.0
                    } else if v.is_nan() {
                        f32::NAN
                    } else {
                        0.0
                    };
                    added += *p.add(i);
                }
            }
            self.sum = self.sum * carried + added;
            self.max = f32::INFINITY;
            return carried;
        }
        let factor = if self.max == f32::NEG_INFINITY {
            0.0
        } else if self.max == new_max {
            // exp(0) exactly; most blocks past the first few leave the max where it was.
            1.0
        } else {
            (self.max - new_max).exp()
        };
        // SAFETY: `p` spans `n` floats; the weights overwrite the scores in place.
        let block_sum = unsafe { exp_shifted_sum(s, p, p, n, 1.0, new_max) };
        self.sum = (self.sum as f64 * factor as f64 + block_sum) as f32;
        self.max = new_max;
        factor
    }

    /// The state of the union of the two blocks, with the factors by which each side's
    /// accumulated values must be multiplied before they are added.
    pub fn merge(self, other: Self) -> (Self, f32, f32) {
        let max = self.max.max(other.max);
        if max == f32::NEG_INFINITY {
            return (
                Self {
                    max,
                    sum: self.sum + other.sum,
                },
                1.0,
                1.0,
            );
        }
        let weight = |m: f32| {
            if m == f32::NEG_INFINITY {
                0.0
            } else if max == f32::INFINITY {
                if m == f32::INFINITY { 1.0 } else { 0.0 }
            } else {
                (m - max).exp()
            }
        };
        let (a, b) = (weight(self.max), weight(other.max));
        (
            Self {
                max,
                sum: self.sum * a + other.sum * b,
            },
            a,
            b,
        )
    }

    /// `1 / sum`, or 0 for an empty state (so an empty or fully masked row gives zeros).
    pub fn inverse_sum(&self) -> f32 {
        if self.sum == 0.0 { 0.0 } else { 1.0 / self.sum }
    }
}
