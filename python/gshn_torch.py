"""gshn's fused LIF / GAT / aggregation / InfoNCE as PyTorch operators (`torch.library`
custom ops in the `gshn` namespace) over the C ABI (include/gshn.h, libgshn_capi.so), via ctypes.

    import torch, gshn_torch as gt
    s, v = gt.lif(x, tau=2.0, surrogate="atan")                 # x[T, ...] (e.g. [T, B, N])
    g = gt.Graph.from_edge_index(edge_index, num_nodes=N)      # PyG layout, any edge order
    out = gt.gat(z, a_src, a_dst, g, edge_bias=be)             # z[N,H,F], be[E,H] in edge_index order
    y = gt.aggregate(alpha, s, g)                              # alpha[E,H] in edge_index order, s[T,N,C]
    loss = gt.infonce(img, txt, logit_scale)                   # open_clip ClipLoss semantics
    loss = gt.infonce_1d(a, p_all, logit_scale, offset=k, precision="bf16")  # a[B] vs p_all[P]
    loss = gt.infonce_gathered(a, p, a_all, p_all, offset, logit_scale)  # a data-parallel rank's
    with torch.no_grad():                                      # inference: 1-byte spikes
        s8, v = gt.lif(x, u8_spikes=True); y = gt.aggregate(alpha, s8, g)

Operators. The functions above validate and convert their arguments, then call
`torch.ops.gshn.{lif, plif, gat, aggregate, infonce, infonce_1d}`; the backward of each is a
second op (`lif_backward`, ..., `infonce_1d_backward`). `lif_u8` / `plif_u8` (LIF with uint8
spikes) have no backward: a uint8 tensor carries no gradient in PyTorch. Every op has a fake
(meta) kernel and a registered autograd formula, so `torch.compile(fullgraph=True)` traces
through them without a graph break, and `torch.library.opcheck` passes. The ops take graphs as the int32 CPU tensors
`Graph.row_ptr` / `Graph.src` (CSR by destination) and per-edge tensors in CSR edge order.
CUDA tensors go to the `*_cuda` entry points (device pointers, PyTorch's current stream, the
tensor's device); CPU tensors to the `*_cpu` ones. Graph index arrays stay on the host (gshn
validates them and builds the CSC transpose there).

Every op validates before it calls (`check_lif`, `check_gat`, `check_aggregate`,
`check_infonce`, `check_infonce_1d`: the one validation layer, returning the tensors the library
is given): all tensors of a call share one device (cpu or cuda) and one dtype (float32,
float64, bfloat16 or float16), else TypeError — except uint8 spikes (the aggregation's s),
and the statistics an op saves for its
backward, which are float32 in a bfloat16 / float16 call (LIF's h, GAT's lse, InfoNCE's loss
and log-sum-exps, and their gradients: include/gshn.h), where the op computes in float32; shapes follow include/gshn.h, else ValueError naming the argument,
the expected and the actual shape. The scalars `tau` and `logit_scale` may be Python numbers or
0-d / [1] tensors of any float dtype: they are promoted (differentiably) to the call's dtype and
device. Graph indices must be integer tensors whose values fit in int32.
Empty inputs give empty outputs (LIF with T or N = 0; GAT with no nodes, heads or features;
aggregation with T, N or C = 0); their gradients are zeros. InfoNCE needs B >= 1 (the mean
over an empty batch is undefined; the library refuses B = 0 too): ValueError.
Gradients are first-order only: a backward through a gshn op with create_graph=True raises
RuntimeError (rather than return a gradient that a second backward takes for a constant).

The library is $GSHN_LIB, else libgshn_capi.so next to this file (e.g. copied beside an
installed gshn_torch.py), else target/{release,debug}/libgshn_capi.so of the repository this
file sits in (`cargo build --release -p gshn-capi`). Importing this module registers the ops
but loads nothing: the library is opened on first use, so the pure-PyTorch references
(`ref_lif`, `ref_gat`, `ref_aggregate`, `ref_infonce`, `ref_infonce_1d`) work anywhere.
Install: `pip install ./python` (or `pip install -e ./python` in a checkout).

`python gshn_torch.py --check [--device cuda|cpu]` compares gshn with the pure-PyTorch versions
(forward and gradients) and times both; it prints one JSON object (for the GPU script) and exits
non-zero over tolerance.
"""
from __future__ import annotations

import ctypes as C
import functools
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

GSHN_OK = 0
GSHN_F32, GSHN_F64, GSHN_BF16, GSHN_F16 = 0, 1, 2, 3
SURROGATES = {"atan": 0, "sigmoid": 1, "super_spike": 2, "rectangular": 3}
DEFAULT_ALPHA = {"atan": 2.0, "sigmoid": 4.0, "super_spike": 10.0, "rectangular": 1.0}
# InfoNCE operand precision (GSHN_PRECISION_*): the operands of the products are rounded to
# tf32 or bf16 as tensor cores read them; accumulation and log-sum-exp stay in the dtype.
PRECISIONS = {"f32": 0, "tf32": 1, "bf16": 2}
_DTYPES = {torch.float32: GSHN_F32, torch.float64: GSHN_F64, torch.bfloat16: GSHN_BF16,
           torch.float16: GSHN_F16}
_HALF = (torch.bfloat16, torch.float16)
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1

_VP, _I64, _INT, _DBL = C.c_void_p, C.c_int64, C.c_int, C.c_double


class LifParams(C.Structure):
    _fields_ = [("tau", C.c_double), ("v_th", C.c_double), ("v_reset", C.c_double),
                ("hard_reset", C.c_int), ("decay_input", C.c_int), ("detach_reset", C.c_int),
                ("surrogate", C.c_int), ("alpha", C.c_double)]


class InfoNceParams(C.Structure):
    _fields_ = [("precision", C.c_int), ("offset", C.c_int64)]


class _CGraph(C.Structure):
    _fields_ = [("num_nodes", C.c_int64), ("num_edges", C.c_int64),
                ("row_ptr", C.POINTER(C.c_int32)), ("src", C.POINTER(C.c_int32))]


