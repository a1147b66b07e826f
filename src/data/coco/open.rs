//! Opening a split: the cheap index of [`Dataset::open`] (both JSON files, image and PNG
//! headers, every record checked) and the accessors that need no decoding.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use rayon::prelude::*;

use super::schema::{read_json, CaptionsJson, ImageRecord, PanopticAnnotation, PanopticJson};
use super::{Category, LoadOptions, LoadStats, Segment, Skipped, SplitPaths};
use crate::data::error::{DataError, Result};

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub image_id: u64,
    pub file_name: String,
    pub panoptic_file: String,
    pub segments: Vec<Segment>, // area = 0 until decoded
    pub captions: Vec<String>,
    /// Index of each caption in `captions.json`'s `annotations`.
    pub caption_rows: Vec<usize>,
}

#[derive(Debug, Default)]
pub(super) struct DecodeCounters {
    pub decoded: usize,
    pub unlisted_ids: usize,
    pub unlisted_pixels: u64,
    pub listed_absent: usize,
}

/// A split: a cheap index built at open, samples decoded on demand by [`Dataset::get`].
#[derive(Debug)]
pub struct Dataset {
    pub(super) caption_records: usize,
    pub(super) paths: SplitPaths,
    pub(super) opts: LoadOptions,
    pub(super) categories: Vec<Category>,
    pub(super) entries: Vec<Entry>,
    pub(super) stats: LoadStats,
    pub(super) counted: Vec<AtomicBool>,
    pub(super) counters: Mutex<DecodeCounters>,
}

pub(super) fn file_stem(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

/// An image reader of `path` with its format guessed from the content.
pub(super) fn image_reader(
    path: &Path,
    what: &'static str,
) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, what, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, what, e))
}

/// Width and height from the header alone, refused above `max_pixels` (before any decoding).
fn header_dims(path: &Path, what: &'static str, max_pixels: u64) -> Result<(u32, u32)> {
    let reader = image_reader(path, what)?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|source| DataError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    if w as u64 * h as u64 > max_pixels {
        return Err(DataError::invalid(
            path,
            format!(
                "{what} of {w} × {h} pixels is above the limit of {max_pixels} \
                 (data.load.max_image_pixels)"
            ),
        ));
    }
    Ok((w, h))
}

fn check_dir(path: &Path, what: &'static str) -> Result<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(DataError::Missing {
            path: path.to_path_buf(),
            what,
        })
    }
}

impl Dataset {
    /// Open a split: parse both JSON files, map categories, check every record (files exist, headers
    /// readable, sizes agree, categories known, captions present, segments listed). No pixel decoding
    /// unless [`LoadOptions::verify`].
    pub fn open(paths: &SplitPaths, opts: &LoadOptions) -> Result<Dataset> {
        let pj: PanopticJson =
            read_json(&paths.panoptic_json, "panoptic JSON", opts.max_file_bytes)?;
        let cj: CaptionsJson =
            read_json(&paths.captions_json, "captions JSON", opts.max_file_bytes)?;
        check_dir(&paths.images, "images folder")?;
        check_dir(&paths.panoptic, "panoptic folder")?;
        if let Some(f) = &paths.features {
            check_dir(f, "features folder")?;
        }
        let (cat_index, categories) = map_categories(&pj, paths)?;
        let (anns, image_ids) = annotation_of_image(&pj, paths)?;
        let (caps, orphan_captions) = captions_of_image(&image_ids, &cj);
        let (mut entries, skipped) =
            check_records(&pj, paths, opts, &anns, &cat_index, &categories, &caps)?;
        if let Some(l) = opts.limit {
            entries.truncate(l);
        }

        let mut ds = Dataset {
            caption_records: cj.annotations.len(),
            paths: paths.clone(),
            opts: opts.clone(),
            categories,
            counted: Vec::new(),
            counters: Mutex::new(DecodeCounters::default()),
            stats: LoadStats {
                images_listed: pj.images.len(),
                orphan_captions,
                ..Default::default()
            },
            entries,
        };
        let verified = if opts.verify {
            ds.verify_by_decoding()?
        } else {
            DecodeCounters::default()
        };
        ds.stats.skipped.extend(skipped);
        ds.stats.skipped.sort_by_key(|s| s.image_id);
        if let Some(first) = ds.stats.skipped.first() {
            log::warn!(
                "{}: skipped {} of {} images (data.load.skip_bad), e.g. image {}: {}",
                paths.panoptic_json.display(),
                ds.stats.skipped.len(),
                ds.stats.images_listed,
                first.image_id,
                first.reason
            );
        }
        if ds.entries.is_empty() {
            return Err(DataError::invalid(
                &paths.panoptic_json,
                format!(
                    "no usable sample ({} listed, {} skipped)",
                    ds.stats.images_listed,
                    ds.stats.skipped.len()
                ),
            ));
        }
        ds.stats.samples = ds.entries.len();
        ds.stats.captions = ds.entries.iter().map(|e| e.captions.len()).sum();
        ds.stats.crowd_segments = ds
            .entries
            .iter()
            .map(|e| e.segments.iter().filter(|s| s.iscrowd).count())
            .sum();
        ds.counted = (0..ds.entries.len())
            .map(|_| AtomicBool::new(opts.verify))
            .collect();
        *ds.counters.get_mut().unwrap_or_else(|p| p.into_inner()) = verified;
        Ok(ds)
    }

