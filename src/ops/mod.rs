//! The op set: what every node of a graph computes, its shape rule and its gradient rule.
//!
//! An `Op` is plain data (a variant plus attributes). Each family lives in its own file,
//! which holds the family's attributes, shape inference, symbolic gradient and the value rules
//! its backends share (`validate_*`); the numeric kernels live in `backend::cpu::<family>`,
//! `backend::cuda::<family>` and `kernels/<family>.cu`. Index rules used by several families
//! are in [`index`]. Every op's math is fixed by DESIGN.md §3; the doc comment on each variant
//! gives its inputs → outputs.

pub mod basic;
pub mod gat;
pub mod index;
pub mod infonce;
pub mod layout;
pub mod lif;
pub mod norm;
pub mod optim;
pub mod segment;

pub use basic::{MatMulDims, Reduce, Unary};
pub use gat::{CsrGraph, GatAttrs, GatOut, GraphInputs};
pub use infonce::{InfoNceAttrs, InfoNceGeometry, InfoNceOut, Precision};
pub use lif::{LifConfig, LifOutputs, Surrogate};
pub use optim::{AdamWConfig, OptimizerValues};
pub use segment::SegmentMeanOut;

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{DType, Meta, Shape};

/// One node's computation: the variant names the op, its fields are the op's attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- basic.rs -------------------------------------------------------------------
    /// a, b (same shape) → a + b
    Add,
    /// a, b (same shape) → a − b
    Sub,
    /// a, b (same shape) → a ⊙ b
    Mul,
    /// x\[.., C\], b\[C\] → x + b (bias over the last axis)
    AddBias,
    /// x\[.., C\], w\[C\] or w\[\] → x ⊙ w (per-channel or scalar scale)
    MulBroadcast,
    /// x → c · x
    Scale(f64),
    /// x → f(x); Heaviside carries its surrogate for the backward
    Unary(Unary),
    /// x, g → g ⊙ f'(x)
    UnaryBackward(Unary),
    /// a\[M,K\] (or \[K,M\] if trans_a), b\[K,N\] (or \[N,K\]) → \[M,N\]; with a leading batch axis
    /// on both for a batched product.
    MatMul {
        /// Read `a` transposed (`[K, M]`).
        trans_a: bool,
        /// Read `b` transposed (`[N, K]`).
        trans_b: bool,
        /// 1, or the stride at which the rows of `a` (not transposed, rank 2) were taken
        /// from a batch `row_stride` times as long, such as the \[CLS\] rows of a token batch.
        /// The product is the same. The gradient with respect to `b`, a sum over those rows,
        /// is the long batch's product, zero rows between them, so that its bits are the
        /// long batch's.
        row_stride: usize,
    },
    /// x → sum or mean over the last axis ([.., C] → [..]) or over everything (→ [])
    Reduce(Reduce),
    /// g (reduced shape) → g broadcast back to `shape`, divided by the count for a mean
    ReduceBackward(Reduce, Shape),
    /// x → the same elements in `shape`
    Reshape(Shape),
    /// x → x with axes permuted (`perm[i]` = input axis of output axis i)
    Permute(Vec<usize>),
    /// x₀, x₁, … → concatenation along `axis`
    Concat {
        /// The axis the inputs are joined along.
        axis: usize,
    },
    /// x → x[.., start..start+len, ..] along `axis`
    Slice {
        /// The axis sliced.
        axis: usize,
        /// First index kept along `axis`.
        start: usize,
        /// Number of indices kept along `axis`.
        len: usize,
    },
    /// g (sliced shape) → zeros of `full` with g placed at `start` along `axis`
    SliceBackward {
        /// The axis the forward slice was taken along.
        axis: usize,
        /// Where the slice started along `axis`.
        start: usize,
        /// Shape of the forward input (the gradient's shape).
        full: Shape,
    },
    /// table\[R, C\], idx\[K\] (i32) → table\[idx\] \[K, C\] (embedding lookup, node selection)
    Gather,
    /// g\[K, C\], idx\[K\] → gtable\[rows, C\] = Σ g rows by index (deterministic, ordered)
    ScatterAdd {
        /// Number of rows R of the output (the gathered table).
        rows: usize,
    },
    /// x, seed[] (i32) → x ⊙ mask / (1 − p), mask from a counter-based hash of (seed, index)
    Dropout {
        /// Drop probability, in `[0, 1)`.
        p: f64,
    },
    /// g, seed → g ⊙ mask / (1 − p) with the same mask
    DropoutBackward {
        /// Drop probability of the forward dropout.
        p: f64,
    },
    /// x → x, with no gradient flowing back
    StopGradient,
    /// x → x converted to another float type (rounded to nearest even); the gradient is
    /// converted back to x's type
    Cast(crate::tensor::DType),
    /// → a constant-filled tensor (used for seeds of gradients)
    Fill {
        /// The value every element gets.
        value: f64,
        /// Shape and dtype of the output.
        meta: Meta,
    },

    // ---- norm.rs --------------------------------------------------------------------
    /// x\[.., C\], gamma\[C\], beta\[C\] → y, mean\[..\], rstd\[..\]
    LayerNorm {
        /// Added to the variance before the square root.
        eps: f64,
        /// 1, or the stride at which the rows were taken from a batch `row_stride` times as
        /// long (as `MatMul`'s): the parameter gradients add the rows in the fixed blocks
        /// the long batch's rows would fall in, so that their bits equal the long batch's.
        row_stride: usize,
    },
    /// g, x, gamma, mean, rstd → gx, ggamma, gbeta
    LayerNormBackward {
        /// The forward's epsilon.
        eps: f64,
        /// The forward's row stride.
        row_stride: usize,
    },
    /// x[.., C] → y = x / max(‖x‖, eps), norm[..]
    L2Normalize {
        /// Floor on the norm the input is divided by.
        eps: f64,
    },
    /// g, y, norm → gx
    L2NormalizeBackward {
        /// The forward's epsilon.
        eps: f64,
    },
    /// x[B, G, L], keep[B, L] (f32/f64 1 = keep, 0 = masked) → softmax over L of the kept keys
    MaskedSoftmax,
    /// g, y → gx
    MaskedSoftmaxBackward,

    // ---- lif.rs ---------------------------------------------------------------------
    /// x[T, N] (, tau[] if learnable) → spikes S[T, N], membrane V[T, N], charge H[T, N]
    Lif(LifConfig),
    /// h (, gS if has_gs) (, gV if has_gv) (, tau if learnable) → gx (, g_tau[]);
    /// an absent gradient counts as zeros (at least one of gS, gV is present).
    LifBackward {
        /// The forward's neuron configuration.
        cfg: LifConfig,
        /// Whether a spike gradient gS is among the inputs.
        has_gs: bool,
        /// Whether a membrane gradient gV is among the inputs.
        has_gv: bool,
    },

    // ---- gat.rs ---------------------------------------------------------------------
    // `graph` = row_ptr[N+1], src[E], col_ptr[N+1], col_edge[E] (i32; CSR by destination and
    // its CSC transpose, see `gat.rs`). The forward ops read only the CSR but carry the CSC
    // for their gradient rules.
    /// z\[N,H,F\], a_src\[H,F\], a_dst\[H,F\] (, be\[E,H\]), graph → out\[N,H,F\], lse\[N,H\]
    Gat(GatAttrs),
    /// g_out, z, a_src, a_dst (, be), out, lse, graph → gz, g_a_src, g_a_dst (, g_be)
    GatBackward(GatAttrs),
    /// z, a_src, a_dst (, be), lse, graph → alpha\[E,H\] (the attention GAT used)
    GatAlpha(GatAttrs),
    /// g_alpha, alpha, z, a_src, a_dst (, be), graph → gz, g_a_src, g_a_dst (, g_be)
    GatAlphaBackward(GatAttrs),
    /// alpha\[E,H\], s\[T,N,C\], graph → y\[T,N,C\] (fixed-attention aggregation, §3.3)
    Aggregate,
    /// g_y, alpha, s, graph → g_alpha, g_s
    AggregateBackward,

    // ---- infonce.rs -----------------------------------------------------------------
    /// a\[B,D\], p\[B,D\], logit_scale\[\] → loss\[\], lse_row\[B\], lse_col\[B\] (lse_col is \[0\] when
    /// one-directional: no column statistics are computed)
    InfoNce(InfoNceAttrs),
    /// g_loss, a, p, logit_scale, lse_row, lse_col (, g_lse_row, g_lse_col when a consumer
    /// of the lse outputs sends gradients into them) → ga, gp, g_logit_scale
    InfoNceBackward(InfoNceAttrs),

    // ---- segment.rs -----------------------------------------------------------------
    /// x\[P,C\], seg\[P\] (i32, −1 = void; ids ≥ S or < −1 → Error::Invalid) → mean y\[S,C\],
    /// count\[S\] (x's dtype); an empty segment has y = 0
    SegmentMean {
        /// Number of segments S (rows of the output).
        segments: usize,
    },
    /// g_y, seg, count → gx\[P,C\]
    SegmentMeanBackward,

    // ---- optim.rs -------------------------------------------------------------------
    /// g₀, g₁, … → clip scale[] = min(1, max_norm / (‖g‖ + 1e-6)), global norm[]
    ClipScale {
        /// Largest global gradient norm let through unscaled.
        max_norm: f64,
    },
    /// In place on p, m, v: inputs p, m, v, g, clip_scale\[\], hyper\[2\] = (lr, step)
    AdamW(AdamWConfig),
}

