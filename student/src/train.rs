//! The training loop: MEAL V2's step on cached (or online) soft labels, checkpoints,
//! resume, per-epoch evaluation and logs.
//!
//! Step (szq0214/MEAL-V2 `train.py`, `loss.py`): student logits on the replayed crops;
//! `kd = soft CE(logits, teacher probs)`; the discriminator sees
//! `[softmax(logits); teacher probs]` with targets `[1, 0]` for student rows and `[0, 1]`
//! for teacher rows, `d = BCE-with-logits`; `loss = kd + d`, one backward, one SGD step
//! over student and discriminator together. `--loss ce`: cross-entropy to hard labels.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use meal_data::{epoch_order, Batch, CropMode, Dataset, LinkPolicy, Loader, LoaderConfig};
use meal_models::ensemble::{Ensemble, TeacherArg};
use meal_models::loss::{bce_with_logits, soft_cross_entropy};
use meal_models::optim::{split_decay, Sgd, SgdConfig};
use meal_models::{
    load_into, read_state_dict, save_safetensors, Discriminator, LoadOptions, ResNet,
};
use meal_store::LabelStore;
use serde::{Deserialize, Serialize};

use crate::config::{LossKind, Settings};
use crate::eval::{evaluate, Accuracy};
use crate::logs::{plot_curves, write_tables, EpochMetrics};
use crate::plan::pass_plan;

/// Name of the checkpoint directory inside the run directory.
pub const CHECKPOINT: &str = "checkpoint";
/// The latest student weights (timm names), refreshed every epoch.
pub const STUDENT_FILE: &str = "student.safetensors";

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
}

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
}

/// The run's inputs by content: a resume must see the same images, labels and initial
/// weights, wherever they now lie (docs/PIPELINE.md, "Resume").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// Fingerprint of the training set (paths relative to its root, labels, sizes).
    pub data: String,
    /// Fingerprint of the validation set.
    pub val: Option<String>,
    /// SHA-256 of the label store's manifest (which lists every shard's checksum).
    pub labels: Option<String>,
    /// SHA-256 of the initial weights file.
    pub init: Option<String>,
}

/// Settings a resume may change: where things are (inputs are compared by content
/// instead), how many threads, the device, and the step limit (not serialised). The
/// result equals an uninterrupted run with any of these changed (tested for threads).
const RESUME_MAY_CHANGE: [&str; 8] = [
    "data",
    "val",
    "labels",
    "init",
    "out",
    "threads",
    "device",
    "follow_links",
];

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

/// Everything a run holds.
struct Run {
    s: Settings,
    dev: Device,
    ds: Arc<Dataset>,
    val: Option<Arc<Dataset>>,
    store: Option<Arc<LabelStore>>,
    online: Option<Ensemble>,
    student: ResNet,
    disc: Option<Discriminator>,
    opt: Sgd,
    /// Sample ids that can be trained on (with stored crops when replaying a store).
    usable: Vec<u32>,
}

/// The name of the first parameter or buffer holding a NaN or an infinity.
fn first_non_finite(entries: &[meal_models::Entry]) -> Result<Option<String>> {
    for e in entries {
        let t = e.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        if t.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
            return Ok(Some(e.name.clone()));
        }
    }
    Ok(None)
}

/// Open the dataset at `p` (named by `flag` in errors), refusing an empty one.
pub fn open_dataset(p: &Path, flag: &str, follow_links: bool) -> Result<Arc<Dataset>> {
    let links = LinkPolicy::follow_if(follow_links);
    let ds = Dataset::open(p, links).with_context(|| format!("{flag} {}", p.display()))?;
    if ds.is_empty() {
        bail!("{flag} {}: no images", p.display());
    }
    Ok(Arc::new(ds))
}

