//! `execute` of the CUDA backend: every `Op` mapped onto the kernels' launch contracts (the
//! header comment of each `kernels/*.cu`), with the CPU backend's semantics.
//!
//! Conventions: zero-work launches are skipped and the outputs the contracts name are
//! zero-filled; grids come from the sizes (`flat`, `warps`); every launch's error is checked;
//! scratch comes from the backend's arena (one `scratch` call per op). Inputs are located by
//! position from the front, so the GAT ops accept both the CSR-only and the CSR+CSC input lists
//! of their forward ops.

use super::{Arg, CudaBackend, CudaBuffer, PermMeta};
use crate::backend::{Backend, CpuBackend, View, ViewMut};
use crate::error::{Error, Result};
use crate::ops::{GatAttrs, InfoNceAttrs, LifConfig, Op, Reduce, Surrogate, Unary};
use crate::tensor::{DType, Shape, Storage};
use std::borrow::Cow;

type In<'a, 'b> = &'a [View<'b, CudaBuffer>];

const BLOCK: u32 = 256;

/// Flat grid: min(ceil(n/256), 65535), at least 1.
fn flat(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(BLOCK as usize).clamp(1, 65535) as u32, 1, 1)
}
/// Warp-per-item grid: ceil(items*32/256), clamped to [1, 65535].
fn warps(items: usize) -> (u32, u32, u32) {
    (
        (items * 32).div_ceil(BLOCK as usize).clamp(1, 65535) as u32,
        1,
        1,
    )
}

fn i32c(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Unsupported {
        backend: "cuda",
        what: format!("{op}: {what} = {v} exceeds the kernels' i32 sizes"),
    })
}

fn unsupported(op: &Op, what: impl Into<String>) -> Error {
    Error::Unsupported {
        backend: "cuda",
        what: format!("{}: {}", op.name(), what.into()),
    }
}

/// Kernel suffix and scalar builder of a float dtype.
#[derive(Clone, Copy)]
struct Ty {
    sfx: &'static str,
    dt: DType,
}
impl Ty {
    fn of(op: &Op, dt: DType) -> Result<Ty> {
        match dt {
            DType::F32 => Ok(Ty { sfx: "f32", dt }),
            DType::F64 => Ok(Ty { sfx: "f64", dt }),
            d => Err(unsupported(op, format!("{d:?} data"))),
        }
    }
    fn k(&self, base: &str) -> String {
        format!("{base}_{}", self.sfx)
    }
    /// A `T` scalar argument.
    fn s(&self, v: f64) -> Arg {
        if self.dt == DType::F32 {
            Arg::F(v as f32)
        } else {
            Arg::D(v)
        }
    }
    fn size(&self) -> usize {
        self.dt.size()
    }
}

fn surrogate(s: Surrogate) -> (i32, f64) {
    match s {
        Surrogate::ATan(a) => (0, a),
        Surrogate::Sigmoid(a) => (1, a),
        Surrogate::SuperSpike(a) => (2, a),
        Surrogate::Rectangular(a) => (3, a),
    }
}

/// (outer, axis length, inner) of `s` around `axis`.
fn split(s: &Shape, axis: usize) -> (usize, usize, usize) {
    let d = s.dims();
    (
        d[..axis].iter().product(),
        d[axis],
        d[axis + 1..].iter().product(),
    )
}

fn p(v: &View<CudaBuffer>) -> Arg {
    Arg::P(v.buf.ptr)
}

