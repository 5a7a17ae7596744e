//! `meal-data`: the data crate's command line - make the demo dataset, index a dataset,
//! benchmark the input pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use meal_data::synth::{generate, SynthConfig};
use meal_data::{
    epoch_order, BadFilePolicy, CropMode, CropSampler, CropSpec, Dataset, Filter, LinkPolicy,
    Loader, LoaderConfig, Normalize, PoolCrops, RrcParams,
};

#[derive(Parser)]
#[command(
    name = "meal-data",
    version,
    about = "Datasets and the input pipeline of MEAL V2 distillation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the synthetic demo dataset (ImageFolder of JPEGs, train/ and val/).
    Synth(SynthArgs),
    /// Index a dataset (ImageFolder dir or CSV list) and print its summary as JSON.
    Index(IndexArgs),
    /// Throughput of decode + RandomResizedCrop + resize + flip + normalise.
    Bench(BenchArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed; the same seed gives byte-identical files.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u64>, default_value_t = 0)]
    seed: u64,
    /// Training images per class (10 classes).
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u32>, default_value_t = SynthConfig::default().train_per_class)]
    train_per_class: u32,
    /// Validation images per class.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u32>, default_value_t = SynthConfig::default().val_per_class)]
    val_per_class: u32,
    /// Smallest image side (8 to 4096).
    #[arg(long, allow_negative_numbers = true, default_value_t = SynthConfig::default().min_side,
          value_parser = clap::value_parser!(u32).range(8..=4096))]
    min_side: u32,
    /// Largest image side (8 to 4096).
    #[arg(long, allow_negative_numbers = true, default_value_t = SynthConfig::default().max_side,
          value_parser = clap::value_parser!(u32).range(8..=4096))]
    max_side: u32,
    /// JPEG quality (1 to 100).
    #[arg(long, allow_negative_numbers = true, default_value_t = SynthConfig::default().quality,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
}

#[derive(Args)]
struct IndexArgs {
    /// ImageFolder root or `path,label` CSV file.
    data: PathBuf,
    #[command(flatten)]
    links: meal_cli::FollowLinks,
}

#[derive(Args)]
struct BenchArgs {
    /// ImageFolder root or CSV list of the images to load.
    #[arg(long)]
    data: PathBuf,
    /// Output side.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u32>, default_value_t = 224)]
    res: u32,
    /// Decode threads.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<usize>, default_value_t = 1)]
    threads: usize,
    /// Crops per decoded image.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u32>, default_value_t = 1)]
    crops: u32,
    /// Images per batch.
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<usize>, default_value_t = 32)]
    batch: usize,
    /// Resampling filter (bilinear, bicubic).
    #[arg(long, default_value = "bilinear")]
    filter: Filter,
    /// Passes over the data, at least 2 (the first warms the page cache and is not timed;
    /// the best of the others is reported).
    #[arg(long, allow_negative_numbers = true, value_parser = meal_cli::whole::<u32>, default_value_t = 3)]
    passes: u32,
    #[command(flatten)]
    links: meal_cli::FollowLinks,
}

fn main() -> std::process::ExitCode {
    meal_cli::init_logging();
    meal_cli::finish(match Cli::parse().cmd {
        Cmd::Synth(a) => synth(a),
        Cmd::Index(a) => index(a),
        Cmd::Bench(a) => bench(a),
    })
}

