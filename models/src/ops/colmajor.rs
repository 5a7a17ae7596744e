//! A row-major GEMM as the column-major call cuBLAS takes: row-major `c[m, n] = op(a) *
//! op(b)` is column-major `c^T = op(b)^T * op(a)^T`, so the call's first operand is `b`.
//! Pure arithmetic on shapes, compiled everywhere so that its test (a column-major
//! reference GEMM with cuBLAS's semantics) runs without a GPU; `ops::cuda::gemm` and `gemm_batched` use it.

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

/// A strided-batched call ([`ColMajor`] per batch entry; entry `j` reads its first
/// operand at `j * stride_a`, its second at `j * stride_b` and writes at `j * stride_c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Batched {
    pub call: ColMajor,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Batched {
    /// How many elements of each buffer (first operand, second operand, output) the
    /// call reaches: one past the last element its final entry reads or writes
    /// (column-major, a transposed operand stored with its dims swapped). The CUDA
    /// caller checks these against its views before cuBLAS runs (which would not), after
    /// refusing an empty call (no entries or a zero dimension), which this assumes.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn reach(&self) -> [usize; 3] {
        let d = self.call;
        let end = |stride: usize, (rows, cols): (usize, usize), ld: usize| {
            (self.batch - 1) * stride + (rows - 1) + (cols - 1) * ld + 1
        };
        let stored = |t: bool, (r, c): (usize, usize)| if t { (c, r) } else { (r, c) };
        [
            end(self.stride_a, stored(d.trans_a, (d.m, d.k)), d.lda),
            end(self.stride_b, stored(d.trans_b, (d.k, d.n)), d.ldb),
            end(self.stride_c, (d.m, d.n), d.ldc),
        ]
    }
}

/// The convolution forward of a chunk of `nb` images as one strided-batched call that
/// writes NCHW directly: `y_j [co, p] = w [co, rows] * B_j [rows, p]`, where `B_j` is
/// image `j`'s block of the column matrix (`[rows, nb*p]`, row stride `nb*p`, block
/// offset `j*p`), or with `direct` (a 1x1 stride-1 unpadded convolution, `rows = c`)
/// image `j` itself (`[c, p]` at `j*c*p`): no im2col and no layout swap. The call's
/// first operand is `B` (cols or x), the second `w` (shared: stride 0), the output `y`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn conv_forward_batched(
    co: usize,
    rows: usize,
    p: usize,
    nb: usize,
    direct: bool,
) -> Batched {
    let (ld_b, stride_b) = if direct { (p, rows * p) } else { (nb * p, p) };
    Batched {
        // row-major y_j[co, p] = w[co, rows] * B_j[rows, p] is column-major
        // y_j^T[p, co] = B_j^T[p, rows] * w^T[rows, co]; a row-major matrix with row
        // stride s is a column-major one with leading dimension s
        call: ColMajor {
            trans_a: false,
            trans_b: false,
            m: p,
            n: co,
            k: rows,
            lda: ld_b,
            ldb: rows,
            ldc: p,
        },
        batch: nb,
        stride_a: stride_b,
        stride_b: 0,
        stride_c: co * p,
    }
}

/// The forward of a grouped convolution over a chunk of `nb` images as one
/// strided-batched call over the `groups` groups, each
/// `yt_i [cog, nb*p] = w_i [cog, rg] * cols_i [rg, nb*p]`: group `i`'s rows of the column matrix (`[groups*rg, nb*p]`, as
/// meal_im2col lays it out), of the weight (`[groups*cog, rg]`) and of the output
/// `yt` (`[groups*cog, nb*p]`, channel-major; a layout swap then makes it NCHW) are
/// contiguous blocks at `i` times a fixed stride. One call instead of one per group
/// (candle's grouped convolution runs a convolution per group, then concatenates).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn conv_forward_grouped(
    cog: usize,
    rg: usize,
    p: usize,
    nb: usize,
    groups: usize,
) -> Batched {
    let n = nb * p;
    Batched {
        // row-major yt_i[cog, n] = w_i[cog, rg] * cols_i[rg, n] is column-major
        // yt_i^T[n, cog] = cols_i^T[n, rg] * w_i^T[rg, cog]
        call: ColMajor {
            trans_a: false,
            trans_b: false,
            m: n,
            n: cog,
            k: rg,
            lda: n,
            ldb: rg,
            ldc: n,
        },
        batch: groups,
        stride_a: rg * n,
        stride_b: cog * rg,
        stride_c: cog * n,
    }
}

