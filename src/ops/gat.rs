//! Multi-head GAT with edge softmax (DESIGN §3.2, PyG `GATConv` semantics), its attention
//! export, and the fixed-attention aggregation used by the SNN branch (§3.3).
//!
//! Graph structure, shared by every op here (all `i32`):
//! - **CSR by destination**: `row_ptr[N+1]`, `src[E]`: edge `k` goes from `src[k]` to the node
//!   `i` with `row_ptr[i] ≤ k < row_ptr[i+1]`;
//! - **CSC transpose** (for the deterministic backward): `col_ptr[N+1]`, `col_edge[E]`: the
//!   ids of the edges leaving node `j` are `col_edge[col_ptr[j]..col_ptr[j+1]]`, ascending.
//!
//! [`CsrGraph`] builds and validates the four arrays on the host; [`GraphInputs`] holds the
//! four graph values an op reads. Every op takes all four (the forward ones only read the
//! CSR, but their gradient rules need the CSC).
//!
//! Math, with `pre[k,h] = el[src_k,h] + er[dst_k,h] (+ be[k,h])`:
//! ```text
//! el[n,h] = Σ_f z[n,h,f] a_src[h,f]      er[n,h] = Σ_f z[n,h,f] a_dst[h,f]
//! e[k,h]  = LeakyReLU(pre[k,h], slope)   α[k,h] = exp(e[k,h] − lse[dst_k,h])
//! lse[i,h] = log Σ_{k into i} exp(e[k,h])  (max-subtracted; 0 for a node with no in-edge)
//! out[i,h,:] = Σ_{k into i} α[k,h] z[src_k,h,:]
//! ```
//! Backward (deterministic: per-node sums in edge order, per-source sums in CSC order,
//! parameter gradients summed over fixed node blocks in block order):
//! `gα_k = ⟨g_out_dst, z_src⟩_h`, `D_i = ⟨g_out_i, out_i⟩_h`, `ge_k = α_k (gα_k − D_dst)`,
//! `gpre_k = ge_k · (pre_k > 0 ? 1 : slope)` = `g_be_k`; `ger_i = Σ_{k into i} gpre_k`,
//! `gel_j = Σ_{k out of j} gpre_k`; `gz_j = Σ_{k out of j} α_k g_out_dst(k) + gel_j a_src +
//! ger_j a_dst`; `g_a_src = Σ_j gel_j z_j`, `g_a_dst = Σ_j ger_j z_j`.
//! `GatAlphaBackward` is the same with `ge_k = α_k (gα_k − Σ_{k' into dst} α_k' gα_k')` and no
//! aggregation term.

use super::check;
use super::Op;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{DType, Meta, Tensor};

/// Attributes of the GAT ops (DESIGN §3.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatAttrs {
    /// LeakyReLU slope of the attention logits (PyG default 0.2).
    pub negative_slope: f64,
    /// An edge bias `be[E, H]` is an input (its position: [`GatArgs`]).
    pub edge_bias: bool,
}

impl GatAttrs {
    /// The slope must be finite (a NaN or infinite one makes every attention weight NaN).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.negative_slope.is_finite() {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                format!("negative_slope must be finite, got {}", self.negative_slope),
            ))
        }
    }
}

impl Default for GatAttrs {
    fn default() -> Self {
        GatAttrs {
            negative_slope: 0.2,
            edge_bias: false,
        }
    }
}

// ---- host-side graph index ---------------------------------------------------------------

/// The four index arrays of a graph with `n` nodes and `E` edges, as `i32` tensors ready to be
/// fed: `row_ptr[n+1]`, `src[E]` (CSR by destination) and `col_ptr[n+1]`, `col_edge[E]` (its
/// CSC transpose: edge ids grouped by source node, ascending inside a group).
#[derive(Clone, Debug, PartialEq)]
pub struct CsrGraph {
    /// `[n+1]`: edges into node `i` are `row_ptr[i]..row_ptr[i+1]`.
    pub row_ptr: Tensor,
    /// `[E]`: source node of each edge, in CSR order.
    pub src: Tensor,
    /// `[n+1]`: edges out of node `j` are listed at `col_ptr[j]..col_ptr[j+1]` of `col_edge`.
    pub col_ptr: Tensor,
    /// `[E]`: edge ids grouped by source node, ascending inside a group.
    pub col_edge: Tensor,
}

