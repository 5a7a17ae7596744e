//! Plots a person can read: titled panels with labelled, ticked axes and a legend, drawn
//! with `plotters` on its bitmap backend in an embedded font (DejaVu Sans, fonts/), so
//! no system fonts are needed. Each function returns PNG bytes; the caller writes them
//! (atomically, through `meal_data::atomic`).

use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font family name the panels use (registered once from the embedded file).
const FONT: &str = "sans-serif";
static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        // the bytes are a valid TrueType file checked in with the crate; a failure here
        // would only leave text undrawn, never corrupt a plot
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../fonts/DejaVuSans.ttf"),
        );
    });
}

/// Errors of drawing or encoding a plot.
#[derive(Debug)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// One named series of `(x, y)` points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// One panel of line series.
#[derive(Clone, Debug)]
pub struct LinePanel {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Fixed y range, or `None` to fit the data.
    pub y_range: Option<(f64, f64)>,
    /// The lines.
    pub series: Vec<Series>,
}

/// One histogram panel: `counts` of equal bins over `[lo, hi]`.
#[derive(Clone, Debug)]
pub struct HistPanel {
    /// Panel title.
    pub title: String,
    /// X axis label (what was binned).
    pub x_label: String,
    /// Range of the bins.
    pub lo: f64,
    /// Range of the bins.
    pub hi: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
}

/// Panel size in pixels.
const PANEL: (u32, u32) = (480, 360);
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn fit(points: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = points
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // a constant series gets +-10% of its value (or +-1 at zero) so it sits mid-panel
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// The legend's corner: the one whose box (`w` x `h`, fractions of the plotting area)
/// covers the fewest of the series' points and of the points along their lines, first
/// of upper right, upper left, lower right, lower left on a tie (matplotlib's
/// `loc="best"`, which minimises the same overlap: matplotlib `legend.py`,
/// `_find_best_position`). `x` and `y` are the axes' ranges. Also how many points it
/// covers.
fn legend_corner(
    series: &[Series],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    (w, h): (f64, f64),
) -> (SeriesLabelPosition, usize) {
    let unit = |v: f64, lo: f64, hi: f64| (v - lo) / (hi - lo).max(f64::MIN_POSITIVE);
    // the points and 8 more along each segment, as fractions of the area
    let mut pts = Vec::new();
    for s in series {
        let p: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|q| q.0.is_finite() && q.1.is_finite())
            .map(|&(x, y)| (unit(x, x0, x1), unit(y, y0, y1)))
            .collect();
        pts.extend(&p);
        for ab in p.windows(2) {
            let ((ax, ay), (bx, by)) = (ab[0], ab[1]);
            pts.extend((1..9).map(|k| {
                let t = k as f64 / 9.0;
                (ax + t * (bx - ax), ay + t * (by - ay))
            }));
        }
    }
    let covered = |right: bool, upper: bool| {
        pts.iter()
            .filter(|&&(x, y)| {
                (if right { x >= 1.0 - w } else { x <= w })
                    && (if upper { y >= 1.0 - h } else { y <= h })
            })
            .count()
    };
    use SeriesLabelPosition::*;
    [
        (UpperRight, true, true),
        (UpperLeft, false, true),
        (LowerRight, true, false),
        (LowerLeft, false, false),
    ]
    .into_iter()
    .map(|(c, right, upper)| (c, covered(right, upper)))
    .min_by_key(|&(_, n)| n)
    .unwrap_or((UpperRight, 0))
}

