//! One fused op, forward and backward, on named tensors: the engine behind `gshn op NAME`
//! (DESIGN §7) and the reference the C ABI (`capi`) is tested against.
//!
//! [`crate::fused::OPS`] describes every op: its input tensors (name, layout, dtype), attributes
//! (JSON, with defaults), outputs, and which inputs get a gradient. [`run`] builds a small graph with the
//! ordinary builders (`Graph::lif`, `Graph::gat`, …), runs it and its symbolic backward on a
//! backend, and returns every output plus `grad_<input>` for every differentiable input.
//!
//! **Upstream gradients.** The backward differentiates `L = Σ_o Σ (o ⊙ grad_o)` over the
//! op's differentiable outputs `o`: `grad_o` is the tensor named `grad_<o>` when the inputs
//! hold one, else the output's default — ones for the main outputs (so with no `grad_*` at
//! all, `L` is the sum of the main outputs) and zeros for auxiliary ones (GAT `alpha`,
//! InfoNCE `lse_row`/`lse_col`). Outputs marked "no gradient" (saved statistics) take none.
//!
//! **Dtypes.** Float tensors are all f32 or all f64 (the op's first input decides); index
//! tensors are i32. Outputs and gradients have the float dtype of the inputs.
//!
//! **Graphs** (`gat`, `aggregate`) come either as a CSR by destination (`row_ptr[N+1]`,
//! `src[E]`) or as a PyG `edge_index[2,E]` (row 0 = source, row 1 = destination, any order).
//! With `edge_index`, edges are stably sorted by destination internally; every edge-indexed
//! tensor (inputs `edge_bias`, `alpha`; outputs `alpha`, `grad_edge_bias`, `grad_alpha`) stays
//! in the caller's `edge_index` order.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fused::{spec, GradDefault, Kind, OpSpec};
use crate::graph::{Executor, Graph, ValueId};
use crate::ops::index::group_positions;
use crate::ops::{CsrGraph, GatAttrs, GraphInputs, InfoNceAttrs, LifConfig, Surrogate};
use crate::tensor::{DType, Storage, Tensor};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};

// ---- inputs and attributes ---------------------------------------------------------------

/// Named inputs of one call, checked against the op's spec.
struct Ins<'a> {
    op: &'static str,
    map: HashMap<&'a str, &'a Tensor>,
    dtype: DType,
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
        for (name, t) in &map {
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
        Ok(Ins {
            op: spec.name,
            map,
            dtype,
        })
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
                let v = serde_json::from_str(a.default).expect("attr defaults are valid JSON");
                (a.name, v)
            })
            .collect();
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
            let d = ei.dims();
            if d.len() != 2 || d[0] != 2 {
                return Err(Error::shape(
                    op,
                    format!("edge_index must be [2, E], got {:?}", ei.shape()),
                ));
            }
            let e = d[1];
            let v = ei.data::<i32>()?;
            let (srcs, dsts) = v.split_at(e);
            if let Some(k) = (0..e).find(|&k| {
                srcs[k] < 0 || dsts[k] < 0 || srcs[k] as usize >= n || dsts[k] as usize >= n
            }) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "edge_index column {k} ({} -> {}) names a node outside 0..{n}",
                        srcs[k], dsts[k]
                    ),
                ));
            }
            // Edges stably grouped by destination: the CSR, and perm[k_csr] = k_given.
            let (row_ptr, order) = group_positions(dsts, n, |d| Some(d as usize));
            let perm: Vec<usize> = order.iter().map(|&k| k as usize).collect();
            let src = perm.iter().map(|&k| srcs[k]).collect();
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
    let w = t.numel() / e.max(1);
    fn go<T: Copy + Default>(v: &[T], perm: &[usize], w: usize, inverse: bool) -> Vec<T> {
        let mut o = vec![T::default(); v.len()];
        for (k, &p) in perm.iter().enumerate() {
            let (to, from) = if inverse { (p, k) } else { (k, p) };
            o[to * w..(to + 1) * w].copy_from_slice(&v[from * w..(from + 1) * w]);
        }
        o
    }
    let s = match t.storage() {
        Storage::F32(v) => Storage::F32(go(v, perm, w, inverse)),
        Storage::F64(v) => Storage::F64(go(v, perm, w, inverse)),
        Storage::I32(v) => Storage::I32(go(v, perm, w, inverse)),
    };
    Tensor::from_storage(t.shape().clone(), s)
}

// ---- running -----------------------------------------------------------------------------

