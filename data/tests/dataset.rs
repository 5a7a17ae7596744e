//! The dataset index against torchvision's ImageFolder order (fixture), list files,
//! path safety and the fingerprint.

mod common;

use std::fs;
use std::path::Path;

use meal_data::{Dataset, LinkPolicy};

fn write(root: &Path, rel: &str, contents: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, contents).unwrap();
}

#[test]
fn image_folder_order_equals_torchvision() {
    let fx = common::json("imagefolder_order.json");
    let dir = tempfile::tempdir().unwrap();
    for rel in fx["tree"].as_array().unwrap() {
        let rel = rel.as_str().unwrap();
        write(dir.path(), rel, rel.as_bytes());
    }
    let ds = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap();
    let classes: Vec<&str> = fx["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(ds.classes(), classes.as_slice());
    let want: Vec<(String, u32)> = fx["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let got: Vec<(String, u32)> = ds
        .samples()
        .iter()
        .map(|s| (s.path.clone(), s.label))
        .collect();
    assert_eq!(got, want);
    for (i, s) in ds.samples().iter().enumerate() {
        assert_eq!(s.id as usize, i);
        assert_eq!(s.bytes, s.path.len() as u64, "{}: size recorded", s.path);
    }
    // images per class, counted from torchvision's own (path, label) list
    let mut counts = vec![0u64; classes.len()];
    for (_, label) in &want {
        counts[*label as usize] += 1;
    }
    assert_eq!(ds.class_counts(), counts);
}

#[test]
fn a_class_folder_of_no_image_counts_zero() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/1.jpg", b"x");
    write(dir.path(), "a/2.jpg", b"x");
    write(dir.path(), "c/1.png", b"x");
    fs::create_dir_all(dir.path().join("b")).unwrap();
    let ds = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.classes(), ["a", "b", "c"]);
    assert_eq!(ds.class_counts(), [2, 0, 1]);
}

#[test]
fn fingerprint_tells_changed_datasets() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for root in [a.path(), b.path()] {
        write(root, "x/1.jpg", b"abc");
        write(root, "y/2.jpg", b"defg");
    }
    let fa = Dataset::open(a.path(), LinkPolicy::StayInside)
        .unwrap()
        .fingerprint()
        .clone();
    let fb = Dataset::open(b.path(), LinkPolicy::StayInside)
        .unwrap()
        .fingerprint()
        .clone();
    assert_eq!(fa, fb, "same files at another root: same fingerprint");
    assert_eq!((fa.samples, fa.classes), (2, 2));
    write(b.path(), "y/2.jpg", b"defgh");
    let f2 = Dataset::open(b.path(), LinkPolicy::StayInside)
        .unwrap()
        .fingerprint()
        .clone();
    assert_ne!(
        fa.sha256, f2.sha256,
        "a changed size changes the fingerprint"
    );
    write(b.path(), "y/3.jpg", b"defgh");
    let f3 = Dataset::open(b.path(), LinkPolicy::StayInside)
        .unwrap()
        .fingerprint()
        .clone();
    assert_ne!(
        f2.sha256, f3.sha256,
        "an added file changes the fingerprint"
    );
    fs::rename(b.path().join("y"), b.path().join("z")).unwrap();
    let f4 = Dataset::open(b.path(), LinkPolicy::StayInside)
        .unwrap()
        .fingerprint()
        .clone();
    assert_ne!(
        f3.sha256, f4.sha256,
        "a renamed class changes the fingerprint"
    );
}

