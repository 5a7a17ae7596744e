//! What a run is set up with before its first batch: the store config a resume must
//! match, the teachers, and the memory check of a batch and a shard being filled.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use meal_cli::memory::Room;
use meal_data::Dataset;
use meal_models::ensemble::{default_dtype, Ensemble, ENSEMBLE_RULE};
use meal_store::{CropPool, Encoding, StoreConfig};

use crate::config::{Settings, DENSE_DEFAULT_MAX_CLASSES};

/// The encoding `s` asks for on `ds`: `--encoding`, else dense up to
/// [`DENSE_DEFAULT_MAX_CLASSES`] classes and top-10 above.
fn encoding_of(s: &Settings, ds: &Dataset) -> Encoding {
    s.encoding
        .unwrap_or(if ds.classes().len() <= DENSE_DEFAULT_MAX_CLASSES {
            Encoding::Dense
        } else {
            Encoding::TopK { k: 10, f32: false }
        })
}

/// The store config `s` asks for on `ds` with `ens` (what a resume must match).
pub fn store_config(s: &Settings, ds: &Dataset, ens: &Ensemble) -> StoreConfig {
    let encoding = encoding_of(s, ds);
    StoreConfig {
        dataset: ds.fingerprint().clone(),
        classes: ds.classes().to_vec(),
        crop_pool: CropPool {
            crops_per_image: s.crops_per_image,
            scale: s.scale,
            ratio: s.ratio,
            seed: s.seed,
        },
        teachers: ens.teachers().iter().map(|t| t.info.clone()).collect(),
        ensemble: ENSEMBLE_RULE.into(),
        encoding,
        format: s.format,
        samples_per_shard: s.samples_per_shard,
        images_per_row_group: s.images_per_row_group,
    }
}

/// Load the teachers of `s` for a dataset of `classes` (its class names).
pub fn load_ensemble(
    s: &Settings,
    classes: &[String],
    device: &candle_core::Device,
) -> Result<Ensemble> {
    // hub names (ORG/NAME) become local files first
    let mut args = s.teachers.clone();
    for t in &mut args {
        meal_cli::hub::resolve_teacher("--teacher", &t.arch, &mut t.weights)?;
    }
    let dtype = s.dtype.unwrap_or_else(|| default_dtype(device));
    if device.is_cpu() && dtype == DType::BF16 && !meal_models::ops::bf16::available() {
        // on the CPU, bf16 teachers multiply with AVX512-BF16 (meal_models::ops::bf16)
        bail!("--dtype bf16 on the CPU needs AVX512-BF16, which this CPU lacks: use f32 (the default), or bf16 on a GPU");
    }
    if device.is_cpu() && s.dtype.is_none() && meal_models::ops::bf16::amx::available() {
        // not the default (a store's dtype must not depend on the CPU that started it),
        // but worth knowing: ResNet-152 in bf16 ran 3.3x its f32 with AMX (BENCHMARKS.md)
        tracing::info!(
            "this CPU has AMX: --dtype bf16 runs the teachers ~3x faster here (the report gives its label error against f32)"
        );
    }
    Ensemble::load(&args, classes, device, dtype).context("--teacher")
}

