//! Strided f32 GEMM through the `gemm` crate (the one candle's CPU matmul uses), with
//! the choice of threading left to the caller: the crate parallelises over output
//! blocks, which barely helps a matrix with 64 rows (measured 39 -> 42 GFLOP/s from one
//! to two threads, `cargo bench -p meal-models --bench gemm`), so convolutions run
//! whole images in parallel instead, each on one thread.

/// A row-major strided matrix: pointer, (row stride, column stride).
pub(crate) type Mat = (*const f32, (usize, usize));

/// `dst = lhs * rhs` (`m x k` times `k x n`), over rayon's threads when `parallel`.
///
/// # Safety
/// Every pointer must address its whole strided matrix, and `dst` (`m x n`, strides
/// `dst_s`) must not overlap the inputs. `dst` may be uninitialised: it is written, not
/// read.
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_s: (usize, usize),
    (lhs, lhs_s): Mat,
    (rhs, rhs_s): Mat,
    parallel: bool,
) {
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_s.1 as isize,
        dst_s.0 as isize,
        false,
        lhs,
        lhs_s.1 as isize,
        lhs_s.0 as isize,
        rhs,
        rhs_s.1 as isize,
        rhs_s.0 as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}
