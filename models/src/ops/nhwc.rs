//! A convolution over NHWC activations with its bias, an optional residual and ReLU in
//! one call, `y = relu?(conv(x, w) + bias + z)`: the op of a frozen network's fused
//! forward (resnet/fused.rs), where each BatchNorm is folded into its convolution.
//!
//! On a CUDA device with cuDNN on (`MEAL_CUDA_CONV=cudnn`) it is one cuDNN call,
//! `cudnnConvolutionBiasActivationForward` (ops/cuda/cudnn.rs), in NHWC: the layout
//! cuDNN's tensor-core kernels read and write without transposing, which is why
//! PyTorch's peer runs `channels_last`. Elsewhere it is the same arithmetic from
//! candle's own ops (a layout swap, candle's convolution, the adds): the reference the
//! GPU test compares cuDNN's with, and what the CPU tests of the fused forward run.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// How an [`conv_nhwc`] slides: stride, zero padding on each side, channel groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slide {
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
}

/// `relu?(conv(x, w) + bias + z)` for NHWC `x` `[B, H, W, C]` and a weight laid out as
/// cuDNN's NHWC filter, `[Co, k, k, C/groups]`; `bias` `[Co]`, `z` `[B, Ho, Wo, Co]`,
/// all of `x`'s dtype. Returns a contiguous NHWC `[B, Ho, Wo, Co]`. No gradient flows
/// (inference of a frozen network).
pub fn conv_nhwc(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    z: Option<&Tensor>,
    relu: bool,
    slide: Slide,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && super::cudnn_convs() {
        return Ok(super::cuda::conv_nhwc(x, w, bias, z, relu, slide)?);
    }
    conv_nhwc_reference(x, w, bias, z, relu, slide)
}

/// [`conv_nhwc`] from candle's ops on any device: NCHW views, candle's convolution,
/// then the adds and ReLU in NHWC. The twin cuDNN's fused call is tested against.
pub fn conv_nhwc_reference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    z: Option<&Tensor>,
    relu: bool,
    s: Slide,
) -> Result<Tensor> {
    let to_nchw = |t: &Tensor| -> Result<Tensor> { Ok(t.permute((0, 3, 1, 2))?.contiguous()?) };
    // candle's CPU convolution is f32-only in practice (its bf16 path is a slow loop)
    let dt = x.dtype();
    let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
    let y = to_nchw(&f(x)?)?.conv2d(&to_nchw(&f(w)?)?, s.padding, s.stride, 1, s.groups)?;
    let mut y = y.permute((0, 2, 3, 1))?;
    if let Some(b) = bias {
        y = y.broadcast_add(&f(b)?)?;
    }
    if let Some(z) = z {
        y = (y + f(z)?)?;
    }
    if relu {
        y = y.relu()?;
    }
    Ok(y.to_dtype(dt)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `n` deterministic values in [-1, 1) (a different pattern per `seed`).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed * 11) % 17) as f32 / 8.5 - 1.0)
            .collect()
    }

    /// The reference against a direct loop of the definition, with bias, residual and
    /// ReLU, grouped and strided (a wrong permutation of the filter or the output would
    /// show here).
    #[test]
    fn reference_equals_the_direct_definition() {
        let (b, h, wd, c, co, k, groups) = (2, 5, 6, 4, 6, 3, 2);
        let s = Slide {
            stride: 2,
            padding: 1,
            groups,
        };
        let dev = Device::Cpu;
        let x = Tensor::from_vec(values(b * h * wd * c, 1), (b, h, wd, c), &dev).unwrap();
        let cg = c / groups;
        let w = Tensor::from_vec(values(co * k * k * cg, 2), (co, k, k, cg), &dev).unwrap();
        let bias = Tensor::from_vec(values(co, 3), co, &dev).unwrap();
        let (ho, wo) = ((h + 2 - k) / 2 + 1, (wd + 2 - k) / 2 + 1);
        let z = Tensor::from_vec(values(b * ho * wo * co, 4), (b, ho, wo, co), &dev).unwrap();
        let y = conv_nhwc(&x, &w, Some(&bias), Some(&z), true, s).unwrap();
        assert_eq!(y.dims(), &[b, ho, wo, co]);
        let (xv, wv) = (values(b * h * wd * c, 1), values(co * k * k * cg, 2));
        let (bv, zv) = (values(co, 3), values(b * ho * wo * co, 4));
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for n in 0..b {
            for oy in 0..ho {
                for ox in 0..wo {
                    for (o, bias_o) in bv.iter().enumerate() {
                        let g = o / (co / groups);
                        let mut acc = 0f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = ((oy * 2 + ky) as i64 - 1, (ox * 2 + kx) as i64 - 1);
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                    continue;
                                }
                                for ci in 0..cg {
                                    let xi = ((n * h + iy as usize) * wd + ix as usize) * c
                                        + g * cg
                                        + ci;
                                    let wi = ((o * k + ky) * k + kx) * cg + ci;
                                    acc += xv[xi] as f64 * wv[wi] as f64;
                                }
                            }
                        }
                        let at = ((n * ho + oy) * wo + ox) * co + o;
                        let want = (acc + *bias_o as f64 + zv[at] as f64).max(0.0);
                        assert!(
                            (yv[at] as f64 - want).abs() < 1e-4,
                            "at {at}: {} vs {want}",
                            yv[at]
                        );
                    }
                }
            }
        }
    }
}
