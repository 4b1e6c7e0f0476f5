//! PNG plots for evaluation reports: precision–recall and ROC curves of several models on one
//! chart, and the score distributions of fraud vs legitimate transactions per model.
//!
//! Rendering is pure Rust (plotters' bitmap backend, text by `ab_glyph`): no fontconfig or
//! system font library. The one system dependency is a TrueType font file, read once per
//! process: [`FONT_PATH`] (Debian package [`FONT_PACKAGE`]), or the file named by the
//! environment variable [`FONT_ENV`]. Without it every function here returns
//! [`PlotError::FontMissing`], naming the file and the package.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::coord::Shift;
use plotters::prelude::*;

/// The font plots are drawn with unless [`FONT_ENV`] names another.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The Debian package that provides [`FONT_PATH`] (installed by `deploy/setup.sh`).
pub const FONT_PACKAGE: &str = "fonts-dejavu-core";
/// Environment variable naming another TrueType font file to draw with.
pub const FONT_ENV: &str = "FRAUDGRAPH_PLOT_FONT";

/// Picture size of every plot, pixels.
const SIZE: (u32, u32) = (900, 700);
/// Height of one panel of [`score_histogram_png`], pixels.
const PANEL_HEIGHT: u32 = 320;
/// Bins of [`score_histogram_png`].
const BINS: usize = 50;
/// The family name the font is registered under; plotters' default for labels.
const FAMILY: &str = "sans-serif";

/// Errors of the plots; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The font file is missing or unreadable.
    #[error(
        "plot font {}: {source} (install the Debian package `{FONT_PACKAGE}`, or name another \
         TrueType file in ${FONT_ENV})",
        path.display()
    )]
    FontMissing {
        /// The font file looked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The font file is not a font `ab_glyph` can read.
    #[error("plot font {}: not a TrueType/OpenType font", path.display())]
    FontInvalid {
        /// The font file.
        path: PathBuf,
    },
    /// Nothing to plot.
    #[error("plot {}: {what}", path.display())]
    Empty {
        /// The PNG that was to be written.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// Drawing or writing the PNG failed.
    #[error("plot {}: {message}", path.display())]
    Draw {
        /// The PNG being written.
        path: PathBuf,
        /// plotters' error.
        message: String,
    },
}

/// Registers the plot font with plotters once per process (the bytes live for the process:
/// plotters keeps `&'static` font data).
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if *registered {
        return Ok(());
    }
    let path = std::env::var_os(FONT_ENV).map_or_else(|| PathBuf::from(FONT_PATH), PathBuf::from);
    let bytes: &'static [u8] = Box::leak(read_font(&path)?.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| PlotError::FontInvalid { path })?;
    *registered = true;
    Ok(())
}

/// The bytes of the font file at `path`.
fn read_font(path: &Path) -> Result<Vec<u8>, PlotError> {
    std::fs::read(path).map_err(|source| PlotError::FontMissing {
        path: path.to_owned(),
        source,
    })
}

/// Turns any plotters error into [`PlotError::Draw`] naming `path`.
trait OrDraw<T> {
    fn or_draw(self, path: &Path) -> Result<T, PlotError>;
}

