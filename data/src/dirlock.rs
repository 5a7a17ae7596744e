//! An exclusive advisory lock on an output directory (a label store, a run), so that two
//! processes never write the same directory: the second is refused with the first's
//! process id. `flock(2)` on `DIR/.lock`: the kernel drops the lock when the process
//! exits or crashes, so a stale lock file never blocks a rerun.

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

/// Held while alive; dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
    path: PathBuf,
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

    fn flock(dir: &Path, name: &str, mode: libc::c_int) -> Result<DirLock, LockError> {
        let path = dir.join(name);
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
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
        // the id names the holder in a later refusal; shared holders (several at once)
        // leave the file empty, and none of them is left there as a stale id
        file.set_len(0).map_err(io)?;
        if mode == libc::LOCK_EX {
            file.rewind().map_err(io)?;
            write!(file, "{}", std::process::id()).map_err(io)?;
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
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
}
