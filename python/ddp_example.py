"""Data-parallel training of a small GSHN-like model whose LIF, GAT and InfoNCE are gshn ops.

Each sample is a small graph (`--nodes` nodes on a ring with self-loops) with a spike-train
input x[T, nodes, feat]. The model: Linear -> LIF (gshn::lif, over the T steps) -> firing rate
-> Linear -> GAT (gshn::gat, over the batch's disjoint union of sample graphs) -> mean over each
sample's nodes -> L2-normalised embedding. Two noisy views of every sample are the positive
pairs of a symmetric InfoNCE (open_clip ClipLoss) with a learnable logit scale.

With several ranks, each rank embeds its B_local samples, gathers every rank's embeddings with
`torch.distributed.nn.functional.all_gather` (which carries gradients back to the rank that
owns them) and takes `gt.infonce_gathered` with offset = rank * B_local: its rows against all
B_global candidates, so no rank forms the B_global x B_global logits. The mean of the ranks'
losses is the symmetric InfoNCE of the global batch, and DistributedDataParallel averages the
gradients, so the run follows the 1-process run over the global batch (python/test_ddp.py
checks this to 1e-5).

    torchrun --nproc_per_node 2 python/ddp_example.py        # gloo on CPU, nccl with CUDA
    python python/ddp_example.py                             # 1 process, the global batch

Under torchrun the process group is set up even for one process (`--nproc_per_node 1`: DDP and
the gathered loss over NCCL or gloo with world size 1, which must follow the 1-process run).
`--device auto` (the default) trains on CUDA when there is a GPU (rank r on LOCAL_RANK's).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gshn_torch as gt  # noqa: E402


@dataclass
class Config:
    steps: int = 20
    batch: int = 16  # global batch (samples); each rank takes batch / world_size of them
    steps_t: int = 4  # LIF time steps
    nodes: int = 6
    feat: int = 8
    hidden: int = 32
    heads: int = 2
    head_dim: int = 8
    lr: float = 0.01  # Adam
    noise: float = 0.3  # of the two views around each sample
    precision: str = "f32"  # InfoNCE operand precision of the gathered loss (ranks > 1)
    dtype: torch.dtype = torch.float32
    seed: int = 0


def ring_graph(nodes: int, samples: int) -> gt.Graph:
    """The disjoint union of `samples` rings of `nodes` nodes, each node with a self-loop and
    its two ring neighbours as sources."""
    i = torch.arange(nodes)
    src = torch.cat([i, (i - 1) % nodes, (i + 1) % nodes])
    dst = torch.cat([i, i, i])
    shift = (torch.arange(samples) * nodes).repeat_interleave(src.numel())
    ei = torch.stack([src.repeat(samples) + shift, dst.repeat(samples) + shift])
    return gt.Graph.from_edge_index(ei, nodes * samples)


class ToyGSHN(nn.Module):
    """x[S, T, nodes, feat] (S samples) -> L2-normalised embeddings [S, heads * head_dim]."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.enc = nn.Linear(cfg.feat, cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim)
        self.a_src = nn.Parameter(0.3 * torch.randn(cfg.heads, cfg.head_dim))
        self.a_dst = nn.Parameter(0.3 * torch.randn(cfg.heads, cfg.head_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # open_clip's init
        self.heads, self.head_dim = cfg.heads, cfg.head_dim

    def forward(self, x, graph: gt.Graph):
        s, t, n, _ = x.shape
        h = self.enc(x.transpose(0, 1).reshape(t, s * n, -1))  # [T, S*n, hidden]
        spikes, _ = gt.lif(h, tau=2.0)
        z = self.proj(spikes.mean(0)).view(s * n, self.heads, self.head_dim)
        out = gt.gat(z, self.a_src, self.a_dst, graph)  # per-sample graphs: no cross talk
        return F.normalize(out.reshape(s, n, -1).mean(1), dim=1)


def batch(cfg: Config, step: int):
    """The global batch of `step`: two noisy views [batch, T, nodes, feat] of the same samples
    (the same in every process: seeded by cfg.seed and step only)."""
    g = torch.Generator().manual_seed(cfg.seed * 100003 + step)
    base = 2 * torch.rand(cfg.batch, cfg.steps_t, cfg.nodes, cfg.feat, generator=g)
    views = [base + cfg.noise * torch.randn(base.shape, generator=g) for _ in range(2)]
    return [v.to(cfg.dtype) for v in views]


def train(cfg: Config, rank: int = 0, world: int = 1, device: str = "cpu",
          distributed: bool | None = None) -> list[float]:
    """Trains for cfg.steps steps; returns the loss of every step (with several ranks: the mean
    of the ranks' losses, the same on every rank). `distributed` (default: world > 1) needs an
    initialised process group: DDP, gathered embeddings and gt.infonce_gathered; otherwise the
    plain run over the global batch with the symmetric gt.infonce."""
    if distributed is None:
        distributed = world > 1
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} is not divisible by the world size {world}")
    local = cfg.batch // world
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in the 1-process run
    model = ToyGSHN(cfg).to(device=device, dtype=cfg.dtype)
    ddp = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    graph = ring_graph(cfg.nodes, 2 * local)  # both views of the local samples in one pass
    losses = []
    for step in range(cfg.steps):
        v1, v2 = (v[rank * local:(rank + 1) * local].to(device) for v in batch(cfg, step))
        a, p = ddp(torch.cat([v1, v2]), graph).split(local)
        if distributed:
            a_all, p_all = torch.cat(all_gather(a)), torch.cat(all_gather(p))
            loss = gt.infonce_gathered(a, p, a_all, p_all, rank * local, model.logit_scale,
                                       cfg.precision)
        else:
            loss = gt.infonce(a, p, model.logit_scale)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
        mean = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    return losses


def worker(rank: int, world: int, init_method: str, cfg: Config, out: str):
    """One rank of a gloo CPU run (for torch.multiprocessing.spawn); rank 0 saves the losses."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        losses = train(cfg, rank, world, distributed=True)
        if rank == 0:
            torch.save(losses, out)
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=Config.steps)
    ap.add_argument("--batch", type=int, default=Config.batch, help="global batch")
    ap.add_argument("--precision", choices=list(gt.PRECISIONS), default=Config.precision,
                    help="InfoNCE operand precision of the gathered loss (with several ranks)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: cuda when a GPU is there, else cpu")
    args = ap.parse_args()
    cfg = Config(steps=args.steps, batch=args.batch, precision=args.precision,
                 dtype=getattr(torch, args.dtype))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    distributed = "RANK" in os.environ  # started by torchrun (MASTER_ADDR, LOCAL_RANK, ...)
    rank, world, device = 0, 1, "cuda" if cuda else "cpu"
    if distributed:
        if cuda:  # the rank's device first: NCCL binds its communicator to the current one
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    try:
        losses = train(cfg, rank, world, device, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank == 0:
        for step, loss in enumerate(losses):
            print(f"step {step:3d}  loss {loss:.6f}")


if __name__ == "__main__":
    main()
