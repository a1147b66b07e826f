//! Where a split's files are: [`SplitPaths`], the gshn and COCO 2017 layouts, and overrides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// [`load_feature_map`](crate::data::features::load_feature_map)). `None`: use the built-in extractor.
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
    /// Replaces [`SplitPaths::images`].
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// Replaces [`SplitPaths::panoptic`].
    #[serde(default)]
    pub panoptic: Option<PathBuf>,
    /// Replaces [`SplitPaths::panoptic_json`].
    #[serde(default)]
    pub panoptic_json: Option<PathBuf>,
    /// Replaces [`SplitPaths::captions_json`].
    #[serde(default)]
    pub captions_json: Option<PathBuf>,
    /// Replaces [`SplitPaths::features`].
    #[serde(default)]
    pub features: Option<PathBuf>,
    /// Replaces [`SplitPaths::text_features`].
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
            // Whatever is there (even a device or a pipe) goes to the reader, which names it.
            text_features: text_features.exists().then_some(text_features),
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
