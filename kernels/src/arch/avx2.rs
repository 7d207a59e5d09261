//! The AVX2 + FMA path: 8 f32 lanes.

use std::arch::x86_64::*;

use super::simd::{Simd, exp_consts as E, exp2_consts as X};

/// Token proving AVX2 and FMA are available.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _private: (),
}

impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub(crate) fn try_new() -> Option<Self> {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Self { _private: () });
        }
        None
    }
}

/// Evaluates an AVX2/FMA intrinsic that takes no pointers.
macro_rules! v {
    ($e:expr) => {
        // SAFETY: an `Avx2` token exists only after `try_new` found avx2 and fma on this CPU,
        // and the intrinsic reads no memory.
        unsafe { $e }
    };
}

/// Mask vector for `_mm256_mask{load,store}_ps`: lanes below `n` have the sign bit set.
#[inline(always)]
fn tail_mask(n: usize) -> __m256i {
    debug_assert!(n < 8);
    v!(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
    ))
}

/// The first `n < 8` lanes of `v` stored at `p` as plain stores of 4, 2 and 1 floats (see
/// `Simd::store_prefix`).
///
/// # Safety
/// `p .. p + n` must be writable, and the CPU must have AVX.
#[inline(always)]
pub(super) unsafe fn store_prefix8(v: __m256, p: *mut f32, n: usize) {
    debug_assert!(n < 8);
    // SAFETY: each store writes floats below `n`, which the caller vouches for; AVX is the
    // caller's promise.
    unsafe {
        let (mut p, mut n) = (p, n);
        let mut x = _mm256_castps256_ps128(v);
        if n >= 4 {
            _mm_storeu_ps(p, x);
            x = _mm256_extractf128_ps::<1>(v);
            (p, n) = (p.add(4), n - 4);
        }
        if n >= 2 {
            _mm_store_sd(p as *mut f64, _mm_castps_pd(x));
            x = _mm_movehl_ps(x, x);
            (p, n) = (p.add(2), n - 2);
        }
        if n == 1 {
            _mm_store_ss(p, x);
        }
    }
}

/// `p · 2^n` for integral `n ∈ [−151, 129]`, with 2^n split into two normal factors so that only
/// the last multiply rounds, also into the subnormal range.
#[inline(always)]
fn scale_by_pow2(p: __m256, n: __m256) -> __m256 {
    v!({
        let n1 = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(n, _mm256_set1_ps(0.5)),
        );
        let n2 = _mm256_sub_ps(n, n1);
        _mm256_mul_ps(_mm256_mul_ps(p, normal_pow2(n1)), normal_pow2(n2))
    })
}

/// `2^k` for integral `k ∈ [−126, 127]`, built in the exponent field. (A function, not a
/// closure: a closure LLVM declines to inline keeps its intrinsics out of line, compiled
/// without AVX2.)
#[inline(always)]
fn normal_pow2(k: __m256) -> __m256 {
    v!(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(
        _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127),)
    )))
}

