//! `--teacher ARCH=timm/NAME`: weights from the Hugging Face hub. Not built yet: the
//! weights must be a local file (download `model.safetensors` from the model's hub page).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The local weights file for `spec`: a path as given, or (hub ids `timm/NAME`) an error
/// saying hub downloads are not built yet.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    let s = spec.to_string_lossy();
    if !spec.exists() && s.starts_with("timm/") && s.matches('/').count() == 1 {
        bail!(
            "--teacher ...={s}: fetching from the Hugging Face hub is not built yet; download {s}'s model.safetensors and pass its path"
        );
    }
    Ok(spec.to_path_buf())
}
