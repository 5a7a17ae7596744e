//! The parallel batch loader: decode each image once on a rayon pool, emit several crops
//! of it (batch = images x crops, FKD's trick), with bounded prefetch.
//!
//! Memory stays flat: one batch is being built while at most `prefetch` finished ones
//! wait in a bounded channel, whatever the dataset size. Contents are a pure function of
//! the epoch order and the crop plan, so a given seed and epoch give the same batches
//! with any thread count.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::{expand_seed, CropRecord, CropSampler, DOMAIN_SHUFFLE};
use crate::dataset::{Dataset, Sample};
use crate::decode::decode_file;
use crate::error::{DataError, Result};
use crate::transform::{with_replayer, CropPixel, CropSpec};

/// What to do with a file that cannot be decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadFilePolicy {
    /// Leave the image out, count it and list it in the report (default).
    #[default]
    Skip,
    /// Stop with the error naming the file.
    Fail,
}

impl BadFilePolicy {
    /// The name [`FromStr`](std::str::FromStr) takes (`skip`, `fail`).
    pub fn name(self) -> &'static str {
        match self {
            BadFilePolicy::Skip => "skip",
            BadFilePolicy::Fail => "fail",
        }
    }
}

impl std::str::FromStr for BadFilePolicy {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(BadFilePolicy::Skip),
            "fail" => Ok(BadFilePolicy::Fail),
            _ => Err(DataError::param(
                "bad-file policy",
                format!("{s:?} (expected skip or fail)"),
            )),
        }
    }
}

/// Which crops of an image a batch holds.
pub trait CropPlan: Send + Sync {
    /// Crops per image (every image gets exactly this many).
    fn crops_per_image(&self) -> usize;
    /// The `(crop id, record)` pairs of `sample`, an image of `width` x `height`.
    fn crops(&self, sample: &Sample, width: u32, height: u32) -> Result<Vec<(u32, CropRecord)>>;
}

/// Crops drawn from a pool: pass `first / count`'s crops are ids
/// `first, first + 1, ..., first + count - 1`, modulo `pool` (cycling).
#[derive(Clone, Copy, Debug)]
pub struct PoolCrops {
    /// The pool's sampler.
    pub sampler: CropSampler,
    /// Pool size P (crop ids are `0..P`).
    pub pool: u32,
    /// First crop id of this pass.
    pub first: u32,
    /// Crops per image C.
    pub count: u32,
}

impl PoolCrops {
    /// The crops of pass `pass` when each pass takes `count` crops of a pool of `pool`:
    /// pass `e` starts at crop `e * count mod pool` (docs/DATA.md).
    pub fn pass(sampler: CropSampler, pool: u32, count: u32, pass: u64) -> Result<Self> {
        if pool == 0 || count == 0 {
            return Err(DataError::param(
                "crops per image",
                "pool size and crops per image must be at least 1",
            ));
        }
        let first = ((pass * count as u64) % pool as u64) as u32;
        Ok(PoolCrops {
            sampler,
            pool,
            first,
            count,
        })
    }
}

impl CropPlan for PoolCrops {
    fn crops_per_image(&self) -> usize {
        self.count as usize
    }
    fn crops(&self, sample: &Sample, width: u32, height: u32) -> Result<Vec<(u32, CropRecord)>> {
        Ok((0..self.count)
            .map(|k| {
                let id = ((self.first as u64 + k as u64) % self.pool as u64) as u32;
                (id, self.sampler.crop(sample.id, id, width, height))
            })
            .collect())
    }
}

/// How crops are made.
#[derive(Clone)]
pub enum CropMode {
    /// Replay the plan's records (training, precompute).
    Plan(Arc<dyn CropPlan>),
    /// The eval transform, one centre crop per image (crop id 0).
    Eval,
}

impl CropMode {
    fn crops_per_image(&self) -> usize {
        match self {
            CropMode::Plan(p) => p.crops_per_image(),
            CropMode::Eval => 1,
        }
    }
}