impl CsrGraph {
    /// From `(src, dst)` pairs. Edges are grouped by destination; inside a group they keep
    /// their order in `edges`. Self-loops and repeated edges are kept as given.
    pub fn from_edges(n: usize, edges: &[(usize, usize)]) -> Result<CsrGraph> {
        let op = "csr_graph";
        if n >= i32::MAX as usize || edges.len() >= i32::MAX as usize {
            return Err(Error::invalid(
                op,
                "too many nodes or edges for i32 indices",
            ));
        }
        if let Some((k, &(s, d))) = edges
            .iter()
            .enumerate()
            .find(|(_, &(s, d))| s >= n || d >= n)
        {
            return Err(Error::invalid(
                op,
                format!("edge {k} ({s} -> {d}) names a node outside 0..{n}"),
            ));
        }
        // Edges grouped by destination, in their given order inside a group.
        let dst: Vec<i32> = edges.iter().map(|&(_, d)| d as i32).collect();
        let (row_ptr, order) = super::index::group_positions(&dst, n, |d| Some(d as usize));
        let src = order.iter().map(|&k| edges[k as usize].0 as i32).collect();
        Self::from_csr(row_ptr, src)
    }

    /// From a CSR by destination (`row_ptr[n+1]`, `src[E]`); builds the CSC transpose.
    pub fn from_csr(row_ptr: Vec<i32>, src: Vec<i32>) -> Result<CsrGraph> {
        let op = "csr_graph";
        let n = row_ptr
            .len()
            .checked_sub(1)
            .ok_or_else(|| Error::invalid(op, "row_ptr is empty (it needs N + 1 entries)"))?;
        validate_csr(op, n, &row_ptr, &src)?;
        let (col_ptr, col_edge) = transpose(n, &src);
        let e = src.len();
        Ok(CsrGraph {
            row_ptr: Tensor::new([n + 1], row_ptr)?,
            src: Tensor::new([e], src)?,
            col_ptr: Tensor::new([n + 1], col_ptr)?,
            col_edge: Tensor::new([e], col_edge)?,
        })
    }

    /// Number of nodes `n`.
    pub fn nodes(&self) -> usize {
        self.row_ptr.numel().saturating_sub(1)
    }
    /// Number of edges `E`.
    pub fn edges(&self) -> usize {
        self.src.numel()
    }

    /// Checks the four arrays describe one valid graph of `n` nodes: shapes, i32 dtype,
    /// `row_ptr` from 0, non-decreasing, ending at `E`; `src` in `0..n`; `col_ptr` likewise;
    /// `col_edge` listing, for each source node, exactly its edges in ascending order.
    pub fn validate(&self, n: usize) -> Result<()> {
        let op = "csr_graph";
        let idx = |t: &Tensor, what: &str| -> Result<Vec<i32>> {
            if t.shape().rank() != 1 {
                return Err(Error::invalid(
                    op,
                    format!("{what} must be rank 1, got {:?}", t.shape()),
                ));
            }
            t.data::<i32>()
                .map(|d| d.to_vec())
                .map_err(|_| Error::invalid(op, format!("{what} must be i32")))
        };
        let (row_ptr, src) = (idx(&self.row_ptr, "row_ptr")?, idx(&self.src, "src")?);
        let (col_ptr, col_edge) = (
            idx(&self.col_ptr, "col_ptr")?,
            idx(&self.col_edge, "col_edge")?,
        );
        validate_csr(op, n, &row_ptr, &src)?;
        validate_csc(op, n, &src, &col_ptr, &col_edge)
    }

    /// The destination node of every edge (`dst[k]`), from the CSR.
    pub fn dst(&self) -> Vec<usize> {
        let row_ptr = self.row_ptr.data::<i32>().unwrap_or(&[]);
        let mut dst = Vec::with_capacity(self.edges());
        for i in 0..row_ptr.len().saturating_sub(1) {
            for _ in row_ptr[i]..row_ptr[i + 1] {
                dst.push(i);
            }
        }
        dst
    }
}

