//! The training loop: MEAL V2's step on cached (or online) soft labels, checkpoints,
//! resume, per-epoch evaluation and logs.
//!
//! Step (szq0214/MEAL-V2 `train.py`, `loss.py`): student logits on the replayed crops;
//! `kd = soft CE(logits, teacher probs)`; the discriminator sees
//! `[softmax(logits); teacher probs]` with targets `[1, 0]` for student rows and `[0, 1]`
//! for teacher rows, `d = BCE-with-logits`; `loss = kd + d`, one backward, one SGD step
//! over student and discriminator together. `--loss ce`: cross-entropy to hard labels.

mod checkpoint;
mod disk;
mod inputs;
mod resume;
mod run;
mod start;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use meal_data::Batch;
use meal_models::ensemble::Crops;
use meal_models::loss::{bce_with_logits, soft_cross_entropy};
use meal_models::{Discriminator, ResNet};
use serde::{Deserialize, Serialize};

use crate::config::{Every, LossKind, Settings};
use crate::eval::{evaluate_until, Accuracy, EvalRead};
use crate::logs::{
    plot_curves, write_tables, EpochMetrics, CURVES_FILE, METRICS_FILE, SUMMARY_FILE,
};
pub use checkpoint::{Inputs, State};
pub use inputs::open_dataset;
use run::Run;

/// Name of the checkpoint directory inside the run directory.
pub const CHECKPOINT: &str = "checkpoint";
/// The latest student weights (timm names), refreshed every epoch.
pub const STUDENT_FILE: &str = "student.safetensors";
/// A run directory's results, besides its checkpoint: a run that finds any of them
/// without a checkpoint would overwrite a finished run (or a user's own file).
pub const RESULT_FILES: [&str; 4] = [STUDENT_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE];

/// Sums over the steps of the current epoch (saved with mid-epoch checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochAcc {
    /// Sum of total loss x rows.
    pub loss: f64,
    /// Sum of KD part x rows.
    pub kd: f64,
    /// Sum of discriminator part x rows.
    pub disc: f64,
    /// Rows whose top-1 is the hard label.
    pub correct: u64,
    /// Rows.
    pub rows: u64,
    /// Seconds spent in steps.
    pub seconds: f64,
    /// Images skipped as unreadable (0 in checkpoints from before it was counted).
    #[serde(default)]
    pub skipped: u64,
}

/// What a `train` call did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Finished epochs' metrics (whole run, including before a resume).
    pub history: Vec<EpochMetrics>,
    /// Steps done in total.
    pub steps: u64,
    /// Stopped early (Ctrl-C or --max-steps) with a checkpoint to resume from.
    pub interrupted: bool,
    /// The loss of each step this call ran (for checks).
    pub step_losses: Vec<f64>,
    /// The latest student weights.
    pub weights: PathBuf,
    /// The epoch and step within it of each checkpoint `--checkpoint-every` saved.
    pub periodic_saves: Vec<(u32, usize)>,
}

/// The parts of one step's loss.
pub struct StepLoss {
    /// Total (what is back-propagated).
    pub total: Tensor,
    /// KD or CE part.
    pub kd: Tensor,
    /// Discriminator part.
    pub disc: Option<Tensor>,
    /// Student logits.
    pub logits: Tensor,
}

/// MEAL V2's loss for student inputs `x` and target distributions `target` (`[N, C]`;
/// one-hot rows for cross-entropy).
pub fn step_loss(
    student: &ResNet,
    disc: Option<&Discriminator>,
    x: &Tensor,
    target: &Tensor,
) -> Result<StepLoss> {
    let logits = student.forward_t(x, true)?;
    let kd = soft_cross_entropy(&logits, target)?;
    let (total, d) = match disc {
        Some(disc) => {
            let n = logits.dim(0)?;
            let dev = logits.device();
            let sp = candle_nn::ops::softmax(&logits, D::Minus1)?;
            let out = disc.forward(&Tensor::cat(&[&sp, target], 0)?)?;
            let t = Tensor::cat(
                &[
                    Tensor::new(&[1f32, 0.0], dev)?.broadcast_as((n, 2))?,
                    Tensor::new(&[0f32, 1.0], dev)?.broadcast_as((n, 2))?,
                ],
                0,
            )?;
            let d = bce_with_logits(&out, &t)?;
            ((&kd + &d)?, Some(d))
        }
        None => (kd.clone(), None),
    };
    Ok(StepLoss {
        total,
        kd,
        disc: d,
        logits,
    })
}

