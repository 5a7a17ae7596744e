//! Convolutions through cuDNN, the library PyTorch's run on (`MEAL_CUDA_CONV=cudnn`):
//! the forward (grouped too), the input gradient and the weight gradient of our `Conv`
//! op, each one cuDNN call over the whole batch with the algorithm cuDNN's heuristics
//! pick (`cudnnGetConvolution*Algorithm_v7`, as `torch.backends.cudnn.benchmark=False`
//! does). Our own path (conv.rs: `im2col`/`col2im` and cuBLAS GEMMs, the CPU op's
//! algorithm) stays the default until a device run has compared the two
//! (bench/gpu_check.sh runs both).
//!
//! f32 convolutions follow the process's TF32 switch (`set_tf32`): default math when on
//! (cuDNN then permits TF32 tensor cores, as PyTorch's `cudnn.allow_tf32`), FMA-only math
//! when off (exact f32, as precompute wants). bf16 is cuDNN's pseudo-bf16 configuration: bf16
//! tensors, f32 sums, rounded once (candle's cudnn.rs does the same). The heuristics
//! may pick backward algorithms that add with atomics, so a training run on this path
//! is not bit-reproducible (PyTorch's with `cudnn.deterministic=False` neither); the
//! forward, and so precompute's labels, are.
//!
//! libcudnn is loaded at first use (cudarc's dynamic loading); where it cannot be
//! loaded, [`enabled`] says so once and our own path runs. A convolution call cuDNN
//! fails on (no algorithm for it, a workspace that does not fit; keyed by shape, dtype,
//! TF32 and direction) is warned about once and runs our path from then on, the other
//! calls staying on cuDNN ([`attempt`], counted by [`refused_count`]); a handle that
//! cannot be made (a partial install, sub-libraries that do not match) turns cuDNN off
//! for the process.
//! Tensors of 2^31 elements or more, which cuDNN's API refuses, go to our path
//! ([`takes`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::thread::LocalKey;

