//! Convolution: candle 0.11 back-propagates conv2d into its input with a naive
//! `conv_transpose2d` loop and runs the weight gradient through naive kernels too; a
//! profile of a demo train step put ~50% of the time in `vec_dot_f32` and strided maps and
//! ~2% in GEMM. Here a convolution is `im2col` (our op, whose backward is `col2im`)
//! followed by candle's GEMM-backed batched matmul, so forward, input gradient and
//! weight gradient are all GEMMs plus one gather/scatter. 1x1 stride-1 convolutions
//! skip `im2col` entirely (a reshape). Grouped convolutions, non-f32 tensors and
//! non-CPU devices keep candle's `conv2d`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, par_fill};
use crate::error::Result;

/// Geometry of an `im2col` over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(dims: &[usize], k: usize, stride: usize, pad: usize) -> candle_core::Result<Self> {
        let [b, c, h, w] = *dims else {
            candle_core::bail!("im2col: expected NCHW, got {dims:?}")
        };
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!("im2col: {h}x{w} input, kernel {k}, padding {pad}, stride {stride}");
        }
        Ok(Geom {
            b,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }
    /// Rows of the column matrix of one image (`c * k * k`).
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// At stride 1, the output columns `lo..hi` (`lo <= hi`) of kernel column `kx` that
    /// see the input row (from input column `lo + kx - pad`); the rest see padding.
    fn run(&self, kx: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kx).min(self.wo);
        let hi = (self.w + self.pad).saturating_sub(kx).min(self.wo).max(lo);
        (lo, hi)
    }
    /// Columns (`ho * wo`).
    fn cols(&self) -> usize {
        self.ho * self.wo
    }
}

/// `[B, C, H, W]` to `[C*k*k, B*Ho*Wo]`: row `(c, ky, kx)` holds the input under that
/// kernel tap for every (image, output position), zero in the padding. Images side by
/// side make the convolution one GEMM whose weight gradient needs no reduction.
fn im2col(g: &Geom, x: &[f32]) -> Vec<f32> {
    use std::mem::MaybeUninit;
    fn zero(o: &mut [MaybeUninit<f32>]) {
        for v in o {
            v.write(0.0);
        }
    }
    let g = *g;
    let cols = g.cols();
    let bn = g.b * cols;
    // one task per channel: its k*k rows of the column matrix; every element is written
    // once (padding as explicit zeros), so the buffer is not zeroed first
    par_fill(g.rows() * bn, g.k * g.k * bn, |c, dst| {
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = &mut dst[(ky * g.k + kx) * bn..(ky * g.k + kx + 1) * bn];
                for b in 0..g.b {
                    let plane = &x[(b * g.c + c) * g.h * g.w..(b * g.c + c + 1) * g.h * g.w];
                    let row = &mut row[b * cols..(b + 1) * cols];
                    for oy in 0..g.ho {
                        let o = &mut row[oy * g.wo..(oy + 1) * g.wo];
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            zero(o);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        if g.stride == 1 {
                            // a contiguous run of the source row, zeros either side
                            let (lo, hi) = g.run(kx);
                            zero(&mut o[..lo]);
                            if lo < hi {
                                let s0 = lo + kx - g.pad;
                                for (d, &v) in o[lo..hi].iter_mut().zip(&src[s0..]) {
                                    d.write(v);
                                }
                            }
                            zero(&mut o[hi..]);
                            continue;
                        }
                        for (ox, v) in o.iter_mut().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            v.write(if ix >= 0 && ix < g.w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
    })
}

/// The adjoint of [`im2col`]: scatter-add `[C*k*k, B*Ho*Wo]` back to `[B, C, H, W]`.
fn col2im(g: &Geom, cols_m: &[f32]) -> Vec<f32> {
    let g = *g;
    let cols = g.cols();
    let bn = g.b * cols;
    let mut out = vec![0f32; g.b * g.c * g.h * g.w];
    out.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(bc, plane)| {
            let (b, c) = (bc / g.c, bc % g.c);
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let r = (c * g.k + ky) * g.k + kx;
                    let row = &cols_m[r * bn + b * cols..r * bn + (b + 1) * cols];
                    for oy in 0..g.ho {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let src = &row[oy * g.wo..(oy + 1) * g.wo];
                        if g.stride == 1 {
                            // a contiguous run, as in Im2Col (vectorises)
                            let (lo, hi) = g.run(kx);
                            if lo < hi {
                                let s0 = lo + kx - g.pad;
                                for (d, v) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                                    *d += v;
                                }
                            }
                            continue;
                        }
                        for (ox, v) in src.iter().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if ix >= 0 && ix < g.w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        });
    out
}

/// Output planes at least this large take one GEMM per image, written straight into
/// the NCHW output; smaller ones (late layers) one GEMM over the whole batch, whose
/// `[Co, B*Ho*Wo]` result is then scattered into NCHW (a per-image GEMM with few columns
/// runs far below the GEMM's peak).
const PER_IMAGE_MIN: usize = 784;

/// `dst = (read_dst ? dst : 0) + lhs * rhs` for row-major strided f32 matrices
/// (`m x k` times `k x n`), through the `gemm` crate candle itself uses.
///
/// # Safety
/// Every pointer must address its whole strided matrix, and `dst` must not overlap the
/// inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    read_dst: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        read_dst,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// The column matrix of a convolution: `[C*k*k, B*Ho*Wo]` from [`im2col`], or for a
/// 1x1 stride-1 convolution the input itself (image `b` is the `[C, H*W]` block at
/// `b*C*H*W`).
struct Cols<'a> {
    data: std::borrow::Cow<'a, [f32]>,
    pointwise: bool,
    g: Geom,
}

impl<'a> Cols<'a> {
    fn new(g: Geom, x: &'a [f32]) -> Self {
        let pointwise = g.k == 1 && g.stride == 1 && g.pad == 0;
        let data = if pointwise {
            std::borrow::Cow::Borrowed(x)
        } else {
            std::borrow::Cow::Owned(im2col(&g, x))
        };
        Cols { data, pointwise, g }
    }
    /// Pointer and row stride of image `b`'s `[C*k*k, Ho*Wo]` block.
    fn image(&self, b: usize) -> (*const f32, usize) {
        let (rows, p) = (self.g.rows(), self.g.cols());
        if self.pointwise {
            (self.data[b * rows * p..].as_ptr(), p)
        } else {
            (self.data[b * p..].as_ptr(), self.g.b * p)
        }
    }
    /// The whole batch as one `[C*k*k, B*Ho*Wo]` matrix (a transposed copy when
    /// pointwise).
    fn batch(&self) -> std::borrow::Cow<'_, [f32]> {
        if self.pointwise {
            std::borrow::Cow::Owned(nchw_to_cbn(
                &self.data,
                self.g.b,
                self.g.rows(),
                self.g.cols(),
            ))
        } else {
            std::borrow::Cow::Borrowed(&self.data[..])
        }
    }
}

