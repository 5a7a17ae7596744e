//! The layers of the ResNet family, with PyTorch's semantics, on any candle device.
//!
//! In eval mode every layer reads its weights detached, so a teacher's forward pass
//! builds no autograd graph; in train mode BatchNorm uses batch statistics and updates
//! its running statistics as `torch.nn.BatchNorm2d` does.

use candle_core::{DType, Tensor, Var, D};

use super::params::{Init, Kind, ParamBuilder};
use crate::error::{ModelError, Result};

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

    /// The detached weight and bias of a 1x1 convolution with a bias (an SE module's),
    /// as a fully connected layer: `[Co, C]` and `[Co]`.
    fn as_linear(&self) -> Result<(Tensor, Tensor)> {
        let (co, c, _, _) = self.weight.dims4()?;
        match &self.bias {
            Some(b) => Ok((w(&self.weight, false).reshape((co, c))?, w(b, false))),
            None => Err(ModelError::Config(
                "an SE convolution without a bias".into(),
            )),
        }
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

/// `torch.nn.BatchNorm2d` with affine weights and running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    /// The eval affine computed once ([`BatchNorm2d::freeze`]), for a network whose
    /// weights no longer change (a teacher).
    frozen: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Frozen>>>>,
}

/// A frozen BatchNorm's eval affine: on the host (for the CPU ops) and on the weights'
/// device, f32.
#[derive(Debug)]
struct Frozen {
    scale: Vec<f32>,
    shift: Vec<f32>,
    on_device: (Tensor, Tensor),
}