/// CSC transpose of a valid CSR: edge ids grouped by source, ascending inside a group.
pub fn transpose(n: usize, src: &[i32]) -> (Vec<i32>, Vec<i32>) {
    super::index::group_positions(src, n, |s| Some(s as usize))
}

/// Checks a CSR by destination of `n` nodes: `row_ptr` has `n + 1` entries, starts at 0, never
/// decreases and ends at `E = src.len()`; every `src[k]` is in `0..n`. `op` names the caller
/// in the error.
pub fn validate_csr(op: &'static str, n: usize, row_ptr: &[i32], src: &[i32]) -> Result<()> {
    let e = src.len();
    if row_ptr.len() != n + 1 {
        return Err(Error::invalid(
            op,
            format!(
                "row_ptr has {} entries, expected N + 1 = {}",
                row_ptr.len(),
                n + 1
            ),
        ));
    }
    if row_ptr[0] != 0 {
        return Err(Error::invalid(
            op,
            format!("row_ptr[0] = {}, expected 0", row_ptr[0]),
        ));
    }
    if let Some(i) = (0..n).find(|&i| row_ptr[i + 1] < row_ptr[i]) {
        return Err(Error::invalid(
            op,
            format!(
                "row_ptr decreases at node {i}: {} then {}",
                row_ptr[i],
                row_ptr[i + 1]
            ),
        ));
    }
    if row_ptr[n] as i64 != e as i64 {
        return Err(Error::invalid(
            op,
            format!("row_ptr[N] = {} but there are E = {e} edges", row_ptr[n]),
        ));
    }
    if let Some(k) = src.iter().position(|&s| s < 0 || s as i64 >= n as i64) {
        return Err(Error::invalid(
            op,
            format!("src[{k}] = {} is not a node in 0..{n}", src[k]),
        ));
    }
    Ok(())
}

/// Checks that `col_ptr`, `col_edge` are the CSC transpose of a valid CSR with sources `src`:
/// `col_ptr` has `n + 1` entries from 0 to `E`, never decreasing; group `j` lists edge ids in
/// `0..E`, strictly ascending, each with `src[k] = j`. (With `E` entries in total this makes
/// `col_edge` a permutation.) `src` must already be valid (see [`validate_csr`]).
pub fn validate_csc(
    op: &'static str,
    n: usize,
    src: &[i32],
    col_ptr: &[i32],
    col_edge: &[i32],
) -> Result<()> {
    let e = src.len();
    if col_ptr.len() != n + 1 || col_edge.len() != e {
        return Err(Error::invalid(
            op,
            format!(
                "col_ptr/col_edge have {}/{} entries, expected N + 1 = {} and E = {e}",
                col_ptr.len(),
                col_edge.len(),
                n + 1
            ),
        ));
    }
    if col_ptr[0] != 0 || col_ptr[n] as i64 != e as i64 {
        return Err(Error::invalid(
            op,
            format!(
                "col_ptr must run from 0 to E = {e}, got {} .. {}",
                col_ptr[0], col_ptr[n]
            ),
        ));
    }
    for j in 0..n {
        let (lo, hi) = (col_ptr[j], col_ptr[j + 1]);
        if hi < lo || hi as i64 > e as i64 {
            return Err(Error::invalid(
                op,
                format!("col_ptr decreases or passes E = {e} at node {j}: {lo} then {hi}"),
            ));
        }
        let mut prev = -1i64;
        for (p, &k) in col_edge
            .iter()
            .enumerate()
            .take(hi as usize)
            .skip(lo as usize)
        {
            if k < 0 || k as i64 >= e as i64 {
                return Err(Error::invalid(
                    op,
                    format!("col_edge[{p}] = {k} is not an edge in 0..{e}"),
                ));
            }
            if (k as i64) <= prev {
                return Err(Error::invalid(
                    op,
                    format!(
                        "col_edge is not strictly ascending inside the group of node {j} (at {p})"
                    ),
                ));
            }
            if src[k as usize] as i64 != j as i64 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "col_edge[{p}] = edge {k} leaves node {}, but it is listed under node {j}",
                        src[k as usize]
                    ),
                ));
            }
            prev = k as i64;
        }
    }
    Ok(())
}

