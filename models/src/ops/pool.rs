//! Max-pool with padding and any kernel/stride.
//!
//! candle's `max_pool2d` has no padding and its backward fails when kernel != stride
//! (candle-core 0.11.1 `src/backprop.rs`, MaxPool2D arm), which is the ResNet stem's 3x3/stride-2/padding-1 pool. Our op runs
//! the forward in one pass per plane; its backward re-finds each window's maximum in the
//! input (no index tensor kept) and adds the gradient there. As PyTorch's CPU kernel,
//! the maximum is the first in row-major window order (`val > max || isnan(val)`), so
//! ties send the whole gradient to one input and NaN propagates.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, par_fill};
use crate::error::Result;

#[derive(Clone, Copy, Debug)]
struct Pool {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Pool {
    fn out(&self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Index (within the plane) of the first maximum of output `(oy, ox)`'s window in
    /// row-major order, an element taken when `v > best || v.is_nan()` (PyTorch's CPU
    /// rule; so the last NaN).
    #[inline]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> usize {
        let y0 = (oy * self.stride) as isize - self.pad as isize;
        let x0 = (ox * self.stride) as isize - self.pad as isize;
        let (ya, yb) = (y0.max(0) as usize, ((y0 + self.k as isize) as usize).min(h));
        let (xa, xb) = (x0.max(0) as usize, ((x0 + self.k as isize) as usize).min(w));
        let (mut best, mut at) = (f32::NEG_INFINITY, ya * w + xa);
        for y in ya..yb {
            for (x, &v) in plane[y * w + xa..y * w + xb].iter().enumerate() {
                if v > best || v.is_nan() {
                    best = v;
                    at = y * w + xa + x;
                }
            }
        }
        at
    }

    /// The values of output row `oy` into `acc` (`wo` long): each output takes the
    /// updates of [`Pool::argmax`] in the same order, so bit for bit its value, but a
    /// tap at a time across the whole output row, a branch-free select the compiler
    /// vectorises (the per-output loop was ~5% of a bf16 ResNet-152 forward on the CPU,
    /// and ran 3.5x slower). The backward keeps `argmax`: it needs the index.
    fn row_max(&self, plane: &[f32], h: usize, w: usize, oy: usize, acc: &mut [f32]) {
        let y0 = (oy * self.stride) as isize - self.pad as isize;
        let (ya, yb) = (y0.max(0) as usize, ((y0 + self.k as isize) as usize).min(h));
        acc.fill(f32::NEG_INFINITY);
        for y in ya..yb {
            let row = &plane[y * w..(y + 1) * w];
            for kx in 0..self.k {
                // the outputs whose tap kx lies inside the row: ox*stride + kx - pad in [0, w)
                let lo = self.pad.saturating_sub(kx).div_ceil(self.stride);
                let hi = ((w + self.pad).saturating_sub(kx)).div_ceil(self.stride);
                let hi = hi.min(acc.len());
                if lo >= hi {
                    continue;
                }
                let first = lo * self.stride + kx - self.pad;
                let taps = row[first..].iter().step_by(self.stride);
                for (a, &v) in acc[lo..hi].iter_mut().zip(taps) {
                    *a = if v > *a || v.is_nan() { v } else { *a };
                }
            }
        }
    }
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, h, w] => Ok((b * c, *h, *w)),
        d => candle_core::bail!("max_pool2d: expected NCHW, got {d:?}"),
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "meal-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (planes, h, w) = dims(l)?;
        let (ho, wo) = (self.out(h), self.out(w));
        let out = par_fill(planes * ho * wo, ho * wo, |pl, o| {
            let plane = &x[pl * h * w..(pl + 1) * h * w];
            let mut acc = vec![0f32; wo];
            for oy in 0..ho {
                self.row_max(plane, h, w, oy, &mut acc);
                for (o, &v) in o[oy * wo..(oy + 1) * wo].iter_mut().zip(&acc) {
                    o.write(v);
                }
            }
        });
        let mut shape = l.dims().to_vec();
        shape[2] = ho;
        shape[3] = wo;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("max-pool forward", s, || {
            super::cuda::pool_forward((self.k, self.stride, self.pad), (s, l))
        })
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &PoolBackward(*self),
        )?))
    }
}

/// `dx` of [`Pool`] from `(x, dy)`.
struct PoolBackward(Pool);