_G = C.POINTER(_CGraph)
_NCE = C.POINTER(InfoNceParams)
_SIGS = {
    "lif_forward": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP],
    "lif_backward": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    # PLIF: tau read from a tensor (after N), so a CUDA tau is never copied to the host
    "lif_forward_tau": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "lif_forward_u8_tau": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "lif_backward_tau": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP, _VP, _VP],
    "gat_forward": [_INT, _G, _I64, _I64, _DBL, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
    "gat_backward": [_INT, _G, _I64, _I64, _DBL, _VP, _VP, _VP, _VP, _VP, _VP, _VP,
                     _VP, _VP, _VP, _VP],
    "aggregate_forward": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP],
    "aggregate_backward": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    # u8 spikes: LIF writing them, the aggregation reading them (same arguments)
    "lif_forward_u8": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP],
    "aggregate_forward_u8": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP],
    "aggregate_backward_u8": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "infonce_forward": [_INT, _I64, _I64, _INT, _VP, _VP, _VP, _VP, _VP, _VP],
    "infonce_backward": [_INT, _I64, _I64, _INT, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
    "infonce_1d_forward": [_NCE, _INT, _I64, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "infonce_1d_backward": [_NCE, _INT, _I64, _I64, _I64, _VP, _VP, _VP, _VP, _VP, _VP, _VP,
                            _VP],
}

_LIB_NAME = "libgshn_capi.so"
_BUILD = "cargo build --release -p gshn-capi"
_HERE = Path(__file__).resolve().parent


def _search_path():
    """Where the library is looked for when $GSHN_LIB is unset, in order: beside this file,
    then the build directories of the repository this file is in (only when it is in one: an
    installed copy has no repository)."""
    paths = [_HERE / _LIB_NAME]
    repo = _HERE.parent
    if (repo / "Cargo.toml").is_file():
        paths += [repo / "target" / p / _LIB_NAME for p in ("release", "debug")]
    return paths


_SEARCH = _search_path()
_lib = None


def library():
    """The loaded libgshn_capi (opened on first use; FileNotFoundError naming the places
    searched when it is in none of them)."""
    global _lib
    if _lib is not None:
        return _lib
    env = os.environ.get("GSHN_LIB")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"GSHN_LIB={env} is not a file. Build the library with "
                                    f"`{_BUILD}` and point GSHN_LIB at target/release/{_LIB_NAME}")
    else:
        path = next((p for p in _SEARCH if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{_LIB_NAME} not found; searched: $GSHN_LIB (unset), "
                f"{', '.join(map(str, _SEARCH))}. Build it in the gshn repository with "
                f"`{_BUILD}`, then set GSHN_LIB to target/release/{_LIB_NAME} or copy it to "
                f"{_HERE}")
    lib = C.CDLL(str(path))
    lib.gshn_last_error.restype = C.c_char_p
    lib.gshn_abi_version.restype = C.c_int
    lib.gshn_cuda_available.restype = C.c_int
    if lib.gshn_abi_version() != 1:
        raise OSError(f"{path}: ABI version {lib.gshn_abi_version()}, this wrapper speaks 1")
    for name, args in _SIGS.items():
        for kind, extra in (("cpu", []), ("cuda", [_INT, _VP])):
            try:
                f = getattr(lib, f"gshn_{name}_{kind}")
            except AttributeError:
                raise OSError(f"{path} has no gshn_{name}_{kind}: it predates this wrapper; "
                              f"rebuild it with `{_BUILD}`") from None
            f.argtypes = args + extra
            f.restype = C.c_int
    _lib = lib
    return lib


def _call(name: str, like: torch.Tensor, *args):
    """Calls gshn_<name>_cpu or _cuda (by `like`'s device); raises RuntimeError on failure."""
    lib = library()
    if like.is_cuda:
        dev = like.device.index if like.device.index is not None else torch.cuda.current_device()
        stream = torch.cuda.current_stream(dev).cuda_stream
        rc = getattr(lib, f"gshn_{name}_cuda")(*args, dev, stream)
    else:
        rc = getattr(lib, f"gshn_{name}_cpu")(*args)
    if rc != GSHN_OK:
        raise RuntimeError(f"gshn error {rc}: {lib.gshn_last_error().decode(errors='replace')}")


def _dtype(t: torch.Tensor) -> int:
    return _DTYPES[t.dtype]  # the validation layer let only these through


def _p(t):
    """data_ptr of a tensor, or None (NULL). The tensor must stay referenced until the call
    returns: never pass `_p(x.contiguous())` (the temporary may be freed first). An empty
    tensor's pointer may be 0 (NULL): the library accepts that for empty buffers, except LIF's
    backward, which is never called on empty tensors."""
    return None if t is None else t.data_ptr()


def _empty(t: torch.Tensor, shape=None):
    """A new contiguous tensor like `t` (dtype, device), of t's shape or `shape`; the real and
    the fake kernels allocate their outputs with it, so their strides agree."""
    return t.new_empty(t.shape if shape is None else shape)


def _stat_dtype(dtype):
    """The dtype of the statistics of a call in `dtype`: float32 for the half types."""
    return torch.float32 if dtype in _HALF else dtype


def _stat(t: torch.Tensor, shape):
    """A new statistics tensor (LIF's h, GAT's lse, InfoNCE's loss and LSEs) of a call whose
    data is like `t`: float32 when t is bfloat16 or float16, else t's dtype."""
    return t.new_empty(shape, dtype=_stat_dtype(t.dtype))


# ---- validation (the one layer every function and every op goes through) -----------------------

class _Spec:
    """Checks the tensors of one call of `op` against its contract (include/gshn.h): one device
    (cpu or cuda), one dtype (f32/f64/bf16/f16; statistics f32 in a half call), and shapes
    whose named dims must agree across tensors. Dims may be pre-bound (e.g. N and E from the
    graph, which is what the library trusts)."""

    def __init__(self, op: str, **dims):
        self.op, self.dims, self.first, self.seen = op, dict(dims), None, []

    def _device(self, name, t):
        if not torch.is_tensor(t):
            raise TypeError(f"{self.op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "cuda"):  # meta, mps, ...: no pointer gshn can read
            raise TypeError(f"{self.op}: {name} is on device '{t.device}'; gshn takes cpu or "
                            "cuda tensors")

    def tensor(self, name, t, *shape, optional=False, stat=False, spikes=False):
        """t checked against `shape` (ints, dim names, and a trailing ... for any further dims),
        made contiguous; None passes when `optional`. A `stat` (a saved statistic or its
        gradient) is float32 in a half-precision call; `spikes` may also be uint8 (0/1 spikes,
        read exactly as the call's float dtype)."""
        if t is None and optional:
            return None
        self._device(name, t)
        u8 = spikes and t.dtype == torch.uint8
        if t.dtype not in _DTYPES and not u8:
            also = " (or uint8 spikes)" if spikes else ""
            raise TypeError(f"{self.op}: {name} must be float32, float64, bfloat16 or float16"
                            f"{also}, got {t.dtype}")
        kind = "u8" if u8 else "stat" if stat else "data"
        if self.first is None:
            self.seen.append((name, t, kind))  # checked once the first data tensor comes
            if kind == "data":
                self.first = (name, t)
                for seen in self.seen:
                    self._one_device_and_dtype(*seen)
        else:
            self._one_device_and_dtype(name, t, kind)
        rest = shape[-1:] == (...,)
        fixed = shape[:-1] if rest else shape
        ok = t.dim() >= len(fixed) if rest else t.dim() == len(fixed)
        # all() stops at the first mismatch, so no name is bound from a wrong dim
        ok = ok and all((self.dims.setdefault(d, n) if isinstance(d, str) else d) == n
                        for d, n in zip(fixed, t.shape))
        if not ok:
            want = ", ".join("..." if d is ... else f"{d}={self.dims[d]}" if d in self.dims
                             else str(d) for d in shape)
            raise ValueError(f"{self.op}: {name} must have shape [{want}], got {list(t.shape)}")
        return t.contiguous()

    def _one_device_and_dtype(self, name, t, kind):
        """The library takes one dtype for all buffers (the statistics: float32 in a half
        call; spikes: uint8 too) and reads them all on one device: t against the call's first
        data tensor."""
        other, f = self.first
        if kind == "data" and t.dtype != f.dtype:
            raise TypeError(f"{self.op}: {name} is {t.dtype} but {other} is {f.dtype} "
                            "(all tensors of a call share one dtype)")
        if kind == "stat" and t.dtype != _stat_dtype(f.dtype):
            raise TypeError(f"{self.op}: {name} is {t.dtype} but must be "
                            f"{_stat_dtype(f.dtype)} (a statistic of a {f.dtype} call)")
        if t.device != f.device:
            raise TypeError(f"{self.op}: {name} is on {t.device} but {other} is on "
                            f"{f.device} (all tensors of a call share one device)")

    def scalar(self, name, v):
        """A Python number or a one-element (0-d or [1]) tensor as a 0-d tensor of the call's
        dtype and device. The conversion is differentiable, so a gradient reaches `v` in its
        own dtype and shape."""
        _, f = self.first
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            # a fill on the device: torch.tensor(v, device=cuda) copies from the host, blocking
            return torch.full((), float(v), dtype=f.dtype, device=f.device)
        self._device(name, v)
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{self.op}: {name} must be real, got {v.dtype}")
        if v.dim() > 1 or v.numel() != 1:
            raise ValueError(f"{self.op}: {name} must be a number or a tensor of shape [] or "
                             f"[1], got {list(v.shape)}")
        return v.reshape(()).to(dtype=f.dtype, device=f.device)


def _graph(op, graph):
    if not isinstance(graph, Graph):
        raise TypeError(f"{op}: graph must be a gshn_torch.Graph (e.g. "
                        f"Graph.from_edge_index(edge_index, num_nodes)), got {type(graph).__name__}")
    return _Spec(op, N=graph.num_nodes, E=graph.num_edges)


def check_lif(x, tau):
    """-> (x as [T, N] (trailing dims flattened), tau: a float or a 0-d tensor like x)."""
    sp = _Spec("lif")
    x = sp.tensor("x", x, "T", ...)
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if torch.is_tensor(tau):
        return x, sp.scalar("tau", tau)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"lif: tau must be a number or a tensor, got {type(tau).__name__}")
    return x, float(tau)


def _gat_tensors(sp, z, a_src, a_dst, edge_bias):
    return (sp.tensor("z", z, "N", "H", "F"), sp.tensor("a_src", a_src, "H", "F"),
            sp.tensor("a_dst", a_dst, "H", "F"),
            sp.tensor("edge_bias", edge_bias, "E", "H", optional=True))


def check_gat(z, a_src, a_dst, graph, edge_bias=None):
    """-> (z[N,H,F], a_src[H,F], a_dst[H,F], edge_bias[E,H] or None), N and E the graph's."""
    return _gat_tensors(_graph("gat", graph), z, a_src, a_dst, edge_bias)


def _aggregate_tensors(sp, alpha, s):
    alpha = sp.tensor("alpha", alpha, "E", "H")
    s = sp.tensor("s", s, "T", "N", "C", spikes=True)
    h, c = sp.dims["H"], sp.dims["C"]
    if h < 1 or c % h:
        raise ValueError(f"{sp.op}: the channels of s (C={c}) must be a multiple of the heads "
                         f"of alpha (H={h}, H >= 1)")
    return alpha, s


def check_aggregate(alpha, s, graph, heads=None):
    """-> (alpha[E,H], s[T,N,C]), C a multiple of H; `heads`, when given, must be H."""
    sp = _graph("aggregate", graph)
    if heads is not None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"aggregate: heads must be an int >= 1, got {heads!r}")
        sp.dims["H"] = heads
    return _aggregate_tensors(sp, alpha, s)


