//! What must never be lost or mixed up: crash injection at every writer step then
//! resume, corruption detection (other datasets and configs: `mismatch`).

use super::*;

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
        // the manifest after every shard, so every step of its writes is crashed at too
        w.set_manifest_every(std::time::Duration::ZERO);
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
        w.set_manifest_every(std::time::Duration::ZERO);
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

/// The manifest is rewritten at most every `MANIFEST_EVERY`, not after each shard (which
/// made a run's time grow with the square of its shards): shards written since are
/// listed when the writer is dropped (a run stopped by Ctrl-C or an error), and left to
/// the next run when a write failed (as after a crash), which resumes to the same store.
#[test]
fn shards_are_listed_in_batches_and_when_the_writer_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let reference = tmp.path().join("ref");
    write_all(&reference, &ds, &cfg, None).unwrap();
    let want = files(&reference);
    let listed = |dir: &Path| meal_store::Manifest::read(dir).unwrap().shards.len();
    // two shards written within the interval: on disk, unlisted until the drop
    let dir = tmp.path().join("stopped");
    let mut w = StoreWriter::open(&dir, cfg.clone(), ds.samples(), None).unwrap();
    w.set_manifest_every(std::time::Duration::from_secs(3600));
    for s in w.pending_shards().into_iter().take(2) {
        let imgs = shard_images(&w, &ds, s, Some(5));
        w.write_shard(s, imgs).unwrap();
    }
    assert_eq!(listed(&dir), 0);
    drop(w);
    assert_eq!(listed(&dir), 2, "a stopped writer lists its shards");
    // a failed write: nothing more is written, the next run recomputes what is unlisted
    let mut w = StoreWriter::open(&dir, cfg.clone(), ds.samples(), None).unwrap();
    w.set_manifest_every(std::time::Duration::from_secs(3600));
    let pending = w.pending_shards();
    let imgs = shard_images(&w, &ds, pending[0], Some(5));
    w.write_shard(pending[0], imgs).unwrap();
    w.set_hook(|_| Err(StoreError::Injected(0)));
    let imgs = shard_images(&w, &ds, pending[1], Some(5));
    assert!(w.write_shard(pending[1], imgs).is_err());
    drop(w);
    assert_eq!(listed(&dir), 2, "a writer whose write failed wrote on");
    write_all(&dir, &ds, &cfg, None).unwrap();
    assert_eq!(files(&dir), want);
}

