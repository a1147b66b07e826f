//! Synthetic relational scenes — the built-in default dataset (DESIGN §5), written in the COCO layout
//! that [`super::coco`] reads (`gshn synth --out DIR --train N --val M --seed S`).
//!
//! * 64 × 64 RGB PNG images; 2–4 shapes (circle, square, triangle, diamond) × 6 colours × 2 sizes
//!   (small / large), each in its own cell of a 3 × 3 grid (±1 px jitter), so shapes never overlap
//!   and every pair is in a clear left/right and/or above/below relation.
//! * Background = stuff: either one `wall` segment, or `sky` above `ground` (horizon at a random row);
//!   lightly textured (deterministic per-pixel noise). Thing category ids 1..=4, stuff 101..=103
//!   (non-contiguous on purpose). Segment ids spread over R, G and B (thing slot `s` → `(s+1)·40503`,
//!   stuff 5001 / 5002).
//! * 3–5 captions per image, each stating attributes **and** a spatial relation:
//!   "a small red circle to the left of a large blue square" (templates vary; relations: to the left
//!   of / to the right of / above / below). Within a scene every object has a unique
//!   (size, colour, kind) description, so captions are unambiguous.
//! * **Hard negatives**: scenes come in groups of 3 (a trailing group may be shorter): a `base`, a
//!   `swap` variant (two objects exchange positions: relations between them flip, nothing else
//!   changes) and an `attribute` variant (one object changes one of colour / size / kind). Each
//!   variant's first caption is about what changed; the base's first two captions cover both.
//! * Per split, `scenes.json` records every scene (group, variant, objects with attributes, cells,
//!   centres and segment ids) for evaluation and tests; the reader ignores it.
//! * Deterministic: scenes are drawn sequentially from a splitmix64 stream seeded by `seed`; rendering
//!   (parallel) is a pure function of the scene. Same seed → byte-identical files.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::coco::{
    CaptionRecord, CaptionsJson, CategoryRecord, ImageRecord, PanopticAnnotation, PanopticJson,
    SegmentRecord,
};
use super::error::{DataError, Result};
use super::rng::SplitMix64;

/// Image side in pixels.
pub const IMAGE_SIZE: u32 = 64;
const GRID: i32 = 3;

pub const KINDS: [&str; 4] = ["circle", "square", "triangle", "diamond"];
pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 215, 40]),
    ("purple", [150, 50, 190]),
    ("orange", [245, 140, 20]),
];
pub const SIZES: [&str; 2] = ["small", "large"];
const RADIUS: [i32; 2] = [5, 9];
/// Stuff: (category id, name, colour).
const STUFF: [(u64, &str, [u8; 3]); 3] = [
    (101, "sky", [150, 185, 215]),
    (102, "ground", [120, 105, 85]),
    (103, "wall", [135, 135, 135]),
];
const THING_IDS: [u64; 4] = [1, 2, 3, 4];

/// Relation of `a` to `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
}

/// The hard negative of a caption in this grammar: the same words with its two object phrases
/// exchanged ("a small red circle to the left of a large blue square" → "a large blue square
/// to the left of a small red circle"). It states the opposite relation, so it is false for
/// the image, yet has exactly the caption's bag of words: only an encoder that reads word
/// order and binds attributes to objects can tell the two apart. `None` when the caption does
/// not have the form `… A <relation> (a|the) B …` with three-word object phrases.
pub fn exchange_objects(caption: &str) -> Option<String> {
    let mut w: Vec<&str> = caption.split_whitespace().collect();
    let (start, len) = (0..w.len()).find_map(|i| match w[i..] {
        ["to", "the", "left" | "right", "of", ..] => Some((i, 4)),
        ["above" | "below", ..] => Some((i, 1)),
        _ => None,
    })?;
    let a_end = if start > 0 && w[start - 1] == "is" {
        start - 1
    } else {
        start
    };
    let b_start = start + len + 1; // after the article
    if a_end < 3 || b_start + 3 > w.len() || !matches!(w[b_start - 1], "a" | "the") {
        return None;
    }
    let (a, b) = (a_end - 3, b_start);
    if w[a..a + 3] == w[b..b + 3] {
        return None;
    }
    for k in 0..3 {
        w.swap(a + k, b + k);
    }
    Some(w.join(" "))
}

