//! Train-mode BatchNorm(+ReLU) on CUDA, as bn.rs on CPU: per-channel mean and biased
//! variance in f64 (several blocks per channel, [`splits`], then their partial sums
//! added in order), the scale and shift from them with the CPU op's f64 arithmetic, one
//! affine(+ReLU) pass; all on the device, kept there for the backward and the caller's
//! running statistics. The backward: the two per-channel sums, then one pass for `dx`,
//! `dgamma`, `dbeta`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape};
use half::bf16;

use super::{fits, func, grid, int, per_channel, view, view_of, Elem};
use crate::ops::bn::dims_nchw;

/// What the CUDA forward keeps on the device (`bn.rs` `Kept::Device`): the batch
/// statistics and the affine it applied.
pub(crate) struct DeviceKept {
    mean: CudaSlice<f64>,
    var: CudaSlice<f64>,
    scale: CudaSlice<f32>,
    shift: CudaSlice<f32>,
}

/// Blocks per channel of the reductions (statistics and gradient sums): about
/// [`REDUCE_BLOCKS`] in all, at most one per image. From the shape alone, so a result
/// does not depend on the GPU it ran on.
pub(crate) fn splits(b: usize, c: usize) -> usize {
    (REDUCE_BLOCKS / c.max(1)).clamp(1, b.max(1))
}

/// Blocks the reductions aim for: several per SM of a large GPU (an H200 has 132).
const REDUCE_BLOCKS: usize = 1024;

/// `splits` blocks of [`super::REDUCE_THREADS`] per channel for `c` channels (the
/// grid's x dimension takes up to 2^31 - 1 blocks).
fn per_split(c: usize, splits: usize) -> candle_core::Result<LaunchConfig> {
    let blocks = c * splits;
    if blocks > i32::MAX as usize {
        candle_core::bail!("batch_norm: {c} channels x {splits} blocks per channel");
    }
    Ok(per_channel(blocks))
}

/// Per-channel mean and biased variance of NCHW `x` (f32 or bf16) on the device.
fn stats(
    dev: &CudaDevice,
    x: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaSlice<f64>, CudaSlice<f64>)> {
    with_elem!(x.0.dtype(), "batch_norm (cuda): input", |T| stats_of::<T>(
        dev, x
    ))
}

fn stats_of<T: Elem>(
    dev: &CudaDevice,
    (s, l): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaSlice<f64>, CudaSlice<f64>)> {
    let (b, c, hw) = dims_nchw(l)?;
    let x = view_of::<T>(s, l)?;
    let (mut mean, mut var) = (dev.alloc_zeros::<f64>(c)?, dev.alloc_zeros::<f64>(c)?);
    if c > 0 {
        // each block counts its images' values in 32 bits
        fits(b * hw)?;
        let sp = splits(b, c);
        // SAFETY: written whole by meal_bn_stats (one value per block and sum)
        let mut part = unsafe { super::alloc_written::<f64>(dev, 2 * c * sp)? };
        let (b, c, hw, spi) = (int(b)?, int(c)?, int(hw)?, int(sp)?);
        let stream = dev.cuda_stream();
        let f = func(dev, &format!("meal_bn_stats{}", T::SUFFIX))?;
        let mut l = stream.launch_builder(&f);
        l.arg(&x).arg(&mut part).arg(&b).arg(&c).arg(&hw).arg(&spi);
        // SAFETY: x is [b, c, hw]; part holds 2 * c * splits values, one per block and sum.
        unsafe { l.launch(per_split(c as usize, sp)?) }.w()?;
        let f = func(dev, &format!("meal_bn_stats_finish{}", T::SUFFIX))?;
        let mut l = stream.launch_builder(&f);
        l.arg(&x).arg(&part).arg(&mut mean).arg(&mut var);
        l.arg(&b).arg(&c).arg(&hw).arg(&spi);
        // SAFETY: mean and var hold c values, written once per channel.
        unsafe { l.launch(grid(c as usize)?) }.w()?;
    }
    Ok((mean, var))
}

