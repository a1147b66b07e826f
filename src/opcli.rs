//! One fused op, forward and backward, on named tensors: the engine behind `gshn op NAME`
//! (DESIGN §7) and the reference the C ABI (`capi`) is tested against.
//!
//! [`crate::fused::OPS`] describes every op: its input tensors (name, layout, dtype), attributes
//! (JSON, with defaults), outputs, and which inputs get a gradient. [`run`] uploads the inputs
//! to a backend, runs the op's eager forward and backward forms ([`crate::fused`]) there, and
//! returns every output plus `grad_<input>` for every differentiable input.
//!
//! **Upstream gradients.** The backward differentiates `L = Σ_o Σ (o ⊙ grad_o)` over the
//! op's differentiable outputs `o`: `grad_o` is the tensor named `grad_<o>` when the inputs
//! hold one, else the output's default — ones for the main outputs (so with no `grad_*` at
//! all, `L` is the sum of the main outputs) and zeros for auxiliary ones (GAT `alpha`,
//! InfoNCE `lse_row`/`lse_col`). Outputs marked "no gradient" (saved statistics) take none.
//!
//! **Dtypes.** Float tensors are all f32, all f64, all bf16 or all f16 (the op's first input
//! decides); index tensors are i32. Outputs and gradients have the float dtype of the inputs,
//! but the statistics of a half-precision op (LSE, counts, the LIF charge H, the losses),
//! which are f32 ([`Op::half_stats`]).
//!
//! **Graphs** (`gat`, `aggregate`) come either as a CSR by destination (`row_ptr[N+1]`,
//! `src[E]`) or as a PyG `edge_index[2,E]` (row 0 = source, row 1 = destination, any order).
//! With `edge_index`, edges are stably sorted by destination internally; every edge-indexed
//! tensor (inputs `edge_bias`, `alpha`; outputs `alpha`, `grad_edge_bias`, `grad_alpha`) stays
//! in the caller's `edge_index` order.

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

use crate::backend::{Backend, View};
use crate::error::{Error, Result};
use crate::fused::{
    self, spec, Array, GatParams, GradDefault, GraphArrays, InfoNceSaved, InfoNceUpstream, Kind,
    OpSpec,
};
use crate::ops::index::group_positions;
use crate::ops::{CsrGraph, InfoNceAttrs, LifConfig, Op, Precision, Surrogate};
use crate::tensor::{DType, Storage, Tensor};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};

// ---- inputs and attributes ---------------------------------------------------------------

/// Named inputs of one call, checked against the op's spec.
struct Ins<'a> {
    op: &'static str,
    map: HashMap<&'a str, &'a Tensor>,
}

