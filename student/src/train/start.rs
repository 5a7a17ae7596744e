//! Where a run starts: its inputs opened and checked, then its checkpoint (`--resume`)
//! or a fresh state in a run directory that holds no other run.

use anyhow::{bail, Result};

use super::run::Run;
use super::{resume, EpochAcc, State, CHECKPOINT, RESULT_FILES};
use crate::config::Settings;

/// The run's inputs opened and checked, and where it starts (fresh, or its checkpoint).
pub(super) fn prepare(s: Settings) -> Result<(Run, State)> {
    // a resume's settings are compared before what they size is checked (a step's
    // memory, an epoch's batches)
    let saved = match s.resume {
        true => Some(resume::read_resumable(&s)?),
        false => None,
    };
    // (a resume given a --data that is not there, from another directory: where the
    // run read it is the likely answer)
    let was = saved
        .as_ref()
        .map(|st| st.settings.data.clone())
        .filter(|d| !s.data.exists() && d.exists());
    let mut run = Run::new(s).map_err(|e| match &was {
        Some(d) if e.to_string().starts_with("--data ") => e.context(format!(
            "--data: not found; the run read its data at {} (resume with that --data, or \
             the same images elsewhere)",
            d.display()
        )),
        _ => e,
    })?;
    let s = run.s.clone();
    if run.batches_per_epoch() == 0 {
        bail!(
            "--batch {}: more images per step ({}) than the {} usable images",
            s.batch,
            run.images_per_batch(),
            run.usable.len()
        );
    }
    let state = start(&mut run, &s, saved)?;
    run.check_disk()?;
    Ok((run, state))
}

/// The state to start from: the checkpoint of `--resume`, or a fresh one (refusing a
/// run directory that already holds a run).
fn start(run: &mut Run, s: &Settings, saved: Option<State>) -> Result<State> {
    // a result that cannot be written (a directory of its name) fails now, not after
    // the epochs a resume has left
    if let Some(f) = RESULT_FILES.iter().find(|f| s.out.join(f).is_dir()) {
        bail!(
            "--out {}: {f} is a directory; the run writes a file of that name there: move it",
            s.out.display()
        );
    }
    if let Some(st) = saved {
        let st = run.load_checkpoint(st)?;
        if st.epoch >= s.epochs {
            tracing::info!(
                "the run is finished ({} epochs, {} steps): its results are written again \
                 from its last checkpoint",
                st.epoch,
                st.step
            );
            return Ok(st);
        }
        // epochs counted from 1, as the progress bar and the "stopped at" line
        tracing::info!(
            "resuming at epoch {}/{} after its step {} (step {} of the run)",
            st.epoch + 1,
            s.epochs,
            st.batch,
            st.step
        );
        return Ok(st);
    }
    let ckpt = s.out.join(CHECKPOINT);
    // a checkpoint directory without its state (empty, or emptied by hand) saves no
    // run to continue: saying "already holds a run" sent the user to a --resume that fails
    if let Err(e) = ckpt.join("state.json").try_exists() {
        bail!(
            "--out {}: {}: {e}: its checkpoint cannot be read (its permissions?)",
            s.out.display(),
            ckpt.display()
        );
    }
    if ckpt.is_dir() && !ckpt.join("state.json").exists() {
        bail!(
            "--out {}: {} holds no saved run (no state.json): remove it to start a run \
             there, or choose another directory",
            s.out.display(),
            ckpt.display()
        );
    }
    if ckpt.exists() {
        bail!(
            "--out {} already holds a run; pass --resume to continue it or choose another directory",
            s.out.display()
        );
    }
    // a finished run whose checkpoint was deleted (to save space) still holds results
    // that a fresh run would overwrite, and so would a user's own file of one of those
    // names (a summary.csv of their own was replaced)
    if let Some(f) = RESULT_FILES.iter().find(|f| s.out.join(f).exists()) {
        bail!(
            "--out {} already holds a run's results ({f}, no checkpoint to resume): choose \
             another directory, or remove them to start over there",
            s.out.display()
        );
    }
    Ok(State {
        settings: s.recorded(),
        epoch: 0,
        batch: 0,
        step: 0,
        acc: EpochAcc::default(),
        history: Vec::new(),
        inputs: Some(run.inputs()?),
        files: Default::default(),
    })
}
