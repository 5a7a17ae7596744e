//! Checkpoints and resume: the state saved at each epoch's end (and on Ctrl-C), the
//! directory swap that makes a save atomic, and the checks a resume makes (same settings
//! but where things lie, same inputs by content).

use std::path::Path;

use anyhow::{bail, Context, Result};
use meal_models::{load_into, read_state_dict, save_safetensors, LoadOptions};
use serde::{Deserialize, Serialize};

use super::run::Run;
use super::{EpochAcc, CHECKPOINT, STUDENT_FILE};
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
pub(super) fn file_sha256(p: &Path) -> Result<String> {
    let (sum, _) =
        meal_data::files::sha256(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(sum)
}

impl Run {
    /// The inputs' identities by content.
    pub(super) fn inputs(&self) -> Result<Inputs> {
        let sha_file = |p: &Path, flag: &str| -> Result<String> {
            let (sum, _) =
                meal_data::files::sha256(p).with_context(|| format!("{flag} {}", p.display()))?;
            Ok(sum)
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
        let dst = checkpoint_dir(&self.s.out);
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
        self.check_inputs(&state, was, &now)?;
        // the validation set from here is this run's: the next resume compares with it
        if let Some(i) = state.inputs.as_mut() {
            i.val = now.val.clone();
        }
        // a state that no run writes (edited by hand, or damaged yet valid JSON) would
        // resume into a wrong run: a finished one with mid-epoch weights, a short epoch
        // (checked after the settings and inputs, which size an epoch: a changed --batch
        // made an intact state look altered)
        // (its epoch within the run's total was checked by read_resumable, before the
        // settings were compared)
        let per_epoch = self.batches_per_epoch();
        let consistent = state.history.len() == state.epoch as usize
            && state.history.iter().zip(0..).all(|(m, e)| m.epoch == e)
            && state.batch <= per_epoch
            // the epoch's sums: at most a full batch per step (skipped images give
            // fewer rows), and steps at most one per batch so far (an all-skipped batch
            // is no step)
            && state.acc.correct <= state.acc.rows
            && (state.batch as u64).checked_mul(state.settings.batch as u64)
                .is_some_and(|most| state.acc.rows <= most)
            && state.step <= state.epoch as u64 * per_epoch as u64 + state.batch as u64;
        if !consistent {
            return Err(super::resume::inconsistent(
                &sp,
                format!(
                    "epoch {} of the run's {}, step {} of an epoch's {per_epoch}, {} epochs \
                     logged",
                    state.epoch,
                    state.settings.epochs,
                    state.batch,
                    state.history.len()
                ),
            ));
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
            // a plain file name of the checkpoint's (an edited state.json naming
            // `../x` or an absolute path would have a file outside it read)
            if Path::new(name).file_name() != Some(std::ffi::OsStr::new(name)) {
                return Err(altered_file(name, "not a file name of the checkpoint's"));
            }
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
        }
        // the record the next resume compares with is this one's: its --epochs, where
        // its inputs lie now (a moved --data is named from here on) and what it may
        // change (an --on-bad-file changed is warned of once, not on every resume)
        state.settings = self.s.recorded();
        Ok(state)
    }
}

/// Where the run's checkpoint is saved: `out/checkpoint`, or, where that is a symbolic
/// link (a checkpoint moved to a larger disk and linked back), the directory it leads
/// to: each save replaces that directory beside itself, and the link stays (a save
/// replaced the link with a directory on the run's own disk). A link whose target is
/// gone (a crash between a save's two renames) still names it, for the recovery.
pub(super) fn checkpoint_dir(out: &Path) -> std::path::PathBuf {
    let ck = out.join(CHECKPOINT);
    match std::fs::read_link(&ck) {
        // (a relative target is relative to the link's directory)
        Ok(target) => ck.canonicalize().unwrap_or_else(|_| out.join(target)),
        Err(_) => ck,
    }
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
        let p = match name {
            CHECKPOINT => checkpoint_dir(out),
            _ => out.join(name),
        };
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
