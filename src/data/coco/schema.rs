//! The JSON formats of COCO panoptic and captions files (shared with the synthetic writer).

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::data::error::{DataError, Result};

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
    /// Image id, referenced by annotations and captions.
    pub id: u64,
    /// Image file name, relative to [`SplitPaths::images`](crate::data::SplitPaths::images).
    pub file_name: String,
    /// Width in pixels (must match the image and PNG files).
    pub width: u32,
    /// Height in pixels (must match the image and PNG files).
    pub height: u32,
}

/// `segments_info[]` record of a COCO panoptic annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Segment id, non-zero, R + 256·G + 256²·B in the PNG.
    pub id: u32,
    /// COCO category id (must be in `categories`).
    pub category_id: u64,
    /// 1 for a crowd region, else 0 (JSON int or bool).
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
    /// Id of the annotated image.
    pub image_id: u64,
    /// Panoptic PNG name, relative to the panoptic folder.
    pub file_name: String,
    /// The segments of the PNG.
    pub segments_info: Vec<SegmentRecord>,
}

/// `categories[]` record of a COCO panoptic JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRecord {
    /// COCO category id (possibly non-contiguous).
    pub id: u64,
    /// Category name.
    pub name: String,
    /// 1 for a thing, 0 for stuff (JSON int or bool).
    #[serde(default, deserialize_with = "int_or_bool")]
    pub isthing: u8,
    /// Optional COCO supercategory name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// A COCO panoptic JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanopticJson {
    /// The images of the split.
    pub images: Vec<ImageRecord>,
    /// One panoptic annotation per image.
    pub annotations: Vec<PanopticAnnotation>,
    /// The category table.
    pub categories: Vec<CategoryRecord>,
}

/// `annotations[]` record of a COCO captions JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    /// Caption annotation id (optional).
    #[serde(default)]
    pub id: u64,
    /// Id of the captioned image.
    pub image_id: u64,
    /// The caption text (trimmed by the reader).
    pub caption: String,
}

/// A COCO captions JSON file (`images` is optional and ignored by the reader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionsJson {
    /// Optional image table (ignored by the reader).
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    /// The captions, several per image.
    pub annotations: Vec<CaptionRecord>,
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    max_bytes: Option<u64>,
) -> Result<T> {
    // Parsed from a stream: one copy in memory (the parsed records), and a source that is no
    // JSON (e.g. /dev/zero) fails at its first byte.
    let limit = max_bytes.unwrap_or(crate::util::bounded::DEFAULT_MAX_FILE_BYTES);
    let (reader, _) = crate::util::bounded::open_bounded(path, limit, "data.load.max_file_bytes")
        .map_err(|e| DataError::io(path, what, e))?;
    serde_json::from_reader(std::io::BufReader::new(reader)).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })
}