impl<'a> Ins<'a> {
    fn new(spec: &'static OpSpec, inputs: &'a [(String, Tensor)]) -> Result<Ins<'a>> {
        let op = spec.name;
        let mut map = HashMap::new();
        for (name, t) in inputs {
            let known_input = spec.inputs.iter().find(|i| i.name == name);
            let known_grad = name
                .strip_prefix("grad_")
                .and_then(|o| spec.outputs.iter().find(|s| s.name == o));
            match (known_input, known_grad) {
                (Some(i), _) => {
                    let ok = match i.kind {
                        Kind::Float => t.dtype().is_float(),
                        Kind::Index => t.dtype() == DType::I32,
                    };
                    if !ok {
                        let want = match i.kind {
                            Kind::Float => "f32 or f64",
                            Kind::Index => "i32",
                        };
                        return Err(Error::shape(
                            op,
                            format!("{name} must be {want}, got {:?}", t.dtype()),
                        ));
                    }
                }
                (None, Some(o)) if o.grad == GradDefault::None => {
                    return Err(Error::invalid(
                        op,
                        format!("{name}: output {} is not differentiable", o.name),
                    ))
                }
                (None, Some(_)) => {
                    if !t.dtype().is_float() {
                        return Err(Error::shape(
                            op,
                            format!("{name} must be f32 or f64, got {:?}", t.dtype()),
                        ));
                    }
                }
                (None, None) => {
                    let names: Vec<String> = spec
                        .inputs
                        .iter()
                        .map(|i| i.name.to_string())
                        .chain(
                            spec.outputs
                                .iter()
                                .filter(|o| o.grad != GradDefault::None)
                                .map(|o| format!("grad_{}", o.name)),
                        )
                        .collect();
                    return Err(Error::invalid(
                        op,
                        format!(
                            "unknown input tensor {name:?}; this op reads {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
            if map.insert(name.as_str(), t).is_some() {
                return Err(Error::invalid(op, format!("input {name:?} given twice")));
            }
        }
        // The float dtype: that of the first float input present.
        let dtype = spec
            .inputs
            .iter()
            .filter(|i| i.kind == Kind::Float)
            .find_map(|i| map.get(i.name).map(|t| t.dtype()))
            .unwrap_or(DType::F32);
        // (an upstream gradient has its output's dtype: checked where it is used)
        for (name, t) in map.iter().filter(|(n, _)| !n.starts_with("grad_")) {
            if t.dtype().is_float() && t.dtype() != dtype {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} is {:?} but the op runs in {dtype:?} (all float tensors must share one dtype)",
                        t.dtype()
                    ),
                ));
            }
        }
        for i in spec.inputs.iter().filter(|i| i.optional.is_none()) {
            if !map.contains_key(i.name) {
                return Err(Error::invalid(
                    op,
                    format!("missing input tensor {:?} {}", i.name, i.layout),
                ));
            }
        }
        Ok(Ins { op: spec.name, map })
    }

    fn get(&self, name: &str) -> Option<&'a Tensor> {
        self.map.get(name).copied()
    }
    fn req(&self, name: &str) -> Result<&'a Tensor> {
        self.get(name)
            .ok_or_else(|| Error::invalid(self.op, format!("missing input tensor {name:?}")))
    }
    fn rank(&self, name: &str, r: usize) -> Result<&'a Tensor> {
        let t = self.req(name)?;
        if t.shape().rank() != r {
            return Err(Error::shape(
                self.op,
                format!("{name} must have rank {r}, got shape {:?}", t.shape()),
            ));
        }
        Ok(t)
    }
}

/// The JSON attributes of one call, checked against the op's spec.
struct Attrs<'a> {
    op: &'static str,
    map: BTreeMap<&'static str, &'a Json>,
    defaults: BTreeMap<&'static str, Json>,
}

impl<'a> Attrs<'a> {
    fn new(spec: &'static OpSpec, attrs: &'a Json) -> Result<Attrs<'a>> {
        let op = spec.name;
        let obj = match attrs {
            Json::Null => None,
            Json::Object(m) => Some(m),
            other => {
                return Err(Error::invalid(
                    op,
                    format!("attrs must be a JSON object, got {other}"),
                ))
            }
        };
        let mut map = BTreeMap::new();
        for (k, v) in obj.into_iter().flatten() {
            let Some(a) = spec.attrs.iter().find(|a| a.name == k) else {
                let names: Vec<&str> = spec.attrs.iter().map(|a| a.name).collect();
                return Err(Error::invalid(
                    op,
                    format!(
                        "unknown attr {k:?}; this op takes {}",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            };
            map.insert(a.name, v);
        }
        let defaults = spec
            .attrs
            .iter()
            .map(|a| {
                serde_json::from_str(a.default)
                    .map(|v| (a.name, v))
                    .map_err(|e| Error::graph(format!("{op}: default of {}: {e}", a.name)))
            })
            .collect::<Result<_>>()?;
        Ok(Attrs { op, map, defaults })
    }

    fn given(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }
    fn value(&self, key: &str) -> &Json {
        self.map
            .get(key)
            .copied()
            .or_else(|| self.defaults.get(key))
            .unwrap_or(&Json::Null)
    }
    fn bad(&self, key: &str, want: &str) -> Error {
        Error::invalid(
            self.op,
            format!("attr {key} must be {want}, got {}", self.value(key)),
        )
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.value(key)
            .as_f64()
            .ok_or_else(|| self.bad(key, "a number"))
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            Json::Null => Ok(None),
            v => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number or null")),
        }
    }
    fn bool(&self, key: &str) -> Result<bool> {
        self.value(key)
            .as_bool()
            .ok_or_else(|| self.bad(key, "true or false"))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.value(key) {
            Json::Null => Ok(None),
            v => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.bad(key, "a non-negative integer or null")),
        }
    }
    fn str(&self, key: &str) -> Result<String> {
        self.value(key)
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(key, "a string"))
    }
}

