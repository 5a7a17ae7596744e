//! `manifest.json`: what a store holds, how it was made, and which shards are done.

use std::io;
use std::path::Path;

use meal_data::Fingerprint;
use serde::{Deserialize, Serialize};

use super::label::Encoding;
use super::StoreError;

mod diff;
mod shard_info;
pub(crate) use diff::require_same_config;
pub use diff::{config_diff, describe_diff};
pub use shard_info::{ShardInfo, ShardStats};

/// The `format` field of every manifest.
pub const FORMAT_NAME: &str = "meal-soft-labels";
/// The format version this code writes and reads (docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// Shard file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    /// Apache Parquet (readable by pyarrow, DuckDB, Polars).
    Parquet,
    /// safetensors (dense encoding only).
    Safetensors,
}

impl ShardFormat {
    /// File extension of a shard.
    pub fn extension(self) -> &'static str {
        match self {
            ShardFormat::Parquet => "parquet",
            ShardFormat::Safetensors => "safetensors",
        }
    }
}

impl std::str::FromStr for ShardFormat {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "parquet" => Ok(ShardFormat::Parquet),
            "safetensors" => Ok(ShardFormat::Safetensors),
            _ => Err(StoreError::Param {
                name: "format",
                reason: format!("{s:?} (expected parquet or safetensors)"),
            }),
        }
    }
}

/// The crop pool: how each image's crops were drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropPool {
    /// Crops per image P.
    pub crops_per_image: u32,
    /// RandomResizedCrop area range.
    pub scale: [f64; 2],
    /// RandomResizedCrop aspect-ratio range.
    pub ratio: [f64; 2],
    /// The pool's seed (meal-data's counter-based crop RNG).
    pub seed: u64,
}

/// One teacher of the ensemble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    /// Architecture preset.
    pub arch: String,
    /// Weights file name (no directory).
    pub weights: String,
    /// SHA-256 of the weights file.
    pub sha256: String,
    /// Input side the crops were resized to.
    pub input_size: u32,
    /// Resize filter (`bilinear`, `bicubic`).
    pub filter: String,
    /// Normalisation mean.
    pub mean: [f32; 3],
    /// Normalisation std.
    pub std: [f32; 3],
    /// The dtype the teacher ran in (`f32`, `bf16`, `f16`; softmax and the mean are
    /// always f32). Stores written before this field ran f32.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// The teacher's logit that gave each of the dataset's classes, where that is not
    /// logit `i` for class `i`: weights that name their classes in another order or
    /// more classes, taken by name. Absent otherwise (and in older stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<usize>>,
}

fn default_dtype() -> String {
    "f32".into()
}

impl TeacherInfo {
    /// The teacher by content: its record as JSON less the weights' file name (arch,
    /// weights' sha256, input config, dtype), so a renamed or moved copy is the same
    /// teacher.
    pub fn by_content(&self) -> String {
        let mut t = self.clone();
        t.weights.clear();
        serde_json::to_string(&t).expect("teacher record serialises")
    }
}

/// Everything that determines a store's contents: a resumed or merged store must have
/// the same config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The dataset's fingerprint (meal-data).
    pub dataset: Fingerprint,
    /// Class names, label order.
    pub classes: Vec<String>,
    /// The crop pool.
    pub crop_pool: CropPool,
    /// The teachers.
    pub teachers: Vec<TeacherInfo>,
    /// How teacher outputs are combined: `mean_softmax` (MEAL V2, temperature 1).
    pub ensemble: String,
    /// Label encoding.
    pub encoding: Encoding,
    /// Shard format.
    pub format: ShardFormat,
    /// Samples (images) per shard; shard `s` holds sample ids `s*S .. (s+1)*S`.
    pub samples_per_shard: u32,
    /// Images per Parquet row group.
    pub images_per_row_group: u32,
}