/// `[B, C, P]` to `[C, B*P]`.
fn nchw_to_cbn(x: &[f32], b: usize, c: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * c * p];
    out.par_chunks_mut(b * p).enumerate().for_each(|(ch, row)| {
        for i in 0..b {
            row[i * p..(i + 1) * p].copy_from_slice(&x[(i * c + ch) * p..(i * c + ch + 1) * p]);
        }
    });
    out
}

/// `[C, B*P]` to `[B, C, P]`.
fn cbn_to_nchw(y: &[f32], b: usize, c: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * c * p];
    out.par_chunks_mut(p).enumerate().for_each(|(bc, row)| {
        let (i, ch) = (bc / c, bc % c);
        row.copy_from_slice(&y[ch * b * p + i * p..ch * b * p + (i + 1) * p]);
    });
    out
}

/// Convolution of `(x, w)` as one op: the column matrix lives only inside the forward
/// and the backward (recomputed there), so the graph keeps `x`, `w` and `y` alone,
/// as PyTorch's convolution does, not the 9x-larger columns and a transposed copy.
struct Conv(Geom);

/// `[dx..., dw...]` of [`Conv`] from `(x, w, dy)`.
struct ConvBackward(Geom);

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "meal-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (rows, p, co) = (g.rows(), g.cols(), l2.dims()[0]);
        let cols = Cols::new(g, x);
        let y = if p >= PER_IMAGE_MIN || g.b == 1 {
            let mut y = vec![0f32; g.b * co * p];
            for b in 0..g.b {
                let (rhs, rhs_rs) = cols.image(b);
                // SAFETY: w is [co, rows], image b's columns [rows, p] with row stride
                // rhs_rs, y's block b [co, p]; y is a fresh buffer.
                unsafe {
                    sgemm(
                        (co, p, rows),
                        y[b * co * p..].as_mut_ptr(),
                        (p, 1),
                        false,
                        w.as_ptr(),
                        (rows, 1),
                        rhs,
                        (rhs_rs, 1),
                    )
                }
            }
            y
        } else {
            let all = cols.batch();
            let bn = g.b * p;
            let mut t = vec![0f32; co * bn];
            // SAFETY: w [co, rows] times all [rows, bn] into the fresh t [co, bn]
            unsafe {
                sgemm(
                    (co, bn, rows),
                    t.as_mut_ptr(),
                    (bn, 1),
                    false,
                    w.as_ptr(),
                    (rows, 1),
                    all.as_ptr(),
                    (bn, 1),
                )
            }
            cbn_to_nchw(&t, g.b, co, p)
        };
        Ok((CpuStorage::F32(y), Shape::from((g.b, co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &ConvBackward(self.0))?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dw = packed.narrow(0, nx, nw)?.reshape(w.dims())?;
        // A view keeps the whole packed buffer alive, and the weight gradient lives until
        // the optimizer step: copy the smaller part out, so the buffer dies with the
        // larger (peak memory of a ResNet-50 step: 3.3 -> 2.x GB).
        Ok(if nw <= nx {
            (Some(dx), Some(dw.force_contiguous()?))
        } else {
            (Some(dx.force_contiguous()?), Some(dw))
        })
    }
}

impl candle_core::CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "meal-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (x, w, dy) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let (rows, p, co) = (g.rows(), g.cols(), l2.dims()[0]);
        if dy.len() != g.b * co * p {
            candle_core::bail!(
                "conv2d backward: gradient {:?} for output {co}x{p}",
                l3.dims()
            );
        }
        let cols = Cols::new(g, x);
        let bn = g.b * p;
        let nx = g.b * g.c * g.h * g.w;
        let mut out = vec![0f32; nx + co * rows];
        let (dx_out, dw) = out.split_at_mut(nx);
        // dcols [rows, B*p] (for pointwise, dx itself in [B, C, p])
        let mut dcols = vec![0f32; if cols.pointwise { 0 } else { rows * bn }];
        if p >= PER_IMAGE_MIN || g.b == 1 {
            for b in 0..g.b {
                let (c_b, c_rs) = cols.image(b);
                let dy_b = dy[b * co * p..].as_ptr();
                // SAFETY (both calls): dy_b [co, p]; image b's columns [rows, p] with row
                // stride c_rs, read transposed as [p, rows]; w [co, rows] read
                // transposed; dw [co, rows] and the dcols/dx blocks are fresh buffers.
                unsafe {
                    sgemm(
                        (co, rows, p),
                        dw.as_mut_ptr(),
                        (rows, 1),
                        b > 0,
                        dy_b,
                        (p, 1),
                        c_b,
                        (1, c_rs),
                    );
                    let (dst, dst_rs) = if cols.pointwise {
                        (dx_out[b * rows * p..].as_mut_ptr(), p)
                    } else {
                        (dcols[b * p..].as_mut_ptr(), bn)
                    };
                    sgemm(
                        (rows, p, co),
                        dst,
                        (dst_rs, 1),
                        false,
                        w.as_ptr(),
                        (1, rows),
                        dy_b,
                        (p, 1),
                    );
                }
            }
        } else {
            let all = cols.batch();
            let dyt = nchw_to_cbn(dy, g.b, co, p);
            let mut dxt = vec![0f32; if cols.pointwise { rows * bn } else { 0 }];
            let dst = if cols.pointwise { &mut dxt } else { &mut dcols };
            // SAFETY: dyt [co, bn], all [rows, bn] read transposed, w [co, rows] read
            // transposed; dw and dst are fresh buffers of the right sizes.
            unsafe {
                sgemm(
                    (co, rows, bn),
                    dw.as_mut_ptr(),
                    (rows, 1),
                    false,
                    dyt.as_ptr(),
                    (bn, 1),
                    all.as_ptr(),
                    (1, bn),
                );
                sgemm(
                    (rows, bn, co),
                    dst.as_mut_ptr(),
                    (bn, 1),
                    false,
                    w.as_ptr(),
                    (1, rows),
                    dyt.as_ptr(),
                    (bn, 1),
                );
            }
            if cols.pointwise {
                dx_out.copy_from_slice(&cbn_to_nchw(&dxt, g.b, rows, p));
            }
        }
        if !cols.pointwise {
            dx_out.copy_from_slice(&col2im(&g, &dcols));
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + co * rows)))
    }
}

