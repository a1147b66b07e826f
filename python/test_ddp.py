"""DistributedDataParallel with gshn ops (python/ddp_example.py): 2 gloo ranks on the CPU, each
with half of the batch and the gathered-negatives InfoNCE (and a process group of one rank),
follow the 1-process run over the whole batch with the symmetric InfoNCE, step for step, to 1e-5. Float64, because LIF's spikes
are a threshold: in f32 the two runs agree to ~1e-6 until a membrane potential that sits within
rounding of v_th fires in one and not the other (after about 10 steps), and then they part.
Run: bash python/run_tests.sh
"""
from __future__ import annotations

import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import ddp_example  # noqa: E402


def run_ranks(cfg, world):
    """The losses of rank 0 of a `world`-process gloo run (DDP, gathered loss)."""
    with tempfile.TemporaryDirectory() as d:
        out = f"{d}/losses.pt"
        # a file store: no TCP port to pick (and race for) for the rendezvous
        mp.spawn(ddp_example.worker, args=(world, f"file://{d}/store", cfg, out), nprocs=world)
        return torch.load(out)


class DDP(unittest.TestCase):
    def test_two_gloo_ranks_follow_the_global_batch(self):
        self.follows_the_global_batch(2)

    def test_one_rank_process_group_follows_the_plain_run(self):
        """World size 1 (what `torchrun --nproc_per_node 1` runs, over NCCL on a GPU): DDP and
        the gathered loss with offset 0 are the plain run."""
        self.follows_the_global_batch(1)

    def follows_the_global_batch(self, world):
        cfg = ddp_example.Config(steps=20, batch=16, dtype=torch.float64)
        ranks = run_ranks(cfg, world)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank had
        try:
            single = ddp_example.train(cfg)
        finally:
            torch.set_num_threads(threads)
        self.assertEqual(len(ranks), cfg.steps)
        for step, (r, s) in enumerate(zip(ranks, single)):
            self.assertAlmostEqual(r, s, delta=1e-5, msg=f"step {step}")
        self.assertLess(min(single[-5:]), single[0] - 0.2)  # it learns: the loss is not flat


if __name__ == "__main__":
    unittest.main()