impl CudaBackend {
    /// Host view of an index input: the host copy kept by `write`, or a device→host copy.
    fn host_i32<'a>(&self, v: &'a View<CudaBuffer>) -> Result<Cow<'a, [i32]>> {
        let n = v.shape.numel();
        if let Some(Storage::I32(h)) = &v.buf.host {
            if h.len() >= n {
                return Ok(Cow::Borrowed(&h[..n]));
            }
        }
        if v.dtype != DType::I32 {
            return Err(Error::graph("an index input must be i32"));
        }
        Ok(Cow::Owned(self.download::<i32>(v.buf.ptr, n)?))
    }

    fn has_host(v: &View<CudaBuffer>) -> bool {
        v.buf.host.is_some()
    }

    pub(super) fn run_op(
        &self,
        op: &Op,
        inputs: In,
        outputs: &mut [ViewMut<CudaBuffer>],
    ) -> Result<()> {
        let outp: Vec<u64> = outputs.iter().map(|o| o.buf.ptr).collect();
        let outs: Vec<(Shape, DType)> =
            outputs.iter().map(|o| (o.shape.clone(), o.dtype)).collect();
        let r = self.dispatch(op, inputs, &outp, &outs);
        // Host copies of outputs: derived on the host for index-valued layout ops whose inputs
        // all have one (so e.g. a reshaped index tensor keeps its host copy), else dropped.
        let derive = r.is_ok()
            && outs.iter().any(|(_, d)| *d == DType::I32)
            && inputs.iter().all(Self::has_host)
            && !inputs.is_empty();
        let mut shadows: Option<Vec<Storage>> = None;
        if derive {
            shadows = host_layout(op, inputs, &outs);
        }
        for (i, o) in outputs.iter_mut().enumerate() {
            o.buf.set_host(
                shadows
                    .as_mut()
                    .map(|s| std::mem::replace(&mut s[i], Storage::I32(vec![]))),
            );
        }
        r
    }

    fn dispatch(&self, op: &Op, x: In, y: &[u64], ys: &[(Shape, DType)]) -> Result<()> {
        let name = op.name();
        match op {
            Op::Add | Op::Sub | Op::Mul | Op::AddBias | Op::MulBroadcast => {
                let t = Ty::of(op, ys[0].1)?;
                let n = ys[0].0.numel();
                if n == 0 {
                    return Ok(());
                }
                let code = match op {
                    Op::Add | Op::AddBias => 0,
                    Op::Sub => 1,
                    _ => 2,
                };
                let nb = x[1].shape.numel();
                if nb == 0 {
                    return Err(Error::shape(name, "empty operand"));
                }
                self.launch(
                    "elementwise",
                    &t.k("ew_binary"),
                    flat(n),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "n", n)?),
                        Arg::I(i32c(name, "n", nb)?),
                        Arg::I(code),
                    ],
                )
            }
            Op::Scale(c) => {
                let t = Ty::of(op, ys[0].1)?;
                let n = ys[0].0.numel();
                if n == 0 {
                    return Ok(());
                }
                self.launch(
                    "elementwise",
                    &t.k("ew_axpby"),
                    flat(n),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(0),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "n", n)?),
                        t.s(*c),
                        t.s(0.0),
                    ],
                )
            }
            Op::Unary(u) => self.unary(op, *u, x, None, y[0], ys),
            Op::UnaryBackward(u) => self.unary(op, *u, &x[..1], Some(&x[1]), y[0], ys),
            Op::StopGradient | Op::Reshape(_) => {
                let bytes = ys[0].0.numel() * ys[0].1.size();
                self.copy_d2d(y[0], x[0].buf.ptr, bytes)
            }
            Op::Fill { value, .. } => {
                let t = Ty::of(op, ys[0].1)?;
                let n = ys[0].0.numel();
                if n == 0 {
                    return Ok(());
                }
                self.launch(
                    "elementwise",
                    &t.k("ew_fill"),
                    flat(n),
                    BLOCK,
                    &[Arg::P(y[0]), Arg::I(i32c(name, "n", n)?), t.s(*value)],
                )
            }
            Op::MatMul { trans_a, trans_b } => self.matmul(op, x, *trans_a, *trans_b, y[0], ys),
            Op::Reduce(r) => self.reduce(op, *r, x, y[0], ys),
            Op::ReduceBackward(r, full) => {
                let t = Ty::of(op, ys[0].1)?;
                let n = full.numel();
                if n == 0 {
                    return Ok(());
                }
                let c = full.last().max(1);
                let (ng, inner, scale) = match r {
                    Reduce::SumLast => (n / c, c, 1.0),
                    Reduce::MeanLast => (n / c, c, 1.0 / c as f64),
                    Reduce::SumAll => (1, 1, 1.0),
                    Reduce::MeanAll => (1, 1, 1.0 / n as f64),
                    Reduce::SumRows => (c, 1, 1.0),
                };
                self.launch(
                    "elementwise",
                    &t.k("ew_broadcast"),
                    flat(n),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "n", n)?),
                        Arg::I(i32c(name, "ng", ng)?),
                        Arg::I(i32c(name, "inner", inner)?),
                        t.s(scale),
                    ],
                )
            }
            Op::Permute(perm) => self.permute(op, perm, x, y[0], ys),
            Op::Concat { axis } => {
                let (outer, total, inner) = split(&ys[0].0, *axis);
                let mut off = 0usize;
                for v in x {
                    let w = v.shape.dim(*axis) * inner;
                    self.copy_cols(
                        op,
                        ys[0].1,
                        v.buf.ptr,
                        y[0],
                        outer,
                        w,
                        (w, 0),
                        (total * inner, off * inner),
                    )?;
                    off += v.shape.dim(*axis);
                }
                Ok(())
            }
            Op::Slice { axis, start, len } => {
                let (outer, d, inner) = split(x[0].shape, *axis);
                self.copy_cols(
                    op,
                    ys[0].1,
                    x[0].buf.ptr,
                    y[0],
                    outer,
                    len * inner,
                    (d * inner, start * inner),
                    (len * inner, 0),
                )
            }
            Op::SliceBackward { axis, start, full } => {
                let (outer, d, inner) = split(full, *axis);
                let len = x[0].shape.dim(*axis);
                self.memset0(y[0], full.numel() * ys[0].1.size())?;
                self.copy_cols(
                    op,
                    ys[0].1,
                    x[0].buf.ptr,
                    y[0],
                    outer,
                    len * inner,
                    (len * inner, 0),
                    (d * inner, start * inner),
                )
            }
            Op::Gather => {
                let t = Ty::of(op, ys[0].1)?;
                let (rows, c) = (x[0].shape.dim(0), x[0].shape.dim(1));
                let k = x[1].shape.numel();
                if Self::has_host(&x[1]) {
                    check_indices(name, &self.host_i32(&x[1])?, rows)?;
                }
                if k * c == 0 {
                    return Ok(());
                }
                self.launch(
                    "elementwise",
                    &t.k("embed_fwd"),
                    flat(k * c),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "K", k)?),
                        Arg::I(i32c(name, "C", c)?),
                        Arg::I(i32c(name, "rows", rows)?),
                    ],
                )
            }
            Op::ScatterAdd { rows } => {
                let t = Ty::of(op, ys[0].1)?;
                let c = x[0].shape.dim(1);
                let idx = self.host_i32(&x[1])?;
                check_indices(name, &idx, *rows)?;
                if rows * c == 0 {
                    return Ok(());
                }
                // Stable counting sort: row r sums its positions in increasing k (as the CPU).
                let (vptr, perm) = csr_by_key(&idx, *rows, |v| Some(v as usize));
                let s = self.scratch(&[vptr.len() * 4, perm.len() * 4])?;
                self.upload(s[0], &vptr)?;
                self.upload(s[1], &perm)?;
                self.launch(
                    "elementwise",
                    &t.k("embed_bwd"),
                    flat(rows * c),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(s[1]),
                        Arg::P(s[0]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "rows", *rows)?),
                        Arg::I(i32c(name, "C", c)?),
                    ],
                )
            }
            Op::Dropout { p: prob } | Op::DropoutBackward { p: prob } => {
                let t = Ty::of(op, ys[0].1)?;
                let n = ys[0].0.numel();
                if n == 0 {
                    return Ok(());
                }
                self.launch(
                    "elementwise",
                    &t.k("dropout_hash"),
                    flat(n),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "n", n)?),
                        p(&x[1]),
                        Arg::U(crate::util::rng::hash_threshold(*prob)),
                        t.s(1.0 / (1.0 - prob)),
                    ],
                )
            }
            Op::LayerNorm { eps } => {
                let t = Ty::of(op, ys[0].1)?;
                let (r, c) = (x[0].shape.rows(), x[0].shape.last());
                if r == 0 {
                    return Ok(());
                }
                self.launch(
                    "norm",
                    &t.k("layernorm_fwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        p(&x[2]),
                        Arg::P(y[0]),
                        Arg::P(y[1]),
                        Arg::P(y[2]),
                        Arg::I(i32c(name, "R", r)?),
                        Arg::I(i32c(name, "C", c)?),
                        t.s(*eps),
                    ],
                )
            }
            Op::LayerNormBackward { .. } => {
                // g, x, gamma, mean, rstd -> gx, ggamma, gbeta
                let t = Ty::of(op, ys[0].1)?;
                let (r, c) = (x[1].shape.rows(), x[1].shape.last());
                if r == 0 {
                    self.memset0(y[1], c * t.size())?;
                    return self.memset0(y[2], c * t.size());
                }
                let (ri, ci) = (i32c(name, "R", r)?, i32c(name, "C", c)?);
                self.launch(
                    "norm",
                    &t.k("layernorm_bwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[1]),
                        p(&x[0]),
                        p(&x[2]),
                        p(&x[3]),
                        p(&x[4]),
                        Arg::P(y[0]),
                        Arg::I(ri),
                        Arg::I(ci),
                    ],
                )?;
                if c == 0 {
                    return Ok(());
                }
                let (rpc, nchunks) = chunks(r);
                let s = self.scratch(&[2 * nchunks * c * t.size()])?;
                self.launch(
                    "norm",
                    &t.k("layernorm_bwd_params_partial"),
                    (c.div_ceil(256).min(65535) as u32, nchunks as u32, 1),
                    BLOCK,
                    &[
                        p(&x[1]),
                        p(&x[0]),
                        p(&x[3]),
                        p(&x[4]),
                        Arg::P(s[0]),
                        Arg::I(ri),
                        Arg::I(ci),
                        Arg::I(rpc as i32),
                    ],
                )?;
                self.launch(
                    "norm",
                    &t.k("layernorm_bwd_params_final"),
                    flat(c),
                    BLOCK,
                    &[
                        Arg::P(s[0]),
                        Arg::P(y[1]),
                        Arg::P(y[2]),
                        Arg::I(nchunks as i32),
                        Arg::I(ci),
                    ],
                )
            }
            Op::L2Normalize { eps } => {
                let t = Ty::of(op, ys[0].1)?;
                let (r, c) = (x[0].shape.rows(), x[0].shape.last());
                if r == 0 {
                    return Ok(());
                }
                self.launch(
                    "norm",
                    &t.k("l2norm_fwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(y[0]),
                        Arg::P(y[1]),
                        Arg::I(i32c(name, "R", r)?),
                        Arg::I(i32c(name, "C", c)?),
                        t.s(*eps),
                    ],
                )
            }
            Op::L2NormalizeBackward { eps } => {
                // g, y, norm -> gx
                let t = Ty::of(op, ys[0].1)?;
                let (r, c) = (x[1].shape.rows(), x[1].shape.last());
                if r == 0 {
                    return Ok(());
                }
                self.launch(
                    "norm",
                    &t.k("l2norm_bwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        p(&x[2]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "R", r)?),
                        Arg::I(i32c(name, "C", c)?),
                        t.s(*eps),
                    ],
                )
            }
            Op::MaskedSoftmax => {
                // x[B, G, L], keep[B, L]
                let t = Ty::of(op, ys[0].1)?;
                let d = x[0].shape.dims();
                let (r, c) = (x[0].shape.rows(), x[0].shape.last());
                let g = if d.len() >= 3 { d[d.len() - 2] } else { 1 };
                if r == 0 || c == 0 {
                    return Ok(());
                }
                self.launch(
                    "norm",
                    &t.k("softmax_fwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "R", r)?),
                        Arg::I(i32c(name, "C", c)?),
                        Arg::I(i32c(name, "G", g.max(1))?),
                        t.s(1.0),
                    ],
                )
            }
            Op::MaskedSoftmaxBackward => {
                // g, y -> gx
                let t = Ty::of(op, ys[0].1)?;
                let (r, c) = (x[1].shape.rows(), x[1].shape.last());
                if r == 0 || c == 0 {
                    return Ok(());
                }
                self.launch(
                    "norm",
                    &t.k("softmax_bwd"),
                    warps(r),
                    BLOCK,
                    &[
                        p(&x[1]),
                        p(&x[0]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "R", r)?),
                        Arg::I(i32c(name, "C", c)?),
                        t.s(1.0),
                    ],
                )
            }
            Op::Lif(cfg) => self.lif_fwd(op, cfg, x, y, ys),
            Op::LifBackward { cfg, has_gv, .. } => self.lif_bwd(op, cfg, *has_gv, x, y, ys),
            Op::Gat(at) => self.gat_fwd(op, at, x, y, ys),
            Op::GatAlpha(at) => self.gat_alpha(op, at, x, y, ys),
            Op::GatBackward(at) | Op::GatAlphaBackward(at) => self.gat_bwd(op, at, x, y, ys),
            Op::Aggregate => self.aggregate(op, x, y, ys),
            Op::AggregateBackward => self.aggregate_bwd(op, x, y, ys),
            Op::InfoNce(at) => self.infonce_fwd(op, at, x, y, ys),
            Op::InfoNceBackward(at) => self.infonce_bwd(op, at, x, y, ys),
            Op::SegmentMean { segments } => self.segment_fwd(op, *segments, x, y, ys),
            Op::SegmentMeanBackward => {
                // g_y[S,C], seg[P], count[S] -> gx[P,C]
                let t = Ty::of(op, ys[0].1)?;
                let (pn, c) = (ys[0].0.dim(0), ys[0].0.last());
                let s = x[0].shape.dim(0);
                if pn * c == 0 {
                    return Ok(());
                }
                self.launch(
                    "segment",
                    &t.k("segment_mean_bwd"),
                    flat(pn * c),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(&x[1]),
                        p(&x[2]),
                        Arg::P(y[0]),
                        Arg::I(i32c(name, "P", pn)?),
                        Arg::I(i32c(name, "C", c)?),
                        Arg::I(i32c(name, "S", s)?),
                    ],
                )
            }
            Op::ClipScale { max_norm } => {
                let t = Ty::of(op, ys[0].1)?;
                let gs: Vec<usize> = x
                    .iter()
                    .map(|v| v.shape.numel().div_ceil(2048).clamp(1, 256))
                    .collect();
                let total: usize = gs.iter().sum();
                let s = self.scratch(&[total.max(1) * t.size()])?;
                let mut off = 0usize;
                for (v, &g) in x.iter().zip(&gs) {
                    self.launch(
                        "adamw",
                        &t.k("sqnorm_partial"),
                        (g as u32, 1, 1),
                        BLOCK,
                        &[
                            p(v),
                            Arg::I(i32c(name, "n", v.shape.numel())?),
                            Arg::P(s[0] + (off * t.size()) as u64),
                        ],
                    )?;
                    off += g;
                }
                self.launch(
                    "adamw",
                    &t.k("clip_coef"),
                    (1, 1, 1),
                    BLOCK,
                    &[
                        Arg::P(s[0]),
                        Arg::I(total as i32),
                        Arg::D(*max_norm),
                        Arg::P(y[0]),
                        Arg::P(y[1]),
                    ],
                )
            }
            Op::AdamW(cfg) => {
                // outputs (in place): p, m, v; inputs: g, clip_scale[], hyper[2] = (lr, step)
                let t = Ty::of(op, ys[0].1)?;
                let n = ys[0].0.numel();
                if n == 0 {
                    return Ok(());
                }
                let s = self.scratch(&[3 * t.size()])?;
                self.launch(
                    "adamw",
                    &t.k("adamw_coefs"),
                    (1, 1, 1),
                    32,
                    &[
                        p(&x[2]),
                        Arg::P(s[0]),
                        Arg::D(cfg.beta1),
                        Arg::D(cfg.beta2),
                        Arg::D(cfg.weight_decay),
                    ],
                )?;
                self.launch(
                    "adamw",
                    &t.k("adamw_step"),
                    flat(n),
                    BLOCK,
                    &[
                        Arg::P(y[0]),
                        p(&x[0]),
                        Arg::P(y[1]),
                        Arg::P(y[2]),
                        Arg::I(i32c(name, "n", n)?),
                        Arg::P(s[0]),
                        t.s(cfg.beta1),
                        t.s(cfg.beta2),
                        t.s(cfg.eps),
                        p(&x[1]),
                    ],
                )
            }
        }
    }

    fn unary(
        &self,
        op: &Op,
        u: Unary,
        x: In,
        g: Option<&View<CudaBuffer>>,
        y: u64,
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        let n = ys[0].0.numel();
        if n == 0 {
            return Ok(());
        }
        let ni = Arg::I(i32c(op.name(), "n", n)?);
        if let Unary::Spike {
            surrogate: sg,
            smooth,
        } = u
        {
            let (kind, alpha) = surrogate(sg);
            return match g {
                None => self.launch(
                    "elementwise",
                    &t.k("spike_fwd"),
                    flat(n),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(y),
                        ni,
                        Arg::I(kind),
                        t.s(alpha),
                        Arg::I(smooth as i32),
                    ],
                ),
                Some(g) => self.launch(
                    "elementwise",
                    &t.k("spike_bwd"),
                    flat(n),
                    BLOCK,
                    &[p(&x[0]), p(g), Arg::P(y), ni, Arg::I(kind), t.s(alpha)],
                ),
            };
        }
        let (kind, param) = match u {
            Unary::Relu => (0, 0.0),
            Unary::Elu(a) => (1, a),
            Unary::Gelu => (2, 0.0),
            Unary::LeakyRelu(s) => (3, s),
            Unary::Exp => (6, 0.0),
            Unary::Spike { .. } => unreachable!("handled above"),
        };
        match g {
            None => self.launch(
                "elementwise",
                &t.k("act_fwd"),
                flat(n),
                BLOCK,
                &[p(&x[0]), Arg::P(y), ni, Arg::I(kind), t.s(param)],
            ),
            Some(g) => self.launch(
                "elementwise",
                &t.k("act_bwd"),
                flat(n),
                BLOCK,
                &[p(&x[0]), p(g), Arg::P(y), ni, Arg::I(kind), t.s(param)],
            ),
        }
    }

    /// Row-major (batched) matmul through cuBLAS: C^T = op(B)^T op(A)^T in column-major terms,
    /// i.e. the operands swapped.
    fn matmul(
        &self,
        op: &Op,
        x: In,
        ta: bool,
        tb: bool,
        y: u64,
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let (sa, sb) = (x[0].shape, x[1].shape);
        let r = sa.rank();
        let batch = if r == 3 { sa.dim(0) } else { 1 };
        let (ar, ac) = (sa.dim(r - 2), sa.dim(r - 1));
        let (br, bc) = (sb.dim(r - 2), sb.dim(r - 1));
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let n = if tb { br } else { bc };
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return self.memset0(y, batch * m * n * t.size());
        }
        let blas = self.blas()?;
        let h = *blas.handle();
        let opa = if tb { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let opb = if ta { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (mi, ni, ki) = (
            i32c(name, "n", n)?,
            i32c(name, "m", m)?,
            i32c(name, "k", k)?,
        );
        let (lda, ldb, ldc) = (
            i32c(name, "ld", bc.max(1))?,
            i32c(name, "ld", ac.max(1))?,
            i32c(name, "ld", n)?,
        );
        let (sta, stb, stc) = ((br * bc) as i64, (ar * ac) as i64, (m * n) as i64);
        let bi = i32c(name, "batch", batch)?;
        let (pa, pb) = (x[1].buf.ptr, x[0].buf.ptr);
        // SAFETY: pointers/leading dimensions/strides describe the in-bounds row-major operands
        // checked by the shape rule; the handle is bound to this backend's stream.
        let res = unsafe {
            if t.dt == DType::F32 {
                let (one, zero) = (1.0f32, 0.0f32);
                cudarc::cublas::result::sgemm_strided_batched(
                    h,
                    opa,
                    opb,
                    mi,
                    ni,
                    ki,
                    &one,
                    pa as *const f32,
                    lda,
                    sta,
                    pb as *const f32,
                    ldb,
                    stb,
                    &zero,
                    y as *mut f32,
                    ldc,
                    stc,
                    bi,
                )
            } else {
                let (one, zero) = (1.0f64, 0.0f64);
                cudarc::cublas::result::dgemm_strided_batched(
                    h,
                    opa,
                    opb,
                    mi,
                    ni,
                    ki,
                    &one,
                    pa as *const f64,
                    lda,
                    sta,
                    pb as *const f64,
                    ldb,
                    stb,
                    &zero,
                    y as *mut f64,
                    ldc,
                    stc,
                    bi,
                )
            }
        };
        res.map_err(|e| super::cuda_err("cuBLAS gemm_strided_batched", e))
    }

    fn reduce(&self, op: &Op, r: Reduce, x: In, y: u64, ys: &[(Shape, DType)]) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let n = x[0].shape.numel();
        let c = x[0].shape.last().max(1);
        match r {
            Reduce::SumLast | Reduce::MeanLast => {
                let rows = ys[0].0.numel();
                if rows == 0 {
                    return Ok(());
                }
                let scale = if r == Reduce::MeanLast {
                    1.0 / c as f64
                } else {
                    1.0
                };
                let cc = if n == 0 { 0 } else { c };
                self.launch(
                    "reduce",
                    &t.k("sum_last"),
                    warps(rows),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(y),
                        Arg::I(i32c(name, "R", rows)?),
                        Arg::I(i32c(name, "C", cc)?),
                        t.s(scale),
                    ],
                )
            }
            Reduce::SumAll | Reduce::MeanAll => {
                let g = n.div_ceil(2048).clamp(1, 1024);
                let s = self.scratch(&[g * t.size()])?;
                self.launch(
                    "reduce",
                    &t.k("sum_all_partial"),
                    (g as u32, 1, 1),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(0),
                        Arg::P(s[0]),
                        Arg::I(i32c(name, "n", n)?),
                    ],
                )?;
                let scale = if r == Reduce::MeanAll {
                    1.0 / n.max(1) as f64
                } else {
                    1.0
                };
                self.launch(
                    "reduce",
                    &t.k("sum_all_final"),
                    (1, 1, 1),
                    BLOCK,
                    &[Arg::P(s[0]), Arg::P(y), Arg::I(g as i32), t.s(scale)],
                )
            }
            Reduce::SumRows => {
                let rows = n / c;
                let cl = ys[0].0.numel();
                if cl == 0 {
                    return Ok(());
                }
                if rows == 0 {
                    return self.memset0(y, cl * t.size());
                }
                let (rpc, nchunks) = chunks(rows);
                let s = self.scratch(&[nchunks * cl * t.size()])?;
                let (ri, ci) = (i32c(name, "R", rows)?, i32c(name, "C", cl)?);
                self.launch(
                    "reduce",
                    &t.k("colsum_partial"),
                    (cl.div_ceil(256).min(65535) as u32, nchunks as u32, 1),
                    BLOCK,
                    &[
                        p(&x[0]),
                        Arg::P(s[0]),
                        Arg::I(ri),
                        Arg::I(ci),
                        Arg::I(rpc as i32),
                    ],
                )?;
                self.launch(
                    "reduce",
                    &t.k("colsum_final"),
                    flat(cl),
                    BLOCK,
                    &[
                        Arg::P(s[0]),
                        Arg::P(y),
                        Arg::I(nchunks as i32),
                        Arg::I(ci),
                        t.s(1.0),
                    ],
                )
            }
        }
    }

    fn permute(&self, op: &Op, perm: &[usize], x: In, y: u64, ys: &[(Shape, DType)]) -> Result<()> {
        let n = ys[0].0.numel();
        let size = ys[0].1.size();
        let r = perm.len();
        if n == 0 {
            return Ok(());
        }
        if r <= 1 {
            return self.copy_d2d(y, x[0].buf.ptr, n * size);
        }
        if r > 6 {
            return Err(unsupported(op, format!("rank {r} > 6")));
        }
        let ind = x[0].shape.dims();
        let mut in_stride = vec![1i64; r];
        for i in (0..r - 1).rev() {
            in_stride[i] = in_stride[i + 1] * ind[i + 1] as i64;
        }
        let mut m = PermMeta {
            rank: r as i32,
            ..Default::default()
        };
        for (i, &pa) in perm.iter().enumerate() {
            m.dims[i] = i32c(op.name(), "dim", ind[pa])?;
            m.stride[i] = in_stride[pa];
        }
        let k = if size == 8 {
            "permute_b8"
        } else {
            "permute_b4"
        };
        self.launch(
            "elementwise",
            k,
            flat(n),
            BLOCK,
            &[p(&x[0]), Arg::P(y), Arg::L(n as i64), Arg::Perm(m)],
        )
    }

    /// copy_cols: `dst[r*ld_d + off_d + j] = src[r*ld_s + off_s + j]` for r < rows, j < w.
    #[allow(clippy::too_many_arguments)]
    fn copy_cols(
        &self,
        op: &Op,
        dt: DType,
        src: u64,
        dst: u64,
        rows: usize,
        w: usize,
        (ld_s, off_s): (usize, usize),
        (ld_d, off_d): (usize, usize),
    ) -> Result<()> {
        if rows * w == 0 {
            return Ok(());
        }
        let k = match dt {
            DType::F32 => "copy_cols_f32",
            DType::F64 => "copy_cols_f64",
            DType::I32 => "copy_cols_i32",
        };
        let name = op.name();
        self.launch(
            "elementwise",
            k,
            flat(rows * w),
            BLOCK,
            &[
                Arg::P(src),
                Arg::P(dst),
                Arg::I(i32c(name, "rows", rows)?),
                Arg::I(i32c(name, "width", w)?),
                Arg::I(i32c(name, "ld", ld_s)?),
                Arg::I(i32c(name, "offset", off_s)?),
                Arg::I(i32c(name, "ld", ld_d)?),
                Arg::I(i32c(name, "offset", off_d)?),
                Arg::I(0),
            ],
        )
    }

    fn lif_fwd(
        &self,
        op: &Op,
        cfg: &LifConfig,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        validate_lif(op.name(), cfg)?;
        let (tn, n) = (x[0].shape.dim(0), x[0].shape.dim(1));
        if tn * n == 0 {
            return Ok(());
        }
        let (kind, alpha) = surrogate(cfg.surrogate);
        let tau_ptr = if cfg.learnable_tau { x[1].buf.ptr } else { 0 };
        self.launch(
            "lif",
            &t.k("lif_fwd"),
            flat(n),
            BLOCK,
            &[
                p(&x[0]),
                Arg::P(y[0]),
                Arg::P(y[1]),
                Arg::P(y[2]),
                Arg::I(i32c(op.name(), "T", tn)?),
                Arg::I(i32c(op.name(), "N", n)?),
                Arg::P(tau_ptr),
                t.s(cfg.tau),
                t.s(cfg.v_th),
                t.s(cfg.v_reset.unwrap_or(0.0)),
                Arg::I(cfg.v_reset.is_some() as i32),
                Arg::I(cfg.decay_input as i32),
                Arg::I(cfg.smooth as i32),
                Arg::I(kind),
                t.s(alpha),
            ],
        )
    }

    /// inputs: h (, gS) (, gV) (, tau); has_gs is what remains of the input count (so both
    /// the `{cfg, has_gv}` and the `{cfg, has_gs, has_gv}` forms of the op are served).
    fn lif_bwd(
        &self,
        op: &Op,
        cfg: &LifConfig,
        has_gv: bool,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        validate_lif(name, cfg)?;
        let learn = cfg.learnable_tau as usize;
        let has_gs = x.len() == 2 + has_gv as usize + learn;
        let mut k = 1;
        let gs = if has_gs {
            k += 1;
            x[k - 1].buf.ptr
        } else {
            0
        };
        let gv = if has_gv {
            k += 1;
            x[k - 1].buf.ptr
        } else {
            0
        };
        let tau_ptr = if cfg.learnable_tau { x[k].buf.ptr } else { 0 };
        let (tn, n) = (x[0].shape.dim(0), x[0].shape.dim(1));
        if tn * n == 0 {
            if cfg.learnable_tau {
                self.memset0(y[1], t.size())?;
            }
            return Ok(());
        }
        // One thread per neuron; capped at 1024 blocks only when the per-block dL/dtau partials
        // must be reproducible (learnable tau), since a capped grid halves the memory parallelism.
        let g = if cfg.learnable_tau {
            n.div_ceil(256).clamp(1, 1024)
        } else {
            flat(n).0 as usize
        };
        let part = if cfg.learnable_tau {
            // f64 partials: dL/dtau sums T·N terms of both signs (kernels/lif.cu).
            self.scratch(&[g * std::mem::size_of::<f64>()])?[0]
        } else {
            0
        };
        let (kind, alpha) = surrogate(cfg.surrogate);
        self.launch(
            "lif",
            &t.k("lif_bwd"),
            (g as u32, 1, 1),
            BLOCK,
            &[
                p(&x[0]),
                Arg::P(gs),
                Arg::P(gv),
                Arg::P(y[0]),
                Arg::P(part),
                Arg::I(i32c(name, "T", tn)?),
                Arg::I(i32c(name, "N", n)?),
                Arg::P(tau_ptr),
                t.s(cfg.tau),
                t.s(cfg.v_th),
                t.s(cfg.v_reset.unwrap_or(0.0)),
                Arg::I(cfg.v_reset.is_some() as i32),
                Arg::I(cfg.decay_input as i32),
                Arg::I(cfg.detach_reset as i32),
                Arg::I(kind),
                t.s(alpha),
                Arg::I(cfg.smooth as i32),
            ],
        )?;
        if cfg.learnable_tau {
            self.launch(
                "lif",
                &t.k("lif_gtau_reduce"),
                (1, 1, 1),
                BLOCK,
                &[Arg::P(part), Arg::I(g as i32), Arg::P(y[1])],
            )?;
        }
        Ok(())
    }

    /// Validates a CSR (and CSC) on the host when the index inputs have host copies, once per
    /// upload: the O(E) host pass cost more than the GAT kernels themselves on an H200.
    fn check_graph(
        &self,
        op: &'static str,
        n: usize,
        row_ptr: &View<CudaBuffer>,
        src: &View<CudaBuffer>,
        csc: Option<(&View<CudaBuffer>, &View<CudaBuffer>)>,
    ) -> Result<()> {
        if !(Self::has_host(row_ptr) && Self::has_host(src)) {
            return Ok(());
        }
        let csc_stamps = csc.map_or((0, 0), |(cp, ce)| (cp.buf.stamp, ce.buf.stamp));
        // The edge count is part of the key: the same buffers can be viewed at another length.
        let key = [
            n as u64,
            src.shape.numel() as u64,
            row_ptr.buf.stamp,
            src.buf.stamp,
            csc_stamps.0,
            csc_stamps.1,
        ];
        let mut seen = self
            .checked_graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A check with the CSC also covers the same CSR without it.
        if seen
            .iter()
            .any(|k| k[..4] == key[..4] && (csc.is_none() || k[4..] == key[4..]))
        {
            return Ok(());
        }
        let rp = self.host_i32(row_ptr)?;
        let sr = self.host_i32(src)?;
        validate_ptr(op, "row_ptr", n, &rp, sr.len())?;
        if let Some(k) = sr.iter().position(|&s| s < 0 || s as usize >= n) {
            return Err(Error::invalid(
                op,
                format!("src[{k}] = {} is not a node in 0..{n}", sr[k]),
            ));
        }
        if let Some((cp, ce)) = csc {
            if Self::has_host(cp) && Self::has_host(ce) {
                let cp = self.host_i32(cp)?;
                let ce = self.host_i32(ce)?;
                validate_ptr(op, "col_ptr", n, &cp, ce.len())?;
                for j in 0..n {
                    for q in cp[j] as usize..cp[j + 1] as usize {
                        let k = ce[q];
                        if k < 0 || k as usize >= sr.len() || sr[k as usize] as usize != j {
                            return Err(Error::invalid(
                                op,
                                format!("col_edge[{q}] = {k} is not an edge out of node {j}"),
                            ));
                        }
                    }
                }
            }
        }
        if seen.len() >= 16 {
            seen.remove(0);
        }
        seen.push(key);
        Ok(())
    }

    /// el, er [N,H] into scratch.
    fn gat_el_er(
        &self,
        t: Ty,
        z: &View<CudaBuffer>,
        a_src: u64,
        a_dst: u64,
        el: u64,
        er: u64,
    ) -> Result<()> {
        let d = z.shape.dims();
        let (n, h, f) = (d[0], d[1], d[2]);
        self.launch(
            "gat",
            &t.k("gat_el_er"),
            warps(n * h),
            BLOCK,
            &[
                p(z),
                Arg::P(a_src),
                Arg::P(a_dst),
                Arg::P(el),
                Arg::P(er),
                Arg::I(n as i32),
                Arg::I(h as i32),
                Arg::I(f as i32),
            ],
        )
    }

    fn gat_fwd(
        &self,
        op: &Op,
        at: &GatAttrs,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let eb = at.edge_bias as usize;
        let d = x[0].shape.dims();
        let (n, h, f) = (d[0], d[1], d[2]);
        let (rp, sr) = (&x[3 + eb], &x[4 + eb]);
        self.check_graph(name, n, rp, sr, None)?;
        if n * h == 0 {
            return Ok(());
        }
        i32c(name, "N*H*F", n * h * f.max(1))?;
        let s = self.scratch(&[n * h * t.size(), n * h * t.size()])?;
        self.gat_el_er(t, &x[0], x[1].buf.ptr, x[2].buf.ptr, s[0], s[1])?;
        let be = if at.edge_bias { x[3].buf.ptr } else { 0 };
        self.launch(
            "gat",
            &t.k("gat_fwd"),
            warps(n * h),
            BLOCK,
            &[
                p(&x[0]),
                Arg::P(s[0]),
                Arg::P(s[1]),
                Arg::P(be),
                p(rp),
                p(sr),
                Arg::P(y[0]),
                Arg::P(y[1]),
                Arg::I(n as i32),
                Arg::I(h as i32),
                Arg::I(f as i32),
                t.s(at.negative_slope),
            ],
        )
    }

    fn gat_alpha(
        &self,
        op: &Op,
        at: &GatAttrs,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        // z, a_src, a_dst (, be), lse, row_ptr, src -> alpha[E,H]
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let eb = at.edge_bias as usize;
        let d = x[0].shape.dims();
        let (n, h) = (d[0], d[1]);
        let (lse, rp, sr) = (&x[3 + eb], &x[4 + eb], &x[5 + eb]);
        self.check_graph(name, n, rp, sr, None)?;
        let e = sr.shape.numel();
        if e * h == 0 || n == 0 {
            return Ok(());
        }
        i32c(name, "E*H", e * h)?;
        let s = self.scratch(&[n * h * t.size(), n * h * t.size()])?;
        self.gat_el_er(t, &x[0], x[1].buf.ptr, x[2].buf.ptr, s[0], s[1])?;
        let be = if at.edge_bias { x[3].buf.ptr } else { 0 };
        self.launch(
            "gat",
            &t.k("gat_alpha_fwd"),
            flat(e * h),
            BLOCK,
            &[
                Arg::P(s[0]),
                Arg::P(s[1]),
                Arg::P(be),
                p(lse),
                p(rp),
                p(sr),
                Arg::P(y[0]),
                Arg::I(n as i32),
                Arg::I(e as i32),
                Arg::I(h as i32),
                t.s(at.negative_slope),
            ],
        )
    }

    /// GatBackward (g_out, z, a_src, a_dst (, be), out, lse, row_ptr, src, col_ptr, col_edge)
    /// and GatAlphaBackward (g_alpha, alpha, z, a_src, a_dst (, be), row_ptr, src, col_ptr,
    /// col_edge) → gz, g_a_src, g_a_dst (, g_be). gpre doubles as g_be.
    fn gat_bwd(
        &self,
        op: &Op,
        at: &GatAttrs,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let alpha_mode = matches!(op, Op::GatAlphaBackward(_));
        let eb = at.edge_bias as usize;
        let (zi, gi) = if alpha_mode { (2, 5 + eb) } else { (1, 6 + eb) };
        let z = &x[zi];
        let (a_src, a_dst) = (x[zi + 1].buf.ptr, x[zi + 2].buf.ptr);
        let be = if at.edge_bias { x[zi + 3].buf.ptr } else { 0 };
        let (rp, sr, cp, ce) = (&x[gi], &x[gi + 1], &x[gi + 2], &x[gi + 3]);
        let d = z.shape.dims();
        let (n, h, f) = (d[0], d[1], d[2]);
        let e = sr.shape.numel();
        let hf = h * f;
        self.check_graph(name, n, rp, sr, Some((cp, ce)))?;
        if n * h == 0 {
            self.memset0(y[1], hf * t.size())?;
            self.memset0(y[2], hf * t.size())?;
            return Ok(());
        }
        i32c(name, "N*H*F", n * hf)?;
        i32c(name, "E*H", e * h)?;
        let (rpc, nchunks) = chunks(n);
        let nh = n * h * t.size();
        let eh = e * h * t.size();
        // el, er, ger, gel, alpha (forward mode), gpre (without edge bias), part
        let s = self.scratch(&[nh, nh, nh, nh, eh, eh, 2 * nchunks * hf * t.size()])?;
        let (el, er, ger, gel) = (s[0], s[1], s[2], s[3]);
        let gpre = if at.edge_bias { y[3] } else { s[5] };
        self.gat_el_er(t, z, a_src, a_dst, el, er)?;
        let (ni, hi, fi) = (n as i32, h as i32, f as i32);
        let slope = t.s(at.negative_slope);
        let (alpha, g_out) = if alpha_mode {
            self.launch(
                "gat",
                &t.k("gat_alpha_bwd_dst"),
                warps(n * h),
                BLOCK,
                &[
                    p(&x[1]),
                    p(&x[0]),
                    Arg::P(el),
                    Arg::P(er),
                    Arg::P(be),
                    p(rp),
                    p(sr),
                    Arg::P(gpre),
                    Arg::P(ger),
                    Arg::I(ni),
                    Arg::I(hi),
                    slope,
                ],
            )?;
            (x[1].buf.ptr, 0)
        } else {
            let (out, lse) = (&x[4 + eb], &x[5 + eb]);
            if e > 0 {
                self.launch(
                    "gat",
                    &t.k("gat_bwd_dst"),
                    warps(n * h),
                    BLOCK,
                    &[
                        p(&x[0]),
                        p(z),
                        p(out),
                        Arg::P(el),
                        Arg::P(er),
                        Arg::P(be),
                        p(lse),
                        p(rp),
                        p(sr),
                        Arg::P(s[4]),
                        Arg::P(gpre),
                        Arg::P(ger),
                        Arg::I(ni),
                        Arg::I(hi),
                        Arg::I(fi),
                        slope,
                    ],
                )?;
            } else {
                self.memset0(ger, nh)?;
            }
            (s[4], x[0].buf.ptr)
        };
        self.launch(
            "gat",
            &t.k("gat_bwd_src"),
            warps(n * h),
            BLOCK,
            &[
                Arg::P(g_out),
                Arg::P(alpha),
                Arg::P(gpre),
                Arg::P(ger),
                Arg::P(a_src),
                Arg::P(a_dst),
                p(rp),
                p(cp),
                p(ce),
                Arg::P(y[0]),
                Arg::P(gel),
                Arg::I(ni),
                Arg::I(hi),
                Arg::I(fi),
            ],
        )?;
        if hf == 0 {
            return Ok(());
        }
        self.launch(
            "gat",
            &t.k("gat_ga_partial"),
            (hf.div_ceil(256).min(65535) as u32, nchunks as u32, 1),
            BLOCK,
            &[
                p(z),
                Arg::P(gel),
                Arg::P(ger),
                Arg::P(s[6]),
                Arg::I(ni),
                Arg::I(hi),
                Arg::I(fi),
                Arg::I(rpc as i32),
            ],
        )?;
        self.launch(
            "gat",
            &t.k("gat_ga_final"),
            flat(hf),
            BLOCK,
            &[
                Arg::P(s[6]),
                Arg::P(y[1]),
                Arg::P(y[2]),
                Arg::I(nchunks as i32),
                Arg::I(hf as i32),
            ],
        )
    }

    fn aggregate(&self, op: &Op, x: In, y: &[u64], ys: &[(Shape, DType)]) -> Result<()> {
        // alpha[E,H], s[T,N,C], row_ptr, src -> y[T,N,C]
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let h = x[0].shape.dim(1);
        let d = x[1].shape.dims();
        let (tn, n, c) = (d[0], d[1], d[2]);
        self.check_graph(name, n, &x[2], &x[3], None)?;
        if tn * n * c == 0 {
            return Ok(());
        }
        if h == 0 || c % h != 0 {
            return Err(Error::shape(
                name,
                format!("C = {c} is not a multiple of H = {h}"),
            ));
        }
        i32c(name, "T*N*C", tn * n * c)?;
        self.launch(
            "aggregate",
            &t.k("agg_fwd"),
            warps(tn * n),
            BLOCK,
            &[
                p(&x[0]),
                p(&x[1]),
                p(&x[2]),
                p(&x[3]),
                Arg::P(y[0]),
                Arg::I(tn as i32),
                Arg::I(n as i32),
                Arg::I(c as i32),
                Arg::I(h as i32),
            ],
        )
    }

    fn aggregate_bwd(&self, op: &Op, x: In, y: &[u64], ys: &[(Shape, DType)]) -> Result<()> {
        // g_y, alpha, s, row_ptr, src, col_ptr, col_edge -> g_alpha[E,H], g_s[T,N,C]
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let (e, h) = (x[1].shape.dim(0), x[1].shape.dim(1));
        let d = x[2].shape.dims();
        let (tn, n, c) = (d[0], d[1], d[2]);
        self.check_graph(name, n, &x[3], &x[4], Some((&x[5], &x[6])))?;
        if h == 0 || c % h != 0 {
            return Err(Error::shape(
                name,
                format!("C = {c} is not a multiple of H = {h}"),
            ));
        }
        i32c(name, "T*N*C", tn * n * c)?;
        let args = |a: u64, b: u64| {
            [
                Arg::I(tn as i32),
                Arg::I(n as i32),
                Arg::I(c as i32),
                Arg::I(h as i32),
            ]
            .into_iter()
            .fold(vec![Arg::P(a), Arg::P(b)], |mut v, x| {
                v.push(x);
                v
            })
        };
        if tn * n * c > 0 {
            let mut a = vec![
                p(&x[1]),
                p(&x[0]),
                p(&x[3]),
                p(&x[5]),
                p(&x[6]),
                Arg::P(y[1]),
            ];
            a.extend_from_slice(&args(0, 0)[2..]);
            self.launch("aggregate", &t.k("agg_bwd_s"), warps(tn * n), BLOCK, &a)?;
        }
        if e * h > 0 && n > 0 {
            let mut a = vec![p(&x[0]), p(&x[2]), p(&x[3]), p(&x[4]), Arg::P(y[0])];
            a.extend_from_slice(&args(0, 0)[2..]);
            self.launch("aggregate", &t.k("agg_bwd_alpha"), warps(n * h), BLOCK, &a)?;
        }
        Ok(())
    }

    /// (nrt, KS) of the InfoNCE tile grid.
    fn infonce_grid(&self, b: usize) -> (usize, usize) {
        let nrt = b.div_ceil(64);
        let ks = (2 * self.sm_count as usize)
            .div_ceil(nrt)
            .clamp(1, nrt.min(65535));
        (nrt, ks)
    }

    fn infonce_fwd(
        &self,
        op: &Op,
        at: &InfoNceAttrs,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        if x[0].dtype != DType::F32 {
            return Err(unsupported(op, "the tiled InfoNCE kernels are f32 only"));
        }
        let _ = ys;
        let name = op.name();
        let (b, d) = (x[0].shape.dim(0), x[0].shape.dim(1));
        if b == 0 {
            return Err(Error::shape(name, "the batch is empty (B = 0)"));
        }
        i32c(name, "B*D", b * d)?;
        let (nrt, ks) = self.infonce_grid(b);
        let s = self.scratch(&[ks * b * 4, ks * b * 4, b * 4])?;
        let (bi, di) = (b as i32, d as i32);
        let ls = x[2].buf.ptr;
        let sides: &[(u64, u64, u64)] = if at.symmetric {
            &[
                (x[0].buf.ptr, x[1].buf.ptr, y[1]),
                (x[1].buf.ptr, x[0].buf.ptr, y[2]),
            ]
        } else {
            &[(x[0].buf.ptr, x[1].buf.ptr, y[1])]
        };
        for &(xs, yy, lse) in sides {
            self.launch(
                "infonce",
                "infonce_lse_partial_f32",
                (nrt as u32, ks as u32, 1),
                BLOCK,
                &[
                    Arg::P(xs),
                    Arg::P(yy),
                    Arg::P(ls),
                    Arg::P(s[0]),
                    Arg::P(s[1]),
                    Arg::I(bi),
                    Arg::I(di),
                ],
            )?;
            self.launch(
                "infonce",
                "infonce_lse_merge_f32",
                flat(b),
                BLOCK,
                &[
                    Arg::P(s[0]),
                    Arg::P(s[1]),
                    Arg::P(lse),
                    Arg::I(bi),
                    Arg::I(ks as i32),
                ],
            )?;
        }
        self.launch(
            "infonce",
            "infonce_diag_f32",
            warps(b),
            BLOCK,
            &[
                p(&x[0]),
                p(&x[1]),
                Arg::P(ls),
                Arg::P(s[2]),
                Arg::I(bi),
                Arg::I(di),
            ],
        )?;
        self.launch(
            "infonce",
            "infonce_loss_f32",
            (1, 1, 1),
            BLOCK,
            &[
                Arg::P(y[1]),
                Arg::P(if at.symmetric { y[2] } else { 0 }),
                Arg::P(s[2]),
                Arg::P(y[0]),
                Arg::I(bi),
            ],
        )
    }

    fn infonce_bwd(
        &self,
        op: &Op,
        at: &InfoNceAttrs,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        // g_loss, a, p, logit_scale, lse_row, lse_col (, g_lse_row, g_lse_col) -> ga, gp, g_ls
        if x[1].dtype != DType::F32 {
            return Err(unsupported(op, "the tiled InfoNCE kernels are f32 only"));
        }
        let _ = ys;
        let name = op.name();
        let (b, d) = (x[1].shape.dim(0), x[1].shape.dim(1));
        if b == 0 {
            return Err(Error::shape(name, "the batch is empty (B = 0)"));
        }
        i32c(name, "B*D", b * d)?;
        let (nrt, ks) = self.infonce_grid(b);
        let s = self.scratch(&[if ks > 1 { ks * b * d * 4 } else { 4 }, nrt * ks * 4])?;
        let (gl, a, pp, ls, lr, lc) = (
            x[0].buf.ptr,
            x[1].buf.ptr,
            x[2].buf.ptr,
            x[3].buf.ptr,
            x[4].buf.ptr,
            x[5].buf.ptr,
        );
        let (glr, glc) = if x.len() == 8 {
            (x[6].buf.ptr, x[7].buf.ptr)
        } else {
            (0, 0)
        };
        // (X, Y, lse_x, lse_y, g_lse_x, g_lse_y, out, gscale?, mode)
        type Run = (u64, u64, u64, u64, u64, u64, u64, bool, i32);
        let runs: [Run; 2] = if at.symmetric {
            [
                (a, pp, lr, lc, glr, glc, y[0], true, 0),
                (pp, a, lc, lr, glc, glr, y[1], false, 0),
            ]
        } else {
            [
                (a, pp, lr, 0, glr, 0, y[0], true, 1),
                (pp, a, 0, lr, 0, glr, y[1], false, 2),
            ]
        };
        for (xs, yy, lx, ly, gx, gy, out, gsc, mode) in runs {
            let target = if ks > 1 { s[0] } else { out };
            self.launch(
                "infonce",
                "infonce_bwd_f32",
                (nrt as u32, ks as u32, 1),
                BLOCK,
                &[
                    Arg::P(xs),
                    Arg::P(yy),
                    Arg::P(lx),
                    Arg::P(ly),
                    Arg::P(gx),
                    Arg::P(gy),
                    Arg::P(ls),
                    Arg::P(gl),
                    Arg::P(target),
                    Arg::P(if gsc { s[1] } else { 0 }),
                    Arg::I(b as i32),
                    Arg::I(d as i32),
                    Arg::I(mode),
                ],
            )?;
            if ks > 1 && b * d > 0 {
                self.launch(
                    "infonce",
                    "infonce_sum_parts_f32",
                    flat(b * d),
                    BLOCK,
                    &[
                        Arg::P(s[0]),
                        Arg::P(out),
                        Arg::I(ks as i32),
                        Arg::I((b * d) as i32),
                    ],
                )?;
            }
        }
        self.launch(
            "infonce",
            "infonce_gscale_f32",
            (1, 1, 1),
            BLOCK,
            &[
                Arg::P(s[1]),
                Arg::I((nrt * ks) as i32),
                Arg::P(ls),
                Arg::P(y[2]),
            ],
        )
    }

    fn segment_fwd(
        &self,
        op: &Op,
        segs: usize,
        x: In,
        y: &[u64],
        ys: &[(Shape, DType)],
    ) -> Result<()> {
        // x[P,C], seg[P] -> y[S,C], count[S]
        let t = Ty::of(op, ys[0].1)?;
        let name = op.name();
        let c = x[0].shape.last();
        let seg = self.host_i32(&x[1])?;
        if let Some(k) = seg.iter().position(|&s| s < -1 || s as i64 >= segs as i64) {
            return Err(Error::invalid(
                name,
                format!(
                    "seg[{k}] = {} is neither -1 (void) nor in 0..{segs}",
                    seg[k]
                ),
            ));
        }
        if segs == 0 {
            return Ok(());
        }
        let (ptr, pix) = csr_by_key(&seg, segs, |s| (s >= 0).then_some(s as usize));
        if c == 0 {
            // No feature launch: the counts come straight from the host CSR.
            let counts: Vec<f64> = ptr.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
            return if t.dt == DType::F32 {
                let v: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
                self.upload(y[1], &v)
            } else {
                self.upload(y[1], &counts)
            };
        }
        let s = self.scratch(&[ptr.len() * 4, pix.len() * 4])?;
        self.upload(s[0], &ptr)?;
        self.upload(s[1], &pix)?;
        i32c(name, "S*C", segs * c)?;
        self.launch(
            "segment",
            &t.k("segment_mean_fwd"),
            flat(segs * c),
            BLOCK,
            &[
                p(&x[0]),
                Arg::P(s[0]),
                Arg::P(s[1]),
                Arg::P(y[0]),
                Arg::P(y[1]),
                Arg::I(segs as i32),
                Arg::I(c as i32),
            ],
        )
    }
}

