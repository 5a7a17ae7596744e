//! Crash-safe file replacement: write a temporary sibling, flush it to disk, rename it
//! over the target, then sync the directory, so a reader sees the old file or the new
//! one, never a torn one (the usual POSIX recipe; rename(2) is atomic within a directory).
//! Every file the pipeline replaces in place goes through here.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The temporary sibling used for `path`: `.NAME.meal-tmp` in the same directory.
/// Hidden, and named so no user file is taken for one: [`replace_with`] and
/// [`recover`] remove these (plain `NAME.tmp` / `NAME.old` are the names people give
/// their own backups, which an earlier version removed or renamed).
pub fn tmp_path(path: &Path) -> PathBuf {
    sibling(path, ".meal-tmp")
}

/// `.NAME` + `suffix` for `path`'s name `NAME`, in the same directory.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

/// Replace `path` by what `write` puts at the temporary path it is given (a file, or a
/// directory of files), atomically. On error the temporary is removed and `path` is left
/// as it was. Returns the error with the path it concerns.
pub fn replace_with<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), AtomicError<E>> {
    let tmp = tmp_path(path);
    remove_any(&tmp);
    if let Err(e) = write(&tmp) {
        remove_any(&tmp);
        return Err(AtomicError::Write(e));
    }
    let io_err = |p: &Path, e| AtomicError::Io(p.to_path_buf(), e);
    if let Err(e) = sync_tree(&tmp) {
        // (a full disk can fail the fsync: its space is given back at once)
        remove_any(&tmp);
        return Err(io_err(&tmp, e));
    }
    if tmp.is_dir() && path.exists() {
        // rename(2) will not replace a non-empty directory: move the old one aside first
        let old = old_path(path);
        remove_any(&old);
        // (one that cannot be removed failed the rename below as "directory not empty",
        // said of `path`)
        if fs::symlink_metadata(&old).is_ok() {
            remove_any(&tmp);
            return Err(io_err(
                &old,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "an earlier version left here could not be removed (its permissions?): \
                     remove it, then save again",
                ),
            ));
        }
        if let Err(e) = fs::rename(path, &old) {
            remove_any(&tmp);
            return Err(io_err(path, e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            // the old one back under its name; the new one given up
            let _ = fs::rename(&old, path);
            remove_any(&tmp);
            return Err(io_err(path, e));
        }
        remove_any(&old);
    } else if let Err(e) = fs::rename(&tmp, path) {
        // (a directory in the way, a read-only target): the temporary is not left
        remove_any(&tmp);
        return Err(io_err(path, e));
    }
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        sync_dir(dir).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// fsync a directory, so that the names it holds (a rename into it) survive a power
/// loss. A file system that cannot sync directories (EINVAL: some network and FUSE
/// mounts) is let be, as PostgreSQL's `fsync_fname` does.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match fs::File::open(dir)?.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

/// Where [`replace_with`] moves the directory it replaces, between its two renames:
/// `.NAME.meal-old`.
fn old_path(path: &Path) -> PathBuf {
    sibling(path, ".meal-old")
}

/// Finish or undo a [`replace_with`] of `path` that a crash interrupted, so that `path`
/// is a whole version and no temporary (`.NAME.meal-tmp`) or old (`.NAME.meal-old`)
/// sibling is left. Call it, holding the writer's lock, before reading `path`:
/// - `path` missing, the old one there: the crash fell between the directory swap's two
///   renames, after the new version was written and synced whole: the temporary becomes
///   `path` (or, without one, the old one goes back);
/// - otherwise a temporary is an unfinished or uncommitted write (removed: `path` is the
///   version before it) and an old one the previous version not yet deleted (removed).
///
/// Files named `NAME.tmp` or `NAME.old` (a user's backups) are not touched.
///
/// Returns what it did, for the caller to say.
pub fn recover(path: &Path) -> io::Result<Recovered> {
    let (tmp, old) = (tmp_path(path), old_path(path));
    let mut done = Recovered::Nothing;
    if !path.exists() && old.exists() {
        let from = if tmp.exists() { &tmp } else { &old };
        fs::rename(from, path).map_err(|e| io_at(path, e))?;
        done = match from == &tmp {
            true => Recovered::Finished,
            false => Recovered::RolledBack,
        };
    } else if tmp.exists() {
        done = Recovered::DroppedUnfinished;
    }
    remove_any(&tmp);
    remove_any(&old);
    Ok(done)
}

/// What [`recover`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// No interrupted replacement (at most an `.old` left after it was done, removed).
    Nothing,
    /// The crash fell between the swap's renames: the new version was put in place.
    Finished,
    /// The crash fell between the renames and the new version was lost: the previous
    /// version was put back.
    RolledBack,
    /// A write cut short (`.tmp`) was removed: `path` is the version before it.
    DroppedUnfinished,
}

/// Replace `path` by `bytes`, atomically.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_stepped(path, &tmp_path(path), bytes, &mut |_| {
        Ok::<(), io::Error>(())
    })
    .map_err(AtomicError::into_io)
}