/// The LIF configuration of `attrs` (`lif`'s attributes; also used by the C ABI tests).
pub fn lif_config(attrs: &Json) -> Result<LifConfig> {
    let a = Attrs::new(spec("lif")?, attrs)?;
    lif_config_of(&a)
}

fn lif_config_of(a: &Attrs) -> Result<LifConfig> {
    let kind = a.str("surrogate")?;
    let surrogate = Surrogate::from_name(&kind, a.opt_f64("alpha")?).ok_or_else(|| {
        Error::invalid(
            a.op,
            format!("surrogate {kind:?} is not one of atan, sigmoid, super_spike, rectangular"),
        )
    })?;
    let cfg = LifConfig {
        tau: a.f64("tau")?,
        v_th: a.f64("v_th")?,
        v_reset: a.opt_f64("v_reset")?,
        decay_input: a.bool("decay_input")?,
        detach_reset: a.bool("detach_reset")?,
        surrogate,
        learnable_tau: false,
        smooth: false,
        membrane: true,
        u8_spikes: a.bool("u8_spikes")?,
    };
    cfg.validate("lif")?;
    Ok(cfg)
}

// ---- graphs ------------------------------------------------------------------------------

/// A CSR graph from the inputs, and (for `edge_index`) the permutation `perm[k_csr] = k_given`.
fn graph_of(ins: &Ins, n: usize) -> Result<(CsrGraph, Option<Vec<usize>>)> {
    let op = ins.op;
    let idx = |t: &Tensor| t.data::<i32>().map(|d| d.to_vec());
    match (ins.get("row_ptr"), ins.get("src"), ins.get("edge_index")) {
        (Some(rp), Some(src), None) => {
            for (t, what) in [(rp, "row_ptr"), (src, "src")] {
                if t.shape().rank() != 1 {
                    return Err(Error::shape(
                        op,
                        format!("{what} must have rank 1, got {:?}", t.shape()),
                    ));
                }
            }
            if rp.numel() != n + 1 {
                return Err(Error::shape(
                    op,
                    format!(
                        "row_ptr has {} entries, expected N + 1 = {}",
                        rp.numel(),
                        n + 1
                    ),
                ));
            }
            Ok((CsrGraph::from_csr(idx(rp)?, idx(src)?)?, None))
        }
        (None, None, Some(ei)) => {
            let &[2, e] = ei.dims() else {
                return Err(Error::shape(
                    op,
                    format!("edge_index must be [2, E], got {:?}", ei.shape()),
                ));
            };
            let (srcs, dsts) = ei.data::<i32>()?.split_at(e);
            let outside = |i: i32| usize::try_from(i).map_or(true, |i| i >= n);
            let bad = srcs.iter().zip(dsts).enumerate();
            if let Some((k, (s, d))) = bad
                .into_iter()
                .find(|(_, (&s, &d))| outside(s) || outside(d))
            {
                return Err(Error::invalid(
                    op,
                    format!("edge_index column {k} ({s} -> {d}) names a node outside 0..{n}"),
                ));
            }
            // Edges stably grouped by destination: the CSR, and perm[k_csr] = k_given.
            let (row_ptr, order) = group_positions(dsts, n, |d| Some(d as usize));
            let perm: Vec<usize> = order.iter().map(|&k| k as usize).collect();
            let src = perm
                .iter()
                .map(|&k| srcs.get(k).copied())
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| Error::graph("edge_index: grouping lost an edge"))?;
            Ok((CsrGraph::from_csr(row_ptr, src)?, Some(perm)))
        }
        (None, None, None) => Err(Error::invalid(
            op,
            "needs the graph: row_ptr[N+1] and src[E] (CSR by destination), or edge_index[2,E]",
        )),
        _ => Err(Error::invalid(
            op,
            "give the graph either as row_ptr + src or as edge_index, not a mix",
        )),
    }
}