/// The four graph index values an op reads (`i32` graph inputs, fed per batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphInputs {
    /// `row_ptr[N+1]` (CSR by destination).
    pub row_ptr: ValueId,
    /// `src[E]` (CSR by destination).
    pub src: ValueId,
    /// `col_ptr[N+1]` (CSC transpose).
    pub col_ptr: ValueId,
    /// `col_edge[E]` (CSC transpose).
    pub col_edge: ValueId,
}

impl GraphInputs {
    /// Creates the four inputs for `nodes` nodes and `edges` edges, named
    /// `{prefix}row_ptr`, `{prefix}src`, `{prefix}col_ptr`, `{prefix}col_edge`.
    pub fn new(g: &mut Graph, prefix: &str, nodes: usize, edges: usize) -> GraphInputs {
        GraphInputs {
            row_ptr: g.input(format!("{prefix}row_ptr"), [nodes + 1], DType::I32),
            src: g.input(format!("{prefix}src"), [edges], DType::I32),
            col_ptr: g.input(format!("{prefix}col_ptr"), [nodes + 1], DType::I32),
            col_edge: g.input(format!("{prefix}col_edge"), [edges], DType::I32),
        }
    }

    /// The four values in op input order: row_ptr, src, col_ptr, col_edge.
    pub fn ids(&self) -> [ValueId; 4] {
        [self.row_ptr, self.src, self.col_ptr, self.col_edge]
    }
}

/// Outputs of [`Graph::gat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatOut {
    /// `[N, H, F]`: per-head aggregation (concatenate or average the heads in the model).
    pub out: ValueId,
    /// `[N, H]`: log-sum-exp of the attention logits per (node, head); feeds `gat_alpha`.
    /// No gradient flows through it (it is the softmax normaliser, saved for the backward).
    pub lse: ValueId,
}

// ---- shape rules -------------------------------------------------------------------------

// ---- typed signatures --------------------------------------------------------------------

/// The four graph index inputs of a GAT-family op, by name.
#[derive(Clone, Copy, Debug)]
pub struct GraphArgs<'a, T> {
    /// `row_ptr[N+1]` (CSR by destination).
    pub row_ptr: &'a T,
    /// `src[E]` (CSR by destination).
    pub src: &'a T,
    /// `col_ptr[N+1]` (CSC transpose).
    pub col_ptr: &'a T,
    /// `col_edge[E]` (CSC transpose).
    pub col_edge: &'a T,
}

impl<'a, T> GraphArgs<'a, T> {
    /// row_ptr, src, col_ptr, col_edge from a list of four.
    pub fn from_slice(v: &'a [T]) -> Option<Self> {
        match v {
            [row_ptr, src, col_ptr, col_edge] => Some(GraphArgs {
                row_ptr,
                src,
                col_ptr,
                col_edge,
            }),
            _ => None,
        }
    }
    fn take(it: &mut impl Iterator<Item = &'a T>) -> Option<Self> {
        Some(GraphArgs {
            row_ptr: it.next()?,
            src: it.next()?,
            col_ptr: it.next()?,
            col_edge: it.next()?,
        })
    }
    fn list(&self) -> [&'a T; 4] {
        [self.row_ptr, self.src, self.col_ptr, self.col_edge]
    }
}

/// The inputs of the four GAT op forms, by name: the one definition of their positional order
/// (`Op::Gat`, `GatAlpha`, `GatBackward`, `GatAlphaBackward`), generic over what an input is —
/// a `Meta` in shape rules, a `ValueId` in gradient rules, a buffer view in the backends.
#[derive(Clone, Copy, Debug)]
pub struct GatArgs<'a, T> {
    /// The upstream gradient of the backward forms: g_out or g_alpha.
    pub grad: Option<&'a T>,
    /// The forward attention `[E,H]` (GatAlphaBackward).
    pub alpha: Option<&'a T>,
    /// Node features `[N,H,F]`.
    pub z: &'a T,
    /// Source attention vector `[H,F]`.
    pub a_src: &'a T,
    /// Destination attention vector `[H,F]`.
    pub a_dst: &'a T,
    /// The edge bias `[E,H]`, when the attributes say `edge_bias`.
    pub edge_bias: Option<&'a T>,
    /// The forward output `[N,H,F]` (GatBackward).
    pub out: Option<&'a T>,
    /// The forward softmax normaliser `[N,H]` (GatAlpha, GatBackward).
    pub lse: Option<&'a T>,
    /// The four graph index inputs.
    pub graph: GraphArgs<'a, T>,
}

