//! How a store's recorded images and classes differ from a dataset's, in words: the
//! refusals that name the first difference (an edited manifest, other classes, images
//! gone, added, relabelled, moved or resized).

use std::collections::HashMap;
use std::path::Path;

use meal_data::Sample;

use super::super::images;
use super::super::manifest::{Manifest, MANIFEST};
use super::super::StoreError;

/// The refusal of a manifest whose class names are not those its image table records
/// (`recorded`, under the table's checksum): the names decide which class each
/// probability is, and the manifest is under no checksum (edited by hand).
pub(crate) fn edited_classes(
    dir: &Path,
    manifest: &Manifest,
    recorded: Option<&[String]>,
) -> Option<StoreError> {
    edited_classes_by(dir, manifest, recorded, images::IMAGES)
}

/// [`edited_classes`], the recorded list held by `by` (the image table, or the
/// dataset's fingerprint, which hashes the class names: a partial store has no table).
pub(crate) fn edited_classes_by(
    dir: &Path,
    manifest: &Manifest,
    recorded: Option<&[String]>,
    by: &str,
) -> Option<StoreError> {
    let own = &manifest.config.classes;
    let c = recorded.filter(|c| c != own)?;
    let (at, mine, theirs) = first_other_names(own, c);
    Some(StoreError::Mismatch {
        path: dir.join(MANIFEST),
        reason: format!(
            "config.classes is not the class list {by} records (class {at}: {mine} in the \
             manifest, {theirs} there): the manifest was edited; restore it, or run the \
             precompute again",
        ),
    })
}

/// The refusal of a manifest (or worker part) at `path` whose dataset fingerprint is
/// the data's own (`now`) by its hash, but not by its counts: the hash covers every
/// sample and class name, so other counts under it were edited by hand, not made by
/// another dataset (which the refusal would otherwise blame).
pub(crate) fn edited_fingerprint(
    path: &Path,
    recorded: &meal_data::Fingerprint,
    now: &meal_data::Fingerprint,
) -> Option<StoreError> {
    (recorded.sha256 == now.sha256 && recorded != now).then(|| StoreError::Mismatch {
        path: path.to_path_buf(),
        reason: format!(
            "config.dataset says {} samples and {} classes, but its fingerprint \
             (config.dataset.sha256) is that of the data's {} samples and {} classes, which \
             it hashes: the manifest was edited; restore it, or run the precompute again",
            recorded.samples, recorded.classes, now.samples, now.classes
        ),
    })
}

/// The first index at which two class lists differ (the shorter's length when one
/// extends the other), with each list's name there, quoted (`none` past its end).
pub(crate) fn first_other_names(a: &[String], b: &[String]) -> (usize, String, String) {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let name = |v: &[String]| v.get(at).map_or("none".to_string(), |n| format!("{n:?}"));
    (at, name(a), name(b))
}

/// The first difference between the store's images (`images.parquet`'s paths and
/// labels, and the images it skipped as unreadable, from the manifest) and the
/// dataset's `classes` and `samples`, in words; `None` when the table cannot be read.
/// The fingerprint also hashes file sizes, which the store does not keep: the same
/// paths and labels mean a file's bytes changed.
pub(crate) fn difference(
    dir: &Path,
    manifest: &Manifest,
    classes: &[String],
    samples: &[Sample],
) -> Option<String> {
    difference_of(dir, manifest, classes, samples, true)
}

