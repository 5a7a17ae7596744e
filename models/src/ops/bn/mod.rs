//! Fused train-mode BatchNorm.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::relu::relu_of;
use super::{contiguous_f32, par_fill};
use crate::error::Result;

mod eval;
#[cfg(test)]
mod tests;

#[cfg(all(test, feature = "cuda"))]
pub(crate) use eval::device_affine_cpu;
pub use eval::{channel_affine, channel_affine_dev};

/// What a train-mode forward keeps, where it ran: the batch mean and biased variance per
/// channel (for the caller's running statistics and for the backward) and the f32 scale
/// and shift it applied (the fused ReLU's gate in the backward). On CUDA they stay on the
/// device: the forward never waits for the GPU to hand them to the host (a wait per
/// BatchNorm, 53 per ResNet-50 forward, each draining the GPU's queue).
#[derive(Clone)]
pub(crate) enum Kept {
    /// Computed on the CPU.
    Host {
        mean: Vec<f64>,
        var: Vec<f64>,
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// Computed on a CUDA device.
    #[cfg(feature = "cuda")]
    Device(std::sync::Arc<super::cuda::DeviceKept>),
}

/// A forward's [`Kept`], shared by the op (for its backward) and [`batch_norm_train`].
type KeptCell = std::sync::Arc<std::sync::Mutex<Option<Kept>>>;

/// Train-mode BatchNorm over `(x, gamma, beta)`: batch mean and biased variance per
/// channel accumulated in f64 (PyTorch's CPU kernel uses double), one pass to normalise;
/// backward in one fused pass (the closed form below) instead of candle's chain of
/// broadcasts and strided reductions.
struct BnTrain {
    eps: f64,
    kept: KeptCell,
    /// `max(y, 0)` fused in: the pre-activation is then not a graph node (memory). The
    /// backward recomputes the ReLU's mask from the kept scale and shift and `x` (bit
    /// for bit the forward's), instead of a masking pass.
    relu: bool,
}

/// `dx, dgamma, dbeta` of [`BnTrain`] packed in one vector `[dx..., dgamma..., dbeta...]`
/// (f32). For bf16 `x` (mixed-precision training on CUDA) `dx` alone, in bf16, with
/// `[dgamma..., dbeta...]` (f32, the weights' dtype) left in `weight_grads` for
/// [`TakeWeightGrads`]: one op cannot return two dtypes.
struct BnBackward {
    eps: f64,
    /// The forward's statistics and affine (the statistics recomputed from `x` only if
    /// absent).
    kept: Option<Kept>,
    /// The fused ReLU: `dy` counts only where `x * scale + shift > 0`.
    relu: bool,
    #[cfg(feature = "cuda")]
    weight_grads: WeightGradCell,
}

/// The f32 `[dgamma..., dbeta...]` of a bf16 [`BnBackward`] on CUDA, until taken.
#[cfg(feature = "cuda")]
type WeightGradCell = std::sync::Arc<std::sync::Mutex<Option<candle_core::CudaStorage>>>;

/// The `[dgamma..., dbeta...]` a bf16 [`BnBackward`] left (f32 `[2C]`), as a tensor;
/// applied to its `x` (for the device), without a backward.
#[cfg(feature = "cuda")]
struct TakeWeightGrads(WeightGradCell, usize);

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for TakeWeightGrads {
    fn name(&self) -> &'static str {
        "meal-bn-weight-grads"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("batch_norm: bf16 weight gradients exist on CUDA only")
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(s) => Ok((s, Shape::from(2 * self.1))),
            None => candle_core::bail!("batch_norm: the backward left no weight gradients"),
        }
    }
}

/// The two sums of `f(a[i], b[i])` with eight pairs of f64 accumulators over 8-wide
/// chunks, in one pass: one accumulator is bound by the add latency (these loops were ~6%
/// of a ResNet-50 step).
#[inline(always)]
fn sums8(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f64, f64)) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; 8], [0f64; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (mut ts, mut tt) = (0f64, 0f64);
    for (&u, &v) in ca.remainder().iter().zip(cb.remainder()) {
        let (p, q) = f(u, v);
        ts += p;
        tt += q;
    }
    for (u, v) in ca.zip(cb) {
        let (u, v): (&[f32; 8], &[f32; 8]) = (u.try_into().unwrap(), v.try_into().unwrap());
        for l in 0..8 {
            let (p, q) = f(u[l], v[l]);
            s[l] += p;
            t[l] += q;
        }
    }
    (s.iter().sum::<f64>() + ts, t.iter().sum::<f64>() + tt)
}

