//! `manifest.json`: what a store holds, how it was made, and which shards are done.

use std::fs;
use std::io::Write;
use std::path::Path;

use meal_data::{Fingerprint, Skipped};
use serde::{Deserialize, Serialize};

use super::label::Encoding;
use super::StoreError;

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
}

fn default_dtype() -> String {
    "f32".into()
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
    /// [`meal_data::MAX_CLASSES`] classes (the 16-bit class ids), a top-k encoding
    /// keeping 1..=classes, and safetensors shards only for the dense encoding.
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

/// Running sums over the rows of a shard (so resumed stores keep exact totals).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Rows (crops).
    pub rows: u64,
    /// Rows whose ensemble argmax equals the image's hard label.
    pub top1_agree: u64,
    /// Sum of the ensemble entropies (nats).
    pub entropy_sum: f64,
    /// Sum of the probability mass kept by top-k (1 per row for dense).
    pub kept_mass_sum: f64,
    /// Sum of KL(dense || decoded) (nats; 0 for dense up to float16 rounding).
    pub kl_sum: f64,
    /// Per teacher (store order): rows whose teacher argmax equals the hard label
    /// (empty in stores written before this field, or when the writer gave none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_top1_agree: Vec<u64>,
}

impl ShardStats {
    /// Add another shard's sums.
    pub fn add(&mut self, o: &ShardStats) {
        self.rows += o.rows;
        self.top1_agree += o.top1_agree;
        self.entropy_sum += o.entropy_sum;
        self.kept_mass_sum += o.kept_mass_sum;
        self.kl_sum += o.kl_sum;
        if self.teacher_top1_agree.len() < o.teacher_top1_agree.len() {
            self.teacher_top1_agree
                .resize(o.teacher_top1_agree.len(), 0);
        }
        for (a, b) in self
            .teacher_top1_agree
            .iter_mut()
            .zip(&o.teacher_top1_agree)
        {
            *a += b;
        }
    }
}

/// One finished shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Shard index.
    pub index: u32,
    /// File name in the store directory.
    pub file: String,
    /// First sample id covered.
    pub first_sample: u32,
    /// One past the last sample id covered.
    pub end_sample: u32,
    /// Images with rows (skipped images have none).
    pub images: u32,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Sums for the store's statistics.
    pub stats: ShardStats,
    /// The shard's images left out as unreadable (so a resumed or merged store still
    /// lists every one, not just those of the last run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

impl ShardInfo {
    /// Whether its record is one a writer can make, with `config`'s crop pool, classes
    /// and teachers: the checksum covers the shard, not these figures, and an edited
    /// figure would be summed into every report (a rerun kept a top-1 agreement of
    /// 8333333333 and called the store complete). Rows are the images' crops; each
    /// count of rows is at most the rows; sums of entropies and kept mass are within
    /// their bounds; skipped images lie in the shard's range, once each, beside the
    /// stored ones. On failure: what is impossible.
    pub fn check_stats(&self, config: &StoreConfig) -> Result<(), String> {
        let st = &self.stats;
        let range = u64::from(self.end_sample.saturating_sub(self.first_sample));
        let per_image = u64::from(config.crop_pool.crops_per_image);
        let rows = st.rows as f64;
        let ln_c = (config.classes.len().max(1) as f64).ln();
        // float sums of float16 values: a little slack over the exact bound
        let slack = 1e-3 * rows + 1e-6;
        let why = if self.end_sample < self.first_sample {
            format!("its samples run {}..{}", self.first_sample, self.end_sample)
        } else if u64::from(self.images) + self.skipped.len() as u64 != range {
            // every sample of the range is stored or listed as skipped: an image dropped
            // from both would vanish from the store unnoticed
            format!(
                "{} images and {} skipped in a range of {range} samples",
                self.images,
                self.skipped.len()
            )
        } else if st.rows != u64::from(self.images) * per_image {
            format!(
                "{} rows for {} images of {per_image} crops",
                st.rows, self.images
            )
        } else if st.top1_agree > st.rows {
            format!("{} top-1 agreements in {} rows", st.top1_agree, st.rows)
        } else if !st.teacher_top1_agree.is_empty()
            && st.teacher_top1_agree.len() != config.teachers.len()
        {
            format!(
                "agreement counts for {} teachers, the store has {}",
                st.teacher_top1_agree.len(),
                config.teachers.len()
            )
        } else if let Some(a) = st.teacher_top1_agree.iter().find(|&&a| a > st.rows) {
            format!("a teacher's {a} top-1 agreements in {} rows", st.rows)
        } else if !(st.entropy_sum.is_finite()
            && st.entropy_sum >= -slack
            && st.entropy_sum <= rows * ln_c + slack)
        {
            format!("an entropy sum of {} over {} rows", st.entropy_sum, st.rows)
        } else if !(st.kept_mass_sum.is_finite()
            && st.kept_mass_sum >= -slack
            && st.kept_mass_sum <= rows + slack)
        {
            format!("a kept mass of {} over {} rows", st.kept_mass_sum, st.rows)
        } else if !(st.kl_sum.is_finite() && st.kl_sum >= -slack) {
            format!("a KL sum of {}", st.kl_sum)
        } else if let Some(k) = self
            .skipped
            .iter()
            .find(|k| !(self.first_sample..self.end_sample).contains(&k.sample_id))
        {
            format!("skipped sample {} outside its range", k.sample_id)
        } else {
            let mut ids: Vec<u32> = self.skipped.iter().map(|k| k.sample_id).collect();
            ids.sort_unstable();
            match ids.windows(2).find(|w| w[0] == w[1]) {
                Some(w) => format!("sample {} skipped twice", w[0]),
                None => return Ok(()),
            }
        };
        Err(format!(
            "{}: its statistics are impossible ({why})",
            self.file
        ))
    }

