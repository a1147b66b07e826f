#!/usr/bin/env bash
# The GPU session itself (DESIGN §8), on the DEVICE machine (no Rust, no network), after
# `bash scripts/gpu_prepare.sh` here and with `carry: [".gpu"]`:
#   bash scripts/gpu_run.sh                                  (run tool: timeout_s 480)
#   GPU_RUN_PARTS=memcheck,twin_bench bash scripts/gpu_run.sh  (only those parts)
# The parts, most needed first, each under its own timeout, all within GPU_RUN_BUDGET seconds
# (default 420; a part starts only with 15 s of it left, else its status is "skipped (budget)"):
#   parity      the CUDA parity tests (.gpu/bin/test-cuda_parity, GSHN_REQUIRE_CUDA=1: no GPU is
#               a failure, not a skip), then its InfoNCE tests on each of InfoNCE's two CUDA
#               paths (GSHN_INFONCE_KERNELS=tiles, =simt)
#   train       the same 20 training steps on cuda and on cpu from one seed (losses side by side,
#               graphs/s, one checkpoint evaluated on both devices); again in bf16, with u8
#               spikes, and op by op (--no-cuda-graph: the replayed losses must equal these)
#   bench       the CUDA kernel bench (.gpu/bin/bench-cuda_ops --short)
#   gbench      `gshn bench --device cuda --json` beside it; InfoNCE at B = 32768, D = 512 in
#               f32 / tf32 / bf16 beside PyTorch's dense loss, and f32 on the tile path
#   torch       python/bench_torch.py (PyTorch / PyG on the same shapes)
#   torch_cuda  gshn from PyTorch on CUDA (python/test_ops.py's Cuda class, python/torch_calls.py,
#               DDP over NCCL with one rank against the plain run)
#   twin        the PyTorch twin's parity on steps dumped from cuda (scripts/twin_parity.sh)
#   demo        `gshn demo --device cuda` (the README's main command)
#   memcheck    the parity tests under compute-sanitizer memcheck
#   twin_bench  python/twin_bench.py at batch 256, eager and compiled (last: compiling is slow)
#   ncu         with GPU_RUN_PROFILE=1 (or named in GPU_RUN_PARTS): ncu per-kernel times
# After every part scripts/gpu_report.py rewrites reports/gpu/<date>-<device>[-<parts>].json and,
# when $OUT is set, puts it and gpu-logs.tar.gz (every log, status and metrics file) in $OUT: a
# run cut short still returns what it did. The report holds the device, kernels_sha256 (= cat
# $(LC_ALL=C ls kernels/*) | sha256sum) and the build manifest, each part's status, each parity
# result (name, pass, rel_err), each kernel timing with GB/s or TFLOP/s against its floor and the
# measured d2d copy peak, the PyTorch figures and side-by-side comparisons.
# LD_LIBRARY_PATH gets the Python packages' nvidia/*/lib folders (cuBLAS, NVRTC).
# Exit: 0 when the parity tests pass (or were not asked for); 1 on a parity failure; 2 without a
# GPU (or without .gpu/: the report marks everything skipped); 3 when .gpu/ was built from other
# kernel sources than these (rerun gpu_prepare.sh: nothing runs on stale executables).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# gpu_prepare.sh packs the executables (.gpu/bin.tar.gz) to fit the carry limit
[[ -f .gpu/bin.tar.gz && ! -d .gpu/bin ]] && tar xzf .gpu/bin.tar.gz -C .gpu
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="$(command -v "${PYTHON:-python3}" || echo "${PYTHON:-python3}")"  # absolute: some parts cd
BUDGET="${GPU_RUN_BUDGET:-420}"; START="$(date +%s)"
# Seconds of the budget left, keeping 20 for the last report.
left() { echo $(( BUDGET - ($(date +%s) - START) - 20 )); }
# A part's timeout: at most $1 seconds, and no more than is left.
cap() { local l; l="$(left)"; (( l < 1 )) && l=1; echo $(( l < $1 ? l : $1 )); }
# `T SECONDS cmd...`: cmd under that cap; killed 10 s after SIGTERM if it ignores it.
T() { local s="$1"; shift; timeout -k 10 "$(cap "$s")" "$@"; }
# A part's status (the report reads the last one of each part).
status() { echo "$1=$2" >>"$TMP/status.txt"; }
# Whether part $1 runs: asked for (GPU_RUN_PARTS, default all but ncu) and the budget has room;
# a part asked for without room is marked "skipped (budget)".
want() {
  local asked=1
  if [[ -n "${GPU_RUN_PARTS:-}" ]]; then [[ ",$GPU_RUN_PARTS," == *",$1,"* ]] || asked=0
  elif [[ "$1" == ncu ]]; then [[ "${GPU_RUN_PROFILE:-0}" == 1 ]] || asked=0; fi
  (( asked )) || return 1
  if (( $(left) < 15 )); then status "$1" "skipped (budget)"; return 1; fi
}
# The report of everything so far, and the logs, in reports/gpu/ and $OUT.
report() {
  "$PY" scripts/gpu_report.py "$TMP" "$DEVICE" "$KSHA"
  if [[ -n "${OUT:-}" ]]; then
    (cd "$TMP" && find . -maxdepth 2 -type f -size -8M \( -name '*.log' -o -name '*.err' -o -name '*.csv' \
      -o -name '*.jsonl' -o -name '*.json' -o -name '*.seconds' -o -name status.txt \) -print0 |
      tar czf "$OUT/gpu-logs.tar.gz" --null -T -) 2>/dev/null
  fi
}

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
[[ -n "$DEVICE" && "$DEVICE" != *"No devices"* ]] || DEVICE="none"
KSHA="$(cat $(LC_ALL=C ls kernels/* | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)"  # C order, as gpu_prepare.sh
echo "gpu_run: device=$DEVICE kernels_sha256=$KSHA" >&2
BUILT="$("$PY" -c 'import json; print(json.load(open(".gpu/manifest.json"))["kernels_sha256"])' 2>/dev/null)"
if [[ "$DEVICE" != none && -n "$BUILT" && "$BUILT" != "$KSHA" ]]; then
  echo "gpu_run: .gpu/ was built from other kernel sources ($BUILT): rerun scripts/gpu_prepare.sh" >&2
  status build "stale: built from kernels $BUILT"
  report
  exit 3
