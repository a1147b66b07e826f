//! The fused ops called eagerly: one function per op form, on tensors a backend holds, with no
//! graph and no executor.
//!
//! Inputs are borrowed [`View`]s (a [`Tensor`] on the CPU with [`Tensor::view`], an [`Array`]
//! on any backend with [`Array::view`], or a view built over your own backend buffer); outputs
//! are fresh [`Array`]s. Nothing is copied but the outputs written. Every check is the op's
//! own: its shape rule ([`Op::infer`]) and the backend's value checks (CSR structure, segment
//! ids, …), the same that guard a graph run; results equal an [`Executor`](crate::Executor)'s
//! bit for bit.
//!
//! ```
//! use gshn::fused::lif_forward;
//! use gshn::ops::LifConfig;
//! use gshn::{CpuBackend, Tensor};
//!
//! let x = Tensor::new([3, 2], vec![1.5f32, 0.5, 1.5, 0.5, 1.5, 2.5])?; // [T, N]
//! let out = lif_forward(&CpuBackend, x.view(), None, &LifConfig::default())?;
//! let spikes = out.spikes.into_tensor()?;
//! assert_eq!(spikes.data::<f32>()?, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
//! # Ok::<(), gshn::Error>(())
//! ```

// The no-panic lint set of `fused` (its mod.rs) covers this module too.

use crate::backend::{execute_buffers, Backend, CpuBackend, View};
use crate::error::{Error, Result};
use crate::ops::gat::{AggregateArgs, GatArgs, GraphArgs};
use crate::ops::infonce::InfoNceBackwardArgs;
use crate::ops::lif::LifBackwardArgs;
use crate::ops::{CsrGraph, GatAttrs, InfoNceAttrs, LifConfig, Op};
use crate::tensor::{DType, Meta, Shape, Storage, Tensor};

/// A tensor in a backend's memory: what an eager op returns, and what the next one reads.
pub struct Array<B: Backend> {
    buf: B::Buffer,
    meta: Meta,
}

impl<B: Backend> Array<B> {
    /// Copies a host tensor into `backend`'s memory (on the CPU, a clone).
    pub fn upload(backend: &B, t: &Tensor) -> Result<Self> {
        let mut buf = backend.alloc(t.dtype(), t.numel())?;
        backend.write(&mut buf, t)?;
        Ok(Array {
            buf,
            meta: Meta::new(t.shape().clone(), t.dtype()),
        })
    }

    /// A buffer of `backend`'s seen as a tensor of `meta`; an error if it holds too little or
    /// another dtype.
    pub fn from_buffer(backend: &B, buf: B::Buffer, meta: Meta) -> Result<Self> {
        let numel = element_count("array", &meta)?;
        let (dtype, len) = backend.held(&buf);
        if dtype != meta.dtype || len < numel {
            return Err(Error::shape(
                "array",
                format!(
                    "a {:?} {:?} tensor does not fit a buffer of {len} {dtype:?}",
                    meta.dtype, meta.shape
                ),
            ));
        }
        Ok(Array { buf, meta })
    }

    /// The borrowed view eager ops take.
    pub fn view(&self) -> View<'_, B::Buffer> {
        View {
            buf: &self.buf,
            shape: &self.meta.shape,
            dtype: self.meta.dtype,
        }
    }

    /// Shape and dtype.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.meta.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.meta.dtype
    }

    /// The backend buffer (it may be longer than the tensor).
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// The backend buffer, given up.
    pub fn into_buffer(self) -> B::Buffer {
        self.buf
    }

    /// Copies the elements to a host tensor.
    pub fn to_tensor(&self, backend: &B) -> Result<Tensor> {
        backend.read(&self.buf, &self.meta.shape, self.meta.dtype)
    }
}

impl Array<CpuBackend> {
    /// The host tensor, without a copy (a CPU array is host memory).
    pub fn into_tensor(self) -> Result<Tensor> {
        let Array { mut buf, meta } = self;
        let n = meta.shape.numel();
        if buf.len() > n {
            buf.truncate(n);
        }
        Tensor::from_storage(meta.shape, buf)
    }
}