/// One shape of a scene.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthObject {
    pub kind: String,
    pub color: String,
    pub size: String,
    /// Grid cell.
    pub row: i32,
    pub col: i32,
    /// Centre in pixels.
    pub cx: i32,
    pub cy: i32,
    /// Panoptic segment id.
    pub segment_id: u32,
}

impl SynthObject {
    /// "small red circle".
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.size, self.color, self.kind)
    }
    fn radius(&self) -> i32 {
        RADIUS[usize::from(self.size == "large")]
    }
    fn rgb(&self) -> [u8; 3] {
        COLORS
            .iter()
            .find(|c| c.0 == self.color)
            .map_or([0, 0, 0], |c| c.1)
    }
    fn category_id(&self) -> u64 {
        THING_IDS[KINDS.iter().position(|k| *k == self.kind).unwrap_or(0)]
    }
}

/// The relations of `a` to `b` that hold (by grid cell: different column → left/right, different
/// row → above/below).
pub fn relations(a: &SynthObject, b: &SynthObject) -> Vec<Relation> {
    let mut r = Vec::new();
    if a.col < b.col {
        r.push(Relation::LeftOf);
    } else if a.col > b.col {
        r.push(Relation::RightOf);
    }
    if a.row < b.row {
        r.push(Relation::Above);
    } else if a.row > b.row {
        r.push(Relation::Below);
    }
    r
}

/// One scene with its hard-negative bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthScene {
    pub image_id: u64,
    pub file_name: String,
    /// Hard-negative group; scenes of a group differ from the group's base in exactly one thing.
    pub group: u64,
    /// "base", "swap" or "attribute".
    pub variant: String,
    /// Human-readable change w.r.t. the base ("" for the base).
    pub change: String,
    /// Horizon row (sky above, ground below) or `None` for a single `wall`.
    pub horizon: Option<i32>,
    pub texture_seed: u64,
    pub objects: Vec<SynthObject>,
    pub captions: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ScenesFile {
    scenes: Vec<SynthScene>,
}

/// What [`write_synthetic`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynthStats {
    pub train_images: usize,
    pub val_images: usize,
    pub captions: usize,
    pub segments: usize,
    pub groups: usize,
}

fn unique_desc(objs: &[SynthObject]) -> bool {
    let mut d: Vec<String> = objs.iter().map(SynthObject::describe).collect();
    d.sort();
    d.windows(2).all(|w| w[0] != w[1])
}

fn place(rng: &mut SplitMix64, row: i32, col: i32) -> (i32, i32) {
    let cell = IMAGE_SIZE as f32 / GRID as f32;
    let c = |i: i32| ((i as f32 + 0.5) * cell).floor() as i32;
    (c(col) + rng.range_i32(-1, 1), c(row) + rng.range_i32(-1, 1))
}

fn random_objects(rng: &mut SplitMix64) -> Vec<SynthObject> {
    let n = 2 + rng.below(3);
    let mut cells: Vec<i32> = (0..GRID * GRID).collect();
    rng.shuffle(&mut cells);
    loop {
        let objs: Vec<SynthObject> = cells[..n]
            .iter()
            .enumerate()
            .map(|(s, &cell)| {
                let (row, col) = (cell / GRID, cell % GRID);
                let (cx, cy) = place(rng, row, col);
                SynthObject {
                    kind: KINDS[rng.below(KINDS.len())].into(),
                    color: COLORS[rng.below(COLORS.len())].0.into(),
                    size: SIZES[rng.below(2)].into(),
                    row,
                    col,
                    cx,
                    cy,
                    segment_id: (s as u32 + 1) * 40_503,
                }
            })
            .collect();
        if unique_desc(&objs) {
            return objs;
        }
    }
}

