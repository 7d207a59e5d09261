//! The storage types of cached keys and values, and how each is widened to f32 vectors.

use crate::arch::Simd;

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
        // A loop, not `from_fn`: a closure LLVM declines to inline in a large caller is
        // compiled without the ISA's features (see `Simd::transpose_sum16` on AVX-512).
        let mut out = [s.zero(); N];
        for (v, o) in out.iter_mut().enumerate() {
            // SAFETY: vector v reads `p + v·LANES .. + LANES`, inside what the caller vouched
            // for.
            *o = unsafe { Self::load(s, p.add(v * S::LANES)) };
        }
        out
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
        let mut out = [s.zero(); N];
        if !PERM {
            for (v, o) in out.iter_mut().enumerate() {
                // SAFETY: vector v reads `p + v·LANES .. + LANES`, inside what the caller
                // vouched for.
                *o = unsafe { Self::load(s, p.add(v * S::LANES)) };
            }
            return out;
        }
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