impl From<Tensor> for Array<CpuBackend> {
    /// A host tensor as a CPU array, without a copy.
    fn from(t: Tensor) -> Self {
        let meta = Meta::new(t.shape().clone(), t.dtype());
        Array {
            buf: t.into_storage(),
            meta,
        }
    }
}

impl<B: Backend> std::fmt::Debug for Array<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({:?} {:?})", self.meta.dtype, self.meta.shape)
    }
}

/// The element count of `meta`, or an error when it overflows (sizes may come from outside).
fn element_count(op: &'static str, meta: &Meta) -> Result<usize> {
    meta.checked_bytes()
        .map(|_| meta.shape.numel())
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("a {:?} tensor is larger than any memory", meta.shape),
            )
        })
}

/// Runs one op on `inputs` and returns its outputs in fresh buffers: the one path of every
/// eager op and of the C ABI. The op's shape rule sizes the outputs; [`Backend::execute`] checks
/// the views and the backend checks the values before any kernel runs. Ops that update their
/// inputs in place (AdamW) are refused: they belong to an executor's persistent state.
pub fn run<B: Backend>(backend: &B, op: &Op, inputs: &[View<B::Buffer>]) -> Result<Vec<Array<B>>> {
    let name = op.name();
    if op.mutated_inputs() > 0 {
        return Err(Error::invalid(
            name,
            "updates its inputs in place; run it in a graph (Executor) instead",
        ));
    }
    let metas = inputs
        .iter()
        .map(|v| {
            let m = Meta::new(v.shape.clone(), v.dtype);
            element_count(name, &m).map(|_| m)
        })
        .collect::<Result<Vec<Meta>>>()?;
    let out_metas = op.infer(&metas)?;
    let mut bufs = out_metas
        .iter()
        .map(|m| backend.alloc(m.dtype, element_count(name, m)?))
        .collect::<Result<Vec<B::Buffer>>>()?;
    let bound = inputs.iter().map(|v| v.buf).zip(&metas);
    execute_buffers(backend, op, bound, &mut bufs, &out_metas)?;
    Ok(bufs
        .into_iter()
        .zip(out_metas)
        .map(|(buf, meta)| Array { buf, meta })
        .collect())
}

/// Takes the next output of an op (their count is fixed by its shape rule).
fn next<B: Backend>(it: &mut std::vec::IntoIter<Array<B>>, op: &Op) -> Result<Array<B>> {
    it.next()
        .ok_or_else(|| Error::graph(format!("{}: fewer outputs than expected", op.name())))
}

// ---- LIF -----------------------------------------------------------------------------------

/// What [`lif_forward`] returns, each `[T, N]`.
#[derive(Debug)]
pub struct LifForward<B: Backend> {
    /// Spikes S (0/1).
    pub spikes: Array<B>,
    /// Membrane V after reset (SpikingJelly's `v_seq`).
    pub membrane: Array<B>,
    /// Charge H, the membrane before firing: what [`lif_backward`] needs.
    pub charge: Array<B>,
}

/// LIF neurons over T steps (DESIGN §3.1): `x[T, N]` → spikes, membrane, charge. With `tau`
/// (a `[]` tensor) the time constant is that input (PLIF) and `cfg.tau` is ignored.
pub fn lif_forward<B: Backend>(
    backend: &B,
    x: View<B::Buffer>,
    tau: Option<View<B::Buffer>>,
    cfg: &LifConfig,
) -> Result<LifForward<B>> {
    let op = Op::Lif(LifConfig {
        learnable_tau: tau.is_some(),
        ..*cfg
    });
    let inputs: Vec<View<B::Buffer>> = std::iter::once(x).chain(tau).collect();
    let mut o = run(backend, &op, &inputs)?.into_iter();
    Ok(LifForward {
        spikes: next(&mut o, &op)?,
        membrane: next(&mut o, &op)?,
        charge: next(&mut o, &op)?,
    })
}

/// What [`lif_backward`] returns.
#[derive(Debug)]
pub struct LifGrads<B: Backend> {
    /// Gradient of x, `[T, N]`.
    pub x: Array<B>,
    /// Gradient of tau, `[]`, when tau was an input.
    pub tau: Option<Array<B>>,
}

