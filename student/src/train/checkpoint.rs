//! Checkpoints and resume: the state saved at each epoch's end (and on Ctrl-C), the
//! directory swap that makes a save atomic, and the checks a resume makes (same settings
//! but where things lie, same inputs by content).

use std::path::Path;

use anyhow::{bail, Context, Result};
use meal_models::optim::LrSchedule;
use meal_models::{load_into, read_state_dict, save_safetensors, LoadOptions};
use meal_store::manifest::TeacherInfo;
use serde::{Deserialize, Serialize};

use super::run::Run;
use super::{EpochAcc, CHECKPOINT, RESULT_FILES, STUDENT_FILE};
use crate::config::Settings;
use crate::logs::{EpochMetrics, CURVES_FILE, METRICS_FILE, SUMMARY_FILE};

/// A checkpoint refused because a weight or statistic is not finite: the run diverged
/// and cannot go on (told apart from a write that failed by its type).
#[derive(Debug)]
pub(super) struct NotFinite(String);

impl std::fmt::Display for NotFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFinite {}

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// The run's settings.
    pub settings: Settings,
    /// Epoch in progress (== epochs when done).
    pub epoch: u32,
    /// Batches of that epoch already done.
    pub batch: usize,
    /// Steps done in total.
    pub step: u64,
    /// Running sums of the epoch in progress.
    pub acc: EpochAcc,
    /// Finished epochs.
    pub history: Vec<EpochMetrics>,
    /// What the inputs were, by content (checked on resume instead of their paths).
    #[serde(default)]
    pub inputs: Option<Inputs>,
    /// SHA-256 of each tensor file beside it (name to hex), checked on resume: a changed
    /// value in a weight or momentum resumed silently into another run (as a label
    /// store's shards are checked). Absent in checkpoints of earlier versions.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files: std::collections::BTreeMap<String, String>,
}

/// The run's inputs by content: a resume must see the same images, labels and initial
/// weights, wherever they now lie (docs/PIPELINE.md, "Resume").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// Fingerprint of the training set (paths relative to its root, labels, sizes).
    pub data: String,
    /// Fingerprint of the validation set.
    pub val: Option<String>,
    /// The label store by content ([`meal_store::Manifest::content_sha256`]: its
    /// manifest, which lists every shard's checksum, less the teachers' file names; in
    /// older checkpoints the manifest file's SHA-256, still accepted).
    pub labels: Option<String>,
    /// SHA-256 of the initial weights file (on a resume, where it can be read: a resume
    /// does not load it).
    pub init: Option<String>,
    /// Each `--online-teacher` as a store's manifest records a teacher (arch, weights'
    /// SHA-256, input config; JSON) without its file name: the teachers by content
    /// (absent in older checkpoints, whose specs are compared as written).
    #[serde(default)]
    pub online: Option<Vec<String>>,
}

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

/// SHA-256 of each `*.safetensors` file in the checkpoint directory `dir`, by name.
fn checkpoint_files(dir: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let mut files = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            files.insert(name, file_sha256(&e.path())?);
        }
    }
    Ok(files)
}

/// SHA-256 of the regular file at `p`, hex.
fn file_sha256(p: &Path) -> Result<String> {
    let bytes = meal_data::files::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(meal_store::sha256_hex(&bytes))
}

impl Run {
    /// The inputs' identities by content.
    pub(super) fn inputs(&self) -> Result<Inputs> {
        let sha_file = |p: &Path, flag: &str| -> Result<String> {
            let bytes =
                meal_data::files::read(p).with_context(|| format!("{flag} {}", p.display()))?;
            Ok(meal_store::sha256_hex(&bytes))
        };
        Ok(Inputs {
            data: self.ds.fingerprint().sha256.clone(),
            val: self.val.as_ref().map(|v| v.fingerprint().sha256.clone()),
            labels: match &self.s.labels {
                Some(l) => Some(
                    meal_store::Manifest::read(l)
                        .with_context(|| format!("--labels {}", l.display()))?
                        .content_sha256(),
                ),
                None => None,
            },
            init: match &self.s.init {
                // a resume reads its checkpoint's weights, not these: a moved or
                // changed --init is warned of, not refused
                Some(p) if self.s.resume => sha_file(p, "--init").ok(),
                Some(p) => Some(sha_file(p, "--init")?),
                None => None,
            },
            // hashed when the teachers were loaded (`TeacherInfo`, as in a store)
            online: self
                .online
                .as_ref()
                .map(|ens| ens.teachers().iter().map(|t| t.info.by_content()).collect()),
        })
    }