/// [`scale_by_pow2`] where some lanes' products may leave the normal range; `normal` marks
/// the lanes whose product is known normal. When all are (softmax's weights, almost always),
/// adding n to p's exponent field gives the same exact product in three integer operations
/// instead of eleven: 1.42–1.53× the AVX2 softmax's speed (in-process, rows of 128–32768).
/// Otherwise the split scaling serves the vector, and the normal lanes keep the shortcut.
#[inline(always)]
fn scale_by_pow2_where_normal(p: __m256, n: __m256, normal: __m256) -> __m256 {
    v!({
        let fast = _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_castps_si256(p),
            _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n)),
        ));
        if _mm256_movemask_ps(normal) == 0xff {
            fast
        } else {
            _mm256_blendv_ps(scale_by_pow2(p, n), fast, normal)
        }
    })
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    const FUSED_MULTIPLY_ADD: bool = true;
    type V = __m256;
    type Acc64 = [__m256d; 2];

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,fma")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token proves the features `run` is compiled for.
        unsafe { run(f) }
    }

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        v!(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable floats at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m256 {
        // SAFETY: masked-off lanes are not accessed, and the caller guarantees the first `n`
        // are readable.
        unsafe { _mm256_maskload_ps(p, tail_mask(n)) }
    }
    #[inline(always)]
    unsafe fn load_partial_or(self, p: *const f32, n: usize, fill: __m256) -> __m256 {
        let m = tail_mask(n);
        // SAFETY: as for `load_partial`.
        let v = unsafe { _mm256_maskload_ps(p, m) };
        v!(_mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m)))
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16 at `p` (16 bytes); widening and shifting
        // by 16 is the exact bf16 → f32 conversion.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(self, p: *const u16) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 16 readable u16 at `p` (32 bytes); see the AVX-512
        // version for the bit layout.
        unsafe {
            let x = _mm256_loadu_si256(p as *const __m256i);
            let even = _mm256_slli_epi32::<16>(x);
            let odd = _mm256_and_si256(x, _mm256_set1_epi32(0xffff_0000u32 as i32));
            (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable floats at `p`.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: __m256) {
        // SAFETY: masked-off lanes are not written, and the caller guarantees the first `n`
        // are writable.
        unsafe { _mm256_maskstore_ps(p, tail_mask(n), v) }
    }
    #[inline(always)]
    unsafe fn store_prefix(self, p: *mut f32, n: usize, v: __m256) {
        // SAFETY: forwarded.
        unsafe { store_prefix8(v, p, n) }
    }

    #[inline(always)]
    fn fmadd(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        v!(_mm256_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_add_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_mul_ps(a, b))
    }
    #[inline(always)]
    fn keep_first(self, v: __m256, n: usize) -> __m256 {
        v!(_mm256_and_ps(v, _mm256_castsi256_ps(tail_mask(n))))
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_div_ps(a, b))
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_max_ps(a, b))
    }
    #[inline(always)]
    fn reduce_add(self, v: __m256) -> f32 {
        v!({
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        })
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        v!({
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        })
    }

    const HAS_TRANSPOSE_SUM8: bool = true;
    #[inline(always)]
    fn transpose_sum8(self, v: &[__m256; 8]) -> __m256 {
        v!({
            // 8 → 4: within each 128-bit half, [a0+a1, a2+a3, b0+b1, b2+b3] for pairs (a, b).
            let mut t = [_mm256_setzero_ps(); 4];
            for (i, ti) in t.iter_mut().enumerate() {
                *ti = _mm256_hadd_ps(v[2 * i], v[2 * i + 1]);
            }
            // 4 → 2: each half holds that half's sums of four inputs.
            let lo = _mm256_hadd_ps(t[0], t[1]);
            let hi = _mm256_hadd_ps(t[2], t[3]);
            // Inputs 0..4 from `lo`, 4..8 from `hi`: add the two halves of each.
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            )
        })
    }

    #[inline(always)]
    unsafe fn transpose_block(self, src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
        // Loops, not `from_fn`: a closure LLVM declines to inline is compiled without AVX2
        // (see `transpose_sum16` on AVX-512).
        let mut r = [v!(_mm256_setzero_ps()); 8];
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: the caller vouches for 8 rows of 8 readable floats at `src`.
            *ri = unsafe { _mm256_loadu_ps(src.add(i * ld)) };
        }
        let out = v!({
            // Pairs of rows interleaved within each 128-bit half.
            let mut t = [_mm256_setzero_ps(); 8];
            for (i, ti) in t.iter_mut().enumerate() {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                *ti = if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                };
            }
            // Quads: in each half k of u[4g + e], rows 4g..4g+3 at column 4k + e.
            let mut u = [_mm256_setzero_ps(); 8];
            for (i, ui) in u.iter_mut().enumerate() {
                let (g, e) = (i / 4, i % 4);
                let (x, y) = (t[4 * g + e / 2], t[4 * g + 2 + e / 2]);
                *ui = if e % 2 == 0 {
                    _mm256_shuffle_ps::<0b01_00_01_00>(x, y)
                } else {
                    _mm256_shuffle_ps::<0b11_10_11_10>(x, y)
                };
            }
            // Output row 4k + e: half k of quad 0, then half k of quad 1.
            let mut out = [_mm256_setzero_ps(); 8];
            for e in 0..4 {
                out[e] = _mm256_permute2f128_ps::<0x20>(u[e], u[4 + e]);
                out[4 + e] = _mm256_permute2f128_ps::<0x31>(u[e], u[4 + e]);
            }
            out
        });
        for (c, v) in out.iter().enumerate() {
            // SAFETY: row `c < 8` of the destination block, which the caller vouches for.
            unsafe { _mm256_storeu_ps(dst.add(c * ldd), *v) };
        }
    }

    #[inline(always)]
    fn exp(self, x: __m256) -> __m256 {
        v!({
            let x = _mm256_min_ps(
                _mm256_set1_ps(E::HI),
                _mm256_max_ps(_mm256_set1_ps(E::LO), x),
            );
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(E::LOG2E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(E::LN2_HI), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(E::LN2_LO), r);
            let mut q = _mm256_set1_ps(E::Q[5]);
            for c in E::Q[..5].iter().rev() {
                q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(*c));
            }
            let p = _mm256_fmadd_ps(_mm256_mul_ps(r, r), q, r);
            let p = _mm256_add_ps(p, _mm256_set1_ps(1.0));
            // p ∈ [0.70, 1.42]: the product is normal for −125 ≤ n ≤ 127.
            let normal = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-125.0)),
                _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_set1_ps(127.0)),
            );
            scale_by_pow2_where_normal(p, n, normal)
        })
    }

    #[inline(always)]
    fn exp2(self, t: __m256) -> __m256 {
        // min(HI, t) returns t when t is NaN.
        self.exp2_nonpositive(v!(_mm256_min_ps(_mm256_set1_ps(X::HI), t)))
    }

    #[inline(always)]
    fn exp2_nonpositive(self, t: __m256) -> __m256 {
        v!({
            // max(LO, t) returns t when t is NaN, so NaN survives the clamp.
            let t = _mm256_max_ps(_mm256_set1_ps(X::LO), t);
            let n = _mm256_floor_ps(t);
            let f = _mm256_sub_ps(t, n);
            let mut p = _mm256_set1_ps(X::P[6]);
            for c in X::P[..6].iter().rev() {
                p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(*c));
            }
            // p ∈ [1, 2]: the product is normal (or +∞ at n = 127, p = 2) for −126 ≤ n ≤ 127.
            let normal = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(t, _mm256_set1_ps(-126.0)),
                _mm256_cmp_ps::<_CMP_LT_OQ>(t, _mm256_set1_ps(128.0)),
            );
            scale_by_pow2_where_normal(p, n, normal)
        })
    }

    #[inline(always)]
    fn acc64_zero(self) -> [__m256d; 2] {
        v!([_mm256_setzero_pd(), _mm256_setzero_pd()])
    }
    #[inline(always)]
    fn acc64_add(self, acc: [__m256d; 2], v: __m256) -> [__m256d; 2] {
        v!({
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            [_mm256_add_pd(acc[0], lo), _mm256_add_pd(acc[1], hi)]
        })
    }
    #[inline(always)]
    fn acc64_reduce(self, acc: [__m256d; 2]) -> f64 {
        v!({
            let s = _mm256_add_pd(acc[0], acc[1]);
            let s = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd::<1>(s));
            _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `transpose_block` against the element-by-element definition, with padded strides.
    #[test]
    fn transpose_sum8_sums_each_vector_into_its_lane() {
        let Some(s) = Avx2::try_new() else {
            eprintln!("AVX2 not available: skipped");
            return;
        };
        // Vector i holds 100·i + lane: any mix-up of vectors or lanes changes a sum.
        let data: Vec<f32> = (0..64).map(|x| (100 * (x / 8) + x % 8) as f32).collect();
        let mut got = [0.0f32; 8];
        s.vectorize(|| {
            let mut v = [s.zero(); 8];
            for (i, vi) in v.iter_mut().enumerate() {
                // SAFETY: `data` holds 8 vectors of 8 floats.
                *vi = unsafe { s.load(data.as_ptr().add(8 * i)) };
            }
            // SAFETY: `got` holds 8 floats.
            unsafe { s.store(got.as_mut_ptr(), s.transpose_sum8(&v)) };
        });
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, (800 * i + 28) as f32, "lane {i}");
        }
    }

    #[test]
    fn transpose_block_matches_scalar() {
        let Some(s) = Avx2::try_new() else {
            eprintln!("AVX2 not available: skipped");
            return;
        };
        let (ld, ldd) = (11, 13);
        let src: Vec<f32> = (0..8 * ld).map(|i| i as f32).collect();
        let mut dst = vec![-1.0f32; 8 * ldd];
        // SAFETY: 8 rows of `ld ≥ 8` and `ldd ≥ 8` floats.
        s.vectorize(|| unsafe { s.transpose_block(src.as_ptr(), ld, dst.as_mut_ptr(), ldd) });
        for c in 0..8 {
            for r in 0..8 {
                assert_eq!(dst[c * ldd + r], src[r * ld + c], "row {c}, column {r}");
            }
            assert!(dst[c * ldd + 8..(c + 1) * ldd].iter().all(|&x| x == -1.0));
        }
    }
}
