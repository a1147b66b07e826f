//! The fused ops as users call them.
//!
//! - Eagerly from Rust: one function per op form ([`lif_forward`], [`gat_forward`],
//!   [`infonce_backward`], …) on borrowed views, returning [`Array`]s; all of them, and the C
//!   ABI ([`crate::capi`]), run through [`run`].
//! - By name: one table ([`OPS`]) of names, tensors (name, layout, dtype), attributes and
//!   gradient defaults, shared by `gshn op` ([`crate::opcli`]) and the C ABI, whose functions
//!   `<c_abi>_{forward,backward}_{cpu,cuda}` take tensors of the same names (`capi/tests/c_abi.rs`
//!   checks `include/gshn.h` against this table). Names follow the ops (`Op::name`); older
//!   spellings stay accepted as aliases.

// User input reaches this module directly: every failure is an `Err`, so nothing here
// indexes, unwraps or panics (checked by clippy).
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo
)]

mod eager;

pub use eager::*;

use crate::error::{Error, Result};

/// Which dtype an input tensor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// f32 or f64 (the same for every float tensor of a call).
    Float,
    /// i32 indices.
    Index,
}

/// One input tensor of an op.
#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    /// Tensor name (in the safetensors file of `gshn op`, and the C ABI argument name).
    pub name: &'static str,
    /// Shape in symbolic dimensions, e.g. `"[T,N]"` (`"[]"` = scalar).
    pub layout: &'static str,
    /// Float or index dtype.
    pub kind: Kind,
    /// Required, or optional (with what its absence means / what it replaces).
    pub optional: Option<&'static str>,
    /// `grad_<name>` is written.
    pub grad: bool,
}

/// The default upstream gradient of an output (when `grad_<name>` is not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradDefault {
    /// Ones: the output is part of the loss `L` (a sum of the main outputs).
    Ones,
    /// Zeros: the output is not part of the loss.
    Zeros,
    /// Not differentiable (a saved statistic); `grad_<name>` is refused.
    None,
}

/// One output tensor of an op.
#[derive(Clone, Copy, Debug)]
pub struct OutputSpec {
    /// Tensor name (`grad_<name>` is its upstream gradient).
    pub name: &'static str,
    /// Shape in symbolic dimensions, e.g. `"[N,H,F]"` (`"[]"` = scalar).
    pub layout: &'static str,
    /// The upstream gradient used when `grad_<name>` is not given.
    pub grad: GradDefault,
}

/// One attribute (non-tensor parameter) of an op, given as JSON to `gshn op --attrs`.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    /// Attribute name (a key of the `--attrs` JSON object).
    pub name: &'static str,
    /// Default, as JSON text.
    pub default: &'static str,
    /// One-line description (meaning, valid range).
    pub doc: &'static str,
}

/// The description of one fused op.
#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    /// The op's name: `gshn op NAME`, and `Op::name()` of the op it runs.
    pub name: &'static str,
    /// Older spellings, still accepted by [`spec`].
    pub aliases: &'static [&'static str],
    /// The C ABI entry points (`include/gshn.h`): `<c_abi>_{forward,backward}_{cpu,cuda}`, whose
    /// tensor arguments carry the names below (`grad_<name>` for gradients); None = none.
    pub c_abi: Option<&'static str>,
    /// One-line description (with its DESIGN section), shown by `gshn op --list`.
    pub summary: &'static str,
    /// Input tensors (index inputs of the graph included).
    pub inputs: &'static [InputSpec],
    /// Attributes with their defaults.
    pub attrs: &'static [AttrSpec],
    /// Output tensors.
    pub outputs: &'static [OutputSpec],
    /// Further semantics (conventions, edge cases), shown as `note:` by `gshn op --list`.
    pub notes: &'static str,
}

const fn req(name: &'static str, layout: &'static str, kind: Kind, grad: bool) -> InputSpec {
    InputSpec {
        name,
        layout,
        kind,
        optional: None,
        grad,
    }
}
const fn opt(
    name: &'static str,
    layout: &'static str,
    kind: Kind,
    grad: bool,
    why: &'static str,
) -> InputSpec {
    InputSpec {
        name,
        layout,
        kind,
        optional: Some(why),
        grad,
    }
}
const fn out(name: &'static str, layout: &'static str, grad: GradDefault) -> OutputSpec {
    OutputSpec { name, layout, grad }
}
const fn attr(name: &'static str, default: &'static str, doc: &'static str) -> AttrSpec {
    AttrSpec { name, default, doc }
}

const GRAPH_INPUTS: [InputSpec; 3] = [
    opt(
        "row_ptr",
        "[N+1]",
        Kind::Index,
        false,
        "CSR by destination, with src; or give edge_index",
    ),
    opt(
        "src",
        "[E]",
        Kind::Index,
        false,
        "source node of each CSR edge",
    ),
    opt(
        "edge_index",
        "[2,E]",
        Kind::Index,
        false,
        "PyG layout (row 0 source, row 1 destination), instead of row_ptr/src",
    ),
];

