//! Label-store size and read speed: `cargo bench -p meal-common --bench store`.
//! Writes stores of 1000-class labels (2000 images x 50 crops for top-k, 200 x 50 for
//! dense) and prints bytes per crop, then reads every sample's crops on one thread
//! (page cache warm) and prints records/s (`crops()` decodes to `CropLabel`s).

use std::time::Instant;

use meal_common::store::{
    CropPool, CropProbs, Encoding, ImageProbs, LabelStore, ShardFormat, StoreConfig, StoreWriter,
};
use meal_data::{CropRecord, Fingerprint, Sample};

fn main() -> anyhow::Result<()> {
    let classes = 1000usize;
    let crops = 50u32;
    let tmp = tempfile::tempdir()?;
    for (enc, fmt, images) in [
        (
            Encoding::TopK { k: 5, f32: false },
            ShardFormat::Parquet,
            2000u32,
        ),
        (
            Encoding::TopK { k: 10, f32: false },
            ShardFormat::Parquet,
            2000,
        ),
        (
            Encoding::TopK { k: 5, f32: true },
            ShardFormat::Parquet,
            2000,
        ),
        (Encoding::Dense, ShardFormat::Parquet, 200),
        (Encoding::Dense, ShardFormat::Safetensors, 200),
    ] {
        let samples: Vec<Sample> = (0..images)
            .map(|i| Sample {
                id: i,
                path: format!("c/{i}.jpg"),
                label: i % classes as u32,
                bytes: 1,
            })
            .collect();
        let fp = Fingerprint {
            sha256: "bench".into(),
            samples: images as u64,
            classes: classes as u32,
        };
        let cfg = StoreConfig {
            dataset: fp,
            classes: (0..classes).map(|c| format!("c{c}")).collect(),
            crop_pool: CropPool {
                crops_per_image: crops,
                scale: [0.08, 1.0],
                ratio: [0.75, 4.0 / 3.0],
                seed: 0,
            },
            teachers: Vec::new(),
            ensemble: "mean_softmax".into(),
            encoding: enc,
            format: fmt,
            samples_per_shard: 500,
            images_per_row_group: 16,
        };
        let dir = tmp.path().join(format!("{enc}-{fmt:?}").replace(':', "_"));
        let mut w = StoreWriter::open(&dir, cfg, &samples, None)?;
        let t = Instant::now();
        for s in w.pending_shards() {
            let imgs = w
                .shard_samples(s)
                .map(|id| ImageProbs {
                    sample_id: id,
                    width: 500,
                    height: 375,
                    crops: (0..crops)
                        .map(|k| {
                            // a peaked distribution, as a trained ensemble gives
                            let mut p = vec![0.2 / (classes - 1) as f32; classes];
                            p[((id + k * 7) as usize) % classes] = 0.8;
                            CropProbs {
                                crop_id: k as u16,
                                record: CropRecord {
                                    top: 0.1,
                                    left: 0.2,
                                    height: 0.5,
                                    width: 0.6,
                                    flip: k % 2 == 1,
                                },
                                probs: p,
                            }
                        })
                        .collect(),
                })
                .collect();
            w.write_shard(s, imgs)?;
        }
        let m = w.finish()?;
        let wt = t.elapsed().as_secs_f64();
        let rows: u64 = m.shards.iter().map(|s| s.stats.rows).sum();
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        let st = LabelStore::open(&dir)?;
        let mut n = 0usize;
        let _ = st.crops(0)?; // warm
        let t = Instant::now();
        for id in 0..images {
            n += st.crops(id)?.len();
        }
        let rt = t.elapsed().as_secs_f64();
        // the same reads in a shuffled order (a fresh store, so no cache carries over)
        let st = LabelStore::open(&dir)?;
        let mut order: Vec<u32> = (0..images).collect();
        let mut x = 0x9E37_79B9u64;
        for i in (1..order.len()).rev() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (x >> 33) as usize % (i + 1));
        }
        let t = Instant::now();
        let mut m2 = 0usize;
        for &id in &order {
            m2 += st.crops(id)?.len();
        }
        let rt2 = t.elapsed().as_secs_f64();
        println!(
            "{enc:>10} {fmt:?}: {:.1} B/crop ({rows} crops, {bytes} B), write {:.0} crops/s, read {:.0} records/s in sample order, {:.0} shuffled (1 thread)",
            bytes as f64 / rows as f64,
            rows as f64 / wt,
            n as f64 / rt,
            m2 as f64 / rt2
        );
    }
    Ok(())
}
