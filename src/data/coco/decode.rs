//! Decoding one sample on demand: image and panoptic PNG, segment ids → segment indices,
//! captions and the optional feature map.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use image::RgbImage;

use super::open::{file_stem, image_reader};
use super::{CrowdPolicy, Dataset, Sample, Segment, SegmentMap};
use crate::data::error::{DataError, Result};
use crate::data::features::load_feature_map;

fn decode_any(path: &Path, what: &'static str) -> Result<image::DynamicImage> {
    let mut reader = image_reader(path, what)?;
    // The header was checked at open; this bounds a file that changed since (RGBA16: 8 B/px).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(crate::util::bounded::DEFAULT_MAX_IMAGE_PIXELS * 8);
    reader.limits(limits);
    reader.decode().map_err(|source| DataError::Image {
        path: path.to_path_buf(),
        source,
    })
}

/// An image in any colour type, as 8-bit RGB.
fn decode_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode_any(path, "image")?.to_rgb8())
}

/// A panoptic PNG must hold 8-bit RGB (alpha ignored): any conversion would corrupt the ids.
fn decode_panoptic(path: &Path) -> Result<RgbImage> {
    match decode_any(path, "panoptic PNG")? {
        image::DynamicImage::ImageRgb8(i) => Ok(i),
        i @ image::DynamicImage::ImageRgba8(_) => Ok(i.to_rgb8()),
        i => Err(DataError::invalid(
            path,
            format!(
                "panoptic PNG must be 8-bit RGB (id = R + 256 G + 256² B), found {:?}",
                i.color()
            ),
        )),
    }
}

impl Dataset {
    /// Decode sample `i` (image, panoptic map, captions, optional features).
    pub fn get(&self, i: usize) -> Result<Sample> {
        let (sample, absent) = self.decode(i)?;
        if let Some(flag) = self.counted.get(i) {
            if !flag.swap(true, Ordering::Relaxed) {
                let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
                c.decoded += 1;
                c.unlisted_ids += sample.unlisted_ids.len();
                c.unlisted_pixels += sample.unlisted_pixels;
                c.listed_absent += absent;
            }
        }
        Ok(sample)
    }

    pub(super) fn decode(&self, i: usize) -> Result<(Sample, usize)> {
        let e = self.entries.get(i).ok_or_else(|| {
            DataError::contract(format!(
                "{}: sample index {i} out of range (len {})",
                self.paths.panoptic_json.display(),
                self.entries.len()
            ))
        })?;
        let img_path = self.paths.images.join(&e.file_name);
        let pan_path = self.paths.panoptic.join(&e.panoptic_file);
        let image = decode_rgb(&img_path)?;
        let pan = decode_panoptic(&pan_path)?;
        if image.dimensions() != pan.dimensions() {
            return Err(DataError::SizeMismatch {
                image: img_path,
                image_size: image.dimensions(),
                panoptic: pan_path,
                panoptic_size: pan.dimensions(),
            });
        }
        let (width, height) = pan.dimensions();

        let lookup: HashMap<u32, usize> = e
            .segments
            .iter()
            .enumerate()
            .map(|(k, s)| (s.id, k))
            .collect();
        let drop_crowd = self.opts.crowd == CrowdPolicy::Drop;
        let mut raw = vec![-1i32; (width * height) as usize];
        let mut area = vec![0u64; e.segments.len()];
        let mut unlisted: HashMap<u32, u64> = HashMap::new();
        let mut last: (u32, i32) = (0, -1);
        for (px, out) in pan.pixels().zip(raw.iter_mut()) {
            let id = px[0] as u32 | (px[1] as u32) << 8 | (px[2] as u32) << 16;
            if id == 0 {
                continue;
            }
            let k = if id == last.0 {
                last.1
            } else {
                let k = match lookup.get(&id) {
                    Some(&k) if drop_crowd && e.segments[k].iscrowd => -1,
                    Some(&k) => k as i32,
                    None => -2,
                };
                last = (id, k);
                k
            };
            match k {
                -2 => *unlisted.entry(id).or_default() += 1,
                -1 => {}
                k => {
                    *out = k;
                    area[k as usize] += 1;
                }
            }
        }
        // Drop listed segments with no pixel; re-index the rest in segments_info order.
        let mut remap = vec![-1i32; e.segments.len()];
        let mut segments = Vec::new();
        let mut absent = 0;
        for (k, s) in e.segments.iter().enumerate() {
            if area[k] > 0 {
                remap[k] = segments.len() as i32;
                segments.push(Segment {
                    area: area[k],
                    ..s.clone()
                });
            } else if !(drop_crowd && s.iscrowd) {
                absent += 1;
            }
        }
        if segments.is_empty() {
            return Err(DataError::NoSegments {
                path: pan_path,
                image_id: e.image_id,
                why: "no listed segment id occurs in the PNG",
            });
        }
        for v in raw.iter_mut() {
            if *v >= 0 {
                *v = remap[*v as usize];
            }
        }
        let mut unlisted_ids: Vec<u32> = unlisted.keys().copied().collect();
        unlisted_ids.sort_unstable();
        let unlisted_pixels = unlisted.values().sum();

        let features = match &self.paths.features {
            Some(dir) => Some(load_feature_map(
                &dir.join(format!("{}.safetensors", file_stem(&e.file_name))),
                None,
            )?),
            None => None,
        };
        Ok((
            Sample {
                image_id: e.image_id,
                file_name: e.file_name.clone(),
                image,
                segments: SegmentMap {
                    width,
                    height,
                    index: raw,
                    segments,
                },
                captions: e.captions.clone(),
                features,
                unlisted_ids,
                unlisted_pixels,
            },
            absent,
        ))
    }
}
