#!/usr/bin/env python3
"""Retrieval of two trained runs scored together: sim = cos_A + w·cos_B (an ensemble).

    gshn eval --data data/synth --checkpoint RUN_A --save-embeddings a.safetensors
    gshn eval --data data/synth --checkpoint RUN_B --save-embeddings b.safetensors
    python3 scripts/embedding_ensemble.py a.safetensors b.safetensors [w ...]

Prints t2i and i2t R@1 for each weight w (default 0, 0.25, 0.5, 1); w = 0 is run A alone, as
`gshn eval` scores it (up to near-ties: this sums in double precision, gshn in f32).
Why: it tells whether what a second model learned is complementary to the first. Two runs that
share no weights (separate text encoders too) differ by their seed alone, so compare any pair
against two runs of the same variant (docs/EXPERIMENTS.md §9). Standard library only.
"""
import sys

from synth_diagnostics import dot, load_safetensors, rows


def similarities(emb):
    images = rows(emb["image"])
    return [[dot(t, i) for i in images] for t in rows(emb["text"])]


def recall_at_1(sim, owner):
    """As `gshn eval`: a query is a hit when no wrong item scores at least as high as its best
    true one (ties count against it; identical captions of two images embed identically)."""
    images = len(sim[0])
    t2i = sum(all(row[i] < row[owner[c]] for i in range(images) if i != owner[c])
              for c, row in enumerate(sim)) / len(sim)
    hits = 0
    for i in range(images):
        best = max(row[i] for c, row in enumerate(sim) if owner[c] == i)
        hits += all(row[i] < best for c, row in enumerate(sim) if owner[c] != i)
    return 100 * t2i, 100 * hits / images


def main(path_a, path_b, weights):
    a, b = load_safetensors(path_a), load_safetensors(path_b)
    owner = list(a["caption_image"][1])
    if owner != list(b["caption_image"][1]):
        sys.exit("the two files are not embeddings of the same split")
    sim_a, sim_b = similarities(a), similarities(b)
    for w in weights:
        sim = [[x + w * y for x, y in zip(ra, rb)] for ra, rb in zip(sim_a, sim_b)]
        t2i, i2t = recall_at_1(sim, owner)
        print(f"w = {w:<5} t2i R@1 {t2i:5.1f}   i2t R@1 {i2t:5.1f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], [float(w) for w in sys.argv[3:]] or [0, 0.25, 0.5, 1])
