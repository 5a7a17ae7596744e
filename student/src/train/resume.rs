//! The checks a `--resume` makes before it goes on: the same settings but where things
//! lie (compared before the run is set up, naming the flags changed), and the same
//! inputs by content, each difference said in words.

use std::path::Path;

use anyhow::{bail, Context, Result};
use meal_models::optim::LrSchedule;
use meal_store::manifest::TeacherInfo;

use super::checkpoint::{file_sha256, Inputs, State};
use super::run::Run;
use super::{CHECKPOINT, RESULT_FILES, STUDENT_FILE};
use crate::config::Settings;

/// Settings a resume may change: where things are (inputs are compared by content
/// instead), how many threads, the device, and the step limit (not serialised): the
/// result equals an uninterrupted run with any of these changed (tested for threads);
/// and the GPU's arithmetic (`tf32`, `amp`), after which the run goes on in the new
/// precision, as a PyTorch user may turn TF32 or autocast on or off between runs; and
/// `--on-bad-file` (`policy`), which changes nothing while every file reads, and lets a
/// run stopped by `fail` on a file that cannot be restored go on without it (warned).
const RESUME_MAY_CHANGE: [&str; 11] = [
    "policy",
    "data",
    "val",
    "labels",
    "init",
    "out",
    "threads",
    "device",
    "tf32",
    "amp",
    "follow_links",
];

/// Whether two paths name the same file or directory (the same path, or both resolve
/// to one: `./d` and `d/`).
fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The command-line flag of a setting's field (the names differ for a few).
fn flag_of(field: &str) -> String {
    match field {
        "policy" => "--on-bad-file".into(),
        f => format!("--{}", f.replace('_', "-")),
    }
}

/// Settings as their flags hold them: the schedule's record (`{"kind": "step", "step":
/// 2, "gamma": 0.5}`) as `--schedule`, `--lr-steps` and `--lr-gamma` (its `epochs` is
/// `--epochs`'), so that a refusal names the flag changed, not the record.
fn flags_of(mut settings: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Some(map) = settings.as_object_mut() else {
        return settings;
    };
    if let Some(Value::Object(s)) = map.remove("schedule") {
        if let Some(kind) = s.get("kind") {
            map.insert("schedule".into(), kind.clone());
        }
        for (key, flag) in [("step", "lr_steps"), ("gamma", "lr_gamma")] {
            if let Some(v) = s.get(key) {
                map.insert(flag.into(), v.clone());
            }
        }
    }
    settings
}

