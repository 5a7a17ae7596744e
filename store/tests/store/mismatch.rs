//! A store is refused for another dataset or config, naming what differs: a file
//! gone, a label changed, the files reordered, a size, the class names, the keys.

use super::*;

#[test]
fn other_datasets_and_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, cfg, dir) = written(tmp.path(), Encoding::Dense, ShardFormat::Safetensors);
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
        .check_dataset(other.fingerprint(), other.classes(), other.samples())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another dataset") && e.contains("manifest.json"),
        "{e}"
    );
    // what differs is named from the store's image table: a file gone, a label
    // changed, the same files in another order, or (same paths and labels) a file's
    // bytes (the fingerprint hashes sizes)
    let other_fp = meal_data::Fingerprint {
        sha256: "0".repeat(64),
        ..ds.fingerprint().clone()
    };
    let said = |samples: &[meal_data::Sample]| {
        st.check_dataset(&other_fp, ds.classes(), samples)
            .unwrap_err()
            .to_string()
    };
    let all = ds.samples().to_vec();
    let e = said(&all[1..]);
    assert!(
        e.contains("1 of the store's images is not in the data") && e.contains(&all[0].path),
        "{e}"
    );
    // the same files listed from a parent folder: said as such, not as all gone
    let deeper: Vec<meal_data::Sample> = all
        .iter()
        .map(|x| meal_data::Sample {
            path: format!("train/{}", x.path),
            ..x.clone()
        })
        .collect();
    let e = said(&deeper);
    assert!(
        e.contains(&format!(
            "the same {} images under other paths: each path now begins with \"train/\"",
            all.len()
        )) && !e.contains("beyond the paths"),
        "{e}"
    );
    // ... with one of them relabelled and another truly absent: said beyond the paths
    let mut relabelled = deeper.clone();
    relabelled[2].label = (relabelled[2].label + 1) % ds.classes().len() as u32;
    let e = said(&relabelled);
    assert!(
        e.contains(&format!("; beyond the paths, {} is of class", all[2].path)),
        "{e}"
    );
    let e = said(&deeper[1..]);
    assert!(
        e.contains(&format!(
            "the same {} images under other paths",
            all.len() - 1
        )) && e.contains("; beyond the paths, 1 of the store's images is not in the data"),
        "{e}"
    );
    let mut relabelled = all.clone();
    relabelled[2].label = (relabelled[2].label + 1) % ds.classes().len() as u32;
    let e = said(&relabelled);
    assert!(
        e.contains(&format!(
            "{} is of class {} in the store",
            all[2].path,
            ds.classes()[all[2].label as usize]
        )),
        "{e}"
    );
    let mut reordered = all.clone();
    reordered.swap(0, 1);
    let e = said(&reordered);
    assert!(e.contains("the same files in another order"), "{e}");
    let e = said(&all);
    assert!(e.contains("a file's size differs"), "{e}");
    // the same files under numbered classes (a list file of indices): the names differ
    let numbered: Vec<String> = (0..ds.classes().len()).map(|i| i.to_string()).collect();
    let e = st
        .check_dataset(&other_fp, &numbered, &all)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the class names differ") && e.contains("class 0: store"),
        "{e}"
    );
    // the same images under other class names: the first differing class is named
    // (the counts and fingerprints read the same on both sides)
    let mut renamed = ds.classes().to_vec();
    renamed[1] = "renamed".into();
    let e = st
        .check_dataset(ds.fingerprint(), &renamed, ds.samples())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other classes") && e.contains("class 1: store") && e.contains("\"renamed\""),
        "{e}"
    );
    // resume with another config: refused, naming the keys
    let mut cfg2 = cfg.clone();
    cfg2.crop_pool.seed = 10;
    cfg2.samples_per_shard = 8;
    let e = StoreWriter::open(&dir, cfg2.clone(), ds.samples(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("crop_pool.seed") && e.contains("samples_per_shard"),
        "{e}"
    );
    // but a store that holds no shard yet (a run that failed on its first batch) has
    // nothing to resume: another config starts it over
    let empty = tmp.path().join("empty");
    drop(StoreWriter::open(&empty, cfg.clone(), ds.samples(), None).unwrap());
    assert!(empty.join(meal_store::MANIFEST).exists());
    let w = StoreWriter::open(&empty, cfg2.clone(), ds.samples(), None).unwrap();
    assert_eq!(w.manifest().config, cfg2);
    // so do the parts of a split (or a device list) that failed before any shard
    let parts = tmp.path().join("parts");
    for i in 0..2 {
        drop(StoreWriter::open(&parts, cfg.clone(), ds.samples(), Some([i, 2])).unwrap());
    }
    let w = StoreWriter::open(&parts, cfg2.clone(), ds.samples(), Some([0, 2])).unwrap();
    assert_eq!(w.manifest().config, cfg2);
    // unless that worker is running (it holds its part's lock): workers started together
    // are compared before either has written a shard
    let e = StoreWriter::open(&parts, cfg.clone(), ds.samples(), Some([1, 2]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("another config") && e.contains("crop_pool.seed"),
        "{e}"
    );
    // a running neighbour's manifest is current (it was started over under cfg2 while
    // it opened): a worker of cfg2 joins it
    drop(StoreWriter::open(&parts, cfg2.clone(), ds.samples(), Some([1, 2])).unwrap());
    drop(w);
    StoreWriter::open(&parts, cfg.clone(), ds.samples(), Some([1, 2])).unwrap();
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
