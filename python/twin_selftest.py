#!/usr/bin/env python3
"""Checks pieces of the PyTorch twin (python/gshn_twin.py) against the libraries whose
semantics DESIGN names, independently of gshn (no dump, no gshn binary):

- `gat_conv` (edge softmax by scatter, edge bias, a node without in-edges) against PyG's
  `GATConv(add_self_loops=False, edge_dim=...)` with the same weights: output, attention and
  every gradient;
- `TwinModel.text_encoder` against `torch.nn.TransformerEncoder` of
  `TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0)` with a key padding
  mask, the same weights, [CLS] = token 0: z_txt and every parameter gradient;
- `multistep_lif` against the closed-form recurrences of DESIGN §3.1 unrolled by hand, and its
  surrogate backward against finite differences of the smooth (primitive) spike.

    python/twin_selftest.py        # f64; exit code 1 on a failure
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore", category=FutureWarning)  # PyG imports torch.jit.script
from gshn_twin import (Capacity, GraphIndex, LifCfg, TwinModel, gat_conv,  # noqa: E402
                       multistep_lif)

DT = torch.float64
TOL = 1e-10
failures = []


def report(name: str, a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
    ok = err <= tol
    if not ok:
        failures.append(name)
    print(f"  {'ok  ' if ok else 'FAIL'} {name:40s} {err:.2e}")


def check_gat() -> None:
    from torch_geometric.nn import GATConv

    print("gat_conv vs PyG GATConv")
    g = torch.Generator().manual_seed(0)
    n, din, heads, f, ef = 9, 6, 3, 4, 5
    # random multigraph with self-loops; node 4 has no in-edge
    edges = [(i, i) for i in range(n) if i != 4]
    edges += [(int(a), int(b)) for a, b in torch.randint(0, n, (20, 2), generator=g) if b != 4]
    edges.sort(key=lambda e: e[1])  # CSR by destination (stable)
    src = torch.tensor([e[0] for e in edges])
    dst = torch.tensor([e[1] for e in edges])
    row_ptr = torch.zeros(n + 1, dtype=torch.long)
    row_ptr[1:] = torch.bincount(dst, minlength=n).cumsum(0)
    gi = GraphIndex(row_ptr, src)
    x = torch.randn(n, din, generator=g, dtype=DT)
    w = torch.randn(din, heads * f, generator=g, dtype=DT) * 0.5
    a_s = torch.randn(heads, f, generator=g, dtype=DT)
    a_d = torch.randn(heads, f, generator=g, dtype=DT)
    ea = torch.randn(len(edges), ef, generator=g, dtype=DT)
    we = torch.randn(ef, heads, generator=g, dtype=DT)
    gout = torch.randn(n, heads, f, generator=g, dtype=DT)
    galpha = torch.randn(len(edges), heads, generator=g, dtype=DT)

    leaves = [t.clone().requires_grad_(True) for t in (x, w, a_s, a_d, ea, we)]
    xt, wt, ast, adt, eat, wet = leaves
    out, alpha = gat_conv(xt, wt, ast, adt, eat @ wet, gi)
    ((out * gout).sum() + (alpha * galpha).sum()).backward()

    conv = GATConv(din, f, heads=heads, concat=True, negative_slope=0.2, dropout=0.0,
                   add_self_loops=False, edge_dim=ef, bias=False).to(DT)
    with torch.no_grad():
        conv.lin.weight.copy_(w.t())
        conv.att_src.copy_(a_s[None])
        conv.att_dst.copy_(a_d[None])
        # lin_edge + att_edge such that alpha_edge[k, h] = (ea @ we)[k, h]
        lw = torch.zeros(heads * f, ef, dtype=DT)
        att = torch.zeros(1, heads, f, dtype=DT)
        for h in range(heads):
            lw[h * f] = we[:, h]
            att[0, h, 0] = 1.0
        conv.lin_edge.weight.copy_(lw)
        conv.att_edge.copy_(att)
    xp = x.clone().requires_grad_(True)
    eap = ea.clone().requires_grad_(True)
    ei = torch.stack([src, dst])
    outp, (ei2, alphap) = conv(xp, ei, edge_attr=eap, return_attention_weights=True)
    assert torch.equal(ei2, ei)
    outp = outp.view(n, heads, f)
    ((outp * gout).sum() + (alphap * galpha).sum()).backward()
    report("out", out, outp)
    report("alpha", alpha, alphap)
    report("out of the node without in-edges is 0", out[4], torch.zeros_like(out[4]), 0.0)
    report("grad x", xt.grad, xp.grad)
    report("grad W", wt.grad, conv.lin.weight.grad.t())
    report("grad att_src", ast.grad, conv.att_src.grad[0])
    report("grad att_dst", adt.grad, conv.att_dst.grad[0])
    report("grad edge_attr", eat.grad, eap.grad)


def check_text() -> None:
    print("TwinModel.text_encoder vs torch.nn.TransformerEncoder (norm_first, gelu)")
    g = torch.Generator().manual_seed(1)
    b, length, d, nh, layers, ratio, vocab = 5, 7, 16, 4, 2, 2, 30
    cfg = {"model": {"variant": "gat_only", "dim": d, "text": {"layers": layers, "heads": nh,
                                                                "max_len": length,
                                                                "mlp_ratio": ratio}},
           "train": {}}
    cap = Capacity(batch=b, nodes=4, edges=4, pixels=4, pixel_channels=3,
                   position_channel=None, categories=2, edge_features=5, geometry=5,
                   node_samples=2, vocab=vocab, negatives=False, relations=False,
                   text_features=0)
    tw = TwinModel(cfg, cap, DT)
    with torch.no_grad():
        for _, p in tw.gshn_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.3)
    lens = torch.tensor([7, 3, 1, 5, 2])
    keep = (torch.arange(length)[None] < lens[:, None]).to(DT)
    tokens = torch.randint(0, vocab, (b * length,), generator=g, dtype=torch.int32)
    gz = torch.randn(b, d, generator=g, dtype=DT)
    z = tw.text_encoder(tokens, keep)
    (z * gz).sum().backward()

    P = {n: p.detach() for n, p in tw.gshn_parameters()}
    emb = torch.nn.Embedding(vocab, d).to(DT)
    pos = torch.nn.Parameter(P["text.position_embedding"].view(length, d).clone())
    layer = torch.nn.TransformerEncoderLayer(d, nh, dim_feedforward=ratio * d, dropout=0.0,
                                             activation="gelu", batch_first=True,
                                             norm_first=True)
    enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(DT)
    ln_f = torch.nn.LayerNorm(d).to(DT)
    proj = torch.nn.Linear(d, d).to(DT)
    with torch.no_grad():
        emb.weight.copy_(P["text.token_embedding"])
        for i, blk in enumerate(enc.layers):
            p = f"text.{i}"
            blk.self_attn.in_proj_weight.copy_(
                torch.cat([P[f"{p}.{k}.weight"].t() for k in "qkv"]))
            blk.self_attn.in_proj_bias.copy_(torch.cat([P[f"{p}.{k}.bias"] for k in "qkv"]))
            blk.self_attn.out_proj.weight.copy_(P[f"{p}.o.weight"].t())
            blk.self_attn.out_proj.bias.copy_(P[f"{p}.o.bias"])
            blk.linear1.weight.copy_(P[f"{p}.mlp.0.weight"].t())
            blk.linear1.bias.copy_(P[f"{p}.mlp.0.bias"])
            blk.linear2.weight.copy_(P[f"{p}.mlp.1.weight"].t())
            blk.linear2.bias.copy_(P[f"{p}.mlp.1.bias"])
            for j, ln in ((1, blk.norm1), (2, blk.norm2)):
                ln.weight.copy_(P[f"{p}.ln{j}.weight"])
                ln.bias.copy_(P[f"{p}.ln{j}.bias"])
        ln_f.weight.copy_(P["text.ln_final.weight"])
        ln_f.bias.copy_(P["text.ln_final.bias"])
        proj.weight.copy_(P["text.proj.weight"].t())
        proj.bias.copy_(P["text.proj.bias"])
    enc.train()  # the reference (non fast-path) kernels
    h = emb(tokens.long().view(b, length)) + pos
    h = enc(h, src_key_padding_mask=keep == 0)
    zr = F.normalize(proj(ln_f(h)[:, 0]), dim=-1, eps=1e-12)
    (zr * gz).sum().backward()
    report("z_txt", z, zr)
    tg = {n: p.grad for n, p in tw.gshn_parameters() if n.startswith("text.")}
    report("grad text.token_embedding", tg["text.token_embedding"], emb.weight.grad)
    report("grad text.position_embedding", tg["text.position_embedding"].view(length, d),
           pos.grad)
    for i, blk in enumerate(enc.layers):
        p = f"text.{i}"
        report(f"grad {p}.q/k/v.weight", torch.cat([tg[f"{p}.{k}.weight"].t() for k in "qkv"]),
               blk.self_attn.in_proj_weight.grad)
        # the key bias's gradient is 0 in exact arithmetic: compare on the q, v biases
        report(f"grad {p}.q/v.bias", torch.cat([tg[f"{p}.q.bias"], tg[f"{p}.v.bias"]]),
               torch.cat([blk.self_attn.in_proj_bias.grad[:d],
                          blk.self_attn.in_proj_bias.grad[2 * d:]]))
        report(f"grad {p}.o.weight", tg[f"{p}.o.weight"].t(), blk.self_attn.out_proj.weight.grad)
        report(f"grad {p}.mlp.0.weight", tg[f"{p}.mlp.0.weight"].t(), blk.linear1.weight.grad)
        report(f"grad {p}.mlp.1.bias", tg[f"{p}.mlp.1.bias"], blk.linear2.bias.grad)
        report(f"grad {p}.ln1.weight", tg[f"{p}.ln1.weight"], blk.norm1.weight.grad)
        report(f"grad {p}.ln2.bias", tg[f"{p}.ln2.bias"], blk.norm2.bias.grad)
    report("grad text.proj.weight", tg["text.proj.weight"].t(), proj.weight.grad)


def check_lif() -> None:
    print("multistep_lif vs DESIGN §3.1 unrolled; surrogate backward vs finite differences")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 40, generator=g, dtype=DT) * 1.5
    for hard in (0.0, -0.3, None):
        for decay in (True, False):
            cfg = LifCfg(tau=1.8, v_th=0.7, v_reset=hard, decay_input=decay)
            s, v = multistep_lif(x, cfg, cfg.tau)
            vr = 0.0 if hard is None else hard
            vv = torch.full_like(x[0], vr)
            for t in range(x.shape[0]):
                hh = vv + (x[t] - (vv - vr)) / 1.8 if decay else vv - (vv - vr) / 1.8 + x[t]
                ss = (hh - 0.7 >= 0).to(DT)
                vv = hh * (1 - ss) + hard * ss if hard is not None else hh - 0.7 * ss
                if not (torch.equal(ss, s[t]) and torch.equal(vv, v[t])):
                    failures.append(f"lif forward {hard} {decay} t={t}")
    print(f"  {'ok  ' if not failures else 'FAIL'} forward (3 resets x decay_input), bit for bit")
    # smooth mode: the surrogate's primitive as the spike, so finite differences see sigma'
    for kind in ("atan", "sigmoid", "super_spike", "rectangular"):
        for reset in (0.0, None):
            cfg = LifCfg(tau=2.0, v_th=0.5, v_reset=reset, kind=kind,
                         alpha={"atan": 2.0, "sigmoid": 4.0, "super_spike": 3.0,
                                "rectangular": 2.0}[kind], smooth=True)
            xs = (torch.randn(4, 12, generator=g, dtype=DT) * 0.8).requires_grad_(True)
            tau = torch.tensor(2.3, dtype=DT, requires_grad=True)
            ok = torch.autograd.gradcheck(
                lambda a, t: multistep_lif(a, cfg, t), (xs, tau), eps=1e-6, atol=1e-6,
                raise_exception=False)
            if not ok:
                failures.append(f"lif gradcheck {kind} {reset}")
            name = "hard" if reset is not None else "soft"
            print(f"  {'ok  ' if ok else 'FAIL'} gradcheck smooth LIF (x, tau; spikes and v), "
                  f"{kind}, {name} reset")
    # the step spike's backward is the surrogate: d S / d x at one step equals sigma'(H - v_th)/tau
    cfg = LifCfg(tau=2.0, v_th=0.5, kind="atan", alpha=2.0)
    xs = torch.randn(1, 50, generator=g, dtype=DT).requires_grad_(True)
    s, _ = multistep_lif(xs, cfg, cfg.tau)
    s.sum().backward()
    u = (math.pi / 2 * 2.0) * (xs.detach()[0] / 2.0 - 0.5)
    report("dS/dx = atan'(H - v_th) / tau", xs.grad[0], 2.0 / (2 * (1 + u * u)) / 2.0)


def main() -> int:
    torch.set_num_threads(1)
    check_gat()
    check_text()
    check_lif()
    print(f"twin_selftest: {'all passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
