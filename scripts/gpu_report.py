#!/usr/bin/env python3
"""The JSON report of a GPU session (DESIGN §8), from what scripts/gpu_run.sh left in its work
folder; gpu_run.sh runs it after every part, so a run cut short still leaves the report of the
parts done (in reports/gpu/ and in $OUT).

    python3 scripts/gpu_report.py WORK_DIR DEVICE KERNELS_SHA256

WORK_DIR/status.txt holds `part=status` lines (the last for a part counts); a part without one
was not run ("skipped"). Every summary is computed on its own: one that fails (a missing or
half-written file, a NaN loss logged as null) becomes {"error": ...} instead of costing the
report.
"""
import datetime, json, os, re, sys

tmp, device, ksha = sys.argv[1:4]
st = {}
if os.path.exists(os.path.join(tmp, "status.txt")):
    for l in open(os.path.join(tmp, "status.txt")):
        k, _, v = l.strip().partition("=")
        if k:
            st[k] = v
status = lambda part: st.get(part, "skipped")


def num(x):
    """x when it is a number (a NaN or inf loss is logged as null), else None."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def rel_diff(a, b):
    a, b = num(a), num(b)
    return abs(a - b) / abs(b) if a is not None and b else None


def safe(f, *args):
    try:
        return f(*args)
    except Exception as e:  # a summary's failure is its own, not the report's
        return {"error": repr(e)}


def lines(name):
    p = os.path.join(tmp, name)
    out = []
    if os.path.exists(p):
        for l in open(p):
            l = l.strip()
            if l.startswith("{"):
                try:
                    out.append(json.loads(l))
                except ValueError:
                    pass
    return out

def tail(name, n=60):
    p = os.path.join(tmp, name)
    return open(p, errors="replace").read().splitlines()[-n:] if os.path.exists(p) else []

try:
    man = json.load(open(".gpu/manifest.json"))
except (OSError, ValueError):
    man = None
parity = lines("parity.jsonl")
bench = [b for b in lines("bench.jsonl") if "bench" in b]
peak = next((b.get("gbps") for b in bench if b["bench"] == "copy_d2d"), None)
for b in bench:
    if peak and b.get("gbps"):
        b["fraction_of_copy_peak"] = round(b["gbps"] / peak, 3)
torch = lines("torch.jsonl")
ms = {b["bench"] + "|" + b.get("shape", ""): b["ms"] for b in bench if num(b.get("ms"))}
tms = {t["bench"] + "|" + t.get("shape", ""): t["ms"] for t in torch if num(t.get("ms")) and "bench" in t}

def pair(label, ours, theirs, note=""):
    o = sum(ms.get(k, float("nan")) for k in ours)
    t = tms.get(theirs)
    if t is None or o != o:
        return None
    return {"what": label, "gshn_ms": round(o, 4), "torch_ms": round(t, 4), "speedup": round(t / o, 2), "note": note}

cmp = [c for c in [
    pair("LIF T=8 N=1M fwd+bwd", ["lif_fwd|T=8 N=1048576 f32", "lif_bwd|T=8 N=1048576 f32"],
         "torch_lif_fwd_bwd|T=8 N=1048576 f32"),
    pair("GAT N=50k deg16 H=4 F=32 fwd+bwd", ["gat_fwd|N=50000 deg=16 H=4 F=32 f32", "gat_bwd|N=50000 deg=16 H=4 F=32 f32"],
         "pyg_gatconv_fwd_bwd|N=50000 deg=16 H=4 F=32 f32", "PyG includes the X W projection; gshn's is a separate matmul"),
    pair("InfoNCE B=32768 D=512 fwd+bwd", ["infonce_fwd|B=32768 D=512 f32", "infonce_bwd|B=32768 D=512 f32"],
         "torch_infonce_fwd_bwd|B=32768 D=512 f32", "dense PyTorch materialises B x B logits"),
    pair("InfoNCE B=4096 D=256 fwd+bwd", ["infonce_fwd|B=4096 D=256 f32", "infonce_bwd|B=4096 D=256 f32"],
         "torch_infonce_fwd_bwd|B=4096 D=256 f32"),
] if c]

# Issue 15: each kernel on bf16 / f16 storage against itself on f32 (goals: LIF >= 1.8x, GAT >= 1.5x).
half_vs_f32 = []
for name, shape in [("lif_fwd", "T=8 N=1048576"), ("lif_fwd_no_v", "T=8 N=1048576"),
                    ("lif_fwd_u8", "T=8 N=1048576"), ("lif_bwd", "T=8 N=1048576"),
                    ("gat_fwd", "N=50000 deg=16 H=4 F=32"), ("gat_bwd", "N=50000 deg=16 H=4 F=32"),
                    ("aggregate_fwd", "T=4 N=50000 C=128 H=4"), ("matmul", "4096x4096x4096")]:
    f32_ms = ms.get(f"{name}|{shape} f32")
    for dt in ("bf16", "f16"):
        h_ms = ms.get(f"{name}|{shape} {dt}")
        if f32_ms and h_ms:
            half_vs_f32.append({"bench": name, "shape": shape, "dtype": dt, "f32_ms": f32_ms, "ms": h_ms,
                                "speedup_vs_f32": round(f32_ms / h_ms, 2)})


def metrics(run):
    """A run's metrics.jsonl (a line cut off by a kill is left out)."""
    out = []
    p = os.path.join(tmp, run, "metrics.jsonl")
    for l in open(p) if os.path.exists(p) else []:
        try:
            out.append(json.loads(l))
        except ValueError:
            pass
    return out

