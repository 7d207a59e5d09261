//! The vector vocabulary every kernel is written against.

/// One SIMD instruction set, as a zero-sized token. Holding a value proves the CPU supports the
/// set, so the safe methods below may execute its instructions.
///
/// All methods are `#[inline(always)]` in the implementations: they are meant to disappear into
/// the body run under [`Simd::vectorize`], which is compiled with the ISA's target features.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// f32 lanes per vector.
    const LANES: usize;
    /// One vector of f32.
    type V: Copy;
    /// An f64 accumulator for sums of vectors that must not lose precision.
    type Acc64: Copy;

    /// Runs `f` in a function compiled with this ISA's target features, so that the vocabulary
    /// inlined into `f` turns into the ISA's instructions.
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;

    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// All lanes zero.
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
    /// `LANES` floats from `p`, unaligned.
    ///
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// The first `n < LANES` floats from `p`; the other lanes are zero.
    ///
    /// # Safety
    /// `p .. p + n` must be readable.
    unsafe fn load_partial(self, p: *const f32, n: usize) -> Self::V;
    /// The first `n < LANES` floats from `p`; the other lanes are taken from `fill`.
    ///
    /// # Safety
    /// `p .. p + n` must be readable.
    unsafe fn load_partial_or(self, p: *const f32, n: usize, fill: Self::V) -> Self::V;
    /// `LANES` bf16 values from `p`, widened to f32 (exact).
    ///
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load_bf16(self, p: *const u16) -> Self::V;
    /// `2·LANES` bf16 values from `p`, widened to f32 as two vectors: the even-indexed elements
    /// and the odd-indexed ones. One shift and one mask per two vectors, instead of a widening
    /// shuffle and a shift per vector; callers that can work in this permuted order (dot
    /// products, accumulators permuted once) halve the conversion cost.
    ///
    /// # Safety
    /// `p .. p + 2·LANES` must be readable.
    unsafe fn load_bf16_pairs(self, p: *const u16) -> (Self::V, Self::V);
    /// Stores all lanes at `p`, unaligned.
    ///
    /// # Safety
    /// `p .. p + LANES` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Stores the first `n < LANES` lanes at `p`.
    ///
    /// # Safety
    /// `p .. p + n` must be writable.
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: Self::V);
    /// [`store_partial`](Self::store_partial) as plain stores of 8, 4, 2 and 1 floats (as `n`
    /// needs), no masked store: a later load that overlaps a masked store's whole vector,
    /// masked-off lanes included, cannot take its data from the store and waits until it
    /// reaches the cache, so data that is reloaded soon after (in-place rows stored back to
    /// back) is stored this way.
    ///
    /// # Safety
    /// `p .. p + n` must be writable.
    #[inline(always)]
    unsafe fn store_prefix(self, p: *mut f32, n: usize, v: Self::V) {
        // SAFETY: forwarded.
        unsafe { self.store_partial(p, n, v) }
    }

    /// Whether [`fmadd`](Self::fmadd) rounds once (no default: a path must say).
    const FUSED_MULTIPLY_ADD: bool;
    /// `a * b + c`, fused (one rounding) on the AVX paths; the portable path fuses only when
    /// the build enables FMA.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `v` with lanes `n..` set to +0 (`n < LANES`).
    fn keep_first(self, v: Self::V, n: usize) -> Self::V;
    /// `a / b`, correctly rounded (as a scalar division is).
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum. Where exactly one operand is NaN the result is `b`'s lane
    /// (x86 `maxps` semantics on every path), so callers put the running value in `a`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of all lanes.
    fn reduce_add(self, v: Self::V) -> f32;
    /// Maximum of all lanes (NaN lanes may be ignored).
    fn reduce_max(self, v: Self::V) -> f32;
    /// Sum of all lanes, added in exactly the order (operands included) in which
    /// [`transpose_sum16`](Self::transpose_sum16) adds each of its vectors, so that one row
    /// reduced alone and the same row reduced among 16 give the same bits. Paths without
    /// `transpose_sum16` use [`reduce_add`](Self::reduce_add).
    fn reduce_add_as_transposed(self, v: Self::V) -> f32 {
        self.reduce_add(v)
    }

    /// Whether [`transpose_sum16`](Self::transpose_sum16) is implemented (16-lane paths).
    const HAS_TRANSPOSE_SUM16: bool = false;
    /// The horizontal sums of 16 vectors as one vector: lane `i` is the sum of `v[i]`'s lanes.
    /// A shuffle network shares the work of 16 reductions (~45 operations instead of ~140).
    fn transpose_sum16(self, v: &[Self::V; 16]) -> Self::V {
        let _ = v;
        unreachable!("only paths with HAS_TRANSPOSE_SUM16 are asked for it")
    }

    /// Whether [`transpose_sum8`](Self::transpose_sum8) is implemented (8-lane AVX2).
    const HAS_TRANSPOSE_SUM8: bool = false;
    /// The horizontal sums of 8 vectors as one vector: lane `i` is the sum of `v[i]`'s lanes
    /// (~21 operations instead of ~48 for 8 separate reductions).
    fn transpose_sum8(self, v: &[Self::V; 8]) -> Self::V {
        let _ = v;
        unreachable!("only paths with HAS_TRANSPOSE_SUM8 are asked for it")
    }

    /// Transposes one `LANES × LANES` block: the `LANES` floats at `src + r·ld` (row `r`)
    /// become column `r` of the rows at `dst + c·ldd`. The default goes element by element;
    /// the AVX paths use an in-register shuffle network.
    ///
    /// # Safety
    /// `src + r·ld .. + LANES` must be readable and `dst + c·ldd .. + LANES` writable for every
    /// `r, c < LANES`, and the two must not overlap.
    #[inline(always)]
    unsafe fn transpose_block(self, src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
        for r in 0..Self::LANES {
            for c in 0..Self::LANES {
                // SAFETY: both offsets are inside the block the caller vouched for.
                unsafe { *dst.add(c * ldd + r) = *src.add(r * ld + c) };
            }
        }
    }

    /// `exp(x)` lane-wise; see [`crate::exp`] for the algorithm and its error bound.
    fn exp(self, x: Self::V) -> Self::V;
    /// `2^t` lane-wise, the cheaper exponential softmax uses (its caller folds log₂e into the
    /// logit scale, so no Cody–Waite reduction is needed): see `exp2_consts`.
    fn exp2(self, t: Self::V) -> Self::V;
    /// [`exp2`](Self::exp2) for `t < 128`, −∞ or NaN (softmax's exponents are at most a
    /// rounding error above 0), which lets a path skip the upper clamp. Larger `t` may give
    /// wrong results.
    #[inline(always)]
    fn exp2_nonpositive(self, t: Self::V) -> Self::V {
        self.exp2(t)
    }

    /// An all-zero f64 accumulator.
    fn acc64_zero(self) -> Self::Acc64;
    /// `acc + v`, with `v` widened to f64 first.
    fn acc64_add(self, acc: Self::Acc64, v: Self::V) -> Self::Acc64;
    /// Sum of the accumulator's lanes.
    fn acc64_reduce(self, acc: Self::Acc64) -> f64;
}

