"""A PyTorch twin of gshn's GSHN model (DESIGN §4 as gshn builds it), for step parity.

An independent implementation in plain PyTorch: autograd computes every gradient, except the
spike of the LIF neuron, whose backward is a surrogate derivative (`SpikeFn`, DESIGN §3.1).
Nothing here calls gshn (neither its C library nor `gshn op`); it only reads a training step
written by `gshn dump-batch` (`load_step`), replays it (`TwinModel.forward`, `train_step`) and
hands back what it computed, for `python/twin_parity.py` to compare with what gshn computed.

The twin follows gshn's *structure* (which layer feeds which, parameter names and shapes,
weights laid out [in, out], the order parameters are created in) because it loads gshn's
parameters by name; the *math* of each piece is written the way PyTorch users write it:
SpikingJelly's multi-step LIFNode as a Python loop over T, PyG GATConv's edge softmax with
scatter ops, open_clip's ClipLoss with dense logits and F.cross_entropy, a pre-LN transformer
with a padding mask, torch.optim.AdamW's update written out, clip_grad_norm_'s factor.

Conventions taken from gshn's op docs (src/ops/*.rs, src/model/*.rs), where DESIGN is silent
-------------------------------------------------------------------------------------------
- LayerNorm (ops/norm.rs): last axis, biased variance, eps inside the square root, eps 1e-5
  (model/gshn.rs `LN_EPS`, model/text.rs) = F.layer_norm.
- L2-normalise (ops/norm.rs): y = x / max(||x||_2, eps), eps 1e-12 (model/gshn.rs `NORM_EPS`)
  = F.normalize.
- Masked softmax (ops/norm.rs): masked keys get exactly 0; a row with no kept key is all 0.
- Segment mean (ops/segment.rs): id -1 = left out (void pixel / padding node); an empty segment
  has mean 0 and passes no gradient.
- ELU alpha = 1 (ops/basic.rs `Graph::elu`); GELU is the exact erf form; ReLU'(0) = 0,
  LeakyReLU'(0) = slope, ELU'(x <= 0) = alpha e^x (ops/basic.rs `Unary::derivative`) = torch.
- Gather (ops/layout.rs): rows of a table picked by i32 indices (embedding lookup); its
  gradient is a scatter-add.
- mean_last = mean over the last axis (ops/basic.rs `Reduce`); the last GAT layer averages its
  heads with it. Time means are a [1, T] matmul with 1/T (model/branches.rs): a plain mean here.
- GAT (ops/gat.rs): pre = el[src] + er[dst] + be; a node with no in-edge has lse 0 and output 0;
  the exported attention is the full softmax and is differentiable (GatAlphaBackward).
- Aggregate (ops/gat.rs, README op table): channel c of [T, N, C] uses head c // (C / H).
- LIF (ops/lif.rs): spike when H - v_th >= 0; V_0 = v_reset (0 for soft reset); the learnable
  tau (PLIF) is tau itself (not SpikingJelly's 1/sigmoid(w)), one [] parameter per layer;
  ATan's derivative is computed as alpha / (2 (1 + u^2)), u = (pi/2 * alpha) (H - v_th).
- InfoNCE (ops/infonce.rs): s = min(exp(logit_scale), 100); the clamp stops the gradient only
  when exp(logit_scale) > 100 (torch.clamp passes it at equality, as gshn does).
- ClipScale (ops/optim.rs): norm = sqrt(sum of squares in f64 over every gradient),
  scale = min(1, max_norm / (norm + 1e-6)) rounded to the element type; a non-finite norm
  gives scale 0, and AdamW then SKIPS the step (p, m, v unchanged).
- AdamW (ops/optim.rs): torch.optim.AdamW (non-amsgrad) with g_hat = g * scale, in this order:
  p <- p (1 - lr wd); m <- b1 m + (1 - b1) g_hat; v <- b2 v + (1 - b2) g_hat^2;
  p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps); the scalar factors
  (1 - lr wd, lr / bc1, sqrt(bc2)) in f64, rounded once to the element type; t is 1-based;
  lr and t are read from the fed `adamw.hyper` (so an f32 step uses lr rounded to f32).
- Weight decay applies to EVERY parameter (train/engine.rs passes all of them to adamw_step:
  biases, LayerNorm gains, embeddings, logit scales, fusion r and PLIF tau included).
- Gradients are d(total loss)/d(param) before clipping; the clip norm is train.clip_norm.
- Model wiring not in DESIGN, from model/*.rs and README "Choices": SNN input currents are
  layer-normalised per (t, node), the layer has no bias (the LayerNorm's beta plays it);
  the root weight adds S^{l-1} U^l before that LayerNorm; the first SNN layer aggregates the
  direct-encoding current itself; SNN layer l uses GAT layer min(l, L_g - 1)'s attention;
  the membrane readout is mean_t of V after reset of the last layer; the mean-pool MLP is
  Linear -> GELU -> Linear per node, then the same image pooling; STL and node CL have their
  own logit scales; the text position embedding is one flat [max_len * dim] vector; the
  relation loss is `relation_loss` of model/losses.rs (appearance = pooled pixel features
  without the two position channels, geometry[:, 2:5] = bbox w, h, area, category embedding;
  node samples are `per` consecutive slots per image; every ordered pair i != j; a trilinear
  decoder ((z Wz) * (a Wa + ba) * (b Wb + bb)) Wo + bo; MSE to the centroid offset c_j - c_i,
  mean over all elements, image side + text side); the position channels are 7 and 8 of the
  built-in 12-channel features (data/features.rs), inferred from relation.a.weight's rows, as
  the dump does not record them; the hard-negative loss is
  sum(relu(z_img.z_neg - z_img.z_txt + margin) * neg_row_weight) and reuses the text
  encoder's parameters (shared by name).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-5
NORM_EPS = 1e-12
CLIP_EPS = 1e-6
GAT_SLOPE = 0.2
BUILTIN_CHANNELS = 12  # gshn's built-in pixel features (src/data/features.rs)
BUILTIN_POSITION_CHANNEL = 7


# --------------------------------------------------------------------------------------------
# The step dump
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One training step of gshn, as written by `gshn dump-batch` (format gshn-step/1)."""

    path: str
    float: str
    dtype: torch.dtype
    step: int
    config: dict
    param_names: list
    adamw: dict
    metadata: dict
    inputs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    adam_m: dict = field(default_factory=dict)
    adam_v: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    after_m: dict = field(default_factory=dict)
    after_v: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)