impl StoreConfig {
    /// The invariants of a config, checked by the writer before any file is written
    /// (a manifest with an impossible config would block the corrected command) and by
    /// every reader of a manifest: positive sizes, at least one and at most
    /// [`meal_data::MAX_CLASSES`] classes (the 16-bit class ids), as many as the
    /// dataset's and each named once, a crop pool torchvision could draw, teachers whose
    /// input spec is valid, a top-k encoding keeping 1..=classes, and safetensors shards
    /// only for the dense encoding.
    /// On failure: the key at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("samples_per_shard", self.samples_per_shard),
            ("images_per_row_group", self.images_per_row_group),
            ("crop_pool.crops_per_image", self.crop_pool.crops_per_image),
        ] {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        // crop ids are 16-bit
        if self.crop_pool.crops_per_image > 1 << 16 {
            return Err((
                "crop_pool.crops_per_image",
                format!("{} is more than 65536", self.crop_pool.crops_per_image),
            ));
        }
        let classes = self.classes.len();
        if classes == 0 {
            return Err(("classes", "no classes".into()));
        }
        if self.dataset.classes as usize != classes {
            return Err((
                "dataset.classes",
                format!(
                    "{} classes, but {classes} class names",
                    self.dataset.classes
                ),
            ));
        }
        if let Some(i) = self.classes.iter().position(|c| c.is_empty()) {
            return Err(("classes", format!("class {i} has an empty name")));
        }
        let mut names: Vec<&str> = self.classes.iter().map(String::as_str).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(("classes", format!("class name {:?} listed twice", w[0])));
        }
        let p = &self.crop_pool;
        meal_data::RrcParams::new((p.scale[0], p.scale[1]), (p.ratio[0], p.ratio[1]))
            .map_err(|e| ("crop_pool", e.to_string()))?;
        // (the one rule a store is written with: docs/FORMAT.md, "Ensemble")
        if self.ensemble != "mean_softmax" {
            return Err((
                "ensemble",
                format!(
                    "{:?} (a store's labels are its teachers' mean softmax: \"mean_softmax\")",
                    self.ensemble
                ),
            ));
        }
        for (i, t) in self.teachers.iter().enumerate() {
            let bad = |e: String| ("teachers", format!("teacher {i} ({}): {e}", t.arch));
            // the checks of a teacher's input spec (side 1..=4096, a filter by name,
            // means and deviations on the [0, 1] pixel scale)
            let filter: meal_data::Filter = t.filter.parse().map_err(|e| bad(format!("{e}")))?;
            meal_data::CropSpec::new(t.input_size, filter, {
                meal_data::Normalize {
                    mean: t.mean,
                    std: t.std,
                }
            })
            .map_err(|e| bad(e.to_string()))?;
            // (a teacher is matched to its weights by this hash on resume and merge: a
            // damaged one would read as other weights)
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "sha256 {:?} is not a SHA-256 (64 hex digits)",
                    t.sha256
                )));
            }
            if !["f32", "bf16", "f16"].contains(&t.dtype.as_str()) {
                return Err(bad(format!(
                    "dtype {:?} (expected f32, bf16 or f16)",
                    t.dtype
                )));
            }
            // the logit of each of the data's classes: one per class, none twice
            if let Some(l) = &t.logits {
                let mut seen = std::collections::HashSet::new();
                if l.len() != classes || !l.iter().all(|x| seen.insert(x)) {
                    return Err(bad(format!(
                        "logits lists {} logits for {classes} classes, or one twice (one \
                         logit per class of the data)",
                        l.len()
                    )));
                }
            }
        }
        if classes > meal_data::MAX_CLASSES as usize {
            return Err((
                "classes",
                format!("{classes} classes, more than {}", meal_data::MAX_CLASSES),
            ));
        }
        if let Encoding::TopK { k, .. } = self.encoding {
            if k == 0 || k as usize > classes {
                return Err((
                    "encoding",
                    format!("top-{k} of {classes} classes (k must be 1..={classes})"),
                ));
            }
        }
        if self.format == ShardFormat::Safetensors && self.encoding != Encoding::Dense {
            return Err((
                "format",
                "safetensors shards hold the dense encoding only".into(),
            ));
        }
        Ok(())
    }
}

/// Whether every shard of the store (or of this worker's part) is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Some shards are missing: resume, or wait for the other workers.
    Partial,
    /// All shards present.
    Complete,
}

/// Store-level statistics (from the shards' sums).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows.
    pub rows: u64,
    /// Images with rows.
    pub images: u64,
    /// Ensemble top-1 agreement with the hard labels.
    pub top1_agreement: f64,
    /// Mean entropy of the ensemble distribution (nats).
    pub mean_entropy: f64,
    /// Mean probability mass kept by the encoding.
    pub mean_kept_mass: f64,
    /// Mean KL(dense || decoded) (nats).
    pub mean_kl: f64,
    /// Per teacher (store order): top-1 agreement with the hard labels (empty when
    /// the shards do not record it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_top1_agreement: Vec<f64>,
    /// Images left out as unreadable.
    #[serde(default)]
    pub skipped: u64,
}

/// The manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version.
    pub format_version: u32,
    /// Producer and its version.
    pub producer: String,
    /// What the store is.
    pub config: StoreConfig,
    /// `[i, n]` when written by worker i of n (before a merge).
    pub worker: Option<[u32; 2]>,
    /// Finished shards, by index.
    pub shards: Vec<ShardInfo>,
    /// Partial or complete.
    pub state: State,
    /// Statistics (complete stores).
    pub summary: Option<Summary>,
    /// SHA-256 of `images.parquet` (complete stores; absent in stores written before it
    /// was recorded): the table the student takes its images from, checked by `verify`
    /// as the shards are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_sha256: Option<String>,
}

