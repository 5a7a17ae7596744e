//! The synthetic demo dataset: a deterministic generator of an ImageFolder of JPEGs,
//! `train/` and `val/`, 10 classes = 5 shapes x 2 fill textures: a bright textured object
//! on a dark low-contrast gradient with thin strokes behind it, random position, scale,
//! rotation and noise.
//!
//! Shape is learnt by a small CNN within an epoch; texture (dots vs stripes, fine at 64
//! px) takes many images, so a student trained on few of them stays well below teachers
//! trained on more - the stage for distillation (docs/DATA.md says why it looks so).
//! Every image is a pure function of (seed, split, class, index): the same seed gives
//! byte-identical files, and the first N images of a class do not depend on the count.

use std::fs;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::{expand_seed, u64_to_unit};
use crate::error::{DataError, Result};

const DOMAIN_SYNTH: u64 = 0x7379_6e74; // "synt"

/// The five shapes.
const SHAPES: [&str; 5] = ["cross", "disc", "ring", "square", "triangle"];
/// The two fill textures.
const TEXTURES: [&str; 2] = ["dots", "stripes"];

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Training images per class.
    pub train_per_class: u32,
    /// Validation images per class.
    pub val_per_class: u32,
    /// Smallest image side in pixels.
    pub min_side: u32,
    /// Largest image side in pixels.
    pub max_side: u32,
    /// JPEG quality (1-100).
    pub quality: u8,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            train_per_class: 160,
            val_per_class: 50,
            min_side: 72,
            max_side: 112,
            quality: 90,
        }
    }
}

/// The class names, sorted (so the label index is the position, as ImageFolder).
pub fn class_names() -> Vec<String> {
    let mut v: Vec<String> = SHAPES
        .iter()
        .flat_map(|s| TEXTURES.iter().map(move |t| format!("{s}_{t}")))
        .collect();
    v.sort();
    v
}

struct Draw(ChaCha8Rng);

impl Draw {
    fn u(&mut self) -> f64 {
        u64_to_unit(self.0.next_u64())
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.u()
    }
    fn int(&mut self, lo: u32, hi_incl: u32) -> u32 {
        lo + ((self.u() * (hi_incl - lo + 1) as f64) as u32).min(hi_incl - lo)
    }
    fn colour(&mut self) -> [f64; 3] {
        [
            self.range(0.0, 255.0),
            self.range(0.0, 255.0),
            self.range(0.0, 255.0),
        ]
    }
}

/// Whether local coordinates `(u, v)` (unit = shape radius) are inside `shape`.
fn inside(shape: usize, u: f64, v: f64) -> bool {
    match SHAPES[shape] {
        "cross" => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        "disc" => u * u + v * v <= 1.0,
        "ring" => {
            let r2 = u * u + v * v;
            (0.3..=1.0).contains(&r2)
        }
        "square" => u.abs().max(v.abs()) <= 0.8,
        _ => v >= -0.5 && 3f64.sqrt() * u.abs() + v <= 1.0, // triangle
    }
}