impl Run {
    /// The error for a non-finite loss: where it happened, whether the labels of the
    /// batch or the weights held the bad value, what checkpoint exists and how to go on.
    fn non_finite(
        &self,
        total: f64,
        b: &Batch,
        target: &Tensor,
        epoch: u32,
        batch: usize,
        step: u64,
    ) -> anyhow::Error {
        let at = format!(
            "non-finite loss ({total}) at epoch {} batch {} (step {} of the run)",
            epoch + 1,
            batch + 1,
            step + 1
        );
        let c = self.ds.classes().len();
        if let Ok(t) = target.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                let r = &b.rows[i / c];
                let from = match &self.s.labels {
                    Some(l) => format!("the label store {}", l.display()),
                    None => "the online teachers".into(),
                };
                return anyhow::anyhow!(
                    "{at}: the target of sample {} crop {} from {from} is not finite (meal-precompute verify checks a store); no weights were written for this step",
                    r.sample_id,
                    r.crop_id
                );
            }
        }
        let ckpt = self.s.out.join(CHECKPOINT).join("state.json");
        let saved = std::fs::read_to_string(&ckpt)
            .ok()
            .and_then(|t| serde_json::from_str::<State>(&t).ok());
        match saved {
            Some(st) => anyhow::anyhow!(
                "{at}: the training diverged. The last checkpoint (epoch {}, step {}) is in {}: resume it with the same settings, or start a new run from its weights with a lower --lr: --init {}",
                st.epoch + 1,
                st.step,
                ckpt.parent().unwrap_or(&self.s.out).display(),
                self.s.out.join(CHECKPOINT).join(STUDENT_FILE).display()
            ),
            None => anyhow::anyhow!(
                "{at}: the training diverged before any checkpoint was written (checkpoints are taken at each epoch's end); rerun with a lower --lr (now {})",
                self.s.lr
            ),
        }
    }

    /// The inputs' identities by content.
    fn inputs(&self) -> Result<Inputs> {
        let sha_file = |p: &Path, flag: &str| -> Result<String> {
            let bytes = std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))?;
            Ok(meal_store::sha256_hex(&bytes))
        };
        Ok(Inputs {
            data: self.ds.fingerprint().sha256.clone(),
            val: self.val.as_ref().map(|v| v.fingerprint().sha256.clone()),
            labels: match &self.s.labels {
                Some(l) => Some(sha_file(
                    &l.join(meal_store::manifest::MANIFEST),
                    "--labels",
                )?),
                None => None,
            },
            init: match &self.s.init {
                Some(p) => Some(sha_file(p, "--init")?),
                None => None,
            },
        })
    }

    fn new(s: Settings) -> Result<Self> {
        let dev = meal_models::parse_device(&s.device).context("--device")?;
        let ds = open_dataset(&s.data, "--data", s.follow_links)?;
        let classes = ds.classes().len();
        let val = match &s.val {
            Some(v) => {
                let vd = open_dataset(v, "--val", s.follow_links)?;
                if vd.classes() != ds.classes() {
                    bail!("--val {}: its classes differ from --data's", v.display());
                }
                Some(vd)
            }
            None => None,
        };
        let store = match &s.labels {
            Some(l) => {
                let st =
                    LabelStore::open(l).with_context(|| format!("--labels {}", l.display()))?;
                st.check_dataset(ds.fingerprint(), ds.classes())
                    .with_context(|| {
                        format!("--labels {} with --data {}", l.display(), s.data.display())
                    })?;
                Some(Arc::new(st))
            }
            None => None,
        };
        let online = if s.online_teacher.is_empty() {
            None
        } else {
            let args = TeacherArg::parse_all(&s.online_teacher).context("--online-teacher")?;
            let dtype = meal_models::ensemble::default_dtype(&dev);
            Some(Ensemble::load(&args, classes, &dev, dtype).context("--online-teacher")?)
        };
        let student = ResNet::from_preset(&s.arch, classes, &dev, s.seed)?;
        if let Some(init) = &s.init {
            let fresh = student
                .load_weights(
                    init,
                    LoadOptions {
                        fresh_classifier: true,
                    },
                )
                .with_context(|| format!("--init {}", init.display()))?;
            if !fresh.is_empty() {
                tracing::info!("--init: classifier re-initialised for {classes} classes");
            }
            // a NaN in the initial weights would only show as a non-finite loss later
            if let Some(name) = first_non_finite(student.entries())? {
                bail!(
                    "--init {}: tensor {name} holds non-finite values (NaN or inf)",
                    init.display()
                );
            }
        }
        let disc = if s.disc {
            Some(Discriminator::new(
                classes,
                true,
                &dev,
                s.seed.wrapping_add(1),
            )?)
        } else {
            None
        };
        let (a, b) = split_decay(student.entries(), "student.", s.lr, s.wd);
        let mut groups = vec![a, b];
        if let Some(d) = &disc {
            let (a, b) = split_decay(d.entries(), "disc.", s.disc_lr, s.wd);
            groups.extend([a, b]);
        }
        let opt = Sgd::new(
            groups,
            SgdConfig {
                momentum: s.momentum,
                dampening: 0.0,
                nesterov: s.nesterov,
            },
        )?;
        let usable: Vec<u32> = match &store {
            Some(st) => st.images()?.iter().map(|i| i.sample_id).collect(),
            None => (0..ds.len() as u32).collect(),
        };
        if usable.len() < ds.len() {
            tracing::warn!(
                "{} images have no stored labels (skipped at precompute time) and are left out",
                ds.len() - usable.len()
            );
        }
        Ok(Run {
            s,
            dev,
            ds,
            val,
            store,
            online,
            student,
            disc,
            opt,
            usable,
        })
    }

    fn images_per_batch(&self) -> usize {
        self.s.batch / self.s.crops_per_image as usize
    }

    fn loader(&self, epoch: u32, skip_batches: usize) -> Result<Loader> {
        let order: Vec<u32> = epoch_order(self.usable.len(), self.s.seed, epoch as u64, true)
            .into_iter()
            .map(|i| self.usable[i as usize])
            .skip(skip_batches * self.images_per_batch())
            .collect();
        let plan = pass_plan(
            self.store.as_ref(),
            self.s.seed,
            self.s.scale,
            self.s.crops_per_image,
            epoch as u64,
        )?;
        Ok(Loader::new(
            Arc::clone(&self.ds),
            order,
            LoaderConfig {
                images_per_batch: self.images_per_batch(),
                spec: self.s.spec(),
                extra_specs: self
                    .online
                    .as_ref()
                    .map(|e| e.specs().to_vec())
                    .unwrap_or_default(),
                crops: CropMode::Plan(plan),
                prefetch: 2,
                threads: self.s.threads,
                policy: self.s.policy,
                drop_last: true,
            },
        )?)
    }

    fn batches_per_epoch(&self) -> usize {
        self.usable.len() / self.images_per_batch()
    }

    /// The target distributions of a batch's rows.
    fn targets(&self, b: &Batch) -> Result<Tensor> {
        let c = self.ds.classes().len();
        let n = b.rows.len();
        let mut t = vec![0f32; n * c];
        match (self.s.loss, &self.online, &self.store) {
            (LossKind::Ce, _, _) => {
                for (i, r) in b.rows.iter().enumerate() {
                    t[i * c + r.label as usize] = 1.0;
                }
            }
            (LossKind::Kd, Some(ens), _) => {
                let inputs: Vec<&[f32]> = b.extra.iter().map(Vec::as_slice).collect();
                t = ens.soft_labels(&inputs, n, n)?.probs;
            }
            (LossKind::Kd, None, Some(store)) => {
                // an image's crops are contiguous: read its stored labels once
                let mut rows = t.chunks_exact_mut(c);
                for group in b.rows.chunk_by(|a, b| a.sample_id == b.sample_id) {
                    let id = group[0].sample_id;
                    let crops = store.view(id)?;
                    for (r, out) in group.iter().zip(rows.by_ref()) {
                        let i = u16::try_from(r.crop_id)
                            .ok()
                            .and_then(|c| crops.position(c))
                            .with_context(|| {
                                format!("sample {id} crop {} missing from the store", r.crop_id)
                            })?;
                        crops.dense_into(i, out);
                    }
                }
            }
            (LossKind::Kd, None, None) => bail!("--loss kd without labels or online teachers"),
        }
        Ok(Tensor::from_vec(t, (n, c), &self.dev)?)
    }

    fn save_checkpoint(&self, state: &State) -> Result<()> {
        // the directory is swapped whole (old -> .old, tmp -> checkpoint, drop .old);
        // load_checkpoint falls back to .old after a crash between the two renames
        let dst = self.s.out.join(CHECKPOINT);
        meal_data::atomic::replace_with(&dst, |tmp| -> Result<()> {
            std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
            self.student.save(&tmp.join(STUDENT_FILE))?;
            if let Some(d) = &self.disc {
                save_safetensors(d.entries(), &tmp.join("disc.safetensors"))?;
            }
            self.opt.save_state(&tmp.join("optim.safetensors"))?;
            std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)
                .with_context(|| format!("writing {}", tmp.display()))
        })
        .map_err(|e| match e {
            meal_data::atomic::AtomicError::Write(e) => e,
            e => anyhow::anyhow!("saving the checkpoint: {e}"),
        })
    }

    fn load_checkpoint(&mut self) -> Result<State> {
        let out = &self.s.out;
        let mut dir = out.join(CHECKPOINT);
        if !dir.join("state.json").exists()
            && out.join(format!("{CHECKPOINT}.old/state.json")).exists()
        {
            // a crash between the two renames of save_checkpoint
            dir = out.join(format!("{CHECKPOINT}.old"));
        }
        let sp = dir.join("state.json");
        let text = std::fs::read_to_string(&sp).with_context(|| {
            format!(
                "--resume: no checkpoint in {} ({})",
                out.display(),
                sp.display()
            )
        })?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("--resume: {}", sp.display()))?;
        let (a, b) = (
            serde_json::to_value(&state.settings)?,
            serde_json::to_value(&self.s)?,
        );
        let diff: Vec<String> = match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => x
                .iter()
                .filter(|(k, v)| !RESUME_MAY_CHANGE.contains(&k.as_str()) && y.get(*k) != Some(*v))
                .map(|(k, _)| format!("--{}", k.replace('_', "-")))
                .collect(),
            _ => vec![],
        };
        if !diff.is_empty() {
            bail!(
                "--resume: {} was made with other settings: {} differ(s) (to change them, start a new run with --init {})",
                sp.display(),
                diff.join(", "),
                dir.join(STUDENT_FILE).display()
            );
        }
        let now = self.inputs()?;
        if let Some(was) = &state.inputs {
            let mut changed = Vec::new();
            if was.data != now.data {
                changed.push("--data (other images or labels)");
            }
            if was.val != now.val {
                changed.push("--val (other images)");
            }
            if was.labels != now.labels {
                changed.push("--labels (another label store)");
            }
            if was.init != now.init {
                changed.push("--init (other weights)");
            }
            if !changed.is_empty() {
                bail!(
                    "--resume: the inputs differ by content from the checkpointed run's: {}",
                    changed.join(", ")
                );
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
        self.opt.load_state(&dir.join("optim.safetensors"))?;
        Ok(state)
    }
}