/// A row-local op's rows ([`Op::row_split`]): every split tensor is `rows` rows of its
/// row shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowSplit {
    /// Rows of every split tensor.
    pub rows: usize,
    /// Each input's row shape; None: read whole.
    pub inputs: Vec<Option<Vec<usize>>>,
    /// Each output's row shape.
    pub outputs: Vec<Vec<usize>>,
}

impl Op {
    /// Short name for messages and profiles.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::AddBias => "add_bias",
            Op::MulBroadcast => "mul_broadcast",
            Op::Scale(_) => "scale",
            Op::Unary(_) => "unary",
            Op::UnaryBackward(_) => "unary_backward",
            Op::MatMul { .. } => "matmul",
            Op::Reduce(_) => "reduce",
            Op::ReduceBackward(..) => "reduce_backward",
            Op::Reshape(_) => "reshape",
            Op::Permute(_) => "permute",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::SliceBackward { .. } => "slice_backward",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Dropout { .. } => "dropout",
            Op::DropoutBackward { .. } => "dropout_backward",
            Op::StopGradient => "stop_gradient",
            Op::Cast(_) => "cast",
            Op::Fill { .. } => "fill",
            Op::LayerNorm { .. } => "layer_norm",
            Op::LayerNormBackward { .. } => "layer_norm_backward",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::L2NormalizeBackward { .. } => "l2_normalize_backward",
            Op::MaskedSoftmax => "masked_softmax",
            Op::MaskedSoftmaxBackward => "masked_softmax_backward",
            Op::Lif(_) => "lif",
            Op::LifBackward { .. } => "lif_backward",
            Op::Gat(_) => "gat",
            Op::GatBackward(_) => "gat_backward",
            Op::GatAlpha(_) => "gat_alpha",
            Op::GatAlphaBackward(_) => "gat_alpha_backward",
            Op::Aggregate => "aggregate",
            Op::AggregateBackward => "aggregate_backward",
            Op::InfoNce(_) => "infonce",
            Op::InfoNceBackward(_) => "infonce_backward",
            Op::SegmentMean { .. } => "segment_mean",
            Op::SegmentMeanBackward => "segment_mean_backward",
            Op::ClipScale { .. } => "clip_scale",
            Op::AdamW(_) => "adamw",
        }
    }

    /// How many leading inputs the op updates in place (they are its only "outputs").
    pub fn mutated_inputs(&self) -> usize {
        match self {
            Op::AdamW(_) => 3,
            _ => 0,
        }
    }

    /// Whether the op only moves elements (the layout ops but scatter-add and dropout, which
    /// add and scale): it runs on half-precision storage as it is, bit for bit.
    pub fn only_moves(&self) -> bool {
        self.family() == Family::Layout
            && !matches!(
                self,
                Op::ScatterAdd { .. } | Op::Dropout { .. } | Op::DropoutBackward { .. }
            )
    }

    /// The op's rows, when it is row-local: each row of every output depends only on the same
    /// row of the inputs split by rows, and on the inputs read whole (parameters: a bias, γ
    /// and β), and the op writes every element of its outputs. Such an op gives the same
    /// values run on a block of rows at a time as on the whole tensors (the CPU runs half-precision storage that way, converting block by block
    /// in cache). `inputs` are the input shapes; None for an op that is not row-local.
    pub(crate) fn row_split(&self, inputs: &[&Shape]) -> Option<RowSplit> {
        let x = inputs.first().copied();
        let c = x.map_or(0, Shape::last);
        // `rows` rows of the shape `row` in every split tensor; `whole` inputs read whole
        let split = |rows: usize, ins: &[Option<&[usize]>], outs: &[&[usize]]| RowSplit {
            rows,
            inputs: ins.iter().map(|r| r.map(<[usize]>::to_vec)).collect(),
            outputs: outs.iter().map(|r| r.to_vec()).collect(),
        };
        let out = match self {
            Op::Add | Op::Sub | Op::Mul | Op::UnaryBackward(_) => {
                split(x?.numel(), &[Some(&[]), Some(&[])], &[&[]])
            }
            Op::Scale(_) | Op::Unary(_) | Op::StopGradient => {
                split(x?.numel(), &[Some(&[])], &[&[]])
            }
            Op::AddBias | Op::MulBroadcast => split(x?.rows(), &[Some(&[c]), None], &[&[c]]),
            Op::Reduce(Reduce::SumLast | Reduce::MeanLast) => {
                split(x?.rows(), &[Some(&[c])], &[&[]])
            }
            Op::ReduceBackward(Reduce::SumLast | Reduce::MeanLast, full) => {
                split(x?.numel(), &[Some(&[])], &[&[full.last()]])
            }
            Op::LayerNorm { .. } => split(x?.rows(), &[Some(&[c]), None, None], &[&[c], &[], &[]]),
            Op::L2Normalize { .. } => split(x?.rows(), &[Some(&[c])], &[&[c], &[]]),
            Op::L2NormalizeBackward { .. } => {
                split(x?.rows(), &[Some(&[c]), Some(&[c]), Some(&[])], &[&[c]])
            }
            Op::MaskedSoftmax | Op::MaskedSoftmaxBackward => {
                let &[b, g, l] = x?.dims() else { return None };
                let keep_or_y: &[usize] = if matches!(self, Op::MaskedSoftmax) {
                    &[l]
                } else {
                    &[g, l]
                };
                split(b, &[Some(&[g, l]), Some(keep_or_y)], &[&[g, l]])
            }
            _ => return None,
        };
        // an empty row (a zero-width last axis) has no rows to split by
        (c > 0 && out.inputs.len() == inputs.len()).then_some(out)
    }

    /// The family (file) an op belongs to: where its shape rule, gradient rule and kernels live.
    pub fn family(&self) -> Family {
        match self {
            Op::LayerNorm { .. }
            | Op::LayerNormBackward { .. }
            | Op::L2Normalize { .. }
            | Op::L2NormalizeBackward { .. }
            | Op::MaskedSoftmax
            | Op::MaskedSoftmaxBackward => Family::Norm,
            Op::Lif(_) | Op::LifBackward { .. } => Family::Lif,
            Op::Gat(_)
            | Op::GatBackward(_)
            | Op::GatAlpha(_)
            | Op::GatAlphaBackward(_)
            | Op::Aggregate
            | Op::AggregateBackward => Family::Gat,
            Op::InfoNce(_) | Op::InfoNceBackward(_) => Family::InfoNce,
            Op::SegmentMean { .. } | Op::SegmentMeanBackward => Family::Segment,
            Op::ClipScale { .. } | Op::AdamW(_) => Family::Optim,
            Op::Reshape(_)
            | Op::Permute(_)
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::SliceBackward { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::Dropout { .. }
            | Op::DropoutBackward { .. } => Family::Layout,
            _ => Family::Basic,
        }
    }

    /// Output shapes and dtypes from input ones; errors name the op and the mismatch.
    pub fn infer(&self, inputs: &[Meta]) -> Result<Vec<Meta>> {
        if !self.only_moves() && inputs.iter().any(|m| m.dtype == DType::U8) {
            return self.infer_spikes(inputs);
        }
        if let Some(h) = inputs.iter().map(|m| m.dtype).find(|d| d.is_half()) {
            if !matches!(self.family(), Family::Basic | Family::Layout) {
                return self.infer_half(h, inputs);
            }
        }
        match self.family() {
            Family::Basic => basic::infer(self, inputs),
            Family::Layout => layout::infer(self, inputs),
            Family::Norm => norm::infer(self, inputs),
            Family::Lif => lif::infer(self, inputs),
            Family::Gat => gat::infer(self, inputs),
            Family::InfoNce => infonce::infer(self, inputs),
            Family::Segment => segment::infer(self, inputs),
            Family::Optim => optim::infer(self, inputs),
        }
    }

    /// [`Op::infer`] of an op given u8 spikes: the inputs [`Op::reads_spikes`] names are read
    /// as the op's float type (its other float inputs', or a cast's target), exactly, since
    /// spikes are 0 or 1; the outputs are what the op gives on that float type. Any other op
    /// refuses u8.
    fn infer_spikes(&self, inputs: &[Meta]) -> Result<Vec<Meta>> {
        let name = self.name();
        let float = match self {
            Op::Cast(to) => Some(*to).filter(|d| d.is_float()),
            _ => inputs.iter().map(|m| m.dtype).find(|d| d.is_float()),
        };
        let reads = self.reads_spikes();
        let mut wide = inputs.to_vec();
        for (i, m) in wide.iter_mut().enumerate() {
            if m.dtype != DType::U8 {
                continue;
            }
            if !reads.contains(&i) {
                return Err(Error::shape(
                    name,
                    format!("input {i} is u8 (spikes), which {name} does not read: cast it to a float type first"),
                ));
            }
            m.dtype = float.ok_or_else(|| {
                Error::shape(
                    name,
                    "reads u8 spikes in the float type of its other inputs, and none is float",
                )
            })?;
        }
        self.infer(&wide)
    }

    /// The inputs an op reads as u8 spikes too (`LifConfig::u8_spikes`): the operands of a
    /// matmul, the features of an aggregation and of its backward, and a cast's input. Layout
    /// moves carry u8 as they carry every type.
    pub fn reads_spikes(&self) -> &'static [usize] {
        match self {
            Op::MatMul { .. } => &[0, 1],
            Op::Aggregate => &[1],
            Op::AggregateBackward => &[2],
            Op::Cast(_) => &[0],
            _ => &[],
        }
    }

    /// [`Op::infer`] of a fused op on half-precision storage `h` (DESIGN §3): its activations
    /// (and their gradients) are `h`, its statistics ([`Op::half_stats`]) f32. The family's
    /// rule checks the op as if every `h` value were f32; outputs that are not statistics
    /// come back as `h`. The optimizer keeps f32 master weights and takes no half input.
    fn infer_half(&self, h: DType, inputs: &[Meta]) -> Result<Vec<Meta>> {
        let name = self.name();
        if self.family() == Family::Optim {
            return Err(Error::shape(
                name,
                format!("updates f32 master weights; its inputs cannot be {h:?} (cast the gradients to f32)"),
            ));
        }
        let (stat_in, stat_out) = self.half_stats(inputs.len())?;
        let mut wide = inputs.to_vec();
        for (i, m) in wide
            .iter_mut()
            .enumerate()
            .filter(|(_, m)| m.dtype.is_float())
        {
            let (want, what) = match stat_in.contains(&i) {
                true => (DType::F32, "a statistic"),
                false => (h, "an activation"),
            };
            if m.dtype != want {
                return Err(Error::shape(
                    name,
                    format!(
                        "input {i} is {:?}; on {h:?} storage it is {what} and must be {want:?}",
                        m.dtype
                    ),
                ));
            }
            m.dtype = DType::F32;
        }
        let mut out = self.infer(&wide)?;
        for (k, m) in out.iter_mut().enumerate() {
            if m.dtype == DType::F32 && !stat_out.contains(&k) {
                m.dtype = h;
            }
        }
        Ok(out)
    }

    /// The positions of the inputs and outputs of a fused op that stay f32 when it runs on
    /// half-precision storage: what its backward reads back (softmax normalisers, LayerNorm
    /// mean and rstd, norms, counts, the LIF charge H, from which the backward recomputes
    /// exactly the forward's spikes) and the losses with their gradients. The rest are
    /// activations in the half type.
    pub fn half_stats(&self, inputs: usize) -> Result<(Vec<usize>, Vec<usize>)> {
        // positions of the inputs an op's argument struct names, by naming the positions
        let at = |i: &usize| *i;
        let pos: Vec<usize> = (0..inputs).collect();
        Ok(match self {
            Op::LayerNorm { .. } => (vec![], vec![1, 2]),
            Op::LayerNormBackward { .. } => (vec![3, 4], vec![]),
            Op::L2Normalize { .. } => (vec![], vec![1]),
            Op::L2NormalizeBackward { .. } => (vec![2], vec![]),
            Op::SegmentMean { .. } => (vec![], vec![1]),
            Op::SegmentMeanBackward => (vec![2], vec![]),
            Op::Lif(_) => (vec![], vec![2]),
            Op::LifBackward { .. } => (
                vec![at(lif::LifBackwardArgs::of(self, &pos)?.charge)],
                vec![],
            ),
            Op::Gat(_) => (vec![], vec![1]),
            Op::GatAlpha(_) | Op::GatBackward(_) | Op::GatAlphaBackward(_) => (
                gat::GatArgs::of(self, &pos)?
                    .lse
                    .map(at)
                    .into_iter()
                    .collect(),
                vec![],
            ),
            Op::InfoNce(_) => (vec![], vec![0, 1, 2]),
            Op::InfoNceBackward(_) => {
                let x = infonce::InfoNceBackwardArgs::of(self.name(), &pos)?;
                let mut s = vec![at(x.g_loss), at(x.lse_row), at(x.lse_col)];
                s.extend(x.g_lse.into_iter().flat_map(|(r, c)| [at(r), at(c)]));
                (s, vec![])
            }
            _ => (vec![], vec![]),
        })
    }

    /// Appends to `g` the ops computing the gradients of `node`'s inputs from the gradients
    /// of its outputs (`None` = no gradient reaches that output). Returns one entry per input.
    pub fn grad(
        &self,
        g: &mut Graph,
        node: &Node,
        out_grads: &[Option<ValueId>],
    ) -> Result<Vec<Option<ValueId>>> {
        match self.family() {
            Family::Basic | Family::Optim => basic::grad(g, node, out_grads),
            Family::Layout => layout::grad(g, node, out_grads),
            Family::Norm => norm::grad(g, node, out_grads),
            Family::Lif => lif::grad(g, node, out_grads),
            Family::Gat => gat::grad(g, node, out_grads),
            Family::InfoNce => infonce::grad(g, node, out_grads),
            Family::Segment => segment::grad(g, node, out_grads),
        }
    }
}

