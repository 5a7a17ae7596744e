//! The soft-label store: round trips of both formats and encodings, crash injection at
//! every writer step then resume, corruption detection, dataset/config refusal, workers
//! and merge, and third-party readers (pyarrow, DuckDB, Polars).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use meal_data::{CropSampler, Dataset, LinkPolicy, RrcParams};
use meal_store::{
    merge, CropPool, CropProbs, Encoding, ImageProbs, LabelStore, ShardFormat, SoftLabel,
    StoreConfig, StoreError, StoreWriter,
};

const POOL: u32 = 4;

fn dataset(dir: &Path) -> Arc<Dataset> {
    let cfg = meal_data::synth::SynthConfig {
        seed: 1,
        train_per_class: 3,
        val_per_class: 0,
        min_side: 16,
        max_side: 24,
        quality: 80,
    };
    meal_data::synth::generate(dir, &cfg, || {}).unwrap();
    Arc::new(Dataset::open(&dir.join("train"), LinkPolicy::StayInside).unwrap())
}

fn config(ds: &Dataset, encoding: Encoding, format: ShardFormat) -> StoreConfig {
    StoreConfig {
        dataset: ds.fingerprint().clone(),
        classes: ds.classes().to_vec(),
        crop_pool: CropPool {
            crops_per_image: POOL,
            scale: [0.08, 1.0],
            ratio: [0.75, 4.0 / 3.0],
            seed: 9,
        },
        teachers: Vec::new(),
        ensemble: "mean_softmax".into(),
        encoding,
        format,
        samples_per_shard: 7,
        images_per_row_group: 3,
    }
}

/// Deterministic "ensemble" probabilities of a crop.
fn probs(sample: u32, crop: u32, classes: usize) -> Vec<f32> {
    let logits: Vec<f32> = (0..classes)
        .map(|c| (((sample * 31 + crop * 17 + c as u32 * 7) % 23) as f32) * 0.3)
        .collect();
    let m = logits.iter().cloned().fold(f32::MIN, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn shard_images(w: &StoreWriter, ds: &Dataset, s: u32, skip: Option<u32>) -> Vec<ImageProbs> {
    let sampler = CropSampler::new(9, RrcParams::default());
    w.shard_samples(s)
        .filter(|id| Some(*id) != skip)
        .map(|id| ImageProbs {
            sample_id: id,
            width: 100 + id,
            height: 80 + id,
            crops: (0..POOL)
                .map(|k| CropProbs {
                    crop_id: k as u16,
                    record: sampler.crop(id, k, 100 + id, 80 + id),
                    probs: probs(id, k, ds.classes().len()),
                })
                .collect(),
        })
        .collect()
}

fn write_all(
    dir: &Path,
    ds: &Dataset,
    cfg: &StoreConfig,
    worker: Option<[u32; 2]>,
) -> Result<(), StoreError> {
    let mut w = StoreWriter::open(dir, cfg.clone(), ds.samples(), worker)?;
    for s in w.pending_shards() {
        let imgs = shard_images(&w, ds, s, Some(5));
        w.write_shard(s, imgs)?;
    }
    w.finish()?;
    Ok(())
}

/// Run a Python script; its output is the failure message.
fn run_python(script: &str) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// File name -> (size, a cheap content hash), to compare stores without printing bytes.
fn files(dir: &Path) -> BTreeMap<String, (usize, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let b = std::fs::read(e.path()).unwrap();
            let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
            });
            (e.file_name().to_string_lossy().to_string(), (b.len(), h))
        })
        .collect()
}