/// [`write`] through the temporary `tmp` (a sibling of `path`; the label store hides
/// its temporaries from readers listing its directory), calling `before(step)` before
/// each step: 0 writes the temporary,
/// 1 flushes it to disk, 2 renames it over `path`, 3 syncs the directory. An error of
/// `before` ends the write there as a crash would, leaving what was done (at step 0,
/// half of `bytes` in the temporary): the label store's tests inject crashes so. An
/// I/O error removes the temporary (a full disk's space given back at once).
pub fn write_stepped<E>(
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    before: &mut dyn FnMut(u32) -> Result<(), E>,
) -> Result<(), AtomicError<E>> {
    use std::io::Write;
    let failed = |at: &Path, e| {
        let _ = fs::remove_file(tmp);
        AtomicError::Io(at.to_path_buf(), e)
    };
    // the temporary's name is the writer's own: whatever a crash (or anyone) left there
    // goes first, and the file is made new (`O_EXCL`, which opens no symbolic link):
    // opened as it was, a link there had its target overwritten, a hard link its
    // other names' bytes, and a pipe blocked the writer for good (a directory is
    // refused by the open, kept)
    match fs::symlink_metadata(tmp) {
        Ok(m) if m.is_dir() => {
            return Err(AtomicError::Io(
                tmp.to_path_buf(),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a directory, where this write's temporary file belongs: remove it",
                ),
            ))
        }
        Ok(_) => fs::remove_file(tmp).map_err(|e| AtomicError::Io(tmp.to_path_buf(), e))?,
        Err(_) => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| AtomicError::Io(tmp.to_path_buf(), e))?;
    if let Err(e) = before(0) {
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        return Err(AtomicError::Write(e));
    }
    f.write_all(bytes).map_err(|e| failed(tmp, e))?;
    before(1).map_err(AtomicError::Write)?;
    f.sync_all().map_err(|e| failed(tmp, e))?;
    drop(f);
    before(2).map_err(AtomicError::Write)?;
    // (a directory in the way, a read-only target): the temporary is not left
    fs::rename(tmp, path).map_err(|e| failed(path, e))?;
    before(3).map_err(AtomicError::Write)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir).map_err(|e| AtomicError::Io(dir.to_path_buf(), e))
}