impl<'a, T> GatArgs<'a, T> {
    /// Names the inputs of `op`; an error when `op` is no GAT form or the count is off.
    pub fn of(op: &Op, inputs: &'a [T]) -> Result<Self> {
        let name = op.name();
        // (attributes, has grad, has alpha, has out, has lse)
        let (at, grad, alpha, out, lse) = match op {
            Op::Gat(a) => (a, false, false, false, false),
            Op::GatAlpha(a) => (a, false, false, false, true),
            Op::GatBackward(a) => (a, true, false, true, true),
            Op::GatAlphaBackward(a) => (a, true, true, false, false),
            _ => return Err(Error::graph(format!("{name} is not a GAT op"))),
        };
        let want = [grad, alpha, at.edge_bias, out, lse]
            .iter()
            .filter(|&&b| b)
            .count()
            + 7;
        check::arity(name, inputs, want)?;
        let mut it = inputs.iter();
        let mut take = |present: bool| if present { it.next() } else { None };
        let (grad, alpha) = (take(grad), take(alpha));
        let (z, a_src, a_dst) = (take(true), take(true), take(true));
        let (edge_bias, out, lse) = (take(at.edge_bias), take(out), take(lse));
        let missing = || Error::graph(format!("{name}: inputs out of order"));
        Ok(GatArgs {
            grad,
            alpha,
            z: z.ok_or_else(missing)?,
            a_src: a_src.ok_or_else(missing)?,
            a_dst: a_dst.ok_or_else(missing)?,
            edge_bias,
            out,
            lse,
            graph: GraphArgs::take(&mut it).ok_or_else(missing)?,
        })
    }

    /// The inputs in their positional order (the inverse of [`GatArgs::of`]).
    pub fn list(&self) -> Vec<&'a T> {
        let head = [self.grad, self.alpha];
        let params = [Some(self.z), Some(self.a_src), Some(self.a_dst)];
        let saved = [self.edge_bias, self.out, self.lse];
        let mut v: Vec<&'a T> = head
            .into_iter()
            .chain(params)
            .chain(saved)
            .flatten()
            .collect();
        v.extend(self.graph.list());
        v
    }
}

/// The inputs of the aggregation forms (`Op::Aggregate`, `AggregateBackward`), by name.
#[derive(Clone, Copy, Debug)]
pub struct AggregateArgs<'a, T> {
    /// The upstream gradient g_y (AggregateBackward).
    pub grad: Option<&'a T>,
    /// The fixed attention `[E,H]`.
    pub alpha: &'a T,
    /// The features aggregated, `[T,N,C]`.
    pub s: &'a T,
    /// The four graph index inputs.
    pub graph: GraphArgs<'a, T>,
}

impl<'a, T> AggregateArgs<'a, T> {
    /// Names the inputs of `op`; an error when `op` is no aggregation or the count is off.
    pub fn of(op: &Op, inputs: &'a [T]) -> Result<Self> {
        let name = op.name();
        let grad = match op {
            Op::Aggregate => false,
            Op::AggregateBackward => true,
            _ => return Err(Error::graph(format!("{name} is not an aggregation op"))),
        };
        check::arity(name, inputs, 6 + grad as usize)?;
        let mut it = inputs.iter();
        let grad = if grad { it.next() } else { None };
        let missing = || Error::graph(format!("{name}: inputs out of order"));
        Ok(AggregateArgs {
            grad,
            alpha: it.next().ok_or_else(missing)?,
            s: it.next().ok_or_else(missing)?,
            graph: GraphArgs::take(&mut it).ok_or_else(missing)?,
        })
    }