/// The forward of `BnTrain` on CUDA over `(x, gamma, beta)` (x f32, or bf16 for
/// mixed-precision training, with f32 weights; y in x's dtype): the output and what the
/// backward needs, all computed and kept on the device (no copy to the host, so the
/// host never waits for the GPU here). The scale and shift are `bn.rs` `scale_shift`'s
/// f64 arithmetic, operation for operation (kernel `meal_bn_scale_shift`).
pub(crate) fn bn_train(
    eps: f64,
    relu: bool,
    x: (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, DeviceKept)> {
    let dev = x.0.device.clone();
    let (_, c, _) = dims_nchw(x.1)?;
    let (gamma, beta) = (view(s2, l2)?, view(s3, l3)?);
    if gamma.len() != c || beta.len() != c {
        candle_core::bail!("batch_norm: {c} channels, {} weights", gamma.len());
    }
    let (mean, var) = stats(&dev, x)?;
    let (mut scale, mut shift) = (dev.alloc_zeros::<f32>(c)?, dev.alloc_zeros::<f32>(c)?);
    if c > 0 {
        let f = func(&dev, "meal_bn_scale_shift")?;
        let ci = int(c)?;
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&gamma)
            .arg(&beta)
            .arg(&mean)
            .arg(&var)
            .arg(&eps)
            .arg(&ci);
        l.arg(&mut scale).arg(&mut shift);
        // SAFETY: gamma, beta, mean, var, scale and shift hold c values each.
        unsafe { l.launch(grid(c)?) }.w()?;
    }
    let y = affine(&dev, relu, x, &scale.slice(..), &shift.slice(..))?;
    Ok((
        y,
        DeviceKept {
            mean,
            var,
            scale,
            shift,
        },
    ))
}

/// The kept statistics as one f64 `[2, C]` tensor's storage (mean, then variance), a
/// device copy on `s`'s device.
pub(crate) fn kept_stats(
    s: &CudaStorage,
    k: &DeviceKept,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s.device.clone();
    let c = k.mean.len();
    // SAFETY: written whole by the two copies below
    let mut out = unsafe { super::alloc_written::<f64>(&dev, 2 * c)? };
    let stream = dev.cuda_stream();
    stream.memcpy_dtod(&k.mean, &mut out.slice_mut(..c)).w()?;
    stream.memcpy_dtod(&k.var, &mut out.slice_mut(c..)).w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((2, c))))
}

/// `x * scale[c] + shift[c]` (then ReLU) over NCHW `x` of f32 or bf16, one pass (the
/// affine in f32 from f32 scale and shift; bf16 rounded once).
fn affine(
    dev: &CudaDevice,
    relu: bool,
    x: (&CudaStorage, &Layout),
    sc: &CudaView<f32>,
    sh: &CudaView<f32>,
) -> candle_core::Result<CudaStorage> {
    with_elem!(x.0.dtype(), "batch_norm (cuda): input", |T| affine_of::<T>(
        dev, relu, x, sc, sh
    ))
}

