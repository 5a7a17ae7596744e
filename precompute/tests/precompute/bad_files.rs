//! Bad images: skipped and reported, or failing the run naming them after the shards
//! before them are written; fixed later, the store resumes from its shards and renews
//! only those that hold a changed image (also a merged store, with its workers' parts).

use super::*;

#[test]
fn a_corrupt_image_is_skipped_and_reported_or_fails_naming_it() {
    let f = fixture(2);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let bad = ds.samples()[4].clone();
    std::fs::write(ds.full_path(&bad), b"\xff\xd8\xff not a jpeg").unwrap();
    let s = args(&f, "labels").resolve().unwrap();
    let r = go(&s);
    assert!(r.complete);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].path, bad.path);
    assert_eq!(r.images, 19);
    let text = inspect::inspect(&s.out, 0).unwrap().text;
    assert!(
        text.contains(&format!(
            "skipped      1 unreadable files (not in the store):\n               {}: ",
            bad.path
        )),
        "{text}"
    );
    let store = LabelStore::open(&s.out).unwrap();
    assert!(store.crops(bad.id).unwrap().is_empty());
    assert_eq!(store.crops(5).unwrap().len(), 3);
    let v = inspect::verify(&s.out).unwrap();
    assert!(v.contains("19 images"), "{v}");
    // the shard with the skipped image is said to be left unchecked against its listing
    assert!(
        v.contains("were not checked") && v.contains("1 skipped an unreadable image"),
        "{v}"
    );
    // class names swapped in the manifest by hand: inspect would print each class's
    // figures under another's name; it names the edit, as verify does
    let mpath = s.out.join("manifest.json");
    let kept = std::fs::read(&mpath).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    m["config"]["classes"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(&mpath, m.to_string()).unwrap();
    let e = format!("{:#}", inspect::inspect(&s.out, 0).err().unwrap());
    assert!(e.contains("the manifest was edited"), "{e}");
    // and so does a rerun over it (it had read as the data's classes renamed)
    let e = format!("{:#}", run::run(&s, &AtomicBool::new(false)).unwrap_err());
    assert!(e.contains("the manifest was edited"), "{e}");
    std::fs::write(&mpath, kept).unwrap();
    // a partial store has no image table: its dataset fingerprint, which hashes the
    // class names, says the edit (it read as "another config")
    let mut a = args(&f, "partial");
    a.limit = Some(8);
    let p = a.resolve().unwrap();
    assert!(!go(&p).complete);
    let mpath = p.out.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["config"]["classes"][1] = "kitten".into();
    std::fs::write(&mpath, m.to_string()).unwrap();
    let e = format!("{:#}", run::run(&p, &AtomicBool::new(false)).unwrap_err());
    assert!(
        e.contains(
            "the class list its dataset fingerprint (config.dataset.sha256) records \
             (class 1: \"kitten\" in the manifest"
        ) && e.contains("the manifest was edited"),
        "{e}"
    );

    let mut a = args(&f, "strict");
    a.on_bad_file = Some("fail".into());
    let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{e:#}").contains(&bad.path), "{e:#}");
}

/// A batch that fails to load late in the run (strict policy) fails the run naming the
/// file, and loses nothing done: the shards completed before it (two batches are in
/// flight, `Ensemble::submit`) are written and a rerun with `--on-bad-file skip`
/// resumes from them.
#[test]
fn a_late_bad_file_fails_the_run_after_writing_the_shards_before_it() {
    let f = fixture(2);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    // sample 14 opens the third shard of 7 samples: the batch before it, in flight when
    // its batch fails to load, completes the second
    let bad = ds.samples()[14].clone();
    std::fs::write(ds.full_path(&bad), b"\xff\xd8\xff not a jpeg").unwrap();
    let mut a = args(&f, "late");
    a.on_bad_file = Some("fail".into());
    let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{e:#}").contains(&bad.path), "{e:#}");
    let out = f.root.join("late");
    for sh in ["shard-000000", "shard-000001"] {
        let written = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .any(|d| d.file_name().to_string_lossy().starts_with(sh));
        assert!(written, "{sh} was not written before the failure");
    }
    let mut b = args(&f, "late");
    b.on_bad_file = Some("skip".into());
    let r = go(&b.resolve().unwrap());
    assert!(r.complete);
    assert!(
        r.shards_present >= 2,
        "the rerun resumed from {} shards",
        r.shards_present
    );
}

/// The dataset of `f` with its sample 14 (the third shard of 7 samples) made
/// unreadable: the sample, and its good bytes to fix it with.
fn break_sample_14(f: &Fixture) -> (Dataset, meal_data::Sample, Vec<u8>) {
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let bad = ds.samples()[14].clone();
    let good = std::fs::read(ds.full_path(&bad)).unwrap();
    std::fs::write(ds.full_path(&bad), b"\xff\xd8\xff not a jpeg").unwrap();
    (ds, bad, good)
}

/// The images `ids` of `ds` another size, decoding the same (16 bytes after a JPEG's
/// end): a dataset changed only in its files' sizes.
fn grow(ds: &Dataset, ids: impl IntoIterator<Item = usize>) {
    for i in ids {
        let p = ds.full_path(&ds.samples()[i]);
        let mut b = std::fs::read(&p).unwrap();
        b.extend([0u8; 16]);
        std::fs::write(&p, b).unwrap();
    }
}

/// The settings of `args` into `out` at `per_shard` images a shard, as `worker` (or
/// a single run).
fn split_args(f: &Fixture, out: &str, worker: Option<&str>, per_shard: u32) -> Settings {
    let mut a = args(f, out);
    a.samples_per_shard = Some(per_shard);
    a.worker = worker.map(Into::into);
    a.resolve().unwrap()
}

/// The image that stopped a `fail` run, fixed (another size: the dataset's fingerprint
/// changed), resumes the store from its shards, which end as a clean run's; a skipped
/// image fixed later has only its shard recomputed. Another dataset of the same size
/// (other files listed) is still refused.
#[test]
fn a_fixed_image_resumes_the_store_from_its_shards() {
    let f = fixture(2);
    go(&args(&f, "reference").resolve().unwrap());
    let reference = files(&f.root.join("reference"));
    let (ds, bad, good) = break_sample_14(&f);
    let mut a = args(&f, "fixed");
    a.on_bad_file = Some("fail".into());
    let s = a.resolve().unwrap();
    let e = format!("{:#}", run::run(&s, &AtomicBool::new(false)).unwrap_err());
    assert!(
        e.contains(&bad.path) && e.contains("rerun the same command"),
        "{e}"
    );
    std::fs::write(ds.full_path(&bad), &good).unwrap();
    let r = go(&s);
    assert!(r.complete);
    assert!(
        r.shards_present >= 2,
        "resumed from {} shards",
        r.shards_present
    );
    assert_eq!(files(&s.out), reference);

    // skipped, then fixed: only its shard (the third of 7 samples) is written again
    std::fs::write(ds.full_path(&bad), b"\xff\xd8\xff not a jpeg").unwrap();
    let skip = args(&f, "skipped").resolve().unwrap();
    assert_eq!(go(&skip).skipped.len(), 1);
    std::fs::write(ds.full_path(&bad), &good).unwrap();
    let r = go(&skip);
    assert!(r.complete && r.skipped.is_empty());
    assert_eq!((r.shards_present, r.shards_written), (2, 1));
    assert_eq!(files(&skip.out), reference);

    // every file of another size (a re-encoded copy under the same names, given by
    // mistake) is another dataset: refused, the store left as it is
    let before = files(&s.out);
    grow(&ds, 0..ds.len());
    let e = format!("{:#}", run::run(&s, &AtomicBool::new(false)).unwrap_err());
    assert!(e.contains("shards hold images whose size changed"), "{e}");
    assert!(e.contains("more than half"), "{e}");
    assert_eq!(files(&s.out), before);

    // the same count of other files (one renamed) is another dataset: refused
    let from = ds.full_path(&ds.samples()[3]);
    std::fs::rename(&from, from.with_file_name("renamed.jpg")).unwrap();
    let e = format!("{:#}", run::run(&s, &AtomicBool::new(false)).unwrap_err());
    assert!(e.contains("dataset.sha256"), "{e}");
    // named from the store's image table
    assert!(
        e.contains(&format!(
            "First difference: 1 of the store's images is not in the data ({})",
            ds.samples()[3].path
        )),
        "{e}"
    );
    // a class folder renamed: the class named once (the config's difference), not again
    // as the first difference
    std::fs::rename(from.with_file_name("renamed.jpg"), &from).unwrap();
    let class = ds
        .full_path(&ds.samples()[3])
        .parent()
        .unwrap()
        .to_path_buf();
    let name = class.file_name().unwrap().to_string_lossy().to_string();
    std::fs::rename(&class, class.with_file_name(format!("{name}-renamed"))).unwrap();
    let e = format!("{:#}", run::run(&s, &AtomicBool::new(false)).unwrap_err());
    assert_eq!(e.matches(&format!("{name}-renamed")).count(), 1, "{e}");
}

/// A store of one shard takes a fixed image too: "1 of its 1 shards" changed is more
/// than half, but a store of one or two shards recomputes little either way.
#[test]
fn a_store_of_one_shard_takes_a_fixed_image() {
    let f = fixture(2);
    let s = split_args(&f, "one", None, 1000);
    let (ds, bad, good) = break_sample_14(&f);
    assert_eq!(go(&s).skipped.len(), 1);
    std::fs::write(ds.full_path(&bad), &good).unwrap();
    let r = go(&s);
    assert!(r.complete && r.skipped.is_empty());
    assert_eq!(r.shards_written, 1);
}

/// A merged store renewed by a single run once a skipped image was fixed: the workers'
/// parts follow it, so a later merge or a worker's rerun finds them current (the merge
/// asked for every worker to be run again).
#[test]
fn a_single_run_renewing_a_merged_store_brings_its_parts_along() {
    let f = fixture(2);
    go(&args(&f, "reference").resolve().unwrap());
    let reference = files(&f.root.join("reference"));
    let (ds, bad, good) = break_sample_14(&f);
    let worker = |w: &str| {
        let mut a = args(&f, "merged");
        a.worker = Some(w.into());
        go(&a.resolve().unwrap())
    };
    for w in ["0/2", "1/2"] {
        assert!(worker(w).complete);
    }
    let out = f.root.join("merged");
    let broken = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    meal_store::merge(&out, &broken).unwrap();
    std::fs::write(ds.full_path(&bad), &good).unwrap();
    let r = go(&args(&f, "merged").resolve().unwrap());
    assert!(r.complete && r.skipped.is_empty());
    assert_eq!((r.shards_present, r.shards_written), (2, 1));
    assert_eq!(files(&out), reference);
    let part = |i: u32| {
        let p = out.join(format!("manifest.worker-{i}-of-2.json"));
        meal_store::Manifest::read_file(&p).unwrap()
    };
    let store = meal_store::Manifest::read(&out).unwrap();
    for i in 0..2 {
        assert_eq!(
            part(i).config,
            store.config,
            "part {i} kept the old dataset"
        );
        let ours: Vec<_> = store.shards.iter().filter(|s| s.index % 2 == i).collect();
        assert_eq!(part(i).shards.iter().collect::<Vec<_>>(), ours);
    }
    // the merge and the workers' reruns find the parts current: nothing is written
    let fixed = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    meal_store::merge(&out, &fixed).unwrap();
    assert_eq!(files(&out), reference);
    for w in ["0/2", "1/2"] {
        let r = worker(w);
        assert!(
            r.complete && r.shards_written == 0,
            "worker {w} wrote again"
        );
    }
    assert_eq!(files(&out), reference);
}

/// Two images fixed in one worker's shards (2 of its 3, 2 of the store's 5): the part is
/// renewed as the store would be, since the rule "at most half the shards changed" is
/// the store's. Counted per part, the merge named the other worker, and both workers'
/// reruns were refused.
#[test]
fn a_part_with_most_of_its_shards_changed_is_renewed_when_the_store_has_few() {
    let f = fixture(2);
    let settings = |out: &str, worker: Option<&str>| split_args(&f, out, worker, 4);
    for w in ["0/2", "1/2"] {
        assert!(go(&settings("parts", Some(w))).complete);
    }
    let out = f.root.join("parts");
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    meal_store::merge(&out, &ds).unwrap();
    // samples 1 and 9: shards 0 and 2, both worker 0's (a JPEG with bytes after its end
    // decodes the same: only the sizes change)
    grow(&ds, [1, 9]);
    let changed = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let e = meal_store::merge(&out, &changed).unwrap_err().to_string();
    assert!(
        e.contains("manifest.worker-0-of-2.json, manifest.worker-1-of-2.json")
            && e.contains("rerun those workers"),
        "{e}"
    );
    let r0 = go(&settings("parts", Some("0/2")));
    assert!(r0.complete && r0.shards_written == 2, "{r0:?}");
    // the merged store listed the shards written again with their old checksums: it is
    // gone until the next merge (every reader called it damaged)
    assert!(!out.join(meal_store::MANIFEST).exists());
    let r1 = go(&settings("parts", Some("1/2")));
    assert!(r1.complete && r1.shards_written == 0, "{r1:?}");
    meal_store::merge(&out, &changed).unwrap();
    go(&settings("reference", None));
    assert_eq!(files(&out), files(&f.root.join("reference")));
}

/// The rule counts the store's shards, written or not: with one worker's part not yet
/// started, three fixed images in three of the other part's five shards are three of
/// the store's ten (they were "3 of the store's 5", and both workers were refused).
#[test]
fn a_part_is_renewed_while_another_has_not_started() {
    let f = fixture(2);
    let settings = |out: &str, worker: Option<&str>| split_args(&f, out, worker, 2);
    assert!(go(&settings("parts", Some("0/2"))).complete);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    // samples 0, 4 and 8: shards 0, 2 and 4 of 10, all worker 0's
    grow(&ds, [0, 4, 8]);
    let r0 = go(&settings("parts", Some("0/2")));
    assert!(r0.complete && r0.shards_written == 3, "{r0:?}");
    assert!(go(&settings("parts", Some("1/2"))).complete);
    let changed = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    meal_store::merge(&f.root.join("parts"), &changed).unwrap();
    go(&settings("reference", None));
    assert_eq!(
        files(&f.root.join("parts")),
        files(&f.root.join("reference"))
    );
}

/// A partial store (no image table to compare paths with) resumed on the same files
/// listed from a parent folder: its shards' sizes match, so the refusal says to give
/// them from the same root, rather than only that the data changed.
#[test]
fn a_partial_store_on_the_same_files_from_another_root_says_so() {
    let f = fixture(2);
    let mut a = args(&f, "part");
    a.limit = Some(8);
    assert!(!go(&a.resolve().unwrap()).complete);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let mut csv = String::from("path,label\n");
    for s in ds.samples() {
        csv.push_str(&format!(
            "train/{},{}\n",
            s.path,
            ds.classes()[s.label as usize]
        ));
    }
    let list = f.data.parent().unwrap().join("all.csv");
    std::fs::write(&list, csv).unwrap();
    let mut b = args(&f, "part");
    b.data = Some(list);
    let e = format!(
        "{:#}",
        run::run(&b.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err()
    );
    assert!(
        e.contains("the written shards' images have the sizes they had, in order")
            && e.contains("give them from the same root as before"),
        "{e}"
    );
}
