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

/// `make` with `args` in the repository root (its recipe-check targets need no build).
fn make(args: &[&str]) -> Output {
    Command::new("make")
        // not the outer make's variables (`make test KD_EPOCHS=3` passes them down in
        // MAKEFLAGS): the recipes here are the Makefile's defaults
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("MFLAGS")
        .arg("-s")
        .arg("--no-print-directory")
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(args)
        .output()
        .expect("make runs")
}

/// The Makefile's wiring: each target checks only the stages it reads or makes, so a
/// changed POOL (the labels' and the KD student's) is refused for `train` but not for
/// `baseline`, and a changed KD_EPOCHS for `baseline` but not for the labels.
#[test]
fn each_make_target_checks_the_stages_it_reads() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let runs = dir.path().to_str().expect("a UTF-8 path");
    for st in ["pretrain", "baseline", "labels", "kd"] {
        std::fs::create_dir(dir.path().join(st)).expect("stage directory");
    }
    let runs_var = format!("RUNS={runs}");
    // record every stage's recipe as its rule does when it finishes
    let record = "rec: ; @bash scripts/recipe_check.sh record $(RUNS)/pretrain $(PRE_RECIPE) \
                  && bash scripts/recipe_check.sh record $(RUNS)/baseline $(BASE_RECIPE) \
                  && bash scripts/recipe_check.sh record $(LABELS) $(LABELS_RECIPE) \
                  && bash scripts/recipe_check.sh record $(RUNS)/kd $(KD_RECIPE)";
    let rec = make(&[&runs_var, "--eval", record, "rec"]);
    assert!(rec.status.success(), "{rec:?}");

    let check = |target: &str, var: &str| make(&[&runs_var, var, target]);
    let refused = |out: &Output, stages: &[&str], not: &[&str]| {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for st in stages {
            assert!(
                err.contains(&format!("{runs}/{st} was made")),
                "{st}: {err}"
            );
        }
        for st in not {
            assert!(
                !err.contains(&format!("{runs}/{st} was made")),
                "{st}: {err}"
            );
        }
    };
    assert!(check("recipe-check-kd", "POOL=80").status.success());
    assert!(check("recipe-check-baseline", "POOL=40").status.success());
    refused(
        &check("recipe-check-kd", "POOL=40"),
        &["labels", "kd"],
        &["pretrain", "baseline"],
    );
    assert!(check("recipe-check-labels", "KD_EPOCHS=3").status.success());
    assert!(check("recipe-check-pretrain", "KD_EPOCHS=3")
        .status
        .success());
    refused(
        &check("recipe-check-baseline", "KD_EPOCHS=3"),
        &["baseline"],
        &["pretrain", "labels", "kd"],
    );
    refused(
        &check("recipe-check", "LR=1"),
        &["pretrain", "baseline", "kd"],
        &["labels"],
    );
}
