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

pub mod grammar;
mod render;
mod write;

pub use grammar::{
    exchange_objects, generate_scenes, relations, Relation, SynthObject, SynthScene, COLORS,
    IMAGE_SIZE, KINDS, SIZES,
};
pub use write::{read_scenes, write_synthetic, SynthStats};

#[cfg(test)]
mod tests;