fn metrics(epoch: u32, lr: f64, acc: &EpochAcc, disc: bool, val: Option<Accuracy>) -> EpochMetrics {
    let n = acc.rows.max(1) as f64;
    EpochMetrics {
        epoch,
        lr,
        loss: acc.loss / n,
        kd: acc.kd / n,
        disc: disc.then_some(acc.disc / n),
        train_top1: acc.correct as f64 / n,
        val_top1: val.map(|v| v.top1),
        val_top5: val.map(|v| v.top5),
        crops: acc.rows,
        crops_per_s: acc.rows as f64 / acc.seconds.max(1e-9),
        skipped: acc.skipped,
    }
}

/// One optimisation step on batch `b` at `lr_factor` of the base rate; adds to the
/// epoch's sums and returns the step's loss.
fn step(run: &mut Run, b: &Batch, state: &mut State, lr_factor: f64) -> Result<f64> {
    let t0 = Instant::now();
    let n = b.rows.len();
    let target = run.targets(b)?;
    // the batch's 8-bit crops, normalised on the training device (under mixed precision
    // straight to bf16: the same values as f32 then rounded, one pass fewer)
    let dtype = run.student.autocast().unwrap_or(DType::F32);
    let x = Crops::of_batch(b)[0].tensor(0..n, &run.s.spec(), dtype, &run.dev)?;
    let l = step_loss(&run.student, run.disc.as_ref(), &x, &target)?;
    // the backward is queued before the loss is read: on a GPU reading it waits for the
    // device, and waiting between forward and backward left the GPU idle while the host
    // queued the backward; no update is applied before the loss is known to be finite
    let grads = l.total.backward()?;
    let total = l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !total.is_finite() {
        return Err(run.non_finite(total, b, &target, state.epoch, state.batch, state.step));
    }
    run.opt.step(&grads, lr_factor)?;
    // every 16 steps (~100 tiny reductions, on a GPU ~200 launches: estimated at ~1%
    // of a ResNet-50 step each time, unmeasured), and at every checkpoint
    let check = state.step.is_multiple_of(STATISTICS_EVERY);
    if let Some((name, whose)) = check
        .then(|| run.non_finite_statistic())
        .transpose()?
        .flatten()
    {
        bail!(
            "after step {} of the run (epoch {} batch {}) the {whose}'s {name} is not finite \
             (NaN or inf), while the loss still is: {}",
            state.step + 1,
            state.epoch + 1,
            state.batch + 1,
            run.diverged()
        );
    }
    let kd = l.kd.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let d = match &l.disc {
        Some(d) => d.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        None => 0.0,
    };
    let pred = l.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let acc = &mut state.acc;
    acc.correct += pred
        .iter()
        .zip(&b.rows)
        .filter(|(p, r)| **p == r.label)
        .count() as u64;
    acc.loss += total * n as f64;
    acc.kd += kd * n as f64;
    acc.disc += d * n as f64;
    acc.rows += n as u64;
    acc.seconds += t0.elapsed().as_secs_f64();
    state.batch += 1;
    state.step += 1;
    Ok(total)
}

/// Steps between checks of the BatchNorm statistics ([`Run::non_finite_statistic`]).
const STATISTICS_EVERY: u64 = 16;