#[test]
fn round_trip_of_both_formats_and_encodings() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let classes = ds.classes().len();
    let combos = [
        (Encoding::Dense, ShardFormat::Parquet),
        (Encoding::TopK { k: 5, f32: false }, ShardFormat::Parquet),
        (Encoding::TopK { k: 3, f32: true }, ShardFormat::Parquet),
        (Encoding::Dense, ShardFormat::Safetensors),
    ];
    let sampler = CropSampler::new(9, RrcParams::default());
    for (enc, fmt) in combos {
        let dir = tmp
            .path()
            .join(format!("store-{enc}-{fmt:?}").replace(':', "_"));
        write_all(&dir, &ds, &config(&ds, enc, fmt), None).unwrap();
        let st = LabelStore::open(&dir).unwrap();
        st.check_dataset(ds.fingerprint(), ds.classes()).unwrap();
        assert!(
            st.is_mapped(),
            "{enc} {fmt:?}: our shards are read from the map"
        );
        // the mapped rows equal arrow's decoding of the same files
        let decoded = LabelStore::open_with(&dir, false).unwrap();
        let mut dense = vec![0f32; classes];
        for id in 0..ds.len() as u32 {
            let (a, b) = (st.view(id).unwrap(), decoded.view(id).unwrap());
            assert_eq!(a.to_vec(), b.to_vec(), "{enc} {fmt:?} sample {id}");
            assert!(a.is_empty() || a.is_mapped());
            for i in 0..a.len() {
                assert_eq!(a.position(a.crop_id(i)), Some(i));
                a.dense_into(i, &mut dense);
                assert_eq!(dense, a.label(i).to_dense(classes));
            }
        }
        assert_eq!(st.view(0).unwrap().position(POOL as u16), None);
        let rep = st.verify().unwrap();
        assert_eq!(
            rep.rows,
            (ds.len() as u64 - 1) * POOL as u64,
            "{enc} {fmt:?}"
        );
        let m = st.manifest();
        assert_eq!(m.summary.as_ref().unwrap().rows, rep.rows);
        assert_eq!(m.summary.as_ref().unwrap().images, ds.len() as u64 - 1);
        assert!(
            st.crops(5).unwrap().is_empty(),
            "the skipped image has no rows"
        );
        for id in (0..ds.len() as u32).filter(|&i| i != 5) {
            let crops = st.crops(id).unwrap();
            assert_eq!(crops.len(), POOL as usize);
            for (k, c) in crops.iter().enumerate() {
                assert_eq!(c.crop_id as usize, k);
                assert_eq!(c.record, sampler.crop(id, k as u32, 100 + id, 80 + id));
                let p = probs(id, k as u32, classes);
                let f16 = |v: f32| half::f16::from_f32(v).to_f32();
                match (&c.label, enc) {
                    (SoftLabel::Dense(d), Encoding::Dense) => {
                        assert_eq!(d, &p.iter().map(|&v| f16(v)).collect::<Vec<_>>());
                    }
                    (
                        SoftLabel::TopK {
                            classes: cs,
                            probs: ps,
                        },
                        Encoding::TopK { k, f32 },
                    ) => {
                        let want = SoftLabel::encode(&p, enc);
                        let SoftLabel::TopK {
                            classes: wc,
                            probs: wp,
                        } = want
                        else {
                            unreachable!()
                        };
                        assert_eq!(cs, &wc);
                        assert_eq!(cs.len(), k as usize);
                        let wp: Vec<f32> = if f32 {
                            wp
                        } else {
                            wp.iter().map(|&v| f16(v)).collect()
                        };
                        assert_eq!(ps, &wp);
                        // decoding is FKD's marginal smoothing
                        let dense = st.dense(&c.label);
                        let rest = (1.0 - ps.iter().sum::<f32>()) / (classes - k as usize) as f32;
                        for (i, v) in dense.iter().enumerate() {
                            match cs.iter().position(|&x| x as usize == i) {
                                Some(j) => assert_eq!(*v, ps[j]),
                                None => assert_eq!(*v, rest),
                            }
                        }
                    }
                    other => panic!("unexpected label {other:?}"),
                }
            }
        }
    }
}

/// Rewrite `shard` with `props` (as another Parquet writer might) and record its new
/// size and checksum in the manifest.
fn rewrite_shard(dir: &Path, shard: &str, props: parquet::file::properties::WriterProperties) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = dir.join(shard);
    let f = std::fs::File::open(&path).unwrap();
    let r = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let kv = r.metadata().file_metadata().key_value_metadata().cloned();
    let schema = r.schema().clone();
    let props = props.into_builder().set_key_value_metadata(kv).build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    for b in r.build().unwrap() {
        w.write(&b.unwrap()).unwrap();
    }
    w.close().unwrap();
    std::fs::write(&path, &out).unwrap();
    record_shard(dir, shard);
}

