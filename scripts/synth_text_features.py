#!/usr/bin/env python3
"""Structured caption features for the synthetic scenes: a perfect, order-aware "text encoder".

    python3 scripts/synth_text_features.py data/synth        # writes {train,val}/text_features.safetensors
    gshn train --data data/synth --out RUN --config FILE     # FILE: [model.text] source = "features"

Each caption of the synthetic grammar is parsed into its fact (A, relation, B) and encoded as
one-hot slots: A's size/colour/kind, the relation, B's size/colour/kind, the background and the
object count (31 values). "B to the right of A" is rewritten as "A to the left of B" (and
"below" as "above"), so paraphrases get the same features while exchanging the two objects
does not. With the text side solved, retrieval measures only whether the image encoder sees
relations (docs/EXPERIMENTS.md). Standard library only.
"""
import json
import struct
import sys

from synth_grammar import background, canonical, count

SIZES = ["small", "large"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple"]
KINDS = ["circle", "square", "triangle", "diamond"]


def one_hot(value, values):
    if value not in values:
        raise SystemExit(f"unknown word {value!r} (expected one of {values})")
    return [1.0 if v == value else 0.0 for v in values]


def encode(caption):
    a, rel, b = canonical(caption)
    obj = lambda o: [x for w, vs in zip(o.split(), (SIZES, COLOURS, KINDS)) for x in one_hot(w, vs)]
    bg = [float(background(caption) == "sky"), float(background(caption) == "wall")]
    n = [float(count(caption) == k) for k in (2, 3, 4)]
    return obj(a) + one_hot(rel, ["to the left of", "above"]) + obj(b) + bg + n


def write(path, rows):
    n, d = len(rows), len(rows[0])
    header = json.dumps({"features": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, 4 * n * d]}})
    header += " " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        for r in rows:
            f.write(struct.pack(f"<{d}f", *r))


def main(root):
    for split in ("train", "val"):
        captions = json.load(open(f"{root}/{split}/captions.json"))["annotations"]
        rows = [encode(c["caption"]) for c in captions]  # one row per annotation, file order
        write(f"{root}/{split}/text_features.safetensors", rows)
        print(f"{root}/{split}/text_features.safetensors: {len(rows)} × {len(rows[0])}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