/// The end of an epoch: evaluate, log, checkpoint, refresh the weights and tables.
/// False when `stop` came during the validation: the epoch is left to end on resume
/// (its steps are in the checkpoint taken before the validation).
fn end_epoch(run: &Run, state: &mut State, lr: f64, stop: &AtomicBool) -> Result<bool> {
    let s = &run.s;
    if state.acc.rows == 0 {
        // every image of the epoch skipped as unreadable: an untrained student with a
        // loss of 0 must not pass for a result
        bail!(
            "epoch {}: no crop could be read from --data {} (every image was skipped as \
             unreadable; see the warnings above)",
            state.epoch + 1,
            s.data.display()
        );
    }
    let val = match &run.val {
        Some(v) => {
            let read = EvalRead {
                threads: s.threads,
                policy: s.policy,
                bar: false,
                batch: crate::eval::EVAL_BATCH,
            };
            // under `--on-bad-file skip` a validation that fails (no readable image,
            // non-finite scores) is logged and left out of the epoch's figures (null,
            // not 0): failing here would lose the epoch, whose checkpoint comes below;
            // `fail` asked for the error
            match evaluate_until(
                &run.student,
                v,
                s.spec(),
                read,
                &run.dev,
                stop,
                run.val_logits.as_deref(),
            ) {
                Ok(Some(a)) => Some(a),
                Ok(None) => return Ok(false),
                Err(e) if s.policy == meal_data::BadFilePolicy::Fail => {
                    return Err(e.context(format!(
                        "validating epoch {} (its steps are saved: restore the file, or \
                         leave it out with --on-bad-file skip, then rerun with --resume, which \
                         validates the epoch first)",
                        state.epoch + 1
                    )))
                }
                Err(e) => {
                    tracing::warn!(
                        "epoch {}: validation on --val failed: {e:#}",
                        state.epoch + 1
                    );
                    None
                }
            }
        }
        None => None,
    };
    let m = metrics(state.epoch, lr, &state.acc, run.disc.is_some(), val);
    // the label term's name: metrics.jsonl keeps it under "kd" for both losses
    let term = match s.loss {
        LossKind::Kd => "kd",
        LossKind::Ce => "ce",
    };
    tracing::info!(
        "epoch {}/{}: loss {:.4} ({term} {:.4}{}), train top-1 {:.3}{}, {:.1} crops/s{}",
        state.epoch + 1,
        s.epochs,
        m.loss,
        m.kd,
        m.disc.map(|d| format!(", disc {d:.4}")).unwrap_or_default(),
        m.train_top1,
        m.val_top1
            .map(|v| format!(", val top-1 {v:.3} top-5 {:.3}", m.val_top5.unwrap_or(0.0)))
            .unwrap_or_default(),
        m.crops_per_s,
        match m.skipped {
            0 => String::new(),
            n => format!(", {n} unreadable images of --data skipped (named in the warnings)"),
        }
    );
    state.history.push(m);
    state.epoch += 1;
    state.batch = 0;
    state.acc = EpochAcc::default();
    run.save_checkpoint(state)?;
    run.student
        .save_with(&s.out.join(STUDENT_FILE), run.trained_on())
        .map_err(|e| run.disk_hint(e.into()))?;
    write_tables(&s.out, &state.history).map_err(|e| run.disk_hint(e))?;
    Ok(true)
}

