//! Reader for the COCO 2017 panoptic + captions formats (DESIGN §5).
//!
//! A split folder holds `images/*.jpg|png`, `panoptic/*.png` (segment id = R + 256·G + 256²·B,
//! 0 = void), `panoptic.json`, `captions.json` and optionally `features/<image_stem>.safetensors`.
//! [`SplitPaths`] names those five places; [`SplitPaths::coco2017`] gives COCO's own names.
//!
//! [`Dataset::open`] builds a cheap index (the two JSON files + the image / PNG *headers*, no pixel
//! decoding); [`Dataset::get`] decodes one sample on demand, so a 5000-image split costs megabytes,
//! not gigabytes.
//!
//! # Rules for messy data (each has a test in this file)
//!
//! * **Category ids** may be non-contiguous (COCO: 1..=90 things, 92..=200 stuff, with gaps). They are
//!   mapped to contiguous indices `0..num_categories` in **ascending id order**
//!   ([`Dataset::categories`]). Duplicate category ids are an error.
//! * **Segment ids** may be any non-zero 24-bit values, in any order, with gaps. A sample's segments are
//!   indexed `0..n` in the order of `segments_info`; [`SegmentMap::index`] holds that index (−1 = void).
//! * **Greyscale (or CMYK / 16-bit / alpha) images** are converted to 8-bit RGB (grey replicated into
//!   R, G, B; alpha dropped). A **panoptic PNG** must be 8-bit RGB (or RGBA, alpha ignored): any other
//!   colour type is an error, since converting it would silently change the ids.
//! * **`iscrowd` segments** are kept as ordinary segments by default (a crowd region is real image
//!   content — "people", "cars" — and dropping it would leave a hole of void pixels); the flag is kept
//!   on [`Segment::iscrowd`]. [`CrowdPolicy::Drop`] turns their pixels into void instead.
//!   Either way they are counted in [`LoadStats::crowd_segments`].
//! * **Stuff in several pieces**: one segment id = one segment (one graph node), even if its pixels
//!   are disconnected.
//! * **A PNG id not listed in `segments_info`** is treated as void; the ids and pixels are counted in
//!   [`LoadStats::unlisted_ids`] / [`LoadStats::unlisted_pixels`] (and per sample).
//! * **A listed segment with no pixel in the PNG** is dropped (counted in
//!   [`LoadStats::listed_absent`]); if no segment is left the sample is bad ([`DataError::NoSegments`]).
//! * **Image size ≠ panoptic PNG size** → [`DataError::SizeMismatch`] naming both files and sizes.
//!   The `width`/`height` of the `images[]` record must match the files as well.
//! * **Bad data** → an error naming the file: missing file, corrupt PNG / JPEG / JSON / safetensors,
//!   a `category_id` not in `categories`, a segment id 0 or a duplicate id in `segments_info`, an image
//!   without annotation, an image without captions, zero segments. With [`LoadOptions::skip_bad`] such
//!   samples are skipped and listed with their reason in [`LoadStats::skipped`] instead.
//! * Captions whose `image_id` is not an image of the split are ignored (counted). Captions are trimmed;
//!   empty captions are ignored. Samples are ordered by ascending `image_id`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::{DataError, Result};
use super::features::{load_feature_map, FeatureMap};

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// Where one split's files are. Serde-deserialisable so it can sit in a TOML config; relative paths
/// are resolved with [`SplitPaths::resolved`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPaths {
    /// Folder with the RGB images (`images[].file_name` is relative to it).
    pub images: PathBuf,
    /// Folder with the panoptic PNGs (`annotations[].file_name` is relative to it).
    pub panoptic: PathBuf,
    /// COCO panoptic JSON (`images`, `annotations`, `categories`).
    pub panoptic_json: PathBuf,
    /// COCO captions JSON (`annotations[] {image_id, caption}`).
    pub captions_json: PathBuf,
    /// Optional folder of external feature maps `<image_stem>.safetensors` (see
    /// [`super::features::load_feature_map`]). `None`: use the built-in extractor.
    #[serde(default)]
    pub features: Option<PathBuf>,
    /// Optional precomputed caption features (`model.text.source = "features"`): a safetensors
    /// file whose tensor `features` [N, D] has one row per `captions.json` annotation, in file
    /// order.
    #[serde(default)]
    pub text_features: Option<PathBuf>,
}

