//! Choosing a candle [`Device`] at run time from a flag value: `cpu` or `cuda:N`.
//!
//! The device is always a parameter, never a global (docs/ARCHITECTURE.md). CUDA needs the
//! `cuda` cargo feature; without it `cuda:N` is refused with a message saying so.

use candle_core::Device;

/// Errors of device selection. Messages name the device spec; the binaries add the flag.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The spec is neither `cpu` nor `cuda:N`.
    #[error("{0:?} is not a device: expected `cpu` or `cuda:N` (e.g. cuda:0)")]
    Syntax(String),
    /// CUDA was asked for but could not be opened (or is not compiled in).
    #[error("{spec}: {reason}")]
    Unavailable {
        /// The device spec.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// The CUDA ordinal a device spec names (`None` for `cpu`), checked as far as it can be
/// without opening the device: the spec's syntax, and CUDA support in this build. For
/// the flags' reading, before any work.
pub fn check_device(spec: &str) -> Result<Option<usize>, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(None);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Syntax(spec.to_string()))?,
        None => return Err(DeviceError::Syntax(spec.to_string())),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::Unavailable {
            spec: spec.to_string(),
            reason:
                "this build has no CUDA support (rebuild with `--features cuda`: make build-cuda)"
                    .into(),
        });
    }
    Ok(Some(ordinal))
}

/// Parse `cpu`, `cuda` (= `cuda:0`) or `cuda:N` and open the device.
///
/// A `cuda` build loads the NVIDIA libraries when a CUDA device is first opened (cudarc's
/// dynamic loading, vendor/README.md), so the same binary runs on machines without a
/// GPU; asking for `cuda:N` there is an error naming the library that is missing.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let Some(ordinal) = check_device(spec)? else {
        return Ok(Device::Cpu);
    };
    let unavailable = |reason: String| DeviceError::Unavailable {
        spec: spec.to_string(),
        reason,
    };
    open_cuda(ordinal).map_err(unavailable)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    use candle_core::cuda_backend::cudarc::driver::sys::is_culib_present;
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { is_culib_present() } {
        return Err(
            "the NVIDIA driver library (libcuda.so.1) was not found: this machine has \
                    no GPU driver, or LD_LIBRARY_PATH misses it; use the cpu device"
                .into(),
        );
    }
    // cudarc panics when cuBLAS or cuRAND cannot be loaded (candle opens both with every
    // device; nothing here compiles with NVRTC): turn that into an error
    // (the message names the library) instead of aborting the run
    // (the hook is process-wide: workers opening their devices at once, as a device list
    // does, take turns, or one could restore another's silent hook for good)
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let r = {
        let _turn = HOOK.lock().unwrap_or_else(|p| p.into_inner());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
        std::panic::set_hook(hook);
        r
    };
    match r {
        Ok(Ok(d)) => {
            if let Device::Cuda(c) = &d {
                if !crate::switches::switch("MEAL_CUDA_EVENT_TRACKING", false) {
                    // with event tracking cudarc makes two events per allocation, to order
                    // uses across several streams of one context. candle queues on the
                    // calling thread's per-thread stream (which cudarc does not count as a
                    // second stream, so even with tracking on it never records or waits on
                    // those events), and each device's tensors are
                    // used and dropped (a free is queued on the dropping thread's stream)
                    // on one thread: a device list opens one device per worker thread, no
                    // tensor crosses them, and our device-side caches are thread-local.
                    // So the stream's own order is all there is and the events are pure
                    // cost: ~7% of the ResNet-50 step
                    // on an H200 (BENCHMARKS.md, "GPU"). `MEAL_CUDA_EVENT_TRACKING=1`
                    // keeps them.
                    // SAFETY: single-stream use, as above.
                    unsafe { c.disable_event_tracking() };
                }
                if pool_kept() {
                    if let Err(e) = keep_pool_memory(c) {
                        tracing::warn!("cuda:{ordinal}: the memory pool's release threshold: {e}");
                    }
                }
            }
            if crate::switches::switch("MEAL_CUDA_TF32", false) {
                tf32_on_cuda(&d, true).map_err(|e| format!("MEAL_CUDA_TF32: {e}"))?;
            }
            Ok(d)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "opening the CUDA device failed".into())),
    }
}

/// Whether freed CUDA memory stays in the device's pool between steps (the default;
/// `MEAL_CUDA_POOL_KEEP=0`: the driver's default, released at every synchronisation).
pub fn pool_kept() -> bool {
    crate::switches::switch("MEAL_CUDA_POOL_KEEP", true)
}

/// Keep freed device memory in the device's default pool, as PyTorch's caching allocator
/// does. cudarc allocates with `cuMemAllocAsync` from that pool, whose release threshold
/// is 0 by default: the driver then hands every freed byte back to the OS at the next
/// stream, event or context synchronisation ("CU_MEMPOOL_ATTR_RELEASE_THRESHOLD", CUDA
/// driver API, cuMemPoolSetAttribute), and our loops synchronise each step (the loss, the
/// labels' read-back), so each step would map its gigabytes again. `MEAL_CUDA_POOL_KEEP=0`
/// keeps the driver's default (for a comparison, or a GPU shared with other processes).
#[cfg(feature = "cuda")]
fn keep_pool_memory(c: &candle_core::CudaDevice) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let ctx = c.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        // no pool: cudarc allocates with cuMemAlloc, which keeps nothing either way
        return Ok(());
    }
    let mut keep = u64::MAX;
    // SAFETY: the context's own device; the attribute's value is a u64 (cuuint64_t)
    unsafe {
        let pool =
            result::device::get_default_mem_pool(ctx.cu_device()).map_err(|e| format!("{e:?}"))?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .map_err(|e| format!("{e:?}"))
    }
}