/// Op families: one file each, named by [`Family::name`], in `src/ops/`, `src/backend/cpu/`,
/// `src/backend/cuda/` and `kernels/` (`.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Elementwise, unary, matmul, reduce, stop-gradient, fill (`basic`).
    Basic,
    /// Reshape, permute, concat, slice, gather/scatter, dropout (`layout`).
    Layout,
    /// LayerNorm, L2 normalize, masked softmax (`norm`).
    Norm,
    /// LIF spiking neurons (`lif`).
    Lif,
    /// Graph attention and fixed-attention aggregation (`gat`).
    Gat,
    /// InfoNCE contrastive loss (`infonce`).
    InfoNce,
    /// Segment mean (`segment`).
    Segment,
    /// Gradient clipping and AdamW (`optim`).
    Optim,
}

impl Family {
    /// The file stem of the family everywhere: `src/ops/<name>.rs`, `kernels/<name>.cu`, ….
    pub fn name(self) -> &'static str {
        match self {
            Family::Basic => "basic",
            Family::Layout => "layout",
            Family::Norm => "norm",
            Family::Lif => "lif",
            Family::Gat => "gat",
            Family::InfoNce => "infonce",
            Family::Segment => "segment",
            Family::Optim => "optim",
        }
    }
}

/// Shared checks for shape rules.
pub(crate) mod check {
    use crate::error::{Error, Result};
    use crate::tensor::{DType, Meta};