/// Per-field overrides of a [`SplitPaths`] (every field optional), e.g. from a TOML config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPathsOverride {
    #[serde(default)]
    pub images: Option<PathBuf>,
    #[serde(default)]
    pub panoptic: Option<PathBuf>,
    #[serde(default)]
    pub panoptic_json: Option<PathBuf>,
    #[serde(default)]
    pub captions_json: Option<PathBuf>,
    #[serde(default)]
    pub features: Option<PathBuf>,
    #[serde(default)]
    pub text_features: Option<PathBuf>,
}

impl SplitPaths {
    /// The gshn layout: `root/split/{images, panoptic, panoptic.json, captions.json}`, and
    /// `root/split/features` and `root/split/text_features.safetensors` if they exist.
    pub fn standard(root: &Path, split: &str) -> Self {
        let d = root.join(split);
        let features = d.join("features");
        let text_features = d.join("text_features.safetensors");
        Self {
            images: d.join("images"),
            panoptic: d.join("panoptic"),
            panoptic_json: d.join("panoptic.json"),
            captions_json: d.join("captions.json"),
            features: features.is_dir().then_some(features),
            text_features: text_features.is_file().then_some(text_features),
        }
    }

    /// COCO 2017's own names, e.g. for `split = "val"`: `root/val2017`, `root/panoptic_val2017`,
    /// `root/annotations/panoptic_val2017.json`, `root/annotations/captions_val2017.json`.
    pub fn coco2017(root: &Path, split: &str) -> Self {
        let s = format!("{split}2017");
        Self {
            images: root.join(&s),
            panoptic: root.join(format!("panoptic_{s}")),
            panoptic_json: root.join("annotations").join(format!("panoptic_{s}.json")),
            captions_json: root.join("annotations").join(format!("captions_{s}.json")),
            features: None,
            text_features: None,
        }
    }

    /// Relative paths joined onto `base` (absolute paths unchanged).
    pub fn resolved(&self, base: &Path) -> Self {
        let j = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        Self {
            images: j(&self.images),
            panoptic: j(&self.panoptic),
            panoptic_json: j(&self.panoptic_json),
            captions_json: j(&self.captions_json),
            features: self.features.as_deref().map(j),
            text_features: self.text_features.as_deref().map(j),
        }
    }

    /// Replace the fields the override sets (relative override paths are joined onto `base`).
    pub fn with_overrides(mut self, o: &SplitPathsOverride, base: &Path) -> Self {
        let j = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        if let Some(p) = &o.images {
            self.images = j(p);
        }
        if let Some(p) = &o.panoptic {
            self.panoptic = j(p);
        }
        if let Some(p) = &o.panoptic_json {
            self.panoptic_json = j(p);
        }
        if let Some(p) = &o.captions_json {
            self.captions_json = j(p);
        }
        if let Some(p) = &o.features {
            self.features = Some(j(p));
        }
        if let Some(p) = &o.text_features {
            self.text_features = Some(j(p));
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// JSON formats (shared with the synthetic writer)
// ---------------------------------------------------------------------------------------------

fn int_or_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrBool {
        I(u64),
        B(bool),
    }
    Ok(match IntOrBool::deserialize(d)? {
        IntOrBool::I(i) => u8::from(i != 0),
        IntOrBool::B(b) => u8::from(b),
    })
}

/// `images[]` record of a COCO JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// `segments_info[]` record of a COCO panoptic annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub id: u32,
    pub category_id: u64,
    #[serde(default, deserialize_with = "int_or_bool")]
    pub iscrowd: u8,
    /// `[x, y, w, h]` in pixels (informational; geometry is recomputed from the PNG).
    #[serde(default)]
    pub bbox: Vec<f64>,
    /// Pixel count (informational; recomputed from the PNG).
    #[serde(default)]
    pub area: f64,
}

/// `annotations[]` record of a COCO panoptic JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanopticAnnotation {
    pub image_id: u64,
    pub file_name: String,
    pub segments_info: Vec<SegmentRecord>,
}