/// The LIF backward from the saved charge: upstream gradients of the spikes and of the
/// membrane (an absent one counts as zeros; give at least one), and tau when it was an input
/// of the forward.
pub fn lif_backward<B: Backend>(
    backend: &B,
    charge: View<B::Buffer>,
    grad_spikes: Option<View<B::Buffer>>,
    grad_membrane: Option<View<B::Buffer>>,
    tau: Option<View<B::Buffer>>,
    cfg: &LifConfig,
) -> Result<LifGrads<B>> {
    let op = Op::LifBackward {
        cfg: LifConfig {
            learnable_tau: tau.is_some(),
            ..*cfg
        },
        has_gs: grad_spikes.is_some(),
        has_gv: grad_membrane.is_some(),
    };
    let args = LifBackwardArgs {
        charge: &charge,
        grad_spikes: grad_spikes.as_ref(),
        grad_membrane: grad_membrane.as_ref(),
        tau: tau.as_ref(),
    };
    let mut o = run(backend, &op, &copied(args.list()))?.into_iter();
    Ok(LifGrads {
        x: next(&mut o, &op)?,
        tau: o.next(),
    })
}

/// The views of an op form's `list()`, by value.
fn copied<'a, T>(v: Vec<&View<'a, T>>) -> Vec<View<'a, T>> {
    v.into_iter().copied().collect()
}

// ---- GAT and aggregation ---------------------------------------------------------------------

/// The four index tensors of a graph (see [`CsrGraph`]), as views.
#[derive(Debug)]
pub struct GraphView<'a, Buf> {
    /// `[N + 1]` CSR row pointers by destination.
    pub row_ptr: View<'a, Buf>,
    /// `[E]` source node of each CSR edge.
    pub src: View<'a, Buf>,
    /// `[N + 1]` CSC column pointers by source.
    pub col_ptr: View<'a, Buf>,
    /// `[E]` CSR edge index of each CSC entry.
    pub col_edge: View<'a, Buf>,
}

impl<Buf> Clone for GraphView<'_, Buf> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Buf> Copy for GraphView<'_, Buf> {}

impl CsrGraph {
    /// The graph's index tensors as CPU views (no copy).
    pub fn view(&self) -> GraphView<'_, Storage> {
        GraphView {
            row_ptr: self.row_ptr.view(),
            src: self.src.view(),
            col_ptr: self.col_ptr.view(),
            col_edge: self.col_edge.view(),
        }
    }
}

/// A graph's index tensors held by a backend (upload once, run many ops).
#[derive(Debug)]
pub struct GraphArrays<B: Backend> {
    row_ptr: Array<B>,
    src: Array<B>,
    col_ptr: Array<B>,
    col_edge: Array<B>,
}

impl<B: Backend> GraphArrays<B> {
    /// Copies a graph's index tensors into `backend`'s memory.
    pub fn upload(backend: &B, g: &CsrGraph) -> Result<Self> {
        Ok(GraphArrays {
            row_ptr: Array::upload(backend, &g.row_ptr)?,
            src: Array::upload(backend, &g.src)?,
            col_ptr: Array::upload(backend, &g.col_ptr)?,
            col_edge: Array::upload(backend, &g.col_edge)?,
        })
    }

    /// The views eager GAT-family ops take.
    pub fn view(&self) -> GraphView<'_, B::Buffer> {
        GraphView {
            row_ptr: self.row_ptr.view(),
            src: self.src.view(),
            col_ptr: self.col_ptr.view(),
            col_edge: self.col_edge.view(),
        }
    }
}

impl<'a, Buf> GraphView<'a, Buf> {
    fn args<'b>(&'b self) -> GraphArgs<'b, View<'a, Buf>> {
        GraphArgs {
            row_ptr: &self.row_ptr,
            src: &self.src,
            col_ptr: &self.col_ptr,
            col_edge: &self.col_edge,
        }
    }
}

