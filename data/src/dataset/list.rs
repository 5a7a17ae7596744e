//! A CSV list file (`path,label`) as a dataset: the rules of docs/DATA.md, "List file".

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::{check_class_count, check_inside, sample_id, Dataset, LinkPolicy, Sample, MAX_CLASSES};
use crate::error::{DataError, Result};

impl Dataset {
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
        // a first line whose path names no file may be a header of other names
        // (`file,class`): said by whichever refusal meets it first
        let header = match rows.first() {
            Some((path, _, 1)) if fs::symlink_metadata(root.join(path.trim())).is_err() => {
                " (a header line must read `path,label`)"
            }
            _ => "",
        };
        let header = |line: usize| if line == 1 { header } else { "" };
        // an empty label would be a class named "" (every label empty: one such class)
        if let Some((path, _, line)) = rows.iter().find(|r| r.1.is_empty()) {
            return Err(DataError::dataset(
                list,
                format!("line {line}: {path:?} has an empty label"),
            ));
        }
        // a quote left open takes in the lines after it as one label (Python's csv reads
        // it so too): a class name of several lines, which no class list can hold
        if let Some((path, label, line)) = rows.iter().find(|r| r.1.contains(['\n', '\r'])) {
            return Err(DataError::dataset(
                list,
                format!(
                    "line {line}: {path:?} has a label of several lines ({:?}): a quote left \
                     open there takes in the lines after it",
                    crate::error::first_few(&label.lines().collect::<Vec<_>>(), 2)
                ),
            ));
        }
        // a label of digits is a class index, however large (`4294967296` became a class
        // name when it did not parse as a u32); so is one with a zero fraction (`2.0`:
        // pandas writes an integer column holding a missing value as floats), which as
        // a name sorted `10.0` before `2.0` and renumbered the classes without a word
        let index = |s: &str| {
            // (`+2` too, as Python's int() and pandas read it: as a name `+10` sorted
            // before `+2`)
            let s = s.strip_prefix('+').unwrap_or(s);
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
                        "{}: {} class indices have no sample, yet count as classes: {}{}",
                        list.display(),
                        unused.len(),
                        crate::error::first_few(&unused, 5),
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
                                header(*line)
                            ),
                        ));
                    }
                }
                // numbers that are no class index (`-1`, `0.5`, `1e1`) throughout: read as
                // names they would be classes sorted as text (`-10` before `-2`), which
                // is no one's meaning
                if rows.iter().all(|r| r.1.parse::<f64>().is_ok()) {
                    if let Some((_, label, line)) = rows.first() {
                        return Err(DataError::dataset(
                            list,
                            format!(
                                "line {line}: label {label:?}: the labels are numbers but not \
                                 class indices (whole numbers 0, 1, ...): write them as indices, \
                                 or as class names{}",
                                header(*line)
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
                e => DataError::dataset(list, format!("line {line}: {e}{}", header(line))),
            })?;
            let meta = fs::metadata(&full).map_err(|e| {
                DataError::dataset(
                    list,
                    format!("line {line}: {}: {e}{}", full.display(), header(line)),
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
        Ok(Self::build(root, list.to_path_buf(), classes, samples))
    }
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
}
