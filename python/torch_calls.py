"""What one call of a gshn op from PyTorch costs the host, and what it puts on the device
(issue 18: "host overhead per op call through the torch op, against a Rust-native launch; no
device-to-device copies, shown by counting").

For each forward op at a small shape (LIF at T=1, N=256: the shape of the cuda_ops bench's
`call_overhead_execute` / `call_overhead_c_abi` / `call_overhead_lent` rows, the Rust-native
and C ABI launches of the same kernel):
- `us_per_call`: host time per call, `--calls` calls queued back to back (no sync between
  them, one at the end), the median of 5 rounds; `torch_add_us` is the same for PyTorch's own
  `torch.add` on a 256-element tensor, the dispatcher's floor on this machine.
- On CUDA, from one torch.profiler (CUPTI) trace of 10 calls per op, per call: the kernels,
  and the memory copies by direction (HtoD, DtoD, DtoH) and memsets that the call put on the
  device. DtoD must be 0 (zero-copy); GAT and the aggregation upload their CSR (HtoD).
- On CUDA, `on_current_stream`: every gshn kernel of the traced calls ran on the stream that
  PyTorch's own kernels ran on inside `torch.cuda.stream(side)`, not on the default stream.

    python python/torch_calls.py [--device cuda|cpu] [--calls 2000] [--json OUT.json]

One JSON object per op on stdout (and all of them in --json). Needs torch and the library
(GSHN_LIB or target/release/libgshn_capi.so; for CUDA, a library built with the kernels).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gshn_torch as gt  # noqa: E402

OPS = torch.ops.gshn


def calls(device):
    """(name, shape, thunk) of one forward op call each, inputs made once on `device`."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)
    n, heads, feat = 64, 2, 8
    src = torch.cat([torch.arange(n), torch.randint(0, n, (3 * n,), generator=g)])
    dst = torch.cat([torch.arange(n), torch.randint(0, n, (3 * n,), generator=g)])
    graph = gt.Graph.from_edge_index(torch.stack([src, dst]), n)
    e = src.numel()
    x = rand(1, 256)
    z, a_s, a_d, alpha, s = (rand(n, heads, feat), rand(heads, feat), rand(heads, feat),
                             rand(e, heads).softmax(0), rand(4, n, heads * feat))
    a, p = F.normalize(rand(128, 32), dim=1), F.normalize(rand(128, 32), dim=1)
    ls = torch.tensor(2.0).to(device)
    csr = (graph.row_ptr, graph.src)
    return [
        ("lif", "T=1 N=256 f32", lambda: OPS.lif(x, 2.0, 1.0, 0.0, True, False, "atan", 2.0)),
        ("gat", f"N={n} E={e} H={heads} F={feat} f32",
         lambda: OPS.gat(z, a_s, a_d, None, *csr, 0.2)),
        ("aggregate", f"T=4 N={n} E={e} C={heads * feat} f32",
         lambda: OPS.aggregate(alpha, s, *csr)),
        ("infonce", "B=128 D=32 f32", lambda: OPS.infonce(a, p, ls)),
    ]


def host_us(fn, n, device):
    """Median over 5 rounds of the host time per call, n calls queued back to back."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rounds = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
        sync()
    return statistics.median(rounds)


def device_activity(fn, device, reps=10):
    """Per call: kernels, copies by direction and memsets of `reps` calls made on a side
    stream (CUPTI trace), and whether gshn's kernels ran on that stream."""
    from torch.profiler import ProfilerActivity, profile
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        fn()  # kernels loaded, this stream's scratch grown: the steady state is what is counted
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.cuda.stream(side):
            marker = torch.ones(4, device=device)  # a PyTorch kernel on the side stream
            for _ in range(reps):
                fn()
            marker += 1
        torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path)).get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") == "kernel"]
    torch_streams = {e["args"].get("stream") for e in kernels if "at::" in e.get("name", "")}
    ours = [e for e in kernels if "at::" not in e.get("name", "")]
    copies = {"HtoD": 0, "DtoD": 0, "DtoH": 0, "other": 0}
    for e in events:
        if e.get("cat") == "gpu_memcpy":
            name = e.get("name", "")
            kind = next((k for k in ("HtoD", "DtoD", "DtoH") if k in name), "other")
            copies[kind] += 1
    memsets = sum(1 for e in events if e.get("cat") == "gpu_memset")
    return {
        "kernels_per_call": len(ours) / reps,
        "kernel_names": sorted({e["name"][:60] for e in ours}),
        "copies_per_call": {k: v / reps for k, v in copies.items()},
        "memsets_per_call": memsets / reps,
        "on_current_stream": (len(torch_streams) == 1 and bool(ours)
                              and all(e["args"].get("stream") in torch_streams for e in ours)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--json", help="write every row to this file too")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not gt.library().gshn_cuda_available():
        sys.exit("torch_calls: the library has no usable CUDA device (built without the kernels?)")
    one = torch.ones(256, device=device)
    add_us = host_us(lambda: torch.add(one, one), args.calls, device)
    rows = []
    for name, shape, fn in calls(device):
        row = {"bench": "torch_op_call", "op": name, "shape": shape, "device": device.type,
               "us_per_call": round(host_us(fn, args.calls, device), 2),
               "torch_add_us": round(add_us, 2)}
        if device.type == "cuda":
            row.update(device_activity(fn, device))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    zero_copy = all(r.get("copies_per_call", {}).get("DtoD", 0) == 0 for r in rows)
    on_stream = all(r.get("on_current_stream", True) for r in rows)
    return 0 if zero_copy and on_stream else 1


if __name__ == "__main__":
    sys.exit(main())