/// Rows of an edge-indexed tensor `t[E, ..]` reordered: `out[k] = t[perm[k]]` (`inverse`:
/// `out[perm[k]] = t[k]`).
fn permute_rows(t: &Tensor, perm: &[usize], inverse: bool) -> Result<Tensor> {
    let e = perm.len();
    if t.dims().first() != Some(&e) {
        return Err(Error::shape(
            "edge_index",
            format!(
                "an edge tensor of shape {:?} does not have E = {e} rows",
                t.shape()
            ),
        ));
    }
    // out[k] = t[order[k]], with order = perm or its inverse.
    let mut order = perm.to_vec();
    if inverse {
        for (k, &p) in perm.iter().enumerate() {
            *order
                .get_mut(p)
                .ok_or_else(|| Error::graph("edge order is no permutation"))? = k;
        }
    }
    let w = t.numel() / e.max(1);
    fn go<T: Copy>(v: &[T], order: &[usize], w: usize) -> Option<Vec<T>> {
        let rows: Vec<&[T]> = v.chunks(w.max(1)).collect();
        let mut o = Vec::with_capacity(v.len());
        for &p in order.iter().take(rows.len()) {
            o.extend_from_slice(rows.get(p)?);
        }
        Some(o)
    }
    let s = match t.storage() {
        Storage::F32(v) => go(v, &order, w).map(Storage::F32),
        Storage::F64(v) => go(v, &order, w).map(Storage::F64),
        Storage::I32(v) => go(v, &order, w).map(Storage::I32),
        Storage::BF16(v) => go(v, &order, w).map(Storage::BF16),
        Storage::F16(v) => go(v, &order, w).map(Storage::F16),
        Storage::U8(v) => go(v, &order, w).map(Storage::U8),
    };
    let s = s.ok_or_else(|| Error::graph("edge order is no permutation"))?;
    Tensor::from_storage(t.shape().clone(), s)
}

// ---- running: the eager ops, with the upstream gradients of the module doc ----------------

/// One call on a backend: its checked inputs, and the backend they are uploaded to.
struct Call<'a, B: Backend> {
    be: &'a B,
    ins: &'a Ins<'a>,
    out: Vec<(String, Tensor)>,
}