fi
G=.gpu/bin/gshn
have() { [[ "$DEVICE" != none && -e "$1" ]]; }

if have .gpu/bin/test-cuda_parity && want parity; then
  echo "gpu_run: parity tests ..." >&2
  GSHN_REQUIRE_CUDA=1 GSHN_PARITY_REPORT="$TMP/parity.jsonl" T 150 .gpu/bin/test-cuda_parity --test-threads=1 \
    >"$TMP/parity.log" 2>&1
  status parity "exit $?"; tail -n 40 "$TMP/parity.log" >&2
  report
  # InfoNCE's two CUDA paths held against the CPU in every mode (the default above runs f32 on
  # SIMT and tf32/bf16 on the tiles): all modes on the one-pass tiles, then all on SIMT.
  for path in tiles simt; do
    if (( $(left) < 15 )); then status "infonce_$path" "skipped (budget)"; continue; fi
    echo "gpu_run: InfoNCE parity, GSHN_INFONCE_KERNELS=$path ..." >&2
    GSHN_REQUIRE_CUDA=1 GSHN_INFONCE_KERNELS=$path GSHN_PARITY_REPORT="$TMP/parity-infonce-$path.jsonl" \
      T 40 .gpu/bin/test-cuda_parity --test-threads=1 infonce >"$TMP/parity-infonce-$path.log" 2>&1
    status "infonce_$path" "exit $?"; tail -n 6 "$TMP/parity-infonce-$path.log" >&2
  done
  report
fi

