//! `gshn show`: an image with its segments, the graph's edges drawn by attention weight,
//! and each node's spike rate — the first thing a researcher looks at.

use super::config::open_split;
use super::engine::load_engine;
use crate::backend::Backend;
use crate::data::graph_from_sample;
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use std::path::Path;

const SCALE: u32 = 8;

/// Draws image `image_id` of `split` with its segments, last-layer attention edges and node spike rates (run `run`'s checkpoint), written atomically to `out` (format from the extension).
pub fn render<B: Backend>(
    backend: B,
    run: &Path,
    data: &Path,
    split: &str,
    image_id: u64,
    out: &Path,
) -> Result<()> {
    let mut engine = load_engine(backend, run, None)?;
    let ds = open_split(data, &engine.cfg, split)?;
    let idx = (0..ds.len())
        .find(|&i| ds.image_id(i) == Some(image_id))
        .ok_or_else(|| {
            Error::invalid(
                "show",
                format!("image id {image_id} is not in the {split} split"),
            )
        })?;
    let sample = ds.get(idx)?;
    let graph = graph_from_sample(
        &sample,
        ds.num_categories(),
        &engine.cfg.data.graph,
        &engine.cfg.data.features,
    )?;
    let (batch, outs) = engine.inspect(std::slice::from_ref(&graph))?;
    let layers = engine.model_outputs.attention.len();
    let heads = engine.cfg.model.heads;
    let spike_rate = engine
        .model_outputs
        .node_spike_rate
        .map(|_| outs[1 + layers].to_f64_vec());

    // Base picture: the image, upscaled, with segment boundaries in white.
    let (w, h) = (sample.image.width(), sample.image.height());
    let mut img = RgbImage::new(w * SCALE, h * SCALE);
    let seg = &sample.segments.index;
    for y in 0..h * SCALE {
        for x in 0..w * SCALE {
            let (sx, sy) = (x / SCALE, y / SCALE);
            let s = seg[(sy * w + sx) as usize];
            let edge = (sx + 1 < w
                && seg[(sy * w + sx + 1) as usize] != s
                && x % SCALE == SCALE - 1)
                || (sy + 1 < h && seg[((sy + 1) * w + sx) as usize] != s && y % SCALE == SCALE - 1);
            let p = sample.image.get_pixel(sx, sy).0;
            img.put_pixel(
                x,
                y,
                if edge {
                    Rgb([255, 255, 255])
                } else {
                    Rgb([p[0] / 2 + 40, p[1] / 2 + 40, p[2] / 2 + 40])
                },
            );
        }
    }
    let (iw, ih) = (img.width(), img.height());
    let mut buf = img.into_raw();
    {
        super::plot::ensure_font();
        let root = BitMapBackend::with_buffer(&mut buf, (iw, ih)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| Error::Format {
            path: out.display().to_string(),
            msg: format!("cannot draw: {e}"),
        };
        let n = graph.num_nodes;
        let pos = |v: usize| -> (i32, i32) {
            if v + 1 == n {
                (iw as i32 / 2, 14) // the global node sits at the top
            } else {
                (
                    (graph.geometry[v * 5] * iw as f32) as i32,
                    (graph.geometry[v * 5 + 1] * ih as f32) as i32,
                )
            }
        };
        // Edges of the last GAT layer, width and opacity by mean attention over heads.
        if layers > 0 {
            let alpha = outs[layers].to_f64_vec();
            let dst = batch.edge_dst();
            for k in 0..batch.edge_cap() {
                let (s, d) = (batch.src[k] as usize, dst[k] as usize);
                if s == d {
                    continue;
                }
                let a = (0..heads).map(|hh| alpha[k * heads + hh]).sum::<f64>() / heads as f64;
                let color = RGBColor(255, 200, 40).mix(0.15 + 0.85 * a.clamp(0.0, 1.0));
                root.draw(&PathElement::new(
                    vec![pos(s), pos(d)],
                    color.stroke_width(1 + (4.0 * a) as u32),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        for v in 0..n {
            let rate = spike_rate.as_ref().map(|r| r[v]).unwrap_or(0.0);
            let c = RGBColor(
                (60.0 + 195.0 * rate.clamp(0.0, 1.0)) as u8,
                60,
                (255.0 - 195.0 * rate.clamp(0.0, 1.0)) as u8,
            );
            root.draw(&Circle::new(pos(v), 7, c.filled()))
                .map_err(|e| err(&e))?;
            let label = if spike_rate.is_some() {
                format!("{rate:.2}")
            } else {
                format!("{v}")
            };
            root.draw(&Text::new(
                label,
                (pos(v).0 + 9, pos(v).1 - 7),
                ("sans-serif", 14).into_font().color(&WHITE),
            ))
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(iw, ih, buf).expect("buffer size unchanged");
    let bad = |msg: String| Error::Format {
        path: out.display().to_string(),
        msg,
    };
    let format = image::ImageFormat::from_path(out).map_err(|e| bad(e.to_string()))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .map_err(|e| bad(e.to_string()))?;
    // Like every output: atomic, and only a regular file (or nothing) is replaced.
    crate::tensor::io::write_atomic(out, bytes.get_ref())
}