/// The input gradient of a 1x1 stride-1 unpadded one-group convolution over `nb`
/// images as one strided-batched call on the NCHW tensors themselves: `dx_j [c, p] =
/// w^T [c, co] * dy_j [co, p]`, no column matrix and no `col2im`. The call's first
/// operand is `dy` (entry `j` at `j*co*p`), the second `w` (`[co, c]`, shared: stride
/// 0, transposed), the output `dx` (entry `j` at `j*c*p`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn conv_backward_dx_pointwise(c: usize, co: usize, p: usize, nb: usize) -> Batched {
    Batched {
        // row-major dx_j[c, p] = w^T[c, co] * dy_j[co, p], with w stored [co, c]
        call: row_major(c, p, co, true, false),
        batch: nb,
        stride_a: co * p,
        stride_b: 0,
        stride_c: c * p,
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
            // the first operand of the call is b, the second a (ops::cuda::gemm)
            col_major_gemm(row_major(m, n, k, a_t, b_t), &b, &a, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|l| oa(i, l) * ob(l, j)).sum();
                    assert_eq!(c[i * n + j], want, "a_t={a_t} b_t={b_t} [{i},{j}]");
                }
            }
        }
    }

    /// cuBLAS `sgemmStridedBatched` semantics over whole buffers.
    fn batched_gemm(g: Batched, a: &[f32], b: &[f32], c: &mut [f32]) {
        for j in 0..g.batch {
            let (ao, bo, co) = (j * g.stride_a, j * g.stride_b, j * g.stride_c);
            // each entry's C is written in place inside the whole buffer
            let mut cj = c[co..].to_vec();
            col_major_gemm(g.call, &a[ao..], &b[bo..], &mut cj);
            let n = cj.len();
            c[co..co + n].copy_from_slice(&cj);
        }
    }

    /// `nb` NCHW images of `c` channels and `h x w` pixels under a `k x k` kernel with
    /// `stride` and `pad`: the reference both conv tests below read.
    struct Input {
        x: Vec<f32>,
        nb: usize,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    }

    impl Input {
        fn new(nb: usize, c: usize, (k, stride, pad): (usize, usize, usize)) -> Self {
            let (h, w) = (5, 4);
            let x = (0..nb * c * h * w).map(val).collect();
            Input {
                x,
                nb,
                c,
                h,
                w,
                k,
                stride,
                pad,
            }
        }
        fn ho(&self) -> usize {
            (self.h + 2 * self.pad - self.k) / self.stride + 1
        }
        fn wo(&self) -> usize {
            (self.w + 2 * self.pad - self.k) / self.stride + 1
        }
        /// The input of image `i`, channel `ch` under tap `(ky, kx)` of output `q`
        /// (0 in the padding).
        fn at(&self, i: usize, ch: usize, q: usize, ky: usize, kx: usize) -> f32 {
            let (oy, ox) = (q / self.wo(), q % self.wo());
            let y = (oy * self.stride + ky) as isize - self.pad as isize;
            let xx = (ox * self.stride + kx) as isize - self.pad as isize;
            if y < 0 || xx < 0 || y >= self.h as isize || xx >= self.w as isize {
                0.0
            } else {
                self.x[((i * self.c + ch) * self.h + y as usize) * self.w + xx as usize]
            }
        }
        /// The column matrix as meal_im2col lays it out: row (ch*k + ky)*k + kx, column
        /// img*p + oy*wo + ox.
        fn cols(&self) -> Vec<f32> {
            let (k, p) = (self.k, self.ho() * self.wo());
            let mut cols = vec![0f32; self.c * k * k * self.nb * p];
            for (r, row) in cols.chunks_mut(self.nb * p).enumerate() {
                let (ch, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                for (col, v) in row.iter_mut().enumerate() {
                    *v = self.at(col / p, ch, col % p, ky, kx);
                }
            }
            cols
        }
        /// Output channel `o` at `q` of image `i` by definition: weight row `o` over
        /// the `cg` input channels from `c0`.
        fn direct(&self, wt: &[f32], o: usize, c0: usize, cg: usize, i: usize, q: usize) -> f32 {
            let k = self.k;
            let mut sum = 0f32;
            for cl in 0..cg {
                for ky in 0..k {
                    for kx in 0..k {
                        sum +=
                            wt[((o * cg + cl) * k + ky) * k + kx] * self.at(i, c0 + cl, q, ky, kx);
                    }
                }
            }
            sum
        }
    }

    fn val(i: usize) -> f32 {
        ((i * 7919) % 23) as f32 - 11.0
    }

    /// The batched forward call against a direct convolution: through im2col (3x3,
    /// stride 2, padding 1) and straight from the input (1x1 stride 1).
    #[test]
    fn the_batched_conv_call_writes_nchw_directly() {
        for geom @ (k, stride, pad) in [(3usize, 2usize, 1usize), (1, 1, 0)] {
            let (nb, c, co) = (3, 2, 4);
            let input = Input::new(nb, c, geom);
            let (p, rows) = (input.ho() * input.wo(), c * k * k);
            let wt: Vec<f32> = (0..co * rows).map(|i| val(i + 50)).collect();
            let direct = k == 1 && stride == 1 && pad == 0;
            let g = conv_forward_batched(co, rows, p, nb, direct);
            let mut y = vec![f32::NAN; nb * co * p];
            let cols = input.cols();
            batched_gemm(g, if direct { &input.x } else { &cols }, &wt, &mut y);
            for i in 0..nb {
                for o in 0..co {
                    for q in 0..p {
                        let want = input.direct(&wt, o, 0, c, i, q);
                        assert_eq!(y[(i * co + o) * p + q], want, "k={k} [{i},{o},{q}]");
                    }
                }
            }
        }
    }

    /// The pointwise input-gradient call against its definition, `dx[i, ch, q] =
    /// sum_o w[o, ch] * dy[i, o, q]`.
    #[test]
    fn the_pointwise_dx_call_is_the_input_gradient() {
        let (nb, c, co, p) = (3, 5, 4, 7);
        let wt: Vec<f32> = (0..co * c).map(|i| val(i + 50)).collect();
        let dy: Vec<f32> = (0..nb * co * p).map(|i| val(i + 3)).collect();
        let call = conv_backward_dx_pointwise(c, co, p, nb);
        assert!(!call.call.trans_a && call.call.trans_b);
        let mut dx = vec![f32::NAN; nb * c * p];
        batched_gemm(call, &dy, &wt, &mut dx);
        for i in 0..nb {
            for ch in 0..c {
                for q in 0..p {
                    let want: f32 = (0..co)
                        .map(|o| wt[o * c + ch] * dy[(i * co + o) * p + q])
                        .sum();
                    assert_eq!(dx[(i * c + ch) * p + q], want, "[{i},{ch},{q}]");
                }
            }
        }
    }

    /// Each call reaches exactly its buffers: the last entry's last element is the
    /// buffer's last (the CUDA caller's bounds check then passes, and is tight).
    #[test]
    fn each_call_reaches_exactly_its_buffers() {
        let (nb, c, co, p, rows, groups) = (3, 6, 4, 7, 54, 2);
        let cases = [
            (
                conv_forward_batched(co, rows, p, nb, false),
                [rows * nb * p, co * rows, nb * co * p],
            ),
            (
                conv_forward_batched(co, c, p, nb, true),
                [nb * c * p, co * c, nb * co * p],
            ),
            (
                conv_forward_grouped(co / groups, rows / groups, p, nb, groups),
                [rows * nb * p, co * rows / groups, co * nb * p],
            ),
            (
                conv_backward_dx_pointwise(c, co, p, nb),
                [nb * co * p, co * c, nb * c * p],
            ),
        ];
        for (call, want) in cases {
            assert_eq!(call.reach(), want, "{call:?}");
        }
    }

    /// The grouped call, then the layout swap, against a direct grouped convolution
    /// (3x3 stride 2 padding 1 and 1x1, two and three groups).
    #[test]
    fn the_grouped_conv_call_is_a_grouped_convolution() {
        for (geom, groups) in [((3usize, 2usize, 1usize), 2usize), ((1, 1, 0), 3)] {
            let (nb, cg, cog) = (3, 2, 2);
            let (c, co, k) = (cg * groups, cog * groups, geom.0);
            let input = Input::new(nb, c, geom);
            let (p, rg) = (input.ho() * input.wo(), cg * k * k);
            let wt: Vec<f32> = (0..co * rg).map(|i| val(i + 50)).collect();
            let mut yt = vec![f32::NAN; co * nb * p];
            let call = conv_forward_grouped(cog, rg, p, nb, groups);
            batched_gemm(call, &input.cols(), &wt, &mut yt);
            for i in 0..nb {
                for o in 0..co {
                    for q in 0..p {
                        let want = input.direct(&wt, o, (o / cog) * cg, cg, i, q);
                        // yt is [co, nb*p]: the swap to NCHW reads (o, i*p + q)
                        let got = yt[o * nb * p + i * p + q];
                        assert_eq!(got, want, "k={k} groups={groups} [{i},{o},{q}]");
                    }
                }
            }
        }
    }
}