    /// [`LoadOptions::verify`]: decodes every entry once, drops (under `skip_bad`, listed in the
    /// stats) or fails on those that do not decode, and returns the decode counters.
    fn verify_by_decoding(&mut self) -> Result<DecodeCounters> {
        let mut verified = DecodeCounters::default();
        let results: Vec<Result<(usize, u64, usize)>> = (0..self.entries.len())
            .into_par_iter()
            .map(|i| {
                self.decode(i)
                    .map(|(s, absent)| (s.unlisted_ids.len(), s.unlisted_pixels, absent))
            })
            .collect();
        let mut keep = Vec::with_capacity(self.entries.len());
        for (e, r) in std::mem::take(&mut self.entries).into_iter().zip(results) {
            match r {
                Ok((ids, px, absent)) => {
                    verified.decoded += 1;
                    verified.unlisted_ids += ids;
                    verified.unlisted_pixels += px;
                    verified.listed_absent += absent;
                    keep.push(e);
                }
                Err(err) if self.opts.skip_bad => self.stats.skipped.push(Skipped {
                    image_id: e.image_id,
                    file_name: e.file_name.clone(),
                    reason: err.to_string(),
                }),
                Err(err) => return Err(err),
            }
        }
        self.entries = keep;
        Ok(verified)
    }

    /// Number of usable samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when no sample is usable.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Categories at their contiguous indices (ascending COCO id).
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// Number of categories (the contiguous index range `0..n`).
    pub fn num_categories(&self) -> usize {
        self.categories.len()
    }

    /// The split's file locations the dataset was opened from.
    pub fn paths(&self) -> &SplitPaths {
        &self.paths
    }

    /// `image_id` of sample `i`.
    pub fn image_id(&self, i: usize) -> Option<u64> {
        self.entries.get(i).map(|e| e.image_id)
    }

    /// Captions of sample `i` (no decoding).
    pub fn captions(&self, i: usize) -> Option<&[String]> {
        self.entries.get(i).map(|e| e.captions.as_slice())
    }

    /// Index in `captions.json`'s `annotations` of each caption of sample `i`.
    pub fn caption_rows(&self, i: usize) -> Option<&[usize]> {
        self.entries.get(i).map(|e| e.caption_rows.as_slice())
    }

    /// Number of `annotations` in `captions.json` (rows a text-feature file must have).
    pub fn caption_records(&self) -> usize {
        self.caption_records
    }

    /// Every caption of the split in sample order (for building a vocabulary).
    pub fn all_captions(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .flat_map(|e| e.captions.iter().map(String::as_str))
    }