    /// The inputs in their positional order (the inverse of [`AggregateArgs::of`]).
    pub fn list(&self) -> Vec<&'a T> {
        let mut v: Vec<&'a T> = self.grad.into_iter().collect();
        v.extend([self.alpha, self.s]);
        v.extend(self.graph.list());
        v
    }
}

/// An input that the op form guarantees (checked by `of`), or an internal error.
pub fn required<'a, T>(op: &'static str, what: &str, v: Option<&'a T>) -> Result<&'a T> {
    v.ok_or_else(|| Error::graph(format!("{op}: input {what} missing")))
}

// ---- shape rules -------------------------------------------------------------------------

/// Checks the graph index inputs for `n` nodes; returns the edge count `E`.
fn check_graph(op: &'static str, g: &GraphArgs<Meta>, n: usize) -> Result<usize> {
    let names = ["row_ptr", "src", "col_ptr", "col_edge"];
    for (m, what) in g.list().into_iter().zip(names) {
        check::index(op, what, m)?;
        check::rank(op, what, m, 1)?;
    }
    let e = g.src.shape.at(0);
    check::dims(op, "row_ptr", g.row_ptr, &[n + 1])?;
    check::dims(op, "col_ptr", g.col_ptr, &[n + 1])?;
    check::dims(op, "col_edge", g.col_edge, &[e])?;
    Ok(e)
}

/// Checks `z[N,H,F]`, `a_src[H,F]`, `a_dst[H,F]`; returns `(N, H, F)`.
fn check_params(op: &'static str, z: &Meta, a_src: &Meta, a_dst: &Meta) -> Result<[usize; 3]> {
    check::float(op, "z", z)?;
    check::rank(op, "z", z, 3)?;
    let (n, h, f) = (z.shape.at(0), z.shape.at(1), z.shape.at(2));
    if h == 0 || f == 0 {
        return Err(Error::shape(
            op,
            format!(
                "z must have at least one head and one feature, got {:?}",
                z.shape
            ),
        ));
    }
    for (m, what) in [(a_src, "a_src"), (a_dst, "a_dst")] {
        check::same_dtype(op, what, z, m)?;
        check::dims(op, what, m, &[h, f])?;
    }
    Ok([n, h, f])
}

/// Checks `alpha[E,H]`, `s[T,N,C]` with `C` divisible by `H`; returns `(T, N, C, H)`.
fn check_aggregate(op: &'static str, alpha: &Meta, s: &Meta) -> Result<[usize; 4]> {
    check::float(op, "alpha", alpha)?;
    check::rank(op, "alpha", alpha, 2)?;
    check::same_dtype(op, "s", alpha, s)?;
    check::rank(op, "s", s, 3)?;
    let h = alpha.shape.at(1);
    let (t, n, c) = (s.shape.at(0), s.shape.at(1), s.shape.at(2));
    if h == 0 || c == 0 || c % h != 0 {
        return Err(Error::shape(
            op,
            format!(
                "s {:?} has C = {c} channels, which must be a positive multiple of the {h} heads of alpha {:?}",
                s.shape, alpha.shape
            ),
        ));
    }
    Ok([t, n, c, h])
}