/// Render one image as RGB8.
fn render(class: &str, rng: &mut Draw, cfg: &SynthConfig) -> (u32, u32, Vec<u8>) {
    let (shape_name, texture) = class
        .split_once('_')
        .expect("class names are shape_texture");
    let shape = SHAPES
        .iter()
        .position(|s| *s == shape_name)
        .expect("known shape");
    let dots = texture == "dots";
    let w = rng.int(cfg.min_side, cfg.max_side);
    let h = rng.int(cfg.min_side, cfg.max_side);
    let side = w.min(h) as f64;
    // background: a dark, low-contrast gradient along a random direction, so the
    // object (bright fills) stands out and a small CNN starts learning at once
    let bg0 = rng.colour().map(|v| v * 0.4);
    let bg1 = bg0.map(|v| (v + rng.range(-30.0, 30.0)).clamp(0.0, 102.0));
    let ga = rng.range(0.0, std::f64::consts::TAU);
    let (gx, gy) = (ga.cos(), ga.sin());
    // clutter: thin strokes behind the object (never one of the class shapes)
    let n_clutter = rng.int(1, 4);
    let clutter: Vec<(f64, f64, f64, f64, f64, [f64; 3])> = (0..n_clutter)
        .map(|_| {
            (
                rng.range(0.0, w as f64),
                rng.range(0.0, h as f64),
                rng.range(0.15, 0.4) * side,
                rng.range(0.0, std::f64::consts::TAU),
                rng.range(0.01, 0.025) * side,
                rng.colour(),
            )
        })
        .collect();
    // the object
    let cx = rng.range(0.3, 0.7) * w as f64;
    let cy = rng.range(0.3, 0.7) * h as f64;
    let r = rng.range(0.22, 0.36) * side;
    let rot = rng.range(0.0, std::f64::consts::TAU);
    let (ca, sa) = (rot.cos(), rot.sin());
    // bright fill, its texture a darker shade of it
    let fill_a = rng.colour().map(|v| 150.0 + v * 0.41);
    let fill_b = fill_a.map(|v| v * 0.5);
    let freq = rng.range(2.0, 3.2);
    let tex_rot = rng.range(0.0, std::f64::consts::PI);
    let (tc, ts) = (tex_rot.cos(), tex_rot.sin());
    let noise = rng.range(4.0, 18.0);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = ((px / w as f64 - 0.5) * gx + (py / h as f64 - 0.5) * gy + 0.5).clamp(0.0, 1.0);
            let mut col = [0.0; 3];
            for c in 0..3 {
                col[c] = bg0[c] * (1.0 - t) + bg1[c] * t;
            }
            for &(qx, qy, len, qa, half_width, qc) in &clutter {
                // distance along and across the stroke
                let (dx, dy) = (px - qx, py - qy);
                let (along, across) = (
                    dx * qa.cos() + dy * qa.sin(),
                    -dx * qa.sin() + dy * qa.cos(),
                );
                if along.abs() <= len / 2.0 && across.abs() <= half_width.max(0.7) {
                    col = qc;
                }
            }
            let (dx, dy) = ((px - cx) / r, (py - cy) / r);
            let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
            if inside(shape, u, v) {
                let (tu, tv) = (u * tc + v * ts, -u * ts + v * tc);
                let on = if dots {
                    let (fu, fv) = (
                        (tu * freq).rem_euclid(1.0) - 0.5,
                        (tv * freq).rem_euclid(1.0) - 0.5,
                    );
                    fu * fu + fv * fv < 0.09
                } else {
                    (tu * freq * std::f64::consts::PI).sin() > 0.0
                };
                col = if on { fill_a } else { fill_b };
            }
            for v in col {
                let n = (rng.u() + rng.u() - 1.0) * noise;
                data.push((v + n).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    (w, h, data)
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthSummary {
    /// The settings used.
    pub config: SynthConfig,
    /// Class names (label order).
    pub classes: Vec<String>,
    /// Files written under `train/`.
    pub train_images: u64,
    /// Files written under `val/`.
    pub val_images: u64,
    /// What this run replaced of an earlier synth's output in the same directory (its
    /// images beyond this one's counts removed, or other settings): a label store made
    /// from that dataset no longer matches. Not recorded in `synth.json`.
    #[serde(skip)]
    pub replaced: Option<String>,
}

impl SynthConfig {
    /// Whether these settings make a dataset: sides 8 to 4096 (min at most max), some
    /// images, a JPEG quality 1 to 100. Settings read back from a directory's record
    /// are checked too (an edited `synth.json` asked for 100,000-pixel sides).
    pub fn check(&self) -> Result<()> {
        if self.min_side < 8 || self.min_side > self.max_side || self.max_side > 4096 {
            return Err(DataError::param(
                "min/max side",
                format!(
                    "need 8 <= min <= max <= 4096, got {}..{}",
                    self.min_side, self.max_side
                ),
            ));
        }
        if self.train_per_class == 0 && self.val_per_class == 0 {
            // (every tool refused the empty dataset it made; a val split alone is a use)
            return Err(DataError::param(
                "train_per_class/val_per_class",
                "both 0: no image to make",
            ));
        }
        if !(1..=100).contains(&self.quality) {
            return Err(DataError::param(
                "quality",
                format!("{} (expected 1..=100)", self.quality),
            ));
        }
        Ok(())
    }
}

/// Write the dataset under `out` (`out/train/<class>/*.jpg`, `out/val/...`, and
/// `out/synth.json`) into an empty directory or over an earlier synth's output (whose
/// images this one does not write are removed; anything else there is refused, naming
/// it). The output is byte-identical for the same settings. Files are written to a
/// temporary name and renamed, so an interrupted run leaves no half-written image.
pub fn generate(out: &Path, cfg: &SynthConfig, progress: impl Fn() + Sync) -> Result<SynthSummary> {
    cfg.check()?;
    let classes = class_names();
    let replaced = clear_previous(out, cfg, &classes)?;
    let writing = out.join(WRITING);
    let mut jobs: Vec<(u64, &str, usize, u32)> = Vec::new(); // (split id, split, class, index)
    for (split_id, split, n) in [
        (0u64, "train", cfg.train_per_class),
        (1, "val", cfg.val_per_class),
    ] {
        for (c, class) in classes.iter().enumerate() {
            let dir = out.join(split).join(class);
            fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
            for i in 0..n {
                jobs.push((split_id, split, c, i));
            }
        }
    }
    jobs.par_iter().try_for_each(|&(split_id, split, c, i)| {
        let path: PathBuf = out
            .join(split)
            .join(&classes[c])
            .join(format!("{}_{i:05}.jpg", classes[c]));
        let bytes = image_bytes(cfg, &classes[c], split_id, c, i, &path)?;
        crate::atomic::replace_with(&path, |tmp| {
            fs::write(tmp, &bytes).map_err(|e| DataError::io(tmp, e))
        })?;
        progress();
        Ok::<_, DataError>(())
    })?;
    let summary = SynthSummary {
        config: cfg.clone(),
        classes: classes.clone(),
        train_images: cfg.train_per_class as u64 * classes.len() as u64,
        val_images: cfg.val_per_class as u64 * classes.len() as u64,
        replaced,
    };
    // atomically: it marks a finished dataset, so a full disk must not leave it empty
    let meta = out.join("synth.json");
    let json = serde_json::to_string_pretty(&summary).expect("plain data serialises");
    crate::atomic::replace_with(&meta, |tmp| {
        fs::write(tmp, json + "\n").map_err(|e| DataError::io(tmp, e))
    })?;
    fs::remove_file(&writing).map_err(|e| DataError::io(&writing, e))?;
    Ok(summary)
}

/// The hidden record of a synth under way: the settings whose images the directory
/// may hold (this run's first, then those of the output it replaces), removed once
/// `synth.json` is written.
const WRITING: &str = ".synth-writing.json";

/// Write the record of a synth under way ([`WRITING`]) in `out`, atomically.
fn write_record(out: &Path, cfgs: &[SynthConfig]) -> Result<()> {
    let json = serde_json::to_string(cfgs).expect("plain data serialises");
    crate::atomic::replace_with(&out.join(WRITING), |tmp| {
        fs::write(tmp, json + "\n").map_err(|e| DataError::io(tmp, e))
    })
    .map_err(DataError::from)
}

/// The JPEG bytes of image `i` of class `c` (`class`) in split `split_id` (0 train,
/// 1 val): a pure function of the settings (`path` only names it in an error).
fn image_bytes(
    cfg: &SynthConfig,
    class: &str,
    split_id: u64,
    c: usize,
    i: u32,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut rng = ChaCha8Rng::from_seed(expand_seed(cfg.seed, DOMAIN_SYNTH));
    rng.set_stream((split_id << 48) | ((c as u64) << 32) | i as u64);
    let (w, h, rgb) = render(class, &mut Draw(rng), cfg);
    // encoded in memory, then written with its errors checked: a BufWriter dropped
    // unflushed loses the write error of its last buffer (a full disk left empty and
    // truncated JPEGs under their final names, and synth exited 0)
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, cfg.quality)
        .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| DataError::Dataset {
            path: path.to_path_buf(),
            reason: format!("encoding it as JPEG: {e}"),
        })?;
    Ok(bytes)
}

/// One of synth's own records in its output directory (`synth.json`, the record of a
/// synth under way), `None` where there is none. Anything else at its name is refused as
/// no file of synth's, before it is read (a pipe blocked the read) or replaced (a
/// user's `synth.json` of notes was overwritten): a link, no regular file, or a file
/// that holds no record (both are written whole, by rename).
fn read_own<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(None);
    };
    let foreign = |why: &str| {
        DataError::dataset(
            path,
            format!(
                "{why}, not a record synth wrote: synth writes into an empty directory or \
                 over its own output"
            ),
        )
    };
    if !meta.is_file() {
        return Err(foreign("no regular file (a link, a pipe, a directory)"));
    }
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(foreign("a file of other contents")),
    }
}