/// `dy` where the fused ReLU let it through: `x * sc + sh > 0` (what the forward's
/// `relu_of` kept positive; NaN is not).
#[inline(always)]
fn gated<const RELU: bool>(g: f32, v: f32, sc: f32, sh: f32) -> f32 {
    let pass = v * sc + sh > 0.0;
    if RELU && !pass {
        0.0
    } else {
        g
    }
}

/// `(sum(dy), sum(dy * (x - mean)))` over one plane, `dy` gated by the fused ReLU: 16
/// f32 lanes within the plane (a lane sums at most hw/16 values), the lanes and the
/// planes summed in f64. Twice as fast as f64 lanes (memory-bound then; measured on 512
/// planes of 3136), and the sums agree with f64 ones to ~4e-6 relative.
fn grad_sums<const RELU: bool>(dy: &[f32], x: &[f32], mean: f64, sc: f32, sh: f32) -> (f64, f64) {
    let m = mean as f32;
    let (mut s, mut t) = ([0f32; 16], [0f32; 16]);
    let (ca, cb) = (dy.chunks_exact(16), x.chunks_exact(16));
    let (mut ts, mut tt) = (0f64, 0f64);
    for (&g, &v) in ca.remainder().iter().zip(cb.remainder()) {
        let g = gated::<RELU>(g, v, sc, sh);
        ts += g as f64;
        tt += (g * (v - m)) as f64;
    }
    for (u, v) in ca.zip(cb) {
        let (u, v): (&[f32; 16], &[f32; 16]) = (u.try_into().unwrap(), v.try_into().unwrap());
        for l in 0..16 {
            let g = gated::<RELU>(u[l], v[l], sc, sh);
            s[l] += g;
            t[l] += g * (v[l] - m);
        }
    }
    let total = |a: &[f32; 16]| a.iter().map(|&v| v as f64).sum::<f64>();
    (total(&s) + ts, total(&t) + tt)
}

/// One plane of the input gradient: `k * dy - ka - (x - mean) * kb`, `dy` gated.
fn grad_plane<const RELU: bool>(
    o: &mut [std::mem::MaybeUninit<f32>],
    dy: &[f32],
    x: &[f32],
    (k, ka, kb, mean): (f32, f32, f32, f32),
    (sc, sh): (f32, f32),
) {
    for ((o, &g), &v) in o.iter_mut().zip(dy).zip(x) {
        o.write(k * gated::<RELU>(g, v, sc, sh) - ka - (v - mean) * kb);
    }
}

/// Mean and biased variance of each channel of contiguous NCHW `x`, in one pass: sums
/// of `x - s` and its square in f64, shifted by the channel's first value `s` so that a
/// large mean does not cancel the variance away.
fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let n = (b * hw) as f64;
            let shift = if hw > 0 { plane(0)[0] } else { 0.0 };
            let (mut s, mut s2) = (0f64, 0f64);
            for i in 0..b {
                let (a, q) = sums8(plane(i), plane(i), |v, _| {
                    let d = v as f64 - shift as f64;
                    (d, d * d)
                });
                s += a;
                s2 += q;
            }
            let m = s / n;
            ((shift as f64) + m, (s2 / n - m * m).max(0.0))
        })
        .unzip()
}

/// `x * scale[c] + shift[c]` per channel of contiguous NCHW `x` (`c` channels of `hw`
/// values), then ReLU when `relu`: the forward of both the train and eval BatchNorm ops.
fn affine_fill(
    x: &[f32],
    c: usize,
    hw: usize,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
) -> Vec<f32> {
    let hw1 = hw.max(1);
    par_fill(x.len(), hw1, |bc, o| {
        let (sc, sh) = (scale[bc % c], shift[bc % c]);
        for (o, &v) in o.iter_mut().zip(&x[bc * hw1..]) {
            let y = v * sc + sh;
            o.write(if relu { relu_of(y) } else { y });
        }
    })
}

/// The per-channel `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`
/// of a train-mode BatchNorm, in f64 and then rounded (the CPU forward; CUDA's kernel
/// `meal_bn_scale_shift` does the same operations).
pub(super) fn scale_shift(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    (0..mean.len())
        .map(|ch| {
            let inv = 1.0 / (var[ch] + eps).sqrt();
            let scale = gamma[ch] as f64 * inv;
            (scale as f32, (beta[ch] as f64 - mean[ch] * scale) as f32)
        })
        .unzip()
}

impl BnTrain {
    /// Keep the forward's statistics and affine (for the caller and the backward).
    fn keep(&self, kept: Kept) {
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
    }
}

