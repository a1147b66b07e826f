"""InfoNCE parity: `gshn op infonce` / `infonce_1d` against open_clip-style `ClipLoss`
(open_clip's own class when installed, else the same few lines here) with the clamped
temperature s = min(exp(logit_scale), 100), at several batch sizes (including ones that are not
multiples of the 256 tile, B = 1, and the dense chunk = 0 path), with upstream gradients on the
loss and on the saved row/column log-sum-exps. The reference is evaluated in f64 on the same
inputs (for the f32 runs too, so the f32 tolerance bounds gshn's rounding, not PyTorch's).
Tolerances: f64 1e-9, f32 1e-5 (max |diff| / max |ref| per tensor).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from common import Report, rng, run_op


def clip_loss(a, p, s, symmetric=True):
    try:
        from open_clip.loss import ClipLoss
    except ImportError:
        ClipLoss = None
    if symmetric and ClipLoss is not None:
        return ClipLoss()(a, p, s)
    logits = s * a @ p.T
    labels = torch.arange(a.shape[0])
    li = F.cross_entropy(logits, labels)
    return (li + F.cross_entropy(logits.T, labels)) / 2 if symmetric else li


def main() -> int:
    try:
        import open_clip  # noqa: F401
        ref = "open_clip ClipLoss"
    except ImportError:
        ref = "ClipLoss (local copy; open_clip not installed)"
    rep = Report(f"InfoNCE: gshn op infonce vs {ref}")
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-5)):
        dn = "f64" if dtype == np.float64 else "f32"
        for i, (b, d, ls, chunk) in enumerate([(1, 8, 2.0, 256), (7, 16, 2.659, 256), (300, 32, 2.659, 256),
                                               (513, 24, 4.2, 256), (300, 32, 5.0, 0), (64, 16, 1.0, 17)]):
            for symmetric in (True, False):
                r = rng(300 + i)
                a = r.normal(size=(b, d))
                p = a + 0.8 * r.normal(size=(b, d))
                a = (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(dtype)
                p = (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(dtype)
                g_loss = np.array(1.7, dtype=dtype)
                g_row = (0.1 * r.normal(size=b)).astype(dtype)
                g_col = (0.1 * r.normal(size=b)).astype(dtype)
                lsv = np.array(ls, dtype=dtype)

                # The reference runs in f64 on the same (f32-rounded) inputs: the f32 tolerance
                # bounds gshn's own rounding error, not PyTorch's.
                f64 = lambda x: torch.tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
                at = f64(a).requires_grad_(True)
                pt = f64(p).requires_grad_(True)
                lt = f64(lsv).requires_grad_(True)
                s = torch.clamp(lt.exp(), max=100.0)
                loss = clip_loss(at, pt, s, symmetric)
                logits = s * at @ pt.T
                lse_row = torch.logsumexp(logits, 1)
                lse_col = torch.logsumexp(logits, 0)
                total = loss * f64(g_loss) + (lse_row * f64(g_row)).sum()
                if symmetric:
                    total = total + (lse_col * f64(g_col)).sum()
                total.backward()

                inputs = dict(a=a, p=p, logit_scale=lsv, grad_loss=g_loss, grad_lse_row=g_row)
                if symmetric:
                    inputs["grad_lse_col"] = g_col
                name = "infonce" if symmetric else "infonce_1d"
                ours = run_op(name, inputs, {"chunk": chunk})
                case = f"{dn} {name} B={b} D={d} ls={ls} chunk={chunk}"
                rep.check(case, "loss", ours["loss"], loss, tol)
                rep.check(case, "lse_row", ours["lse_row"], lse_row, tol)
                if symmetric:
                    rep.check(case, "lse_col", ours["lse_col"], lse_col, tol)
                rep.check(case, "grad_a", ours["grad_a"], at.grad, tol)
                rep.check(case, "grad_p", ours["grad_p"], pt.grad, tol)
                rep.check(case, "grad_logit_scale", ours["grad_logit_scale"], lt.grad, tol)
    return rep.print()


if __name__ == "__main__":
    sys.exit(main())