def _infonce_tensors(sp, a, p, logit_scale, rows="B"):
    """a[B,D], p[rows,D] (B >= 1), logit_scale as a 0-d tensor like a."""
    a, p = sp.tensor("a", a, "B", "D"), sp.tensor("p", p, rows, "D")
    if sp.dims["B"] == 0:
        raise ValueError(f"{sp.op}: a is empty (B = 0): the loss of an empty batch is undefined")
    return a, p, sp.scalar("logit_scale", logit_scale)


def check_infonce(a, p, logit_scale):
    """-> (a[B,D], p[B,D], logit_scale as a 0-d tensor like a), B >= 1."""
    return _infonce_tensors(_Spec("infonce"), a, p, logit_scale)


def _infonce_attrs(sp, offset, precision):
    """Checks offset and precision of a one-directional call whose B and P `sp` has bound."""
    if not isinstance(precision, str):
        raise TypeError(f"{sp.op}: precision must be a str, got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"{sp.op}: precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"{sp.op}: offset must be an int, got {type(offset).__name__}")
    b, n = sp.dims["B"], sp.dims["P"]
    if not 0 <= offset <= n - b:
        raise ValueError(f"{sp.op}: offset must be in [0, P - B] = [0, {n - b}] (the positives "
                         f"of a's {b} rows are p[offset:offset + {b}], p has {n} rows), "
                         f"got {offset}")


def check_infonce_1d(a, p, logit_scale, offset=0, precision="f32"):
    """-> (a[B,D], p[P,D], logit_scale as a 0-d tensor like a), B >= 1, 0 <= offset <= P - B
    (row i of a is positive with row offset + i of p), precision a key of PRECISIONS."""
    sp = _Spec("infonce_1d")
    checked = _infonce_tensors(sp, a, p, logit_scale, rows="P")
    _infonce_attrs(sp, offset, precision)
    return checked


# ---- autograd plumbing ---------------------------------------------------------------------------

def _first_order(op):
    """Marks a backward as not differentiable: under create_graph=True it raises at once.
    (Without this, the backward ops, which have no autograd formula of their own, would only
    fail at a second backward.) Tracing a backward (torch.compile) runs with grad mode off."""
    def wrap(backward):
        @functools.wraps(backward)
        def run(ctx, *grads):
            if torch.is_grad_enabled():  # the engine enables grad mode iff create_graph=True
                raise RuntimeError(f"gshn {op}: second-order gradients are not supported "
                                   "(backward with create_graph=True)")
            return backward(ctx, *grads)
        return run
    return wrap


def _like(t: torch.Tensor, g: torch.Tensor):
    """The gradient `g` of a 0-d promoted scalar in the shape, dtype and device of the tensor
    `t` the op was given (an op's gradient must match its input)."""
    return g.reshape(t.shape).to(t)


# ---- LIF ---------------------------------------------------------------------------------------

def surrogate_name(name) -> str:
    """The canonical surrogate name: case and underscores are ignored ("ATan", "SuperSpike")."""
    if not isinstance(name, str):
        raise TypeError(f"surrogate must be a str, got {type(name).__name__}")
    for s in SURROGATES:
        if s.replace("_", "") == name.lower().replace("_", ""):
            return s
    raise ValueError(f"unknown surrogate {name!r}; valid (case-insensitive): {', '.join(SURROGATES)}")


def lif_params(tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
               surrogate="atan", alpha=None) -> LifParams:
    surrogate = surrogate_name(surrogate)
    return LifParams(float(tau), float(v_th), 0.0 if v_reset is None else float(v_reset),
                     int(v_reset is not None), int(decay_input), int(detach_reset),
                     SURROGATES[surrogate], float(DEFAULT_ALPHA[surrogate] if alpha is None else alpha))


# The LIF ops take the neuron's configuration `cfg` as their trailing arguments, in lif_params'
# order after tau: v_th, v_reset (None = soft reset), decay_input, detach_reset, surrogate, alpha.

def _lif_call(name, tau, cfg, dtype, like, *tensors):
    """gshn_<name> on `tensors` of the call's `dtype`, on the device of `like` ([T, N]). A
    float tau goes in the parameters; a tensor tau (0-d, of the call's dtype) goes to the
    `_tau` entry by pointer and is read where it lives: no host synchronisation on a GPU."""
    fed = torch.is_tensor(tau)
    params = lif_params(2.0 if fed else tau, *cfg)  # the `_tau` entries ignore params.tau
    name, tau_arg = (name + "_tau", (_p(tau),)) if fed else (name, ())
    _call(name, like, C.byref(params), _dtype(dtype), *like.shape, *tau_arg, *map(_p, tensors))


def _lif_forward(x, tau, cfg, u8_spikes=False):
    """(spikes, v, h), each a new tensor shaped like x[T, ...] (spikes uint8 when `u8_spikes`);
    tau a float or a tensor."""
    x2, tau = check_lif(x, tau)
    s, v, h = _lif_outputs(x, u8_spikes)
    if x2.numel():
        _lif_call("lif_forward_u8" if u8_spikes else "lif_forward", tau, cfg, x2, x2, x2, s, v, h)
    return s, v, h


def _lif_outputs(x, u8_spikes=False):
    """New (spikes, v, h) of a LIF call on x: the real and the fake kernels' outputs."""
    s = x.new_empty(x.shape, dtype=torch.uint8) if u8_spikes else _empty(x)
    return s, _empty(x), _stat(x, x.shape)