const INFONCE_INPUTS: [InputSpec; 3] = [
    req("a", "[B,D]", Kind::Float, true),
    req("p", "[B,D]", Kind::Float, true),
    req("logit_scale", "[]", Kind::Float, true),
];

const INFONCE_1D_INPUTS: [InputSpec; 3] = [
    req("a", "[B,D]", Kind::Float, true),
    req("p", "[P,D]", Kind::Float, true),
    req("logit_scale", "[]", Kind::Float, true),
];

const INFONCE_CHUNK: AttrSpec = attr(
    "chunk",
    "256",
    "tile edge of the chunked kernels; 0 = dense reference",
);
const INFONCE_PRECISION: AttrSpec = attr(
    "precision",
    "\"f32\"",
    "operands of the products: \"f32\" exact, \"tf32\" or \"bf16\" (tensor-core rounding, \
     f32 accumulation and LSE)",
);
const INFONCE_ATTRS: [AttrSpec; 2] = [INFONCE_CHUNK, INFONCE_PRECISION];
const INFONCE_1D_ATTRS: [AttrSpec; 3] = [
    INFONCE_CHUNK,
    INFONCE_PRECISION,
    attr(
        "offset",
        "0",
        "gathered negatives: row i of a is positive with row offset + i of p (P >= offset + B)",
    ),
];

/// Every fused op of `gshn op` and the C ABI.
pub static OPS: &[OpSpec] = &[
    OpSpec {
        name: "lif",
        aliases: &[],
        c_abi: Some("gshn_lif"),
        summary: "multi-step LIF neurons (SpikingJelly LIFNode, step_mode='m'), DESIGN §3.1",
        inputs: &[
            req("x", "[T,N]", Kind::Float, true),
            opt(
                "tau",
                "[]",
                Kind::Float,
                true,
                "learnable time constant (PLIF): replaces the tau attr and gets grad_tau",
            ),
        ],
        attrs: &[
            attr("tau", "2.0", "membrane time constant (> 1)"),
            attr("v_th", "1.0", "threshold"),
            attr(
                "v_reset",
                "0.0",
                "hard reset value; null = soft reset (subtract v_th)",
            ),
            attr("decay_input", "true", "H = V + (X - (V - v_r)) / tau"),
            attr("detach_reset", "false", "no surrogate gradient through the reset"),
            attr(
                "surrogate",
                "\"atan\"",
                "atan | sigmoid | super_spike | rectangular",
            ),
            attr(
                "alpha",
                "null",
                "surrogate parameter; null = default (atan 2, sigmoid 4, super_spike 10, rectangular 1)",
            ),
            attr(
                "u8_spikes",
                "false",
                "write the spikes as u8 (0/1, one byte each); grad_spikes keeps x's dtype",
            ),
        ],
        outputs: &[
            out("spikes", "[T,N]", GradDefault::Ones),
            out("v", "[T,N]", GradDefault::Ones),
            out("h", "[T,N]", GradDefault::None),
        ],
        notes: "v = membrane after reset (SpikingJelly v_seq); h = membrane before firing.",
    },
    OpSpec {
        name: "gat",
        aliases: &[],
        c_abi: Some("gshn_gat"),
        summary: "multi-head GAT edge-softmax attention (PyG GATConv, before concat/bias), DESIGN §3.2",
        inputs: &[
            req("z", "[N,H,F]", Kind::Float, true),
            req("a_src", "[H,F]", Kind::Float, true),
            req("a_dst", "[H,F]", Kind::Float, true),
            opt(
                "edge_bias",
                "[E,H]",
                Kind::Float,
                true,
                "per-edge, per-head logit bias (PyG edge_dim term)",
            ),
            GRAPH_INPUTS[0],
            GRAPH_INPUTS[1],
            GRAPH_INPUTS[2],
        ],
        attrs: &[attr(
            "negative_slope",
            "0.2",
            "LeakyReLU slope of the logits",
        )],
        outputs: &[
            out("out", "[N,H,F]", GradDefault::Ones),
            out("alpha", "[E,H]", GradDefault::Zeros),
            out("lse", "[N,H]", GradDefault::None),
        ],
        notes: "z = x W viewed [N,H,F]; self-loops are not added (give them as edges). \
                A node with no in-edge gets out = 0.",
    },
    OpSpec {
        name: "aggregate",
        aliases: &["gat_aggregate"],
        c_abi: Some("gshn_aggregate"),
        summary: "fixed-attention aggregation y[t,i,c] = sum_{k into i} alpha[k,c/(C/H)] s[t,src_k,c], DESIGN §3.3",
        inputs: &[
            req("alpha", "[E,H]", Kind::Float, true),
            req("s", "[T,N,C]", Kind::Float, true),
            GRAPH_INPUTS[0],
            GRAPH_INPUTS[1],
            GRAPH_INPUTS[2],
        ],
        attrs: &[],
        outputs: &[out("y", "[T,N,C]", GradDefault::Ones)],
        notes: "C must be a multiple of H; channel c belongs to head c / (C/H).",
    },
    OpSpec {
        name: "infonce",
        aliases: &[],
        c_abi: Some("gshn_infonce"),
        summary: "symmetric InfoNCE (open_clip ClipLoss), DESIGN §3.4",
        inputs: &INFONCE_INPUTS,
        attrs: &INFONCE_ATTRS,
        outputs: &[
            out("loss", "[]", GradDefault::Ones),
            out("lse_row", "[B]", GradDefault::Zeros),
            out("lse_col", "[B]", GradDefault::Zeros),
        ],
        notes: "s = min(exp(logit_scale), 100); logits = s a p^T; rows of a and p are the \
                positive pairs (pass L2-normalised features, as ClipLoss expects).",
    },
    OpSpec {
        name: "infonce_1d",
        aliases: &[],
        c_abi: Some("gshn_infonce_1d"),
        summary: "one-directional InfoNCE a -> p (STL; gathered negatives), DESIGN §3.4",
        inputs: &INFONCE_1D_INPUTS,
        attrs: &INFONCE_1D_ATTRS,
        outputs: &[
            out("loss", "[]", GradDefault::Ones),
            out("lse_row", "[B]", GradDefault::Zeros),
        ],
        notes: "loss = mean_i [LSE_j logits_ij - logits_i,offset+i] (cross-entropy of the rows \
                only). With P > B, p holds every rank's candidates and a this rank's rows \
                (open_clip local_loss + gather_with_grad).",
    },
    OpSpec {
        name: "segment_mean",
        aliases: &["segment_pool"],
        c_abi: None,
        summary: "segment (masked) mean pooling, DESIGN §3.5",
        inputs: &[
            req("x", "[P,C]", Kind::Float, true),
            req("seg", "[P]", Kind::Index, false),
        ],
        attrs: &[attr(
            "segments",
            "null",
            "number of segments S; null = max(seg) + 1",
        )],
        outputs: &[
            out("mean", "[S,C]", GradDefault::Ones),
            out("count", "[S]", GradDefault::None),
        ],
        notes: "seg = -1 leaves a row out (void pixel / padding); an empty segment has mean 0.",
    },
];

