//! Elementwise arithmetic, activations, matmul, reductions, shape ops, gather/scatter,
//! dropout: the small ops everything else is composed of.

use super::check;
use super::lif::Surrogate;
use super::Op;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{DType, Meta, Shape};

/// Elementwise functions with a derivative.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// `max(x, 0)`
    Relu,
    /// `x` if x > 0 else `alpha (eˣ − 1)`
    Elu(f64),
    /// Exact GELU, `x Φ(x)` (PyTorch's default, erf form).
    Gelu,
    /// `x` if x > 0 else `slope x`
    LeakyRelu(f64),
    /// `eˣ`
    Exp,
    /// Heaviside spike `x ≥ 0` with the surrogate derivative; with `smooth` the forward is the
    /// surrogate's primitive instead, so finite differences can check spiking circuits.
    Spike {
        /// The surrogate whose derivative (and, if `smooth`, primitive) is used.
        surrogate: Surrogate,
        /// Forward with the surrogate's smooth primitive instead of the step.
        smooth: bool,
    },
}

impl Unary {
    /// f(x) in f64 (the reference the backends follow).
    pub fn forward(self, x: f64) -> f64 {
        match self {
            Unary::Relu => x.max(0.0),
            Unary::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Unary::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Unary::LeakyRelu(s) => {
                if x > 0.0 {
                    x
                } else {
                    s * x
                }
            }
            Unary::Exp => x.exp(),
            Unary::Spike { surrogate, smooth } => {
                if smooth {
                    surrogate.primitive(x)
                } else if x >= 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
    /// f'(x) used by the backward (the surrogate's derivative for `Spike`).
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Unary::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Unary::Elu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a * x.exp()
                }
            }
            Unary::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
            Unary::LeakyRelu(s) => {
                if x > 0.0 {
                    1.0
                } else {
                    s
                }
            }
            Unary::Exp => x.exp(),
            Unary::Spike { surrogate, .. } => surrogate.grad(x),
        }
    }
}

/// Which sum or mean a [`Op::Reduce`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Sum over the last axis: \[.., C\] → \[..\].
    SumLast,
    /// Mean over the last axis: \[.., C\] → \[..\].
    MeanLast,
    /// Sum of every element: → \[\].
    SumAll,
    /// Mean of every element: → \[\].
    MeanAll,
    /// Sum over every axis but the last: \[.., C\] → \[C\].
    SumRows,
}

impl Reduce {
    /// The reduced shape of an input of shape `s`.
    pub fn out_shape(self, s: &Shape) -> Shape {
        match self {
            Reduce::SumLast | Reduce::MeanLast => {
                Shape::new(&s.dims()[..s.rank().saturating_sub(1)])
            }
            Reduce::SumAll | Reduce::MeanAll => Shape::scalar(),
            Reduce::SumRows => Shape::new([s.last()]),
        }
    }
}

fn same(op: &'static str, inputs: &[Meta]) -> Result<Vec<Meta>> {
    check::arity(op, inputs, 2)?;
    check::float(op, "a", &inputs[0])?;
    if inputs[0] != inputs[1] {
        return Err(Error::shape(
            op,
            format!("operands differ: {:?} vs {:?}", inputs[0], inputs[1]),
        ));
    }
    Ok(vec![inputs[0].clone()])
}

/// The sizes of a (batched) matmul `op(a)[.., M, K] · op(b)[.., K, N]`: the one decoding of its
/// operand shapes, shared by the shape rule and every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMulDims {
    /// Leading batch size (1 for rank-2 operands).
    pub batch: usize,
    /// Whether the operands are rank 3 (a leading batch axis).
    pub batched: bool,
    /// Rows of `op(a)` and of the output.
    pub m: usize,
    /// The inner (contracted) size.
    pub k: usize,
    /// Columns of `op(b)` and of the output.
    pub n: usize,
    /// Stored (row-major) rows and columns of `a` and `b`, before any transpose.
    pub a_rows: usize,
    /// Stored columns of `a`.
    pub a_cols: usize,
    /// Stored rows of `b`.
    pub b_rows: usize,
    /// Stored columns of `b`.
    pub b_cols: usize,
}

