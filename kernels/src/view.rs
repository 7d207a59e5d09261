//! Strided matrix views over caller-owned slices.
//!
//! A view is `rows × cols` elements of a slice, element `(i, j)` at offset
//! `i * row_stride + j * col_stride`. Row-major storage with leading dimension `ld` is
//! `(ld, 1)`, column-major is `(1, ld)`, and a transpose swaps the two strides. Strides are
//! validated once, when the view is built, so every kernel may index without bounds checks.
//! A [`MatMut`] additionally proves that no two of its elements share a location, and because it
//! borrows its slice mutably it can never overlap a [`MatRef`] input.

use crate::error::{KernelError, Result};

/// Number of elements a `rows × cols` view with these strides spans (0 when empty).
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    let last_row = (rows - 1)
        .checked_mul(row_stride)
        .ok_or(KernelError::SizeOverflow)?;
    let last_col = (cols - 1)
        .checked_mul(col_stride)
        .ok_or(KernelError::SizeOverflow)?;
    last_row
        .checked_add(last_col)
        .and_then(|x| x.checked_add(1))
        .ok_or(KernelError::SizeOverflow)
}

/// True when `(i, j) -> i*rs + j*cs` is injective on the view, by the sufficient rule that
/// the inner stride's whole extent fits inside one step of the outer stride.
fn strides_are_injective(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    // An empty view has no elements to collide (`row_major(data, m, 0)` has row stride 0).
    if rows == 0 || cols == 0 {
        return true;
    }
    if rows <= 1 || cols <= 1 {
        return (rows <= 1 || rs > 0) && (cols <= 1 || cs > 0);
    }
    let (inner, inner_n, outer) = if rs <= cs {
        (rs, rows, cs)
    } else {
        (cs, cols, rs)
    };
    inner > 0 && inner * (inner_n - 1) < outer
}

/// A read-only strided view of an f32 matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides (in elements). Fails if the slice is too short.
    /// Zero strides are allowed here (broadcast rows or columns).
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        let needed = span(rows, cols, row_stride, col_stride)?;
        crate::error::check_len("matrix view", needed, data.len())?;
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// Row-major `rows × cols` with leading dimension `cols`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// Column-major `rows × cols` with leading dimension `rows`.
    pub fn col_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }
    /// The underlying slice (element `(0, 0)` is its first element).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    /// Element `(i, j)`; panics when out of range (for tests and references, not hot loops).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "index out of view");
        self.data[i * self.row_stride + j * self.col_stride]
    }
    /// True when rows are contiguous (column stride 1).
    pub fn is_row_major(&self) -> bool {
        self.col_stride == 1 || self.cols <= 1
    }
}

/// A mutable strided view of an f32 matrix whose elements are pairwise distinct locations.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A view with explicit strides. Fails if the slice is too short or if two elements
    /// would alias.
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        let needed = span(rows, cols, row_stride, col_stride)?;
        crate::error::check_len("output matrix view", needed, data.len())?;
        if !strides_are_injective(rows, cols, row_stride, col_stride) {
            return Err(KernelError::AliasingStrides {
                rows,
                cols,
                row_stride,
                col_stride,
            });
        }
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// Row-major `rows × cols` with leading dimension `cols`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// Column-major `rows × cols` with leading dimension `rows`.
    pub fn col_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// A read-only reborrow.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        self.data
    }
}
