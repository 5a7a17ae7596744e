//! A frozen network's eval forward as fused convolutions over NHWC activations: each
//! BatchNorm folded into its convolution (`w * scale` per output channel, `shift` as
//! the bias), each convolution with its bias, ReLU and, for a block's last one, the
//! residual join in one call (`ops::conv_nhwc`: on a GPU one cuDNN call,
//! `cudnnConvolutionBiasActivationForward`). A bottleneck block is then three calls
//! and no pass of its own over the activations, where the NCHW forward makes three
//! convolutions, three BatchNorm(+ReLU) passes and a join.
//!
//! It runs for teachers on a GPU with cuDNN on (`MEAL_CUDA_CONV=cudnn`), their
//! BatchNorms frozen ([`crate::ResNet::freeze_batch_norms`]), unless
//! `MEAL_CUDA_FUSED=0`. Should a call fail (cuDNN refusing a configuration), a warning
//! says so once and the NCHW forward runs from then on. The CPU tests run it through
//! the op's candle reference and compare it with the NCHW forward.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::{Downsample, ResNet};
use crate::error::Result;
use crate::layers::{avg_pool_2x2_ceil, max_pool_3x3_s2_p1, BatchNorm2d, Conv2d, SqueezeExcite};
use crate::ops::{conv_nhwc, Slide};

/// Set once a fused forward failed: the NCHW forward runs from then on.
static FAILED: AtomicBool = AtomicBool::new(false);

/// One convolution with its BatchNorm folded in: the weight as cuDNN's NHWC filter
/// `[Co, k, k, C/groups]` and the bias, both in the network's dtype.
struct Unit {
    w: Tensor,
    bias: Option<Tensor>,
    slide: Slide,
}

/// A block's shortcut.
enum Shortcut {
    Identity,
    /// A convolution (after a 2x2 average pool when `pool`). Without an SE module its
    /// bias is added by the block's last convolution, so the shortcut has none.
    Conv {
        pool: bool,
        unit: Unit,
    },
}

struct Block {
    units: Vec<Unit>,
    se: Option<SqueezeExcite>,
    shortcut: Shortcut,
}

/// The folded network, built once per [`ResNet`] and dtype.
pub(super) struct Fused {
    dtype: DType,
    stem: Vec<Unit>,
    blocks: Vec<Block>,
}

/// The fold of `conv` and `bn`: the weight scaled per output channel in f32, then laid
/// out NHWC in `dtype`; `shift` returned for the caller to make the bias (or add to
/// another). `None` where the fused forward does not apply (a bias of its own, a
/// BatchNorm not frozen).
fn fold(conv: &Conv2d, bn: &BatchNorm2d, dtype: DType) -> Result<Option<(Unit, Vec<f32>)>> {
    let (Some((w, slide)), Some((scale, shift))) = (conv.fold_parts(), bn.frozen_affine()) else {
        return Ok(None);
    };
    let co = scale.len();
    let scale = Tensor::from_vec(scale, (co, 1, 1, 1), w.device())?;
    let w = w
        .to_dtype(DType::F32)?
        .broadcast_mul(&scale)?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .to_dtype(dtype)?;
    Ok(Some((
        Unit {
            w,
            bias: None,
            slide,
        },
        shift,
    )))
}

/// `shift` as a bias tensor on `like`'s device in its dtype.
fn bias(shift: &[f32], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_slice(shift, shift.len(), like.device())?.to_dtype(like.dtype())?)
}

/// [`fold`] with the bias made.
fn unit(conv: &Conv2d, bn: &BatchNorm2d, dtype: DType) -> Result<Option<Unit>> {
    Ok(match fold(conv, bn, dtype)? {
        Some((mut u, shift)) => {
            u.bias = Some(bias(&shift, &u.w)?);
            Some(u)
        }
        None => None,
    })
}

