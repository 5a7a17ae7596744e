//! The batch loader: determinism across thread counts, batch layout (images x crops),
//! rows equal to replaying each crop alone, bad-file policies, eval mode.

mod common;

use std::path::Path;
use std::sync::Arc;

use meal_data::{
    decode_file, epoch_order, BadFilePolicy, Batch, CropMode, CropSampler, CropSpec, Dataset,
    Filter, Loader, LoaderConfig, Normalize, PoolCrops, Replayer, RrcParams,
};

fn config(threads: usize, crops: CropMode, policy: BadFilePolicy) -> LoaderConfig {
    LoaderConfig {
        images_per_batch: 4,
        spec: CropSpec::new(16, Filter::Bilinear, Normalize::default()).unwrap(),
        extra_specs: Vec::new(),
        crops,
        prefetch: 2,
        threads,
        policy,
        drop_last: false,
        pixels: meal_data::PixelFormat::Normalized,
    }
}

fn pool(pass: u64) -> CropMode {
    let sampler = CropSampler::new(11, RrcParams::default());
    CropMode::Plan(Arc::new(PoolCrops::pass(sampler, 5, 3, pass).unwrap()))
}

fn load(ds: &Arc<Dataset>, order: Vec<u32>, cfg: LoaderConfig) -> Vec<Batch> {
    Loader::new(Arc::clone(ds), order, cfg)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn same_batches_with_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 3);
    let order = epoch_order(ds.len(), 42, 1, true);
    let a = load(&ds, order.clone(), config(1, pool(1), BadFilePolicy::Fail));
    let b = load(&ds, order, config(2, pool(1), BadFilePolicy::Fail));
    assert_eq!(a.len(), 8, "30 images in batches of 4");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.rows, y.rows);
        assert!(x
            .data
            .iter()
            .zip(&y.data)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
    }
    // Another epoch: another order, the same crops of each image for the same pass.
    let c = load(
        &ds,
        epoch_order(ds.len(), 42, 2, true),
        config(2, pool(1), BadFilePolicy::Fail),
    );
    let first = |bs: &[Batch]| bs[0].rows.iter().map(|r| r.sample_id).collect::<Vec<_>>();
    assert_ne!(first(&a), first(&c));
    let find = |bs: &[Batch], id| {
        bs.iter()
            .flat_map(|b| &b.rows)
            .filter(|r| r.sample_id == id)
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(find(&a, 7), find(&c, 7));
}

#[test]
fn rows_are_images_times_crops_and_equal_replaying_each_crop_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 2);
    let mut cfg = config(2, pool(2), BadFilePolicy::Fail);
    // a second output of the same crops at another size, filter and normalisation
    let extra = CropSpec::new(
        11,
        Filter::Bicubic,
        Normalize {
            mean: [0.5; 3],
            std: [0.25; 3],
        },
    )
    .unwrap();
    cfg.extra_specs = vec![extra];
    let spec = cfg.spec;
    let batches = load(&ds, epoch_order(ds.len(), 3, 0, true), cfg);
    let sampler = CropSampler::new(11, RrcParams::default());
    let mut r = Replayer::default();
    let mut seen = 0;
    for b in &batches {
        assert_eq!(b.data.len(), b.rows.len() * spec.len());
        for (i, row) in b.rows.iter().enumerate() {
            // pass 2 of a pool of 5 with 3 crops per pass: ids 6, 7, 8 mod 5 = 1, 2, 3
            assert_eq!(row.crop_id, [1, 2, 3][i % 3], "crop ids of pass 2");
            if i % 3 > 0 {
                assert_eq!(
                    row.sample_id,
                    b.rows[i - 1].sample_id,
                    "an image's crops are contiguous"
                );
            }
            let s = ds.sample(row.sample_id).unwrap();
            assert_eq!(row.label, s.label);
            let img = decode_file(&ds.full_path(s)).unwrap();
            assert_eq!((row.image_width, row.image_height), (img.width, img.height));
            assert_eq!(
                row.record,
                sampler.crop(s.id, row.crop_id, img.width, img.height)
            );
            let mut alone = vec![0f32; spec.len()];
            r.replay(&img, &row.record, &spec, &mut alone, Path::new(&s.path))
                .unwrap();
            assert_eq!(
                &b.data[i * spec.len()..(i + 1) * spec.len()],
                alone.as_slice()
            );
            let mut alone = vec![0f32; extra.len()];
            r.replay(&img, &row.record, &extra, &mut alone, Path::new(&s.path))
                .unwrap();
            assert_eq!(
                &b.extra[0][i * extra.len()..(i + 1) * extra.len()],
                alone.as_slice()
            );
            seen += 1;
        }
    }
    assert_eq!(seen, ds.len() * 3);
}