    /// Open-time stats plus the decode-time counters gathered so far.
    pub fn stats(&self) -> LoadStats {
        let mut s = self.stats.clone();
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        s.decoded = c.decoded;
        s.unlisted_ids = c.unlisted_ids;
        s.unlisted_pixels = c.unlisted_pixels;
        s.listed_absent = c.listed_absent;
        s
    }
}

/// Categories in ascending id order, and each id's contiguous index.
fn map_categories(
    pj: &PanopticJson,
    paths: &SplitPaths,
) -> Result<(HashMap<u64, usize>, Vec<Category>)> {
    let mut cats = pj.categories.clone();
    cats.sort_by_key(|c| c.id);
    for w in cats.windows(2) {
        if w[0].id == w[1].id {
            return Err(DataError::invalid(
                &paths.panoptic_json,
                format!("category id {} is listed twice in `categories`", w[0].id),
            ));
        }
    }
    let cat_index: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let categories: Vec<Category> = cats
        .into_iter()
        .map(|c| Category {
            id: c.id,
            name: c.name,
            is_thing: c.isthing != 0,
        })
        .collect();
    Ok((cat_index, categories))
}

/// The panoptic annotation of each image (one at most), and the image ids (each unique).
fn annotation_of_image<'a>(
    pj: &'a PanopticJson,
    paths: &SplitPaths,
) -> Result<(HashMap<u64, &'a PanopticAnnotation>, HashSet<u64>)> {
    let mut anns: HashMap<u64, &PanopticAnnotation> = HashMap::new();
    for a in &pj.annotations {
        if anns.insert(a.image_id, a).is_some() {
            return Err(DataError::invalid(
                &paths.panoptic_json,
                format!("image {} has two annotations", a.image_id),
            ));
        }
    }
    // A file name is a name inside the split's folders: an absolute path or `..` would let the
    // JSON open any file on the machine.
    let names = pj.images.iter().map(|r| (r.id, &r.file_name));
    for (id, name) in names.chain(pj.annotations.iter().map(|a| (a.image_id, &a.file_name))) {
        let inside = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside || name.is_empty() {
            return Err(DataError::invalid(
                &paths.panoptic_json,
                format!(
                    "image {id}: file_name {name:?} is not a relative name inside the split's \
                     folders (no absolute path, no ..)"
                ),
            ));
        }
    }
    let image_ids: HashSet<u64> = pj.images.iter().map(|r| r.id).collect();
    if image_ids.len() != pj.images.len() {
        return Err(DataError::invalid(
            &paths.panoptic_json,
            "an image id is listed twice in `images`",
        ));
    }
    Ok((anns, image_ids))
}

/// Captions per image of the split with their annotation index (the row of any precomputed
/// features), trimmed, empty ones left out; and how many captions name no image of the split.
fn captions_of_image(
    image_ids: &HashSet<u64>,
    cj: &CaptionsJson,
) -> (HashMap<u64, Vec<(usize, String)>>, usize) {
    let mut caps: HashMap<u64, Vec<(usize, String)>> = HashMap::new();
    let mut orphan_captions = 0;
    for (row, c) in cj.annotations.iter().enumerate() {
        let t = c.caption.trim();
        if !image_ids.contains(&c.image_id) {
            orphan_captions += 1;
        } else if !t.is_empty() {
            caps.entry(c.image_id)
                .or_default()
                .push((row, t.to_string()));
        }
    }
    (caps, orphan_captions)
}