/// The eval-mode BatchNorm ops' CPU forward: [`affine_fill`] of NCHW `x` (layout `l`)
/// with one scale and shift per channel.
fn affine_op(
    x: &[f32],
    l: &Layout,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
) -> candle_core::Result<Vec<f32>> {
    let (_, c, hw) = dims_nchw(l)?;
    if scale.len() != c || shift.len() != c {
        candle_core::bail!("batch_norm: {c} channels, {} statistics", scale.len());
    }
    Ok(affine_fill(x, c, hw, scale, shift, relu))
}

pub(super) fn dims_nchw(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, h, w] => Ok((*b, *c, h * w)),
        d => candle_core::bail!("batch_norm: expected NCHW, got {d:?}"),
    }
}

impl candle_core::CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "meal-bn-train"
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
        let x = contiguous_f32(s1, l1)?;
        let (gamma, beta) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let (b, c, hw) = dims_nchw(l1)?;
        let (mean, var) = channel_stats(x, b, c, hw);
        let (scale, shift) = scale_shift(gamma, beta, &mean, &var, self.eps);
        let out = affine_fill(x, c, hw, &scale, &shift, self.relu);
        self.keep(Kept::Host {
            mean,
            var,
            scale,
            shift,
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        let (y, kept) = super::profile::on_cuda("batch-norm train forward", s1, || {
            super::cuda::bn_train(self.eps, self.relu, (s1, l1), (s2, l2), (s3, l3))
        })?;
        self.keep(Kept::Device(std::sync::Arc::new(kept)));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, w) = x.dims4()?;
        let n = b * c * h * w;
        // the forward's statistics (no second pass over x) and, with the fused ReLU, the
        // scale and shift the backward masks `dy` with
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.relu && kept.is_none() {
            candle_core::bail!("batch_norm backward: the forward's ReLU affine is missing");
        }
        let op = BnBackward {
            eps: self.eps,
            kept,
            relu: self.relu,
            #[cfg(feature = "cuda")]
            weight_grads: Default::default(),
        };
        #[cfg(feature = "cuda")]
        if x.dtype() == DType::BF16 {
            // mixed precision: dx in bf16, the weights' gradients in f32
            let dx = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
            let dgb = x.apply_op1_no_bwd(&TakeWeightGrads(op.weight_grads.clone(), c))?;
            return Ok((
                Some(dx),
                Some(dgb.narrow(0, 0, c)?.force_contiguous()?),
                Some(dgb.narrow(0, c, c)?.force_contiguous()?),
            ));
        }
        let packed = x.apply_op3_no_bwd(gamma, &grad.contiguous()?, &op)?;
        // gamma's and beta's gradients are copied out: as views they would keep the
        // whole packed buffer (dx included) alive until the optimizer step
        Ok((
            Some(packed.narrow(0, 0, n)?.reshape((b, c, h, w))?),
            Some(packed.narrow(0, n, c)?.force_contiguous()?),
            Some(packed.narrow(0, n + c, c)?.force_contiguous()?),
        ))
    }
}

