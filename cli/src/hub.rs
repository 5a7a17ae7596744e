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
    /// A download that receives nothing for this long is given up (hf-hub's client has
    /// no read timeout: a silent server held a run for as long as it kept the
    /// connection open).
    pub stall: std::time::Duration,
}

/// [`HubConfig::stall`] by default: a minute without a byte (huggingface_hub's default
/// `HF_HUB_DOWNLOAD_TIMEOUT` is 10 s per read; a slow mirror gets more).
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

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
            stall: STALL,
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
        // (a mistyped local file of a weights suffix is no repository: hub ids carry
        // none)
        && ![".safetensors", ".pth", ".pt", ".bin", ".ckpt"]
            .iter()
            .any(|x| s.ends_with(x))
}

/// [`resolve`] a teacher's weights in place; the error names `flag` and the spec
/// (`--teacher ARCH=ORG/NAME`), as precompute's teachers and the student's online and
/// eval teachers take them alike.
pub fn resolve_teacher(flag: &str, arch: &str, weights: &mut PathBuf) -> Result<()> {
    *weights = resolve(weights).with_context(|| format!("{flag} {arch}={}", weights.display()))?;
    Ok(())
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
    let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache);
    if let Some(e) = &cfg.endpoint {
        // (else the client's URL parser's error, its enum variant's name included)
        let scheme = e.to_ascii_lowercase();
        if !(scheme.starts_with("http://") || scheme.starts_with("https://")) {
            bail!(
                "no local file {repo}, so it was read as a Hugging Face hub repository, but \
                 HF_ENDPOINT={e} is not a URL (expected e.g. https://huggingface.co)"
            );
        }
        b = b.with_endpoint(e.clone());
    }
    let api = b
        .build()
        .context("setting up the Hugging Face hub client")?;
    let where_ = match &cfg.endpoint {
        Some(e) => format!("{e} (HF_ENDPOINT)"),
        None => "https://huggingface.co".into(),
    };
    let failed = || {
        format!(
            "no local file {repo}, so it was read as a Hugging Face hub repository: downloading \
             {file} from {where_} failed (a typo in a path? offline? HF_HUB_OFFLINE=1 uses \
             only the cache {})",
            cfg.cache.display()
        )
    };
    // the download runs on its own thread, watched here: a Ctrl-C or SIGTERM stops the
    // wait at once and a stalled connection is given up (the thread, blocked in a
    // read, ends with the process)
    let watch = Watch::default();
    let seen = watch.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (repo_id, name) = (repo.to_string(), file.to_string());
    std::thread::Builder::new()
        .name("hub-download".into())
        .spawn(move || {
            let r = api.model(repo_id).download_with_progress(&name, watch);
            let _ = tx.send(r);
        })
        .context("starting the download")?;
    let mut last = (0u64, std::time::Instant::now());
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(r) => {
                seen.bar.finish_and_clear();
                // the innermost cause alone: the client's errors each repeat their
                // source's text ("request error: Bad URL: ...", "Bad URL: ...", ...)
                return r.map_err(|e| {
                    anyhow::anyhow!("{}: {}", failed(), anyhow::Error::from(e).root_cause())
                });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{}: the download thread ended without a result", failed())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if crate::interrupted() {
            seen.bar.abandon();
            bail!("interrupted while downloading {file} of {repo} from {where_}");
        }
        let got = seen.bytes.load(std::sync::atomic::Ordering::Relaxed);
        if got != last.0 {
            last = (got, std::time::Instant::now());
        } else if last.1.elapsed() >= cfg.stall {
            seen.bar.abandon();
            bail!(
                "{}: nothing received for {} s ({got} bytes so far); the partial file is kept in \
                 the cache for the next try",
                failed(),
                cfg.stall.as_secs()
            );
        }
    }
}

/// The download's progress: bytes received (read by the watching thread) and a bar.
#[derive(Clone)]
struct Watch {
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bar: indicatif::ProgressBar,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            bytes: Default::default(),
            bar: crate::progress_bar(
                0,
                "{msg} {bar:25} {bytes}/{total_bytes} [{elapsed_precise} ETA {eta}]",
            ),
        }
    }
}

impl hf_hub::api::Progress for Watch {
    fn init(&mut self, size: usize, filename: &str) {
        self.bar.set_length(size as u64);
        self.bar.set_message(format!("downloading {filename}"));
    }
    fn update(&mut self, size: usize) {
        self.bytes
            .fetch_add(size as u64, std::sync::atomic::Ordering::Relaxed);
        self.bar.inc(size as u64);
    }
    fn finish(&mut self) {}
}
