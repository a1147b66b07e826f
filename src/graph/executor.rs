//! Runs a planned graph on a backend.

use super::{Graph, Plan, ValueId, ValueKind};
use crate::backend::{Backend, View, ViewMut};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Owns the buffers of one planned graph: fed inputs, persistent values (parameters and
/// optimizer state, set by the caller and kept across runs) and the plan's slots.
pub struct Executor<B: Backend> {
    backend: B,
    graph: Graph,
    plan: Plan,
    /// Buffers of inputs and persistent values, by value index.
    owned: Vec<Option<B::Buffer>>,
    slots: Vec<Option<B::Buffer>>,
    /// Anomaly mode (see [`Executor::check_finite`]).
    check_finite: bool,
    /// Per-node seconds and runs while profiling (see [`Executor::profile`]).
    timing: Option<(Vec<f64>, usize)>,
    /// Recording and replay of runs (see [`Executor::replay_runs`]).
    replay: Replay<B::Recording>,
}

/// Where an executor stands with recording its runs ([`Executor::replay_runs`]).
enum Replay<R> {
    /// Every run launches its ops one by one.
    Off,
    /// The next run is recorded.
    Armed,
    /// Runs replay this recording.
    Recorded(R),
    /// The backend recorded nothing: runs launch their ops one by one.
    Unavailable,
}

impl<B: Backend> Executor<B> {
    /// Plans `graph` for reading `fetch` after each run (plus all in-place updates).
    pub fn new(backend: B, graph: Graph, fetch: &[ValueId]) -> Result<Self> {
        let plan = Plan::new(&graph, fetch)?;
        let slots = plan
            .slots
            .iter()
            .map(|s| backend.alloc(s.dtype, s.len).map(Some))
            .collect::<Result<_>>()?;
        let owned = (0..graph.values().len()).map(|_| None).collect();
        Ok(Executor {
            backend,
            graph,
            plan,
            owned,
            slots,
            check_finite: false,
            timing: None,
            replay: Replay::Off,
        })
    }

    /// Replay of runs on (the default: off): the next [`Executor::run`] runs and records its
    /// device work ([`Backend::record`]: a CUDA graph), and each run after it replays the
    /// recording in one launch, after redoing only the host part of the ops (index checks,
    /// host-built index tables) for its inputs. The same kernels on the same buffers: the same
    /// results, bit for bit. Where the backend cannot record (the CPU), runs go on as before.
    /// Profiling and anomaly mode run op by op; [`Executor::run_forward`] always does.
    pub fn replay_runs(&mut self, on: bool) {
        self.replay = if on { Replay::Armed } else { Replay::Off };
    }

    /// Whether runs now replay a recording (see [`Executor::replay_runs`]).
    pub fn replaying(&self) -> bool {
        matches!(self.replay, Replay::Recorded(_))
    }

    /// Profiling on (from zero) or off: every node of the next runs is timed, the backend
    /// synchronised after each (a GPU then runs one kernel at a time: a profiled run is
    /// slower, its shares are what they measure). [`Executor::profile_report`] sums them.
    pub fn profile(&mut self, on: bool) {
        self.timing = on.then(|| (vec![0.0; self.graph.nodes().len()], 0));
    }

    /// Time per run by model part and op kind since profiling was turned on (`None` when off).
    pub fn profile_report(&self) -> Option<super::profile::Profile> {
        let (seconds, runs) = self.timing.as_ref()?;
        Some(super::profile::Profile::of(&self.graph, seconds, *runs))
    }

    /// Anomaly mode, like PyTorch's: after every op, its outputs are read back and the first
    /// NaN or infinity stops the run with an error naming the op, the node and the value.
    /// For finding where a run goes non-finite; it copies every output to the host, so it is
    /// slow. Off (the default), it costs one branch per op.
    pub fn check_finite(&mut self, on: bool) {
        self.check_finite = on;
    }

    /// The graph it runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// Its plan: schedule, slots and memory report.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Sets an input (for the next runs) or a persistent value (kept until set again).
    pub fn set(&mut self, v: ValueId, t: &Tensor) -> Result<()> {
        let value = self.graph.value(v)?;
        if matches!(value.kind, ValueKind::Computed { .. }) {
            return Err(Error::graph(format!(
                "{:?} is computed by the graph and cannot be set",
                value.name
            )));
        }
        if t.shape() != &value.meta.shape || t.dtype() != value.meta.dtype {
            return Err(Error::shape(
                "executor",
                format!(
                    "{:?} is {:?} {:?}, got {:?} {:?}",
                    value.name,
                    value.meta.dtype,
                    value.meta.shape,
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        let slot = &mut self.owned[v.0 as usize];
        if slot.is_none() {
            *slot = Some(self.backend.alloc(t.dtype(), t.numel())?);
            // a recording knows the buffers it was recorded with
            if let Replay::Recorded(_) = self.replay {
                self.replay = Replay::Armed;
            }
        }
        self.backend.write(slot.as_mut().unwrap(), t)
    }

    /// Reads an input, a persistent value, or a fetched computed value (after a run).
    pub fn get(&self, v: ValueId) -> Result<Tensor> {
        let value = self
            .graph
            .values()
            .get(v.0 as usize)
            .ok_or_else(|| Error::graph(format!("unknown value {v:?}")))?;
        let buf = match value.kind {
            ValueKind::Computed { .. } => {
                if !self.plan.fetch.contains(&v) {
                    return Err(Error::graph(format!(
                        "{:?} was not planned as a fetch",
                        value.name
                    )));
                }
                self.plan.slot_of[v.0 as usize].and_then(|s| self.slots[s].as_ref())
            }
            _ => self.owned[v.0 as usize].as_ref(),
        };
        let buf = buf.ok_or_else(|| Error::graph(format!("{:?} has not been set", value.name)))?;
        self.backend.read(buf, &value.meta.shape, value.meta.dtype)
    }

    /// Every persistent value (parameters and optimizer state) with its name: what a checkpoint
    /// of this graph holds (write it with `tensor::io::save_safetensors`).
    pub fn persistent_values(&self) -> Result<Vec<(String, Tensor)>> {
        self.persistent_ids()
            .map(|(id, name)| Ok((name.to_string(), self.get(id)?)))
            .collect()
    }

    /// Sets every persistent value from `values` by name, as [`Executor::persistent_values`]
    /// gave them, so that training resumes exactly. A persistent value that `values` lacks, a
    /// name the graph does not have, or another shape or dtype is an error.
    pub fn set_persistent_values(&mut self, values: &[(String, Tensor)]) -> Result<()> {
        let ids: Vec<(ValueId, String)> = self
            .persistent_ids()
            .map(|(id, name)| (id, name.to_string()))
            .collect();
        if let Some((name, _)) = values
            .iter()
            .find(|(n, _)| !ids.iter().any(|(_, m)| m == n))
        {
            return Err(Error::graph(format!(
                "{name:?} is not a parameter or state of this graph"
            )));
        }
        for (id, name) in ids {
            let t = values
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::graph(format!("no value given for {name:?}")))?;
            self.set(id, &t.1)?;
        }
        Ok(())
    }

    fn persistent_ids(&self) -> impl Iterator<Item = (ValueId, &str)> {
        self.graph
            .values()
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v.kind, ValueKind::Persistent { .. }))
            .map(|(i, v)| (ValueId(i as u32), v.name.as_str()))
    }

    /// Runs the schedule once: everything the fetched values need, and every in-place update
    /// (a training step).
    pub fn run(&mut self) -> Result<()> {
        let op_by_op = self.timing.is_some() || self.check_finite;
        let (backend, mut nodes, replay) = self.split();
        let mut run = || nodes.run(backend, false);
        match replay {
            Replay::Recorded(rec) if !op_by_op => backend.replay(rec, &mut run),
            Replay::Armed if !op_by_op => {
                let recorded = backend.record(&mut run)?;
                *replay = recorded.map_or(Replay::Unavailable, Replay::Recorded);
                Ok(())
            }
            _ => run(),
        }
    }

    /// Runs only what the fetched values need, without the in-place updates: a training graph
    /// evaluated with its current parameters (the optimizer does not step, its state is not
    /// touched). Inputs that only the updates read need not be set.
    pub fn run_forward(&mut self) -> Result<()> {
        let (backend, mut nodes, _) = self.split();
        nodes.run(backend, true)
    }

    /// The backend, what a run of the nodes uses, and the replay state, borrowed apart (a
    /// recording drives the run).
    fn split(&mut self) -> (&B, Nodes<'_, B>, &mut Replay<B::Recording>) {
        let nodes = Nodes {
            homes: Homes {
                graph: &self.graph,
                plan: &self.plan,
                owned: &mut self.owned,
                slots: &mut self.slots,
            },
            check_finite: self.check_finite,
            timing: &mut self.timing,
        };
        (&self.backend, nodes, &mut self.replay)
    }
}

/// What a run of an executor's nodes reads and writes, besides the backend.
struct Nodes<'a, B: Backend> {
    homes: Homes<'a, B>,
    check_finite: bool,
    timing: &'a mut Option<(Vec<f64>, usize)>,
}

impl<B: Backend> Nodes<'_, B> {
    /// Runs the schedule (or its forward part) op by op.
    fn run(&mut self, backend: &B, forward_only: bool) -> Result<()> {
        backend.run_many(&mut || self.run_ops(backend, forward_only))
    }

    fn run_ops(&mut self, backend: &B, forward_only: bool) -> Result<()> {
        let Nodes {
            homes,
            check_finite,
            timing,
        } = self;
        let (graph, plan, timing) = (homes.graph, homes.plan, &mut **timing);
        let schedule = if forward_only {
            &plan.forward
        } else {
            &plan.schedule
        };
        if let Some((_, runs)) = timing {
            *runs += 1;
        }
        for &n in schedule {
            let started = timing.is_some().then(std::time::Instant::now);
            let node = graph.node(n)?;
            let mutated = node.op.mutated_inputs();
            // Take the buffers this node writes out of their homes, so the rest can be
            // borrowed as inputs (the plan guarantees they are distinct).
            let written = if mutated > 0 {
                &node.inputs[..mutated]
            } else {
                &node.outputs[..]
            };
            let mut taken = Vec::with_capacity(written.len());
            for &w in written {
                taken.push(homes.take(w)?);
            }
            let result = {
                let read = &node.inputs[mutated..];
                let mut inputs = Vec::with_capacity(read.len());
                for &i in read {
                    let meta = &graph.value(i)?.meta;
                    inputs.push(View {
                        buf: homes.get(i)?,
                        shape: &meta.shape,
                        dtype: meta.dtype,
                    });
                }
                let mut outputs: Vec<ViewMut<B::Buffer>> = taken
                    .iter_mut()
                    .zip(written)
                    .map(|(buf, &w)| {
                        // Planned ids are this graph's.
                        let meta = &graph.values()[w.0 as usize].meta;
                        ViewMut {
                            buf,
                            shape: &meta.shape,
                            dtype: meta.dtype,
                        }
                    })
                    .collect();
                backend.execute_planned(&node.op, &inputs, &mut outputs)
            };
            for (&w, buf) in written.iter().zip(taken) {
                homes.put(w, buf);
            }
            result?;
            if let (Some((seconds, _)), Some(t0)) = (timing.as_mut(), started) {
                backend.synchronize()?;
                seconds[n.0 as usize] += t0.elapsed().as_secs_f64();
            }
            if *check_finite {
                homes.check_finite(backend, n, written)?;
            }
        }
        Ok(())
    }
}

