//! Workers sharing a store directory, and their merge.

use super::*;

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
    assert!(merge(&split, &ds).unwrap().written);
    let (a, b) = (files(&single), files(&split));
    for (name, bytes) in &a {
        assert_eq!(b.get(name), Some(bytes), "{name}");
    }
    let st = LabelStore::open(&split).unwrap();
    assert_eq!(
        st.verify().unwrap().rows,
        (ds.len() as u64 - 1) * POOL as u64
    );
    // merging again writes nothing (on a read-only mount it could not), unless what it
    // would write differs: a table whose bytes were changed is written anew
    use std::os::unix::fs::MetadataExt;
    let inode = |n: &str| std::fs::metadata(split.join(n)).unwrap().ino();
    let before = (inode("manifest.json"), inode("images.parquet"));
    assert!(!merge(&split, &ds).unwrap().written, "said to be written");
    assert_eq!(
        (inode("manifest.json"), inode("images.parquet")),
        before,
        "a second merge rewrote the store"
    );
    std::fs::write(split.join("images.parquet"), b"damaged").unwrap();
    assert!(merge(&split, &ds).unwrap().written, "a damaged table kept");
    assert_eq!(files(&split), b, "the merge restores the table");
    // a worker part with another config: refused when it starts, naming the part it
    // disagrees with, and by the merge when its files were put there by hand
    let bad = tmp.path().join("bad");
    write_all(&bad, &ds, &cfg, Some([0, 2])).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.crop_pool.seed += 1;
    let e = write_all(&bad, &ds, &cfg2, Some([1, 2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("crop_pool.seed") && e.contains("worker-0-of-2"),
        "{e}"
    );
    let elsewhere = tmp.path().join("elsewhere");
    write_all(&elsewhere, &ds, &cfg2, Some([1, 2])).unwrap();
    for f in std::fs::read_dir(&elsewhere).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().to_string();
        if name.contains("worker-1-of-2.json") || name.starts_with("shard-") {
            std::fs::copy(f.path(), bad.join(&name)).unwrap();
        }
    }
    let e = merge(&bad, &ds).unwrap_err().to_string();
    assert!(
        e.contains("crop_pool.seed") && e.contains("worker-1-of-2"),
        "{e}"
    );
    // a part whose record of a shard's images was edited: refused by the merge, naming
    // the part and its worker (verify and training refused the merged store)
    // its sample count edited (under the data's own fingerprint hash; in the part
    // without the last shard, whose range would give it away): said as an edit by the
    // merge and by the worker's rerun, not as another dataset
    let part1 = split.join("manifest.worker-1-of-2.json");
    let kept = std::fs::read(&part1).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    let n = m["config"]["dataset"]["samples"].as_u64().unwrap();
    m["config"]["dataset"]["samples"] = (n + 1).into();
    std::fs::write(&part1, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let said = format!("config.dataset says {} samples", n + 1);
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains("manifest.worker-1-of-2.json")
            && e.contains(&said)
            && e.contains("the manifest was edited"),
        "{e}"
    );
    let e = write_all(&split, &ds, &cfg, Some([1, 2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&said) && e.contains("the manifest was edited"),
        "{e}"
    );
    std::fs::write(&part1, &kept).unwrap();
    let part = split.join("manifest.worker-0-of-2.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&part).unwrap()).unwrap();
    m["shards"][0]["listing_sha256"] = "00".into();
    std::fs::write(&part, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains("manifest.worker-0-of-2.json")
            && e.contains("another listing of its images")
            && e.contains("rerun worker 0 of 2"),
        "{e}"
    );
}

/// One directory holds one store: a single run's, or one split's parts and their merge.
/// A writer of another kind would replace shards that another manifest lists, so it is
/// refused before it writes anything; so is one beside a running writer of another kind.
#[test]
fn single_runs_and_workers_do_not_share_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    // the store's files (the lock files are the locks' own business)
    let snapshot = |d: &Path| {
        let mut f = files(d);
        f.retain(|name, _| !name.starts_with(".lock"));
        f
    };

    // a single run's store: no worker may add its part, of any config
    let single = tmp.path().join("single");
    write_all(&single, &ds, &cfg, None).unwrap();
    let before = snapshot(&single);
    let mut seeded = cfg.clone();
    seeded.crop_pool.seed += 1;
    for c in [&cfg, &seeded] {
        let e = write_all(&single, &ds, c, Some([0, 2]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest.json") && e.contains("single run"),
            "{e}"
        );
    }
    assert_eq!(snapshot(&single), before, "nothing written");

    // one split's parts: no single run before the merge, no split into another count
    let split = tmp.path().join("split");
    write_all(&split, &ds, &cfg, Some([1, 2])).unwrap();
    let e = write_all(&split, &ds, &cfg, None).unwrap_err().to_string();
    assert!(
        e.contains("manifest.worker-1-of-2.json") && e.contains("worker(s) 0/2 have not run"),
        "{e}"
    );
    // a reader is told to merge, not that manifest.json is missing
    let e = LabelStore::open(&split).err().unwrap().to_string();
    assert!(e.contains("merge them first"), "{e}");
    // an unfinished part (an interrupted worker) is named: merging cannot help yet
    drop(StoreWriter::open(&split, cfg.clone(), ds.samples(), Some([0, 2])).unwrap());
    let e = write_all(&split, &ds, &cfg, None).unwrap_err().to_string();
    assert!(
        e.contains("manifest.worker-0-of-2.json unfinished") && e.contains("rerun those workers"),
        "{e}"
    );
    let e = write_all(&split, &ds, &cfg, Some([0, 3]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("-of-2.json")
            && e.contains("another number of workers")
            && e.contains("holds a split into 2: run its parts 0/2 to 1/2"),
        "{e}"
    );

    // while a worker writes, a single writer and a merge are kept out; its sibling is not
    let w1 = StoreWriter::open(&split, cfg.clone(), ds.samples(), Some([1, 2])).unwrap();
    let busy = |r: Result<(), StoreError>| r.unwrap_err().to_string().contains("in use by");
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(e.contains("in use by"), "{e}");
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    drop(w1);
    let e = write_all(&split, &ds, &cfg, None).unwrap_err().to_string();
    assert!(
        e.contains("all complete, not yet merged: merge them"),
        "{e}"
    );
    merge(&split, &ds).unwrap();
    // after the merge: the same workers and a single run may rerun (resume, nothing to
    // do), and the store still verifies
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    write_all(&split, &ds, &cfg, None).unwrap();
    LabelStore::open(&split).unwrap().verify().unwrap();
    // a split into another count is told the store is merged (not "a single run's"),
    // and a single run of another config that the store's config differs
    let e = write_all(&split, &ds, &cfg, Some([0, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("merged from the parts of workers"), "{e}");
    // a worker whose own part was removed from the merged store: said so, with the way on
    let part = split.join("manifest.worker-1-of-2.json");
    let kept = std::fs::read(&part).unwrap();
    std::fs::remove_file(&part).unwrap();
    let e = write_all(&split, &ds, &cfg, Some([1, 2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "manifest.worker-1-of-2.json: missing from a store merged from this split's parts"
        ) && e.contains("rerun as a single run (not a worker)"),
        "{e}"
    );
    std::fs::write(&part, kept).unwrap();
    let e = write_all(&split, &ds, &seeded, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the store there was made with another config") && e.contains("seed"),
        "{e}"
    );
    // and a single writer keeps the workers out while it runs
    let w = StoreWriter::open(&split, cfg.clone(), ds.samples(), None).unwrap();
    assert!(busy(write_all(&split, &ds, &cfg, Some([0, 2]))));
    drop(w);
}

/// Merge refuses another dataset (a renamed image changes the fingerprint), a missing
/// worker (named), and a worker shard that no longer matches its manifest.
#[test]
fn merge_checks_the_dataset_the_workers_and_their_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let split = tmp.path().join("split");
    // a misspelt directory: named, and not created
    let typo = tmp.path().join("splt");
    let e = merge(&typo, &ds).unwrap_err().to_string();
    assert!(e.contains("splt") && e.contains("no such directory"), "{e}");
    assert!(!typo.exists());
    // a directory without parts (a class folder named by mistake): refused, left as it was
    let class_dir = tmp.path().join("train").join(&ds.classes()[0]);
    let before = files(&class_dir);
    let e = merge(&class_dir, &ds).unwrap_err().to_string();
    assert!(e.contains("no worker manifests"), "{e}");
    // a single run's store needs none, said as such
    let (single_ds, _, single) = written(
        &tmp.path().join("single"),
        Encoding::Dense,
        ShardFormat::Parquet,
    );
    let e = merge(&single, &single_ds).unwrap_err().to_string();
    assert!(e.contains("a single run's complete store"), "{e}");
    assert_eq!(
        files(&class_dir),
        before,
        "nothing left behind (no lock file)"
    );
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    // worker 1 has not run: say so
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains("worker 1 of 2 is missing (no manifest.worker-1-of-2.json)"),
        "{e}"
    );
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
    // a class folder renamed: other classes, not images that "changed size"
    let class = train.join(&ds.classes()[0]);
    let renamed = train.join(format!("{}-renamed", ds.classes()[0]));
    std::fs::rename(&class, &renamed).unwrap();
    let ds3 = Dataset::open(&train, LinkPolicy::StayInside).unwrap();
    std::fs::rename(&renamed, &class).unwrap();
    let e = merge(&split, &ds3).unwrap_err().to_string();
    assert!(
        e.contains("another dataset") && !e.contains("changed size"),
        "{e}"
    );

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

    // parts of two splits: what to remove is said
    let part1 = split.join("manifest.worker-1-of-2.json");
    let kept = std::fs::read(&part1).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    m["worker"] = serde_json::json!([1, 3]);
    let stray = split.join("manifest.worker-1-of-3.json");
    std::fs::write(&stray, m.to_string()).unwrap();
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains("the parts of two splits are here; remove those of the split not to merge (manifest.worker-*-of-3.json, or the -of-2.json ones"),
        "{e}"
    );
    std::fs::remove_file(&stray).unwrap();
    // a part of another config: each side named by its file, not "store" and "now"
    let mut m: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    m["config"]["crop_pool"]["seed"] = serde_json::json!(99);
    std::fs::write(&part1, m.to_string()).unwrap();
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains(
            "crop_pool.seed (manifest.worker-1-of-2.json: 99, manifest.worker-0-of-2.json: "
        ) && e.contains("remove the odd part's manifest and rerun its worker"),
        "{e}"
    );
    std::fs::write(&part1, &kept).unwrap();
    // the first part's class names edited: said as such, not as another dataset
    let part0 = split.join("manifest.worker-0-of-2.json");
    let kept0 = std::fs::read(&part0).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&kept0).unwrap();
    m["config"]["classes"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(&part0, m.to_string()).unwrap();
    let e = merge(&split, &ds).unwrap_err().to_string();
    assert!(
        e.contains("config.classes is not the class list of") && e.contains("the part was edited"),
        "{e}"
    );
    std::fs::write(&part0, &kept0).unwrap();
    merge(&split, &ds).unwrap();
    LabelStore::open(&split).unwrap().verify().unwrap();
}

/// Workers of two configs opening their parts at once (threads, as a device list runs
/// them): whatever the order, every one that opens has the same config, each refused one
/// names the other config, none is refused as busy, and one at least opens.
#[test]
fn workers_opening_at_once_agree_on_one_config() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let mut cfg2 = cfg.clone();
    cfg2.crop_pool.seed += 1;
    let dir = tmp.path().join("split");
    let n = 6u32;
    let (opened, all_tried) = (
        std::sync::Barrier::new(n as usize),
        std::sync::Barrier::new(n as usize),
    );
    let results: Vec<Result<StoreConfig, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let c = if i % 2 == 0 {
                    cfg.clone()
                } else {
                    cfg2.clone()
                };
                let (dir, ds, opened, all_tried) = (&dir, &ds, &opened, &all_tried);
                scope.spawn(move || {
                    opened.wait();
                    let w = StoreWriter::open(dir, c.clone(), ds.samples(), Some([i, n]));
                    // the writers stay open until every worker has tried
                    all_tried.wait();
                    w.map(|_| c).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<&StoreConfig> = results.iter().flatten().collect();
    assert!(!won.is_empty(), "{results:?}");
    assert!(won.iter().all(|c| *c == won[0]), "two configs opened");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.contains("another config") && !e.contains("in use"), "{e}");
    }
}
