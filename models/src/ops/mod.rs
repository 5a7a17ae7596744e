//! Fast ops where stock candle is slow or broken on CPU (measured in BENCHMARKS.md;
//! docs/MODELS.md lists which layers run as these ops).
//!
//! - [`conv2d`] (conv/): im2col + GEMM, with col2im as the input gradient; GEMMs
//!   through the `gemm` crate (gemm.rs), or with bf16 products on CPUs with AVX512-BF16
//!   ([`conv2d_in`] with [`Precision::Bf16`], the GEMM of bf16.rs; inference only).
//! - [`batch_norm_train`] (bn.rs): fused train-mode BatchNorm, forward and backward.
//! - [`max_pool2d`] (pool.rs): max-pool with padding and kernel != stride, whose
//!   backward routes each gradient to its window's first maximum.
//! - [`relu`], [`add_relu`] (relu.rs): ReLU (and a residual join + ReLU) whose backward
//!   is one pass over the output.
//! - [`sgd_step`] (sgd.rs): the SGD update in place, one pass per tensor.
//! - [`normalize_levels`] (levels.rs): the loader's 8-bit crops normalised where the
//!   network runs (a quarter of the bytes to copy to a GPU).
//!
//! Each falls back to candle's generic ops for non-f32 tensors. With the `cuda` feature
//! the conv, BatchNorm, max-pool, ReLU and SGD ops also run on CUDA devices (cuda/: our
//! kernels and cuBLAS, unless `MEAL_CUDA_OPS=0`), there also over bf16 activations
//! (bf16 teachers; mixed-precision training, forward and backward); elsewhere candle's
//! ops run.

pub mod bf16;
mod bn;
mod colmajor;
mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
mod gemm;
mod levels;
mod nhwc;
mod pool;
pub mod profile;
mod relu;
mod sgd;
mod transfer;

pub use bn::{batch_norm_train, channel_affine, channel_affine_dev, BnOut};
pub use conv::{conv2d, conv2d_affine, conv2d_in, Precision};
pub use levels::normalize_levels;
pub use nhwc::{conv_nhwc, conv_nhwc_reference, Slide};
pub use pool::max_pool2d;
pub use relu::{add_relu, relu};
pub use sgd::{sgd_fast, sgd_step, SgdStep};
pub use transfer::{readback_f32, upload_levels, Readback};

use candle_core::{CpuStorage, Layout, Tensor};

/// Whether our op takes `t`: f32 on the CPU, or on a CUDA device with the `cuda` feature
/// (unless `MEAL_CUDA_OPS=0`).
pub(crate) fn ours(t: &Tensor) -> bool {
    t.dtype() == candle_core::DType::F32 && (t.device().is_cpu() || on_cuda(t))
}

/// Whether our op takes `t` where the op has a bf16 twin on CUDA: [`ours`], or bf16 on
/// a CUDA device with our ops on (a bf16 teacher's inference, and mixed-precision
/// training: bf16 activations, f32 weights).
pub(crate) fn ours_or_cuda_bf16(t: &Tensor) -> bool {
    ours(t) || (t.dtype() == candle_core::DType::BF16 && on_cuda(t))
}

/// Whether our convolution op runs through cuDNN on CUDA devices (`MEAL_CUDA_CONV=cudnn`
/// and libcudnn loads; `ops/cuda/cudnn.rs`); false without the `cuda` feature.
pub fn cudnn_convs() -> bool {
    #[cfg(feature = "cuda")]
    return cuda::cudnn_enabled();
    #[cfg(not(feature = "cuda"))]
    false
}

/// How many convolution calls (a shape, dtype and direction) cuDNN refused on this
/// thread under `MEAL_CUDA_CONV=cudnn`, each then run by our own path: a timing labelled
/// cuDNN is only cuDNN's where this is 0. Always 0 without the `cuda` feature.
pub fn cudnn_refused_calls() -> usize {
    #[cfg(feature = "cuda")]
    return cuda::cudnn_refused_calls();
    #[cfg(not(feature = "cuda"))]
    0
}

/// Output planes of fewer pixels than this run one-group CUDA forward convolutions as one
/// GEMM per chunk and a layout swap (`MEAL_CUDA_ONE_GEMM_BELOW`; 0, the default: never).
/// Always 0 without the `cuda` feature.
pub fn cuda_one_gemm_below() -> usize {
    #[cfg(feature = "cuda")]
    return cuda::one_gemm_below();
    #[cfg(not(feature = "cuda"))]
    0
}

#[cfg(feature = "cuda")]
fn on_cuda(t: &Tensor) -> bool {
    t.device().is_cuda() && cuda::enabled()
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_: &Tensor) -> bool {
    false
}

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("meal op: non-contiguous input"),
        _ => candle_core::bail!("meal op: f32 only"),
    }
}

/// `n` floats written by `fill(chunk_index, chunk)` over chunks of `chunk` elements in
/// parallel, without zeroing them first: for outputs an op writes whole, the memset of
/// `vec![0.0; n]` was ~4% of a ResNet-50 step. `fill` must write every element of its
/// chunk (checked in debug builds by the caller's tests, which compare every value).
pub(crate) fn par_fill(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    fill_chunks(n, chunk, true, fill)
}

/// [`par_fill`], or the same chunks in order on this thread when not `parallel` (inside
/// a task that is itself one of many parallel ones).
pub(crate) fn fill_chunks(
    n: usize,
    chunk: usize,
    parallel: bool,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    if parallel {
        spare
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    } else {
        spare
            .chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the `n` elements were initialised by `fill` (its contract above).
    unsafe { v.set_len(n) };
    v
}
