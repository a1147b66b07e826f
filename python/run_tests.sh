#!/usr/bin/env bash
# Runs the PyTorch bridge tests (python/test_bridge.py) from the repository root; non-zero exit on
# failure. PYTHON defaults to .venv-py/bin/python, GSHN_LIB to target/release/libgshn_capi.so.
set -euo pipefail
cd "$(dirname "$0")/.."
export GSHN_LIB="${GSHN_LIB:-$PWD/target/release/libgshn_capi.so}"
exec "${PYTHON:-.venv-py/bin/python}" python/test_bridge.py "$@"