/// Loader settings.
#[derive(Clone)]
pub struct LoaderConfig {
    /// Images per batch; rows per batch = images x crops per image.
    pub images_per_batch: usize,
    /// Output size, filter and normalisation.
    pub spec: CropSpec,
    /// More outputs of the same crops, each at its own size/filter/normalisation (teachers
    /// with different input configs): [`Batch::extra`] holds one buffer per entry.
    pub extra_specs: Vec<CropSpec>,
    /// How crops are made.
    pub crops: CropMode,
    /// Finished batches that may wait for the consumer.
    pub prefetch: usize,
    /// Decode threads.
    pub threads: usize,
    /// Bad-file policy.
    pub policy: BadFilePolicy,
    /// Drop a last batch with fewer images than `images_per_batch`.
    pub drop_last: bool,
    /// Normalised f32 crops, or their raw 8-bit levels.
    pub pixels: PixelFormat,
}

/// How the loader writes crops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PixelFormat {
    /// Normalised f32, the network's input ([`Batch::data`], [`Batch::extra`]).
    #[default]
    Normalized,
    /// The raw 8-bit levels ([`Batch::levels`]), to be normalised where the network runs
    /// with [`crate::Normalize::lut`]: a quarter of the bytes to move to a GPU, and the
    /// same floats as [`PixelFormat::Normalized`].
    Levels,
}

/// One row of a batch: which crop of which image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Sample id.
    pub sample_id: u32,
    /// Crop id within the sample's pool.
    pub crop_id: u32,
    /// Hard label.
    pub label: u32,
    /// The crop replayed.
    pub record: CropRecord,
    /// Decoded image width.
    pub image_width: u32,
    /// Decoded image height.
    pub image_height: u32,
}

/// A file left out under [`BadFilePolicy::Skip`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Sample id.
    pub sample_id: u32,
    /// Path relative to the dataset root.
    pub path: String,
    /// The error.
    pub reason: String,
}

/// A batch: `rows.len()` crops as an NCHW tensor of `[rows, 3, size, size]`, f32 in
/// `data` (and `extra`) or 8-bit in `levels`, as [`LoaderConfig::pixels`] asks.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// Side of each crop.
    pub size: u32,
    /// `rows.len() * 3 * size * size` floats ([`PixelFormat::Normalized`]; else empty).
    pub data: Vec<f32>,
    /// What each row is, in order (an image's crops are contiguous).
    pub rows: Vec<Row>,
    /// The same rows replayed at each of [`LoaderConfig::extra_specs`], in that order
    /// (`rows.len() * 3 * s * s` floats each; [`PixelFormat::Normalized`]).
    pub extra: Vec<Vec<f32>>,
    /// [`PixelFormat::Levels`]: the crops' 8-bit levels, one buffer per spec (the main
    /// spec, then each extra spec), `rows.len() * 3 * s * s` bytes each; else empty.
    pub levels: Vec<Vec<u8>>,
    /// Files of this batch that were skipped.
    pub skipped: Vec<Skipped>,
}

impl Batch {
    /// Number of crops (rows).
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// Whether the batch has no rows (all its images skipped).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Totals over the batches produced so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Images decoded.
    pub images: u64,
    /// Crops emitted.
    pub crops: u64,
    /// Files skipped, with reasons.
    pub skipped: Vec<Skipped>,
}

