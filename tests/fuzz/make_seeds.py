"""Writes the seed corpus of tests/fuzz.rs (tests/fuzz/corpus/<target>/), from the synthetic
dataset (`gshn synth --out data/synth`) and the demo run's checkpoint metadata. Only needs the
standard library; run from the repository root: python3 tests/fuzz/make_seeds.py"""
import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fuzz" / "corpus"
SEP = b"\n@@gshn-fuzz@@\n"  # tests/fuzz.rs splits a coco input into its four files here


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def safetensors(tensors, meta=None):
    """tensors: {name: (dtype, shape, raw bytes)}"""
    header, blobs, off = {}, [], 0
    for k, (dt, shape, raw) in tensors.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def i32(*v):
    return struct.pack(f"<{len(v)}i", *v)


def vals(n, k=1):  # deterministic, non-zero, varied
    return [((i * 37 + k * 11) % 17 - 8) / 7.0 + 0.05 for i in range(n)]


# --- coco: panoptic.json, captions.json, panoptic PNG, image PNG of one synthetic image ---
split = ROOT / "data" / "synth" / "val"
pan = json.loads((split / "panoptic.json").read_text())
cap = json.loads((split / "captions.json").read_text())
for idx in (0, 1):
    img = pan["images"][idx]
    iid = img["id"]
    p = {"images": [img], "annotations": [a for a in pan["annotations"] if a["image_id"] == iid],
         "categories": pan["categories"]}
    c = {"images": [i for i in cap["images"] if i["id"] == iid],
         "annotations": [a for a in cap["annotations"] if a["image_id"] == iid]}
    parts = [json.dumps(p).encode(), json.dumps(c).encode(),
             (split / "panoptic" / img["file_name"]).read_bytes(),
             (split / "images" / img["file_name"]).read_bytes()]
    write("coco", f"synth{idx + 1}", SEP.join(parts))

# --- safetensors: a feature map, a checkpoint's metadata with a tiny tensor, f16 / i32 ---
write("safetensors", "features", safetensors({"features": ("F32", [3, 2, 2], f32(*vals(12)))}))
b = (ROOT / "runs" / "demo" / "checkpoint.safetensors").read_bytes()
n = struct.unpack("<Q", b[:8])[0]
meta = json.loads(b[8:8 + n])["__metadata__"]
write("safetensors", "checkpoint", safetensors({"w": ("F32", [2, 2], f32(*vals(4)))}, meta))
write("safetensors", "mixed", safetensors({"h": ("F16", [2], struct.pack("<2e", 1.5, -2.0)),
                                           "i": ("I32", [3], i32(0, 1, 2))}))

# --- config: the default and the repository's configs ---
write("config", "empty", b"")
write("config", "relation", (ROOT / "configs" / "relation.toml").read_bytes())
write("config", "full", b"""[model]
dim = 32
heads = 2
time_steps = 4
[model.lif]
tau = 2.0
[train]
epochs = 2
batch_size = 8
lr = 0.002
[data.features]
out_h = 8
out_w = 8
[data.graph]
max_nodes = 8
knn = 3
[data.load]
max_file_bytes = 1000000
max_image_pixels = 100000
""")

# --- csr: [num_nodes u8][num_edges u8][row_ptr i32 × (N+1)][src i32 × E] ---
def csr(row_ptr, src):
    return bytes([len(row_ptr) - 1, len(src)]) + i32(*row_ptr) + i32(*src)
write("csr", "path", csr([0, 0, 1, 2, 3], [0, 1, 2]))
write("csr", "dense", csr([0, 3, 6, 9], [0, 1, 2, 0, 1, 2, 0, 1, 2]))
write("csr", "isolated", csr([0, 2, 2, 2, 4, 5], [1, 3, 0, 4, 2]))

# --- op: [op index u8][safetensors of its inputs, attrs as JSON in the metadata] ---
OPS = ["lif", "gat", "aggregate", "infonce", "infonce_1d", "segment_mean"]
def op(name, tensors, attrs=None):
    return bytes([OPS.index(name)]) + safetensors(tensors, {"attrs": json.dumps(attrs or {})})
write("op", "lif", op("lif", {"x": ("F32", [3, 4], f32(*vals(12)))}, {"tau": 2.0}))
rp, src = [0, 2, 3, 3, 5], [1, 2, 0, 1, 3]
write("op", "gat", op("gat", {"z": ("F32", [4, 2, 3], f32(*vals(24))),
                              "a_src": ("F32", [2, 3], f32(*vals(6, 2))),
                              "a_dst": ("F32", [2, 3], f32(*vals(6, 3))),
                              "row_ptr": ("I32", [5], i32(*rp)), "src": ("I32", [5], i32(*src))},
                      {"negative_slope": 0.2}))
write("op", "gat_edge_index", op("gat", {"z": ("F64", [3, 1, 2], struct.pack("<6d", *vals(6))),
                                         "a_src": ("F64", [1, 2], struct.pack("<2d", 0.3, -0.2)),
                                         "a_dst": ("F64", [1, 2], struct.pack("<2d", 0.1, 0.4)),
                                         "edge_index": ("I32", [2, 3], i32(0, 1, 2, 1, 2, 0))}))
write("op", "aggregate", op("aggregate", {"alpha": ("F32", [5, 2], f32(*vals(10))),
                                          "s": ("F32", [2, 4, 4], f32(*vals(32))),
                                          "row_ptr": ("I32", [5], i32(*rp)),
                                          "src": ("I32", [5], i32(*src))}))
write("op", "infonce", op("infonce", {"a": ("F32", [3, 2], f32(*vals(6))),
                                      "p": ("F32", [3, 2], f32(*vals(6, 5))),
                                      "logit_scale": ("F32", [1], f32(2.0))}, {"chunk": 2}))
write("op", "segment_mean", op("segment_mean", {"x": ("F32", [4, 3], f32(*vals(12))),
                                                "seg": ("I32", [4], i32(0, 2, -1, 0))}))

# --- capi: a program of calls, decoded by tests/fuzz.rs (one byte selects the entry point,
# the following bytes its sizes and pointer choices); any bytes are a valid program ---
write("capi", "calls", bytes(range(64)))
write("capi", "small", bytes([0, 3, 4, 1, 0, 0, 2, 5, 2, 3, 0, 1, 4, 3, 2, 1, 0, 6, 2, 2] * 3))