impl BatchNorm2d {
    /// A BatchNorm over `c` channels named `name.{weight,bias,running_mean,running_var,
    /// num_batches_tracked}`.
    pub fn new(pb: &mut ParamBuilder, name: &str, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: pb.tensor(
                &format!("{name}.weight"),
                &[c],
                Init::Const(1.0),
                Kind::Param,
            )?,
            bias: pb.tensor(&format!("{name}.bias"), &[c], Init::Const(0.0), Kind::Param)?,
            running_mean: pb.tensor(
                &format!("{name}.running_mean"),
                &[c],
                Init::Const(0.0),
                Kind::Buffer,
            )?,
            running_var: pb.tensor(
                &format!("{name}.running_var"),
                &[c],
                Init::Const(1.0),
                Kind::Buffer,
            )?,
            num_batches_tracked: pb.counter(&format!("{name}.num_batches_tracked"))?,
            frozen: Default::default(),
        })
    }

    /// Compute the eval affine now (`cpu_eval_affine`: f64 on the host, rounded to f32)
    /// and use it for every eval forward until [`BatchNorm2d::thaw`]: for a teacher,
    /// whose weights are loaded once. An eval forward otherwise recomputes it each time
    /// (on a GPU ~6 small kernels per BatchNorm, in the weights' dtype). Train mode
    /// ignores it.
    pub fn freeze(&self) -> Result<()> {
        let (scale, shift) = self.compute_eval_affine()?;
        let dev = self.weight.device();
        let on_device = (
            Tensor::from_slice(&scale, scale.len(), dev)?,
            Tensor::from_slice(&shift, shift.len(), dev)?,
        );
        *self.frozen.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::sync::Arc::new(Frozen {
                scale,
                shift,
                on_device,
            }));
        Ok(())
    }

    /// Forget a [`BatchNorm2d::freeze`] (its weights are about to change).
    pub fn thaw(&self) {
        *self.frozen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The frozen eval affine `(scale, shift)`, f32 per channel, if [`BatchNorm2d::freeze`]
    /// was called since the weights last changed.
    pub(crate) fn frozen_affine(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.frozen().map(|f| (f.scale.clone(), f.shift.clone()))
    }

    fn frozen(&self) -> Option<std::sync::Arc<Frozen>> {
        self.frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Train mode: normalise by the batch's biased variance, then update the running
    /// mean and the running *unbiased* variance with momentum 0.1 (PyTorch). Eval mode:
    /// normalise by the running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }

    /// [`BatchNorm2d::forward`] then ReLU, fused into one op on CPU (the pre-activation
    /// is then never a tensor the graph keeps).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, true)
    }

    fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let y = self.forward_inner(x, train, relu)?;
        Ok(match y {
            (y, true) => y,
            (y, false) if relu => crate::ops::relu(&y)?,
            (y, false) => y,
        })
    }

    /// The running statistics' exponential moving average with this batch's `mean` and
    /// biased `var` (`[C]`, over `count` values each), in f64 as PyTorch's CPU kernel
    /// accumulates; the variance is stored unbiased (torch.nn.BatchNorm2d). No gradient
    /// flows into the running statistics.
    fn update_running_stats(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let m = BN_MOMENTUM;
        let unbiased = if count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        };
        let upd = |run: &Var, batch: &Tensor, k: f64| -> Result<()> {
            let old = run.as_detached_tensor();
            let new = ((old.to_dtype(DType::F64)? * (1.0 - m))?
                + (batch.detach().to_dtype(DType::F64)? * (m * k))?)?;
            run.set(&new.to_dtype(old.dtype())?)?;
            Ok(())
        };
        upd(&self.running_mean, mean, 1.0)?;
        upd(&self.running_var, var, unbiased)?;
        let nb = (self.num_batches_tracked.as_detached_tensor()
            + Tensor::ones((), DType::I64, mean.device())?)?;
        self.num_batches_tracked.set(&nb)?;
        Ok(())
    }

    /// The output, and whether `relu` was fused into it.
    fn forward_inner(&self, x: &Tensor, train: bool, relu: bool) -> Result<(Tensor, bool)> {
        if train {
            self.forward_train(x, relu)
        } else {
            self.forward_eval(x, relu)
        }
    }

    /// Train mode: normalise with the batch statistics (our fused CPU op where it
    /// applies, else candle ops) and update the running statistics.
    fn forward_train(&self, x: &Tensor, relu: bool) -> Result<(Tensor, bool)> {
        let (n, _, h, wd) = x.dims4()?;
        let count = (n * h * wd) as f64;
        if let Some(crate::ops::BnOut { y, mean, var }) = crate::ops::batch_norm_train(
            x,
            &w(&self.weight, true),
            &w(&self.bias, true),
            BN_EPS,
            relu,
        )? {
            self.update_running_stats(&mean, &var, count)?;
            return Ok((y, true));
        }
        let wdt = self.weight.dtype();
        if x.dtype() != wdt {
            // mixed precision without our CUDA op (on the CPU, or MEAL_CUDA_OPS=0): the
            // BatchNorm in the weights' f32, its output back in the activations' dtype
            let (y, fused) = self.forward_train(&x.to_dtype(wdt)?, relu)?;
            return Ok((y.to_dtype(x.dtype())?, fused));
        }
        let shape = (1, x.dim(1)?, 1, 1);
        let gamma = w(&self.weight, true).reshape(shape)?;
        let beta = w(&self.bias, true).reshape(shape)?;
        // Batch statistics accumulated in f64, as PyTorch's CPU kernel does
        // (acc_type<float> is double): deep nets in train mode are sensitive to it.
        let x64 = x.to_dtype(DType::F64)?;
        let mean64 = x64.mean_keepdim((0, 2, 3))?;
        let var = x64
            .broadcast_sub(&mean64)?
            .sqr()?
            .mean_keepdim((0, 2, 3))?
            .to_dtype(x.dtype())?;
        let mean = mean64.to_dtype(x.dtype())?;
        let xc = x.broadcast_sub(&mean)?;
        let inv_std = (var.clone() + BN_EPS)?.sqrt()?.recip()?;
        let y = xc
            .broadcast_mul(&(inv_std.broadcast_mul(&gamma))?)?
            .broadcast_add(&beta)?;
        self.update_running_stats(&mean.flatten_all()?, &var.flatten_all()?, count)?;
        Ok((y, false))
    }

    /// The eval-mode affine per channel (the frozen one if any), computed on the host
    /// in f64 and rounded: `scale = gamma / sqrt(running_var + eps)`, `shift = beta -
    /// running_mean * scale`.
    fn cpu_eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        match self.frozen() {
            Some(f) => Ok((f.scale.clone(), f.shift.clone())),
            None => self.compute_eval_affine(),
        }
    }

    fn compute_eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let v = |t: &Var| -> Result<Vec<f64>> {
            Ok(t.as_detached_tensor()
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?)
        };
        let (g, b) = (v(&self.weight)?, v(&self.bias)?);
        let (m, var) = (v(&self.running_mean)?, v(&self.running_var)?);
        let scale: Vec<f64> = g
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + BN_EPS).sqrt())
            .collect();
        let shift: Vec<f32> = (0..scale.len())
            .map(|i| (b[i] - m[i] * scale[i]) as f32)
            .collect();
        Ok((scale.iter().map(|&s| s as f32).collect(), shift))
    }

    /// Eval mode: the running statistics folded into a per-channel affine.
    fn forward_eval(&self, x: &Tensor, relu: bool) -> Result<(Tensor, bool)> {
        let c = x.dim(1)?;
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4 {
            let (scale, shift) = self.cpu_eval_affine()?;
            if let Some(y) = crate::ops::channel_affine(x, scale, shift, relu)? {
                return Ok((y, true));
            }
        }
        let shape = (1, c, 1, 1);
        let frozen = self.frozen();
        let (scale, shift) = match &frozen {
            Some(f) => (f.on_device.0.reshape(shape)?, f.on_device.1.reshape(shape)?),
            None => {
                let gamma = w(&self.weight, false).reshape(shape)?;
                let beta = w(&self.bias, false).reshape(shape)?;
                let inv_std = (self.running_var.as_detached_tensor() + BN_EPS)?
                    .sqrt()?
                    .recip()?;
                let scale = (inv_std.reshape(shape)? * &gamma)?;
                let shift = (beta
                    - self
                        .running_mean
                        .as_detached_tensor()
                        .reshape(shape)?
                        .mul(&scale)?)?;
                (scale, shift)
            }
        };
        // on CUDA: one pass of our kernel over device-side scale and shift
        if let Some(y) = crate::ops::channel_affine_dev(x, &scale, &shift, relu)? {
            return Ok((y, true));
        }
        // the frozen affine is f32, and so are a mixed-precision network's weights: in
        // x's dtype for candle's broadcasts
        let (scale, shift) = (scale.to_dtype(x.dtype())?, shift.to_dtype(x.dtype())?);
        Ok((x.broadcast_mul(&scale)?.broadcast_add(&shift)?, false))
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
        let s = x.mean_keepdim((2, 3))?;
        let s = self.fc1.forward(&s, train)?.relu()?;
        let g = candle_nn::ops::sigmoid(&self.fc2.forward(&s, train)?)?;
        Ok(x.broadcast_mul(&g)?)
    }

    /// [`SqueezeExcite::forward`] (eval) of an NHWC tensor: a frozen network's fused
    /// forward (resnet/fused.rs).
    pub(crate) fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, _, c) = x.dims4()?;
        let (w1, b1) = self.fc1.as_linear()?;
        let (w2, b2) = self.fc2.as_linear()?;
        let s = x.mean_keepdim((1, 2))?.reshape((b, c))?;
        let s = s.matmul(&w1.t()?)?.broadcast_add(&b1)?.relu()?;
        let g = candle_nn::ops::sigmoid(&s.matmul(&w2.t()?)?.broadcast_add(&b2)?)?;
        Ok(x.broadcast_mul(&g.reshape((b, 1, 1, c))?)?)
    }
}

