//! Writing splits of rendered scenes in the COCO layout (and `scenes.json`), and reading the
//! scene records back.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::grammar::{generate_scenes, SynthScene, IMAGE_SIZE, KINDS, STUFF, THING_IDS};
use super::render::render;
use crate::data::coco::{
    CaptionRecord, CaptionsJson, CategoryRecord, ImageRecord, PanopticAnnotation, PanopticJson,
    SegmentRecord,
};
use crate::data::error::{DataError, Result};
use crate::data::rng::SynthRng;

#[derive(Serialize, Deserialize)]
struct ScenesFile {
    scenes: Vec<SynthScene>,
}

/// What [`write_synthetic`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynthStats {
    /// Images written to the train split.
    pub train_images: usize,
    /// Images written to the val split.
    pub val_images: usize,
    /// Captions written, both splits.
    pub captions: usize,
    /// Segments written (things and stuff), both splits.
    pub segments: usize,
    /// Hard-negative groups, both splits.
    pub groups: usize,
}

fn categories() -> Vec<CategoryRecord> {
    let mut c: Vec<CategoryRecord> = KINDS
        .iter()
        .zip(THING_IDS)
        .map(|(k, id)| CategoryRecord {
            id,
            name: k.to_string(),
            isthing: 1,
            supercategory: Some("shape".into()),
        })
        .collect();
    c.extend(STUFF.iter().map(|(id, name, _)| CategoryRecord {
        id: *id,
        name: name.to_string(),
        isthing: 0,
        supercategory: Some("background".into()),
    }));
    c
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        what: "cannot write",
        source: e,
    })
}

fn json_bytes<T: Serialize>(path: &Path, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Write one split (`dir/{images, panoptic}/`, `panoptic.json`, `captions.json`, `scenes.json`).
fn write_split(dir: &Path, scenes: &[SynthScene]) -> Result<(usize, usize)> {
    let (img_dir, pan_dir) = (dir.join("images"), dir.join("panoptic"));
    for d in [&img_dir, &pan_dir] {
        std::fs::create_dir_all(d).map_err(|e| DataError::Io {
            path: d.to_path_buf(),
            what: "cannot create folder",
            source: e,
        })?;
    }
    let rendered: Vec<Result<Vec<SegmentRecord>>> = scenes
        .par_iter()
        .map(|s| {
            let r = render(s)?;
            write_file(&img_dir.join(&s.file_name), &r.image_png)?;
            write_file(&pan_dir.join(&s.file_name), &r.panoptic_png)?;
            Ok(r.segments)
        })
        .collect();
    let mut images = Vec::with_capacity(scenes.len());
    let mut annotations = Vec::with_capacity(scenes.len());
    let mut caps = Vec::new();
    let mut nseg = 0;
    for (s, r) in scenes.iter().zip(rendered) {
        let segments_info = r?;
        nseg += segments_info.len();
        images.push(ImageRecord {
            id: s.image_id,
            file_name: s.file_name.clone(),
            width: IMAGE_SIZE,
            height: IMAGE_SIZE,
        });
        annotations.push(PanopticAnnotation {
            image_id: s.image_id,
            file_name: s.file_name.clone(),
            segments_info,
        });
        for c in &s.captions {
            caps.push(CaptionRecord {
                id: caps.len() as u64 + 1,
                image_id: s.image_id,
                caption: c.clone(),
            });
        }
    }
    let ncap = caps.len();
    let pj = dir.join("panoptic.json");
    let pan = PanopticJson {
        images: images.clone(),
        annotations,
        categories: categories(),
    };
    write_file(&pj, &json_bytes(&pj, &pan)?)?;
    let cj = dir.join("captions.json");
    let c = CaptionsJson {
        images,
        annotations: caps,
    };
    write_file(&cj, &json_bytes(&cj, &c)?)?;
    let sj = dir.join("scenes.json");
    let sf = ScenesFile {
        scenes: scenes.to_vec(),
    };
    write_file(&sj, &json_bytes(&sj, &sf)?)?;
    Ok((ncap, nseg))
}

/// Removes an earlier synthetic split at `dir`; refuses a folder with other contents.
fn clear_split(dir: &Path) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(()); // nothing there yet
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !dir.join("scenes.json").is_file() {
        return Err(DataError::invalid(
            dir,
            "holds files that are not a gshn synthetic dataset: not written into",
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|e| DataError::Io {
        path: dir.to_path_buf(),
        what: "cannot remove the earlier synthetic split",
        source: e,
    })
}

/// Read back a split's `scenes.json`.
pub fn read_scenes(split_dir: &Path) -> Result<Vec<SynthScene>> {
    let p = split_dir.join("scenes.json");
    let bytes =
        crate::util::bounded::read_file(&p).map_err(|e| DataError::io(&p, "scenes file", e))?;
    let f: ScenesFile =
        serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: p, source })?;
    Ok(f.scenes)
}

/// The most images `write_synthetic` writes per split (about 18 GB of PNGs).
pub const MAX_IMAGES_PER_SPLIT: usize = 1_000_000;

/// Write `train` + `val` synthetic scenes under `out/train` and `out/val` (COCO layout, see module
/// docs). A split folder that holds an earlier synthetic dataset (it has `scenes.json`) is
/// replaced whole, so no image of the old one stays behind; a non-empty folder that holds
/// anything else is an error, never written into.
pub fn write_synthetic(out: &Path, train: usize, val: usize, seed: u64) -> Result<SynthStats> {
    // Scenes are generated in memory before any is written: a count past the cap is refused
    // before anything is allocated or removed.
    for (split, n) in [("train", train), ("val", val)] {
        if n > MAX_IMAGES_PER_SPLIT {
            return Err(DataError::contract(format!(
                "synth: --{split} {n} exceeds the limit of {MAX_IMAGES_PER_SPLIT} images per split"
            )));
        }
    }
    let mut rng = SynthRng::new(seed);
    let (ts, vs) = (rng.fork(), rng.fork());
    let tr = generate_scenes(train, &mut SynthRng::new(ts));
    let va = generate_scenes(val, &mut SynthRng::new(vs));
    for split in ["train", "val"] {
        clear_split(&out.join(split))?;
    }
    let (c1, s1) = write_split(&out.join("train"), &tr)?;
    let (c2, s2) = write_split(&out.join("val"), &va)?;
    let groups = |v: &[SynthScene]| v.last().map_or(0, |s| s.group as usize + 1);
    Ok(SynthStats {
        train_images: tr.len(),
        val_images: va.len(),
        captions: c1 + c2,
        segments: s1 + s2,
        groups: groups(&tr) + groups(&va),
    })
}