/// Whether every floating-point parameter and statistic of `m` is finite. cuDNN's fused
/// ReLU zeroes NaN (its fused call takes only `CUDNN_NOT_PROPAGATE_NAN`), so a teacher
/// with a non-finite weight anywhere (a convolution, a BatchNorm, an SE block) would give
/// finite logits fused; it runs the NCHW forward instead, whose NaN the caller's check
/// names. `0 * v` is 0 where v is finite, NaN elsewhere: one reduction per tensor, once.
fn all_finite(m: &ResNet) -> Result<bool> {
    for e in m.entries() {
        let t = e.var.as_tensor();
        if !t.dtype().is_float() {
            continue; // num_batches_tracked
        }
        let z = t.affine(0.0, 0.0)?.to_dtype(DType::F32)?.sum_all()?;
        if z.to_scalar::<f32>()? != 0.0 {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Fused {
    /// The fold of `m` in `dtype`; `None` where the fused forward does not apply.
    pub(super) fn build(m: &ResNet, dtype: DType) -> Result<Option<Fused>> {
        if !all_finite(m)? {
            return Ok(None);
        }
        let mut stem = Vec::new();
        let Some(last) = m.stem.len().checked_sub(1) else {
            return Ok(None);
        };
        for (i, (conv, bn)) in m.stem.iter().enumerate() {
            let bn = match bn {
                Some(bn) if i < last => bn,
                None if i == last => &m.bn1,
                // a convolution without its own BatchNorm inside the stem, or bn1 after a
                // normalised last one: not a stem of the family's presets
                _ => return Ok(None),
            };
            let Some(u) = unit(conv, bn, dtype)? else {
                return Ok(None);
            };
            stem.push(u);
        }
        let mut blocks = Vec::new();
        for b in m.stages.iter().flatten() {
            let Some(last) = b.convs.len().checked_sub(1) else {
                return Ok(None);
            };
            let shortcut = match &b.downsample {
                None => None,
                Some(Downsample::Conv(c, bn)) => Some((false, c, bn)),
                Some(Downsample::Avg { pool, conv, bn }) => Some((*pool, conv, bn)),
            };
            // the shortcut convolution's shift: its own bias when an SE gate comes between
            // the last convolution and the join, else added to the last one's
            let mut ds_shift = None;
            let shortcut = match shortcut {
                None => Shortcut::Identity,
                Some((pool, conv, bn)) => {
                    let Some((mut unit, shift)) = fold(conv, bn, dtype)? else {
                        return Ok(None);
                    };
                    if b.se.is_some() {
                        unit.bias = Some(bias(&shift, &unit.w)?);
                    } else {
                        ds_shift = Some(shift);
                    }
                    Shortcut::Conv { pool, unit }
                }
            };
            let mut units = Vec::new();
            for (i, (conv, bn)) in b.convs.iter().enumerate() {
                let Some((mut u, mut shift)) = fold(conv, bn, dtype)? else {
                    return Ok(None);
                };
                if let (true, Some(ds)) = (i == last, &ds_shift) {
                    // y = relu(conv(x) + shift + conv_ds(x') + shift_ds): one bias
                    shift.iter_mut().zip(ds).for_each(|(a, b)| *a += b);
                }
                u.bias = Some(bias(&shift, &u.w)?);
                units.push(u);
            }
            blocks.push(Block {
                units,
                se: b.se.clone(),
                shortcut,
            });
        }
        Ok(Some(Fused {
            dtype,
            stem,
            blocks,
        }))
    }

    /// Logits of an NCHW batch in the network's dtype.
    pub(super) fn forward(&self, m: &ResNet, x: &Tensor) -> Result<Tensor> {
        let mut y = nhwc(&x.to_dtype(self.dtype)?)?;
        for u in &self.stem {
            y = conv_nhwc(&y, &u.w, u.bias.as_ref(), None, true, u.slide)?;
        }
        // the one max-pool: our NCHW op between two layout swaps of its (small) output
        y = nhwc(&max_pool_3x3_s2_p1(&nchw(&y)?)?)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        let y = y.to_dtype(m.fc.dtype())?;
        // global average pool over H and W, as the NCHW forward's (W, then H)
        m.fc.forward(&y.mean(2)?.mean(1)?, false)
    }
}

/// `t` NCHW -> NHWC, contiguous.
fn nhwc(t: &Tensor) -> Result<Tensor> {
    Ok(t.permute((0, 2, 3, 1))?.contiguous()?)
}

/// `t` NHWC -> NCHW, contiguous.
fn nchw(t: &Tensor) -> Result<Tensor> {
    Ok(t.permute((0, 3, 1, 2))?.contiguous()?)
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            Shortcut::Identity => x.clone(),
            Shortcut::Conv { pool, unit } => {
                let x = if *pool {
                    nhwc(&avg_pool_2x2_ceil(&nchw(x)?)?)?
                } else {
                    x.clone()
                };
                conv_nhwc(&x, &unit.w, unit.bias.as_ref(), None, false, unit.slide)?
            }
        };
        let Some((last, rest)) = self.units.split_last() else {
            return Err(crate::error::ModelError::Config(
                "a block without convolutions".into(),
            ));
        };
        let mut y = x.clone();
        for u in rest {
            y = conv_nhwc(&y, &u.w, u.bias.as_ref(), None, true, u.slide)?;
        }
        match &self.se {
            None => conv_nhwc(
                &y,
                &last.w,
                last.bias.as_ref(),
                Some(&shortcut),
                true,
                last.slide,
            ),
            Some(se) => {
                let y = conv_nhwc(&y, &last.w, last.bias.as_ref(), None, false, last.slide)?;
                crate::ops::add_relu(&se.forward_nhwc(&y)?, &shortcut)
            }
        }
    }
}

/// How many times the input's elements a ResNet's largest activation has at most (the
/// stem's output: 64 channels at half the side is 5.3x a 3-channel input, SENet-154's
/// 128 is 10.7x; every later stage is smaller or equal). cuDNN's API takes tensors under
/// 2^31 elements: a batch that could exceed it runs the NCHW forward (whose convolutions
/// then run ours) rather than fail the fused forward, which would turn it off for the
/// rest of the process.
const ACTIVATION_BOUND: usize = 16;

/// Whether the fused forward is wanted: not turned off by `MEAL_CUDA_FUSED=0`, and no
/// fused forward has failed in this process.
fn wanted() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| !crate::switches::switch("MEAL_CUDA_FUSED", true));
    !off && !FAILED.load(Ordering::Relaxed)
}

