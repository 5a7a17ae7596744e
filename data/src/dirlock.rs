//! An exclusive advisory lock on an output directory (a label store, a run), so that two
//! processes never write the same directory: the second is refused with the first's
//! process id. `flock(2)` on `DIR/.lock`: the kernel drops the lock when the process
//! exits or crashes, so a stale lock file never blocks a rerun.
//!
//! A lock file exists while it is held: it is removed when the lock is dropped (a shared
//! lock's by the last holder), so a finished run leaves none, and a stale one left by a
//! crash goes with the next run's. The directories the lock created go too, where they
//! are empty, after a run that wrote nothing (a failed run leaves no stray directory).
//! The file is unlinked while still locked, and a locker checks that the path still
//! names the file it locked (else it retries), so a process that opened the file just
//! before the unlink cannot hold a lock on a file no longer in the directory.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked directory.
pub const LOCK_FILE: &str = ".lock";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "{dir} is in use by {holder} (another run writes it; wait for it or use another directory)"
    )]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// `process N` as the exclusive holder wrote it, or `another process` (shared
        /// holders write no id).
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("{path}: {error}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl LockError {
    /// Whether the lock file could not be made because the file system is mounted
    /// read-only (the binaries then say why the run had to write there).
    pub fn is_read_only(&self) -> bool {
        matches!(self, LockError::Io { error, .. } if error.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
    }
}

/// Held while alive; dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
    path: PathBuf,
    /// The directories this lock created, outermost first: removed on drop, innermost
    /// first, where empty, when the run wrote nothing.
    created: Vec<PathBuf>,
    /// The locked directory's entries when it was locked (where it created any
    /// directory): the run wrote nothing when they are the same at the drop.
    entries: Option<Vec<Entry>>,
    /// A shared lock: it removes what it made only when it is the last holder (it can
    /// then take the lock exclusively); another holder still relies on the file.
    shared: bool,
}

