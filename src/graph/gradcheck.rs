//! Finite-difference gradient checks in f64 (DESIGN §7).
//!
//! The graph under test is reduced to a scalar with fixed random weights on every float
//! output, `L = Σ_o ⟨w_o, out_o⟩`, so every output's gradient path is exercised. Analytic
//! gradients come from `Graph::backward`; numeric ones from central differences.

use super::{Executor, Graph, ValueId};
use crate::backend::CpuBackend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::util::rng::SplitMix64;

/// Settings of a finite-difference gradient check, run by [`GradCheck::run`] or
/// [`GradCheck::check_graph`].
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Step of the central difference (default 1e-6).
    pub eps: f64,
    /// Pass if |analytic − numeric| ≤ atol + rtol · max(|analytic|, |numeric|).
    pub rtol: f64,
    /// Absolute tolerance (default 1e-8; `rtol` defaults to 1e-5).
    pub atol: f64,
    /// Elements checked per input (sampled when the input is larger).
    pub max_elements: usize,
    /// Seed of the output weights and of the element sampling (default 7).
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-8,
            max_elements: 48,
            seed: 7,
        }
    }
}

/// Worst disagreement found for one input.
#[derive(Clone, Debug)]
pub struct InputReport {
    /// The input's name.
    pub name: String,
    /// Number of its elements checked.
    pub checked: usize,
    /// Largest |analytic − numeric| over the checked elements.
    pub max_abs_err: f64,
    /// The element that disagreed most: (flat index, analytic, numeric); None if none was checked.
    pub worst: Option<(usize, f64, f64)>,
}

impl GradCheck {
    /// Checks d(Σ_o ⟨w_o, out_o⟩)/d(input) for each input marked in `differentiate`.
    /// `inputs` must be f64 (or i32 for indices); `build` wires the op(s) under test.
    pub fn run(
        &self,
        inputs: &[(&str, Tensor)],
        differentiate: &[bool],
        build: impl FnOnce(&mut Graph, &[ValueId]) -> Result<Vec<ValueId>>,
    ) -> Result<Vec<InputReport>> {
        let mut g = Graph::new();
        let ids: Vec<ValueId> = inputs
            .iter()
            .map(|(n, t)| g.input(*n, t.shape().clone(), t.dtype()))
            .collect();
        let outs = build(&mut g, &ids)?;
        let mut rng = SplitMix64::new(self.seed);
        let mut weights = Vec::new();
        let mut loss = None;
        for o in outs {
            if g.dtype(o)? != DType::F64 {
                continue;
            }
            let shape = g.shape(o)?.clone();
            let w = g.input(format!("w{}", weights.len()), shape.clone(), DType::F64);
            weights.push((
                w,
                Tensor::new(
                    shape.clone(),
                    (0..shape.numel())
                        .map(|_| rng.normal())
                        .collect::<Vec<f64>>(),
                )?,
            ));
            let prod = g.mul(o, w)?;
            let term = g.sum(prod)?;
            loss = Some(match loss {
                Some(l) => g.add(l, term)?,
                None => term,
            });
        }
        let loss = loss.ok_or_else(|| Error::graph("gradcheck: the graph has no f64 output"))?;
        let wrt: Vec<ValueId> = ids
            .iter()
            .zip(differentiate)
            .filter(|(_, &d)| d)
            .map(|(&i, _)| i)
            .collect();
        let mut values: Vec<(ValueId, Tensor)> = ids
            .iter()
            .zip(inputs)
            .map(|(&id, (_, t))| (id, t.clone()))
            .collect();
        values.extend(weights);
        self.check_graph(g, loss, &values, &wrt)
    }

