//! Writing a store: shard by shard, each atomic, the manifest rewritten atomically after
//! each, so a crash at any instant leaves a store that resumes with no row lost or
//! duplicated. Workers `i of n` write the shards `s` with `s % n == i`; [`crate::merge`] joins.

use std::fs;
use std::path::{Path, PathBuf};

use meal_data::dirlock::{DirLock, LOCK_FILE};
use meal_data::{CropRecord, Sample, Skipped};

use super::images;
use super::label::{entropy, top1, SoftLabel};
use super::manifest::{
    require_same_config, write_atomic, Manifest, ShardFormat, ShardInfo, ShardStats, State,
    StoreConfig, Summary, FORMAT_NAME, FORMAT_VERSION, MANIFEST,
};
use super::shard::{encode_parquet, encode_safetensors, CropLabel, ImageRows};
use super::{sha256_hex, StoreError};

/// One crop's ensemble probabilities, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct CropProbs {
    /// Crop index in the pool.
    pub crop_id: u16,
    /// The crop.
    pub record: CropRecord,
    /// Dense ensemble probabilities (length = number of classes).
    pub probs: Vec<f32>,
}

/// An image's crops with their probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProbs {
    /// Sample id.
    pub sample_id: u32,
    /// Decoded width.
    pub width: u32,
    /// Decoded height.
    pub height: u32,
    /// The crops.
    pub crops: Vec<CropProbs>,
}

/// What the caller knows about a shard beyond its rows: the images it left out and
/// each teacher's top-1 agreement with the hard labels over the shard's rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardNotes {
    /// Images of the shard left out as unreadable.
    pub skipped: Vec<Skipped>,
    /// Per teacher (store order): rows whose teacher argmax is the hard label.
    pub teacher_top1_agree: Vec<u64>,
}

type Hook = Box<dyn FnMut(u32) -> Result<(), StoreError> + Send>;

/// The store writer.
pub struct StoreWriter {
    dir: PathBuf,
    manifest: Manifest,
    manifest_name: String,
    labels: Vec<u32>,
    paths: Vec<String>,
    hook: Option<Hook>,
    step: u32,
    /// Held while writing: a second writer of the same store (or worker part) is refused,
    /// and so is a single writer or a merge beside workers.
    _locks: Vec<DirLock>,
}

/// A single writer (and merge) locks `.lock` exclusively. Workers share the directory by
/// design: each holds `.lock` shared, which keeps a single writer and a merge out while
/// any of them runs, and its own part's lock exclusively. Released (dropped) part lock
/// first: a run that wrote nothing then leaves neither file (`DirLock`'s drop).
/// A worker also returns the store's opening lock ([`OPENING_LOCK`]), taken before its
/// part lock: its caller holds it until the part's manifest is current.
fn lock(
    dir: &Path,
    worker: Option<[u32; 2]>,
) -> Result<(Vec<DirLock>, Option<DirLock>), StoreError> {
    Ok(match worker {
        None => (vec![DirLock::acquire_named(dir, LOCK_FILE)?], None),
        Some([i, n]) => {
            let shared = DirLock::acquire_shared_named(dir, LOCK_FILE)?;
            let opening = opening_lock(dir)?;
            let part = DirLock::acquire_named(dir, &format!("{LOCK_FILE}.worker-{i}-of-{n}"))?;
            (vec![part, shared], Some(opening))
        }
    })
}

/// Held by a worker while it opens its part (its part lock taken, its neighbours
/// checked, its manifest made current), one worker at a time: a worker checking its
/// neighbours then finds each not started, or running with its manifest current, and
/// its probe of their part locks never meets another worker taking its own.
const OPENING_LOCK: &str = ".lock.opening";

