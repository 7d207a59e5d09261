//! SIMD f32 kernels for LLM decode: matrix multiply and softmax.
pub mod arch;
mod error;
mod exec;
mod gemm;
pub mod reference;
mod view;
pub use arch::Isa;
pub use error::{KernelError, Result};
pub use exec::{Exec, Parallelism};
pub use gemm::{GemmWorkspace, gemm};
pub use view::{MatMut, MatRef};