#[test]
fn list_files_numeric_and_named_labels() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "imgs/a.jpg", b"1");
    write(dir.path(), "imgs/b.jpg", b"22");
    write(dir.path(), "c.png", b"333");
    let list = dir.path().join("train.csv");
    fs::write(&list, "path,label\nimgs/b.jpg,2\nimgs/a.jpg,0\n./c.png,2\n").unwrap();
    let ds = Dataset::open(&list, LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.classes(), ["0", "1", "2"]);
    let got: Vec<(&str, u32)> = ds
        .samples()
        .iter()
        .map(|s| (s.path.as_str(), s.label))
        .collect();
    assert_eq!(
        got,
        [("imgs/b.jpg", 2), ("imgs/a.jpg", 0), ("c.png", 2)],
        "file order kept"
    );
    fs::write(&list, "imgs/b.jpg,zebra\nimgs/a.jpg,ant\n").unwrap();
    let ds = Dataset::open(&list, LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.classes(), ["ant", "zebra"]);
    assert_eq!(ds.samples()[0].label, 1);
    // labels written as floats (pandas' integer column with a missing value) are class
    // indices: as names `10.0` sorted before `2.0`, renumbering the classes
    fs::write(&list, "imgs/b.jpg,2.0\nimgs/a.jpg,10.00\n").unwrap();
    let ds = Dataset::open(&list, LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.classes().len(), 11);
    assert_eq!((ds.samples()[0].label, ds.samples()[1].label), (2, 10));
    // numbers that are no index throughout are refused, not sorted as names as text
    for labels in [["-1", "-10"], ["0.5", "1.5"], ["1e1", "2e1"]] {
        fs::write(
            &list,
            format!("imgs/b.jpg,{}\nimgs/a.jpg,{}\n", labels[0], labels[1]),
        )
        .unwrap();
        let e = Dataset::open(&list, LinkPolicy::StayInside).unwrap_err();
        assert!(
            e.to_string()
                .contains("the labels are numbers but not class indices"),
            "{labels:?}: {e}"
        );
    }
    // and so are labels with a plus sign (Python's int() reads `+2`): as names `+10`
    // sorted before `+2`
    fs::write(&list, "imgs/b.jpg,+2\nimgs/a.jpg,+10\n").unwrap();
    let ds = Dataset::open(&list, LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.classes().len(), 11);
    assert_eq!((ds.samples()[0].label, ds.samples()[1].label), (2, 10));
    // a real fraction is no index: among indices it is the typo named
    fs::write(&list, "imgs/b.jpg,2\nimgs/a.jpg,1\n./c.png,2.5\n").unwrap();
    let e = Dataset::open(&list, LinkPolicy::StayInside).unwrap_err();
    assert!(e.to_string().contains("line 3: label \"2.5\""), "{e}");
    // on line 1, naming a file: no header hint (it is a row)
    fs::write(&list, "./c.png,2.5\nimgs/b.jpg,2\nimgs/a.jpg,1\n").unwrap();
    let e = Dataset::open(&list, LinkPolicy::StayInside).unwrap_err();
    assert!(e.to_string().contains("line 1: label \"2.5\""), "{e}");
    assert!(!e.to_string().contains("header"), "{e}");
    // a BOM, CRLF, spaces around unquoted fields (trimmed), and a quoted name that
    // begins with a space (kept: the file as written exists)
    write(dir.path(), " lead.jpg", b"4444");
    let body = "\u{feff}path,label\r\n imgs/a.jpg , 1 \r\n\" lead.jpg\",0\r\n";
    fs::write(&list, body).unwrap();
    let ds = Dataset::open(&list, LinkPolicy::StayInside).unwrap();
    let got: Vec<(&str, u32)> = ds
        .samples()
        .iter()
        .map(|s| (s.path.as_str(), s.label))
        .collect();
    assert_eq!(got, [("imgs/a.jpg", 1), (" lead.jpg", 0)]);
}

#[test]
fn list_file_errors_name_the_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.jpg", b"1");
    write(dir.path(), "b.jpg", b"2");
    let list = dir.path().join("l.csv");
    for (body, needle) in [
        ("../etc/passwd,0\n", "../etc/passwd"),
        ("/etc/passwd,0\n", "/etc/passwd"),
        ("a.jpg,0,extra\n", "expected 2 columns"),
        ("a.jpg,0\nmissing.jpg,0\n", "line 2: "),
        (
            "a.jpg,cat\na.jpg,\n",
            "line 2: \"a.jpg\" has an empty label",
        ),
        (".,0\n", "line 1: "),
        ("", "no samples"),
        // a number past the class limit: refused by line, never 4e9 classes in memory
        (
            "path,label\na.jpg,0\na.jpg,4000000000\n",
            "line 3: label 4000000000",
        ),
        (
            "a.jpg,65536\n",
            "line 1: label 65536 is beyond the 65536 classes a dataset may have (labels are 0 to 65535)",
        ),
        // past u32 too: still an index (it became a class name)
        ("a.jpg,0\nb.jpg,4294967296\n", "line 2: label 4294967296"),
        // a quote left open: the rest of the file as one label (Python's csv reads it so)
        (
            "a.jpg,\"cat\nb.jpg,dog\n",
            "line 1: \"a.jpg\" has a label of several lines (\"cat, b.jpg,dog\")",
        ),
        // one image listed twice (with two labels it was two samples of two classes)
        (
            "a.jpg,0\nb.jpg,1\na.jpg,2\n",
            "line 3: \"a.jpg\" is listed again (first on line 1)",
        ),
        // spelt otherwise, the same file
        (
            "a.jpg,0\nb.jpg,1\n./a.jpg,1\n",
            "line 3: \"./a.jpg\" is listed again (first on line 1)",
        ),
        // a typo among class indices would have every label read as a name, sorted as
        // text (10 before 2): refused, naming its line
        (
            "a.jpg,0\na.jpg,1\na.jpg,5a\na.jpg,10\n",
            "line 3: label \"5a\" is not a class index",
        ),
        ("a.jpg,0\na.jpg,0\na.jpg,-1\n", "line 3: label \"-1\""),
        // an empty path is called so (not "must be a relative path without `..`")
        ("a.jpg,0\n,1\n", "line 2: the path is empty"),
        // a header of other names, or with the columns swapped
        ("file,class\na.jpg,0\n", "a header line must read `path,label`"),
        // also with class names, met first as a missing file
        ("file,class\na.jpg,cat\n", "a header line must read `path,label`"),
        ("label,path\n0,a.jpg\n", "a list's columns are `path,label`"),
        // and an integer among names
        (
            "a.jpg,cat\na.jpg,dog\na.jpg,7\n",
            "line 3: label \"7\" is an integer",
        ),
    ] {
        fs::write(&list, body).unwrap();
        let e = Dataset::open(&list, LinkPolicy::StayInside)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{body:?}: {e}");
        assert!(
            e.contains("l.csv"),
            "{body:?}: error must name the list file: {e}"
        );
    }
}