/// Rows per chunk and chunk count of the two-stage column reductions (kernel contracts:
/// rows_per_chunk = max(64, ceil(R/1024))).
fn chunks(r: usize) -> (usize, usize) {
    let rpc = r.div_ceil(1024).max(64);
    (rpc, r.div_ceil(rpc).max(1))
}

/// Stable CSR of positions grouped by `key(v)` (None = omitted): (ptr[groups+1], positions).
fn csr_by_key(
    v: &[i32],
    groups: usize,
    key: impl Fn(i32) -> Option<usize>,
) -> (Vec<i32>, Vec<i32>) {
    let mut ptr = vec![0i32; groups + 1];
    for &x in v {
        if let Some(k) = key(x) {
            ptr[k + 1] += 1;
        }
    }
    for g in 0..groups {
        ptr[g + 1] += ptr[g];
    }
    let mut fill = ptr.clone();
    let mut pos = vec![0i32; ptr[groups] as usize];
    for (i, &x) in v.iter().enumerate() {
        if let Some(k) = key(x) {
            pos[fill[k] as usize] = i as i32;
            fill[k] += 1;
        }
    }
    (ptr, pos)
}

fn check_indices(op: &'static str, idx: &[i32], rows: usize) -> Result<()> {
    match idx.iter().position(|&i| i < 0 || i as usize >= rows) {
        Some(k) => Err(Error::invalid(
            op,
            format!("idx[{k}] = {} is out of range [0, {rows})", idx[k]),
        )),
        None => Ok(()),
    }
}

