//! The one error type of the crate: every public function checks its inputs once, at the
//! boundary, and names the quantities that disagree.

use std::fmt;

/// Why a kernel refused its inputs. Nothing is written to any output when one is returned.
/// New variants may be added (match with a wildcard arm).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// Two dimensions that must agree do not, e.g. `a.cols` against `b.rows`.
    ShapeMismatch {
        /// What is being compared, e.g. `"a.cols vs b.rows"`.
        what: &'static str,
        /// The value the other operand requires.
        expected: usize,
        /// The value found.
        got: usize,
    },
    /// A buffer is too short for the view or vector that is laid over it.
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Elements the shape and strides need.
        needed: usize,
        /// Elements the buffer has.
        len: usize,
    },
    /// A mutable view whose strides would make two elements share one memory location.
    AliasingStrides {
        /// Rows of the view.
        rows: usize,
        /// Columns of the view.
        cols: usize,
        /// Row stride, in elements.
        row_stride: usize,
        /// Column stride, in elements.
        col_stride: usize,
    },
    /// Shape arithmetic (rows × strides, or a buffer's size in bytes) overflows `usize` or
    /// `isize::MAX`.
    SizeOverflow,
    /// An instruction set was requested that this CPU (or this build) does not have.
    IsaUnavailable(crate::Isa),
    /// A [`PackedB`](crate::PackedB) used on another ISA path than the one it was packed for
    /// (its layout follows that path's register tile).
    PackedForOtherIsa {
        /// The path B was packed for.
        packed: crate::Isa,
        /// The path of the call.
        requested: crate::Isa,
    },
    /// Any other invalid argument, described.
    InvalidArgument(&'static str),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::ShapeMismatch {
                what,
                expected,
                got,
            } => {
                write!(f, "shape mismatch: {what}: expected {expected}, got {got}")
            }
            KernelError::BufferTooSmall { what, needed, len } => {
                write!(
                    f,
                    "buffer `{what}` too small: needs {needed} elements, has {len}"
                )
            }
            KernelError::AliasingStrides {
                rows,
                cols,
                row_stride,
                col_stride,
            } => write!(
                f,
                "mutable {rows}x{cols} view with row stride {row_stride} and column stride \
                 {col_stride} maps two elements to one location"
            ),
            KernelError::SizeOverflow => write!(f, "shape arithmetic overflows usize"),
            KernelError::IsaUnavailable(isa) => {
                write!(f, "instruction set {isa} is not available on this CPU")
            }
            KernelError::PackedForOtherIsa { packed, requested } => write!(
                f,
                "B was packed for the {packed} path but the call runs {requested}: pack it \
                 with an Exec on {requested}"
            ),
            KernelError::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// Shorthand for results of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// `Ok(())` when `got == expected`, else a [`KernelError::ShapeMismatch`] naming `what`.
pub(crate) fn check_dim(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

/// `Ok(())` when `len >= needed`, else a [`KernelError::BufferTooSmall`] naming `what`.
pub(crate) fn check_len(what: &'static str, needed: usize, len: usize) -> Result<()> {
    if len >= needed {
        Ok(())
    } else {
        Err(KernelError::BufferTooSmall { what, needed, len })
    }
}
