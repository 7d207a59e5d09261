//! Root package of the workspace. It holds no code of its own: it exists so that the
//! integration tests in `tests/` and the criterion benches in `benches/` exercise the
//! `kernels` and `decode` crates through their public APIs only.

pub use decode;
pub use kernels;
