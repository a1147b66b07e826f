//! The benchmarked cases: shapes per size, the bytes or FLOPs of each call (its floor), and the
//! inputs it runs on.
//!
//! Byte counts are the compulsory traffic of one call: every input read once, every output
//! written once (`s` = bytes per element of the dtype, indices 4 bytes, the statistics the
//! fused ops keep beside their outputs (LIF's charge, log-sum-exps, LayerNorm's mean and rstd,
//! segment counts) f32 on bf16 / f16 storage); a gather that re-reads a row counts it once. FLOP counts are given where the kernel is compute-bound (matmul,
//! InfoNCE): `2·M·K·N` for a product; InfoNCE forward `2·B²·D` (the logits once), backward
//! `3 · 2·B²·D` (the logits recomputed, then `gA = G·P` and `gP = Gᵀ·A`) — the algorithm's
//! minimum, whatever the implementation does.

use super::{random, upload, view, Numerics};
use crate::backend::{AnyBackend, AnyBuffer, Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::fused;
use crate::ops::{AdamWConfig, CsrGraph, GatAttrs, InfoNceAttrs, LifConfig, Op};
use crate::tensor::{DType, Meta, Tensor};
use crate::util::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The kernels `gshn bench` measures, by their `--ops` names; with the `model` feature also
/// `step`, one whole GSHN training step.
pub const OPS: &[&str] = &[
    "lif",
    "gat",
    "aggregate",
    "infonce",
    "segment_pool",
    "matmul",
    "layer_norm",
    "adamw",
    #[cfg(feature = "model")]
    "step",
];

/// Problem sizes: `small` for tests and a quick look, `default` for the figures, `large` for
/// the biggest GPU shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// A few milliseconds per case.
    Small,
    /// The shapes the README and BENCHMARKS.md quote.
    Default,
    /// GPU-sized problems (B = 32768 InfoNCE, 4M-neuron LIF).
    Large,
}

impl Size {
    /// `small`, `default` or `large`.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Default => "default",
            Size::Large => "large",
        }
    }
}

impl std::str::FromStr for Size {
    type Err = Error;
    fn from_str(s: &str) -> Result<Size> {
        match s {
            "small" => Ok(Size::Small),
            "default" => Ok(Size::Default),
            "large" => Ok(Size::Large),
            other => Err(Error::invalid(
                "bench",
                format!("--shapes {other:?}: use small, default or large"),
            )),
        }
    }
}

/// Which pass of an op a case times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    /// The forward (or the only pass: matmul, the AdamW step).
    Fwd,
    /// The backward, from saved forward values.
    Bwd,
}

/// One measurement: an op, a pass, a shape and a dtype, with its floor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    /// Unique in a run: `<op>_<pass>_<dtype>`.
    pub id: String,
    /// The `--ops` name.
    pub op: String,
    /// Forward or backward.
    pub pass: Pass,
    /// `f32` or `f64`.
    pub dtype: String,
    /// The dims in reading order, e.g. `T=8 N=1048576`.
    pub shape: String,
    /// The same dims by name.
    pub dims: BTreeMap<String, usize>,
    /// Compulsory bytes moved per call (0 for compute-bound cases).
    pub bytes: f64,
    /// FLOPs per call (0 for memory-bound cases).
    pub flops: f64,
    /// Items per call where neither bytes nor FLOPs describe the work (graphs of a training
    /// step); 0 otherwise.
    #[serde(default)]
    pub items: f64,
    /// A training step launched op by op, not replayed as a CUDA graph (`--no-cuda-graph`;
    /// only a GPU replays).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub op_by_op: bool,
}

impl Case {
    /// `op pass dtype shape`, for tables and progress lines.
    pub fn label(&self) -> String {
        if self.op == "step" {
            // Forward, backward, clipping and AdamW: one pass name would mislead.
            let how = if self.op_by_op { " (op by op)" } else { "" };
            return format!("train step {} {}{how}", self.dtype, self.shape);
        }
        format!(
            "{} {} {} {}",
            self.op,
            match self.pass {
                Pass::Fwd => "fwd",
                Pass::Bwd => "bwd",
            },
            self.dtype,
            self.shape
        )
    }
    fn dim(&self, name: &str) -> Result<usize> {
        self.dims
            .get(name)
            .copied()
            .ok_or_else(|| Error::graph(format!("bench case {}: no dim {name}", self.id)))
    }
}