if have $G && want train; then
  # The whole product on the GPU: the same 20 training steps (batch 256) on cuda and on cpu from
  # one seed, then one CPU-trained checkpoint evaluated on both devices.
  echo "gpu_run: training on cuda and cpu ..." >&2
  printf '[train]\nepochs = 2\nbatch_size = 256\nlog_every = 1\n' >"$TMP/train.toml"
  {
    T 20 $G synth --out "$TMP/synth" --train 2560 --val 256 --seed 0 &&
    T 60 $G train --data "$TMP/synth" --out "$TMP/run-cuda" --config "$TMP/train.toml" --device cuda &&
    T 60 $G train --data "$TMP/synth" --out "$TMP/run-cpu" --config "$TMP/train.toml" --device cpu &&
    T 20 $G eval --data "$TMP/synth" --checkpoint "$TMP/run-cpu" --device cuda --json >"$TMP/eval-cuda.json" &&
    T 20 $G eval --data "$TMP/synth" --checkpoint "$TMP/run-cpu" --device cpu --json >"$TMP/eval-cpu.json"
  } >"$TMP/train.log" 2>&1
  status train "exit $?"; tail -n 15 "$TMP/train.log" >&2
  report
  # The same steps in bf16 (issue 15: half storage, f32 master weights): speed and loss vs f32;
  # with u8 spikes (model.lif.u8_spikes): the same losses as f32's, bit for bit; and op by op
  # (issue 17: the cuda run above replays its step as a CUDA graph; op by op it must give the
  # same losses, bit for bit, with a launch per op).
  printf 'precision = "bf16"\n' | cat "$TMP/train.toml" - >"$TMP/train-bf16.toml"
  printf '[model.lif]\nu8_spikes = true\n' | cat "$TMP/train.toml" - >"$TMP/train-u8.toml"
  for v in bf16 u8 eager; do
    cfg="$TMP/train-$v.toml"; flags=()
    [[ $v == eager ]] && { cfg="$TMP/train.toml"; flags=(--no-cuda-graph); }
    if (( $(left) < 15 )); then status "train_$v" "skipped (budget)"; continue; fi
    T 60 $G train --data "$TMP/synth" --out "$TMP/run-cuda-$v" --config "$cfg" --device cuda "${flags[@]}" \
      >"$TMP/train-$v.log" 2>&1
    status "train_$v" "exit $?"; tail -n 4 "$TMP/train-$v.log" >&2
  done
  report
fi

if have .gpu/bin/bench-cuda_ops && want bench; then
  echo "gpu_run: kernel bench ..." >&2
  T 70 .gpu/bin/bench-cuda_ops --short >"$TMP/bench.jsonl" 2>"$TMP/bench.err"
  status bench "exit $?"; cat "$TMP/bench.jsonl" >&2
  report
fi

if have $G && want gbench; then
  # `gshn bench`, the user's benchmark, beside the cuda_ops bench it is to replace (issue 20:
  # their figures must agree within noise before cuda_ops goes).
  echo "gpu_run: gshn bench --device cuda ..." >&2
  T 60 $G bench --device cuda --shapes default --budget-ms 200 \
    --json "$TMP/gshn_bench.json" >"$TMP/gshn_bench.log" 2>&1
  status gbench "exit $?"; cat "$TMP/gshn_bench.log" >&2
  # InfoNCE at B = 32768, D = 512 in every precision mode, beside PyTorch's dense loss (f32,
  # TF32, bf16 autocast) in the same run (issue 16's goals).
  echo "gpu_run: gshn bench --ops infonce --shapes large (f32, tf32, bf16) ..." >&2
  T 75 $G bench --device cuda --ops infonce --shapes large \
    --dtype f32,tf32,bf16 --budget-ms 100 --compare "$PY" \
    --json "$TMP/infonce_bench.json" >"$TMP/infonce_bench.log" 2>&1
  status infonce_bench "exit $?"; cat "$TMP/infonce_bench.log" >&2
  # The f32 mode on the one-pass tiles (FMA), to decide which path f32 takes by default.
  GSHN_INFONCE_KERNELS=tiles T 30 $G bench --device cuda --ops infonce \
    --shapes large --dtype f32 --budget-ms 100 --json "$TMP/infonce_tiles_bench.json" \
    >"$TMP/infonce_tiles_bench.log" 2>&1
  status infonce_tiles_bench "exit $?"; cat "$TMP/infonce_tiles_bench.log" >&2
  report
fi

if [[ "$DEVICE" != none ]] && want torch; then
  echo "gpu_run: PyTorch / PyG ..." >&2
  T 80 "$PY" python/bench_torch.py --short >"$TMP/torch.jsonl" 2>"$TMP/torch.err"
  status torch "exit $?"; cat "$TMP/torch.jsonl" >&2
  report
fi