def _lif_backward(h, grad_spikes, grad_v, tau, cfg):
    """(grad_x shaped like h, grad_tau: a 0-d tensor like h when tau is a tensor, else None)."""
    sp = _Spec("lif_backward")
    h = sp.tensor("h", h, "T", ..., stat=True)
    gs, gv = sp.tensor("grad_spikes", grad_spikes, *h.shape), sp.tensor("grad_v", grad_v, *h.shape)
    tau = sp.scalar("tau", tau) if torch.is_tensor(tau) else tau
    h2 = h.reshape(h.shape[0], math.prod(h.shape[1:]))
    gx = _empty(gs)
    gtau = gs.new_zeros(()) if torch.is_tensor(tau) else None
    if h2.numel():  # gs and gv of an empty x would both be NULL, which the library refuses
        _lif_call("lif_backward", tau, cfg, gs, h2, h2, gs, gv, gx, gtau)
    return gx, gtau


@torch.library.custom_op("gshn::lif", mutates_args=())
def _lif_op(x: Tensor, tau: float, v_th: float, v_reset: Optional[float], decay_input: bool,
            detach_reset: bool, surrogate: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """LIF with a fixed tau: x[T, ...] -> (spikes, v, h), each shaped like x (h = the membrane
    before firing, saved for the backward)."""
    return _lif_forward(x, tau, (v_th, v_reset, decay_input, detach_reset, surrogate, alpha))


@torch.library.custom_op("gshn::lif_u8", mutates_args=())
def _lif_u8_op(x: Tensor, tau: float, v_th: float, v_reset: Optional[float], decay_input: bool,
               detach_reset: bool, surrogate: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """gshn::lif writing its spikes as uint8 (exactly 0 or 1; one byte each). No autograd: a
    uint8 tensor carries no gradient in PyTorch (`lif(..., u8_spikes=True)` refuses one)."""
    return _lif_forward(x, tau, (v_th, v_reset, decay_input, detach_reset, surrogate, alpha),
                        u8_spikes=True)


@torch.library.custom_op("gshn::plif_u8", mutates_args=())
def _plif_u8_op(x: Tensor, tau: Tensor, v_th: float, v_reset: Optional[float],
                decay_input: bool, detach_reset: bool, surrogate: str,
                alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """gshn::lif_u8 with tau a tensor (read where it lives, as gshn::plif); no autograd."""
    return _lif_forward(x, tau, (v_th, v_reset, decay_input, detach_reset, surrogate, alpha),
                        u8_spikes=True)


@torch.library.custom_op("gshn::plif", mutates_args=())
def _plif_op(x: Tensor, tau: Tensor, v_th: float, v_reset: Optional[float], decay_input: bool,
             detach_reset: bool, surrogate: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """PLIF: gshn::lif with a learnable tau (a 0-d or [1] tensor; gets a gradient)."""
    return _lif_forward(x, tau, (v_th, v_reset, decay_input, detach_reset, surrogate, alpha))


@torch.library.custom_op("gshn::lif_backward", mutates_args=())
def _lif_backward_op(h: Tensor, grad_spikes: Tensor, grad_v: Tensor, tau: float, v_th: float,
                     v_reset: Optional[float], decay_input: bool, detach_reset: bool,
                     surrogate: str, alpha: float) -> Tensor:
    """BPTT of gshn::lif: grad_x."""
    return _lif_backward(h, grad_spikes, grad_v, tau,
                         (v_th, v_reset, decay_input, detach_reset, surrogate, alpha))[0]


@torch.library.custom_op("gshn::plif_backward", mutates_args=())
def _plif_backward_op(h: Tensor, grad_spikes: Tensor, grad_v: Tensor, tau: Tensor, v_th: float,
                      v_reset: Optional[float], decay_input: bool, detach_reset: bool,
                      surrogate: str, alpha: float) -> tuple[Tensor, Tensor]:
    """BPTT of gshn::plif: (grad_x, grad_tau like tau)."""
    gx, gtau = _lif_backward(h, grad_spikes, grad_v, tau,
                             (v_th, v_reset, decay_input, detach_reset, surrogate, alpha))
    return gx, _like(tau, gtau)


@_lif_op.register_fake
@_plif_op.register_fake
def _(x, *_):
    return _lif_outputs(x)


@_lif_u8_op.register_fake
@_plif_u8_op.register_fake
def _(x, *_):
    return _lif_outputs(x, u8_spikes=True)


@_lif_backward_op.register_fake
def _(h, grad_spikes, *_):
    return _empty(grad_spikes)


@_plif_backward_op.register_fake
def _(h, grad_spikes, grad_v, tau, *_):
    return _empty(grad_spikes), _empty(tau)


def _lif_setup(ctx, inputs, output):
    _, tau, *cfg = inputs
    h = output[2]
    ctx.mark_non_differentiable(h)  # a saved state, not a result: no gradient flows into it
    ctx.save_for_backward(h, tau if torch.is_tensor(tau) else None)
    ctx.tau, ctx.cfg = None if torch.is_tensor(tau) else tau, cfg


@_first_order("lif")
def _lif_grad(ctx, gs, gv, _):
    h, tau = ctx.saved_tensors
    if tau is None:
        gx, gtau = torch.ops.gshn.lif_backward(h, gs, gv, ctx.tau, *ctx.cfg), None
    else:
        gx, gtau = torch.ops.gshn.plif_backward(h, gs, gv, tau, *ctx.cfg)
    return (gx, gtau) + (None,) * len(ctx.cfg)


_lif_op.register_autograd(_lif_grad, setup_context=_lif_setup)
_plif_op.register_autograd(_lif_grad, setup_context=_lif_setup)


def lif(x, tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
        surrogate="atan", alpha=None, u8_spikes=False):
    """Multi-step LIF (SpikingJelly LIFNode, step_mode='m'): x[T, ...] -> (spikes, v), both
    shaped like x (neurons = the trailing dims, flattened for the library). `tau` a number
    (fixed: gshn::lif) or a 0-d / [1] tensor (PLIF: gshn::plif, tau gets a gradient).
    `u8_spikes`: the spikes come as uint8 (one byte each; `aggregate` reads them), for
    inference: a uint8 tensor carries no gradient, so this refuses inputs that need one."""
    _, tau = check_lif(x, tau)
    surrogate = surrogate_name(surrogate)
    alpha = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    cfg = (float(v_th), None if v_reset is None else float(v_reset), bool(decay_input),
           bool(detach_reset), surrogate, float(alpha))
    if u8_spikes:
        if torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad
                                           for t in (x, tau)):
            raise ValueError("lif: u8_spikes=True gives uint8 spikes, which carry no gradient "
                             "in PyTorch; train with float spikes, or call it under "
                             "torch.no_grad() / torch.inference_mode()")
        op = torch.ops.gshn.plif_u8 if torch.is_tensor(tau) else torch.ops.gshn.lif_u8
        s, v, _ = op(x, tau, *cfg)
        return s, v
    op = torch.ops.gshn.plif if torch.is_tensor(tau) else torch.ops.gshn.lif
    s, v, _ = op(x, tau, *cfg)
    return s, v


# ---- graphs --------------------------------------------------------------------------------------

def _indices(name, t, length=None, lo=_I32_MIN, hi=_I32_MAX):
    """A 1-D index array as a CPU int64 tensor: integer dtype (a float would be truncated),
    values in [lo, hi] (by default int32's range, which is what the library reads)."""
    t = torch.as_tensor(t)
    if t.numel() == 0:
        t = t.long()  # [] from a list is float32; nothing to truncate
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"Graph: {name} must be an integer tensor, got {t.dtype}")
    t = t.cpu().long()
    if t.dim() != 1 or length is not None and t.numel() != length:
        want = "E" if length is None else length
        raise ValueError(f"Graph: {name} must have shape [{want}], got {list(t.shape)}")
    if t.numel() and (t.min() < lo or t.max() > hi):
        raise ValueError(f"Graph: {name} has values in [{t.min().item()}, {t.max().item()}], "
                         f"outside [{lo}, {hi}]")
    return t


class Graph:
    """A graph on the host: CSR by destination (`row_ptr`, `src`, int32, CPU) and `perm`, the
    edge_index column of each CSR edge (CSR edge k = edge_index[:, perm[k]]). Index values must
    be integers that fit in int32; the CSR structure itself is validated by the library on every
    call. The ops take `row_ptr` and `src` as tensors."""

    def __init__(self, row_ptr, src, perm=None):
        self._bind("Graph", _indices("row_ptr", row_ptr).int().contiguous(),
                   _indices("src", src).int().contiguous())
        self.perm = None if perm is None else _indices("perm", perm, self.num_edges)
        self._perm_on = {}  # perm copied to each device it was used on (once: see to_csr)

    def _bind(self, op, row_ptr, src):
        if row_ptr.numel() == 0:
            raise ValueError(f"{op}: row_ptr must have shape [N + 1], got [0]")
        self.row_ptr, self.src = row_ptr, src
        self.num_nodes, self.num_edges = row_ptr.numel() - 1, src.numel()
        self._c = _CGraph(self.num_nodes, self.num_edges,
                          C.cast(row_ptr.data_ptr(), C.POINTER(C.c_int32)),
                          C.cast(src.data_ptr(), C.POINTER(C.c_int32)))

    @classmethod
    def _of_op(cls, op, row_ptr, src):
        """The graph of an op call: `row_ptr` and `src` as the op was given them, which must be
        1-D int32 CPU tensors (Graph.row_ptr, Graph.src); not copied when contiguous (the
        library validates the CSR itself)."""
        for name, t in (("row_ptr", row_ptr), ("src", src)):
            if t.dtype != torch.int32 or t.device.type != "cpu" or t.dim() != 1:
                raise TypeError(f"{op}: {name} must be a 1-D int32 CPU tensor (Graph.{name}), "
                                f"got {t.dtype} of shape {list(t.shape)} on {t.device}")
        g = cls.__new__(cls)
        g._bind(op, row_ptr.contiguous(), src.contiguous())
        g.perm = None
        return g

    @classmethod
    def from_edge_index(cls, edge_index, num_nodes: int):
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) \
                or not 0 <= num_nodes <= _I32_MAX:
            raise ValueError(f"Graph: num_nodes must be an int in [0, {_I32_MAX}], got {num_nodes!r}")
        ei = torch.as_tensor(edge_index)
        if ei.dim() != 2 or ei.shape[0] != 2:
            raise ValueError(f"Graph: edge_index must have shape [2, E], got {list(ei.shape)}")
        if ei.shape[1] > _I32_MAX:
            raise ValueError(f"Graph: {ei.shape[1]} edges do not fit in int32")
        ei = _indices("edge_index", ei.reshape(-1), lo=0, hi=num_nodes - 1).view(2, -1)
        perm = torch.sort(ei[1], stable=True).indices
        counts = torch.bincount(ei[1], minlength=num_nodes)
        row_ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        row_ptr[1:] = torch.cumsum(counts, 0)
        return cls(row_ptr, ei[0][perm], perm)

    def edge_index(self):
        """[2, E] in CSR order (source, destination)."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), torch.diff(self.row_ptr.long()))
        return torch.stack([self.src.long(), dst])

    @property
    def cptr(self):
        return C.byref(self._c)

    def to_csr(self, t):
        """`t` (first dim E, in the edge order the graph was built from) in CSR edge order."""
        if self.perm is None:
            return t
        if t.device not in self._perm_on:  # once per device: a copy from the host blocks it
            self._perm_on[t.device] = self.perm.to(t.device)
        return t[self._perm_on[t.device]]


# ---- GAT ---------------------------------------------------------------------------------------

@torch.library.custom_op("gshn::gat", mutates_args=())
def _gat_op(z: Tensor, a_src: Tensor, a_dst: Tensor, edge_bias: Optional[Tensor],
            row_ptr: Tensor, src: Tensor, negative_slope: float) -> tuple[Tensor, Tensor]:
    """PyG GATConv attention + aggregation: z[N,H,F], a_src[H,F], a_dst[H,F], edge_bias[E,H]
    (CSR edge order) or None -> (out[N,H,F], lse[N,H]: each node's log-sum-exp of its logits,
    saved for the backward)."""
    graph = Graph._of_op("gat", row_ptr, src)
    z, a_src, a_dst, edge_bias = _gat_tensors(_graph("gat", graph), z, a_src, a_dst, edge_bias)
    n, h, f = z.shape
    out, lse = _empty(z), _stat(z, (n, h))
    if out.numel():
        _call("gat_forward", z, _dtype(z), graph.cptr, h, f, negative_slope, _p(z), _p(a_src),
              _p(a_dst), _p(edge_bias), _p(out), _p(lse), None)
    else:
        lse.zero_()  # F = 0 leaves lse[N, H] non-empty: defined, not left uninitialised
    return out, lse


@torch.library.custom_op("gshn::gat_backward", mutates_args=())
def _gat_backward_op(z: Tensor, a_src: Tensor, a_dst: Tensor, edge_bias: Optional[Tensor],
                     row_ptr: Tensor, src: Tensor, negative_slope: float, out: Tensor,
                     lse: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_z, grad_a_src, grad_a_dst, grad_edge_bias: [E,H], or [0] without edge_bias)."""
    graph = Graph._of_op("gat_backward", row_ptr, src)
    sp = _graph("gat_backward", graph)
    z, a_src, a_dst, edge_bias = _gat_tensors(sp, z, a_src, a_dst, edge_bias)
    out, lse = sp.tensor("out", out, "N", "H", "F"), sp.tensor("lse", lse, "N", "H", stat=True)
    g_out = sp.tensor("grad_out", grad_out, "N", "H", "F")
    gz, gas, gad = _empty(z), _empty(a_src), _empty(a_dst)
    geb = _empty(z, (0,)) if edge_bias is None else _empty(edge_bias)
    if out.numel() == 0:  # no output: nothing depends on the inputs
        for g in (gz, gas, gad, geb):
            g.zero_()
    else:
        _, h, f = z.shape
        _call("gat_backward", z, _dtype(z), graph.cptr, h, f, negative_slope, _p(z), _p(a_src),
              _p(a_dst), _p(edge_bias), _p(out), _p(lse), _p(g_out), _p(gz), _p(gas), _p(gad),
              None if edge_bias is None else _p(geb))
    return gz, gas, gad, geb


@_gat_op.register_fake
def _(z, *_):
    return _empty(z), _stat(z, z.shape[:2])


@_gat_backward_op.register_fake
def _(z, a_src, a_dst, edge_bias, *_):
    return (_empty(z), _empty(a_src), _empty(a_dst),
            _empty(z, (0,)) if edge_bias is None else _empty(edge_bias))


def _gat_setup(ctx, inputs, output):
    z, a_src, a_dst, edge_bias, row_ptr, src, slope = inputs
    out, lse = output
    ctx.slope = slope
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(z, a_src, a_dst, edge_bias, row_ptr, src, out, lse)


@_first_order("gat")
def _gat_grad(ctx, g_out, _):
    z, a_src, a_dst, edge_bias, row_ptr, src, out, lse = ctx.saved_tensors
    gz, gas, gad, geb = torch.ops.gshn.gat_backward(z, a_src, a_dst, edge_bias, row_ptr, src,
                                                    ctx.slope, out, lse, g_out)
    return gz, gas, gad, None if edge_bias is None else geb, None, None, None


_gat_op.register_autograd(_gat_grad, setup_context=_gat_setup)


def gat(z, a_src, a_dst, graph: Graph, edge_bias=None, negative_slope=0.2):
    """PyG GATConv attention + aggregation (before concat/bias): out[N,H,F]. `edge_bias` is in
    the edge order the graph was built from (edge_index order for `Graph.from_edge_index`)."""
    z, a_src, a_dst, edge_bias = check_gat(z, a_src, a_dst, graph, edge_bias)
    if edge_bias is not None:
        edge_bias = graph.to_csr(edge_bias)
    return torch.ops.gshn.gat(z, a_src, a_dst, edge_bias, graph.row_ptr, graph.src,
                              float(negative_slope))[0]


# ---- fixed-attention aggregation -----------------------------------------------------------------

def _agg_entry(name, s):
    """The C entry of the aggregation `name` for features s: float, or uint8 spikes."""
    return f"{name}_u8" if s.dtype == torch.uint8 else name


@torch.library.custom_op("gshn::aggregate", mutates_args=())
def _aggregate_op(alpha: Tensor, s: Tensor, row_ptr: Tensor, src: Tensor) -> Tensor:
    """alpha[E,H] (CSR edge order), s[T,N,C] (float like alpha, or uint8 spikes) -> y[T,N,C]
    like alpha."""
    graph = Graph._of_op("aggregate", row_ptr, src)
    alpha, s = _aggregate_tensors(_graph("aggregate", graph), alpha, s)
    t, _, c = s.shape
    y = _empty(alpha, s.shape)
    if y.numel():
        _call(_agg_entry("aggregate_forward", s), s, _dtype(alpha), graph.cptr, alpha.shape[1],
              t, c, _p(alpha), _p(s), _p(y))
    return y


@torch.library.custom_op("gshn::aggregate_backward", mutates_args=())
def _aggregate_backward_op(alpha: Tensor, s: Tensor, row_ptr: Tensor, src: Tensor,
                           grad_y: Tensor, need_alpha: bool, need_s: bool) -> tuple[Tensor, Tensor]:
    """(grad_alpha, grad_s), both like alpha (grad_s also for uint8 spikes s); one not needed
    is an empty [0] tensor (and is not computed)."""
    graph = Graph._of_op("aggregate_backward", row_ptr, src)
    sp = _graph("aggregate_backward", graph)
    alpha, s = _aggregate_tensors(sp, alpha, s)
    gy = sp.tensor("grad_y", grad_y, "T", "N", "C")
    ga = _empty(alpha) if need_alpha else _empty(alpha, (0,))
    gs = _empty(alpha, s.shape if need_s else (0,))
    if s.numel() == 0:  # no output: nothing depends on the inputs
        ga.zero_()
    elif need_alpha or need_s:
        t, _, c = s.shape
        _call(_agg_entry("aggregate_backward", s), s, _dtype(alpha), graph.cptr, alpha.shape[1],
              t, c, _p(alpha), _p(s), _p(gy), _p(ga) if need_alpha else None,
              _p(gs) if need_s else None)
    return ga, gs


@_aggregate_op.register_fake
def _(alpha, s, *_):
    return _empty(alpha, s.shape)


@_aggregate_backward_op.register_fake
def _(alpha, s, row_ptr, src, grad_y, need_alpha, need_s):
    return (_empty(alpha) if need_alpha else _empty(alpha, (0,)),
            _empty(alpha, s.shape if need_s else (0,)))


def _aggregate_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@_first_order("aggregate")
def _aggregate_grad(ctx, gy):
    need_alpha, need_s = ctx.needs_input_grad[:2]
    ga, gs = torch.ops.gshn.aggregate_backward(*ctx.saved_tensors, gy, need_alpha, need_s)
    return ga if need_alpha else None, gs if need_s else None, None, None


_aggregate_op.register_autograd(_aggregate_grad, setup_context=_aggregate_setup)


def aggregate(alpha, s, graph: Graph, heads=None):
    """Fixed-attention aggregation: y[t,i,c] = sum over edges k into i of
    alpha[k, c // (C/H)] * s[t, src_k, c]. alpha[E,H] is in the edge order the graph was built
    from (like gat's edge_bias); s[T,N,C] with C a multiple of H, of alpha's dtype or uint8
    spikes (`lif(..., u8_spikes=True)`: read exactly as alpha's dtype); `heads` (optional) must
    equal H. y is like alpha. Gradients for alpha and a float s."""
    alpha, s = check_aggregate(alpha, s, graph, heads)
    return torch.ops.gshn.aggregate(graph.to_csr(alpha), s, graph.row_ptr, graph.src)


# ---- InfoNCE -----------------------------------------------------------------------------------

@torch.library.custom_op("gshn::infonce", mutates_args=())
def _infonce_op(a: Tensor, p: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """open_clip ClipLoss: a[B,D], p[B,D], logit_scale -> (loss (0-d), lse_row[B],
    lse_col[B]: the row and column log-sum-exps of the logits, saved for the backward)."""
    a, p, ls = _infonce_tensors(_Spec("infonce"), a, p, logit_scale)
    b, d = a.shape
    loss, lse_row, lse_col = _stat(a, ()), _stat(a, (b,)), _stat(a, (b,))
    _call("infonce_forward", a, _dtype(a), b, d, 1, _p(a), _p(p), _p(ls), _p(loss), _p(lse_row),
          _p(lse_col))
    return loss, lse_row, lse_col


@torch.library.custom_op("gshn::infonce_backward", mutates_args=())
def _infonce_backward_op(a: Tensor, p: Tensor, logit_scale: Tensor, lse_row: Tensor,
                         lse_col: Tensor, grad_loss: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_a, grad_p, grad_logit_scale like logit_scale)."""
    sp = _Spec("infonce_backward")
    a, p, ls = _infonce_tensors(sp, a, p, logit_scale)
    lse_row = sp.tensor("lse_row", lse_row, "B", stat=True)
    lse_col = sp.tensor("lse_col", lse_col, "B", stat=True)
    g_loss = sp.tensor("grad_loss", grad_loss, stat=True)
    b, d = a.shape
    ga, gp, gls = _empty(a), _empty(p), _empty(ls)
    _call("infonce_backward", a, _dtype(a), b, d, 1, _p(a), _p(p), _p(ls), _p(lse_row),
          _p(lse_col), _p(g_loss), _p(ga), _p(gp), _p(gls))
    return ga, gp, _like(logit_scale, gls)


@torch.library.custom_op("gshn::infonce_1d", mutates_args=())
def _infonce_1d_op(a: Tensor, p: Tensor, logit_scale: Tensor, offset: int,
                   precision: str) -> tuple[Tensor, Tensor]:
    """One-directional InfoNCE a[B,D] -> p[P,D], row i's positive p[offset + i], products in
    `precision` -> (loss (0-d), lse_row[B], saved for the backward)."""
    sp = _Spec("infonce_1d")
    a, p, ls = _infonce_tensors(sp, a, p, logit_scale, rows="P")
    _infonce_attrs(sp, offset, precision)
    params = InfoNceParams(PRECISIONS[precision], offset)
    (b, d), n = a.shape, p.shape[0]
    loss, lse_row = _stat(a, ()), _stat(a, (b,))
    _call("infonce_1d_forward", a, C.byref(params), _dtype(a), b, n, d, _p(a), _p(p), _p(ls),
          _p(loss), _p(lse_row))
    return loss, lse_row


@torch.library.custom_op("gshn::infonce_1d_backward", mutates_args=())
def _infonce_1d_backward_op(a: Tensor, p: Tensor, logit_scale: Tensor, lse_row: Tensor,
                            grad_loss: Tensor, offset: int,
                            precision: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_a[B,D], grad_p[P,D] (every candidate), grad_logit_scale like logit_scale)."""
    sp = _Spec("infonce_1d_backward")
    a, p, ls = _infonce_tensors(sp, a, p, logit_scale, rows="P")
    _infonce_attrs(sp, offset, precision)
    params = InfoNceParams(PRECISIONS[precision], offset)
    lse_row = sp.tensor("lse_row", lse_row, "B", stat=True)
    g_loss = sp.tensor("grad_loss", grad_loss, stat=True)
    (b, d), n = a.shape, p.shape[0]
    ga, gp, gls = _empty(a), _empty(p), _empty(ls)
    _call("infonce_1d_backward", a, C.byref(params), _dtype(a), b, n, d, _p(a), _p(p), _p(ls),
          _p(lse_row), _p(g_loss), _p(ga), _p(gp), _p(gls))
    return ga, gp, _like(logit_scale, gls)


@_infonce_op.register_fake
def _(a, *_):
    return _stat(a, ()), _stat(a, a.shape[:1]), _stat(a, a.shape[:1])


@_infonce_1d_op.register_fake
def _(a, *_):
    return _stat(a, ()), _stat(a, a.shape[:1])


@_infonce_backward_op.register_fake
@_infonce_1d_backward_op.register_fake
def _(a, p, logit_scale, *_):
    return _empty(a), _empty(p), _empty(logit_scale)


def _infonce_setup(ctx, inputs, output):
    a, p, ls, *attrs = inputs
    ctx.attrs = attrs  # infonce_1d's (offset, precision); none for infonce
    lse = output[1:]
    ctx.mark_non_differentiable(*lse)
    ctx.save_for_backward(a, p, ls, *lse)


@_first_order("infonce")
def _infonce_grad(ctx, g_loss, *_):
    return torch.ops.gshn.infonce_backward(*ctx.saved_tensors, g_loss)


@_first_order("infonce_1d")
def _infonce_1d_grad(ctx, g_loss, _):
    grads = torch.ops.gshn.infonce_1d_backward(*ctx.saved_tensors, g_loss, *ctx.attrs)
    return tuple(grads) + (None, None)


_infonce_op.register_autograd(_infonce_grad, setup_context=_infonce_setup)
_infonce_1d_op.register_autograd(_infonce_1d_grad, setup_context=_infonce_setup)


def infonce(a, p, logit_scale, symmetric=True):
    """open_clip ClipLoss with s = min(exp(logit_scale), 100) (a, p: L2-normalised [B, D], B >= 1;
    logit_scale: a number or a 0-d / [1] tensor, the log of the scale, as open_clip's parameter).
    symmetric=False: the a -> p direction only (gshn::infonce_1d with offset 0)."""
    a, p, ls = check_infonce(a, p, logit_scale)
    if symmetric:
        return torch.ops.gshn.infonce(a, p, ls)[0]
    return torch.ops.gshn.infonce_1d(a, p, ls, 0, "f32")[0]


def infonce_1d(a, p, logit_scale, offset=0, precision="f32"):
    """One-directional InfoNCE with gathered negatives (open_clip's local_loss): row i of
    a[B,D] against every row of p[P,D], its positive being p[offset + i]:
    mean_i (LSE_j s a_i.p_j - s a_i.p_(offset+i)), s = min(exp(logit_scale), 100).
    `precision` ('f32', 'tf32', 'bf16'): the operands of the products are rounded to it (as
    tensor cores read them), accumulation stays in the dtype. Gradients for a, every row of p
    and logit_scale; no B x P matrix is formed."""
    a, p, ls = check_infonce_1d(a, p, logit_scale, offset, precision)
    return torch.ops.gshn.infonce_1d(a, p, ls, offset, precision)[0]


def infonce_gathered(a_local, p_local, a_all, p_all, offset, logit_scale, precision="f32"):
    """A data-parallel rank's share of the symmetric ClipLoss: (infonce_1d(a_local -> p_all) +
    infonce_1d(p_local -> a_all)) / 2, the local rows being rows offset.. of the gathered
    ones. Over ranks whose local batches have one size, the mean of these losses is the
    symmetric infonce of the whole batch; gather with gradients
    (torch.distributed.nn.functional.all_gather) so that every rank's rows get the gradient of
    the other ranks' losses. No rank forms the B_all x B_all logits."""
    sp = _Spec("infonce_gathered")
    sp.tensor("a_local", a_local, "B", "D")
    sp.tensor("p_local", p_local, "B", "D")
    sp.tensor("a_all", a_all, "P", "D")
    sp.tensor("p_all", p_all, "P", "D")
    return (infonce_1d(a_local, p_all, logit_scale, offset, precision)
            + infonce_1d(p_local, a_all, logit_scale, offset, precision)) / 2


# ---- pure-PyTorch references -------------------------------------------------------------------

class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, alpha):
        ctx.save_for_backward(x)
        ctx.kind, ctx.alpha = kind, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        if ctx.kind == "atan":
            d = a / (2 * (1 + (math.pi / 2 * a * x) ** 2))
        elif ctx.kind == "sigmoid":
            s = torch.sigmoid(a * x)
            d = a * s * (1 - s)
        elif ctx.kind == "super_spike":
            d = 1 / (1 + a * x.abs()) ** 2
        else:
            d = (x.abs() < a / 2).to(x.dtype) / a
        return g * d, None, None


def ref_lif(x, tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
            surrogate="atan", alpha=None):
    surrogate = surrogate_name(surrogate)
    alpha = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x[0], vr)
    ss, vs = [], []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - vr)) / tau if decay_input else v - (v - vr) / tau + x[t]
        s = _Spike.apply(h - v_th, surrogate, alpha)
        sd = s.detach() if detach_reset else s
        v = h - sd * v_th if v_reset is None else h * (1 - sd) + v_reset * sd
        ss.append(s)
        vs.append(v)
    return torch.stack(ss), torch.stack(vs)


