#!/usr/bin/env python3
"""What a model learned on the synthetic relational scenes: attributes only, or relations too.

    gshn eval --data data/synth --checkpoint RUN --save-embeddings emb.safetensors
    python3 scripts/synth_diagnostics.py emb.safetensors data/synth/val

Prints (standard library only):
  * the t2i R@1 ceiling of the split: a model that ranks every image a caption is *true* of
    ahead of the rest, in random order among them (captions name 2 of up to 4 objects, so
    several images of a hard-negative group can fit one caption);
  * t2i R@1 and "semantic" R@1 (the top image makes the caption true), and where the other
    top-1 images come from (the same hard-negative group, or elsewhere);
  * text side: mean cosine of caption pairs stating the same fact in other words, against pairs
    whose two objects are exchanged ("A left of B" vs "B left of A": the opposite fact);
  * image side: mean cosine of a group's base image to its swap variant (two objects exchanged)
    and to its attribute variant (one attribute changed).
An encoder that sees relations scores reversed pairs and swap pairs clearly below paraphrases and
attribute pairs; equal values mean it encodes the bag of objects only.
"""
import json
import struct
import sys
from array import array

from synth_grammar import background, canonical, count, parse

RELATIONS = {
    "to the left of": lambda a, b: a["col"] < b["col"],
    "to the right of": lambda a, b: a["col"] > b["col"],
    "above": lambda a, b: a["row"] < b["row"],
    "below": lambda a, b: a["row"] > b["row"],
}


def load_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        code = {"F32": "f", "I32": "i"}[meta["dtype"]]
        start, end = meta["data_offsets"]
        values = array(code)
        values.frombytes(raw[8 + n + start:8 + n + end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (meta["shape"], values)
    return out


def rows(shape_values):
    shape, v = shape_values
    d = shape[1]
    return [v[i * d:(i + 1) * d] for i in range(shape[0])]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def describe(o):
    return f"{o['size']} {o['color']} {o['kind']}"


def holds(scene, caption):
    a, rel, b = parse(caption)
    bg, n = background(caption), count(caption)
    if bg is not None and bg != ("sky" if scene["horizon"] is not None else "wall"):
        return False
    if n is not None and n != len(scene["objects"]):
        return False
    objs = scene["objects"]
    return any(RELATIONS[rel](x, y) for x in objs if describe(x) == a
               for y in objs if describe(y) == b)


def main(emb_path, split_dir):
    emb = load_safetensors(emb_path)
    scenes = json.load(open(f"{split_dir}/scenes.json"))["scenes"]
    by_id = {s["image_id"]: s for s in scenes}
    ids = emb["image_id"][1]
    order = [by_id[i] for i in ids]
    images, texts = rows(emb["image"]), rows(emb["text"])
    owner = list(emb["caption_image"][1])
    captions = [c for s in order for c in s["captions"]]
    assert len(captions) == len(texts), "embeddings and scenes.json disagree"

    true_of = [[k for k, s in enumerate(order) if holds(s, c)] for c in captions]
    ceiling = sum(1 / len(t) for t in true_of) / len(captions)
    exact = semantic = same_group = 0
    for c, (t, o) in enumerate(zip(texts, owner)):
        scores = [dot(t, img) for img in images]
        top = max(range(len(images)), key=scores.__getitem__)
        exact += top == o
        if top in true_of[c]:
            semantic += 1
        elif order[top]["group"] == order[o]["group"]:
            same_group += 1
    n = len(captions)
    print(f"captions {n}, images {len(images)}; t2i R@1 ceiling {100 * ceiling:.1f}")
    print(f"t2i R@1 {100 * exact / n:.1f}; top image makes the caption true: {100 * semantic / n:.1f}; "
          f"false, same hard-negative group: {100 * same_group / n:.1f}; "
          f"false, elsewhere: {100 * (n - semantic - same_group) / n:.1f}")

    facts = [canonical(c) for c in captions]
    same, reversed_ = [], []
    for i in range(n):
        for j in range(i + 1, n):
            fi, fj = facts[i], facts[j]
            if fi == fj and captions[i] != captions[j]:
                same.append(dot(texts[i], texts[j]))
            elif fi[1] == fj[1] and fi[0] == fj[2] and fi[2] == fj[0]:
                reversed_.append(dot(texts[i], texts[j]))
    mean = lambda v: sum(v) / max(len(v), 1)
    print(f"text  cos: same fact reworded {mean(same):.3f} (n={len(same)}); "
          f"objects exchanged {mean(reversed_):.3f} (n={len(reversed_)})")

    row = {s["image_id"]: k for k, s in enumerate(order)}
    groups = {}
    for s in order:
        groups.setdefault(s["group"], {})[s["variant"]] = row[s["image_id"]]
    pair = lambda v: [dot(images[g["base"]], images[g[v]]) for g in groups.values()
                      if "base" in g and v in g]
    print(f"image cos: base~swap {mean(pair('swap')):.3f}; base~attribute {mean(pair('attribute')):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