if have .gpu/bin/libgshn_capi.so && want torch_cuda; then
  # gshn from PyTorch on the GPU (issue 18): every torch op on CUDA tensors against its CPU
  # path, opcheck and torch.compile on CUDA (test_ops.Cuda); the host cost of a call and what
  # it puts on the device (python/torch_calls.py: no device-to-device copies, kernels on
  # PyTorch's current stream); DistributedDataParallel over NCCL with one rank, against the
  # plain 1-process run (python/ddp_example.py).
  echo "gpu_run: PyTorch ops on cuda ..." >&2
  export GSHN_LIB="$ROOT/.gpu/bin/libgshn_capi.so"
  (cd python && GSHN_REQUIRE_CUDA=1 T 120 "$PY" -m unittest -v test_ops.Cuda) >"$TMP/torch_cuda.log" 2>&1
  status torch_cuda "exit $?"; tail -n 5 "$TMP/torch_cuda.log" >&2
  T 40 "$PY" python/torch_calls.py --device cuda >"$TMP/torch_calls.jsonl" 2>"$TMP/torch_calls.err"
  status torch_calls "exit $?"; cat "$TMP/torch_calls.jsonl" >&2
  T 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    python/ddp_example.py --device cuda >"$TMP/ddp_nccl.log" 2>&1
  status ddp_nccl "exit $?"
  T 40 "$PY" python/ddp_example.py --device cuda >"$TMP/ddp_single.log" 2>&1
  status ddp_single "exit $?"; tail -n 2 "$TMP/ddp_nccl.log" "$TMP/ddp_single.log" >&2
  report
fi

if have $G && want twin; then
  # The whole training step against the PyTorch twin (issue 17): every config's step dumped
  # from the CUDA backend (f32: the CUDA InfoNCE has no f64 kernels) and replayed by
  # python/gshn_twin.py.
  echo "gpu_run: PyTorch twin: parity of CUDA steps ..." >&2
  GSHN=$G DEVICE=cuda T 90 bash scripts/twin_parity.sh "$TMP/twin" "$PY" >"$TMP/twin_parity.log" 2>&1
  status twin_parity "exit $?"; tail -n 3 "$TMP/twin_parity.log" >&2
  report
fi

if have $G && want demo; then
  # The README's main command (30 epochs, default config) on the GPU; README has the CPU row.
  echo "gpu_run: gshn demo --device cuda ..." >&2
  t0="$(date +%s)"
  T 150 $G demo --data "$TMP/demo-data" --out "$TMP/demo" --device cuda >"$TMP/demo.log" 2>&1
  status demo "exit $?"; echo $(( $(date +%s) - t0 )) >"$TMP/demo.seconds"; tail -n 12 "$TMP/demo.log" >&2
  report
fi

SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)"
if have .gpu/bin/test-cuda_parity && [[ -n "$SANITIZER" ]] && want memcheck; then
  # Out-of-bounds and misaligned accesses in every parity case (exit != 0 on any error).
  echo "gpu_run: parity tests under compute-sanitizer memcheck ..." >&2
  GSHN_REQUIRE_CUDA=1 T 150 "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 3 \
    .gpu/bin/test-cuda_parity --test-threads=1 >"$TMP/memcheck.log" 2>&1
  status memcheck "exit $?"; grep -E "ERROR SUMMARY|test result" "$TMP/memcheck.log" >&2
  report
fi

if have $G && want twin_bench; then
  # graphs/s of gshn on cuda against the twin in eager mode and under torch.compile, batch 256,
  # alternating rounds (issue 17's goals: >= 3x eager, >= 1.5x compiled).
  echo "gpu_run: PyTorch twin: speed, eager and compiled ..." >&2
  [[ -d "$TMP/demo-data/train" ]] || T 20 $G synth --out "$TMP/demo-data" --train 2000 --val 200 --seed 0 >/dev/null
  T 150 "$PY" python/twin_bench.py --device cuda --batch 256 --compile --rounds 2 \
    --gshn $G --data "$TMP/demo-data" --json "$TMP/twin_bench.json" >"$TMP/twin_bench.log" 2>&1
  status twin_bench "exit $?"; tail -n 6 "$TMP/twin_bench.log" >&2
  report
fi

NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1)"
if have .gpu/bin/bench-cuda_ops && [[ -n "$NCU" ]] && want ncu; then
  # Per-kernel device time of the bench's launches (clocks left as found), for tuning.
  echo "gpu_run: ncu per-kernel durations of the kernel bench ..." >&2
  T 120 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    .gpu/bin/bench-cuda_ops --short >"$TMP/ncu.csv" 2>>"$TMP/bench.err"
  status ncu "exit $?"
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

report
if [[ "$DEVICE" == none ]]; then echo "gpu_run: no device: report marks everything skipped" >&2; exit 2; fi
st="$(grep '^parity=' "$TMP/status.txt" 2>/dev/null | tail -n1 | cut -d= -f2-)"
[[ -z "$st" || "$st" == "exit 0" || "$st" == skipped* ]] || exit 1
exit 0
