//! Settings of a precompute run: command-line flags over an optional TOML file with the
//! same keys (snake_case of the flag), over the defaults named here.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use meal_data::{BadFilePolicy, LinkPolicy};
use meal_store::{Encoding, ShardFormat};
use serde::Deserialize;

/// Default pool size P (crops drawn per image). FKD draws hundreds for ImageNet; the
/// student cycles through the pool, so P bounds the augmentation diversity.
pub const DEFAULT_CROPS_PER_IMAGE: u32 = 8;
/// Default teacher forward batch (crops).
pub const DEFAULT_BATCH: usize = 64;
/// Default images per shard (ImageNet: ~1250 shards of ~25 MB at P = 500, top-10).
pub const DEFAULT_SAMPLES_PER_SHARD: u32 = 1024;
/// Default images per Parquet row group.
pub const DEFAULT_IMAGES_PER_ROW_GROUP: u32 = 64;
/// Up to this many classes the default encoding is dense; above it `topk:10`.
pub const DENSE_DEFAULT_MAX_CLASSES: usize = 32;

/// The flags of `meal-precompute run`, also the keys of its TOML config file.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of these keys (snake_case); flags given here override it.
    /// Relative paths in it are read from the current directory, as flags are.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The images: an ImageFolder directory (class per sub-folder) or a CSV list file
    /// (required: here or in --config).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A teacher (one or more required: here or in --config), repeatable:
    /// `ARCH=WEIGHTS[,size=N][,filter=bilinear|bicubic][,mean=R:G:B][,std=R:G:B][,classes=FILE]`.
    /// WEIGHTS is a timm state dict (.safetensors or .pth), or a Hugging Face hub id
    /// ORG/NAME (no such local file: its model.safetensors, cached in $HF_HOME/hub;
    /// HF_HUB_OFFLINE=1 reads the cache only, HF_ENDPOINT names a mirror); the input
    /// config defaults to the preset's timm pretrained config. `classes=` names the weights' classes in
    /// logit order, one per line (timm's imagenet_synsets.txt): the data's classes are
    /// then taken by name, a subset of them included.
    #[arg(long = "teacher", value_name = "ARCH=WEIGHTS", value_parser = meal_cli::Utf8Text)]
    #[serde(default, deserialize_with = "meal_cli::config::one_or_many")]
    pub teacher: Vec<String>,
    /// Where the label store goes (resumed when it holds a partial store of this config;
    /// required: here or in --config).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Pool size P: crops drawn and labelled per image [default: 8].
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "P")]
    pub crops_per_image: Option<u32>,
    /// RandomResizedCrop scale range [default: 0.08,1].
    #[arg(long, value_name = "MIN,MAX")]
    pub scale: Option<Pair>,
    /// RandomResizedCrop aspect-ratio range [default: 0.75,1.3333333333333333].
    #[arg(long, value_name = "MIN,MAX")]
    pub ratio: Option<Pair>,
    /// Seed of the crop pool [default: 0].
    #[arg(long, value_parser = meal_cli::whole::<u64>, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Label encoding: dense | topk:K | topk:K:f32 [default: dense up to 32 classes,
    /// else topk:10].
    #[arg(long, value_name = "ENC")]
    pub encoding: Option<String>,
    /// Shard format (safetensors: dense encoding only) [default: parquet].
    #[arg(long, value_parser = ["parquet", "safetensors"])]
    pub format: Option<String>,
    /// Crops per teacher forward [default: 64].
    #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true, value_name = "N")]
    pub batch: Option<usize>,
    /// CPU threads for decoding and for the teachers [default: all cores].
    #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true, value_name = "N")]
    pub threads: Option<usize>,
    /// cpu or cuda:N [default: cpu]; a list (cuda:0,cuda:1) runs one worker per device
    /// in this process and merges their parts when all are done.
    #[arg(long, value_name = "DEV[,DEV...]")]
    pub device: Option<String>,
    /// The teachers' dtype; softmax and the ensemble mean are f32 whatever it is
    /// [default: f32; bf16 on CUDA was slower when last measured, before its own ops:
    /// docs/PIPELINE.md "Teacher dtype"].
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Run part I of N (0-based) of the shards; join the parts with `merge`.
    #[arg(long, value_name = "I/N")]
    pub worker: Option<String>,
    /// Stop after the shards covering the first N images (a quick try; the store stays
    /// partial and a later run without --limit completes it).
    #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true, value_name = "N")]
    pub limit: Option<usize>,
    /// What to do with an unreadable image: skip it (listed in the report) or fail
    /// [default: skip].
    #[arg(long, value_parser = ["skip", "fail"])]
    pub on_bad_file: Option<String>,
    /// Follow symlinks that lead outside the dataset root (refused by default)
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub follow_links: Option<bool>,
    /// Images per shard [default: 1024]. Each shard costs ~2 KB of Parquet metadata, and
    /// ~17 KB and one memory map in every reader (Linux allows 65,530 maps a process):
    /// keep shards large.
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "N")]
    pub samples_per_shard: Option<u32>,
    /// Images per Parquet row group [default: 64].
    #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true, value_name = "N")]
    pub images_per_row_group: Option<u32>,
}

