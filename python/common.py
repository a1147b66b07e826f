"""Shared helpers of the parity scripts: random inputs, running `gshn op`, comparisons.

`gshn op NAME --inputs IN --out OUT` is found as $GSHN_BIN, else target/release/gshn, else
target/debug/gshn of this repository (build it first: `cargo build --release --bin gshn`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parent.parent


def gshn_bin() -> str:
    env = os.environ.get("GSHN_BIN")
    if env:
        return env
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "gshn"
        if p.exists():
            return str(p)
    sys.exit("gshn binary not found: set GSHN_BIN or run `cargo build --release --bin gshn`")


def to_numpy(x):
    """numpy array of a numpy array or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    return a if a.flags.c_contiguous else a.copy(order="C")  # keeps 0-d arrays 0-d


def run_op(name: str, inputs: dict, attrs: dict | None = None, device: str = "cpu") -> dict:
    """Runs `gshn op NAME` on `inputs` (name -> numpy array or torch tensor; integer arrays
    are sent as i32) and returns its outputs and gradients as numpy arrays."""
    with tempfile.TemporaryDirectory(prefix="gshn-op-") as d:
        fin, fout = os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors")
        arrays = {}
        for k, v in inputs.items():
            a = to_numpy(v)
            if np.issubdtype(a.dtype, np.integer):
                a = a.astype(np.int32)
            arrays[k] = a
        save_file(arrays, fin)
        cmd = [gshn_bin(), "op", name, "--inputs", fin, "--out", fout, "--device", device]
        if attrs:
            cmd += ["--attrs", json.dumps(attrs)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr}")
        return load_file(fout)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (0 when both are all zeros)."""
    a = to_numpy(ours).astype(np.float64)
    b = to_numpy(ref).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    d = np.max(np.abs(a - b))
    s = np.max(np.abs(b))
    if s == 0:
        return 0.0 if d == 0 else float("inf")
    return float(d / s)


class Report:
    """Collects (case, tensor, error, tolerance) rows; prints them; exit code 1 over tolerance."""

    def __init__(self, title: str):
        self.title = title
        self.rows = []

    def check(self, case: str, tensor: str, ours, ref, tol: float) -> float:
        e = rel_err(ours, ref)
        self.rows.append((case, tensor, e, tol))
        return e

    def note(self, case: str, tensor: str, text: str):
        self.rows.append((case, tensor, text, None))

    def failures(self):
        return [r for r in self.rows if r[3] is not None and not (r[2] <= r[3])]

    def print(self):
        print(f"== {self.title}")
        w = max([len(r[0]) for r in self.rows] + [4])
        for case, tensor, e, tol in self.rows:
            if tol is None:
                print(f"  {case:<{w}}  {tensor:<16} {e}")
            else:
                flag = "ok" if e <= tol else "FAIL"
                print(f"  {case:<{w}}  {tensor:<16} max rel err {e:9.2e}  (tol {tol:.0e})  {flag}")
        bad = self.failures()
        checked = sum(1 for r in self.rows if r[3] is not None)
        print(f"  {checked - len(bad)} passed, {len(bad)} failed")
        return 1 if bad else 0


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