/// Record `shard`'s size and checksum, as on disk, in the manifest.
fn record_shard(dir: &Path, shard: &str) {
    use sha2::Digest;
    let out = std::fs::read(dir.join(shard)).unwrap();
    let mpath = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for s in m["shards"].as_array_mut().unwrap() {
        if s["file"] == shard {
            s["bytes"] = out.len().into();
            s["sha256"] = hex::encode(sha2::Sha256::digest(&out)).into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn shards_from_other_parquet_writers_are_decoded_through_arrow() {
    use parquet::file::properties::WriterProperties;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    for enc in [Encoding::TopK { k: 3, f32: false }, Encoding::Dense] {
        let dir = tmp.path().join(format!("s-{enc}").replace(':', "_"));
        write_all(&dir, &ds, &config(&ds, enc, ShardFormat::Parquet), None).unwrap();
        let want: Vec<_> = {
            let st = LabelStore::open(&dir).unwrap();
            (0..ds.len() as u32).map(|i| st.crops(i).unwrap()).collect()
        };
        // shard 0: dictionary-encoded everywhere (not addressable in the map)
        rewrite_shard(
            &dir,
            "shard-000000.parquet",
            WriterProperties::builder().build(),
        );
        // shard 1: PLAIN but pages of a few values, so samples straddle pages
        rewrite_shard(
            &dir,
            "shard-000001.parquet",
            WriterProperties::builder()
                .set_dictionary_enabled(false)
                // pages of 6 rows: samples are 4 rows, so some straddle two pages
                .set_write_batch_size(6)
                .set_data_page_row_count_limit(6)
                .build(),
        );
        let st = LabelStore::open(&dir).unwrap();
        assert!(!st.is_mapped(), "{enc}: shard 0 is not addressable");
        let (mut mapped, mut decoded) = (0, 0);
        for id in 0..ds.len() as u32 {
            let v = st.view(id).unwrap();
            assert_eq!(v.to_vec(), want[id as usize], "{enc} sample {id}");
            if !v.is_empty() {
                if v.is_mapped() {
                    mapped += 1
                } else {
                    decoded += 1
                }
            }
        }
        // shard 0's 6 samples (5 was skipped) are decoded; of shard 1's 7, those whose
        // rows straddle a page are decoded and the others mapped; shards 2.. stay mapped
        assert!(decoded > 6 && decoded < 6 + 7, "{enc}: {decoded} decoded");
        assert!(mapped > 16, "{enc}: {mapped} mapped");
        let rep = st.verify().unwrap();
        assert!(rep.max_sum_error < 1e-2 && rep.rows > 0, "{enc}");
    }
}

#[test]
fn crash_at_every_step_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(
        &ds,
        Encoding::TopK { k: 5, f32: false },
        ShardFormat::Parquet,
    );
    let reference = tmp.path().join("ref");
    // count the steps of an uninterrupted run
    let steps = Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let mut w = StoreWriter::open(&reference, cfg.clone(), ds.samples(), None).unwrap();
        let s2 = steps.clone();
        w.set_hook(move |_| {
            s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        for s in w.pending_shards() {
            let imgs = shard_images(&w, &ds, s, Some(5));
            w.write_shard(s, imgs).unwrap();
        }
        w.finish().unwrap();
    }
    let total = steps.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        total >= 4 * 2 * 5,
        "5 shards x (shard + manifest) x 4 steps, got {total}"
    );
    let want = files(&reference);
    for crash_at in 0..total {
        let dir = tmp.path().join(format!("crash-{crash_at}"));
        let mut w = StoreWriter::open(&dir, cfg.clone(), ds.samples(), None).unwrap();
        w.set_hook(move |step| {
            if step == crash_at {
                Err(StoreError::Injected(step))
            } else {
                Ok(())
            }
        });
        let mut crashed = false;
        for s in w.pending_shards() {
            let imgs = shard_images(&w, &ds, s, Some(5));
            if w.write_shard(s, imgs).is_err() {
                crashed = true;
                break;
            }
        }
        if !crashed {
            assert!(w.finish().is_err(), "step {crash_at} must fail somewhere");
        } else {
            // the crashed process ends: its directory lock goes with it
            drop(w);
        }
        // a crashed store reads as complete only when the crash came after the final
        // manifest's rename (the commit point), and then it is already the full store
        if LabelStore::open(&dir).is_ok() {
            assert_eq!(
                crash_at,
                total - 1,
                "crash at {crash_at}: store opened as complete"
            );
            assert_eq!(files(&dir), want, "crash at {crash_at}");
        }
        write_all(&dir, &ds, &cfg, None).unwrap();
        assert_eq!(
            files(&dir),
            want,
            "crash at step {crash_at} then resume differs from one run"
        );
    }
}

#[test]
fn corruption_is_detected_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let dir = tmp.path().join("s");
    write_all(&dir, &ds, &cfg, None).unwrap();
    let shard = dir.join("shard-000001.parquet");
    let good = std::fs::read(&shard).unwrap();
    // truncated
    std::fs::write(&shard, &good[..good.len() - 100]).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("shard-000001.parquet") && e.contains("truncated"),
        "{e}"
    );
    // a flipped byte in the data: same size, caught by the checksum
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 0x40;
    std::fs::write(&shard, &bad).unwrap();
    let e = match LabelStore::open(&dir) {
        Ok(st) => st.verify().err().unwrap().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("shard-000001.parquet"), "{e}");
    std::fs::write(&shard, &good).unwrap();
    LabelStore::open(&dir).unwrap().verify().unwrap();
    // missing shard
    std::fs::remove_file(&shard).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("shard-000001.parquet"), "{e}");
    std::fs::write(&shard, &good).unwrap();
    // unknown version
    let mpath = dir.join("manifest.json");
    let m = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(
        &mpath,
        m.replace("\"format_version\": 1", "\"format_version\": 2"),
    )
    .unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("format version 2"),
        "{e}"
    );
    std::fs::write(&mpath, "{ not json").unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn other_datasets_and_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Safetensors);
    let dir = tmp.path().join("s");
    write_all(&dir, &ds, &cfg, None).unwrap();
    let st = LabelStore::open(&dir).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_cfg = meal_data::synth::SynthConfig {
        seed: 2,
        train_per_class: 3,
        val_per_class: 0,
        min_side: 16,
        max_side: 24,
        quality: 80,
    };
    meal_data::synth::generate(other_dir.path(), &other_cfg, || {}).unwrap();
    let other = Dataset::open(&other_dir.path().join("train"), LinkPolicy::StayInside).unwrap();
    let e = st
        .check_dataset(other.fingerprint(), other.classes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another dataset") && e.contains("manifest.json"),
        "{e}"
    );
    // resume with another config: refused, naming the keys
    let mut cfg2 = cfg.clone();
    cfg2.crop_pool.seed = 10;
    cfg2.samples_per_shard = 8;
    let e = StoreWriter::open(&dir, cfg2, ds.samples(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("crop_pool.seed") && e.contains("samples_per_shard"),
        "{e}"
    );
    // safetensors holds dense only
    let cfg3 = config(
        &ds,
        Encoding::TopK { k: 2, f32: false },
        ShardFormat::Safetensors,
    );
    let e = StoreWriter::open(&tmp.path().join("x"), cfg3, ds.samples(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("format"), "{e}");
}

#[test]
fn workers_and_merge_equal_a_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(
        &ds,
        Encoding::TopK { k: 4, f32: false },
        ShardFormat::Parquet,
    );
    let single = tmp.path().join("single");
    write_all(&single, &ds, &cfg, None).unwrap();
    let split = tmp.path().join("split");
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    assert!(
        LabelStore::open(&split).is_err(),
        "no manifest.json before the merge"
    );
    write_all(&split, &ds, &cfg, Some([1, 2])).unwrap();
    merge(&split, &ds).unwrap();
    let (a, b) = (files(&single), files(&split));
    for (name, bytes) in &a {
        assert_eq!(b.get(name), Some(bytes), "{name}");
    }
    let st = LabelStore::open(&split).unwrap();
    assert_eq!(
        st.verify().unwrap().rows,
        (ds.len() as u64 - 1) * POOL as u64
    );
    // a worker part with another config is refused by the merge
    let bad = tmp.path().join("bad");
    write_all(&bad, &ds, &cfg, Some([0, 2])).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.ensemble = "mean_logits".into();
    write_all(&bad, &ds, &cfg2, Some([1, 2])).unwrap();
    let e = merge(&bad, &ds).unwrap_err().to_string();
    assert!(e.contains("ensemble") && e.contains("worker-1-of-2"), "{e}");
}