/// `nn.MaxPool2d(3, stride=2, padding=1)`: our op where it applies
/// ([`crate::ops::max_pool2d`]: f32 on CPU and CUDA, bf16 on CUDA); elsewhere
/// built from differentiable ops (slices and `maximum`), because candle's
/// max-pool backward fails when kernel != stride. Padding is -inf, so padded positions
/// are never the maximum.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::ops::max_pool2d(x, 3, 2, 1)? {
        return Ok(y);
    }
    max_pool_3x3_s2_p1_generic(x)
}

/// The device-generic [`max_pool_3x3_s2_p1`] (two separable 1-D maxima).
pub fn max_pool_3x3_s2_p1_generic(x: &Tensor) -> Result<Tensor> {
    let x = pool_axis_3_2_1(x, 2)?;
    pool_axis_3_2_1(&x, 3)
}

/// Max over windows of 3, stride 2, padding 1 along `axis`.
fn pool_axis_3_2_1(x: &Tensor, axis: usize) -> Result<Tensor> {
    let n = x.dim(axis)?;
    let out = (n - 1) / 2 + 1; // floor((n + 2 - 3) / 2) + 1
    let total = 2 * out + 2; // padded length: xp[2o], xp[2o+1], xp[2o+2] for o < out
    let mut pad_shape = x.dims().to_vec();
    pad_shape[axis] = 1;
    let left =
        Tensor::full(f32::NEG_INFINITY, pad_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
    pad_shape[axis] = total - n - 1;
    let right =
        Tensor::full(f32::NEG_INFINITY, pad_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
    let xp = Tensor::cat(&[&left, x, &right], axis)?;
    let mut pairs = xp.dims().to_vec();
    pairs[axis] = out;
    pairs.insert(axis + 1, 2);
    let a = xp.narrow(axis, 0, 2 * out)?.reshape(pairs.as_slice())?;
    let b = xp.narrow(axis, 2, 2 * out)?.reshape(pairs.as_slice())?;
    let even = a.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    let odd = a.narrow(axis + 1, 1, 1)?.squeeze(axis + 1)?;
    let next = b.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    Ok(even.maximum(&odd)?.maximum(&next)?)
}

/// `nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)`: odd sides get a
/// last window of one row/column, averaged over its real elements only.
pub fn avg_pool_2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), wd.div_ceil(2));
    let x = if h % 2 == 1 {
        x.pad_with_zeros(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if wd % 2 == 1 {
        x.pad_with_zeros(3, 0, 1)?
    } else {
        x
    };
    let sums = x.reshape((n, c, ho, 2, wo, 2))?.sum(5)?.sum(3)?;
    if h % 2 == 0 && wd % 2 == 0 {
        return Ok((sums * 0.25)?);
    }
    let count = |len: usize, out: usize| -> Vec<f32> {
        (0..out)
            .map(|i| if 2 * i + 1 < len { 2.0 } else { 1.0 })
            .collect()
    };
    let (rh, rw) = (count(h, ho), count(wd, wo));
    let inv: Vec<f32> = rh
        .iter()
        .flat_map(|a| rw.iter().map(move |b| 1.0 / (a * b)))
        .collect();
    let inv = Tensor::from_vec(inv, (1, 1, ho, wo), x.device())?.to_dtype(x.dtype())?;
    Ok(sums.broadcast_mul(&inv)?)
}

/// Global average pool: `[N, C, H, W]` to `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
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