/// The state of a [`ResNet`]'s fused forward.
#[derive(Clone, Default)]
pub(super) enum State {
    /// Not built since the weights or their freezing last changed.
    #[default]
    Unbuilt,
    /// Built for its dtype.
    Ready(Arc<Fused>),
    /// Does not apply to this network (a BatchNorm not frozen, a stem of another shape).
    NotApplicable,
}

impl ResNet {
    /// The eval forward of `x` through the fused plan where it applies: a GPU with cuDNN
    /// on, no mixed precision, the network's dtype f32 or bf16 and its BatchNorms
    /// frozen. `None`: the caller runs the NCHW forward.
    pub(super) fn forward_fused_if_on(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let dtype = self.dtype();
        let applies = x.device().is_cuda()
            && crate::ops::cudnn_convs()
            && self.autocast.is_none()
            && matches!(dtype, DType::F32 | DType::BF16)
            && x.elem_count().saturating_mul(ACTIVATION_BOUND) <= i32::MAX as usize
            && wanted();
        if !applies {
            return Ok(None);
        }
        match self.forward_fused(x) {
            Ok(y) => Ok(y),
            Err(e) => {
                if !FAILED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "MEAL_CUDA_CONV=cudnn: the fused forward failed ({e}); the NCHW forward runs from now on"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Whether eval forwards of this network run fused now: the fold is built (a
    /// forward ran) and no fused forward has failed or been turned off.
    pub fn runs_fused(&self) -> bool {
        let built = matches!(
            &*self.fused.lock().unwrap_or_else(|p| p.into_inner()),
            State::Ready(_)
        );
        built && wanted()
    }

    /// The fused forward on any device (the CPU tests run it through the op's candle
    /// reference); `None` where it does not apply to this network.
    pub(crate) fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let dtype = self.dtype();
        let state = {
            let mut s = self.fused.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(&*s, State::Unbuilt) {
                *s = match Fused::build(self, dtype)? {
                    Some(f) => {
                        tracing::debug!("{}: fused {dtype:?} forward built", self.name);
                        State::Ready(Arc::new(f))
                    }
                    None => State::NotApplicable,
                };
            }
            s.clone()
        };
        match state {
            State::Ready(f) => Ok(Some(f.forward(self, x)?)),
            _ => Ok(None),
        }
    }
}
