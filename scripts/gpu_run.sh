#!/usr/bin/env bash
# The GPU session itself (DESIGN §8), on the DEVICE machine (no Rust, no network), after
# `bash scripts/gpu_prepare.sh` here and with `carry: [".gpu"]`:
#   bash scripts/gpu_run.sh
# Runs, each part under its own timeout (all within GPU_RUN_BUDGET): the CUDA parity tests
# (.gpu/bin/test-cuda_parity), and its InfoNCE tests again on each of InfoNCE's two CUDA paths
# (GSHN_INFONCE_KERNELS=tiles, =simt); a short training run on cuda and on cpu from one seed (loss per
# step side by side, graphs/s, one checkpoint evaluated on both devices); the CUDA kernel bench
# in short mode (.gpu/bin/bench-cuda_ops --short); `gshn bench --device cuda --json` (the user's
# benchmark; report key gshn_bench_vs_cuda_ops puts each cuda_ops row beside its row); InfoNCE at B = 32768, D = 512 in f32 / tf32 / bf16
# beside PyTorch's dense loss, and f32 on the tile path; python/bench_torch.py (PyTorch / PyG on the
# same shapes); `gshn demo --device cuda` (the README's main command); the PyTorch twin
# (scripts/twin_parity.sh with steps dumped on cuda, python/twin_bench.py at batch 256, eager and
# compiled; report key "twin"); gshn from PyTorch on CUDA (python/test_ops.py's Cuda class,
# python/torch_calls.py, DDP over NCCL with one rank; report key "torch_cuda"); the parity tests again
# under compute-sanitizer memcheck; with GPU_RUN_PROFILE=1, ncu per-kernel times of the bench
# (ncu.csv). Writes reports/gpu/<date>-<device>.json (and, when $OUT is set, the report and
# the raw logs to $OUT) with:
# device, kernels_sha256 (= cat $(LC_ALL=C ls kernels/*) | sha256sum), the build manifest, each
# parity result (name, pass, rel_err), each kernel timing with GB/s or TFLOP/s against its floor
# and against the measured d2d copy peak, the PyTorch figures, and side-by-side comparisons.
# LD_LIBRARY_PATH gets the Python packages' nvidia/*/lib folders (cuBLAS, NVRTC).
# Without a GPU (or without .gpu/): writes a report with "device": "none" and every part marked
# skipped, and exits 2. Exit 1 when a parity test fails; 0 otherwise.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# gpu_prepare.sh packs the executables (.gpu/bin.tar.gz) to fit the carry limit
[[ -f .gpu/bin.tar.gz && ! -d .gpu/bin ]] && tar xzf .gpu/bin.tar.gz -C .gpu
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"
# Every part's timeout is cut to what is left of GPU_RUN_BUDGET seconds (default 420), keeping
# 20 s for the report, so a slow part never costs the report of the others.
BUDGET="${GPU_RUN_BUDGET:-420}"; START="$(date +%s)"
cap() { local left=$(( BUDGET - ($(date +%s) - START) - 20 )); (( left < 1 )) && left=1; echo $(( left < $1 ? left : $1 )); }

NVLIB="$("$PY" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for r in roots:
    dirs += sorted(glob.glob(os.path.join(r, "*", "lib")))
print(":".join(dirs))
PY
)"
export LD_LIBRARY_PATH="${NVLIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | sed 's/^ *//;s/ *$//')"
[[ -n "$DEVICE" ]] || DEVICE="none"
KSHA="$(cat $(LC_ALL=C ls kernels/* | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)"  # C order, as gpu_prepare.sh
echo "gpu_run: device=$DEVICE kernels_sha256=$KSHA" >&2

status_parity=skipped; status_bench=skipped; status_torch=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/test-cuda_parity ]]; then
  echo "gpu_run: parity tests ..." >&2
  GSHN_PARITY_REPORT="$TMP/parity.jsonl" timeout $(cap 150) .gpu/bin/test-cuda_parity --test-threads=1 \
    >"$TMP/parity.log" 2>&1
  rc=$?; status_parity="exit $rc"; tail -n 40 "$TMP/parity.log" >&2
  # InfoNCE's two CUDA paths held against the CPU in every mode (the default above runs f32 on
  # SIMT and tf32/bf16 on the tiles): all modes on the one-pass tiles, then all on SIMT.
  for path in tiles simt; do
    echo "gpu_run: InfoNCE parity, GSHN_INFONCE_KERNELS=$path ..." >&2
    GSHN_INFONCE_KERNELS=$path GSHN_PARITY_REPORT="$TMP/parity-infonce-$path.jsonl" timeout $(cap 40) \
      .gpu/bin/test-cuda_parity --test-threads=1 infonce >"$TMP/parity-infonce-$path.log" 2>&1
    echo "exit $?" >>"$TMP/parity-infonce-$path.log"; tail -n 6 "$TMP/parity-infonce-$path.log" >&2
  done
