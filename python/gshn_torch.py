"""gshn's fused LIF / GAT / aggregation / InfoNCE as PyTorch autograd functions, through the C
ABI (include/gshn.h, libgshn_capi.so) via ctypes.

CUDA tensors go to the `*_cuda` entry points (device pointers from `data_ptr()`, PyTorch's
current stream, the tensor's device); CPU tensors go to the `*_cpu` ones. Graph index arrays
stay on the host (gshn validates them and builds the CSC transpose there).

    import torch, gshn_torch as gt
    s, v = gt.lif(x, tau=2.0, surrogate="atan")                 # x[T, ...] (e.g. [T, B, N])
    g = gt.Graph.from_edge_index(edge_index, num_nodes=N)      # PyG layout, any edge order
    out = gt.gat(z, a_src, a_dst, g, edge_bias=be)             # z[N,H,F], be[E,H] in edge_index order
    y = gt.aggregate(alpha, s, g)                              # alpha[E,H] in edge_index order, s[T,N,C]
    loss = gt.infonce(img, txt, logit_scale)                   # open_clip ClipLoss semantics

Every op validates before it calls (`check_lif`, `check_gat`, `check_aggregate`,
`check_infonce`: the one validation layer, returning the tensors the library is given):
all tensors of a call share one device (cpu or cuda) and one dtype (float32 or float64), else
TypeError; shapes follow include/gshn.h, else ValueError naming the argument, the expected and
the actual shape. The scalars `tau` and `logit_scale` may be Python numbers or 0-d / [1]
tensors of any float dtype: they are promoted (differentiably) to the call's dtype and device.
Graph indices must be integer tensors whose values fit in int32.
Empty inputs give empty outputs (LIF with T or N = 0; GAT with no nodes, heads or features;
aggregation with T, N or C = 0); their gradients are zeros. InfoNCE needs B >= 1 (the mean
over an empty batch is undefined; the library refuses B = 0 too): ValueError.
Gradients are first-order only: a backward through a gshn op with create_graph=True raises
RuntimeError (rather than return a gradient that a second backward takes for a constant).

The library is $GSHN_LIB, else target/{release,debug}/libgshn_capi.so of this repository
(`cargo build --release -p gshn-capi`). Importing this module loads nothing: the library is opened on
first use, so the pure-PyTorch references (`ref_lif`, `ref_gat`, `ref_aggregate`,
`ref_infonce`) work anywhere.

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

import torch

GSHN_OK = 0
GSHN_F32, GSHN_F64 = 0, 1
SURROGATES = {"atan": 0, "sigmoid": 1, "super_spike": 2, "rectangular": 3}
DEFAULT_ALPHA = {"atan": 2.0, "sigmoid": 4.0, "super_spike": 10.0, "rectangular": 1.0}
_DTYPES = {torch.float32: GSHN_F32, torch.float64: GSHN_F64}
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1

_VP, _I64, _INT, _DBL = C.c_void_p, C.c_int64, C.c_int, C.c_double


class LifParams(C.Structure):
    _fields_ = [("tau", C.c_double), ("v_th", C.c_double), ("v_reset", C.c_double),
                ("hard_reset", C.c_int), ("decay_input", C.c_int), ("detach_reset", C.c_int),
                ("surrogate", C.c_int), ("alpha", C.c_double)]


class _CGraph(C.Structure):
    _fields_ = [("num_nodes", C.c_int64), ("num_edges", C.c_int64),
                ("row_ptr", C.POINTER(C.c_int32)), ("src", C.POINTER(C.c_int32))]


_G = C.POINTER(_CGraph)
_SIGS = {
    "lif_forward": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP],
    "lif_backward": [C.POINTER(LifParams), _INT, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "gat_forward": [_INT, _G, _I64, _I64, _DBL, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
    "gat_backward": [_INT, _G, _I64, _I64, _DBL, _VP, _VP, _VP, _VP, _VP, _VP, _VP,
                     _VP, _VP, _VP, _VP],
    "aggregate_forward": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP],
    "aggregate_backward": [_INT, _G, _I64, _I64, _I64, _VP, _VP, _VP, _VP, _VP],
    "infonce_forward": [_INT, _I64, _I64, _INT, _VP, _VP, _VP, _VP, _VP, _VP],
    "infonce_backward": [_INT, _I64, _I64, _INT, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP, _VP],
}

_lib = None
# Where the library is looked for when $GSHN_LIB is unset, in order.
_SEARCH = [Path(__file__).resolve().parent.parent / "target" / p / "libgshn_capi.so"
           for p in ("release", "debug")]


def library():
    """The loaded libgshn_capi (opened on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    env = os.environ.get("GSHN_LIB")
    tried = [Path(env)] if env else _SEARCH
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        where = "$GSHN_LIB" if env else "the build directories"
        raise OSError(f"libgshn_capi.so not found in {where}; tried: {', '.join(map(str, tried))}. "
                      "Set GSHN_LIB or run `cargo build --release -p gshn-capi`")
    lib = C.CDLL(str(path))
    lib.gshn_last_error.restype = C.c_char_p
    lib.gshn_abi_version.restype = C.c_int
    lib.gshn_cuda_available.restype = C.c_int
    for name, args in _SIGS.items():
        for kind, extra in (("cpu", []), ("cuda", [_INT, _VP])):
            f = getattr(lib, f"gshn_{name}_{kind}")
            f.argtypes = args + extra
            f.restype = C.c_int
    if lib.gshn_abi_version() != 1:
        raise OSError(f"{path}: ABI version {lib.gshn_abi_version()}, this wrapper speaks 1")
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


# ---- validation (the one layer every wrapper, and later the torch.library ops, go through) ----

class _Spec:
    """Checks the tensors of one call of `op` against its contract (include/gshn.h): one device
    (cpu or cuda), one dtype (f32/f64), and shapes whose named dims must agree across tensors.
    Dims may be pre-bound (e.g. N and E from the graph, which is what the library trusts)."""

    def __init__(self, op: str, **dims):
        self.op, self.dims, self.first = op, dict(dims), None

    def _device(self, name, t):
        if not torch.is_tensor(t):
            raise TypeError(f"{self.op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "cuda"):  # meta, mps, ...: no pointer gshn can read
            raise TypeError(f"{self.op}: {name} is on device '{t.device}'; gshn takes cpu or "
                            "cuda tensors")

    def tensor(self, name, t, *shape, optional=False):
        """t checked against `shape` (ints, dim names, and a trailing ... for any further dims),
        made contiguous; None passes when `optional`."""
        if t is None and optional:
            return None
        self._device(name, t)
        if t.dtype not in _DTYPES:
            raise TypeError(f"{self.op}: {name} must be float32 or float64, got {t.dtype}")
        if self.first is None:
            self.first = (name, t)
        else:  # the library takes one dtype for all buffers and reads them all on one device
            other, f = self.first
            if t.dtype != f.dtype:
                raise TypeError(f"{self.op}: {name} is {t.dtype} but {other} is {f.dtype} "
                                "(all tensors of a call share one dtype)")
            if t.device != f.device:
                raise TypeError(f"{self.op}: {name} is on {t.device} but {other} is on "
                                f"{f.device} (all tensors of a call share one device)")
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

    def scalar(self, name, v):
        """A Python number or a one-element (0-d or [1]) tensor as a 0-d tensor of the call's
        dtype and device. The conversion is differentiable, so a gradient reaches `v` in its
        own dtype and shape."""
        _, f = self.first
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return torch.tensor(float(v), dtype=f.dtype, device=f.device)
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


def check_gat(z, a_src, a_dst, graph, edge_bias=None):
    """-> (z[N,H,F], a_src[H,F], a_dst[H,F], edge_bias[E,H] or None), N and E the graph's."""
    sp = _graph("gat", graph)
    return (sp.tensor("z", z, "N", "H", "F"), sp.tensor("a_src", a_src, "H", "F"),
            sp.tensor("a_dst", a_dst, "H", "F"),
            sp.tensor("edge_bias", edge_bias, "E", "H", optional=True))


def check_aggregate(alpha, s, graph, heads=None):
    """-> (alpha[E,H], s[T,N,C]), C a multiple of H; `heads`, when given, must be H."""
    sp = _graph("aggregate", graph)
    if heads is not None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"aggregate: heads must be an int >= 1, got {heads!r}")
        sp.dims["H"] = heads
    alpha, s = sp.tensor("alpha", alpha, "E", "H"), sp.tensor("s", s, "T", "N", "C")
    h, c = sp.dims["H"], sp.dims["C"]
    if h < 1 or c % h:
        raise ValueError(f"aggregate: the channels of s (C={c}) must be a multiple of the heads "
                         f"of alpha (H={h}, H >= 1)")
    return alpha, s


def check_infonce(a, p, logit_scale):
    """-> (a[B,D], p[B,D], logit_scale as a 0-d tensor like a), B >= 1."""
    sp = _Spec("infonce")
    a, p = sp.tensor("a", a, "B", "D"), sp.tensor("p", p, "B", "D")
    if sp.dims["B"] == 0:
        raise ValueError("infonce: a and p are empty (B = 0): the loss of an empty batch is "
                         "undefined")
    return a, p, sp.scalar("logit_scale", logit_scale)


# ---- autograd plumbing ---------------------------------------------------------------------------

def _first_order(op):
    """Marks a backward as not differentiable: under create_graph=True it raises at once.
    (torch's once_differentiable errs only when the incoming gradients require grad; otherwise
    it returns gradients that a second differentiation silently treats as constants.)"""
    def wrap(backward):
        @functools.wraps(backward)
        def run(ctx, *grads):
            if torch.is_grad_enabled():  # the engine enables grad mode iff create_graph=True
                raise RuntimeError(f"gshn {op}: second-order gradients are not supported "
                                   "(backward with create_graph=True)")
            return backward(ctx, *grads)
        return run
    return wrap


def _zeros(*ts):
    return tuple(None if t is None else torch.zeros_like(t) for t in ts)


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


class LIFFunction(torch.autograd.Function):
    """x[T,N], tau (0-d tensor like x, learnable) or None -> spikes[T,N], v[T,N]."""

    @staticmethod
    def forward(ctx, x, tau, params: LifParams):
        if tau is not None:
            params = LifParams.from_buffer_copy(params)
            params.tau = float(tau)
        t, n = x.shape
        s, v, h = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        if x.numel():
            _call("lif_forward", x, C.byref(params), _dtype(x), t, n, _p(x), _p(s), _p(v), _p(h))
        ctx.save_for_backward(h)
        ctx.params = params
        return s, v

    @staticmethod
    @_first_order("lif")
    def backward(ctx, gs, gv):
        (h,) = ctx.saved_tensors
        t, n = h.shape
        gx = torch.empty_like(h)
        gtau = torch.zeros((), dtype=h.dtype, device=h.device) if ctx.needs_input_grad[1] else None
        if h.numel():  # gs and gv of an empty x would both be NULL, which the library refuses
            gs, gv = gs.contiguous(), gv.contiguous()  # kept alive during the call
            _call("lif_backward", h, C.byref(ctx.params), _dtype(h), t, n, _p(h), _p(gs), _p(gv),
                  _p(gx), _p(gtau))
        return gx, gtau, None


def lif(x, tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True, detach_reset=False,
        surrogate="atan", alpha=None):
    """Multi-step LIF (SpikingJelly LIFNode, step_mode='m'): x[T, ...] -> (spikes, v), both
    shaped like x (neurons = the trailing dims, flattened for the library). `tau` a number
    (fixed) or a 0-d / [1] tensor (PLIF: gets a gradient)."""
    x2, tau = check_lif(x, tau)
    p = lif_params(2.0 if torch.is_tensor(tau) else tau, v_th, v_reset, decay_input,
                   detach_reset, surrogate, alpha)
    s, v = LIFFunction.apply(x2, tau if torch.is_tensor(tau) else None, p)
    return s.reshape(x.shape), v.reshape(x.shape)


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
    call."""

    def __init__(self, row_ptr, src, perm=None):
        self.row_ptr = _indices("row_ptr", row_ptr).int().contiguous()
        if self.row_ptr.numel() == 0:
            raise ValueError("Graph: row_ptr must have shape [N + 1], got [0]")
        self.src = _indices("src", src).int().contiguous()
        self.num_nodes = self.row_ptr.numel() - 1
        self.num_edges = self.src.numel()
        self.perm = None if perm is None else _indices("perm", perm, self.num_edges)
        self._c = _CGraph(self.num_nodes, self.num_edges,
                          C.cast(self.row_ptr.data_ptr(), C.POINTER(C.c_int32)),
                          C.cast(self.src.data_ptr(), C.POINTER(C.c_int32)))

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
        return t if self.perm is None else t[self.perm.to(t.device)]


# ---- GAT ---------------------------------------------------------------------------------------

class GATFunction(torch.autograd.Function):
    """z[N,H,F], a_src[H,F], a_dst[H,F], edge_bias[E,H] or None (CSR order) -> out[N,H,F]."""

    @staticmethod
    def forward(ctx, z, a_src, a_dst, edge_bias, graph: Graph, negative_slope: float):
        n, h, f = z.shape
        out = torch.empty_like(z)
        lse = torch.empty((n, h), dtype=z.dtype, device=z.device)
        if out.numel():
            _call("gat_forward", z, _dtype(z), graph.cptr, h, f, negative_slope, _p(z),
                  _p(a_src), _p(a_dst), _p(edge_bias), _p(out), _p(lse), None)
        ctx.save_for_backward(z, a_src, a_dst, edge_bias, out, lse)
        ctx.graph, ctx.slope = graph, negative_slope
        return out

    @staticmethod
    @_first_order("gat")
    def backward(ctx, g_out):
        z, a_src, a_dst, edge_bias, out, lse = ctx.saved_tensors
        if out.numel() == 0:  # no output: nothing depends on the inputs
            return _zeros(z, a_src, a_dst, edge_bias) + (None, None)
        n, h, f = z.shape
        gz, gas, gad = torch.empty_like(z), torch.empty_like(a_src), torch.empty_like(a_dst)
        geb = None if edge_bias is None else torch.empty_like(edge_bias)
        g_out = g_out.contiguous()  # kept alive during the call
        _call("gat_backward", z, _dtype(z), ctx.graph.cptr, h, f, ctx.slope, _p(z), _p(a_src),
              _p(a_dst), _p(edge_bias), _p(out), _p(lse), _p(g_out), _p(gz), _p(gas),
              _p(gad), _p(geb))
        return gz, gas, gad, geb, None, None


def gat(z, a_src, a_dst, graph: Graph, edge_bias=None, negative_slope=0.2):
    """PyG GATConv attention + aggregation (before concat/bias): out[N,H,F]. `edge_bias` is in
    the edge order the graph was built from (edge_index order for `Graph.from_edge_index`)."""
    z, a_src, a_dst, edge_bias = check_gat(z, a_src, a_dst, graph, edge_bias)
    if edge_bias is not None:
        edge_bias = graph.to_csr(edge_bias)
    return GATFunction.apply(z, a_src, a_dst, edge_bias, graph, float(negative_slope))


# ---- fixed-attention aggregation -----------------------------------------------------------------

class AggregateFunction(torch.autograd.Function):
    """alpha[E,H] (CSR order), s[T,N,C] -> y[T,N,C]."""

    @staticmethod
    def forward(ctx, alpha, s, graph: Graph):
        t, _, c = s.shape
        y = torch.empty_like(s)
        if y.numel():
            _call("aggregate_forward", s, _dtype(s), graph.cptr, alpha.shape[1], t, c, _p(alpha),
                  _p(s), _p(y))
        ctx.save_for_backward(alpha, s)
        ctx.graph = graph
        return y

    @staticmethod
    @_first_order("aggregate")
    def backward(ctx, gy):
        alpha, s = ctx.saved_tensors
        if s.numel() == 0:
            return _zeros(alpha, s) + (None,)
        t, _, c = s.shape
        ga = torch.empty_like(alpha) if ctx.needs_input_grad[0] else None
        gs = torch.empty_like(s) if ctx.needs_input_grad[1] else None
        gy = gy.contiguous()  # kept alive during the call
        _call("aggregate_backward", s, _dtype(s), ctx.graph.cptr, alpha.shape[1], t, c,
              _p(alpha), _p(s), _p(gy), _p(ga), _p(gs))
        return ga, gs, None


def aggregate(alpha, s, graph: Graph, heads=None):
    """Fixed-attention aggregation: y[t,i,c] = sum over edges k into i of
    alpha[k, c // (C/H)] * s[t, src_k, c]. alpha[E,H] is in the edge order the graph was built
    from (like gat's edge_bias); s[T,N,C] with C a multiple of H; `heads` (optional) must equal
    H. Gradients for alpha and s."""
    alpha, s = check_aggregate(alpha, s, graph, heads)
    return AggregateFunction.apply(graph.to_csr(alpha), s, graph)


# ---- InfoNCE -----------------------------------------------------------------------------------

class InfoNCEFunction(torch.autograd.Function):
    """a[B,D], p[B,D], logit_scale (0-d, like a) -> loss (0-d)."""

    @staticmethod
    def forward(ctx, a, p, ls, symmetric: bool):
        b, d = a.shape
        loss = torch.empty((), dtype=a.dtype, device=a.device)
        lse_row = torch.empty(b, dtype=a.dtype, device=a.device)
        lse_col = torch.empty(b if symmetric else 0, dtype=a.dtype, device=a.device)
        _call("infonce_forward", a, _dtype(a), b, d, int(symmetric), _p(a), _p(p), _p(ls),
              _p(loss), _p(lse_row), _p(lse_col) if symmetric else None)
        ctx.save_for_backward(a, p, ls, lse_row, lse_col)
        ctx.symmetric = symmetric
        return loss

    @staticmethod
    @_first_order("infonce")
    def backward(ctx, g_loss):
        a, p, ls, lse_row, lse_col = ctx.saved_tensors
        b, d = a.shape
        ga, gp, gls = (torch.empty_like(t) if need else None
                       for t, need in zip((a, p, ls), ctx.needs_input_grad))
        gl = g_loss.contiguous()
        _call("infonce_backward", a, _dtype(a), b, d, int(ctx.symmetric), _p(a), _p(p), _p(ls),
              _p(lse_row), _p(lse_col) if ctx.symmetric else None, _p(gl), _p(ga), _p(gp), _p(gls))
        return ga, gp, gls, None


def infonce(a, p, logit_scale, symmetric=True):
    """open_clip ClipLoss with s = min(exp(logit_scale), 100) (a, p: L2-normalised [B, D], B >= 1;
    logit_scale: a number or a 0-d / [1] tensor, the log of the scale, as open_clip's parameter)."""
    a, p, ls = check_infonce(a, p, logit_scale)
    return InfoNCEFunction.apply(a, p, ls, bool(symmetric))


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
