//! Choosing a candle [`Device`] at run time from a flag value: `cpu` or `cuda:N`.
//!
//! The device is always a parameter, never a global (shared/DESIGN.md). CUDA needs the
//! `cuda` cargo feature; without it `cuda:N` is refused with a message saying so.

use candle_core::Device;

/// Errors of device selection.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The flag value is neither `cpu` nor `cuda:N`.
    #[error("invalid --device {0:?}: expected `cpu` or `cuda:N` (e.g. cuda:0)")]
    Syntax(String),
    /// CUDA was asked for but could not be opened (or is not compiled in).
    #[error("--device {spec}: {reason}")]
    Unavailable {
        /// The flag value.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Parse `cpu`, `cuda` (= `cuda:0`) or `cuda:N` and open the device.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
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
            reason: "this build has no CUDA support (rebuild with `--features cuda`)".into(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Unavailable {
        spec: spec.to_string(),
        reason: e.to_string(),
    })
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
            assert!(e.to_string().contains("--device"), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_refused_clearly() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