/// Merge refuses another dataset (a renamed image changes the fingerprint), a missing
/// worker (named), and a worker shard that no longer matches its manifest.
#[test]
fn merge_checks_the_dataset_the_workers_and_their_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let split = tmp.path().join("split");
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    // worker 1 has not run: say so
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(e.contains("worker 1 of 2 is missing"), "{e}");
    write_all(&split, &ds, &cfg, Some([1, 2])).unwrap();

    // the same images with one renamed: another fingerprint, refused
    let train = tmp.path().join("train");
    let (from, to) = (train.join(&ds.samples()[0].path), train.join("zz.jpg"));
    std::fs::rename(&from, &to).unwrap();
    let ds2 = Dataset::open(&train, LinkPolicy::StayInside).unwrap();
    std::fs::rename(&to, &from).unwrap();
    let e = merge(&split, &ds2).unwrap_err().to_string();
    assert!(e.contains("another dataset"), "{e}");
    assert!(!split.join("manifest.json").exists());

    // a worker's shard replaced after its manifest was written
    let shard = std::fs::read_dir(&split)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "parquet") && p != &split.join("images.parquet")
        })
        .unwrap();
    let mut b = std::fs::read(&shard).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&shard, &b).unwrap();
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains(&*shard.file_name().unwrap().to_string_lossy())
            && e.contains("checksum differs"),
        "{e}"
    );
    b[mid] ^= 1;
    std::fs::write(&shard, &b).unwrap();
    merge(&split, &ds).unwrap();
    LabelStore::open(&split).unwrap().verify().unwrap();
}

