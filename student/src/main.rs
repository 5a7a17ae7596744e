//! `meal-student`: stage 2 of MEAL V2 distillation. Thin CLI over the library.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meal_cli::memory::Room;
use meal_data::{CropSpec, Filter, Normalize};
use meal_models::ensemble::{Ensemble, TeacherArg};
use meal_models::{input_config, LoadOptions, ResNet};

use meal_student::config::TrainArgs;
use meal_student::{eval, train};

#[derive(Parser)]
#[command(
    name = "meal-student",
    version,
    about = "Stage 2 of MEAL V2 distillation: train a student (and the discriminator) on the \
             soft labels of a label store, replaying its crops; or train on hard labels; or evaluate.",
    after_help = "Examples:\n  meal-student train --data demo/data/train --val demo/data/val --labels labels \\\n      --arch demo_resnet10 --init baseline/student.safetensors --epochs 10 --out runs/kd\n  meal-student train --data demo/data/train --loss ce --arch demo_resnet14 --epochs 8 --out runs/t1\n  meal-student train --out runs/kd --resume ...same flags...\n  meal-student eval --data demo/data/val --arch demo_resnet10 --weights runs/kd/student.safetensors"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train (MEAL V2 KD from a label store, online KD, or hard-label CE).
    Train(Box<TrainArgs>),
    /// Top-1 / top-5 of a model (or of an ensemble) with the eval transform.
    Eval {
        /// Images (ImageFolder or list file).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Architecture (preset name).
        #[arg(long)]
        arch: Option<String>,
        /// Weights (timm state dict, .safetensors or .pth).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        /// Evaluate the mean softmax of these models instead (repeatable; the syntax of
        /// meal-precompute's --teacher, hub ids included, plus `crop_pct=F`, the centre
        /// crop's share of the resized side [default: the preset's timm config]).
        #[arg(long, value_name = "ARCH=WEIGHTS", conflicts_with_all = ["arch", "weights"], value_parser = meal_cli::Utf8Text)]
        teacher: Vec<String>,
        /// Input side [default: the side the weights were trained at, where they record it
        /// (meal-student's do), else the preset's].
        #[arg(long, value_parser = meal_cli::whole::<u32>, allow_negative_numbers = true)]
        res: Option<u32>,
        /// CPU threads [default: all cores].
        #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true)]
        threads: Option<usize>,
        /// cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print the result as one JSON object, alone on stdout (the summary line goes
        /// to stderr), for `jq` or `json.load`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        links: meal_cli::FollowLinks,
        /// Unreadable images: skip them (not counted; listed in the log) or fail.
        #[arg(long, value_parser = ["skip", "fail"], default_value = "skip")]
        on_bad_file: String,
        /// Images per forward pass (the figures do not depend on it; lower it where a
        /// batch does not fit in memory).
        #[arg(long, default_value_t = eval::EVAL_BATCH, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true)]
        batch: usize,
    },
}

fn main() -> std::process::ExitCode {
    meal_cli::finish(cli())
}

