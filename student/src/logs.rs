//! Run logs a person reads: `metrics.jsonl` (one JSON object per epoch), `summary.csv`
//! (the same columns) and `curves.png` (loss, learning rate, top-1).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 0-based epoch.
    pub epoch: u32,
    /// Student learning rate during the epoch.
    pub lr: f64,
    /// Mean total loss (KD or CE, plus the discriminator's).
    pub loss: f64,
    /// Mean KD part (with `--loss ce`: the cross-entropy to the hard labels, which is
    /// then the whole loss).
    pub kd: f64,
    /// Mean discriminator BCE (null when it is off; older runs wrote 0).
    pub disc: Option<f64>,
    /// Training top-1 against the hard labels (on the augmented crops).
    pub train_top1: f64,
    /// Validation top-1 (when --val is given).
    pub val_top1: Option<f64>,
    /// Validation top-5.
    pub val_top5: Option<f64>,
    /// Crops trained on.
    pub crops: u64,
    /// Crops per second over the epoch's steps (resumes: over this process's part).
    pub crops_per_s: f64,
    /// Images of `--data` skipped as unreadable in the epoch (under `--on-bad-file
    /// skip`; 0 in runs from before it was counted).
    #[serde(default)]
    pub skipped: u64,
}

/// The per-epoch table, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The same columns as CSV.
pub const SUMMARY_FILE: &str = "summary.csv";
/// The plot of [`plot_curves`].
pub const CURVES_FILE: &str = "curves.png";

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    meal_data::atomic::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Rewrite `metrics.jsonl` and `summary.csv` in `dir` from the whole history (so a
/// resumed run never duplicates or loses a line).
pub fn write_tables(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut jsonl = String::new();
    let mut csv = String::from(
        "epoch,lr,loss,kd,disc,train_top1,val_top1,val_top5,crops,crops_per_s,skipped\n",
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for m in history {
        jsonl.push_str(&serde_json::to_string(m)?);
        jsonl.push('\n');
        let _ = writeln!(
            csv,
            "{},{:.6e},{:.6},{:.6},{},{:.6},{},{},{},{:.2},{}",
            m.epoch,
            m.lr,
            m.loss,
            m.kd,
            opt(m.disc),
            m.train_top1,
            opt(m.val_top1),
            opt(m.val_top5),
            m.crops,
            m.crops_per_s,
            m.skipped
        );
    }
    write_atomic(&dir.join(METRICS_FILE), jsonl.as_bytes())?;
    write_atomic(&dir.join(SUMMARY_FILE), csv.as_bytes())
}

/// `curves.png`: three titled panels - loss (KD: total, its KD part and the
/// discriminator's; `ce`: the cross-entropy), learning rate, and top-1 (train and, with a
/// validation set, val) in %, each over epochs, under the run's name. The numbers are in
/// summary.csv.
pub fn plot_curves(run: &str, ce: bool, history: &[EpochMetrics], path: &Path) -> Result<()> {
    use meal_cli::plot::{lines, LinePanel, Series};
    let series = |name: &str, f: &dyn Fn(&EpochMetrics) -> Option<f64>| Series {
        name: name.into(),
        points: history
            .iter()
            .filter_map(|m| f(m).map(|v| ((m.epoch + 1) as f64, v)))
            .collect(),
    };
    let panel = |title: &str, y: &str, range, series: Vec<Series>| LinePanel {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y.into(),
        y_range: range,
        series: series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect(),
    };
    let png = lines(
        &format!("meal-student: {run}"),
        &[
            panel(
                "training loss",
                "loss (mean per crop)",
                None,
                match ce {
                    true => vec![series("cross-entropy (hard labels)", &|m| Some(m.loss))],
                    false => vec![
                        series("total", &|m| Some(m.loss)),
                        series("KD part", &|m| Some(m.kd)),
                        series("discriminator part", &|m| m.disc),
                    ],
                },
            ),
            panel(
                "learning rate",
                "lr",
                None,
                vec![series("lr", &|m| Some(m.lr))],
            ),
            panel(
                "top-1 accuracy",
                "top-1 %",
                Some((0.0, 100.0)),
                vec![
                    series("train", &|m| Some(100.0 * m.train_top1)),
                    series("val", &|m| m.val_top1.map(|v| 100.0 * v)),
                ],
            ),
        ],
    )?;
    write_atomic(path, &png)
}