impl MatMulDims {
    /// Checks that `a` (transposed if `ta`) and `b` (if `tb`) multiply: both rank 2 or both
    /// rank 3 with equal batch sizes, equal inner sizes.
    pub fn of(a: &Shape, b: &Shape, ta: bool, tb: bool) -> Result<MatMulDims> {
        let op = "matmul";
        if a.rank() != b.rank() || !(a.rank() == 2 || a.rank() == 3) {
            return Err(Error::shape(
                op,
                format!("operands must both be rank 2 or both rank 3, got {a:?} and {b:?}"),
            ));
        }
        let r = a.rank();
        let (a_rows, a_cols) = (a.at(r - 2), a.at(r - 1));
        let (b_rows, b_cols) = (b.at(r - 2), b.at(r - 1));
        let (m, ka) = if ta {
            (a_cols, a_rows)
        } else {
            (a_rows, a_cols)
        };
        let (kb, n) = if tb {
            (b_cols, b_rows)
        } else {
            (b_rows, b_cols)
        };
        if ka != kb {
            return Err(Error::shape(
                op,
                format!("inner dimensions differ: {a:?}{} × {b:?}{}", tr(ta), tr(tb)),
            ));
        }
        let batched = r == 3;
        if batched && a.at(0) != b.at(0) {
            return Err(Error::shape(
                op,
                format!("batch dimensions differ: {a:?} vs {b:?}"),
            ));
        }
        Ok(MatMulDims {
            batch: if batched { a.at(0) } else { 1 },
            batched,
            m,
            k: ka,
            n,
            a_rows,
            a_cols,
            b_rows,
            b_cols,
        })
    }

    /// `[batch, M, N]` for batched operands, else `[M, N]`.
    pub fn out_shape(&self) -> Shape {
        if self.batched {
            Shape::new([self.batch, self.m, self.n])
        } else {
            Shape::new([self.m, self.n])
        }
    }
}