fi
status_train=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/gshn ]]; then
  # The whole product on the GPU: the same 20 training steps (batch 256) on cuda and on cpu from
  # one seed, then one CPU-trained checkpoint evaluated on both devices.
  echo "gpu_run: training on cuda and cpu ..." >&2
  G=.gpu/bin/gshn
  printf '[train]\nepochs = 2\nbatch_size = 256\nlog_every = 1\n' >"$TMP/train.toml"
  {
    timeout $(cap 20) $G synth --out "$TMP/synth" --train 2560 --val 256 --seed 0 &&
    timeout $(cap 60) $G train --data "$TMP/synth" --out "$TMP/run-cuda" --config "$TMP/train.toml" --device cuda &&
    timeout $(cap 60) $G train --data "$TMP/synth" --out "$TMP/run-cpu" --config "$TMP/train.toml" --device cpu &&
    timeout $(cap 20) $G eval --data "$TMP/synth" --checkpoint "$TMP/run-cpu" --device cuda --json >"$TMP/eval-cuda.json" &&
    timeout $(cap 20) $G eval --data "$TMP/synth" --checkpoint "$TMP/run-cpu" --device cpu --json >"$TMP/eval-cpu.json"
  } >"$TMP/train.log" 2>&1
  status_train="exit $?"; tail -n 15 "$TMP/train.log" >&2
  # The same steps in bf16 (issue 15: half storage, f32 master weights): speed and loss vs f32.
  printf 'precision = "bf16"\n' | cat "$TMP/train.toml" - >"$TMP/train-bf16.toml"
  timeout $(cap 60) $G train --data "$TMP/synth" --out "$TMP/run-cuda-bf16" \
    --config "$TMP/train-bf16.toml" --device cuda >"$TMP/train-bf16.log" 2>&1
  echo "exit $?" >>"$TMP/train-bf16.log"; tail -n 4 "$TMP/train-bf16.log" >&2
  # And with u8 spikes (model.lif.u8_spikes): the same losses as f32's, bit for bit.
  printf '[model.lif]\nu8_spikes = true\n' | cat "$TMP/train.toml" - >"$TMP/train-u8.toml"
  timeout $(cap 60) $G train --data "$TMP/synth" --out "$TMP/run-cuda-u8" \
    --config "$TMP/train-u8.toml" --device cuda >"$TMP/train-u8.log" 2>&1
  echo "exit $?" >>"$TMP/train-u8.log"; tail -n 4 "$TMP/train-u8.log" >&2
  # The cuda run replays its step as a CUDA graph (issue 17); op by op it must give the same
  # losses, bit for bit, with a launch per op.
  timeout $(cap 60) $G train --data "$TMP/synth" --out "$TMP/run-cuda-eager" \
    --config "$TMP/train.toml" --device cuda --no-cuda-graph >"$TMP/train-eager.log" 2>&1
  echo "exit $?" >>"$TMP/train-eager.log"; tail -n 4 "$TMP/train-eager.log" >&2
fi

status_torch_cuda=skipped
if [[ "$DEVICE" != none && -f .gpu/bin/libgshn_capi.so ]]; then
  # gshn from PyTorch on the GPU (issue 18): every torch op on CUDA tensors against its CPU
  # path, opcheck and torch.compile on CUDA (test_ops.Cuda); the host cost of a call and what
  # it puts on the device (python/torch_calls.py: no device-to-device copies, kernels on
  # PyTorch's current stream); DistributedDataParallel over NCCL with one rank, against the
  # plain 1-process run (python/ddp_example.py).
  echo "gpu_run: PyTorch ops on cuda ..." >&2
  export GSHN_LIB="$ROOT/.gpu/bin/libgshn_capi.so"
  (cd python && timeout $(cap 90) "$PY" -m unittest -v test_ops.Cuda) >"$TMP/torch_cuda.log" 2>&1
  status_torch_cuda="exit $?"; tail -n 5 "$TMP/torch_cuda.log" >&2
  timeout $(cap 40) "$PY" python/torch_calls.py --device cuda >"$TMP/torch_calls.jsonl" 2>"$TMP/torch_calls.err"
  echo "exit $?" >>"$TMP/torch_calls.err"; cat "$TMP/torch_calls.jsonl" >&2
  timeout $(cap 60) "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    python/ddp_example.py --device cuda >"$TMP/ddp_nccl.log" 2>&1
  echo "exit $?" >>"$TMP/ddp_nccl.log"
  timeout $(cap 40) "$PY" python/ddp_example.py --device cuda >"$TMP/ddp_single.log" 2>&1
  echo "exit $?" >>"$TMP/ddp_single.log"; tail -n 2 "$TMP/ddp_nccl.log" "$TMP/ddp_single.log" >&2
