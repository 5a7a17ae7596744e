//! Settings of `meal-student train`: flags over an optional TOML file with the same keys
//! (snake_case of the flag) over the defaults, which follow MEAL V2 (szq0214/MEAL-V2 `train.py`:
//! SGD lr 0.01, momentum 0.9, weight decay 0, lr x0.1 at epoch 100).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use meal_data::{BadFilePolicy, Filter, Normalize};
use meal_models::input_config;
use meal_models::optim::LrSchedule;
use serde::{Deserialize, Serialize};

mod every;
pub use every::{Every, DEFAULT_CHECKPOINT_EVERY};

/// MEAL V2's learning rate.
pub const DEFAULT_LR: f64 = 0.01;
/// MEAL V2's momentum.
pub const DEFAULT_MOMENTUM: f64 = 0.9;
/// MEAL V2's step schedule: every 100 epochs ...
pub const DEFAULT_LR_STEP: u32 = 100;
/// ... times 0.1.
pub const DEFAULT_LR_GAMMA: f64 = 0.1;
/// Default rows (crops) per step.
pub const DEFAULT_BATCH: usize = 64;
/// Default crops of each decoded image per pass.
pub const DEFAULT_CROPS_PER_IMAGE: u32 = 2;

/// The flags of `meal-student train`, also the keys of its TOML config.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    /// TOML file with any of these keys (snake_case); flags override it. Relative
    /// paths in it are read from the current directory, as flags are.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Training images: ImageFolder directory or CSV list file (required: here or in
    /// --config).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Validation images, evaluated after every epoch (optional).
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    /// The label store from meal-precompute (needed by --loss kd unless --online-teacher).
    #[arg(long, value_name = "STORE")]
    pub labels: Option<PathBuf>,
    /// Student architecture (a preset name) [default: resnet50].
    #[arg(long)]
    pub arch: Option<String>,
    /// Initial weights (timm state dict, .safetensors or .pth); MEAL V2 starts from a
    /// pretrained student. A classifier of another class count is re-initialised.
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<PathBuf>,
    /// Student input side [default: the preset's (224; demo presets 64)].
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "PX")]
    pub res: Option<u32>,
    /// Epochs (passes over the images; required: here or in --config).
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true)]
    pub epochs: Option<u32>,
    /// Crops per step (images x crops per image) [default: 64].
    #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true, value_name = "ROWS")]
    pub batch: Option<usize>,
    /// Crops of each decoded image per pass [default: 2]; pass e takes the next C crops
    /// of each image's stored pool, cycling.
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "C")]
    pub crops_per_image: Option<u32>,
    /// RandomResizedCrop scale range of fresh crops (runs without a store; with one,
    /// the stored crops are replayed) [default: 0.08,1].
    #[arg(long, value_name = "MIN,MAX")]
    pub scale: Option<meal_cli::Pair>,
    /// Base learning rate [default: 0.01].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule [default: step].
    #[arg(long, value_parser = ["step", "cosine", "constant"])]
    pub schedule: Option<String>,
    /// Epochs between decays of the step schedule [default: 100].
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "EPOCHS")]
    pub lr_steps: Option<u32>,
    /// Decay factor of the step schedule [default: 0.1].
    #[arg(long)]
    pub lr_gamma: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum [default: false].
    #[arg(long)]
    pub nesterov: Option<bool>,
    /// Follow symlinks in --data/--val that lead outside the dataset root (refused by
    /// default) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub follow_links: Option<bool>,
    /// Weight decay (not applied to BatchNorm and bias parameters) [default: 0].
    #[arg(long)]
    pub wd: Option<f64>,
    /// The discriminator [default: on for kd, off for ce].
    #[arg(long, value_parser = ["on", "off"])]
    #[serde(default, deserialize_with = "switch")]
    pub disc: Option<String>,
    /// The discriminator's own learning rate [default: --lr, which is what upstream
    /// ends up using: its separate rate is overwritten every epoch].
    #[arg(long)]
    pub disc_lr: Option<f64>,
    /// kd: the soft labels of the store or the online teachers; ce: hard labels
    /// [default: kd].
    #[arg(long, value_parser = ["kd", "ce"])]
    pub loss: Option<String>,
    /// Run these teachers every step instead of reading the store (comparisons and
    /// checks); same syntax as meal-precompute's --teacher (a local file or a Hugging
    /// Face hub id ORG/NAME). Repeatable.
    #[arg(long = "online-teacher", value_name = "ARCH=WEIGHTS", value_parser = meal_cli::Utf8Text)]
    #[serde(default, deserialize_with = "meal_cli::config::one_or_many")]
    pub online_teacher: Vec<String>,
    /// cpu or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// On a GPU, f32 convolutions and matmuls on TF32 tensor cores (10-bit mantissa
    /// products, f32 sums), as PyTorch runs its convolutions by default
    /// (torch.backends.cudnn.allow_tf32); false: exact f32. No effect on the CPU
    /// [default: true].
    #[arg(long)]
    pub tf32: Option<bool>,
    /// On a GPU, mixed precision as PyTorch's autocast with bf16: activations and
    /// convolutions in bf16 (tensor cores, f32 sums), f32 weights, optimizer, BatchNorm
    /// statistics, logits and loss (no loss scaling: bf16 has f32's range). CUDA only
    /// [default: false].
    #[arg(long)]
    pub amp: Option<bool>,
    /// CPU threads [default: all cores].
    #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Seed of the epoch order, fresh crops (ce) and initialisation [default: 0].
    #[arg(long, value_parser = meal_cli::whole::<u64>, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Run directory: checkpoints, metrics.jsonl, summary.csv, curves.png (required:
    /// here or in --config).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (`--resume false` turns off a
    /// config file's `resume = true`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub resume: Option<bool>,
    /// Unreadable images: skip them (listed in the log) or fail [default: skip].
    #[arg(long, value_parser = ["skip", "fail"])]
    pub on_bad_file: Option<String>,
    /// Stop after this many steps in total (a quick try; checkpoints as on Ctrl-C).
    #[arg(long, value_parser = meal_cli::whole::<u64>, allow_negative_numbers = true)]
    pub max_steps: Option<u64>,
    /// Also save the checkpoint within an epoch this often: a time (`30m`, `2h`, `90s`)
    /// or a number of steps (`500`); `off`: at each epoch's end and on a stop only. A
    /// SIGKILL, the OOM killer or a lost spot instance loses at most this much
    /// [default: 30m].
    #[arg(long, value_name = "TIME|STEPS")]
    #[serde(default, deserialize_with = "text_or_number")]
    pub checkpoint_every: Option<String>,
}

