#!/usr/bin/env bash
# The GPU session itself (DESIGN §8), on the DEVICE machine (no Rust, no network), after
# `bash scripts/gpu_prepare.sh` here and with `carry: [".gpu"]`:
#   bash scripts/gpu_run.sh
# Runs (all under ~5 minutes): the CUDA parity tests (.gpu/bin/test-cuda_parity), the CUDA kernel
# bench in short mode (.gpu/bin/bench-cuda_ops --short), python/bench_torch.py (PyTorch / PyG on
# the same shapes), and writes reports/gpu/<date>-<device>.json (also to $OUT when set) with:
# device, kernels_sha256 (= cat $(ls kernels/* | sort) | sha256sum), the build manifest, each
# parity result (name, pass, rel_err), each kernel timing with GB/s or TFLOP/s against its floor
# and against the measured d2d copy peak, the PyTorch figures, and side-by-side comparisons.
# LD_LIBRARY_PATH gets the Python packages' nvidia/*/lib folders (cuBLAS, NVRTC).
# Without a GPU (or without .gpu/): writes a report with "device": "none" and every part marked
# skipped, and exits 2. Exit 1 when a parity test fails; 0 otherwise.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"

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
KSHA="$(cat $(ls kernels/* | sort) | sha256sum | cut -d' ' -f1)"
echo "gpu_run: device=$DEVICE kernels_sha256=$KSHA" >&2

status_parity=skipped; status_bench=skipped; status_torch=skipped
if [[ "$DEVICE" != none && -x .gpu/bin/test-cuda_parity ]]; then
  echo "gpu_run: parity tests ..." >&2
  GSHN_PARITY_REPORT="$TMP/parity.jsonl" timeout 170 .gpu/bin/test-cuda_parity --test-threads=1 \
    >"$TMP/parity.log" 2>&1
  rc=$?; status_parity="exit $rc"; tail -n 40 "$TMP/parity.log" >&2
fi
if [[ "$DEVICE" != none && -x .gpu/bin/bench-cuda_ops ]]; then
  echo "gpu_run: kernel bench ..." >&2
  timeout 80 .gpu/bin/bench-cuda_ops --short >"$TMP/bench.jsonl" 2>"$TMP/bench.err"
  status_bench="exit $?"; cat "$TMP/bench.jsonl" >&2
fi
if [[ "$DEVICE" != none ]]; then
  echo "gpu_run: PyTorch / PyG ..." >&2
  timeout 90 "$PY" python/bench_torch.py --short >"$TMP/torch.jsonl" 2>"$TMP/torch.err"
  status_torch="exit $?"; cat "$TMP/torch.jsonl" >&2
fi

"$PY" - "$TMP" "$DEVICE" "$KSHA" "$status_parity" "$status_bench" "$status_torch" <<'PY'
import datetime, json, os, re, sys
tmp, device, ksha, st_par, st_bench, st_torch = sys.argv[1:7]

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
    "torch": {"status": st_torch, "results": torch, "stderr_tail": tail("torch.err", 10)},
    "comparisons": cmp,
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
      f"bench {st_bench}, torch {st_torch}", file=sys.stderr)
PY

if [[ "$DEVICE" == none ]]; then echo "gpu_run: no device: report marks everything skipped" >&2; exit 2; fi
[[ "$status_parity" == "exit 0" ]] || exit 1
exit 0
