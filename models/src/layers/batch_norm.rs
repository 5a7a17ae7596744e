//! `torch.nn.BatchNorm2d`: train mode on batch statistics with the running ones updated,
//! eval mode as one per-channel affine (computed once for a frozen teacher).

use candle_core::{DType, Tensor, Var};

use super::{w, BN_EPS, BN_MOMENTUM};
use crate::error::Result;
use crate::params::{Init, Kind, ParamBuilder};

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

    pub(super) fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
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
    pub(super) fn cpu_eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
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