    /// Whether the shard in `dir` is the one listed ([`Self::check`]) and its record one
    /// a writer makes ([`Self::check_stats`], [`Self::check_contents`]): what a rerun and
    /// a merge check of each shard they keep. A failed record is a corrupt-file error of
    /// `dir`.
    pub fn check_written(&self, dir: &Path, config: &StoreConfig) -> Result<(), StoreError> {
        self.check(dir)?;
        self.check_stats(config)
            .and_then(|()| self.check_contents(dir, config))
            .map_err(|why| StoreError::corrupt(dir, why))
    }

    /// Whether the shard in `dir` holds the rows and images its record counts, each
    /// image's whole crop pool ([`Self::contents_error`]): what a reader checks at open
    /// (a rerun that kept an edited count called the store complete while verify
    /// refused it).
    pub fn check_contents(&self, dir: &Path, config: &StoreConfig) -> Result<(), String> {
        let path = dir.join(&self.file);
        let r = crate::shard_read::ShardReader::open(&path, config.encoding, config.classes.len())
            .map_err(|e| e.to_string())?;
        match self.contents_error(&r, config.crop_pool.crops_per_image) {
            Some(why) => Err(format!("{}: {why}", path.display())),
            None => Ok(()),
        }
    }

    /// What the opened shard `r` holds that its record does not say: another row or
    /// image count (the counts summaries and merges add up), a sample outside its
    /// range, or an image whose rows are not its crops `0..per_image` in order.
    pub(crate) fn contents_error(
        &self,
        r: &crate::shard_read::ShardReader,
        per_image: u32,
    ) -> Option<String> {
        let images = r.samples().count();
        if r.rows() as u64 != self.stats.rows {
            Some(format!(
                "{} rows, the manifest says {}",
                r.rows(),
                self.stats.rows
            ))
        } else if images != self.images as usize {
            Some(format!(
                "{images} images, the manifest lists {}",
                self.images
            ))
        } else if let Some(bad) = r
            .samples()
            .find(|id| !(self.first_sample..self.end_sample).contains(id))
        {
            Some(format!("sample {bad} outside the shard's range"))
        } else if let Some(k) = self.skipped.iter().find(|k| r.has_rows(k.sample_id)) {
            Some(format!(
                "sample {} is listed as skipped but has rows",
                k.sample_id
            ))
        } else {
            r.odd_crop_run(per_image).map(|(id, n)| {
                format!(
                    "sample {id} has {n} rows that are not its crops 0..{per_image} in order \
                     (the store's crop pool)"
                )
            })
        }
    }

