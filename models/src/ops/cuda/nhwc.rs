//! [`crate::ops::conv_nhwc`] on a CUDA device: one cuDNN call per convolution of a
//! frozen network's fused forward, NHWC tensors throughout.
//!
//! - With a bias: `cudnnConvolutionBiasActivationForward`, `y = act(alpha1 * conv(x) +
//!   alpha2 * z + bias)`, with ReLU (the heuristics' choice for the plain convolution,
//!   and `IMPLICIT_PRECOMP_GEMM` should the fused call refuse it; cached per shape) or
//!   without (identity, which cuDNN runs only with `IMPLICIT_PRECOMP_GEMM`, its
//!   documented restriction). NaNs are not propagated by the ReLU, as PyTorch's, CUDA.jl's
//!   and Leela Chess Zero's calls of it set it. Without a residual `alpha2 = 0` and `z` is `y`
//!   itself, the aliasing cuDNN's API allows and its samples use.
//! - Without a bias: the plain forward (`cudnnConvolutionForward`), for a shortcut
//!   whose bias is added by the block's last convolution.
//!
//! A shape and dtype whose fused call cuDNN refuses (its fused API documents fewer
//! configurations than its plain convolution) is warned about once and runs from then on
//! as the plain convolution, then the bias and our residual join + ReLU as passes of
//! their own (still NHWC); an error of the plain convolution is the caller's (the fused
//! forward then falls back to the NCHW one).
//!
//! cudarc's safe call takes `x`, `z` and the bias as one type; they are passed as
//! [`Raw`] pointers (the same memory, the same stream: candle's).

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::CUdeviceptr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DeviceSlice, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use cudarc::cudnn::safe::{ConvBiasActivationForward, CudnnDataType};
use cudarc::cudnn::sys;

use super::cudnn::{algo, descs, err, handle, remember_fused, workspace};
use super::Elem;
use crate::ops::conv::cols::Geom;
use crate::ops::Slide;

/// A device pointer and its length, for cudarc's slice traits: lets one buffer be both
/// cuDNN's `z` and `y`, and `x`, `z` and the bias share a type.
struct Raw<T> {
    ptr: CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
    _t: PhantomData<T>,
}