pub use meal_cli::Pair;
pub use meal_models::ensemble::TeacherArg;

/// Resolved settings of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Dataset root or list file.
    pub data: PathBuf,
    /// Store directory.
    pub out: PathBuf,
    /// Teachers.
    pub teachers: Vec<TeacherArg>,
    /// Pool size P.
    pub crops_per_image: u32,
    /// RRC scale.
    pub scale: [f64; 2],
    /// RRC ratio.
    pub ratio: [f64; 2],
    /// Crop seed.
    pub seed: u64,
    /// Encoding (`None`: by class count, see [`DENSE_DEFAULT_MAX_CLASSES`]).
    pub encoding: Option<Encoding>,
    /// Shard format.
    pub format: ShardFormat,
    /// Crops per forward.
    pub batch: usize,
    /// CPU threads.
    pub threads: usize,
    /// Device spec: one device, or a comma-separated list (one worker per device).
    pub device: String,
    /// Teacher dtype (`None`: by device, [`meal_models::ensemble::default_dtype`]).
    pub dtype: Option<candle_core::DType>,
    /// `[i, n]` worker part.
    pub worker: Option<[u32; 2]>,
    /// Stop after the shards covering this many images.
    pub limit: Option<usize>,
    /// Bad-file policy.
    pub policy: BadFilePolicy,
    /// How far symlinks in the dataset may reach.
    pub links: LinkPolicy,
    /// Images per shard.
    pub samples_per_shard: u32,
    /// Images per row group.
    pub images_per_row_group: u32,
    /// The workers of a `--device` list that run on the CPU (their indices in the
    /// list): each runs its forwards in this process's memory beside the others, which
    /// the memory check counts. Empty for a plain run.
    pub cpu_workers: Vec<u32>,
}

/// Parse `I/N`.
pub fn parse_worker(s: &str) -> Result<[u32; 2]> {
    let bad = || anyhow::anyhow!("--worker {s:?}: expected I/N with 0 <= I < N");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok([i, n])
}

impl Settings {
    /// The devices of `--device`, in order (one for a plain run).
    pub fn devices(&self) -> Vec<String> {
        self.device
            .split(',')
            .map(|d| d.trim().to_string())
            .collect()
    }
}

