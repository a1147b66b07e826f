#!/usr/bin/env python3
"""Step parity of gshn against its PyTorch twin (python/gshn_twin.py).

    python/twin_parity.py DUMP.safetensors [DUMP ...] [--json OUT] [--verbose]

Each DUMP is one training step written by `gshn dump-batch`. The twin replays it in the
dump's float type and every number is compared with gshn's:
- loss terms (loss, itc, stl, node_cl, neg, rel): relative error |a - b| / max(|b|, 1e-30);
- outputs (z_img, z_txt, spike rates, the gradient norm), gradients (grad.<param>) and the
  AdamW update (after.<param>, after.adam_m.<param>, after.adam_v.<param>): per tensor
  max|a - b| / max(max|b|, 1e-30);
- optim: gshn's own gradients through the twin's clip + AdamW against gshn's update (the
  optimizer's semantics alone).
Tolerances: f64 dumps 1e-9 for loss terms, 1e-7 for everything else; f32 dumps 1e-4.
Two amendments, both printed: a tensor that both sides compute as rounding noise (zero in
exact arithmetic, e.g. the attention key biases, which a softmax cannot see) is listed as
"zero to rounding" instead of judged; in f32 an updated parameter is judged against
max(max|b|, the model's largest parameter), because AdamW's per-element normalisation turns
the f32 noise of gradients near eps into percent-level differences of tensors that are one
step old (biases that started at 0); the per-tensor number is still printed (see check_dump).
One line per dump; on a failure the first parameter (gshn's creation order) whose gradient
disagrees and the worst one are named. Exit code 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gshn_twin import Capacity, TwinModel, load_step, optimizer_only, train_step  # noqa: E402

TOL = {
    "f64": {"loss": 1e-9, "out": 1e-7, "grad": 1e-7, "update": 1e-7, "optim": 1e-7},
    "f32": {"loss": 1e-4, "out": 1e-4, "grad": 1e-4, "update": 1e-4, "optim": 1e-4},
}


# A tensor whose every element, on both sides, is within ZERO_ULPS machine epsilons of the
# largest element of its kind (all gradients; all parameters after the step; all m; all v)
# counts as zero to rounding (see check_dump).
ZERO_ULPS = 100


def rel_scalar(a, b) -> float:
    a, b = float(a), float(b)
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def rel_tensor(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0,
               zeros: list | None = None, name: str = "", scale: float = 0.0) -> float:
    """max|a - b| / max(max|b|, scale, 1e-30); 0 (and `name` noted in `zeros`) when both
    tensors are zero to rounding, i.e. no element of either is above `floor`."""
    a, b = a.detach().double(), b.detach().double()
    if floor > 0 and a.numel() and max(a.abs().max().item(), b.abs().max().item()) <= floor:
        if zeros is not None:
            zeros.append(name)
        return 0.0
    if a.shape != b.shape:
        a = a.reshape(b.shape) if a.numel() == b.numel() else None
        if a is None:
            return math.inf
    if b.numel() == 0:
        return 0.0
    diff = (a - b).abs().max().item()
    if math.isnan(diff):
        return math.inf
    return diff / max(b.abs().max().item(), scale, 1e-30)


def check_dump(path: str, verbose: bool = False) -> dict:
    t0 = time.time()
    st = load_step(path)
    tol = TOL[st.float]
    res: dict = {"dump": path, "float": st.float, "step": st.step,
                 "variant": st.config["model"].get("variant"), "errors": {}, "failures": []}
    errs = res["errors"]
    model = TwinModel(st.config, Capacity.of_step(st), st.dtype)
    # structure: the twin declares the same parameters, shapes and creation order as gshn
    if model.names != st.param_names:
        if set(model.names) == set(st.param_names):
            res["failures"].append("parameter creation order differs")
        else:
            res["failures"].append(
                f"parameters differ: only twin {sorted(set(model.names) - set(st.param_names))}, "
                f"only gshn {sorted(set(st.param_names) - set(model.names))}")
            return res
    out = train_step(st, model)

    # loss terms
    loss_err = {}
    for k, v in out["losses"].items():
        if f"{k}" in st.outputs:
            loss_err[k] = rel_scalar(v, st.outputs[k])
        else:
            res["failures"].append(f"gshn has no output.{k}")
    for k in ("loss", "itc", "stl", "node_cl", "neg", "rel"):
        if k in st.outputs and k not in out["losses"]:
            res["failures"].append(f"twin has no loss term {k}")
    errs["loss"] = loss_err

    # outputs
    out_err = {}
    for k in ("z_img", "z_txt"):
        out_err[k] = rel_tensor(out[k], st.outputs[k])
    for l, r in enumerate(out["spike_rates"]):
        key = f"spike_rate.{l}"
        if key in st.outputs:
            out_err[key] = rel_scalar(r, st.outputs[key])
        else:
            res["failures"].append(f"gshn has no output.{key}")
    if "grad_norm" in st.outputs:
        out_err["grad_norm"] = rel_scalar(out["grad_norm"], st.outputs["grad_norm"])
    errs["out"] = out_err

    # A tensor that is zero in exact arithmetic (the key biases of attention: shifting every
    # score of a softmax row changes nothing) comes out of both implementations as rounding
    # noise, and noise against noise has no relative error worth judging. Such a tensor,
    # when neither side has an element above its kind's zero floor (ZERO_ULPS machine
    # epsilons of the largest element of that kind over all parameters: gradients, parameters
    # after the step, m; for v, which holds squares, the floor is squared), is reported as
    # zero and listed; every other tensor is judged on max|a - b| / max|b|.
    eps = torch.finfo(st.dtype).eps
    zeros: list = []

    def largest(kind: dict) -> float:
        return max((t.abs().max().item() for t in kind.values() if t.numel()), default=0.0)

    # gradients, in gshn's creation order
    fg = ZERO_ULPS * eps * largest(st.grads)
    grad_err = {n: rel_tensor(out["grads"][n], st.grads[n], fg, zeros, f"grad.{n}")
                for n in st.param_names}
    errs["grad"] = grad_err

    # the AdamW update. The moments are judged per tensor. An updated parameter too, in f64;
    # in f32 it is judged against max(max|b|, the largest parameter of the model): AdamW
    # divides each element by its own sqrt(v), so where |g| is near eps (1e-8) an element's
    # step carries its gradient's f32 rounding error (1e-7 of the tensor's largest gradient,
    # i.e. up to tens of percent of a tiny element) straight into the parameter; a tensor
    # whose whole value is a few such steps (a bias that started at 0) then shows 1e-3..1e-2
    # per tensor although every gradient agrees to 1e-5. `update_raw` keeps the per-tensor
    # number (reported, judged in f64 only), `optim` (judged) runs gshn's own gradients
    # through the twin's clip + AdamW, which isolates the optimizer's semantics.
    p_scale = largest(st.after)
    fp = ZERO_ULPS * eps * p_scale
    fm = ZERO_ULPS * eps * largest(st.after_m)
    fv = (ZERO_ULPS * eps) ** 2 * largest(st.after_v)
    upd, raw = {}, {}
    for n in st.param_names:
        raw[n] = rel_tensor(out["after"][n], st.after[n], fp, zeros, f"after.{n}")
        upd[n] = raw[n] if st.float == "f64" else rel_tensor(
            out["after"][n], st.after[n], scale=p_scale)
        upd[f"adam_m.{n}"] = rel_tensor(out["after_m"][n], st.after_m[n], fm, zeros,
                                        f"after.adam_m.{n}")
        upd[f"adam_v.{n}"] = rel_tensor(out["after_v"][n], st.after_v[n], fv, zeros,
                                        f"after.adam_v.{n}")
    errs["update"] = upd
    res["zero_to_rounding"] = zeros
    k = max(raw, key=raw.get) if raw else None
    res["update_raw"] = {"name": k, "rel": raw[k] if k else 0.0}

    # gshn's gradients through the twin's clip + AdamW
    oo = optimizer_only(st)
    opt = {}
    for n in st.param_names:
        opt[n] = rel_tensor(oo["after"][n], st.after[n])
        opt[f"adam_m.{n}"] = rel_tensor(oo["after_m"][n], st.after_m[n])
        opt[f"adam_v.{n}"] = rel_tensor(oo["after_v"][n], st.after_v[n])
    errs["optim"] = opt

    worst = {}
    for cat, d in errs.items():
        if not d:
            worst[cat] = (None, 0.0)
            continue
        k = max(d, key=lambda x: d[x])
        worst[cat] = (k, d[k])
        bad = [x for x in d if not d[x] <= tol[cat]]
        if bad:
            res["failures"].append(f"{cat}: {len(bad)} over {tol[cat]:g}")
    res["worst"] = {k: {"name": v[0], "rel": v[1]} for k, v in worst.items()}
    bad_grads = [n for n in st.param_names if not grad_err[n] <= tol["grad"]]
    if bad_grads:
        res["first_bad_grad"] = bad_grads[0]
        res["first_bad_grad_rel"] = grad_err[bad_grads[0]]
    res["pass"] = not res["failures"]
    res["seconds"] = round(time.time() - t0, 2)
    if verbose:
        for cat, d in errs.items():
            for k, v in d.items():
                flag = "" if v <= tol[cat] else "  <-- over"
                print(f"    {cat:6s} {k:45s} {v:.3e}{flag}")
    return res


def line(res: dict) -> str:
    name = os.path.basename(res["dump"])
    if "worst" not in res:
        return f"FAIL {name}: {'; '.join(res['failures'])}"
    w = res["worst"]
    parts = [f"{c} {w[c]['rel']:.1e} ({w[c]['name']})"
             for c in ("loss", "out", "grad", "update", "optim")]
    s = f"{'PASS' if res['pass'] else 'FAIL'} {name} [{res['float']}, {res['variant']}, " \
        f"step {res['step']}]: " + ", ".join(parts)
    if res["float"] != "f64":
        u = res["update_raw"]
        s += f"; update per tensor (not judged in {res['float']}) {u['rel']:.1e} ({u['name']})"
    if not res["pass"]:
        s += " | " + "; ".join(res["failures"])
        if "first_bad_grad" in res:
            s += f" | first bad gradient: {res['first_bad_grad']} ({res['first_bad_grad_rel']:.1e})"
            g = res["worst"]["grad"]
            s += f", worst: {g['name']} ({g['rel']:.1e})"
    z = res.get("zero_to_rounding")
    if z:
        s += f" | zero to rounding on both sides ({len(z)}): {', '.join(z)}"
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--json", help="write the per-dump results here")
    ap.add_argument("--verbose", action="store_true", help="every tensor's error")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results, ok = [], True
    for p in args.dumps:
        try:
            r = check_dump(p, args.verbose)
        except Exception as e:  # a dump the twin cannot replay is a failure, not a crash
            import traceback

            traceback.print_exc()
            r = {"dump": p, "pass": False, "failures": [f"{type(e).__name__}: {e}"]}
        ok &= r["pass"]
        results.append(r)
        print(line(r), flush=True)
    print(f"twin_parity: {sum(r['pass'] for r in results)} of {len(results)} dumps passed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