/// Train as `s` says; `stop` (Ctrl-C) ends the run after the current step with a
/// checkpoint to resume from.
pub fn train(s: Settings, stop: &AtomicBool) -> Result<TrainReport> {
    let out = s.out.clone();
    if out.join(meal_store::MANIFEST).exists() {
        bail!(
            "--out {}: a label store is there ({}); a run needs its own directory",
            out.display(),
            meal_store::MANIFEST
        );
    }
    // one process per run directory; released on exit or crash. A run refused before
    // its first write (a missing store, a store of another dataset, --resume of
    // nothing) leaves no empty directory behind: the lock removes what it created.
    let lock = meal_data::dirlock::DirLock::acquire(&out)
        .with_context(|| format!("--out {}", out.display()))?;
    checkpoint::recover_saves(&out)?;
    // a file of that name is no run's (a plain run said "pass --resume", a resume "no
    // checkpoint")
    let ck = out.join(CHECKPOINT);
    if ck.symlink_metadata().is_ok() && !ck.is_dir() {
        drop(lock);
        bail!(
            "--out {}: {} is {}, not a run's checkpoint directory: move it away, or \
             choose another --out",
            out.display(),
            ck.display(),
            // (a broken link trained a whole run, then failed to save it)
            match ck.exists() {
                true => "a file",
                false => "a link to nothing",
            }
        );
    }
    // --resume of a run that left nothing to resume (killed before its first save, or
    // requeued before it began) starts it, as Lightning's ckpt_path="last" does: a
    // requeue script that always passes --resume must not fail for good. A run with
    // results and no checkpoint is still refused (start)
    let mut s = s;
    if s.resume
        && !out.join(CHECKPOINT).exists()
        && !RESULT_FILES.iter().any(|f| out.join(f).exists())
    {
        tracing::warn!(
            "--resume: no checkpoint in {} yet (a run stopped before its first save, or \
             none began there): starting from the beginning",
            out.display()
        );
        s.resume = false;
    }
    let prepared = start::prepare(s);
    let (mut run, mut state) = match prepared {
        Ok(p) => p,
        Err(e) => {
            drop(lock);
            return Err(e);
        }
    };
    let s = run.s.clone();
    let _lock = lock;
    let mut step_losses = Vec::new();
    let mut interrupted = false;
    let mut epochs_ended = 0;
    let mut periodic_saves = Vec::new();
    if let Some(m) = s
        .max_steps
        .filter(|&m| state.step >= m && state.epoch < s.epochs)
    {
        // a resume past the limit runs no step (it would have run one more)
        tracing::warn!(
            "--max-steps {m}: the run is already at step {}; nothing to do (raise it to go on)",
            state.step
        );
        interrupted = true;
    }
    while state.epoch < s.epochs && !interrupted {
        let epoch = state.epoch;
        // --checkpoint-every's time counts from the epoch's start (its last save, or the
        // resume); its steps are the run's
        let mut saved = std::time::Instant::now();
        if stop.load(Ordering::Relaxed) {
            // a signal during the last epoch's end (or before the first step)
            run.save_checkpoint(&state)?;
            tracing::warn!(
                "stopped before epoch {}; checkpoint saved, continue with --resume",
                epoch + 1
            );
            interrupted = true;
            break;
        }
        let factor = s.schedule.factor(epoch);
        let lr = s.lr * factor;
        let per_epoch = run.batches_per_epoch();
        let bar = meal_cli::progress_bar(
            per_epoch as u64,
            "epoch {prefix} {bar:25} {pos}/{len} steps [{elapsed_precise} ETA {eta}] {msg}",
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, s.epochs));
        bar.set_position(state.batch as u64);
        // (a resume of an epoch whose steps were all done has only its end left)
        let loader = match state.batch < per_epoch {
            true => Some(run.loader(epoch, state.batch)?),
            false => None,
        };
        for b in loader.into_iter().flatten() {
            let b = match b {
                Ok(b) => b,
                // an unreadable file under --on-bad-file fail, met at a batch boundary:
                // the epoch's steps so far are saved, as a stop saves them
                Err(e) => {
                    bar.finish_and_clear();
                    // (a failed save, a full disk say, must not hide the file)
                    if let Err(save) = run.save_checkpoint(&state) {
                        bail!("{e}\n(the epoch's steps could not be saved: {save:#})");
                    }
                    bail!(
                        "{e}\n(epoch {} stopped after {} of its {per_epoch} steps, saved in the \
                         checkpoint: restore the file, or leave it out with --on-bad-file skip, \
                         then rerun with --resume; a file replaced by another of another size \
                         is another dataset: start a new run in another --out with --init {})",
                        epoch + 1,
                        state.batch,
                        s.out.join(CHECKPOINT).join(STUDENT_FILE).display()
                    );
                }
            };
            state.acc.skipped += b.skipped.len() as u64;
            if b.is_empty() {
                state.batch += 1;
                continue;
            }
            let total = step(&mut run, &b, &mut state, factor)?;
            step_losses.push(total);
            bar.set_position(state.batch as u64);
            bar.set_message(format!(
                "loss {total:.4} lr {lr:.2e} {:.1} img/s",
                state.acc.rows as f64 / state.acc.seconds.max(1e-9)
            ));
            let limit = s.max_steps.is_some_and(|m| state.step >= m);
            if stop.load(Ordering::Relaxed) || limit {
                interrupted = state.batch < per_epoch || epoch + 1 < s.epochs;
                if interrupted {
                    break;
                }
            }
            // (the epoch's last step is saved by its end)
            let due = match s.checkpoint_every {
                Some(Every::Steps(n)) => state.step % n == 0,
                Some(Every::Time(t)) => saved.elapsed() >= t,
                None => false,
            };
            if due && state.batch < per_epoch {
                match bar.suspend(|| run.save_checkpoint(&state)) {
                    Ok(()) => {
                        tracing::debug!(
                            "checkpoint saved at epoch {} step {} (--checkpoint-every)",
                            epoch + 1,
                            state.batch
                        );
                        periodic_saves.push((epoch, state.batch));
                    }
                    // weights gone non-finite end the run; a write that failed (a disk
                    // full for a while) does not: the last checkpoint is whole, and the
                    // epoch's end saves again (and stops the run if it fails too)
                    Err(e) if e.is::<checkpoint::NotFinite>() => return Err(e),
                    Err(e) => bar.suspend(|| {
                        tracing::warn!(
                            "{e:#}: this periodic checkpoint was not saved; the run goes on \
                             and saves again at the next"
                        )
                    }),
                }
                saved = std::time::Instant::now();
            }
        }
        bar.finish_and_clear();
        if interrupted && state.batch < per_epoch {
            run.save_checkpoint(&state)?;
            tracing::warn!(
                "stopped at step {} of epoch {} (of its {per_epoch}); checkpoint saved, \
                 continue with --resume",
                state.batch,
                epoch + 1
            );
            break;
        }
        if run.val.is_some() {
            // the epoch's steps are saved before its validation (minutes on ImageNet),
            // which a stop signal then ends at once, losing nothing
            run.save_checkpoint(&state)?;
        }
        if !end_epoch(&run, &mut state, lr, stop)? {
            tracing::warn!(
                "stopped during epoch {}'s validation; checkpoint saved, continue with \
                 --resume (it validates the epoch first)",
                epoch + 1
            );
            interrupted = true;
            break;
        }
        epochs_ended += 1;
        if interrupted {
            tracing::warn!(
                "stopped after epoch {}; checkpoint saved, continue with --resume",
                epoch + 1
            );
        }
    }
    if !interrupted && epochs_ended == 0 {
        // a resume of a finished run: a crash after the last checkpoint may have cut
        // the final weights or tables short, so they are written again from it
        run.student
            .save_with(&s.out.join(STUDENT_FILE), run.trained_on())
            .map_err(|e| run.disk_hint(e.into()))?;
        write_tables(&s.out, &state.history).map_err(|e| run.disk_hint(e))?;
    }
    if !interrupted {
        let run_name = s.out.file_name().map(|n| n.to_string_lossy().into_owned());
        let run_name = run_name.unwrap_or_else(|| s.out.display().to_string());
        plot_curves(
            &run_name,
            s.loss == LossKind::Ce,
            &state.history,
            &s.out.join(CURVES_FILE),
        )
        .map_err(|e| run.disk_hint(e))?;
    }
    Ok(TrainReport {
        history: state.history,
        steps: state.step,
        interrupted,
        step_losses,
        weights: s.out.join(STUDENT_FILE),
        periodic_saves,
    })
}
