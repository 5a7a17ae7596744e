//! Eval-mode BatchNorm as one per-channel affine pass: on the CPU ([`channel_affine`],
//! with a backward for gradients through a frozen network) and on CUDA
//! ([`channel_affine_dev`], our kernel over device-side scale and shift).

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};

use super::{affine_op, dims_nchw};
use crate::error::Result;
use crate::ops::{contiguous_f32, par_fill};

/// Eval-mode BatchNorm as one per-channel `x * scale + shift` pass (optionally with
/// the ReLU after it), instead of a broadcast multiply, a broadcast add and a ReLU.
/// Its backward (for gradients through a frozen network) is `dy * scale`, masked by the
/// ReLU.
struct ChannelAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

/// `dx` of [`ChannelAffine`] from `(y, dy)`.
struct ChannelAffineBackward {
    scale: Vec<f32>,
    relu: bool,
}

impl candle_core::CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "meal-channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let y = affine_op(x, l, &self.scale, &self.shift, self.relu)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = ChannelAffineBackward {
            scale: self.scale.clone(),
            relu: self.relu,
        };
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

impl candle_core::CustomOp2 for ChannelAffineBackward {
    fn name(&self) -> &'static str {
        "meal-channel-affine-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, dy) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (_, c, hw) = dims_nchw(l1)?;
        if y.len() != dy.len() {
            candle_core::bail!(
                "batch_norm backward: gradient {:?} for {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let hw1 = hw.max(1);
        let dx = par_fill(y.len(), hw1, |bc, o| {
            let sc = self.scale[bc % c];
            let (y, g) = (&y[bc * hw1..], &dy[bc * hw1..]);
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                o.write(if self.relu && y <= 0.0 { 0.0 } else { g * sc });
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `x * scale[c] + shift[c]` per channel of NCHW `x`, then `max(., 0)` when `relu`: on
/// CPU with f32 one fused pass; elsewhere `None` (the caller keeps its generic path).
pub fn channel_affine(
    x: &Tensor,
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.rank() != 4 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(ChannelAffine {
        scale,
        shift,
        relu,
    })?))
}

/// Eval-mode BatchNorm(+ReLU) with the scale and shift as tensors on the device of `x`
/// (`y = x * scale[c] + shift[c]`, then ReLU): on CUDA one pass of our kernel with no
/// copy of the statistics to the host (the host-side [`channel_affine`] would wait for
/// four copies per layer), instead of candle's broadcast multiply and add.
struct DeviceAffine {
    relu: bool,
}

impl candle_core::CustomOp3 for DeviceAffine {
    fn name(&self) -> &'static str {
        "meal-device-affine"
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
        let (scale, shift) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let y = match (s1, l1.contiguous_offsets()) {
            // the CPU twin of the bf16 kernel: the f32 affine of the widened input,
            // rounded once
            (CpuStorage::BF16(v), Some((a, b))) => {
                let x: Vec<f32> = v[a..b].iter().map(|x| x.to_f32()).collect();
                let y = affine_op(&x, l1, scale, shift, self.relu)?;
                CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect())
            }
            _ => CpuStorage::F32(affine_op(
                contiguous_f32(s1, l1)?,
                l1,
                scale,
                shift,
                self.relu,
            )?),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::ops::profile::on_cuda("batch-norm eval (affine)", s1, || {
            crate::ops::cuda::device_affine(self.relu, (s1, l1), (s2, l2), (s3, l3))
        })
    }
}

/// [`DeviceAffine`] of NCHW `x` with per-channel `scale` and `shift` (any shape of `C`
/// values), where it applies: our op on CUDA for f32 or bf16 `x` outside a gradient
/// graph (it has no backward), the affine in f32; `None` elsewhere (the caller keeps
/// its generic path).
pub fn channel_affine_dev(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> Result<Option<Tensor>> {
    let dtype_ok = matches!(x.dtype(), DType::F32 | DType::BF16);
    if !dtype_ok || !crate::ops::on_cuda(x) || x.rank() != 4 || x.track_op() {
        return Ok(None);
    }
    let flat =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.contiguous()?) };
    Ok(Some(x.contiguous()?.apply_op3_no_bwd(
        &flat(scale)?,
        &flat(shift)?,
        &DeviceAffine { relu },
    )?))
}

/// [`DeviceAffine`]'s CPU forward over CPU tensors: the twin the GPU tests compare the
/// CUDA op with (the public [`channel_affine_dev`] declines the CPU).
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn device_affine_cpu(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    let flat = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.flatten_all()?) };
    Ok(x.contiguous()?
        .apply_op3_no_bwd(&flat(scale)?, &flat(shift)?, &DeviceAffine { relu })?)
}