impl<'a, B: Backend> Call<'a, B> {
    fn up(&self, t: &Tensor) -> Result<Array<B>> {
        Array::upload(self.be, t)
    }
    /// Input `name` on the backend, if given.
    fn opt(&self, name: &str) -> Result<Option<Array<B>>> {
        self.ins.get(name).map(|t| self.up(t)).transpose()
    }
    /// The upstream gradient of output `name` (shape `like`'s): `grad_<name>` when given
    /// (rows reordered to the CSR's by `perm`), else the output's default — ones, or None for
    /// zeros (the output is not in L).
    fn seed(
        &self,
        name: &str,
        like: &Array<B>,
        perm: Option<&[usize]>,
    ) -> Result<Option<Array<B>>> {
        let gname = format!("grad_{name}");
        let default = spec(self.ins.op)?
            .outputs
            .iter()
            .find(|o| o.name == name)
            .map_or(GradDefault::None, |o| o.grad);
        match (self.ins.get(&gname), default) {
            (Some(g), _) => {
                if g.dtype() != like.dtype() {
                    return Err(Error::shape(
                        self.ins.op,
                        format!(
                            "{gname} must have the dtype of {name}, {:?}; got {:?}",
                            like.dtype(),
                            g.dtype()
                        ),
                    ));
                }
                if g.shape() != like.shape() {
                    return Err(Error::shape(
                        self.ins.op,
                        format!(
                            "{gname} must have the shape of {name} {:?}, got {:?}",
                            like.shape(),
                            g.shape()
                        ),
                    ));
                }
                match perm {
                    Some(p) => self.up(&permute_rows(g, p, false)?).map(Some),
                    None => self.up(g).map(Some),
                }
            }
            (None, GradDefault::Ones) => self.up(&filled(like, 1.0)?).map(Some),
            (None, _) => Ok(None),
        }
    }
    /// Appends an output, read back to the host (rows back in the caller's edge order by
    /// `perm`).
    fn put(&mut self, name: &str, a: &Array<B>, perm: Option<&[usize]>) -> Result<()> {
        let t = a.to_tensor(self.be)?;
        let t = match perm {
            Some(p) => permute_rows(&t, p, true)?,
            None => t,
        };
        self.out.push((name.to_string(), t));
        Ok(())
    }
    /// `a + b` on the backend (two gradient contributions).
    fn add(&self, a: Array<B>, b: Option<Array<B>>) -> Result<Array<B>> {
        let Some(b) = b else { return Ok(a) };
        let sum = fused::run(self.be, &Op::Add, &[a.view(), b.view()])?;
        sum.into_iter()
            .next()
            .ok_or_else(|| Error::graph("add gave no output"))
    }
}

/// A tensor of `like`'s shape and dtype filled with `v`.
fn filled<B: Backend>(like: &Array<B>, v: f64) -> Result<Tensor> {
    let n = like.shape().numel();
    let s = match like.dtype() {
        DType::F32 => Storage::F32(crate::tensor::try_filled(n, v as f32)?),
        DType::F64 => Storage::F64(crate::tensor::try_filled(n, v)?),
        DType::I32 => return Err(Error::graph("an index tensor has no gradient")),
        d => Storage::from_f64(d, &crate::tensor::try_filled(n, v)?)?,
    };
    Tensor::from_storage(like.shape().clone(), s)
}

fn view<B: Backend>(a: &Option<Array<B>>) -> Option<View<'_, B::Buffer>> {
    a.as_ref().map(Array::view)
}

fn run_lif<B: Backend>(c: &mut Call<B>, attrs: &Attrs) -> Result<()> {
    let cfg = lif_config_of(attrs)?;
    let x = c.up(c.ins.rank("x", 2)?)?;
    let tau = c.opt("tau")?;
    if tau.is_some() && attrs.given("tau") {
        return Err(Error::invalid(
            "lif",
            "tau is given both as an attr and as a tensor (the tensor makes it learnable): give one",
        ));
    }
    let f = fused::lif_forward(c.be, x.view(), view(&tau), &cfg)?;
    // the spikes' gradient has x's float type, u8 spikes too: shaped and typed as the membrane
    let gs = c.seed("spikes", &f.membrane, None)?;
    let gv = c.seed("v", &f.membrane, None)?;
    let g = fused::lif_backward(
        c.be,
        f.charge.view(),
        view(&gs),
        view(&gv),
        view(&tau),
        &cfg,
    )?;
    c.put("spikes", &f.spikes, None)?;
    c.put("v", &f.membrane, None)?;
    c.put("h", &f.charge, None)?;
    c.put("grad_x", &g.x, None)?;
    if let Some(gt) = &g.tau {
        c.put("grad_tau", gt, None)?;
    }
    Ok(())
}

