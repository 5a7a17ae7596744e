//! `meal-precompute`: stage 1 of MEAL V2 distillation. Thin CLI over the library.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meal_data::LinkPolicy;
use meal_precompute::{config::RunArgs, hints, inspect, report, run};

#[derive(Parser)]
#[command(
    name = "meal-precompute",
    version,
    about = "Stage 1 of MEAL V2 distillation: run the teacher ensemble once over a fixed pool of \
             RandomResizedCrop crops per image and write each crop's mean softmax to a label store.",
    after_help = "Examples:\n  meal-precompute run --data demo/data/train --teacher demo_resnet10=t1.safetensors \\\n      --teacher demo_resnet14=t2.safetensors --out labels --crops-per-image 8\n  meal-precompute run --config precompute.toml --worker 0/2   (and 1/2 elsewhere; then merge)\n  meal-precompute merge --data demo/data/train --out labels\n  meal-precompute inspect labels --histogram labels.png\n  meal-precompute verify labels"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Label a dataset (resumes a partial store of the same config in --out).
    Run(Box<RunArgs>),
    /// Join the parts written by `run --worker I/N` into one complete store.
    Merge {
        /// The dataset the parts were made from.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The store directory holding the workers' manifests and shards.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        links: meal_cli::FollowLinks,
    },
    /// Summary, per-class table, sample rows and an entropy/confidence histogram.
    Inspect {
        /// The store directory.
        store: PathBuf,
        /// Sample rows to print.
        #[arg(long, value_parser = meal_cli::whole::<usize>, allow_negative_numbers = true, default_value_t = 8)]
        rows: usize,
        /// Write the histograms (entropy left, top-1 probability right) to this PNG.
        #[arg(long, value_name = "PNG")]
        histogram: Option<PathBuf>,
        /// Rows of the per-class table: a number (the classes of lowest top-1 agreement
        /// first) or `all` [default: all up to 50 classes, else the 20 hardest].
        #[arg(long, value_name = "N|all", value_parser = parse_classes)]
        classes: Option<usize>,
    },
    /// Check checksums, row counts, that every label sums to 1 and the rows' rules (top-k
    /// classes distinct and below the class count, in descending order; flip 0 or 1;
    /// samples ascending); name shard files the manifest does not list.
    Verify {
        /// The store directory.
        store: PathBuf,
    },
}

/// `--classes`: a count, or `all` (every class).
fn parse_classes(v: &str) -> Result<usize, String> {
    match v.trim() {
        a if a.eq_ignore_ascii_case("all") => Ok(usize::MAX),
        n => n
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{v:?}: a number of classes (at least 1), or `all`")),
    }
}

fn main() -> std::process::ExitCode {
    meal_cli::finish(cli())
}