fi

if [[ "$DEVICE" != none && -x .gpu/bin/bench-cuda_ops ]]; then
  echo "gpu_run: kernel bench ..." >&2
  timeout $(cap 70) .gpu/bin/bench-cuda_ops --short >"$TMP/bench.jsonl" 2>"$TMP/bench.err"
  status_bench="exit $?"; cat "$TMP/bench.jsonl" >&2
fi
status_gbench=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/gshn ]]; then
  # `gshn bench`, the user's benchmark, beside the cuda_ops bench it is to replace (issue 20:
  # their figures must agree within noise before cuda_ops goes).
  echo "gpu_run: gshn bench --device cuda ..." >&2
  timeout $(cap 60) .gpu/bin/gshn bench --device cuda --shapes default --budget-ms 200 \
    --json "$TMP/gshn_bench.json" >"$TMP/gshn_bench.log" 2>&1
  status_gbench="exit $?"; cat "$TMP/gshn_bench.log" >&2
  # InfoNCE at B = 32768, D = 512 in every precision mode, beside PyTorch's dense loss (f32,
  # TF32, bf16 autocast) in the same run (issue 16's goals; recorded in the report beside
  # gshn_bench).
  echo "gpu_run: gshn bench --ops infonce --shapes large (f32, tf32, bf16) ..." >&2
  timeout $(cap 60) .gpu/bin/gshn bench --device cuda --ops infonce --shapes large \
    --dtype f32,tf32,bf16 --budget-ms 100 --compare "$PY" \
    --json "$TMP/infonce_bench.json" >"$TMP/infonce_bench.log" 2>&1
  echo "infonce_bench exit $?" >>"$TMP/infonce_bench.log"; cat "$TMP/infonce_bench.log" >&2
  # The f32 mode on the one-pass tiles (FMA), to decide which path f32 takes by default.
  GSHN_INFONCE_KERNELS=tiles timeout $(cap 30) .gpu/bin/gshn bench --device cuda --ops infonce \
    --shapes large --dtype f32 --budget-ms 100 --json "$TMP/infonce_tiles_bench.json" \
    >"$TMP/infonce_tiles_bench.log" 2>&1
  echo "exit $?" >>"$TMP/infonce_tiles_bench.log"; cat "$TMP/infonce_tiles_bench.log" >&2
fi
if [[ "$DEVICE" != none ]]; then
  echo "gpu_run: PyTorch / PyG ..." >&2
  timeout $(cap 80) "$PY" python/bench_torch.py --short >"$TMP/torch.jsonl" 2>"$TMP/torch.err"
  status_torch="exit $?"; cat "$TMP/torch.jsonl" >&2
fi

status_demo=skipped; status_memcheck=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/gshn ]]; then
  # The README's main command (30 epochs, default config) on the GPU; README has the CPU row.
  echo "gpu_run: gshn demo --device cuda ..." >&2
  t0="$(date +%s)"
  timeout $(cap 150) .gpu/bin/gshn demo --data "$TMP/demo-data" --out "$TMP/demo" --device cuda >"$TMP/demo.log" 2>&1
  status_demo="exit $?"; echo $(( $(date +%s) - t0 )) >"$TMP/demo.seconds"; tail -n 12 "$TMP/demo.log" >&2