def _read_safetensors(path: str) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except ImportError:  # the format by hand: u64 header length, JSON header, raw data
        import struct

        dtypes = {"F64": torch.float64, "F32": torch.float32, "I32": torch.int32,
                  "I64": torch.int64, "U8": torch.uint8, "F16": torch.float16,
                  "BF16": torch.bfloat16}
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            data = fh.read()
        meta = header.pop("__metadata__", {}) or {}
        out = {}
        for k, v in header.items():
            a, b = v["data_offsets"]
            t = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[v["dtype"]])
            out[k] = t.reshape(v["shape"]).clone()
        return out, meta


def load_step(path: str) -> Step:
    """Reads a step dump: tensors by role, the run config and the optimizer settings."""
    tensors, meta = _read_safetensors(path)
    if meta.get("format") != "gshn-step/1":
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected 'gshn-step/1'")
    fl = meta.get("float", "f64")
    dtype = {"f64": torch.float64, "f32": torch.float32}[fl]
    st = Step(
        path=str(path),
        float=fl,
        dtype=dtype,
        step=int(meta.get("step", 0)),
        config=json.loads(meta["config"]),
        param_names=json.loads(meta["param_names"]),
        adamw=json.loads(meta["adamw"]),
        metadata=meta,
    )
    for key, t in tensors.items():
        role, _, name = key.partition(".")
        if role == "input":
            st.inputs[name] = t
        elif role == "param":
            st.params[name] = t
        elif role == "state":
            kind, _, pname = name.partition(".")
            {"adam_m": st.adam_m, "adam_v": st.adam_v}[kind][pname] = t
        elif role == "grad":
            st.grads[name] = t
        elif role == "after":
            kind, _, pname = name.partition(".")
            if kind == "adam_m":
                st.after_m[pname] = t
            elif kind == "adam_v":
                st.after_v[pname] = t
            else:
                st.after[name] = t
        elif role == "output":
            st.outputs[name] = t
        else:
            raise ValueError(f"{path}: unknown tensor {key!r}")
    return st


# --------------------------------------------------------------------------------------------
# Configuration and static sizes
# --------------------------------------------------------------------------------------------


@dataclass
class Capacity:
    """Static batch sizes, read from the step's tensor shapes."""

    batch: int
    nodes: int
    edges: int
    pixels: int
    pixel_channels: int
    position_channel: int | None
    categories: int
    edge_features: int
    geometry: int
    node_samples: int
    vocab: int
    negatives: bool
    relations: bool
    text_features: int

    @staticmethod
    def of_step(step: Step) -> "Capacity":
        inp, prm, cfg = step.inputs, step.params, step.config
        md, tr = cfg["model"], cfg.get("train", {})
        c = inp["pixel_feats"].shape[1]
        relations = float(tr.get("lambda_rel", 0.0)) > 0.0
        pos = None
        if "position_channel" in step.metadata:
            v = json.loads(step.metadata["position_channel"])
            pos = None if v is None else int(v)
        elif relations:
            # the relation decoder's input width tells whether two position channels were cut
            k = prm["relation.a.weight"].shape[0]
            cut = c + 3 + md["category_dim"] - k
            if cut == 2:
                if c != BUILTIN_CHANNELS:
                    raise ValueError("position channels of a non built-in feature map: "
                                     "the dump must say where (metadata position_channel)")
                pos = BUILTIN_POSITION_CHANNEL
            elif cut != 0:
                raise ValueError(f"relation.a.weight has {k} rows; cannot place the pixel "
                                 f"position channels among {c}")
        return Capacity(
            batch=inp["token_keep"].shape[0],
            nodes=inp["geometry"].shape[0],
            edges=inp["src"].shape[0],
            pixels=inp["pixel_feats"].shape[0],
            pixel_channels=c,
            position_channel=pos,
            categories=prm["category_embedding"].shape[0] - 1,
            edge_features=inp["edge_feats"].shape[1],
            geometry=inp["geometry"].shape[1],
            node_samples=inp["node_sample"].shape[0],
            vocab=prm["text.token_embedding"].shape[0] if "text.token_embedding" in prm else 0,
            negatives="neg_tokens" in inp,
            relations=relations,
            text_features=inp["text_features"].shape[1] if "text_features" in inp else 0,
        )