/// The dims of `op` at `size`, in reading order.
fn dims(op: &str, size: Size) -> Result<Vec<(&'static str, usize)>> {
    use Size::*;
    let pick = |s: [usize; 3]| match size {
        Small => s[0],
        Default => s[1],
        Large => s[2],
    };
    Ok(match op {
        "lif" => vec![
            ("T", pick([4, 8, 16])),
            ("N", pick([1 << 14, 1 << 20, 1 << 22])),
        ],
        "gat" => vec![
            ("N", pick([2000, 50_000, 200_000])),
            ("deg", pick([8, 16, 16])),
            ("H", pick([2, 4, 4])),
            ("F", pick([16, 32, 64])),
        ],
        "aggregate" => vec![
            ("T", pick([2, 4, 8])),
            ("N", pick([2000, 50_000, 200_000])),
            ("C", pick([32, 128, 128])),
            ("H", pick([2, 4, 4])),
            ("deg", pick([8, 16, 16])),
        ],
        "infonce" => vec![
            ("B", pick([256, 4096, 32_768])),
            ("D", pick([64, 256, 512])),
        ],
        "segment_pool" => vec![
            ("P", pick([1 << 14, 1 << 19, 1 << 22])),
            ("C", pick([32, 64, 64])),
            ("S", pick([64, 256, 1024])),
        ],
        "matmul" => {
            let n = pick([256, 2048, 4096]);
            vec![("M", n), ("K", n), ("N", n)]
        }
        "layer_norm" => vec![
            ("R", pick([4096, 65_536, 262_144])),
            ("C", pick([64, 256, 512])),
        ],
        "adamw" => vec![("N", pick([1 << 16, 1 << 24, 1 << 26]))],
        // Graphs per batch of a GSHN training step at the default model config.
        "step" if cfg!(feature = "model") => vec![("B", pick([8, 64, 256]))],
        other => {
            return Err(Error::invalid(
                "bench",
                format!("unknown op {other:?}; ops: {}", OPS.join(", ")),
            ))
        }
    })
}

/// Dims set by hand, per op, on top of a preset (`gshn bench --shapes FILE.toml`).
pub type Overrides = BTreeMap<String, BTreeMap<String, usize>>;

/// Every case of `ops` × passes × `dtypes` at `size` (with `overrides`), in that order (an
/// op without a dtype's mode skips it: see [`Numerics`]).
pub fn cases(
    size: Size,
    overrides: &Overrides,
    ops: &[String],
    dtypes: &[Numerics],
) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for op in ops {
        let mut d = dims(op, size)?;
        for (name, &v) in overrides.get(op).into_iter().flatten() {
            let known: Vec<&str> = d.iter().map(|(k, _)| *k).collect();
            let no_dim = || {
                Error::invalid(
                    "bench",
                    format!("{op} has no dim {name:?}; its dims: {}", known.join(", ")),
                )
            };
            let slot = d.iter_mut().find(|(k, _)| k == name).ok_or_else(no_dim)?;
            if v == 0 {
                return Err(Error::invalid("bench", format!("{op}.{name} = 0")));
            }
            slot.1 = v;
        }
        let passes: &[Pass] = match op.as_str() {
            "matmul" | "adamw" | "step" => &[Pass::Fwd],
            _ => &[Pass::Fwd, Pass::Bwd],
        };
        for &dt in dtypes.iter().filter(|n| n.applies_to(op)) {
            for &pass in passes {
                let mut case = Case {
                    id: format!(
                        "{op}_{}_{}",
                        if pass == Pass::Fwd { "fwd" } else { "bwd" },
                        dt.name()
                    ),
                    op: op.clone(),
                    pass,
                    dtype: dt.name().into(),
                    shape: d
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    dims: d.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
                    bytes: 0.0,
                    flops: 0.0,
                    items: 0.0,
                    op_by_op: false,
                };
                if op == "step" {
                    case.items = case.dim("B")? as f64;
                } else {
                    (case.bytes, case.flops) = cost(&case, dt)?;
                }
                out.push(case);
            }
        }
    }
    Ok(out)
}