/// A built forward graph: what to feed, the outputs, and the differentiable inputs.
struct Built {
    graph: Graph,
    feeds: Vec<(ValueId, Tensor)>,
    outputs: Vec<(&'static str, ValueId)>,
    /// (name, value) of the inputs that get `grad_<name>`.
    wrt: Vec<(&'static str, ValueId)>,
    /// Edge permutation of an `edge_index` graph, and which outputs are edge-indexed.
    perm: Option<Vec<usize>>,
    edge_outputs: &'static [&'static str],
}

impl Built {
    fn new() -> Built {
        Built {
            graph: Graph::new(),
            feeds: Vec::new(),
            outputs: Vec::new(),
            wrt: Vec::new(),
            perm: None,
            edge_outputs: &[],
        }
    }
    fn input(&mut self, name: &'static str, t: &Tensor) -> ValueId {
        let v = self.graph.input(name, t.shape().clone(), t.dtype());
        self.feeds.push((v, t.clone()));
        v
    }
    fn graph_inputs(&mut self, csr: &CsrGraph) -> GraphInputs {
        let gi = GraphInputs::new(&mut self.graph, "", csr.nodes(), csr.edges());
        for (v, t) in
            gi.ids()
                .into_iter()
                .zip([&csr.row_ptr, &csr.src, &csr.col_ptr, &csr.col_edge])
        {
            self.feeds.push((v, t.clone()));
        }
        gi
    }
}

fn build_lif(ins: &Ins, attrs: &Attrs) -> Result<Built> {
    let mut b = Built::new();
    let cfg = lif_config_of(attrs)?;
    let x = ins.rank("x", 2)?;
    let xv = b.input("x", x);
    let o = match ins.get("tau") {
        Some(tau) => {
            if attrs.given("tau") {
                return Err(Error::invalid(
                    "lif",
                    "tau is given both as an attr and as a tensor (the tensor makes it learnable): give one",
                ));
            }
            let tv = b.input("tau", tau);
            b.wrt.push(("tau", tv));
            b.graph.plif(xv, tv, cfg)?
        }
        None => b.graph.lif(xv, cfg)?,
    };
    b.wrt.insert(0, ("x", xv));
    b.outputs = vec![("spikes", o.spikes), ("v", o.membrane), ("h", o.charge)];
    Ok(b)
}

fn build_gat(ins: &Ins, attrs: &Attrs) -> Result<Built> {
    let mut b = Built::new();
    let z = ins.rank("z", 3)?;
    let (csr, perm) = graph_of(ins, z.dims()[0])?;
    let zv = b.input("z", z);
    let asv = b.input("a_src", ins.req("a_src")?);
    let adv = b.input("a_dst", ins.req("a_dst")?);
    b.wrt = vec![("z", zv), ("a_src", asv), ("a_dst", adv)];
    let be = match ins.get("edge_bias") {
        Some(t) => {
            let t = match &perm {
                Some(p) => permute_rows(t, p, false)?,
                None => t.clone(),
            };
            let v = b.input("edge_bias", &t);
            b.wrt.push(("edge_bias", v));
            Some(v)
        }
        None => None,
    };
    let gi = b.graph_inputs(&csr);
    let at = GatAttrs {
        negative_slope: attrs.f64("negative_slope")?,
        ..GatAttrs::default()
    };
    let o = b.graph.gat(zv, asv, adv, be, &gi, at)?;
    let alpha = b.graph.gat_alpha(zv, asv, adv, be, o.lse, &gi, at)?;
    b.outputs = vec![("out", o.out), ("alpha", alpha), ("lse", o.lse)];
    b.perm = perm;
    b.edge_outputs = &["alpha", "grad_edge_bias"];
    Ok(b)
}

fn build_aggregate(ins: &Ins, _attrs: &Attrs) -> Result<Built> {
    let mut b = Built::new();
    let s = ins.rank("s", 3)?;
    let (csr, perm) = graph_of(ins, s.dims()[1])?;
    let alpha = ins.rank("alpha", 2)?;
    let alpha = match &perm {
        Some(p) => permute_rows(alpha, p, false)?,
        None => alpha.clone(),
    };
    let av = b.input("alpha", &alpha);
    let sv = b.input("s", s);
    let gi = b.graph_inputs(&csr);
    let y = b.graph.aggregate(av, sv, &gi)?;
    b.wrt = vec![("alpha", av), ("s", sv)];
    b.outputs = vec![("y", y)];
    b.perm = perm;
    b.edge_outputs = &["grad_alpha"];
    Ok(b)
}

fn build_infonce(ins: &Ins, attrs: &Attrs, symmetric: bool) -> Result<Built> {
    let mut b = Built::new();
    let av = b.input("a", ins.rank("a", 2)?);
    let pv = b.input("p", ins.rank("p", 2)?);
    let lv = b.input("logit_scale", ins.req("logit_scale")?);
    let chunk = attrs
        .opt_usize("chunk")?
        .ok_or_else(|| attrs.bad("chunk", "a non-negative integer"))?;
    let o = b
        .graph
        .infonce(av, pv, lv, InfoNceAttrs { symmetric, chunk })?;
    b.wrt = vec![("a", av), ("p", pv), ("logit_scale", lv)];
    b.outputs = vec![("loss", o.loss), ("lse_row", o.lse_row)];
    if symmetric {
        b.outputs.push(("lse_col", o.lse_col));
    }
    Ok(b)
}

/// Output values `segment_mean` may have beyond one segment per row (see `build_segment`).
const MAX_SPARE_SEGMENT_VALUES: usize = 1 << 20;

fn build_segment(ins: &Ins, attrs: &Attrs) -> Result<Built> {
    let mut b = Built::new();
    let x = ins.rank("x", 2)?;
    let seg = ins.rank("seg", 1)?;
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
    let (rows, channels) = (x.shape().dim(0), x.shape().dim(1));
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
    let xv = b.input("x", x);
    let sv = b.input("seg", seg);
    let o = b.graph.segment_mean(xv, sv, segments)?;
    b.wrt = vec![("x", xv)];
    b.outputs = vec![("mean", o.mean), ("count", o.count)];
    Ok(b)
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
    let mut b = match spec.name {
        "lif" => build_lif(&ins, &at)?,
        "gat" => build_gat(&ins, &at)?,
        "aggregate" => build_aggregate(&ins, &at)?,
        "infonce" => build_infonce(&ins, &at, true)?,
        "infonce_1d" => build_infonce(&ins, &at, false)?,
        "segment_mean" => build_segment(&ins, &at)?,
        other => return Err(Error::invalid("op", format!("{other} has no runner"))),
    };
    let dtype = ins.dtype;

    // L = Σ_o Σ (o ⊙ grad_o) over the outputs with a gradient.
    let mut terms = Vec::new();
    for &(oname, v) in &b.outputs {
        let os = spec
            .outputs
            .iter()
            .find(|s| s.name == oname)
            .expect("outputs follow the spec");
        let gname = format!("grad_{oname}");
        let shape = b.graph.shape(v).clone();
        let term = match (ins.get(&gname), os.grad) {
            (Some(gt), _) => {
                if gt.shape() != &shape {
                    return Err(Error::shape(
                        spec.name,
                        format!(
                            "{gname} must have the shape of {oname} {shape:?}, got {:?}",
                            gt.shape()
                        ),
                    ));
                }
                let gt = match (&b.perm, b.edge_outputs.contains(&oname)) {
                    (Some(p), true) => permute_rows(gt, p, false)?,
                    _ => gt.clone(),
                };
                let gv = b.graph.input(gname, shape, dtype);
                b.feeds.push((gv, gt));
                let m = b.graph.mul(v, gv)?;
                Some(b.graph.sum(m)?)
            }
            (None, GradDefault::Ones) => Some(b.graph.sum(v)?),
            (None, _) => None,
        };
        terms.extend(term);
    }
    let mut fetch: Vec<ValueId> = b.outputs.iter().map(|o| o.1).collect();
    let grads: Vec<ValueId> = match terms.split_first() {
        Some((&first, rest)) => {
            let mut loss = first;
            for &t in rest {
                loss = b.graph.add(loss, t)?;
            }
            let wrt: Vec<ValueId> = b.wrt.iter().map(|w| w.1).collect();
            b.graph.backward(loss, &wrt)?
        }
        // Every seed is zero: the gradients are zeros.
        None => {
            let mut gs = Vec::new();
            for &(_, w) in &b.wrt {
                let m = b.graph.meta(w).clone();
                gs.push(b.graph.fill(0.0, m.shape, m.dtype)?);
            }
            gs
        }
    };
    fetch.extend(&grads);

    let mut ex = Executor::new(backend, b.graph, &fetch)?;
    for (v, t) in &b.feeds {
        ex.set(*v, t)?;
    }
    ex.run()?;
    let mut result = Vec::new();
    for &(oname, v) in &b.outputs {
        result.push((oname.to_string(), ex.get(v)?));
    }
    for (&(wname, _), &g) in b.wrt.iter().zip(&grads) {
        result.push((format!("grad_{wname}"), ex.get(g)?));
    }
    if let Some(p) = &b.perm {
        for (n, t) in result.iter_mut() {
            if b.edge_outputs.contains(&n.as_str()) {
                *t = permute_rows(t, p, true)?;
            }
        }
    }
    Ok(result)
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
    let (tensors, _) = crate::tensor::io::load_safetensors(inputs)?;
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