/// The `state.json` a `--resume` of `s` goes on from, refused when it was made with
/// other settings (naming the flags) or has begun more epochs than `s.epochs`: read
/// before the run is set up, so that a flag left out on a resume is named as the change
/// it is, not met as its default's memory need or batch count.
pub(super) fn read_resumable(s: &Settings) -> Result<State> {
    // (a crash inside save_checkpoint was finished or undone by
    // meal_data::atomic::recover before this)
    let out = &s.out;
    let dir = out.join(CHECKPOINT);
    let sp = dir.join("state.json");
    // the run's results there (a fresh run is refused over them)
    let held: Vec<&str> = RESULT_FILES
        .into_iter()
        .filter(|f| out.join(f).exists())
        .collect();
    // (a checkpoint that cannot be read is no incomplete one: removing it lost a run)
    if let Err(e) = sp.try_exists() {
        bail!(
            "--resume: {}: {e}: the checkpoint cannot be read (its permissions?); make it \
             readable, then resume",
            sp.display()
        );
    }
    if dir.is_dir() && !sp.exists() {
        // without this, a plain run says "pass --resume" and --resume "no checkpoint".
        // Starting over there needs the results gone too
        bail!(
            "--resume: {} is incomplete (no state.json; removed by hand?): remove it{} to \
             start over in {}, or start a new run in another --out with --init {} if that \
             file is there",
            dir.display(),
            match held.is_empty() {
                true => String::new(),
                false => format!(" and the run's results ({})", held.join(", ")),
            },
            out.display(),
            dir.join(STUDENT_FILE).display()
        );
    }
    if !dir.exists() {
        // (train: a directory with neither results nor a checkpoint starts afresh)
        let held = held.join(", ");
        let weights = out.join(STUDENT_FILE);
        bail!(
            "--resume: {} holds a run's results ({held}) but no checkpoint to resume \
             (its checkpoint/ was removed): start a new run in another directory{}",
            out.display(),
            match weights.exists() {
                true => format!(
                    ", with --init {} to begin from its weights",
                    weights.display()
                ),
                false => String::new(),
            }
        );
    }
    // (a pipe at its name would block the read: refused as no regular file)
    let text = meal_data::files::read(&sp)
        .and_then(|b| {
            String::from_utf8(b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .with_context(|| {
            format!(
                "--resume: no checkpoint in {} ({})",
                out.display(),
                sp.display()
            )
        })?;
    let state: State = serde_json::from_str(&text).with_context(|| {
        format!(
            "--resume: {} is not a checkpoint's state (damaged or cut short): restore \
                 it, or start a new run in another --out with --init {}",
            sp.display(),
            dir.join(STUDENT_FILE).display()
        )
    })?;
    // (an epoch past the run's own total is no run's: said as altered here, before
    // --epochs is compared with it, whose advice to give more epochs led nowhere)
    if state.epoch > state.settings.epochs
        || (state.epoch == state.settings.epochs && state.batch > 0)
    {
        return Err(inconsistent(
            &sp,
            format!(
                "epoch {} of the run's {}, step {}",
                state.epoch, state.settings.epochs, state.batch
            ),
        ));
    }
    let (a, b) = (
        flags_of(serde_json::to_value(&state.settings)?),
        flags_of(serde_json::to_value(s)?),
    );
    // teachers recorded by content are compared as inputs, below
    let online_by_content = state.inputs.as_ref().is_some_and(|i| i.online.is_some());
    // --epochs may change where the rate of a step does not depend on it (step and
    // constant schedules: the run so far is the same run), as Lightning's max_epochs
    // may grow on a resume; under cosine every step's rate follows the total
    let epochs_may_change = !matches!(s.schedule, LrSchedule::Cosine { .. })
        && !matches!(state.settings.schedule, LrSchedule::Cosine { .. });
    let diff: Vec<String> = match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => x
            .iter()
            .filter(|(k, v)| !RESUME_MAY_CHANGE.contains(&k.as_str()) && y.get(*k) != Some(*v))
            .filter(|(k, _)| !(k.as_str() == "epochs" && epochs_may_change))
            // another --schedule: its own flags' defaults are no change of the user's
            .filter(|(k, _)| {
                !(matches!(k.as_str(), "lr_steps" | "lr_gamma")
                    && x.get("schedule") != y.get("schedule"))
            })
            // --scale draws the crops of a run without a store; with --labels the
            // store's crops replay and it is unused (its help says so)
            .filter(|(k, _)| !(k.as_str() == "scale" && s.labels.is_some()))
            .filter(|(k, _)| !(k.as_str() == "online_teacher" && online_by_content))
            // --disc-lr left to follow --lr in both: only --lr is the user's change
            .filter(|(k, _)| {
                !(k.as_str() == "disc_lr"
                    && x.get("disc_lr") == x.get("lr")
                    && y.get("disc_lr") == y.get("lr"))
            })
            .map(|(k, v)| {
                let short = |v: Option<&serde_json::Value>| {
                    let t = match (k.as_str(), v) {
                        // a switch said as its flag takes it
                        ("disc", Some(serde_json::Value::Bool(on))) => {
                            if *on { "on" } else { "off" }.to_string()
                        }
                        (_, v) => v.map_or("none".to_string(), |v| v.to_string()),
                    };
                    if t.chars().count() > 60 {
                        format!("{}...", t.chars().take(57).collect::<String>())
                    } else {
                        t
                    }
                };
                format!(
                    "{} (run: {}, now: {})",
                    flag_of(k),
                    short(Some(v)),
                    short(y.get(k))
                )
            })
            .collect(),
        _ => vec![],
    };
    if !diff.is_empty() {
        let cosine_epochs = diff.iter().any(|d| d.starts_with("--epochs "))
            && matches!(state.settings.schedule, LrSchedule::Cosine { .. });
        // (another architecture cannot start from these weights)
        let init = match diff.iter().any(|d| d.starts_with("--arch ")) {
            true => "start a new run in another --out".to_string(),
            false => format!(
                "start a new run in another --out with --init {}",
                dir.join(STUDENT_FILE).display()
            ),
        };
        bail!(
            "--resume: {} was made with other settings: {} (to change them, {init}){}",
            sp.display(),
            diff.join("; "),
            match cosine_epochs {
                true =>
                    "; --epochs may change on a resume under the step and constant \
                         schedules, not under cosine, whose every step's rate follows the \
                         number of epochs",
                false => "",
            }
        );
    }
    if state.settings.policy != s.policy {
        tracing::warn!(
            "--on-bad-file {}: the run read its files under {}; from here an unreadable \
             file {}",
            s.policy.name(),
            state.settings.policy.name(),
            match s.policy {
                meal_data::BadFilePolicy::Skip => "is left out of its batch (and of --val)",
                meal_data::BadFilePolicy::Fail => "stops the run",
            }
        );
    }
    let done = state.epoch.saturating_add(u32::from(state.batch > 0));
    if s.epochs < done {
        bail!(
            "--resume: --epochs {}: the run has already begun {done} epochs (give at \
             least {done})",
            s.epochs
        );
    }
    Ok(state)
}

/// A checkpoint's `state.json` at `sp` that no run writes (`what`: the figures that
/// cannot go together), said as altered.
pub(super) fn inconsistent(sp: &Path, what: String) -> anyhow::Error {
    let dir = sp.parent().unwrap_or(sp);
    anyhow::anyhow!(
        "--resume: {} is inconsistent ({what}): it was altered; restore it, or start a new \
         run in another --out with --init {}",
        sp.display(),
        dir.join(STUDENT_FILE).display()
    )
}

impl Run {
    /// How `--data` differs from the run's (whose fingerprint was `was`), in words: the
    /// first difference from the run's own `--data` where that is still there as it was
    /// (another copy given now), else where the run read it.
    fn data_change(&self, state: &State, was: &str) -> String {
        let then = &state.settings.data;
        if same_path(then, &self.s.data) {
            return format!(
                "{}: its images or labels changed since the run (an image added, removed, \
                 relabelled or replaced)",
                then.display()
            );
        }
        // (a dataset that no longer opens, or was changed too, is only named)
        let old = super::inputs::open_dataset(then, "--data", state.settings.follow_links)
            .ok()
            .filter(|d| d.fingerprint().sha256 == was);
        let diff = old.and_then(|d| {
            meal_data::dataset::first_difference(
                (d.classes(), d.samples()),
                (self.ds.classes(), self.ds.samples()),
            )
        });
        match diff {
            Some(d) => format!(
                "other images or labels than the run's {}: {d}",
                then.display()
            ),
            None => format!(
                "other images or labels than the run's (it read {})",
                then.display()
            ),
        }
    }

    /// Refuse a resume whose inputs (`now`) differ by content from the checkpointed
    /// run's (`was`, in `state`), naming each difference; a changed `--val` or `--init`
    /// is warned of (neither changes the steps).
    pub(super) fn check_inputs(&self, state: &State, was: &Inputs, now: &Inputs) -> Result<()> {
        let dir = self.s.out.join(CHECKPOINT);
        let mut changed: Vec<String> = Vec::new();
        if was.data != now.data {
            changed.push(format!("--data ({})", self.data_change(state, &was.data)));
        }
        if was.val != now.val {
            // validation runs in eval mode and draws nothing: training is the same
            // (Lightning's val loaders may change on a resume too); only the record
            // of val figures changes from here
            tracing::warn!(
                "--val: {}; the steps are unaffected",
                match (&was.val, &self.s.val) {
                    (None, Some(_)) => "the run had no --val: epochs from here are validated",
                    (Some(_), None) => "the run validated on a --val: epochs from here are not",
                    _ => "other validation images than the run's: epochs from here are validated on these",
                }
            );
        }
        // (older checkpoints hold the manifest file's hash)
        let same_file =
            |l: &Path| file_sha256(&l.join(meal_store::manifest::MANIFEST)).ok() == was.labels;
        if was.labels != now.labels && !self.s.labels.as_deref().is_some_and(same_file) {
            let then = state.settings.labels.as_deref();
            changed.push(match (then, self.s.labels.as_deref()) {
                (None, _) => "--labels (the run had no label store)".to_string(),
                (Some(t), None) => format!(
                    "--labels (the run trained on the label store {}; none is given now)",
                    t.display()
                ),
                (Some(t), Some(n)) if same_path(t, n) => format!(
                    "--labels (the label store {} changed since the run: made again with \
                     other teachers, crops or seed?)",
                    t.display()
                ),
                (Some(t), Some(_)) => format!(
                    "--labels (another label store than the run's, {})",
                    t.display()
                ),
            });
        }
        if was.online.is_some() && was.online != now.online {
            // the same teachers but for the logits they give the classes (another
            // classes= list), or other teachers
            let less_logits = |v: &Option<Vec<String>>| -> Vec<Option<TeacherInfo>> {
                v.iter()
                    .flatten()
                    .map(|j| {
                        let t = serde_json::from_str::<TeacherInfo>(j).ok();
                        t.map(|t| TeacherInfo { logits: None, ..t })
                    })
                    .collect()
            };
            changed.push(
                match (
                    now.online.is_none(),
                    less_logits(&was.online) == less_logits(&now.online),
                ) {
                    (true, _) => "--online-teacher (the run had teachers; none is given now)",
                    (false, true) => {
                        "--online-teacher (the same teachers, their classes taken from \
                         other logits: another classes= list)"
                    }
                    (false, false) => "--online-teacher (other teachers or weights)",
                }
                .to_string(),
            );
        }
        if !changed.is_empty() {
            // (a store given to a run that had none is left out, not "the run's own")
            let own = match (was.labels != now.labels, &state.settings.labels) {
                (true, None) if changed.len() == 1 => "leave out --labels".to_string(),
                (true, None) => "give the run's own (and leave out --labels)".to_string(),
                _ => "give the run's own".to_string(),
            };
            bail!(
                "--resume: the inputs differ by content from the checkpointed run's: {}; \
                 {own}, or start a new run in another --out with --init {}",
                changed.join(", "),
                dir.join(STUDENT_FILE).display()
            );
        }
        if let Some(init) = self.s.init.as_ref().filter(|_| was.init != now.init) {
            tracing::warn!(
                "--init {}: {} the weights this run started from; a resume goes on \
                 from its checkpoint and does not read --init",
                init.display(),
                match now.init {
                    Some(_) => "not",
                    None if !init.exists() => "not found, so not checked against",
                    None => "unreadable, so not checked against",
                }
            );
        }
        Ok(())
    }
}
