//! Streaming primitives for attention over a block of cached keys and values, in f32 or bf16
//! storage: `scores = scale · K·q` and `acc += Σ_i w_i·v_i`. Both read each row once, in
//! memory order, and always compute in f32 (bf16 widens exactly to f32).

use crate::arch::{Simd, with_simd};
use crate::error::{Result, check_dim, check_len};
use crate::exec::Exec;

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
trait Elem: Copy {
    /// # Safety
    /// `p .. p + LANES` readable.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::V;
    /// # Safety
    /// `p .. p + n` readable, `n < LANES`.
    unsafe fn load_partial<S: Simd>(s: S, p: *const Self, n: usize) -> S::V;
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
    check_dim(
        "rows length vs scores.len() * q.len()",
        scores.len() * d,
        rows.len(),
    )?;
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
    check_dim(
        "rows length vs weights.len() * acc.len()",
        weights.len() * d,
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
    let (d, lanes) = (q.len(), S::LANES);
    let full = d / lanes * lanes;
    let tail = d - full;
    let n = scores.len();
    let mut i = 0;
    // SAFETY: row pointers index rows < n of `rows` (n·d elements, checked), and
    // offsets stay below d; `q` has d floats.
    unsafe {
        while i < n {
            let count = 4.min(n - i);
            let r: [*const T; 4] =
                std::array::from_fn(|u| rows.as_ptr().add((i + u.min(count - 1)) * d));
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
                scores[i + u] = scale * s.reduce_add(s.add(lo[u], hi[u]));
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