impl<T, E: std::fmt::Display> OrDraw<T> for Result<T, E> {
    fn or_draw(self, path: &Path) -> Result<T, PlotError> {
        self.map_err(|e| PlotError::Draw {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// The colour of series `i`.
fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// One chart of `(x, y)` curves in the unit square, with a legend.
fn curves_png(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    curves: &[(&str, Vec<(f64, f64)>)],
    diagonal: bool,
) -> Result<(), PlotError> {
    ensure_font()?;
    if curves.is_empty() {
        return Err(PlotError::Empty {
            path: path.to_owned(),
            what: "no curves".into(),
        });
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).or_draw(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
        .or_draw(path)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 18))
        .draw()
        .or_draw(path)?;
    if diagonal {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .or_draw(path)?;
    }
    for (i, (label, points)) in curves.iter().enumerate() {
        let c = color(i);
        let finite = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(finite, c.stroke_width(2)))
            .or_draw(path)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .or_draw(path)?;
    root.present().or_draw(path)
}

/// Precision–recall curves of several models on one chart: `curves` are `(label, points)`
/// with points `(recall, precision)` as [`crate::metrics::pr_curve`] gives them. Writes a
/// PNG to `path`.
pub fn pr_curves_png(path: &Path, curves: &[(&str, Vec<(f64, f64)>)]) -> Result<(), PlotError> {
    curves_png(
        path,
        "Precision-recall",
        ("Recall", "Precision"),
        curves,
        false,
    )
}

/// ROC curves of several models on one chart, with the chance diagonal: `curves` are
/// `(label, points)` with points `(false-positive rate, true-positive rate)` as
/// [`crate::metrics::roc_curve`] gives them. Writes a PNG to `path`.
pub fn roc_curves_png(path: &Path, curves: &[(&str, Vec<(f64, f64)>)]) -> Result<(), PlotError> {
    curves_png(
        path,
        "ROC",
        ("False-positive rate", "True-positive rate"),
        curves,
        true,
    )
}

/// The share of `scores` in each of [`BINS`] equal bins over `lo..hi` (NaN skipped).
fn shares(scores: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let mut counts = vec![0u64; BINS];
    let mut total = 0u64;
    for &s in scores.iter().filter(|s| !s.is_nan()) {
        let bin = (((s - lo) / (hi - lo)) * BINS as f64).floor();
        counts[(bin.max(0.0) as usize).min(BINS - 1)] += 1;
        total += 1;
    }
    counts
        .into_iter()
        .map(|c| c as f64 / total.max(1) as f64)
        .collect()
}

/// One panel of [`score_histogram_png`].
fn histogram_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    path: &Path,
    (label, pos, neg): (&str, &[f64], &[f64]),
    (lo, hi): (f64, f64),
) -> Result<(), PlotError> {
    let (pos_share, neg_share) = (shares(pos, lo, hi), shares(neg, lo, hi));
    let top = pos_share
        .iter()
        .chain(&neg_share)
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-3)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{label}: score distribution (fraud n={}, legit n={})",
                pos.len(),
                neg.len()
            ),
            (FAMILY, 20),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(lo..hi, 0f64..top)
        .or_draw(path)?;
    chart
        .configure_mesh()
        .x_desc("Score")
        .y_desc("Share of class")
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .or_draw(path)?;
    let width = (hi - lo) / BINS as f64;
    for (name, share, c) in [("legit", &neg_share, BLUE), ("fraud", &pos_share, RED)] {
        chart
            .draw_series(share.iter().enumerate().map(|(i, &h)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, h)], c.mix(0.35).filled())
            }))
            .or_draw(path)?
            .label(name)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.mix(0.5).filled())
            });
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperMiddle)
        .draw()
        .or_draw(path)
}

/// Score distributions of fraud vs legitimate transactions, one panel per model: `series`
/// are `(label, fraud scores, legit scores)`. Bars are each class's share per bin, so the
/// rare fraud class stays visible. The x range covers `[0, 1]` (probabilities) and every
/// finite score; NaN scores are skipped. Writes a PNG to `path`.
pub fn score_histogram_png(
    path: &Path,
    series: &[(&str, Vec<f64>, Vec<f64>)],
) -> Result<(), PlotError> {
    ensure_font()?;
    if series.is_empty() {
        return Err(PlotError::Empty {
            path: path.to_owned(),
            what: "no score series".into(),
        });
    }
    let all = || {
        series
            .iter()
            .flat_map(|(_, p, n)| p.iter().chain(n))
            .copied()
            .filter(|s| s.is_finite())
    };
    let (mut lo, mut hi) = all().fold((0.0f64, 1.0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let height = (PANEL_HEIGHT as usize * series.len()).min(u32::MAX as usize) as u32;
    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).or_draw(path)?;
    let panels = root.split_evenly((series.len(), 1));
    for (area, (label, pos, neg)) in panels.iter().zip(series) {
        histogram_panel(area, path, (label, pos, neg), (lo, hi))?;
    }
    root.present().or_draw(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_font_names_the_file_and_the_package() {
        let err = read_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/DejaVuSans.ttf"), "{msg}");
        assert!(
            msg.contains(FONT_PACKAGE) && msg.contains(FONT_ENV),
            "{msg}"
        );
    }
}