impl Manifest {
    /// SHA-256 of what the store holds: the manifest less the teachers' file names and
    /// the producer's version, so that a store rebuilt with a renamed copy of a teacher,
    /// from the hub (`model.safetensors`), or by a newer meal-precompute, byte for byte
    /// the same shards, is the same store (a student's resume compares this).
    pub fn content_sha256(&self) -> String {
        let mut m = self.clone();
        m.producer.clear();
        for t in &mut m.config.teachers {
            t.weights.clear();
        }
        crate::sha256_hex(&serde_json::to_vec(&m).expect("manifest serialises"))
    }

    /// Read and check the manifest of `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, StoreError> {
        Self::read_file(&dir.join(MANIFEST))
    }

    /// Read and check a manifest file (`manifest.json` or a worker's).
    pub fn read_file(path: &Path) -> Result<Manifest, StoreError> {
        let path = path.to_path_buf();
        let text = meal_data::files::read(&path)
            .and_then(|b| {
                String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .map_err(|e| StoreError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| StoreError::corrupt(&path, format!("not JSON: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(StoreError::corrupt(
                &path,
                format!("not a {FORMAT_NAME} manifest"),
            ));
        }
        let Some(version) = v.get("format_version").and_then(|f| f.as_u64()) else {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "format_version is {}, not a version number",
                    v.get("format_version")
                        .map_or("missing".into(), |f| f.to_string())
                ),
            ));
        };
        if version != FORMAT_VERSION as u64 {
            return Err(StoreError::Version {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let m: Manifest = serde_json::from_value(v).map_err(|e| StoreError::corrupt(&path, e))?;
        m.validate()
            .map_err(|reason| StoreError::corrupt(&path, reason))?;
        // a part's worker is its file name's (a part copied or edited under another
        // worker's name mixed two workers' shards on a rerun; a complete store's
        // manifest.json with a worker passed verify)
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let own = manifest_name(m.worker);
        if (name == MANIFEST || name.starts_with("manifest.worker-")) && name != own {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "its worker field ({}) is not its file name's (that of {own}): copied or \
                     edited from another part",
                    match m.worker {
                        None => "none: a whole store's".to_string(),
                        Some([i, n]) => format!("worker {i} of {n}"),
                    }
                ),
            ));
        }
        Ok(m)
    }

    /// The invariants every reader relies on (a hand-edited or damaged manifest may
    /// break them): the config's ([`StoreConfig::check`]), a worker index below its
    /// count, shard files named inside the store's directory, and shards whose sample
    /// ranges follow from their index.
    fn validate(&self) -> Result<(), String> {
        self.config
            .check()
            .map_err(|(key, reason)| format!("config.{key}: {reason}"))?;
        let c = &self.config;
        if let Some([i, n]) = self.worker {
            if i >= n {
                return Err(format!("worker {i} of {n}"));
            }
        }
        let per = c.samples_per_shard as u64;
        for s in &self.shards {
            // a plain file name: never a path that leaves the store
            let plain = Path::new(&s.file).file_name().map(|f| f.to_str()) == Some(Some(&s.file));
            if !plain || s.file.starts_with('.') {
                return Err(format!(
                    "shard {} names {:?}, not a file of the store",
                    s.index, s.file
                ));
            }
            let first = s.index as u64 * per;
            if first >= c.dataset.samples {
                return Err(format!(
                    "shard {} is past the store's {} samples ({per} per shard)",
                    s.index, c.dataset.samples
                ));
            }
            let end = (first + per).min(c.dataset.samples);
            if s.first_sample as u64 != first || s.end_sample as u64 != end {
                return Err(format!(
                    "shard {} covers samples {}..{}, expected {first}..{end}",
                    s.index, s.first_sample, s.end_sample
                ));
            }
        }
        Ok(())
    }

    /// Write atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        write_atomic(dir, name, &json, &mut |_| Ok(()))
    }
}

/// Write `bytes` to `dir/name` atomically ([`meal_data::atomic::write_stepped`]:
/// temporary, fsync, rename, fsync of the directory). `hook(step)` runs before each step
/// and may fail, to inject crashes in tests.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    hook: &mut dyn FnMut(u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use meal_data::atomic::AtomicError;
    // a hidden temporary: readers listing the directory (pyarrow's dataset discovery
    // skips names starting with `.` or `_`) never meet a half-written shard
    let tmp = dir.join(format!(".{name}.tmp"));
    meal_data::atomic::write_stepped(&dir.join(name), &tmp, bytes, hook).map_err(|e| match e {
        AtomicError::Write(e) => e,
        AtomicError::Io(path, e) => StoreError::io(&path, e),
    })
}

/// The manifest a writer (`worker`, or a single one) keeps: `manifest.json`, or a
/// part's `manifest.worker-I-of-N.json`.
pub fn manifest_name(worker: Option<[u32; 2]>) -> String {
    match worker {
        None => MANIFEST.to_string(),
        Some([i, n]) => format!("manifest.worker-{i}-of-{n}.json"),
    }
}
