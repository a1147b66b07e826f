//! Multi-step LIF neurons (DESIGN §3.1, SpikingJelly `LIFNode` semantics).

use super::{check, Op};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::{DType, Meta, Shape};

/// Surrogate derivative σ'(x) of the spike function at x = H − v_th.
/// Named `atan`, `sigmoid`, `super_spike`, `rectangular` everywhere (configs, `gshn op`,
/// Python); `a_tan`, `superspike` and `rect` are accepted older spellings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "alpha", rename_all = "snake_case")]
pub enum Surrogate {
    /// α / (2 (1 + (π α x / 2)²)); default α = 2
    #[serde(rename = "atan", alias = "a_tan")]
    ATan(f64),
    /// α s (1 − s), s = sigmoid(α x); default α = 4
    Sigmoid(f64),
    /// 1 / (1 + α|x|)²; default α = 10
    #[serde(alias = "superspike")]
    SuperSpike(f64),
    /// 1/α if |x| < α/2 else 0; default α = 1
    #[serde(alias = "rect")]
    Rectangular(f64),
}

impl Default for Surrogate {
    fn default() -> Self {
        Surrogate::ATan(2.0)
    }
}

impl Surrogate {
    /// The surrogate's number in the kernels (`surrogate_grad` in `kernels/common.cuh`) and in
    /// the C ABI (`GSHN_SURROGATE_*` in `include/gshn.h`).
    pub fn code(self) -> i32 {
        match self {
            Surrogate::ATan(_) => 0,
            Surrogate::Sigmoid(_) => 1,
            Surrogate::SuperSpike(_) => 2,
            Surrogate::Rectangular(_) => 3,
        }
    }
    /// The surrogate numbered `code` (see [`Surrogate::code`]) with parameter `alpha`.
    pub fn from_code(code: i32, alpha: f64) -> Option<Surrogate> {
        Some(match code {
            0 => Surrogate::ATan(alpha),
            1 => Surrogate::Sigmoid(alpha),
            2 => Surrogate::SuperSpike(alpha),
            3 => Surrogate::Rectangular(alpha),
            _ => return None,
        })
    }
    /// The surrogate called `name` (case-insensitive, older spellings accepted) with parameter
    /// `alpha`, or its default α when None.
    pub fn from_name(name: &str, alpha: Option<f64>) -> Option<Surrogate> {
        let (make, default): (fn(f64) -> Surrogate, f64) = match name.to_ascii_lowercase().as_str()
        {
            "atan" | "a_tan" => (Surrogate::ATan, 2.0),
            "sigmoid" => (Surrogate::Sigmoid, 4.0),
            "super_spike" | "superspike" => (Surrogate::SuperSpike, 10.0),
            "rectangular" | "rect" => (Surrogate::Rectangular, 1.0),
            _ => return None,
        };
        Some(make(alpha.unwrap_or(default)))
    }
    /// The surrogate's parameter α.
    pub fn alpha(self) -> f64 {
        match self {
            Surrogate::ATan(a)
            | Surrogate::Sigmoid(a)
            | Surrogate::SuperSpike(a)
            | Surrogate::Rectangular(a) => a,
        }
    }
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

/// LIF attributes. In a TOML config every key is optional; `v_reset = "soft"` selects the
/// soft reset.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifConfig {
    /// Membrane time constant (> 1). When `learnable_tau`, the initial value; tau is then an input.
    pub tau: f64,
    /// Firing threshold (default 1).
    pub v_th: f64,
    /// `Some(v)`: hard reset to v. `None`: soft reset (subtract v_th), leak toward 0.
    #[serde(with = "reset_serde")]
    pub v_reset: Option<f64>,
    /// Divide the input by tau too (`H = V + (X − (V − v_r)) / tau`); else
    /// `H = V − (V − v_r) / tau + X`. Default true.
    pub decay_input: bool,
    /// Stop the gradient through the reset (the σ' terms of ∂V/∂H vanish). Default false.
    pub detach_reset: bool,
    /// Surrogate derivative used for the spike's backward (default ATan, α = 2).
    pub surrogate: Surrogate,
    /// tau is an input `[]` (PLIF) and gets a gradient.
    pub learnable_tau: bool,
    /// Test mode: spikes are the surrogate's smooth primitive instead of a step, so the
    /// whole BPTT can be checked by finite differences.
    pub smooth: bool,
    /// Write the membrane `V` (output 1). When false (nothing reads V, e.g. a rate readout),
    /// V is an empty `[0]` tensor that is never written: its memory and its bandwidth are
    /// saved, and S and H are the same. Default true; not a config key (the model decides).
    #[serde(skip)]
    pub membrane: bool,
    /// Store the spikes as u8 (exactly 0 or 1, a quarter of f32's bytes; DESIGN §3.1): matmul
    /// and aggregation read them as their float type, and their gradient is that type. The
    /// backward needs no stored spikes (it recomputes them from H), so results are the same
    /// bit for bit. Not with `smooth` (its spikes are not 0/1). Default false.
    pub u8_spikes: bool,
}