/// [`OPENING_LOCK`], waited for: each holder keeps it for the time of a manifest's reads
/// and write, so the wait ends in a refusal only after one holder kept it a minute.
fn opening_lock(dir: &Path) -> Result<DirLock, StoreError> {
    use meal_data::dirlock::LockError;
    let mut since = (std::time::Instant::now(), String::new());
    loop {
        match DirLock::acquire_named(dir, OPENING_LOCK) {
            Err(LockError::Busy { dir, holder }) => {
                // the queue moves while the holder changes
                if holder != since.1 {
                    since = (std::time::Instant::now(), holder);
                } else if since.0.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(LockError::Busy {
                        dir,
                        holder: format!(
                            "a worker ({holder}) that has been opening its part for over a \
                             minute ({OPENING_LOCK})"
                        ),
                    }
                    .into());
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            r => return Ok(r?),
        }
    }
}

/// The worker manifests in `dir` (`manifest.worker-I-of-N.json`), sorted.
pub(crate) fn worker_manifests(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("manifest.worker-") && n.ends_with(".json"))
        .collect();
    names.sort();
    Ok(names)
}

/// Whether a writer of `config` (worker `worker`) may write in `dir` beside the manifests
/// already there. One directory holds one store: a single run's, or the parts of one
/// split into workers (then their merge). A writer of one kind must not replace the
/// shards another manifest lists (their checksums would no longer match), and every
/// manifest there must have been made with the same config.
fn check_neighbours(
    dir: &Path,
    config: &StoreConfig,
    worker: Option<[u32; 2]>,
) -> Result<(), StoreError> {
    let parts = worker_manifests(dir)?;
    let own = manifest_name(worker);
    let single = dir.join(MANIFEST).exists();
    match worker {
        None if !single && !parts.is_empty() => {
            // parts left unfinished (an interrupted worker or device-list run) cannot be
            // merged yet: name what finishes them
            let mut unfinished = Vec::new();
            let (mut present, mut of) = (Vec::new(), 0);
            for p in &parts {
                let m = Manifest::read_file(&dir.join(p))?;
                if m.state != State::Complete {
                    unfinished.push(p.as_str());
                }
                if let Some([i, n]) = m.worker {
                    present.push(i);
                    of = n;
                }
            }
            let missing: Vec<String> = (0..of)
                .filter(|i| !present.contains(i))
                .map(|i| format!("{i}/{of}"))
                .collect();
            let what = if !unfinished.is_empty() {
                format!(
                    "not merged, and {} unfinished: rerun those workers (or the same device \
                     list) to finish them, then merge",
                    unfinished.join(", ")
                )
            } else if !missing.is_empty() {
                format!(
                    "not merged, and worker(s) {} have not run: run them, then merge",
                    missing.join(", ")
                )
            } else {
                "all complete, not yet merged: merge them".to_string()
            };
            return Err(StoreError::Mismatch {
                path: dir.to_path_buf(),
                reason: format!(
                    "the directory holds the parts of workers ({}), {what}; or write this \
                     store in another directory",
                    parts.join(", ")
                ),
            });
        }
        // a single writer over a single or merged store: its manifest.json is compared
        // when it is opened (the parts of a merged store have its config)
        None => return Ok(()),
        Some([_, n]) => {
            if single && !parts.contains(&own) {
                let made = if parts.is_empty() {
                    "a store written by a single run".to_string()
                } else {
                    format!(
                        "a store merged from the parts of workers ({})",
                        parts.join(", ")
                    )
                };
                return Err(StoreError::Mismatch {
                    path: dir.join(MANIFEST),
                    reason: format!(
                        "the directory holds {made}: another worker's part would replace \
                         its shards; write the parts in another directory"
                    ),
                });
            }
            let suffix = format!("-of-{n}.json");
            if let Some(other) = parts.iter().find(|p| !p.ends_with(&suffix)) {
                return Err(StoreError::Mismatch {
                    path: dir.join(other),
                    reason: format!(
                        "written by a split into another number of workers than {n}: the two splits would write the same shards"
                    ),
                });
            }
        }
    }
    for name in parts.iter().filter(|p| **p != own) {
        let path = dir.join(name);
        let part = Manifest::read_file(&path)?;
        // a part that holds no shard has nothing to keep: its worker starts it over
        // (a split that failed on its first batch, rerun once its image is fixed); a
        // merge refuses parts of two configs whatever happens. Unless its worker is
        // running (it holds its part's lock): workers started together are compared
        if part.shards.is_empty() {
            let lock = name
                .strip_prefix("manifest")
                .and_then(|r| r.strip_suffix(".json"))
                .map(|w| format!("{LOCK_FILE}{w}"));
            if !lock.is_some_and(|l| meal_data::dirlock::is_held(dir, &l)) {
                continue;
            }
        }
        require_same_config(
            &path,
            &part.config,
            config,
            "another worker's part was made with another config",
        )?;
    }
    Ok(())
}