#[test]
fn arrow_tools_read_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let dense = tmp.path().join("dense");
    write_all(
        &dense,
        &ds,
        &config(&ds, Encoding::Dense, ShardFormat::Parquet),
        None,
    )
    .unwrap();
    let topk = tmp.path().join("topk");
    write_all(
        &topk,
        &ds,
        &config(
            &ds,
            Encoding::TopK { k: 5, f32: false },
            ShardFormat::Parquet,
        ),
        None,
    )
    .unwrap();
    let script = format!(
        r#"
import sys
try:
    import pyarrow.parquet as pq, duckdb, polars as pl
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow duckdb polars (make test installs them)")
dense, topk, rows = {dense:?}, {topk:?}, {rows}
import glob
t = pq.read_table(sorted(glob.glob(dense + "/shard-*.parquet")))
assert t.num_rows == rows, t.num_rows
want = ["sample_id", "crop_id", "top", "left", "height", "width", "flip", "prob"]
assert t.column_names == want, t.column_names
assert str(t.schema.field("prob").type) == "fixed_size_list<item: halffloat not null>[10]", t.schema.field("prob").type
assert str(t.schema.field("sample_id").type) == "uint32" and str(t.schema.field("crop_id").type) == "uint16"
s = duckdb.sql(f"select min(list_sum(prob::float[])), max(list_sum(prob::float[])), count(*) from '{{dense}}/shard-*.parquet'").fetchall()[0]
assert abs(s[0] - 1) < 1e-2 and abs(s[1] - 1) < 1e-2 and s[2] == rows, s
imgs = duckdb.sql(f"select count(*), min(width) from '{{dense}}/images.parquet'").fetchall()[0]
assert imgs[0] == rows // 4 and imgs[1] >= 100, imgs
df = pl.read_parquet(f"{{topk}}/shard-*.parquet")
assert df.height == rows and df.columns[-2:] == ["topk_class", "topk_prob"], df.columns
sums = df.select(pl.col("topk_prob").arr.sum()).to_series()
assert sums.max() <= 1.0 + 1e-2, sums.max()
print("ok", rows)
"#,
        rows = (ds.len() - 1) * POOL as usize
    );
    run_python(&script);
}

#[test]
fn shards_rewritten_by_pyarrow_are_read_and_compressed_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let dir = tmp.path().join("topk");
    let cfg = config(
        &ds,
        Encoding::TopK { k: 5, f32: false },
        ShardFormat::Parquet,
    );
    write_all(&dir, &ds, &cfg, None).unwrap();
    let want: Vec<_> = {
        let st = LabelStore::open(&dir).unwrap();
        (0..ds.len() as u32).map(|i| st.crops(i).unwrap()).collect()
    };
    // pyarrow's defaults (dictionary pages, its own page sizes), and a snappy copy
    let script = format!(
        r#"
import sys
try:
    import pyarrow.parquet as pq
except ImportError as e:
    sys.exit(f"missing {{e.name}}: pip install pyarrow (make test installs it)")
d = {dir:?}
def load(name):
    # a shard's file-level key-value metadata (meal.images) travels with the table
    kv = pq.read_metadata(d + name).metadata
    t = pq.read_table(d + name)
    return t.replace_schema_metadata({{k: v for k, v in kv.items() if k != b"ARROW:schema"}})
pq.write_table(load("/shard-000002.parquet"), d + "/shard-000002.parquet", compression="none")
pq.write_table(load("/shard-000003.parquet"), d + "/shard-000003.snappy", compression="snappy")
"#
    );
    run_python(&script);
    record_shard(&dir, "shard-000002.parquet");
    let st = LabelStore::open(&dir).unwrap();
    for id in 0..ds.len() as u32 {
        assert_eq!(st.crops(id).unwrap(), want[id as usize], "sample {id}");
    }
    assert!(st.view(14).unwrap().len() == POOL as usize);
    st.verify().unwrap();
    drop(st);
    std::fs::rename(
        dir.join("shard-000003.snappy"),
        dir.join("shard-000003.parquet"),
    )
    .unwrap();
    record_shard(&dir, "shard-000003.parquet");
    let e = LabelStore::open(&dir)
        .err()
        .expect("snappy is refused")
        .to_string();
    assert!(e.contains("shard-000003.parquet"), "{e}");
}
