"""LIF parity: `gshn op lif` against a step-by-step PyTorch LIF with autograd (SpikingJelly
`LIFNode` semantics, DESIGN §3.1) and, when installed, SpikingJelly's own multi-step LIFNode.

Compares spikes, v (membrane after reset), h (before firing), grad_x and (PLIF) grad_tau, for
hard/soft reset, decay_input on/off, detach_reset on/off and all four surrogates, in f64
(tolerance 1e-9) and f32 (1e-4; a spike that flips because f32 rounds H differently near v_th
is reported, and then the case's downstream tensors are not held to the tolerance).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from common import Report, rng, run_op
from gshn_twin import SpikeFn as Spike  # the surrogate spike, one definition for both references

T, N = 8, 257


def lif_reference(x, tau, v_th, v_reset, decay_input, detach_reset, kind, alpha):
    """SpikingJelly LIFNode.neuronal_charge / fire / reset, one step at a time."""
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x[0], vr)
    spikes, vs, hs = [], [], []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - vr)) / tau
        else:
            h = v - (v - vr) / tau + x[t]
        s = Spike.apply(h - v_th, kind, alpha)
        sd = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - sd * v_th
        else:
            v = h * (1 - sd) + v_reset * sd
        spikes.append(s)
        vs.append(v)
        hs.append(h)
    return torch.stack(spikes), torch.stack(vs), torch.stack(hs)


def spikingjelly_lif(x, tau, v_th, v_reset, decay_input, detach_reset, kind, alpha):
    from spikingjelly.activation_based import neuron, surrogate

    sg = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid}[kind](alpha=alpha)
    node = neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=v_th, v_reset=v_reset,
                          surrogate_function=sg, detach_reset=detach_reset, step_mode="m",
                          store_v_seq=True)
    s = node(x)
    return s, node.v_seq


CASES = [
    # name, attrs
    ("hard atan", dict(v_reset=0.0, decay_input=True, detach_reset=False, surrogate="atan", alpha=2.0)),
    ("soft atan", dict(v_reset=None, decay_input=True, detach_reset=False, surrogate="atan", alpha=2.0)),
    ("hard v_reset=-0.3 no-decay-input", dict(v_reset=-0.3, decay_input=False, detach_reset=False, surrogate="atan", alpha=2.0)),
    ("soft detach sigmoid", dict(v_reset=None, decay_input=True, detach_reset=True, surrogate="sigmoid", alpha=4.0)),
    ("hard detach sigmoid", dict(v_reset=0.0, decay_input=True, detach_reset=True, surrogate="sigmoid", alpha=4.0)),
    ("soft no-decay super_spike", dict(v_reset=None, decay_input=False, detach_reset=False, surrogate="super_spike", alpha=10.0)),
    ("hard rectangular", dict(v_reset=0.0, decay_input=True, detach_reset=False, surrogate="rectangular", alpha=1.0)),
]


def main() -> int:
    rep = Report("LIF: gshn op lif vs step-by-step PyTorch autograd (+ SpikingJelly LIFNode)")
    try:
        import spikingjelly  # noqa: F401
        have_sj = True
    except ImportError:
        have_sj = False
        rep.note("spikingjelly", "-", "not installed: SpikingJelly comparison skipped")
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        tdt = torch.float64 if dtype == np.float64 else torch.float32
        dn = "f64" if dtype == np.float64 else "f32"
        for ci, (cname, a) in enumerate(CASES):
            for plif in (False, True):
                if plif and ci not in (0, 1):
                    continue
                r = rng(100 + ci)
                tau, v_th = 2.0 if not plif else 2.7, 1.0
                x = r.uniform(-0.5, 2.5, (T, N)).astype(dtype)
                gs = r.normal(size=(T, N)).astype(dtype)
                gv = r.normal(size=(T, N)).astype(dtype)
                attrs = dict(a, v_th=v_th)
                inputs = dict(x=x, grad_spikes=gs, grad_v=gv)
                if plif:
                    inputs["tau"] = np.array(tau, dtype=dtype)
                else:
                    attrs["tau"] = tau
                ours = run_op("lif", inputs, attrs)

                xt = torch.tensor(x, dtype=tdt, requires_grad=True)
                taut = torch.tensor(tau, dtype=tdt, requires_grad=True) if plif else tau
                s, v, h = lif_reference(xt, taut, v_th, a["v_reset"], a["decay_input"],
                                        a["detach_reset"], a["surrogate"], a["alpha"])
                loss = (s * torch.tensor(gs)).sum() + (v * torch.tensor(gv)).sum()
                loss.backward()
                case = f"{dn} {cname}{' PLIF' if plif else ''}"
                flips = int((to_np(s) != ours["spikes"]).sum())
                if flips:
                    rep.note(case, "spikes", f"{flips} of {T * N} spikes flip (f32 rounding at v_th): not compared")
                    continue
                rep.check(case, "spikes", ours["spikes"], s, tol)
                rep.check(case, "v", ours["v"], v, tol)
                rep.check(case, "h", ours["h"], h, tol)
                rep.check(case, "grad_x", ours["grad_x"], xt.grad, tol)
                if plif:
                    rep.check(case, "grad_tau", ours["grad_tau"], taut.grad, tol)

                if have_sj and a["surrogate"] in ("atan", "sigmoid") and not plif:
                    xs = torch.tensor(x, dtype=tdt, requires_grad=True)
                    s2, v2 = spikingjelly_lif(xs, tau, v_th, a["v_reset"], a["decay_input"],
                                              a["detach_reset"], a["surrogate"], a["alpha"])
                    ((s2 * torch.tensor(gs)).sum() + (v2 * torch.tensor(gv)).sum()).backward()
                    if int((to_np(s2) != ours["spikes"]).sum()):
                        rep.note(case + " [SJ]", "spikes", "spikes flip vs SpikingJelly: not compared")
                        continue
                    rep.check(case + " [SJ]", "spikes", ours["spikes"], s2, tol)
                    rep.check(case + " [SJ]", "v", ours["v"], v2, tol)
                    rep.check(case + " [SJ]", "grad_x", ours["grad_x"], xs.grad, tol)
    return rep.print()


def to_np(t):
    return t.detach().cpu().numpy()


if __name__ == "__main__":
    sys.exit(main())
