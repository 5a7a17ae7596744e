//! `--teacher ARCH=timm/NAME`: the weights `model.safetensors` of a Hugging Face hub
//! repository, through the hf-hub crate and its cache (the same layout as Python's
//! `huggingface_hub`, so files either downloaded are shared).
//!
//! - A path that exists is used as is; `ORG/NAME` (one slash, no such file) is a hub id.
//! - The cache is `$HF_HOME/hub` (default `~/.cache/huggingface/hub`); a file already
//!   there is used without any network access.
//! - `HF_HUB_OFFLINE=1` never touches the network: a file missing from the cache is an
//!   error saying so. `HF_ENDPOINT` points at another hub (mirrors; tests use a loopback
//!   server).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The file a teacher repository holds its weights in (timm's hub layout).
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Where and how to look for hub files.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The cache directory (`.../hub`).
    pub cache: PathBuf,
    /// The hub's base URL (`None`: huggingface.co).
    pub endpoint: Option<String>,
    /// Never use the network.
    pub offline: bool,
}

impl HubConfig {
    /// From `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let cache = hf_hub::Cache::from_env().path().clone();
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubConfig {
            cache,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            offline,
        }
    }
}

/// Whether `spec` names a hub repository rather than a local file.
pub fn is_hub_id(spec: &Path) -> bool {
    let s = spec.to_string_lossy();
    !spec.exists()
        && s.matches('/').count() == 1
        && !s.starts_with('/')
        && !s.starts_with('.')
        && s.split('/').all(|p| !p.is_empty())
        && !s.ends_with(".safetensors")
        && !s.ends_with(".pth")
}

/// The local weights file for `spec`: the path itself, or the hub file of repository
/// `spec` (see the module docs), with the environment's hub settings.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    if !is_hub_id(spec) {
        return Ok(spec.to_path_buf());
    }
    fetch(
        &HubConfig::from_env(),
        &spec.to_string_lossy(),
        WEIGHTS_FILE,
    )
}

/// `file` of model repository `repo`: from the cache, else downloaded into it.
pub fn fetch(cfg: &HubConfig, repo: &str, file: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::new(cfg.cache.clone());
    if let Some(p) = cache.model(repo.to_string()).get(file) {
        tracing::info!("{repo}/{file}: from the cache {}", p.display());
        return Ok(p);
    }
    if cfg.offline {
        bail!(
            "no local file {repo}, so it was read as a Hugging Face hub repository: {file} is \
             not in the Hugging Face cache {} and HF_HUB_OFFLINE is set",
            cfg.cache.display()
        );
    }
    let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(true);
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e.clone());
    }
    let api = b
        .build()
        .context("setting up the Hugging Face hub client")?;
    let where_ = cfg.endpoint.as_deref().unwrap_or("https://huggingface.co");
    api.model(repo.to_string()).get(file).with_context(|| {
        format!(
            "no local file {repo}, so it was read as a Hugging Face hub repository: downloading \
             {file} from {where_} failed (a typo in a path? offline? HF_HUB_OFFLINE=1 uses \
             only the cache {})",
            cfg.cache.display()
        )
    })
}