/// A config file's value given as text or as a whole number (`checkpoint_every = 500`
/// and `= "30m"` alike).
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_json::Value;
    // (an untagged enum said "data did not match any variant of untagged enum Value"
    // to `checkpoint_every = -5`)
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(v) => Err(serde::de::Error::custom(format!(
            "{v}: expected a time (\"30m\"), a number of steps (500) or \"off\""
        ))),
    }
}

/// A config file's switch given as `"on"`/`"off"` or as a boolean (`disc = true`).
fn switch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_json::Value;
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Bool(b)) => Ok(Some(if b { "on" } else { "off" }.to_string())),
        Some(v) => Err(serde::de::Error::custom(format!(
            "{v}: expected \"on\" or \"off\" (or true, false)"
        ))),
    }
}

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Soft cross-entropy to the ensemble's probabilities (+ discriminator).
    Kd,
    /// Cross-entropy to the hard labels (teachers, baselines).
    Ce,
}

/// Resolved settings (also saved in checkpoints: a resume must match them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Training data.
    pub data: PathBuf,
    /// Validation data.
    pub val: Option<PathBuf>,
    /// Label store.
    pub labels: Option<PathBuf>,
    /// Student preset.
    pub arch: String,
    /// Initial weights.
    pub init: Option<PathBuf>,
    /// Input side.
    pub res: u32,
    /// Epochs.
    pub epochs: u32,
    /// Rows per step.
    pub batch: usize,
    /// Crops per image per pass.
    pub crops_per_image: u32,
    /// RRC scale of fresh crops.
    pub scale: [f64; 2],
    /// Base lr.
    pub lr: f64,
    /// Schedule.
    pub schedule: LrSchedule,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov.
    pub nesterov: bool,
    /// Follow symlinks out of the dataset roots.
    #[serde(default)]
    pub follow_links: bool,
    /// Weight decay.
    pub wd: f64,
    /// Discriminator on.
    pub disc: bool,
    /// Discriminator lr.
    pub disc_lr: f64,
    /// Loss.
    pub loss: LossKind,
    /// Online teacher specs (as given).
    pub online_teacher: Vec<String>,
    /// Device.
    pub device: String,
    /// TF32 GEMMs on a GPU (absent from runs made before the flag: they ran in f32).
    #[serde(default)]
    pub tf32: bool,
    /// Mixed precision (bf16) on a GPU (absent from runs made before the flag: f32).
    #[serde(default)]
    pub amp: bool,
    /// Threads.
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// Run directory.
    pub out: PathBuf,
    /// Resume.
    #[serde(skip)]
    pub resume: bool,
    /// Bad-file policy.
    pub policy: BadFilePolicy,
    /// Step limit.
    #[serde(skip)]
    pub max_steps: Option<u64>,
    /// Checkpoints within an epoch (none: `off`).
    #[serde(skip)]
    pub checkpoint_every: Option<Every>,
}