fn synth(a: SynthArgs) -> Result<()> {
    if a.min_side > a.max_side {
        bail!(
            "--min-side {} is above --max-side {} (--min-side is {} unless given)",
            a.min_side,
            a.max_side,
            SynthConfig::default().min_side
        );
    }
    if a.train_per_class == 0 && a.val_per_class == 0 {
        bail!("--train-per-class and --val-per-class are both 0: no image to make");
    }
    let cfg = SynthConfig {
        seed: a.seed,
        train_per_class: a.train_per_class,
        val_per_class: a.val_per_class,
        min_side: a.min_side,
        max_side: a.max_side,
        quality: a.quality,
    };
    meal_cli::check_out_dir("--out", &a.out)?;
    let classes = meal_data::synth::class_names().len() as u64;
    let total = (a.train_per_class as u64 + a.val_per_class as u64) * classes;
    let bar = meal_cli::progress_bar(
        total,
        "{msg} {bar:40} {pos}/{len} images, {per_sec}, ETA {eta}",
    );
    bar.set_message("synth");
    let t = Instant::now();
    let s = generate(&a.out, &cfg, || bar.inc(1))
        .with_context(|| format!("writing the demo dataset to {}", a.out.display()))?;
    bar.finish_and_clear();
    if let Some(what) = &s.replaced {
        tracing::warn!(
            "{}: replaced {what}; a label store made from it no longer matches",
            a.out.display()
        );
    }
    meal_cli::outln!(
        "wrote {} train + {} val images of {} classes to {} in {:.1} s",
        s.train_images,
        s.val_images,
        s.classes.len(),
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn index(a: IndexArgs) -> Result<()> {
    let ds = meal_cli::open_dataset(
        &a.data,
        "dataset",
        LinkPolicy::follow_if(a.links.follow_links),
    )?;
    let per_class = ds.class_counts();
    let summary = serde_json::json!({
        // (lossy: JSON text has no room for a path that is not UTF-8)
        "root": ds.root().to_string_lossy(),
        "samples": ds.len(),
        "bytes": ds.samples().iter().map(|s| s.bytes).sum::<u64>(),
        "classes": ds.classes().iter().zip(&per_class)
            .map(|(c, n)| serde_json::json!({"name": c, "samples": n}))
            .collect::<Vec<_>>(),
        "fingerprint": ds.fingerprint(),
    });
    meal_cli::outln!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Seconds for one pass of the loader over `ds` (pass `pass`'s crops, epoch order).
fn time_pass(ds: &Arc<Dataset>, a: &BenchArgs, spec: CropSpec, pass: u64) -> Result<f64> {
    let sampler = CropSampler::new(0, RrcParams::default());
    let plan = PoolCrops::pass(sampler, a.crops, a.crops, pass)?;
    let cfg = LoaderConfig {
        images_per_batch: a.batch,
        spec,
        extra_specs: Vec::new(),
        crops: CropMode::Plan(Arc::new(plan)),
        prefetch: 2,
        threads: a.threads,
        policy: BadFilePolicy::Fail,
        drop_last: false,
        pixels: meal_data::PixelFormat::Normalized,
    };
    let t = Instant::now();
    let loader = Loader::new(Arc::clone(ds), epoch_order(ds.len(), 0, pass, true), cfg)?;
    let mut n = 0usize;
    for b in loader {
        n += b?.len();
    }
    let dt = t.elapsed().as_secs_f64();
    tracing::debug!("pass {pass}: {n} crops in {dt:.3} s");
    Ok(dt)
}

fn bench(a: BenchArgs) -> Result<()> {
    for (flag, v) in [
        ("--threads", a.threads),
        ("--crops", a.crops as usize),
        ("--batch", a.batch),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if a.passes < 2 {
        bail!(
            "--passes {}: must be at least 2 (the first warms the page cache and is not timed)",
            a.passes
        );
    }
    meal_cli::check_threads(a.threads)?;
    let spec = CropSpec::new(a.res, a.filter, Normalize::default()).context("--res")?;
    // one batch of normalised crops (f32) is the least the loader holds
    let batch_bytes = (a.batch as u64)
        .saturating_mul(a.crops as u64)
        .saturating_mul(12 * (spec.size as u64).pow(2));
    meal_cli::memory::check(
        batch_bytes,
        &format!(
            "--batch {} x --crops {} at --res {}: one batch of crops",
            a.batch, a.crops, a.res
        ),
        "lower --crops, --batch or --res",
    )?;
    let ds = Arc::new(meal_cli::open_dataset(
        &a.data,
        "--data",
        LinkPolicy::follow_if(a.links.follow_links),
    )?);
    if ds.is_empty() {
        bail!("--data {}: no images", a.data.display());
    }
    // the first pass warms the page cache and is not counted
    time_pass(&ds, &a, spec, 0)?;
    let mut best = f64::INFINITY;
    for pass in 1..a.passes {
        best = best.min(time_pass(&ds, &a, spec, pass as u64)?);
    }
    let imgs = ds.len() as f64 / best;
    meal_cli::outln!(
        "meal-data bench: {} images, res {}, {} crop(s)/image, {} thread(s): {:.1} img/s ({:.1} img/s/thread), {:.1} crops/s",
        ds.len(),
        a.res,
        a.crops,
        a.threads,
        imgs,
        imgs / a.threads as f64,
        imgs * a.crops as f64
    );
    Ok(())
}