/// `categories[]` record of a COCO panoptic JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRecord {
    pub id: u64,
    pub name: String,
    #[serde(default, deserialize_with = "int_or_bool")]
    pub isthing: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// A COCO panoptic JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanopticJson {
    pub images: Vec<ImageRecord>,
    pub annotations: Vec<PanopticAnnotation>,
    pub categories: Vec<CategoryRecord>,
}

/// `annotations[]` record of a COCO captions JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    #[serde(default)]
    pub id: u64,
    pub image_id: u64,
    pub caption: String,
}

/// A COCO captions JSON file (`images` is optional and ignored by the reader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionsJson {
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    pub annotations: Vec<CaptionRecord>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, what, e))?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Public data types
// ---------------------------------------------------------------------------------------------

/// What to do with `iscrowd` segments (see the module rules).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrowdPolicy {
    /// Keep as ordinary segments (default).
    #[default]
    Keep,
    /// Turn their pixels into void.
    Drop,
}

/// Options of [`Dataset::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// Skip bad samples (recorded in [`LoadStats::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Decode every sample once at open (one at a time: bounded memory), so decode-time problems
    /// (corrupt pixel data, zero segments, bad feature files) are found up front — and, with
    /// `skip_bad`, removed. Without it such problems surface as an error from [`Dataset::get`].
    pub verify: bool,
    /// `iscrowd` rule.
    pub crowd: CrowdPolicy,
    /// Keep only the first `limit` usable samples (by ascending image id).
    pub limit: Option<usize>,
}

/// A category, at its contiguous index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// The COCO `id`.
    pub id: u64,
    pub name: String,
    pub is_thing: bool,
}

/// A skipped sample and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub image_id: u64,
    pub file_name: String,
    /// The error message (names the file).
    pub reason: String,
}

/// Counters of [`Dataset::open`] plus those gathered while decoding (each sample counted once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// `images[]` records in the panoptic JSON.
    pub images_listed: usize,
    /// Usable samples ([`Dataset::len`]).
    pub samples: usize,
    /// Samples skipped under `skip_bad`, with reasons.
    pub skipped: Vec<Skipped>,
    /// Captions in total for the usable samples.
    pub captions: usize,
    /// Captions whose `image_id` is not an image of the split (ignored).
    pub orphan_captions: usize,
    /// `iscrowd` segments in the usable samples (kept or dropped per [`CrowdPolicy`]).
    pub crowd_segments: usize,
    /// Samples decoded so far (the counters below cover these).
    pub decoded: usize,
    /// (sample, id) pairs found in a PNG but not listed in `segments_info` (treated as void).
    pub unlisted_ids: usize,
    /// Pixels carrying such unlisted ids.
    pub unlisted_pixels: u64,
    /// Listed segments with no pixel in their PNG (dropped).
    pub listed_absent: usize,
}

/// One segment of a decoded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Panoptic segment id (R + 256·G + 256²·B).
    pub id: u32,
    /// Contiguous category index (see [`Dataset::categories`]).
    pub category: usize,
    /// The COCO `category_id`.
    pub category_id: u64,
    pub is_thing: bool,
    pub iscrowd: bool,
    /// Pixel count in the PNG (> 0).
    pub area: u64,
}

/// A decoded panoptic map: per pixel the index into `segments`, or −1 for void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMap {
    pub width: u32,
    pub height: u32,
    /// `[height * width]`, row-major; −1 = void, else an index into `segments`.
    pub index: Vec<i32>,
    pub segments: Vec<Segment>,
}

/// One decoded sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image_id: u64,
    /// `images[].file_name`.
    pub file_name: String,
    /// The image, 8-bit RGB.
    pub image: RgbImage,
    pub segments: SegmentMap,
    pub captions: Vec<String>,
    /// External feature map, when [`SplitPaths::features`] is set.
    pub features: Option<FeatureMap>,
    /// Ids found in the PNG but not listed (treated as void), ascending.
    pub unlisted_ids: Vec<u32>,
    pub unlisted_pixels: u64,
}

