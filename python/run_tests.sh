#!/usr/bin/env bash
# Runs the Python tests (python/test_*.py: the bridge, the torch.library ops and torch.compile,
# the pip package, 2-rank DDP, the PyTorch twin of the whole model) with unittest from python/;
# non-zero exit on failure. Arguments go
# to `python -m unittest` (e.g. -v, or test_ops.Compile to run one class). PYTHON (a command or
# an absolute path) defaults to .venv-py/bin/python, GSHN_LIB to target/release/libgshn_capi.so.
set -euo pipefail
cd "$(dirname "$0")/.."
export GSHN_LIB="${GSHN_LIB:-$PWD/target/release/libgshn_capi.so}"
python="${PYTHON:-$PWD/.venv-py/bin/python}"
cd python
if [ $# -eq 0 ]; then
    set -- test_bridge test_ops test_package test_ddp test_twin
fi
exec "$python" -m unittest "$@"