fn run_gat<B: Backend>(c: &mut Call<B>, attrs: &Attrs) -> Result<()> {
    let z = c.ins.rank("z", 3)?;
    let (csr, perm) = graph_of(c.ins, z.shape().dim(0)?)?;
    let perm = perm.as_deref();
    let z = c.up(z)?;
    let (a_src, a_dst) = (c.up(c.ins.req("a_src")?)?, c.up(c.ins.req("a_dst")?)?);
    let edge_bias = match (c.ins.get("edge_bias"), perm) {
        (Some(t), Some(p)) => Some(c.up(&permute_rows(t, p, false)?)?),
        (t, _) => t.map(|t| c.up(t)).transpose()?,
    };
    let graph = GraphArrays::upload(c.be, &csr)?;
    let params = GatParams {
        z: z.view(),
        a_src: a_src.view(),
        a_dst: a_dst.view(),
        edge_bias: view(&edge_bias),
    };
    let slope = attrs.f64("negative_slope")?;
    let f = fused::gat_forward(c.be, params, graph.view(), slope)?;
    let alpha = fused::gat_alpha(c.be, params, f.lse.view(), graph.view(), slope)?;
    let g_out = c.seed("out", &f.out, None)?;
    let g_alpha = c.seed("alpha", &alpha, perm)?;
    let mut grads = match &g_out {
        Some(g) => Some(fused::gat_backward(
            c.be,
            params,
            f.out.view(),
            f.lse.view(),
            g.view(),
            graph.view(),
            slope,
        )?),
        None => None,
    };
    if let Some(g) = &g_alpha {
        let via_alpha =
            fused::gat_alpha_backward(c.be, params, alpha.view(), g.view(), graph.view(), slope)?;
        grads = Some(match grads {
            None => via_alpha,
            Some(o) => fused::GatGrads {
                z: c.add(o.z, Some(via_alpha.z))?,
                a_src: c.add(o.a_src, Some(via_alpha.a_src))?,
                a_dst: c.add(o.a_dst, Some(via_alpha.a_dst))?,
                edge_bias: match o.edge_bias {
                    Some(b) => Some(c.add(b, via_alpha.edge_bias)?),
                    None => None,
                },
            },
        });
    }
    let grads = grads.ok_or_else(|| Error::graph("gat: no gradient seed"))?;
    c.put("out", &f.out, None)?;
    c.put("alpha", &alpha, perm)?;
    c.put("lse", &f.lse, None)?;
    c.put("grad_z", &grads.z, None)?;
    c.put("grad_a_src", &grads.a_src, None)?;
    c.put("grad_a_dst", &grads.a_dst, None)?;
    if let Some(b) = &grads.edge_bias {
        c.put("grad_edge_bias", b, perm)?;
    }
    Ok(())
}

fn run_aggregate<B: Backend>(c: &mut Call<B>) -> Result<()> {
    let s = c.ins.rank("s", 3)?;
    let (csr, perm) = graph_of(c.ins, s.shape().dim(1)?)?;
    let perm = perm.as_deref();
    let alpha = c.ins.rank("alpha", 2)?;
    let alpha = match perm {
        Some(p) => c.up(&permute_rows(alpha, p, false)?)?,
        None => c.up(alpha)?,
    };
    let s = c.up(s)?;
    let graph = GraphArrays::upload(c.be, &csr)?;
    let y = fused::aggregate_forward(c.be, alpha.view(), s.view(), graph.view())?;
    let gy = c
        .seed("y", &y, None)?
        .ok_or_else(|| Error::graph("aggregate: no gradient seed"))?;
    let g = fused::aggregate_backward(c.be, alpha.view(), s.view(), gy.view(), graph.view())?;
    c.put("y", &y, None)?;
    c.put("grad_alpha", &g.alpha, perm)?;
    c.put("grad_s", &g.s, None)
}

