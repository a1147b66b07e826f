//! Multi-step LIF neurons (DESIGN §3.1, SpikingJelly `LIFNode` semantics).

use super::{Meta, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};

/// Surrogate derivative σ'(x) of the spike function at x = H − v_th.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "alpha", rename_all = "snake_case")]
pub enum Surrogate {
    /// α / (2 (1 + (π α x / 2)²)); default α = 2
    ATan(f64),
    /// α s (1 − s), s = sigmoid(α x); default α = 4
    Sigmoid(f64),
    /// 1 / (1 + α|x|)²
    SuperSpike(f64),
    /// 1/α if |x| < α/2 else 0
    Rectangular(f64),
}

impl Default for Surrogate {
    fn default() -> Self {
        Surrogate::ATan(2.0)
    }
}

impl Surrogate {
    /// σ'(x).
    pub fn grad(self, x: f64) -> f64 {
        match self {
            Surrogate::ATan(a) => {
                let u = std::f64::consts::FRAC_PI_2 * a * x;
                a / (2.0 * (1.0 + u * u))
            }
            Surrogate::Sigmoid(a) => {
                let s = 1.0 / (1.0 + (-a * x).exp());
                a * s * (1.0 - s)
            }
            Surrogate::SuperSpike(a) => 1.0 / (1.0 + a * x.abs()).powi(2),
            Surrogate::Rectangular(a) => {
                if x.abs() < a / 2.0 {
                    1.0 / a
                } else {
                    0.0
                }
            }
        }
    }
    /// A smooth stand-in for the Heaviside step whose derivative is exactly σ' (its primitive,
    /// equal to ½ at 0): with it, finite differences check every surrogate-gradient circuit.
    pub fn primitive(self, x: f64) -> f64 {
        match self {
            Surrogate::ATan(a) => {
                (std::f64::consts::FRAC_PI_2 * a * x).atan() / std::f64::consts::PI + 0.5
            }
            Surrogate::Sigmoid(a) => 1.0 / (1.0 + (-a * x).exp()),
            Surrogate::SuperSpike(a) => 0.5 + x.signum() * (1.0 - 1.0 / (1.0 + a * x.abs())) / a,
            Surrogate::Rectangular(a) => (x / a + 0.5).clamp(0.0, 1.0),
        }
    }
}

/// LIF attributes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LifConfig {
    /// Membrane time constant (> 1). When `learnable_tau`, the initial value; tau is then an input.
    pub tau: f64,
    pub v_th: f64,
    /// `Some(v)`: hard reset to v. `None`: soft reset (subtract v_th), leak toward 0.
    pub v_reset: Option<f64>,
    pub decay_input: bool,
    pub detach_reset: bool,
    pub surrogate: Surrogate,
    /// tau is an input `[]` (PLIF) and gets a gradient.
    pub learnable_tau: bool,
    /// Test mode: spikes are the surrogate's smooth primitive instead of a step, so the
    /// whole BPTT can be checked by finite differences.
    pub smooth: bool,
}

impl Default for LifConfig {
    fn default() -> Self {
        LifConfig {
            tau: 2.0,
            v_th: 1.0,
            v_reset: Some(0.0),
            decay_input: true,
            detach_reset: false,
            surrogate: Surrogate::default(),
            learnable_tau: false,
            smooth: false,
        }
    }
}

pub(crate) fn infer(op: &Op, _inputs: &[Meta]) -> Result<Vec<Meta>> {
    Err(Error::Unsupported {
        backend: "graph",
        what: format!("{}: shape rule not implemented yet", op.name()),
    })
}

pub(crate) fn grad(
    _g: &mut Graph,
    node: &Node,
    _og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    Err(Error::graph(format!(
        "{} has no gradient rule yet",
        node.op.name()
    )))
}