fi
status_twin=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/gshn ]]; then
  # The whole training step against the PyTorch twin (issue 17): every config's step dumped
  # from the CUDA backend and replayed by python/gshn_twin.py, then graphs/s of gshn on cuda
  # against the twin in eager mode and under torch.compile, batch 256, alternating rounds.
  echo "gpu_run: PyTorch twin: parity of CUDA steps, then speed ..." >&2
  GSHN=.gpu/bin/gshn DEVICE=cuda timeout $(cap 90) bash scripts/twin_parity.sh "$TMP/twin" "$PY" \
    >"$TMP/twin_parity.log" 2>&1
  echo "exit $?" >>"$TMP/twin_parity.log"; tail -n 3 "$TMP/twin_parity.log" >&2
  [[ -d "$TMP/demo-data/train" ]] || .gpu/bin/gshn synth --out "$TMP/demo-data" --train 2000 --val 200 --seed 0 >/dev/null
  timeout $(cap 150) "$PY" python/twin_bench.py --device cuda --batch 256 --compile --rounds 2 \
    --gshn .gpu/bin/gshn --data "$TMP/demo-data" --json "$TMP/twin_bench.json" >"$TMP/twin_bench.log" 2>&1
  status_twin="exit $?"; tail -n 6 "$TMP/twin_bench.log" >&2
fi
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)"
if [[ "$DEVICE" != none && -x .gpu/bin/test-cuda_parity && -n "$SANITIZER" ]]; then
  # Out-of-bounds and misaligned accesses in every parity case (exit != 0 on any error).
  echo "gpu_run: parity tests under compute-sanitizer memcheck ..." >&2
  timeout $(cap 150) "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 3 \
    .gpu/bin/test-cuda_parity --test-threads=1 >"$TMP/memcheck.log" 2>&1
  status_memcheck="exit $?"; grep -E "ERROR SUMMARY|test result" "$TMP/memcheck.log" >&2
fi

NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1)"
if [[ "${GPU_RUN_PROFILE:-0}" == 1 && "$DEVICE" != none && -x .gpu/bin/bench-cuda_ops && -n "$NCU" ]]; then
  # Per-kernel device time of the bench's launches (clocks left as found), for tuning.
  echo "gpu_run: ncu per-kernel durations of the kernel bench ..." >&2
  timeout $(cap 120) "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    .gpu/bin/bench-cuda_ops --short >"$TMP/ncu.csv" 2>>"$TMP/bench.err"
  echo "ncu exit $?" >&2
  "$PY" - "$TMP/ncu.csv" <<'NCU' >&2
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))  # the bench's own JSON lines come first
hi = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if hi is not None:
    head = rows[hi]
    k, g, v = head.index("Kernel Name"), head.index("Grid Size"), head.index("Metric Value")
    per = {}
    for r in rows[hi + 1:]:
        if len(r) == len(head):
            per.setdefault((r[k][:40], r[g]), []).append(float(r[v].replace(",", "")) / 1e3)
    for (name, grid), us in per.items():
        print(f"  {name:<40} grid {grid:<14} {statistics.median(us):10.1f} us median of {len(us)}")
NCU
fi

"$PY" - "$TMP" "$DEVICE" "$KSHA" "$status_parity" "$status_bench" "$status_torch" "$status_train" "$status_demo" "$status_memcheck" "$status_gbench" "$status_twin" "$status_torch_cuda" <<'PY'
import datetime, json, os, re, sys
(tmp, device, ksha, st_par, st_bench, st_torch, st_train, st_demo, st_mem, st_gbench, st_twin,
 st_torch_cuda) = sys.argv[1:13]

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

man = json.load(open(".gpu/manifest.json")) if os.path.exists(".gpu/manifest.json") else None
parity = lines("parity.jsonl")
bench = [b for b in lines("bench.jsonl") if "bench" in b]
peak = next((b["gbps"] for b in bench if b["bench"] == "copy_d2d"), None)
for b in bench:
    if peak and b.get("gbps"):
        b["fraction_of_copy_peak"] = round(b["gbps"] / peak, 3)
