#!/usr/bin/env bash
# Prepare a GPU session (DESIGN §8), on THIS machine (Rust toolchain, no GPU needed):
#   1. install nvcc 13.0 from PyPI (scripts/install_nvcc.sh),
#   2. build with the kernels compiled to PTX by nvcc (GSHN_REQUIRE_NVCC=1: any kernel error fails):
#      `cargo test --release --no-run`, `cargo build --release --benches`, the `gshn` CLI, and
#      libgshn_capi.so (the C ABI, for python/gshn_torch.py's CUDA tests on the device),
#   3. copy the executables the GPU run needs into .gpu/bin/ (gitignored), debug info stripped,
#      with .gpu/manifest.json (commit, kernel-source hash, nvcc version, files + sizes + sha256),
#   4. pack .gpu/bin into .gpu/bin.tar.gz (the embedded PTX compresses about 4x), so the bundle
#      fits the 64 MiB carry limit; gpu_run.sh unpacks it on the device.
# Then run on the device machine, carrying .gpu:   bash scripts/gpu_run.sh     (carry: [".gpu"])
#   GPU_PREPARE_ALL=1   also copy every other test executable (larger; only if it fits).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NVCC="$(bash scripts/install_nvcc.sh | tail -n1)"
export NVCC GSHN_REQUIRE_NVCC=1
OUTDIR=.gpu
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR/bin"
LOG="$OUTDIR/build.jsonl"
echo "gpu_prepare: building (release, nvcc PTX) ..." >&2
cargo test --release --no-run --message-format=json-render-diagnostics >"$LOG"
cargo build --release --benches --message-format=json-render-diagnostics >>"$LOG"
cargo build --release --bin gshn --message-format=json-render-diagnostics >>"$LOG"
cargo build --release -p gshn-capi --message-format=json-render-diagnostics >>"$LOG"

python3 - "$LOG" "$OUTDIR" "${GPU_PREPARE_ALL:-0}" <<'PY'
import hashlib, json, os, shutil, subprocess, sys
log, out, all_tests = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
want = {("test", "cuda_parity"), ("bench", "cuda_ops"), ("bin", "gshn"), ("cdylib", "gshn_capi")}
files = []
seen = set()


def copy(src, file_name, kind, name):
    """src -> out/bin/file_name, debug info stripped; its manifest entry."""
    dst = os.path.join(out, "bin", file_name)
    shutil.copy2(src, dst)
    subprocess.run(["strip", "--strip-debug", dst], check=False)
    data = open(dst, "rb").read()
    return {"kind": kind, "name": name, "path": os.path.relpath(dst, out),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


for line in open(log):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact":
        continue
    kinds = m["target"]["kind"]
    name = m["target"]["name"]
    if "cdylib" in kinds:  # a library: its .so, under its own file name
        so = [f for f in m.get("filenames", []) if f.endswith(".so")]
        if so and ("cdylib", name) in want and ("cdylib", name) not in seen:
            seen.add(("cdylib", name))
            files.append(copy(so[0], os.path.basename(so[0]), "cdylib", name))
        continue
    if not m.get("executable"):
        continue
    kind = "bench" if "bench" in kinds else "bin" if "bin" in kinds else "test"
    if m.get("profile", {}).get("test") and kind == "bin":
        continue
    if (kind, name) not in want and not (all_tests and kind == "test"):
        continue
    if (kind, name) in seen:
        continue
    seen.add((kind, name))
    files.append(copy(m["executable"], name if kind == "bin" else f"{kind}-{name}", kind, name))
missing = want - seen
if missing:
    sys.exit(f"gpu_prepare: missing executables {sorted(missing)}")
ks = hashlib.sha256()
for f in sorted(os.listdir("kernels")):
    ks.update(open(os.path.join("kernels", f), "rb").read())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True).stdout.strip())
nvcc = subprocess.run([os.environ["NVCC"], "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
total = sum(f["bytes"] for f in files)
man = {"commit": commit, "dirty": dirty, "kernels_sha256": ks.hexdigest(), "nvcc": nvcc,
       "cuda_arch": os.environ.get("GSHN_CUDA_ARCH", "compute_80"), "total_bytes": total, "files": files}
json.dump(man, open(os.path.join(out, "manifest.json"), "w"), indent=1)
for f in files:
    print(f"  {f['path']:<40} {f['bytes'] / 2**20:7.1f} MiB", file=sys.stderr)
print(f"gpu_prepare: {len(files)} executables, {total / 2**20:.1f} MiB unpacked", file=sys.stderr)
PY
rm -f "$LOG"
tar czf "$OUTDIR/bin.tar.gz" -C "$OUTDIR" bin && rm -rf "$OUTDIR/bin"
packed=$(du -b "$OUTDIR/bin.tar.gz" | cut -f1)
echo "gpu_prepare: packed into $OUTDIR/bin.tar.gz, $(( packed / 1048576 )) MiB (carry limit 64 MiB)" >&2
if (( packed > 60 * 1048576 )); then
  echo "gpu_prepare: .gpu is too large to carry (> 60 MiB)" >&2; exit 1
fi
echo "gpu_prepare: OK -> $OUTDIR (now: run bash scripts/gpu_run.sh on the device with carry [\".gpu\"])" >&2
