//! Rendering a scene: 64 × 64 RGB shapes over lightly textured stuff, and its panoptic map.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::grammar::{SynthObject, SynthScene, IMAGE_SIZE, STUFF};
use crate::data::coco::SegmentRecord;
use crate::data::error::{DataError, Result};
use crate::data::rng::SynthRng;

fn inside(o: &SynthObject, x: i32, y: i32) -> bool {
    let r = o.radius();
    let (dx, dy) = (x - o.cx, y - o.cy);
    match o.kind.as_str() {
        "circle" => dx * dx + dy * dy <= r * r,
        "square" => dx.abs() * 10 <= r * 8 && dy.abs() * 10 <= r * 8,
        // Apex up at cy − r, base at cy + r; half-width grows linearly to r at the base.
        "triangle" => dy >= -r && dy <= r && 2 * dx.abs() <= dy + r,
        _ => dx.abs() + dy.abs() <= r,
    }
}

fn noise(seed: u64, i: u64, amp: i32) -> i32 {
    let v = SynthRng::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    (v % (2 * amp as u64 + 1)) as i32 - amp
}

/// One scene as the two PNG files and its `segments_info`.
pub(super) struct Rendered {
    pub image_png: Vec<u8>,
    pub panoptic_png: Vec<u8>,
    pub segments: Vec<SegmentRecord>,
}

fn encode_png(path_hint: &str, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(rgb, IMAGE_SIZE, IMAGE_SIZE, ExtendedColorType::Rgb8)
        .map_err(|source| DataError::Image {
            path: path_hint.into(),
            source,
        })?;
    Ok(buf)
}

/// Draws a scene: pixels (shapes over textured stuff) and panoptic ids.
pub(super) fn render(scene: &SynthScene) -> Result<Rendered> {
    let s = IMAGE_SIZE as i32;
    let npx = (s * s) as usize;
    let mut rgb = vec![0u8; npx * 3];
    let mut ids = vec![0u32; npx];
    for y in 0..s {
        for x in 0..s {
            let i = (y * s + x) as usize;
            let (id, base, amp) = match scene.objects.iter().find(|o| inside(o, x, y)) {
                Some(o) => (o.segment_id, o.rgb(), 4),
                None => match scene.horizon {
                    Some(h) if y < h => (5001, STUFF[0].2, 10),
                    Some(_) => (5002, STUFF[1].2, 10),
                    None => (5001, STUFF[2].2, 10),
                },
            };
            ids[i] = id;
            for c in 0..3 {
                let n = noise(scene.texture_seed, (i * 3 + c) as u64, amp);
                rgb[i * 3 + c] = (base[c] as i32 + n).clamp(0, 255) as u8;
            }
        }
    }
    let pan: Vec<u8> = ids
        .iter()
        .flat_map(|&id| [id as u8, (id >> 8) as u8, (id >> 16) as u8])
        .collect();
    // segments_info: stuff first, then things in slot order; bbox/area from the rendered map.
    let mut seg_list: Vec<(u32, u64, u8)> = Vec::new();
    match scene.horizon {
        Some(_) => {
            seg_list.push((5001, STUFF[0].0, 0));
            seg_list.push((5002, STUFF[1].0, 0));
        }
        None => seg_list.push((5001, STUFF[2].0, 0)),
    }
    for o in &scene.objects {
        seg_list.push((o.segment_id, o.category_id(), 1));
    }
    let mut segments = Vec::new();
    for (id, cat, _) in seg_list {
        let (mut x0, mut y0, mut x1, mut y1, mut area) = (s, s, -1, -1, 0u64);
        for (i, _) in ids.iter().enumerate().filter(|(_, &v)| v == id) {
            let (x, y) = (i as i32 % s, i as i32 / s);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
            area += 1;
        }
        if area > 0 {
            segments.push(SegmentRecord {
                id,
                category_id: cat,
                iscrowd: 0,
                bbox: vec![
                    x0 as f64,
                    y0 as f64,
                    (x1 - x0 + 1) as f64,
                    (y1 - y0 + 1) as f64,
                ],
                area: area as f64,
            });
        }
    }
    Ok(Rendered {
        image_png: encode_png(&scene.file_name, &rgb)?,
        panoptic_png: encode_png(&scene.file_name, &pan)?,
        segments,
    })
}