# --------------------------------------------------------------------------------------------
# LIF with a surrogate gradient (SpikingJelly semantics)
# --------------------------------------------------------------------------------------------


def surrogate_grad(kind: str, alpha: float, x: Tensor) -> Tensor:
    """sigma'(x) of DESIGN §3.1."""
    if kind in ("atan", "a_tan"):
        u = (math.pi / 2 * alpha) * x
        return alpha / (2 * (1 + u * u))
    if kind == "sigmoid":
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1 - s)
    if kind in ("super_spike", "superspike"):
        d = 1 + alpha * x.abs()
        return 1 / (d * d)
    if kind in ("rectangular", "rect"):
        return (x.abs() < alpha / 2).to(x.dtype) / alpha
    raise ValueError(f"unknown surrogate {kind!r}")


def surrogate_primitive(kind: str, alpha: float, x: Tensor) -> Tensor:
    """A smooth step whose derivative is sigma' (gshn's `smooth` test mode)."""
    if kind in ("atan", "a_tan"):
        return torch.atan((math.pi / 2 * alpha) * x) / math.pi + 0.5
    if kind == "sigmoid":
        return torch.sigmoid(alpha * x)
    if kind in ("super_spike", "superspike"):
        return 0.5 + torch.sign(x) * (1 - 1 / (1 + alpha * x.abs())) / alpha
    if kind in ("rectangular", "rect"):
        return (x / alpha + 0.5).clamp(0, 1)
    raise ValueError(f"unknown surrogate {kind!r}")


class SpikeFn(torch.autograd.Function):
    """Heaviside(x >= 0) forward, surrogate derivative backward."""

    @staticmethod
    def forward(ctx, x, kind, alpha):
        ctx.save_for_backward(x)
        ctx.kind, ctx.alpha = kind, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * surrogate_grad(ctx.kind, ctx.alpha, x), None, None


@dataclass
class LifCfg:
    tau: float = 2.0
    v_th: float = 1.0
    v_reset: float | None = 0.0  # None = soft reset
    decay_input: bool = True
    detach_reset: bool = False
    kind: str = "atan"
    alpha: float = 2.0
    learnable_tau: bool = False
    smooth: bool = False

    @staticmethod
    def from_json(d: dict) -> "LifCfg":
        defaults = {"atan": 2.0, "a_tan": 2.0, "sigmoid": 4.0, "super_spike": 10.0,
                    "superspike": 10.0, "rectangular": 1.0, "rect": 1.0}
        sur = d.get("surrogate", {"kind": "atan", "alpha": 2.0})
        kind = sur["kind"] if isinstance(sur, dict) else str(sur)
        alpha = sur.get("alpha") if isinstance(sur, dict) else None
        vr = d.get("v_reset", 0.0)
        return LifCfg(
            tau=float(d.get("tau", 2.0)),
            v_th=float(d.get("v_th", 1.0)),
            v_reset=None if vr == "soft" or vr is None else float(vr),
            decay_input=bool(d.get("decay_input", True)),
            detach_reset=bool(d.get("detach_reset", False)),
            kind=kind,
            alpha=float(defaults[kind] if alpha is None else alpha),
            learnable_tau=bool(d.get("learnable_tau", False)),
            smooth=bool(d.get("smooth", False)),
        )


def multistep_lif(x: Tensor, cfg: LifCfg, tau: Tensor | float) -> tuple[Tensor, Tensor]:
    """SpikingJelly LIFNode, step_mode='m', over x[T, ...]: returns (spikes, v_seq) [T, ...]."""
    v_r = 0.0 if cfg.v_reset is None else cfg.v_reset
    v = torch.full_like(x[0], v_r)
    spikes, vs = [], []
    for t in range(x.shape[0]):
        # neuronal charge
        if cfg.decay_input:
            h = v + (x[t] - (v - v_r)) / tau
        else:
            h = v - (v - v_r) / tau + x[t]
        # fire
        if cfg.smooth:
            s = surrogate_primitive(cfg.kind, cfg.alpha, h - cfg.v_th)
        else:
            s = SpikeFn.apply(h - cfg.v_th, cfg.kind, cfg.alpha)
        # reset
        sr = s.detach() if cfg.detach_reset else s
        if cfg.v_reset is None:
            v = h - cfg.v_th * sr
        else:
            v = h * (1 - sr) + cfg.v_reset * sr
        spikes.append(s)
        vs.append(v)
    return torch.stack(spikes), torch.stack(vs)


