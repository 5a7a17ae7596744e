//! Convolution: candle 0.11 back-propagates conv2d into its input with a naive
//! `conv_transpose2d` loop and runs the weight gradient through naive kernels too; a
//! profile of a demo train step put ~50% of the time in `vec_dot_f32` and strided maps and
//! ~2% in GEMM. Here a convolution is `im2col` (our op, whose backward is `col2im`)
//! followed by candle's GEMM-backed batched matmul, so forward, input gradient and
//! weight gradient are all GEMMs plus one gather/scatter. 1x1 stride-1 convolutions
//! skip `im2col` entirely (a reshape). Grouped convolutions, non-f32 tensors and
//! non-CPU devices keep candle's `conv2d`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;
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
    /// Columns (`ho * wo`).
    fn cols(&self) -> usize {
        self.ho * self.wo
    }
}

/// `[B, C, H, W]` to `[C*k*k, B*Ho*Wo]`: row `(c, ky, kx)` holds the input under that
/// kernel tap for every (image, output position), zero in the padding. Images side by
/// side make the convolution one GEMM whose weight gradient needs no reduction.
struct Im2Col(Geom);

/// The adjoint of [`Im2Col`]: scatter-add `[C*k*k, B*Ho*Wo]` back to `[B, C, H, W]`.
struct Col2Im(Geom);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "meal-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(s, l)?;
        let (rows, cols) = (g.rows(), g.cols());
        let bn = g.b * cols;
        let mut out = vec![0f32; rows * bn];
        // one task per channel: its k*k rows of the column matrix
        out.par_chunks_mut(g.k * g.k * bn)
            .enumerate()
            .for_each(|(c, dst)| {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let row = &mut dst[(ky * g.k + kx) * bn..(ky * g.k + kx + 1) * bn];
                        for b in 0..g.b {
                            let plane =
                                &x[(b * g.c + c) * g.h * g.w..(b * g.c + c + 1) * g.h * g.w];
                            let row = &mut row[b * cols..(b + 1) * cols];
                            for oy in 0..g.ho {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                if iy < 0 || iy >= g.h as isize {
                                    continue; // stays zero
                                }
                                let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                                let o = &mut row[oy * g.wo..(oy + 1) * g.wo];
                                if g.stride == 1 {
                                    // a contiguous run of the source row
                                    let lo = g.pad.saturating_sub(kx);
                                    let hi = (g.w + g.pad - kx).min(g.wo);
                                    if lo < hi {
                                        let s0 = lo + kx - g.pad;
                                        o[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                                    }
                                    continue;
                                }
                                for (ox, v) in o.iter_mut().enumerate() {
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if ix >= 0 && ix < g.w as isize {
                                        *v = src[ix as usize];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, bn))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "meal-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols_m = contiguous_f32(s, l)?;
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
                                let lo = g.pad.saturating_sub(kx);
                                let hi = (g.w + g.pad - kx).min(g.wo);
                                if lo < hi {
                                    let s0 = lo + kx - g.pad;
                                    for (d, v) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi])
                                    {
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
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c, g.h, g.w))))
    }
}

/// 2-D convolution of NCHW `x` with `w` (`[Co, C/groups, k, k]`), square kernel,
/// `stride`, zero `padding`, no dilation. Same result as `x.conv2d(w, padding, stride, 1,
/// groups)`; on CPU with f32 and one group, by im2col + GEMM (see the module docs).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (co, ci, kh, kw) = w.dims4()?;
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
    let pointwise = kh == 1 && stride == 1 && padding == 0;
    if pointwise && g.h * g.w >= g.c && g.b > 1 {
        // Per image, y_b = W x_b straight from NCHW: no layout copy of the input or
        // output. The weight gradient sums B products of weight size, which is less
        // memory than the copies when an image's plane (H*W) is at least C.
        let x3 = x.contiguous()?.reshape((g.b, g.c, g.h * g.w))?;
        let w3 = w.reshape((1, co, g.c))?.broadcast_as((g.b, co, g.c))?;
        return Ok(w3.matmul(&x3)?.reshape((g.b, co, g.h, g.w))?);
    }
    let cols = if pointwise {
        x.transpose(0, 1)?.reshape((g.c, g.b * g.h * g.w))?
    } else {
        x.contiguous()?.apply_op1(Im2Col(g))?
    };
    let w2 = w.reshape((co, g.rows()))?;
    let y = w2.matmul(&cols)?; // [Co, B * Ho * Wo]
    Ok(y.reshape((co, g.b, g.ho, g.wo))?
        .transpose(0, 1)?
        .contiguous()?)
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
