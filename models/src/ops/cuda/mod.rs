//! The CUDA side of our ops (feature `cuda`): the same algorithms as the CPU ops, as the
//! `cuda_fwd` of the same candle custom ops, so the graph and the backward wiring are
//! shared and only the arithmetic moves to the GPU.
//!
//! - Convolution (conv.rs): `im2col` into a `[C*k*k, B*Ho*Wo]` column matrix, cuBLAS
//!   SGEMMs for the output, the weight gradient and the column gradient, `col2im` for
//!   the input gradient. candle 0.11 back-propagates a CUDA convolution into its input
//!   with a naive direct `conv_transpose2d` kernel (candle-kernels `conv.cu`).
//! - Train-mode BatchNorm(+ReLU) (bn.rs): f64 per-channel statistics, one affine pass;
//!   the backward's two per-channel sums, then one pass.
//! - Max-pool (pool.rs): the forward and a gather backward with the CPU op's first-maximum
//!   rule (candle's max-pool backward fails when kernel != stride).
//! - SGD (sgd.rs): the in-place momentum-buffer and parameter updates.
//! - Inference of bf16 teachers and 8-bit batches: the convolution forward in bf16
//!   (conv.rs: cuBLAS `GemmEx`, f32 sums, tensor cores), eval BatchNorm over bf16
//!   (bn.rs), and the loader's 8-bit crops normalised through its table (levels.rs).
//!
//! The kernels are models/kernels/meal_ops.cu, compiled to PTX by build.rs and loaded
//! once per device. `MEAL_CUDA_OPS=0` turns them off (candle's generic ops then run, as
//! without the feature): the escape hatch and the A/B switch of the device benchmark.
//! tests/ compares every op with its CPU twin wherever a GPU is present.
//!
//! Ordering rests on one rule: a device's tensors are made, used and dropped on one
//! thread. Every launch goes on candle's stream, the calling thread's per-thread
//! stream, and cudarc orders nothing across threads here (device.rs says why its event
//! tracking is off); a device list runs one worker thread per device.

/// `$body` with the type `$T` standing for the element type (an [`Elem`]) that `$dt`
/// names: f32 or bf16, the two our kernels are instantiated for. Another dtype is an
/// error naming `$what`. Every op's dispatch from a tensor's dtype to its generic code
/// goes through here (with [`elem_dtype`] where several inputs must agree).
macro_rules! with_elem {
    ($dt:expr, $what:expr, |$T:ident| $body:expr) => {
        match $dt {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            d => candle_core::bail!("{}: {d:?} (f32 or bf16)", $what),
        }
    };
}

mod bn;
mod conv;
mod cudnn;
mod levels;
mod nhwc;
mod pinned;
mod pool;
mod relu;
mod sgd;
#[cfg(test)]
mod tests;

pub(crate) use bn::{bn_backward, bn_train, device_affine, kept_stats, DeviceKept};
pub(crate) use conv::{conv_backward, conv_forward, one_gemm_below};
pub(crate) use cudnn::enabled as cudnn_enabled;
pub(crate) use cudnn::refused_count as cudnn_refused_calls;
pub(crate) use levels::normalize_levels;
pub(crate) use nhwc::conv_nhwc;
pub(crate) use pinned::{readback_f32, upload_u8, Pending};
pub(crate) use pool::{pool_backward, pool_forward};
pub(crate) use relu::{relu_backward, relu_forward};
pub(crate) use sgd::{sgd_buffer, sgd_param};

use candle_core::cuda_backend::cudarc::cublas::{
    sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// Threads per block of the elementwise (grid-stride) kernels.
const THREADS: u32 = 256;
/// Threads per block of the per-channel reductions (`BN_THREADS` in meal_ops.cu).
pub(crate) const REDUCE_THREADS: u32 = 256;

/// Whether our CUDA ops run (default) or candle's generic ops (`MEAL_CUDA_OPS=0`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::switches::switch("MEAL_CUDA_OPS", true))
}

/// Kernel `name` of meal_ops.cu on `dev` (the module is loaded on first use).
/// Launch it with `dev.cuda_stream().launch_builder(&f)`: candle's own stream, so it is
/// ordered with candle's kernels and cuBLAS calls.
pub(crate) fn func(dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, "meal_ops", ptx::MEAL_OPS)?
        .into_cuda_function())
}

