//! PNG line plots of training curves (plotters with an embedded DejaVu font, so no system
//! fonts are needed). A plot is drawn in memory and written atomically, so a full disk never
//! leaves a truncated PNG.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.display().to_string(),
        msg: format!("cannot draw plot: {e}"),
    }
}

/// Registers the embedded font as "sans-serif" (once per process).
pub fn ensure_font() {
    FONT.call_once(|| {
        // Registration only fails for unparsable font bytes, which are compiled in.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws `series` (name, points) on one chart. Empty series are skipped; nothing to draw is
/// not an error (the file is simply not written).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    ensure_font();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);

    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    draw(path, title, x_label, series, (x0..x1, y0..y1), &mut pixels)?;
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .ok_or_else(|| plot_error(path, "pixel buffer of the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| plot_error(path, e))?;
    crate::tensor::io::write_atomic(path, png.get_ref())
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 450;

/// Draws the chart into an RGB buffer of WIDTH × HEIGHT.
fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    (xs, ys): (std::ops::Range<f64>, std::ops::Range<f64>),
    pixels: &mut [u8],
) -> Result<()> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(xs, ys)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (i, (name, p)) in series.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                p.iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}