fn affine_of<T: Elem>(
    dev: &CudaDevice,
    relu: bool,
    (s, l): (&CudaStorage, &Layout),
    sc: &CudaView<f32>,
    sh: &CudaView<f32>,
) -> candle_core::Result<CudaStorage> {
    let (b, c, hw) = dims_nchw(l)?;
    let n = b * c * hw;
    if sc.len() != c || sh.len() != c {
        candle_core::bail!("batch_norm: {c} channels, {} statistics", sc.len());
    }
    // SAFETY: written whole by the affine kernel
    let mut y = unsafe { super::alloc_written::<T>(dev, n)? };
    if n > 0 {
        let f = func(dev, &format!("meal_bn_affine{}", T::SUFFIX))?;
        let xv = view_of::<T>(s, l)?;
        let (c, hw, relu) = (int(c)?, int(hw)?, relu as i32);
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv).arg(sc).arg(sh).arg(&mut y).arg(&n);
        lb.arg(&c).arg(&hw).arg(&relu);
        // SAFETY: x and y hold n values, scale and shift c.
        unsafe { lb.launch(grid(n)?) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// The forward of `DeviceAffine` (eval BatchNorm) on CUDA over `(x, scale, shift)`:
/// f32 or bf16 `x`, f32 scale and shift.
pub(crate) fn device_affine(
    relu: bool,
    x: (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = x.0.device.clone();
    let (sc, sh) = (view(s2, l2)?, view(s3, l3)?);
    let y = affine(&dev, relu, x, &sc, &sh)?;
    Ok((y, x.1.shape().clone()))
}

/// The backward of `BnTrain` on CUDA from `(x, gamma, dy)`: `[dx..., dgamma...,
/// dbeta...]` as the CPU `BnBackward` packs them (f32), with the forward's kept
/// statistics and (for the fused ReLU's gate) affine. For bf16 `x` and `dy`
/// (mixed-precision training) `dx` alone, in bf16, and `[dgamma..., dbeta...]` in f32
/// as the second value.
pub(crate) fn bn_backward(
    eps: f64,
    kept: Option<&DeviceKept>,
    relu: bool,
    x: (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape, Option<CudaSlice<f32>>)> {
    let dev = x.0.device.clone();
    let (b, c, hw) = dims_nchw(x.1)?;
    let n = b * c * hw;
    let gamma = view(s2, l2)?;
    if dy.1.shape().elem_count() != n || gamma.len() != c || x.0.dtype() != dy.0.dtype() {
        candle_core::bail!(
            "batch_norm backward: gradient {:?} {:?}, weight {:?} for {:?} {:?}",
            dy.1.dims(),
            dy.0.dtype(),
            l2.dims(),
            x.1.dims(),
            x.0.dtype()
        );
    }
    let computed;
    let (mean, var) = match kept {
        Some(k) => (&k.mean, &k.var),
        None => {
            computed = stats(&dev, x)?;
            (&computed.0, &computed.1)
        }
    };
    // the gate's scale/shift: the forward's; without the ReLU they are not read, and
    // where no forward kept them zeros stand in
    let zeros;
    let (sc, sh) = match (relu, kept) {
        (_, Some(k)) => (&k.scale, &k.shift),
        (true, None) => {
            candle_core::bail!("batch_norm backward: the forward's ReLU affine is missing")
        }
        (false, None) => {
            zeros = (
                dev.alloc_zeros::<f32>(c.max(1))?,
                dev.alloc_zeros::<f32>(c.max(1))?,
            );
            (&zeros.0, &zeros.1)
        }
    };
    let a = GradArgs {
        eps,
        relu,
        dims: (b, c, hw),
        mean,
        var,
        gamma: &gamma,
        scale: sc,
        shift: sh,
    };
    match x.0.dtype() {
        DType::BF16 => {
            let (xv, dyv) = (view_of::<bf16>(x.0, x.1)?, view_of::<bf16>(dy.0, dy.1)?);
            // SAFETY: written whole by meal_bn_grad_input_bf16 (a zero-channel input
            // has no values)
            let mut dx = unsafe { super::alloc_written::<bf16>(&dev, n)? };
            // SAFETY: written whole by meal_bn_grad_input_bf16 (its first c threads)
            let mut dgb = unsafe { super::alloc_written::<f32>(&dev, 2 * c)? };
            grad::<bf16>(&dev, &a, (&xv, &dyv), &mut dx, Some(&mut dgb))?;
            Ok((
                CudaStorage::wrap_cuda_slice(dx, dev),
                x.1.shape().clone(),
                Some(dgb),
            ))
        }
        _ => {
            let (xv, dyv) = (view(x.0, x.1)?, view(dy.0, dy.1)?);
            // SAFETY: written whole by meal_bn_grad_input (dx by the grid-stride loop,
            // dgamma and dbeta by its first c threads; nothing when c = 0, then n = 0)
            let mut out = unsafe { super::alloc_written::<f32>(&dev, n + 2 * c)? };
            grad::<f32>(&dev, &a, (&xv, &dyv), &mut out, None)?;
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev),
                Shape::from(n + 2 * c),
                None,
            ))
        }
    }
}

/// What the backward's kernels read besides `x` and `dy`.
struct GradArgs<'a> {
    eps: f64,
    relu: bool,
    dims: (usize, usize, usize),
    mean: &'a CudaSlice<f64>,
    var: &'a CudaSlice<f64>,
    gamma: &'a CudaView<'a, f32>,
    scale: &'a CudaSlice<f32>,
    shift: &'a CudaSlice<f32>,
}