def ref_gat(z, a_src, a_dst, edge_index, edge_bias=None, negative_slope=0.2):
    """GATConv's message passing in plain PyTorch (edge_index order)."""
    n, h, f = z.shape
    src, dst = edge_index[0], edge_index[1]
    el, er = (z * a_src).sum(-1), (z * a_dst).sum(-1)
    e = el[src] + er[dst]
    if edge_bias is not None:
        e = e + edge_bias
    e = torch.nn.functional.leaky_relu(e, negative_slope)
    emax = torch.full((n, h), -math.inf, dtype=z.dtype, device=z.device)
    emax = emax.scatter_reduce(0, dst[:, None].expand(-1, h), e, "amax", include_self=True)
    w = torch.exp(e - emax[dst])
    den = torch.zeros((n, h), dtype=z.dtype, device=z.device).index_add(0, dst, w)
    alpha = w / den[dst]
    return torch.zeros_like(z).index_add(0, dst, alpha[..., None] * z[src])


def ref_aggregate(alpha, s, edge_index):
    """aggregate() in plain PyTorch: alpha[E,H] in edge_index order, s[T,N,C]."""
    src, dst = edge_index[0], edge_index[1]
    w = alpha.repeat_interleave(s.shape[2] // alpha.shape[1], dim=1)  # [E, C]: head of each channel
    return torch.zeros_like(s).index_add(1, dst, w * s[:, src])


def ref_infonce(a, p, logit_scale, symmetric=True):
    s = torch.clamp(logit_scale.exp(), max=100.0)
    logits = s * a @ p.T
    labels = torch.arange(a.shape[0], device=a.device)
    li = torch.nn.functional.cross_entropy(logits, labels)
    return (li + torch.nn.functional.cross_entropy(logits.T, labels)) / 2 if symmetric else li


def ref_infonce_1d(a, p, logit_scale, offset=0):
    """infonce_1d() in plain PyTorch (f32 products): forms the B x P logits."""
    logits = torch.clamp(logit_scale.exp(), max=100.0) * a @ p.T
    labels = offset + torch.arange(a.shape[0], device=a.device)
    return torch.nn.functional.cross_entropy(logits, labels)


# ---- --check -----------------------------------------------------------------------------------

def _rel(a, b):
    d = (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0
    s = b.detach().double().abs().max().item() if b.numel() else 0.0
    return d / s if s > 0 else d


def _time(fn, device, reps):
    import time
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / reps * 1e3


def check(device="cuda", reps=20, sizes="small"):
    """Parity (forward + gradients) and speed of gshn vs the pure-PyTorch versions (f32)."""
    import json
    dev = torch.device(device)
    torch.manual_seed(0)
    big = sizes == "large"
    rep = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "gshn_cuda_available": bool(library().gshn_cuda_available()), "checks": []}
    tol = 1e-4

    def record(name, pairs, t_gshn, t_ref, shape):
        errs = {k: _rel(a, b) for k, (a, b) in pairs.items()}
        rep["checks"].append({"op": name, "shape": shape, "max_rel_err": errs,
                              "ok": all(e <= tol for e in errs.values()),
                              "ms_fwd_bwd_gshn": round(t_gshn, 4), "ms_fwd_bwd_torch": round(t_ref, 4)})

    # LIF
    t, n = (8, 1 << 20) if big else (8, 4096)
    x = (torch.rand(t, n, device=dev) * 3 - 0.5).requires_grad_(True)
    gs, gv = torch.randn(t, n, device=dev), torch.randn(t, n, device=dev)
    kw = dict(tau=2.0, v_reset=0.0, surrogate="atan")
    s1, v1 = lif(x, **kw)
    (gx1,) = torch.autograd.grad((s1 * gs).sum() + (v1 * gv).sum(), x)
    s2, v2 = ref_lif(x, **kw)
    (gx2,) = torch.autograd.grad((s2 * gs).sum() + (v2 * gv).sum(), x)

    def run(f):
        def go():
            s, v = f(x, **kw)
            torch.autograd.grad((s * gs).sum() + (v * gv).sum(), x)
        return go
    record("lif", {"spikes": (s1, s2), "v": (v1, v2), "grad_x": (gx1, gx2)},
           _time(run(lif), dev, reps), _time(run(ref_lif), dev, reps), [t, n])

    # PLIF (learnable tau), soft reset, upstream gradients that are broadcast scalars
    x = (torch.rand(6, 1000, device=dev) * 3 - 0.5).requires_grad_(True)
    tau = torch.tensor(2.7, device=dev, requires_grad=True)
    kw2 = dict(v_reset=None, surrogate="sigmoid")
    r = []
    for f in (lif, ref_lif):
        s, v = f(x, tau=tau, **kw2)
        r.append((s, v) + torch.autograd.grad((s * 1.5).sum() + v.sum(), (x, tau)))

    def run2(f):
        def go():
            s, v = f(x, tau=tau, **kw2)
            torch.autograd.grad((s * 1.5).sum() + v.sum(), (x, tau))
        return go
    record("plif", {k: (a, b) for k, a, b in zip(("spikes", "v", "grad_x", "grad_tau"), *r)},
           _time(run2(lif), dev, reps), _time(run2(ref_lif), dev, reps), [6, 1000])

    # GAT
    n, h, f, deg = (50000, 4, 32, 16) if big else (500, 4, 8, 8)
    src = torch.randint(0, n, (n * deg,))
    dst = torch.arange(n).repeat_interleave(deg)
    ei = torch.stack([torch.cat([src, torch.arange(n)]), torch.cat([dst, torch.arange(n)])])
    ei = ei[:, torch.randperm(ei.shape[1])]
    graph = Graph.from_edge_index(ei, n)
    eid = ei.to(dev)
    z = torch.randn(n, h, f, device=dev, requires_grad=True)
    a_s = torch.randn(h, f, device=dev, requires_grad=True)
    a_d = torch.randn(h, f, device=dev, requires_grad=True)
    be = torch.randn(ei.shape[1], h, device=dev, requires_grad=True)
    go = torch.randn(n, h, f, device=dev)
    leaves = (z, a_s, a_d, be)
    o1 = gat(z, a_s, a_d, graph, be)
    g1 = torch.autograd.grad((o1 * go).sum(), leaves)
    o2 = ref_gat(z, a_s, a_d, eid, be)
    g2 = torch.autograd.grad((o2 * go).sum(), leaves)
    names = ("grad_z", "grad_a_src", "grad_a_dst", "grad_edge_bias")
    pairs = {"out": (o1, o2), **{k: (a, b) for k, a, b in zip(names, g1, g2)}}
    record("gat", pairs,
           _time(lambda: torch.autograd.grad((gat(z, a_s, a_d, graph, be) * go).sum(), leaves), dev, reps),
           _time(lambda: torch.autograd.grad((ref_gat(z, a_s, a_d, eid, be) * go).sum(), leaves), dev, reps),
           [n, h, f, ei.shape[1]])

    # InfoNCE
    b, d = (16384, 512) if big else (1000, 64)
    a = torch.nn.functional.normalize(torch.randn(b, d, device=dev), dim=1).requires_grad_(True)
    p = torch.nn.functional.normalize(torch.randn(b, d, device=dev), dim=1).requires_grad_(True)
    ls = torch.tensor(math.log(1 / 0.07), device=dev, requires_grad=True)
    l1 = infonce(a, p, ls)
    g1 = torch.autograd.grad(l1, (a, p, ls))
    l2 = ref_infonce(a, p, ls)
    g2 = torch.autograd.grad(l2, (a, p, ls))
    record("infonce", {"loss": (l1, l2), "grad_a": (g1[0], g2[0]), "grad_p": (g1[1], g2[1]),
                       "grad_logit_scale": (g1[2], g2[2])},
           _time(lambda: torch.autograd.grad(infonce(a, p, ls), (a, p, ls)), dev, reps),
           _time(lambda: torch.autograd.grad(ref_infonce(a, p, ls), (a, p, ls)), dev, reps), [b, d])

    # InfoNCE with gathered negatives: a rank's quarter of the rows (the second) against all
    loc, off = b // 4, b // 4
    a_loc = a[off:off + loc].detach().requires_grad_(True)
    l1 = infonce_1d(a_loc, p, ls, off)
    g1 = torch.autograd.grad(l1, (a_loc, p, ls))
    l2 = ref_infonce_1d(a_loc, p, ls, off)
    g2 = torch.autograd.grad(l2, (a_loc, p, ls))
    record("infonce_1d", {"loss": (l1, l2), "grad_a": (g1[0], g2[0]), "grad_p": (g1[1], g2[1]),
                          "grad_logit_scale": (g1[2], g2[2])},
           _time(lambda: torch.autograd.grad(infonce_1d(a_loc, p, ls, off), (a_loc, p, ls)),
                 dev, reps),
           _time(lambda: torch.autograd.grad(ref_infonce_1d(a_loc, p, ls, off), (a_loc, p, ls)),
                 dev, reps), [loc, b, d])

    rep["ok"] = all(c["ok"] for c in rep["checks"])
    print(json.dumps(rep, indent=1))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    import argparse
    import sys
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="parity + speed vs pure PyTorch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", choices=["small", "large"], default="small")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    if not args.check:
        ap.print_help()
        sys.exit(0)
    sys.exit(check(args.device, args.reps, args.sizes))