/// `images.parquet` (the table a student takes its images from) is checked by `verify`:
/// a flipped byte by the manifest's checksum, and, in a store without one (written
/// before it was recorded), a repeated sample id by the table's cross-check with the
/// shards.
#[test]
fn corruption_is_detected_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, dir) = written(tmp.path(), Encoding::Dense, ShardFormat::Parquet);
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
    // a flipped byte in the footer (Parquet's metadata length, before the closing
    // `PAR1`): the file no longer reads, and is said to have changed, not only as a
    // Parquet error
    let mut bad = good.clone();
    bad[good.len() - 6] ^= 0x40;
    std::fs::write(&shard, &bad).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("shard-000001.parquet") && e.contains("checksum mismatch (changed since"),
        "{e}"
    );
    std::fs::write(&shard, &good).unwrap();
    LabelStore::open(&dir).unwrap().verify().unwrap();
    // missing shard
    std::fs::remove_file(&shard).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("shard-000001.parquet"), "{e}");
    std::fs::write(&shard, &good).unwrap();
    // a directory in a shard's place: said as what it is, not as its size
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("shard-000001.parquet") && e.contains("not a regular file"),
        "{e}"
    );
    std::fs::remove_dir(&shard).unwrap();
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
    // hand-edited fields every reader relies on: refused when the manifest is read,
    // naming it and the field, never a panic later
    let teacher = |rest: &str| {
        let zeros = "0".repeat(64);
        let t = format!(
            "\"teachers\": [{{\"arch\": \"demo_tiny\", \"weights\": \"w.safetensors\", \
             \"sha256\": \"{zeros}\", \"input_size\": 32, \"filter\": \"bilinear\", \
             \"mean\": [0.5, 0.5, 0.5], \"std\": [0.5, 0.5, 0.5], {rest}}}]"
        );
        // (a teacher of its own is read as written: the fixture's has none)
        if !rest.contains("filter") {
            return t;
        }
        t.replacen("\"filter\": \"bilinear\", ", "", 1)
    };
    let t_dtype = teacher("\"dtype\": \"f64\"");
    let t_filter = teacher("\"dtype\": \"f32\", \"filter\": \"lanczos\"");
    let t_logits = teacher("\"dtype\": \"f32\", \"logits\": [99, 0]");
    let t_sha = teacher("\"dtype\": \"f32\"").replace(&"0".repeat(64), "00");
    let edits: Vec<(&str, &str, &str)> = vec![
        (
            "\"samples_per_shard\": 7",
            "\"samples_per_shard\": 0",
            "config.samples_per_shard: must be at least 1",
        ),
        (
            "\"crops_per_image\": 4",
            "\"crops_per_image\": 0",
            "config.crop_pool.crops_per_image: must be at least 1",
        ),
        (
            "\"encoding\": \"dense\"",
            "\"encoding\": \"topk:99\"",
            "config.encoding: top-99 of",
        ),
        (
            "\"encoding\": \"dense\",\n    \"format\": \"parquet\"",
            "\"encoding\": \"topk:2\",\n    \"format\": \"safetensors\"",
            "config.format: safetensors shards hold the dense encoding only",
        ),
        (
            "\"shard-000001.parquet\"",
            "\"../elsewhere.parquet\"",
            "not a file of the store",
        ),
        (
            "\"first_sample\": 7",
            "\"first_sample\": 8",
            "expected 7..14",
        ),
        ("0.08,", "-1.0,", "config.crop_pool: invalid scale"),
        (
            "\"index\": 4",
            "\"index\": 9",
            "shard 9 is past the store's 30 samples (7 per shard)",
        ),
        // what the labels mean, refused as on the command line (verify passed them)
        (
            "\"ensemble\": \"mean_softmax\"",
            "\"ensemble\": \"max\"",
            "config.ensemble: \"max\"",
        ),
        (
            "\"teachers\": []",
            &t_dtype,
            "dtype \"f64\" (expected f32, bf16 or f16)",
        ),
        (
            "\"teachers\": []",
            &t_filter,
            "\"lanczos\" (expected bilinear or bicubic)",
        ),
        ("\"teachers\": []", &t_logits, "logits lists 2 logits for"),
        (
            "\"teachers\": []",
            &t_sha,
            "sha256 \"00\" is not a SHA-256 (64 hex digits)",
        ),
        (
            "\"encoding\": \"dense\",\n    \"format\": \"parquet\"",
            "\"encoding\": \"dense\",\n    \"format\": \"safetensors\"",
            "is listed as shard-000000.parquet, not shard-000000.safetensors",
        ),
        // a whole store's manifest that says a worker wrote it (a part copied over it)
        (
            "\"worker\": null",
            "\"worker\": [0, 2]",
            "its worker field (worker 0 of 2) is not its file name's",
        ),
    ];
    for (from, to, said) in edits {
        assert!(m.contains(from), "the fixture's manifest has {from}");
        std::fs::write(&mpath, m.replacen(from, to, 1)).unwrap();
        let e = LabelStore::open(&dir).err().unwrap().to_string();
        assert!(e.contains("manifest.json") && e.contains(said), "{to}: {e}");
    }
    // a class count that is not the class names', a class named twice
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    let mut w = v.clone();
    w["config"]["dataset"]["classes"] = 0.into();
    std::fs::write(&mpath, w.to_string()).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("config.dataset.classes: 0 classes, but"), "{e}");
    let mut w = v.clone();
    w["config"]["classes"][1] = w["config"]["classes"][0].clone();
    std::fs::write(&mpath, w.to_string()).unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(
        e.contains("config.classes: class name") && e.contains("listed twice"),
        "{e}"
    );
    // two class names swapped: a valid manifest, which verify finds against the class
    // list images.parquet records (under its checksum)
    let mut w = v.clone();
    let (c0, c1) = (
        w["config"]["classes"][0].clone(),
        w["config"]["classes"][1].clone(),
    );
    w["config"]["classes"][0] = c1;
    w["config"]["classes"][1] = c0;
    std::fs::write(&mpath, w.to_string()).unwrap();
    let e = LabelStore::open(&dir)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.classes is not the class list images.parquet records (class 0:"),
        "{e}"
    );
    std::fs::write(&mpath, "{ not json").unwrap();
    let e = LabelStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