fn tr(t: bool) -> &'static str {
    if t {
        "ᵀ"
    } else {
        ""
    }
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::Add | Op::Sub | Op::Mul => same(name, inputs),
        Op::AddBias | Op::MulBroadcast => {
            check::arity(name, inputs, 2)?;
            check::float(name, "x", &inputs[0])?;
            check::same_dtype(name, "x and its operand", &inputs[0], &inputs[1])?;
            let c = inputs[0].shape.last();
            let w = &inputs[1].shape;
            let ok = w.dims() == [c]
                || (matches!(op, Op::MulBroadcast) && w.numel() == 1 && w.rank() <= 1);
            if !ok || inputs[0].shape.rank() == 0 {
                return Err(Error::shape(
                    name,
                    format!(
                        "operand must be [{c}] for x {:?}{}, got {w:?}",
                        inputs[0].shape,
                        if matches!(op, Op::MulBroadcast) {
                            " (or a scalar)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok(vec![inputs[0].clone()])
        }
        Op::Scale(_) | Op::Unary(_) | Op::StopGradient => {
            check::arity(name, inputs, 1)?;
            check::float(name, "x", &inputs[0])?;
            Ok(vec![inputs[0].clone()])
        }
        Op::UnaryBackward(_) => same(name, inputs),
        Op::Cast(to) => {
            check::arity(name, inputs, 1)?;
            check::float(name, "x", &inputs[0])?;
            if !to.is_float() {
                return Err(Error::shape(
                    name,
                    format!("casts to float types, not {to:?} (u8 spikes come only from LIF)"),
                ));
            }
            Ok(vec![Meta::new(inputs[0].shape.clone(), *to)])
        }
        Op::MatMul {
            trans_a,
            trans_b,
            row_stride,
        } => {
            check::arity(name, inputs, 2)?;
            check::float(name, "a", &inputs[0])?;
            check::same_dtype(name, "a and b", &inputs[0], &inputs[1])?;
            let dims = MatMulDims::of(&inputs[0].shape, &inputs[1].shape, *trans_a, *trans_b)?;
            match *row_stride {
                0 => return Err(Error::shape(name, "row_stride must be at least 1")),
                1 => {}
                s if dims.batched || *trans_a => {
                    return Err(Error::shape(
                        name,
                        format!(
                            "row_stride {s} needs a rank-2 `a` that is not transposed, got {:?}{}",
                            inputs[0].shape,
                            if *trans_a { "ᵀ" } else { "" }
                        ),
                    ))
                }
                _ => {}
            }
            Ok(vec![Meta::new(dims.out_shape(), inputs[0].dtype)])
        }
        Op::Reduce(r) => {
            check::arity(name, inputs, 1)?;
            check::float(name, "x", &inputs[0])?;
            Ok(vec![Meta::new(
                r.out_shape(&inputs[0].shape),
                inputs[0].dtype,
            )])
        }
        Op::ReduceBackward(r, full) => {
            check::arity(name, inputs, 1)?;
            check::float(name, "g", &inputs[0])?;
            if r.out_shape(full) != inputs[0].shape {
                return Err(Error::shape(
                    name,
                    format!("gradient {:?} does not reduce {full:?}", inputs[0].shape),
                ));
            }
            Ok(vec![Meta::new(full.clone(), inputs[0].dtype)])
        }
        Op::Fill { meta, .. } => {
            check::arity(name, inputs, 0)?;
            Ok(vec![meta.clone()])
        }
        _ => Err(Error::graph(format!("{name} is not a basic op"))),
    }
}

pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let x = &node.inputs;
    let Some(gy) = og[0] else {
        return Ok(vec![None; x.len()]);
    };
    Ok(match &node.op {
        Op::Add => vec![Some(gy), Some(gy)],
        Op::Sub => vec![Some(gy), Some(g.scale(gy, -1.0)?)],
        Op::Mul => vec![Some(g.mul(gy, x[1])?), Some(g.mul(gy, x[0])?)],
        Op::AddBias => {
            let gb = g.sum_rows(gy)?;
            vec![Some(gy), Some(gb)]
        }
        Op::MulBroadcast => {
            let gx = g.push1(Op::MulBroadcast, &[gy, x[1]])?;
            let prod = g.mul(gy, x[0])?;
            let w_shape = g.shape(x[1])?.clone();
            let gw = if w_shape.dims() == [g.shape(x[0])?.last()] {
                g.sum_rows(prod)?
            } else {
                let s = g.sum(prod)?;
                g.reshape(s, w_shape)?
            };
            vec![Some(gx), Some(gw)]
        }
        Op::Scale(c) => vec![Some(g.scale(gy, *c)?)],
        Op::Unary(u) => vec![Some(g.push1(Op::UnaryBackward(*u), &[x[0], gy])?)],
        Op::StopGradient | Op::Fill { .. } => vec![None; x.len()],
        // the gradient of u8 spikes has the float type they are read in
        Op::Cast(_) if g.dtype(x[0])? == DType::U8 => vec![Some(gy)],
        Op::Cast(_) => vec![Some(g.cast(gy, g.dtype(x[0])?)?)],
        Op::MatMul {
            trans_a: ta,
            trans_b: tb,
            row_stride,
        } => {
            let (a, b) = (x[0], x[1]);
            let mm = |g: &mut Graph, l, r, ta, tb| g.matmul_t(l, r, ta, tb);
            // With strided rows (a, and so gy), the sum over them runs over the long batch.
            let s = *row_stride;
            let long = |g: &mut Graph, v| if s > 1 { spread_rows(g, v, s) } else { Ok(v) };
            let (ga, gb) = match (*ta, *tb) {
                (false, false) => {
                    let ga = g.matmul_strided(gy, b, false, true, s)?;
                    let (a, gy) = (long(g, a)?, long(g, gy)?);
                    (ga, mm(g, a, gy, true, false)?)
                }
                (false, true) => {
                    let ga = g.matmul_strided(gy, b, false, false, s)?;
                    let (a, gy) = (long(g, a)?, long(g, gy)?);
                    (ga, mm(g, gy, a, true, false)?)
                }
                (true, false) => (mm(g, b, gy, false, true)?, mm(g, a, gy, false, false)?),
                (true, true) => (mm(g, b, gy, true, true)?, mm(g, gy, a, true, true)?),
            };
            vec![Some(ga), Some(gb)]
        }
        Op::Reduce(r) => vec![Some(
            g.push1(Op::ReduceBackward(*r, g.shape(x[0])?.clone()), &[gy])?,
        )],
        op => return Err(Error::graph(format!("{} has no gradient rule", op.name()))),
    })
}

/// `x[R, C]` as the rows every `stride`-th of `[R·stride, C]`, zeros between them (one
/// pass: the gradient of taking the first of every `stride` rows).
fn spread_rows(g: &mut Graph, x: ValueId, stride: usize) -> Result<ValueId> {
    let shape = g.shape(x)?.clone();
    let (rows, cols) = (shape.at(0), shape.at(1));
    let x = g.reshape(x, [rows, 1, cols])?;
    let long = g.push1(
        Op::SliceBackward {
            axis: 1,
            start: 0,
            full: [rows, stride, cols].into(),
        },
        &[x],
    )?;
    g.reshape(long, [rows * stride, cols])
}

/// Builders for the basic ops.
impl Graph {
    /// a + b (same shape)
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.push1(Op::Add, &[a, b])
    }
    /// a − b (same shape)
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.push1(Op::Sub, &[a, b])
    }
    /// a ⊙ b (same shape)
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.push1(Op::Mul, &[a, b])
    }
    /// c · x
    pub fn scale(&mut self, x: ValueId, c: f64) -> Result<ValueId> {
        self.push1(Op::Scale(c), &[x])
    }
    /// x\[.., C\] + b\[C\]
    pub fn add_bias(&mut self, x: ValueId, b: ValueId) -> Result<ValueId> {
        self.push1(Op::AddBias, &[x, b])
    }
    /// x\[.., C\] ⊙ w\[C\] (or a scalar w)
    pub fn mul_broadcast(&mut self, x: ValueId, w: ValueId) -> Result<ValueId> {
        self.push1(Op::MulBroadcast, &[x, w])
    }
    /// f(x) for an elementwise function `u`
    pub fn unary(&mut self, u: Unary, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Unary(u), &[x])
    }
    /// max(x, 0)
    pub fn relu(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Relu, x)
    }
    /// ELU with alpha = 1
    pub fn elu(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Elu(1.0), x)
    }
    /// Exact (erf) GELU
    pub fn gelu(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Gelu, x)
    }
    /// a\[.., M, K\] · b\[.., K, N\] → \[.., M, N\]
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.matmul_t(a, b, false, false)
    }
    /// Matmul with either operand read transposed (see [`Op::MatMul`]).
    pub fn matmul_t(
        &mut self,
        a: ValueId,
        b: ValueId,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<ValueId> {
        self.matmul_strided(a, b, trans_a, trans_b, 1)
    }
    /// `matmul_t` whose `a` rows were taken every `row_stride`-th from a longer batch (see
    /// [`Op::MatMul`]).
    pub fn matmul_strided(
        &mut self,
        a: ValueId,
        b: ValueId,
        trans_a: bool,
        trans_b: bool,
        row_stride: usize,
    ) -> Result<ValueId> {
        self.push1(
            Op::MatMul {
                trans_a,
                trans_b,
                row_stride,
            },
            &[a, b],
        )
    }
    /// x\[R, K\] W\[K, N\] + b\[N\]
    pub fn linear(&mut self, x: ValueId, w: ValueId, b: Option<ValueId>) -> Result<ValueId> {
        self.linear_strided(x, w, b, 1)
    }
    /// `linear` of rows taken every `row_stride`-th from a batch `row_stride` times as long
    /// (the \[CLS\] rows of a token batch): the same values, and a weight gradient with the
    /// bits of the long batch's (see [`Op::MatMul`]).
    pub fn linear_strided(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: Option<ValueId>,
        row_stride: usize,
    ) -> Result<ValueId> {
        let y = self.matmul_strided(x, w, false, false, row_stride)?;
        match b {
            Some(b) => self.add_bias(y, b),
            None => Ok(y),
        }
    }
    /// Sum of every element → \[\]
    pub fn sum(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Reduce(Reduce::SumAll), &[x])
    }
    /// Mean of every element → \[\]
    pub fn mean(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Reduce(Reduce::MeanAll), &[x])
    }
    /// Sum over the last axis: [.., C] → [..].
    pub fn sum_last(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Reduce(Reduce::SumLast), &[x])
    }
    /// Mean over the last axis: [.., C] → [..].
    pub fn mean_last(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Reduce(Reduce::MeanLast), &[x])
    }
    /// Sum over every axis but the last: \[.., C\] → \[C\] (bias gradients).
    pub fn sum_rows(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Reduce(Reduce::SumRows), &[x])
    }
    /// x, with no gradient flowing back through it
    pub fn stop_gradient(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::StopGradient, &[x])
    }

    /// x converted to the float type `to` (rounded to nearest even; a no-op node when x is
    /// `to` already); its gradient is converted back. Half-precision storage (`BF16`, `F16`)
    /// computes in f32 in every op.
    pub fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId> {
        self.push1(Op::Cast(to), &[x])
    }
    /// `x` as `to`: `x` itself when it already is, else its cast.
    pub fn to_dtype(&mut self, x: ValueId, to: DType) -> Result<ValueId> {
        match self.dtype(x)? == to {
            true => Ok(x),
            false => self.cast(x, to),
        }
    }
    /// A tensor of `shape` and `dtype` with every element `value`
    pub fn fill(&mut self, value: f64, shape: impl Into<Shape>, dtype: DType) -> Result<ValueId> {
        self.push1(
            Op::Fill {
                value,
                meta: Meta::new(shape, dtype),
            },
            &[],
        )
    }
}