/// Where each value's buffer lives: its slot (computed values) or its own buffer.
struct Homes<'a, B: Backend> {
    graph: &'a Graph,
    plan: &'a Plan,
    owned: &'a mut Vec<Option<B::Buffer>>,
    slots: &'a mut Vec<Option<B::Buffer>>,
}

impl<B: Backend> Homes<'_, B> {
    /// Anomaly mode: the first non-finite value node `n` wrote to `written` is an error.
    fn check_finite(&mut self, backend: &B, n: super::NodeId, written: &[ValueId]) -> Result<()> {
        let node = self.graph.node(n)?;
        for &w in written {
            let value = self.graph.value(w)?;
            if !value.meta.dtype.is_float() {
                continue;
            }
            let t = backend.read(self.get(w)?, &value.meta.shape, value.meta.dtype)?;
            if let Some(i) = t.first_non_finite() {
                return Err(Error::invalid(
                    node.op.name(),
                    format!(
                        "anomaly: node {} ({}) wrote {} to {:?}[{i}] (shape {:?})",
                        n.0,
                        node.op.name(),
                        t.to_f64_vec()[i],
                        value.name,
                        value.meta.shape
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where `v`'s buffer lives; `v` is one of the graph's (checked by the callers).
    fn home(&mut self, v: ValueId) -> &mut Option<B::Buffer> {
        match self.graph.values()[v.0 as usize].kind {
            ValueKind::Computed { .. } => {
                let s = self.plan.slot_of[v.0 as usize].expect("every scheduled output has a slot");
                &mut self.slots[s]
            }
            _ => &mut self.owned[v.0 as usize],
        }
    }
    fn get(&self, v: ValueId) -> Result<&B::Buffer> {
        let value = self.graph.value(v)?;
        let b = match value.kind {
            ValueKind::Computed { .. } => {
                self.plan.slot_of[v.0 as usize].and_then(|s| self.slots[s].as_ref())
            }
            _ => self.owned[v.0 as usize].as_ref(),
        };
        b.ok_or_else(|| Error::graph(format!("{:?} must be set before running", value.name)))
    }
    fn take(&mut self, v: ValueId) -> Result<B::Buffer> {
        let name = &self.graph.value(v)?.name;
        self.home(v)
            .take()
            .ok_or_else(|| Error::graph(format!("{name:?} must be set before running")))
    }
    fn put(&mut self, v: ValueId, buf: B::Buffer) {
        *self.home(v) = Some(buf);
    }
}
