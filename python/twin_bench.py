"""gshn's training step against its PyTorch twin, same data, config and threads: graphs/s.

    .venv-py/bin/python python/twin_bench.py --data data/synth [--batch 64] [--max-nodes 32]
        [--config CFG.toml] [--threads 2] [--steps 20] [--compile] [--device cpu|cuda]
        [--gshn target/release/gshn] [--json OUT.json]

gshn: `gshn train --profile` for one epoch of the dataset at that batch size; its time per
step is the wall time of `Engine::step` (feeding the batch included, evaluation not).
The twin (python/gshn_twin.py, f32): one batch of the same run dumped by `gshn dump-batch`,
trained as a PyTorch user would: forward, `loss.backward()`, `clip_grad_norm_`,
`torch.optim.AdamW(foreach=True)`; the median over `--steps` steps after 3 warm-up steps.
`--compile` also times the twin under `torch.compile` (inductor; on a failure it says why).
On `--device cuda` every step of the twin ends with a synchronisation, and gshn trains on cuda.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gshn_twin  # noqa: E402


def gshn_step(args, cfg: Path, work: Path) -> dict:
    """Trains one epoch with --profile; milliseconds per step and the profile's parts."""
    run = work / "run"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.gshn, "train", "--data", args.data, "--out", str(run), "--config", str(cfg),
           "--epochs", "1", "--overwrite", "--profile", "--device", args.device]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = json.loads((run / "profile.json").read_text())
    return {"ms": p["step_ms"], "graph_ms": p["total_ms"], "steps": p["runs"],
            "parts": {r["name"]: r["ms"] for r in p["by_part"]}}


def twin_step(args, cfg: Path, work: Path, compiled: bool) -> dict:
    """The twin's training step on one dumped batch of the same run (f32)."""
    dump = work / "step.safetensors"
    if not dump.exists():
        subprocess.run([args.gshn, "dump-batch", "--data", args.data, "--config", str(cfg),
                        "--step", "1", "--dtype", "f32", "--out", str(dump)],
                       check=True, stdout=subprocess.DEVNULL)
    step = gshn_twin.load_step(str(dump))
    dev = torch.device(args.device)
    model = gshn_twin.TwinModel(step.config, gshn_twin.Capacity.of_step(step), torch.float32)
    with torch.no_grad():
        model.load_gshn(step.params)
    model.to(dev)
    inputs = {k: v.to(dev) for k, v in step.inputs.items()}
    tr = step.config["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=float(tr["lr"]),
                            weight_decay=float(tr["weight_decay"]), foreach=True)
    forward = torch.compile(model) if compiled else model
    clip = float(tr["clip_norm"])

    def one():
        opt.zero_grad(set_to_none=True)
        loss = forward(inputs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        one()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    return {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times), "warmup_s": warm}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", help="a run config TOML (batch size and max nodes are set here)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-nodes", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gshn", default=str(HERE.parent / "target/release/gshn"))
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gshn-twin-bench-") as tmp:
        work = Path(tmp)
        cfg = work / "config.toml"
        base = Path(args.config).read_text() if args.config else ""
        extra = f"\n[train]\nbatch_size = {args.batch}\n"
        if args.max_nodes:
            extra += f"\n[data.graph]\nmax_nodes = {args.max_nodes}\n"
        if "[train]" in base or "[data.graph]" in base:
            sys.exit("put batch_size and max_nodes on the command line, not in --config")
        cfg.write_text(base + extra)
        rows = {"gshn": gshn_step(args, cfg, work), "twin eager": twin_step(args, cfg, work, False)}
        if args.compile:
            try:
                rows["twin compiled"] = twin_step(args, cfg, work, True)
            except Exception as e:  # noqa: BLE001 (report any compiler failure, go on)
                rows["twin compiled"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    g = rows["gshn"]["ms"]
    print(f"batch {args.batch}, max_nodes {args.max_nodes or 'default'}, {args.threads} threads, "
          f"device {args.device}, torch {torch.__version__}")
    print(f"{'':<16}{'ms/step':>10}{'graphs/s':>10}{'gshn is':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<16} failed: {r['error']}")
            continue
        print(f"{name:<16}{r['ms']:>10.2f}{1e3 * args.batch / r['ms']:>10.0f}"
              f"{r['ms'] / g:>9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
