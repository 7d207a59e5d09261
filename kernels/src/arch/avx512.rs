//! The AVX-512 (F + DQ) path: 16 f32 lanes, masked tails, `vreduceps` and `vscalefps` for the
//! exponentials.

use std::arch::x86_64::*;

use super::simd::{Simd, exp_consts as E, exp2_consts as X};

/// Token proving AVX-512F and AVX-512DQ (every AVX-512 CPU but the Xeon Phi line has both),
/// and the AVX2/FMA they imply, are available.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    _private: (),
}

impl Avx512 {
    /// The token, if this CPU has AVX-512F and AVX-512DQ.
    pub(crate) fn try_new() -> Option<Self> {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Self { _private: () });
        }
        None
    }
}

/// Evaluates an AVX-512 intrinsic that takes no pointers.
macro_rules! v {
    ($e:expr) => {
        // SAFETY: an `Avx512` token exists only after `try_new` found avx512f/dq, avx2, fma on this
        // CPU, and the intrinsic reads no memory.
        unsafe { $e }
    };
}

/// Lane mask with the low `n` bits set (`n < 16`).
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    debug_assert!(n < 16);
    ((1u32 << n) - 1) as __mmask16
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    const FUSED_MULTIPLY_ADD: bool = true;
    type V = __m512;
    type Acc64 = [__m512d; 2];

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the token proves the features `run` is compiled for.
        unsafe { run(f) }
    }

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        v!(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable floats at `p`; the token proves avx512f.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m512 {
        // SAFETY: masked-off lanes are not accessed (no fault), and the caller guarantees the
        // first `n` are readable.
        unsafe { _mm512_maskz_loadu_ps(tail_mask(n), p) }
    }
    #[inline(always)]
    unsafe fn load_partial_or(self, p: *const f32, n: usize, fill: __m512) -> __m512 {
        // SAFETY: as for `load_partial`.
        unsafe { _mm512_mask_loadu_ps(fill, tail_mask(n), p) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable u16 at `p` (32 bytes); bf16 is the upper
        // half of an f32, so widening and shifting by 16 is the exact conversion.
        unsafe {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(self, p: *const u16) -> (__m512, __m512) {
        // SAFETY: the caller guarantees 32 readable u16 at `p` (64 bytes). Element 2j sits in the
        // low half of 32-bit lane j, 2j+1 in its high half: shifting up, or masking the low half
        // away, leaves exactly those bf16 values as f32 bit patterns.
        unsafe {
            let x = _mm512_loadu_si512(p as *const __m512i);
            let even = _mm512_slli_epi32::<16>(x);
            let odd = _mm512_and_si512(x, _mm512_set1_epi32(0xffff_0000u32 as i32));
            (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable floats at `p`.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: __m512) {
        // SAFETY: masked-off lanes are not written, and the caller guarantees the first `n`
        // are writable.
        unsafe { _mm512_mask_storeu_ps(p, tail_mask(n), v) }
    }
    #[inline(always)]
    unsafe fn store_prefix(self, p: *mut f32, n: usize, v: __m512) {
        debug_assert!(n < 16);
        // SAFETY: each store writes floats below `n`, which the caller vouches for.
        unsafe {
            let (mut p, mut n) = (p, n);
            let mut y = _mm512_castps512_ps256(v);
            if n >= 8 {
                _mm256_storeu_ps(p, y);
                y = _mm512_extractf32x8_ps::<1>(v);
                (p, n) = (p.add(8), n - 8);
            }
            super::avx2::store_prefix8(y, p, n);
        }
    }

    #[inline(always)]
    fn fmadd(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        v!(_mm512_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_add_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_mul_ps(a, b))
    }
    #[inline(always)]
    fn keep_first(self, v: __m512, n: usize) -> __m512 {
        v!(_mm512_maskz_mov_ps(tail_mask(n), v))
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_div_ps(a, b))
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_max_ps(a, b))
    }
    #[inline(always)]
    fn reduce_add(self, v: __m512) -> f32 {
        v!(_mm512_reduce_add_ps(v))
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        v!(_mm512_reduce_max_ps(v))
    }

    #[inline(always)]
    fn reduce_add_as_transposed(self, v: __m512) -> f32 {
        // `transpose_sum16` adds, for each vector: lanes l and l+2 within each 128-bit lane
        // (l first), then those pairs (the lower first), then 128-bit lanes 0+1 and 2+3, then
        // (0+1)+(2+3). Here every lane is paired with its partner by a permute; addition
        // commutes, so both lanes of a pair hold the same bits, and lane 0 ends up holding
        // the sum in that order, with the same first operand at every step.
        v!({
            let v1 = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
            let v2 = _mm512_add_ps(v1, _mm512_permute_ps::<0b10_11_00_01>(v1));
            let v3 = _mm512_add_ps(v2, _mm512_shuffle_f32x4::<0b10_11_00_01>(v2, v2));
            let v4 = _mm512_add_ps(v3, _mm512_shuffle_f32x4::<0b01_00_11_10>(v3, v3));
            _mm512_cvtss_f32(v4)
        })
    }

    const HAS_TRANSPOSE_SUM16: bool = true;
    #[inline(always)]
    fn transpose_sum16(self, v: &[__m512; 16]) -> __m512 {
        // Loops, not closures (`from_fn`, `let` closures): a closure that LLVM declines to
        // inline in a large caller is compiled without AVX-512, and each intrinsic in it
        // becomes a call (this made bf16 decode attention 4× slower once).
        v!({
            // 16 → 8: within each 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3] for pairs (a, b).
            let mut t = [_mm512_setzero_ps(); 8];
            for (i, ti) in t.iter_mut().enumerate() {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                *ti = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            }
            // 8 → 4: each 128-bit lane holds that lane's sums of four inputs [a, b, c, d].
            let mut u = [_mm512_setzero_ps(); 4];
            for (i, ui) in u.iter_mut().enumerate() {
                let (x, y) = (t[2 * i], t[2 * i + 1]);
                *ui = _mm512_add_ps(
                    _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                    _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
                );
            }
            // Sum across the four 128-bit lanes, keeping inputs 4k..4k+3 in lane k.
            let mut w = [_mm512_setzero_ps(); 2];
            for (i, wi) in w.iter_mut().enumerate() {
                let (x, y) = (u[2 * i], u[2 * i + 1]);
                *wi = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
                );
            }
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(w[0], w[1]),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(w[0], w[1]),
            )
        })
    }

    #[inline(always)]
    unsafe fn transpose_block(self, src: *const f32, ld: usize, dst: *mut f32, ldd: usize) {
        // Loops rather than closures, as in `transpose_sum16`.
        let mut r = [v!(_mm512_setzero_ps()); 16];
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: the caller vouches for 16 rows of 16 readable floats at `src` and 16
            // rows of 16 writable ones at `dst`.
            *ri = unsafe { _mm512_loadu_ps(src.add(i * ld)) };
        }
        let out = v!({
            // Pairs of rows interleaved: t[2i] = [a0 b0 a1 b1 | a4 b4 a5 b5 | …], t[2i+1] the
            // upper halves of each 128-bit lane.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                let (a, b) = (r[2 * i], r[2 * i + 1]);
                t[2 * i] = _mm512_unpacklo_ps(a, b);
                t[2 * i + 1] = _mm512_unpackhi_ps(a, b);
            }
            // Quads of rows: in each 128-bit lane k of u[4g + e], the four rows 4g..4g+3 at
            // column 4k + e.
            let mut u = [_mm512_setzero_ps(); 16];
            for (i, ui) in u.iter_mut().enumerate() {
                let (g, e) = (i / 4, i % 4);
                let (x, y) = (t[4 * g + e / 2], t[4 * g + 2 + e / 2]);
                let (x, y) = (_mm512_castps_pd(x), _mm512_castps_pd(y));
                *ui = _mm512_castpd_ps(if e % 2 == 0 {
                    _mm512_unpacklo_pd(x, y)
                } else {
                    _mm512_unpackhi_pd(x, y)
                });
            }
            // Gather lane k of the four quads: output row 4k + e.
            let mut out = [_mm512_setzero_ps(); 16];
            for e in 0..4 {
                let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
                let v01 = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
                let w01 = _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
                let v23 = _mm512_shuffle_f32x4::<0b10_00_10_00>(c, d);
                let w23 = _mm512_shuffle_f32x4::<0b11_01_11_01>(c, d);
                out[e] = _mm512_shuffle_f32x4::<0b10_00_10_00>(v01, v23);
                out[8 + e] = _mm512_shuffle_f32x4::<0b11_01_11_01>(v01, v23);
                out[4 + e] = _mm512_shuffle_f32x4::<0b10_00_10_00>(w01, w23);
                out[12 + e] = _mm512_shuffle_f32x4::<0b11_01_11_01>(w01, w23);
            }
            out
        });
        for (c, v) in out.iter().enumerate() {
            // SAFETY: row `c < 16` of the destination block.
            unsafe { _mm512_storeu_ps(dst.add(c * ldd), *v) };
        }
    }

    #[inline(always)]
    fn exp(self, x: __m512) -> __m512 {
        v!({
            // max(LO, x) returns x when x is NaN, so NaN survives the clamp.
            let x = _mm512_min_ps(
                _mm512_set1_ps(E::HI),
                _mm512_max_ps(_mm512_set1_ps(E::LO), x),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(E::LOG2E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(E::LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(E::LN2_LO), r);
            let mut q = _mm512_set1_ps(E::Q[5]);
            for c in E::Q[..5].iter().rev() {
                q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(*c));
            }
            // e^r = 1 + r + r²·q(r), added small-to-large.
            let p = _mm512_fmadd_ps(_mm512_mul_ps(r, r), q, r);
            let p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
            // p · 2^n with one rounding, including into the subnormal range and to ±0/+∞.
            _mm512_scalef_ps(p, n)
        })
    }

    #[inline(always)]
    fn exp2(self, t: __m512) -> __m512 {
        v!({
            // f = t − ⌊t⌋ in one instruction (vreduceps; exact but for −1 < t < 0, where t + 1
            // rounds), and vscalefps multiplies by 2^⌊t⌋ itself, so ⌊t⌋ is never
            // materialised: 8 operations in all. No clamp is needed: vreduceps gives 0 for ±∞
            // (and NaN for NaN), and vscalefps saturates to +0 or +∞ for any exponent.
            let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
            let mut p = _mm512_set1_ps(X::P[6]);
            for c in X::P[..6].iter().rev() {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
            }
            // p · 2^⌊t⌋ with one rounding.
            _mm512_scalef_ps(p, t)
        })
    }

    #[inline(always)]
    fn acc64_zero(self) -> [__m512d; 2] {
        v!([_mm512_setzero_pd(), _mm512_setzero_pd()])
    }
    #[inline(always)]
    fn acc64_add(self, acc: [__m512d; 2], v: __m512) -> [__m512d; 2] {
        v!({
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            [_mm512_add_pd(acc[0], lo), _mm512_add_pd(acc[1], hi)]
        })
    }
    #[inline(always)]
    fn acc64_reduce(self, acc: [__m512d; 2]) -> f64 {
        v!(_mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `transpose_block` against the element-by-element default, with padded strides.
    #[test]
    fn transpose_block_matches_scalar() {
        let Some(s) = Avx512::try_new() else {
            eprintln!("AVX-512 not available: skipped");
            return;
        };
        let (ld, ldd) = (19, 21);
        let src: Vec<f32> = (0..16 * ld).map(|i| i as f32).collect();
        let mut dst = vec![-1.0f32; 16 * ldd];
        // SAFETY: 16 rows of `ld ≥ 16` and `ldd ≥ 16` floats.
        s.vectorize(|| unsafe { s.transpose_block(src.as_ptr(), ld, dst.as_mut_ptr(), ldd) });
        for c in 0..16 {
            for r in 0..16 {
                assert_eq!(dst[c * ldd + r], src[r * ld + c], "row {c}, column {r}");
            }
            assert!(dst[c * ldd + 16..(c + 1) * ldd].iter().all(|&x| x == -1.0));
        }
    }

    /// `reduce_add_as_transposed` gives, bit for bit, the lane `transpose_sum16` gives the same
    /// vector, on values whose sums round differently in different orders (and with NaNs of
    /// different payloads, where the first operand of each addition decides).
    #[test]
    fn reduce_add_as_transposed_matches_transpose_sum16() {
        let Some(s) = Avx512::try_new() else {
            eprintln!("AVX-512 not available: skipped");
            return;
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                * 2f32.powi((state % 40) as i32 - 20);
            match state % 97 {
                0 => f32::from_bits(0x7fc0_0001),
                1 => f32::from_bits(0xffc0_0002),
                _ => x,
            }
        };
        for _ in 0..200 {
            let rows: [[f32; 16]; 16] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
            let (alone, together) = s.vectorize(|| {
                // SAFETY: each row holds 16 floats.
                let v: [__m512; 16] = std::array::from_fn(|i| unsafe { s.load(rows[i].as_ptr()) });
                let alone: [f32; 16] = std::array::from_fn(|i| s.reduce_add_as_transposed(v[i]));
                let mut out = [0f32; 16];
                // SAFETY: `out` holds 16 floats.
                unsafe { s.store(out.as_mut_ptr(), s.transpose_sum16(&v)) };
                (alone, out)
            });
            for i in 0..16 {
                assert_eq!(
                    alone[i].to_bits(),
                    together[i].to_bits(),
                    "row {i}: {:?}",
                    rows[i]
                );
            }
        }
    }

    /// Lane i of `transpose_sum16` is the horizontal sum of input vector i; every vector has a
    /// different offset (100·i), so any mix-up of vectors or lanes shows. Small integers keep
    /// the sums exact.
    #[test]
    fn transpose_sum16_sums_each_vector_into_its_lane() {
        let Some(s) = Avx512::try_new() else {
            eprintln!("AVX-512 not available: skipped");
            return;
        };
        let value =
            |vector: usize, lane: usize| ((vector * 16 + lane) % 23) as f32 + vector as f32 * 100.0;
        let got = s.vectorize(|| {
            let v: [__m512; 16] = std::array::from_fn(|i| {
                let lanes: [f32; 16] = std::array::from_fn(|l| value(i, l));
                // SAFETY: `lanes` holds 16 floats.
                unsafe { s.load(lanes.as_ptr()) }
            });
            let mut out = [0.0f32; 16];
            // SAFETY: `out` holds 16 floats.
            unsafe { s.store(out.as_mut_ptr(), s.transpose_sum16(&v)) };
            out
        });
        for (i, g) in got.iter().enumerate() {
            let want: f32 = (0..16).map(|l| value(i, l)).sum();
            assert_eq!(*g, want, "lane {i}");
        }
    }
}
