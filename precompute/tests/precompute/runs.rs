//! Runs as a user has them: interrupted and resumed, split over workers and devices,
//! refused when the config or dataset changed, the report, inspect and verify.

use super::*;

#[test]
fn interrupted_then_resumed_equals_one_run_and_workers_merge_to_it() {
    let f = fixture(3);
    let whole = args(&f, "whole").resolve().unwrap();
    go(&whole);
    let reference = files(&whole.out);
    assert_eq!(reference.len(), 5 + 2);

    // interrupt after the second shard (as Ctrl-C does), plus the debris a kill -9 in
    // the middle of a shard write leaves: a half-written temporary file
    let part = args(&f, "resumed").resolve().unwrap();
    let stop = AtomicBool::new(false);
    let mut n = 0;
    let r = run::run_with(&part, &stop, &mut |_| {
        n += 1;
        if n == 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(!r.complete);
    assert_eq!(r.shards_written, 2);
    // the half-filled third shard is dropped, so "this run" counts what the store kept
    assert_eq!((r.images_labelled, r.crops_labelled), (r.images, r.crops));
    assert_eq!(r.images, 14);
    std::fs::write(
        part.out.join(".shard-000002.parquet.tmp"),
        b"PAR1 half a shard",
    )
    .unwrap();
    // a user's backup under a plain `.tmp` name is not the writer's to remove
    let backup = part.out.join("manifest.json.tmp");
    std::fs::write(&backup, b"mine").unwrap();
    assert!(
        LabelStore::open(&part.out).is_err(),
        "a partial store is not readable"
    );
    let r = go(&part);
    assert!(r.complete);
    assert_eq!((r.shards_present, r.shards_written), (2, 3));
    assert!(!part.out.join(".shard-000002.parquet.tmp").exists());
    assert_eq!(std::fs::read(&backup).unwrap(), b"mine");
    std::fs::remove_file(&backup).unwrap();
    assert_eq!(
        files(&part.out),
        reference,
        "resumed store differs from one run"
    );

    // --limit: a quick try leaves a partial store that a full run completes
    let mut a = args(&f, "limited");
    a.limit = Some(8);
    let r = go(&a.resolve().unwrap());
    assert_eq!((r.shards_written, r.images, r.complete), (2, 14, false));
    go(&args(&f, "limited").resolve().unwrap());
    assert_eq!(files(&f.root.join("limited")), reference);

    // a listed shard deleted, another truncated, of a partial and of a complete store:
    // the rerun recomputes them (shards are deterministic) instead of failing forever
    let mut a = args(&f, "damaged");
    a.limit = Some(15);
    go(&a.resolve().unwrap());
    let d = f.root.join("damaged");
    std::fs::remove_file(d.join("shard-000001.parquet")).unwrap();
    let r = go(&args(&f, "damaged").resolve().unwrap());
    assert!(r.complete);
    assert_eq!((r.shards_present, r.shards_written), (2, 3));
    assert_eq!(files(&d), reference);
    let s2 = d.join("shard-000002.parquet");
    let len = std::fs::metadata(&s2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s2)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = go(&args(&f, "damaged").resolve().unwrap());
    assert!(r.complete);
    assert_eq!((r.shards_present, r.shards_written), (4, 1));
    assert_eq!(files(&d), reference);

    // two workers, then merge
    for w in ["0/2", "1/2"] {
        let mut a = args(&f, "workers");
        a.worker = Some(w.into());
        let r = go(&a.resolve().unwrap());
        assert!(r.complete, "worker {w} part");
    }
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    meal_store::merge(&f.root.join("workers"), &ds).unwrap();
    assert_eq!(
        files(&f.root.join("workers")),
        reference,
        "merged store differs"
    );
    // verify is silent on intact parts and notes a damaged one beside the merged store
    // (a later worker rerun or merge would fail on it)
    let merged = f.root.join("workers");
    let v = inspect::verify(&merged).unwrap();
    assert!(
        v.starts_with("ok") && !v.contains("worker parts") && !v.contains("not checked"),
        "{v}"
    );
    let part = merged.join("manifest.worker-1-of-2.json");
    let kept = std::fs::read(&part).unwrap();
    std::fs::write(&part, b"{").unwrap();
    let v = inspect::verify(&merged).unwrap();
    assert!(
        v.contains("note: worker parts beside the store")
            && v.contains("manifest.worker-1-of-2.json ("),
        "{v}"
    );
    std::fs::write(&part, kept).unwrap();
}

#[test]
fn changed_config_or_dataset_is_refused_on_resume() {
    let f = fixture(2);
    let mut a = args(&f, "labels");
    a.limit = Some(7);
    go(&a.resolve().unwrap());
    let mut b = args(&f, "labels");
    b.seed = Some(8);
    b.crops_per_image = Some(4);
    let e = run::run(&b.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    // named with both values (the store's and this run's)
    assert!(
        msg.contains("crop_pool.seed (store: 7, now: 8)")
            && msg.contains("crop_pool.crops_per_image (store: 3, now: 4)"),
        "{msg}"
    );
    // another teacher weights file: refused by its checksum
    let mut c = args(&f, "labels");
    c.teacher[0] = format!(
        "demo_tiny={},size=16",
        f.t2.with_file_name("t3.safetensors").display()
    );
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 9)
        .unwrap()
        .save(&f.t2.with_file_name("t3.safetensors"))
        .unwrap();
    let e = run::run(&c.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("differing keys: teachers[0].sha256 (store: "),
        "{msg}"
    );
    // another resize filter for the second teacher: named down to the field
    let mut c = args(&f, "labels");
    c.teacher[1] = c.teacher[1].replace("filter=bicubic", "filter=bilinear");
    let e = run::run(&c.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("differing keys: teachers[1].filter (store: bicubic, now: bilinear)"),
        "{msg}"
    );
    // the same two teachers in the other order: said so, not field by field
    let mut c = args(&f, "labels");
    c.teacher.swap(0, 1);
    let e = run::run(&c.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("the same teachers in another order") && !msg.contains("teachers[0]"),
        "{msg}"
    );
    // the same weights under another name: a teacher is its content, the store resumes
    let renamed = f.root.join("renamed.safetensors");
    std::fs::copy(&f.t1, &renamed).unwrap();
    let mut c = args(&f, "labels");
    c.teacher[0] = format!("demo_tiny={},size=16", renamed.display());
    c.limit = Some(7);
    run::run(&c.resolve().unwrap(), &AtomicBool::new(false)).unwrap();
    // the dataset changed: one more image
    let first = meal_data::synth::class_names()[0].clone();
    let src = f
        .data
        .join(&first)
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(src, f.data.join(&first).join("extra.jpg")).unwrap();
    let e = run::run(
        &args(&f, "labels").resolve().unwrap(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("dataset"), "{e:#}");
}

/// `--device cpu,cpu`: one worker per device in one process, merged at the end, gives
/// the bytes of a run on one device; a rerun finds every part done.
#[test]
fn a_device_list_runs_one_worker_per_device_and_merges() {
    let f = fixture(3);
    go(&args(&f, "reference").resolve().unwrap());
    let reference = files(&f.root.join("reference"));
    let mut a = args(&f, "devices");
    a.device = Some("cpu,cpu".into());
    let s = a.resolve().unwrap();
    // --limit 8: shard 0 (worker 0) and shard 1 (worker 1) only; both parts stay
    // partial and the report's store figures are their shards together
    let mut limited = args(&f, "devices_limited");
    limited.device = Some("cpu,cpu".into());
    limited.limit = Some(8);
    let early = go(&limited.resolve().unwrap());
    assert!(!early.complete);
    assert_eq!((early.shards, early.images, early.crops), (2, 14, 42));
    assert_eq!((early.shards_written, early.images_labelled), (2, 14));
    let r = go(&s);
    assert!(r.complete);
    assert_eq!((r.images, r.crops, r.shards_written), (30, 90, 5));
    assert_eq!(
        files(&s.out),
        reference,
        "two-device store differs from one run"
    );
    let again = go(&s);
    assert!(again.complete);
    assert_eq!((again.shards_written, again.images), (0, 30));
    assert_eq!(files(&s.out), reference);
    // a complete store is read as it is by a list of another length (its workers, split
    // three ways, would each be refused by the two-way parts) and by one of one run
    for out in ["devices", "reference"] {
        let mut three = args(&f, out);
        three.device = Some("cpu,cpu,cpu".into());
        let r = go(&three.resolve().unwrap());
        assert!(r.complete);
        assert_eq!((r.shards_written, r.images), (0, 30));
    }
    assert_eq!(files(&s.out), reference);
    assert_eq!(files(&f.root.join("reference")), reference);
    // a device that cannot open fails the run before any worker labels an image (in a
    // build without CUDA, when the flags are read)
    if meal_models::parse_device("cuda:0").is_err() {
        let mut a = args(&f, "no_cuda");
        a.device = Some("cpu,cuda:0".into());
        let e = a
            .resolve()
            .and_then(|s| run::run(&s, &AtomicBool::new(false)))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("--device") && e.contains("cuda:0"), "{e}");
        assert!(!f.root.join("no_cuda").exists());
    } else {
        println!("cuda:0 opens here: the unopenable-device case needs a machine without one");
    }
    // a device list and --worker do not mix
    let mut a = args(&f, "both");
    a.device = Some("cpu,cpu".into());
    a.worker = Some("0/2".into());
    let e = a.resolve().unwrap_err();
    assert!(
        format!("{e:#}").starts_with("--device cpu,cpu with --worker 0/2"),
        "{e:#}"
    );
}

/// The report is built from the whole store, not the last invocation: after an
/// interrupted run and its resume it lists the skipped files of both runs, and a rerun
/// of a complete store reports the store as it is (not zeros).
#[test]
fn the_report_covers_the_whole_store_across_resumes_and_reruns() {
    let f = fixture(2);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    // shards of 7 samples: one bad image in shard 0, one in shard 2
    let bad = [ds.samples()[1].clone(), ds.samples()[15].clone()];
    for b in &bad {
        std::fs::write(ds.full_path(b), b"\xff\xd8\xff not a jpeg").unwrap();
    }
    let one_go = go(&args(&f, "one_go").resolve().unwrap());
    assert_eq!((one_go.images, one_go.skipped.len()), (18, 2));

    let s = args(&f, "resumed").resolve().unwrap();
    let stop = AtomicBool::new(false);
    let first = run::run_with(&s, &stop, &mut |_| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    assert!(!first.complete);
    assert_eq!(first.skipped.len(), 1, "{:?}", first.skipped);
    let resumed = go(&s);
    assert!(resumed.complete);
    assert!(resumed.shards_written < 3 && resumed.images_labelled < 18);
    let rerun = go(&s);
    assert_eq!((rerun.shards_written, rerun.images_labelled), (0, 0));
    for r in [&resumed, &rerun] {
        let mut paths: Vec<&str> = r.skipped.iter().map(|k| k.path.as_str()).collect();
        paths.sort();
        let mut want = vec![bad[0].path.as_str(), bad[1].path.as_str()];
        want.sort();
        assert_eq!(paths, want);
        assert_eq!((r.images, r.crops, r.shards), (18, 54, 3));
        assert_eq!(r.ensemble_top1_agreement, one_go.ensemble_top1_agreement);
        assert_eq!(r.mean_entropy, one_go.mean_entropy);
        for (t, u) in r.teachers.iter().zip(&one_go.teachers) {
            assert!(t.top1_agreement.is_some());
            assert_eq!(t.top1_agreement, u.top1_agreement);
        }
    }
}

#[test]
fn inspect_and_verify_read_the_store_and_catch_corruption() {
    let f = fixture(2);
    let s = args(&f, "labels").resolve().unwrap();
    go(&s);
    let ins = inspect::inspect(&s.out, 4).unwrap();
    for name in meal_data::synth::class_names() {
        assert!(ins.text.contains(&name), "{}", ins.text);
    }
    assert_eq!(ins.entropies.len(), 60);
    assert_eq!(ins.classes.iter().map(|c| c.crops).sum::<u64>(), 60);
    assert!(ins.classes.iter().all(|c| c.images == 2));
    let png = f.root.join("h.png");
    inspect::write_histograms(&ins, 10, "labels", &png).unwrap();
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (960, 400));
    let h = inspect::histogram(&ins.confidences, 0.0, 1.0, inspect::HIST_BINS);
    assert_eq!(h.iter().sum::<u64>(), 60);
    assert!(ins.text.contains("top-3)"), "{}", ins.text);
    assert!(!ins.text.contains("of 10 classes"), "{}", ins.text);
    // a table of 3 classes: those of lowest top-1 agreement, in that order, said so
    let short = inspect::inspect_with(&s.out, 0, Some(3)).unwrap().text;
    let table: Vec<&str> = short
        .lines()
        .skip_while(|l| !l.contains("label entropy"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.contains("of 10 classes"))
        .collect();
    assert_eq!(table.len(), 3, "{short}");
    let agree: Vec<f64> = table
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    let mut all: Vec<f64> = ins
        .classes
        .iter()
        .map(|r| r.agree as f64 / r.crops.max(1) as f64)
        .collect();
    all.sort_by(f64::total_cmp);
    for (a, b) in agree.iter().zip(&all) {
        assert!((a - b).abs() < 1e-4, "{short}");
    }
    assert!(
        short.contains("(3 of 10 classes, those of lowest top-1 agreement"),
        "{short}"
    );
    // a top-2 store's rows show its two kept classes, not a third of the mass spread
    // over the classes it never stored
    let mut a = args(&f, "top2");
    a.encoding = Some("topk:2".into());
    let top2 = a.resolve().unwrap();
    go(&top2);
    let text = inspect::inspect(&top2.out, 3).unwrap().text;
    let rows = text
        .split_once("top-2)\n")
        .unwrap_or_else(|| panic!("{text}"))
        .1;
    assert_eq!(rows.lines().count(), 3, "{text}");
    for row in rows.lines() {
        let names = meal_data::synth::class_names();
        let shown = row
            .split_whitespace()
            .filter(|w| {
                w.rsplit_once(':')
                    .is_some_and(|(n, p)| names.iter().any(|c| c == n) && p.parse::<f32>().is_ok())
            })
            .count();
        assert_eq!(shown, 2, "{row}");
    }
    assert!(inspect::verify(&s.out).unwrap().starts_with("ok"));
    // a shard file copied in, unlisted: the store is intact, the copy is named
    std::fs::copy(
        s.out.join("shard-000000.parquet"),
        s.out.join("shard-000009.parquet"),
    )
    .unwrap();
    // (and one of no name a writer gives, which a rerun leaves: said apart)
    std::fs::copy(
        s.out.join("shard-000000.parquet"),
        s.out.join("shard-99.parquet"),
    )
    .unwrap();
    let text = inspect::verify(&s.out).unwrap();
    assert!(
        text.starts_with("ok")
            && text.contains("does not list (1): shard-000009.parquet")
            && text.contains("shard-000009.parquet (not part of the store: a reader globbing shard-* would read them, take the manifest's list; a rerun of `meal-precompute run` here removes them")
            && text.contains("does not list (1): shard-99.parquet (not part of the store: a reader globbing shard-* would read them, take the manifest's list; no name a shard is written under: a rerun leaves them)"),
        "{text}"
    );
    std::fs::remove_file(s.out.join("shard-000009.parquet")).unwrap();
    std::fs::remove_file(s.out.join("shard-99.parquet")).unwrap();
    // flip one byte in the middle of a shard
    let shard = s.out.join("shard-000001.parquet");
    let mut b = std::fs::read(&shard).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&shard, b).unwrap();
    let e = inspect::verify(&s.out).unwrap_err();
    assert!(format!("{e:#}").contains("shard-000001.parquet"), "{e:#}");
    // inspect does not print its altered figures as measured
    let e = inspect::inspect(&s.out, 0)
        .err()
        .expect("inspect of a damaged shard");
    assert!(format!("{e:#}").contains("shard-000001.parquet"), "{e:#}");
}

/// A rerun of a complete store writes no shard and leaves `report.json` as the run that
/// made the store wrote it (its time and bytes, not this rerun's zeros), unless that
/// report describes another state of the store.
#[test]
fn a_rerun_of_a_complete_store_keeps_its_report() {
    let f = fixture(1);
    let out = f.root.join("again");
    let run = || {
        let o = cli_run(&f, "again");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run();
    let first = std::fs::read(out.join("report.json")).unwrap();
    let again = run();
    assert!(
        again.contains("this run: nothing to do, its 1 shards were there already"),
        "{again}"
    );
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), first);
    // a report of another state of the store (a partial one left by a failed finish)
    // is replaced
    std::fs::write(out.join("report.json"), br#"{"complete": false}"#).unwrap();
    run();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["complete"], serde_json::Value::Bool(true));
}

/// The `meal-precompute run` binary over the fixture's data and teachers into
/// `root/out` (2 crops an image, one thread).
pub(super) fn cli_run(f: &Fixture, out: &str) -> std::process::Output {
    cli_run_with(f, out, &[])
}

/// [`cli_run`] with `extra` flags.
pub(super) fn cli_run_with(f: &Fixture, out: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meal-precompute"));
    cmd.arg("run")
        .arg("--data")
        .arg(&f.data)
        .arg("--out")
        .arg(f.root.join(out))
        .args(["--crops-per-image", "2", "--threads", "1"])
        .args(extra);
    for t in &args(f, out).teacher {
        cmd.arg("--teacher").arg(t);
    }
    cmd.output().unwrap()
}

/// `merge` leaves the store's `report.json`, as a run on one machine does: the store's
/// figures, and the parts' runs summed.
#[test]
fn merge_writes_the_stores_report() {
    let f = fixture(2);
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    for w in ["0/2", "1/2"] {
        ok(cli_run_with(&f, "workers", &["--worker", w]));
    }
    ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_meal-precompute"))
            .arg("merge")
            .arg("--data")
            .arg(&f.data)
            .arg("--out")
            .arg(f.root.join("workers"))
            .output()
            .unwrap(),
    );
    ok(cli_run(&f, "one"));
    let report = |out: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(f.root.join(out).join("report.json")).unwrap())
            .unwrap()
    };
    let (merged, one) = (report("workers"), report("one"));
    for k in [
        "images",
        "crops",
        "shards",
        "complete",
        "teachers",
        "ensemble_top1_agreement",
        "images_labelled",
        "crops_labelled",
        "shards_written",
        "bytes_written",
    ] {
        assert_eq!(merged[k], one[k], "{k}");
    }
}