#[cfg(unix)]
#[test]
fn symlinks_may_not_leave_the_root_unless_asked() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.jpg", b"s");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cls/ok.jpg", b"o");
    std::os::unix::fs::symlink(
        outside.path().join("secret.jpg"),
        dir.path().join("cls/link.jpg"),
    )
    .unwrap();
    let err = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap_err();
    assert!(
        matches!(err, meal_data::DataError::LinkOutsideRoot { .. }),
        "{err:?}"
    );
    let e = err.to_string();
    assert!(
        e.contains("link.jpg") && e.contains("outside the dataset root"),
        "{e}"
    );
    let ds = Dataset::open(dir.path(), LinkPolicy::FollowAnywhere).unwrap();
    assert_eq!(ds.len(), 2);
    // A link that stays inside is fine.
    fs::remove_file(dir.path().join("cls/link.jpg")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("cls/ok.jpg"),
        dir.path().join("cls/alias.jpg"),
    )
    .unwrap();
    assert_eq!(
        Dataset::open(dir.path(), LinkPolicy::StayInside)
            .unwrap()
            .len(),
        2
    );
}

/// A dangling symlink stays in the index (the loader then reports it unreadable, like any
/// bad file) instead of vanishing; a symlinked directory leading back up is a loop,
/// refused instead of listing the same images again and again.
#[cfg(unix)]
#[test]
fn dangling_links_are_listed_and_link_loops_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cls/ok.jpg", b"o");
    std::os::unix::fs::symlink(
        dir.path().join("cls/gone.jpg"),
        dir.path().join("cls/dead.jpg"),
    )
    .unwrap();
    let ds = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap();
    let paths: Vec<&str> = ds.samples().iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["cls/dead.jpg", "cls/ok.jpg"]);
    assert_eq!(ds.samples()[0].bytes, 0);
    std::os::unix::fs::symlink(dir.path().join("cls"), dir.path().join("cls/again")).unwrap();
    let e = Dataset::open(dir.path(), LinkPolicy::StayInside)
        .unwrap_err()
        .to_string();
    assert!(e.contains("symlink loop") && e.contains("again"), "{e}");
}

/// `--data some.jpg` says it is an image, not a list file.
#[test]
fn an_image_given_as_the_dataset_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.jpg", b"\xff\xd8 not utf-8 \xfe");
    let e = Dataset::open(&dir.path().join("x.jpg"), LinkPolicy::StayInside)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is an image file") && e.contains("ImageFolder"),
        "{e}"
    );
    // a FIFO as the list is refused, not read (the read would wait for a writer)
    let fifo = dir.path().join("list.csv");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let e = Dataset::open(&fifo, LinkPolicy::StayInside)
            .unwrap_err()
            .to_string();
        assert!(e.contains("list.csv") && e.contains("FIFO"), "{e}");
    } else {
        println!("no mkfifo here: the FIFO case is not checked");
    }
}

#[test]
fn empty_roots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Dataset::open(dir.path(), LinkPolicy::StayInside)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class directories"), "{e}");
    write(dir.path(), "cls/readme.txt", b"x");
    let e = Dataset::open(dir.path(), LinkPolicy::StayInside)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no image files"), "{e}");
    let e = Dataset::open(&dir.path().join("nope"), LinkPolicy::StayInside)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

/// A file whose name is not UTF-8 is refused only where it would be a sample (an image
/// name) or could hold samples (a directory); another file is passed over, as
/// torchvision's ImageFolder passes over every non-image file.
#[cfg(unix)]
#[test]
fn a_non_utf8_name_is_refused_only_for_an_image() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cls/a.jpg", b"1");
    let odd = |ext: &str| {
        let mut name = b"\xff".to_vec();
        name.extend(ext.as_bytes());
        dir.path()
            .join("cls")
            .join(std::ffi::OsStr::from_bytes(&name))
    };
    fs::write(odd(".txt"), b"notes").unwrap();
    let ds = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap();
    assert_eq!(ds.len(), 1);
    fs::write(odd(".jpg"), b"2").unwrap();
    let e = Dataset::open(dir.path(), LinkPolicy::StayInside).unwrap_err();
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
}