/// (bytes, flops) of one call (see the module doc): `s` bytes per stored float, `st` per
/// statistic (f32 on half storage).
fn cost(c: &Case, numerics: Numerics) -> Result<(f64, f64)> {
    let d = |k: &str| c.dim(k).map(|v| v as f64);
    let fwd = c.pass == Pass::Fwd;
    let (s, st) = (
        numerics.dtype.size() as f64,
        numerics.stat_dtype().size() as f64,
    );
    Ok(match c.op.as_str() {
        // fwd: X in; S, V out; H (a statistic) out. bwd: gS, gV in, H in; gX out.
        "lif" => (d("T")? * d("N")? * (3.0 * s + st), 0.0),
        "gat" => {
            let (n, e, nhf) = (d("N")?, d("N")? * d("deg")?, d("N")? * d("H")? * d("F")?);
            let csr = (e + n + 1.0) * 4.0;
            if fwd {
                // z read, out and lse written, the CSR.
                (2.0 * nhf * s + n * d("H")? * st + csr, 0.0)
            } else {
                // gOut, z, out read and gz written, lse read, the CSR and the CSC.
                (4.0 * nhf * s + n * d("H")? * st + 2.0 * csr, 0.0)
            }
        }
        "aggregate" => {
            let (n, e) = (d("N")?, d("N")? * d("deg")?);
            let (tnc, eh) = (d("T")? * n * d("C")?, e * d("H")?);
            let csr = (e + n + 1.0) * 4.0;
            if fwd {
                ((2.0 * tnc + eh) * s + csr, 0.0)
            } else {
                ((3.0 * tnc + 2.0 * eh) * s + 2.0 * csr, 0.0)
            }
        }
        "infonce" => {
            let gemm = 2.0 * d("B")? * d("B")? * d("D")?;
            (0.0, if fwd { gemm } else { 3.0 * gemm })
        }
        "segment_pool" => {
            let (p, cc, sg) = (d("P")?, d("C")?, d("S")?);
            ((p * cc + sg * cc) * s + sg * st + p * 4.0, 0.0)
        }
        "matmul" => (0.0, 2.0 * d("M")? * d("K")? * d("N")?),
        "layer_norm" => {
            let (r, cc) = (d("R")?, d("C")?);
            if fwd {
                ((2.0 * r * cc + 2.0 * cc) * s + 2.0 * r * st, 0.0)
            } else {
                ((3.0 * r * cc + 3.0 * cc) * s + 2.0 * r * st, 0.0)
            }
        }
        // p, m, v, g read; p, m, v written.
        "adamw" => (7.0 * d("N")? * s, 0.0),
        other => return Err(Error::graph(format!("bench: no cost rule for {other}"))),
    })
}

// ---- inputs ----------------------------------------------------------------------------------

/// A case ready to time ([`prepare`]); [`Prepared::call`] runs it once.
pub struct Prepared(Ready);

/// An op with inputs and preallocated outputs on the backend, or a training step.
enum Ready {
    Op {
        op: Op,
        inputs: Vec<(AnyBuffer, Meta)>,
        outputs: Vec<(AnyBuffer, Meta)>,
    },
    #[cfg(feature = "model")]
    Step(Box<step::StepBench>),
}

impl Prepared {
    fn new(be: &AnyBackend, op: Op, mut inputs: Vec<(AnyBuffer, Meta)>) -> Result<Prepared> {
        // An in-place op's outputs are its first inputs (AdamW: p, m, v).
        let k = op.mutated_inputs().min(inputs.len());
        let outputs = if k > 0 {
            inputs.drain(..k).collect()
        } else {
            let metas: Vec<Meta> = inputs.iter().map(|i| i.1.clone()).collect();
            op.infer(&metas)?
                .into_iter()
                .map(|m| Ok((be.alloc(m.dtype, m.shape.numel())?, m)))
                .collect::<Result<_>>()?
        };
        Ok(Prepared(Ready::Op {
            op,
            inputs,
            outputs,
        }))
    }

    /// One call of the op (or one training step) on the backend it was prepared on.
    pub fn call(&mut self, be: &AnyBackend) -> Result<()> {
        match &mut self.0 {
            Ready::Op {
                op,
                inputs,
                outputs,
            } => {
                let ins: Vec<View<AnyBuffer>> = inputs.iter().map(|(b, m)| view(b, m)).collect();
                let mut outs: Vec<ViewMut<AnyBuffer>> = outputs
                    .iter_mut()
                    .map(|(buf, m)| ViewMut {
                        buf,
                        shape: &m.shape,
                        dtype: m.dtype,
                    })
                    .collect();
                be.execute(op, &ins, &mut outs)
            }
            #[cfg(feature = "model")]
            Ready::Step(s) => s.call(),
        }
    }
}