fn run_infonce<B: Backend>(c: &mut Call<B>, attrs: &Attrs, symmetric: bool) -> Result<()> {
    let a = c.up(c.ins.rank("a", 2)?)?;
    let p = c.up(c.ins.rank("p", 2)?)?;
    let ls = c.up(c.ins.req("logit_scale")?)?;
    let chunk = attrs
        .opt_usize("chunk")?
        .ok_or_else(|| attrs.bad("chunk", "a non-negative integer"))?;
    let precision = Precision::parse(&attrs.str("precision")?)?;
    let offset = match symmetric {
        true => 0,
        false => attrs
            .opt_usize("offset")?
            .ok_or_else(|| attrs.bad("offset", "a non-negative integer"))?,
    };
    let at = InfoNceAttrs {
        symmetric,
        chunk,
        precision,
        offset,
    };
    let f = fused::infonce_forward(c.be, a.view(), p.view(), ls.view(), at)?;
    let g_loss = c
        .seed("loss", &f.loss, None)?
        .ok_or_else(|| Error::graph("infonce: no gradient seed"))?;
    // Gradients into the statistics, when either is given (the other is then zeros).
    let g_row = c.seed("lse_row", &f.lse_row, None)?;
    let g_col = match symmetric {
        true => c.seed("lse_col", &f.lse_col, None)?,
        false => None,
    };
    let g_lse = match (g_row, g_col) {
        (None, None) => None,
        (r, k) => {
            let zeros = |like: &Array<B>| c.up(&filled(like, 0.0)?);
            let r = r.map_or_else(|| zeros(&f.lse_row), Ok)?;
            let k = k.map_or_else(|| zeros(&f.lse_col), Ok)?;
            Some((r, k))
        }
    };
    let saved = InfoNceSaved {
        lse_row: f.lse_row.view(),
        lse_col: f.lse_col.view(),
    };
    let upstream = InfoNceUpstream {
        loss: g_loss.view(),
        lse: g_lse.as_ref().map(|(r, k)| (r.view(), k.view())),
    };
    let g = fused::infonce_backward(c.be, a.view(), p.view(), ls.view(), saved, upstream, at)?;
    c.put("loss", &f.loss, None)?;
    c.put("lse_row", &f.lse_row, None)?;
    if symmetric {
        c.put("lse_col", &f.lse_col, None)?;
    }
    c.put("grad_a", &g.a, None)?;
    c.put("grad_p", &g.p, None)?;
    c.put("grad_logit_scale", &g.logit_scale, None)
}

/// Output values `segment_mean` may have beyond one segment per row (see `run_segment`).
const MAX_SPARE_SEGMENT_VALUES: usize = 1 << 20;

fn run_segment<B: Backend>(c: &mut Call<B>, attrs: &Attrs) -> Result<()> {
    let x = c.ins.rank("x", 2)?;
    let seg = c.ins.rank("seg", 1)?;
    let segments = match attrs.opt_usize("segments")? {
        Some(s) => s,
        None => {
            // S = max(seg) + 1, counted in i64: the largest i32 id would wrap in i32.
            let ids = seg.data::<i32>()?;
            let max = ids.iter().copied().max().unwrap_or(-1);
            if max == i32::MAX {
                let p = ids.iter().position(|&i| i == max).unwrap_or(0);
                return Err(Error::invalid(
                    "segment_mean",
                    format!("seg[{p}] = {max} would need 2^31 segments, more than i32 ids address"),
                ));
            }
            (max as i64 + 1).max(0) as usize
        }
    };
    // More segments than rows leaves most of them empty by construction: a few-byte input must
    // not size a gigabyte output (ids like 2^27, or a mistyped attribute). Up to 2^20 output
    // values are allowed whatever the row count.
    let (rows, channels) = (x.shape().dim(0)?, x.shape().dim(1)?);
    if segments > rows && segments.saturating_mul(channels) > MAX_SPARE_SEGMENT_VALUES {
        return Err(Error::invalid(
            "segment_mean",
            format!(
                "{segments} segments for {rows} rows of x: more segments than rows may only \
                 give up to 2^20 output values, here {segments} × {channels} channels \
                 (from the segments attribute, or max(seg) + 1)"
            ),
        ));
    }
    let (x, seg) = (c.up(x)?, c.up(seg)?);
    let f = fused::segment_mean_forward(c.be, x.view(), seg.view(), segments)?;
    let gm = c
        .seed("mean", &f.mean, None)?
        .ok_or_else(|| Error::graph("segment_mean: no gradient seed"))?;
    let gx = fused::segment_mean_backward(c.be, gm.view(), seg.view(), f.count.view())?;
    c.put("mean", &f.mean, None)?;
    c.put("count", &f.count, None)?;
    c.put("grad_x", &gx, None)
}