/// The order of samples in an epoch: ids `0..n`, Fisher-Yates shuffled from
/// (seed, epoch) when `shuffle`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::from_seed(expand_seed(seed, DOMAIN_SHUFFLE));
        rng.set_stream(epoch);
        for i in (1..n).rev() {
            let j = bounded(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// An unbiased draw in `0..n` (rejection of the biased tail).
fn bounded(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

/// The batch loader; iterate it for `Result<Batch>`.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    report: Arc<Mutex<LoadReport>>,
    worker: Option<JoinHandle<()>>,
    batches: usize,
}

impl Loader {
    /// Start loading the samples of `dataset` listed in `order`.
    pub fn new(dataset: Arc<Dataset>, order: Vec<u32>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.images_per_batch == 0 {
            return Err(DataError::param("batch", "must be at least 1 image"));
        }
        let mut chunks: Vec<Vec<u32>> = order
            .chunks(cfg.images_per_batch)
            .map(<[u32]>::to_vec)
            .collect();
        if cfg.drop_last
            && chunks
                .last()
                .is_some_and(|c| c.len() < cfg.images_per_batch)
        {
            chunks.pop();
        }
        Self::from_batches(dataset, chunks, cfg)
    }

    /// Start loading explicit batches: `chunks[i]` are the sample ids of batch `i`
    /// (`images_per_batch` and `drop_last` are not used). Precompute aligns batches to
    /// shards this way, so a resumed run computes every shard exactly as a fresh one.
    pub fn from_batches(
        dataset: Arc<Dataset>,
        chunks: Vec<Vec<u32>>,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        if cfg.crops.crops_per_image() == 0 {
            return Err(DataError::param("crops per image", "must be at least 1"));
        }
        if let Some(bad) = chunks
            .iter()
            .flatten()
            .find(|&&id| dataset.sample(id).is_none())
        {
            return Err(DataError::param(
                "order",
                format!("sample id {bad} not in a dataset of {}", dataset.len()),
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("meal-decode-{i}"))
            .build()
            .map_err(|e| DataError::param("threads", e))?;
        let batches = chunks.len();
        let (tx, rx) = sync_channel(cfg.prefetch);
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let rep = Arc::clone(&report);
        let worker = std::thread::Builder::new()
            .name("meal-loader".into())
            .spawn(move || {
                for (index, ids) in chunks.into_iter().enumerate() {
                    let batch = pool.install(|| build_batch(&dataset, &ids, index, &cfg));
                    let stop = batch.is_err();
                    if let Ok(b) = &batch {
                        let mut r = rep.lock().unwrap_or_else(|p| p.into_inner());
                        r.crops += b.rows.len() as u64;
                        r.images += (ids.len() - b.skipped.len()) as u64;
                        r.skipped.extend(b.skipped.iter().cloned());
                    }
                    if tx.send(batch).is_err() || stop {
                        return; // consumer gone, or a fatal error delivered
                    }
                }
            })
            .map_err(|e| DataError::io(PathBuf::from("<loader thread>"), e))?;
        Ok(Loader {
            rx,
            report,
            worker: Some(worker),
            batches,
        })
    }

    /// Number of batches this epoch yields (if no error stops it).
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Totals so far: images, crops, skipped files.
    pub fn report(&self) -> LoadReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(b) => Some(b),
            Err(_) => {
                // the channel closes when the worker is done, or when it panicked: a
                // panic is an error, never a short epoch
                let w = self.worker.take()?;
                let payload = w.join().err()?;
                let reason = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic without a message")
                    .to_string();
                Some(Err(DataError::Loader { reason }))
            }
        }
    }
}

/// What a worker makes of one image: its rows, or why it was skipped.
enum ImageOut {
    Rows(Vec<Row>),
    Skipped(Skipped),
}

fn build_batch(ds: &Dataset, ids: &[u32], index: usize, cfg: &LoaderConfig) -> Result<Batch> {
    let mut batch = Batch {
        index,
        size: cfg.spec.size,
        data: Vec::new(),
        rows: Vec::new(),
        extra: Vec::new(),
        levels: Vec::new(),
        skipped: Vec::new(),
    };
    match cfg.pixels {
        PixelFormat::Normalized => {
            let mut bufs = fill::<f32>(ds, ids, cfg, &mut batch)?;
            batch.data = bufs.remove(0);
            batch.extra = bufs;
        }
        PixelFormat::Levels => batch.levels = fill::<u8>(ds, ids, cfg, &mut batch)?,
    }
    Ok(batch)
}

/// Decode and crop the images `ids` into one buffer per spec (the main spec first);
/// their rows and skipped files go to `batch`.
fn fill<P: CropPixel>(
    ds: &Dataset,
    ids: &[u32],
    cfg: &LoaderConfig,
    batch: &mut Batch,
) -> Result<Vec<Vec<P>>> {
    let c = cfg.crops.crops_per_image();
    // an image's slot: its C crops at the main spec, then its C crops at each extra spec
    let lens: Vec<usize> = std::iter::once(cfg.spec.len())
        .chain(cfg.extra_specs.iter().map(CropSpec::len))
        .map(|l| l * c)
        .collect();
    let per_image: usize = lens.iter().sum();
    let mut data = vec![P::default(); ids.len() * per_image];
    let outs: Vec<Result<ImageOut>> = data
        .par_chunks_mut(per_image)
        .zip(ids.par_iter())
        .map(|(slot, &id)| {
            let s = ds.sample(id).expect("ids checked at Loader::new");
            match load_image(ds, s, cfg, slot) {
                Ok(rows) => Ok(ImageOut::Rows(rows)),
                Err(e) if cfg.policy == BadFilePolicy::Skip && is_bad_file(&e) => {
                    // (a bad file is met again each epoch: 2,000 over 3 epochs logged 6,000
                    // lines)
                    crate::error::warn_once(format!("skipping {e}"));
                    // the reason without the path, which the record names already
                    let reason = match e {
                        DataError::Decode { reason, .. } => {
                            format!("cannot decode image: {reason}")
                        }
                        DataError::Io { error, .. } => error.to_string(),
                        DataError::Changed { reason, .. } => reason,
                        e => e.to_string(),
                    };
                    Ok(ImageOut::Skipped(Skipped {
                        sample_id: id,
                        path: s.path.clone(),
                        reason,
                    }))
                }
                Err(e) => Err(e),
            }
        })
        .collect();
    batch.rows.reserve(ids.len() * c);
    let mut write = 0; // compaction cursor, in images
    for (read, out) in outs.into_iter().enumerate() {
        match out? {
            ImageOut::Rows(r) => {
                if write != read {
                    data.copy_within(read * per_image..(read + 1) * per_image, write * per_image);
                }
                write += 1;
                batch.rows.extend(r);
            }
            ImageOut::Skipped(s) => batch.skipped.push(s),
        }
    }
    data.truncate(write * per_image);
    if lens.len() == 1 {
        return Ok(vec![data]);
    }
    // de-interleave the per-image slots into one buffer per spec
    let mut bufs: Vec<Vec<P>> = lens.iter().map(|l| Vec::with_capacity(l * write)).collect();
    for slot in data.chunks_exact(per_image) {
        let mut at = 0;
        for (b, &l) in bufs.iter_mut().zip(&lens) {
            b.extend_from_slice(&slot[at..at + l]);
            at += l;
        }
    }
    Ok(bufs)
}

/// Errors that are about the file (skippable), not about our configuration.
fn is_bad_file(e: &DataError) -> bool {
    matches!(
        e,
        DataError::Decode { .. } | DataError::Io { .. } | DataError::Changed { .. }
    )
}

fn load_image<P: CropPixel>(
    ds: &Dataset,
    s: &Sample,
    cfg: &LoaderConfig,
    slot: &mut [P],
) -> Result<Vec<Row>> {
    let path = ds.full_path(s);
    let img = decode_file(&path)?;
    let per_crop = cfg.spec.len();
    let row = |crop_id, record| Row {
        sample_id: s.id,
        crop_id,
        label: s.label,
        record,
        image_width: img.width,
        image_height: img.height,
    };
    match &cfg.crops {
        CropMode::Eval => {
            let (main, rest) = slot.split_at_mut(per_crop);
            with_replayer(|r| r.eval(&img, &cfg.spec, main, &path))?;
            let mut rest = rest;
            for spec in &cfg.extra_specs {
                let (out, tail) = rest.split_at_mut(spec.len());
                with_replayer(|r| r.eval(&img, spec, out, &path))?;
                rest = tail;
            }
            let full = CropRecord {
                top: 0.0,
                left: 0.0,
                height: 1.0,
                width: 1.0,
                flip: false,
            };
            Ok(vec![row(0, full)])
        }
        CropMode::Plan(plan) => {
            // (the plan names the sample by its dataset path: the file's is named here)
            let crops = plan.crops(s, img.width, img.height).map_err(|e| match e {
                DataError::Changed { reason, .. } => DataError::Changed {
                    path: path.clone(),
                    reason,
                },
                e => e,
            })?;
            if crops.len() != plan.crops_per_image() {
                return Err(DataError::dataset(
                    &path,
                    format!(
                        "crop plan gave {} crops, expected {}",
                        crops.len(),
                        plan.crops_per_image()
                    ),
                ));
            }
            let c = crops.len();
            let (main, mut rest) = slot.split_at_mut(c * per_crop);
            for ((_, rec), out) in crops.iter().zip(main.chunks_exact_mut(per_crop)) {
                with_replayer(|r| r.replay(&img, rec, &cfg.spec, out, &path))?;
            }
            for spec in &cfg.extra_specs {
                let (part, tail) = rest.split_at_mut(c * spec.len());
                for ((_, rec), out) in crops.iter().zip(part.chunks_exact_mut(spec.len())) {
                    with_replayer(|r| r.replay(&img, rec, spec, out, &path))?;
                }
                rest = tail;
            }
            Ok(crops
                .into_iter()
                .map(|(crop_id, rec)| row(crop_id, rec))
                .collect())
        }
    }
}