impl Settings {
    /// The student's input spec: its side, bilinear (torchvision's default for training),
    /// ImageNet mean/std.
    pub fn spec(&self) -> meal_data::CropSpec {
        meal_data::CropSpec::new(self.res, Filter::Bilinear, Normalize::default())
            .expect("side checked at resolve")
    }

    /// These settings as a checkpoint records them: the inputs' paths made absolute
    /// (a resume from another working directory names what differs from the run's
    /// `--data`, which a relative path no longer finds), resolved where they exist
    /// (`sub/../d/val` as `d/val`).
    pub fn recorded(&self) -> Settings {
        // (a path not there, a missing --init on a resume: `..` folded by name)
        let abs = |p: &Path| {
            p.canonicalize().unwrap_or_else(|_| {
                let a = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
                let mut out = PathBuf::new();
                for c in a.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            out.pop();
                        }
                        std::path::Component::CurDir => {}
                        c => out.push(c),
                    }
                }
                out
            })
        };
        Settings {
            data: abs(&self.data),
            val: self.val.as_deref().map(abs),
            labels: self.labels.as_deref().map(abs),
            init: self.init.as_deref().map(abs),
            out: abs(&self.out),
            ..self.clone()
        }
    }
}

impl TrainArgs {
    /// These flags over the `--config` file over the defaults.
    /// An error names the flag; with a `--config` file it names the file too (a value
    /// may have come from it).
    pub fn resolve(self) -> Result<Settings> {
        let config = self.config.clone();
        meal_cli::naming_config(self.resolve_layers(), config.as_deref())
    }