/// The backward's kernels: the two per-channel sums (split, then finished in order),
/// then `dx` into `dx` and `dgamma`, `dbeta` into `dgb` (f32), or, without `dgb`, all
/// three packed in `dx` (f32).
fn grad<T: Elem>(
    dev: &CudaDevice,
    a: &GradArgs,
    (xv, dy): (&CudaView<T>, &CudaView<T>),
    dx: &mut CudaSlice<T>,
    dgb: Option<&mut CudaSlice<f32>>,
) -> candle_core::Result<()> {
    let (b, c, hw) = a.dims;
    let n = b * c * hw;
    if c == 0 {
        return Ok(());
    }
    fits(b * hw)?;
    let gate = a.relu as i32;
    let sp = splits(b, c);
    // SAFETY: written whole by meal_bn_grad_sums (one value per block and sum)
    let mut part = unsafe { super::alloc_written::<f64>(dev, 2 * c * sp)? };
    // SAFETY: written whole by meal_bn_grad_finish (six values per channel)
    let mut coef = unsafe { super::alloc_written::<f32>(dev, 6 * c)? };
    let (bi, ci, hwi, spi) = (int(b)?, int(c)?, int(hw)?, int(sp)?);
    let m = (b * hw) as f64;
    let stream = dev.cuda_stream();
    let f = func(dev, &format!("meal_bn_grad_sums{}", T::SUFFIX))?;
    let mut l = stream.launch_builder(&f);
    l.arg(dy)
        .arg(xv)
        .arg(a.mean)
        .arg(a.scale)
        .arg(a.shift)
        .arg(&gate);
    l.arg(&bi).arg(&ci).arg(&hwi).arg(&spi).arg(&mut part);
    // SAFETY: dy, x [b, c, hw]; mean, scale, shift c values; part 2 * c * splits.
    unsafe { l.launch(per_split(c, sp)?) }.w()?;
    let f = func(dev, "meal_bn_grad_finish")?;
    let mut l = stream.launch_builder(&f);
    l.arg(&part)
        .arg(a.mean)
        .arg(a.var)
        .arg(a.gamma)
        .arg(&a.eps)
        .arg(&m);
    l.arg(&ci).arg(&spi).arg(&mut coef);
    // SAFETY: part 2 * c * splits; mean, var, gamma c values; coef 6c, written once per
    // channel.
    unsafe { l.launch(grid(c)?) }.w()?;
    let f = func(dev, &format!("meal_bn_grad_input{}", T::SUFFIX))?;
    let mut l = stream.launch_builder(&f);
    l.arg(dy)
        .arg(xv)
        .arg(&coef)
        .arg(a.scale)
        .arg(a.shift)
        .arg(&gate)
        .arg(&bi)
        .arg(&ci)
        .arg(&hwi);
    let packed = dgb.is_none();
    if dx.len() != if packed { n + 2 * c } else { n } {
        candle_core::bail!("batch_norm backward: {} outputs for {n} values", dx.len());
    }
    l.arg(dx);
    if let Some(dgb) = dgb {
        if dgb.len() != 2 * c {
            candle_core::bail!(
                "batch_norm backward: {} weight gradients for {c}",
                dgb.len()
            );
        }
        l.arg(dgb);
    }
    // SAFETY: dx holds n (+ 2c packed) values, dgb 2c; the grid covers max(n, c) threads.
    unsafe { l.launch(grid(n.max(c))?) }.w()?;
    Ok(())
}