/// Whether `file` is a temporary file (`[.]NAME.tmp`, manifest::write_atomic) of the writer
/// `worker` whose manifest is `manifest`: its manifest, one of its shards, or for a
/// single writer anything.
fn owns_tmp(file: &str, worker: Option<[u32; 2]>, manifest: &str) -> bool {
    // our writes use `.NAME.tmp`; a bare `NAME.tmp` (other tools, older versions) counts
    let Some(inner) = file.strip_suffix(".tmp") else {
        return false;
    };
    let inner = inner.strip_prefix('.').unwrap_or(inner);
    let Some([i, n]) = worker else {
        return true;
    };
    if inner == manifest {
        return true;
    }
    inner
        .strip_prefix("shard-")
        .and_then(|r| r.split('.').next())
        .and_then(|idx| idx.parse::<u32>().ok())
        .is_some_and(|idx| idx % n == i)
}

/// The index of a shard file's name (`shard-NNNNNN.parquet` or `.safetensors`) that
/// `worker` writes (all for a single writer); None for any other name.
fn owned_shard(file: &str, worker: Option<[u32; 2]>) -> Option<u32> {
    let stem = file
        .strip_suffix(".parquet")
        .or_else(|| file.strip_suffix(".safetensors"))?;
    let digits = stem.strip_prefix("shard-")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let idx: u32 = digits.parse().ok()?;
    match worker {
        Some([i, n]) if idx % n != i => None,
        _ => Some(idx),
    }
}

fn manifest_name(worker: Option<[u32; 2]>) -> String {
    match worker {
        None => MANIFEST.to_string(),
        Some([i, n]) => format!("manifest.worker-{i}-of-{n}.json"),
    }
}