/// The most elements one launch covers: the kernels index in 32 bits (meal_ops.cu
/// `GRID_STRIDE`), and below 2^31 a grid-stride step cannot wrap.
pub(crate) const MAX_ELEMS: usize = 1 << 31;

/// An error unless `n` elements fit one launch ([`MAX_ELEMS`]).
pub(crate) fn fits(n: usize) -> candle_core::Result<()> {
    if n > MAX_ELEMS {
        // only the convolutions split their work; an activation this large (SENet-154's
        // stem at 1338 crops of 224 px) is refused as a batch too large for our kernels
        candle_core::bail!(
            "an activation of {n} elements, more than our CUDA kernels' 2^31 (32-bit \
             indices): use a smaller batch"
        );
    }
    Ok(())
}

/// A grid-stride launch over `n` elements (`0 < n <=` [`MAX_ELEMS`]): at most 65535
/// blocks, each thread then loops.
pub(crate) fn grid(n: usize) -> candle_core::Result<LaunchConfig> {
    fits(n)?;
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65535) as u32;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One block of [`REDUCE_THREADS`] per channel.
pub(crate) fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The one dtype of an op's inputs `dtypes` (those that share the element type), or an
/// error naming `what` and all of them.
pub(crate) fn elem_dtype(what: &str, dtypes: &[DType]) -> candle_core::Result<DType> {
    match dtypes {
        [first, rest @ ..] if rest.iter().all(|d| d == first) => Ok(*first),
        _ => candle_core::bail!("{what}: inputs of dtypes {dtypes:?}"),
    }
}

/// The contiguous f32 elements of `(s, l)`.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, f32>> {
    view_of::<f32>(s, l)
}

/// The contiguous `T` elements of `(s, l)` (an error if the storage holds another dtype).
pub(crate) fn view_of<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("meal op: non-contiguous input"),
    }
}

/// `i32` kernel argument (cuBLAS and the kernels index planes and rows in `int`).
pub(crate) fn int(v: usize) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("meal op: {v} exceeds i32")))
}

/// [`int`] of each of `v`, in order (a kernel's geometry arguments).
pub(crate) fn ints<const N: usize>(v: [usize; N]) -> candle_core::Result<Vec<i32>> {
    v.into_iter().map(int).collect()
}

/// cuBLAS's flag for an operand transposed (`t`) or not.
fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

/// The column-major cuBLAS call of the row-major `c[m, n] = op(a) * op(b) + beta * c`
/// (`ops::colmajor`, tested there), with cuBLAS's operands in the order `(b, a)`.
fn row_major_cfg<A>(
    (m, n, k): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    alpha: A,
    beta: A,
) -> candle_core::Result<GemmConfig<A>> {
    let g = super::colmajor::row_major(m, n, k, a_t, b_t);
    Ok(GemmConfig {
        transa: op(g.trans_a),
        transb: op(g.trans_b),
        m: int(g.m)?,
        n: int(g.n)?,
        k: int(g.k)?,
        alpha,
        lda: int(g.lda)?,
        ldb: int(g.ldb)?,
        beta,
        ldc: int(g.ldc)?,
    })
}

/// `n` elements of uninitialised device memory that the caller writes whole before
/// anything reads them (each call's `SAFETY` names what writes them). In test builds
/// every byte is first set to 0xFF, a NaN in f32, f64 and bf16, so that an element a
/// kernel leaves unwritten shows as NaN in the op tests against the CPU twins, where
/// whatever the memory pool held (often zeros from an earlier buffer) could hide it.
///
/// # Safety
///
/// Every element must be written before it is read.
pub(crate) unsafe fn alloc_written<T: DeviceRepr>(
    dev: &CudaDevice,
    n: usize,
) -> candle_core::Result<CudaSlice<T>> {
    #[allow(unused_mut)]
    let mut s = dev.alloc::<T>(n)?;
    #[cfg(test)]
    {
        use candle_core::cuda_backend::cudarc::driver::{result, DevicePtrMut};
        let stream = dev.cuda_stream();
        let bytes = s.num_bytes();
        if bytes > 0 {
            let (ptr, _record) = s.device_ptr_mut(&stream);
            // SAFETY: the slice's own bytes, on the stream it was allocated on; any bit
            // pattern is a valid f32, f64, bf16 or byte
            result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()).w()?;
        }
    }
    Ok(s)
}

