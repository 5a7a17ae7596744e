//! Reading a store: validated at open (manifest, version, every shard present at its
//! recorded size and well-formed), checksums on [`LabelStore::verify`], random access to
//! any sample's crops from memory-mapped shards.

use std::path::{Path, PathBuf};

use meal_data::{Fingerprint, Sample};

mod diff;

use diff::first_other_class;
pub(crate) use diff::{
    difference, edited_classes, edited_classes_by, edited_fingerprint, first_other_names, things,
};

use super::crops::Crops;
use super::images::{self, ImageInfo};
use super::label::SoftLabel;
use super::manifest::{Manifest, State, MANIFEST};
use super::shard::CropLabel;
use super::shard_read::ShardReader;
use super::{sha256_hex, StoreError};

/// How far a decoded label is from a probability distribution: `|sum - 1|`, or why it
/// is none (a negative or non-finite value, a sum off by more than
/// [`PROB_SUM_TOLERANCE`]). A shard damaged in a way its size does not show decodes to
/// such a label; readers that skip the checksum (training) check each label with this.
pub fn distribution_error(p: &[f32]) -> Result<f64, NotADistribution> {
    if let Some(&x) = p.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
        return Err(NotADistribution::Value(x));
    }
    let sum: f64 = p.iter().map(|&x| x as f64).sum();
    let e = (sum - 1.0).abs();
    if e > PROB_SUM_TOLERANCE {
        return Err(NotADistribution::Sum(sum));
    }
    Ok(e)
}

/// Why a decoded label is no probability distribution ([`distribution_error`]).
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum NotADistribution {
    /// A negative or non-finite value.
    #[error("a probability of {0}")]
    Value(f32),
    /// Values whose sum is off 1 by more than [`PROB_SUM_TOLERANCE`].
    #[error("probabilities sum to {0}")]
    Sum(f64),
}

/// An opened, validated store.
pub struct LabelStore {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<ShardReader>,
    per_shard: u32,
}

/// What [`LabelStore::verify`] checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Shards whose checksum matched.
    pub shards: usize,
    /// Rows read.
    pub rows: u64,
    /// Largest |sum of decoded probabilities - 1| over all rows.
    pub max_sum_error: f64,
    /// Shards labelling images whose paths and labels could not be checked against the
    /// listing they were written for: those that skipped an unreadable image (the store
    /// keeps no label for it), and those that record no listing hash (stores written
    /// before it, or a manifest edited to drop it).
    pub unchecked_listings: UncheckedListings,
}

/// Shards whose image listing [`LabelStore::verify`] could not check, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UncheckedListings {
    /// Shards that skipped an unreadable image.
    pub skipped: usize,
    /// Shards with no `listing_sha256` (and no skipped image).
    pub unrecorded: usize,
}

/// Largest |sum - 1| a valid row may show: float16 rounds each of up to 65536
/// probabilities by at most 2^-11 of its value, so the sum stays within ~1e-3; we allow 1e-2.
pub const PROB_SUM_TOLERANCE: f64 = 1e-2;

