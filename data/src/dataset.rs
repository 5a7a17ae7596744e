//! Dataset index: ImageFolder (`root/<class>/<file>`) as torchvision builds it, or a CSV
//! list file (`path,label`), with stable sample ids and a fingerprint.
//!
//! Order follows torchvision's `datasets.folder.make_dataset` (pytorch/vision,
//! torchvision/datasets/folder.py): classes sorted by name give the label index; within a
//! class, `sorted(os.walk(dir))` then `sorted(fnames)`; the sample id is the position in
//! that order. So our sample `i` is torchvision's `dataset.samples[i]`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// The most classes a dataset may have: the label store keeps class ids as 16-bit
/// integers (docs/FORMAT.md), far above ImageNet-21k's 21,841.
pub const MAX_CLASSES: u32 = 1 << 16;

/// torchvision's `IMG_EXTENSIONS`. Files with other extensions are not samples; files
/// with these extensions that we cannot decode (e.g. `.webp`) are samples that fail to
/// decode, so sample ids agree with torchvision's.
pub const IMG_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// One image of a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable index of the sample in the dataset order.
    pub id: u32,
    /// Path relative to the dataset root, `/`-separated.
    pub path: String,
    /// Hard label (class index).
    pub label: u32,
    /// File size in bytes when indexed.
    pub bytes: u64,
}

/// How far paths may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkPolicy {
    /// Symlinks are followed only when their target stays inside the root (default).
    #[default]
    StayInside,
    /// Symlinks may point anywhere (the user asked for it).
    FollowAnywhere,
}

impl LinkPolicy {
    /// The policy of a `--follow-links` switch: follow anywhere when set.
    pub fn follow_if(follow: bool) -> Self {
        if follow {
            LinkPolicy::FollowAnywhere
        } else {
            LinkPolicy::StayInside
        }
    }
}

/// A dataset fingerprint: SHA-256 over the class list and every sample's relative path,
/// byte size and label. Two indexes with equal fingerprints list the same files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hex SHA-256 digest.
    pub sha256: String,
    /// Number of samples.
    pub samples: u64,
    /// Number of classes.
    pub classes: u32,
}

/// An indexed dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<Sample>,
    fingerprint: Fingerprint,
}

