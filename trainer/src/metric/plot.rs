//! `curves.png`: training loss (per step, and its running mean) and val
//! top-1 / top-5 (per epoch), drawn from metrics.jsonl.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::metric::log::{self, Line};

/// Why no curves PNG was drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no steps yet")]
    NoSteps(PathBuf),
    #[error("{path}: {message}")]
    Draw { path: PathBuf, message: String },
}

pub const FILE: &str = "curves.png";
const FONT: &str = "sans-serif";

/// Draws `run/curves.png` from `run/metrics.jsonl`; returns its path.
pub fn write_curves(run: &Path) -> Result<PathBuf, PlotError> {
    register_font();
    let metrics = run.join(log::FILE);
    let lines = log::read(&metrics).map_err(|source| PlotError::Read {
        path: metrics.clone(),
        source,
    })?;
    let mut loss = Vec::new();
    let mut top1 = Vec::new();
    let mut top5 = Vec::new();
    for line in &lines {
        match line {
            Line::Step(s) if s.loss.is_finite() => loss.push((s.step as f64, s.loss)),
            Line::Epoch(e) => {
                top1.push((e.step as f64, 100.0 * e.val_top1));
                top5.push((e.step as f64, 100.0 * e.val_top5));
            }
            _ => {}
        }
    }
    if loss.is_empty() {
        return Err(PlotError::NoSteps(metrics));
    }
    let path = run.join(FILE);
    // plotters' errors are generic over the backend: kept as their text.
    let draw_error = |e: Box<dyn std::error::Error>| PlotError::Draw {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut rgb, &loss, &top1, &top5).map_err(draw_error)?;
    // Encoded by the image crate the workspace builds anyway, rather than by
    // plotters' encoder, which would compile an older image crate as well.
    image::save_buffer_with_format(
        &path,
        &rgb,
        WIDTH,
        HEIGHT,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| draw_error(e.into()))?;
    Ok(path)
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 480;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Ubuntu Light, compiled in: no system font needed.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// The loss axis: from the lowest loss to the highest, but at most three
/// times the median, so that a few early spikes (the paper's init can reach
/// 25 in its first steps) do not flatten the rest of the curve.
fn loss_range(loss: &[(f64, f64)]) -> (f64, f64) {
    let mut sorted: Vec<f64> = loss.iter().map(|p| p.1).collect();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    (lo, hi.min(3.0 * sorted[sorted.len() / 2]).max(lo + 1e-6))
}

/// Mean of the last `window` values at each point.
fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws both charts into `rgb` (WIDTH x HEIGHT, 3 bytes a pixel).
fn draw(
    rgb: &mut [u8],
    loss: &[(f64, f64)],
    top1: &[(f64, f64)],
    top5: &[(f64, f64)],
) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    // Both panels share the step axis.
    let max_step = loss.last().map_or(1.0, |p| p.0).max(1.0);
    draw_loss(&left, loss, max_step)?;
    draw_accuracy(&right, top1, top5, max_step)?;
    root.present()?;
    Ok(())
}

type Panel<'a, 'b> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The loss at every step, faint, and its running mean over a twentieth
/// of the run (1 to 200 steps).
fn draw_loss(area: &Panel, loss: &[(f64, f64)], max_step: f64) -> DrawResult {
    let (lo, hi) = loss_range(loss);
    let mut chart = ChartBuilder::on(area)
        .caption("training loss", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, (lo * 0.95)..(hi * 1.05 + 1e-6))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .label_style((FONT, 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            loss.iter().copied(),
            RGBColor(170, 190, 230),
        ))?
        .label("per step")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(170, 190, 230)));
    let window = (loss.len() / 20).clamp(1, 200);
    chart
        .draw_series(LineSeries::new(
            running_mean(loss, window),
            BLUE.stroke_width(2),
        ))?
        .label(format!("mean of {window}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// Val top-1 and top-5 after each epoch, in percent.
fn draw_accuracy(
    area: &Panel,
    top1: &[(f64, f64)],
    top5: &[(f64, f64)],
    max_step: f64,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption("validation accuracy (centre crop)", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_step, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("%")
        .label_style((FONT, 14))
        .draw()?;
    for (points, colour, name) in [(top1, RED, "top-1"), (top5, GREEN, "top-5")] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_axis_clips_early_spikes() {
        let mut pts: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 2.0 - i as f64 / 100.0))
            .collect();
        pts[3].1 = 25.0;
        let (lo, hi) = loss_range(&pts);
        assert!((lo - 1.01).abs() < 1e-9);
        assert!(hi < 5.0, "{hi}");
        assert_eq!(loss_range(&[(1.0, 2.0)]), (2.0, 2.0 + 1e-6));
    }

    #[test]
    fn running_mean_over_a_window() {
        let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        let m = running_mean(&pts, 2);
        assert_eq!(
            m.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![0.0, 0.5, 1.5, 2.5, 3.5]
        );
    }
}