impl LabelStore {
    /// Open the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, true)
    }

    /// [`LabelStore::open`]; with `map_pages == false` every Parquet shard is decoded
    /// through arrow's reader instead of addressed in its mapped pages (slower; for
    /// comparing the two paths).
    pub fn open_with(dir: &Path, map_pages: bool) -> Result<Self, StoreError> {
        let mpath = dir.join(MANIFEST);
        if !mpath.exists() {
            // workers' parts, not merged yet: say so, not "manifest.json: not found"
            let parts = crate::writer::worker_manifests(dir).unwrap_or_default();
            // the manifest itself, or a directory of something else (a dataset): said
            // as that, not as the OS's "Not a directory" or "No such file"
            if dir.is_file() {
                let hint = match dir.file_name().is_some_and(|n| n == MANIFEST) {
                    true => ": give the store's directory, the one that holds it",
                    false => ", not a label store's directory",
                };
                return Err(StoreError::Mismatch {
                    path: dir.to_path_buf(),
                    reason: format!("a file{hint}"),
                });
            }
            if !dir.exists() {
                return Err(StoreError::Mismatch {
                    path: dir.to_path_buf(),
                    reason: "no such directory".into(),
                });
            }
            if dir.is_dir() && parts.is_empty() {
                return Err(StoreError::Mismatch {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "not a label store (no {MANIFEST}): the precompute that labels a dataset writes one"
                    ),
                });
            }
            if !parts.is_empty() {
                // a run still writing them (its shared lock held) is waited for, not merged
                let running = meal_data::dirlock::is_held(dir, meal_data::dirlock::LOCK_FILE);
                return Err(StoreError::Mismatch {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "holds the parts of workers ({}), not merged into one store yet: {}",
                        parts.join(", "),
                        match running {
                            true => {
                                "a run is writing them now: wait for it (a device list merges \
                                 its parts at its end; workers' parts are merged once all are \
                                 complete)"
                            }
                            false => "merge them first",
                        }
                    ),
                });
            }
        }
        let manifest = Manifest::read(dir)?;
        if manifest.state != State::Complete {
            let running = meal_data::dirlock::is_held(dir, meal_data::dirlock::LOCK_FILE);
            return Err(StoreError::Mismatch {
                path: mpath,
                reason: format!(
                    "the store is partial ({} shards written): {} (its shards are Parquet \
                     files that pyarrow or DuckDB read meanwhile, docs/FORMAT.md)",
                    manifest.shards.len(),
                    match running {
                        true => "a precompute is writing it now: wait for it to end",
                        // (a split's parts were met above: this is a single run's)
                        false => "rerun the precompute that wrote it to finish it",
                    }
                ),
            });
        }
        let classes = manifest.config.classes.len();
        // a complete store has every shard of its samples (a count edited past them
        // would pass each shard's own range check)
        let per = u64::from(manifest.config.samples_per_shard.max(1));
        let want = manifest.config.dataset.samples.div_ceil(per);
        if want != manifest.shards.len() as u64 {
            return Err(StoreError::corrupt(
                &mpath,
                format!(
                    "a complete store of {} samples, {per} per shard, has {want} shards; the \
                     manifest lists {} (config.dataset.samples or the shard list edited?)",
                    manifest.config.dataset.samples,
                    manifest.shards.len()
                ),
            ));
        }
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (i, s) in manifest.shards.iter().enumerate() {
            if s.index as usize != i {
                return Err(StoreError::corrupt(
                    &mpath,
                    format!("shard list has a gap or duplicate at {i}"),
                ));
            }
            // (the shard's format is its name's: a config.format edited away from the
            // shards' would describe them wrongly to every other reader)
            let named = crate::writer::shard_file(s.index, manifest.config.format);
            if s.file != named {
                return Err(StoreError::corrupt(
                    &mpath,
                    format!(
                        "shard {} is listed as {}, not {named} (config.format or the shard \
                         list edited?)",
                        s.index, s.file
                    ),
                ));
            }
            let path = dir.join(&s.file);
            let meta = std::fs::metadata(&path).map_err(|e| StoreError::io(&path, e))?;
            if !meta.is_file() {
                return Err(StoreError::corrupt(
                    &path,
                    "not a regular file (a directory, FIFO, socket or device?)",
                ));
            }
            let len = meta.len();
            if len != s.bytes {
                return Err(StoreError::corrupt(
                    &path,
                    format!(
                        "{len} bytes, the manifest says {} (truncated or replaced?)",
                        s.bytes
                    ),
                ));
            }
            let r = ShardReader::open_with(&path, manifest.config.encoding, classes, map_pages)
                .map_err(|e| {
                    // a file that no longer reads whose bytes changed since it was written
                    // (a flipped footer byte read as a Parquet error): said as the damage
                    // it is, with what writes it again
                    match meal_data::files::sha256(&path).map(|(sum, _)| sum != s.sha256) {
                        Ok(true) => StoreError::corrupt(&path, format!("{CHANGED} ({e})")),
                        _ => e,
                    }
                })?;
            if let Some(why) = s.contents_error(&r, manifest.config.crop_pool.crops_per_image) {
                return Err(StoreError::corrupt(&path, why));
            }
            s.check_stats(&manifest.config)
                .map_err(|why| StoreError::corrupt(&mpath, why))?;
            shards.push(r);
        }
        // the summary is the shards' statistics summed (writer::summary): an edited one
        // would misreport the store in inspect and in every tool reading it
        if manifest
            .summary
            .as_ref()
            .is_some_and(|got| *got != crate::writer::summary(&manifest))
        {
            return Err(StoreError::corrupt(
                &mpath,
                "its summary is not the sum of its shards' statistics (edited?): rerun \
                 the command that wrote the store to rewrite it",
            ));
        }
        Ok(LabelStore {
            dir: dir.to_path_buf(),
            per_shard: manifest.config.samples_per_shard,
            manifest,
            shards,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rows of `images.parquet` (every stored image with its path and hard label),
    /// the file checked against the manifest's `images_sha256` where recorded.
    pub fn images(&self) -> Result<Vec<ImageInfo>, StoreError> {
        images::read(&self.dir, self.manifest.images_sha256.as_deref())
    }

    /// Files in the store's directory named as shards (`shard-*.parquet`,
    /// `shard-*.safetensors`) that the manifest does not list, sorted: copied in, or
    /// left by an interrupted run of another config. Readers take the manifest's list
    /// (docs/FORMAT.md); a glob over `shard-*` would read these too.
    pub fn unlisted_shards(&self) -> Vec<String> {
        let listed: std::collections::HashSet<&str> = self
            .manifest
            .shards
            .iter()
            .map(|s| s.file.as_str())
            .collect();
        let mut extra: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.starts_with("shard-")
                    && (n.ends_with(".parquet") || n.ends_with(".safetensors"))
                    && !listed.contains(n.as_str())
            })
            .collect();
        extra.sort();
        extra
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.manifest.config.classes.len()
    }

    /// Refuse a store made from another dataset (fingerprint or classes differ), naming
    /// the first difference between its image table and `samples` (the dataset's).
    pub fn check_dataset(
        &self,
        fp: &Fingerprint,
        classes: &[String],
        samples: &[Sample],
    ) -> Result<(), StoreError> {
        let c = &self.manifest.config;
        if &c.dataset == fp && c.classes != classes {
            // the same images, other class names (an edited manifest): the figures below
            // would read the same on both sides, so the first difference is named
            return Err(StoreError::Mismatch {
                path: self.dir.join(MANIFEST),
                reason: format!(
                    "label store names other classes than the dataset's ({} and {} names; {})",
                    c.classes.len(),
                    classes.len(),
                    first_other_class(&c.classes, classes)
                ),
            });
        }
        if &c.dataset != fp || c.classes != classes {
            return Err(StoreError::Mismatch {
                path: self.dir.join(MANIFEST),
                reason: format!(
                    "label store is for another dataset (store: {} samples, {} classes, fingerprint {}; data: {} samples, {} classes, fingerprint {}){}",
                    c.dataset.samples, c.classes.len(), c.dataset.sha256, fp.samples, classes.len(), fp.sha256,
                    difference(&self.dir, &self.manifest, classes, samples).map_or(String::new(), |d| format!(": {d}"))
                ),
            });
        }
        Ok(())
    }

    /// The shard file that holds `sample`'s labels.
    pub fn shard_path(&self, sample: u32) -> Option<PathBuf> {
        let s = (sample / self.per_shard) as usize;
        self.manifest.shards.get(s).map(|i| self.dir.join(&i.file))
    }

    /// The stored crops of `sample`, read from the mapped shard on access (empty when
    /// it was skipped at precompute time).
    pub fn view(&self, sample: u32) -> Result<Crops<'_>, StoreError> {
        let s = (sample / self.per_shard) as usize;
        match self.shards.get(s) {
            Some(r) => r.crops(sample),
            None => Err(StoreError::Param {
                name: "sample_id",
                reason: format!(
                    "{sample} beyond the store's {} samples",
                    self.manifest.config.dataset.samples
                ),
            }),
        }
    }

    /// `(width, height)` of `sample` as decoded when its labels were made (the shard's
    /// `meal.images`), or `None` when it has no rows (skipped).
    pub fn image_size(&self, sample: u32) -> Option<(u32, u32)> {
        let r = self.shards.get((sample / self.per_shard) as usize)?;
        let images = r.images();
        let i = images.binary_search_by_key(&sample, |im| im[0]).ok()?;
        Some((images[i][1], images[i][2]))
    }

    /// The stored crops of `sample`, owned ([`LabelStore::view`] without the borrow),
    /// each row's rules checked ([`Crops::row_error`]: a damaged top-k class id past
    /// 16 bits would otherwise read as another class).
    pub fn crops(&self, sample: u32) -> Result<Vec<CropLabel>, StoreError> {
        let view = self.view(sample)?;
        let classes = self.num_classes();
        if let Some((i, why)) =
            (0..view.len()).find_map(|i| view.row_error(i, classes).map(|w| (i, w)))
        {
            let path = self.shard_path(sample).unwrap_or_else(|| self.dir.clone());
            return Err(StoreError::corrupt(
                &path,
                format!("sample {sample} crop {}: {why}", view.crop_id(i)),
            ));
        }
        Ok(view.into_vec())
    }

    /// Whether every shard is read from its mapped pages (see [`ShardReader::is_mapped`]).
    pub fn is_mapped(&self) -> bool {
        self.shards.iter().all(ShardReader::is_mapped)
    }

    /// Dense f32 probabilities of a stored label (top-k: marginal smoothing).
    pub fn dense(&self, label: &SoftLabel) -> Vec<f32> {
        label.to_dense(self.num_classes())
    }

    /// Check every shard's checksum, row count and that each row's probabilities sum
    /// to 1 (within [`PROB_SUM_TOLERANCE`]), then `images.parquet`: its checksum where
    /// the manifest records one, and in any store that it lists each stored image once,
    /// with the shards' sizes, and hard labels below the class count (a student takes
    /// its images from it: a repeated or missing id would train one image twice and
    /// another never).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_with(&|| {})
    }

    /// [`Self::verify`], calling `progress` once per shard hashed and once per shard
    /// whose rows are checked (twice the shard count in all: a progress bar's steps).
    pub fn verify_with(&self, progress: &(dyn Fn() + Sync)) -> Result<VerifyReport, StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.verify_checksums_with(threads, progress)?;
        let mut rows = 0u64;
        let mut max_err = 0f64;
        for (info, r) in self.manifest.shards.iter().zip(&self.shards) {
            let path = self.dir.join(&info.file);
            let mut dense = vec![0f32; self.num_classes()];
            for id in r.samples() {
                let crops = self.view(id)?;
                for i in 0..crops.len() {
                    // (the student replays this box: an impossible one would be clamped)
                    let rec = crops.record(i);
                    if !rec.is_valid() {
                        return Err(StoreError::corrupt(
                            &path,
                            format!(
                                "sample {id} crop {}: the box ({rec}) is not inside the image",
                                crops.crop_id(i)
                            ),
                        ));
                    }
                    if let Some(why) = crops.row_error(i, self.num_classes()) {
                        return Err(StoreError::corrupt(
                            &path,
                            format!("sample {id} crop {}: {why}", crops.crop_id(i)),
                        ));
                    }
                    crops.dense_into(i, &mut dense);
                    let e = distribution_error(&dense).map_err(|why| {
                        StoreError::corrupt(
                            &path,
                            format!("sample {id} crop {}: {why}", crops.crop_id(i)),
                        )
                    })?;
                    max_err = max_err.max(e);
                    rows += 1;
                }
            }
            progress();
        }
        self.verify_images()?;
        Ok(VerifyReport {
            shards: self.shards.len(),
            rows,
            max_sum_error: max_err,
            unchecked_listings: self.unchecked_listings(),
        })
    }

    /// The shards labelling images whose listing [`Self::verify_images`] leaves
    /// unchecked, by reason.
    pub fn unchecked_listings(&self) -> UncheckedListings {
        let mut u = UncheckedListings::default();
        for s in self.manifest.shards.iter().filter(|s| s.images > 0) {
            if !s.skipped.is_empty() {
                u.skipped += 1;
            } else if s.listing_sha256.is_none() {
                u.unrecorded += 1;
            }
        }
        u
    }

    /// Every shard's SHA-256 against the manifest's, on up to `threads` threads: a shard
    /// changed in place (same size: a flipped bit on disk, an edit) is named. Hashes the
    /// mapped bytes the rows are then read from, not a second copy (a first read also
    /// brings them into the page cache). The error is the first damaged shard's in
    /// shard order.
    pub fn verify_checksums(&self, threads: usize) -> Result<(), StoreError> {
        self.verify_checksums_with(threads, &|| {})
    }

    /// [`Self::verify_checksums`], calling `progress` once per shard hashed.
    pub fn verify_checksums_with(
        &self,
        threads: usize,
        progress: &(dyn Fn() + Sync),
    ) -> Result<(), StoreError> {
        let n = threads.clamp(1, self.shards.len().max(1));
        let bad: Vec<Option<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|t| {
                    scope.spawn(move || {
                        (t..self.shards.len()).step_by(n).find(|&i| {
                            let bad = sha256_hex(self.shards[i].bytes())
                                != self.manifest.shards[i].sha256;
                            progress();
                            bad
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        match bad.into_iter().flatten().min() {
            Some(i) => Err(StoreError::corrupt(
                &self.dir.join(&self.manifest.shards[i].file),
                CHANGED,
            )),
            None => Ok(()),
        }
    }

    /// `images.parquet` against its recorded checksum ([`Self::images`]) and the shards
    /// (see [`Self::verify`]): cheap (the table and the shards' image lists), so a
    /// trainer checks it at start too, for stores written before the checksum. Returns
    /// the table's rows, checked.
    pub fn verify_images(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let (rows, classes) =
            images::read_with_classes(&self.dir, self.manifest.images_sha256.as_deref())?;
        if let Some(e) = edited_classes(&self.dir, &self.manifest, classes.as_deref()) {
            return Err(e);
        }
        let stored: Vec<[u32; 3]> = self
            .shards
            .iter()
            .flat_map(|r| r.images().iter().copied())
            .collect();
        images::check_against_shards(&self.dir, &rows, stored, self.num_classes())?;
        self.check_listings(&rows)?;
        Ok(rows)
    }

    /// The image table's paths and labels against the listing hash each shard recorded
    /// of its images ([`crate::ShardInfo::listing_sha256`]): a table rewritten with other
    /// paths or labels (its checksum updated) is refused. Shards with skipped images are
    /// left out: the table has no label for those.
    fn check_listings(&self, rows: &[ImageInfo]) -> Result<(), StoreError> {
        let mut by_id: Vec<&ImageInfo> = rows.iter().collect();
        by_id.sort_unstable_by_key(|r| r.sample_id);
        for s in &self.manifest.shards {
            let Some(want) = s.listing_sha256.as_deref().filter(|_| s.skipped.is_empty()) else {
                continue;
            };
            let from = by_id.partition_point(|r| r.sample_id < s.first_sample);
            let to = by_id.partition_point(|r| r.sample_id < s.end_sample);
            let listed: Vec<Sample> = by_id[from..to]
                .iter()
                .map(|r| Sample {
                    id: r.sample_id,
                    path: r.path.clone(),
                    label: r.label,
                    bytes: 0,
                })
                .collect();
            if meal_data::dataset::listing_sha256(&listed) != want {
                return Err(StoreError::corrupt(
                    &self.dir.join(images::IMAGES),
                    format!(
                        "the paths or labels of samples {}..{} are not those {} was written \
                         for (its listing_sha256 in the manifest): edited?",
                        s.first_sample, s.end_sample, s.file
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What a shard whose bytes are not those its manifest records is said to be.
const CHANGED: &str = "checksum mismatch (changed since it was written; rerunning the \
                       precompute that wrote the store, unchanged, writes it again)";