    fn resolve_layers(self) -> Result<Settings> {
        let config = self.config.clone();
        let l = meal_cli::Layers::new(self, config.as_deref())
            .map_err(|e| anyhow::anyhow!("--config {e}"))?;
        let data = l.pick(|a| &a.data).context("--data is required")?;
        let out = l
            .pick(|a| &a.out)
            .context("--out is required (the run directory)")?;
        meal_cli::check_out_dir("--out", &out)?;
        for (flag, root) in [
            ("--data", Some(&data)),
            ("--val", l.pick(|a| &a.val).as_ref()),
        ] {
            if let Some(root) = root.filter(|r| meal_cli::is_inside(&out, r)) {
                bail!(
                    "--out {} is inside {flag} {}: the next run would read it as a class; put the run elsewhere",
                    out.display(),
                    root.display()
                );
            }
        }
        let arch = l.pick(|a| &a.arch).unwrap_or_else(|| "resnet50".into());
        meal_models::preset(&arch).context("--arch")?;
        let loss = match l.pick(|a| &a.loss).as_deref() {
            None | Some("kd") => LossKind::Kd,
            Some("ce") => LossKind::Ce,
            Some(o) => bail!("--loss {o:?}: expected kd or ce"),
        };
        let online_teacher = l.list(|a| &a.online_teacher);
        let labels = l.pick(|a| &a.labels);
        let online = meal_models::ensemble::TeacherArg::parse_all(&online_teacher)
            .context("--online-teacher")?;
        // online teachers label the training crops (RandomResizedCrop's), as precompute's
        // do, where the eval transform's crop_pct would silently do nothing
        if let Some((spec, _)) = online_teacher
            .iter()
            .zip(&online)
            .find(|(_, t)| t.crop_pct.is_some())
        {
            bail!(
                "--online-teacher {spec}: crop_pct sizes the eval transform's centre crop; \
                 online teachers label the training crops (RandomResizedCrop, --scale), where \
                 it has \
                 no effect: remove it"
            );
        }
        // a store's crops were drawn by precompute (its --scale, recorded in the store);
        // a --scale here would be silently ignored
        if let (Some(store), Some(scale)) = (&labels, l.pick(|a| &a.scale)) {
            bail!(
                "--scale {},{} with --labels {}: the stored crops are replayed as \
                 meal-precompute drew them (its --scale); remove --scale, or draw a new \
                 pool with meal-precompute run --scale",
                scale.0[0],
                scale.0[1],
                store.display()
            );
        }
        if loss == LossKind::Kd && labels.is_none() && online_teacher.is_empty() {
            bail!("--loss kd needs --labels STORE (from meal-precompute) or --online-teacher");
        }
        let res = match l.pick(|a| &a.res) {
            Some(r) => r,
            None => input_config(&arch).context("--arch")?.size,
        };
        // the same check as the spec's, under the flag's name (`Settings::spec` relies on it)
        meal_data::CropSpec::new(res, Filter::Bilinear, Normalize::default())
            .with_context(|| format!("--res {res}"))?;
        let epochs = l.pick(|a| &a.epochs).context("--epochs is required")?;
        let batch = l.pick(|a| &a.batch).unwrap_or(DEFAULT_BATCH);
        let crops_per_image = l
            .pick(|a| &a.crops_per_image)
            .unwrap_or(DEFAULT_CROPS_PER_IMAGE);
        if crops_per_image == 0 {
            bail!("--crops-per-image must be at least 1");
        }
        if batch == 0 || !batch.is_multiple_of(crops_per_image as usize) {
            bail!("--batch {batch} must be a positive multiple of --crops-per-image {crops_per_image}");
        }
        // a ResNet's last stage is res/32 a side: one crop there gives its BatchNorms one
        // value a channel, whose variance is 0 (PyTorch refuses it: "Expected more than 1
        // value per channel when training"; here the running variances decayed to 0)
        if batch == 1 && res.div_ceil(32) == 1 {
            bail!(
                "--batch 1 at --res {res}: the last stage's maps are 1x1, so BatchNorm would \
                 see one value per channel; raise --batch"
            );
        }
        let lr = l.pick(|a| &a.lr).unwrap_or(DEFAULT_LR);
        let (lr_steps, lr_gamma) = (l.pick(|a| &a.lr_steps), l.pick(|a| &a.lr_gamma));
        let schedule = match l.pick(|a| &a.schedule).as_deref() {
            None | Some("step") => LrSchedule::Step {
                step: lr_steps.unwrap_or(DEFAULT_LR_STEP),
                gamma: lr_gamma.unwrap_or(DEFAULT_LR_GAMMA),
            },
            Some("cosine") => LrSchedule::Cosine { epochs },
            Some("constant") => LrSchedule::Constant,
            Some(o) => bail!("--schedule {o:?}: expected step, cosine or constant"),
        };
        // a flag that would do nothing is refused rather than ignored
        if !matches!(schedule, LrSchedule::Step { .. }) {
            if let Some(flag) = [
                ("--lr-steps", lr_steps.is_some()),
                ("--lr-gamma", lr_gamma.is_some()),
            ]
            .into_iter()
            .find_map(|(f, given)| given.then_some(f))
            {
                bail!(
                    "{flag} sets the step schedule; --schedule {} does not use it: remove it",
                    l.pick(|a| &a.schedule).unwrap_or_default()
                );
            }
        }
        if let (LossKind::Ce, Some(store)) = (loss, &labels) {
            bail!(
                "--labels {} with --loss ce: ce trains on the hard labels and fresh crops, \
                 and would only hash the store; remove --labels, or use --loss kd",
                store.display()
            );
        }
        if loss == LossKind::Ce && !online_teacher.is_empty() {
            bail!(
                "--online-teacher gives the soft labels of --loss kd; --loss ce trains on the \
                 hard labels and would not run it: remove it, or use --loss kd"
            );
        }
        let disc = match l.pick(|a| &a.disc).as_deref() {
            None => loss == LossKind::Kd,
            Some("on") => true,
            Some("off") => false,
            Some(o) => bail!("--disc {o:?}: expected on or off"),
        };
        if !disc && l.pick(|a| &a.disc_lr).is_some() {
            bail!(
                "--disc-lr sets the discriminator's rate; the discriminator is off (--loss ce \
                 or --disc off): remove it"
            );
        }
        if disc && loss == LossKind::Ce {
            bail!("--disc on needs --loss kd (the discriminator compares with teacher outputs)");
        }
        let threads = l
            .pick(|a| &a.threads)
            .unwrap_or_else(meal_cli::default_threads);
        // every flag checked here, before any work, under its own name
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        if epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr {}: must be a positive number", meal_cli::number(lr));
        }
        if let Some(d) = l.pick(|a| &a.disc_lr) {
            if !(d.is_finite() && d > 0.0) {
                bail!(
                    "--disc-lr {}: must be a positive number",
                    meal_cli::number(d)
                );
            }
        }
        if let LrSchedule::Step { step, gamma } = schedule {
            if step == 0 {
                bail!("--lr-steps must be at least 1 (epochs between decays)");
            }
            if !(gamma.is_finite() && gamma > 0.0 && gamma <= 1.0) {
                bail!("--lr-gamma {gamma}: must be in (0, 1]");
            }
        }
        let momentum = l.pick(|a| &a.momentum).unwrap_or(DEFAULT_MOMENTUM);
        if !(0.0..1.0).contains(&momentum) {
            bail!("--momentum {momentum}: must be in [0, 1)");
        }
        let nesterov = l.pick(|a| &a.nesterov).unwrap_or(false);
        if nesterov && momentum == 0.0 {
            // PyTorch's SGD refuses it too: Nesterov's look-ahead is along the momentum
            bail!("--nesterov needs --momentum above 0");
        }
        let wd = l.pick(|a| &a.wd).unwrap_or(0.0);
        if !(wd.is_finite() && wd >= 0.0) {
            bail!(
                "--wd {}: must be a non-negative number",
                meal_cli::number(wd)
            );
        }
        if l.pick(|a| &a.max_steps) == Some(0) {
            bail!("--max-steps must be at least 1");
        }
        let scale = l.pick(|a| &a.scale).map(|p| p.0).unwrap_or([
            meal_data::crop::DEFAULT_SCALE.0,
            meal_data::crop::DEFAULT_SCALE.1,
        ]);
        meal_data::RrcParams::new((scale[0], scale[1]), meal_data::crop::DEFAULT_RATIO)
            .context("--scale")?;
        let policy = match l.pick(|a| &a.on_bad_file) {
            Some(p) => p.parse::<BadFilePolicy>().context("--on-bad-file")?,
            None => BadFilePolicy::Skip,
        };
        let device = l.pick(|a| &a.device).unwrap_or_else(|| "cpu".into());
        meal_models::check_device(&device).context("--device")?;
        let checkpoint_every = match l.pick(|a| &a.checkpoint_every).as_deref() {
            None => Some(DEFAULT_CHECKPOINT_EVERY),
            Some(o) if o.trim().eq_ignore_ascii_case("off") => None,
            Some(e) => Some(
                e.parse::<Every>()
                    .map_err(|e| anyhow::anyhow!("--checkpoint-every {e}"))?,
            ),
        };
        let s = Settings {
            data,
            val: l.pick(|a| &a.val),
            labels,
            arch,
            init: l.pick(|a| &a.init),
            res,
            epochs,
            batch,
            crops_per_image,
            scale,
            lr,
            schedule,
            momentum,
            nesterov,
            follow_links: l.pick(|a| &a.follow_links).unwrap_or(false),
            wd,
            disc,
            disc_lr: l.pick(|a| &a.disc_lr).unwrap_or(lr),
            loss,
            online_teacher,
            device,
            tf32: l.pick(|a| &a.tf32).unwrap_or(true),
            amp: l.pick(|a| &a.amp).unwrap_or(false),
            threads,
            seed: l.pick(|a| &a.seed).unwrap_or(0),
            out,
            resume: l.pick(|a| &a.resume).unwrap_or(false),
            policy,
            max_steps: l.pick(|a| &a.max_steps),
            checkpoint_every,
        };
        s.check_recordable()?;
        Ok(s)
    }
}

impl Settings {
    /// Refuses, naming the flag, an input or run path that a checkpoint could not
    /// record: `state.json` holds them as JSON text, which has no room for a path that
    /// is not UTF-8 (serde refused it with a message naming nothing). Checked as the
    /// checkpoint records it ([`Settings::recorded`]: resolved, so a UTF-8 link to it
    /// is no way round where the target's own path is not).
    fn check_recordable(&self) -> Result<()> {
        let r = self.recorded();
        for (flag, given, kept) in [
            ("--data", Some(&self.data), Some(&r.data)),
            ("--val", self.val.as_ref(), r.val.as_ref()),
            ("--labels", self.labels.as_ref(), r.labels.as_ref()),
            ("--init", self.init.as_ref(), r.init.as_ref()),
            ("--out", Some(&self.out), Some(&r.out)),
        ] {
            if let (Some(given), Some(kept)) = (given, kept) {
                if kept.to_str().is_none() {
                    bail!(
                        "{flag} {}: its path ({}) is not UTF-8, and a run's checkpoint \
                         records its inputs' and its own paths as UTF-8 text (state.json): \
                         give it from a folder whose path is UTF-8 (rename or move it)",
                        given.display(),
                        kept.display()
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