/// Outputs of both GAT backward ops: gz[N,H,F], g_a_src[H,F], g_a_dst[H,F] (, g_be[E,H]).
fn param_grads(n: usize, h: usize, f: usize, e: usize, dt: DType, edge_bias: bool) -> Vec<Meta> {
    let mut out = vec![
        Meta::new([n, h, f], dt),
        Meta::new([h, f], dt),
        Meta::new([h, f], dt),
    ];
    if edge_bias {
        out.push(Meta::new([e, h], dt));
    }
    out
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::Gat(a) | Op::GatBackward(a) | Op::GatAlpha(a) | Op::GatAlphaBackward(a) => {
            a.validate(name)?;
            let x = GatArgs::of(op, inputs)?;
            let [n, h, f] = check_params(name, x.z, x.a_src, x.a_dst)?;
            let e = check_graph(name, &x.graph, n)?;
            let dt = x.z.dtype;
            let same = |what: &str, m: Option<&Meta>, dims: &[usize]| match m {
                Some(m) => {
                    check::same_dtype(name, what, x.z, m)?;
                    check::dims(name, what, m, dims)
                }
                None => Ok(()),
            };
            same("be", x.edge_bias, &[e, h])?;
            same("lse", x.lse, &[n, h])?;
            same("out", x.out, &[n, h, f])?;
            same("alpha", x.alpha, &[e, h])?;
            match op {
                Op::Gat(_) => Ok(vec![Meta::new([n, h, f], dt), Meta::new([n, h], dt)]),
                Op::GatAlpha(_) => Ok(vec![Meta::new([e, h], dt)]),
                Op::GatBackward(_) => {
                    same("g_out", x.grad, &[n, h, f])?;
                    Ok(param_grads(n, h, f, e, dt, a.edge_bias))
                }
                _ => {
                    same("g_alpha", x.grad, &[e, h])?;
                    Ok(param_grads(n, h, f, e, dt, a.edge_bias))
                }
            }
        }
        Op::Aggregate | Op::AggregateBackward => {
            let x = AggregateArgs::of(op, inputs)?;
            let [_, n, _, h] = check_aggregate(name, x.alpha, x.s)?;
            let e = check_graph(name, &x.graph, n)?;
            check::dims(name, "alpha", x.alpha, &[e, h])?;
            match x.grad {
                None => Ok(vec![x.s.clone()]),
                Some(g_y) => {
                    check::same_dtype(name, "g_y", x.s, g_y)?;
                    check::dims(name, "g_y", g_y, x.s.shape.dims())?;
                    Ok(vec![x.alpha.clone(), x.s.clone()])
                }
            }
        }
        _ => Err(Error::graph(format!("{name} is not a gat op"))),
    }
}

// ---- gradient rules ----------------------------------------------------------------------

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let x = &node.inputs;
    match &node.op {
        Op::Gat(a) => {
            if og.get(1).copied().flatten().is_some() {
                return Err(Error::graph(
                    "gat: no gradient flows through lse (it is the saved softmax normaliser; \
                     differentiate through gat_alpha instead)",
                ));
            }
            let Some(gy) = og[0] else {
                return Ok(vec![None; x.len()]);
            };
            let backward = GatArgs {
                grad: Some(&gy),
                out: Some(&node.outputs[0]),
                lse: Some(&node.outputs[1]),
                ..GatArgs::of(&node.op, x)?
            };
            let ins: Vec<ValueId> = backward.list().into_iter().copied().collect();
            let gs = g.push(Op::GatBackward(*a), &ins)?;
            let mut out: Vec<Option<ValueId>> = gs.into_iter().map(Some).collect();
            out.resize(x.len(), None);
            Ok(out)
        }
        Op::GatAlpha(a) => {
            let Some(gy) = og[0] else {
                return Ok(vec![None; x.len()]);
            };
            let backward = GatArgs {
                grad: Some(&gy),
                alpha: Some(&node.outputs[0]),
                lse: None,
                ..GatArgs::of(&node.op, x)?
            };
            let ins: Vec<ValueId> = backward.list().into_iter().copied().collect();
            let gs = g.push(Op::GatAlphaBackward(*a), &ins)?;
            // Inputs: z, a_src, a_dst (, be), lse, graph×4 — lse gets none (the softmax
            // backward already accounts for the normaliser).
            let mut out: Vec<Option<ValueId>> = gs.into_iter().map(Some).collect();
            out.resize(x.len(), None);
            Ok(out)
        }
        Op::Aggregate => {
            let Some(gy) = og[0] else {
                return Ok(vec![None; x.len()]);
            };
            let backward = AggregateArgs {
                grad: Some(&gy),
                ..AggregateArgs::of(&node.op, x)?
            };
            let ins: Vec<ValueId> = backward.list().into_iter().copied().collect();
            let gs = g.push(Op::AggregateBackward, &ins)?;
            Ok(vec![Some(gs[0]), Some(gs[1]), None, None, None, None])
        }
        op => Err(Error::graph(format!("{} has no gradient rule", op.name()))),
    }
}

// ---- builders ----------------------------------------------------------------------------