/// The forward's outputs on the backend (saved values for a backward case).
fn forward(
    be: &AnyBackend,
    op: &Op,
    inputs: &[&(AnyBuffer, Meta)],
) -> Result<Vec<(AnyBuffer, Meta)>> {
    let views: Vec<View<AnyBuffer>> = inputs.iter().map(|(b, m)| view(b, m)).collect();
    Ok(fused::run(be, op, &views)?
        .into_iter()
        .map(|a| {
            let m = a.meta().clone();
            (a.into_buffer(), m)
        })
        .collect())
}

fn take(v: &mut Vec<(AnyBuffer, Meta)>, k: usize) -> Result<(AnyBuffer, Meta)> {
    if k < v.len() {
        Ok(v.swap_remove(k))
    } else {
        Err(Error::graph("bench: a forward gave fewer outputs"))
    }
}

/// Uploads the inputs of `case` (random, never zero) and its saved forward values: what
/// `gshn bench` times, and `benches/kernels.rs` with criterion.
pub fn prepare(shared: &Arc<AnyBackend>, case: &Case, rng: &mut SplitMix64) -> Result<Prepared> {
    let be: &AnyBackend = shared;
    let numerics = crate::bench::parse_dtype(&case.dtype)?;
    let dt = numerics.dtype;
    let d = |k: &str| case.dim(k);
    let mut r = |shape: Vec<usize>| upload(be, &random(&Meta::new(shape, dt), rng)?);
    let fwd = case.pass == Pass::Fwd;
    match case.op.as_str() {
        "lif" => {
            let (t, n) = (d("T")?, d("N")?);
            let cfg = LifConfig::default();
            let x = r(vec![t, n])?;
            if fwd {
                return Prepared::new(be, Op::Lif(cfg), vec![x]);
            }
            let h = take(&mut forward(be, &Op::Lif(cfg), &[&x])?, 2)?;
            let (gs, gv) = (r(vec![t, n])?, r(vec![t, n])?);
            let op = Op::LifBackward {
                cfg,
                has_gs: true,
                has_gv: true,
            };
            Prepared::new(be, op, vec![h, gs, gv])
        }
        "gat" => {
            let (n, deg, h, f) = (d("N")?, d("deg")?, d("H")?, d("F")?);
            let graph = graph(be, n, deg, rng)?;
            let mut r = |shape: Vec<usize>| upload(be, &random(&Meta::new(shape, dt), rng)?);
            let (z, a_s, a_d) = (r(vec![n, h, f])?, r(vec![h, f])?, r(vec![h, f])?);
            let at = GatAttrs::default();
            if fwd {
                return Prepared::new(be, Op::Gat(at), chain(vec![z, a_s, a_d], graph));
            }
            let args: Vec<&(AnyBuffer, Meta)> =
                [&z, &a_s, &a_d].into_iter().chain(graph.iter()).collect();
            let mut saved = forward(be, &Op::Gat(at), &args)?;
            let lse = take(&mut saved, 1)?;
            let out = take(&mut saved, 0)?;
            let g = r(vec![n, h, f])?;
            let inputs = chain(vec![g, z, a_s, a_d, out, lse], graph);
            Prepared::new(be, Op::GatBackward(at), inputs)
        }
        "aggregate" => {
            let (t, n, c, h, deg) = (d("T")?, d("N")?, d("C")?, d("H")?, d("deg")?);
            let graph = graph(be, n, deg, rng)?;
            let mut r = |shape: Vec<usize>| upload(be, &random(&Meta::new(shape, dt), rng)?);
            let (alpha, s) = (r(vec![n * deg, h])?, r(vec![t, n, c])?);
            if fwd {
                return Prepared::new(be, Op::Aggregate, chain(vec![alpha, s], graph));
            }
            let g = r(vec![t, n, c])?;
            let inputs = chain(vec![g, alpha, s], graph);
            Prepared::new(be, Op::AggregateBackward, inputs)
        }
        "infonce" => {
            let (b, dd) = (d("B")?, d("D")?);
            let unit = |rng: &mut SplitMix64| -> Result<(AnyBuffer, Meta)> {
                let t = random(&Meta::new([b, dd], DType::F64), rng)?;
                let mut v = t.data::<f64>()?.to_vec();
                for row in v.chunks_mut(dd.max(1)) {
                    let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|x| *x /= norm);
                }
                upload(be, &Tensor::new([b, dd], v)?.to_dtype(dt)?)
            };
            let (a, p) = (unit(rng)?, unit(rng)?);
            let ls = upload(be, &Tensor::scalar((1.0f64 / 0.07).ln()).to_dtype(dt)?)?;
            let at = InfoNceAttrs {
                precision: numerics.precision,
                ..InfoNceAttrs::default()
            };
            if fwd {
                return Prepared::new(be, Op::InfoNce(at), vec![a, p, ls]);
            }
            let mut saved = forward(be, &Op::InfoNce(at), &[&a, &p, &ls])?;
            let lse_col = take(&mut saved, 2)?;
            let lse_row = take(&mut saved, 1)?;
            // the loss's gradient is a statistic, as the loss is (f32 on half storage)
            let g = upload(be, &Tensor::scalar(1.0f64).to_dtype(numerics.stat_dtype())?)?;
            let inputs = vec![g, a, p, ls, lse_row, lse_col];
            Prepared::new(be, Op::InfoNceBackward(at), inputs)
        }
        "segment_pool" => {
            let (p, c, s) = (d("P")?, d("C")?, d("S")?);
            let x = r(vec![p, c])?;
            // Segments of equal size, shuffled over the rows.
            let mut ids: Vec<i32> = (0..p).map(|i| (i * s / p.max(1)) as i32).collect();
            rng.shuffle(&mut ids);
            let seg = upload(be, &Tensor::new([p], ids)?)?;
            let op = Op::SegmentMean { segments: s };
            if fwd {
                return Prepared::new(be, op, vec![x, seg]);
            }
            let count = take(&mut forward(be, &op, &[&x, &seg])?, 1)?;
            let g = upload(be, &random(&Meta::new([s, c], dt), rng)?)?;
            Prepared::new(be, Op::SegmentMeanBackward, vec![g, seg, count])
        }
        "matmul" => {
            let (m, k, n) = (d("M")?, d("K")?, d("N")?);
            let op = Op::MatMul {
                trans_a: false,
                trans_b: false,
                row_stride: 1,
            };
            Prepared::new(be, op, vec![r(vec![m, k])?, r(vec![k, n])?])
        }
        "layer_norm" => {
            let (rows, c) = (d("R")?, d("C")?);
            let (x, gamma, beta) = (r(vec![rows, c])?, r(vec![c])?, r(vec![c])?);
            let eps = 1e-5;
            if fwd {
                return Prepared::new(
                    be,
                    Op::LayerNorm { eps, row_stride: 1 },
                    vec![x, gamma, beta],
                );
            }
            let mut saved = forward(
                be,
                &Op::LayerNorm { eps, row_stride: 1 },
                &[&x, &gamma, &beta],
            )?;
            let rstd = take(&mut saved, 2)?;
            let mean = take(&mut saved, 1)?;
            let g = r(vec![rows, c])?;
            let inputs = vec![g, x, gamma, mean, rstd];
            Prepared::new(be, Op::LayerNormBackward { eps, row_stride: 1 }, inputs)
        }
        #[cfg(feature = "model")]
        "step" => Ok(Prepared(Ready::Step(Box::new(step::StepBench::new(
            shared,
            d("B")?,
            !case.op_by_op,
        )?)))),
        "adamw" => {
            let n = d("N")?;
            let (p, m, g) = (r(vec![n])?, r(vec![n])?, r(vec![n])?);
            let v_host = random(&Meta::new([n], DType::F64), rng)?;
            let v_abs: Vec<f64> = v_host.data::<f64>()?.iter().map(|x| x.abs()).collect();
            let v = upload(be, &Tensor::new([n], v_abs)?.to_dtype(dt)?)?;
            let clip = upload(be, &Tensor::scalar(1.0f64).to_dtype(dt)?)?;
            let hyper = upload(be, &Tensor::new([2], vec![1e-3f64, 1.0])?.to_dtype(dt)?)?;
            let op = Op::AdamW(AdamWConfig::default());
            Prepared::new(be, op, vec![p, m, v, g, clip, hyper])
        }
        other => Err(Error::invalid("bench", format!("unknown op {other:?}"))),
    }
}

