//! `inspect` and `verify`: what is in a store, and whether it is intact.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use meal_store::{entropy, LabelStore};

/// Bins of each histogram in the PNG.
pub const HIST_BINS: usize = 40;

/// Per-class figures over the stored crops.
#[derive(Clone, Debug, Default)]
pub struct ClassRow {
    /// Images of the class.
    pub images: u64,
    /// Crops of the class.
    pub crops: u64,
    /// Crops whose ensemble top-1 is the class.
    pub agree: u64,
    /// Sum of the top-1 probability.
    pub conf_sum: f64,
    /// Sum of the entropy (nats).
    pub ent_sum: f64,
}

/// Everything `inspect` prints and plots.
pub struct Inspection {
    /// The text report.
    pub text: String,
    /// Per class, in class order.
    pub classes: Vec<ClassRow>,
    /// Entropy of each crop's decoded distribution.
    pub entropies: Vec<f32>,
    /// Top-1 probability of each crop.
    pub confidences: Vec<f32>,
}

/// How many of a store's skipped files `inspect` and a run's summary name
/// (`report.json` and `manifest.json` hold them all).
pub const SKIPPED_SHOWN: usize = 20;

/// The per-class table's rows where it is not asked for: every class up to this many,
/// the [`HARDEST_SHOWN`] hardest above (ImageNet's table was 1000 lines of a 1019-line
/// report).
pub const CLASSES_SHOWN: usize = 50;
/// The classes a long table shows by default: those of lowest top-1 agreement.
pub const HARDEST_SHOWN: usize = 20;

/// Read the whole store (`rows` sample rows printed) and summarise it, the per-class
/// table as [`CLASSES_SHOWN`] says.
pub fn inspect(dir: &Path, rows: usize) -> Result<Inspection> {
    inspect_with(dir, rows, None)
}