# --------------------------------------------------------------------------------------------
# Graph pieces (PyG-style scatter code)
# --------------------------------------------------------------------------------------------


def segment_mean(x: Tensor, seg: Tensor, segments: int) -> Tensor:
    """Mean of the rows of x per segment id (-1 rows left out; an empty segment gives 0)."""
    keep = seg >= 0
    idx = seg[keep].long()
    rows = x[keep]
    total = x.new_zeros((segments,) + x.shape[1:]).index_add(0, idx, rows)
    count = x.new_zeros(segments).index_add(0, idx, torch.ones_like(idx, dtype=x.dtype))
    return total / count.clamp_min(1).view((-1,) + (1,) * (x.dim() - 1))


def edge_softmax(e: Tensor, dst: Tensor, n: int) -> Tensor:
    """Softmax of e[E, H] over the edges entering each destination (PyG `softmax`)."""
    h = e.shape[1]
    idx = dst.view(-1, 1).expand(-1, h)
    mx = torch.full((n, h), -math.inf, dtype=e.dtype, device=e.device).scatter_reduce(
        0, idx, e.detach(), reduce="amax", include_self=True)
    ex = (e - mx[dst]).exp()
    den = e.new_zeros(n, h).index_add(0, dst, ex)
    return ex / den[dst]


class GraphIndex:
    """CSR by destination: the source and destination of every edge."""

    def __init__(self, row_ptr: Tensor, src: Tensor):
        n = row_ptr.shape[0] - 1
        deg = (row_ptr[1:] - row_ptr[:-1]).long()
        self.n = n
        self.src = src.long()
        self.dst = torch.repeat_interleave(torch.arange(n, device=row_ptr.device), deg)
        assert self.dst.shape == self.src.shape


def gat_conv(h: Tensor, w: Tensor, att_src: Tensor, att_dst: Tensor, edge_bias: Tensor,
             g: GraphIndex) -> tuple[Tensor, Tensor]:
    """PyG GATConv (no self-loop insertion, edge bias per head): out [N, H, F], alpha [E, H]."""
    heads, f = att_src.shape
    z = (h @ w).view(g.n, heads, f)
    el = (z * att_src).sum(-1)
    er = (z * att_dst).sum(-1)
    e = F.leaky_relu(el[g.src] + er[g.dst] + edge_bias, GAT_SLOPE)
    alpha = edge_softmax(e, g.dst, g.n)
    msg = alpha.unsqueeze(-1) * z[g.src]
    out = z.new_zeros(g.n, heads, f).index_add(0, g.dst, msg)
    return out, alpha


