//! Opening the dataset a flag names, with the flag and the switch that lifts a refusal
//! in the error. The data library's own errors name no flag; the three binaries open
//! datasets through this.

use std::path::Path;

use meal_data::{DataError, Dataset, LinkPolicy};

/// The dataset at `path`, given by `flag` (`--data`, `--val`): an error opening it says
/// the flag and path, and where a symlink leaving the root was refused, the switch that
/// follows it.
pub fn open_dataset(path: &Path, flag: &str, links: LinkPolicy) -> anyhow::Result<Dataset> {
    let ds = Dataset::open(path, links).map_err(|e| {
        let outside = matches!(e, DataError::LinkOutsideRoot { .. });
        anyhow::Error::from(e).context(crate::dataset_context(flag, path, outside))
    })?;
    // the parent of the splits, its "classes" train and val: refused here, not later as
    // weights of another class count
    const SPLITS: [&str; 5] = ["train", "val", "valid", "validation", "test"];
    let classes = ds.classes();
    // (a list file's labels may be any names)
    let splits = classes.len() >= 2 && classes.iter().all(|c| SPLITS.contains(&c.as_str()));
    if splits && path.is_dir() {
        // the split the flag most likely meant
        let like = classes
            .iter()
            .find(|c| flag.contains(c.as_str()))
            .unwrap_or(&classes[0]);
        anyhow::bail!(
            "{flag} {}: its folders are splits ({}), not classes: give one split, e.g. {}",
            path.display(),
            classes.join(", "),
            path.join(like).display()
        );
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parent of the splits is refused naming the split to give; a list file whose
    /// labels happen to be split names is a dataset like any other.
    #[test]
    fn the_parent_of_the_splits_is_refused_a_list_is_not() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "val"] {
            let d = dir.path().join(split);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("a.jpg"), b"").unwrap();
        }
        let e = open_dataset(dir.path(), "--val", LinkPolicy::StayInside)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("its folders are splits (train, val)") && e.ends_with("val"),
            "{e}"
        );
        let list = dir.path().join("list.csv");
        std::fs::write(&list, "train/a.jpg,train\nval/a.jpg,val\n").unwrap();
        let ds = open_dataset(&list, "--data", LinkPolicy::StayInside).unwrap();
        assert_eq!(ds.classes(), ["train", "val"]);
    }
}