use candle_core::cuda_backend::cudarc::driver::{CudaView, CudaViewMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::cudnn::sys;

use super::Elem;
use crate::ops::conv::cols::Geom;

/// Set once cuDNN itself failed (its handle could not be made): our own path runs from
/// then on.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shapes cuDNN refused on this thread (candle's CUDA streams, and so our cuDNN handles,
/// are per thread): each is warned about once and not tried again.
pub(super) type Refused<K> = RefCell<HashSet<K>>;

/// `call` unless `key` was refused before; on an error the key is refused from then on,
/// `warn` told the error, and `None` returned (the caller runs its fallback).
pub(super) fn unless_refused<K: Eq + Hash, T>(
    refused: &'static LocalKey<Refused<K>>,
    key: K,
    call: impl FnOnce() -> candle_core::Result<T>,
    warn: impl FnOnce(&candle_core::Error),
) -> Option<T> {
    if refused.with(|r| r.borrow().contains(&key)) {
        return None;
    }
    match call() {
        Ok(y) => Some(y),
        Err(e) => {
            refused.with(|r| r.borrow_mut().insert(key));
            warn(&e);
            None
        }
    }
}

/// A call that cuDNN may refuse: the shape, the output channels, the dtype, whether TF32
/// is allowed, and the direction (`true`: the backward's two gradients), so that a
/// configuration cuDNN lacks (say a bf16 weight gradient) leaves the others on cuDNN.
type Call = (Geom, usize, sys::cudnnDataType_t, bool, bool);

fn call_of<T: CudnnDataType>(g: &Geom, co: usize, backward: bool) -> Call {
    let tf32 = candle_core::cuda_backend::gemm_reduced_precision_f32();
    (*g, co, T::DATA_TYPE, tf32, backward)
}

thread_local! {
    // convolution calls cuDNN refused (a configuration it does not support, a workspace
    // that did not fit): ours runs for those, cuDNN for the rest
    static REFUSED: Refused<Call> = RefCell::new(HashSet::new());
}

/// How many convolution calls cuDNN refused on this thread (each then runs our own
/// path): the device check prints it beside its cuDNN timings and the op tests assert
/// it, so a cuDNN line never silently times ours.
pub(crate) fn refused_count() -> usize {
    REFUSED.with(|r| r.borrow().len())
}

/// `call` (a convolution of `g` into `co` channels in `T`, its forward or its `backward`)
/// through cuDNN; on an error `false`, with a warning, and the call is not tried again
/// (the caller then runs our own path).
pub(crate) fn attempt<T: CudnnDataType>(
    g: &Geom,
    co: usize,
    backward: bool,
    call: impl FnOnce() -> candle_core::Result<()>,
) -> bool {
    unless_refused(&REFUSED, call_of::<T>(g, co, backward), call, |e| {
        tracing::warn!(
            "MEAL_CUDA_CONV=cudnn: {}x{}x{}x{} -> {co} channels, {k}x{k} stride {s} \
             groups {gr}, {dt:?}, {dir}: {e}; our own convolution runs for this call",
            g.b,
            g.c,
            g.h,
            g.w,
            k = g.k,
            s = g.stride,
            gr = g.groups,
            dt = T::DATA_TYPE,
            dir = if backward { "backward" } else { "forward" },
        );
    })
    .is_some()
}

/// Whether this convolution call goes to cuDNN: cuDNN is [`enabled`], its API takes the
/// shape (every tensor under 2^31 elements), and it has not refused the call before.
pub(crate) fn takes<T: CudnnDataType>(g: &Geom, co: usize, backward: bool) -> bool {
    let lim = i32::MAX as usize;
    enabled()
        && g.b * g.c * g.h * g.w <= lim
        && g.b * co * g.ho * g.wo <= lim
        && co * g.rows() <= lim
        && !REFUSED.with(|r| r.borrow().contains(&call_of::<T>(g, co, backward)))
}

/// Whether convolutions go through cuDNN: `MEAL_CUDA_CONV=cudnn`, libcudnn loads, and
/// its handle could be made.
pub(crate) fn enabled() -> bool {
    loaded() && !FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `MEAL_CUDA_CONV=cudnn` asks for cuDNN's convolutions.
pub(super) fn asked() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| match std::env::var("MEAL_CUDA_CONV") {
        Ok(v) if v.trim().eq_ignore_ascii_case("cudnn") => true,
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("ours") => false,
        Ok(v) => {
            tracing::warn!("MEAL_CUDA_CONV={v}: expected cudnn or ours; ours are used");
            false
        }
        Err(_) => false,
    })
}

fn loaded() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if !asked() {
            return false;
        }
        // SAFETY: only tries to dlopen the library's candidate names.
        let present = unsafe { sys::is_culib_present() };
        if !present {
            tracing::warn!(
                "MEAL_CUDA_CONV=cudnn: libcudnn (libcudnn.so.9) could not be loaded (set LD_LIBRARY_PATH); our own convolutions run"
            );
        }
        present
    })
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device (candle's
    // cudnn.rs keeps them the same way). Never destroyed: cudarc's Drop unwraps
    // cudnnDestroy, and after a CUDA error that panic inside a thread-local destructor
    // would abort the process (and lose the results of the tests after it); one handle
    // per worker thread and device is left to the process's exit.
    static HANDLES: RefCell<HashMap<DeviceId, ManuallyDrop<Arc<Cudnn>>>> =
        RefCell::new(HashMap::new());
    // the heuristics' choice per call shape, asked once
    static ALGOS: RefCell<HashMap<Key, Algos>> = RefCell::new(HashMap::new());
}

/// The algorithms chosen for one call shape (each asked for at its first use).
#[derive(Clone, Copy, Default)]
pub(super) struct Algos {
    pub(super) forward: Option<sys::cudnnConvolutionFwdAlgo_t>,
    data: Option<sys::cudnnConvolutionBwdDataAlgo_t>,
    filter: Option<sys::cudnnConvolutionBwdFilterAlgo_t>,
    /// The fused convolution + bias + ReLU (NHWC, [`conv_nhwc`]).
    pub(super) fused: Option<sys::cudnnConvolutionFwdAlgo_t>,
}

