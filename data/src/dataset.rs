//! Dataset index: ImageFolder (`root/<class>/<file>`) as torchvision builds it, or a CSV
//! list file (`path,label`), with stable sample ids and a fingerprint.
//!
//! Order follows torchvision's `datasets.folder.make_dataset` (pytorch/vision,
//! torchvision/datasets/folder.py): classes sorted by name give the label index; within a
//! class, `sorted(os.walk(dir))` then `sorted(fnames)`; the sample id is the position in
//! that order. So our sample `i` is torchvision's `dataset.samples[i]`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

mod diff;
mod list;

pub use diff::{first_difference, other_root, Moved};

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
    /// What was opened: the root, or the list file.
    source: PathBuf,
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
        // (whether each class directory is a symbolic link)
        let mut class_links = Vec::new();
        for (name, meta, link) in read_dir_sorted(root)? {
            if meta.is_some_and(|m| m.is_dir()) {
                classes.push(name);
                class_links.push(link);
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
        // directories a class reached again through a link (its images indexed once a
        // path, as torchvision's followlinks walk indexes them)
        let mut again: Vec<String> = Vec::new();
        // class folders that are one directory (a link to another class's folder): each
        // of its images is indexed under both labels, as torchvision's ImageFolder does,
        // which is more often a mistake than a wish
        let mut class_dirs: std::collections::HashMap<PathBuf, &str> = Default::default();
        let mut same = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = samples.len();
            let mut files: Vec<Found> = Vec::new();
            let mut walk = Walk {
                above: vec![canon_root.clone()],
                walked: Default::default(),
                again: Vec::new(),
                out: &mut files,
            };
            let dir = root.join(class);
            let linked = class_links[label];
            let canon = match linked {
                true => dir.canonicalize().map_err(|e| DataError::io(&dir, e))?,
                false => canon_root.join(class),
            };
            if let Some(first) = class_dirs.insert(canon.clone(), class) {
                same.push(format!("{class} and {first}"));
            }
            walk.dir(&dir, canon, class, linked, linked)?;
            again.extend(walk.again);
            files.sort_by(|a, b| (&a.dir, &a.name).cmp(&(&b.dir, &b.name)));
            for f in files {
                if !has_image_extension(&f.name) {
                    continue;
                }
                let rel = format!("{}/{}", f.dir, f.name);
                let full = root.join(&rel);
                // (a path through no link lies inside the root: only a linked one is
                // resolved, which costs a lookup per component)
                let bytes = match f.bytes {
                    Some(n) => {
                        if f.linked {
                            check_inside(&full, &canon_root, links)?;
                        }
                        n
                    }
                    // a dangling symlink: kept, so the loader reports it as unreadable
                    None => 0,
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
                "{}: {} class folders hold no image, yet count as classes: {}",
                root.display(),
                empty.len(),
                crate::error::first_few(&empty, 5)
            );
        }
        if !same.is_empty() {
            tracing::warn!(
                "{}: {} class folders are the same directory as another (a link?), and their \
                 images count under each label: {}",
                root.display(),
                same.len(),
                crate::error::first_few(&same, 5)
            );
        }
        if !again.is_empty() {
            tracing::warn!(
                "{}: {} directories are reached again through links within their class, \
                 and their images are indexed once per path, as torchvision indexes them: {}",
                root.display(),
                again.len(),
                crate::error::first_few(&again, 5)
            );
        }
        if samples.is_empty() {
            return Err(DataError::dataset(
                root,
                "no image files in any class directory",
            ));
        }
        Ok(Self::build(
            root.to_path_buf(),
            root.to_path_buf(),
            classes,
            samples,
        ))
    }

    fn build(root: PathBuf, source: PathBuf, classes: Vec<String>, samples: Vec<Sample>) -> Self {
        let fingerprint = fingerprint(&classes, &samples);
        Dataset {
            root,
            source,
            classes,
            samples,
            fingerprint,
        }
    }

    /// The dataset root; sample paths are relative to it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What was opened: the ImageFolder root, or the list file (whose directory is
    /// [`Dataset::root`]): the name to give the dataset by in a message.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Class names; the label is the index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// All samples in id order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Images per class, indexed by label (a class folder of no image counts 0).
    pub fn class_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.classes.len()];
        for s in &self.samples {
            counts[s.label as usize] += 1;
        }
        counts
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

