//! Bad inputs met during a run: unreadable or changed images (skipped, or stopping the
//! run with its steps saved), a damaged shard named, an altered checkpoint refused on
//! resume.

use super::*;

/// `--on-bad-file` holds for the validation images too: `skip` leaves a bad file out of
/// the count (the same accuracy as without it), `fail` stops the run naming the file.
#[test]
fn the_bad_file_policy_applies_to_the_val_set() {
    let f = fixture();
    let val = f.root.join("data/val");
    let top1 = |a: TrainArgs| go(a).unwrap().history.last().unwrap().val_top1.unwrap();
    let mut a = args(&f, "clean");
    a.val = Some(val.clone());
    a.epochs = Some(1);
    let clean = top1(a.clone());
    let class = std::fs::read_dir(&val)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(class.join("zero.jpg"), b"").unwrap();
    a.out = Some(f.root.join("skip"));
    assert_eq!(top1(a.clone()), clean, "the empty file is not counted");
    // eval says so, in its JSON too (a script can tell a partial count)
    let model = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 1).unwrap();
    let w = f.root.join("tiny.safetensors");
    save_with(&model, &w, "bn1.running_mean", 0, 0.0);
    let out = eval_json(&val, &w);
    let (text, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("(1 unreadable image skipped, not counted)"),
        "{log}"
    );
    // --json's stdout is the object alone (a pipe into jq failed on the summary line)
    let json: serde_json::Value = serde_json::from_str(&text).expect(&text);
    let images = meal_data::Dataset::open(&val, meal_data::LinkPolicy::StayInside)
        .unwrap()
        .len() as u64;
    assert_eq!(json["skipped"], 1, "{json}");
    assert_eq!(json["images"], images - 1, "{json}");
    a.out = Some(f.root.join("fail"));
    a.on_bad_file = Some("fail".into());
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("zero.jpg"), "{e}");
    // found before training (its first bytes), not after the first epoch
    assert!(!f.root.join("fail/checkpoint").exists(), "{e}");

    // and for the training images precompute could not read (warned of and left out
    // under `skip`): `fail` stops before any step, naming the first
    let bad = f.root.join("bad");
    let mut files = Vec::new();
    for class in std::fs::read_dir(&f.data).unwrap().flatten() {
        let to = bad.join(class.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for img in std::fs::read_dir(class.path()).unwrap().flatten() {
            std::fs::copy(img.path(), to.join(img.file_name())).unwrap();
            files.push(to.join(img.file_name()));
        }
    }
    files.sort();
    std::fs::write(&files[0], b"not a jpeg").unwrap();
    let bad_labels = f.root.join("bad_labels");
    precompute(&bad, &bad_labels, &f.teachers);
    let mut a = args(&f, "bad-fail");
    a.data = Some(bad);
    a.labels = Some(bad_labels);
    a.on_bad_file = Some("fail".into());
    let e = format!("{:#}", go(a).unwrap_err());
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        e.contains("--on-bad-file fail: 1 images of --data have no labels") && e.contains(&name),
        "{e}"
    );
}

