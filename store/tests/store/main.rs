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

mod images;
mod integrity;
mod interop;
mod mismatch;
mod workers;

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

/// A complete store of `ds` at `tmp/s` with `encoding` and `format`: the dataset, its
/// config and the store's directory.
fn written(
    tmp: &Path,
    encoding: Encoding,
    format: ShardFormat,
) -> (Arc<Dataset>, StoreConfig, std::path::PathBuf) {
    let ds = dataset(tmp);
    let cfg = config(&ds, encoding, format);
    let dir = tmp.join("s");
    write_all(&dir, &ds, &cfg, None).unwrap();
    (ds, cfg, dir)
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
        st.check_dataset(ds.fingerprint(), ds.classes(), ds.samples())
            .unwrap();
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
