//! Reading an input file whole: only a regular file is read, since opening a FIFO for
//! reading waits for a writer (a run that was given one hung, holding its lock).

use std::io;
use std::path::Path;

/// The regular file at `path`, open for reading; a FIFO, socket, device or directory
/// is an `InvalidInput` error instead of an open that blocks (a FIFO waits for a writer
/// inside `open(2)`, where no stop signal ends it) or a read that never ends. Opened
/// without blocking, then looked at: no window for the name to change in between.
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket, device or directory?)",
        ));
    }
    Ok(f)
}

/// The bytes of the regular file at `path` (see [`open`]).
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open(path)?, &mut bytes)?;
    Ok(bytes)
}

/// The SHA-256 (hex) and byte count of the regular file at `path` (see [`open`]), read
/// in pieces: a teacher's weights (hundreds of MB) were read whole to be hashed.
pub fn sha256(path: &Path) -> io::Result<(String, u64)> {
    use sha2::Digest;
    let mut f = open(path)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(k) => {
                hash.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hex::encode(hash.finalize()), n))
}

/// The text of the regular file or pipe at `path`, for small inputs a shell may give
/// as a pipe (`--config <(...)`): a pipe is read to its end as `cat` reads it, a named
/// pipe that no program holds open for writing is an `InvalidInput` error (its open no
/// longer waits for one: it is made without blocking); a socket, device or directory
/// is refused as by [`open`]. Bytes that are not UTF-8 are an `InvalidData` error.
///
/// A pipe's text is kept for the process and given again to a later read of the same
/// path: a pipe gives its bytes once, and a config read to parse, then again to name it
/// in an error, came back empty the second time (or waited for a writer). A regular file
/// is read each time.
pub fn read_text(path: &Path) -> io::Result<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static PIPES: OnceLock<Mutex<HashMap<std::path::PathBuf, String>>> = OnceLock::new();
    let pipes = PIPES.get_or_init(Default::default);
    if let Some(text) = pipes.lock().ok().and_then(|m| m.get(path).cloned()) {
        return Ok(text);
    }
    let (text, pipe) = read_text_now(path)?;
    if pipe {
        if let Ok(mut m) = pipes.lock() {
            m.insert(path.to_path_buf(), text.clone());
        }
    }
    Ok(text)
}

/// [`read_text`]'s read, with whether `path` is a pipe.
fn read_text_now(path: &Path) -> io::Result<(String, bool)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = f.metadata()?.file_type();
    let fifo = kind.is_fifo();
    if !kind.is_file() && !fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or pipe (a socket, device or directory?)",
        ));
    }
    if fifo {
        // blocking reads from here: they wait for a writer's bytes, and end at once
        // where no writer is left
        // SAFETY: fcntl on a descriptor this function owns, flags read then written.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        if flags < 0
            || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut f, &mut bytes)?;
    if fifo && bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a named pipe no program writes to (nothing to read)",
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((text, fifo))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"bytes").unwrap();
        assert_eq!(super::read(&f).unwrap(), b"bytes");
        assert_eq!(super::read_text(&f).unwrap(), "bytes");
        // (sha256sum of "bytes")
        let (sum, n) = super::sha256(&f).unwrap();
        assert_eq!(
            (sum.as_str(), n),
            (
                "277089d91c0bdf4f2e6862ba7e4a07605119431f5d13f726dd352b06f1b206a9",
                5
            )
        );
        std::fs::write(&f, b"\xff").unwrap();
        let e = super::read_text(&f).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = super::read_text(d.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let e = super::read(d.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let fifo = d.path().join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            // (no writer: an open that blocked would hang the test here)
            let e = super::read(&fifo).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            let e = super::open(&fifo).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            // read_text: a named pipe no one writes to is refused, not waited on; one a
            // program writes to is read to its end (`--config <(...)`)
            let e = super::read_text(&fifo).unwrap_err();
            assert!(e.to_string().contains("no program writes to"), "{e}");
            let writer = std::process::Command::new("sh")
                .arg("-c")
                // (opened read-write, which does not wait for a reader: the writer holds
                // the pipe from then on, until it exits)
                .arg("exec 3<>\"$0\"; printf 'a = 1' >&3; sleep 0.3")
                .arg(&fifo)
                .spawn()
                .unwrap();
            // (refused until the writer has the pipe open)
            let mut text = String::new();
            for _ in 0..500 {
                match super::read_text(&fifo) {
                    Ok(t) => {
                        text = t;
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            assert_eq!(text, "a = 1");
            // read again (no writer now): the first read's text
            assert_eq!(super::read_text(&fifo).unwrap(), "a = 1");
            let _ = writer.wait_with_output();
        } else {
            println!("no mkfifo here: the FIFO case is not checked");
        }
    }
}
