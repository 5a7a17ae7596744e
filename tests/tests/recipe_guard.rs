//! The demo's recipe guard (scripts/recipe_check.sh, used by the Makefile's stages): a
//! finished stage records its variables; a later check with the same ones passes, with
//! changed ones exits 2 naming each changed variable and the stage, and a stage not yet
//! finished (no recipe.txt) has nothing to check.

use std::path::Path;
use std::process::{Command, Output};

fn guard(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/recipe_check.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("bash runs scripts/recipe_check.sh")
}

#[test]
fn a_changed_variable_is_refused_by_name_and_the_same_recipe_passes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stage = dir.path().join("kd");
    std::fs::create_dir(&stage).expect("stage directory");
    let stage = stage.to_str().expect("a UTF-8 path");
    let recipe = ["POOL=80", "LR=0.02", "TEACHERS=a=x.safetensors,size=64 b=y"];

    // not finished yet: nothing recorded, nothing to check
    assert!(guard(&[&["check", stage][..], &recipe[..]].concat())
        .status
        .success());

    let rec = guard(&[&["record", stage][..], &recipe[..]].concat());
    assert!(rec.status.success(), "{rec:?}");
    let same = guard(&[&["check", stage][..], &recipe[..]].concat());
    assert!(same.status.success(), "{same:?}");

    let changed = ["POOL=40", "LR=0.02", "TEACHERS=a=x.safetensors,size=64 b=z"];
    let out = guard(&[&["check", stage][..], &changed[..]].concat());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(stage) && err.contains("these variables differ: POOL TEACHERS\n"),
        "{err}"
    );

    // a stage finished before stages recorded their recipe (a .done marker, no
    // recipe.txt) is refused: what it was made with is unknown
    let old = dir.path().join("baseline");
    std::fs::create_dir(&old).expect("stage directory");
    std::fs::write(old.join(".done"), "").expect("marker");
    let out = guard(&["check", old.to_str().expect("a UTF-8 path"), "POOL=80"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a recorded recipe"));

    // the order of the variables does not matter
    let reordered = [recipe[2], recipe[0], recipe[1]];
    let out = guard(&[&["check", stage][..], &reordered[..]].concat());
    assert!(out.status.success(), "{out:?}");
}
