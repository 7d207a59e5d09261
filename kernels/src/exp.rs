//! Vectorised `exp` over slices, on the runtime-dispatched path.
//!
//! Algorithm (identical on every path, see `arch::simd::exp_consts`):
//! 1. clamp x to [−104, 89] (NaN passes through): exp(−104) already rounds to +0 and exp(89)
//!    overflows, so no result changes;
//! 2. n = round(x·log₂e); r = x − n·ln2 with ln2 split hi/lo (Cody–Waite), |r| ≤ ln2/2;
//! 3. eʳ = 1 + r + r²·q(r), q the degree-5 Taylor polynomial of (eʳ−1−r)/r² (truncation 5e-9);
//! 4. scale by 2ⁿ with a single rounding (AVX-512 `vscalefps`; elsewhere 2ⁿ¹·2ⁿ² with both
//!    factors normal), so subnormal results are correctly rounded, not flushed.
//!
//! Measured over every finite f32 input (`cargo run --release -p kernels --example exp_ulp`),
//! against `f64::exp` rounded to f32: at most 1 ulp on every path, the portable one included
//! (see the README for the exact counts). Specials: exp(−∞) = +0 exactly, exp(+∞) = +∞,
//! exp(NaN) = NaN; results overflow to +∞ for x > 88.72283 and are exactly +0 for x < −103.97208.

use crate::arch::{Simd, with_simd};
use crate::error::{Result, check_dim};
use crate::exec::Exec;

/// `output[i] = exp(input[i])` on the exec's ISA path (sequential).
pub fn exp(exec: &Exec, input: &[f32], output: &mut [f32]) -> Result<()> {
    check_dim(
        "exp output length vs input length",
        input.len(),
        output.len(),
    )?;
    map(exec, Base::E, input, output);
    Ok(())
}

/// `output[i] = 2^input[i]` on the exec's ISA path (sequential): the cheaper exponential the
/// softmax uses; at most 1 ulp on the AVX paths (2 on the portable one without FMA), exact at
/// integers in the normal and subnormal range, 2^(−∞) = +0, 2^(+∞) = +∞, NaN stays NaN.
pub fn exp2(exec: &Exec, input: &[f32], output: &mut [f32]) -> Result<()> {
    check_dim(
        "exp2 output length vs input length",
        input.len(),
        output.len(),
    )?;
    map(exec, Base::Two, input, output);
    Ok(())
}

/// Which exponential [`map`] applies.
#[derive(Clone, Copy)]
enum Base {
    E,
    Two,
}

fn map(exec: &Exec, base: Base, input: &[f32], output: &mut [f32]) {
    with_simd!(exec.isa(), |s| s.vectorize(
        #[inline(always)]
        || match base {
            Base::E => map_lanes(
                s,
                input,
                output,
                #[inline(always)]
                |x| s.exp(x)
            ),
            Base::Two => map_lanes(
                s,
                input,
                output,
                #[inline(always)]
                |x| s.exp2(x)
            ),
        }
    ));
}

/// Applies `f` to every vector of `input` (the closures passed in must be `#[inline(always)]`:
/// a closure is compiled without the ISA's target features unless inlined into the caller).
#[inline(always)]
fn map_lanes<S: Simd>(s: S, input: &[f32], output: &mut [f32], f: impl Fn(S::V) -> S::V) {
    let lanes = S::LANES;
    let mut src = input.chunks_exact(lanes);
    let mut dst = output.chunks_exact_mut(lanes);
    for (i, o) in (&mut src).zip(&mut dst) {
        // SAFETY: both chunks hold exactly `lanes` floats.
        unsafe { s.store(o.as_mut_ptr(), f(s.load(i.as_ptr()))) };
    }
    let (i, o) = (src.remainder(), dst.into_remainder());
    if !i.is_empty() {
        // SAFETY: both remainders hold `i.len() < lanes` floats.
        unsafe {
            let v = f(s.load_partial(i.as_ptr(), i.len()));
            s.store_partial(o.as_mut_ptr(), i.len(), v);
        }
    }
}