/// The time constant rule: finite and > 1 (so the leak `1 − 1/tau` is in (0, 1)).
pub fn validate_tau(op: &'static str, tau: f64) -> Result<()> {
    if tau.is_finite() && tau > 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("tau must be finite and > 1, got {tau}"),
        ))
    }
}

/// The time-constant rule at the element type the kernels compute in: an f32 run rounds tau
/// first (1.00000001 becomes 1.0, which the rule rejects), so forward and backward agree.
pub fn validate_tau_as(op: &'static str, tau: f64, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 => validate_tau(op, tau as f32 as f64),
        _ => validate_tau(op, tau),
    }
}

/// `v_reset` in configs: a number (hard reset to it) or the string "soft".
mod reset_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_f64(*x),
            None => s.serialize_str("soft"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reset {
        Value(f64),
        Word(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Reset::deserialize(d)? {
            Reset::Value(x) => Ok(Some(x)),
            Reset::Word(w) if w == "soft" => Ok(None),
            Reset::Word(w) => Err(serde::de::Error::custom(format!(
                "v_reset must be a number or \"soft\", got {w:?}"
            ))),
        }
    }
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
            membrane: true,
            u8_spikes: false,
        }
    }
}

impl LifConfig {
    /// `v_r` of DESIGN §3.1: the reset value (hard reset) or 0 (soft reset); also `V_0`.
    pub fn v_rest(&self) -> f64 {
        self.v_reset.unwrap_or(0.0)
    }

    /// Checks the attributes (everything but a learnable tau, which is checked when fed, with
    /// [`validate_tau`]).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if !self.learnable_tau {
            validate_tau(op, self.tau)?;
        }
        if !self.v_th.is_finite() {
            return Err(Error::invalid(
                op,
                format!("v_th must be finite, got {}", self.v_th),
            ));
        }
        if let Some(v) = self.v_reset {
            if !v.is_finite() {
                return Err(Error::invalid(
                    op,
                    format!("v_reset must be finite, got {v}"),
                ));
            }
        }
        if self.u8_spikes && self.smooth {
            return Err(Error::invalid(
                op,
                "u8_spikes stores 0/1 spikes; smooth (test) mode's spikes are fractions",
            ));
        }
        let a = self.surrogate.alpha();
        if !(a.is_finite() && a > 0.0) {
            return Err(Error::invalid(
                op,
                format!(
                    "surrogate alpha must be finite and > 0, got {:?}",
                    self.surrogate
                ),
            ));
        }
        Ok(())
    }
}

/// The three outputs of `Op::Lif`, all `[T, N]` (the membrane `[0]` when not written:
/// [`LifConfig::membrane`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifOutputs {
    /// Spikes `S` (0/1; the surrogate's primitive in `smooth` mode), u8 with
    /// [`LifConfig::u8_spikes`].
    pub spikes: ValueId,
    /// Membrane `V` after reset.
    pub membrane: ValueId,
    /// Charge `H` (membrane before firing), saved for the backward. Not differentiable:
    /// `Graph::backward` through it returns an error.
    pub charge: ValueId,
}

