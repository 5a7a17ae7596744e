//! The layers of the ResNet family, with PyTorch's semantics, on any candle device.
//!
//! In eval mode every layer reads its weights detached, so a teacher's forward pass
//! builds no autograd graph; in train mode BatchNorm uses batch statistics and updates
//! its running statistics as `torch.nn.BatchNorm2d` does.

use candle_core::{DType, Tensor, Var};

use super::params::{Init, Kind, ParamBuilder};
use crate::error::Result;

mod batch_norm;
mod pool;

pub use batch_norm::BatchNorm2d;
pub use pool::{
    avg_pool_2x2_ceil, global_avg_pool, max_pool_3x3_s2_p1, max_pool_3x3_s2_p1_generic,
};

/// PyTorch's BatchNorm defaults (torch.nn.BatchNorm2d): momentum 0.1, eps 1e-5.
pub const BN_MOMENTUM: f64 = 0.1;
/// See [`BN_MOMENTUM`].
pub const BN_EPS: f64 = 1e-5;

/// A weight as the forward pass should see it: tracked in train mode, detached in eval.
fn w(v: &Var, train: bool) -> Tensor {
    if train {
        v.as_tensor().clone()
    } else {
        v.as_detached_tensor()
    }
}

/// [`w`] in the dtype of the activations `x` it meets, under mixed precision
/// ([`crate::ResNet::set_autocast`]): an f32 weight meeting bf16 or f16 activations is
/// cast for this use, as PyTorch's autocast casts a convolution's weight (its
/// gradient, in the activations' dtype, is cast back to f32 by the cast's backward).
/// Otherwise the weight as it is.
fn w_as(v: &Var, train: bool, x: &Tensor) -> Result<Tensor> {
    let t = w(v, train);
    let autocast = t.dtype() == DType::F32 && matches!(x.dtype(), DType::BF16 | DType::F16);
    Ok(if autocast { t.to_dtype(x.dtype())? } else { t })
}

/// How a [`Conv2d`] slides and what it carries besides its weight (candle-nn's
/// `Conv2dConfig` pattern). `ConvConfig::new(k, stride)` pads as timm's
/// `get_padding(k, stride)` does (timm/layers/padding.py), which every layer of the
/// ResNet family uses; `.groups(g)` and `.bias()` change the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Groups (channels split into this many independent convolutions).
    pub groups: usize,
    /// Whether there is a bias.
    pub bias: bool,
}

impl ConvConfig {
    /// A `kernel x kernel` convolution at `stride`, timm's padding, one group, no bias.
    pub fn new(kernel: usize, stride: usize) -> Self {
        ConvConfig {
            kernel,
            stride,
            padding: ((stride - 1) + (kernel - 1)) / 2,
            groups: 1,
            bias: false,
        }
    }

    /// The same with `groups` groups.
    pub fn groups(self, groups: usize) -> Self {
        ConvConfig { groups, ..self }
    }

    /// The same with a bias.
    pub fn bias(self) -> Self {
        ConvConfig { bias: true, ..self }
    }
}

/// 2-D convolution without dilation (the ResNet family uses none at output stride 32).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Var,
    bias: Option<Var>,
    stride: usize,
    padding: usize,
    groups: usize,
    /// How its products are computed on the CPU (bf16 for a CPU bf16 teacher).
    precision: crate::ops::Precision,
}

impl Conv2d {
    /// A convolution `cin -> cout` as `cfg` says, weights named `name.weight` (and
    /// `.bias`), initialised as timm does (Kaiming normal, fan-out, ReLU gain).
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let ConvConfig {
            kernel: k,
            stride,
            padding,
            groups,
            bias,
        } = cfg;
        let fan_out = cout * k * k / groups;
        let std = (2.0 / fan_out as f64).sqrt();
        let weight = pb.tensor(
            &format!("{name}.weight"),
            &[cout, cin / groups, k, k],
            Init::Normal(std),
            Kind::Param,
        )?;
        let bias = if bias {
            Some(pb.tensor(
                &format!("{name}.bias"),
                &[cout],
                Init::Const(0.0),
                Kind::Param,
            )?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
            precision: pb.conv_precision(),
        })
    }

    /// `bn(self(x))`, then ReLU when `relu`: in eval mode with bf16 products on the CPU
    /// one op, the BatchNorm folded into the convolution's store (`ops::conv2d_affine`,
    /// the same floats without a pass of its own); otherwise the two layers in turn.
    pub fn forward_bn(
        &self,
        x: &Tensor,
        bn: &BatchNorm2d,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        let fold = !train
            && self.bias.is_none()
            && self.precision == crate::ops::Precision::Bf16
            && x.device().is_cpu();
        if fold {
            let (scale, shift) = bn.cpu_eval_affine()?;
            if let Some(y) = crate::ops::conv2d_affine(
                x,
                &w(&self.weight, false),
                self.stride,
                self.padding,
                self.groups,
                self.precision,
                (scale, shift, relu),
            )? {
                return Ok(y);
            }
        }
        bn.forward_act(&self.forward(x, train)?, train, relu)
    }

    /// What a frozen network's fused forward folds (resnet/fused.rs): the detached
    /// weight `[Co, C/groups, k, k]` and how it slides; `None` for a convolution with a
    /// bias of its own (the ResNet family's have none, SE modules' aside).
    pub(crate) fn fold_parts(&self) -> Option<(Tensor, crate::ops::Slide)> {
        if self.bias.is_some() {
            return None;
        }
        Some((
            w(&self.weight, false),
            crate::ops::Slide {
                stride: self.stride,
                padding: self.padding,
                groups: self.groups,
            },
        ))
    }

    /// Apply to an NCHW tensor (f32 weights meeting bf16/f16 activations are cast to
    /// theirs: mixed precision).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = crate::ops::conv2d_in(
            x,
            &w_as(&self.weight, train, x)?,
            self.stride,
            self.padding,
            self.groups,
            self.precision,
        )?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&w_as(b, train, x)?.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