/// The value range `(y0, y1)` raised at the top, when the legend would cover a line in
/// every corner, until the data stays below the legend's `h` (fraction of the area):
/// a short run's lines span every corner (a 2-epoch loss hid under its legend).
fn headroom(
    series: &[Series],
    x: (f64, f64),
    (y0, y1): (f64, f64),
    size: (f64, f64),
) -> (f64, f64) {
    match legend_corner(series, x, (y0, y1), size).1 {
        0 => (y0, y1),
        _ => (y0, y0 + (y1 - y0) / (1.0 - size.1.clamp(0.0, 0.7))),
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A white canvas of `n` panels side by side under `title`; `draw` fills the panels,
/// and the canvas comes back as PNG bytes.
fn canvas(
    title: &str,
    n: usize,
    draw: impl FnOnce(&[Area<'_>]) -> Result<(), PlotError>,
) -> Result<Vec<u8>, PlotError> {
    register_font();
    let (w, h) = (PANEL.0 * n.max(1) as u32, PANEL.1 + 40);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FONT, 22).into_font()).map_err(err)?;
        draw(&root.split_evenly((1, n.max(1))))?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| err("buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(err)?;
    Ok(png)
}

/// Panels of line series side by side under one `title`, as PNG bytes.
pub fn lines(title: &str, panels: &[LinePanel]) -> Result<Vec<u8>, PlotError> {
    canvas(title, panels.len(), |areas| {
        for (p, area) in panels.iter().zip(areas) {
            let all = || p.series.iter().flat_map(|s| s.points.iter());
            let (x0, x1) = fit(all().map(|q| q.0));
            // the legend's box as fractions of the plotting area: rows of 13 px text
            // (~20 px each, plus its margins), a swatch and the longest name at ~7 px
            // per character
            let area_px = (f64::from(PANEL.0 - 58 - 20), f64::from(PANEL.1 - 38 - 40));
            let longest = p.series.iter().map(|s| s.name.chars().count()).max();
            let legend = (
                (40.0 + 7.0 * longest.unwrap_or(0) as f64) / area_px.0,
                (12.0 + 20.0 * p.series.len() as f64) / area_px.1,
            );
            // (a fixed range, accuracy's 0-100, is kept as asked)
            let (y0, y1) = p
                .y_range
                .unwrap_or_else(|| headroom(&p.series, (x0, x1), fit(all().map(|q| q.1)), legend));
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, (FONT, 17).into_font())
                .margin(10)
                .x_label_area_size(38)
                .y_label_area_size(58)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err)?;
            // whole x values (epochs) get whole ticks: "2", not "2.0", and none between
            let whole = all().all(|q| q.0.fract() == 0.0);
            let whole_ticks = |v: &f64| match (v - v.round()).abs() < 1e-9 {
                true => format!("{}", v.round() as i64),
                false => String::new(),
            };
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style((FONT, 12).into_font())
                .axis_desc_style((FONT, 14).into_font())
                .light_line_style(RGBColor(235, 235, 235));
            if whole {
                mesh.x_label_formatter(&whole_ticks);
            }
            mesh.draw().map_err(err)?;
            for (i, s) in p.series.iter().enumerate() {
                let c = COLOURS[i % COLOURS.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|q| q.1.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(legend_corner(&p.series, (x0, x1), (y0, y1), legend).0)
                .label_font((FONT, 13).into_font())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    })
}

/// Histogram panels side by side under one `title`, as PNG bytes.
pub fn histograms(title: &str, panels: &[HistPanel]) -> Result<Vec<u8>, PlotError> {
    canvas(title, panels.len(), |areas| {
        for (i, (p, area)) in panels.iter().zip(areas).enumerate() {
            let top = p.counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.05;
            let bw = (p.hi - p.lo) / p.counts.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, (FONT, 17).into_font())
                .margin(10)
                .x_label_area_size(38)
                .y_label_area_size(58)
                .build_cartesian_2d(p.lo..p.hi, 0f64..top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(&p.x_label)
                .y_desc("crops")
                // counts are whole: plotters' float ticks of a short axis (0.5, 1.5)
                // are left unlabelled, the others written without ".0"
                .y_label_formatter(&|v| count_label(*v))
                .label_style((FONT, 12).into_font())
                .axis_desc_style((FONT, 14).into_font())
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(err)?;
            let c = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(p.counts.iter().enumerate().map(|(b, &n)| {
                    let x = p.lo + b as f64 * bw;
                    Rectangle::new([(x, 0.0), (x + bw, n as f64)], c.filled())
                }))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// A count axis's tick label: whole numbers as such (within rounding: plotters steps
/// its ticks in floats, 10 x 0.1 is not 1), any other tick unlabelled.
fn count_label(v: f64) -> String {
    let whole = v.round();
    if (v - whole).abs() <= 1e-9 * whole.abs().max(1.0) {
        format!("{whole:.0}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    /// The expected size, and ink where the text goes: the title band and the axis label
    /// areas are not blank (a missing font would leave them white).
    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: points.to_vec(),
        }
    }

    /// A falling loss leaves the upper right free; a rising accuracy fills it, and the
    /// upper left is free; with a high line along the top too (both upper corners) and
    /// the loss's tail in the lower right, the lower left is left.
    #[test]
    fn the_legend_goes_to_the_emptiest_corner() {
        let size = (0.3, 0.2);
        let range = ((1.0, 10.0), (0.0, 1.0));
        let falling: Vec<_> = (1..=10).map(|e| (e as f64, 1.0 / e as f64)).collect();
        let rising: Vec<_> = (1..=10).map(|e| (e as f64, e as f64 / 10.0)).collect();
        let high: Vec<_> = (1..=10).map(|e| (e as f64, 0.95)).collect();
        let best = |s: &[Series]| legend_corner(s, range.0, range.1, size).0;
        assert!(matches!(
            best(&[series("loss", &falling)]),
            SeriesLabelPosition::UpperRight
        ));
        assert!(matches!(
            best(&[series("top-1", &rising)]),
            SeriesLabelPosition::UpperLeft
        ));
        assert!(matches!(
            best(&[series("a", &falling), series("b", &high)]),
            SeriesLabelPosition::LowerLeft
        ));
        // two epochs of three losses (a short run): a line in every corner; the range
        // gains headroom at the top and the legend covers nothing there
        let two = |a: f64, b: f64| vec![(1.0, a), (2.0, b)];
        let s = [
            series("total", &two(2.8, 2.75)),
            series("KD part", &two(2.1, 2.05)),
            series("discriminator part", &two(0.69, 0.69)),
        ];
        let (x, y) = ((0.9, 2.1), (0.6, 2.9));
        assert!(legend_corner(&s, x, y, size).1 > 0);
        let raised = headroom(&s, x, y, size);
        assert!(raised.0 == y.0 && raised.1 > y.1, "{raised:?}");
        assert_eq!(legend_corner(&s, x, raised, size).1, 0);
        // a range the legend leaves free is kept
        assert_eq!(
            headroom(&[series("loss", &falling)], range.0, range.1, size),
            range.1
        );
    }

    #[test]
    fn line_panels_have_text_and_lines() {
        let s = |name: &str, k: f64| Series {
            name: name.into(),
            points: (0..10).map(|i| (i as f64, k * i as f64)).collect(),
        };
        let panel = |t: &str| LinePanel {
            title: t.into(),
            x_label: "epoch".into(),
            y_label: "value".into(),
            y_range: None,
            series: vec![s("a", 1.0), s("b", 2.0)],
        };
        let img = decode(&lines("run", &[panel("loss"), panel("lr")]).unwrap());
        assert_eq!(img.dimensions(), (2 * PANEL.0, PANEL.1 + 40));
        let ink = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 != [255; 3])
                .count()
        };
        assert!(ink(0, img.width(), 0, 30) > 50, "title not drawn");
        assert!(ink(0, 50, 60, PANEL.1) > 50, "y axis labels not drawn");
        let coloured = img
            .pixels()
            .filter(|p| p.0 == [COLOURS[1].0, COLOURS[1].1, COLOURS[1].2])
            .count();
        assert!(coloured > 100, "second series not drawn ({coloured} px)");
    }

    #[test]
    fn counts_are_labelled_whole() {
        assert_eq!(count_label(12000.0), "12000");
        assert_eq!(count_label(0.0), "0");
        assert_eq!(count_label(1.5), "");
        assert_eq!(count_label(0.1 * 10.0 + 1e-15), "1");
        assert_eq!(count_label(0.30000000000000004), "");
    }

    #[test]
    fn histogram_panels_have_the_expected_size() {
        let p = HistPanel {
            title: "entropy".into(),
            x_label: "nats".into(),
            lo: 0.0,
            hi: 2.3,
            counts: vec![1, 5, 9, 3, 0, 2],
        };
        let img = decode(&histograms("labels", &[p.clone(), p]).unwrap());
        assert_eq!(img.dimensions(), (2 * PANEL.0, PANEL.1 + 40));
    }
}
