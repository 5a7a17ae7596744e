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
    /// Mean KD (or CE) part.
    pub kd: f64,
    /// Mean discriminator BCE (0 when off).
    pub disc: f64,
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
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    meal_data::atomic::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Rewrite `metrics.jsonl` and `summary.csv` in `dir` from the whole history (so a
/// resumed run never duplicates or loses a line).
pub fn write_tables(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut jsonl = String::new();
    let mut csv =
        String::from("epoch,lr,loss,kd,disc,train_top1,val_top1,val_top5,crops,crops_per_s\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for m in history {
        jsonl.push_str(&serde_json::to_string(m)?);
        jsonl.push('\n');
        let _ = writeln!(
            csv,
            "{},{:.6e},{:.6},{:.6},{:.6},{:.6},{},{},{},{:.2}",
            m.epoch,
            m.lr,
            m.loss,
            m.kd,
            m.disc,
            m.train_top1,
            opt(m.val_top1),
            opt(m.val_top5),
            m.crops,
            m.crops_per_s
        );
    }
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    write_atomic(&dir.join("summary.csv"), csv.as_bytes())
}

/// One plotted series: `(epoch index, value)` points and a colour.
type Line = (Vec<(usize, f64)>, [u8; 3]);

fn line(img: &mut image::RgbImage, a: (i64, i64), b: (i64, i64), c: [u8; 3]) {
    // Bresenham
    let (mut x0, mut y0) = a;
    let (dx, dy) = ((b.0 - x0).abs(), -(b.1 - y0).abs());
    let (sx, sy) = (if x0 < b.0 { 1 } else { -1 }, if y0 < b.1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        for (ox, oy) in [(0, 0), (0, 1), (1, 0)] {
            let (x, y) = (x0 + ox, y0 + oy);
            if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                img.put_pixel(x as u32, y as u32, image::Rgb(c));
            }
        }
        if (x0, y0) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// `curves.png`: three panels left to right - loss (blue; KD part orange), learning rate
/// (green), top-1 (train grey, val red) on 0..1. Each panel is scaled to its data; the
/// numbers are in summary.csv.
pub fn plot_curves(history: &[EpochMetrics], path: &Path) -> Result<()> {
    let (pw, ph, pad) = (320i64, 220i64, 24i64);
    let mut img = image::RgbImage::from_pixel(
        (3 * pw + 4 * pad) as u32,
        (ph + 2 * pad) as u32,
        image::Rgb([255; 3]),
    );
    let n = history.len().max(2) as f64 - 1.0;
    let series = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(usize, f64)> {
        history
            .iter()
            .enumerate()
            .filter_map(|(i, m)| f(m).map(|v| (i, v)))
            .collect()
    };
    let panels: Vec<Vec<Line>> = vec![
        vec![
            (series(&|m| Some(m.loss)), [40, 90, 200]),
            (series(&|m| Some(m.kd)), [230, 130, 40]),
        ],
        vec![(series(&|m| Some(m.lr)), [40, 160, 60])],
        vec![
            (series(&|m| Some(m.train_top1)), [140, 140, 140]),
            (series(&|m| m.val_top1), [210, 40, 40]),
        ],
    ];
    for (p, lines) in panels.iter().enumerate() {
        let x0 = pad + p as i64 * (pw + pad);
        let (lo, hi) = if p == 2 {
            (0.0, 1.0)
        } else {
            let all: Vec<f64> = lines
                .iter()
                .flat_map(|(s, _)| s.iter().map(|v| v.1))
                .collect();
            let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
            let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, if hi > lo { hi } else { lo + 1.0 })
        };
        let to = |i: usize, v: f64| {
            (
                x0 + ((i as f64 / n) * (pw - 1) as f64).round() as i64,
                pad + ph
                    - 1
                    - (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * (ph - 1) as f64).round() as i64,
            )
        };
        line(&mut img, (x0, pad + ph), (x0 + pw, pad + ph), [0; 3]);
        line(&mut img, (x0, pad), (x0, pad + ph), [0; 3]);
        for (s, c) in lines {
            for w in s.windows(2) {
                line(&mut img, to(w[0].0, w[0].1), to(w[1].0, w[1].1), *c);
            }
            if s.len() == 1 {
                let p = to(s[0].0, s[0].1);
                line(&mut img, p, (p.0 + 3, p.1), *c);
            }
        }
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}