fn metrics(epoch: u32, lr: f64, acc: &EpochAcc, val: Option<Accuracy>) -> EpochMetrics {
    let n = acc.rows.max(1) as f64;
    EpochMetrics {
        epoch,
        lr,
        loss: acc.loss / n,
        kd: acc.kd / n,
        disc: acc.disc / n,
        train_top1: acc.correct as f64 / n,
        val_top1: val.map(|v| v.top1),
        val_top5: val.map(|v| v.top5),
        crops: acc.rows,
        crops_per_s: acc.rows as f64 / acc.seconds.max(1e-9),
    }
}

/// Train as `s` says; `stop` (Ctrl-C) ends the run after the current step with a
/// checkpoint to resume from.
pub fn train(s: Settings, stop: &AtomicBool) -> Result<TrainReport> {
    std::fs::create_dir_all(&s.out).with_context(|| format!("--out {}", s.out.display()))?;
    // one process per run directory; released on exit or crash
    let _lock = meal_data::dirlock::DirLock::acquire(&s.out)
        .with_context(|| format!("--out {}", s.out.display()))?;
    let mut run = Run::new(s)?;
    let s = run.s.clone();
    if run.batches_per_epoch() == 0 {
        bail!(
            "--batch {}: more images per step ({}) than the {} usable images",
            s.batch,
            run.images_per_batch(),
            run.usable.len()
        );
    }
    let mut state = if s.resume {
        let st = run.load_checkpoint()?;
        tracing::info!(
            "resuming at epoch {} batch {} (step {})",
            st.epoch,
            st.batch,
            st.step
        );
        st
    } else {
        if s.out.join(CHECKPOINT).exists() {
            bail!(
                "--out {} already holds a run; pass --resume to continue it or choose another directory",
                s.out.display()
            );
        }
        State {
            settings: s.clone(),
            epoch: 0,
            batch: 0,
            step: 0,
            acc: EpochAcc::default(),
            history: Vec::new(),
            inputs: Some(run.inputs()?),
        }
    };
    let mut step_losses = Vec::new();
    let mut interrupted = false;
    while state.epoch < s.epochs && !interrupted {
        let epoch = state.epoch;
        let factor = s.schedule.factor(epoch);
        let lr = s.lr * factor;
        let per_epoch = run.batches_per_epoch();
        let bar = meal_cli::progress_bar(
            per_epoch as u64,
            "epoch {prefix} {bar:25} {pos}/{len} steps [{elapsed_precise} ETA {eta}] {msg}",
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, s.epochs));
        bar.set_position(state.batch as u64);
        let loader = run.loader(epoch, state.batch)?;
        let size = s.res as usize;
        for b in loader {
            let b = b?;
            if b.is_empty() {
                state.batch += 1;
                continue;
            }
            let t0 = Instant::now();
            let n = b.rows.len();
            let target = run.targets(&b)?;
            let x = Tensor::from_slice(&b.data, (n, 3, size, size), &run.dev)?;
            let l = step_loss(&run.student, run.disc.as_ref(), &x, &target)?;
            let total = l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !total.is_finite() {
                return Err(run.non_finite(total, &b, &target, epoch, state.batch, state.step));
            }
            let grads = l.total.backward()?;
            run.opt.step(&grads, factor)?;
            let kd = l.kd.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let d = match &l.disc {
                Some(d) => d.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 0.0,
            };
            let pred = l.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            state.acc.correct += pred
                .iter()
                .zip(&b.rows)
                .filter(|(p, r)| **p == r.label)
                .count() as u64;
            state.acc.loss += total * n as f64;
            state.acc.kd += kd * n as f64;
            state.acc.disc += d * n as f64;
            state.acc.rows += n as u64;
            state.acc.seconds += t0.elapsed().as_secs_f64();
            state.batch += 1;
            state.step += 1;
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
        }
        bar.finish_and_clear();
        if interrupted && state.batch < per_epoch {
            run.save_checkpoint(&state)?;
            tracing::warn!(
                "stopped at epoch {} step {}; checkpoint saved, continue with --resume",
                epoch + 1,
                state.batch
            );
            break;
        }
        // end of epoch: evaluate, log, checkpoint
        let val = match &run.val {
            Some(v) => Some(evaluate(&run.student, v, s.spec(), s.threads, &run.dev)?),
            None => None,
        };
        let m = metrics(epoch, lr, &state.acc, val);
        tracing::info!(
            "epoch {}/{}: loss {:.4} (kd {:.4}, disc {:.4}), train top-1 {:.3}{}, {:.1} crops/s",
            epoch + 1,
            s.epochs,
            m.loss,
            m.kd,
            m.disc,
            m.train_top1,
            m.val_top1
                .map(|v| format!(", val top-1 {v:.3} top-5 {:.3}", m.val_top5.unwrap_or(0.0)))
                .unwrap_or_default(),
            m.crops_per_s
        );
        state.history.push(m);
        state.epoch += 1;
        state.batch = 0;
        state.acc = EpochAcc::default();
        run.save_checkpoint(&state)?;
        run.student.save(&s.out.join(STUDENT_FILE))?;
        write_tables(&s.out, &state.history)?;
    }
    if !interrupted {
        let run_name = s.out.file_name().map(|n| n.to_string_lossy().into_owned());
        let run_name = run_name.unwrap_or_else(|| s.out.display().to_string());
        plot_curves(&run_name, &state.history, &s.out.join("curves.png"))?;
    }
    Ok(TrainReport {
        history: state.history,
        steps: state.step,
        interrupted,
        step_losses,
        weights: s.out.join(STUDENT_FILE),
    })
}
