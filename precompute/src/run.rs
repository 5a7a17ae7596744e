//! The precompute job: decode each image once, draw its pool of crops, run the teacher
//! ensemble over them, write the mean softmax of each crop to the store, shard by shard.
//!
//! Decoding runs ahead on the loader's pool (bounded prefetch) while the teachers compute.
//! A shard is written as soon as all its images are labelled; the store writer makes each
//! write atomic, so an interrupted run resumes at the first missing shard.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use meal_data::{
    BadFilePolicy, Batch, CropMode, CropSampler, Dataset, Loader, LoaderConfig, PoolCrops,
    RrcParams,
};
use meal_models::ensemble::{dtype_name, Crops, Ensemble, Submitted};
use meal_store::{Manifest, StoreWriter};

use crate::config::{Settings, DENSE_DEFAULT_MAX_CLASSES};
use crate::report::{combine, compare_labels, store_report, RunReport};

mod pending;
mod setup;
use pending::Pending;
use setup::check_memory;
pub use setup::{load_ensemble, store_config};

/// Run precompute as `s` says. `stop` is polled between batches (Ctrl-C): when set the
/// run ends there, keeping every shard written so far (a resumable partial store).
pub fn run(s: &Settings, stop: &std::sync::atomic::AtomicBool) -> Result<RunReport> {
    run_with(s, stop, &mut |_| {})
}

/// What a run will do: the open dataset, teachers and store, and its batches.
struct Plan {
    ds: Arc<Dataset>,
    ens: Ensemble,
    device: candle_core::Device,
    writer: StoreWriter,
    /// Shards of this writer already in the store.
    present: u32,
    /// Shards to write, with the number of samples (images) each covers.
    expected: BTreeMap<u32, usize>,
    /// Sample ids per batch; batches never straddle shards.
    chunks: Vec<Vec<u32>>,
    images_per_batch: usize,
}

