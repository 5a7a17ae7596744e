//! The directory lock's tests.

use super::*;

/// A symbolic link at the lock file's name is not followed (the holder's id was
/// written through it, over the file it named), nor is any other file there that
/// is no regular one: each refused naming it, the files left as they were.
#[test]
fn what_is_no_lock_file_at_its_name_is_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    let run = d.path().join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::symlink(&victim, run.join(LOCK_FILE)).unwrap();
    for shared in [false, true] {
        let e = match shared {
            false => DirLock::acquire(&run),
            true => DirLock::acquire_shared_named(&run, LOCK_FILE),
        }
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(".lock: a symbolic link, where the lock file belongs"),
            "{e}"
        );
    }
    assert!(!is_held(&run, LOCK_FILE));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(run.join(LOCK_FILE))
        .unwrap()
        .is_symlink());
    // a dangling link is not created through either
    let gone = d.path().join("gone.txt");
    let run2 = d.path().join("run2");
    fs::create_dir(&run2).unwrap();
    std::os::unix::fs::symlink(&gone, run2.join(LOCK_FILE)).unwrap();
    let e = DirLock::acquire(&run2).unwrap_err().to_string();
    assert!(e.contains("a symbolic link"), "{e}");
    assert!(!gone.exists());
    // a directory, a pipe (opened without waiting for a writer)
    let run3 = d.path().join("run3");
    fs::create_dir_all(run3.join(LOCK_FILE)).unwrap();
    let e = DirLock::acquire(&run3).unwrap_err().to_string();
    assert!(
        e.contains("a directory, where the lock file belongs"),
        "{e}"
    );
    let run4 = d.path().join("run4");
    fs::create_dir(&run4).unwrap();
    let fifo = std::ffi::CString::new(run4.join(LOCK_FILE).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = DirLock::acquire(&run4).unwrap_err().to_string();
    assert!(
        e.contains("not a regular file, where the lock file belongs"),
        "{e}"
    );
    assert!(
        run4.join(LOCK_FILE).exists(),
        "the pipe is left where it was"
    );
    // a hard link to a user's file (no link to follow, but its bytes would be written)
    let run5 = d.path().join("run5");
    fs::create_dir(&run5).unwrap();
    fs::hard_link(&victim, run5.join(LOCK_FILE)).unwrap();
    let e = DirLock::acquire(&run5).unwrap_err().to_string();
    assert!(e.contains("a file of other names too (a hard link)"), "{e}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    // a lock file left by a crash (one name) is taken as ever
    let run6 = d.path().join("run6");
    fs::create_dir(&run6).unwrap();
    fs::write(run6.join(LOCK_FILE), b"12345").unwrap();
    drop(DirLock::acquire(&run6).unwrap());
}

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
    let second = DirLock::acquire_shared_named(&d.path().join("y/../store"), LOCK_FILE).unwrap();
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
        let part = DirLock::acquire_named(&dir, &format!("{LOCK_FILE}.worker-{i}-of-2")).unwrap();
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