impl RunArgs {
    /// These flags over the `--config` file (if any) over the defaults.
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
        let data = l
            .pick(|a| &a.data)
            .context("--data is required (an ImageFolder or list file)")?;
        let out = l
            .pick(|a| &a.out)
            .context("--out is required (the label store directory)")?;
        meal_cli::check_out_dir("--out", &out)?;
        if meal_cli::is_inside(&out, &data) {
            bail!(
                "--out {} is inside --data {}: the next run would read it as a class; put the store elsewhere",
                out.display(),
                data.display()
            );
        }
        let teacher_specs = l.list(|a| &a.teacher);
        if teacher_specs.is_empty() {
            bail!("at least one --teacher ARCH=WEIGHTS is required");
        }
        let teachers = TeacherArg::parse_all(&teacher_specs).context("--teacher")?;
        // crop_pct sizes the eval transform's centre crop (the student's eval and online
        // teachers); precompute's crops are RandomResizedCrop's, where it would be
        // accepted and silently do nothing
        if let Some((spec, _)) = teacher_specs
            .iter()
            .zip(&teachers)
            .find(|(_, t)| t.crop_pct.is_some())
        {
            bail!(
                "--teacher {spec}: crop_pct sizes the eval transform's centre crop; precompute \
                 labels RandomResizedCrop crops (--scale, --ratio), where it has no effect: \
                 remove it"
            );
        }
        let crops_per_image = l
            .pick(|a| &a.crops_per_image)
            .unwrap_or(DEFAULT_CROPS_PER_IMAGE);
        if crops_per_image == 0 || crops_per_image > u16::MAX as u32 + 1 {
            bail!("--crops-per-image {crops_per_image}: must be 1..=65536");
        }
        let encoding = match l.pick(|a| &a.encoding) {
            Some(e) => Some(e.parse::<Encoding>().context("--encoding")?),
            None => None,
        };
        let format = match l.pick(|a| &a.format) {
            Some(f) => f.parse::<ShardFormat>().context("--format")?,
            None => ShardFormat::Parquet,
        };
        let batch = l.pick(|a| &a.batch).unwrap_or(DEFAULT_BATCH);
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        let threads = l
            .pick(|a| &a.threads)
            .unwrap_or_else(meal_cli::default_threads);
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        let worker = match l.pick(|a| &a.worker) {
            Some(w) => Some(parse_worker(&w)?),
            None => None,
        };
        let policy = match l.pick(|a| &a.on_bad_file) {
            Some(p) => p.parse::<BadFilePolicy>().context("--on-bad-file")?,
            None => BadFilePolicy::Skip,
        };
        let samples_per_shard = l
            .pick(|a| &a.samples_per_shard)
            .unwrap_or(DEFAULT_SAMPLES_PER_SHARD);
        let images_per_row_group = l
            .pick(|a| &a.images_per_row_group)
            .unwrap_or(DEFAULT_IMAGES_PER_ROW_GROUP);
        if samples_per_shard == 0 {
            bail!("--samples-per-shard must be at least 1");
        }
        if images_per_row_group == 0 {
            bail!("--images-per-row-group must be at least 1");
        }
        // row groups are Parquet's: a safetensors shard has none
        if format == ShardFormat::Safetensors && l.pick(|a| &a.images_per_row_group).is_some() {
            bail!("--images-per-row-group with --format safetensors: row groups are Parquet's; remove it");
        }
        let scale = l.pick(|a| &a.scale).map(|p| p.0).unwrap_or([
            meal_data::crop::DEFAULT_SCALE.0,
            meal_data::crop::DEFAULT_SCALE.1,
        ]);
        let ratio = l.pick(|a| &a.ratio).map(|p| p.0).unwrap_or([
            meal_data::crop::DEFAULT_RATIO.0,
            meal_data::crop::DEFAULT_RATIO.1,
        ]);
        // each range under its own flag
        meal_data::RrcParams::new((scale[0], scale[1]), meal_data::crop::DEFAULT_RATIO)
            .context("--scale")?;
        meal_data::RrcParams::new(meal_data::crop::DEFAULT_SCALE, (ratio[0], ratio[1]))
            .context("--ratio")?;
        if l.pick(|a| &a.limit) == Some(0) {
            bail!("--limit must be at least 1 (images)");
        }
        let device = l.pick(|a| &a.device).unwrap_or_else(|| "cpu".into());
        let devices: Vec<&str> = device.split(',').map(str::trim).collect();
        if devices.iter().any(|d| d.is_empty()) {
            bail!("--device {device:?}: an empty name in the list");
        }
        for d in &devices {
            meal_models::check_device(d).context("--device")?;
        }
        // each worker holds its own teachers: 2000 `cpu` entries aborted out of memory
        if devices.len() > MAX_DEVICES {
            bail!(
                "--device: a list of {} devices; at most {MAX_DEVICES} workers run on one \
                 machine (one per GPU; a GPU named twice runs two)",
                devices.len()
            );
        }
        if let (true, Some(w)) = (devices.len() > 1, l.pick(|a| &a.worker)) {
            bail!(
                "--device {device} with --worker {w}: a list of devices runs one worker per \
                 device itself; give one of the two"
            );
        }
        Ok(Settings {
            data,
            out,
            teachers,
            crops_per_image,
            scale,
            ratio,
            seed: l.pick(|a| &a.seed).unwrap_or(0),
            encoding,
            format,
            batch,
            threads,
            device,
            dtype: match l.pick(|a| &a.dtype) {
                Some(d) => Some(meal_models::ensemble::parse_dtype(&d).context("--dtype")?),
                None => None,
            },
            worker,
            limit: l.pick(|a| &a.limit),
            policy,
            links: LinkPolicy::follow_if(l.pick(|a| &a.follow_links).unwrap_or(false)),
            samples_per_shard,
            images_per_row_group,
            cpu_workers: Vec::new(),
        })
    }
}

