"""Runs every parity script (check_lif, check_gat, check_infonce); exit 1 if any fails.

    cargo build --release --bin gshn
    .venv-py/bin/python python/run_all.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for name in ("check_lif.py", "check_gat.py", "check_infonce.py"):
        r = subprocess.run([sys.executable, "-W", "ignore", str(HERE / name)], cwd=HERE)
        if r.returncode != 0:
            failed.append(name)
    print(f"\nrun_all: {3 - len(failed)} of 3 scripts passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