/// 2-D convolution of NCHW `x` with `w` (`[Co, C/groups, k, k]`), square kernel,
/// `stride`, zero `padding`, no dilation. Same result as `x.conv2d(w, padding, stride, 1,
/// groups)`; on CPU with f32 and one group, our [`Conv`] op (see the module docs).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (_, ci, kh, kw) = w.dims4()?;
    let fast =
        x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && groups == 1 && kh == kw;
    if !fast {
        return Ok(x.conv2d(w, padding, stride, 1, groups)?);
    }
    let g = Geom::new(x.dims(), kh, stride, padding)?;
    if g.c != ci {
        return Err(candle_core::Error::Msg(format!(
            "conv2d: input has {} channels, weight expects {ci}",
            g.c
        ))
        .into());
    }
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv(g))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward and both gradients equal candle's reference conv2d (itself checked
    /// against PyTorch by the model fixtures) over odd sizes, strides, paddings,
    /// different H/W parity and batch 1.
    #[test]
    fn matches_candle_conv_forward_and_backward() {
        let dev = Device::Cpu;
        for &(b, c, h, w, co, k, s, p) in &[
            (1, 3, 7, 9, 4, 3, 1, 1),
            (2, 3, 8, 7, 5, 3, 2, 1),
            (2, 4, 9, 6, 3, 1, 2, 0),
            (3, 2, 5, 5, 2, 1, 1, 0),
            (1, 3, 11, 10, 4, 7, 2, 3),
            (2, 2, 4, 5, 3, 3, 2, 0),
            (2, 3, 6, 5, 4, 3, 1, 1),
            (2, 2, 5, 6, 3, 5, 1, 1),
            // planes of at least PER_IMAGE_MIN outputs: one GEMM per image
            (2, 2, 30, 29, 3, 3, 1, 1),
            (2, 3, 28, 29, 4, 1, 1, 0),
            (2, 2, 58, 56, 3, 3, 2, 1),
            (1, 3, 5, 4, 2, 1, 1, 0),
            // kernel wider than the image: taps that see only padding
            (1, 1, 3, 1, 2, 5, 1, 2),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &dev).unwrap()).unwrap();
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p, 1).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(
                max_abs(&ours, &theirs) < 1e-4,
                "forward {b} {c} {h} {w} k{k} s{s} p{p}"
            );
            // a loss that weights every output differently
            let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            // candle's own backward fails for stride 2 when H and W differ in parity
            // (REFERENCE.md §5); those shapes are checked by finite differences below
            let Ok(g2) = (theirs * &r).unwrap().sum_all().unwrap().backward() else {
                assert!(s == 2 && h % 2 != w % 2, "candle failed on {b} {c} {h} {w}");
                continue;
            };
            for v in [&x, &wt] {
                let a = g1.get(v.as_tensor()).unwrap();
                let e = g2.get(v.as_tensor()).unwrap();
                assert!(max_abs(a, e) < 1e-3, "grad {b} {c} {h} {w} k{k} s{s} p{p}");
            }
        }
    }

    /// Both gradients against central finite differences (stride 2, H and W of
    /// different parity, padding: the shape candle cannot back-propagate).
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x0: Vec<f32> = (0..2 * 2 * 5 * 4)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let wt = Tensor::randn(0f32, 1.0, (3, 2, 3, 3), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 3, 2), &dev).unwrap();
        let f = |v: &[f32]| -> f64 {
            let x = Tensor::from_slice(v, (2, 2, 5, 4), &dev).unwrap();
            let y = conv2d(&x, &wt, 2, 1, 1).unwrap();
            (y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let x = Var::from_tensor(&Tensor::from_slice(&x0, (2, 2, 5, 4), &dev).unwrap()).unwrap();
        let y = conv2d(x.as_tensor(), &wt, 2, 1, 1).unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for i in (0..x0.len()).step_by(3) {
            let (mut a, mut b) = (x0.clone(), x0.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (f(&a) - f(&b)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 1e-2,
                "x[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
        // weight gradient
        let xt = Tensor::from_slice(&x0, (2, 2, 5, 4), &dev).unwrap();
        let w0 = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fw = |v: &[f32]| -> f64 {
            let w = Tensor::from_slice(v, (3, 2, 3, 3), &dev).unwrap();
            let y = conv2d(&xt, &w, 2, 1, 1).unwrap();
            (y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let wv = Var::from_tensor(&wt).unwrap();
        let y = conv2d(&xt, wv.as_tensor(), 2, 1, 1).unwrap();
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g
            .get(wv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in (0..w0.len()).step_by(2) {
            let (mut a, mut b) = (w0.clone(), w0.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (fw(&a) - fw(&b)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 1e-2,
                "w[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
}