    pub fn arity<T>(op: &'static str, inputs: &[T], n: usize) -> Result<()> {
        if inputs.len() != n {
            return Err(Error::shape(
                op,
                format!("expects {n} inputs, got {}", inputs.len()),
            ));
        }
        Ok(())
    }
    pub fn float(op: &'static str, what: &str, m: &Meta) -> Result<()> {
        if !m.dtype.is_float() {
            return Err(Error::shape(
                op,
                format!(
                    "{what} must be a float type (f32, f64, bf16, f16), got {:?}",
                    m.dtype
                ),
            ));
        }
        Ok(())
    }
    pub fn index(op: &'static str, what: &str, m: &Meta) -> Result<()> {
        if m.dtype != DType::I32 {
            return Err(Error::shape(
                op,
                format!("{what} must be i32, got {:?}", m.dtype),
            ));
        }
        Ok(())
    }
    pub fn same_dtype(op: &'static str, what: &str, a: &Meta, b: &Meta) -> Result<()> {
        if a.dtype != b.dtype {
            return Err(Error::shape(
                op,
                format!("{what}: dtypes differ ({:?} vs {:?})", a.dtype, b.dtype),
            ));
        }
        Ok(())
    }
    pub fn dims(op: &'static str, what: &str, m: &Meta, want: &[usize]) -> Result<()> {
        if m.shape.dims() != want {
            return Err(Error::shape(
                op,
                format!("{what} must have shape {want:?}, got {:?}", m.shape),
            ));
        }
        Ok(())
    }
    pub fn rank(op: &'static str, what: &str, m: &Meta, r: usize) -> Result<()> {
        if m.shape.rank() != r {
            return Err(Error::shape(
                op,
                format!("{what} must have rank {r}, got shape {:?}", m.shape),
            ));
        }
        Ok(())
    }
}
