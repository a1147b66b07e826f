#!/usr/bin/env python3
"""PyTorch side of `gshn bench --compare PYTHON` (op math: DESIGN.md §3).

Usage:  PYTHON bench_compare.py CASES.json      (or fed on stdin: PYTHON - CASES.json)
        PYTHON bench_compare.py --self-test     (tiny dims, every op, both passes, every dtype)

CASES.json:
  {"device": "cpu" | "cuda:0" | ..., "dtype": "f32" | "f64" | "bf16" | "f16" | "tf32", "threads": int | null,
   "cases": [{"id": str, "op": str, "pass": "fwd" | "bwd", "dims": {name: int}, "reps": int}, ...]}

Stdout holds JSON lines only (diagnostics go to stderr); the exit status is 0 even if cases fail:
  {"library": {"torch": v, "torch_geometric": v | null, "spikingjelly": v | null}, "device": str}
  then per case, in order, one of
  {"id", "ms" (median per call), "ms_min", "ms_max", "reps", "impl"}
  {"id", "skipped": reason}        unknown op, pass not offered for the op, or a needed library missing
  {"id", "error": message}         an exception while building or timing the case

Timing: inputs are built (seeded, random, never all zeros) outside the timed region; 2 warm-up calls,
then `reps` calls, each timed alone with time.perf_counter (on CUDA with torch.cuda.synchronize()
before and after). "fwd" times the training forward (autograd on, inputs that need gradients require
them); "bwd" builds the forward graph once, untimed, and times only
torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True).

"bf16" and "f16" are storage types: every op's tensors in torch.bfloat16 / torch.float16 (InfoNCE on
bf16 also under torch.autocast(dtype=torch.bfloat16)). "tf32" is InfoNCE's TF32 mode (other ops skip
it): the dense loss on f32 tensors with TF32 matmuls allowed.

Ops (dims names): lif (T, N), gat (N, deg, H, F), aggregate (T, N, C, H, deg), infonce (B, D),
segment_pool (P, C, S), matmul (M, K, N; fwd only), layer_norm (R, C), adamw (N; fwd only = one step).
"""
import contextlib
import importlib
import importlib.metadata
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


class Skip(Exception):
    """The case cannot run here (op/pass not offered, library missing); the message is the reason."""


def try_import(name):
    """Import an optional module (its stdout chatter goes to stderr); None when not importable."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def library_version(name):
    if try_import(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules[name], "__version__", "unknown")


# ---- inputs -------------------------------------------------------------------------------------


def randn(gen, shape, dev, dtype, scale=1.0, shift=0.0, grad=False):
    t = (torch.randn(shape, generator=gen, dtype=dtype) * scale + shift).to(dev)
    return t.requires_grad_(grad)


def in_graph(gen, n, deg, dev):
    """Every node gets exactly `deg` in-edges from uniform random sources; edges sorted by dst."""
    src = torch.randint(0, n, (n * deg,), generator=gen).to(dev)
    dst = torch.arange(n).repeat_interleave(deg).to(dev)
    return src, dst


def fwd_or_bwd(pass_, forward, inputs, grad_outputs, impl):
    """fwd: time `forward` itself. bwd: run it once here, time only the autograd backward."""
    if pass_ == "fwd":
        return forward, impl
    outputs = forward()

    def backward():
        return torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True)

    return backward, impl + " + autograd backward"


# ---- ops: each returns (fn_to_time, impl_description) -------------------------------------------


class ATanHeaviside(torch.autograd.Function):
    """Heaviside(x >= 0) forward, ATan surrogate alpha/2 / (1 + (pi/2 alpha x)^2) backward."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return g * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