/// Checks every image record (in parallel) in ascending id order: the usable entries, and
/// under `skip_bad` the skipped ones (else the first error).
fn check_records(
    pj: &PanopticJson,
    paths: &SplitPaths,
    opts: &LoadOptions,
    anns: &HashMap<u64, &PanopticAnnotation>,
    cat_index: &HashMap<u64, usize>,
    categories: &[Category],
    caps: &HashMap<u64, Vec<(usize, String)>>,
) -> Result<(Vec<Entry>, Vec<Skipped>)> {
    let mut records = pj.images.clone();
    records.sort_by_key(|r| r.id);
    let checked: Vec<Result<Entry>> = records
        .par_iter()
        .map(|r| {
            check_record(
                paths,
                opts,
                r,
                anns.get(&r.id).copied(),
                cat_index,
                categories,
                caps.get(&r.id),
            )
        })
        .collect();
    let mut entries = Vec::with_capacity(checked.len());
    let mut skipped = Vec::new();
    for (r, c) in records.iter().zip(checked) {
        match c {
            Ok(e) => entries.push(e),
            Err(e) if opts.skip_bad => skipped.push(Skipped {
                image_id: r.id,
                file_name: r.file_name.clone(),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok((entries, skipped))
}

fn check_record(
    paths: &SplitPaths,
    opts: &LoadOptions,
    r: &ImageRecord,
    ann: Option<&PanopticAnnotation>,
    cat_index: &HashMap<u64, usize>,
    categories: &[Category],
    captions: Option<&Vec<(usize, String)>>,
) -> Result<Entry> {
    let pj = &paths.panoptic_json;
    let ann = ann.ok_or_else(|| {
        DataError::invalid(
            pj,
            format!(
                "image {} ({}) has no panoptic annotation",
                r.id, r.file_name
            ),
        )
    })?;
    if ann.segments_info.is_empty() {
        return Err(DataError::NoSegments {
            path: pj.clone(),
            image_id: r.id,
            why: "segments_info is empty",
        });
    }
    let mut seen = HashSet::new();
    let mut segments = Vec::with_capacity(ann.segments_info.len());
    for s in &ann.segments_info {
        if s.id == 0 || s.id >= 1 << 24 {
            return Err(DataError::invalid(
                pj,
                format!(
                    "image {}: segment id {} is not a valid panoptic id (1..2^24)",
                    r.id, s.id
                ),
            ));
        }
        if !seen.insert(s.id) {
            return Err(DataError::invalid(
                pj,
                format!("image {}: segment id {} is listed twice", r.id, s.id),
            ));
        }
        let &category =
            cat_index
                .get(&s.category_id)
                .ok_or_else(|| DataError::UnknownCategory {
                    path: pj.clone(),
                    image_id: r.id,
                    segment_id: s.id,
                    category_id: s.category_id,
                })?;
        segments.push(Segment {
            id: s.id,
            category,
            category_id: s.category_id,
            is_thing: categories[category].is_thing,
            iscrowd: s.iscrowd != 0,
            area: 0,
        });
    }
    let (caption_rows, captions): (Vec<usize>, Vec<String>) = match captions {
        Some(c) if !c.is_empty() => c.iter().cloned().unzip(),
        _ => {
            return Err(DataError::NoCaptions {
                path: paths.captions_json.clone(),
                image_id: r.id,
                file_name: r.file_name.clone(),
            })
        }
    };
    let img_path = paths.images.join(&r.file_name);
    let pan_path = paths.panoptic.join(&ann.file_name);
    let max_pixels = opts
        .max_image_pixels
        .unwrap_or(crate::util::bounded::DEFAULT_MAX_IMAGE_PIXELS);
    let isz = header_dims(&img_path, "image", max_pixels)?;
    let psz = header_dims(&pan_path, "panoptic PNG", max_pixels)?;
    if isz != psz {
        return Err(DataError::SizeMismatch {
            image: img_path,
            image_size: isz,
            panoptic: pan_path,
            panoptic_size: psz,
        });
    }
    if isz != (r.width, r.height) {
        return Err(DataError::invalid(
            pj,
            format!(
                "image {}: record says {}x{} but {} is {}x{}",
                r.id,
                r.width,
                r.height,
                img_path.display(),
                isz.0,
                isz.1
            ),
        ));
    }
    if let Some(dir) = &paths.features {
        let f = dir.join(format!("{}.safetensors", file_stem(&r.file_name)));
        if !f.is_file() {
            return Err(DataError::Missing {
                path: f,
                what: "feature file",
            });
        }
    }
    Ok(Entry {
        image_id: r.id,
        file_name: r.file_name.clone(),
        panoptic_file: ann.file_name.clone(),
        segments,
        captions,
        caption_rows,
    })
}