fn cli() -> Result<()> {
    meal_models::tune_allocator();
    meal_cli::init_logging();
    meal_cli::report_bus_errors(
        "a memory-mapped file was cut short while it was read: a label shard rewritten or \
         truncated in place meanwhile? Restore the store (meal-precompute verify checks \
         it); a training run keeps its last checkpoint, if it saved one: rerun it with \
         --resume (it starts from the beginning if it had not)",
        meal_data::mapped::name_at,
    );
    // (values beginning with `-`: see join_hyphen_values)
    let args = meal_cli::join_hyphen_values(
        std::env::args_os(),
        &[
            "--lr",
            "--lr-gamma",
            "--momentum",
            "--wd",
            "--disc-lr",
            "--scale",
            "--checkpoint-every",
        ],
    );
    match Cli::parse_from(args).cmd {
        Cmd::Train(args) => {
            let config = args.config.clone();
            let s = args.resolve()?;
            meal_cli::use_threads(s.threads)?;
            let stop = meal_cli::interrupt_flag(
                "checkpointing after this step (a validation stops at once)",
            )
            .context("installing the Ctrl-C handler")?;
            let out = s.out.clone();
            let (batch, amp, max_steps) = (s.batch, s.amp, s.max_steps);
            // (the hint reads the error's chain, which naming the config file flattens)
            let r = train::train(s, &stop).map_err(|e| {
                meal_cli::hint_gpu_out_of_memory(e, || {
                    format!(
                        "the GPU ran out of memory with --batch {batch}: use a smaller --batch{}",
                        if amp {
                            ""
                        } else {
                            ", or --amp true (bf16 activations, about half the memory)"
                        }
                    )
                })
            });
            let r = meal_cli::naming_config_of_flags(r, config.as_deref())?;
            if let Some(m) = r.history.last() {
                meal_cli::outln!(
                    "epoch {}: loss {:.4}, train top-1 {:.4}{}",
                    m.epoch + 1,
                    m.loss,
                    m.train_top1,
                    m.val_top1
                        .map(|v| format!(
                            ", val top-1 {v:.4}, top-5 {:.4}",
                            m.val_top5.unwrap_or(0.0)
                        ))
                        .unwrap_or_default()
                );
            }
            if r.interrupted {
                // (a resume under the same --max-steps has nothing to do)
                let limit = match max_steps {
                    Some(m) if !stop.load(Ordering::SeqCst) && r.steps >= m => {
                        ", with --max-steps raised or left out"
                    }
                    _ => "",
                };
                meal_cli::outln!(
                    "stopped after step {}; continue with --resume{limit} (checkpoint in {})",
                    r.steps,
                    out.display()
                );
                if stop.load(Ordering::SeqCst) {
                    std::process::exit(meal_cli::interrupt_exit_code());
                }
            } else {
                meal_cli::outln!(
                    "weights: {}  (metrics.jsonl, summary.csv, curves.png beside it)",
                    r.weights.display()
                );
            }
        }
        Cmd::Eval {
            data,
            arch,
            weights,
            teacher,
            res,
            threads,
            device,
            json,
            links,
            on_bad_file,
            batch,
        } => {
            // one model, or else the --teacher ensemble (clap refuses both)
            let single = match (arch, weights) {
                (Some(arch), Some(weights)) => Some((arch, weights)),
                _ if !teacher.is_empty() => {
                    if let Some(r) = res {
                        // (a size no teacher takes is not offered as the way out)
                        let or_size = match CropSpec::new(r, Filter::Bilinear, Normalize::default())
                        {
                            Ok(_) => format!(", or add ,size={r} to each --teacher"),
                            Err(_) => String::new(),
                        };
                        bail!(
                            "--res {r} with --teacher: each teacher's input side is its \
                             spec's size= (the preset's by default); remove --res{or_size}"
                        );
                    }
                    None
                }
                _ => bail!(
                    "eval needs --arch A --weights W (a model), or --teacher ARCH=WEIGHTS (an ensemble)"
                ),
            };
            let threads = threads.unwrap_or_else(meal_cli::default_threads);
            if threads == 0 {
                bail!("--threads must be at least 1");
            }
            meal_cli::use_threads(threads)?;
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let read = eval::EvalRead {
                threads,
                policy: on_bad_file.parse().context("--on-bad-file")?,
                bar: true,
                batch,
            };
            let dev = meal_models::parse_device(&device).context("--device")?;
            let ds = train::open_dataset(&data, "--data", links.follow_links)?;
            let (what, acc) = if let Some((arch, weights)) = single {
                // what a student's weights record of its training: its classes (the
                // dataset's are mapped to them by name) and side
                let trained = eval::TrainedOn::of(&weights).context("--weights")?;
                let logit_of =
                    eval::logit_of(&trained, &ds, eval::Logits::Weights).with_context(|| {
                        format!(
                            "--data {} with --weights {}",
                            data.display(),
                            weights.display()
                        )
                    })?;
                let classes = trained
                    .classes
                    .as_ref()
                    .map_or(ds.classes().len(), Vec::len);
                let model = ResNet::from_preset(&arch, classes, &dev, 0).context("--arch")?;
                model
                    .load_weights(&weights, LoadOptions::default())
                    .map_err(|e| {
                        // weights of more classes that record none (timm's): the way to
                        // score a subset is to name their classes
                        // (only where the weights score more classes than the data's)
                        let more = meal_models::weights::classifier_rows(&weights)
                            .is_none_or(|n| n > classes);
                        let hint = match &trained.classes {
                            // (not for weights of another architecture, whose error
                            // says so: the hint would name the wrong one)
                            None if more
                                && e.to_string().contains("the weights classify")
                                && !e.to_string().contains("architecture is") =>
                            {
                                format!(
                                    "; weights of more classes than --data's score its classes by \
                                 name with --teacher {arch}={},classes=FILE (the weights' \
                                 classes in logit order, one per line)",
                                    weights.display()
                                )
                            }
                            _ => String::new(),
                        };
                        let e = anyhow::Error::from(e);
                        anyhow::anyhow!("--weights {}: {e:#}{hint}", weights.display())
                    })?;
                // the preset's eval transform (filter, crop_pct, mean/std), as timm's
                // validate.py resolves it; --res changes only the side
                let input = input_config(&arch).context("--arch")?;
                let size = res.or(trained.res).unwrap_or(input.size);
                if res.is_none() {
                    match trained.res {
                        Some(r) => tracing::info!(
                            "evaluating at {r} px, the side the weights were trained at"
                        ),
                        // weights from elsewhere do not record the side they were trained at
                        None => tracing::info!(
                            "evaluating at {size} px, {arch}'s default: pass --res to evaluate \
                             at the side the weights were trained at"
                        ),
                    }
                }
                let spec = input.spec_at(size).context("--res")?;
                let room =
                    Room::of(meal_models::device::gpu_free_memory(&dev).context("--device")?);
                let rows = batch.min(ds.len());
                meal_cli::memory::check_in(
                    room,
                    meal_models::memory::inference_floor(&model, size as usize, rows)?,
                    &format!(
                        "--arch {arch} at --res {size}: a forward over {rows} images (--batch; \
                         its input and activations)"
                    ),
                    "lower --batch (the figures do not depend on it) or --res",
                )?;
                let acc = eval::evaluate(&model, &ds, spec, read, &dev, logit_of.as_deref())?;
                (weights.display().to_string(), acc)
            } else {
                let mut args = TeacherArg::parse_all(&teacher).context("--teacher")?;
                for t in &mut args {
                    meal_cli::hub::resolve_teacher("--teacher", &t.arch, &mut t.weights)?;
                }
                let dtype = meal_models::ensemble::default_dtype(&dev);
                // teachers that all record (or name, classes=) the same classes score
                // --data's by name, as --weights does (a list of some of them: part of
                // ImageNet's val)
                let records: Vec<Option<Vec<String>>> = args
                    .iter()
                    .map(|t| {
                        let named = t.class_list().context("--teacher")?;
                        let recorded = eval::TrainedOn::of(&t.weights).context("--teacher")?;
                        anyhow::Ok(named.or(recorded.classes))
                    })
                    .collect::<Result<_>>()?;
                // (the same classes in other orders: each teacher is reordered to the
                // first's on load)
                let sorted = |c: &[String]| {
                    let mut c = c.to_vec();
                    c.sort();
                    c
                };
                // the teachers' outputs, by name in the data's class order: each
                // teacher's softmax over the data's logits (precompute's labels; over all
                // of them, a subset's images ranked against classes not in the data)
                let outputs = match records.first() {
                    Some(Some(c))
                        if records
                            .iter()
                            .all(|r| r.as_deref().is_some_and(|r| sorted(r) == sorted(c))) =>
                    {
                        let on = eval::TrainedOn {
                            classes: Some(c.clone()),
                            res: None,
                        };
                        match eval::logit_of(&on, &ds, eval::Logits::Weights) {
                            // (a numbered list's class i is logit m[i]: named as it)
                            Ok(Some(m)) => m.iter().map(|&i| c[i].clone()).collect(),
                            Ok(None) => ds.classes().to_vec(),
                            Err(e) => {
                                // a teacher's own error names its classes= list and
                                // what is wrong with it, where it has one
                                Ensemble::load(&args, ds.classes(), &dev, dtype)
                                    .context("--teacher")?;
                                return Err(e).with_context(|| {
                                    format!("--data {} with --teacher", data.display())
                                });
                            }
                        }
                    }
                    _ => {
                        if records.iter().any(Option::is_some) {
                            tracing::warn!(
                                "the teachers name different classes (or some none): each \
                                 teacher's probabilities are its softmax over --data's classes, \
                                 taken by name where it names them (precompute's labels), not \
                                 over all its logits"
                            );
                        }
                        ds.classes().to_vec()
                    }
                };
                let ens = Ensemble::load(&args, &outputs, &dev, dtype).context("--teacher")?;
                let said: Vec<String> = teacher.iter().map(|t| format!("--teacher {t}")).collect();
                for w in ens.repeated_said(&said) {
                    tracing::warn!("{w}");
                }
                let room =
                    Room::of(meal_models::device::gpu_free_memory(&dev).context("--device")?);
                let rows = batch.min(ds.len());
                meal_cli::memory::check_forwards(
                    room,
                    &meal_models::memory::ensemble_floors(&ens, rows)?,
                    rows,
                    |i| format!("--teacher {}", teacher[i]),
                    "lower --batch (the figures do not depend on it) or the teacher's size=",
                )?;
                let acc = eval::evaluate_ensemble(&ens, &ds, read)?;
                let names: Vec<&str> = args.iter().map(|t| t.arch.as_str()).collect();
                (
                    format!("ensemble of {} ({})", names.len(), names.join(", ")),
                    acc,
                )
            };
            let images = |n: u64| match n {
                1 => "1 image".to_string(),
                n => format!("{n} images"),
            };
            let skipped = match acc.skipped {
                0 => String::new(),
                1 => " (1 unreadable image skipped, not counted)".to_string(),
                n => format!(" ({n} unreadable images skipped, not counted)"),
            };
            let line = format!(
                "{what}: {}, top-1 {:.4}, top-5 {:.4}{skipped}",
                images(acc.images),
                acc.top1,
                acc.top5
            );
            match json {
                true => {
                    eprintln!("{line}");
                    meal_cli::outln!("{}", serde_json::to_string(&acc)?);
                }
                false => meal_cli::outln!("{line}"),
            }
        }
    }
    Ok(())
}