fn chain<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.extend(b);
    a
}

/// A random graph of `n` nodes with exactly `deg` in-edges each: row_ptr, src, col_ptr,
/// col_edge on the backend.
fn graph(
    be: &AnyBackend,
    n: usize,
    deg: usize,
    rng: &mut SplitMix64,
) -> Result<Vec<(AnyBuffer, Meta)>> {
    let to_i32 = |v: usize| {
        i32::try_from(v).map_err(|_| Error::invalid("bench", "graph too large for i32 indices"))
    };
    let src = (0..n * deg)
        .map(|_| to_i32(rng.below(n)))
        .collect::<Result<Vec<i32>>>()?;
    let row_ptr = (0..=n)
        .map(|i| to_i32(i * deg))
        .collect::<Result<Vec<i32>>>()?;
    let g = CsrGraph::from_csr(row_ptr, src)?;
    [g.row_ptr, g.src, g.col_ptr, g.col_edge]
        .iter()
        .map(|t| upload(be, t))
        .collect()
}

/// One GSHN training step (forward, backward, clipping, AdamW) at the default model config on
/// `B` synthetic scenes: what `benches/train_step.rs` times, on any backend, run as `gshn
/// train` runs it: on a GPU replayed as a CUDA graph (recorded in the warm-up) when `replay`.
#[cfg(feature = "model")]
mod step {
    use crate::backend::AnyBackend;
    use crate::data::{prepare, write_synthetic, DataShape, PreparedSplit, Vocab};
    use crate::error::{Error, Result};
    use crate::train::batches::LossWeights;
    use crate::train::config::open_split;
    use crate::train::{Engine, RunConfig};
    use crate::util::rng::SplitMix64;
    use std::sync::Arc;