/// Change one attribute of object `o` (keeping descriptions unique). Returns the change text.
fn change_attribute(rng: &mut SplitMix64, objs: &mut [SynthObject], o: usize) -> String {
    loop {
        let before = objs[o].describe();
        let mut cand = objs.to_vec();
        match rng.below(3) {
            0 => cand[o].color = COLORS[rng.below(COLORS.len())].0.into(),
            1 => cand[o].size = SIZES[usize::from(cand[o].size == "small")].into(),
            _ => cand[o].kind = KINDS[rng.below(KINDS.len())].into(),
        }
        if cand[o] != objs[o] && unique_desc(&cand) {
            let after = cand[o].describe();
            objs.clone_from_slice(&cand);
            return format!("{before} -> {after}");
        }
    }
}

const TEMPLATES: [&str; 5] = [
    "a {A} {R} a {B}",
    "there is a {A} {R} a {B}",
    "the {A} is {R} the {B}",
    "a {A} is {R} a {B}{BG}",
    "{N} shapes: a {A} {R} a {B}",
];

fn caption(rng: &mut SplitMix64, scene: &SynthScene, a: usize, b: usize) -> String {
    let (oa, ob) = (&scene.objects[a], &scene.objects[b]);
    let rels = relations(oa, ob);
    let rel = rels[rng.below(rels.len())];
    let bg = match scene.horizon {
        Some(_) => " under the sky",
        None => " in front of a wall",
    };
    let n = ["", "", "two", "three", "four"][scene.objects.len().min(4)];
    TEMPLATES[rng.below(TEMPLATES.len())]
        .replace("{A}", &oa.describe())
        .replace("{B}", &ob.describe())
        .replace("{R}", rel.phrase())
        .replace("{BG}", bg)
        .replace("{N}", n)
}

fn write_captions(rng: &mut SplitMix64, scene: &mut SynthScene, focus: &[(usize, usize)]) {
    let n = 3 + rng.below(3);
    let k = scene.objects.len();
    let mut caps = Vec::with_capacity(n);
    for i in 0..n {
        // Up to 8 draws to avoid an exact duplicate caption (rare leftovers are kept).
        let mut text = String::new();
        for _ in 0..8 {
            let (a, b) = match focus.get(i) {
                Some(&(a, b)) if rng.chance(0.5) => (b, a),
                Some(&p) => p,
                None => {
                    let a = rng.below(k);
                    (a, (a + 1 + rng.below(k - 1)) % k)
                }
            };
            text = caption(rng, scene, a, b);
            if !caps.contains(&text) {
                break;
            }
        }
        caps.push(text);
    }
    scene.captions = caps;
}

/// Draw `n` scenes (groups of base / swap / attribute) from `rng`. Image ids are `1..=n`.
pub fn generate_scenes(n: usize, rng: &mut SplitMix64) -> Vec<SynthScene> {
    let mut out = Vec::with_capacity(n);
    let mut group = 0u64;
    while out.len() < n {
        let objects = random_objects(rng);
        let k = objects.len();
        let horizon = rng.chance(0.5).then(|| rng.range_i32(24, 40));
        let texture_seed = rng.fork();
        let (sa, sb) = {
            let a = rng.below(k);
            (a, (a + 1 + rng.below(k - 1)) % k)
        };
        let o = rng.below(k);
        let other = (o + 1 + rng.below(k - 1)) % k;
        let mut base = SynthScene {
            image_id: 0,
            file_name: String::new(),
            group,
            variant: "base".into(),
            change: String::new(),
            horizon,
            texture_seed,
            objects,
            captions: Vec::new(),
        };
        let mut swap = base.clone();
        swap.variant = "swap".into();
        {
            let (a, b) = (&swap.objects[sa], &swap.objects[sb]);
            swap.change = format!("swap {} <-> {}", a.describe(), b.describe());
            let pa = (a.row, a.col, a.cx, a.cy);
            let pb = (b.row, b.col, b.cx, b.cy);
            let o = &mut swap.objects;
            (o[sa].row, o[sa].col, o[sa].cx, o[sa].cy) = pb;
            (o[sb].row, o[sb].col, o[sb].cx, o[sb].cy) = pa;
        }
        let mut attr = base.clone();
        attr.variant = "attribute".into();
        attr.change = change_attribute(rng, &mut attr.objects, o);
        write_captions(rng, &mut base, &[(sa, sb), (o, other)]);
        write_captions(rng, &mut swap, &[(sa, sb)]);
        write_captions(rng, &mut attr, &[(o, other)]);
        for mut s in [base, swap, attr] {
            if out.len() == n {
                break;
            }
            s.image_id = out.len() as u64 + 1;
            s.file_name = format!("{:012}.png", s.image_id);
            out.push(s);
        }
        group += 1;
    }
    out
}

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
    let v = SplitMix64::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    (v % (2 * amp as u64 + 1)) as i32 - amp
}