impl Dataset {
    /// Index `path`: a directory in ImageFolder layout, or a `.csv` list file.
    pub fn open(path: &Path, links: LinkPolicy) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            return Self::image_folder(path, links);
        }
        // a FIFO or device would block the reader (or never end): a list is a file
        if !meta.is_file() {
            return Err(DataError::dataset(
                path,
                "is neither a directory nor a regular file (a FIFO, socket or device?); expected an ImageFolder directory or a CSV list file",
            ));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        if name.as_deref().is_some_and(has_image_extension) {
            return Err(DataError::dataset(
                path,
                "is an image file; expected an ImageFolder directory (root/<class>/<image>) or a CSV list file of `path,label` rows",
            ));
        }
        Self::list_file(path, links)
    }

    /// Index an ImageFolder root: each sub-directory is a class.
    pub fn image_folder(root: &Path, links: LinkPolicy) -> Result<Self> {
        let canon_root = root.canonicalize().map_err(|e| DataError::io(root, e))?;
        let mut classes = Vec::new();
        for (name, meta) in read_dir_sorted(root)? {
            if meta.is_some_and(|m| m.is_dir()) {
                classes.push(name);
            }
        }
        if classes.is_empty() {
            return Err(DataError::dataset(
                root,
                "no class directories (expected root/<class>/<image>)",
            ));
        }
        check_class_count(root, classes.len(), "class directories")?;
        let mut samples = Vec::new();
        let mut empty = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = samples.len();
            let mut files: Vec<(String, String)> = Vec::new(); // (dir rel, file name)
            walk(
                &root.join(class),
                class,
                &mut vec![canon_root.clone()],
                &mut files,
            )?;
            files.sort();
            for (dir, name) in files {
                if !has_image_extension(&name) {
                    continue;
                }
                let rel = format!("{dir}/{name}");
                let full = root.join(&rel);
                let bytes = match fs::metadata(&full) {
                    Ok(m) => {
                        check_inside(&full, &canon_root, links)?;
                        m.len()
                    }
                    // a dangling symlink: kept, so the loader reports it as unreadable
                    Err(_) if fs::symlink_metadata(&full).is_ok() => 0,
                    Err(e) => return Err(DataError::io(&full, e)),
                };
                samples.push(Sample {
                    id: sample_id(samples.len(), root)?,
                    path: rel,
                    label: label as u32,
                    bytes,
                });
            }
            if samples.len() == before {
                empty.push(format!("{class} (class {label})"));
            }
        }
        // kept as classes (their indices are torchvision's order, and a split may lack
        // a class the other has), but said: a stray `.ipynb_checkpoints` or an emptied
        // folder shifts every label after it (torchvision's ImageFolder refuses them)
        if !empty.is_empty() {
            tracing::warn!(
                "{}: {} class folders hold no image, yet count as classes: {}{}",
                root.display(),
                empty.len(),
                empty[..empty.len().min(5)].join(", "),
                if empty.len() > 5 { ", ..." } else { "" }
            );
        }
        if samples.is_empty() {
            return Err(DataError::dataset(
                root,
                "no image files in any class directory",
            ));
        }
        Ok(Self::build(root.to_path_buf(), classes, samples))
    }

    /// Index a CSV list file with columns `path,label` (a header line `path,label` is
    /// optional). Paths are relative to the list file's directory. Labels are either all
    /// integers (classes `0..=max`, named by their number; `2.0` is 2) or all names
    /// (classes sorted by name, as ImageFolder); a mix is refused, naming the odd line.
    /// Samples keep the file's order (docs/DATA.md, "List file").
    pub fn list_file(list: &Path, links: LinkPolicy) -> Result<Self> {
        let root = list
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let root = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root
        };
        let canon_root = root.canonicalize().map_err(|e| DataError::io(&root, e))?;
        // (fields are trimmed below: a path only where the file as written is absent, so
        // a quoted name with a leading space is found, and `a.jpg, 3` reads as typed)
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::None)
            .from_path(list)
            .map_err(|e| DataError::dataset(list, e))?;
        // (path as written, label, line number)
        let mut rows: Vec<(String, String, usize)> = Vec::new();
        for (i, rec) in reader.records().enumerate() {
            let rec = rec.map_err(|e| DataError::dataset(list, e))?;
            if rec.len() != 2 {
                return Err(DataError::dataset(
                    list,
                    format!(
                        "line {}: expected 2 columns `path,label`, got {}",
                        i + 1,
                        rec.len()
                    ),
                ));
            }
            let (path, label) = (&rec[0], rec[1].trim());
            if i == 0 && path.trim() == "path" && label == "label" {
                continue;
            }
            if i == 0 && path.trim() == "label" && label == "path" {
                return Err(DataError::dataset(
                    list,
                    "line 1: the header names the columns `label,path`: a list's columns are \
                     `path,label`, in that order",
                ));
            }
            rows.push((path.to_string(), label.to_string(), i + 1));
        }
        if rows.is_empty() {
            return Err(DataError::dataset(list, "no samples in list file"));
        }
        // an empty label would be a class named "" (every label empty: one such class)
        if let Some((path, _, line)) = rows.iter().find(|r| r.1.is_empty()) {
            return Err(DataError::dataset(
                list,
                format!("line {line}: {path:?} has an empty label"),
            ));
        }
        // a label of digits is a class index, however large (`4294967296` became a class
        // name when it did not parse as a u32); so is one with a zero fraction (`2.0`:
        // pandas writes an integer column holding a missing value as floats), which as
        // a name sorted `10.0` before `2.0` and renumbered the classes without a word
        let index = |s: &str| {
            let int = match s.split_once('.') {
                Some((int, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int,
                Some(_) => return None,
                None => s,
            };
            (!int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()))
                .then(|| int.parse::<u64>().unwrap_or(u64::MAX))
        };
        let numeric: Option<Vec<u64>> = rows.iter().map(|r| index(&r.1)).collect();
        let (classes, labels): (Vec<String>, Vec<u32>) = match numeric {
            Some(ls) => {
                // numbers name classes 0..=max: one a typo away from billions of classes
                if let Some((r, _)) = rows.iter().zip(&ls).find(|(_, &l)| l >= MAX_CLASSES as u64) {
                    return Err(DataError::dataset(
                        list,
                        format!(
                            "line {}: label {} is beyond the {MAX_CLASSES} classes a dataset may have (labels are 0 to {})",
                            r.2,
                            r.1,
                            MAX_CLASSES - 1
                        ),
                    ));
                }
                let max = *ls.iter().max().unwrap_or(&0);
                // indices no row has are classes all the same (a split may lack one), but
                // said, as an ImageFolder's empty folders are: a list numbered from 1
                // leaves class 0 empty and shifts every class against 0-based teachers
                let mut seen = vec![false; max as usize + 1];
                for &l in &ls {
                    seen[l as usize] = true;
                }
                let unused: Vec<String> = (0..=max as usize)
                    .filter(|&c| !seen[c])
                    .map(|c| c.to_string())
                    .collect();
                if !unused.is_empty() {
                    tracing::warn!(
                        "{}: {} class indices have no sample, yet count as classes: {}{}{}",
                        list.display(),
                        unused.len(),
                        unused[..unused.len().min(5)].join(", "),
                        if unused.len() > 5 { ", ..." } else { "" },
                        if !seen[0] {
                            " (labels count from 0: a list numbered from 1 leaves class 0 empty)"
                        } else {
                            ""
                        }
                    );
                }
                // (every index is below MAX_CLASSES, checked above)
                (
                    (0..=max).map(|c| c.to_string()).collect(),
                    ls.iter().map(|&l| l as u32).collect(),
                )
            }
            None => {
                // a mix is a typo (`5a`, `-1`) in one kind or the other: read as names, it
                // would renumber every class (`10` sorting before `2`) without a word
                let is_int = |r: &&(String, String, usize)| index(&r.1).is_some();
                let ints = rows.iter().filter(is_int).count();
                if ints > 0 {
                    // the minority kind is the typo
                    let mostly_ints = ints * 2 >= rows.len();
                    let odd = match mostly_ints {
                        true => rows.iter().find(|r| !is_int(r)),
                        false => rows.iter().find(is_int),
                    };
                    if let Some((_, label, line)) = odd {
                        return Err(DataError::dataset(
                            list,
                            format!(
                                "line {line}: label {label:?} {}, while {ints} of the {} labels are \
                                 class indices: labels must be all class indices (0, 1, ...) or \
                                 all class names{}",
                                match mostly_ints {
                                    true => "is not a class index (a non-negative integer)",
                                    false => "is an integer among class names",
                                },
                                rows.len(),
                                match *line {
                                    1 => " (a header line must read `path,label`)",
                                    _ => "",
                                }
                            ),
                        ));
                    }
                }
                let names: BTreeSet<&str> = rows.iter().map(|r| r.1.as_str()).collect();
                // (70,000 names were accepted)
                check_class_count(list, names.len(), "class names")?;
                let classes: Vec<String> = names.into_iter().map(str::to_string).collect();
                let labels = rows
                    .iter()
                    .map(|r| classes.binary_search(&r.1).unwrap_or(0) as u32)
                    .collect();
                (classes, labels)
            }
        };
        let mut samples = Vec::with_capacity(rows.len());
        // a path listed twice (with two labels, it made one image two samples of two
        // classes)
        let mut first_line: std::collections::HashMap<String, usize> = Default::default();
        for ((written, _, line), label) in rows.into_iter().zip(labels) {
            // as written where that file exists (a quoted name may begin with a space),
            // otherwise trimmed
            let trimmed = written.trim();
            let path = match written != trimmed && root.join(&written).is_file() {
                true => written.as_str(),
                false => trimmed,
            };
            if path.is_empty() {
                return Err(DataError::dataset(
                    list,
                    format!("line {line}: the path is empty"),
                ));
            }
            let rel = safe_relative(path).ok_or_else(|| {
                DataError::dataset(
                    list,
                    format!("line {line}: entry {path:?} must be a relative path without `..`"),
                )
            })?;
            // compared as normalised (`./a.jpg` and `a//b.jpg` spell `a.jpg`, `a/b.jpg`)
            if let Some(was) = first_line.insert(rel.clone(), line) {
                return Err(DataError::dataset(
                    list,
                    format!("line {line}: {path:?} is listed again (first on line {was})"),
                ));
            }
            let full = root.join(&rel);
            // named by the list's line: a missing file is a typo or a stale list there
            check_inside(&full, &canon_root, links).map_err(|e| match e {
                DataError::LinkOutsideRoot {
                    path, target, root, ..
                } => DataError::LinkOutsideRoot {
                    listed: Some(format!("{}: line {line}: ", list.display())),
                    path,
                    target,
                    root,
                },
                e => DataError::dataset(list, format!("line {line}: {e}")),
            })?;
            let meta = fs::metadata(&full).map_err(|e| {
                // a first line naming no file may be a header of other names
                let header = match line {
                    1 => " (a header line must read `path,label`)",
                    _ => "",
                };
                DataError::dataset(
                    list,
                    format!("line {line}: {}: {e}{header}", full.display()),
                )
            })?;
            if !meta.is_file() {
                return Err(DataError::dataset(
                    list,
                    format!("line {line}: {} is not a file", full.display()),
                ));
            }
            let bytes = meta.len();
            samples.push(Sample {
                id: sample_id(samples.len(), list)?,
                path: rel,
                label,
                bytes,
            });
        }
        Ok(Self::build(root, classes, samples))
    }

    fn build(root: PathBuf, classes: Vec<String>, samples: Vec<Sample>) -> Self {
        let fingerprint = fingerprint(&classes, &samples);
        Dataset {
            root,
            classes,
            samples,
            fingerprint,
        }
    }

    /// The dataset root; sample paths are relative to it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names; the label is the index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// All samples in id order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the dataset has no samples (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sample with id `id`.
    pub fn sample(&self, id: u32) -> Option<&Sample> {
        self.samples.get(id as usize)
    }

    /// The absolute (root-joined) path of a sample.
    pub fn full_path(&self, s: &Sample) -> PathBuf {
        self.root.join(&s.path)
    }

    /// The fingerprint of this index.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

