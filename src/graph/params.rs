//! Parameters of a graph: where each one is, and how it starts (any model built on gshn's
//! graph uses these; the GSHN model is one).

use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};
use crate::tensor::{DType, Shape, Tensor};
use crate::util::rng::SplitMix64;

/// How a parameter's initial values are drawn (by [`initial_values`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Glorot/Xavier uniform over (fan_in, fan_out) = the first and last dimension.
    Xavier,
    /// Normal with this standard deviation.
    Normal(f64),
    /// Every element set to this value (0 for biases).
    Constant(f64),
}

/// One parameter: its graph value, name, shape and initialiser.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The persistent value that holds it.
    pub id: ValueId,
    /// Its unique name, e.g. `layer.weight`; also keys its random stream in [`initial_values`].
    pub name: String,
    /// Its shape.
    pub shape: Shape,
    /// How its initial values are drawn.
    pub init: Init,
}

/// Creates parameters in a graph and remembers their initialisers.
pub struct ParamSet<'g> {
    /// The graph the parameters are created in (the caller keeps building ops in it).
    pub graph: &'g mut Graph,
    /// Dtype of every parameter created (the master copy the optimizer updates).
    pub dtype: DType,
    /// Dtype the model computes in: [`ParamSet::param`] returns each parameter cast to it
    /// (once, shared by every use) when it differs from `dtype` (mixed precision).
    pub compute: DType,
    specs: Vec<ParamSpec>,
    /// What `param` returned for each spec: the parameter itself or its cast.
    used: Vec<ValueId>,
    /// The first misuse (a name reused with another shape), reported by [`ParamSet::finish`]:
    /// building goes on with plain `ValueId`s, and the error surfaces once, not as a panic.
    misuse: Option<Error>,
}

impl<'g> ParamSet<'g> {
    /// An empty set that creates parameters of `dtype` in `graph`.
    pub fn new(graph: &'g mut Graph, dtype: DType) -> Self {
        Self::mixed(graph, dtype, dtype)
    }
    /// An empty set that keeps parameters in `master` and hands them out cast to `compute`.
    pub fn mixed(graph: &'g mut Graph, master: DType, compute: DType) -> Self {
        ParamSet {
            graph,
            dtype: master,
            compute,
            specs: Vec::new(),
            used: Vec::new(),
            misuse: None,
        }
    }
    /// The parameter behind a value [`ParamSet::param`] returned (itself, or the master of a
    /// cast): what reads a parameter's value after a step fetches.
    pub fn master(&self, used: ValueId) -> ValueId {
        self.used
            .iter()
            .position(|&u| u == used)
            .map_or(used, |k| self.specs[k].id)
    }
    /// The parameters created, in creation order; or the first misuse.
    pub fn finish(self) -> Result<Vec<ParamSpec>> {
        match self.misuse {
            Some(e) => Err(e),
            None => Ok(self.specs),
        }
    }
    /// The parameter `name` in the compute dtype, created on first use; a later call with
    /// the same name shares it (a second path through the same layer, e.g. the text encoder
    /// on negative captions).
    pub fn param(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> ValueId {
        let shape = shape.into();
        if let Some(k) = self.specs.iter().position(|s| s.name == name) {
            let s = &self.specs[k];
            if s.shape != shape && self.misuse.is_none() {
                self.misuse = Some(Error::graph(format!(
                    "parameter {name} reused with shape {shape:?}; it was created with {:?}",
                    s.shape
                )));
            }
            return self.used[k];
        }
        let id = self.graph.param(name, shape.clone(), self.dtype);
        let used = match self.compute == self.dtype {
            true => Ok(id),
            false => self.graph.cast(id, self.compute),
        };
        let used = used.unwrap_or_else(|e| {
            self.misuse.get_or_insert(e);
            id
        });
        self.specs.push(ParamSpec {
            id,
            name: name.to_string(),
            shape,
            init,
        });
        self.used.push(used);
        used
    }
    /// A dense layer's weight \[fan_in, fan_out\] and (optionally) bias \[fan_out\].
    pub fn linear(
        &mut self,
        name: &str,
        fan_in: usize,
        fan_out: usize,
        bias: bool,
    ) -> (ValueId, Option<ValueId>) {
        let w = self.param(&format!("{name}.weight"), [fan_in, fan_out], Init::Xavier);
        let b = bias.then(|| self.param(&format!("{name}.bias"), [fan_out], Init::Constant(0.0)));
        (w, b)
    }
}

/// Initial values for every parameter, deterministic in `seed` (each parameter draws from
/// its own stream keyed by its name, so adding a parameter does not change the others).
pub fn initial_values(
    specs: &[ParamSpec],
    dtype: DType,
    seed: u64,
) -> Result<Vec<(ValueId, Tensor)>> {
    specs
        .iter()
        .map(|s| {
            let key = s.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = SplitMix64::new(seed ^ key);
            let n = s.shape.numel();
            let values: Vec<f64> = match s.init {
                Init::Xavier => {
                    let dims = s.shape.dims();
                    let (fi, fo) = (
                        dims.first().copied().unwrap_or(1),
                        dims.last().copied().unwrap_or(1),
                    );
                    let a = (6.0 / (fi + fo) as f64).sqrt();
                    (0..n).map(|_| rng.range(-a, a)).collect()
                }
                Init::Normal(std) => (0..n).map(|_| std * rng.normal()).collect(),
                Init::Constant(c) => vec![c; n],
            };
            Tensor::new(s.shape.clone(), values)?
                .to_dtype(dtype)
                .map(|t| (s.id, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reused_with_another_shape_is_an_error_not_a_panic() {
        let mut g = Graph::new();
        let mut ps = ParamSet::new(&mut g, DType::F32);
        let a = ps.param("w", [2, 3], Init::Xavier);
        assert_eq!(
            ps.param("w", [2, 3], Init::Xavier),
            a,
            "same name, same shape: shared"
        );
        ps.param("w", [3, 3], Init::Xavier);
        let e = ps.finish().unwrap_err().to_string();
        assert!(e.contains("parameter w reused with shape [3, 3]"), "{e}");
    }
}