impl<T> Raw<T> {
    fn of(v: &impl DevicePtr<T>, stream: &Arc<CudaStream>) -> Self {
        let (ptr, _sync) = v.device_ptr(stream);
        Raw {
            ptr,
            len: v.len(),
            stream: stream.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> DeviceSlice<T> for Raw<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for Raw<T> {
    fn device_ptr<'a>(&'a self, _: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        // everything runs on candle's one stream per thread: nothing to wait for
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

/// A contiguous tensor's elements on its GPU.
fn view<'a, T: Elem>(
    s: &'a Storage,
    l: &candle_core::Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match s {
        Storage::Cuda(cs) => super::view_of::<T>(cs, l),
        _ => candle_core::bail!("conv_nhwc: not a CUDA tensor"),
    }
}

/// See [`crate::ops::conv_nhwc`]; every tensor contiguous, on `x`'s GPU, of its dtype
/// (f32 or bf16).
pub(crate) fn conv_nhwc(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    z: Option<&Tensor>,
    relu: bool,
    s: Slide,
) -> candle_core::Result<Tensor> {
    let Device::Cuda(dev) = x.device() else {
        candle_core::bail!("conv_nhwc: not a CUDA tensor");
    };
    let (b, h, wd, c) = x.dims4()?;
    let (co, k, k2, cg) = w.dims4()?;
    let g = Geom::new(&[b, c, h, wd], k, s.stride, s.padding, s.groups)?;
    let out = [b, g.ho, g.wo, co];
    let bad = k != k2
        || cg * s.groups != c
        || co % s.groups != 0
        || bias.is_some_and(|t| t.dims() != [co])
        || z.is_some_and(|t| t.dims() != out)
        || (bias.is_none() && (z.is_some() || relu));
    if bad {
        candle_core::bail!(
            "conv_nhwc: input {:?}, weight {:?}, bias {:?}, residual {:?}, relu {relu}, {s:?}",
            x.dims(),
            w.dims(),
            bias.map(|t| t.dims().to_vec()),
            z.map(|t| t.dims().to_vec())
        );
    }
    let dtype = x.dtype();
    if [Some(w), bias, z]
        .into_iter()
        .flatten()
        .any(|t| t.dtype() != dtype)
    {
        candle_core::bail!("conv_nhwc: tensors of mixed dtypes");
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (bias, z) = (
        bias.map(|t| t.contiguous()).transpose()?,
        z.map(|t| t.contiguous()).transpose()?,
    );
    let (bias, z) = (bias.as_ref(), z.as_ref());
    if let Some(bt) = bias {
        let key = (g, co, dtype, relu, z.is_some());
        let fused = super::cudnn::unless_refused(
            &UNFUSED,
            key,
            || {
                crate::ops::profile::on_device("conv nhwc fused (cuDNN)", dev, || {
                    launch(dev, &g, co, &x, &w, (Some(bt), z), relu)
                })
            },
            |e| {
                tracing::warn!(
                    "cuDNN's fused convolution refused {b}x{h}x{wd}x{c} -> {co}, {k}x{k} \
                     stride {st} groups {gr}, {dtype:?} ({e}); for this shape the \
                     convolution, then its bias, residual and ReLU as passes of their own",
                    st = s.stride,
                    gr = s.groups
                )
            },
        );
        if let Some(y) = fused {
            return Ok(y);
        }
    }
    let y = crate::ops::profile::on_device("conv nhwc (cuDNN)", dev, || {
        launch(dev, &g, co, &x, &w, (None, None), false)
    })?;
    let Some(bt) = bias else {
        return Ok(y);
    };
    // the epilogue cuDNN would have fused: the bias, then our residual join + ReLU
    crate::ops::profile::on_device("conv nhwc epilogue (unfused)", dev, || {
        let y = y.broadcast_add(bt)?;
        match (z, relu) {
            (Some(z), true) => crate::ops::add_relu(&y, z).map_err(candle_core::Error::wrap),
            (Some(z), false) => y + z,
            (None, true) => crate::ops::relu(&y).map_err(candle_core::Error::wrap),
            (None, false) => Ok(y),
        }
    })
}

/// A fused call's shape: geometry, output channels, dtype, ReLU, residual.
type FusedShape = (Geom, usize, DType, bool, bool);

thread_local! {
    // shapes whose fused call cuDNN refused: the plain convolution and separate passes
    // run for them
    static UNFUSED: super::cudnn::Refused<FusedShape> = Default::default();
}

/// How many shapes of `dtype` this thread's fused calls were refused for (the GPU test
/// reports it).
#[cfg(test)]
pub(crate) fn refused_shapes(dtype: DType) -> usize {
    UNFUSED.with(|u| u.borrow().iter().filter(|k| k.2 == dtype).count())
}

/// [`call`] over contiguous tensors, its output as a tensor `[B, Ho, Wo, Co]`.
fn launch(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    x: &Tensor,
    w: &Tensor,
    (bias, z): (Option<&Tensor>, Option<&Tensor>),
    relu: bool,
) -> candle_core::Result<Tensor> {
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let bs = bias.map(|t| t.storage_and_layout());
    let zs = z.map(|t| t.storage_and_layout());
    let y = with_elem!(x.dtype(), "conv_nhwc", |T| {
        let bv = match &bs {
            Some((st, l)) => Some(view::<T>(st, l)?),
            None => None,
        };
        let zv = match &zs {
            Some((st, l)) => Some(view::<T>(st, l)?),
            None => None,
        };
        call::<T>(
            dev,
            g,
            co,
            (&view::<T>(&xs, xl)?, &view::<T>(&ws, wl)?),
            (bv.as_ref(), zv.as_ref()),
            relu,
        )?
    });
    Ok(Tensor::from_storage(
        Storage::Cuda(y),
        vec![g.b, g.ho, g.wo, co],
        BackpropOp::none(),
        false,
    ))
}

/// The cuDNN call of [`conv_nhwc`] into a new buffer.
fn call<T: Elem + CudnnDataType>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    (x, w): (&CudaView<T>, &CudaView<T>),
    (bias, z): (Option<&CudaView<T>>, Option<&CudaView<T>>),
    relu: bool,
) -> candle_core::Result<CudaStorage> {
    // SAFETY: written whole by the call below
    let mut y: CudaSlice<T> = unsafe { super::alloc_written::<T>(dev, g.b * g.ho * g.wo * co)? };
    let Some(bias) = bias else {
        super::cudnn::forward_in(dev, g, co, true, x, w, &mut y.slice_mut(..))?;
        return Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()));
    };
    let c = handle(dev)?;
    let d = descs::<T>(dev, &c, g, co, true)?;
    let mode = if relu {
        sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU
    } else {
        sys::cudnnActivationMode_t::CUDNN_ACTIVATION_IDENTITY
    };
    let act = c
        .create_activation::<f32>(
            mode,
            sys::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
            // for RELU cuDNN reads coef as the upper bound (cudnnSetActivationDescriptor):
            // none, as PyTorch's ActivationDescriptor (aten/src/ATen/cudnn/Descriptors.h)
            f64::MAX,
        )
        .map_err(|e| err("activation", e))?;
    let bias_d = c
        .create_4d_tensor::<T>(
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            [1, super::int(co)?, 1, 1],
        )
        .map_err(|e| err("bias descriptor", e))?;
    let op = ConvBiasActivationForward {
        conv: &d.conv,
        act: &act,
        x: &d.x,
        w: &d.w,
        z: &d.y,
        bias: &bias_d,
        y: &d.y,
    };
    let precomp = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    // ReLU: the heuristics' choice for the plain convolution (cudarc hands out the first
    // only); identity: the one algorithm cuDNN runs it with
    let first = if relu {
        algo(
            d.key,
            |a| &mut a.fused,
            || op.pick_algorithm(),
            "fused algorithm",
        )?
    } else {
        precomp
    };
    let stream = dev.cuda_stream();
    let mut run = |a: sys::cudnnConvolutionFwdAlgo_t| -> candle_core::Result<()> {
        let bytes = op
            .get_workspace_size(a)
            .map_err(|e| err("fused workspace", e))?;
        let mut ws = workspace(dev, bytes)?;
        let (alpha2, z) = match z {
            Some(z) => (T::ONE, Raw::of(z, &stream)),
            // not read (alpha2 = 0): y itself
            None => (T::ZERO, Raw::of(&y, &stream)),
        };
        // SAFETY: x, w, z, the bias and y hold the elements their descriptors give
        // (checked by the caller); z may be y (cuDNN computes y in place of z)
        unsafe {
            op.launch(
                a,
                ws.as_mut(),
                (T::ONE, alpha2),
                &Raw::of(x, &stream),
                w,
                &z,
                &Raw::of(bias, &stream),
                &mut y,
            )
        }
        .map_err(|e| err("fused forward", e))
    };
    if let Err(e) = run(first) {
        // an algorithm the fused call does not take: once more with the implicit GEMM
        // every configuration has (PyTorch's AlgoIterator falls back likewise), kept
        // for the shape if it runs
        if first == precomp {
            return Err(e);
        }
        run(precomp)?;
        remember_fused(d.key, precomp);
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}