/// A shard a crash left unlisted (renamed into place, its manifest not yet written) is
/// removed when the store is opened again, even one a rerun would never write (a store
/// started over under another samples_per_shard); a worker removes only its own; in a
/// directory that held no store, same-named files stay, and other files always do.
#[test]
fn shards_left_unlisted_by_a_crash_are_removed_when_the_store_is_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let names = |d: &Path| files(d).into_keys().collect::<Vec<_>>();
    let orphans = |d: &Path| {
        for f in [
            "shard-000099.parquet",
            "shard-000098.safetensors",
            "notes.txt",
        ] {
            std::fs::write(d.join(f), b"left").unwrap();
        }
    };

    let dir = tmp.path().join("store");
    write_all(&dir, &ds, &cfg, None).unwrap();
    let mut want = names(&dir);
    orphans(&dir);
    drop(StoreWriter::open(&dir, cfg.clone(), ds.samples(), None).unwrap());
    want.push("notes.txt".into());
    want.sort();
    assert_eq!(names(&dir), want);
    LabelStore::open(&dir).unwrap().verify().unwrap();

    // worker 0 of 2 writes the even shards: shard 99 is worker 1's
    let split = tmp.path().join("split");
    write_all(&split, &ds, &cfg, Some([0, 2])).unwrap();
    orphans(&split);
    drop(StoreWriter::open(&split, cfg.clone(), ds.samples(), Some([0, 2])).unwrap());
    let left = names(&split);
    assert!(
        left.contains(&"shard-000099.parquet".to_string())
            && !left.contains(&"shard-000098.safetensors".to_string()),
        "{left:?}"
    );

    // a directory that held no store: a new store there is refused, naming what is
    // there, and nothing of it is removed or overwritten
    // (the refusal's text; nothing in `dir` changed)
    let refused = |dir: &Path| {
        let before = files(dir);
        let e = StoreWriter::open(dir, cfg.clone(), ds.samples(), None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(files(dir), before);
        e
    };
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    orphans(&other);
    let e = refused(&other);
    assert!(
        e.contains("not empty, and no label store is there") && e.contains("notes.txt"),
        "{e}"
    );
    // a user's file named like a manifest, or a hidden temporary of theirs, is not the
    // sign of a store (they were overwritten and removed)
    let user = tmp.path().join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("manifest-webapp.json"), b"{}").unwrap();
    std::fs::write(user.join(".draft.tmp"), b"keep").unwrap();
    let e = refused(&user);
    assert!(
        e.contains(".draft.tmp") && e.contains("manifest-webapp.json"),
        "{e}"
    );
}