/// [`alloc_written`] when `written`, else zeros: the output of an op whose sums are
/// empty (no images, channels or pixels), which nothing writes.
///
/// # Safety
///
/// When `written`, every element must be written before it is read.
pub(crate) unsafe fn alloc_written_or_zeros<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
    written: bool,
) -> candle_core::Result<CudaSlice<T>> {
    if written {
        alloc_written(dev, n)
    } else {
        dev.alloc_zeros(n)
    }
}

/// Row-major `c[m, n] = op(a) * op(b) + beta * c` through cuBLAS, all in `T` (bf16:
/// f32 sums, rounded once). `op(a)` is `[m, k]`, stored `[k, m]` when `a_t`; `op(b)`
/// is `[k, n]`, stored `[n, k]` when `b_t`.
pub(crate) fn gemm<T: Elem>(
    dev: &CudaDevice,
    dims: (usize, usize, usize),
    (a, a_t): (&CudaView<T>, bool),
    (b, b_t): (&CudaView<T>, bool),
    beta: T,
    c: &mut CudaViewMut<T>,
) -> candle_core::Result<()>
where
    CudaBlas: Gemm<T>,
{
    let cfg = row_major_cfg(dims, (a_t, b_t), T::ONE, beta)?;
    // SAFETY: the callers pass views of exactly [m,k]/[k,n]/[m,n] elements (checked by
    // the kernels' shapes in conv.rs); cuBLAS runs on the device's stream.
    unsafe { dev.cublas_handle().gemm(cfg, b, a, c) }.w()
}

/// [`gemm`] of `T` operands into an f32 `c` (f32 sums kept in f32): a weight gradient
/// accumulated over a batch's chunks without rounding to bf16 in between, as cuDNN's
/// mixed-precision weight gradient sums in f32.
pub(crate) fn gemm_into_f32<T: Elem>(
    dev: &CudaDevice,
    dims: (usize, usize, usize),
    (a, a_t): (&CudaView<T>, bool),
    (b, b_t): (&CudaView<T>, bool),
    beta: f32,
    c: &mut CudaViewMut<f32>,
) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::cublas::{result, sys};
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
    let cfg = row_major_cfg(dims, (a_t, b_t), 1.0f32, beta)?;
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let (ap, _ra) = a.device_ptr(&stream);
    let (bp, _rb) = b.device_ptr(&stream);
    let (cp, _rc) = c.device_ptr_mut(&stream);
    // SAFETY: as `gemm`: views of exactly the call's elements, on the device's stream
    // (cuBLAS's handle is bound to it); alpha and beta outlive the call.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            cfg.transa,
            cfg.transb,
            cfg.m,
            cfg.n,
            cfg.k,
            (&cfg.alpha) as *const f32 as *const _,
            bp as *const _,
            T::CUDA_TYPE,
            cfg.lda,
            ap as *const _,
            T::CUDA_TYPE,
            cfg.ldb,
            (&cfg.beta) as *const f32 as *const _,
            cp as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            cfg.ldc,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| candle_core::Error::Msg(format!("meal gemm (cuBLAS): {e:?}")))
}

/// An element type our CUDA GEMMs and layout kernels take: f32, or bf16 (cuBLAS
/// `GemmEx` with f32 accumulation, tensor cores).
pub(crate) trait Elem:
    CudaDType + DeviceRepr + ValidAsZeroBits + cudarc::cudnn::CudnnDataType + Copy + 'static + Sized
{
    /// 1 and 0 (the GEMM's alpha and beta).
    const ONE: Self;
    const ZERO: Self;
    /// The kernel name suffix of this type's instantiation (`meal_im2col{SUFFIX}`).
    const SUFFIX: &'static str;
    /// cuBLAS's name of the type.
    const CUDA_TYPE: candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType;

    /// `dst = src` rounded to this type (a copy for f32; kernel `meal_to_bf16`).
    fn store_f32(
        dev: &CudaDevice,
        src: &CudaView<f32>,
        dst: &mut CudaViewMut<Self>,
    ) -> candle_core::Result<()>;
}

