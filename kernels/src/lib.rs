//! SIMD f32 kernels for LLM decode: matrix multiply and softmax.
#![warn(missing_docs)]

pub mod arch;
mod error;
mod exec;
mod exp;
mod gemm;
mod kv;
pub mod reference;
mod softmax;
mod view;
pub use arch::Isa;
pub use error::{KernelError, Result};
pub use exec::{Exec, Parallelism};
pub use exp::exp;
pub use gemm::{GemmWorkspace, gemm};
pub use kv::{
    Bf16, KvDtype, KvRows, MAX_ATTEND_BLOCK_ROWS, accumulate_rows, attend_block_rows,
    attend_partial, attend_scratch_len, dot_rows, scale_slice, to_bf16,
};
pub use softmax::{Mask, OnlineSoftmax, SoftmaxOptions, softmax_rows, softmax_rows_into};
pub use view::{MatMut, MatRef};
