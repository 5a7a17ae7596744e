//! Peak memory of encoding one Parquet shard, for the precompute memory check's figures
//! (BENCHMARKS.md, "Writing a shard's row groups"):
//! `cargo run --release -p meal-store --example shard_memory -- IMAGES CROPS CLASSES ROW_GROUP K`
//! (K = 0: dense labels). Prints the shard's size and the process's peak resident memory
//! (VmHWM) before and after encoding, so the difference is what encoding took.

use anyhow::{bail, Context, Result};
use meal_data::CropRecord;
use meal_store::shard::{encode_parquet, CropLabel, ImageRows};
use meal_store::{Encoding, SoftLabel};

fn main() -> Result<()> {
    let a = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("not a count: {s}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let [images, crops, classes, row_group, k] = a[..] else {
        bail!("usage: shard_memory IMAGES CROPS CLASSES ROW_GROUP K (K = 0: dense)");
    };
    let enc = match k {
        0 => Encoding::Dense,
        k => Encoding::TopK {
            k: u16::try_from(k)?,
            f32: false,
        },
    };
    let rows: Vec<ImageRows> = (0..images)
        .map(|i| ImageRows {
            sample_id: i as u32,
            width: 64,
            height: 64,
            crops: (0..crops)
                .map(|c| {
                    let mut p: Vec<f32> = (0..classes)
                        .map(|j| ((j * 7 + c + i) % 13) as f32 + 1.0)
                        .collect();
                    let s: f32 = p.iter().sum();
                    p.iter_mut().for_each(|v| *v /= s);
                    CropLabel {
                        crop_id: c as u16,
                        record: CropRecord {
                            top: 0.1,
                            left: 0.2,
                            height: 0.5,
                            width: 0.5,
                            flip: c % 2 == 0,
                        },
                        label: SoftLabel::encode(&p, enc),
                    }
                })
                .collect(),
        })
        .collect();
    let before = peak_kib()?;
    let t = std::time::Instant::now();
    let out = encode_parquet(&rows, enc, classes, row_group)?;
    let took = t.elapsed();
    let after = peak_kib()?;
    println!(
        "{images} images x {crops} crops, {classes} classes, {enc}, {row_group} images a row group: \
         {} bytes; peak {} MiB before encoding, {} MiB after (+{} MiB); {took:.2?}",
        out.len(),
        before / 1024,
        after / 1024,
        (after - before) / 1024
    );
    Ok(())
}

/// The process's peak resident memory, KiB (Linux).
fn peak_kib() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .context("no VmHWM in /proc/self/status")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}
