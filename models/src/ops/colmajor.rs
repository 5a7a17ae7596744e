//! A row-major GEMM as the column-major call cuBLAS takes: row-major `c[m, n] = op(a) *
//! op(b)` is column-major `c^T = op(b)^T * op(a)^T`, so the call's first operand is `b`.
//! Pure arithmetic on shapes, compiled everywhere so that its test (a column-major
//! reference GEMM with cuBLAS's semantics) runs without a GPU; `ops::cuda::sgemm` uses it.

/// One column-major `C = op(A) * op(B)` call (`A` = the row-major `b`, `B` = `a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct ColMajor {
    /// `transa`: the first operand (`b`) is transposed.
    pub trans_a: bool,
    /// `transb`: the second operand (`a`) is transposed.
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// The call for row-major `c[m, n] = op(a) * op(b)`: `op(a)` is `[m, k]`, stored `[k, m]`
/// when `a_t`; `op(b)` is `[k, n]`, stored `[n, k]` when `b_t`; `c` dense.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn row_major(m: usize, n: usize, k: usize, a_t: bool, b_t: bool) -> ColMajor {
    ColMajor {
        trans_a: b_t,
        trans_b: a_t,
        m: n,
        n: m,
        k,
        // a row-major [r, c] matrix is a column-major [c, r] one with leading dim c
        lda: if b_t { k } else { n },
        ldb: if a_t { m } else { k },
        ldc: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS `sgemm` semantics (column-major, `op` by the flags, alpha 1, beta 0).
    fn col_major_gemm(g: ColMajor, a: &[f32], b: &[f32], c: &mut [f32]) {
        let at = |i: usize, l: usize| {
            if g.trans_a {
                a[l + i * g.lda]
            } else {
                a[i + l * g.lda]
            }
        };
        let bt = |l: usize, j: usize| {
            if g.trans_b {
                b[j + l * g.ldb]
            } else {
                b[l + j * g.ldb]
            }
        };
        for i in 0..g.m {
            for j in 0..g.n {
                c[i + j * g.ldc] = (0..g.k).map(|l| at(i, l) * bt(l, j)).sum();
            }
        }
    }

    /// Every transpose combination, including the three products of the CUDA
    /// convolution (forward `w * cols`, `dy * cols^T`, `w^T * dy`), against row-major
    /// loops.
    #[test]
    fn the_call_computes_the_row_major_product() {
        let (m, n, k) = (3, 5, 4);
        let val = |i: usize| ((i * 7919) % 23) as f32 - 11.0;
        for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 100)).collect();
            // op(a)[i][l], op(b)[l][j] read from their row-major storage
            let oa = |i: usize, l: usize| if a_t { a[l * m + i] } else { a[i * k + l] };
            let ob = |l: usize, j: usize| if b_t { b[j * k + l] } else { b[l * n + j] };
            let mut c = vec![f32::NAN; m * n];
            // the first operand of the call is b, the second a (ops::cuda::sgemm)
            col_major_gemm(row_major(m, n, k, a_t, b_t), &b, &a, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|l| oa(i, l) * ob(l, j)).sum();
                    assert_eq!(c[i * n + j], want, "a_t={a_t} b_t={b_t} [{i},{j}]");
                }
            }
        }
    }
}