// ---------------------------------------------------------------------------------------------
// Dataset
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    image_id: u64,
    file_name: String,
    panoptic_file: String,
    segments: Vec<Segment>, // area = 0 until decoded
    captions: Vec<String>,
    /// Index of each caption in `captions.json`'s `annotations`.
    caption_rows: Vec<usize>,
}

#[derive(Debug, Default)]
struct DecodeCounters {
    decoded: usize,
    unlisted_ids: usize,
    unlisted_pixels: u64,
    listed_absent: usize,
}

/// A split: a cheap index built at open, samples decoded on demand by [`Dataset::get`].
#[derive(Debug)]
pub struct Dataset {
    caption_records: usize,
    paths: SplitPaths,
    opts: LoadOptions,
    categories: Vec<Category>,
    entries: Vec<Entry>,
    stats: LoadStats,
    counted: Vec<AtomicBool>,
    counters: Mutex<DecodeCounters>,
}

fn file_stem(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

fn header_dims(path: &Path, what: &'static str) -> Result<(u32, u32)> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, what, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, what, e))?;
    reader.into_dimensions().map_err(|source| DataError::Image {
        path: path.to_path_buf(),
        source,
    })
}

fn decode_any(path: &Path, what: &'static str) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, what, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, what, e))?;
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
        let pj: PanopticJson = read_json(&paths.panoptic_json, "panoptic JSON")?;
        let cj: CaptionsJson = read_json(&paths.captions_json, "captions JSON")?;
        check_dir(&paths.images, "images folder")?;
        check_dir(&paths.panoptic, "panoptic folder")?;
        if let Some(f) = &paths.features {
            check_dir(f, "features folder")?;
        }

        // Categories: ascending id → contiguous index.
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
        let cat_index: HashMap<u64, usize> =
            cats.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        let categories: Vec<Category> = cats
            .into_iter()
            .map(|c| Category {
                id: c.id,
                name: c.name,
                is_thing: c.isthing != 0,
            })
            .collect();

        let mut anns: HashMap<u64, &PanopticAnnotation> = HashMap::new();
        for a in &pj.annotations {
            if anns.insert(a.image_id, a).is_some() {
                return Err(DataError::invalid(
                    &paths.panoptic_json,
                    format!("image {} has two annotations", a.image_id),
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
        // Captions per image with their annotation index (the row of any precomputed features).
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

        let mut records = pj.images.clone();
        records.sort_by_key(|r| r.id);
        let checked: Vec<Result<Entry>> = records
            .par_iter()
            .map(|r| {
                check_record(
                    paths,
                    r,
                    anns.get(&r.id).copied(),
                    &cat_index,
                    &categories,
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
        let mut verified = DecodeCounters::default();
        if opts.verify {
            let results: Vec<Result<(usize, u64, usize)>> = (0..ds.entries.len())
                .into_par_iter()
                .map(|i| {
                    ds.decode(i)
                        .map(|(s, absent)| (s.unlisted_ids.len(), s.unlisted_pixels, absent))
                })
                .collect();
            let mut keep = Vec::with_capacity(ds.entries.len());
            for (e, r) in std::mem::take(&mut ds.entries).into_iter().zip(results) {
                match r {
                    Ok((ids, px, absent)) => {
                        verified.decoded += 1;
                        verified.unlisted_ids += ids;
                        verified.unlisted_pixels += px;
                        verified.listed_absent += absent;
                        keep.push(e);
                    }
                    Err(err) if opts.skip_bad => ds.stats.skipped.push(Skipped {
                        image_id: e.image_id,
                        file_name: e.file_name.clone(),
                        reason: err.to_string(),
                    }),
                    Err(err) => return Err(err),
                }
            }
            ds.entries = keep;
        }
        ds.stats.skipped.extend(skipped);
        ds.stats.skipped.sort_by_key(|s| s.image_id);
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

    /// Number of usable samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Categories at their contiguous indices (ascending COCO id).
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    pub fn num_categories(&self) -> usize {
        self.categories.len()
    }

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

    fn decode(&self, i: usize) -> Result<(Sample, usize)> {
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

fn check_record(
    paths: &SplitPaths,
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
    let isz = header_dims(&img_path, "image")?;
    let psz = header_dims(&pan_path, "panoptic PNG")?;
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
