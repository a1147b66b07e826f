#!/usr/bin/env python3
"""PyTorch / PyG reference timings on the shapes of benches/cuda_ops.rs (DESIGN §8).

Prints one JSON line per measurement: {"bench", "shape", "ms"} (CUDA-event time per call).
  torch_lif_fwd / torch_lif_fwd_bwd   plain PyTorch multi-step LIF loop (SpikingJelly semantics,
                                      hard reset, decay_input, ATan surrogate) with autograd, T=8 N=1M
  pyg_gatconv_fwd / _fwd_bwd          torch_geometric GATConv, N=50k, in-degree 16, H=4, F=32
                                      (a note line when torch_geometric is not importable)
  torch_infonce_fwd / _fwd_bwd        dense s A P^T + cross_entropy both ways (open_clip ClipLoss),
                                      B=32768 D=512 and B=4096 D=256
Without torch or a GPU: one {"skipped": ...} line, exit 0.
"""
import json
import math
import sys


def emit(**kw):
    print(json.dumps(kw), flush=True)


try:
    import torch
except Exception as e:  # noqa: BLE001
    emit(skipped=f"torch not importable: {e}")
    sys.exit(0)
if not torch.cuda.is_available():
    emit(skipped="torch sees no CUDA device")
    sys.exit(0)

dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
SHORT = "--short" in sys.argv
REPS = 5 if SHORT else 20


def timed(fn, reps=REPS):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


emit(device=torch.cuda.get_device_name(0), torch=torch.__version__)


# ---- LIF ---------------------------------------------------------------------------------
class ATanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha=2.0):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return g * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


def lif(x, tau=2.0, v_th=1.0, v_reset=0.0):
    v = torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) / tau
        s = ATanSpike.apply(h - v_th)
        v = h * (1 - s) + v_reset * s
        out.append(s)
    return torch.stack(out)


try:
    T, N = 8, 1 << 20
    x = (torch.rand(T, N, device=dev) * 2.5 - 0.5).requires_grad_(True)
    emit(bench="torch_lif_fwd", shape=f"T={T} N={N} f32", ms=timed(lambda: lif(x.detach())))

    def lif_fb():
        s = lif(x)
        s.sum().backward()

    emit(bench="torch_lif_fwd_bwd", shape=f"T={T} N={N} f32", ms=timed(lif_fb))
except Exception as e:  # noqa: BLE001
    emit(bench="torch_lif", error=str(e))

# ---- GATConv -----------------------------------------------------------------------------
try:
    from torch_geometric.nn import GATConv

    N, DEG, H, F = 50_000, 16, 4, 32
    src = torch.randint(0, N, (N * DEG,), device=dev)
    dst = torch.arange(N, device=dev).repeat_interleave(DEG)
    ei = torch.stack([src, dst])
    conv = GATConv(H * F, F, heads=H, add_self_loops=False).to(dev)
    xg = torch.randn(N, H * F, device=dev, requires_grad=True)
    shape = f"N={N} deg={DEG} H={H} F={F} f32"
    emit(bench="pyg_gatconv_fwd", shape=shape, ms=timed(lambda: conv(xg.detach(), ei)))

    def gat_fb():
        conv(xg, ei).sum().backward()

    emit(bench="pyg_gatconv_fwd_bwd", shape=shape, ms=timed(gat_fb))
except ImportError as e:
    emit(bench="pyg_gatconv", note=f"torch_geometric not importable: {e}")
except Exception as e:  # noqa: BLE001
    emit(bench="pyg_gatconv", error=str(e))

# ---- InfoNCE (dense) ---------------------------------------------------------------------
for B, D in [(32768, 512), (4096, 256)]:
    try:
        a = torch.nn.functional.normalize(torch.randn(B, D, device=dev), dim=1).requires_grad_(True)
        p = torch.nn.functional.normalize(torch.randn(B, D, device=dev), dim=1).requires_grad_(True)
        ls = torch.tensor(math.log(1 / 0.07), device=dev, requires_grad=True)
        lab = torch.arange(B, device=dev)

        def clip_loss(a, p, ls):
            s = ls.exp().clamp(max=100)
            logits = s * a @ p.t()
            ce = torch.nn.functional.cross_entropy
            return 0.5 * (ce(logits, lab) + ce(logits.t(), lab))

        shape = f"B={B} D={D} f32"
        reps = 3 if B > 10000 else REPS
        with torch.no_grad():
            emit(bench="torch_infonce_fwd", shape=shape, ms=timed(lambda: clip_loss(a, p, ls), reps))

        def nce_fb():
            clip_loss(a, p, ls).backward()

        emit(bench="torch_infonce_fwd_bwd", shape=shape, ms=timed(nce_fb, reps))
        del a, p
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        emit(bench="torch_infonce", shape=f"B={B} D={D}", error=str(e))
