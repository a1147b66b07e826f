//! The scene grammar: what a synthetic scene holds (shapes, attributes, grid cells), how scenes
//! and their hard-negative variants are drawn, and the captions that describe them (with
//! [`exchange_objects`], the hard negative of a caption).

use serde::{Deserialize, Serialize};

use crate::data::rng::SynthRng;

/// Image side in pixels.
pub const IMAGE_SIZE: u32 = 64;
pub(super) const GRID: i32 = 3;

/// Thing shapes; their category ids are 1..=4 in this order.
pub const KINDS: [&str; 4] = ["circle", "square", "triangle", "diamond"];
/// Thing colours: (name, RGB).
pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 215, 40]),
    ("purple", [150, 50, 190]),
    ("orange", [245, 140, 20]),
];
/// Thing sizes (radius 5 and 9 pixels).
pub const SIZES: [&str; 2] = ["small", "large"];
pub(super) const RADIUS: [i32; 2] = [5, 9];
/// Stuff: (category id, name, colour).
pub(super) const STUFF: [(u64, &str, [u8; 3]); 3] = [
    (101, "sky", [150, 185, 215]),
    (102, "ground", [120, 105, 85]),
    (103, "wall", [135, 135, 135]),
];
pub(super) const THING_IDS: [u64; 4] = [1, 2, 3, 4];

/// Relation of `a` to `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// `a` is in a column left of `b`'s.
    LeftOf,
    /// `a` is in a column right of `b`'s.
    RightOf,
    /// `a` is in a row above `b`'s.
    Above,
    /// `a` is in a row below `b`'s.
    Below,
}

impl Relation {
    /// The caption words of the relation, e.g. "to the left of".
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
    /// Shape, one of [`KINDS`].
    pub kind: String,
    /// Colour name, one of [`COLORS`].
    pub color: String,
    /// "small" or "large" ([`SIZES`]).
    pub size: String,
    /// Grid cell.
    pub row: i32,
    /// Grid column (0-based, left to right).
    pub col: i32,
    /// Centre in pixels.
    pub cx: i32,
    /// Centre y in pixels (see `cx`).
    pub cy: i32,
    /// Panoptic segment id.
    pub segment_id: u32,
}

impl SynthObject {
    /// "small red circle".
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.size, self.color, self.kind)
    }
    pub(super) fn radius(&self) -> i32 {
        RADIUS[usize::from(self.size == "large")]
    }
    pub(super) fn rgb(&self) -> [u8; 3] {
        COLORS
            .iter()
            .find(|c| c.0 == self.color)
            .map_or([0, 0, 0], |c| c.1)
    }
    pub(super) fn category_id(&self) -> u64 {
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
    /// COCO image id of the scene.
    pub image_id: u64,
    /// Image file name.
    pub file_name: String,
    /// Hard-negative group; scenes of a group differ from the group's base in exactly one thing.
    pub group: u64,
    /// "base", "swap" or "attribute".
    pub variant: String,
    /// Human-readable change w.r.t. the base ("" for the base).
    pub change: String,
    /// Horizon row (sky above, ground below) or `None` for a single `wall`.
    pub horizon: Option<i32>,
    /// Seed of the background texture noise.
    pub texture_seed: u64,
    /// The shapes (things) of the scene.
    pub objects: Vec<SynthObject>,
    /// The captions that describe the scene.
    pub captions: Vec<String>,
}

pub(super) fn unique_desc(objs: &[SynthObject]) -> bool {
    let mut d: Vec<String> = objs.iter().map(SynthObject::describe).collect();
    d.sort();
    d.windows(2).all(|w| w[0] != w[1])
}

fn place(rng: &mut SynthRng, row: i32, col: i32) -> (i32, i32) {
    let cell = IMAGE_SIZE as f32 / GRID as f32;
    let c = |i: i32| ((i as f32 + 0.5) * cell).floor() as i32;
    (c(col) + rng.range_i32(-1, 1), c(row) + rng.range_i32(-1, 1))
}

fn random_objects(rng: &mut SynthRng) -> Vec<SynthObject> {
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
fn change_attribute(rng: &mut SynthRng, objs: &mut [SynthObject], o: usize) -> String {
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

fn caption(rng: &mut SynthRng, scene: &SynthScene, a: usize, b: usize) -> String {
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

fn write_captions(rng: &mut SynthRng, scene: &mut SynthScene, focus: &[(usize, usize)]) {
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
pub fn generate_scenes(n: usize, rng: &mut SynthRng) -> Vec<SynthScene> {
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