/// A manifest listing a shard twice (an edit, a bad merge by hand) or miscounting a
/// shard's images: a rerun recomputes what the duplicate hid instead of calling the
/// store complete, and verify names a wrong image count.
#[test]
fn a_manifest_listing_a_shard_twice_is_repaired_and_a_wrong_count_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let cfg = config(&ds, Encoding::Dense, ShardFormat::Parquet);
    let dir = tmp.path().join("store");
    write_all(&dir, &ds, &cfg, None).unwrap();
    let want = files(&dir);
    let mpath = dir.join("manifest.json");
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        f(&mut m);
        std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    edit(&|m| {
        let first = m["shards"][0].clone();
        m["shards"][1] = first;
    });
    assert!(LabelStore::open(&dir).and_then(|s| s.verify()).is_err());
    write_all(&dir, &ds, &cfg, None).unwrap();
    LabelStore::open(&dir).unwrap().verify().unwrap();
    assert_eq!(
        files(&dir),
        want,
        "the store is the uninterrupted run's again"
    );

    edit(&|m| m["shards"][0]["images"] = 3.into());
    let e = LabelStore::open(&dir)
        .and_then(|s| s.verify())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard-000000.parquet") && e.contains("6 images, the manifest lists 3"),
        "{e}"
    );
    edit(&|m| m["shards"][0]["images"] = 6.into());
    LabelStore::open(&dir).unwrap();
    // a sample count edited past the shards, their last one full: each shard's own
    // range still checks, but the store lacks the shards of the samples added
    let full = tmp.path().join("full");
    let samples = ds.len() as u32;
    let mut whole = cfg.clone();
    whole.samples_per_shard = samples / 3;
    write_all(&full, &ds, &whole, None).unwrap();
    let fpath = full.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&fpath).unwrap()).unwrap();
    m["config"]["dataset"]["samples"] = (samples + 1).into();
    std::fs::write(&fpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let e = LabelStore::open(&full).err().unwrap().to_string();
    assert!(
        e.contains("manifest.json")
            && e.contains(&format!("store of {} samples", samples + 1))
            && e.contains("has 4 shards; the manifest lists 3"),
        "{e}"
    );
    // statistics and counts the checksum does not cover: refused at open, and a rerun
    // recomputes the shard (it kept them, and called the store complete)
    for (what, edit_it) in [
        (
            "statistics are impossible (1000000000000 top-1 agreements",
            &(|m: &mut serde_json::Value| {
                m["shards"][0]["stats"]["top1_agree"] = 1_000_000_000_000u64.into()
            }) as &dyn Fn(&mut serde_json::Value),
        ),
        (
            "statistics are impossible (an entropy sum",
            &|m: &mut serde_json::Value| m["shards"][1]["stats"]["entropy_sum"] = 1e300.into(),
        ),
        (
            "statistics are impossible (skipped sample 4294967295",
            &|m: &mut serde_json::Value| {
                m["shards"][0]["skipped"] =
                    serde_json::json!([{"sample_id": 4294967295u32, "path": "x", "reason": "y"}])
            },
        ),
        ("rows, the manifest says", &|m: &mut serde_json::Value| {
            m["shards"][0]["stats"]["rows"] = 20.into()
        }),
        // an image dropped from the skipped list would vanish unless the count is exact
        (
            "statistics are impossible (6 images and 0 skipped in a range of 7",
            &|m: &mut serde_json::Value| m["shards"][0]["skipped"] = serde_json::json!([]),
        ),
        (
            "sample 3 is listed as skipped but has rows",
            &|m: &mut serde_json::Value| m["shards"][0]["skipped"][0]["sample_id"] = 3.into(),
        ),
        // the refusal says a rerun rewrites the summary: it must
        (
            "its summary is not the sum",
            &|m: &mut serde_json::Value| m["summary"]["top1_agreement"] = 7.0.into(),
        ),
    ] {
        edit(edit_it);
        let e = LabelStore::open(&dir).err().expect(what).to_string();
        assert!(e.contains(what), "{what}: {e}");
        write_all(&dir, &ds, &cfg, None).unwrap();
        LabelStore::open(&dir).unwrap().verify().unwrap();
        assert_eq!(files(&dir), want, "{what}: recomputed");
    }
    // the summary is the shards' sums: an edited one is named
    edit(&|m| m["summary"]["images"] = 31.into());
    let e = LabelStore::open(&dir).err().expect("refused").to_string();
    assert!(e.contains("its summary is not the sum"), "{e}");
}

/// A directory that is no store (a dataset) and a store's manifest given for its
/// directory are named as that (they gave the OS's "No such file" and "Not a directory").
#[test]
fn what_is_not_a_store_is_said_to_be_none() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let e = LabelStore::open(ds.root()).err().unwrap().to_string();
    assert!(e.contains("not a label store (no manifest.json)"), "{e}");
    let m = tmp.path().join("manifest.json");
    std::fs::write(&m, "{}").unwrap();
    let e = LabelStore::open(&m).err().unwrap().to_string();
    assert!(e.contains("give the store's directory"), "{e}");
    let e = LabelStore::open(&tmp.path().join("absent"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("absent"), "{e}");
}
