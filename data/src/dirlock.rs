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
use std::os::unix::fs::MetadataExt;
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
    /// The lock file's name is taken by something that is no lock file of ours: a
    /// symbolic link (opening it would write the holder's id through it, into any
    /// file it leads to), a directory, a pipe.
    #[error(
        "{path}: {what}, where the lock file belongs: not opened (a lock file is written); \
         remove it if it is no one's"
    )]
    NotALockFile {
        /// The lock file's path.
        path: PathBuf,
        /// What is there instead.
        what: &'static str,
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
            let opened = open_lock_file(&path, true);
            let mut file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {
                    attempt += 1;
                    created.extend(create_dirs(dir).map_err(mkdir)?);
                    continue;
                }
                Err(e) => return Err(not_a_lock_file(&path).unwrap_or_else(|| io(e))),
            };
            // (the id is written over the file's bytes: a file of other names, a hard
            // link to a user's file, would lose them as a symbolic link's target did)
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() || meta.nlink() > 1 {
                return Err(not_a_lock_file(&path).unwrap_or(LockError::NotALockFile {
                    path: path.clone(),
                    what: match meta.is_file() {
                        true => "a file of other names too (a hard link)",
                        false => "not a regular file",
                    },
                }));
            }
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
    let Ok(file) = open_lock_file(&dir.join(name), false) else {
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

/// Opens the lock file `path` for reading (and writing and creating, when `write`),
/// never through a symbolic link (`O_NOFOLLOW`): a link planted there would have the
/// holder's id written into whatever it names. A pipe is opened without waiting for a
/// writer (`O_NONBLOCK`), then refused as no regular file.
fn open_lock_file(path: &Path, write: bool) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// The refusal of what stands at the lock file's `path` when it is no regular file
/// (seen without following a link), or `None` for a regular file or nothing there.
fn not_a_lock_file(path: &Path) -> Option<LockError> {
    let t = fs::symlink_metadata(path).ok()?.file_type();
    let what = if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        return None;
    } else {
        "not a regular file"
    };
    Some(LockError::NotALockFile {
        path: path.to_path_buf(),
        what,
    })
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
mod tests;
