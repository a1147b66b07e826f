#!/usr/bin/env bash
# Install nvcc 13.0 from PyPI into <crate>/.venv-cuda (DESIGN §6). Idempotent.
# Prints the nvcc path on the last line of stdout.
#
# Layout after install (site-packages/nvidia/cu13/):
#   bin/nvcc, bin/ptxas, bin/nvlink, bin/fatbinary, bin/cudafe++ ...
#   nvvm/bin/cicc, nvvm/libdevice/libdevice.10.bc
#   include/ (cuda_runtime.h, crt/*, ...)
# nvcc finds cicc, ptxas and the headers relative to its own directory through bin/nvcc.profile,
# so no extra env is needed: run it by absolute path (build.rs does).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GSHN_CUDA_VENV:-$ROOT/.venv-cuda}"
PY="${PYTHON:-python3}"
PKGS=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*")

find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }

NVCC="$(find_nvcc || true)"
if [[ -n "$NVCC" ]] && "$NVCC" --version >/dev/null 2>&1; then
  echo "install_nvcc: already installed" >&2
else
  echo "install_nvcc: creating $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PKGS[@]}" >&2
  NVCC="$(find_nvcc || true)"
  if [[ -z "$NVCC" ]]; then echo "install_nvcc: nvcc not found after install" >&2; exit 1; fi
fi
"$NVCC" --version | tail -n2 >&2
echo "$NVCC"