struct Rendered {
    image_png: Vec<u8>,
    panoptic_png: Vec<u8>,
    segments: Vec<SegmentRecord>,
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

fn render(scene: &SynthScene) -> Result<Rendered> {
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

/// Read back a split's `scenes.json`.
pub fn read_scenes(split_dir: &Path) -> Result<Vec<SynthScene>> {
    let p = split_dir.join("scenes.json");
    let bytes = std::fs::read(&p).map_err(|e| DataError::io(&p, "scenes file", e))?;
    let f: ScenesFile =
        serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: p, source })?;
    Ok(f.scenes)
}

/// Write `train` + `val` synthetic scenes under `out/train` and `out/val` (COCO layout, see module
/// docs). Existing files of the same names are overwritten.
pub fn write_synthetic(out: &Path, train: usize, val: usize, seed: u64) -> Result<SynthStats> {
    let mut rng = SplitMix64::new(seed);
    let (ts, vs) = (rng.fork(), rng.fork());
    let tr = generate_scenes(train, &mut SplitMix64::new(ts));
    let va = generate_scenes(val, &mut SplitMix64::new(vs));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batch::{collate, BatchCapacity};
    use crate::data::coco::{Dataset, LoadOptions, SplitPaths};
    use crate::data::features::FeatureConfig;
    use crate::data::graph::{graph_from_sample, GraphConfig};

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gshn-synth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn pos(o: &SynthObject) -> (i32, i32, i32, i32) {
        (o.row, o.col, o.cx, o.cy)
    }

    #[test]
    fn hard_negatives_differ_in_exactly_one_thing() {
        let scenes = generate_scenes(300, &mut SplitMix64::new(11));
        assert_eq!(scenes.len(), 300);
        let (mut swaps, mut attrs) = (0, 0);
        for s in &scenes {
            assert!(
                unique_desc(&s.objects),
                "image {}: ambiguous descriptions",
                s.image_id
            );
            assert!((2..=4).contains(&s.objects.len()));
            assert!((3..=5).contains(&s.captions.len()));
            let base = scenes
                .iter()
                .find(|b| b.group == s.group && b.variant == "base")
                .unwrap();
            assert_eq!(
                (s.horizon, s.texture_seed),
                (base.horizon, base.texture_seed)
            );
            assert_eq!(s.objects.len(), base.objects.len());
            let pairs: Vec<_> = s.objects.iter().zip(&base.objects).collect();
            match s.variant.as_str() {
                "base" => {}
                "swap" => {
                    swaps += 1;
                    // Attributes all equal; exactly two objects moved, onto each other's place.
                    assert!(pairs.iter().all(|(a, b)| a.describe() == b.describe()));
                    let moved: Vec<usize> = (0..pairs.len())
                        .filter(|&i| pos(pairs[i].0) != pos(pairs[i].1))
                        .collect();
                    assert_eq!(moved.len(), 2, "image {}", s.image_id);
                    let (i, j) = (moved[0], moved[1]);
                    assert_eq!(pos(&s.objects[i]), pos(&base.objects[j]));
                    assert_eq!(pos(&s.objects[j]), pos(&base.objects[i]));
                    // The relation between them flipped, and the first caption is about that pair.
                    let flip = |r: Relation| match r {
                        Relation::LeftOf => Relation::RightOf,
                        Relation::RightOf => Relation::LeftOf,
                        Relation::Above => Relation::Below,
                        Relation::Below => Relation::Above,
                    };
                    let now = relations(&s.objects[i], &s.objects[j]);
                    let was: Vec<Relation> = relations(&base.objects[i], &base.objects[j])
                        .into_iter()
                        .map(flip)
                        .collect();
                    assert_eq!(now, was);
                    assert!(
                        s.captions[0].contains(&s.objects[i].describe())
                            && s.captions[0].contains(&s.objects[j].describe())
                    );
                }
                "attribute" => {
                    attrs += 1;
                    assert!(pairs
                        .iter()
                        .all(|(a, b)| pos(a) == pos(b) && a.segment_id == b.segment_id));
                    let changed: Vec<_> = pairs.iter().filter(|(a, b)| a != b).collect();
                    assert_eq!(changed.len(), 1, "image {}", s.image_id);
                    let (a, b) = changed[0];
                    let diffs = [a.kind != b.kind, a.color != b.color, a.size != b.size];
                    assert_eq!(
                        diffs.iter().filter(|&&d| d).count(),
                        1,
                        "image {}: {}",
                        s.image_id,
                        s.change
                    );
                    assert!(s.captions[0].contains(&a.describe()));
                }
                v => panic!("unknown variant {v}"),
            }
        }
        assert_eq!((swaps, attrs), (100, 100));
    }

    #[test]
    fn captions_state_attributes_and_true_relations() {
        let scenes = generate_scenes(150, &mut SplitMix64::new(4));
        let mut seen = std::collections::HashSet::new();
        for s in &scenes {
            for c in &s.captions {
                let rels: Vec<Relation> = [
                    Relation::LeftOf,
                    Relation::RightOf,
                    Relation::Above,
                    Relation::Below,
                ]
                .into_iter()
                .filter(|r| c.contains(r.phrase()))
                .collect();
                assert_eq!(rels.len(), 1, "{c:?}");
                let r = rels[0];
                seen.insert(r);
                let at = c.find(r.phrase()).unwrap();
                let (before, after) = (&c[..at], &c[at + r.phrase().len()..]);
                let find = |t: &str| -> Vec<usize> {
                    (0..s.objects.len())
                        .filter(|&i| t.contains(&s.objects[i].describe()))
                        .collect()
                };
                let (a, b) = (find(before), find(after));
                assert_eq!((a.len(), b.len()), (1, 1), "{c:?}");
                assert!(
                    relations(&s.objects[a[0]], &s.objects[b[0]]).contains(&r),
                    "false caption {c:?} for {:?}",
                    s.objects
                );
            }
        }
        assert_eq!(seen.len(), 4, "all four relations are used");
        // Every caption has a hard negative: the same words, false for its scene.
        let words = |c: &str| {
            let mut w: Vec<String> = c.split_whitespace().map(str::to_string).collect();
            w.sort();
            w
        };
        for s in &scenes {
            for c in &s.captions {
                let n = exchange_objects(c).unwrap_or_else(|| panic!("no negative for {c:?}"));
                assert_ne!(&n, c);
                assert_eq!(words(&n), words(c));
                let holds = |o: &SynthObject, p: &SynthObject| {
                    let r = [
                        Relation::LeftOf,
                        Relation::RightOf,
                        Relation::Above,
                        Relation::Below,
                    ]
                    .into_iter()
                    .find(|r| n.contains(r.phrase()))
                    .unwrap();
                    let at = n.find(r.phrase()).unwrap();
                    n[..at].contains(&o.describe())
                        && n[at..].contains(&p.describe())
                        && relations(o, p).contains(&r)
                };
                let any = s
                    .objects
                    .iter()
                    .any(|o| s.objects.iter().any(|p| holds(o, p)));
                assert!(!any, "negative {n:?} is true for {:?}", s.objects);
            }
        }
        assert_eq!(exchange_objects("two dogs on a sofa"), None);
        assert_eq!(
            exchange_objects("the small red circle is above the large blue square").as_deref(),
            Some("the large blue square is above the small red circle")
        );
        let dup = scenes
            .iter()
            .filter(|s| (1..s.captions.len()).any(|i| s.captions[..i].contains(&s.captions[i])))
            .count();
        assert!(dup <= scenes.len() / 20, "{dup} scenes repeat a caption");
    }

    #[test]
    fn same_seed_same_bytes_and_reader_roundtrip() {
        let (d1, d2, d3) = (tmp("a"), tmp("b"), tmp("c"));
        let st = write_synthetic(&d1, 10, 5, 7).unwrap();
        assert_eq!((st.train_images, st.val_images, st.groups), (10, 5, 4 + 2));
        write_synthetic(&d2, 10, 5, 7).unwrap();
        write_synthetic(&d3, 10, 5, 8).unwrap();
        let mut files = 0;
        for split in ["train", "val"] {
            for sub in ["images", "panoptic"] {
                for e in std::fs::read_dir(d1.join(split).join(sub)).unwrap() {
                    let p = e.unwrap().path();
                    let rel = p.strip_prefix(&d1).unwrap();
                    assert_eq!(
                        std::fs::read(&p).unwrap(),
                        std::fs::read(d2.join(rel)).unwrap(),
                        "{rel:?}"
                    );
                    files += 1;
                }
            }
            for f in ["panoptic.json", "captions.json", "scenes.json"] {
                let a = std::fs::read(d1.join(split).join(f)).unwrap();
                assert_eq!(
                    a,
                    std::fs::read(d2.join(split).join(f)).unwrap(),
                    "{split}/{f}"
                );
                assert_ne!(
                    a,
                    std::fs::read(d3.join(split).join(f)).unwrap(),
                    "seed change must change {f}"
                );
            }
        }
        assert_eq!(files, 30);

        // Read back through the COCO reader.
        let ds = Dataset::open(
            &SplitPaths::standard(&d1, "train"),
            &LoadOptions {
                verify: true,
                ..Default::default()
            },
        )
        .unwrap();
        let scenes = read_scenes(&d1.join("train")).unwrap();
        assert_eq!(ds.len(), 10);
        let ids: Vec<u64> = ds.categories().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 101, 102, 103]);
        assert_eq!(ds.stats().unlisted_ids, 0);
        let mut graphs = Vec::new();
        for (i, sc) in scenes.iter().enumerate() {
            let s = ds.get(i).unwrap();
            assert_eq!(s.image_id, sc.image_id);
            assert_eq!(s.captions, sc.captions);
            let nstuff = if sc.horizon.is_some() { 2 } else { 1 };
            assert_eq!(s.segments.segments.len(), sc.objects.len() + nstuff);
            for o in &sc.objects {
                let k = s.segments.index[(o.cy * 64 + o.cx) as usize];
                let seg = &s.segments.segments[k as usize];
                assert_eq!(seg.id, o.segment_id);
                assert_eq!(ds.categories()[seg.category].name, o.kind);
                assert!(seg.is_thing);
                let px = s.image.get_pixel(o.cx as u32, o.cy as u32).0;
                let want = o.rgb();
                assert!(
                    (0..3).all(|c| (px[c] as i32 - want[c] as i32).abs() <= 4),
                    "{px:?} vs {want:?}"
                );
            }
            let g = graph_from_sample(
                &s,
                ds.num_categories(),
                &GraphConfig::default(),
                &FeatureConfig::default(),
            )
            .unwrap();
            assert_eq!(g.num_nodes, sc.objects.len() + nstuff + 1);
            crate::data::graph::tests::check_invariants(&g, 3);
            graphs.push(g);
        }
        let cap = BatchCapacity::for_config(16, &GraphConfig::default(), 256);
        collate(&graphs, &cap).unwrap().validate().unwrap();
        for d in [d1, d2, d3] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release --lib synth_full_size -- --ignored --nocapture`: the 3000 + 300 default.
    #[test]
    #[ignore]
    fn synth_full_size() {
        let d = std::env::temp_dir().join(format!("gshn-synth-full-{}", std::process::id()));
        let t = std::time::Instant::now();
        let s = super::write_synthetic(&d, 3000, 300, 1).unwrap();
        println!("{s:?} in {:.2?} -> {}", t.elapsed(), d.display());
    }
}