def aggregate(alpha: Tensor, s: Tensor, g: GraphIndex) -> Tensor:
    """Y[t, i, c] = sum_{k into i} alpha[k, c // (C/H)] S[t, src_k, c]."""
    t, n, c = s.shape
    heads = alpha.shape[1]
    a = alpha.repeat_interleave(c // heads, dim=1)  # [E, C]
    msg = s[:, g.src, :] * a
    return s.new_zeros(t, n, c).index_add(1, g.dst, msg)


def masked_softmax(x: Tensor, keep: Tensor) -> Tensor:
    """Softmax over the last axis of x[B, G, L] over keys keep[B, L] != 0; all-masked rows -> 0."""
    mask = (keep != 0).unsqueeze(1)
    xm = x.masked_fill(~mask, -math.inf)
    mx = xm.amax(-1, keepdim=True).detach()
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    ex = (xm - mx).exp()
    den = ex.sum(-1, keepdim=True)
    return ex / torch.where(den > 0, den, torch.ones_like(den))


def clip_loss(a: Tensor, p: Tensor, logit_scale: Tensor, symmetric: bool) -> Tensor:
    """open_clip ClipLoss (dense logits); one-directional a -> p when not symmetric."""
    s = logit_scale.exp().clamp(max=100.0)
    logits = s * (a @ p.t())
    labels = torch.arange(a.shape[0], device=a.device)
    row = F.cross_entropy(logits, labels)
    if not symmetric:
        return row
    return (row + F.cross_entropy(logits.t(), labels)) / 2


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x W (+ b) with gshn's weight layout W[in, out]."""
    y = x @ w
    return y if b is None else y + b


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class TwinModel(nn.Module):
    """The GSHN of `config` (a run config: the `model` and `train` tables) at capacity `cap`.

    Parameters live in `self.params` under mangled keys; `param(name)` and
    `gshn_parameters()` use gshn's names ("gat.0.lin.weight", ...), in gshn's creation order.
    """

    def __init__(self, config: dict, cap: Capacity, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.run_config = config
        m = config["model"]
        self.m = m
        self.variant = m.get("variant", "full")
        self.dim = int(m.get("dim", 128))
        self.category_dim = int(m.get("category_dim", 16))
        self.gat_layers = int(m.get("gat_layers", 2))
        self.heads = int(m.get("heads", 4))
        self.snn_layers = int(m.get("snn_layers", 2))
        self.time_steps = int(m.get("time_steps", 4))
        self.lif = LifCfg.from_json(m.get("lif", {}))
        self.readout = m.get("readout", "rate")
        self.fusion = m.get("fusion", "scalar")
        self.detach_attention = bool(m.get("detach_attention", False))
        self.snn_root_weight = bool(m.get("snn_root_weight", True))
        self.negative_margin = float(m.get("negative_margin", 0.2))
        prec = m.get("infonce_precision", "f32")
        if prec != "f32":
            raise NotImplementedError(f"model.infonce_precision = {prec!r}: the twin is f32 only")
        t = m.get("text", {})
        self.text_source = t.get("source", "encoder")
        self.text_layers = int(t.get("layers", 2))
        self.text_heads = int(t.get("heads", 4))
        self.max_len = int(t.get("max_len", 24))
        self.mlp_ratio = int(t.get("mlp_ratio", 2))
        self.cap = cap
        self.dtype_ = dtype
        self.has_gat = self.variant in ("full", "gat_only")
        self.has_snn = self.variant in ("full", "snn_only")
        self.x_dim = cap.pixel_channels + cap.geometry + self.category_dim
        self.params = nn.ParameterDict()
        self.names: list[str] = []
        self._shapes: dict[str, tuple] = {}
        self._declare()

    # ---- parameters -------------------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _p(self, name: str, *shape: int) -> None:
        if name in self._shapes:  # a shared layer (the text encoder on hard negatives)
            assert self._shapes[name] == tuple(shape), name
            return
        self._shapes[name] = tuple(shape)
        self.names.append(name)
        self.params[self._key(name)] = nn.Parameter(torch.zeros(shape, dtype=self.dtype_))

    def _linear(self, name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
        self._p(f"{name}.weight", fan_in, fan_out)
        if bias:
            self._p(f"{name}.bias", fan_out)

    def param(self, name: str) -> Tensor:
        return self.params[self._key(name)]

    def gshn_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, self.param(n)) for n in self.names]

    def _declare(self) -> None:
        """Every parameter, in the order gshn creates them (Gshn::build_in)."""
        d, cap, heads = self.dim, self.cap, self.heads
        self._p("category_embedding", cap.categories + 1, self.category_dim)
        self._p("logit_scale")
        if self.has_gat:
            self._linear("gat.input", self.x_dim, d)
            for l in range(self.gat_layers):
                f = d if l + 1 == self.gat_layers else d // heads
                self._linear(f"gat.{l}.lin", d, heads * f, bias=False)
                self._p(f"gat.{l}.att_src", heads, f)
                self._p(f"gat.{l}.att_dst", heads, f)
                self._linear(f"gat.{l}.edge", cap.edge_features, heads, bias=False)
                self._p(f"gat.{l}.norm.weight", d)
                self._p(f"gat.{l}.norm.bias", d)
        if self.has_snn:
            self._linear("snn.input", self.x_dim, d)
            for l in range(self.snn_layers):
                self._linear(f"snn.{l}.lin", d, d, bias=False)
                if self.snn_root_weight:
                    self._linear(f"snn.{l}.root", d, d, bias=False)
                if self.lif.learnable_tau:
                    self._p(f"snn.{l}.tau")
                self._p(f"snn.{l}.norm.weight", d)
                self._p(f"snn.{l}.norm.bias", d)
            self._linear("snn.out", d, d)
        if self.has_gat and self.has_snn:
            if self.fusion == "channel":
                self._p("fusion.r", d)
            else:
                self._p("fusion.r")
        elif not self.has_gat and not self.has_snn:
            self._linear("mlp.0", self.x_dim, d)
            self._linear("mlp.1", d, d)
        self._linear("image.proj", d, d)
        if self.text_source == "features":
            self._linear("text.proj", cap.text_features, d)
        else:
            self._declare_text()
        if cap.relations:
            k = self._appearance_width()
            self._linear("relation.z", d, d, bias=False)
            self._linear("relation.a", k, d)
            self._linear("relation.b", k, d)
            self._linear("relation.out", d, 2)
        if self.variant == "full":
            self._linear("stl.proj", d, d)
            self._p("stl.logit_scale")
            self._p("node_cl.logit_scale")
        if cap.negatives:
            self._declare_text()  # shared: creates nothing new

    def _declare_text(self) -> None:
        d, length = self.dim, self.max_len
        self._p("text.token_embedding", self.cap.vocab, d)
        self._p("text.position_embedding", length * d)
        for i in range(self.text_layers):
            p = f"text.{i}"
            self._p(f"{p}.ln1.weight", d)
            self._p(f"{p}.ln1.bias", d)
            for proj in ("q", "k", "v", "o"):
                self._linear(f"{p}.{proj}", d, d)
            self._p(f"{p}.ln2.weight", d)
            self._p(f"{p}.ln2.bias", d)
            self._linear(f"{p}.mlp.0", d, self.mlp_ratio * d)
            self._linear(f"{p}.mlp.1", self.mlp_ratio * d, d)
        self._p("text.ln_final.weight", d)
        self._p("text.ln_final.bias", d)
        self._linear("text.proj", d, d)

    def _appearance_width(self) -> int:
        c = self.cap.pixel_channels
        kept = c if self.cap.position_channel is None else c - 2
        return kept + 3 + self.category_dim

    @torch.no_grad()
    def load_gshn(self, tensors: dict) -> None:
        """Sets every parameter from gshn's (name -> tensor); names and shapes must match."""
        mine = set(self.names)
        theirs = set(tensors)
        if mine != theirs:
            raise ValueError(f"parameter sets differ: only twin {sorted(mine - theirs)}, "
                             f"only gshn {sorted(theirs - mine)}")
        for n in self.names:
            src = tensors[n]
            if tuple(src.shape) != self._shapes[n]:
                raise ValueError(f"{n}: gshn shape {tuple(src.shape)}, twin {self._shapes[n]}")
            self.param(n).copy_(src.to(self.dtype_))

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, inputs: dict) -> dict:
        """Loss terms (unweighted and the weighted total), embeddings and spike rates."""
        cap, d = self.cap, self.dim
        P = self.param
        fl = inputs
        g = GraphIndex(fl["row_ptr"], fl["src"])
        node_graph = fl["node_graph"]
        out: dict = {}

        # node inputs x_v = [masked pool ; geometry ; category embedding]
        pooled = segment_mean(fl["pixel_feats"], fl["pixel_node"], cap.nodes)
        cat = P("category_embedding")[fl["category"].long()]
        x = torch.cat([pooled, fl["geometry"], cat], dim=1)

        # GAT branch: h <- LN(h + ELU(GAT(h))), last layer heads averaged
        f_gat, attention = None, []
        if self.has_gat:
            h = linear(x, P("gat.input.weight"), P("gat.input.bias"))
            for l in range(self.gat_layers):
                be = fl["edge_feats"] @ P(f"gat.{l}.edge.weight")
                o, alpha = gat_conv(h, P(f"gat.{l}.lin.weight"), P(f"gat.{l}.att_src"),
                                    P(f"gat.{l}.att_dst"), be, g)
                attention.append(alpha)
                merged = o.mean(dim=1) if l + 1 == self.gat_layers else o.reshape(cap.nodes, d)
                h = F.layer_norm(h + F.elu(merged), (d,), P(f"gat.{l}.norm.weight"),
                                 P(f"gat.{l}.norm.bias"), LN_EPS)
            f_gat = h

        # SNN branch: S^l = LIF(LN(Agg_a(S^{l-1}) W^l [+ S^{l-1} U^l])), E = mean_t(S^L) W_out
        e_snn, spike_rates = None, []
        if self.has_snn:
            t_steps, n = self.time_steps, cap.nodes
            current = linear(x, P("snn.input.weight"), P("snn.input.bias"))
            s = current.unsqueeze(0).expand(t_steps, n, d)  # direct encoding
            v_last = None
            for l in range(self.snn_layers):
                if self.variant == "snn_only":
                    alpha = fl["uniform_alpha"]
                else:
                    alpha = attention[min(l, len(attention) - 1)]
                    if self.detach_attention:
                        alpha = alpha.detach()
                cur = aggregate(alpha, s, g).reshape(t_steps * n, d) @ P(f"snn.{l}.lin.weight")
                if self.snn_root_weight:
                    cur = cur + s.reshape(t_steps * n, d) @ P(f"snn.{l}.root.weight")
                cur = F.layer_norm(cur, (d,), P(f"snn.{l}.norm.weight"),
                                   P(f"snn.{l}.norm.bias"), LN_EPS)
                tau = P(f"snn.{l}.tau") if self.lif.learnable_tau else self.lif.tau
                spikes, v = multistep_lif(cur.view(t_steps, n, d), self.lif, tau)
                per_node = spikes.mean(-1)  # [T, n]
                spike_rates.append((per_node * fl["node_weight"]).sum())
                s, v_last = spikes, v
            trace = s if self.readout == "rate" else v_last
            e_snn = linear(trace.mean(0), P("snn.out.weight"), P("snn.out.bias"))
        out["spike_rates"] = spike_rates

        # fusion V' = r E_SNN + F_GAT (or one branch, or the mean-pool MLP)
        if e_snn is not None and f_gat is not None:
            fused = e_snn * P("fusion.r") + f_gat
        elif e_snn is not None:
            fused = e_snn
        elif f_gat is not None:
            fused = f_gat
        else:
            hid = F.gelu(linear(x, P("mlp.0.weight"), P("mlp.0.bias")))
            fused = linear(hid, P("mlp.1.weight"), P("mlp.1.bias"))

        img = segment_mean(fused, node_graph, cap.batch)
        z_img = F.normalize(linear(img, P("image.proj.weight"), P("image.proj.bias")),
                            dim=-1, eps=NORM_EPS)
        if self.text_source == "features":
            z_txt = F.normalize(linear(fl["text_features"], P("text.proj.weight"),
                                       P("text.proj.bias")), dim=-1, eps=NORM_EPS)
        else:
            z_txt = self.text_encoder(fl["tokens"], fl["token_keep"])
        out["z_img"], out["z_txt"] = z_img, z_txt

        # losses, summed in gshn's order
        rel = None
        if cap.relations:
            rel = self.relation_loss(pooled, fl["geometry"], cat, fl["node_sample"], z_img, z_txt)
        itc = clip_loss(z_img, z_txt, P("logit_scale"), symmetric=True)
        loss = itc * fl["w_itc"]
        if rel is not None:
            loss = loss + rel * fl["w_rel"]
        out["itc"] = itc
        if rel is not None:
            out["rel"] = rel
        if self.variant == "full":
            # STL: spiking branch -> frozen text embedding, one direction
            pooled_snn = segment_mean(e_snn, node_graph, cap.batch)
            s_img = F.normalize(linear(pooled_snn, P("stl.proj.weight"), P("stl.proj.bias")),
                                dim=-1, eps=NORM_EPS)
            stl = clip_loss(s_img, z_txt.detach(), P("stl.logit_scale"), symmetric=False)
            # node CL: SNN view vs frozen GAT view of the sampled segments
            idx = fl["node_sample"].long()
            sn = F.normalize(e_snn[idx], dim=-1, eps=NORM_EPS)
            gn = F.normalize(f_gat[idx].detach(), dim=-1, eps=NORM_EPS)
            node_cl = clip_loss(sn, gn, P("node_cl.logit_scale"), symmetric=True)
            loss = loss + stl * fl["w_stl"] + node_cl * fl["w_node"]
            out["stl"], out["node_cl"] = stl, node_cl
        if cap.negatives:
            z_neg = self.text_encoder(fl["neg_tokens"], fl["neg_token_keep"])
            pos = (z_img * z_txt).sum(-1)
            negs = (z_img * z_neg).sum(-1)
            hinge = F.relu(negs - pos + self.negative_margin)
            neg = (hinge * fl["neg_row_weight"]).sum()
            loss = loss + neg * fl["w_neg"]
            out["neg"] = neg
        out["loss"] = loss
        return out

    def text_encoder(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """Token + position embedding -> pre-LN blocks with a padding mask -> [CLS] -> proj."""
        P = self.param
        b, length, d = self.cap.batch, self.max_len, self.dim
        nh = self.text_heads
        dh = d // nh
        x = P("text.token_embedding")[tokens.long()].reshape(b, length * d)
        h = (x + P("text.position_embedding")).reshape(b, length, d)
        for i in range(self.text_layers):
            p = f"text.{i}"
            a = F.layer_norm(h, (d,), P(f"{p}.ln1.weight"), P(f"{p}.ln1.bias"), LN_EPS)

            def heads(v):
                return v.reshape(b, length, nh, dh).permute(0, 2, 1, 3)

            q = heads(linear(a, P(f"{p}.q.weight"), P(f"{p}.q.bias")))
            k = heads(linear(a, P(f"{p}.k.weight"), P(f"{p}.k.bias")))
            v = heads(linear(a, P(f"{p}.v.weight"), P(f"{p}.v.bias")))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # [b, nh, L, L]
            attn = masked_softmax(scores.reshape(b, nh * length, length), keep)
            ctx = attn.reshape(b, nh, length, length) @ v
            ctx = ctx.permute(0, 2, 1, 3).reshape(b, length, d)
            h = h + linear(ctx, P(f"{p}.o.weight"), P(f"{p}.o.bias"))
            m = F.layer_norm(h, (d,), P(f"{p}.ln2.weight"), P(f"{p}.ln2.bias"), LN_EPS)
            m = linear(F.gelu(linear(m, P(f"{p}.mlp.0.weight"), P(f"{p}.mlp.0.bias"))),
                       P(f"{p}.mlp.1.weight"), P(f"{p}.mlp.1.bias"))
            h = h + m
        h = F.layer_norm(h, (d,), P("text.ln_final.weight"), P("text.ln_final.bias"), LN_EPS)
        cls = h[:, 0, :]
        return F.normalize(linear(cls, P("text.proj.weight"), P("text.proj.bias")),
                           dim=-1, eps=NORM_EPS)

    def relation_loss(self, pooled, geometry, cat, node_sample, z_img, z_txt) -> Tensor:
        """Predict the centroid offset of every ordered pair of an image's node samples from
        (embedding, appearance of both): MSE, summed over the image and the text side."""
        P, cap = self.param, self.cap
        b, per = cap.batch, cap.node_samples // cap.batch
        c, pc = cap.pixel_channels, cap.position_channel
        keep_cols = [j for j in range(c) if pc is None or j not in (pc, pc + 1)]
        appearance = torch.cat([pooled[:, keep_cols], geometry[:, 2:5], cat], dim=1)
        idx = node_sample.long()
        look = appearance[idx].view(b, per, -1)
        centre = geometry[idx][:, 0:2].reshape(b, per, 2)
        pairs = [(i, j) for i in range(per) for j in range(per) if j != i]
        first = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=idx.device)
        second = torch.tensor([j for _, j in pairs], dtype=torch.long, device=idx.device)
        np_ = len(pairs)
        la = look[:, first].reshape(b * np_, -1)
        lb = look[:, second].reshape(b * np_, -1)
        offset = (centre[:, second] - centre[:, first]).reshape(b * np_, 2)
        pair = linear(la, P("relation.a.weight"), P("relation.a.bias")) * \
            linear(lb, P("relation.b.weight"), P("relation.b.bias"))

        def mse(z):
            zz = z.unsqueeze(1).expand(b, np_, z.shape[1]).reshape(b * np_, -1)
            pred = linear((zz @ P("relation.z.weight")) * pair, P("relation.out.weight"),
                          P("relation.out.bias"))
            return ((pred - offset) ** 2).mean()

        return mse(z_img) + mse(z_txt)