/// A fully connected layer `y = x W^T + b` (PyTorch's default init).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    /// `cin -> cout`, tensors `name.weight` `[cout, cin]` and `name.bias` `[cout]`.
    pub fn new(pb: &mut ParamBuilder, name: &str, cin: usize, cout: usize) -> Result<Self> {
        // torch.nn.Linear.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
        let a = 1.0 / (cin as f64).sqrt();
        Ok(Linear {
            weight: pb.tensor(
                &format!("{name}.weight"),
                &[cout, cin],
                Init::Uniform(a),
                Kind::Param,
            )?,
            bias: pb.tensor(
                &format!("{name}.bias"),
                &[cout],
                Init::Uniform(a),
                Kind::Param,
            )?,
        })
    }

    /// The dtype of its weights.
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// Apply to `[N, cin]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(x.matmul(&w(&self.weight, train).t()?)?
            .broadcast_add(&w(&self.bias, train))?)
    }
}

/// timm's `make_divisible` (timm/layers/helpers.py) as SEModule calls it
/// (`round_limit=0`): the nearest multiple of `divisor`, at least `divisor`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    (((v + d / 2.0) as usize) / divisor * divisor).max(divisor)
}

/// timm's `SEModule` (squeeze-excite): mean over H, W; 1x1 conv to
/// `make_divisible(C / 16, 8)` channels; ReLU; 1x1 conv back; sigmoid gate.
#[derive(Clone, Debug)]
pub struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
}

/// timm's SEModule reduction ratio and channel divisor.
const SE_RD_RATIO: f64 = 1.0 / 16.0;
const SE_RD_DIVISOR: usize = 8;

impl SqueezeExcite {
    /// An SE module on `c` channels named `name.fc1`, `name.fc2`.
    pub fn new(pb: &mut ParamBuilder, name: &str, c: usize) -> Result<Self> {
        let rd = make_divisible(c as f64 * SE_RD_RATIO, SE_RD_DIVISOR);
        Ok(SqueezeExcite {
            fc1: Conv2d::new(
                pb,
                &format!("{name}.fc1"),
                c,
                rd,
                ConvConfig::new(1, 1).bias(),
            )?,
            fc2: Conv2d::new(
                pb,
                &format!("{name}.fc2"),
                rd,
                c,
                ConvConfig::new(1, 1).bias(),
            )?,
        })
    }

    /// Gate `x` by its channel attention.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = self.gate(&x.mean_keepdim((2, 3))?, train)?;
        Ok(x.broadcast_mul(&g)?)
    }

    /// [`SqueezeExcite::forward`] (eval) of an NHWC tensor: a frozen network's fused
    /// forward (resnet/fused.rs). The same gate, over the means as `[B, C, 1, 1]`.
    pub(crate) fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, _, c) = x.dims4()?;
        let s = x.mean_keepdim((1, 2))?.reshape((b, c, 1, 1))?;
        let g = self.gate(&s, false)?;
        Ok(x.broadcast_mul(&g.reshape((b, 1, 1, c))?)?)
    }

    /// The per-channel gate `[B, C, 1, 1]` of channel means `s` `[B, C, 1, 1]`.
    fn gate(&self, s: &Tensor, train: bool) -> Result<Tensor> {
        let s = self.fc1.forward(s, train)?.relu()?;
        Ok(candle_nn::ops::sigmoid(&self.fc2.forward(&s, train)?)?)
    }
}

/// candle's train/eval module trait for the layers and networks of this crate: the same
/// `forward_t(x, train)` as their own methods, so they compose with candle-nn code.
macro_rules! module_t {
    ($($t:ty),*) => {$(
        impl candle_core::ModuleT for $t {
            fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
                self.forward(xs, train).map_err(candle_core::Error::wrap)
            }
        }
    )*};
}
module_t!(Conv2d, BatchNorm2d, Linear, SqueezeExcite);
