"""`pip install ./python` installs the module gshn_torch, which finds libgshn_capi.so beside
itself (or says what to build and where it looked). The package is built from a copy of
pyproject.toml and gshn_torch.py (setuptools builds in place; the checkout stays clean),
offline, with the running interpreter's pip and setuptools, into a temporary --target.
Run: bash python/run_tests.sh
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent

USE = """
import gshn_torch as gt, torch
try:
    gt.library()
except FileNotFoundError as e:
    print("missing:", e)
else:
    print("loaded:", gt.library()._name)
    a = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    print("loss:", torch.ops.gshn.infonce(a, a, torch.tensor(2.0))[0].item())
"""


class PipInstall(unittest.TestCase):
    def test_install_and_find_the_library_beside_the_module(self):
        lib = os.environ.get("GSHN_LIB") or str(HERE.parent / "target/release/libgshn_capi.so")
        with tempfile.TemporaryDirectory() as d:
            src, site = Path(d) / "src", Path(d) / "site"
            src.mkdir()
            for name in ("pyproject.toml", "gshn_torch.py"):
                shutil.copy(HERE / name, src)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                           check=True)
            self.assertEqual(sorted(p.name for p in site.iterdir() if p.suffix == ".py"),
                             ["gshn_torch.py"])
            env = {k: v for k, v in os.environ.items() if k != "GSHN_LIB"}
            env["PYTHONPATH"] = str(site)

            def use():  # from another directory: only the installed copy is importable
                r = subprocess.run([sys.executable, "-c", USE], env=env, cwd=d,
                                   capture_output=True, text=True, check=True)
                return r.stdout

            out = use()  # no repository around an installed copy: only its own directory
            self.assertIn(f"searched: $GSHN_LIB (unset), {site / 'libgshn_capi.so'}. Build it", out)
            self.assertIn("cargo build --release -p gshn-capi", out)
            shutil.copy(lib, site)
            out = use()
            self.assertIn(f"loaded: {site / 'libgshn_capi.so'}", out)
            self.assertIn("loss:", out)


if __name__ == "__main__":
    unittest.main()