fn cli() -> Result<()> {
    meal_models::tune_allocator();
    meal_cli::init_logging();
    meal_cli::report_bus_errors(
        "a memory-mapped file was cut short while it was read: a shard of the store \
         rewritten or truncated in place meanwhile? Shards written are kept; check the \
         store with meal-precompute verify",
        meal_data::mapped::name_at,
    );
    // (values beginning with `-`: see join_hyphen_values)
    let args =
        meal_cli::join_hyphen_values(std::env::args_os(), &["--scale", "--ratio", "--worker"]);
    match Cli::parse_from(args).cmd {
        Cmd::Run(args) => {
            let config = args.config.clone();
            let s = args.resolve()?;
            meal_cli::use_threads(s.threads)?;
            let stop = meal_cli::interrupt_flag("stopping after this batch")
                .context("installing the Ctrl-C handler")?;
            // (the hints read the error's chain, which naming the config file flattens)
            let r = run::run(&s, &stop).map_err(|e| {
                let e = hints::read_only(
                    e,
                    &s.out,
                    "this run has to write there (the store is partial, of a changed dataset, \
                     or its parts are not merged): run it where the store is writable, as a \
                     copy of it (the shards there are kept)",
                );
                meal_cli::hint_gpu_out_of_memory(e, || {
                    format!(
                        "the GPU ran out of memory with --batch {} crops per forward: rerun \
                         with a smaller --batch (the shards written so far are kept)",
                        s.batch
                    )
                })
            });
            let r = meal_cli::naming_config_of_flags(r, config.as_deref())?;
            report::write_report(&s.out, s.worker, &r)?;
            if r.images_labelled == 0 && r.shards_written == 0 && stop.load(Ordering::SeqCst) {
                meal_cli::outln!("this run: interrupted before its first shard was written");
            } else if r.images_labelled == 0 && r.shards_written == 0 && r.shards_present == 0 {
                // (a worker whose shards all start past --limit, or that has none)
                meal_cli::outln!("this run: nothing to write (see above)");
            } else if r.images_labelled == 0 && r.shards_written == 0 {
                // (a rerun over a finished store: "0.0 img/s" read as a failure)
                meal_cli::outln!(
                    "this run: nothing to do, its {} shards were there already",
                    r.shards_present
                );
            } else {
                meal_cli::outln!(
                "this run: {} images, {} crops in {:.1} s ({:.1} img/s, {:.0} crops/s); {} shards written ({} already present), {} bytes",
                r.images_labelled,
                r.crops_labelled,
                r.seconds,
                r.images_labelled as f64 / r.seconds,
                r.crops_labelled as f64 / r.seconds,
                r.shards_written,
                r.shards_present,
                r.bytes_written
            );
            }
            if r.labelling_seconds > 0.0 && r.crops_labelled > 0 {
                meal_cli::outln!(
                    "labelling loop (without set-up and dtype check): {:.1} s, {:.1} crops/s",
                    r.labelling_seconds,
                    r.crops_labelled as f64 / r.labelling_seconds
                );
            }
            meal_cli::outln!(
                "the store{}: {} images, {} crops in {} shards",
                if s.worker.is_some() {
                    " (this worker's part)"
                } else {
                    ""
                },
                r.images,
                r.crops,
                r.shards
            );
            if r.crops > 0 {
                meal_cli::outln!(
                    "  (top-1 agreement: the share of crops whose argmax is the image's label)"
                );
            }
            for (i, t) in r.teachers.iter().enumerate() {
                // the weights as this run was given them (the store records the file's
                // name only: two teachers' student.safetensors read alike), and a side
                // that is not the preset's
                let given = s.teachers.get(i).map_or(t.weights.clone(), |a| {
                    let side = match meal_models::input_config(&a.arch) {
                        Ok(c) if c.size != a.size => format!(", {} px", a.size),
                        _ => String::new(),
                    };
                    format!("{}{side}", a.weights.display())
                });
                match t.top1_agreement {
                    Some(a) => meal_cli::outln!(
                        "  teacher {:<16} top-1 agreement {a:.4}  ({given})",
                        t.arch
                    ),
                    None if r.crops == 0 => {
                        meal_cli::outln!("  teacher {:<16} no crops labelled  ({given})", t.arch)
                    }
                    None => meal_cli::outln!(
                        "  teacher {:<16} top-1 agreement not recorded by older shards  ({given})",
                        t.arch
                    ),
                }
            }
            for t in r.near_chance() {
                tracing::warn!(
                    "teacher {} ({}) agrees with --data's labels on {:.1} % of the crops, near \
                     chance for {} classes ({:.1} %): were its weights trained on these \
                     classes, in this order (a list file's numbered labels follow the order \
                     of the teacher's logits)?",
                    t.arch,
                    t.weights,
                    100.0 * t.top1_agreement.unwrap_or(0.0),
                    r.classes,
                    100.0 / r.classes as f64
                );
            }
            if r.crops == 0 {
                meal_cli::outln!("  ensemble         no crops labelled");
            } else {
                meal_cli::outln!(
                    "  ensemble         top-1 agreement {:.4}, mean entropy {:.4} nats",
                    r.ensemble_top1_agreement,
                    r.mean_entropy
                );
            }
            if let Some(c) = &r.dtype_check {
                meal_cli::outln!(
                    "  teachers in {}: against f32 on the first {} crops, max |p - p_f32| {:.2e}, mean total variation {:.2e}, top-1 agreement {:.4}",
                    r.dtype, c.crops, c.max_abs_diff, c.mean_tv, c.top1_agreement
                );
            }
            if !r.skipped.is_empty() {
                // the first few, as inspect lists them: each was warned of as it was met,
                // and a rerun of a complete store printed 2,000 lines again each time
                let shown = inspect::SKIPPED_SHOWN;
                let more = match r.skipped.len() > shown {
                    true => format!(", the first {shown} (report.json lists them all)"),
                    false => String::new(),
                };
                meal_cli::outln!("  skipped {} files{more}:", r.skipped.len());
                for s in r.skipped.iter().take(shown) {
                    meal_cli::outln!("    {}: {}", s.path, s.reason);
                }
            }
            // a store of nothing is no success: every file unreadable (all of another
            // format, emptied by a failed copy) must not pass a script's `&&` into training
            let nothing = r.images == 0 && !r.skipped.is_empty();
            // rerunning the same command with --limit would add nothing: say to drop it
            let (why, how) = if stop.load(Ordering::SeqCst) || s.limit.is_none() {
                ("interrupted", "rerun the same command to continue")
            } else {
                (
                    "--limit",
                    "rerun the same command without --limit to complete it",
                )
            };
            match (r.complete, s.worker) {
                // (the error below says what happened instead)
                (true, _) if nothing => {}
                (true, None) => meal_cli::outln!("store complete: {}", s.out.display()),
                // (a worker that wrote shards of a merged store removed its manifest.json:
                // one still there is current)
                (true, Some([i, n])) if s.out.join(meal_store::MANIFEST).exists() => {
                    meal_cli::outln!(
                        "worker {i} of {n}: its part is complete, and the store is merged: {}",
                        s.out.display()
                    )
                }
                (true, Some([i, n])) => meal_cli::outln!(
                    "worker {i} of {n}: its part is complete; when every worker's part is, run `meal-precompute merge --data {} --out {}`",
                    s.data.display(),
                    s.out.display()
                ),
                (false, Some([i, n])) => meal_cli::outln!(
                    "worker {i} of {n}: its part is partial ({why}): {how}"
                ),
                (false, None) => meal_cli::outln!("store partial ({why}): {how}"),
            }
            if stop.load(Ordering::SeqCst) {
                std::process::exit(meal_cli::interrupt_exit_code());
            }
            let seen = r.images + r.skipped.len() as u64;
            let part = match s.worker {
                Some([i, n]) => format!(" in worker {i} of {n}'s part"),
                None => String::new(),
            };
            if nothing {
                bail!(
                    "every one of the {} images{part} of {} was skipped as unreadable \
                     (listed above and in the report): {} no labels",
                    r.skipped.len(),
                    s.data.display(),
                    if s.worker.is_some() {
                        "the part holds"
                    } else {
                        "the store holds"
                    }
                );
            } else if r.skipped.len() as u64 * 10 >= seen && !r.skipped.is_empty() {
                tracing::warn!(
                    "{} of {seen} images{part} of {} were skipped as unreadable (listed above)",
                    r.skipped.len(),
                    s.data.display()
                );
            }
        }
        Cmd::Merge { data, out, links } => {
            let links = LinkPolicy::follow_if(links.follow_links);
            let ds = meal_cli::open_dataset(&data, "--data", links)?;
            // (every part's shard is hashed: minutes for ImageNet's)
            let bar = meal_cli::progress_bar(
                0,
                "merge [{bar:30}] {pos}/{len} shards checked  {elapsed} (eta {eta})",
            );
            let m = meal_store::merge_with(&out, &ds, &|done, of| {
                bar.set_length(of);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            let m = m
                .with_context(|| format!("merge {}", out.display()))
                .map_err(|e| {
                    hints::read_only(
                        e,
                        &out,
                        "merge writes the joined store there (its manifest and images table): \
                         run it where the parts are writable",
                    )
                })?;
            // the store's report, as a run on one machine leaves one: the store's
            // figures and the parts' runs together (not part of the store: a read-only
            // mount or a full disk only warns)
            let parts = report::worker_reports(&out);
            let r = report::combine(report::store_report(&m.manifest, true), &parts);
            if let Err(e) = report::write_report(&out, None, &r) {
                tracing::warn!("the store's report was not written: {e:#}");
            }
            let shards = m.manifest.shards.len();
            if m.written {
                meal_cli::outln!("merged {shards} shards into {}", out.display());
            } else {
                meal_cli::outln!(
                    "{} was merged before ({shards} shards, the same parts): the store is unchanged",
                    out.display()
                );
            }
        }
        Cmd::Inspect {
            store,
            rows,
            histogram,
            classes,
        } => {
            if let Some(p) = &histogram {
                // the plot is always a PNG: another extension would mislabel the file
                let png = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
                if !png {
                    bail!(
                        "--histogram {}: the plot is a PNG; name the file *.png",
                        p.display()
                    );
                }
                // refused before the store is read, not after the report is printed
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(d) = parent.filter(|d| !d.is_dir()) {
                    bail!(
                        "--histogram {}: no directory {} to write it in",
                        p.display(),
                        d.display()
                    );
                }
                if p.is_dir() {
                    bail!("--histogram {}: a directory, not a file", p.display());
                }
            }
            let ins = inspect::inspect_with(&store, rows, classes)
                .map_err(|e| hints::damaged_store(e, &store))?;
            meal_cli::out!("{}", ins.text);
            if let Some(p) = histogram {
                let title = format!("meal-precompute inspect: {}", store.display());
                inspect::write_histograms(&ins, ins.classes.len(), &title, &p)
                    .with_context(|| "--histogram".to_string())?;
                meal_cli::outln!("\nhistograms written to {}", p.display());
            }
        }
        Cmd::Verify { store } => meal_cli::outln!(
            "{}",
            inspect::verify(&store).map_err(|e| hints::damaged_store(e, &store))?
        ),
    }
    Ok(())
}