fn validate_ptr(op: &'static str, what: &str, n: usize, ptr: &[i32], e: usize) -> Result<()> {
    if ptr.len() != n + 1 || ptr[0] != 0 || ptr[n] as i64 != e as i64 {
        return Err(Error::invalid(
            op,
            format!(
                "{what} must have N + 1 = {} entries from 0 to E = {e}",
                n + 1
            ),
        ));
    }
    if let Some(i) = (0..n).find(|&i| ptr[i + 1] < ptr[i]) {
        return Err(Error::invalid(op, format!("{what} decreases at node {i}")));
    }
    Ok(())
}

fn validate_lif(op: &'static str, cfg: &LifConfig) -> Result<()> {
    if !cfg.learnable_tau && (!cfg.tau.is_finite() || cfg.tau <= 1.0) {
        return Err(Error::invalid(
            op,
            format!("tau must be finite and > 1, got {}", cfg.tau),
        ));
    }
    if !cfg.v_th.is_finite() || cfg.v_reset.is_some_and(|v| !v.is_finite()) {
        return Err(Error::invalid(op, "v_th and v_reset must be finite"));
    }
    let (_, a) = surrogate(cfg.surrogate);
    if !(a.is_finite() && a > 0.0) {
        return Err(Error::invalid(
            op,
            format!("surrogate alpha must be finite and > 0, got {a}"),
        ));
    }
    Ok(())
}

/// Host copies of the i32 outputs of a layout op, computed by the CPU backend from the inputs'
/// host copies (None when it cannot).
fn host_layout(op: &Op, inputs: In, outs: &[(Shape, DType)]) -> Option<Vec<Storage>> {
    let views: Vec<View<Storage>> = inputs
        .iter()
        .map(|v| {
            Some(View {
                buf: v.buf.host.as_ref()?,
                shape: v.shape,
                dtype: v.dtype,
            })
        })
        .collect::<Option<_>>()?;
    let mut bufs: Vec<Storage> = outs
        .iter()
        .map(|(s, d)| Storage::zeros(*d, s.numel()))
        .collect();
    let mut ov: Vec<ViewMut<Storage>> = bufs
        .iter_mut()
        .zip(outs)
        .map(|(b, (s, d))| ViewMut {
            buf: b,
            shape: s,
            dtype: *d,
        })
        .collect();
    CpuBackend.execute(op, &views, &mut ov).ok()?;
    drop(ov);
    Some(bufs)
}
