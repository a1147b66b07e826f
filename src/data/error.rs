//! The data module's error type. Every message names the file (or the batch) and what is wrong.

use std::path::PathBuf;

/// Result alias for the data module.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, converting or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What it is, e.g. `"panoptic JSON"`.
        what: &'static str,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required file does not exist.
    #[error("{}: missing {what}", path.display())]
    Missing {
        /// The path that does not exist.
        path: PathBuf,
        /// What it should be, e.g. `"panoptic JSON"`.
        what: &'static str,
    },
    /// A JSON file is not valid JSON or does not have the expected structure.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// An image / panoptic PNG could not be decoded (corrupt, truncated, unsupported).
    #[error("{}: cannot decode image: {source}", path.display())]
    Image {
        /// The image or PNG file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A `.safetensors` feature file is corrupt or has the wrong name / rank / dtype / values.
    #[error("{}: bad feature file: {msg}", path.display())]
    Features {
        /// The feature file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The image and its panoptic PNG (or the JSON record) disagree on the size.
    #[error(
        "size mismatch: image {} is {}x{} but panoptic {} is {}x{}",
        image.display(), image_size.0, image_size.1, panoptic.display(), panoptic_size.0, panoptic_size.1
    )]
    SizeMismatch {
        /// The RGB image file.
        image: PathBuf,
        /// Its `(width, height)` in pixels.
        image_size: (u32, u32),
        /// The panoptic PNG file.
        panoptic: PathBuf,
        /// Its `(width, height)` in pixels.
        panoptic_size: (u32, u32),
    },
    /// A segment refers to a `category_id` that `categories` does not list.
    #[error("{}: image {image_id}, segment {segment_id}: category_id {category_id} is not in `categories`", path.display())]
    UnknownCategory {
        /// The panoptic JSON.
        path: PathBuf,
        /// Image of the segment.
        image_id: u64,
        /// The segment's panoptic id.
        segment_id: u32,
        /// The unlisted COCO category id.
        category_id: u64,
    },
    /// An image has no caption in the captions file.
    #[error("{}: image {image_id} ({file_name}) has no caption", path.display())]
    NoCaptions {
        /// The captions JSON.
        path: PathBuf,
        /// The uncaptioned image.
        image_id: u64,
        /// Its `images[].file_name`.
        file_name: String,
    },
    /// An image has no (non-void, listed) segment.
    #[error("{}: image {image_id} has no segment ({why})", path.display())]
    NoSegments {
        /// The panoptic PNG or JSON that shows it.
        path: PathBuf,
        /// The image without segments.
        image_id: u64,
        /// Why none is left, e.g. `"segments_info is empty"`.
        why: &'static str,
    },
    /// Any other inconsistency inside one file.
    #[error("{}: {msg}", path.display())]
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// In-memory data that does not fit a contract (graph building, batching, CSR checks).
    #[error("{0}")]
    Contract(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { path, what }
        } else {
            DataError::Io { path, what, source }
        }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn contract(msg: impl Into<String>) -> Self {
        DataError::Contract(msg.into())
    }
}