/// The learned inputs of a GAT layer: `z[N, H, F]` (= x W), `a_src[H, F]`, `a_dst[H, F]`, and
/// an optional per-edge, per-head logit bias `edge_bias[E, H]`.
#[derive(Debug)]
pub struct GatParams<'a, Buf> {
    /// Projected node features `[N, H, F]`.
    pub z: View<'a, Buf>,
    /// Source attention vector `[H, F]`.
    pub a_src: View<'a, Buf>,
    /// Destination attention vector `[H, F]`.
    pub a_dst: View<'a, Buf>,
    /// Per-edge logit bias `[E, H]` (PyG's `edge_dim` term), if any.
    pub edge_bias: Option<View<'a, Buf>>,
}

impl<Buf> Clone for GatParams<'_, Buf> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Buf> Copy for GatParams<'_, Buf> {}

impl<'a, Buf> GatParams<'a, Buf> {
    fn attrs(&self, negative_slope: f64) -> GatAttrs {
        GatAttrs {
            negative_slope,
            edge_bias: self.edge_bias.is_some(),
        }
    }
    /// The op-form inputs with nothing saved or upstream; callers fill those in.
    fn args<'b>(&'b self, graph: &'b GraphView<'a, Buf>) -> GatArgs<'b, View<'a, Buf>> {
        GatArgs {
            grad: None,
            alpha: None,
            z: &self.z,
            a_src: &self.a_src,
            a_dst: &self.a_dst,
            edge_bias: self.edge_bias.as_ref(),
            out: None,
            lse: None,
            graph: graph.args(),
        }
    }
}

/// What [`gat_forward`] returns.
#[derive(Debug)]
pub struct GatForward<B: Backend> {
    /// `out[i] = Σ_{k into i} alpha_k z[src_k]`, `[N, H, F]` (0 for a node with no in-edge).
    pub out: Array<B>,
    /// The softmax normaliser per node and head, `[N, H]`: what the backward and
    /// [`gat_alpha`] need.
    pub lse: Array<B>,
}

/// Multi-head GAT edge-softmax attention and aggregation (DESIGN §3.2; PyG `GATConv` before
/// concat and bias). Self-loops are not added: give them as edges.
pub fn gat_forward<B: Backend>(
    backend: &B,
    params: GatParams<B::Buffer>,
    graph: GraphView<B::Buffer>,
    negative_slope: f64,
) -> Result<GatForward<B>> {
    let op = Op::Gat(params.attrs(negative_slope));
    let mut o = run(backend, &op, &copied(params.args(&graph).list()))?.into_iter();
    Ok(GatForward {
        out: next(&mut o, &op)?,
        lse: next(&mut o, &op)?,
    })
}

/// The attention weights `alpha[E, H]` the forward used, from its `lse`.
pub fn gat_alpha<B: Backend>(
    backend: &B,
    params: GatParams<B::Buffer>,
    lse: View<B::Buffer>,
    graph: GraphView<B::Buffer>,
    negative_slope: f64,
) -> Result<Array<B>> {
    let op = Op::GatAlpha(params.attrs(negative_slope));
    let args = GatArgs {
        lse: Some(&lse),
        ..params.args(&graph)
    };
    let mut o = run(backend, &op, &copied(args.list()))?.into_iter();
    next(&mut o, &op)
}

/// Gradients of a GAT layer's learned inputs.
#[derive(Debug)]
pub struct GatGrads<B: Backend> {
    /// `[N, H, F]`.
    pub z: Array<B>,
    /// `[H, F]`.
    pub a_src: Array<B>,
    /// `[H, F]`.
    pub a_dst: Array<B>,
    /// `[E, H]`, when the edge bias was an input.
    pub edge_bias: Option<Array<B>>,
}

fn gat_grads<B: Backend>(op: &Op, outs: Vec<Array<B>>) -> Result<GatGrads<B>> {
    let mut o = outs.into_iter();
    Ok(GatGrads {
        z: next(&mut o, op)?,
        a_src: next(&mut o, op)?,
        a_dst: next(&mut o, op)?,
        edge_bias: o.next(),
    })
}