# --------------------------------------------------------------------------------------------
# One training step: loss, gradients, global-norm clip, AdamW
# --------------------------------------------------------------------------------------------


def clip_factor(grads: list[Tensor], max_norm: float) -> tuple[float, float]:
    """(scale, norm): clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)), 0 if the
    norm is not finite (the step is then skipped)."""
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    if not math.isfinite(norm):
        return 0.0, norm
    return min(1.0, max_norm / (norm + CLIP_EPS)), norm


@torch.no_grad()
def adamw_update(p: Tensor, m: Tensor, v: Tensor, g: Tensor, scale: float, lr: float, t: float,
                 cfg: dict) -> tuple[Tensor, Tensor, Tensor]:
    """torch.optim.AdamW's update of one tensor (out of place); scale 0 skips it."""
    if scale == 0.0 or not math.isfinite(scale):
        return p.clone(), m.clone(), v.clone()
    dt = p.dtype
    b1, b2, eps, wd = cfg["beta1"], cfg["beta2"], cfg["eps"], cfg["weight_decay"]

    def sc(x: float) -> Tensor:
        return torch.tensor(x, dtype=dt)

    gh = g * sc(scale)
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    p1 = p * sc(1.0 - lr * wd)
    m1 = sc(b1) * m + sc(1.0 - b1) * gh
    v1 = sc(b2) * v + sc(1.0 - b2) * gh * gh
    p1 = p1 - sc(lr / bc1) * m1 / (v1.sqrt() / sc(math.sqrt(bc2)) + sc(eps))
    return p1, m1, v1