/// [`inspect`], the per-class table holding `classes` rows (the classes of lowest top-1
/// agreement first, when not all) or, with `None`, as [`CLASSES_SHOWN`] says.
pub fn inspect_with(dir: &Path, rows: usize, classes_shown: Option<usize>) -> Result<Inspection> {
    let store = LabelStore::open(dir).with_context(|| format!("inspect {}", dir.display()))?;
    // figures of a shard changed in place would print as measured (training and
    // verify refuse it): its bytes are checked first (seconds per GB)
    store
        .verify_checksums(meal_cli::default_threads())
        .with_context(|| format!("inspect {}", dir.display()))?;
    let m = store.manifest();
    let c = &m.config;
    let mut t = String::new();
    let _ = writeln!(t, "store        {}", dir.display());
    let _ = writeln!(
        t,
        "format       {} v{} ({}), {}, {} shards, {}",
        m.format,
        m.format_version,
        m.producer,
        // as the manifest writes it ("complete")
        format!("{:?}", m.state).to_lowercase(),
        m.shards.len(),
        c.encoding
    );
    let _ = writeln!(
        t,
        "dataset      {} samples, {} classes, fingerprint {}",
        c.dataset.samples,
        c.classes.len(),
        &c.dataset.sha256[..16.min(c.dataset.sha256.len())]
    );
    let p = &c.crop_pool;
    let _ = writeln!(
        t,
        "crop pool    {} per image, scale {:?}, ratio {:?}, seed {}",
        p.crops_per_image, p.scale, p.ratio, p.seed
    );
    for tc in &c.teachers {
        // (classes taken by name: reordered, or a subset of the teacher's)
        let by_name = tc.logits.as_ref().map_or(String::new(), |l| {
            let shown: Vec<String> = l.iter().take(5).map(usize::to_string).collect();
            format!(
                "; classes taken by name, the data's class i its logit [{}{}]",
                shown.join(", "),
                if l.len() > 5 { ", ..." } else { "" }
            )
        });
        let _ = writeln!(
            t,
            "teacher      {} ({}, sha256 {}), {} px {} mean {:?} std {:?}, {}{by_name}",
            shown(&tc.arch),
            shown(&tc.weights),
            &tc.sha256[..12.min(tc.sha256.len())],
            tc.input_size,
            tc.filter,
            tc.mean,
            tc.std,
            tc.dtype
        );
    }
    if let Some(s) = &m.summary {
        // what top-k encoding dropped (nothing, for dense: its zeros meant nothing)
        let kept = match m.config.encoding {
            meal_store::Encoding::Dense => "dense, nothing dropped".to_string(),
            _ => format!(
                "kept mass {:.4}; mean KL(dense || decoded) {:.3e} nats",
                s.mean_kept_mass, s.mean_kl
            ),
        };
        let _ = writeln!(
            t,
            "summary      {} images, {} crops; ensemble top-1 agreement with the labels {:.4}; mean entropy {:.4} nats (the ensemble's, before encoding); {kept}",
            s.images, s.rows, s.top1_agreement, s.mean_entropy
        );
    }
    let skipped: Vec<_> = m.shards.iter().flat_map(|s| &s.skipped).collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            t,
            "skipped      {} unreadable files (not in the store){}:",
            skipped.len(),
            match skipped.len() > SKIPPED_SHOWN {
                true => format!(", the first {SKIPPED_SHOWN}"),
                false => String::new(),
            }
        );
        for k in skipped.iter().take(SKIPPED_SHOWN) {
            let _ = writeln!(t, "               {}: {}", shown(&k.path), shown(&k.reason));
        }
        // intact, but nothing to train on (`verify` fails on it)
        if m.shards.iter().all(|s| s.images == 0) {
            let _ = writeln!(
                t,
                "no image     every image of the dataset was skipped: the store labels none"
            );
        }
    }
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    let crops = m.summary.as_ref().map_or(0, |s| s.rows);
    let _ = writeln!(
        t,
        "bytes        {} in shards{}",
        bytes,
        match crops {
            0 => String::new(),
            c => format!(" ({:.1} B per crop)", bytes as f64 / c as f64),
        }
    );

    // (checked against the shards and the class names it records: an edited manifest's
    // names would print each class's figures under another's name)
    let images = store.verify_images()?;
    let nc = c.classes.len();
    let mut classes = vec![ClassRow::default(); nc];
    let (mut entropies, mut confidences) = (Vec::new(), Vec::new());
    let mut sample_rows = String::new();
    let mut printed = 0;
    // the classes a row shows: a top-k store's decoded rows spread the mass left over
    // the other classes, which were never stored; its k kept classes only
    let top_shown = match c.encoding {
        meal_store::Encoding::TopK { k, .. } => usize::from(k).min(3),
        meal_store::Encoding::Dense => 3,
    };
    // (every crop of the store is read: minutes for ImageNet's)
    let bar = meal_cli::progress_bar(
        images.len() as u64,
        "inspect [{bar:30}] {pos}/{len} images  {elapsed} (eta {eta})",
    );
    for im in &images {
        bar.inc(1);
        let row = classes
            .get_mut(im.label as usize)
            .with_context(|| format!("images.parquet: label {} out of range", im.label))?;
        row.images += 1;
        for cl in store.crops(im.sample_id)? {
            let d = store.dense(&cl.label);
            // a damaged shard of the right size would print NaN figures as if measured
            let broken = cl.label.rule_error(nc).or_else(|| {
                meal_store::distribution_error(&d)
                    .err()
                    .map(|e| e.to_string())
            });
            if let Some(why) = broken {
                anyhow::bail!(
                    "{}: sample {} crop {}: {why}: the label store is damaged (`meal-precompute \
                     verify` checks every shard)",
                    store.shard_path(im.sample_id).unwrap_or_default().display(),
                    im.sample_id,
                    cl.crop_id
                );
            }
            // the crop's classes by probability: a top-k store's as stored (its first is
            // the top class, FORMAT.md; the decoded label's spread mass can equal a kept
            // class's, and a class never stored would then be shown), a dense one's sorted
            let ranked: Vec<(usize, f32)> = match &cl.label {
                meal_store::SoftLabel::TopK { classes, probs } => classes
                    .iter()
                    .zip(probs)
                    .map(|(&k, &p)| (k as usize, p))
                    .collect(),
                meal_store::SoftLabel::Dense(_) => {
                    let mut order: Vec<usize> = (0..d.len()).collect();
                    order.sort_by(|&a, &b| d[b].total_cmp(&d[a]));
                    order
                        .into_iter()
                        .take(top_shown)
                        .map(|k| (k, d[k]))
                        .collect()
                }
            };
            let (top1, conf) = ranked[0];
            let ent = entropy(&d);
            row.crops += 1;
            row.agree += (top1 as u32 == im.label) as u64;
            row.conf_sum += conf as f64;
            row.ent_sum += ent;
            entropies.push(ent as f32);
            confidences.push(conf);
            if printed < rows {
                let r = cl.record;
                let top: Vec<String> = ranked
                    .iter()
                    .take(top_shown)
                    .map(|&(k, p)| format!("{}:{:.3}", shown(&c.classes[k]), p))
                    .collect();
                let _ = writeln!(
                    sample_rows,
                    "  {:>7} {:>5}  {} box t{:.3} l{:.3} h{:.3} w{:.3}{}  {}",
                    im.sample_id,
                    cl.crop_id,
                    fit(&im.path, 28),
                    r.top,
                    r.left,
                    r.height,
                    r.width,
                    if r.flip { " flip" } else { "     " },
                    top.join(" ")
                );
                printed += 1;
            }
        }
    }
    bar.finish_and_clear();
    let w = c
        .classes
        .iter()
        .map(|n| unicode_width::UnicodeWidthStr::width(shown(n).as_str()))
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    let _ = writeln!(
        t,
        "\n  {} {:>6} {:>7}  {:>11}  {:>9}  {:>13}",
        fit("class", w),
        "images",
        "crops",
        "top-1 agree",
        "mean conf",
        "label entropy"
    );
    let shown = classes_shown
        .unwrap_or(if nc <= CLASSES_SHOWN {
            nc
        } else {
            HARDEST_SHOWN
        })
        .min(nc);
    let agree = |r: &ClassRow| r.agree as f64 / r.crops.max(1) as f64;
    let mut order: Vec<usize> = (0..nc).collect();
    if shown < nc {
        // the hardest first (a class with no crops last: it has no agreement to rank)
        order.sort_by(|&a, &b| {
            let key = |i: usize| (classes[i].crops == 0, agree(&classes[i]));
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order.truncate(shown);
    }
    for (name, r) in order.iter().map(|&i| (&c.classes[i], &classes[i])) {
        let n = r.crops.max(1) as f64;
        let _ = writeln!(
            t,
            "  {} {:>6} {:>7}  {:>11.4}  {:>9.4}  {:>13.4}",
            fit(name, w),
            r.images,
            r.crops,
            r.agree as f64 / n,
            r.conf_sum / n,
            r.ent_sum / n
        );
    }
    if shown < nc {
        let _ = writeln!(
            t,
            "  ({shown} of {nc} classes, those of lowest top-1 agreement: `--classes all` \
             lists every one)"
        );
    }
    if rows > 0 {
        let _ = writeln!(
            t,
            "\nsample rows (sample, crop, path, box, flip, top-{})",
            top_shown
        );
        t.push_str(&sample_rows);
    }
    Ok(Inspection {
        text: t,
        classes,
        entropies,
        confidences,
    })
}

/// `s` in `n` terminal columns: cut from the left with `…` when wider (a path's or
/// name's end tells most), padded with spaces when narrower. Counted in display width
/// (a CJK character or an emoji takes two columns), which `{:<n$}` does not: such class
/// names put the table's columns out of line.
fn fit(s: &str, n: usize) -> String {
    // one measure throughout, the string's (an emoji sequence joined by ZWJ is one
    // glyph: its characters' widths summed are more)
    use unicode_width::UnicodeWidthStr;
    let shown = shown(s);
    let s = shown.as_str();
    let mut out = if s.width() <= n {
        s.to_string()
    } else {
        // the longest tail that fits beside the ellipsis
        let chars: Vec<char> = s.chars().collect();
        let mut start = chars.len();
        while start > 0 && chars[start - 1..].iter().collect::<String>().width() < n {
            start -= 1;
        }
        std::iter::once('…')
            .chain(chars[start..].iter().copied())
            .collect()
    };
    let used = out.width();
    out.extend(std::iter::repeat_n(' ', n.saturating_sub(used)));
    out
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`): a class, path or file
/// name from a store or a dataset is printed as text, never as a line break or a
/// terminal's escape sequence.
fn shown(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Counts of `v` in `bins` equal bins over `[lo, hi]`.
pub fn histogram(v: &[f32], lo: f32, hi: f32, bins: usize) -> Vec<u64> {
    let mut h = vec![0u64; bins];
    let w = (hi - lo).max(f32::MIN_POSITIVE);
    for &x in v {
        let b = (((x - lo) / w) * bins as f32).floor();
        let b = (b.max(0.0) as usize).min(bins - 1);
        h[b] += 1;
    }
    h
}

/// Write the entropy histogram (left panel, 0 to ln C nats) and the confidence
/// histogram (right panel, top-1 probability 0 to 1) as a PNG titled with the store.
pub fn write_histograms(ins: &Inspection, classes: usize, title: &str, path: &Path) -> Result<()> {
    use meal_cli::plot::{histograms, HistPanel};
    let max_ent = (classes.max(2) as f32).ln();
    let png = histograms(
        title,
        &[
            HistPanel {
                title: format!(
                    "label entropy ({} crop{})",
                    ins.entropies.len(),
                    if ins.entropies.len() == 1 { "" } else { "s" }
                ),
                x_label: format!("entropy, nats (uniform over {classes} classes = {max_ent:.2})"),
                lo: 0.0,
                hi: max_ent as f64,
                counts: histogram(&ins.entropies, 0.0, max_ent, HIST_BINS),
            },
            HistPanel {
                title: "teacher confidence".into(),
                x_label: "top-1 probability".into(),
                lo: 0.0,
                hi: 1.0,
                counts: histogram(&ins.confidences, 0.0, 1.0, HIST_BINS),
            },
        ],
    )?;
    meal_data::atomic::write(path, &png).with_context(|| format!("writing {}", path.display()))
}

/// Verify checksums, row counts and probability sums; returns the text report.
pub fn verify(dir: &Path) -> Result<String> {
    let store = LabelStore::open(dir).with_context(|| format!("verify {}", dir.display()))?;
    // (every shard hashed, then its rows read: minutes for ImageNet's ~30 GB)
    let bar = meal_cli::progress_bar(
        2 * store.manifest().shards.len() as u64,
        "verify [{bar:30}] {pos}/{len} shard checks  {elapsed} (eta {eta})",
    );
    let r = store
        .verify_with(&|| bar.inc(1))
        .with_context(|| format!("verify {}", dir.display()))?;
    bar.finish_and_clear();
    let want = store.manifest().summary.as_ref().map(|s| s.rows);
    if let Some(w) = want {
        if w != r.rows {
            anyhow::bail!(
                "verify {}: manifest says {w} rows, shards hold {}",
                dir.display(),
                r.rows
            );
        }
    }
    // store.verify() checked images.parquet against the shards image by image
    let images: u64 = store
        .manifest()
        .shards
        .iter()
        .map(|s| s.images as u64)
        .sum();
    // intact, but nothing to train on: a script's `verify && train` stops here
    if images == 0 && !store.manifest().shards.is_empty() {
        let skipped: usize = store
            .manifest()
            .shards
            .iter()
            .map(|s| s.skipped.len())
            .sum();
        anyhow::bail!(
            "verify {}: its {} shards (checksums match) label no image: the {skipped} images \
             of the dataset were all skipped as unreadable (`inspect` lists them)",
            dir.display(),
            r.shards
        );
    }
    let mut text = format!(
        "ok: {} shards (checksums match), {} images, {} rows, max |sum(p) - 1| = {:.2e}",
        r.shards, images, r.rows, r.max_sum_error
    );
    let u = r.unchecked_listings;
    if u.skipped + u.unrecorded > 0 {
        let mut why = Vec::new();
        if u.skipped > 0 {
            why.push(format!(
                "{} skipped an unreadable image (the store keeps no label for it)",
                u.skipped
            ));
        }
        if u.unrecorded > 0 {
            why.push(format!(
                "{} record no listing_sha256 (a store written before it, or an edited \
                 manifest)",
                u.unrecorded
            ));
        }
        let _ = write!(
            text,
            "\nnote: the image paths and labels of {} of the {} shards were not checked \
             against those they were written for: {}",
            u.skipped + u.unrecorded,
            r.shards,
            why.join("; ")
        );
    }
    // (a rerun removes the unlisted files of a writer's shard names only)
    let (removed, kept): (Vec<String>, Vec<String>) = store
        .unlisted_shards()
        .into_iter()
        .partition(|n| meal_store::writer::is_shard_name(n));
    for (extra, then) in [
        (
            removed,
            "a rerun of `meal-precompute run` here removes them as a crash's leftovers",
        ),
        (
            kept,
            "no name a shard is written under: a rerun leaves them",
        ),
    ] {
        if !extra.is_empty() {
            let _ = write!(
                text,
                "\nnote: shard files the manifest does not list ({}): {} (not part of the \
                 store: a reader globbing shard-* would read them, take the manifest's list; \
                 {then})",
                extra.len(),
                meal_data::error::first_few(&extra, 5)
            );
        }
    }
    // a merged store's worker parts stay beside it (a worker rerun or a merge reads
    // them): one that does not read, or of another split, would fail those later
    let mut odd = Vec::new();
    let mut splits = std::collections::BTreeSet::new();
    if let Ok(parts) = meal_store::worker_manifests(dir) {
        for name in parts {
            match meal_store::Manifest::read_file(&dir.join(&name)) {
                Ok(m) => {
                    splits.insert(m.worker.map_or(0, |[_, n]| n));
                }
                Err(e) => odd.push(format!("{name} ({e})")),
            }
        }
    }
    if !odd.is_empty() || splits.len() > 1 {
        let _ = write!(
            text,
            "\nnote: worker parts beside the store that a worker rerun or a merge here would \
             refuse: {}{}",
            meal_data::error::first_few(&odd, 3),
            match splits.len() > 1 {
                true => format!(
                    "{}parts of splits into {} workers",
                    if odd.is_empty() { "" } else { "; " },
                    splits
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                false => String::new(),
            }
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::fit;
    use unicode_width::UnicodeWidthStr;

    /// Names of wide characters fill the columns they take on a terminal, so the
    /// table's columns stay in line; a name too wide keeps its end.
    #[test]
    fn names_fit_their_display_width() {
        for name in ["cat", "中文类", "😀smile", "é-accent", "ring_dots"] {
            assert_eq!(fit(name, 12).width(), 12, "{name:?}");
        }
        let cut = fit("数据集/类别/一张很长的图片名字.jpg", 10);
        assert_eq!(cut.width(), 10, "{cut:?}");
        assert!(
            cut.starts_with('…') && cut.trim_end().ends_with(".jpg"),
            "{cut:?}"
        );
        // a wide character that would straddle the edge is left out, the gap padded
        assert_eq!(fit("ab中", 3), "…中");
        assert_eq!(fit("a中中", 4), "…中 ");
        // a ZWJ sequence measured as the string is, in sizing and in fitting alike
        let coder = "👩\u{200d}💻coder";
        assert_eq!(fit(coder, coder.width()), coder);
        // control characters are shown escaped, never a line break or an escape
        // sequence reaching the terminal
        let odd = fit("new\nline\u{1b}[2J", 24);
        assert!(
            odd.starts_with("new\\nline\\u{1b}[2J") && !odd.chars().any(char::is_control),
            "{odd:?}"
        );
    }
}