/// The longest `--device` list: 8 workers on each of 8 GPUs.
const MAX_DEVICES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "data = \"d\"\nout = \"o\"\nteacher = [\"demo_tiny=t.safetensors\"]\nseed = 5\nscale = [0.2, 1.0]\ncrops_per_image = 3\n",
        )
        .unwrap();
        let s = RunArgs {
            config: Some(f.clone()),
            seed: Some(9),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((s.seed, s.crops_per_image, s.scale), (9, 3, [0.2, 1.0]));
        assert_eq!(s.teachers.len(), 1);
        std::fs::write(&f, "dat = \"typo\"\n").unwrap();
        let e = RunArgs {
            config: Some(f.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("c.toml"), "{e:#}");
        // a value of the file refused under its flag's name names the file too: a range,
        // and a device (checked when the flags are read, before any work)
        for (line, said) in [
            ("scale = [0.5, 0.1]", "--scale"),
            ("device = \"gpu\"", "--device: \"gpu\" is not a device"),
        ] {
            let head = "data = \"d\"\nout = \"o\"\nteacher = [\"demo_tiny=t.safetensors\"]\n";
            std::fs::write(&f, format!("{head}{line}\n")).unwrap();
            let e = RunArgs {
                config: Some(f.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            let e = format!("{e:#}");
            assert!(
                e.contains(said) && e.contains("--config") && e.contains("c.toml"),
                "{e}"
            );
        }
        // a value typed on the command line, which the file does not set, is not blamed
        // on the file
        let head = "data = \"d\"\nout = \"o\"\nteacher = [\"demo_tiny=t.safetensors\"]\n";
        std::fs::write(&f, head).unwrap();
        let e = RunArgs {
            config: Some(f.clone()),
            batch: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("--batch") && !e.contains("c.toml"), "{e}");
        // a range of three numbers is refused, not cut to two
        std::fs::write(&f, "scale = [0.1, 0.5, 1.0]\n").unwrap();
        let e = RunArgs {
            config: Some(f),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("two numbers"), "{e:#}");
        let e = RunArgs {
            data: Some("d".into()),
            out: Some("o".into()),
            teacher: vec!["demo_tiny=t.safetensors".into()],
            device: Some(vec!["cpu"; 65].join(",")),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("at most 64 workers"), "{e:#}");
        assert_eq!(parse_worker("1/2").unwrap(), [1, 2]);
        assert!(parse_worker("2/2").is_err());
    }

    /// crop_pct (the eval transform's) would do nothing to precompute's crops: refused,
    /// naming the teacher.
    #[test]
    fn crop_pct_is_refused() {
        let e = RunArgs {
            data: Some("d".into()),
            out: Some("o".into()),
            teacher: vec!["demo_tiny=t.safetensors,size=32,crop_pct=0.5".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("demo_tiny=t.safetensors,size=32,crop_pct=0.5") && e.contains("remove it"),
            "{e}"
        );
    }
}