fn sample_id(n: usize, at: &Path) -> Result<u32> {
    u32::try_from(n).map_err(|_| DataError::dataset(at, "more than 2^32 samples"))
}

/// The fingerprint over classes and samples (format `meal-dataset-v1`, docs/DATA.md).
pub fn fingerprint(classes: &[String], samples: &[Sample]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"meal-dataset-v1\n");
    for c in classes {
        h.update(c.as_bytes());
        h.update(b"\n");
    }
    h.update(b"\n");
    for s in samples {
        h.update(s.path.as_bytes());
        h.update(b"\0");
        h.update(s.bytes.to_le_bytes());
        h.update(s.label.to_le_bytes());
    }
    Fingerprint {
        sha256: hex::encode(h.finalize()),
        samples: samples.len() as u64,
        classes: classes.len() as u32,
    }
}

/// SHA-256 of `samples`' relative paths and labels: which files a range of the dataset
/// lists. With [`sizes_sha256`], what a label store's shard records of its images
/// (docs/FORMAT.md), so a store continued after some images changed keeps the shards
/// whose images did not.
pub fn listing_sha256(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    h.update(b"meal-listing-v1\n");
    for s in samples {
        h.update(s.path.as_bytes());
        h.update(b"\0");
        h.update(s.label.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// SHA-256 of `samples`' byte sizes, in order (see [`listing_sha256`]).
pub fn sizes_sha256(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    h.update(b"meal-sizes-v1\n");
    for s in samples {
        h.update(s.bytes.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn has_image_extension(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((_, ext)) => IMG_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()),
        None => false,
    }
}

/// The entries of `dir` sorted by name, with their metadata (symlinks followed); names
/// that are not valid UTF-8 are refused (they could not be stored portably); `None` for
/// a dangling symlink, which is still listed (as a sample it is reported unreadable by the
/// loader, like any other bad file, instead of vanishing from the index).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, Option<fs::Metadata>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            // a file that is not an image is no sample (torchvision passes over it):
            // only an image, or a directory that may hold some, needs a portable name
            Err(raw) => {
                let image = has_image_extension(&raw.to_string_lossy());
                if !image && fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
                    continue;
                }
                return Err(DataError::dataset(&path, "file name is not valid UTF-8"));
            }
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => Some(m),
            Err(_) if fs::symlink_metadata(&path).is_ok() => None,
            Err(e) => return Err(DataError::io(&path, e)),
        };
        out.push((name, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Collect `(dir relative to root, file name)` of all files under `dir` (and dangling
/// symlinks). `above` holds the canonical directories from the root down to `dir`: a
/// symlinked directory that leads back to one of them is a loop, refused (it would
/// list the same files again and again).
fn walk(
    dir: &Path,
    rel: &str,
    above: &mut Vec<PathBuf>,
    out: &mut Vec<(String, String)>,
) -> Result<()> {
    let canon = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;
    if let Some(a) = above.iter().find(|a| **a == canon) {
        return Err(DataError::dataset(
            dir,
            format!(
                "symlink loop: this directory is {}, which contains it",
                a.display()
            ),
        ));
    }
    above.push(canon);
    for (name, meta) in read_dir_sorted(dir)? {
        match meta {
            Some(m) if m.is_dir() => walk(&dir.join(&name), &format!("{rel}/{name}"), above, out)?,
            Some(m) if m.is_file() => out.push((rel.to_string(), name)),
            Some(_) => {}
            None => out.push((rel.to_string(), name)),
        }
    }
    above.pop();
    Ok(())
}

/// Refuses more than [`MAX_CLASSES`] classes (`count` of them, as `what` at `path`):
/// class ids are 16-bit, for class directories and a list's names alike.
fn check_class_count(path: &Path, count: usize, what: &str) -> Result<()> {
    if count > MAX_CLASSES as usize {
        return Err(DataError::dataset(
            path,
            format!("{count} {what}: a dataset may have at most {MAX_CLASSES} classes"),
        ));
    }
    Ok(())
}

/// `p` as a `/`-separated relative path with no `..`, root or prefix component.
fn safe_relative(p: &str) -> Option<String> {
    let path = Path::new(p);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn check_inside(full: &Path, canon_root: &Path, links: LinkPolicy) -> Result<()> {
    if links == LinkPolicy::FollowAnywhere {
        return Ok(());
    }
    let canon = full.canonicalize().map_err(|e| DataError::io(full, e))?;
    if !canon.starts_with(canon_root) {
        return Err(DataError::LinkOutsideRoot {
            listed: None,
            path: full.to_path_buf(),
            target: canon,
            root: canon_root.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(safe_relative("a/b.jpg").as_deref(), Some("a/b.jpg"));
        assert_eq!(safe_relative("./a/./b.jpg").as_deref(), Some("a/b.jpg"));
        assert_eq!(safe_relative("../a.jpg"), None);
        assert_eq!(safe_relative("a/../../b.jpg"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
    }

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension("x.JPG"));
        assert!(has_image_extension("x.webp"));
        assert!(!has_image_extension("x.txt"));
        assert!(!has_image_extension("jpg"));
    }
}