    /// Checks d`loss`/d`v` for each `v` in `wrt` on an existing f64 graph whose inputs and
    /// persistent values are all given in `values` (wrt values among them).
    pub fn check_graph(
        &self,
        mut g: Graph,
        loss: ValueId,
        values: &[(ValueId, Tensor)],
        wrt: &[ValueId],
    ) -> Result<Vec<InputReport>> {
        let mut rng = SplitMix64::new(self.seed ^ 0x9e37);
        let grads = g.backward(loss, wrt)?;
        let mut fetch = vec![loss];
        fetch.extend(&grads);
        let mut full = Executor::new(CpuBackend, g.clone(), &fetch)?;
        let mut fwd = Executor::new(CpuBackend, g, &[loss])?;
        for ex in [&mut full, &mut fwd] {
            for (id, t) in values {
                ex.set(*id, t)?;
            }
        }
        full.run()?;

        let mut reports = Vec::new();
        for (k, &id) in wrt.iter().enumerate() {
            let base = &values
                .iter()
                .find(|(v, _)| *v == id)
                .ok_or_else(|| Error::graph(format!("gradcheck: no value given for {id:?}")))?
                .1;
            let name = fwd.graph().value(id)?.name.clone();
            let analytic = full.get(grads[k])?.to_f64_vec();
            let n = base.numel();
            let mut picks: Vec<usize> = (0..n).collect();
            if n > self.max_elements {
                rng.shuffle(&mut picks);
                picks.truncate(self.max_elements);
            }
            let mut report = InputReport {
                name: name.to_string(),
                checked: picks.len(),
                max_abs_err: 0.0,
                worst: None,
            };
            let mut x = base.clone();
            for &j in &picks {
                let x0 = x.data::<f64>()?[j];
                let mut loss_at = |v: f64, x: &mut Tensor| -> Result<f64> {
                    x.data_mut::<f64>()?[j] = v;
                    fwd.set(id, x)?;
                    fwd.run()?;
                    Ok(fwd.get(loss)?.to_f64_vec()[0])
                };
                let numeric = (loss_at(x0 + self.eps, &mut x)? - loss_at(x0 - self.eps, &mut x)?)
                    / (2.0 * self.eps);
                x.data_mut::<f64>()?[j] = x0;
                let a = analytic[j];
                let err = (a - numeric).abs();
                if err > report.max_abs_err {
                    report.max_abs_err = err;
                }
                if err > self.atol + self.rtol * a.abs().max(numeric.abs()) || !a.is_finite() {
                    return Err(Error::graph(format!(
                        "gradcheck: d/d{name}[{j}]: analytic {a:.10e} vs numeric {numeric:.10e} (|diff| {err:.3e})"
                    )));
                }
                if report.worst.is_none_or(|(_, wa, wn)| err > (wa - wn).abs()) {
                    report.worst = Some((j, a, numeric));
                }
            }
            fwd.set(id, base)?;
            reports.push(report);
        }
        Ok(reports)
    }
}

/// Runs the graph `build` wires on `inputs` (fed as inputs `in0`, `in1`, …) on the CPU and
/// returns its outputs: the forward half of a test.
pub fn evaluate(
    inputs: &[Tensor],
    build: impl FnOnce(&mut Graph, &[ValueId]) -> Result<Vec<ValueId>>,
) -> Result<Vec<Tensor>> {
    let mut g = Graph::new();
    let ids: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.input(format!("in{i}"), t.shape().clone(), t.dtype()))
        .collect();
    let outs = build(&mut g, &ids)?;
    let mut ex = Executor::new(CpuBackend, g, &outs)?;
    for (&id, t) in ids.iter().zip(inputs) {
        ex.set(id, t)?;
    }
    ex.run()?;
    outs.iter().map(|&o| ex.get(o)).collect()
}

/// Random f64 tensor with entries uniform in [lo, hi) (never all zeros).
pub fn random(
    shape: impl Into<crate::tensor::Shape>,
    lo: f64,
    hi: f64,
    rng: &mut SplitMix64,
) -> Tensor {
    let shape = shape.into();
    let data: Vec<f64> = (0..shape.numel()).map(|_| rng.range(lo, hi)).collect();
    Tensor::new(shape, data).expect("numel matches")
}
