//! What the binary's errors add for the user: the flag of a dataset that failed to open
//! (and the switch that follows links out of it), and why a run had to write to a
//! read-only `--out`.

use std::path::Path;

use anyhow::Result;
use meal_data::{DataError, Dataset, LinkPolicy};
use meal_store::StoreError;

/// The dataset of `--data`, its errors named by the flag.
pub fn open_data(data: &Path, links: LinkPolicy) -> Result<Dataset> {
    Dataset::open(data, links).map_err(|e| {
        let outside = matches!(e, DataError::LinkOutsideRoot { .. });
        anyhow::Error::from(e).context(meal_cli::dataset_context("--data", data, outside))
    })
}

/// `e` with `--out DIR is read-only, and WHY` on top when the store failed to write
/// because its file system is read-only; otherwise `e` as it is. The bare "Read-only
/// file system" of the file at fault says neither why the run wrote nor what to do (a
/// rerun over a complete store on a read-only mount writes nothing and passes).
pub fn read_only(e: anyhow::Error, out: &Path, why: &str) -> anyhow::Error {
    let read_only = e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_read_only)
    });
    if read_only {
        e.context(format!("--out {} is read-only, and {why}", out.display()))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_io(code: i32) -> anyhow::Error {
        let e = StoreError::Io {
            path: "s/.manifest.json.tmp".into(),
            error: std::io::Error::from_raw_os_error(code),
        };
        anyhow::Error::from(e).context("--out s")
    }

    #[test]
    fn a_read_only_store_says_why_the_run_wrote() {
        // EROFS under a context: the hint goes on top, the file stays in the chain
        let e = read_only(store_io(30), Path::new("s"), "it writes");
        let text = format!("{e:#}");
        assert!(
            text.starts_with("--out s is read-only, and it writes"),
            "{text}"
        );
        assert!(text.contains(".manifest.json.tmp"), "{text}");
        // a lock file that cannot be made on a read-only mount, as merge meets it
        let lock = StoreError::Locked(meal_data::dirlock::LockError::Io {
            path: "s/.lock".into(),
            error: std::io::Error::from_raw_os_error(30),
        });
        let e = read_only(lock.into(), Path::new("s"), "it merges");
        assert!(format!("{e:#}").contains("is read-only, and it merges"));
        // any other error (a full disk, a bad file) is left as it is
        for e in [store_io(28), anyhow::anyhow!("Read-only file system")] {
            let before = format!("{e:#}");
            assert_eq!(format!("{:#}", read_only(e, Path::new("s"), "x")), before);
        }
    }
}