impl Elem for f32 {
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
    const SUFFIX: &'static str = "";
    const CUDA_TYPE: candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType =
        candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType::CUDA_R_32F;

    fn store_f32(
        dev: &CudaDevice,
        src: &CudaView<f32>,
        dst: &mut CudaViewMut<f32>,
    ) -> candle_core::Result<()> {
        dev.cuda_stream().memcpy_dtod(src, dst).w()
    }
}

impl Elem for half::bf16 {
    const ONE: Self = half::bf16::ONE;
    const ZERO: Self = half::bf16::ZERO;
    const SUFFIX: &'static str = "_bf16";
    const CUDA_TYPE: candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType =
        candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;

    fn store_f32(
        dev: &CudaDevice,
        src: &CudaView<f32>,
        dst: &mut CudaViewMut<half::bf16>,
    ) -> candle_core::Result<()> {
        let n = src.len();
        if dst.len() != n {
            candle_core::bail!("meal to_bf16: {n} values into {}", dst.len());
        }
        if n == 0 {
            return Ok(());
        }
        let f = func(dev, "meal_to_bf16")?;
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(src).arg(dst).arg(&n);
        // SAFETY: src and dst hold n values (checked above).
        unsafe { l.launch(grid(n)?) }.w()?;
        Ok(())
    }
}

/// The strided-batched column-major call `g` (of `ops::colmajor`, tested there) with
/// alpha 1, beta 0: `c_j = op(a_j) * op(b_j)` for each entry `j`. Each operand's last
/// element is checked to lie inside its view first (cuBLAS would not).
pub(crate) fn gemm_batched<T: Elem>(
    dev: &CudaDevice,
    g: super::colmajor::Batched,
    a: &CudaView<T>,
    b: &CudaView<T>,
    c: &mut CudaViewMut<T>,
) -> candle_core::Result<()>
where
    CudaBlas: Gemm<T>,
{
    let d = g.call;
    if g.batch == 0 || d.m == 0 || d.n == 0 || d.k == 0 {
        candle_core::bail!("meal gemm_batched: empty call {g:?}");
    }
    // one past the last element of each buffer the call reaches (tested in colmajor)
    let [ra, rb, rc] = g.reach();
    let ends = [(ra, a.len()), (rb, b.len()), (rc, c.len())];
    if ends.iter().any(|&(need, have)| need > have) {
        candle_core::bail!("meal gemm_batched: {g:?} reaches past its buffers {ends:?}");
    }
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(d.trans_a),
            transb: op(d.trans_b),
            m: int(d.m)?,
            n: int(d.n)?,
            k: int(d.k)?,
            alpha: T::ONE,
            lda: int(d.lda)?,
            ldb: int(d.ldb)?,
            beta: T::ZERO,
            ldc: int(d.ldc)?,
        },
        batch_size: int(g.batch)?,
        stride_a: g.stride_a as i64,
        stride_b: g.stride_b as i64,
        stride_c: g.stride_c as i64,
    };
    // SAFETY: every entry's reads and writes lie inside the views (checked above); cuBLAS
    // runs on the device's stream.
    unsafe { dev.cublas_handle().gemm_strided_batched(cfg, a, b, c) }.w()
}

#[cfg(test)]
mod launch_tests {
    /// The reductions' shared arrays and loops are sized by meal_ops.cu's `BN_THREADS`,
    /// their launches by `REDUCE_THREADS`: a block of another size would write past the
    /// shared array or read it uninitialised, silently. Runs without a GPU (make
    /// check-cuda).
    #[test]
    fn reduction_blocks_match_the_kernels_shared_arrays() {
        let src = include_str!("../../../kernels/meal_ops.cu");
        let n: u32 = src
            .lines()
            .find_map(|l| l.strip_prefix("#define BN_THREADS "))
            .expect("meal_ops.cu defines BN_THREADS")
            .trim()
            .parse()
            .expect("BN_THREADS is a number");
        assert_eq!(n, super::REDUCE_THREADS);
    }
}
