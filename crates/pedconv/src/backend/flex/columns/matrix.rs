//! Matrix views of slices and the single-threaded (or all-threads) gemm the loops call.

use gemm::Parallelism;

use super::Real;

/// A matrix in a slice: element `(i, j)` at `offset + i·row_stride + j·column_stride`.
#[derive(Clone, Copy)]
pub(super) struct Matrix<'a, T> {
    pub(super) data: &'a [T],
    pub(super) offset: usize,
    pub(super) rows: usize,
    pub(super) columns: usize,
    pub(super) row_stride: usize,
    pub(super) column_stride: usize,
}

impl<'a, T> Matrix<'a, T> {
    /// Rows `offset / row_stride ..` of a row-major matrix of `columns` columns.
    pub(super) fn row_major(data: &'a [T], offset: usize, rows: usize, columns: usize) -> Self {
        Self {
            data,
            offset,
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    pub(super) fn transposed(self) -> Self {
        Self {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless every element lies in `data`.
    pub(super) fn check(&self, what: &str, len: usize) {
        if self.rows > 0 && self.columns > 0 {
            let last = self.offset
                + (self.rows - 1) * self.row_stride
                + (self.columns - 1) * self.column_stride;
            assert!(last < len, "{what} matrix out of its buffer");
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; `dst` is row-major with rows
/// `dst_row_stride` apart.
pub(super) fn matmul_into<T: Real>(
    dst: &mut [T],
    dst_row_stride: usize,
    lhs: Matrix<T>,
    rhs: Matrix<T>,
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert_eq!(lhs.columns, rhs.rows, "matmul: inner dimensions differ");
    let out = Matrix {
        data: &*dst,
        offset: 0,
        rows: lhs.rows,
        columns: rhs.columns,
        row_stride: dst_row_stride,
        column_stride: 1,
    };
    out.check("output", dst.len());
    lhs.check("left", lhs.data.len());
    rhs.check("right", rhs.data.len());
    // SAFETY: the three checks above keep every element gemm reads or writes inside its slice,
    // and `dst`, borrowed mutably, overlaps neither operand.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.columns,
            lhs.columns,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}
