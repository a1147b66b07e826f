"""gshn's training step against its PyTorch twin, same data, config and threads: graphs/s.

    .venv-py/bin/python python/twin_bench.py --data data/synth [--batch 64] [--max-nodes 32]
        [--config CFG.toml] [--threads 2] [--steps 20] [--rounds 3] [--compile] [--device cpu|cuda]
        [--gshn target/release/gshn] [--json OUT.json]

gshn: `gshn train --profile` for one epoch of the dataset at that batch size; its time per
step is the wall time of `Engine::step` (feeding the batch included, evaluation not). On cuda,
`gshn bench --ops step` at that batch size instead (CUDA events, the default config), twice:
the step replayed as a CUDA graph (as `gshn train` runs it) and launched op by op
(`--no-cuda-graph`).
The twin (python/gshn_twin.py, f32): one batch of the same run dumped by `gshn dump-batch`,
trained as a PyTorch user would: forward, `loss.backward()`, `clip_grad_norm_`,
`torch.optim.AdamW(foreach=True)`; the median over `--steps` steps after 3 warm-up steps.
The sides alternate for `--rounds` rounds; each figure is the median over the rounds.
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


def run_gshn(cmd, env):
    """Runs a gshn command; on failure, an error carrying the end of what it printed."""
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... exited {r.returncode}:\n{tail}")


def gshn_step(args, cfg: Path, work: Path, op_by_op=False) -> dict:
    """gshn's milliseconds per training step. CPU: one epoch of `gshn train --profile` (the
    wall time of each step, feeding included). CUDA: `gshn bench --ops step` at this batch size
    (CUDA events; a profile would synchronise after every op), default config, the step
    replayed as a CUDA graph unless `op_by_op`."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.device.startswith("cuda"):
        shapes, report = work / "shapes.toml", work / "bench.json"
        shapes.write_text(f"[step]\nB = {args.batch}\n")
        run_gshn([args.gshn, "bench", "--device", args.device, "--ops", "step", "--shapes",
                  str(shapes), "--json", str(report)] + ["--no-cuda-graph"] * op_by_op, env)
        row = json.loads(report.read_text())["rows"][0]
        return {"ms": row["ms"], "steps": row["calls"]}
    run = work / "run"
    cmd = [args.gshn, "train", "--data", args.data, "--out", str(run), "--config", str(cfg),
           "--epochs", "1", "--overwrite", "--profile", "--device", args.device]
    run_gshn(cmd, env)
    p = json.loads((run / "profile.json").read_text())
    return {"ms": p["step_ms"], "graph_ms": p["total_ms"], "steps": p["runs"],
            "parts": {r["name"]: r["ms"] for r in p["by_part"]}}


class TwinStep:
    """The twin's training step on one dumped batch of the same run (f32), ready to time."""

    def __init__(self, args, cfg: Path, work: Path, compiled: bool):
        dump = work / "step.safetensors"
        if not dump.exists():
            subprocess.run([args.gshn, "dump-batch", "--data", args.data, "--config", str(cfg),
                            "--step", "1", "--dtype", "f32", "--out", str(dump)],
                           check=True, stdout=subprocess.DEVNULL)
        step = gshn_twin.load_step(str(dump))
        self.dev = torch.device(args.device)
        self.model = gshn_twin.TwinModel(step.config, gshn_twin.Capacity.of_step(step),
                                         torch.float32)
        with torch.no_grad():
            self.model.load_gshn(step.params)
        self.model.to(self.dev)
        self.inputs = {k: v.to(self.dev) for k, v in step.inputs.items()}
        tr = step.config["train"]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(tr["lr"]),
                                     weight_decay=float(tr["weight_decay"]), foreach=True)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.clip = float(tr["clip_norm"])
        t0 = time.perf_counter()
        for _ in range(3):  # warm-up (and compilation)
            self.one()
        self.warmup_s = time.perf_counter() - t0

    def one(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward(self.inputs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def time(self, steps: int) -> dict:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.one()
            times.append(time.perf_counter() - t0)
        return {"ms": 1e3 * statistics.median(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", help="a run config TOML (batch size and max nodes are set here)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-nodes", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
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
        if args.device.startswith("cuda") and (base or args.max_nodes):
            sys.exit("on cuda gshn's side is `gshn bench --ops step`: default config only")
        cfg.write_text(base + extra)
        sides = {"twin eager": TwinStep(args, cfg, work, False)}
        if args.compile:
            try:
                sides["twin compiled"] = TwinStep(args, cfg, work, True)
            except Exception as e:  # noqa: BLE001 (report any compiler failure, go on)
                failed = f"{type(e).__name__}: {str(e)[:300]}"
        # Rounds alternate the sides, so that a machine whose speed drifts (a shared VM)
        # treats them alike; each side's figure is the median over the rounds.
        cuda = args.device.startswith("cuda")
        runs: dict = {name: [] for name in ["gshn", *["gshn op by op"] * cuda, *sides]}
        errors = {} if "twin compiled" in sides or not args.compile else {"twin compiled": failed}

        def summary():
            rows = {name: {"ms": statistics.median(r["ms"] for r in rs),
                           "min_ms": min(r["ms"] for r in rs), "max_ms": max(r["ms"] for r in rs),
                           "rounds": len(rs)}
                    for name, rs in runs.items() if rs}
            if runs["gshn"] and "parts" in runs["gshn"][-1]:
                rows["gshn"]["parts"] = runs["gshn"][-1]["parts"]
            for name, side in sides.items():
                if name in rows:
                    rows[name]["warmup_s"] = side.warmup_s
            rows.update({name: {"error": e} for name, e in errors.items()})
            return rows

        for _ in range(args.rounds):
            runs["gshn"].append(gshn_step(args, cfg, work))
            if cuda:
                runs["gshn op by op"].append(gshn_step(args, cfg, work, op_by_op=True))
            for name, side in list(sides.items()):
                try:
                    runs[name].append(side.time(args.steps))
                except Exception as e:  # noqa: BLE001 (a compiled side may fail late: report it, go on)
                    errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
                    del sides[name]
            if args.json:  # after every round: a run cut short keeps the rounds done
                Path(args.json).write_text(json.dumps({"args": vars(args), "rows": summary()}, indent=1))
        rows = summary()
    g = rows["gshn"]["ms"]
    print(f"batch {args.batch}, max_nodes {args.max_nodes or 'default'}, {args.threads} threads, "
          f"device {args.device}, torch {torch.__version__}")
    print(f"median of {args.rounds} alternating rounds (gshn: one epoch each; twin: {args.steps} steps)")
    print(f"{'':<16}{'ms/step':>10}{'[min, max]':>18}{'graphs/s':>10}{'gshn is':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<16} failed: {r['error']}")
            continue
        spread = f"[{r['min_ms']:.1f}, {r['max_ms']:.1f}]"
        print(f"{name:<16}{r['ms']:>10.2f}{spread:>18}{1e3 * args.batch / r['ms']:>10.0f}"
              f"{r['ms'] / g:>9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
