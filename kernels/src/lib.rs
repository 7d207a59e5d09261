//! SIMD f32 kernels for LLM decode: matrix multiply, softmax and the streaming attention
//! primitives, on AVX-512, AVX2+FMA or a portable path chosen at run time.
//!
//! # Layout of the crate
//! - [`arch`]: every intrinsic. [`Isa`] names a path; a small vector vocabulary is implemented
//!   once per ISA and the kernels are written against it once.
//! - [`gemm`]: `C = α·A·B + β·C` over strided [`MatRef`]/[`MatMut`] views: BLIS-style packing
//!   into a caller-owned [`GemmWorkspace`], register-blocked micro-kernels, a streaming path for
//!   one output row (decode's `x·W` and `q·Kᵀ`).
//! - [`softmax_rows`], [`exp`], [`OnlineSoftmax`]: numerically stable softmax with documented
//!   results for masked, infinite and NaN inputs, and its block-by-block form.
//! - [`attend_partial`], [`dot_rows`], [`accumulate_rows`]: attention over f32 or [`Bf16`] rows.
//!
//! Every call takes an [`Exec`]: the ISA (detected, or forced for comparisons) and whether the
//! call may use the current rayon pool. Nothing here allocates per call once the caller's
//! workspace has grown, and nothing creates threads.
//!
//! ```
//! use kernels::{Exec, GemmWorkspace, MatMut, MatRef, SoftmaxOptions, gemm, softmax_rows};
//! // scores (2×3) = q (2×4) · Kᵀ, with K stored row-major (3 keys × 4), viewed transposed.
//! let q = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
//! let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
//! let mut scores = [f32::NAN; 6]; // β = 0: C is never read
//! let exec = Exec::new();
//! let mut ws = GemmWorkspace::new();
//! gemm(&exec, 1.0, MatRef::row_major(&q, 2, 4)?, MatRef::row_major(&k, 3, 4)?.t(), 0.0,
//!      &mut MatMut::row_major(&mut scores, 2, 3)?, &mut ws)?;
//! assert_eq!(scores, [1.0, 5.0, 9.0, 2.0, 6.0, 10.0]);
//! softmax_rows(&exec, &mut scores, 3, SoftmaxOptions::default())?;
//! assert!((scores[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! # Ok::<(), kernels::KernelError>(())
//! ```
#![warn(missing_docs)]

pub mod arch;
mod buffer;
mod error;
mod exec;
mod exp;
mod gemm;
mod kv;
pub mod reference;
mod softmax;
mod view;
pub use arch::Isa;
pub use buffer::{HUGE_PAGE_BYTES, LargeBuffer, Zeroable};
pub use error::{KernelError, Result};
pub use exec::{Exec, Parallelism};
pub use exp::{exp, exp2};
pub use gemm::{GemmWorkspace, PackedB, gemm, gemm_prepacked};
pub use kv::{
    Bf16, KvDtype, KvRows, MAX_ATTEND_BLOCK_ROWS, accumulate_rows, attend_block_rows,
    attend_partial, attend_scratch_len, dot_rows, scale_slice, to_bf16,
};
pub use softmax::{Mask, OnlineSoftmax, SoftmaxOptions, softmax_rows, softmax_rows_into};
pub use view::{MatMut, MatRef};
