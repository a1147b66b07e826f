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
