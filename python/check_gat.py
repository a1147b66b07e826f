"""GAT parity: `gshn op gat` against PyG `GATConv` (heads concatenated, no bias, no dropout,
self-loops given as edges, `edge_dim` for the per-edge bias), and `gshn op aggregate`
against a PyTorch scatter-sum with the same attention.

To expose `z = x W` and `Be` as leaves, the GATConv's `lin` is the identity (so x = z and
grad_x = grad_z) and its `lin_edge`/`att_edge` pick `Be[k,h] = edge_attr[k,h]` exactly. The
graph is a random multigraph in shuffled PyG `edge_index` order (plus a node with no in-edge),
passed both as `edge_index` and as a CSR (`row_ptr`, `src`) built here.
Tolerances: f64 1e-9, f32 1e-4 (max |diff| / max |ref| per tensor).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from common import Report, rng, run_op


def random_graph(r, n, extra):
    """Self-loops on every node but the last, plus `extra` random edges not entering it."""
    src = list(range(n - 1)) + list(r.integers(0, n, extra))
    dst = list(range(n - 1)) + list(r.integers(0, n - 1, extra))
    perm = r.permutation(len(src))
    return np.stack([np.array(src)[perm], np.array(dst)[perm]]).astype(np.int64)


def to_csr(ei, n):
    order = np.argsort(ei[1], kind="stable")
    row_ptr = np.zeros(n + 1, np.int64)
    np.add.at(row_ptr, ei[1] + 1, 1)
    return np.cumsum(row_ptr), ei[0][order], order


def pyg_gat(z, a_src, a_dst, be, ei, slope):
    from torch_geometric.nn import GATConv

    n, h, f = z.shape
    conv = GATConv(h * f, f, heads=h, concat=True, negative_slope=slope, dropout=0.0,
                   add_self_loops=False, edge_dim=None if be is None else h, bias=False)
    conv = conv.to(z.dtype)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(h * f, dtype=z.dtype))
        conv.att_src.copy_(a_src[None])
        conv.att_dst.copy_(a_dst[None])
        if be is not None:
            w = torch.zeros(h * f, h, dtype=z.dtype)
            att = torch.zeros(1, h, f, dtype=z.dtype)
            for k in range(h):
                w[k * f, k] = 1.0
                att[0, k, 0] = 1.0
            conv.lin_edge.weight.copy_(w)
            conv.att_edge.copy_(att)
    x = z.detach().reshape(n, h * f).clone().requires_grad_(True)
    ea = None if be is None else be.detach().clone().requires_grad_(True)
    out, (ei_out, alpha) = conv(x, torch.as_tensor(ei), edge_attr=ea, return_attention_weights=True)
    assert torch.equal(ei_out, torch.as_tensor(ei)), "PyG reordered the edges"
    return conv, x, ea, out.reshape(n, h, f), alpha


def main() -> int:
    rep = Report("GAT: gshn op gat vs PyG GATConv; aggregate vs PyTorch scatter")
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        tdt = torch.float64 if dtype == np.float64 else torch.float32
        dn = "f64" if dtype == np.float64 else "f32"
        for seed, (n, h, f, extra, bias) in enumerate([(37, 4, 8, 150, True), (64, 2, 16, 300, False),
                                                       (9, 3, 5, 20, True)]):
            r = rng(200 + seed)
            ei = random_graph(r, n, extra)
            e = ei.shape[1]
            z = r.normal(size=(n, h, f)).astype(dtype)
            a_src = r.normal(size=(h, f)).astype(dtype)
            a_dst = r.normal(size=(h, f)).astype(dtype)
            be = r.normal(size=(e, h)).astype(dtype) if bias else None
            g_out = r.normal(size=(n, h, f)).astype(dtype)
            g_alpha = r.normal(size=(e, h)).astype(dtype)

            zt = torch.tensor(z)
            conv, x, ea, out, alpha = pyg_gat(zt, torch.tensor(a_src), torch.tensor(a_dst),
                                              None if be is None else torch.tensor(be), ei, 0.2)
            ((out * torch.tensor(g_out)).sum() + (alpha * torch.tensor(g_alpha)).sum()).backward()

            base = dict(z=z, a_src=a_src, a_dst=a_dst, grad_out=g_out, grad_alpha=g_alpha)
            if be is not None:
                base["edge_bias"] = be
            row_ptr, src, order = to_csr(ei, n)
            for layout in ("edge_index", "csr"):
                inputs = dict(base)
                if layout == "edge_index":
                    inputs["edge_index"] = ei
                    perm = np.arange(e)
                else:
                    inputs.update(row_ptr=row_ptr, src=src)
                    perm = order  # CSR edge k is edge_index column order[k]
                    if be is not None:
                        inputs["edge_bias"] = be[order]
                    inputs["grad_alpha"] = g_alpha[order]
                ours = run_op("gat", inputs, {"negative_slope": 0.2})
                case = f"{dn} N={n} H={h} F={f} E={e}{' bias' if bias else ''} {layout}"
                rep.check(case, "out", ours["out"], out, tol)
                rep.check(case, "alpha", ours["alpha"], alpha[perm], tol)
                rep.check(case, "grad_z", ours["grad_z"], x.grad.reshape(n, h, f), tol)
                rep.check(case, "grad_a_src", ours["grad_a_src"], conv.att_src.grad[0], tol)
                rep.check(case, "grad_a_dst", ours["grad_a_dst"], conv.att_dst.grad[0], tol)
                if be is not None:
                    rep.check(case, "grad_edge_bias", ours["grad_edge_bias"], ea.grad[perm], tol)

            # Fixed-attention aggregation with PyG's attention.
            t, c = 3, h * 4
            s = r.normal(size=(t, n, c)).astype(dtype)
            g_y = r.normal(size=(t, n, c)).astype(dtype)
            al = alpha.detach().clone().requires_grad_(True)
            st = torch.tensor(s, requires_grad=True)
            head = torch.arange(c) // (c // h)
            msg = al[:, head][None] * st[:, torch.as_tensor(ei[0])]  # [T, E, C]
            y = torch.zeros(t, n, c, dtype=tdt).index_add(1, torch.as_tensor(ei[1]), msg)
            (y * torch.tensor(g_y)).sum().backward()
            ours = run_op("aggregate", dict(alpha=al.detach().numpy().astype(dtype), s=s,
                                                edge_index=ei, grad_y=g_y))
            case = f"{dn} aggregate T={t} N={n} C={c} H={h}"
            rep.check(case, "y", ours["y"], y, tol)
            rep.check(case, "grad_alpha", ours["grad_alpha"], al.grad, tol)
            rep.check(case, "grad_s", ours["grad_s"], st.grad, tol)
    return rep.print()


if __name__ == "__main__":
    sys.exit(main())
