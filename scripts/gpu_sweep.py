#!/usr/bin/env python3
"""Paired full-vs-GAT-only sweep of model settings on a GPU (issue 4's search, done fast).

Runs on the device machine with `carry: [".gpu"]` (uses .gpu/bin/gshn):
    python3 scripts/gpu_sweep.py [--jobs 4] [--seeds 0 1 2] [--only NAME ...]
For each setting below, trains the full model and GAT-only on the default synthetic dataset
(30 epochs, `--device cuda`, several runs at once) and prints t2i R@1 per seed, the means and the
paired difference full − GAT-only. Writes sweep.jsonl (and copies it to $OUT when set).
GPU runs are not bitwise equal to CPU runs (f32 sums in another order): a setting that wins here
is re-run on the CPU with scripts/ablations.sh before it goes in the README.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile

SETTINGS = {
    "default": {},
    "learnable_tau": {"model.lif": {"learnable_tau": True}},
    "v_th_0.5": {"model.lif": {"v_th": 0.5}},
    "tau_4": {"model.lif": {"tau": 4.0}},
    "surrogate_alpha_4": {"model.lif.surrogate": {"kind": "atan", "alpha": 4.0}},
    "detach_reset": {"model.lif": {"detach_reset": True}},
    "time_steps_8": {"model": {"time_steps": 8}},
    "membrane_readout": {"model": {"readout": "membrane"}},
    "channel_fusion": {"model": {"fusion": "channel"}},
    "r_init_0.1": {"model": {"r_init": 0.1}},
    "snn_layers_1": {"model": {"snn_layers": 1}},
    "snn_layers_3": {"model": {"snn_layers": 3}},
    "dim_192": {"model": {"dim": 192}},
    "text_layers_3": {"model.text": {"layers": 3}},
    "lambda_stl_0.25": {"train": {"lambda_stl": 0.25}},
    "lr_0.001": {"train": {"lr": 0.001}},
    "lr_0.003": {"train": {"lr": 0.003}},
    "epochs_45": {"train": {"epochs": 45}},
}
VARIANTS = ["full", "gat_only"]


def toml(tables):
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    return "".join(f"[{t}]\n" + "".join(f"{k} = {val(v)}\n" for k, v in kv.items()) for t, kv in tables.items())


def config(setting, variant, seed):
    tables = {t: dict(kv) for t, kv in SETTINGS[setting].items()}
    tables.setdefault("model", {})["variant"] = variant
    tables.setdefault("train", {})["seed"] = seed
    return toml(tables)


def run(a, data, root, setting, variant, seed):
    gshn = a.gshn
    out = os.path.join(root, f"{setting}-{variant}-seed{seed}")
    cfg = out + ".toml"
    open(cfg, "w").write(config(setting, variant, seed))
    env = dict(os.environ, RAYON_NUM_THREADS="3")
    r = subprocess.run([gshn, "train", "--data", data, "--out", out, "--config", cfg, "--device", a.device, "--overwrite"]
                       + (["--epochs", str(a.epochs)] if a.epochs else []),
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"setting": setting, "variant": variant, "seed": seed, "error": r.stderr[-600:]}
    e = subprocess.run([gshn, "eval", "--data", data, "--checkpoint", out, "--json", "--device", a.device],
                       capture_output=True, text=True, env=env)
    if e.returncode != 0:
        return {"setting": setting, "variant": variant, "seed": seed, "error": e.stderr[-600:]}
    return {"setting": setting, "variant": variant, "seed": seed, **json.loads(e.stdout)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--gshn", default=".gpu/bin/gshn")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, help="override every setting's epochs (smoke tests)")
    ap.add_argument("--train", type=int, default=2000)
    a = ap.parse_args()
    names = a.only or list(SETTINGS)
    root = tempfile.mkdtemp(prefix="sweep-")
    data = os.path.join(root, "synth")
    subprocess.run([a.gshn, "synth", "--out", data, "--train", str(a.train), "--val", "200", "--seed", "0"],
                   check=True, capture_output=True)
    out_path = os.path.join(os.environ.get("OUT") or ".", "sweep.jsonl")
    results = []
    with cf.ThreadPoolExecutor(a.jobs) as pool, open(out_path, "w") as log:
        futs = [pool.submit(run, a, data, root, n, v, s) for n in names for s in a.seeds for v in VARIANTS]
        for f in cf.as_completed(futs):
            r = f.result()
            results.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
            print(f"{r['setting']:<20} {r['variant']:<9} seed {r['seed']}: "
                  + (f"t2i {r['t2i_r1']:.1f} rsum {r['rsum']:.1f}" if "t2i_r1" in r else "ERROR " + r["error"]),
                  file=sys.stderr, flush=True)
    print("| setting | full t2i R@1 | GAT-only | paired full − GAT-only per seed | mean diff |")
    print("|---|---|---|---|---|")
    for n in names:
        t = {(r["variant"], r["seed"]): r.get("t2i_r1") for r in results if r["setting"] == n}
        diffs = [t[("full", s)] - t[("gat_only", s)] for s in a.seeds
                 if t.get(("full", s)) is not None and t.get(("gat_only", s)) is not None]
        mean = lambda v: sum(v) / len(v) if v else float("nan")
        f = [t[("full", s)] for s in a.seeds if t.get(("full", s)) is not None]
        g = [t[("gat_only", s)] for s in a.seeds if t.get(("gat_only", s)) is not None]
        print(f"| {n} | {mean(f):.1f} | {mean(g):.1f} | {' / '.join(f'{d:+.1f}' for d in diffs)} | {mean(diffs):+.2f} |")


if __name__ == "__main__":
    main()