/// `e` with the path it concerns in its message (its kind kept).
fn io_at(p: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// An error of [`replace_with`].
#[derive(Debug)]
pub enum AtomicError<E> {
    /// The caller's writer failed.
    Write(E),
    /// Syncing or renaming failed at this path.
    Io(PathBuf, io::Error),
}

impl From<AtomicError<crate::DataError>> for crate::DataError {
    fn from(e: AtomicError<crate::DataError>) -> Self {
        match e {
            AtomicError::Write(e) => e,
            AtomicError::Io(p, e) => crate::DataError::io(&p, e),
        }
    }
}

impl AtomicError<io::Error> {
    /// Both cases as one `io::Error` (the path goes into the message of the second).
    pub fn into_io(self) -> io::Error {
        match self {
            AtomicError::Write(e) => e,
            AtomicError::Io(p, e) => io_at(&p, e),
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for AtomicError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AtomicError::Write(e) => e.fmt(f),
            AtomicError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for AtomicError<E> {}

fn remove_any(p: &Path) {
    // (a link is removed as itself, never followed into what it names)
    if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        let _ = fs::remove_dir_all(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// fsync every file under `p` and every directory, `p` included (a file's data
/// synced under a name its directory has not synced may be lost with the name).
fn sync_tree(p: &Path) -> io::Result<()> {
    if p.is_dir() {
        for f in fs::read_dir(p)? {
            sync_tree(&f?.path())?;
        }
        sync_dir(p)
    } else {
        fs::File::open(p)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever stands at a write's temporary name is not written through: a link's
    /// target and a hard link's other name keep their bytes, a pipe does not block the
    /// write, a directory is refused naming it.
    #[test]
    fn a_write_goes_through_nothing_left_at_its_temporary_name() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let path = d.path().join("manifest.json");
        let tmp = tmp_path(&path);
        let plant: [(&str, &dyn Fn()); 3] = [
            ("symlink", &|| {
                std::os::unix::fs::symlink(&victim, &tmp).unwrap()
            }),
            ("hard link", &|| fs::hard_link(&victim, &tmp).unwrap()),
            ("pipe", &|| {
                let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
        ];
        for (what, plant) in plant {
            plant();
            write(&path, what.as_bytes()).unwrap();
            assert_eq!(fs::read(&path).unwrap(), what.as_bytes(), "{what}");
            assert_eq!(fs::read(&victim).unwrap(), b"precious", "{what}");
            assert!(fs::symlink_metadata(&tmp).is_err(), "{what}");
        }
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("keep"), b"k").unwrap();
        let e = write(&path, b"x").unwrap_err().to_string();
        assert!(
            e.contains("a directory, where this write's temporary file belongs"),
            "{e}"
        );
        assert_eq!(fs::read(tmp.join("keep")).unwrap(), b"k");
    }

    #[test]
    fn recover_finishes_or_undoes_an_interrupted_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ckpt");
        let file = |dir: &Path| fs::read_to_string(dir.join("v")).unwrap();
        let make = |dir: &Path, v: &str| {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("v"), v).unwrap();
        };
        // between the two renames: the new version (whole in .tmp) wins
        make(&old_path(&p), "1");
        make(&tmp_path(&p), "2");
        assert_eq!(recover(&p).unwrap(), Recovered::Finished);
        assert_eq!(file(&p), "2");
        assert!(!old_path(&p).exists() && !tmp_path(&p).exists());
        // after both renames, before .old was deleted: the new version stays
        make(&old_path(&p), "1");
        assert_eq!(recover(&p).unwrap(), Recovered::Nothing);
        assert_eq!(file(&p), "2");
        assert!(!old_path(&p).exists());
        // a write cut short: the version before it stays, the torn .tmp goes
        make(&tmp_path(&p), "torn");
        assert_eq!(recover(&p).unwrap(), Recovered::DroppedUnfinished);
        assert_eq!(file(&p), "2");
        assert!(!tmp_path(&p).exists());
        // only .old (its .tmp lost): the old version comes back
        fs::rename(&p, old_path(&p)).unwrap();
        assert_eq!(recover(&p).unwrap(), Recovered::RolledBack);
        assert_eq!(file(&p), "2");
        // nothing to do
        assert_eq!(recover(&p).unwrap(), Recovered::Nothing);
        assert_eq!(
            recover(&d.path().join("never")).unwrap(),
            Recovered::Nothing
        );
        // a user's own backups named `ckpt.old` / `ckpt.tmp` are not ours: neither put
        // back in place of a removed `ckpt` nor removed by a recovery or a replacement
        let (mine_old, mine_tmp) = (d.path().join("ckpt.old"), d.path().join("ckpt.tmp"));
        make(&mine_old, "mine");
        make(&mine_tmp, "mine too");
        fs::remove_dir_all(&p).unwrap();
        assert_eq!(recover(&p).unwrap(), Recovered::Nothing);
        assert!(!p.exists());
        replace_with(&p, |tmp| {
            make(tmp, "3");
            Ok::<(), io::Error>(())
        })
        .unwrap();
        replace_with(&p, |tmp| {
            make(tmp, "4");
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert_eq!(recover(&p).unwrap(), Recovered::Nothing);
        assert_eq!(file(&p), "4");
        assert_eq!(
            (file(&mine_old), file(&mine_tmp)),
            ("mine".into(), "mine too".into())
        );
    }

    #[test]
    fn replaces_files_and_directories_and_keeps_the_old_on_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.json");
        write(&f, b"one").unwrap();
        write(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let r: Result<(), AtomicError<io::Error>> = replace_with(&f, |tmp| {
            fs::write(tmp, b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert!(!tmp_path(&f).exists());

        let dir = d.path().join("ckpt");
        for v in [b"1", b"2"] {
            replace_with(&dir, |tmp| {
                fs::create_dir(tmp)?;
                fs::write(tmp.join("x"), v)
            })
            .unwrap();
        }
        assert_eq!(fs::read(dir.join("x")).unwrap(), b"2");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        // a directory where the file goes: the rename fails, and its temporary is not
        // left behind (a histogram named like a directory left `dir.png.tmp`)
        let blocked = d.path().join("dir.png");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("keep"), b"k").unwrap();
        let e = write(&blocked, b"png").unwrap_err();
        assert!(e.to_string().contains("dir.png"), "{e}");
        assert!(!tmp_path(&blocked).exists());
        assert_eq!(fs::read(blocked.join("keep")).unwrap(), b"k");
    }
}