/// Refuses a `--batch` whose largest forward in some teacher (its input and largest
/// activation at least) exceeds the memory available (meal_cli::memory): on `device`'s
/// GPU its free memory (the teachers' weights are on it already), else the host's.
pub(super) fn check_memory(
    s: &Settings,
    ds: &Dataset,
    ens: &Ensemble,
    device: &candle_core::Device,
) -> Result<()> {
    let room = Room::of(meal_models::device::gpu_free_memory(device).context("--device")?);
    // a teacher's forward takes at most --batch crops, and no more than a batch of images
    // holds: batches never straddle shards or the data (--limit does not bound them: it
    // labels whole shards)
    let crops = s.crops_per_image as usize;
    let images = (s.batch / crops)
        .max(1)
        .min(s.samples_per_shard as usize)
        .min(ds.len());
    let rows = s.batch.min(images * crops);
    // the CPU devices of a list run their forwards at once in this process's memory,
    // those that have a shard to label (worker i labels the shards i, i + n, ... of those
    // --limit covers; a part complete already counts too: an upper bound)
    let shards = ds
        .len()
        .min(s.limit.unwrap_or(usize::MAX))
        .div_ceil(s.samples_per_shard.max(1) as usize);
    let at_once = match room {
        Room::Host => s
            .cpu_workers
            .iter()
            .filter(|&&i| (i as usize) < shards)
            .count()
            .max(1),
        Room::Gpu(_) => 1,
    };
    let needs: Vec<u64> = meal_models::memory::ensemble_floors(ens, rows)?
        .into_iter()
        .map(|n| n.saturating_mul(at_once as u64))
        .collect();
    meal_cli::memory::check_forwards(
        room,
        &needs,
        rows,
        |i| {
            let (t, arg) = (&ens.teachers()[i], &s.teachers[i]);
            let devices = if at_once > 1 {
                format!(" on each of the {at_once} CPU devices of --device at once")
            } else {
                String::new()
            };
            format!(
                "--batch {} with --teacher {}={} at {} px{devices}",
                s.batch,
                arg.arch,
                arg.weights.display(),
                t.spec.size
            )
        },
        "lower --batch or the teacher's size=",
    )?;
    // Each worker of this process holds the shard it fills until the shard is written:
    // its crops' labels as encoded (a dense label as f32, StoreWriter::encode_image),
    // then the file's bytes too (f16), per crop with its record and statistics (190 B
    // a crop measured for 10 classes, dense). Writing a Parquet shard holds each row
    // group's column chunks until the group ends: about 4 bytes a class per crop of a
    // row group for dense labels, 24 a kept class for top-k, measured (1000 classes, one
    // row group of 4096 or 64 000 crops; the group is handed to the writer in pieces of
    // 2^16 values, meal_store::shard, whose arrays took 40 bytes a class when a group
    // was one piece). And the loader's batches: an image's whole pool is one batch at
    // least, whatever --batch (the forward takes --batch at a time), 8-bit pixels for
    // each teacher's side, up to 4 batches in flight, and the f32 input of one.
    let classes = ds.classes().len() as u64;
    let (per_crop, per_grouped_crop) = match encoding_of(s, ds) {
        Encoding::Dense => (6 * classes + 160, 4 * classes + 200),
        Encoding::TopK { k, .. } => (12 * u64::from(k) + 200, 24 * u64::from(k) + 200),
    };
    let p = u64::from(s.crops_per_image);
    let shard_images = (s.samples_per_shard as u64).min(ds.len() as u64);
    let group_images = match s.format {
        meal_store::ShardFormat::Parquet => u64::from(s.images_per_row_group).min(shard_images),
        meal_store::ShardFormat::Safetensors => shard_images,
    };
    let batch_crops = (s.batch as u64 / p).clamp(1, shard_images.max(1)) * p;
    let sides: Vec<u64> = ens
        .specs()
        .iter()
        .map(|c| 3 * u64::from(c.size).pow(2))
        .collect();
    let widest = sides.iter().copied().max().unwrap_or(0);
    let loader = batch_crops * (4 * sides.iter().sum::<u64>() + 4 * widest);
    let workers = s.devices().len() as u64;
    // (and 8 MiB for a piece of a row group being encoded, about 50 bytes a value)
    let need =
        (per_crop * p * shard_images + per_grouped_crop * p * group_images + loader + (8 << 20))
            * workers;
    meal_cli::memory::check(
        need,
        &format!(
            "a shard of {shard_images} images (--samples-per-shard {}) x --crops-per-image {} \
             crops of {classes} classes, held until it is written, and batches of {batch_crops} \
             crops loaded{}",
            s.samples_per_shard,
            s.crops_per_image,
            if workers > 1 {
                format!(", in each of the {workers} workers of --device")
            } else {
                String::new()
            }
        ),
        "lower --samples-per-shard, --images-per-row-group or --crops-per-image",
    )
}