def op_lif(dims, pass_, dev, dtype, gen):
    T, N = dims["T"], dims["N"]
    tau, v_th, v_reset, alpha = 2.0, 1.0, 0.0, 2.0
    x = randn(gen, (T, N), dev, dtype, scale=1.5, shift=1.0, grad=True)  # a mix of spiking / silent
    sj = try_import("spikingjelly.activation_based.neuron")
    if sj is not None:
        surrogate = importlib.import_module("spikingjelly.activation_based.surrogate")
        kw = dict(tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=True, step_mode="m",
                  surrogate_function=surrogate.ATan(alpha=alpha), store_v_seq=True)
        try:  # spikingjelly 0.0.0.0.x
            node = sj.LIFNode(backend="torch", **kw)
            impl = "spikingjelly LIFNode(step_mode='m', backend='torch')"
        except TypeError:  # spikingjelly >= 2: no `backend`, the kernel is chosen by device/dtype
            node = sj.LIFNode(**kw)
            impl = (f"spikingjelly {library_version('spikingjelly')} LIFNode(step_mode='m'), "
                    "auto-selected kernel")

        def forward():
            node.reset()
            return node(x), node.v_seq

    else:

        def forward():
            v = torch.full_like(x[0], v_reset)
            spikes, vs = [], []
            for t in range(T):
                h = v + (x[t] - (v - v_reset)) / tau
                s = ATanHeaviside.apply(h - v_th, alpha)
                v = h * (1 - s) + v_reset * s
                spikes.append(s)
                vs.append(v)
            return torch.stack(spikes), torch.stack(vs)

        impl = "torch loop over T, ATan Heaviside autograd.Function"
    ones = torch.ones(T, N, device=dev, dtype=dtype)
    return fwd_or_bwd(pass_, forward, [x], (ones, ones), impl)


def op_gat(dims, pass_, dev, dtype, gen):
    N, deg, H, Fh = dims["N"], dims["deg"], dims["H"], dims["F"]
    src, dst = in_graph(gen, N, deg, dev)
    z = randn(gen, (N, H, Fh), dev, dtype, grad=True)
    a_src = randn(gen, (H, Fh), dev, dtype, scale=0.3, grad=True)
    a_dst = randn(gen, (H, Fh), dev, dtype, scale=0.3, grad=True)
    g = randn(gen, (N, H, Fh), dev, dtype)
    pyg = try_import("torch_geometric.utils")
    if pyg is not None:

        def edge_softmax(e):
            return pyg.softmax(e, index=dst, num_nodes=N)

        impl = "GATConv-style: node scores, torch_geometric.utils.softmax, index_add"
    else:
        idx = dst[:, None].expand(-1, H)

        def edge_softmax(e):
            m = torch.full((N, H), -math.inf, device=dev, dtype=dtype)
            m = m.scatter_reduce(0, idx, e.detach(), reduce="amax", include_self=True)
            ex = (e - m[dst]).exp()
            den = torch.zeros(N, H, device=dev, dtype=dtype).index_add(0, dst, ex)
            return ex / den[dst]

        impl = "GATConv-style: node scores, scatter softmax, index_add"

    def forward():
        # As PyG's GATConv: one score per node and head, gathered per edge.
        s_src, s_dst = (z * a_src).sum(-1), (z * a_dst).sum(-1)
        e = F.leaky_relu(s_src[src] + s_dst[dst], 0.2)
        alpha = edge_softmax(e)
        return torch.zeros(N, H, Fh, device=dev, dtype=dtype).index_add(0, dst, alpha[..., None] * z[src])

    return fwd_or_bwd(pass_, forward, [z, a_src, a_dst], (g,), impl)


