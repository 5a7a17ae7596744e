//! Writing a store: shard by shard, each atomic, the manifest rewritten atomically after
//! each, so a crash at any instant leaves a store that resumes with no row lost or
//! duplicated. Workers `i of n` write the shards `s` with `s % n == i`; [`crate::merge`] joins.

use std::path::PathBuf;

use meal_data::dirlock::DirLock;
use meal_data::{CropRecord, Skipped};

use super::images;
use super::label::{entropy, top1, SoftLabel};
use super::manifest::{write_atomic, Manifest, ShardFormat, ShardInfo, ShardStats, State, Summary};
use super::shard::{encode_parquet, encode_safetensors, CropLabel, ImageRows};
use super::{sha256_hex, StoreError};

mod leftovers;
mod open;
pub(crate) mod renew;
mod sharing;

pub use leftovers::is_shard_name;
pub use sharing::complete_without_lock;
pub use sharing::worker_manifests;

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

/// One image's crops encoded as the store keeps them ([`StoreWriter::encode_image`]),
/// with what each crop adds to its shard's statistics: the form a shard's images wait in
/// for the rest of the shard, instead of dense f32 probabilities (1000 classes, 64 crops
/// and 1024 images a shard held 430 MB for a 5 MB top-10 shard).
#[derive(Clone, Debug)]
pub struct EncodedImage {
    rows: ImageRows,
    /// Per crop: its ensemble argmax is the hard label, its entropy, the mass its
    /// encoding keeps and KL(dense || decoded), summed at write in sample order (the
    /// order, and so the bits, of the sums over the dense rows).
    stats: Vec<(bool, f64, f64, f64)>,
}

impl EncodedImage {
    /// Its crops.
    pub fn crops(&self) -> usize {
        self.rows.crops.len()
    }
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
    /// Per shard, its images' listing and sizes hashes ([`ShardInfo::listing_sha256`]).
    hashes: Vec<[String; 2]>,
    hook: Option<Hook>,
    step: u32,
    /// The store (or part) was complete when opened, every shard kept.
    complete: bool,
    /// Shards written since the manifest on disk was ([`MANIFEST_EVERY`]).
    unlisted: usize,
    /// When the manifest was last written.
    listed_at: std::time::Instant,
    /// [`MANIFEST_EVERY`], or another interval a test sets.
    list_every: std::time::Duration,
    /// A write of this writer failed (a full disk, an injected crash): nothing more is
    /// written when it is dropped, as after a crash.
    failed: bool,
    /// Held while writing: a second writer of the same store (or worker part) is refused,
    /// and so is a single writer or a merge beside workers.
    _locks: Vec<DirLock>,
}