/// Constants of the vectorised `exp`, shared by every path so that all paths compute the same
/// function (up to FMA fusion on the portable path).
pub(crate) mod exp_consts {
    /// Inputs are clamped to `[LO, HI]` first: exp(−104) rounds to +0 and exp(89) overflows to
    /// +∞, so the clamp changes no result and keeps the exponent arithmetic in range.
    pub const LO: f32 = -104.0;
    pub const HI: f32 = 89.0;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split so that `n * LN2_HI` is exact for |n| ≤ 2^8 (Cody–Waite).
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    /// Taylor coefficients of `(e^r − 1 − r) / r²`, 1/2! … 1/7!: on |r| ≤ ln2/2 the truncation
    /// error is 5e-9 relative, well under half an ulp.
    pub const Q: [f32; 6] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];
}

/// Constants of `exp2`, the same on every path: `2^t = 2^⌊t⌋ · 2^f` with `f = t − ⌊t⌋ ∈ [0, 1]`
/// (one rounding, only for −1 < t < 0), `2^f` by the degree-6 polynomial `P` (relative-error
/// fit: 1.9e-9 before f32 rounding, 0.7 ulp after), and the scaling by 2^⌊t⌋ rounded once, also
/// into the subnormal range (AVX-512: f by `vreduceps`, scaling by `vscalefps`, no clamp;
/// elsewhere t is clamped to [LO, HI] first and scaled by two normal factors). Max error over
/// every finite f32 (`--example exp_ulp`): 1 ulp on AVX-512 and AVX2, 2 ulp on the portable
/// path built without FMA (its Horner steps round twice).
pub(crate) mod exp2_consts {
    /// 2^−151 rounds to +0 and 2^129 overflows, so clamping changes no result.
    pub const LO: f32 = -151.0;
    pub const HI: f32 = 129.0;
    /// Coefficients of `2^f` on `[0, 1)`, constant term first. (The linear one is the fit's,
    /// near but deliberately not ln 2.)
    #[allow(clippy::approx_constant)]
    pub const P: [f32; 7] = [
        1.0,
        6.931_47e-1,
        2.402_298_3e-1,
        5.548_334e-2,
        9.678_841e-3,
        1.243_968_8e-3,
        2.170_225_5e-4,
    ];
}