/// [`difference`]; `last_resort`: whether the same paths and labels in the same order
/// are said to be a size change (the fingerprint differs); not for images moved back
/// to the store's paths, whose fingerprint is not known to differ beyond the move.
fn difference_of(
    dir: &Path,
    manifest: &Manifest,
    classes: &[String],
    samples: &[Sample],
    last_resort: bool,
) -> Option<String> {
    let c = &manifest.config;
    if c.classes != classes {
        return Some(format!(
            "the class names differ ({} and {}; {})",
            things(c.classes.len(), "class", "classes"),
            things(classes.len(), "class", "classes"),
            first_other_class(&c.classes, classes)
        ));
    }
    let images = images::read(dir, manifest.images_sha256.as_deref()).ok()?;
    // (sample id, path, label; None for an image skipped as unreadable)
    let mut stored: Vec<(u32, &str, Option<u32>)> = images
        .iter()
        .map(|i| (i.sample_id, i.path.as_str(), Some(i.label)))
        .collect();
    for k in manifest.shards.iter().flat_map(|s| &s.skipped) {
        stored.push((k.sample_id, k.path.as_str(), None));
    }
    stored.sort_by_key(|e| e.0);
    let data: HashMap<&str, &Sample> = samples.iter().map(|s| (s.path.as_str(), s)).collect();
    let paths: std::collections::HashSet<&str> = stored.iter().map(|e| e.1).collect();
    let first = |v: &[&str]| meal_data::error::first_few(v, 3);
    let missing: Vec<&str> = stored
        .iter()
        .filter(|e| !data.contains_key(e.1))
        .map(|e| e.1)
        .collect();
    let extra: Vec<&str> = samples
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| !paths.contains(p))
        .collect();
    if let Some(moved) = meal_data::dataset::other_root(&missing, &extra) {
        // the moved images under the store's paths: what differs beyond the paths is
        // said too (a label, the order, an image truly absent)
        let back = moved.back(samples, &missing, &extra);
        return Some(match difference_of(dir, manifest, classes, &back, false) {
            Some(rest) => format!("{}; beyond the paths, {rest}", moved.words()),
            None => moved.words(),
        });
    }
    if !missing.is_empty() {
        let skipped = stored
            .iter()
            .filter(|e| e.2.is_none() && !data.contains_key(e.1))
            .count();
        return Some(format!(
            "{} not in the data ({}){}",
            things(
                missing.len(),
                "of the store's images is",
                "of the store's images are"
            ),
            first(&missing),
            match skipped {
                0 => String::new(),
                n => format!(
                    "; {} skipped as unreadable when the store was made",
                    things(n, "was", "were")
                ),
            }
        ));
    }
    if !extra.is_empty() {
        return Some(format!(
            "the data has {} the store has not ({})",
            things(extra.len(), "image", "images"),
            first(&extra)
        ));
    }
    let name = |l: u32| c.classes.get(l as usize).map_or("?", String::as_str);
    if let Some((_, p, Some(l))) = stored
        .iter()
        .find(|e| e.2.is_some_and(|l| data[e.1].label != l))
    {
        return Some(format!(
            "{p} is of class {} in the store, {} in the data",
            name(*l),
            name(data[p].label)
        ));
    }
    if let Some((id, p, _)) = stored
        .iter()
        .find(|e| samples.get(e.0 as usize).is_none_or(|s| s.path != e.1))
    {
        return Some(format!(
            "the same files in another order (sample {id} is {p} in the store, {} in the \
             data: a list file reordered?)",
            samples
                .get(*id as usize)
                .map_or("none", |s| s.path.as_str())
        ));
    }
    if !last_resort {
        return None;
    }
    // (an image skipped as unreadable has no label in the store: a list file that
    // relabels one changes the fingerprint as a size does)
    let skipped = stored.iter().filter(|e| e.2.is_none()).count();
    Some(format!(
        "the same paths and labels: a file's size differs (an image re-encoded or \
         replaced since the store was made){}",
        match skipped {
            0 => String::new(),
            1 => ", or the image skipped as unreadable (whose label the store does \
                  not keep) was relabelled"
                .to_string(),
            n => format!(
                ", or one of the {n} images skipped as unreadable (whose labels the \
                 store does not keep) was relabelled"
            ),
        }
    ))
}

/// `n` and the noun for it: "1 image", "2 images".
pub(crate) fn things(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The first class the store and the data name differently: `class 3: store "a", data
/// "b"` (`none` past the shorter list's end).
pub(super) fn first_other_class(store: &[String], data: &[String]) -> String {
    let at = store
        .iter()
        .zip(data)
        .position(|(a, b)| a != b)
        .unwrap_or(store.len().min(data.len()));
    format!(
        "class {at}: store {:?}, data {:?}",
        store.get(at).map_or("none", String::as_str),
        data.get(at).map_or("none", String::as_str)
    )
}