impl StoreWriter {
    /// Create the store in `dir`, or resume the partial one there. A store there with
    /// another config is refused, naming the keys that differ. `samples` are the
    /// dataset's samples (their count and hard labels); `worker` is `[i, n]` or `None`.
    pub fn open(
        dir: &Path,
        config: StoreConfig,
        samples: &[Sample],
        worker: Option<[u32; 2]>,
    ) -> Result<Self, StoreError> {
        if let Some([i, n]) = worker {
            if n == 0 || i >= n {
                return Err(StoreError::Param {
                    name: "worker",
                    reason: format!("{i}/{n} (expected I/N with I < N)"),
                });
            }
        }
        // refused before any file is written: a manifest with an impossible config
        // would block the corrected command
        config
            .check()
            .map_err(|(name, reason)| StoreError::Param { name, reason })?;
        if config.dataset.samples != samples.len() as u64 {
            return Err(StoreError::Param {
                name: "dataset",
                reason: "config fingerprint and samples disagree".into(),
            });
        }
        // the lock creates `dir` (and removes it again if this run writes nothing)
        let (locks, mut opening) = lock(dir, worker)?;
        check_neighbours(dir, &config, worker)?;
        let name = manifest_name(worker);
        let path = dir.join(&name);
        let was_store = path.exists();
        let existing = match was_store {
            true => Some(Manifest::read_file(&path)?),
            false => None,
        };
        // a store (or a worker's part) that holds no shard yet (a run that failed on its
        // first batch, say on a bad image since fixed: the dataset's fingerprint changed)
        // has nothing to keep: a run of another config starts it over instead of being
        // refused with nothing to resume
        let existing = existing.filter(|m| {
            let diff = super::manifest::config_diff(&m.config, &config);
            let fresh = m.shards.is_empty() && !diff.is_empty();
            if fresh {
                tracing::warn!(
                    "{}: no shard was written under its config; starting it over with this \
                     run's (differing keys: {})",
                    path.display(),
                    diff.join(", ")
                );
            }
            !fresh
        });
        let manifest = if let Some(mut m) = existing {
            require_same_config(
                &path,
                &m.config,
                &config,
                "the store there was made with another config",
            )?;
            // its config is this run's: other workers may open theirs while the shards
            // are checked
            opening.take();
            // shards are deterministic: one that is missing, truncated or altered since
            // it was listed is dropped from the manifest and written again
            let before = m.shards.len();
            m.shards.retain(|s| match s.check(dir) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{e}; it will be recomputed");
                    false
                }
            });
            if m.shards.len() != before {
                m.state = State::Partial;
                m.summary = None;
                m.images_sha256 = None;
                m.write(dir, &name)?;
            }
            m
        } else {
            let m = Manifest {
                format: FORMAT_NAME.into(),
                format_version: FORMAT_VERSION,
                producer: format!("meal-v2-rs {}", env!("CARGO_PKG_VERSION")),
                config,
                worker,
                shards: Vec::new(),
                state: State::Partial,
                summary: None,
                images_sha256: None,
            };
            m.write(dir, &name)?;
            m
        };
        drop(opening);
        // leftovers of a crash, in one pass over the directory. Inside a write: temporary
        // files are never read. Only this writer's own: another worker sharing the
        // directory may be writing its files at this very moment. Between a shard's
        // rename and its manifest's write: the shard is unlisted; a resume writes it
        // again, but a store started over under another config may never (another
        // --samples-per-shard): this writer's unlisted shards go, in a directory that
        // held its manifest only (same-named files of another tool elsewhere stay)
        let listed: std::collections::HashSet<&str> =
            manifest.shards.iter().map(|s| s.file.as_str()).collect();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            if owns_tmp(&file, worker, &name) {
                let _ = fs::remove_file(e.path());
            } else if was_store
                && owned_shard(&file, worker).is_some()
                && !listed.contains(file.as_str())
                && fs::remove_file(e.path()).is_ok()
            {
                tracing::warn!(
                    "{}: not in {name} (left by a crash): removed",
                    e.path().display()
                );
            }
        }
        Ok(StoreWriter {
            dir: dir.to_path_buf(),
            manifest,
            manifest_name: name,
            labels: samples.iter().map(|s| s.label).collect(),
            paths: samples.iter().map(|s| s.path.clone()).collect(),
            hook: None,
            step: 0,
            _locks: locks,
        })
    }

    /// For tests: `hook(step)` runs before every file-system step of the writer (four
    /// per atomic file) and may fail to simulate a crash there.
    #[doc(hidden)]
    pub fn set_hook(&mut self, hook: impl FnMut(u32) -> Result<(), StoreError> + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// The manifest as it stands.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of shards of the whole store.
    pub fn num_shards(&self) -> u32 {
        (self.labels.len() as u32).div_ceil(self.manifest.config.samples_per_shard)
    }

    /// Sample ids of shard `s`.
    pub fn shard_samples(&self, s: u32) -> std::ops::Range<u32> {
        let per = self.manifest.config.samples_per_shard;
        s * per..((s + 1) * per).min(self.labels.len() as u32)
    }

    /// Shards this writer (worker) still has to write, in order.
    pub fn pending_shards(&self) -> Vec<u32> {
        let (i, n) = self.manifest.worker.map(|[i, n]| (i, n)).unwrap_or((0, 1));
        (0..self.num_shards())
            .filter(|s| s % n == i && !self.manifest.shards.iter().any(|x| x.index == *s))
            .collect()
    }

    fn run_hook(&mut self) -> impl FnMut(u32) -> Result<(), StoreError> + '_ {
        move |_| {
            let step = self.step;
            self.step += 1;
            match &mut self.hook {
                Some(h) => h(step),
                None => Ok(()),
            }
        }
    }

    /// Encode and write shard `index` from its images (sample order; samples of the
    /// shard left out are skipped images), then record it in the manifest.
    pub fn write_shard(&mut self, index: u32, images: Vec<ImageProbs>) -> Result<(), StoreError> {
        self.write_shard_with(index, images, ShardNotes::default())
    }

    /// [`Self::write_shard`], recording `notes` with the shard in the manifest, so the
    /// store's report covers every run that wrote it.
    pub fn write_shard_with(
        &mut self,
        index: u32,
        mut images: Vec<ImageProbs>,
        notes: ShardNotes,
    ) -> Result<(), StoreError> {
        let range = self.shard_samples(index);
        if index >= self.num_shards() || !self.pending_shards().contains(&index) {
            return Err(StoreError::Param {
                name: "shard",
                reason: format!("shard {index} is not pending for this writer"),
            });
        }
        images.sort_by_key(|i| i.sample_id);
        let cfg = &self.manifest.config;
        let classes = cfg.classes.len();
        if let Some(sk) = notes.skipped.iter().find(|s| !range.contains(&s.sample_id)) {
            return Err(StoreError::Param {
                name: "skipped",
                reason: format!("{} is outside shard {index} ({range:?})", sk.sample_id),
            });
        }
        let mut stats = ShardStats {
            teacher_top1_agree: notes.teacher_top1_agree,
            ..ShardStats::default()
        };
        let mut rows = Vec::with_capacity(images.len());
        for im in &images {
            if !range.contains(&im.sample_id) {
                return Err(StoreError::Param {
                    name: "sample_id",
                    reason: format!("{} is outside shard {index} ({range:?})", im.sample_id),
                });
            }
            let mut crops = Vec::with_capacity(im.crops.len());
            for c in &im.crops {
                if c.probs.len() != classes || c.probs.iter().any(|p| !p.is_finite()) {
                    return Err(StoreError::Param {
                        name: "probs",
                        reason: format!(
                            "sample {} crop {}: need {classes} finite probabilities",
                            im.sample_id, c.crop_id
                        ),
                    });
                }
                let label = SoftLabel::encode(&c.probs, cfg.encoding);
                row_stats(
                    &mut stats,
                    &c.probs,
                    &label,
                    self.labels[im.sample_id as usize],
                    classes,
                );
                crops.push(CropLabel {
                    crop_id: c.crop_id,
                    record: c.record,
                    label,
                });
            }
            rows.push(ImageRows {
                sample_id: im.sample_id,
                width: im.width,
                height: im.height,
                crops,
            });
        }
        let bytes = match cfg.format {
            ShardFormat::Parquet => encode_parquet(
                &rows,
                cfg.encoding,
                classes,
                cfg.images_per_row_group as usize,
            )?,
            ShardFormat::Safetensors => encode_safetensors(&rows, classes)?,
        };
        let file = format!("shard-{index:06}.{}", cfg.format.extension());
        let info = ShardInfo {
            index,
            file: file.clone(),
            first_sample: range.start,
            end_sample: range.end,
            images: rows.iter().filter(|r| !r.crops.is_empty()).count() as u32,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            stats,
            skipped: notes.skipped,
        };
        let dir = self.dir.clone();
        write_atomic(&dir, &file, &bytes, &mut self.run_hook())?;
        let mut m = self.manifest.clone();
        m.shards.push(info);
        m.shards.sort_by_key(|s| s.index);
        let json = serde_json::to_vec_pretty(&m).expect("serialises");
        let name = self.manifest_name.clone();
        write_atomic(&dir, &name, &json, &mut self.run_hook())?;
        self.manifest = m;
        Ok(())
    }

    /// Close: when this writer's shards are all written, mark its manifest complete
    /// (single writer: with the summary and `images.parquet`). Returns the manifest.
    pub fn finish(mut self) -> Result<Manifest, StoreError> {
        if !self.pending_shards().is_empty() {
            return Err(StoreError::Param {
                name: "shard",
                reason: format!("{} shards still pending", self.pending_shards().len()),
            });
        }
        if self.manifest.worker.is_none() {
            self.manifest.images_sha256 = Some(images::write(
                &self.dir,
                &self.manifest,
                &self.paths,
                &self.labels,
            )?);
            self.manifest.summary = Some(summary(&self.manifest));
        }
        self.manifest.state = State::Complete;
        let json = serde_json::to_vec_pretty(&self.manifest).expect("serialises");
        let (dir, name) = (self.dir.clone(), self.manifest_name.clone());
        write_atomic(&dir, &name, &json, &mut self.run_hook())?;
        Ok(self.manifest)
    }
}