/// What an algorithm choice depends on: the device, the shape, the output channels, the
/// dtype, whether TF32 is allowed and whether the tensors are NHWC.
pub(super) type Key = (DeviceId, Geom, usize, sys::cudnnDataType_t, bool, bool);

pub(super) fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("meal conv2d (cuDNN {what}): {e:?}"))
}

pub(super) fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(Arc::clone(c));
        }
        // cudarc's Cudnn::new unwraps this (a pending CUDA error would panic there)
        let made = dev
            .cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| err("context", e))
            // the sub-libraries first: a handle made and then dropped on their failure
            // would unwrap cudnnDestroy in cudarc's Drop
            .and_then(|()| sub_libraries())
            .and_then(|()| Cudnn::new(dev.cuda_stream()).map_err(|e| err("handle", e)));
        let c = match made {
            Ok(c) => c,
            Err(e) => {
                if !FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("MEAL_CUDA_CONV=cudnn: {e}; our own convolutions run");
                }
                return Err(e);
            }
        };
        h.borrow_mut()
            .insert(dev.id(), ManuallyDrop::new(Arc::clone(&c)));
        Ok(c)
    })
}

/// cuDNN 9's `libcudnn.so.9` is a shim that loads its sub-libraries at first use: check
/// the two our calls need (cnn, ops) once, and say which cuDNN runs, so that a partial
/// install fails here, naming itself, instead of as a refusal of every shape.
fn sub_libraries() -> candle_core::Result<()> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // cudarc panics where a symbol is missing (an older cuDNN)
            let r = std::panic::catch_unwind(|| {
                // SAFETY: plain queries of the loaded library
                unsafe {
                    sys::cudnnCnnVersionCheck().result()?;
                    sys::cudnnOpsVersionCheck().result()
                }
            });
            match r {
                Ok(Ok(())) => {
                    tracing::info!(
                        "cuDNN {} (built for CUDA runtime {})",
                        cudarc::cudnn::result::get_version(),
                        cudarc::cudnn::result::get_cudart_version()
                    );
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("its sub-libraries (cnn, ops) do not match: {e:?}")),
                Err(_) => Err("its version checks are missing (cuDNN 9 is needed)".into()),
            }
        })
        .clone()
        .map_err(|e| err("library", e))
}

/// The descriptors of one convolution: input `[B, C, H, W]`, weight `[Co, C/groups, k,
/// k]`, output `[B, Co, Ho, Wo]`, all contiguous, NCHW (our ops) or all NHWC (the fused
/// forward's: input `[B, H, W, C]`, weight `[Co, k, k, C/groups]`).
pub(super) struct Descs<T: CudnnDataType> {
    pub(super) conv: ConvDescriptor<f32>,
    pub(super) x: TensorDescriptor<T>,
    pub(super) w: FilterDescriptor<T>,
    pub(super) y: TensorDescriptor<T>,
    pub(super) key: Key,
}

fn i(v: usize) -> candle_core::Result<i32> {
    super::int(v)
}

