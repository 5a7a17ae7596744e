//! `meal-data`: the data crate's command line - make the demo dataset, index a dataset,
//! benchmark the input pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
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
    Synth {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed; the same seed gives byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training images per class (10 classes).
        #[arg(long, default_value_t = SynthConfig::default().train_per_class)]
        train_per_class: u32,
        /// Validation images per class.
        #[arg(long, default_value_t = SynthConfig::default().val_per_class)]
        val_per_class: u32,
        /// Smallest image side.
        #[arg(long, default_value_t = SynthConfig::default().min_side)]
        min_side: u32,
        /// Largest image side.
        #[arg(long, default_value_t = SynthConfig::default().max_side)]
        max_side: u32,
        /// JPEG quality.
        #[arg(long, default_value_t = SynthConfig::default().quality)]
        quality: u8,
    },
    /// Index a dataset (ImageFolder dir or CSV list) and print its summary as JSON.
    Index {
        /// ImageFolder root or `path,label` CSV file.
        data: PathBuf,
        /// Follow symlinks that leave the dataset root.
        #[arg(long)]
        follow_links: bool,
    },
    /// Throughput of decode + RandomResizedCrop + resize + flip + normalise.
    Bench {
        /// ImageFolder root or CSV list of the images to load.
        #[arg(long)]
        data: PathBuf,
        /// Output side.
        #[arg(long, default_value_t = 224)]
        res: u32,
        /// Decode threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Crops per decoded image.
        #[arg(long, default_value_t = 1)]
        crops: u32,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Resampling filter (bilinear, bicubic).
        #[arg(long, default_value = "bilinear")]
        filter: Filter,
        /// Passes over the data (the first warms the page cache and is not timed).
        #[arg(long, default_value_t = 3)]
        passes: u32,
    },
}

fn main() -> Result<()> {
    meal_cli::init_logging();
    match Cli::parse().cmd {
        Cmd::Synth {
            out,
            seed,
            train_per_class,
            val_per_class,
            min_side,
            max_side,
            quality,
        } => {
            let cfg = SynthConfig {
                seed,
                train_per_class,
                val_per_class,
                min_side,
                max_side,
                quality,
            };
            let total = (train_per_class as u64 + val_per_class as u64) * 10;
            let bar = meal_cli::progress_bar(
                total,
                "{msg} {bar:40} {pos}/{len} images, {per_sec}, ETA {eta}",
            );
            bar.set_message("synth");
            let t = Instant::now();
            let s = generate(&out, &cfg, || bar.inc(1))
                .with_context(|| format!("writing the demo dataset to {}", out.display()))?;
            bar.finish_and_clear();
            println!(
                "wrote {} train + {} val images of {} classes to {} in {:.1} s",
                s.train_images,
                s.val_images,
                s.classes.len(),
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Index { data, follow_links } => {
            let links = LinkPolicy::follow_if(follow_links);
            let ds = Dataset::open(&data, links)?;
            let mut per_class = vec![0u64; ds.classes().len()];
            for s in ds.samples() {
                per_class[s.label as usize] += 1;
            }
            let summary = serde_json::json!({
                "root": ds.root(),
                "samples": ds.len(),
                "bytes": ds.samples().iter().map(|s| s.bytes).sum::<u64>(),
                "classes": ds.classes().iter().zip(&per_class)
                    .map(|(c, n)| serde_json::json!({"name": c, "samples": n}))
                    .collect::<Vec<_>>(),
                "fingerprint": ds.fingerprint(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Bench {
            data,
            res,
            threads,
            crops,
            batch,
            filter,
            passes,
        } => {
            let ds = Arc::new(Dataset::open(&data, LinkPolicy::StayInside)?);
            let spec = CropSpec::new(res, filter, Normalize::default())?;
            let sampler = CropSampler::new(0, RrcParams::default());
            let mut best = f64::INFINITY;
            for pass in 0..passes.max(2) {
                let plan = PoolCrops::pass(sampler, crops, crops, pass as u64)?;
                let cfg = LoaderConfig {
                    images_per_batch: batch,
                    spec,
                    extra_specs: Vec::new(),
                    crops: CropMode::Plan(Arc::new(plan)),
                    prefetch: 2,
                    threads,
                    policy: BadFilePolicy::Fail,
                    drop_last: false,
                };
                let t = Instant::now();
                let loader = Loader::new(
                    Arc::clone(&ds),
                    epoch_order(ds.len(), 0, pass as u64, true),
                    cfg,
                )?;
                let mut n = 0usize;
                for b in loader {
                    n += b?.len();
                }
                let dt = t.elapsed().as_secs_f64();
                if pass > 0 {
                    best = best.min(dt);
                }
                tracing::debug!("pass {pass}: {n} crops in {dt:.3} s");
            }
            let imgs = ds.len() as f64 / best;
            println!(
                "meal-data bench: {} images, res {res}, {crops} crop(s)/image, {threads} thread(s): {:.1} img/s ({:.1} img/s/thread), {:.1} crops/s",
                ds.len(),
                imgs,
                imgs / threads as f64,
                imgs * crops as f64
            );
        }
    }
    Ok(())
}