/// The inputs of `Op::LifBackward`, by name: `h (, gS) (, gV) (, tau)`, the one definition of
/// that order, generic over what an input is (a `Meta`, a `ValueId`, a buffer view).
#[derive(Clone, Copy, Debug)]
pub struct LifBackwardArgs<'a, T> {
    /// The charge H saved by the forward.
    pub charge: &'a T,
    /// Gradient of the spikes (absent = zeros).
    pub grad_spikes: Option<&'a T>,
    /// Gradient of the membrane (absent = zeros).
    pub grad_membrane: Option<&'a T>,
    /// The fed time constant (learnable tau).
    pub tau: Option<&'a T>,
}

impl<'a, T> LifBackwardArgs<'a, T> {
    /// Names the inputs of a `LifBackward`; an error for another op or a count that is off.
    pub fn of(op: &Op, inputs: &'a [T]) -> Result<Self> {
        let name = op.name();
        let Op::LifBackward {
            cfg,
            has_gs,
            has_gv,
        } = op
        else {
            return Err(Error::graph(format!("{name} is not lif_backward")));
        };
        let n = 1 + *has_gs as usize + *has_gv as usize + cfg.learnable_tau as usize;
        check::arity(name, inputs, n)?;
        let mut it = inputs.iter();
        let mut take = |present: bool| if present { it.next() } else { None };
        let charge = take(true).ok_or_else(|| Error::graph(format!("{name}: no h")))?;
        let grad_spikes = take(*has_gs);
        let grad_membrane = take(*has_gv);
        let tau = take(cfg.learnable_tau);
        Ok(LifBackwardArgs {
            charge,
            grad_spikes,
            grad_membrane,
            tau,
        })
    }

    /// The inputs in their positional order (the inverse of [`LifBackwardArgs::of`]).
    pub fn list(&self) -> Vec<&'a T> {
        let rest = [self.grad_spikes, self.grad_membrane, self.tau];
        std::iter::once(self.charge)
            .chain(rest.into_iter().flatten())
            .collect()
    }
}

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    match op {
        Op::Lif(cfg) => {
            cfg.validate(name)?;
            check::arity(name, inputs, 1 + cfg.learnable_tau as usize)?;
            let x = &inputs[0];
            check::float(name, "x", x)?;
            if !cfg.learnable_tau {
                validate_tau_as(name, cfg.tau, x.dtype)?;
            }
            check::rank(name, "x [T, N]", x, 2)?;
            if cfg.learnable_tau {
                check::same_dtype(name, "x and tau", x, &inputs[1])?;
                check::dims(name, "tau", &inputs[1], &[])?;
            }
            let v = if cfg.membrane {
                x.clone()
            } else {
                Meta::new(vec![0], x.dtype)
            };
            let s = match cfg.u8_spikes {
                true => Meta::new(x.shape.clone(), DType::U8),
                false => x.clone(),
            };
            Ok(vec![s, v, x.clone()])
        }
        Op::LifBackward {
            cfg,
            has_gs,
            has_gv,
        } => {
            cfg.validate(name)?;
            if !has_gs && !has_gv {
                return Err(Error::invalid(
                    name,
                    "needs the gradient of the spikes, of the membrane, or both",
                ));
            }
            let x = LifBackwardArgs::of(op, inputs)?;
            let h = x.charge;
            check::float(name, "h", h)?;
            if !cfg.learnable_tau {
                validate_tau_as(name, cfg.tau, h.dtype)?;
            }
            check::rank(name, "h [T, N]", h, 2)?;
            for (g, what) in [(x.grad_spikes, "gS"), (x.grad_membrane, "gV")] {
                if let Some(g) = g {
                    check::same_dtype(name, what, h, g)?;
                    check::dims(name, what, g, h.shape.dims())?;
                }
            }
            let mut out = vec![h.clone()];
            if let Some(tau) = x.tau {
                check::same_dtype(name, "h and tau", h, tau)?;
                check::dims(name, "tau", tau, &[])?;
                out.push(Meta::new(Shape::scalar(), h.dtype));
            }
            Ok(out)
        }
        _ => Err(Error::graph(format!("{name} is not a LIF op"))),
    }
}