/// The GAT backward from the gradient of `out`, with the forward's `out` and `lse`.
pub fn gat_backward<B: Backend>(
    backend: &B,
    params: GatParams<B::Buffer>,
    out: View<B::Buffer>,
    lse: View<B::Buffer>,
    grad_out: View<B::Buffer>,
    graph: GraphView<B::Buffer>,
    negative_slope: f64,
) -> Result<GatGrads<B>> {
    let op = Op::GatBackward(params.attrs(negative_slope));
    let args = GatArgs {
        grad: Some(&grad_out),
        out: Some(&out),
        lse: Some(&lse),
        ..params.args(&graph)
    };
    gat_grads(&op, run(backend, &op, &copied(args.list()))?)
}

/// The backward of [`gat_alpha`]: gradients of the learned inputs from a gradient of the
/// attention weights (for a loss that reads alpha).
pub fn gat_alpha_backward<B: Backend>(
    backend: &B,
    params: GatParams<B::Buffer>,
    alpha: View<B::Buffer>,
    grad_alpha: View<B::Buffer>,
    graph: GraphView<B::Buffer>,
    negative_slope: f64,
) -> Result<GatGrads<B>> {
    let op = Op::GatAlphaBackward(params.attrs(negative_slope));
    let args = GatArgs {
        grad: Some(&grad_alpha),
        alpha: Some(&alpha),
        ..params.args(&graph)
    };
    gat_grads(&op, run(backend, &op, &copied(args.list()))?)
}

/// Fixed-attention aggregation over time (DESIGN §3.3): `alpha[E, H]`, `s[T, N, C]` →
/// `y[t, i, c] = Σ_{k into i} alpha[k, c / (C/H)] s[t, src_k, c]`.
pub fn aggregate_forward<B: Backend>(
    backend: &B,
    alpha: View<B::Buffer>,
    s: View<B::Buffer>,
    graph: GraphView<B::Buffer>,
) -> Result<Array<B>> {
    let op = Op::Aggregate;
    let args = AggregateArgs {
        grad: None,
        alpha: &alpha,
        s: &s,
        graph: graph.args(),
    };
    let mut o = run(backend, &op, &copied(args.list()))?.into_iter();
    next(&mut o, &op)
}

/// What [`aggregate_backward`] returns.
#[derive(Debug)]
pub struct AggregateGrads<B: Backend> {
    /// `[E, H]`.
    pub alpha: Array<B>,
    /// `[T, N, C]`.
    pub s: Array<B>,
}

/// The aggregation backward from the gradient of `y`.
pub fn aggregate_backward<B: Backend>(
    backend: &B,
    alpha: View<B::Buffer>,
    s: View<B::Buffer>,
    grad_y: View<B::Buffer>,
    graph: GraphView<B::Buffer>,
) -> Result<AggregateGrads<B>> {
    let op = Op::AggregateBackward;
    let args = AggregateArgs {
        grad: Some(&grad_y),
        alpha: &alpha,
        s: &s,
        graph: graph.args(),
    };
    let mut o = run(backend, &op, &copied(args.list()))?.into_iter();
    Ok(AggregateGrads {
        alpha: next(&mut o, &op)?,
        s: next(&mut o, &op)?,
    })
}

// ---- InfoNCE ---------------------------------------------------------------------------------

/// What [`infonce_forward`] returns.
#[derive(Debug)]
pub struct InfoNceForward<B: Backend> {
    /// The loss, `[]`.
    pub loss: Array<B>,
    /// `LSE_j logits_ij`, `[B]`.
    pub lse_row: Array<B>,
    /// `LSE_i logits_ij`, `[B]` when symmetric, `[0]` for the one-directional loss.
    pub lse_col: Array<B>,
}

/// Batched InfoNCE (DESIGN §3.4; open_clip `ClipLoss` when symmetric): `a[B, D]`, `p[B, D]`
/// (rows are the positive pairs), `logit_scale[]` → loss and the log-sum-exp statistics.
pub fn infonce_forward<B: Backend>(
    backend: &B,
    a: View<B::Buffer>,
    p: View<B::Buffer>,
    logit_scale: View<B::Buffer>,
    attrs: InfoNceAttrs,
) -> Result<InfoNceForward<B>> {
    let op = Op::InfoNce(attrs);
    let mut o = run(backend, &op, &[a, p, logit_scale])?.into_iter();
    Ok(InfoNceForward {
        loss: next(&mut o, &op)?,
        lse_row: next(&mut o, &op)?,
        lse_col: next(&mut o, &op)?,
    })
}