fn plan(s: &Settings) -> Result<Plan> {
    let device = meal_models::parse_device(&s.device).context("--device")?;
    let ds = Arc::new(meal_cli::open_dataset(&s.data, "--data", s.links)?);
    if ds.is_empty() {
        bail!("--data {}: no images", s.data.display());
    }
    let ens = load_ensemble(s, ds.classes(), &device)?;
    check_memory(s, &ds, &ens, &device)?;
    let config = store_config(s, &ds, &ens);
    // the same weights twice: allowed (a weighted ensemble), more often a slip
    let names: Vec<String> = s
        .teachers
        .iter()
        .map(|t| format!("--teacher {}={}", t.arch, t.weights.display()))
        .collect();
    for w in ens.repeated_said(&names) {
        tracing::warn!("{w}");
    }
    config.check().map_err(|(key, reason)| {
        // the flag that set the key, not --out: the store itself is fine
        let flag = match key {
            "encoding" => "--encoding",
            // (both flags of the pair: either may be the one a --config set)
            "format" if s.encoding.is_some() => "--format safetensors with --encoding",
            "format" => "--format",
            "classes" => "--data",
            "samples_per_shard" => "--samples-per-shard",
            "images_per_row_group" => "--images-per-row-group",
            "crop_pool.crops_per_image" => "--crops-per-image",
            other => other,
        };
        let hint = if key == "format" && s.encoding.is_none() {
            // the user never asked for top-k: say where it came from
            format!(
                " (top-k is the default encoding above {DENSE_DEFAULT_MAX_CLASSES} classes: add --encoding dense)"
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("{flag}: {reason}{hint}")
    })?;
    // a student's run directory (its checkpoint, metrics) is not a store's
    if ["checkpoint", "metrics.jsonl"]
        .iter()
        .any(|f| s.out.join(f).exists())
    {
        bail!(
            "--out {}: a meal-student run is there; the store needs its own directory",
            s.out.display()
        );
    }
    let sizes: Vec<u32> = config.teachers.iter().map(|t| t.input_size).collect();
    let writer = StoreWriter::open(&s.out, config, ds.samples(), s.worker)
        .with_context(|| format!("--out {}", s.out.display()))
        .map_err(|e| recorded_side_hint(e, s, &sizes))?;
    let all_pending = writer.pending_shards();
    let (wi, wn) = s.worker.map(|[i, n]| (i, n)).unwrap_or((0, 1));
    let owned = (0..writer.num_shards()).filter(|x| x % wn == wi).count() as u32;
    let present = owned - all_pending.len() as u32;
    let pending: Vec<u32> = all_pending
        .iter()
        .copied()
        .filter(|&sh| match s.limit {
            Some(l) => (writer.shard_samples(sh).start as usize) < l,
            None => true,
        })
        .collect();
    if owned == 0 {
        // (its part is still written, empty, so that merge finds all N)
        tracing::warn!(
            "--worker {wi}/{wn}: the store has {} shards (of --samples-per-shard {}), none \
             of them this worker's; nothing to write (up to {} workers have work)",
            writer.num_shards(),
            s.samples_per_shard,
            writer.num_shards()
        );
    }
    if let (Some(l), true, false) = (s.limit, pending.is_empty(), all_pending.is_empty()) {
        // every shard this worker has left starts past the limit: say so, not just "0"
        tracing::warn!(
            "--limit {l}: this run's {} pending shards all start past image {l} (the \
             first at image {}); nothing to write",
            all_pending.len(),
            writer.shard_samples(all_pending[0]).start
        );
    }
    // batches never straddle shards: a shard's crops meet the same batch neighbours in a
    // fresh, a resumed or a worker run (byte-identical shards)
    let images_per_batch = (s.batch / s.crops_per_image as usize).max(1);
    let chunks: Vec<Vec<u32>> = pending
        .iter()
        .flat_map(|&sh| {
            let ids: Vec<u32> = writer.shard_samples(sh).collect();
            ids.chunks(images_per_batch)
                .map(<[u32]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let expected = pending
        .iter()
        .map(|&sh| (sh, writer.shard_samples(sh).len()))
        .collect();
    tracing::info!(
        "{} images, {} classes, {}; encoding {}{}; {} to write ({} present)",
        ds.len(),
        ds.classes().len(),
        match ens.teachers().len() {
            1 => "1 teacher".to_string(),
            n => format!("{n} teachers"),
        },
        writer.manifest().config.encoding,
        if s.encoding.is_none() && ds.classes().len() > DENSE_DEFAULT_MAX_CLASSES {
            format!(" (the default above {DENSE_DEFAULT_MAX_CLASSES} classes; `inspect` gives the mass it keeps)")
        } else {
            String::new()
        },
        match pending.len() {
            1 => "1 shard".to_string(),
            n => format!("{n} shards"),
        },
        present
    );
    Ok(Plan {
        ds,
        ens,
        device,
        writer,
        present,
        expected,
        chunks,
        images_per_batch,
    })
}

/// [`run`], calling `on_shard(index)` after each shard is written (progress hooks, tests;
/// not called when `--device` lists several devices).
pub fn run_with(
    s: &Settings,
    stop: &std::sync::atomic::AtomicBool,
    on_shard: &mut dyn FnMut(u32),
) -> Result<RunReport> {
    let devices = s.devices();
    if devices.len() > 1 && !complete_store(s) {
        return run_devices(s, &devices, stop);
    }
    let mut one = s.clone();
    if let Some(first) = devices.first() {
        one.device = first.clone();
    }
    run_part(&one, stop, on_shard).map(|(report, _)| report)
}

/// Whether `--out` holds a complete store (one device's or merged parts): a rerun with a
/// device list has nothing for its workers to write and reads it as one device does (its
/// workers, split another way than the parts merged there, would each be refused).
fn complete_store(s: &Settings) -> bool {
    s.worker.is_none()
        && Manifest::read_file(&s.out.join(meal_store::MANIFEST))
            .is_ok_and(|m| m.state == meal_store::State::Complete)
}

/// One writer's run on one device: the report and the writer's manifest afterwards.
fn run_part(
    s: &Settings,
    stop: &std::sync::atomic::AtomicBool,
    on_shard: &mut dyn FnMut(u32),
) -> Result<(RunReport, Manifest)> {
    let t0 = Instant::now();
    let Plan {
        ds,
        ens,
        device,
        mut writer,
        present,
        mut expected,
        chunks,
        images_per_batch,
    } = plan(s)?;
    let total_images: usize = chunks.iter().map(Vec::len).sum();
    let params = RrcParams::new((s.scale[0], s.scale[1]), (s.ratio[0], s.ratio[1]))?;
    let sampler = CropSampler::new(s.seed, params);
    let crop_plan = PoolCrops::pass(sampler, s.crops_per_image, s.crops_per_image, 0)?;
    let specs = ens.specs();
    let loader = Loader::from_batches(
        Arc::clone(&ds),
        chunks,
        LoaderConfig {
            images_per_batch,
            spec: specs[0],
            extra_specs: specs[1..].to_vec(),
            crops: CropMode::Plan(Arc::new(crop_plan)),
            prefetch: 2,
            threads: s.threads,
            policy: s.policy,
            drop_last: false,
            // 8-bit crops, normalised by the teachers' device: a quarter of the bytes
            // to copy to a GPU, the same floats (Normalize::lut on both sides)
            pixels: meal_data::PixelFormat::Levels,
        },
    )?;
    let bar = meal_cli::progress_bar(
        total_images as u64,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
    );

    let classes = ens.num_classes();
    let mut pending = Pending::default();
    let (mut images, mut crops, mut shards_written, mut bytes_written) = (0u64, 0u64, 0u32, 0u64);
    // crops labelled so far, written or not (the progress bar's rate)
    let mut crops_seen = 0u64;
    // the dtype asked for (on the CPU, bf16 teachers keep f32 weights: model.dtype()
    // would say f32)
    let dtype = meal_models::ensemble::parse_dtype(&ens.teachers()[0].info.dtype)?;
    let mut dtype_check = None;
    let loop_t0 = Instant::now();
    let mut check_time = std::time::Duration::ZERO;
    // Two batches in flight: batch n+1's teacher work is queued (`Ensemble::submit`)
    // before batch n's labels are read back and written, so on a GPU the device never
    // waits for the host's reading, shard writing and next copy (on the CPU the work is
    // done at submit: the same order as one at a time). Labels are the same either way.
    // Ahead of the dtype check (first batch, not f32) nothing more is queued, so the
    // check's time is its own.
    let mut batches = loader;
    // (None: given up between two chunks of its forward by a Ctrl-C; the batch is
    // labelled again on resume, as the shard it is part of)
    let submit = |b: Batch| -> Result<Option<(Batch, Submitted)>> {
        let sub = ens.submit_until(&Crops::of_batch(&b), b.rows.len(), s.batch, stop)?;
        Ok(sub.map(|sub| (b, sub)))
    };
    let mut inflight: Option<(Batch, Submitted)> = None;
    loop {
        let (batch, sub) = match inflight.take() {
            Some(f) => f,
            None => match batches.next() {
                None => break,
                Some(b) => match submit(
                    b.map_err(|e| at_bad_file(e.into(), s, present + shards_written))?,
                )? {
                    Some(f) => f,
                    None => {
                        tracing::warn!("interrupted: the store is left partial; rerun to resume");
                        break;
                    }
                },
            },
        };
        // the next batch: an error there (loading or queuing it) is returned once this
        // batch is labelled and written, so nothing done is lost
        let mut failed: Option<anyhow::Error> = None;
        if dtype_check.is_some() || dtype == DType::F32 {
            match batches
                .next()
                .map(|b| b.map_err(anyhow::Error::from).and_then(submit))
            {
                Some(Ok(next)) => inflight = next,
                Some(Err(e)) => failed = Some(e),
                None => {}
            }
        }
        let rows = batch.rows.len();
        let inputs = Crops::of_batch(&batch);
        // a teacher's NaN names the image and crop it came from
        let with_crop = |e: meal_models::ModelError| {
            let crop = match &e {
                meal_models::ModelError::NonFinite { row, .. } => batch.rows.get(*row),
                _ => None,
            };
            let e = anyhow::Error::from(e);
            match crop {
                Some(r) => e.context(format!(
                    "labelling {} (crop {})",
                    ds.samples()[r.sample_id as usize].path,
                    r.crop_id
                )),
                None => e,
            }
        };
        let out = ens.finish(sub).map_err(with_crop)?;
        if dtype_check.is_none() && dtype != DType::F32 {
            // the first batch again in f32: the label error the dtype costs, reported
            let check_t0 = Instant::now();
            let mut f32_args = s.clone();
            f32_args.dtype = Some(DType::F32);
            let reference = load_ensemble(&f32_args, ds.classes(), &device)?
                .soft_labels(&inputs, rows, s.batch)
                .map_err(with_crop)?;
            dtype_check = Some(compare_labels(&out.probs, &reference.probs, classes));
            check_time += check_t0.elapsed();
        }
        pending
            .add(&batch, &out, classes, s.samples_per_shard, &writer)
            .context("encoding the labels")?;
        crops_seen += rows as u64;
        bar.inc((rows / s.crops_per_image as usize + batch.skipped.len()) as u64);
        bar.set_message(format!(
            "{:.0} crops/s",
            crops_seen as f64 / t0.elapsed().as_secs_f64()
        ));
        for (sh, imgs, notes) in pending.take_complete(&mut expected) {
            // counted when written: an interrupted run's half-filled shard is dropped
            // (recomputed on resume), so the report counts only what the store keeps
            images += imgs.len() as u64;
            crops += imgs.iter().map(|i| i.crops() as u64).sum::<u64>();
            writer
                .write_encoded(sh, imgs, notes)
                .with_context(|| format!("writing shard {sh} to {}", s.out.display()))?;
            bytes_written += writer.shard(sh).map(|i| i.bytes).unwrap_or(0);
            shards_written += 1;
            on_shard(sh);
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            // the shard in progress is recomputed on resume; written shards are kept
            tracing::warn!("interrupted: the store is left partial; rerun to resume");
            break;
        }
        if let Some(e) = failed {
            return Err(at_bad_file(e, s, present + shards_written));
        }
    }
    bar.finish_and_clear();
    let labelling_seconds = loop_t0.elapsed().saturating_sub(check_time).as_secs_f64();
    let complete = writer.pending_shards().is_empty();
    let manifest = if complete {
        writer.finish().context("finishing the store")?
    } else {
        writer.manifest().clone()
    };
    let report = RunReport {
        images_labelled: images,
        crops_labelled: crops,
        shards_written,
        shards_present: present,
        seconds: t0.elapsed().as_secs_f64(),
        labelling_seconds,
        bytes_written,
        dtype: dtype_name(dtype).to_string(),
        dtype_check,
        ..store_report(&manifest, complete)
    };
    Ok((report, manifest))
}

/// A loader's error `e` (under `--on-bad-file fail`, an unreadable image), with what
/// keeps the `kept` shards written: a fixed file of the same name resumes the store
/// ([`StoreWriter::open`] keeps the shards whose images did not change).
fn at_bad_file(e: anyhow::Error, s: &Settings, kept: u32) -> anyhow::Error {
    if s.policy != BadFilePolicy::Fail {
        return e;
    }
    // the file first, then what to do (a worker counts its own part's shards only)
    let kept = match (s.worker, kept) {
        (None, 0) => format!("no shard was written to --out {} yet", s.out.display()),
        (None, 1) => format!("the 1 shard in --out {} is kept", s.out.display()),
        (None, n) => format!("the {n} shards in --out {} are kept", s.out.display()),
        (Some(_), _) => format!("the shards in --out {} are kept", s.out.display()),
    };
    anyhow::anyhow!(
        "{e:#}\n(--on-bad-file fail: {kept}: fix or replace the file, then rerun the same \
         command to go on; or rerun with --on-bad-file skip to leave it out, listed in the \
         report)"
    )
}

/// One worker per device (`--device cuda:0,cuda:1`), as `--worker i/n` runs would be,
/// in threads of this process, each with its own teachers on its device and a share of
/// the CPU threads; when every part is complete they are merged (the same bytes as one
/// run on one device, tested on CPU). Like worker runs, an interrupted or failed part
/// resumes on the next run.
fn run_devices(
    s: &Settings,
    devices: &[String],
    stop: &std::sync::atomic::AtomicBool,
) -> Result<RunReport> {
    let t0 = Instant::now();
    let n = devices.len() as u32;
    let threads = (s.threads / devices.len()).max(1);
    // every device opens before any worker starts: a device that cannot (a CUDA device
    // in a CPU build, a missing driver) fails the run before another spends its time.
    // Kept open (unused, on this thread) until the workers are done: dropping the last
    // handle on a GPU's primary context destroys it, and each worker would make it again.
    let opened = devices
        .iter()
        .map(|d| meal_models::parse_device(d).with_context(|| format!("--device {d}")))
        .collect::<Result<Vec<_>>>()?;
    // the store's shared lock, taken once here before the workers take theirs: it makes
    // the directory (workers racing to make one path would each record, and remove
    // again, only the parts they made) and removes what it made if none writes
    // (a rerun over a finished store on a read-only or full mount reads it without the
    // lock, as a single device's does: the workers and the merge then write nothing)
    let lock = match meal_data::dirlock::DirLock::acquire_shared_named(
        &s.out,
        meal_data::dirlock::LOCK_FILE,
    ) {
        Err(e) if meal_store::complete_without_lock(&e, &s.out, meal_store::MANIFEST) => None,
        r => Some(r.with_context(|| format!("--out {}", s.out.display()))?),
    };
    let cpus: Vec<u32> = (0..n).filter(|&i| opened[i as usize].is_cpu()).collect();
    let results: Vec<Result<(RunReport, Manifest)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut part = s.clone();
                part.worker = Some([i as u32, n]);
                part.device = d.clone();
                part.threads = threads;
                part.cpu_workers = cpus.clone();
                scope.spawn(move || run_part(&part, stop, &mut |_| {}))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a device's worker panicked")))
            })
            .collect()
    });
    // released before the merge, which takes the lock exclusively
    drop(lock);
    let mut parts = Vec::new();
    let mut manifests = Vec::new();
    let mut failed: Option<(anyhow::Error, String)> = None;
    let mut same = Vec::new();
    for (i, (r, d)) in results.into_iter().zip(devices).enumerate() {
        // each worker by its index too (a list may name one device twice), and every
        // failure said, not only the first; the same words once (a resume with another
        // count of devices was refused alike by every worker: n copies)
        let who = format!("worker {i} of {n} (--device {d})");
        match r {
            Ok((report, manifest)) => {
                parts.push(report);
                manifests.push(manifest);
            }
            Err(e) => {
                let text = format!("{e:#}");
                match &failed {
                    None => failed = Some((e.context(who), text)),
                    Some((_, first)) if *first == text => same.push(i.to_string()),
                    Some(_) => tracing::error!("{who}: {text}"),
                }
            }
        }
    }
    if let Some((e, _)) = failed {
        if !same.is_empty() {
            tracing::error!(
                "worker {} of {n} failed the same way as the one below",
                same.join(", ")
            );
        }
        return Err(e);
    }
    let report = if parts.iter().all(|r| r.complete) {
        let ds = meal_cli::open_dataset(&s.data, "--data", s.links)?;
        let m = meal_store::merge(&s.out, &ds)
            .with_context(|| format!("merging the devices' parts in {}", s.out.display()))?;
        store_report(&m.manifest, true)
    } else {
        // unfinished parts: the store so far is their shards together
        let mut m = manifests[0].clone();
        m.shards = manifests.iter().flat_map(|m| m.shards.clone()).collect();
        m.shards.sort_by_key(|sh| sh.index);
        store_report(&m, false)
    };
    let mut report = combine(report, &parts);
    // this process's wall time, set-up and merge included
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// `e` (a refusal of the store in `--out`), with the way on where a teacher runs at
/// the side its weights record while the store was made at another (stores made before
/// teachers ran at their recorded side ran at the preset's): `size=` in its spec.
fn recorded_side_hint(e: anyhow::Error, s: &Settings, sizes: &[u32]) -> anyhow::Error {
    if !format!("{e:#}").contains("input_size") {
        return e;
    }
    let Ok(m) = meal_store::Manifest::read_file(&s.out.join(meal_store::manifest_name(s.worker)))
    else {
        return e;
    };
    let ways: Vec<String> = s
        .teachers
        .iter()
        .zip(sizes)
        .zip(&m.config.teachers)
        .filter(|((t, &now), then)| !t.size_given && now != then.input_size)
        .map(|((t, now), then)| {
            format!(
                "--teacher {}={} runs at {now} px, the side its weights record; the store's \
                 was made at {} px: add ,size={} to its spec to continue it",
                t.arch,
                t.weights.display(),
                then.input_size,
                then.input_size
            )
        })
        .collect();
    match ways.is_empty() {
        true => e,
        false => anyhow::anyhow!("{e:#}; {}", ways.join("; ")),
    }
}