/// The entries of `dir` sorted by name: each with its metadata (symlinks followed) and
/// whether the entry itself is a symbolic link. Names that are not valid UTF-8 are
/// refused (they could not be stored portably); the metadata is `None` for a dangling
/// symlink, which is still listed (as a sample it is reported unreadable by the loader,
/// like any other bad file, instead of vanishing from the index).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, Option<fs::Metadata>, bool)>> {
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
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let meta = match fs::metadata(&path) {
            Ok(m) => Some(m),
            Err(_) if fs::symlink_metadata(&path).is_ok() => None,
            Err(e) => return Err(DataError::io(&path, e)),
        };
        out.push((name, meta, link));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A file found under a class directory.
struct Found {
    /// Its directory, relative to the root.
    dir: String,
    /// Its file name.
    name: String,
    /// Its size (`None`: a dangling symlink).
    bytes: Option<u64>,
    /// Whether its path passes through a symbolic link (itself one, or a directory above):
    /// only such a path may lead outside the root.
    linked: bool,
}

/// A class directory's walk: all files under it (and dangling symlinks), as
/// `sorted(os.walk(dir, followlinks=True))` lists them.
struct Walk<'a> {
    /// The canonical directories from the root down to the one walked: a symlinked
    /// directory that leads back to one of them is a loop, refused (it would list the
    /// same files again and again).
    above: Vec<PathBuf>,
    /// The canonical directories walked so far.
    walked: std::collections::HashSet<PathBuf>,
    /// Directories reached again through a link, relative to the root.
    again: Vec<String>,
    out: &'a mut Vec<Found>,
}

impl Walk<'_> {
    /// Walk `dir` (canonical path `canon`, `rel` from the root); `linked`: whether its
    /// path passes through a link; `link`: whether `dir` itself is one. A directory that
    /// is a link is resolved, and checked for a loop; one that is not is its parent's
    /// canonical path and its name (a lookup per component, or a loop check, for every
    /// directory made deep trees cubic in their depth).
    fn dir(
        &mut self,
        dir: &Path,
        canon: PathBuf,
        rel: &str,
        linked: bool,
        link: bool,
    ) -> Result<()> {
        if link {
            if let Some(a) = self.above.iter().find(|a| **a == canon) {
                return Err(DataError::dataset(
                    dir,
                    format!(
                        "symlink loop: this directory is {}, which contains it",
                        a.display()
                    ),
                ));
            }
        }
        self.walked.insert(canon.clone());
        self.above.push(canon);
        for (name, meta, link) in read_dir_sorted(dir)? {
            let path = dir.join(&name);
            match meta {
                Some(m) if m.is_dir() => {
                    let canon = match link {
                        true => path.canonicalize().map_err(|e| DataError::io(&path, e))?,
                        false => self.above[self.above.len() - 1].join(&name),
                    };
                    // (said once, at the link: the directories under it follow)
                    if link && self.walked.contains(&canon) {
                        self.again.push(format!("{rel}/{name}"));
                    }
                    self.dir(&path, canon, &format!("{rel}/{name}"), linked || link, link)?
                }
                Some(m) if m.is_file() => self.out.push(Found {
                    dir: rel.to_string(),
                    name,
                    bytes: Some(m.len()),
                    linked: linked || link,
                }),
                Some(_) => {}
                None => self.out.push(Found {
                    dir: rel.to_string(),
                    name,
                    bytes: None,
                    linked: true,
                }),
            }
        }
        self.above.pop();
        Ok(())
    }
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
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension("x.JPG"));
        assert!(has_image_extension("x.webp"));
        assert!(!has_image_extension("x.txt"));
        assert!(!has_image_extension("jpg"));
    }
}