/// The memory a CUDA device can still give this process, in bytes: the driver's free
/// memory (`cuMemGetInfo`) plus what the device's pool keeps freed for reuse (reserved
/// but unused: see [`pool_kept`]). None on the CPU (the host's is meal_cli::memory's),
/// and None, with a warning, where the driver does not say: the figure only serves a
/// check before the work, which a failed query must not turn into a refusal.
pub fn gpu_free_memory(device: &Device) -> Result<Option<u64>, DeviceError> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = device {
        return Ok(cuda_free_memory(c)
            .map_err(|reason| {
                tracing::warn!(
                    "{:?}: free memory unknown ({reason}); the memory check is skipped",
                    device.location()
                )
            })
            .ok());
    }
    let _ = device;
    Ok(None)
}

#[cfg(feature = "cuda")]
fn cuda_free_memory(c: &candle_core::CudaDevice) -> Result<u64, String> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    // frees queued on the stream (a teacher's temporaries just before the check) count
    // as used in the pool until they have run
    c.cuda_stream()
        .synchronize()
        .map_err(|e| format!("synchronize: {e:?}"))?;
    let ctx = c.cuda_stream().context().clone();
    let (free, _total) = ctx
        .mem_get_info()
        .map_err(|e| format!("cuMemGetInfo: {e:?}"))?;
    if !ctx.has_async_alloc() {
        return Ok(free as u64);
    }
    let attr = |a| -> Result<u64, String> {
        let mut v = 0u64;
        // SAFETY: the context's own device; both attributes' values are u64 (cuuint64_t)
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device())
                .map_err(|e| format!("{e:?}"))?;
            result::mem_pool::get_attribute(pool, a, (&mut v as *mut u64).cast())
                .map_err(|e| format!("{e:?}"))?;
        }
        Ok(v)
    };
    // the pool's kept bytes only add to the driver's figure: without them, that figure
    let kept =
        attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT).and_then(|reserved| {
            attr(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
                .map(|used| reserved.saturating_sub(used))
        });
    Ok(free as u64
        + kept.unwrap_or_else(|e| {
            tracing::warn!("the memory pool's unused bytes unknown ({e}): not counted");
            0
        }))
}

/// Run `device`'s f32 GEMMs (our convolutions' and candle's matmuls) on TF32 tensor
/// cores (10-bit mantissa products, f32 sums) when `on`, as PyTorch runs its cuDNN
/// convolutions by default (`torch.backends.cudnn.allow_tf32`); exact f32 otherwise.
/// Nothing to do on the CPU. candle's switch is process-wide: the last call wins for
/// every CUDA device of the process.
pub fn set_tf32(device: &Device, on: bool) -> Result<(), DeviceError> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return tf32_on_cuda(device, on).map_err(|reason| DeviceError::Unavailable {
            spec: format!("{:?}", device.location()),
            reason,
        });
    }
    let _ = (device, on);
    Ok(())
}

#[cfg(feature = "cuda")]
fn tf32_on_cuda(d: &Device, on: bool) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::cublas::sys;
    let Device::Cuda(c) = d else {
        return Ok(());
    };
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    let mode = if on {
        sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
    } else {
        sys::cublasMath_t::CUBLAS_DEFAULT_MATH
    };
    // SAFETY: the handle is the device's live cuBLAS handle.
    let st = unsafe { sys::cublasSetMathMode(*c.cublas_handle().handle(), mode) };
    if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(format!("cublasSetMathMode failed: {st:?}"));
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

/// Keep freed memory in the process instead of returning it to the OS after every op.
///
/// candle allocates a fresh buffer for every tensor; with glibc's defaults large buffers
/// are `mmap`ed and unmapped each time, and a profile of a train step showed ~20% of the
/// time in page faults clearing new pages. Raising the mmap and trim thresholds (what
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` do) made the demo train step
/// 1.3-1.4x faster. Call once at program start; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_syntax() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device(" CPU "), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", "", "cuda:-1"] {
            let e = parse_device(bad).unwrap_err();
            assert!(matches!(e, DeviceError::Syntax(_)), "{bad}: {e}");
            assert!(e.to_string().contains("not a device"), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_refused_clearly() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }

    /// A `cuda` build on a machine without the driver: CPU works, `cuda:0` is a clear
    /// error naming the missing library (no panic, no failure to start).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_build_without_a_driver_runs_on_cpu() {
        use candle_core::cuda_backend::cudarc::driver::sys::is_culib_present;
        // SAFETY: only tries to dlopen the driver library.
        if unsafe { is_culib_present() } {
            eprintln!("skipped: this machine has a CUDA driver (the GPU tests cover it)");
            return;
        }
        let x = candle_core::Tensor::new(&[1f32, 2.0], &parse_device("cpu").unwrap()).unwrap();
        assert_eq!(x.sum_all().unwrap().to_scalar::<f32>().unwrap(), 3.0);
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("libcuda.so.1"), "{e}");
    }
}
