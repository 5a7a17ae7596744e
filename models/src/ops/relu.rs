//! ReLU with a one-pass backward (CPU and, with the `cuda` feature, CUDA: cuda/relu.rs).
//!
//! candle's ReLU backward is `grad * (x >= 0).to_dtype()` over `zeros_like(x)`: four
//! passes and three allocations per activation (a fifth of a ResNet step's non-GEMM
//! time in a profile). Ours is PyTorch's `threshold_backward(grad, y, 0)`: the gradient
//! where the output is positive, zero elsewhere, in one pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{contiguous_f32, par_fill};
use crate::error::Result;

/// Elements per parallel task: large enough that task overhead is noise.
const CHUNK: usize = 1 << 16;

struct Relu;

/// `dx` of [`Relu`] from `(y, dy)`.
struct ReluBackward;

/// `max(v, 0)` with NaN kept, as `torch.relu`.
#[inline]
pub(crate) fn relu_of(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "meal-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let y = par_fill(x.len(), CHUNK, |k, o| {
            for (o, &v) in o.iter_mut().zip(&x[k * CHUNK..]) {
                o.write(relu_of(v));
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("relu", s, || super::cuda::relu_forward((s, l), None))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)?,
        ))
    }
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "meal-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, dy) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if y.len() != dy.len() {
            candle_core::bail!(
                "relu backward: gradient {:?} for {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let dx = par_fill(y.len(), CHUNK, |k, o| {
            let (y, g) = (&y[k * CHUNK..], &dy[k * CHUNK..]);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                o.write(if y > 0.0 { g } else { 0.0 });
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("relu backward", s1, || {
            super::cuda::relu_backward((s1, l1), (s2, l2))
        })
    }
}

/// `max(a + b, 0)` (a residual join) as one op: one pass, and the sum is never a
/// tensor the graph keeps. Both inputs get the same gradient: `dy` where the output is
/// positive.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "meal-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("add_relu: {:?} and {:?}", l1.dims(), l2.dims());
        }
        let y = par_fill(a.len(), CHUNK, |k, o| {
            let (a, b) = (&a[k * CHUNK..], &b[k * CHUNK..]);
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                o.write(relu_of(a + b));
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("add + relu", s1, || {
            super::cuda::relu_forward((s1, l1), Some((s2, l2)))
        })
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `max(a + b, 0)`: one fused op (on CPU and CUDA, f32; bf16 on CUDA), elsewhere
/// candle's add and ReLU.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // f32 where our ops run (CPU, CUDA), and bf16 on CUDA (a teacher's inference,
    // mixed-precision training)
    let fused = super::ours_or_cuda_bf16(a)
        && super::ours_or_cuda_bf16(b)
        && a.dtype() == b.dtype()
        && a.dims() == b.dims()
        && a.device().same_device(b.device());
    if !fused {
        return relu(&(a + b)?);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
}

/// `max(x, 0)`: our op (one-pass backward) where `ours_or_cuda_bf16` says, elsewhere
/// candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !super::ours_or_cuda_bf16(x) {
        return Ok(x.relu()?);
    }
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn equals_candle_relu_forward_and_backward() {
        let dev = Device::Cpu;
        // more than one parallel chunk, with exact zeros in it
        let n = 3 * CHUNK + 17;
        let x0: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) * 0.5).collect();
        let x = Var::from_slice(&x0, n, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        let ours = relu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().relu().unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(v(&ours), v(&theirs));
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            v(g1.get(x.as_tensor()).unwrap()),
            v(g2.get(x.as_tensor()).unwrap()),
        );
        // candle passes the gradient at x == 0 (x >= 0); PyTorch and we do not
        for i in 0..n {
            if x0[i] == 0.0 {
                assert_eq!(a[i], 0.0);
            } else {
                assert_eq!(a[i], b[i], "{i}");
            }
        }
        let nan = relu(&Tensor::new(&[f32::NAN, -1.0, 2.0], &dev).unwrap()).unwrap();
        let nan = v(&nan);
        assert!(nan[0].is_nan() && nan[1] == 0.0 && nan[2] == 2.0);
    }

    #[test]
    fn add_relu_equals_add_then_relu() {
        let dev = Device::Cpu;
        let n = 2 * CHUNK + 5;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        let fused = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let plain = relu(&(a.as_tensor() + b.as_tensor()).unwrap()).unwrap();
        assert_eq!(v(&fused), v(&plain));
        let g1 = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [a.as_tensor(), b.as_tensor()] {
            assert_eq!(v(g1.get(t).unwrap()), v(g2.get(t).unwrap()));
        }
    }
}