impl Graph {
    /// Multi-head GAT layer (§3.2): `z[N,H,F]` (= x W reshaped), `a_src[H,F]`, `a_dst[H,F]`,
    /// optional edge bias `be[E,H]`, on `graph`. `attrs.edge_bias` is set from `be`.
    pub fn gat(
        &mut self,
        z: ValueId,
        a_src: ValueId,
        a_dst: ValueId,
        be: Option<ValueId>,
        graph: &GraphInputs,
        attrs: GatAttrs,
    ) -> Result<GatOut> {
        let attrs = GatAttrs {
            edge_bias: be.is_some(),
            ..attrs
        };
        let mut ins = vec![z, a_src, a_dst];
        ins.extend(be);
        ins.extend(graph.ids());
        let o = self.push(Op::Gat(attrs), &ins)?;
        Ok(GatOut {
            out: o[0],
            lse: o[1],
        })
    }

    /// The attention `alpha[E,H]` of the GAT layer with the same inputs, whose `lse` came from
    /// [`Graph::gat`]. Differentiable in `z, a_src, a_dst, be` (the full softmax derivative).
    #[allow(clippy::too_many_arguments)]
    pub fn gat_alpha(
        &mut self,
        z: ValueId,
        a_src: ValueId,
        a_dst: ValueId,
        be: Option<ValueId>,
        lse: ValueId,
        graph: &GraphInputs,
        attrs: GatAttrs,
    ) -> Result<ValueId> {
        let attrs = GatAttrs {
            edge_bias: be.is_some(),
            ..attrs
        };
        let mut ins = vec![z, a_src, a_dst];
        ins.extend(be);
        ins.push(lse);
        ins.extend(graph.ids());
        self.push1(Op::GatAlpha(attrs), &ins)
    }

    /// Fixed-attention aggregation (§3.3): `y[t,i,c] = Σ_{k into i} alpha[k, c / (C/H)]
    /// s[t, src_k, c]` for `alpha[E,H]`, `s[T,N,C]`.
    pub fn aggregate(
        &mut self,
        alpha: ValueId,
        s: ValueId,
        graph: &GraphInputs,
    ) -> Result<ValueId> {
        let mut ins = vec![alpha, s];
        ins.extend(graph.ids());
        self.push1(Op::Aggregate, &ins)
    }
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn every_gat_form_round_trips_its_positional_inputs() {
        for edge_bias in [false, true] {
            let a = GatAttrs {
                edge_bias,
                ..GatAttrs::default()
            };
            for (op, lse_at) in [
                (Op::Gat(a), None),
                (Op::GatAlpha(a), Some(3)),
                (Op::GatBackward(a), Some(5)),
                (Op::GatAlphaBackward(a), None),
            ] {
                let count = GatArgs::of(&op, &[0usize; 32][..])
                    .map(|_| ())
                    .unwrap_err()
                    .to_string();
                assert!(count.contains("expects"), "{count}");
                let n = (7..12)
                    .find(|&n| GatArgs::of(&op, &(0..n).collect::<Vec<usize>>()).is_ok())
                    .unwrap();
                let inputs: Vec<usize> = (0..n).collect();
                let x = GatArgs::of(&op, &inputs).unwrap();
                let back: Vec<usize> = x.list().into_iter().copied().collect();
                assert_eq!(back, inputs, "{op:?}");
                assert_eq!(*x.graph.col_edge, n - 1);
                assert_eq!(x.edge_bias.is_some(), edge_bias);
                // lse sits right after the parameters and the edge bias (and out).
                if let Some(at) = lse_at {
                    assert_eq!(*x.lse.unwrap(), at + edge_bias as usize);
                }
            }
        }
        let agg: Vec<usize> = (0..7).collect();
        let x = AggregateArgs::of(&Op::AggregateBackward, &agg).unwrap();
        assert_eq!((*x.grad.unwrap(), *x.alpha, *x.s), (0, 1, 2));
        assert_eq!(x.list().into_iter().copied().collect::<Vec<_>>(), agg);
        assert!(AggregateArgs::of(&Op::Aggregate, &agg).is_err());
    }
}
