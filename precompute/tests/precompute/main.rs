//! meal-precompute end to end on a tiny dataset with two tiny random-weight teachers at
//! different input configs: stored labels equal the ensemble computed directly on the
//! replayed crops; interrupt + resume and two workers + merge give the bytes of one
//! uninterrupted run; bad images are skipped and reported (or fail); a changed dataset
//! or config is refused; inspect and verify read the result.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, D};
use meal_data::{
    decode_file, CropSampler, CropSpec, Dataset, Filter, LinkPolicy, Normalize, Replayer, RrcParams,
};
use meal_models::ensemble::{Crops, Ensemble, Teacher};
use meal_models::ResNet;
use meal_precompute::config::{Pair, RunArgs, Settings};
use meal_precompute::{inspect, run};
use meal_store::LabelStore;

mod bad_files;
mod refusals;
mod runs;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    t1: PathBuf,
    t2: PathBuf,
}

fn fixture(per_class: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let cfg = meal_data::synth::SynthConfig {
        seed: 3,
        train_per_class: per_class,
        val_per_class: 0,
        min_side: 24,
        max_side: 40,
        quality: 90,
    };
    meal_data::synth::generate(&root.join("data"), &cfg, || {}).unwrap();
    let t1 = root.join("t1.safetensors");
    let t2 = root.join("t2.safetensors");
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 1)
        .unwrap()
        .save(&t1)
        .unwrap();
    ResNet::from_preset("demo_resnet10", 10, &Device::Cpu, 2)
        .unwrap()
        .save(&t2)
        .unwrap();
    Fixture {
        data: root.join("data/train"),
        root,
        _dir: dir,
        t1,
        t2,
    }
}

fn args(f: &Fixture, out: &str) -> RunArgs {
    RunArgs {
        data: Some(f.data.clone()),
        out: Some(f.root.join(out)),
        teacher: vec![
            format!("demo_tiny={},size=16", f.t1.display()),
            format!(
                "demo_resnet10={},size=20,filter=bicubic,mean=0.5:0.5:0.5,std=0.25:0.25:0.25",
                f.t2.display()
            ),
        ],
        crops_per_image: Some(3),
        scale: Some(Pair([0.25, 1.0])),
        seed: Some(7),
        batch: Some(8),
        threads: Some(2),
        samples_per_shard: Some(7),
        images_per_row_group: Some(3),
        ..Default::default()
    }
}