    /// Saves `state` with the weights, the discriminator and the optimiser, replacing
    /// the last checkpoint; refused (the last one kept) when a weight or a BatchNorm
    /// statistic is not finite: a loss can stay finite while running variances
    /// overflow, and such weights would be refused by `--init` and `eval`.
    /// Its error is a [`NotFinite`] for such weights (the run cannot go on), else a
    /// failed write (a disk full for a while: a periodic save may be skipped).
    pub(super) fn save_checkpoint(&self, state: &State) -> Result<()> {
        if let Some((name, whose)) = self.first_non_finite_weight()? {
            return Err(NotFinite(format!(
                "after step {} of the run the {whose}'s {name} is not finite (NaN or inf), while the loss still is: {}",
                state.step,
                self.diverged()
            ))
            .into());
        }
        // the directory is swapped whole (old -> .old, tmp -> checkpoint, drop .old);
        // train() recovers a crash between the two renames before it reads it
        let dst = self.s.out.join(CHECKPOINT);
        meal_data::atomic::replace_with(&dst, |tmp| -> Result<()> {
            std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            // (with what it was trained on, as the run's own copy: eval and --init of
            // a checkpoint read its classes and side)
            self.student
                .save_with(&tmp.join(STUDENT_FILE), self.trained_on())?;
            if let Some(d) = &self.disc {
                save_safetensors(d.entries(), &tmp.join("disc.safetensors"))?;
            }
            self.opt.save_state(&tmp.join("optim.safetensors"))?;
            let mut state = state.clone();
            state.files = checkpoint_files(tmp)?;
            let sp = tmp.join("state.json");
            std::fs::write(&sp, serde_json::to_vec_pretty(&state)?)
                .with_context(|| format!("writing {}", sp.display()))
        })
        .map_err(|e| {
            self.disk_hint(match e {
                meal_data::atomic::AtomicError::Write(e) => e,
                e => anyhow::anyhow!("saving the checkpoint: {e}"),
            })
        })
    }

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