impl CustomOp2 for PoolBackward {
    fn name(&self) -> &'static str {
        "meal-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let (x, dy) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (planes, h, w) = dims(l1)?;
        let (ho, wo) = (p.out(h), p.out(w));
        if dims(l2)? != (planes, ho, wo) {
            candle_core::bail!(
                "max_pool2d backward: gradient {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let mut dx = vec![0f32; planes * h * w];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(dy.par_chunks(ho * wo)))
            .for_each(|(d, (plane, g))| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        d[p.argmax(plane, h, w, oy, ox)] += g[oy * wo + ox];
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from(l1.dims())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let p = self.0;
        super::profile::on_cuda("max-pool backward", s1, || {
            super::cuda::pool_backward((p.k, p.stride, p.pad), (s1, l1), (s2, l2))
        })
    }
}

/// `nn.MaxPool2d(k, stride, padding)` over NCHW `x` (padding is never the maximum).
/// Our op for f32 (CPU, or CUDA with our ops on) and for bf16 on CUDA (forward and
/// backward); elsewhere `None` (the caller keeps its generic path).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Option<Tensor>> {
    // f32 (CPU, or CUDA with our ops on); bf16 on CUDA (a teacher's stem,
    // mixed-precision training)
    if !super::ours_or_cuda_bf16(x) || x.rank() != 4 {
        return Ok(None);
    }
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || 2 * padding > k || h + 2 * padding < k || w + 2 * padding < k {
        return Err(candle_core::Error::Msg(format!(
            "max_pool2d: kernel {k}, stride {stride}, padding {padding} on {h}x{w}"
        ))
        .into());
    }
    Ok(Some(x.contiguous()?.apply_op1(Pool {
        k,
        stride,
        pad: padding,
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Max-pool by definition, with its gradient by the first-maximum rule.
    fn reference(
        x: &[f32],
        planes: usize,
        h: usize,
        w: usize,
        p: Pool,
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (ho, wo) = (p.out(h), p.out(w));
        let (mut y, mut dx) = (vec![0f32; planes * ho * wo], vec![0f32; planes * h * w]);
        for pl in 0..planes {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best: Option<(f32, usize)> = None;
                    for ky in 0..p.k {
                        for kx in 0..p.k {
                            let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                            let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let i = pl * h * w + iy as usize * w + ix as usize;
                            if best.is_none_or(|(b, _)| x[i] > b) {
                                best = Some((x[i], i));
                            }
                        }
                    }
                    let (v, i) = best.expect("a window has a real element");
                    let o = pl * ho * wo + oy * wo + ox;
                    y[o] = v;
                    dx[i] += dy[o];
                }
            }
        }
        (y, dx)
    }

    #[test]
    fn forward_and_gradient_equal_the_definition() {
        let dev = Device::Cpu;
        // odd/even and mixed parity sides, batch 1, kernel != stride, padding
        for &(b, c, h, w, k, s, pd) in &[
            (1, 1, 7, 6, 3, 2, 1),
            (2, 3, 8, 9, 3, 2, 1),
            (1, 2, 5, 5, 2, 2, 0),
            (2, 1, 6, 7, 3, 1, 1),
            (1, 1, 4, 3, 3, 3, 1),
            (1, 2, 9, 8, 5, 2, 2),
            (1, 1, 5, 6, 2, 1, 0),
        ] {
            let n = b * c * h * w;
            // values on a coarse grid, so windows hold ties
            let x0: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 13) as f32 - 6.0) / 2.0)
                .collect();
            let p = Pool {
                k,
                stride: s,
                pad: pd,
            };
            let (ho, wo) = (p.out(h), p.out(w));
            let dy0: Vec<f32> = (0..b * c * ho * wo).map(|i| (i % 5) as f32 - 1.5).collect();
            let (y_ref, dx_ref) = reference(&x0, b * c, h, w, p, &dy0);
            let x =
                Var::from_tensor(&Tensor::from_slice(&x0, (b, c, h, w), &dev).unwrap()).unwrap();
            let y = max_pool2d(x.as_tensor(), k, s, pd).unwrap().unwrap();
            assert_eq!(y.dims(), &[b, c, ho, wo]);
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y_ref);
            let dy = Tensor::from_slice(&dy0, (b, c, ho, wo), &dev).unwrap();
            let g = (y * dy).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(dx, dx_ref, "{b} {c} {h} {w} k{k} s{s} p{pd}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences_and_nan_propagates() {
        let dev = Device::Cpu;
        let (h, w) = (7, 6);
        // distinct values: the maximum is unique and moves only with large steps
        let x0: Vec<f32> = (0..2 * h * w)
            .map(|i| ((i * 37 % 83) as f32) / 10.0)
            .collect();
        let r: Vec<f32> = (0..2 * 4 * 3).map(|i| ((i * 5 % 7) as f32) - 3.0).collect();
        let rt = Tensor::from_slice(&r, (1, 2, 4, 3), &dev).unwrap();
        let f = |v: &[f32]| -> f64 {
            let x = Tensor::from_slice(v, (1, 2, h, w), &dev).unwrap();
            let y = max_pool2d(&x, 3, 2, 1).unwrap().unwrap();
            (y * &rt)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let x = Var::from_tensor(&Tensor::from_slice(&x0, (1, 2, h, w), &dev).unwrap()).unwrap();
        let y = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap().unwrap();
        let g = (y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-3f32; // values are 0.1 apart
        for i in 0..x0.len() {
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
        let mut xn = x0.clone();
        xn[w + 1] = f32::NAN;
        let x = Tensor::from_slice(&xn, (1, 2, h, w), &dev).unwrap();
        let y = max_pool2d(&x, 3, 2, 1).unwrap().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].is_nan() && y[1].is_nan() && !y[2].is_nan());
    }

    /// The op equals the separable slice-and-maximum version the models used before
    /// (still the path off CPU), forward and backward, on a stem-shaped input.
    #[test]
    fn equals_the_generic_stem_pool() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 15, 12), &dev).unwrap()).unwrap();
        let ours = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap().unwrap();
        let generic = crate::layers::max_pool_3x3_s2_p1_generic(x.as_tensor()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&generic));
        let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (generic * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // equal up to the order in which overlapping windows add into one input
        let (a, b) = (
            flat(g1.get(x.as_tensor()).unwrap()),
            flat(g2.get(x.as_tensor()).unwrap()),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "gradients differ by {worst}");
    }
}