fn go(s: &Settings) -> meal_precompute::report::RunReport {
    run::run(s, &AtomicBool::new(false)).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("shard-") || n == "images.parquet" || n == "manifest.json")
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn stored_labels_are_the_ensemble_of_the_replayed_crops() {
    let f = fixture(3);
    let s = args(&f, "labels").resolve().unwrap();
    let r = go(&s);
    assert!(r.complete);
    assert_eq!((r.images, r.crops, r.shards_written), (30, 90, 5));
    let store = LabelStore::open(&s.out).unwrap();
    let v = store.verify().unwrap();
    assert_eq!(v.rows, 90);
    // the reference: each teacher alone, batch 1, on the crop replayed at its own spec
    let dev = Device::Cpu;
    let m1 = ResNet::from_preset("demo_tiny", 10, &dev, 0).unwrap();
    m1.load_weights(&f.t1, Default::default()).unwrap();
    let m2 = ResNet::from_preset("demo_resnet10", 10, &dev, 0).unwrap();
    m2.load_weights(&f.t2, Default::default()).unwrap();
    let spec1 = CropSpec::new(16, Filter::Bilinear, Normalize::default()).unwrap();
    let spec2 = CropSpec::new(
        20,
        Filter::Bicubic,
        Normalize {
            mean: [0.5; 3],
            std: [0.25; 3],
        },
    )
    .unwrap();
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let sampler = CropSampler::new(7, RrcParams::new((0.25, 1.0), (0.75, 4.0 / 3.0)).unwrap());
    let mut rep = Replayer::default();
    let mut worst = 0f32;
    for smp in ds.samples() {
        let img = decode_file(&ds.full_path(smp)).unwrap();
        let crops = store.crops(smp.id).unwrap();
        assert_eq!(crops.len(), 3);
        for (k, c) in crops.iter().enumerate() {
            assert_eq!(c.crop_id as usize, k);
            assert_eq!(
                c.record,
                sampler.crop(smp.id, k as u32, img.width, img.height)
            );
            let mut mean = vec![0f32; 10];
            for (m, spec) in [(&m1, &spec1), (&m2, &spec2)] {
                let mut x = vec![0f32; spec.len()];
                rep.replay(&img, &c.record, spec, &mut x, Path::new(&smp.path))
                    .unwrap();
                let s = spec.size as usize;
                let x = Tensor::from_vec(x, (1, 3, s, s), &dev).unwrap();
                let p = candle_nn::ops::softmax(&m.forward_t(&x, false).unwrap(), D::Minus1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in mean.iter_mut().zip(p) {
                    *a += b / 2.0;
                }
            }
            let got = store.dense(&c.label);
            for (g, w) in got.iter().zip(&mean) {
                // dense labels are float16: relative rounding 2^-11
                let e = (g - w).abs();
                assert!(
                    e <= w * 1e-3 + 1e-6,
                    "sample {} crop {k}: {g} vs {w}",
                    smp.id
                );
                worst = worst.max(e);
            }
        }
    }
    assert!(worst > 0.0, "float16 storage should round something");
    // the report's agreement figures are over the same 90 crops
    assert_eq!(r.teachers.len(), 2);
    assert!((0.0..=1.0).contains(&r.ensemble_top1_agreement));
    let m = store.manifest();
    assert_eq!(m.config.teachers[1].filter, "bicubic");
    assert_eq!(m.config.teachers[1].input_size, 20);
}

#[test]
fn a_crop_label_does_not_depend_on_its_batch_neighbours() {
    let f = fixture(1);
    let dev = Device::Cpu;
    let spec = CropSpec::new(16, Filter::Bilinear, Normalize::default()).unwrap();
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let ens = Ensemble::new(vec![
        Teacher::load("demo_tiny", &f.t1, &classes, spec, &dev, DType::F32).unwrap(),
        Teacher::load("demo_resnet10", &f.t2, &classes, spec, &dev, DType::F32).unwrap(),
    ])
    .unwrap();
    assert_eq!(
        ens.specs().len(),
        1,
        "teachers with one spec share the buffer"
    );
    let rows = 11;
    let x: Vec<f32> = (0..rows * spec.len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = [Crops::from(x.as_slice())];
    let all = ens.soft_labels(&x, rows, 11).unwrap();
    let ones = ens.soft_labels(&x, rows, 1).unwrap();
    let threes = ens.soft_labels(&x, rows, 3).unwrap();
    for other in [&ones, &threes] {
        let d = all
            .probs
            .iter()
            .zip(&other.probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-5, "batch composition moved a label by {d}");
    }
    // a stop between chunks gives the rows up (a Ctrl-C does not wait for every chunk of
    // one image's crops); unset, the same labels as soft_labels
    let stop = AtomicBool::new(true);
    assert!(ens.submit_until(&x, rows, 3, &stop).unwrap().is_none());
    stop.store(false, std::sync::atomic::Ordering::SeqCst);
    let sub = ens.submit_until(&x, rows, 3, &stop).unwrap().unwrap();
    assert_eq!(ens.finish(sub).unwrap().probs, threes.probs);
}

#[test]
fn eight_bit_crops_give_the_labels_of_their_normalized_floats() {
    // precompute hands the teachers 8-bit levels (normalised on their device); the labels
    // must be those of the loader's own f32 crops, bit for bit
    let f = fixture(1);
    let dev = Device::Cpu;
    let norm = Normalize {
        mean: [0.5, 0.4, 0.3],
        std: [0.2, 0.3, 0.25],
    };
    let spec = CropSpec::new(16, Filter::Bilinear, norm).unwrap();
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let ens = Ensemble::new(vec![
        Teacher::load("demo_tiny", &f.t1, &classes, spec, &dev, DType::F32).unwrap(),
        Teacher::load("demo_resnet10", &f.t2, &classes, spec, &dev, DType::F32).unwrap(),
    ])
    .unwrap();
    let rows = 5;
    let levels: Vec<u8> = (0..rows * spec.len())
        .map(|i| ((i * 7919) % 256) as u8)
        .collect();
    let lut = norm.lut();
    let plane = spec.len() / 3;
    let floats: Vec<f32> = levels
        .iter()
        .enumerate()
        .map(|(i, &v)| lut[(i / plane) % 3][v as usize])
        .collect();
    let a = ens.soft_labels(&[Crops::Levels(&levels)], rows, 2).unwrap();
    let b = ens
        .soft_labels(&[Crops::Normalized(&floats)], rows, 2)
        .unwrap();
    assert!(a
        .probs
        .iter()
        .zip(&b.probs)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(a.teacher_top1, b.teacher_top1);
    let e = ens
        .soft_labels(&[Crops::Levels(&levels[1..])], rows, 2)
        .unwrap_err();
    assert!(e.to_string().contains("need"), "{e}");
}

/// A lower teacher precision (`--dtype f16`, and `bf16` where the CPU has AVX512-BF16):
/// softmax stays f32, the manifest records the dtype, the report measures the labels
/// against f32 on the first batch, and the stored labels stay within the dtype's reach
/// of an f32 store of the same crops.
#[test]
fn lower_precision_teachers_label_close_to_f32_and_report_the_error() {
    let f = fixture(2);
    let mut a = args(&f, "f32");
    a.dtype = Some("f32".into());
    let s32 = a.resolve().unwrap();
    let r32 = go(&s32);
    assert!(r32.dtype_check.is_none() && r32.dtype == "f32");
    let mut dtypes = vec!["f16"];
    if meal_models::ops::bf16::available() {
        dtypes.push("bf16");
    }
    for dt in dtypes {
        let mut b = args(&f, dt);
        b.dtype = Some(dt.into());
        let s16 = b.resolve().unwrap();
        let r16 = go(&s16);
        assert_eq!(r16.dtype, dt);
        let c = r16
            .dtype_check
            .clone()
            .expect("a lower-precision run reports its error against f32");
        assert_eq!(c.crops, 6); // the first batch: 8 / 3 = 2 images of 3 crops
                                // f16 keeps 11 significant bits, bf16 8: probabilities move by ~1e-3 on these
                                // tiny random teachers; the bound is an order above that, far below a changed
                                // label
        assert!(c.max_abs_diff > 0.0 && c.max_abs_diff < 2e-2, "{dt}: {c:?}");
        assert!(c.mean_tv < 2e-2 && c.top1_agreement > 0.8, "{dt}: {c:?}");
        let m = meal_store::Manifest::read(&s16.out).unwrap();
        assert!(m.config.teachers.iter().all(|t| t.dtype == dt));
        let (x, y) = (
            LabelStore::open(&s32.out).unwrap(),
            LabelStore::open(&s16.out).unwrap(),
        );
        let mut worst = 0f32;
        let (mut p, mut q) = (vec![0f32; 10], vec![0f32; 10]);
        for id in 0..20 {
            let (a, b) = (x.view(id).unwrap(), y.view(id).unwrap());
            assert_eq!(a.len(), b.len());
            for i in 0..a.len() {
                a.dense_into(i, &mut p);
                b.dense_into(i, &mut q);
                for (u, v) in p.iter().zip(&q) {
                    worst = worst.max((u - v).abs());
                }
            }
        }
        assert!(
            worst > 0.0 && worst < 2e-2,
            "worst |p_{dt} - p_f32| = {worst}"
        );
    }
    // a resume with another dtype is refused: the labels would differ
    let mut c2 = args(&f, "f16");
    c2.dtype = Some("f32".into());
    let e = run::run(&c2.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{e:#}").contains("teachers[0].dtype"), "{e:#}");
    // bf16 on a CPU without AVX512-BF16: refused up front, saying why and what to use
    if !meal_models::ops::bf16::available() {
        let mut d = args(&f, "bf16");
        d.dtype = Some("bf16".into());
        let e = run::run(&d.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("--dtype bf16") && e.contains("AVX512-BF16"),
            "{e}"
        );
    }
}

/// A teacher trained on more classes than the data's, in another order (a 1000-class
/// ImageNet teacher labelling a subset), named by a `classes=` list: each class's
/// probability is the softmax over the data's logits, taken by name; the manifest
/// records the logits taken, and a resume with another list is another teacher.
#[test]
fn a_teacher_of_more_classes_labels_a_subset_by_name() {
    let f = fixture(1);
    let dev = Device::Cpu;
    // the teacher's logit order: the data's classes reversed, two others among them
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    let data_classes = ds.classes().to_vec();
    let mut logits: Vec<String> = data_classes.iter().rev().cloned().collect();
    logits.insert(3, "other_a".into());
    logits.push("other_b".into());
    let t = f.root.join("wide.safetensors");
    let wide = ResNet::from_preset("demo_tiny", 12, &dev, 5).unwrap();
    wide.save(&t).unwrap();
    let list = f.root.join("synsets.txt");
    std::fs::write(&list, logits.join("\n")).unwrap();
    let mut a = args(&f, "labels");
    a.teacher = vec![format!(
        "demo_tiny={},size=16,classes={}",
        t.display(),
        list.display()
    )];
    let s = a.clone().resolve().unwrap();
    assert!(go(&s).complete);
    let store = LabelStore::open(&s.out).unwrap();
    let rows: Vec<usize> = data_classes
        .iter()
        .map(|c| logits.iter().position(|l| l == c).unwrap())
        .collect();
    assert_eq!(
        store.manifest().config.teachers[0].logits.as_ref(),
        Some(&rows)
    );
    let spec = CropSpec::new(16, Filter::Bilinear, Normalize::default()).unwrap();
    let idx = Tensor::new(
        rows.iter()
            .map(|&r| r as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        &dev,
    )
    .unwrap();
    let mut rep = Replayer::default();
    for smp in ds.samples() {
        let img = decode_file(&ds.full_path(smp)).unwrap();
        for c in store.crops(smp.id).unwrap().iter() {
            let mut x = vec![0f32; spec.len()];
            rep.replay(&img, &c.record, &spec, &mut x, Path::new(&smp.path))
                .unwrap();
            let x = Tensor::from_vec(x, (1, 3, 16, 16), &dev).unwrap();
            let z = wide.forward_t(&x, false).unwrap().index_select(&idx, 1);
            let want = candle_nn::ops::softmax(&z.unwrap(), D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = store.dense(&c.label);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= w * 1e-3 + 1e-6, "{g} vs {w}");
            }
        }
    }
    // inspect says the teacher's classes were taken by name
    let text = inspect::inspect(&s.out, 0).unwrap().text;
    assert!(
        text.contains(&format!(
            "classes taken by name, the data's class i its logit [{}, ...]",
            rows[..5]
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        "{text}"
    );
    // another list for the same weights: another teacher
    logits.swap(0, 1);
    std::fs::write(&list, logits.join("\n")).unwrap();
    let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    // (the swap moved the last two of the data's classes: the first of them named)
    let first = &data_classes[8];
    assert!(
        msg.contains(&format!(
            "teachers[0].logits (class {first} is the teacher's logit"
        )),
        "{msg}"
    );
}