    /// Load the checkpoint whose `state.json` [`read_resumable`] read and checked: the
    /// inputs compared by content, the state's consistency, the tensors' checksums, then
    /// the weights, the discriminator and the optimiser.
    pub(super) fn load_checkpoint(&mut self, state: State) -> Result<State> {
        let mut state = state;
        let out = &self.s.out;
        let dir = out.join(CHECKPOINT);
        let sp = dir.join("state.json");
        let now = self.inputs()?;
        // without the record, --data, --val and --labels could not be checked: another
        // store would be trained on silently (an adversarial run deleted it)
        let Some(was) = &state.inputs else {
            bail!(
                "--resume: {} records no inputs (written by an older meal-student, or \
                 edited), so the resume cannot check that --data, --val and --labels are \
                 the run's: start a new run in another --out with --init {}",
                sp.display(),
                dir.join(STUDENT_FILE).display()
            );
        };
        {
            let mut changed: Vec<String> = Vec::new();
            if was.data != now.data {
                changed.push(format!("--data ({})", self.data_change(&state, &was.data)));
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
                bail!(
                    "--resume: the inputs differ by content from the checkpointed run's: {}; \
                     give the run's own, or start a new run in another --out with --init {}",
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
                        None => "unreadable, so not checked against",
                    }
                );
            }
        }
        // the validation set from here is this run's: the next resume compares with it
        if let Some(i) = state.inputs.as_mut() {
            i.val = now.val.clone();
        }
        // a state that no run writes (edited by hand, or damaged yet valid JSON) would
        // resume into a wrong run: a finished one with mid-epoch weights, a short epoch
        // (checked after the settings and inputs, which size an epoch: a changed --batch
        // made an intact state look altered)
        let per_epoch = self.batches_per_epoch();
        let consistent = state.epoch <= state.settings.epochs
            && state.history.len() == state.epoch as usize
            && state.history.iter().zip(0..).all(|(m, e)| m.epoch == e)
            && state.batch <= per_epoch
            && (state.epoch < state.settings.epochs || state.batch == 0)
            // the epoch's sums: at most a full batch per step (skipped images give
            // fewer rows), and steps at most one per batch so far (an all-skipped batch
            // is no step)
            && state.acc.correct <= state.acc.rows
            && (state.batch as u64).checked_mul(state.settings.batch as u64)
                .is_some_and(|most| state.acc.rows <= most)
            && state.step <= state.epoch as u64 * per_epoch as u64 + state.batch as u64;
        if !consistent {
            bail!(
                "--resume: {} is inconsistent (epoch {} of {}, step {} of an epoch's {per_epoch}, \
                 {} epochs logged): it was altered; restore it, or start a new run in another --out with --init {}",
                sp.display(),
                state.epoch,
                state.settings.epochs,
                state.batch,
                state.history.len(),
                dir.join(STUDENT_FILE).display()
            );
        }
        // the tensors' bytes as saved: a value changed in place loads and trains on
        let altered_file = |name: &str, why: &str| {
            anyhow::anyhow!(
                "--resume: {}: {why}: the checkpoint in {} was altered or damaged; restore it, \
                 or start a new run in another --out with --init from a good copy of its weights",
                dir.join(name).display(),
                dir.display()
            )
        };
        // (the files state.json lists, no other: one of an earlier version lists none)
        for (name, sha) in &state.files {
            let p = dir.join(name);
            if !p.exists() {
                return Err(altered_file(name, "missing"));
            }
            if &file_sha256(&p)? != sha {
                return Err(altered_file(name, "its sha256 is not the one saved"));
            }
        }
        let sd = read_state_dict(&dir.join(STUDENT_FILE), &self.dev)?;
        load_into(
            self.student.entries(),
            &sd,
            LoadOptions::default(),
            &dir.join(STUDENT_FILE),
            &self.s.arch,
        )?;
        if let Some(d) = &self.disc {
            let p = dir.join("disc.safetensors");
            let sd = read_state_dict(&p, &self.dev)?;
            load_into(
                d.entries(),
                &sd,
                LoadOptions::default(),
                &p,
                "discriminator",
            )?;
        }
        let altered = |what: String| {
            anyhow::anyhow!(
                "--resume: {what}: the checkpoint in {} was altered or damaged; restore it, or \
                 start a new run in another --out with --init from a good copy of its weights",
                dir.display()
            )
        };
        self.opt
            .load_state(&dir.join("optim.safetensors"))
            .map_err(|e| altered(e.to_string()))?;
        let missing = self.opt.params_without_state();
        if state.step > 0 && !missing.is_empty() {
            return Err(altered(format!(
                "optim.safetensors holds no momentum for {} parameters (the first: {})",
                missing.len(),
                missing[0]
            )));
        }
        // (as --init refuses them: a NaN would show as a diverged run steps later)
        if let Some((name, whose)) = self.first_non_finite_weight()? {
            let file = match whose {
                "student" => STUDENT_FILE,
                _ => "disc.safetensors",
            };
            return Err(altered(format!(
                "{file}: tensor {name} holds non-finite values (NaN or inf)"
            )));
        }
        if state.settings.epochs != self.s.epochs {
            tracing::info!(
                "--epochs {}: the run had {}; it goes on to {}",
                self.s.epochs,
                state.settings.epochs,
                self.s.epochs
            );
            // the record the next resume checks its state against
            state.settings.epochs = self.s.epochs;
        }
        Ok(state)
    }
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
    if dir.is_dir() && !sp.exists() {
        // without this, a plain run says "pass --resume" and --resume "no checkpoint".
        // Starting over there needs the results gone too (a fresh run is refused over
        // them)
        let held: Vec<&str> = RESULT_FILES
            .into_iter()
            .filter(|f| out.join(f).exists())
            .collect();
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
        let held = RESULT_FILES
            .into_iter()
            .filter(|f| out.join(f).exists())
            .collect::<Vec<_>>()
            .join(", ");
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
    let text = std::fs::read_to_string(&sp).with_context(|| {
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

/// Finish or undo each save of the run directory `out` that a crash interrupted, before
/// anything is read: the checkpoint directory's swap, the weights and the tables; what
/// was done is said.
pub(super) fn recover_saves(out: &Path) -> Result<()> {
    for name in [
        CHECKPOINT,
        STUDENT_FILE,
        METRICS_FILE,
        SUMMARY_FILE,
        CURVES_FILE,
    ] {
        let p = out.join(name);
        use meal_data::atomic::Recovered;
        let done = meal_data::atomic::recover(&p)
            .with_context(|| format!("--out: recovering {}", p.display()))?;
        // (said: a resume that goes on from an older save than the user expects, or a
        // half-written file that vanished, is otherwise a mystery)
        match done {
            Recovered::Nothing => {}
            Recovered::Finished => tracing::info!(
                "{}: a save interrupted between its two renames (a crash or kill) was \
             completed",
                p.display()
            ),
            Recovered::RolledBack => tracing::warn!(
                "{}: a save interrupted between its two renames lost its new version; the \
             one before it was put back",
                p.display()
            ),
            Recovered::DroppedUnfinished => tracing::warn!(
                "{}: a save cut short (a crash or kill while writing) was removed; {}",
                p.display(),
                match (p.exists(), name == CHECKPOINT) {
                    (false, _) => "none was saved before it",
                    (true, true) => "the one before it is kept, and a resume goes on from it",
                    (true, false) => "the one before it is kept",
                }
            ),
        }
    }
    Ok(())
}
