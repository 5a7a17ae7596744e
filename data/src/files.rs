//! Reading an input file whole: only a regular file is read, since opening a FIFO for
//! reading waits for a writer (a run that was given one hung, holding its lock).

use std::io;
use std::path::Path;

/// The bytes of the regular file at `path`; a FIFO, socket, device or directory is an
/// `InvalidInput` error instead of a read that blocks or never ends.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket, device or directory?)",
        ));
    }
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"bytes").unwrap();
        assert_eq!(super::read(&f).unwrap(), b"bytes");
        let e = super::read(d.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let fifo = d.path().join("fifo");
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let e = super::read(&fifo).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        } else {
            println!("no mkfifo here: the FIFO case is not checked");
        }
    }
}
