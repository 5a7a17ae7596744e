//! What the binary's errors add for the user: why a run had to write to a read-only
//! `--out`.

use std::path::Path;

use meal_data::dirlock::LockError;
use meal_store::StoreError;

/// `e` with `--out DIR is read-only, and WHY` on top when the store failed to write
/// because its file system is read-only; otherwise `e` as it is. The bare "Read-only
/// file system" of the file at fault says neither why the run wrote nor what to do (a
/// rerun over a complete store on a read-only mount writes nothing and passes).
pub fn read_only(e: anyhow::Error, out: &Path, why: &str) -> anyhow::Error {
    // (a device list locks the store itself: its error is the lock's)
    let read_only = e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_read_only)
            || c.downcast_ref::<LockError>()
                .is_some_and(LockError::is_read_only)
    });
    if !read_only {
        return e;
    }
    // an empty or missing directory holds no store: the run was to start one
    let fresh = std::fs::read_dir(out).map_or(true, |mut d| d.next().is_none());
    match fresh {
        true => e.context(format!(
            "--out {} is read-only, and a new store is written there: give a --out on a \
             writable file system",
            out.display()
        )),
        false => e.context(format!("--out {} is read-only, and {why}", out.display())),
    }
}

/// `e` with what to do on top when a file of the store in `dir` is missing or damaged
/// (a shard or `images.parquet`: gone, truncated, altered, unreadable): rerunning the
/// precompute that wrote the store writes it again; otherwise `e` as it is. A bare
/// "No such file or directory" of a shard said neither.
pub fn damaged_store(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let ours = |p: &Path| {
        p.parent() == Some(dir)
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-") || n == meal_store::images::IMAGES)
    };
    let damaged = e.chain().any(|c| match c.downcast_ref::<StoreError>() {
        Some(StoreError::Io { path, .. }) | Some(StoreError::Corrupt { path, .. }) => ours(path),
        _ => false,
    });
    // (the checksum's own message already says so)
    if !damaged || format!("{e:#}").contains("writes it again") {
        return e;
    }
    e.context(format!(
        "{}: a file of the store is missing or damaged; rerunning the precompute that wrote \
         it, unchanged, writes it again (for a store of workers: that worker, then merge)",
        dir.display()
    ))
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

    /// A missing or damaged shard or image table says what writes it again; a
    /// message that says so already, or another file's error, is left as it is.
    #[test]
    fn a_damaged_store_file_says_what_writes_it_again() {
        let dir = Path::new("s");
        let io = |name: &str| {
            anyhow::Error::from(StoreError::Io {
                path: dir.join(name),
                error: std::io::Error::from_raw_os_error(2),
            })
            .context("verify s")
        };
        for name in ["shard-000004.parquet", "images.parquet"] {
            let text = format!("{:#}", damaged_store(io(name), dir));
            assert!(
                text.starts_with("s: a file of the store is missing or damaged; rerunning")
                    && text.contains(name),
                "{text}"
            );
        }
        let text = format!("{:#}", damaged_store(io("manifest.json"), dir));
        assert!(text.starts_with("verify s: "), "{text}");
        let said = anyhow::Error::from(StoreError::Corrupt {
            path: dir.join("shard-000001.parquet"),
            reason: "checksum mismatch (rerunning it writes it again)".into(),
        });
        let text = format!("{:#}", damaged_store(said, dir));
        assert!(text.starts_with("s/shard-000001.parquet"), "{text}");
    }

    #[test]
    fn a_read_only_store_says_why_the_run_wrote() {
        // a store there (a file in the directory)
        let held = tempfile::tempdir().unwrap();
        std::fs::write(held.path().join("manifest.json"), b"{}").unwrap();
        let s = held.path();
        // EROFS under a context: the hint goes on top, the file stays in the chain
        let e = read_only(store_io(30), s, "it writes");
        let text = format!("{e:#}");
        assert!(
            text.starts_with(&format!(
                "--out {} is read-only, and it writes",
                s.display()
            )),
            "{text}"
        );
        assert!(text.contains(".manifest.json.tmp"), "{text}");
        // a lock file that cannot be made on a read-only mount, as merge meets it
        let lock = StoreError::Locked(meal_data::dirlock::LockError::Io {
            path: "s/.lock".into(),
            error: std::io::Error::from_raw_os_error(30),
        });
        let e = read_only(lock.into(), s, "it merges");
        assert!(format!("{e:#}").contains("is read-only, and it merges"));
        // the lock a device list takes itself, bare
        let lock = LockError::Io {
            path: "s/.lock".into(),
            error: std::io::Error::from_raw_os_error(30),
        };
        let e = read_only(anyhow::Error::from(lock).context("--out s"), s, "w");
        assert!(format!("{e:#}").contains("is read-only, and w"));
        // a --out with no store yet: the run was to write a new one
        let dir = tempfile::tempdir().unwrap();
        let e = read_only(store_io(30), dir.path(), "it writes");
        assert!(
            format!("{e:#}").contains("a new store is written there"),
            "{e:#}"
        );
        // any other error (a full disk, a bad file) is left as it is
        for e in [store_io(28), anyhow::anyhow!("Read-only file system")] {
            let before = format!("{e:#}");
            assert_eq!(format!("{:#}", read_only(e, s, "x")), before);
        }
    }
}
