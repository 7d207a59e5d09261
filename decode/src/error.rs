//! Errors of the decode crate: every public function validates shapes and configuration once,
//! at the boundary, and says which quantities disagree.

use std::fmt;

/// Why a decode call refused its inputs. Nothing is written to outputs or the cache on error.
/// Non-exhaustive, like [`kernels::KernelError`]: new checks may add variants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A kernel rejected its arguments.
    Kernel(kernels::KernelError),
    /// An invalid configuration (zero capacity, heads not divisible by KV heads, ...).
    InvalidConfig(String),
    /// A buffer has the wrong length.
    ShapeMismatch {
        /// What is being compared.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length found.
        got: usize,
    },
    /// A layer index past the cache's layers.
    LayerOutOfRange {
        /// Requested layer.
        layer: usize,
        /// Layers in the cache.
        layers: usize,
    },
    /// A rollback to a position the cache has not reached.
    RollbackBeyondEnd {
        /// Position asked for.
        to: usize,
        /// The cache's next position (the latest a rollback can reach).
        next: usize,
    },
    /// A rollback that would need entries the ring has already overwritten.
    RollbackUnavailable {
        /// Position asked for.
        to: usize,
        /// Earliest position a rollback can reach.
        earliest: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Kernel(e) => write!(f, "kernel error: {e}"),
            DecodeError::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            DecodeError::ShapeMismatch {
                what,
                expected,
                got,
            } => {
                write!(f, "shape mismatch: {what}: expected {expected}, got {got}")
            }
            DecodeError::LayerOutOfRange { layer, layers } => {
                write!(f, "layer {layer} out of range (cache has {layers} layers)")
            }
            DecodeError::RollbackBeyondEnd { to, next } => write!(
                f,
                "cannot roll back to position {to}: the cache's next position is only {next}"
            ),
            DecodeError::RollbackUnavailable { to, earliest } => write!(
                f,
                "cannot roll back to position {to}: the ring has overwritten entries that \
                 window needs (earliest reachable position is {earliest})"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<kernels::KernelError> for DecodeError {
    fn from(e: kernels::KernelError) -> Self {
        DecodeError::Kernel(e)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

pub(crate) fn check_eq(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(DecodeError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}