fn row_stats(s: &mut ShardStats, p: &[f32], label: &SoftLabel, hard: u32, classes: usize) {
    s.rows += 1;
    s.top1_agree += (top1(p) as u32 == hard) as u64;
    s.entropy_sum += entropy(p);
    s.kept_mass_sum += match label {
        SoftLabel::Dense(_) => 1.0,
        SoftLabel::TopK { probs, .. } => probs.iter().map(|&v| v as f64).sum(),
    };
    let q = label.to_dense(classes);
    s.kl_sum += p
        .iter()
        .zip(&q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| (a as f64) * ((a as f64) / (b as f64).max(1e-30)).ln())
        .sum::<f64>();
}

/// The store's statistics, summed over the shards of `m`.
pub fn summary(m: &Manifest) -> Summary {
    let mut t = ShardStats::default();
    for s in &m.shards {
        t.add(&s.stats);
    }
    let n = t.rows.max(1) as f64;
    Summary {
        rows: t.rows,
        images: m.shards.iter().map(|s| s.images as u64).sum(),
        top1_agreement: t.top1_agree as f64 / n,
        mean_entropy: t.entropy_sum / n,
        mean_kept_mass: t.kept_mass_sum / n,
        mean_kl: t.kl_sum / n,
        teacher_top1_agreement: t.teacher_top1_agree.iter().map(|&a| a as f64 / n).collect(),
        skipped: m.shards.iter().map(|s| s.skipped.len() as u64).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_removes_only_its_own_temporary_files() {
        let w1 = Some([1, 2]);
        let m1 = manifest_name(w1);
        // worker 1 of 2 owns odd shards and its manifest
        assert!(owns_tmp(".shard-000003.parquet.tmp", w1, &m1));
        assert!(owns_tmp(&format!(".{m1}.tmp"), w1, &m1));
        // worker 0's files, in flight while worker 1 opens, are left alone
        assert!(!owns_tmp(".shard-000002.parquet.tmp", w1, &m1));
        assert!(!owns_tmp(
            &format!(".{}.tmp", manifest_name(Some([0, 2]))),
            w1,
            &m1
        ));
        assert!(!owns_tmp(".images.parquet.tmp", w1, &m1));
        assert!(owns_tmp("shard-000003.parquet.tmp", w1, &m1));
        assert!(!owns_tmp("shard-000002.parquet.tmp", w1, &m1));
        // not temporary files at all
        assert!(!owns_tmp("shard-000003.parquet", w1, &m1));
        // a single writer owns every temporary file
        assert!(owns_tmp(".images.parquet.tmp", None, MANIFEST));
        assert!(owns_tmp(".shard-000002.parquet.tmp", None, MANIFEST));
    }
}