pub(super) fn descs<T: Elem + CudnnDataType>(
    dev: &CudaDevice,
    c: &Arc<Cudnn>,
    g: &Geom,
    co: usize,
    nhwc: bool,
) -> candle_core::Result<Descs<T>> {
    // cuDNN's dimensions are given in NCHW order whatever the memory layout
    let format = if nhwc {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
    } else {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
    };
    let mut conv = c
        .create_conv2d::<f32>(
            [i(g.pad)?, i(g.pad)?],
            [i(g.stride)?, i(g.stride)?],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(|e| err("descriptor", e))?;
    if g.groups > 1 {
        conv.set_group_count(i(g.groups)?)
            .map_err(|e| err("groups", e))?;
    }
    // f32: TF32 tensor cores only where the process allows them (set_tf32). cuDNN's
    // cudnnMathType_t: DEFAULT permits TF32 on Ampere and later, FMA forbids tensor cores,
    // TENSOR_OP is for the reduced-precision types (PyTorch's ConvolutionDescriptor::set,
    // aten/src/ATen/cudnn/Descriptors.h, makes the same three choices)
    let tf32 = candle_core::cuda_backend::gemm_reduced_precision_f32();
    let math = match (T::DATA_TYPE, tf32) {
        (sys::cudnnDataType_t::CUDNN_DATA_FLOAT, false) => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        (sys::cudnnDataType_t::CUDNN_DATA_FLOAT, true) => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    };
    conv.set_math_type(math).map_err(|e| err("math type", e))?;
    let x = c
        .create_4d_tensor::<T>(format, [i(g.b)?, i(g.c)?, i(g.h)?, i(g.w)?])
        .map_err(|e| err("input descriptor", e))?;
    let w = c
        .create_4d_filter::<T>(format, [i(co)?, i(g.c / g.groups)?, i(g.k)?, i(g.k)?])
        .map_err(|e| err("filter descriptor", e))?;
    let y = c
        .create_4d_tensor::<T>(format, [i(g.b)?, i(co)?, i(g.ho)?, i(g.wo)?])
        .map_err(|e| err("output descriptor", e))?;
    Ok(Descs {
        conv,
        x,
        w,
        y,
        key: (dev.id(), *g, co, T::DATA_TYPE, tf32, nhwc),
    })
}

/// The algorithm in `field` of `key`'s [`Algos`]: cached, else `pick`ed and kept.
pub(super) fn algo<A: Copy>(
    key: Key,
    field: fn(&mut Algos) -> &mut Option<A>,
    pick: impl FnOnce() -> Result<A, cudarc::cudnn::CudnnError>,
    what: &str,
) -> candle_core::Result<A> {
    let cached = ALGOS.with(|m| m.borrow_mut().get_mut(&key).and_then(|a| *field(a)));
    if let Some(a) = cached {
        return Ok(a);
    }
    let a = picked(pick, what)?;
    ALGOS.with(|m| *field(m.borrow_mut().entry(key).or_default()) = Some(a));
    Ok(a)
}

/// The heuristics' algorithm, an error where they fail. cudarc's `pick_algorithm` asserts,
/// so panics, when cuDNN's heuristics return no algorithm (cudarc 0.19
/// src/cudnn/safe/conv.rs); here that is a refusal like any other, which the callers
/// answer with their fallback (the panic hook still prints its line).
fn picked<A>(
    pick: impl FnOnce() -> Result<A, cudarc::cudnn::CudnnError>,
    what: &str,
) -> candle_core::Result<A> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(pick)) {
        Ok(a) => a.map_err(|e| err(what, e)),
        Err(_) => candle_core::bail!("cuDNN {what}: its heuristics returned no algorithm"),
    }
}

/// Keep `a` as `key`'s fused algorithm (one that ran where the heuristics' first did not).
pub(super) fn remember_fused(key: Key, a: sys::cudnnConvolutionFwdAlgo_t) {
    ALGOS.with(|m| m.borrow_mut().entry(key).or_default().fused = Some(a));
}

/// A workspace of `bytes` on `dev` (none for 0).
pub(super) fn workspace(
    dev: &CudaDevice,
    bytes: usize,
) -> candle_core::Result<Option<candle_core::cuda_backend::cudarc::driver::CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: cuDNN's scratch space, written before it is read
    Ok(Some(unsafe { super::alloc_written::<u8>(dev, bytes)? }))
}

/// `y = conv(x, w)` over the whole batch (`y` written whole).
pub(crate) fn forward<T: Elem + CudnnDataType>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    x: &CudaView<T>,
    w: &CudaView<T>,
    y: &mut CudaViewMut<T>,
) -> candle_core::Result<()> {
    forward_in(dev, g, co, false, x, w, y)
}