/// Make `out` ready for a new dataset: refused when it holds anything [`generate`] does
/// not write (a user's files are never deleted or mixed in); an earlier synth's images
/// beyond this one's counts are removed (a smaller dataset over a larger one would
/// otherwise keep them), and so is its `synth.json`, which marks a finished dataset and
/// is written again last. Returns what of an earlier dataset changes, if anything.
fn clear_previous(out: &Path, cfg: &SynthConfig, classes: &[String]) -> Result<Option<String>> {
    let Ok(top) = fs::read_dir(out) else {
        // not there yet (or unreadable: the first write will say so)
        fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
        write_record(out, std::slice::from_ref(cfg))?;
        return Ok(None);
    };
    // the earlier dataset's settings: a finished one's, and those of an interrupted
    // synth (its record lists every setting whose images may be there: an interrupted
    // rewrite leaves the old settings' images beside the new ones'). A record that
    // could not have made a dataset is no record
    let earlier: Option<SynthSummary> = read_own(&out.join("synth.json"))?;
    let recorded: Vec<SynthConfig> = read_own(&out.join(WRITING))?.unwrap_or_default();
    let mut earlier_cfgs: Vec<SynthConfig> = Vec::new();
    for c in earlier.iter().map(|e| e.config.clone()).chain(recorded) {
        if c.check().is_ok() && !earlier_cfgs.contains(&c) {
            earlier_cfgs.push(c);
        }
    }
    let mut removed_images = 0u64;
    let foreign = |p: &Path| {
        DataError::dataset(
            p,
            "not written by synth: synth writes into an empty directory or over its own output",
        )
    };
    let mut stale = Vec::new();
    // the earlier images this run removes or replaces: (path, split, class, index)
    let mut theirs: Vec<(PathBuf, u64, usize, u32)> = Vec::new();
    for e in top.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let (split_id, per_class) = match name.as_str() {
            "synth.json" => {
                stale.push(e.path());
                continue;
            }
            // (rewritten below, before anything is removed)
            WRITING => continue,
            "train" => (0, cfg.train_per_class),
            "val" => (1, cfg.val_per_class),
            _ => return Err(foreign(&e.path())),
        };
        // (a link is never synth's: a linked folder would have files outside `out`
        // removed or replaced)
        let is_dir = |t: std::io::Result<fs::FileType>| t.is_ok_and(|t| t.is_dir());
        if !is_dir(e.file_type()) {
            return Err(foreign(&e.path()));
        }
        for c in fs::read_dir(e.path())
            .map_err(|err| DataError::io(e.path(), err))?
            .flatten()
        {
            let class = c.file_name().to_string_lossy().to_string();
            let Some(ci) = classes.iter().position(|k| *k == class) else {
                return Err(foreign(&c.path()));
            };
            if !is_dir(c.file_type()) {
                return Err(foreign(&c.path()));
            }
            for f in fs::read_dir(c.path())
                .map_err(|err| DataError::io(c.path(), err))?
                .flatten()
            {
                let file = f.file_name().to_string_lossy().to_string();
                // `{class}_{index:05}.jpg`, or the temporary file of an interrupted write
                // (`.NAME.meal-tmp`, crate::atomic; `NAME.tmp` from earlier versions)
                let tmp = file
                    .strip_prefix('.')
                    .and_then(|f| f.strip_suffix(".meal-tmp"))
                    .or_else(|| file.strip_suffix(".tmp"));
                let index = tmp
                    .unwrap_or(&file)
                    .strip_prefix(&format!("{class}_"))
                    .and_then(|r| r.strip_suffix(".jpg"))
                    .filter(|i| i.len() == 5)
                    .and_then(|i| i.parse::<u32>().ok());
                let file_type = f.file_type();
                match index {
                    _ if !file_type.is_ok_and(|t| t.is_file()) => return Err(foreign(&f.path())),
                    Some(_) if tmp.is_some() => stale.push(f.path()),
                    Some(i) => {
                        // an image of synth's name is synth's only where its bytes are
                        // those the earlier settings give it (checked below): a user's
                        // file of that name is neither removed nor replaced
                        theirs.push((f.path(), split_id, ci, i));
                        if i >= per_class {
                            removed_images += 1;
                            stale.push(f.path())
                        }
                    }
                    None => return Err(foreign(&f.path())),
                }
            }
        }
    }
    if let Some((p, ..)) = theirs.first().filter(|_| earlier_cfgs.is_empty()) {
        // (a record there that reads as no settings synth could have used: said so)
        let why = match out.join("synth.json").exists() || out.join(WRITING).exists() {
            true => {
                "its directory's synth.json (or record of a synth under way) holds no \
                     settings synth could have used (edited?)"
            }
            false => "no synth.json beside it says what was",
        };
        return Err(DataError::dataset(
            p,
            format!(
                "not written by synth ({why}): synth writes into an empty directory or over \
                 its own output"
            ),
        ));
    }
    theirs.par_iter().try_for_each(|(p, split_id, c, i)| {
        let have = crate::files::read(p).map_err(|e| DataError::io(p, e))?;
        for then in &earlier_cfgs {
            if image_bytes(then, &classes[*c], *split_id, *c, *i, p)? == have {
                return Ok(());
            }
        }
        Err(DataError::dataset(
            p,
            "not the image synth wrote under this name (edited or replaced?): synth writes \
             into an empty directory or over its own output; move it",
        ))
    })?;
    // recorded before anything is removed or replaced: an interruption from here on
    // leaves images of these settings, and the record that says so
    let mut now = vec![cfg.clone()];
    now.extend(earlier_cfgs.into_iter().filter(|c| c != cfg));
    write_record(out, &now)?;
    for p in stale {
        fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
    }
    let other_settings = earlier.is_some_and(|e| {
        let (mut a, mut b) = (e.config, cfg.clone());
        // (counts aside: fewer images are the removal said below, more are added)
        (a.train_per_class, a.val_per_class) = (0, 0);
        (b.train_per_class, b.val_per_class) = (0, 0);
        a != b
    });
    Ok(match (other_settings, removed_images) {
        (true, _) => Some("the earlier dataset there, made with other settings".into()),
        (false, 0) => None,
        (false, n) => Some(format!(
            "the earlier dataset there: {n} of its images removed"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("synth");
        for (cfg, said) in [
            (
                SynthConfig {
                    train_per_class: 0,
                    val_per_class: 0,
                    ..Default::default()
                },
                "both 0",
            ),
            (
                SynthConfig {
                    quality: 0,
                    ..Default::default()
                },
                "quality",
            ),
        ] {
            let e = generate(&out, &cfg, || {}).unwrap_err().to_string();
            assert!(e.contains(said), "{e}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn ten_sorted_classes() {
        let c = class_names();
        assert_eq!(c.len(), 10);
        let mut s = c.clone();
        s.sort();
        assert_eq!(c, s);
    }

    #[test]
    fn shapes_are_distinct_regions() {
        // The centre is inside every shape but the ring; the ring holds (0.8, 0).
        for (k, name) in SHAPES.iter().enumerate() {
            assert_eq!(inside(k, 0.0, 0.0), *name != "ring", "{name}");
        }
        assert!(inside(2, 0.8, 0.0));
        assert!(!inside(3, 0.9, 0.9));
        assert!(inside(1, 0.9, 0.0) && !inside(3, 0.9, 0.0));
    }
}
