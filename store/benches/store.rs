//! Label-store size and read speed: `cargo bench -p meal-store --bench store`.
//! Writes stores of 1000-class labels (2000 images x 50 crops for top-k, 200 x 50 for
//! dense) and prints bytes per crop, then reads every sample's crops on one thread
//! (page cache warm) and prints records/s: through `view()` (fields decoded from the
//! map on access), `crops()` (owned `CropLabel`s), and `crops()` with the shards decoded
//! by arrow's reader; then the student's per-batch label lookup time.

use std::time::Instant;

use meal_data::{CropRecord, Fingerprint, Sample};
use meal_store::{
    CropPool, CropProbs, Encoding, ImageProbs, LabelStore, ShardFormat, StoreConfig, StoreWriter,
};

const PASSES: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
            sha256: "0".repeat(64),
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
        let mut order: Vec<u32> = (0..images).collect();
        let mut x = 0x9E37_79B9u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for i in (1..order.len()).rev() {
            order.swap(i, next() % (i + 1));
        }
        let seq: Vec<u32> = (0..images).collect();
        println!(
            "{enc:>10} {fmt:?}: {:.1} B/crop ({rows} crops, {bytes} B), write {:.0} crops/s",
            bytes as f64 / rows as f64,
            rows as f64 / wt,
        );
        // every field of every record: crop id, box, flip, and the stored label's
        // (class, p) pairs (all C for dense), summed so nothing is optimised away
        // each read is timed over PASSES passes and the median pass reported (one pass
        // over 100k records takes milliseconds: this machine's noise is larger)
        let read_view_once = |st: &LabelStore, ids: &[u32]| -> anyhow::Result<(f64, f64)> {
            let t = Instant::now();
            let (mut n, mut acc) = (0usize, 0f64);
            for &id in ids {
                let v = st.view(id)?;
                for i in 0..v.len() {
                    let r = v.record(i);
                    acc += (r.top + r.left + r.height + r.width) as f64
                        + v.crop_id(i) as f64
                        + r.flip as u8 as f64;
                    let mut s = 0f32;
                    v.for_each_prob(i, |c, p| s += p + c as f32);
                    acc += s as f64;
                }
                n += v.len();
            }
            Ok((n as f64 / t.elapsed().as_secs_f64(), acc))
        };
        let read_view = |st: &LabelStore, ids: &[u32]| -> anyhow::Result<(f64, f64)> {
            let mut rates = Vec::new();
            let mut acc = 0f64;
            for _ in 0..PASSES {
                let (r, a) = read_view_once(st, ids)?;
                rates.push(r);
                acc = a;
            }
            Ok((median(rates), acc))
        };
        let read_owned = |st: &LabelStore, ids: &[u32]| -> anyhow::Result<f64> {
            let mut rates = Vec::new();
            for _ in 0..PASSES {
                let t = Instant::now();
                let mut n = 0usize;
                for &id in ids {
                    n += st.crops(id)?.len();
                }
                rates.push(n as f64 / t.elapsed().as_secs_f64());
            }
            Ok(median(rates))
        };
        // fresh stores per measurement, so no decode cache carries over
        let mapped = LabelStore::open(&dir)?;
        let (v_seq, a) = read_view(&mapped, &seq)?;
        let (v_shuf, b) = read_view(&LabelStore::open(&dir)?, &order)?;
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "same records either order"
        );
        let o_seq = read_owned(&LabelStore::open(&dir)?, &seq)?;
        let o_shuf = read_owned(&LabelStore::open(&dir)?, &order)?;
        let d_seq = read_owned(&LabelStore::open_with(&dir, false)?, &seq)?;
        let d_shuf = read_owned(&LabelStore::open_with(&dir, false)?, &order)?;
        println!(
            "{:>12} records/s, 1 thread, sample order / shuffled: view {:.2}M / {:.2}M (mapped: {}); crops() owned {:.2}M / {:.2}M; arrow-decoded crops() {:.2}M / {:.2}M",
            "",
            v_seq / 1e6,
            v_shuf / 1e6,
            mapped.is_mapped(),
            o_seq / 1e6,
            o_shuf / 1e6,
            d_seq / 1e6,
            d_shuf / 1e6
        );
        // the student's lookup: a batch of 16 rows from random images, one stored crop
        // each, decoded to dense f32 targets
        let mut target = vec![0f32; 16 * classes];
        let batches = 20_000usize;
        let t = Instant::now();
        for _ in 0..batches {
            for out in target.chunks_exact_mut(classes) {
                let id = order[next() % order.len()];
                let v = mapped.view(id)?;
                let i = v
                    .position((next() % crops as usize) as u16)
                    .expect("every crop stored");
                v.dense_into(i, out);
            }
        }
        println!(
            "{:>12} student lookup: {:.1} us per batch of 16 rows ({classes}-class dense targets)",
            "",
            t.elapsed().as_secs_f64() * 1e6 / batches as f64,
        );
    }
    Ok(())
}