def one(name):
    p = os.path.join(tmp, name)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None

def train_summary():
    gpu, cpu = metrics("run-cuda"), metrics("run-cpu")
    steps = {m["step"]: m for m in cpu if m.get("kind") == "step"}
    rel = [(m["step"], rel_diff(m.get("loss"), steps[m["step"]].get("loss")))
           for m in gpu if m.get("kind") == "step" and m["step"] in steps]

    def rate(ms):  # median; the first steps include warm-up
        r = sorted(x for x in (num(m.get("graphs_per_s")) for m in ms if m.get("kind") == "step") if x is not None)
        return r[len(r) // 2] if r else None
    evals = lambda ms: [m for m in ms if m.get("kind") == "eval"][-1:]
    return {"status": status("train"), "batch_size": 256, "steps_compared": len(rel),
            "loss_rel_diff_first_step": rel[0][1] if rel else None,
            "loss_rel_diff_max": None if any(r is None for _, r in rel) else max((r for _, r in rel), default=None),
            "non_finite_losses": {"cuda": sum(num(m.get("loss")) is None for m in gpu if m.get("kind") == "step"),
                                  "cpu": sum(num(m.get("loss")) is None for m in cpu if m.get("kind") == "step")},
            "loss_rel_diff_by_step": rel,
            "graphs_per_s_median": {"cuda": rate(gpu), "cpu": rate(cpu)},
            "device_ops_per_step": [m.get("device_ops") for m in gpu if m.get("kind") == "step"][-1:],
            "final_eval": {"cuda": evals(gpu), "cpu": evals(cpu)},
            "eval_of_cpu_checkpoint": {"cuda": one("eval-cuda.json"), "cpu": one("eval-cpu.json")},
            "bf16": safe(bf16_summary, gpu, rate),
            "u8_spikes": safe(u8_summary, gpu, rate),
            "graph_replay": safe(replay_summary, gpu, rate),
            "log_tail": tail("train.log", 30)}

def bf16_summary(f32_steps, rate):
    """The cuda run again with train.precision = bf16: its speed and its loss against f32's."""
    ms = metrics("run-cuda-bf16")
    f32 = {m["step"]: m["loss"] for m in f32_steps if m.get("kind") == "step"}
    rel = [(m["step"], rel_diff(m.get("loss"), f32[m["step"]]))
           for m in ms if m.get("kind") == "step" and m["step"] in f32]
    return {"status": status("train_bf16"), "graphs_per_s_median": rate(ms), "loss_rel_diff_vs_f32_by_step": rel,
            "final_eval": [m for m in ms if m.get("kind") == "eval"][-1:],
            "log_tail": tail("train-bf16.log", 8)}

def u8_summary(f32_steps, rate):
    """The cuda run again with u8 spikes: its losses must be f32's exactly; and its speed."""
    ms = metrics("run-cuda-u8")
    f32 = {m["step"]: m["loss"] for m in f32_steps if m.get("kind") == "step"}
    same = [num(m.get("loss")) is not None and m["loss"] == f32.get(m["step"]) for m in ms if m.get("kind") == "step"]
    return {"status": status("train_u8"), "graphs_per_s_median": rate(ms), "steps": len(same),
            "loss_equal_to_f32_every_step": bool(same) and all(same),
            "log_tail": tail("train-u8.log", 8)}

def replay_summary(replayed, rate):
    """The cuda run (its step replayed as a CUDA graph) against the same run op by op."""
    ms = metrics("run-cuda-eager")
    steps = lambda xs: [m for m in xs if m.get("kind") == "step"]
    eager = {m["step"]: m["loss"] for m in steps(ms)}
    same = [num(m.get("loss")) is not None and m["loss"] == eager.get(m["step"]) for m in steps(replayed)]
    return {"status": status("train_eager"), "graphs_per_s_median": {"replayed": rate(replayed), "op_by_op": rate(ms)},
            "steps": len(same), "loss_equal_every_step": bool(same) and all(same),
            "device_ops_per_step": {"replayed": [m.get("device_ops") for m in steps(replayed)][-1:],
                                    "op_by_op": [m.get("device_ops") for m in steps(ms)][-1:],
                                    "first_step_replayed_run": [m.get("device_ops") for m in steps(replayed)][:1]},
            "log_tail": tail("train-eager.log", 8)}

def bench_agreement():
    """Issue 20: `gshn bench` is to replace cuda_ops once their figures agree within noise.
    Each cuda_ops fwd/bwd row beside the gshn bench row of the same kernel, dtype and dims."""
    rows = [r for f in ("gshn_bench.json", "infonce_bench.json") for r in (one(f) or {}).get("rows", [])]
    out = []
    for b in bench:
        op, _, pas = b["bench"].rpartition("_")
        *kv, dt = b.get("shape", "").split() or [""]
        dims = dict(t.split("=", 1) for t in kv if "=" in t)
        if pas not in ("fwd", "bwd") or not dims:
            continue
        for r in rows:
            if (r.get("op"), r.get("pass"), r.get("dtype")) == (op, pas, dt) and \
                    all(str(r.get("dims", {}).get(k)) == v for k, v in dims.items()):
                ok = num(r.get("ms")) and num(b.get("ms"))
                out.append({"kernel": f"{b['bench']} {b['shape']}", "cuda_ops_ms": b.get("ms"),
                            "gshn_bench_ms": r.get("ms"),
                            "gshn_bench_over_cuda_ops": round(r["ms"] / b["ms"], 3) if ok else None})
    return out

def ddp_losses(name):
    """The `step N  loss X` lines of a ddp_example.py run."""
    return [float(m.group(1)) for m in (re.match(r"step +\d+ +loss (\S+)", l) for l in tail(name, 1000)) if m]

def torch_cuda_summary():
    """gshn from PyTorch on the GPU: the ops against their CPU path, the cost of a call, and
    DDP over NCCL with one rank against the 1-process run."""
    log = tail("torch_cuda.log", 100000)
    m = re.search(r"Ran (\d+) tests?", "\n".join(log))
    nccl, single = ddp_losses("ddp_nccl.log"), ddp_losses("ddp_single.log")
    diffs = [rel_diff(a, b) for a, b in zip(nccl, single)]
    return {"status": status("torch_cuda"), "tests_run": m and int(m.group(1)),
            "result": next((l for l in reversed(log) if l.startswith(("OK", "FAILED"))), None),
            "failures": [l for l in log if l.startswith(("FAIL:", "ERROR:"))][:40],
            "calls": lines("torch_calls.jsonl"), "calls_status": status("torch_calls"),
            "calls_stderr_tail": tail("torch_calls.err", 6),
            "ddp_nccl_world_1": {"status": status("ddp_nccl"), "single_process_status": status("ddp_single"),
                                 "losses": nccl, "single_process_losses": single,
                                 "loss_rel_diff_first_5_steps": None if None in diffs[:5] else max(diffs[:5], default=None),
                                 "log_tail": tail("ddp_nccl.log", 6) + tail("ddp_single.log", 3)},
            "log_tail": log[-40:] if status("torch_cuda") != "exit 0" else log[-4:]}

def demo_summary():
    ms = metrics("demo")
    steps = sorted(x for x in (num(m.get("graphs_per_s")) for m in ms if m.get("kind") == "step") if x is not None)
    secs = open(os.path.join(tmp, "demo.seconds")).read().strip() if os.path.exists(os.path.join(tmp, "demo.seconds")) else None
    return {"status": status("demo"), "wall_s": secs and int(secs),
            "graphs_per_s_median": steps[len(steps) // 2] if steps else None,
            "final_eval": [m for m in ms if m.get("kind") == "eval"][-1:],
            "log_tail": tail("demo.log", 14)}

def memcheck_summary():
    log = tail("memcheck.log", 100000)
    return {"status": status("memcheck"), "summary": [l for l in log if "ERROR SUMMARY" in l or "test result" in l],
            "errors": [l for l in log if l.startswith("=========") and "ERROR SUMMARY" not in l][:40]}

failed = [p for p in parity if not p.get("pass")]
m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", "\n".join(tail("parity.log", 400)))
ran = lambda part: status(part) != "skipped"
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": device,
    "parts": os.environ.get("GPU_RUN_PARTS") or "all",
    "status": st,
    "kernels_sha256": ksha,
    "kernels_match_build": (man or {}).get("kernels_sha256") == ksha if man else None,
    "build": man and {k: man.get(k) for k in ("commit", "dirty", "nvcc", "cuda_arch", "kernels_sha256")},
    "parity": {"status": status("parity"),
               "tests": m and {"result": m.group(1), "passed": int(m.group(2)), "failed": int(m.group(3))},
               "checks": len(parity), "failed_checks": len(failed), "results": parity,
               "log_tail": tail("parity.log", 40) if (failed or status("parity") not in ("exit 0", "skipped")) else []},
    "infonce_paths": {path: {"status": status(f"infonce_{path}"), "checks": lines(f"parity-infonce-{path}.jsonl"),
                             "log_tail": tail(f"parity-infonce-{path}.log", 12)}
                      for path in ("tiles", "simt")},
    "bench": {"status": status("bench"), "copy_peak_gbps": peak, "results": bench, "stderr_tail": tail("bench.err", 10)},
    "half_vs_f32": half_vs_f32,
    "torch": {"status": status("torch"), "results": torch, "stderr_tail": tail("torch.err", 10)},
    "infonce_bench": {"status": status("infonce_bench"), "report": one("infonce_bench.json"),
                      "log_tail": tail("infonce_bench.log", 14),
                      "f32_tiles": one("infonce_tiles_bench.json")},
    "gshn_bench_vs_cuda_ops": safe(bench_agreement),
    "gshn_bench": {"status": status("gbench"), "report": one("gshn_bench.json"),
                   "log_tail": tail("gshn_bench.log", 10) if status("gbench") not in ("exit 0", "skipped") else []},
    "comparisons": cmp,
    "train": safe(train_summary) if ran("train") else {"status": status("train")},
    "demo": safe(demo_summary) if ran("demo") else {"status": status("demo")},
    "twin": {"parity_status": status("twin_parity"), "parity": one("twin/parity.json"),
             "parity_log_tail": tail("twin_parity.log", 40),
             "bench_status": status("twin_bench"), "bench": one("twin_bench.json"),
             "bench_log_tail": tail("twin_bench.log", 10)},
    "memcheck": safe(memcheck_summary) if ran("memcheck") else {"status": status("memcheck")},
    "torch_cuda": safe(torch_cuda_summary) if ran("torch_cuda") else {"status": status("torch_cuda")},
}
if device == "none":
    report["skipped"] = "no GPU device (nvidia-smi found none): everything skipped"
slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() or "none"
parts = re.sub(r"[^A-Za-z0-9]+", "-", os.environ.get("GPU_RUN_PARTS", "")).strip("-")
name = f"{datetime.date.today().isoformat()}-{slug}{'-' + parts if parts else ''}.json"
text = json.dumps(report, indent=1)
os.makedirs("reports/gpu", exist_ok=True)
open(os.path.join("reports/gpu", name), "w").write(text)
if os.environ.get("OUT"):
    open(os.path.join(os.environ["OUT"], name), "w").write(text)
print(f"gpu_run: report reports/gpu/{name}: parity {len(parity) - len(failed)}/{len(parity)} checks pass; "
      + ", ".join(f"{k} {v}" for k, v in st.items()), file=sys.stderr)