/// Runs op `name` forward and backward on `backend` (see the module doc for the conventions).
/// Returns every output (in the spec's order) then `grad_<input>` for every differentiable
/// input that was given.
pub fn run<B: Backend>(
    name: &str,
    inputs: &[(String, Tensor)],
    attrs: &Json,
    backend: B,
) -> Result<Vec<(String, Tensor)>> {
    run_checked(name, inputs, attrs, backend, Finite::Required)
}

/// Whether float inputs must be finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finite {
    /// A NaN or infinity in an input is an error naming the tensor and the position (default).
    Required,
    /// Non-finite inputs run through the op (to test how it propagates them).
    Allowed,
}

/// [`run`], choosing whether non-finite inputs are refused.
pub fn run_checked<B: Backend>(
    name: &str,
    inputs: &[(String, Tensor)],
    attrs: &Json,
    backend: B,
    finite: Finite,
) -> Result<Vec<(String, Tensor)>> {
    let spec = spec(name)?;
    if finite == Finite::Required {
        for (tname, t) in inputs {
            if let Some(k) = t.first_non_finite() {
                return Err(Error::invalid(
                    spec.name,
                    format!(
                        "{tname}[{k}] is not finite (pass --allow-non-finite to run it anyway)"
                    ),
                ));
            }
        }
    }
    let ins = Ins::new(spec, inputs)?;
    let at = Attrs::new(spec, attrs)?;
    let mut call = Call {
        be: &backend,
        ins: &ins,
        out: Vec::new(),
    };
    match spec.name {
        "lif" => run_lif(&mut call, &at)?,
        "gat" => run_gat(&mut call, &at)?,
        "aggregate" => run_aggregate(&mut call)?,
        "infonce" => run_infonce(&mut call, &at, true)?,
        "infonce_1d" => run_infonce(&mut call, &at, false)?,
        "segment_mean" => run_segment(&mut call, &at)?,
        other => return Err(Error::invalid("op", format!("{other} has no runner"))),
    }
    Ok(call.out)
}

/// `gshn op NAME --inputs IN --out OUT [--attrs JSON] [--device D]`: reads IN, runs the op on
/// `backend`, writes outputs and gradients to OUT (atomically; metadata: op, backend,
/// attrs). Returns a one-line summary.
pub fn run_files<B: Backend>(
    name: &str,
    inputs: &std::path::Path,
    out: &std::path::Path,
    attrs: Option<&str>,
    backend: B,
    finite: Finite,
) -> Result<String> {
    let attrs: Json = match attrs {
        Some(s) => serde_json::from_str(s).map_err(|e| Error::Format {
            path: "--attrs".into(),
            msg: format!("not valid JSON: {e}"),
        })?,
        None => Json::Null,
    };
    let (tensors, _) = crate::tensor::io::load_safetensors_as_stored(inputs)?;
    let backend_name = backend.name();
    let result = run_checked(name, &tensors, &attrs, backend, finite)?;
    let meta = HashMap::from([
        ("op".to_string(), name.to_string()),
        ("backend".to_string(), backend_name.clone()),
        ("attrs".to_string(), attrs.to_string()),
    ]);
    crate::tensor::io::save_safetensors(out, &result, Some(meta))?;
    let names: Vec<&str> = result.iter().map(|r| r.0.as_str()).collect();
    Ok(format!(
        "{name} on {backend_name}: wrote {} to {}",
        names.join(", "),
        out.display()
    ))
}