#[test]
fn bad_files_are_skipped_and_listed_or_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 2);
    let bad = ds.sample(5).unwrap().clone();
    let bytes = std::fs::read(ds.full_path(&bad)).unwrap();
    std::fs::write(ds.full_path(&bad), &bytes[..bytes.len() / 3]).unwrap();
    let order: Vec<u32> = (0..ds.len() as u32).collect();

    let loader = Loader::new(
        Arc::clone(&ds),
        order.clone(),
        config(2, pool(0), BadFilePolicy::Skip),
    )
    .unwrap();
    let mut batches = Vec::new();
    let mut it = loader;
    for b in it.by_ref() {
        batches.push(b.unwrap());
    }
    let report = it.report();
    assert_eq!(report.images as usize, ds.len() - 1);
    assert_eq!(report.crops as usize, (ds.len() - 1) * 3);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].path, bad.path);
    // the reason says what failed, without the path the record names already
    let reason = &report.skipped[0].reason;
    assert!(
        reason.starts_with("cannot decode image") && !reason.contains(&bad.path),
        "{reason}"
    );
    // The batch holding the bad image is shorter and its data stays aligned with rows.
    let b1 = &batches[1];
    assert_eq!(b1.rows.len(), 9);
    assert!(b1.rows.iter().all(|r| r.sample_id != 5));
    assert_eq!(b1.data.len(), 9 * 3 * 16 * 16);
    let clean = load(&ds, vec![6, 7], config(1, pool(0), BadFilePolicy::Fail));
    assert_eq!(
        &b1.data[3 * 768..],
        clean[0].data.as_slice(),
        "rows after the gap moved up"
    );

    let mut failing =
        Loader::new(ds.clone(), order, config(2, pool(0), BadFilePolicy::Fail)).unwrap();
    let first_err = failing
        .by_ref()
        .find_map(|b| b.err())
        .expect("fail policy yields the error");
    assert!(first_err.to_string().contains(&bad.path), "{first_err}");
    assert!(
        failing.next().is_none(),
        "the loader stops after a fatal error"
    );
}

#[test]
fn eval_mode_is_one_centre_crop_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 1);
    let cfg = config(2, CropMode::Eval, BadFilePolicy::Fail);
    let spec = cfg.spec;
    let batches = load(&ds, epoch_order(ds.len(), 0, 0, false), cfg);
    let rows: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.sample_id))
        .collect();
    assert_eq!(rows, (0..10).collect::<Vec<_>>(), "unshuffled order");
    let s = ds.sample(4).unwrap();
    let img = decode_file(&ds.full_path(s)).unwrap();
    let mut want = vec![0f32; spec.len()];
    Replayer::default()
        .eval(&img, &spec, &mut want, Path::new("x"))
        .unwrap();
    assert_eq!(&batches[1].data[0..spec.len()], want.as_slice());
}

/// `levels` (one buffer per spec) through each spec's table, as a device would do it.
fn through_tables(levels: &[u8], spec: &CropSpec) -> Vec<f32> {
    let lut = spec.normalize.lut();
    let plane = (spec.size * spec.size) as usize;
    levels
        .iter()
        .enumerate()
        .map(|(i, &v)| lut[(i / plane) % 3][v as usize])
        .collect()
}

#[test]
fn raw_levels_through_the_table_are_the_normalized_crops() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 2);
    // a bad file too: the skipped image's slot must go from the bytes as from the floats
    let bad = ds.sample(2).unwrap().clone();
    std::fs::write(ds.full_path(&bad), b"not an image").unwrap();
    let extra = CropSpec::new(
        9,
        Filter::Bicubic,
        Normalize {
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.3, 0.25],
        },
    )
    .unwrap();
    for mode in [pool(1), CropMode::Eval] {
        let mut cfg = config(2, mode, BadFilePolicy::Skip);
        cfg.extra_specs = vec![extra];
        let spec = cfg.spec;
        let order = epoch_order(ds.len(), 5, 0, true);
        let floats = load(&ds, order.clone(), cfg.clone());
        cfg.pixels = meal_data::PixelFormat::Levels;
        let bytes = load(&ds, order, cfg);
        assert_eq!(floats.len(), bytes.len());
        for (f, b) in floats.iter().zip(&bytes) {
            assert_eq!(f.rows, b.rows);
            assert_eq!(f.skipped, b.skipped);
            assert!(b.data.is_empty() && b.extra.is_empty() && f.levels.is_empty());
            assert_eq!(b.levels.len(), 2, "one buffer per spec");
            assert_eq!(b.levels[0].len(), b.rows.len() * spec.len());
            assert_eq!(through_tables(&b.levels[0], &spec), f.data);
            assert_eq!(through_tables(&b.levels[1], &extra), f.extra[0]);
        }
        assert_eq!(floats.iter().map(|b| b.skipped.len()).sum::<usize>(), 1);
    }
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(1000, 1, 0, true);
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(1000, 1, 0, true));
    assert_ne!(a, epoch_order(1000, 1, 1, true));
    assert_ne!(a, epoch_order(1000, 2, 0, true));
    assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
}

