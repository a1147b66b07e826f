"""The PyTorch twin of the whole model (issue 17): its pieces against PyG / torch.nn
(twin_selftest.py), and every config's training step against gshn's, f64 and f32, fresh and
trained (scripts/twin_parity.sh, which needs target/release/gshn).
Run: bash python/run_tests.sh
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Twin(unittest.TestCase):
    def test_pieces_match_pyg_and_torch_nn(self):
        r = subprocess.run([sys.executable, str(HERE / "twin_selftest.py")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])

    def test_every_config_step_matches_gshn(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(["bash", str(HERE.parent / "scripts/twin_parity.sh"), d,
                                sys.executable], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-2000:])
            results = json.loads((Path(d) / "parity.json").read_text())
        self.assertEqual(len(results), 32)
        self.assertTrue(all(x["pass"] for x in results))
        # every variant of the README's tables is among them, in both float types
        names = {(Path(x["dump"]).stem.rsplit("_", 1)[0], x["float"]) for x in results}
        for cfg in ("default", "gat_only", "snn_only", "mean_pool_mlp", "no_stl", "no_node_cl",
                    "relation", "text_features", "trained_default"):
            for fl in ("f64", "f32"):
                self.assertIn((cfg, fl), names)


if __name__ == "__main__":
    unittest.main()