/// [`forward`] over NCHW tensors, or over NHWC ones when `nhwc` (input `[B, H, W, C]`,
/// weight `[Co, k, k, C/groups]`, output `[B, Ho, Wo, Co]`: the fused forward's).
pub(super) fn forward_in<T: Elem + CudnnDataType>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    nhwc: bool,
    x: &CudaView<T>,
    w: &CudaView<T>,
    y: &mut CudaViewMut<T>,
) -> candle_core::Result<()> {
    let c = handle(dev)?;
    let d = descs::<T>(dev, &c, g, co, nhwc)?;
    let op = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let a = algo(
        d.key,
        |a| &mut a.forward,
        || op.pick_algorithm(),
        "forward algorithm",
    )?;
    let bytes = op
        .get_workspace_size(a)
        .map_err(|e| err("forward workspace", e))?;
    let mut ws = workspace(dev, bytes)?;
    // SAFETY: x, w and y hold the elements their descriptors give (the caller checked
    // the geometry against the buffers), on the handle's stream (candle's).
    unsafe { op.launch(a, ws.as_mut(), (T::ONE, T::ZERO), x, w, y) }.map_err(|e| err("forward", e))
}

/// The gradients of the whole batch: `dx` (when wanted) and `dw`, both written whole.
pub(crate) fn backward<T: Elem + CudnnDataType>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    (x, w, dy): (&CudaView<T>, &CudaView<T>, &CudaView<T>),
    dx: Option<&mut CudaViewMut<T>>,
    dw: &mut CudaViewMut<T>,
) -> candle_core::Result<()> {
    let c = handle(dev)?;
    let d = descs::<T>(dev, &c, g, co, false)?;
    if let Some(dx) = dx {
        let op = ConvBackwardData {
            conv: &d.conv,
            dx: &d.x,
            w: &d.w,
            dy: &d.y,
        };
        let a = algo(
            d.key,
            |a| &mut a.data,
            || op.pick_algorithm(),
            "data algorithm",
        )?;
        let bytes = op
            .get_workspace_size(a)
            .map_err(|e| err("data workspace", e))?;
        let mut ws = workspace(dev, bytes)?;
        // SAFETY: as in `forward`
        unsafe { op.launch(a, ws.as_mut(), (T::ONE, T::ZERO), dx, w, dy) }
            .map_err(|e| err("input gradient", e))?;
    }
    let op = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let a = algo(
        d.key,
        |a| &mut a.filter,
        || op.pick_algorithm(),
        "filter algorithm",
    )?;
    let bytes = op
        .get_workspace_size(a)
        .map_err(|e| err("filter workspace", e))?;
    let mut ws = workspace(dev, bytes)?;
    // SAFETY: as in `forward`
    unsafe { op.launch(a, ws.as_mut(), (T::ONE, T::ZERO), x, dw, dy) }
        .map_err(|e| err("weight gradient", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SEEN: Refused<u32> = RefCell::new(HashSet::new());
    }

    /// A refused key is not tried again and warns once; other keys still run; a panic in
    /// the heuristics' pick is an error, not an abort. Needs no GPU.
    #[test]
    fn a_refused_shape_is_warned_once_and_not_tried_again() {
        let (mut calls, mut warned) = (0, 0);
        let mut go = |key: u32, fail: bool| {
            unless_refused(
                &SEEN,
                key,
                || {
                    calls += 1;
                    if fail {
                        candle_core::bail!("refused")
                    }
                    Ok(key)
                },
                |_| warned += 1,
            )
        };
        assert_eq!(go(1, true), None);
        assert_eq!(go(1, false), None, "a refused key must not run again");
        assert_eq!(go(2, false), Some(2));
        assert_eq!(go(2, false), Some(2));
        assert_eq!((calls, warned), (3, 1));

        let r = picked(
            || -> Result<sys::cudnnConvolutionFwdAlgo_t, cudarc::cudnn::CudnnError> {
                panic!("no algorithm (as cudarc's assert)")
            },
            "forward algorithm",
        );
        let e = r.expect_err("a panicking pick must come back as an error");
        assert!(e.to_string().contains("no algorithm"), "{e}");
    }
}