impl candle_core::CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "meal-bn-backward"
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
        let x = contiguous_f32(s1, l1)?;
        let gamma = contiguous_f32(s2, l2)?;
        let dy = contiguous_f32(s3, l3)?;
        let (b, c, hw) = dims_nchw(l1)?;
        let m = (b * hw) as f64;
        let computed;
        let (mean, var, relu) = match &self.kept {
            Some(Kept::Host {
                mean,
                var,
                scale,
                shift,
            }) => (mean, var, self.relu.then_some((scale, shift))),
            #[cfg(feature = "cuda")]
            Some(Kept::Device(_)) => {
                candle_core::bail!("batch_norm backward on the CPU of a CUDA forward")
            }
            None => {
                computed = channel_stats(x, b, c, hw);
                (&computed.0, &computed.1, None)
            }
        };
        if self.relu && relu.is_none() {
            candle_core::bail!("batch_norm backward: the forward's ReLU affine is missing");
        }
        // the fused ReLU's forward scale and shift, per channel
        let gate = |ch: usize| relu.map_or((1.0, 0.0), |(sc, sh)| (sc[ch], sh[ch]));
        // per channel: sum(dy), sum(dy * xhat)
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let inv = 1.0 / (var[ch] + self.eps).sqrt();
                let (sc, sh) = gate(ch);
                let (mut sd, mut sdx) = (0f64, 0f64);
                for i in 0..b {
                    let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    let (dy, x) = (&dy[r.clone()], &x[r]);
                    let (a, b) = if relu.is_some() {
                        grad_sums::<true>(dy, x, mean[ch], sc, sh)
                    } else {
                        grad_sums::<false>(dy, x, mean[ch], sc, sh)
                    };
                    sd += a;
                    sdx += b;
                }
                (sd, sdx * inv)
            })
            .collect();
        // dx = gamma * inv / M * (M dy - sum(dy) - xhat * sum(dy xhat)), in f32 as
        // PyTorch's CPU kernel: k * dy - k * mean(dy) - (x - mean) * (k * inv * mean(dy xhat))
        let n = x.len();
        let hw1 = hw.max(1);
        let mut out: Vec<f32> = Vec::with_capacity(n + 2 * c);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(hw1)
            .enumerate()
            .for_each(|(bc, o)| {
                let ch = bc % c;
                let inv = 1.0 / (var[ch] + self.eps).sqrt();
                let (sd, sdx) = sums[ch];
                let k = gamma[ch] as f64 * inv;
                let coef = (
                    k as f32,
                    (k * sd / m) as f32,
                    (k * inv * sdx / m) as f32,
                    mean[ch] as f32,
                );
                let r = bc * hw1..(bc + 1) * hw1;
                let (dy, x) = (&dy[r.clone()], &x[r]);
                if relu.is_some() {
                    grad_plane::<true>(o, dy, x, coef, gate(ch));
                } else {
                    grad_plane::<false>(o, dy, x, coef, gate(ch));
                }
            });
        // SAFETY: the n elements of dx were written above
        unsafe { out.set_len(n) };
        out.extend(sums.iter().map(|s| s.1 as f32));
        out.extend(sums.iter().map(|s| s.0 as f32));
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
        super::profile::on_cuda("batch-norm backward", s1, || {
            let kept = match &self.kept {
                Some(Kept::Device(k)) => Some(k.as_ref()),
                Some(Kept::Host { .. }) => {
                    candle_core::bail!("batch_norm backward on CUDA of a CPU forward")
                }
                None => None,
            };
            let (out, shape, dgb) =
                super::cuda::bn_backward(self.eps, kept, self.relu, (s1, l1), (s2, l2), (s3, l3))?;
            if let Some(dgb) = dgb {
                let dev = s1.device.clone();
                *self.weight_grads.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(candle_core::CudaStorage::wrap_cuda_slice(dgb, dev));
            }
            Ok((out, shape))
        })
    }
}

/// What [`batch_norm_train`] returns.
pub struct BnOut {
    /// The normalised output.
    pub y: Tensor,
    /// Batch mean per channel (f64 `[C]`, on `x`'s device).
    pub mean: Tensor,
    /// Batch biased variance per channel (f64 `[C]`, on `x`'s device).
    pub var: Tensor,
}

/// The statistics a [`BnTrain`] forward kept, as one f64 tensor `[2, C]` (mean, then
/// variance) on its device: on CUDA a device copy, so the caller's running statistics
/// update without the host waiting for the GPU. Applied to the forward's input (for
/// its device), without a backward.
struct KeptStats(KeptCell);

impl KeptStats {
    fn kept(&self) -> candle_core::Result<Kept> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch_norm: statistics not computed".into()))
    }
}

impl candle_core::CustomOp1 for KeptStats {
    fn name(&self) -> &'static str {
        "meal-bn-kept-stats"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.kept()? {
            Kept::Host { mean, var, .. } => {
                let c = mean.len();
                Ok((CpuStorage::F64([mean, var].concat()), Shape::from((2, c))))
            }
            #[cfg(feature = "cuda")]
            Kept::Device(_) => candle_core::bail!("batch_norm: CUDA statistics read on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.kept()? {
            Kept::Device(k) => super::cuda::kept_stats(s, &k),
            Kept::Host { .. } => candle_core::bail!("batch_norm: CPU statistics read on CUDA"),
        }
    }
}

/// Train-mode batch norm of NCHW `x` with per-channel `gamma`, `beta` (`[C]`). Returns
/// the output and the batch mean and biased variance per channel. The fused op above
/// for f32 (CPU, or CUDA with our ops), and on CUDA for bf16 `x` with f32 weights
/// (mixed-precision training: statistics and weights' gradients in f32 and f64, `y` and
/// `dx` in bf16); elsewhere `None` (the caller keeps its generic path).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Option<BnOut>> {
    let mixed = x.dtype() == DType::BF16
        && super::on_cuda(x)
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32;
    if !(super::ours(x) || mixed) || x.rank() != 4 {
        return Ok(None);
    }
    let kept: KeptCell = Default::default();
    let x = x.contiguous()?;
    let y = x.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BnTrain {
            eps,
            kept: kept.clone(),
            relu,
        },
    )?;
    // a copy, not taken: the op keeps them for its backward
    let stats = x.apply_op1_no_bwd(&KeptStats(kept))?;
    Ok(Some(BnOut {
        y,
        mean: stats.get(0)?,
        var: stats.get(1)?,
    }))
}
