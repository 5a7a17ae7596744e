//! The command line's face of the data library (feature `cli`): opening the dataset a
//! flag names, with the flag and the switch that lifts a refusal in the error. The
//! library's own errors name no flag; the three binaries open datasets through this.

use std::path::Path;

use crate::{DataError, Dataset, LinkPolicy};

/// The dataset at `path`, given by `flag` (`--data`, `--val`): an error opening it says
/// the flag and path, and where a symlink leaving the root was refused, the switch that
/// follows it.
pub fn open(path: &Path, flag: &str, links: LinkPolicy) -> anyhow::Result<Dataset> {
    let ds = Dataset::open(path, links).map_err(|e| {
        let outside = matches!(e, DataError::LinkOutsideRoot { .. });
        anyhow::Error::from(e).context(meal_cli::dataset_context(flag, path, outside))
    })?;
    // the parent of the splits, its "classes" train and val: refused here, not later as
    // weights of another class count
    const SPLITS: [&str; 5] = ["train", "val", "valid", "validation", "test"];
    let classes = ds.classes();
    if classes.len() >= 2 && classes.iter().all(|c| SPLITS.contains(&c.as_str())) {
        anyhow::bail!(
            "{flag} {}: its folders are splits ({}), not classes: give one split, e.g. {}",
            path.display(),
            classes.join(", "),
            path.join(&classes[0]).display()
        );
    }
    Ok(ds)
}
