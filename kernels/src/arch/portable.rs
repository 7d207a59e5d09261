//! The portable path: 8 lanes of `wide::f32x8`, whose instructions are chosen when the crate is
//! compiled (SSE2 on a default x86-64 build, AVX with `-C target-cpu=native`, NEON on aarch64).
//! It needs no detection and is always correct; the AVX paths are what a default build runs
//! on a machine that has them.

use super::simd::{Simd, exp_consts as E, exp2_consts as X};
use wide::{f32x8, f64x4, i32x8};

/// Token for the always-available portable path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

#[inline(always)]
fn pow2(k: f32x8) -> f32x8 {
    let bits: i32x8 = (k.round_int() + i32x8::splat(127)) << 23;
    f32x8::from(bytemuck_cast(bits))
}

/// `p · 2^n` for integral `n ∈ [−151, 129]`, 2^n as two normal factors so that only the last
/// multiply rounds (also into the subnormal range).
#[inline(always)]
fn scale_by_pow2(p: f32x8, n: f32x8) -> f32x8 {
    let n1 = (n * f32x8::splat(0.5)).round();
    p * pow2(n1) * pow2(n - n1)
}

/// [`scale_by_pow2`] where `normal` marks the lanes whose product is known normal: when all
/// are (softmax's weights, almost always), n is added to p's exponent field instead, which
/// gives the same exact product in three integer operations.
#[inline(always)]
fn scale_by_pow2_where_normal(p: f32x8, n: f32x8, normal: f32x8) -> f32x8 {
    use wide::bytemuck::cast;
    let fast: f32x8 = cast(cast::<f32x8, i32x8>(p) + (n.round_int() << 23));
    if normal.all() {
        fast
    } else {
        normal.bitselect(fast, scale_by_pow2(p, n))
    }
}

/// ⌊t⌋ for |t| < 2²² (exp2's clamped exponents), from the nearest integer: vector code on
/// every target, where `f32x8::floor` is a loop of scalar calls on SSE2 (no `roundps` before
/// SSE4.1). NaN lanes give a number; callers replace them.
#[inline(always)]
fn floor_small(t: f32x8) -> f32x8 {
    let r = f32x8::from_i32x8(t.round_int());
    r - (r.simd_gt(t) & f32x8::splat(1.0))
}

/// Reinterprets the lanes of an `i32x8` as f32 bit patterns.
#[inline(always)]
fn bytemuck_cast(v: i32x8) -> [f32; 8] {
    v.to_array().map(|b| f32::from_bits(b as u32))
}

impl Simd for Portable {
    const LANES: usize = 8;
    // `wide` falls back to a multiply and an add without the FMA target feature.
    const FUSED_MULTIPLY_ADD: bool = cfg!(target_feature = "fma");
    type V = f32x8;
    type Acc64 = [f64x4; 2];

    #[inline(always)]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }

    #[inline(always)]
    fn splat(self, x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable floats at `p`; `read_unaligned` needs no
        // alignment.
        f32x8::from(unsafe { (p as *const [f32; 8]).read_unaligned() })
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> f32x8 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: the caller guarantees `n < 8` readable floats at `p`.
        lanes[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        f32x8::from(lanes)
    }
    #[inline(always)]
    unsafe fn load_partial_or(self, p: *const f32, n: usize, fill: f32x8) -> f32x8 {
        let mut lanes = fill.to_array();
        // SAFETY: the caller guarantees `n < 8` readable floats at `p`.
        lanes[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        f32x8::from(lanes)
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable u16 at `p`.
        let h = unsafe { (p as *const [u16; 8]).read_unaligned() };
        f32x8::from(h.map(|b| f32::from_bits((b as u32) << 16)))
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(self, p: *const u16) -> (f32x8, f32x8) {
        // SAFETY: the caller guarantees 16 readable u16 at `p`.
        let h = unsafe { (p as *const [u16; 16]).read_unaligned() };
        let widen = |b: u16| f32::from_bits((b as u32) << 16);
        (
            f32x8::from(std::array::from_fn::<f32, 8, _>(|j| widen(h[2 * j]))),
            f32x8::from(std::array::from_fn::<f32, 8, _>(|j| widen(h[2 * j + 1]))),
        )
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable floats at `p`.
        unsafe { (p as *mut [f32; 8]).write_unaligned(v.to_array()) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: f32x8) {
        // SAFETY: the caller guarantees `n < 8` writable floats at `p`.
        unsafe { std::slice::from_raw_parts_mut(p, n) }.copy_from_slice(&v.to_array()[..n]);
    }

    #[inline(always)]
    fn fmadd(self, a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn add(self, a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    fn mul(self, a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    fn keep_first(self, v: f32x8, n: usize) -> f32x8 {
        let mut lanes = v.to_array();
        lanes[n..].fill(0.0);
        f32x8::from(lanes)
    }
    #[inline(always)]
    fn div(self, a: f32x8, b: f32x8) -> f32x8 {
        a / b
    }
    #[inline(always)]
    fn max(self, a: f32x8, b: f32x8) -> f32x8 {
        // `a > b ? a : b`: a NaN in either lane gives `b`, as x86 `maxps` does.
        a.simd_gt(b).bitselect(a, b)
    }
    #[inline(always)]
    fn reduce_add(self, v: f32x8) -> f32 {
        v.reduce_add()
    }
    #[inline(always)]
    fn reduce_max(self, v: f32x8) -> f32 {
        v.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
    }

    #[inline(always)]
    fn exp(self, x: f32x8) -> f32x8 {
        let not_nan = x.simd_eq(x);
        let xc = x.max(f32x8::splat(E::LO)).min(f32x8::splat(E::HI));
        let n = (xc * f32x8::splat(E::LOG2E)).round();
        let r = xc - n * f32x8::splat(E::LN2_HI);
        let r = r - n * f32x8::splat(E::LN2_LO);
        let mut q = f32x8::splat(E::Q[5]);
        for c in E::Q[..5].iter().rev() {
            q = q.mul_add(r, f32x8::splat(*c));
        }
        let p = (r * r).mul_add(q, r) + f32x8::splat(1.0);
        // p ∈ [0.70, 1.42]: the product is normal for −125 ≤ n ≤ 127.
        let normal = n.simd_ge(f32x8::splat(-125.0)) & n.simd_le(f32x8::splat(127.0));
        not_nan.bitselect(scale_by_pow2_where_normal(p, n, normal), x)
    }

    #[inline(always)]
    fn exp2(self, t: f32x8) -> f32x8 {
        let not_nan = t.simd_eq(t);
        let tc = t.max(f32x8::splat(X::LO)).min(f32x8::splat(X::HI));
        let n = floor_small(tc);
        let f = tc - n;
        let mut p = f32x8::splat(X::P[6]);
        for c in X::P[..6].iter().rev() {
            p = p.mul_add(f, f32x8::splat(*c));
        }
        // p ∈ [1, 2]: the product is normal (or +∞ at n = 127, p = 2) for −126 ≤ n ≤ 127.
        let normal = tc.simd_ge(f32x8::splat(-126.0)) & tc.simd_lt(f32x8::splat(128.0));
        not_nan.bitselect(scale_by_pow2_where_normal(p, n, normal), t)
    }

    #[inline(always)]
    fn acc64_zero(self) -> [f64x4; 2] {
        [f64x4::splat(0.0); 2]
    }
    #[inline(always)]
    fn acc64_add(self, acc: [f64x4; 2], v: f32x8) -> [f64x4; 2] {
        let a = v.to_array();
        let lo = f64x4::from([a[0] as f64, a[1] as f64, a[2] as f64, a[3] as f64]);
        let hi = f64x4::from([a[4] as f64, a[5] as f64, a[6] as f64, a[7] as f64]);
        [acc[0] + lo, acc[1] + hi]
    }
    #[inline(always)]
    fn acc64_reduce(self, acc: [f64x4; 2]) -> f64 {
        (acc[0] + acc[1]).reduce_add()
    }
}