    /// Whether the file in `dir` is the one listed: its size and SHA-256 (one read of
    /// the file). A missing file is an I/O error, another file a corrupt-file error.
    pub fn check(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(&self.file);
        let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let same_sum = super::sha256_hex(&bytes) == self.sha256;
        if bytes.len() as u64 != self.bytes || !same_sum {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "does not match its manifest ({} bytes, listed {}; checksum {})",
                    bytes.len(),
                    self.bytes,
                    if same_sum { "ok" } else { "differs" }
                ),
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
    /// Read and check the manifest of `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, StoreError> {
        Self::read_file(&dir.join(MANIFEST))
    }

    /// Read and check a manifest file (`manifest.json` or a worker's).
    pub fn read_file(path: &Path) -> Result<Manifest, StoreError> {
        let path = path.to_path_buf();
        let text = fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
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

/// Write `bytes` to `dir/name` atomically. `hook(step)` runs before each step (0: write
/// the temporary file, 1: fsync it, 2: rename, 3: fsync the directory) and may fail, to
/// inject crashes in tests; a failure at step 0 leaves half the bytes written.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    hook: &mut dyn FnMut(u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    if let Err(e) = hook(0) {
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        return Err(e);
    }
    // a failed write (a full disk) gives its space back at once; the hooks' simulated
    // crashes leave their temporaries, as a crash does
    let failed = |e| {
        let _ = fs::remove_file(&tmp);
        StoreError::io(&tmp, e)
    };
    f.write_all(bytes).map_err(failed)?;
    hook(1)?;
    f.sync_all().map_err(failed)?;
    drop(f);
    hook(2)?;
    fs::rename(&tmp, &dst).map_err(|e| StoreError::io(&dst, e))?;
    hook(3)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuse `found` (the config of the manifest at `path`) unless it equals `want`:
/// `what` says whose config differs, and the error lists the differing keys.
pub(crate) fn require_same_config(
    path: &Path,
    found: &StoreConfig,
    want: &StoreConfig,
    what: &str,
) -> Result<(), StoreError> {
    let diff = config_diff(found, want);
    if diff.is_empty() {
        return Ok(());
    }
    // only the dataset differs: most often an image fixed (or added, removed) after a
    // run that stopped on it; the shards hold the old images' labels and the store's
    // fingerprint covers them all, so it cannot go on: say what can
    let hint = match diff.iter().all(|k| k.starts_with("dataset.")) {
        true => {
            "; the dataset changed since this store was started (an image fixed, added, \
             removed or relabelled, or another dataset): write the store in another \
             directory, or remove this one to start over"
        }
        false => "",
    };
    Err(StoreError::Mismatch {
        path: path.to_path_buf(),
        reason: format!("{what}; differing keys: {}{hint}", diff.join(", ")),
    })
}

/// The keys (dotted paths, `teachers[1].filter`) at which two configs differ. A teacher
/// is its weights' content: the file name (`teachers[i].weights`) is not compared, so a
/// renamed or moved copy of the same file resumes the store (its sha256 still differs
/// for other weights).
pub fn config_diff(a: &StoreConfig, b: &StoreConfig) -> Vec<String> {
    use serde_json::Value;
    fn walk(p: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let q = if p.is_empty() {
                        k.clone()
                    } else {
                        format!("{p}.{k}")
                    };
                    walk(
                        &q,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            // lists of records (teachers) element by element where both have as many;
            // any other list differs as a whole (`crop_pool.scale`, `classes`)
            (Value::Array(x), Value::Array(y))
                if x.len() == y.len() && x.iter().chain(y).all(Value::is_object) =>
            {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{p}[{i}]"), u, v, out);
                }
            }
            _ if a != b => out.push(p.to_string()),
            _ => {}
        }
    }
    let value = |c: &StoreConfig| {
        let mut v = serde_json::to_value(c).expect("serialises");
        if let Some(ts) = v.get_mut("teachers").and_then(Value::as_array_mut) {
            for t in ts.iter_mut().filter_map(Value::as_object_mut) {
                t.remove("weights");
            }
        }
        v
    };
    let mut out = Vec::new();
    walk("", &value(a), &value(b), &mut out);
    out
}