impl DirLock {
    /// Create `dir` if needed and lock it exclusively, without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        Self::acquire_named(dir, LOCK_FILE)
    }

    /// As [`DirLock::acquire`] with lock file `name`: writers that share a directory by
    /// design (one store's workers) each lock their own part.
    pub fn acquire_named(dir: &Path, name: &str) -> Result<DirLock, LockError> {
        Self::flock(dir, name, libc::LOCK_EX)
    }

    /// A shared lock on `dir/name`: any number of shared holders at once, none while an
    /// exclusive holder has it (a store's workers share `.lock`, so that a single writer
    /// or a merge, which take it exclusively, never runs beside them).
    pub fn acquire_shared_named(dir: &Path, name: &str) -> Result<DirLock, LockError> {
        Self::flock(dir, name, libc::LOCK_SH)
    }

    fn flock(given: &Path, name: &str, mode: libc::c_int) -> Result<DirLock, LockError> {
        // `run/.` is `run`: mkdir of a path ending in `.` fails even where its parent
        // would be made
        let dir: PathBuf = given.components().collect();
        let mut created = Vec::new();
        let locked = Self::flock_in(&dir, name, mode, &mut created);
        if locked.is_err() {
            // refused (in use, say): the directories made for it go again
            for d in created.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
        locked
    }

    /// [`DirLock::flock`] of the normalised `dir`, the directories it makes recorded in
    /// `created` (moved into the lock on success).
    fn flock_in(
        dir: &Path,
        name: &str,
        mode: libc::c_int,
        created: &mut Vec<PathBuf>,
    ) -> Result<DirLock, LockError> {
        let path = dir.join(name);
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        let mkdir = |(path, error)| LockError::Io { path, error };
        created.extend(create_dirs(dir).map_err(mkdir)?);
        // a holder removing the directory unlinks the file while holding it: a file
        // locked here after that is no longer the directory's, so open the path again
        // (and a directory removed between its creation and the open is made again)
        let mut attempt = 0;
        let mut file = loop {
            let opened = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path);
            let mut file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {
                    attempt += 1;
                    created.extend(create_dirs(dir).map_err(mkdir)?);
                    continue;
                }
                Err(e) => return Err(io(e)),
            };
            // SAFETY: flock on a descriptor this function owns.
            let r = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    // the holder may be releasing it (the last shared holder takes it
                    // exclusively, then unlinks it): once unlinked, this is not the
                    // directory's lock file, and the path is opened again
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    if !names_file(&path, &file) && attempt < 3 {
                        attempt += 1;
                        created.extend(create_dirs(dir).map_err(mkdir)?);
                        continue;
                    }
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    return Err(LockError::Busy {
                        dir: dir.to_path_buf(),
                        holder: if pid.is_empty() {
                            "another process".into()
                        } else {
                            format!("process {pid}")
                        },
                    });
                }
                return Err(io(e));
            }
            if names_file(&path, &file) {
                break file;
            }
            attempt += 1;
            if attempt >= 3 {
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    holder: "another process (it removed the lock file as this one took it)".into(),
                });
            }
            created.extend(create_dirs(dir).map_err(mkdir)?);
        };
        // the id names the holder in a later refusal; shared holders (several at once)
        // leave the file empty, and none of them is left there as a stale id
        let written = file.set_len(0).and_then(|()| {
            if mode == libc::LOCK_EX {
                file.rewind()?;
                write!(file, "{}", std::process::id())?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // (a full disk): held exclusively, the file is this process's to remove,
            // not left behind empty; a shared one may be another holder's too
            if mode == libc::LOCK_EX {
                let _ = fs::remove_file(&path);
            }
            return Err(io(e));
        }
        let entries = (!created.is_empty()).then(|| entries_besides(dir, name));
        Ok(DirLock {
            _file: file,
            path,
            entries,
            created: std::mem::take(created),
            shared: mode != libc::LOCK_EX,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a live process holds the lock `dir/name` (shared or exclusive): its file is
/// there and cannot be locked exclusively. Creates nothing; a stale file (a crash) is
/// not held.
pub fn is_held(dir: &Path, name: &str) -> bool {
    let Ok(file) = fs::File::open(dir.join(name)) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; released when it closes.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Creates `dir` and its missing parents, returning those this call made (outermost
/// first): one made meanwhile by another process (`AlreadyExists`) is not ours. By the
/// directories actually made, not by the path's text (`a/../b`). On failure those made
/// are removed again, and the error names the directory that could not be made.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    // a parent found present may be removed before its child is made (another run's
    // lock leaving the parent it made): look again
    let mut attempt = 0;
    loop {
        match create_missing(dir) {
            Err((_, e)) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
            made => return made,
        }
    }
}

/// One pass of [`create_dirs`].
fn create_missing(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    let mut made: Vec<PathBuf> = Vec::new();
    for a in missing.into_iter().rev() {
        match fs::create_dir(a) {
            Ok(()) => made.push(a.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for d in made.iter().rev() {
                    let _ = fs::remove_dir(d);
                }
                return Err((a.to_path_buf(), e));
            }
        }
    }
    Ok(made)
}

/// An entry of a locked directory as [`entries_besides`] sees it: its name, inode, size
/// and modification time (an atomic rewrite renames a new inode over the name).
type Entry = (std::ffi::OsString, u64, u64, i64, i64);

/// The entries of `dir` other than lock files (`name`, `.lock`, `.lock.*`: other
/// holders' come and go), sorted: a run that wrote, created or rewrote a file there
/// changes them.
fn entries_besides(dir: &Path, name: &str) -> Vec<Entry> {
    use std::os::unix::fs::MetadataExt;
    let others = format!("{LOCK_FILE}.");
    let mut entries: Vec<Entry> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n != name && n != LOCK_FILE && !n.starts_with(&others)
        })
        .map(|e| {
            let m = e.metadata().ok();
            (
                e.file_name(),
                m.as_ref().map_or(0, |m| m.ino()),
                m.as_ref().map_or(0, |m| m.len()),
                m.as_ref().map_or(0, |m| m.mtime()),
                m.as_ref().map_or(0, |m| m.mtime_nsec()),
            )
        })
        .collect();
    entries.sort();
    entries
}

/// Whether `path` still names the open `file` (same device and inode).
fn names_file(path: &Path, file: &fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // a shared holder removes nothing while another holds the lock (it may write
        // through a directory made on the way, `y` of `y/../store`): it takes the lock
        // exclusively first (without waiting; if that fails the shared lock may be gone
        // too, which dropping gives up anyway)
        // SAFETY: flock on the descriptor this lock owns.
        if self.shared
            && unsafe { libc::flock(self._file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
        {
            return;
        }
        // unlinked while still locked (the file closes after this): see the module doc
        if names_file(&self.path, &self._file) {
            let _ = fs::remove_file(&self.path);
        }
        // the directories it made, only after a run that wrote nothing there (its
        // entries as they were when locked; a directory that existed may hold files): a
        // run that did may still name its output through a directory made on the way
        // (`x/../y`)
        let (Some(dir), Some(name), Some(before)) = (
            self.path.parent(),
            self.path.file_name(),
            self.entries.as_ref(),
        ) else {
            return;
        };
        if entries_besides(dir, &name.to_string_lossy()) == *before {
            // remove_dir refuses a directory that is not empty
            for d in self.created.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_pid_until_release() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let a = DirLock::acquire(&dir).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts as a second process would
        let e = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains("in use by process") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        // a refused locker removes what it made on the way (`run/sub/..` is `run`)
        let e = DirLock::acquire(&dir.join("sub/..")).unwrap_err();
        assert!(e.to_string().contains("in use by process"), "{e}");
        assert!(!dir.join("sub").exists());
        drop(a);
        let b = DirLock::acquire(&dir).unwrap();
        // shared holders: refused while the exclusive one holds it, then any number at
        // once, and they refuse an exclusive holder without naming a stale id
        let e = DirLock::acquire_shared_named(&dir, LOCK_FILE).unwrap_err();
        assert!(e.to_string().contains("in use by process"), "{e}");
        drop(b);
        let s1 = DirLock::acquire_shared_named(&dir, LOCK_FILE).unwrap();
        let _s2 = DirLock::acquire_shared_named(&dir, LOCK_FILE).unwrap();
        let e = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        drop(s1);
        assert!(
            DirLock::acquire(&dir).is_err(),
            "the second shared holder remains"
        );
    }

    /// A released lock leaves no lock file; a run that fails before writing anything
    /// leaves no directory it made; a directory that existed stays, and so does anything
    /// written; a shared holder never removes the file another holder relies on.
    #[test]
    fn a_directory_the_lock_created_and_nothing_wrote_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/run");
        drop(DirLock::acquire(&dir).unwrap());
        assert!(
            !d.path().join("a").exists(),
            "left {:?}",
            fs::read_dir(&dir).ok()
        );
        assert!(d.path().exists(), "only what the lock created is removed");

        let l = DirLock::acquire(&dir).unwrap();
        fs::write(dir.join("manifest.json"), "{}").unwrap();
        drop(l);
        assert!(dir.join("manifest.json").exists() && !dir.join(LOCK_FILE).exists());

        // an existing empty directory: kept, without the lock file this run made
        let existing = d.path().join("existing");
        fs::create_dir(&existing).unwrap();
        drop(DirLock::acquire(&existing).unwrap());
        assert!(existing.exists() && fs::read_dir(&existing).unwrap().next().is_none());
        // a stale lock file (a crashed run's) goes with the next run's lock
        fs::write(existing.join(LOCK_FILE), "12345").unwrap();
        drop(DirLock::acquire(&existing).unwrap());
        assert!(existing.exists() && !existing.join(LOCK_FILE).exists());

        // the directories actually made count, not the path's text: `x/../existing`
        // makes `x` alone (removed again), and the existing directory it names stays
        drop(DirLock::acquire(&d.path().join("x/../existing")).unwrap());
        assert!(existing.exists() && !d.path().join("x").exists());

        // what a refused run made on the way into a directory that holds files goes
        // too: `x/../full` makes `x`, `full/new/..` makes `full/new`
        let full = d.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("user.txt"), "mine").unwrap();
        drop(DirLock::acquire(&d.path().join("x/../full")).unwrap());
        drop(DirLock::acquire(&full.join("new/..")).unwrap());
        assert!(!d.path().join("x").exists() && !full.join("new").exists());
        let left: Vec<_> = fs::read_dir(&full)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["user.txt"]);

        // after a run that wrote something nothing is removed: its output may still be
        // named through a directory made on the way
        let via = d.path().join("v/../made");
        let l = DirLock::acquire(&via).unwrap();
        fs::write(via.join("report.json"), "{}").unwrap();
        drop(l);
        assert!(via.join("report.json").exists());

        // `new/.` is `new`
        let dot = d.path().join("new/.");
        let l = DirLock::acquire(&dot).unwrap();
        assert!(d.path().join("new").join(LOCK_FILE).exists());
        drop(l);
        assert!(!d.path().join("new").exists());

        // a directory that cannot be made is named, and the parents made for it go
        let long = d.path().join("p/q").join("z".repeat(300));
        let e = DirLock::acquire(&long).unwrap_err().to_string();
        assert!(
            e.contains(&"z".repeat(300)) && !e.contains(LOCK_FILE),
            "{e}"
        );
        assert!(!d.path().join("p").exists());

        // a shared holder leaves the file while another holds it (and the second is
        // still held: dropping one does not release the other); the last one out
        // removes the file, and what it made
        let shared = d.path().join("s/shared");
        let s1 = DirLock::acquire_shared_named(&shared, LOCK_FILE).unwrap();
        let s2 = DirLock::acquire_shared_named(&shared, LOCK_FILE).unwrap();
        drop(s2);
        assert!(shared.join(LOCK_FILE).exists());
        assert!(DirLock::acquire(&shared).is_err());
        drop(s1);
        assert!(!d.path().join("s").exists());
    }

    /// A shared holder that is not the last removes nothing, not even a detour it made
    /// (`y` of `d/y/../store`: another holder may write through it); the last removes
    /// what it made. `is_held` tells a held lock from a missing or stale file.
    #[test]
    fn a_shared_holder_removes_nothing_while_others_hold() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        assert!(!is_held(&store, LOCK_FILE));
        let first = DirLock::acquire_shared_named(&store, LOCK_FILE).unwrap();
        assert!(is_held(&store, LOCK_FILE));
        let second =
            DirLock::acquire_shared_named(&d.path().join("y/../store"), LOCK_FILE).unwrap();
        drop(second);
        assert!(d.path().join("y").is_dir() && store.join(LOCK_FILE).exists());
        drop(first);
        assert!(
            !store.exists() && d.path().join("y").is_dir(),
            "the last made no y"
        );
        // a file no process holds (a crash's) is not held
        fs::create_dir(&store).unwrap();
        fs::write(store.join(LOCK_FILE), "123").unwrap();
        assert!(!is_held(&store, LOCK_FILE));
    }

    /// A run that rewrote a file (a resume's manifest) wrote something: the directory it
    /// made on the way stays, as after any write.
    #[test]
    fn a_rewritten_file_counts_as_written() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        fs::create_dir(&store).unwrap();
        fs::write(store.join("manifest.json"), "{}").unwrap();
        let l = DirLock::acquire(&d.path().join("x/../store")).unwrap();
        let tmp = store.join(".manifest.json.tmp");
        fs::write(&tmp, "{}").unwrap();
        fs::rename(&tmp, store.join("manifest.json")).unwrap();
        drop(l);
        assert!(d.path().join("x").is_dir());
    }

    /// Workers (a part lock beside the store's shared lock, released part first): one
    /// refused before writing leaves neither file nor the directory; one released while
    /// another still runs leaves that one's `.lock`; the last leaves no lock file.
    #[test]
    fn a_refused_worker_leaves_no_lock_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("store");
        // as the store's writer: the shared lock, then the part's; dropped part first
        let worker = |i: u32| {
            let shared = DirLock::acquire_shared_named(&dir, LOCK_FILE).unwrap();
            let part =
                DirLock::acquire_named(&dir, &format!("{LOCK_FILE}.worker-{i}-of-2")).unwrap();
            (part, shared)
        };
        drop(worker(0));
        assert!(!dir.exists(), "left {:?}", fs::read_dir(&dir).ok());

        let (p0, s0) = worker(0);
        let (p1, s1) = worker(1);
        fs::write(dir.join("manifest.worker-1-of-2.json"), "{}").unwrap();
        drop((p0, s0));
        assert!(!dir.join(".lock.worker-0-of-2").exists());
        assert!(dir.join(LOCK_FILE).exists() && DirLock::acquire(&dir).is_err());
        drop((p1, s1));
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["manifest.worker-1-of-2.json"]);
    }

    /// The check that makes a locker retry: a file unlinked (and recreated) after it was
    /// opened is not the directory's lock file any more.
    #[test]
    fn a_lock_file_replaced_after_opening_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOCK_FILE);
        let f = fs::File::create(&path).unwrap();
        assert!(names_file(&path, &f));
        fs::remove_file(&path).unwrap();
        assert!(!names_file(&path, &f));
        fs::File::create(&path).unwrap();
        assert!(!names_file(&path, &f));
    }
}