/// The description of op `name` (or of an older spelling of it).
pub fn spec(name: &str) -> Result<&'static OpSpec> {
    OPS.iter()
        .find(|s| s.name == name || s.aliases.contains(&name))
        .ok_or_else(|| {
            let names: Vec<&str> = OPS.iter().map(|s| s.name).collect();
            Error::invalid(
                "op",
                format!("unknown op {name:?}; ops: {}", names.join(", ")),
            )
        })
}

/// The human-readable table printed by `gshn op --list`.
pub fn list() -> String {
    let mut s = String::new();
    s.push_str(
        "gshn op NAME --inputs IN.safetensors --out OUT.safetensors [--attrs JSON] [--device D]\n\
         Float tensors: all f32, f64, bf16 or f16 (outputs follow); index tensors: i32.\n\
         bf16/f16 compute in f32 and keep the statistics in f32: lif h,\n\
         gat lse, infonce loss/lse_row/lse_col, segment_mean count (their grad_ tensors too).\n\
         Upstream gradients: a tensor grad_<output> in IN seeds that output's gradient;\n\
         otherwise the default below (ones: L = sum of the main outputs; zeros: not in L).\n\
         OUT holds every output and grad_<input> for each differentiable input given.\n",
    );
    for op in OPS {
        s.push_str(&format!("\n{}: {}\n", op.name, op.summary));
        if !op.aliases.is_empty() {
            s.push_str(&format!("  also accepted as: {}\n", op.aliases.join(", ")));
        }
        if let Some(c) = op.c_abi {
            s.push_str(&format!("  C ABI: {c}_{{forward,backward}}_{{cpu,cuda}}\n"));
        }
        s.push_str("  inputs:\n");
        for i in op.inputs {
            let kind = match i.kind {
                Kind::Float => "float",
                Kind::Index => "i32",
            };
            let mut line = format!("    {:<12}{:<9}{kind}", i.name, i.layout);
            if i.grad {
                line.push_str(", grad");
            }
            if let Some(why) = i.optional {
                line.push_str(&format!(", optional: {why}"));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        if !op.attrs.is_empty() {
            s.push_str("  attrs:\n");
            for a in op.attrs {
                s.push_str(&format!("    {:<16}= {:<9}{}\n", a.name, a.default, a.doc));
            }
        }
        s.push_str("  outputs:\n");
        for o in op.outputs {
            let g = match o.grad {
                GradDefault::Ones => "grad default: ones",
                GradDefault::Zeros => "grad default: zeros",
                GradDefault::None => "no gradient",
            };
            s.push_str(&format!("    {:<12}{:<9}{g}\n", o.name, o.layout));
        }
        s.push_str(&format!("  note: {}\n", op.notes));
    }
    s
}