#[test]
fn bad_config_is_refused_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 1);
    let mut cfg = config(1, pool(0), BadFilePolicy::Fail);
    cfg.images_per_batch = 0;
    let e = Loader::new(ds.clone(), vec![0], cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("batch"), "{e}");
    let e = Loader::new(ds, vec![999], config(1, pool(0), BadFilePolicy::Fail))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("999"), "{e}");
    let e = CropSpec::new(0, Filter::Bilinear, Normalize::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("size"), "{e}");
}

#[test]
fn synth_is_byte_identical_for_a_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let da = common::tiny_dataset(a.path(), 2);
    let db = common::tiny_dataset(b.path(), 2);
    assert_eq!(da.fingerprint(), db.fingerprint());
    for s in da.samples() {
        assert_eq!(
            std::fs::read(da.full_path(s)).unwrap(),
            std::fs::read(db.full_path(s)).unwrap(),
            "{}",
            s.path
        );
    }
    assert_eq!(da.classes().len(), 10);
}

/// synth over its own earlier output equals synth into an empty directory (a smaller
/// dataset leaves none of the larger one's images); over anyone else's files it is
/// refused, naming one, and deletes nothing.
#[test]
fn synth_over_its_own_output_equals_a_fresh_one_and_refuses_other_files() {
    use meal_data::synth::{generate, SynthConfig};
    let cfg = |per_class, seed| SynthConfig {
        seed,
        train_per_class: per_class,
        val_per_class: 1,
        min_side: 16,
        max_side: 20,
        quality: 80,
    };
    let (over, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(over.path(), &cfg(3, 1), || {}).unwrap();
    generate(over.path(), &cfg(1, 2), || {}).unwrap();
    generate(fresh.path(), &cfg(1, 2), || {}).unwrap();
    let open =
        |d: &Path| Dataset::open(&d.join("train"), meal_data::LinkPolicy::StayInside).unwrap();
    assert_eq!(
        open(over.path()).fingerprint(),
        open(fresh.path()).fingerprint()
    );
    assert_eq!(open(over.path()).len(), 10);

    let mine = over.path().join("train/notes.txt");
    std::fs::write(&mine, b"mine").unwrap();
    let e = generate(over.path(), &cfg(1, 2), || {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("notes.txt") && e.contains("not written by synth"),
        "{e}"
    );
    assert!(mine.exists() && over.path().join("synth.json").exists());
    std::fs::remove_file(&mine).unwrap();
    // a synth.json of the user's (no record synth wrote), or a pipe at a record's name
    // (its read blocked), is refused untouched
    let notes = tempfile::tempdir().unwrap();
    std::fs::write(notes.path().join("synth.json"), b"my own notes").unwrap();
    let e = generate(notes.path(), &cfg(1, 2), || {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("synth.json") && e.contains("a file of other contents"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(notes.path().join("synth.json")).unwrap(),
        b"my own notes"
    );
    let piped = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(
        piped
            .path()
            .join(".synth-writing.json")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = generate(piped.path(), &cfg(1, 2), || {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no regular file"), "{e}");

    // a file of synth's name is synth's only where its bytes are those synth wrote: an
    // image replaced by the user is neither removed (beyond the new count) nor replaced
    let img = over.path().join("train/cross_dots/cross_dots_00000.jpg");
    let theirs = std::fs::read(&img).unwrap();
    let other = std::fs::read(over.path().join("val/cross_dots/cross_dots_00000.jpg")).unwrap();
    std::fs::write(&img, &other).unwrap();
    for per_class in [0, 1] {
        let e = generate(over.path(), &cfg(per_class, 2), || {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cross_dots_00000.jpg") && e.contains("not the image synth wrote"),
            "{e}"
        );
        assert_eq!(std::fs::read(&img).unwrap(), other);
    }
    std::fs::write(&img, &theirs).unwrap();
    // an interrupted synth (its record of what it was writing, no synth.json) is taken
    // over; a directory of synth-named files with neither record is a user's
    std::fs::remove_file(over.path().join("synth.json")).unwrap();
    let record = serde_json::to_string(&[cfg(1, 2)]).unwrap();
    std::fs::write(over.path().join(".synth-writing.json"), &record).unwrap();
    generate(over.path(), &cfg(2, 2), || {}).unwrap();
    assert!(!over.path().join(".synth-writing.json").exists());
    assert_eq!(open(over.path()).len(), 20);
    // a rewrite with other settings interrupted halfway (some images the new
    // settings', the rest the old's, the record naming both): finished by a rerun with
    // either settings, each equal to a fresh synth of them
    for (then, now) in [(cfg(2, 2), cfg(2, 5)), (cfg(2, 2), cfg(2, 2))] {
        let (half, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(half.path(), &then, || {}).unwrap();
        generate(fresh.path(), &cfg(2, 5), || {}).unwrap();
        std::fs::remove_file(half.path().join("synth.json")).unwrap();
        let record = serde_json::to_string(&[cfg(2, 5), then.clone()]).unwrap();
        std::fs::write(half.path().join(".synth-writing.json"), &record).unwrap();
        for c in ["cross_dots", "disc_dots", "ring_dots"] {
            let f = format!("train/{c}/{c}_00000.jpg");
            std::fs::copy(fresh.path().join(&f), half.path().join(&f)).unwrap();
        }
        generate(half.path(), &now, || {}).unwrap();
        let again = tempfile::tempdir().unwrap();
        generate(again.path(), &now, || {}).unwrap();
        let (a, b) = (open(half.path()), open(again.path()));
        assert_eq!(a.fingerprint(), b.fingerprint());
        for x in a.samples() {
            assert_eq!(
                std::fs::read(a.full_path(x)).unwrap(),
                std::fs::read(b.full_path(x)).unwrap(),
                "{}",
                x.path
            );
        }
    }
    // a record whose settings could not have made a dataset (an edited side of 40000)
    // is no record: the images are refused, not re-rendered at that size
    std::fs::remove_file(over.path().join("synth.json")).unwrap();
    let mut huge = cfg(2, 2);
    huge.max_side = 40000;
    huge.min_side = 40000;
    std::fs::write(
        over.path().join(".synth-writing.json"),
        serde_json::to_string(&[huge]).unwrap(),
    )
    .unwrap();
    let e = generate(over.path(), &cfg(2, 2), || {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no settings synth could have used"), "{e}");
    let bare = tempfile::tempdir().unwrap();
    let precious = bare.path().join("train/cross_dots/cross_dots_00099.jpg");
    std::fs::create_dir_all(precious.parent().unwrap()).unwrap();
    std::fs::write(&precious, b"precious").unwrap();
    let e = generate(bare.path(), &cfg(1, 2), || {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cross_dots_00099.jpg") && e.contains("no synth.json beside it"),
        "{e}"
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
}

/// A plan that panics on one sample, as a bug in a plan (or a store behind it) would.
struct PanicsOn(u32);

impl meal_data::CropPlan for PanicsOn {
    fn crops_per_image(&self) -> usize {
        1
    }
    fn crops(
        &self,
        sample: &meal_data::Sample,
        width: u32,
        height: u32,
    ) -> meal_data::Result<Vec<(u32, meal_data::CropRecord)>> {
        assert_ne!(sample.id, self.0, "planted failure");
        let sampler = CropSampler::new(1, RrcParams::default());
        Ok(vec![(0, sampler.crop(sample.id, 0, width, height))])
    }
}

#[test]
fn a_panic_in_a_loader_thread_is_an_error_not_a_short_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let ds = common::tiny_dataset(dir.path(), 2);
    let cfg = config(
        2,
        CropMode::Plan(Arc::new(PanicsOn(9))),
        BadFilePolicy::Fail,
    );
    let got: Vec<_> = Loader::new(Arc::clone(&ds), (0..20).collect(), cfg)
        .unwrap()
        .collect();
    // batches 0 and 1 (samples 0-7) arrive, batch 2 holds sample 9: its panic ends the
    // epoch with an error that carries the message
    assert_eq!(got.len(), 3, "two batches, then the error");
    assert!(got[..2].iter().all(Result::is_ok));
    let err = got[2]
        .as_ref()
        .map(|_| ())
        .expect_err("the third item is the error")
        .to_string();
    assert!(err.contains("planted failure"), "{err}");
}