/// `Lif` → `LifBackward` with the gradients that reach S and V (an absent one is not fed,
/// not materialised as zeros). H is a saved tensor: a gradient reaching it is an error.
pub(crate) fn grad(
    g: &mut Graph,
    node: &Node,
    og: &[Option<ValueId>],
) -> Result<Vec<Option<ValueId>>> {
    let Op::Lif(cfg) = &node.op else {
        return Err(Error::graph(format!(
            "{} has no gradient rule",
            node.op.name()
        )));
    };
    if og.get(2).copied().flatten().is_some() {
        return Err(Error::graph(
            "lif: the charge H is saved for the backward and is not differentiable; \
             differentiate through the spikes or the membrane instead",
        ));
    }
    // without a membrane output there is no V to differentiate through
    let (gs, gv) = (og[0], og[1].filter(|_| cfg.membrane));
    if gs.is_none() && gv.is_none() {
        return Ok(vec![None; node.inputs.len()]);
    }
    let inputs: Vec<ValueId> = LifBackwardArgs {
        charge: &node.outputs[2],
        grad_spikes: gs.as_ref(),
        grad_membrane: gv.as_ref(),
        tau: node.inputs.get(1),
    }
    .list()
    .into_iter()
    .copied()
    .collect();
    let out = g.push(
        Op::LifBackward {
            cfg: *cfg,
            has_gs: gs.is_some(),
            has_gv: gv.is_some(),
        },
        &inputs,
    )?;
    Ok(out.into_iter().map(Some).collect())
}

/// Builders.
impl Graph {
    /// Multi-step LIF with a fixed `cfg.tau` over `x[T, N]` (DESIGN §3.1).
    pub fn lif(&mut self, x: ValueId, cfg: LifConfig) -> Result<LifOutputs> {
        if cfg.learnable_tau {
            return Err(Error::invalid(
                "lif",
                "cfg.learnable_tau is set: use Graph::plif with a tau value",
            ));
        }
        self.lif_op(cfg, &[x])
    }

    /// Multi-step LIF with a learnable time constant (PLIF): `tau` is a `[]` value (usually a
    /// parameter initialised to `cfg.tau`) and receives a gradient. `cfg.learnable_tau` is
    /// set by this builder. A fed tau that is not finite or ≤ 1 is an error at run time.
    pub fn plif(&mut self, x: ValueId, tau: ValueId, cfg: LifConfig) -> Result<LifOutputs> {
        let cfg = LifConfig {
            learnable_tau: true,
            ..cfg
        };
        self.lif_op(cfg, &[x, tau])
    }

    fn lif_op(&mut self, cfg: LifConfig, inputs: &[ValueId]) -> Result<LifOutputs> {
        let out = self.push(Op::Lif(cfg), inputs)?;
        Ok(LifOutputs {
            spikes: out[0],
            membrane: out[1],
            charge: out[2],
        })
    }
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn lif_backward_inputs_round_trip() {
        for has_gs in [false, true] {
            for has_gv in [false, true] {
                for learnable_tau in [false, true] {
                    let op = Op::LifBackward {
                        cfg: LifConfig {
                            learnable_tau,
                            ..LifConfig::default()
                        },
                        has_gs,
                        has_gv,
                    };
                    let n = 1 + has_gs as usize + has_gv as usize + learnable_tau as usize;
                    let inputs: Vec<usize> = (0..n).collect();
                    let x = LifBackwardArgs::of(&op, &inputs).unwrap();
                    assert_eq!(x.list().into_iter().copied().collect::<Vec<_>>(), inputs);
                    assert_eq!(x.grad_spikes.copied(), has_gs.then_some(1));
                    assert_eq!(x.tau.copied(), learnable_tau.then_some(n - 1));
                    assert!(LifBackwardArgs::of(&op, &inputs[..n - 1]).is_err());
                }
            }
        }
    }
}
