//! Parameters of a model graph: where each one is, and how it starts.

use crate::error::Result;
use crate::graph::{Graph, ValueId};
use crate::tensor::{DType, Shape, Tensor};
use crate::util::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Glorot/Xavier uniform over (fan_in, fan_out) = the first and last dimension.
    Xavier,
    /// Normal with this standard deviation.
    Normal(f64),
    Constant(f64),
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub id: ValueId,
    pub name: String,
    pub shape: Shape,
    pub init: Init,
}

/// Creates parameters in a graph and remembers their initialisers.
pub struct ParamSet<'g> {
    pub graph: &'g mut Graph,
    pub dtype: DType,
    pub specs: Vec<ParamSpec>,
}

impl<'g> ParamSet<'g> {
    pub fn new(graph: &'g mut Graph, dtype: DType) -> Self {
        ParamSet {
            graph,
            dtype,
            specs: Vec::new(),
        }
    }
    /// The parameter `name`, created on first use; a later call with the same name shares it
    /// (a second path through the same layer, e.g. the text encoder on negative captions).
    pub fn param(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> ValueId {
        let shape = shape.into();
        if let Some(s) = self.specs.iter().find(|s| s.name == name) {
            assert_eq!(s.shape, shape, "parameter {name} reused with another shape");
            return s.id;
        }
        let id = self.graph.param(name, shape.clone(), self.dtype);
        self.specs.push(ParamSpec {
            id,
            name: name.to_string(),
            shape,
            init,
        });
        id
    }
    /// A dense layer's weight [fan_in, fan_out] and (optionally) bias [fan_out].
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
