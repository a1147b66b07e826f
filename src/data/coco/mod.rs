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
//! # Rules for messy data (each has a test in `tests/data_coco.rs`)
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
//!   [`LoadStats::listed_absent`]); if no segment is left the sample is bad ([`DataError::NoSegments`](crate::data::DataError::NoSegments)).
//! * **Image size ≠ panoptic PNG size** → [`DataError::SizeMismatch`](crate::data::DataError::SizeMismatch) naming both files and sizes.
//!   The `width`/`height` of the `images[]` record must match the files as well.
//! * **Bad data** → an error naming the file: missing file, corrupt PNG / JPEG / JSON / safetensors,
//!   a `category_id` not in `categories`, a segment id 0 or a duplicate id in `segments_info`, an image
//!   without annotation, an image without captions, zero segments. With [`LoadOptions::skip_bad`] such
//!   samples are skipped and listed with their reason in [`LoadStats::skipped`] instead.
//! * Captions whose `image_id` is not an image of the split are ignored (counted). Captions are trimmed;
//!   empty captions are ignored. Samples are ordered by ascending `image_id`.

mod decode;
mod open;
mod paths;
mod schema;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::features::FeatureMap;

pub use open::Dataset;
pub use paths::{SplitPaths, SplitPathsOverride};
pub use schema::{
    CaptionRecord, CaptionsJson, CategoryRecord, ImageRecord, PanopticAnnotation, PanopticJson,
    SegmentRecord,
};

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
    /// The largest JSON file read (bytes); None: `util::bounded::DEFAULT_MAX_FILE_BYTES`.
    pub max_file_bytes: Option<u64>,
    /// The largest image (pixels, from its header, before decoding); None:
    /// `util::bounded::DEFAULT_MAX_IMAGE_PIXELS`.
    pub max_image_pixels: Option<u64>,
}

/// A category, at its contiguous index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// The COCO `id`.
    pub id: u64,
    /// Category name, e.g. `"person"`.
    pub name: String,
    /// `true` for a thing (countable), `false` for stuff.
    pub is_thing: bool,
}

/// A skipped sample and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// COCO image id.
    pub image_id: u64,
    /// `images[].file_name` of the sample.
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
    /// Whether its category is a thing (else stuff).
    pub is_thing: bool,
    /// The COCO `iscrowd` flag (kept unless [`CrowdPolicy::Drop`]).
    pub iscrowd: bool,
    /// Pixel count in the PNG (> 0).
    pub area: u64,
}

/// A decoded panoptic map: per pixel the index into `segments`, or −1 for void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMap {
    /// Map width in pixels (= image width).
    pub width: u32,
    /// Map height in pixels (= image height).
    pub height: u32,
    /// `[height * width]`, row-major; −1 = void, else an index into `segments`.
    pub index: Vec<i32>,
    /// The segments, in `segments_info` order (absent ones dropped).
    pub segments: Vec<Segment>,
}

/// One decoded sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// COCO image id.
    pub image_id: u64,
    /// `images[].file_name`.
    pub file_name: String,
    /// The image, 8-bit RGB.
    pub image: RgbImage,
    /// Its decoded panoptic map.
    pub segments: SegmentMap,
    /// Trimmed, non-empty captions (at least one).
    pub captions: Vec<String>,
    /// External feature map, when [`SplitPaths::features`] is set.
    pub features: Option<FeatureMap>,
    /// Ids found in the PNG but not listed (treated as void), ascending.
    pub unlisted_ids: Vec<u32>,
    /// Pixels carrying those unlisted ids.
    pub unlisted_pixels: u64,
}
