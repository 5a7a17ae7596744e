//! Reading a store: validated at open (manifest, version, every shard present at its
//! recorded size and well-formed), checksums on [`LabelStore::verify`], random access to
//! any sample's crops from memory-mapped shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meal_data::{Fingerprint, Sample};

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
                        "not a label store (no {MANIFEST}): meal-precompute run writes one"
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
                        true => "a meal-precompute run is writing it now: wait for it to end",
                        // (a split's parts were met above: this is a single run's)
                        false => "rerun the meal-precompute run that wrote it to finish it",
                    }
                ),
            });
        }
        let classes = manifest.config.classes.len();
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (i, s) in manifest.shards.iter().enumerate() {
            if s.index as usize != i {
                return Err(StoreError::corrupt(
                    &mpath,
                    format!("shard list has a gap or duplicate at {i}"),
                ));
            }
            let path = dir.join(&s.file);
            let len = std::fs::metadata(&path)
                .map_err(|e| StoreError::io(&path, e))?
                .len();
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
                    match std::fs::read(&path).map(|b| sha256_hex(&b) != s.sha256) {
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

    /// The stored crops of `sample`, owned ([`LabelStore::view`] without the borrow).
    pub fn crops(&self, sample: u32) -> Result<Vec<CropLabel>, StoreError> {
        Ok(self.view(sample)?.into_vec())
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
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.verify_checksums(threads)?;
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
        }
        self.verify_images()?;
        Ok(VerifyReport {
            shards: self.shards.len(),
            rows,
            max_sum_error: max_err,
        })
    }

    /// Every shard's SHA-256 against the manifest's, on up to `threads` threads: a shard
    /// changed in place (same size: a flipped bit on disk, an edit) is named. Hashes the
    /// mapped bytes the rows are then read from, not a second copy (a first read also
    /// brings them into the page cache). The error is the first damaged shard's in
    /// shard order.
    pub fn verify_checksums(&self, threads: usize) -> Result<(), StoreError> {
        let n = threads.clamp(1, self.shards.len().max(1));
        let bad: Vec<Option<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|t| {
                    scope.spawn(move || {
                        (t..self.shards.len()).step_by(n).find(|&i| {
                            sha256_hex(self.shards[i].bytes()) != self.manifest.shards[i].sha256
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
        Ok(rows)
    }
}

/// The refusal of a manifest whose class names are not those its image table records
/// (`recorded`, under the table's checksum): the names decide which class each
/// probability is, and the manifest is under no checksum (edited by hand).
pub(crate) fn edited_classes(
    dir: &Path,
    manifest: &Manifest,
    recorded: Option<&[String]>,
) -> Option<StoreError> {
    edited_classes_by(dir, manifest, recorded, images::IMAGES)
}

/// [`edited_classes`], the recorded list held by `by` (the image table, or the
/// dataset's fingerprint, which hashes the class names: a partial store has no table).
pub(crate) fn edited_classes_by(
    dir: &Path,
    manifest: &Manifest,
    recorded: Option<&[String]>,
    by: &str,
) -> Option<StoreError> {
    let own = &manifest.config.classes;
    let c = recorded.filter(|c| c != own)?;
    let (at, mine, theirs) = first_other_names(own, c);
    Some(StoreError::Mismatch {
        path: dir.join(MANIFEST),
        reason: format!(
            "config.classes is not the class list {by} records (class {at}: {mine} in the \
             manifest, {theirs} there): the manifest was edited; restore it, or run the \
             precompute again",
        ),
    })
}

/// The first index at which two class lists differ (the shorter's length when one
/// extends the other), with each list's name there, quoted (`none` past its end).
pub(crate) fn first_other_names(a: &[String], b: &[String]) -> (usize, String, String) {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let name = |v: &[String]| v.get(at).map_or("none".to_string(), |n| format!("{n:?}"));
    (at, name(a), name(b))
}

/// What a shard whose bytes are not those its manifest records is said to be.
const CHANGED: &str = "checksum mismatch (changed since it was written; rerunning the \
                       precompute that wrote the store, unchanged, writes it again)";

/// The first difference between the store's images (`images.parquet`'s paths and
/// labels, and the images it skipped as unreadable, from the manifest) and the
/// dataset's `classes` and `samples`, in words; `None` when the table cannot be read.
/// The fingerprint also hashes file sizes, which the store does not keep: the same
/// paths and labels mean a file's bytes changed.
pub(crate) fn difference(
    dir: &Path,
    manifest: &Manifest,
    classes: &[String],
    samples: &[Sample],
) -> Option<String> {
    difference_of(dir, manifest, classes, samples, true)
}

/// [`difference`]; `last_resort`: whether the same paths and labels in the same order
/// are said to be a size change (the fingerprint differs); not for images moved back
/// to the store's paths, whose fingerprint is not known to differ beyond the move.
fn difference_of(
    dir: &Path,
    manifest: &Manifest,
    classes: &[String],
    samples: &[Sample],
    last_resort: bool,
) -> Option<String> {
    let c = &manifest.config;
    if c.classes != classes {
        return Some(format!(
            "the class names differ ({} and {}; {})",
            things(c.classes.len(), "class", "classes"),
            things(classes.len(), "class", "classes"),
            first_other_class(&c.classes, classes)
        ));
    }
    let images = images::read(dir, manifest.images_sha256.as_deref()).ok()?;
    // (sample id, path, label; None for an image skipped as unreadable)
    let mut stored: Vec<(u32, &str, Option<u32>)> = images
        .iter()
        .map(|i| (i.sample_id, i.path.as_str(), Some(i.label)))
        .collect();
    for k in manifest.shards.iter().flat_map(|s| &s.skipped) {
        stored.push((k.sample_id, k.path.as_str(), None));
    }
    stored.sort_by_key(|e| e.0);
    let data: HashMap<&str, &Sample> = samples.iter().map(|s| (s.path.as_str(), s)).collect();
    let paths: std::collections::HashSet<&str> = stored.iter().map(|e| e.1).collect();
    let first = |v: &[&str]| meal_data::error::first_few(v, 3);
    let missing: Vec<&str> = stored
        .iter()
        .filter(|e| !data.contains_key(e.1))
        .map(|e| e.1)
        .collect();
    let extra: Vec<&str> = samples
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| !paths.contains(p))
        .collect();
    if let Some(moved) = meal_data::dataset::other_root(&missing, &extra) {
        // the moved images under the store's paths: what differs beyond the paths is
        // said too (a label, the order, an image truly absent)
        let back = moved.back(samples, &missing, &extra);
        return Some(match difference_of(dir, manifest, classes, &back, false) {
            Some(rest) => format!("{}; beyond the paths, {rest}", moved.words()),
            None => moved.words(),
        });
    }
    if !missing.is_empty() {
        let skipped = stored
            .iter()
            .filter(|e| e.2.is_none() && !data.contains_key(e.1))
            .count();
        return Some(format!(
            "{} not in the data ({}){}",
            things(
                missing.len(),
                "of the store's images is",
                "of the store's images are"
            ),
            first(&missing),
            match skipped {
                0 => String::new(),
                n => format!(
                    "; {} skipped as unreadable when the store was made",
                    things(n, "was", "were")
                ),
            }
        ));
    }
    if !extra.is_empty() {
        return Some(format!(
            "the data has {} the store has not ({})",
            things(extra.len(), "image", "images"),
            first(&extra)
        ));
    }
    let name = |l: u32| c.classes.get(l as usize).map_or("?", String::as_str);
    if let Some((_, p, Some(l))) = stored
        .iter()
        .find(|e| e.2.is_some_and(|l| data[e.1].label != l))
    {
        return Some(format!(
            "{p} is of class {} in the store, {} in the data",
            name(*l),
            name(data[p].label)
        ));
    }
    if let Some((id, p, _)) = stored
        .iter()
        .find(|e| samples.get(e.0 as usize).is_none_or(|s| s.path != e.1))
    {
        return Some(format!(
            "the same files in another order (sample {id} is {p} in the store, {} in the \
             data: a list file reordered?)",
            samples
                .get(*id as usize)
                .map_or("none", |s| s.path.as_str())
        ));
    }
    if !last_resort {
        return None;
    }
    // (an image skipped as unreadable has no label in the store: a list file that
    // relabels one changes the fingerprint as a size does)
    let skipped = stored.iter().filter(|e| e.2.is_none()).count();
    Some(format!(
        "the same paths and labels: a file's size differs (an image re-encoded or \
         replaced since the store was made){}",
        match skipped {
            0 => String::new(),
            1 => ", or the image skipped as unreadable (whose label the store does \
                  not keep) was relabelled"
                .to_string(),
            n => format!(
                ", or one of the {n} images skipped as unreadable (whose labels the \
                 store does not keep) was relabelled"
            ),
        }
    ))
}

/// `n` and the noun for it: "1 image", "2 images".
pub(crate) fn things(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The first class the store and the data name differently: `class 3: store "a", data
/// "b"` (`none` past the shorter list's end).
fn first_other_class(store: &[String], data: &[String]) -> String {
    let at = store
        .iter()
        .zip(data)
        .position(|(a, b)| a != b)
        .unwrap_or(store.len().min(data.len()));
    format!(
        "class {at}: store {:?}, data {:?}",
        store.get(at).map_or("none", String::as_str),
        data.get(at).map_or("none", String::as_str)
    )
}