impl StoreWriter {
    /// For tests: `hook(step)` runs before every file-system step of the writer (four
    /// per atomic file) and may fail to simulate a crash there.
    #[doc(hidden)]
    pub fn set_hook(&mut self, hook: impl FnMut(u32) -> Result<(), StoreError> + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// For tests: rewrite the manifest at most every `every` (zero: after each shard)
    /// instead of [`MANIFEST_EVERY`].
    #[doc(hidden)]
    pub fn set_manifest_every(&mut self, every: std::time::Duration) {
        self.list_every = every;
    }

    /// The manifest as it stands (in memory: the shards written so far, listed on disk
    /// within [`MANIFEST_EVERY`]).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of shards of the whole store.
    pub fn num_shards(&self) -> u32 {
        shard_count(self.labels.len(), self.manifest.config.samples_per_shard)
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
            .filter(|s| s % n == i && !self.is_written(*s))
            .collect()
    }

    /// Shard `s`'s record in the manifest, if written (the records are kept sorted by
    /// index: a binary search, so that a store of 10 000 shards is not scanned per
    /// shard written).
    pub fn shard(&self, s: u32) -> Option<&ShardInfo> {
        let shards = &self.manifest.shards;
        shards
            .binary_search_by_key(&s, |x| x.index)
            .ok()
            .map(|i| &shards[i])
    }

    /// Whether shard `s` is in the manifest.
    fn is_written(&self, s: u32) -> bool {
        self.shard(s).is_some()
    }

    /// Whether shard `s` is this writer's and not written yet (one of
    /// [`Self::pending_shards`], without listing them).
    fn is_pending(&self, s: u32) -> bool {
        let (i, n) = self.manifest.worker.map(|[i, n]| (i, n)).unwrap_or((0, 1));
        s < self.num_shards() && s % n == i && !self.is_written(s)
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

    /// One image's crops encoded as the store keeps them, with their statistics: a
    /// caller collecting a shard holds these, not the dense probabilities
    /// ([`Self::write_encoded`] writes them). Refused: a sample beyond the dataset, a
    /// crop without its classes' finite probabilities.
    pub fn encode_image(&self, im: ImageProbs) -> Result<EncodedImage, StoreError> {
        let cfg = &self.manifest.config;
        let classes = cfg.classes.len();
        let Some(&hard) = self.labels.get(im.sample_id as usize) else {
            return Err(StoreError::Param {
                name: "sample_id",
                reason: format!(
                    "{} is beyond the dataset's {}",
                    im.sample_id,
                    self.labels.len()
                ),
            });
        };
        let mut crops = Vec::with_capacity(im.crops.len());
        let mut stats = Vec::with_capacity(im.crops.len());
        for c in im.crops {
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
            stats.push(crop_stats(&c.probs, &label, hard, classes));
            crops.push(CropLabel {
                crop_id: c.crop_id,
                record: c.record,
                label,
            });
        }
        Ok(EncodedImage {
            rows: ImageRows {
                sample_id: im.sample_id,
                width: im.width,
                height: im.height,
                crops,
            },
            stats,
        })
    }

    /// [`Self::write_shard`], recording `notes` with the shard in the manifest, so the
    /// store's report covers every run that wrote it.
    pub fn write_shard_with(
        &mut self,
        index: u32,
        images: Vec<ImageProbs>,
        notes: ShardNotes,
    ) -> Result<(), StoreError> {
        let encoded = images
            .into_iter()
            .map(|im| self.encode_image(im))
            .collect::<Result<Vec<_>, _>>()?;
        self.write_encoded(index, encoded, notes)
    }

    /// [`Self::write_shard_with`] from images encoded by [`Self::encode_image`].
    pub fn write_encoded(
        &mut self,
        index: u32,
        mut images: Vec<EncodedImage>,
        notes: ShardNotes,
    ) -> Result<(), StoreError> {
        if !self.is_pending(index) {
            return Err(StoreError::Param {
                name: "shard",
                reason: format!("shard {index} is not pending for this writer"),
            });
        }
        // (after the check: a shard index past the store's overflowed its range)
        let range = self.shard_samples(index);
        images.sort_by_key(|i| i.rows.sample_id);
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
        for im in images {
            if !range.contains(&im.rows.sample_id) {
                return Err(StoreError::Param {
                    name: "sample_id",
                    reason: format!("{} is outside shard {index} ({range:?})", im.rows.sample_id),
                });
            }
            for (agree, entropy, kept, kl) in im.stats {
                stats.rows += 1;
                stats.top1_agree += agree as u64;
                stats.entropy_sum += entropy;
                stats.kept_mass_sum += kept;
                stats.kl_sum += kl;
            }
            rows.push(im.rows);
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
        // every sample of the range is stored or listed as skipped (a reader holds the
        // manifest to it: an image missing from both would vanish unnoticed); one left
        // out without a note is listed with that reason, and a note is kept once
        let stored: std::collections::HashSet<u32> = rows
            .iter()
            .filter(|r| !r.crops.is_empty())
            .map(|r| r.sample_id)
            .collect();
        let mut skipped: Vec<Skipped> = Vec::new();
        let mut noted = std::collections::HashSet::new();
        for k in notes.skipped {
            if !stored.contains(&k.sample_id) && noted.insert(k.sample_id) {
                skipped.push(k);
            }
        }
        for id in range.clone() {
            if !stored.contains(&id) && !noted.contains(&id) {
                skipped.push(Skipped {
                    sample_id: id,
                    path: self.paths[id as usize].clone(),
                    reason: "no labels were given for it".into(),
                });
            }
        }
        skipped.sort_by_key(|k| k.sample_id);
        let file = shard_file(index, cfg.format);
        let info = ShardInfo {
            index,
            file: file.clone(),
            first_sample: range.start,
            end_sample: range.end,
            images: rows.iter().filter(|r| !r.crops.is_empty()).count() as u32,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            stats,
            skipped,
            listing_sha256: self.hashes.get(index as usize).map(|h| h[0].clone()),
            sizes_sha256: self.hashes.get(index as usize).map(|h| h[1].clone()),
        };
        let dir = self.dir.clone();
        let written = write_atomic(&dir, &file, &bytes, &mut self.run_hook());
        self.failed |= written.is_err();
        written?;
        // (sorted by index, inserted in place: is_written's binary search)
        let at = self
            .manifest
            .shards
            .partition_point(|s| s.index < info.index);
        self.manifest.shards.insert(at, info);
        self.unlisted += 1;
        if self.listed_at.elapsed() >= self.list_every {
            self.flush()?;
        }
        Ok(())
    }

    /// Write the manifest with every shard written so far (done at least every
    /// [`MANIFEST_EVERY`], by [`Self::finish`], and when the writer is dropped).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        match self.unlisted {
            0 => Ok(()),
            _ => self.write_manifest(),
        }
    }

    /// The manifest as it stands, written atomically; a failure marks the writer failed.
    fn write_manifest(&mut self) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(&self.manifest).expect("serialises");
        let (dir, name) = (self.dir.clone(), self.manifest_name.clone());
        let written = write_atomic(&dir, &name, &json, &mut self.run_hook());
        self.failed |= written.is_err();
        written?;
        self.unlisted = 0;
        self.listed_at = std::time::Instant::now();
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
        // a rerun of a complete store writes nothing when its image table is intact (it
        // rewrote the same bytes, which failed on a read-only mount of a finished store)
        let table_intact =
            || self.manifest.worker.is_some() || images::intact(&self.dir, &self.manifest);
        // (and its summary the shards' sums: an edited one is rewritten, as the refusal
        // of it says a rerun does)
        let summary_intact = self.manifest.worker.is_some()
            || self.manifest.summary.as_ref() == Some(&summary(&self.manifest));
        if self.complete && summary_intact && table_intact() {
            if self.manifest.worker.is_none() {
                // (a crash may have come between the store's manifest and its parts')
                sharing::follow_parts(&self.dir, &self.manifest);
            }
            return Ok(self.manifest.clone());
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
        self.write_manifest()?;
        if self.manifest.worker.is_none() {
            sharing::follow_parts(&self.dir, &self.manifest);
        }
        Ok(self.manifest.clone())
    }
}

/// How often, at most, the manifest is rewritten while shards are written: once per
/// shard made a run's time grow with the square of its shards (the manifest lists them
/// all: 10 MB at 16,000 one-image shards, 0.3 s a shard). A crash loses at most this
/// long's shards, recomputed on resume as any unlisted shard is; a run that stops
/// (Ctrl-C, an error) lists them when its writer is dropped.
pub const MANIFEST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for StoreWriter {
    /// Lists the shards written since the last manifest, unless a write failed (then,
    /// as after a crash, the next run recomputes them).
    fn drop(&mut self) {
        if self.unlisted > 0 && !self.failed {
            if let Err(e) = self.flush() {
                tracing::warn!("{e}: the shards written last are recomputed by the next run");
            }
        }
    }
}

/// Shards of a store of `samples` images, `per_shard` each.
fn shard_count(samples: usize, per_shard: u32) -> u32 {
    (samples as u32).div_ceil(per_shard.max(1))
}

/// The file name of shard `index` (`shard-NNNNNN.parquet` or `.safetensors`).
pub(crate) fn shard_file(index: u32, format: ShardFormat) -> String {
    format!("shard-{index:06}.{}", format.extension())
}

/// What one crop adds to its shard's statistics: whether the ensemble's argmax `p` is
/// the hard label, its entropy, the mass `label` keeps, and KL(p || decoded label).
fn crop_stats(p: &[f32], label: &SoftLabel, hard: u32, classes: usize) -> (bool, f64, f64, f64) {
    let kept = match label {
        SoftLabel::Dense(_) => 1.0,
        SoftLabel::TopK { probs, .. } => probs.iter().map(|&v| v as f64).sum(),
    };
    let q = label.to_dense(classes);
    let kl = p
        .iter()
        .zip(&q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| (a as f64) * ((a as f64) / (b as f64).max(1e-30)).ln())
        .sum::<f64>();
    (top1(p) as u32 == hard, entropy(p), kept, kl)
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