torch = lines("torch.jsonl")
ms = {b["bench"] + "|" + b.get("shape", ""): b["ms"] for b in bench}
tms = {t["bench"] + "|" + t.get("shape", ""): t["ms"] for t in torch if "ms" in t}

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
    p = os.path.join(tmp, run, "metrics.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []

def one(name):
    p = os.path.join(tmp, name)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None

def train_summary():
    gpu, cpu = metrics("run-cuda"), metrics("run-cpu")
    steps = {m["step"]: m for m in cpu if m.get("kind") == "step"}
    rel = [(m["step"], abs(m["loss"] - steps[m["step"]]["loss"]) / abs(steps[m["step"]]["loss"]))
           for m in gpu if m.get("kind") == "step" and m["step"] in steps]

    def rate(ms):  # median; the first steps include warm-up
        r = sorted(m["graphs_per_s"] for m in ms if m.get("kind") == "step")
        return r[len(r) // 2] if r else None
    evals = lambda ms: [m for m in ms if m.get("kind") == "eval"][-1:]
    return {"status": st_train, "batch_size": 256, "steps_compared": len(rel),
            "loss_rel_diff_first_step": rel[0][1] if rel else None,
            "loss_rel_diff_max": max((r for _, r in rel), default=None),
            "loss_rel_diff_by_step": rel,
            "graphs_per_s_median": {"cuda": rate(gpu), "cpu": rate(cpu)},
            "device_ops_per_step": [m.get("device_ops") for m in gpu if m.get("kind") == "step"][-1:],
            "final_eval": {"cuda": evals(gpu), "cpu": evals(cpu)},
            "eval_of_cpu_checkpoint": {"cuda": one("eval-cuda.json"), "cpu": one("eval-cpu.json")},
            "bf16": bf16_summary(gpu, rate),
            "u8_spikes": u8_summary(gpu, rate),
            "graph_replay": replay_summary(gpu, rate),
            "log_tail": tail("train.log", 30)}

def bf16_summary(f32_steps, rate):
    """The cuda run again with train.precision = bf16: its speed and its loss against f32's."""
    ms = metrics("run-cuda-bf16")
    f32 = {m["step"]: m["loss"] for m in f32_steps if m.get("kind") == "step"}
    rel = [(m["step"], abs(m["loss"] - f32[m["step"]]) / abs(f32[m["step"]]))
           for m in ms if m.get("kind") == "step" and m["step"] in f32]
    return {"graphs_per_s_median": rate(ms), "loss_rel_diff_vs_f32_by_step": rel,
            "final_eval": [m for m in ms if m.get("kind") == "eval"][-1:],
            "log_tail": tail("train-bf16.log", 8)}

def u8_summary(f32_steps, rate):
    """The cuda run again with u8 spikes: its losses must be f32's exactly; and its speed."""
    ms = metrics("run-cuda-u8")
    f32 = {m["step"]: m["loss"] for m in f32_steps if m.get("kind") == "step"}
    same = [m["loss"] == f32.get(m["step"]) for m in ms if m.get("kind") == "step"]
    return {"graphs_per_s_median": rate(ms), "steps": len(same),
            "loss_equal_to_f32_every_step": bool(same) and all(same),
            "log_tail": tail("train-u8.log", 8)}

def replay_summary(replayed, rate):
    """The cuda run (its step replayed as a CUDA graph) against the same run op by op."""
    ms = metrics("run-cuda-eager")
    steps = lambda xs: [m for m in xs if m.get("kind") == "step"]
    eager = {m["step"]: m["loss"] for m in steps(ms)}
    same = [m["loss"] == eager.get(m["step"]) for m in steps(replayed)]
    return {"graphs_per_s_median": {"replayed": rate(replayed), "op_by_op": rate(ms)},
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
                out.append({"kernel": f"{b['bench']} {b['shape']}", "cuda_ops_ms": b["ms"],
                            "gshn_bench_ms": r["ms"], "gshn_bench_over_cuda_ops": round(r["ms"] / b["ms"], 3)})
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
    diffs = [abs(a - b) / abs(b) for a, b in zip(nccl, single)]
    return {"status": st_torch_cuda, "tests_run": m and int(m.group(1)),
            "result": next((l for l in reversed(log) if l.startswith(("OK", "FAILED"))), None),
            "failures": [l for l in log if l.startswith(("FAIL:", "ERROR:"))][:40],
            "calls": lines("torch_calls.jsonl"), "calls_stderr_tail": tail("torch_calls.err", 6),
            "ddp_nccl_world_1": {"losses": nccl, "single_process_losses": single,
                                 "loss_rel_diff_first_5_steps": max(diffs[:5], default=None),
                                 "log_tail": tail("ddp_nccl.log", 6) + tail("ddp_single.log", 3)},
            "log_tail": log[-40:] if st_torch_cuda != "exit 0" else log[-4:]}

def demo_summary():
    ms = metrics("demo")
    steps = sorted(m["graphs_per_s"] for m in ms if m.get("kind") == "step")
    secs = open(os.path.join(tmp, "demo.seconds")).read().strip() if os.path.exists(os.path.join(tmp, "demo.seconds")) else None
    return {"status": st_demo, "wall_s": secs and int(secs),
            "graphs_per_s_median": steps[len(steps) // 2] if steps else None,
            "final_eval": [m for m in ms if m.get("kind") == "eval"][-1:],
            "log_tail": tail("demo.log", 14)}

def memcheck_summary():
    log = tail("memcheck.log", 100000)
    return {"status": st_mem, "summary": [l for l in log if "ERROR SUMMARY" in l or "test result" in l],
            "errors": [l for l in log if l.startswith("=========") and "ERROR SUMMARY" not in l][:40]}

failed = [p for p in parity if not p.get("pass")]
m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", "\n".join(tail("parity.log", 400)))
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": device,
    "kernels_sha256": ksha,
    "kernels_match_build": (man or {}).get("kernels_sha256") == ksha if man else None,
    "build": man and {k: man[k] for k in ("commit", "dirty", "nvcc", "cuda_arch", "kernels_sha256")},
    "parity": {"status": st_par, "tests": m and {"result": m.group(1), "passed": int(m.group(2)), "failed": int(m.group(3))},
               "checks": len(parity), "failed_checks": len(failed), "results": parity,
               "log_tail": tail("parity.log", 40) if (failed or st_par not in ("exit 0", "skipped")) else []},
    "bench": {"status": st_bench, "copy_peak_gbps": peak, "results": bench, "stderr_tail": tail("bench.err", 10)},
    "half_vs_f32": half_vs_f32,
    "torch": {"status": st_torch, "results": torch, "stderr_tail": tail("torch.err", 10)},
    "infonce_bench": {"report": json.load(open(os.path.join(tmp, "infonce_bench.json")))
                      if os.path.exists(os.path.join(tmp, "infonce_bench.json")) else None,
                      "log_tail": tail("infonce_bench.log", 14),
                      "f32_tiles": json.load(open(os.path.join(tmp, "infonce_tiles_bench.json")))
                      if os.path.exists(os.path.join(tmp, "infonce_tiles_bench.json")) else None},
    "infonce_paths": {path: {"checks": lines(f"parity-infonce-{path}.jsonl"),
                             "log_tail": tail(f"parity-infonce-{path}.log", 12)}
                      for path in ("tiles", "simt")},
    "gshn_bench_vs_cuda_ops": bench_agreement(),
    "gshn_bench": {"status": st_gbench,
                   "report": json.load(open(os.path.join(tmp, "gshn_bench.json")))
                   if os.path.exists(os.path.join(tmp, "gshn_bench.json")) else None,
                   "log_tail": tail("gshn_bench.log", 10) if st_gbench not in ("exit 0", "skipped") else []},
    "comparisons": cmp,
    "train": train_summary() if st_train != "skipped" else {"status": st_train},
    "demo": demo_summary() if st_demo != "skipped" else {"status": st_demo},
    "twin": {"status": st_twin, "parity_log_tail": tail("twin_parity.log", 40),
             "bench": json.load(open(os.path.join(tmp, "twin_bench.json")))
             if os.path.exists(os.path.join(tmp, "twin_bench.json")) else None,
             "bench_log_tail": tail("twin_bench.log", 10)},
    "memcheck": memcheck_summary() if st_mem != "skipped" else {"status": st_mem},
    "torch_cuda": torch_cuda_summary() if st_torch_cuda != "skipped" else {"status": st_torch_cuda},
}
if device == "none":
    report["skipped"] = "no GPU device (nvidia-smi found none): everything skipped"
slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() or "none"
name = f"{datetime.date.today().isoformat()}-{slug}.json"
text = json.dumps(report, indent=1)
os.makedirs("reports/gpu", exist_ok=True)
open(os.path.join("reports/gpu", name), "w").write(text)
if os.environ.get("OUT"):
    open(os.path.join(os.environ["OUT"], name), "w").write(text)
print(f"gpu_run: report reports/gpu/{name}: parity {st_par} ({len(parity) - len(failed)}/{len(parity)} checks pass), "
      f"bench {st_bench}, gshn bench {st_gbench}, torch {st_torch}, train {st_train}, demo {st_demo}, twin {st_twin}, "
      f"memcheck {st_mem}, torch on cuda {st_torch_cuda}", file=sys.stderr)
PY

[[ -n "${OUT:-}" ]] && cp "$TMP"/*.log "$TMP"/*.err "$TMP"/*.csv "$OUT"/ 2>/dev/null
if [[ "$DEVICE" == none ]]; then echo "gpu_run: no device: report marks everything skipped" >&2; exit 2; fi
[[ "$status_parity" == "exit 0" ]] || exit 1
exit 0