    pub(in crate::bench) struct StepBench {
        engine: Engine<Arc<AnyBackend>>,
        split: PreparedSplit,
        weights: LossWeights,
        batch: usize,
        step: usize,
    }

    impl StepBench {
        pub(super) fn new(be: &Arc<AnyBackend>, batch: usize, replay: bool) -> Result<StepBench> {
            let dir = std::env::temp_dir().join(format!("gshn-bench-step-{}", std::process::id()));
            write_synthetic(&dir, batch.max(8), 8, 0)?;
            let mut cfg = RunConfig::default();
            cfg.train.batch_size = batch;
            let ds = open_split(&dir, &cfg, "train")?;
            let vocab = Vocab::build(ds.all_captions(), 1, None);
            let split = prepare(&ds, &cfg.prepare_options(), &vocab, "bench")?;
            std::fs::remove_dir_all(&dir).ok();
            if split.graphs.len() < batch {
                return Err(Error::invalid(
                    "bench",
                    "fewer synthetic scenes than the batch",
                ));
            }
            let shape = DataShape::of(&[&split], ds.num_categories())?;
            let weights = LossWeights {
                itc: 1.0,
                stl: cfg.train.lambda_stl as f32,
                node: cfg.train.lambda_node as f32,
                neg: cfg.train.lambda_neg as f32,
                rel: cfg.train.lambda_rel as f32,
            };
            let mut engine = Engine::new(Arc::clone(be), cfg, shape, vocab)?;
            engine.init()?;
            engine.train.replay_runs(replay);
            Ok(StepBench {
                engine,
                split,
                weights,
                batch,
                step: 0,
            })
        }

        pub(super) fn call(&mut self) -> Result<()> {
            let b = self.batch;
            let graphs: Vec<_> = self.split.graphs.iter().take(b).collect();
            let caps: Vec<_> = self
                .split
                .captions
                .iter()
                .take(b)
                .filter_map(|c| c.first())
                .collect();
            let negs: Vec<_> = (0..b).map(|i| self.split.negative(i, 0)).collect();
            let mut rng = SplitMix64::new(self.step as u64);
            self.engine.step(
                &graphs,
                &caps,
                &negs,
                self.weights,
                1e-4,
                self.step,
                &mut rng,
            )?;
            self.step += 1;
            Ok(())
        }
    }
}