def op_aggregate(dims, pass_, dev, dtype, gen):
    T, N, C, H, deg = dims["T"], dims["N"], dims["C"], dims["H"], dims["deg"]
    if C % H:
        raise ValueError(f"C={C} is not divisible by H={H}")
    src, dst = in_graph(gen, N, deg, dev)
    alpha = (torch.rand(N * deg, H, generator=gen, dtype=dtype) + 0.05).to(dev).requires_grad_(True)
    s = (torch.rand(T, N, C, generator=gen) < 0.3).to(dtype).to(dev).requires_grad_(True)  # spikes
    g = randn(gen, (T, N, C), dev, dtype)

    def forward():
        alpha_c = alpha.repeat_interleave(C // H, dim=1)  # [E, C]: channel c -> head c // (C/H)
        msg = s[:, src, :] * alpha_c
        return torch.zeros(T, N, C, device=dev, dtype=dtype).index_add(1, dst, msg)

    return fwd_or_bwd(pass_, forward, [alpha, s], (g,), "torch gather * alpha + index_add(dim=1)")


def op_infonce(dims, pass_, dev, dtype, gen, mode=None):
    B, D = dims["B"], dims["D"]
    a = F.normalize(randn(gen, (B, D), dev, dtype), dim=1).requires_grad_(True)
    p = F.normalize(randn(gen, (B, D), dev, dtype), dim=1).requires_grad_(True)
    logit_scale = torch.tensor(math.log(1 / 0.07), device=dev, dtype=dtype, requires_grad=True)
    labels = torch.arange(B, device=dev)
    impl = "torch dense ClipLoss"
    if mode == "tf32":
        # TF32 matmuls on CUDA (a no-op on the CPU, which has no TF32 path).
        torch.backends.cuda.matmul.allow_tf32 = True
        impl += " (allow_tf32)" if dev.type == "cuda" else " (f32: no TF32 on the CPU)"
    precision = contextlib.nullcontext
    if mode == "bf16":
        def precision():
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        impl += " under bf16 autocast"

    def forward():
        with precision():
            logits = logit_scale.exp().clamp(max=100) * a @ p.T
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    one = torch.ones((), device=dev, dtype=dtype)
    return fwd_or_bwd(pass_, forward, [a, p, logit_scale], (one,), impl)


def op_segment_pool(dims, pass_, dev, dtype, gen):
    P, C, S = dims["P"], dims["C"], dims["S"]
    x = randn(gen, (P, C), dev, dtype, grad=True)
    seg = (torch.arange(P) // max(P // S, 1)).clamp(max=S - 1)
    seg = seg[torch.randperm(P, generator=gen)].to(dev)
    ones = torch.ones(P, device=dev, dtype=dtype)
    g = randn(gen, (S, C), dev, dtype)

    def forward():
        sums = torch.zeros(S, C, device=dev, dtype=dtype).index_add(0, seg, x)
        count = torch.zeros(S, device=dev, dtype=dtype).index_add(0, seg, ones)
        return sums / count.clamp(min=1)[:, None]

    return fwd_or_bwd(pass_, forward, [x], (g,), "torch index_add segment mean")


def op_matmul(dims, pass_, dev, dtype, gen):
    if pass_ != "fwd":
        raise Skip("matmul is compared forward only")
    M, K, N = dims["M"], dims["K"], dims["N"]
    a = randn(gen, (M, K), dev, dtype)
    b = randn(gen, (K, N), dev, dtype)
    return (lambda: a @ b), "torch.matmul"


def op_layer_norm(dims, pass_, dev, dtype, gen):
    R, C = dims["R"], dims["C"]
    x = randn(gen, (R, C), dev, dtype, grad=True)
    gamma = randn(gen, (C,), dev, dtype, scale=0.1, shift=1.0, grad=True)
    beta = randn(gen, (C,), dev, dtype, scale=0.1, grad=True)
    g = randn(gen, (R, C), dev, dtype)

    def forward():
        return F.layer_norm(x, (C,), gamma, beta, eps=1e-5)

    return fwd_or_bwd(pass_, forward, [x, gamma, beta], (g,), "torch.nn.functional.layer_norm")


def op_adamw(dims, pass_, dev, dtype, gen):
    if pass_ != "fwd":
        raise Skip("adamw is one optimiser step: pass 'fwd' only")
    param = randn(gen, (dims["N"],), dev, dtype, grad=True)
    param.grad = randn(gen, (dims["N"],), dev, dtype, scale=0.01)
    kw = dict(lr=1e-3, weight_decay=0.01)
    opt, impl = None, "torch.optim.AdamW(foreach=True)"
    if param.device.type == "cuda":
        try:
            opt, impl = torch.optim.AdamW([param], fused=True, **kw), "torch.optim.AdamW(fused=True)"
        except Exception as e:  # noqa: BLE001 - fused not supported for this dtype/device/build
            print(f"adamw: fused=True unavailable ({e}); using foreach=True", file=sys.stderr)
    if opt is None:
        opt = torch.optim.AdamW([param], foreach=True, **kw)
    return opt.step, impl


OPS = {
    "lif": op_lif,
    "gat": op_gat,
    "aggregate": op_aggregate,
    "infonce": op_infonce,
    "segment_pool": op_segment_pool,
    "matmul": op_matmul,
    "layer_norm": op_layer_norm,
    "adamw": op_adamw,
}

# name -> (tensor dtype, InfoNCE tensor-core mode or None, whether the other ops run)
DTYPES = {"f32": (torch.float32, None, True), "f64": (torch.float64, None, True),
          "bf16": (torch.bfloat16, "bf16", True), "f16": (torch.float16, None, True),
          "tf32": (torch.float32, "tf32", False)}


# ---- driver -------------------------------------------------------------------------------------


def time_calls(fn, reps, dev):
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def run_case(case, dev, dtype, mode=None, all_ops=True):
    """One output object for one case; never raises."""
    cid = case.get("id")
    try:
        op = OPS.get(case.get("op"))
        if op is None:
            return {"id": cid, "skipped": f"unknown op {case.get('op')!r}"}
        pass_ = case.get("pass", "fwd")
        if pass_ not in ("fwd", "bwd"):
            raise ValueError(f"unknown pass {pass_!r}")
        if dtype is None:
            raise ValueError("unsupported dtype (want f32, f64, bf16, f16 or tf32)")
        reps = max(int(case.get("reps", 10)), 1)
        gen = torch.Generator().manual_seed(0)
        if not all_ops and op is not op_infonce:
            raise Skip(f"{case.get('op')} has no {mode} mode")
        extra = {"mode": mode} if mode is not None and op is op_infonce else {}
        fn, impl = op(case.get("dims", {}), pass_, dev, dtype, gen, **extra)
        times = time_calls(fn, reps, dev)
        return {"id": cid, "ms": statistics.median(times), "ms_min": min(times),
                "ms_max": max(times), "reps": reps, "impl": impl}
    except Skip as e:
        return {"id": cid, "skipped": str(e)}
    except KeyError as e:
        return {"id": cid, "error": f"missing dim {e}"}
    except Exception as e:  # noqa: BLE001 - report and go on with the next case
        if dev is not None and dev.type == "cuda":
            torch.cuda.empty_cache()
        return {"id": cid, "error": f"{type(e).__name__}: {e}"[:1000]}


def run(spec, emit):
    device = spec.get("device", "cpu")
    if spec.get("threads") is not None:
        torch.set_num_threads(int(spec["threads"]))
    libs = {name: library_version(name) for name in ("torch_geometric", "spikingjelly")}
    emit({"library": {"torch": torch.__version__, **libs}, "device": device})
    dtype, mode, all_ops = DTYPES.get(spec.get("dtype", "f32"), (None, None, True))
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # fails here, not per case, when there is no such GPU
    except Exception as e:  # noqa: BLE001
        for case in spec.get("cases", []):
            emit({"id": case.get("id"), "error": f"device {device!r}: {e}"})
        return
    for case in spec.get("cases", []):
        emit(run_case(case, dev, dtype, mode, all_ops))
    torch.backends.cuda.matmul.allow_tf32 = False


def print_line(obj):
    print(json.dumps(obj), flush=True)


def self_test():
    tiny = {
        "lif": {"T": 4, "N": 64},
        "gat": {"N": 32, "deg": 4, "H": 2, "F": 8},
        "aggregate": {"T": 3, "N": 32, "C": 8, "H": 2, "deg": 4},
        "infonce": {"B": 16, "D": 8},
        "segment_pool": {"P": 64, "C": 8, "S": 5},
        "matmul": {"M": 16, "K": 8, "N": 12},
        "layer_norm": {"R": 16, "C": 32},
        "adamw": {"N": 100},
    }
    expect_skip = {"matmul/bwd", "adamw/bwd", "no_such_op/fwd"}
    devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    failures = 0
    for device in devices:
        for dt in ("f32", "f64", "bf16", "f16", "tf32"):
            cases = [{"id": f"{op}/{p}", "op": op, "pass": p, "dims": dims, "reps": 3}
                     for op, dims in tiny.items() for p in ("fwd", "bwd")]
            cases.append({"id": "no_such_op/fwd", "op": "no_such_op", "pass": "fwd", "dims": {},
                          "reps": 1})
            mode_skips = {c["id"] for c in cases if not c["id"].startswith("infonce/")} if dt == "tf32" else set()
            lines = []

            def emit(obj):
                lines.append(obj)
                print_line(obj)

            run({"device": device, "dtype": dt, "threads": None, "cases": cases}, emit)
            if "library" not in lines[0]:
                print(f"FAIL {device} {dt}: first line is not the library header", file=sys.stderr)
                failures += 1
            for case, line in zip(cases, lines[1:]):
                if case["id"] in expect_skip | mode_skips:
                    ok = "skipped" in line
                else:
                    ms = line.get("ms")
                    ok = isinstance(ms, float) and math.isfinite(ms) and ms > 0
                if not ok or line.get("id") != case["id"]:
                    print(f"FAIL {device} {dt} {case['id']}: {line}", file=sys.stderr)
                    failures += 1
            if len(lines) != len(cases) + 1:
                print(f"FAIL {device} {dt}: {len(lines)} lines for {len(cases)} cases", file=sys.stderr)
                failures += 1
    print(f"self-test: {'FAILED, ' + str(failures) + ' failure(s)' if failures else 'ok'} "
          f"({', '.join(devices)}; f32, f64, bf16, f16, tf32)", file=sys.stderr)
    return 1 if failures else 0


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "--self-test":
        return self_test()
    with open(argv[1]) as f:
        spec = json.load(f)
    run(spec, print_line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