/// The saved forward values [`infonce_backward`] reads.
#[derive(Debug)]
pub struct InfoNceSaved<'a, Buf> {
    /// `[B]` from the forward.
    pub lse_row: View<'a, Buf>,
    /// `[B]` (or `[0]`) from the forward.
    pub lse_col: View<'a, Buf>,
}

/// What [`infonce_backward`] returns.
#[derive(Debug)]
pub struct InfoNceGrads<B: Backend> {
    /// `[B, D]`.
    pub a: Array<B>,
    /// `[B, D]`.
    pub p: Array<B>,
    /// `[]` (zero while the scale is clamped at 100).
    pub logit_scale: Array<B>,
}

/// The upstream gradients [`infonce_backward`] takes.
#[derive(Debug)]
pub struct InfoNceUpstream<'a, Buf> {
    /// Of the loss, `[]`.
    pub loss: View<'a, Buf>,
    /// Of `(lse_row, lse_col)`, when something else read the statistics.
    pub lse: Option<(View<'a, Buf>, View<'a, Buf>)>,
}

/// The InfoNCE backward from the upstream gradients, with the forward's statistics.
pub fn infonce_backward<B: Backend>(
    backend: &B,
    a: View<B::Buffer>,
    p: View<B::Buffer>,
    logit_scale: View<B::Buffer>,
    saved: InfoNceSaved<B::Buffer>,
    upstream: InfoNceUpstream<B::Buffer>,
    attrs: InfoNceAttrs,
) -> Result<InfoNceGrads<B>> {
    let op = Op::InfoNceBackward(attrs);
    let args = InfoNceBackwardArgs {
        g_loss: &upstream.loss,
        a: &a,
        p: &p,
        logit_scale: &logit_scale,
        lse_row: &saved.lse_row,
        lse_col: &saved.lse_col,
        g_lse: upstream.lse.as_ref().map(|(r, c)| (r, c)),
    };
    let mut o = run(backend, &op, &copied(args.list()))?.into_iter();
    Ok(InfoNceGrads {
        a: next(&mut o, &op)?,
        p: next(&mut o, &op)?,
        logit_scale: next(&mut o, &op)?,
    })
}

// ---- segment mean ----------------------------------------------------------------------------

/// What [`segment_mean_forward`] returns.
#[derive(Debug)]
pub struct SegmentMean<B: Backend> {
    /// Per-segment mean `[S, C]` (0 for an empty segment).
    pub mean: Array<B>,
    /// Rows in each segment `[S]` (x's dtype): what the backward needs.
    pub count: Array<B>,
}

/// Segment mean pooling (DESIGN §3.5): `x[P, C]`, `seg[P]` (i32 ids in `-1..segments`, −1 =
/// left out) → the mean of each segment's rows.
pub fn segment_mean_forward<B: Backend>(
    backend: &B,
    x: View<B::Buffer>,
    seg: View<B::Buffer>,
    segments: usize,
) -> Result<SegmentMean<B>> {
    let op = Op::SegmentMean { segments };
    let mut o = run(backend, &op, &[x, seg])?.into_iter();
    Ok(SegmentMean {
        mean: next(&mut o, &op)?,
        count: next(&mut o, &op)?,
    })
}

/// The segment mean backward: the gradient of x `[P, C]` from the gradient of the means.
pub fn segment_mean_backward<B: Backend>(
    backend: &B,
    grad_mean: View<B::Buffer>,
    seg: View<B::Buffer>,
    count: View<B::Buffer>,
) -> Result<Array<B>> {
    let op = Op::SegmentMeanBackward;
    let mut o = run(backend, &op, &[grad_mean, seg, count])?.into_iter();
    next(&mut o, &op)
}