/// A shard damaged in place (same size, a NaN written over a stored probability) stops
/// the run at start naming the shard (its checksum), not a NaN loss later; and the
/// per-label test training applies to every label it reads (`distribution_error`, for
/// bytes changed after that check) finds the damaged crop.
#[test]
fn a_damaged_shard_of_the_right_size_is_named() {
    let f = fixture();
    let labels = f.root.join("labels_st");
    let s = meal_precompute::config::RunArgs {
        data: Some(f.data.clone()),
        out: Some(labels.clone()),
        teacher: f.teachers.clone(),
        crops_per_image: Some(4),
        format: Some("safetensors".into()),
        threads: Some(2),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    meal_precompute::run::run(&s, &AtomicBool::new(false)).unwrap();
    let shard = labels.join("shard-000000.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["prob"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 2].copy_from_slice(&0x7e00u16.to_le_bytes()); // f16 NaN
    std::fs::write(&shard, &bytes).unwrap();
    let mut a = args(&f, "damaged");
    a.labels = Some(labels.clone());
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("shard-000000.safetensors") && e.contains("checksum mismatch"),
        "{e}"
    );
    // bytes changed after the check: the per-crop test training applies to every label
    // it reads (run.rs) finds the NaN in the store's first crop
    let st = meal_store::LabelStore::open(&labels).unwrap();
    let crops = st.view(0).unwrap();
    let mut dense = vec![0f32; st.num_classes()];
    crops.dense_into(0, &mut dense);
    let why = meal_store::distribution_error(&dense).unwrap_err();
    assert!(
        matches!(why, meal_store::NotADistribution::Value(x) if x.is_nan()),
        "{why}"
    );
    drop(crops);
    drop(st);
    // a row breaking the format's rules, its checksum recorded (a third-party rewrite):
    // the label is read as it is used, and refused, naming the shard and the rule
    bytes[start..start + 2].copy_from_slice(&0x2c00u16.to_le_bytes()); // f16 1/16
    let flip = header["flip"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[flip] = 2;
    std::fs::write(&shard, &bytes).unwrap();
    let mpath = labels.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for s in m["shards"].as_array_mut().unwrap() {
        if s["file"] == "shard-000000.safetensors" {
            s["sha256"] = meal_store::sha256_hex(&bytes).into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let mut a = args(&f, "rule");
    a.labels = Some(labels.clone());
    a.epochs = Some(1);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("shard-000000.safetensors") && e.contains("flip 2 (0 or 1)"),
        "{e}"
    );
}

/// A checkpoint altered on disk is refused on resume, naming what: a weight changed in
/// place (it resumed silently into another run: state.json records each tensor file's
/// sha256); in a checkpoint without that record (earlier versions), a NaN weight (it
/// showed as a diverged run, with advice to lower --lr) and momentum buffers removed
/// (the resume went on without them, no longer the uninterrupted run); and state.json
/// without its record of the inputs (another label store was then accepted).
#[test]
fn an_altered_checkpoint_is_refused_on_resume() {
    let f = fixture();
    let mut a = args(&f, "run");
    a.max_steps = Some(1);
    assert!(go(a).unwrap().interrupted);
    let ck = f.root.join("run/checkpoint");
    let resume = || {
        let mut a = args(&f, "run");
        a.resume = Some(true);
        format!("{:#}", go(a).unwrap_err())
    };
    type Edit = Box<dyn Fn(&Path)>;
    let set_first = |p: &Path, name: &str, x: f32| {
        let mut sd = read_state_dict(p, &Device::Cpu).unwrap();
        let t = sd.get_mut(name).unwrap();
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[0] = x;
        *t = candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
        candle_core::safetensors::save(&sd, p).unwrap();
    };
    let cases: [(&str, Edit, &str); 8] = [
        (
            "student.safetensors",
            Box::new(move |p: &Path| set_first(p, "fc.bias", 50.0)),
            "its sha256 is not the one saved",
        ),
        (
            "optim.safetensors",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
            "optim.safetensors: missing",
        ),
        (
            "student.safetensors",
            Box::new(move |p: &Path| set_first(p, "fc.weight", f32::NAN)),
            "tensor fc.weight holds non-finite values",
        ),
        (
            "optim.safetensors",
            Box::new(|p: &Path| {
                let none: std::collections::HashMap<String, candle_core::Tensor> =
                    Default::default();
                candle_core::safetensors::save(&none, p).unwrap();
            }),
            "optim.safetensors holds no momentum for",
        ),
        (
            "state.json",
            Box::new(|p: &Path| {
                let mut st: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                st.as_object_mut().unwrap().remove("inputs");
                std::fs::write(p, serde_json::to_vec(&st).unwrap()).unwrap();
            }),
            "records no inputs",
        ),
        (
            "state.json",
            Box::new(|p: &Path| {
                let mut st: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                st["files"]["../../outside.bin"] = "00".into();
                std::fs::write(p, serde_json::to_vec(&st).unwrap()).unwrap();
            }),
            "../../outside.bin: not a file name of the checkpoint's",
        ),
        // an epoch past the run's total: altered, not advice to give more --epochs
        // (which led to this refusal next)
        (
            "state.json",
            Box::new(|p: &Path| {
                let mut st: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                st["epoch"] = 5.into();
                std::fs::write(p, serde_json::to_vec(&st).unwrap()).unwrap();
            }),
            "state.json is inconsistent (epoch 5 of the run's 2, step 1): it was altered",
        ),
        // an epoch within it, its log's epochs missing
        (
            "state.json",
            Box::new(|p: &Path| {
                let mut st: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                st["epoch"] = 1.into();
                std::fs::write(p, serde_json::to_vec(&st).unwrap()).unwrap();
            }),
            "state.json is inconsistent (epoch 1 of the run's 2, step 1 of an epoch's",
        ),
    ];
    let state = ck.join("state.json");
    let recorded = std::fs::read(&state).unwrap();
    for (i, (file, edit, want)) in cases.into_iter().enumerate() {
        // cases 2 and 3: a checkpoint without the files' record
        if (2..4).contains(&i) {
            let mut st: serde_json::Value = serde_json::from_slice(&recorded).unwrap();
            assert!(st.as_object_mut().unwrap().remove("files").is_some());
            std::fs::write(&state, serde_json::to_vec(&st).unwrap()).unwrap();
        }
        let p = ck.join(file);
        let good = std::fs::read(&p).unwrap();
        edit(&p);
        let e = resume();
        assert!(e.contains(want), "{file}: {e}");
        std::fs::write(&p, good).unwrap();
        std::fs::write(&state, &recorded).unwrap();
    }
    // restored, it resumes
    let mut a = args(&f, "run");
    a.resume = Some(true);
    assert!(!go(a).unwrap().interrupted);
}

/// An image unreadable at training time under `fail` (damaged after its labels were
/// made) stops the run with the epoch's steps saved, as a stop saves them (they were
/// lost); restored, `--resume` ends as the uninterrupted run.
#[test]
fn a_bad_file_mid_run_keeps_the_steps_done() {
    let f = fixture();
    let mut a = args(&f, "whole");
    a.on_bad_file = Some("fail".into());
    go(a.clone()).unwrap();
    let files = image_files(&f);
    let victim = &files[files.len() / 2];
    let good = std::fs::read(victim).unwrap();
    // the same size: the dataset's fingerprint (and the store's check of it) unchanged
    std::fs::write(victim, vec![0u8; good.len()]).unwrap();
    a.out = Some(f.root.join("stopped"));
    let e = format!("{:#}", go(a.clone()).unwrap_err());
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        e.contains(&name) && e.contains("saved in the checkpoint"),
        "{e}"
    );
    assert!(f.root.join("stopped/checkpoint/state.json").exists());
    std::fs::write(victim, &good).unwrap();
    a.resume = Some(true);
    go(a).unwrap();
    let read = |run: &str| std::fs::read(f.root.join(run).join("student.safetensors")).unwrap();
    assert!(read("whole") == read("stopped"), "the resumed run differs");
}

/// A training image replaced by another of the same byte count (the dataset's
/// fingerprint unchanged) but another size is not replayed with the old image's crops
/// and labels: its decoded size is checked against the store's record of it.
#[test]
fn an_image_of_another_size_than_the_stores_is_refused() {
    let f = fixture();
    let mut files = image_files(&f);
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let size = |p: &Path| {
        let im = meal_data::decode::decode_file(p).unwrap();
        (im.width, im.height)
    };
    let victim = files.last().unwrap().clone();
    let donor = files
        .iter()
        .find(|p| size(p) != size(&victim))
        .expect("an image of another size");
    // the donor's JPEG, padded after its end marker to the victim's byte count
    let mut bytes = std::fs::read(donor).unwrap();
    bytes.resize(std::fs::metadata(&victim).unwrap().len() as usize, 0);
    std::fs::write(&victim, bytes).unwrap();
    // under the default `skip` it is left out, as a file that does not decode, and
    // counted in each epoch's figures (metrics.jsonl, summary.csv's last column)
    let r = go(args(&f, "swapped-skip")).unwrap();
    assert_eq!(r.history.len(), 2);
    assert!(r.history.iter().all(|m| m.skipped == 1), "{:?}", r.history);
    let csv = std::fs::read_to_string(f.root.join("swapped-skip/summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",skipped"), "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.ends_with(",1")), "{csv}");
    let mut a = args(&f, "swapped");
    a.on_bad_file = Some("fail".into());
    let e = format!("{:#}", go(a).unwrap_err());
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        e.contains(&name) && e.contains("the file changed since its labels were made"),
        "{e}"
    );
}

/// The training images of `f`, sorted by path.
fn image_files(f: &Fx) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&f.data)
        .unwrap()
        .flatten()
        .flat_map(|c| {
            std::fs::read_dir(c.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
        })
        .collect();
    files.sort();
    files
}