def train_step(step: Step, model: TwinModel | None = None) -> dict:
    """Replays `step`: every loss term, every gradient (autograd), the clip and AdamW."""
    if model is None:
        model = TwinModel(step.config, Capacity.of_step(step), step.dtype)
    model.load_gshn(step.params)
    model.zero_grad(set_to_none=True)
    out = model(step.inputs)
    out["loss"].backward()
    grads = {}
    for n, p in model.gshn_parameters():
        grads[n] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    order = step.param_names if set(step.param_names) == set(grads) else model.names
    max_norm = float(step.adamw.get("clip_norm", step.config["train"]["clip_norm"]))
    scale, norm = clip_factor([grads[n] for n in order], max_norm)
    hyper = step.inputs["adamw.hyper"]  # (lr, t) in the step's float type, as gshn feeds it
    lr, t = float(hyper[0]), float(hyper[1])
    cfg = {k: float(step.adamw[k]) for k in ("beta1", "beta2", "eps", "weight_decay")}
    after, after_m, after_v = {}, {}, {}
    for n, p in model.gshn_parameters():
        after[n], after_m[n], after_v[n] = adamw_update(
            p.detach(), step.adam_m[n], step.adam_v[n], grads[n], scale, lr, t, cfg)
    losses = {k: out[k].detach() for k in ("loss", "itc", "stl", "node_cl", "neg", "rel")
              if k in out}
    return {
        "losses": losses,
        "grad_norm": norm,
        "clip_scale": scale,
        "z_img": out["z_img"].detach(),
        "z_txt": out["z_txt"].detach(),
        "spike_rates": [r.detach() for r in out["spike_rates"]],
        "grads": grads,
        "after": after,
        "after_m": after_m,
        "after_v": after_v,
        "param_order": model.names,
    }


def optimizer_only(step: Step) -> dict:
    """gshn's own gradients through the twin's clip + AdamW (isolates the optimizer)."""
    order = step.param_names
    max_norm = float(step.adamw.get("clip_norm", step.config["train"]["clip_norm"]))
    scale, norm = clip_factor([step.grads[n] for n in order], max_norm)
    hyper = step.inputs["adamw.hyper"]
    lr, t = float(hyper[0]), float(hyper[1])
    cfg = {k: float(step.adamw[k]) for k in ("beta1", "beta2", "eps", "weight_decay")}
    res = {"after": {}, "after_m": {}, "after_v": {}, "grad_norm": norm}
    for n in order:
        p, m, v = adamw_update(step.params[n], step.adam_m[n], step.adam_v[n], step.grads[n],
                               scale, lr, t, cfg)
        res["after"][n], res["after_m"][n], res["after_v"][n] = p, m, v
    return res
