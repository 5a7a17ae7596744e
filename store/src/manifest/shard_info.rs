//! A finished shard's record in the manifest (`shards[]`), and the checks that the
//! record, its file and the file's contents agree.

use std::path::Path;

use meal_data::Skipped;
use serde::{Deserialize, Serialize};

use super::StoreConfig;
use crate::StoreError;

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
    /// SHA-256 of its samples' paths and labels (`meal_data::dataset::listing_sha256`);
    /// absent in stores of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_sha256: Option<String>,
    /// SHA-256 of its samples' byte sizes when labelled (`meal_data::dataset::sizes_sha256`):
    /// with the listing, which shards a store continued after images changed keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes_sha256: Option<String>,
}

impl ShardInfo {
    /// Whether its record is one a writer can make, with `config`'s crop pool, classes
    /// and teachers: the checksum covers the shard, not these figures, and an edited
    /// figure would be summed into every report (a rerun kept a top-1 agreement of
    /// 8333333333 and called the store complete). Rows are the images' crops; each
    /// count of rows is at most the rows; sums of entropies and kept mass are within
    /// their bounds; skipped images lie in the shard's range, once each, beside the
    /// stored ones. On failure: what is impossible.
    pub(crate) fn check_stats(&self, config: &StoreConfig) -> Result<(), String> {
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
            format!(
                "an entropy sum of {} over {} rows",
                figure(st.entropy_sum),
                st.rows
            )
        } else if !(st.kept_mass_sum.is_finite()
            && st.kept_mass_sum >= -slack
            && st.kept_mass_sum <= rows + slack)
        {
            format!(
                "a kept mass of {} over {} rows",
                figure(st.kept_mass_sum),
                st.rows
            )
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
    pub(crate) fn check_contents(&self, dir: &Path, config: &StoreConfig) -> Result<(), String> {
        let path = dir.join(&self.file);
        let r = crate::shard_read::ShardReader::open(&path, config.encoding, config.classes.len())
            .map_err(|e| match e {
                // (the caller says "corrupt label store file" once, of the store)
                StoreError::Corrupt { path, reason } => format!("{}: {reason}", path.display()),
                e => e.to_string(),
            })?;
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
        } else if !r.images().iter().map(|im| im[0]).eq(r.samples()) {
            // (the image table takes each image's path and label by these ids)
            Some("its meal.images metadata lists other samples than its rows".into())
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
    /// the file, in pieces). A missing file is an I/O error, another file a corrupt-file error.
    pub fn check(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(&self.file);
        let (sum, bytes) = meal_data::files::sha256(&path).map_err(|e| StoreError::io(&path, e))?;
        let same_sum = sum == self.sha256;
        if bytes != self.bytes || !same_sum {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "does not match its manifest ({} bytes, listed {}; checksum {})",
                    bytes,
                    self.bytes,
                    if same_sum { "ok" } else { "differs" }
                ),
            ));
        }
        Ok(())
    }
}

/// A statistic as a refusal shows it: in scientific notation where plain digits would
/// run long (an edited 1e308 printed 309 digits).
fn figure(x: f64) -> String {
    match x.is_finite() && (x.abs() >= 1e9 || (x != 0.0 && x.abs() < 1e-4)) {
        true => format!("{x:.4e}"),
        false => format!("{x}"),
    }
}
