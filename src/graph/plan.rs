//! Schedule and liveness-based memory plan.
//!
//! Every computed value gets a *slot* (a buffer) for the span from its producing node to
//! its last consumer; a slot freed by a dead value is reused by a later one (best fit, same
//! dtype). Slots are allocated once by the executor and reused every step, so a training
//! step makes no allocations. A reshape of a computed value is no node of the schedule: its
//! output is its input's slot under another shape.

use super::{Graph, NodeId, ValueId, ValueKind};
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::DType;

/// Memory of one plan, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes of all slots: the peak of intermediate memory during a run.
    pub peak_intermediate_bytes: usize,
    /// What the intermediates would take if none were ever freed.
    pub total_intermediate_bytes: usize,
    /// Parameters and optimizer state.
    pub persistent_bytes: usize,
    /// Fed inputs.
    pub input_bytes: usize,
}

/// One buffer of the plan, shared by values whose lifetimes do not overlap.
#[derive(Clone, Debug)]
pub struct Slot {
    /// Element type of every value it holds.
    pub dtype: DType,
    /// Length in elements: that of the largest value it holds.
    pub len: usize,
}

/// The schedule and memory plan of a graph for one set of fetched values.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Nodes to run, in order.
    pub schedule: Vec<NodeId>,
    /// The nodes of `schedule` that the fetched values need, without the in-place updates (an
    /// evaluation of a training graph: [`super::Executor::run_forward`]). Running them in the
    /// same slots is safe: each value still lives from its producer to its last use.
    pub forward: Vec<NodeId>,
    /// Slot of each computed value that is produced by a scheduled node.
    pub slot_of: Vec<Option<usize>>,
    /// The buffers, indexed by `slot_of`; allocated once by the executor.
    pub slots: Vec<Slot>,
    /// Values that the caller may read after a run.
    pub fetch: Vec<ValueId>,
    /// What the plan takes in memory.
    pub memory: MemoryReport,
}

impl Plan {
    /// Plans the nodes needed for `fetch` plus every node with side effects (optimizer updates).
    pub fn new(graph: &Graph, fetch: &[ValueId]) -> Result<Plan> {
        let nv = graph.values().len();
        for &f in fetch {
            if f.0 as usize >= nv {
                return Err(Error::graph(format!("fetch of unknown value {f:?}")));
            }
        }
        // Needed nodes, by a reverse sweep.
        let mut needed_value = vec![false; nv];
        for &f in fetch {
            needed_value[f.0 as usize] = true;
        }
        let mut needed_node = vec![false; graph.nodes().len()];
        for (n, node) in graph.nodes().iter().enumerate().rev() {
            let side_effect = node.op.mutated_inputs() > 0;
            if side_effect || node.outputs.iter().any(|o| needed_value[o.0 as usize]) {
                needed_node[n] = true;
                for i in &node.inputs {
                    needed_value[i.0 as usize] = true;
                }
            }
            for &m in &node.inputs[..node.op.mutated_inputs().min(node.inputs.len())] {
                if !matches!(graph.value(m)?.kind, ValueKind::Persistent { .. }) {
                    return Err(Error::graph(format!(
                        "{} updates {:?} in place, which is not a parameter or state",
                        node.op.name(),
                        graph.value(m)?.name
                    )));
                }
            }
        }
        // A reshape of a computed value is not run: its output aliases the input's slot
        // (same elements, same order), which then lives until the last use of either.
        let mut root: Vec<ValueId> = (0..nv as u32).map(ValueId).collect();
        for (n, node) in graph.nodes().iter().enumerate() {
            if needed_node[n] && matches!(node.op, Op::Reshape(_)) {
                let input = root[node.inputs[0].0 as usize];
                if matches!(graph.value(input)?.kind, ValueKind::Computed { .. }) {
                    root[node.outputs[0].0 as usize] = input;
                    needed_node[n] = false;
                }
            }
        }
        let root_of = |v: ValueId| root[v.0 as usize];
        let schedule: Vec<NodeId> = (0..graph.nodes().len())
            .filter(|&n| needed_node[n])
            .map(|n| NodeId(n as u32))
            .collect();
        // The same sweep from the fetched values alone.
        let mut wanted = vec![false; nv];
        for &f in fetch {
            wanted[root_of(f).0 as usize] = true;
        }
        let mut forward: Vec<NodeId> = Vec::new();
        for &n in schedule.iter().rev() {
            let node = graph.node(n)?;
            if node.op.mutated_inputs() == 0 && node.outputs.iter().any(|o| wanted[o.0 as usize]) {
                forward.push(n);
                for &i in &node.inputs {
                    wanted[root_of(i).0 as usize] = true;
                }
            }
        }
        forward.reverse();

        // Last use of each value (position in the schedule); fetched values live to the end.
        const FOREVER: usize = usize::MAX;
        // An alias's uses count as uses of its root.
        let mut last_use = vec![0usize; nv];
        for (pos, &n) in schedule.iter().enumerate() {
            for &i in &graph.node(n)?.inputs {
                last_use[root_of(i).0 as usize] = pos;
            }
            for o in &graph.node(n)?.outputs {
                last_use[o.0 as usize] = last_use[o.0 as usize].max(pos);
            }
        }
        for &f in fetch {
            last_use[root_of(f).0 as usize] = FOREVER;
        }

        // Greedy slot assignment: outputs take slots before the node's dying inputs are
        // released, so a node never writes into a buffer it reads.
        let mut slots: Vec<Slot> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut slot_of = vec![None; nv];
        let mut total = 0usize;
        let mut dies_at: Vec<Vec<ValueId>> = vec![Vec::new(); schedule.len()];
        for (pos, &n) in schedule.iter().enumerate() {
            for &o in &graph.node(n)?.outputs {
                let meta = graph.meta(o)?;
                let len = meta.shape.numel();
                total += meta.bytes();
                let fits = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| slots[s].dtype == meta.dtype && slots[s].len >= len)
                    .min_by_key(|(_, &s)| slots[s].len)
                    .map(|(i, _)| i);
                let grow = || {
                    free.iter()
                        .enumerate()
                        .filter(|(_, &s)| slots[s].dtype == meta.dtype)
                        .max_by_key(|(_, &s)| slots[s].len)
                        .map(|(i, _)| i)
                };
                let s = match fits.or_else(grow) {
                    Some(i) => {
                        let s = free.swap_remove(i);
                        slots[s].len = slots[s].len.max(len);
                        s
                    }
                    None => {
                        slots.push(Slot {
                            dtype: meta.dtype,
                            len,
                        });
                        slots.len() - 1
                    }
                };
                slot_of[o.0 as usize] = Some(s);
                if last_use[o.0 as usize] != FOREVER {
                    dies_at[last_use[o.0 as usize]].push(o);
                }
            }
            for &v in &dies_at[pos] {
                if let Some(s) = slot_of[v.0 as usize] {
                    free.push(s);
                }
            }
        }

        for (v, &r) in root.iter().enumerate() {
            if r.0 as usize != v {
                slot_of[v] = slot_of[r.0 as usize];
            }
        }

        let sum_kind = |f: &dyn Fn(&ValueKind) -> bool| -> usize {
            graph
                .values()
                .iter()
                .filter(|v| f(&v.kind))
                .map(|v| v.meta.bytes())
                .sum()
        };
        let memory = MemoryReport {
            peak_intermediate_bytes: slots.iter().map(|s| s.len * s.dtype.size()).sum(),
            total_intermediate_bytes: total,
            persistent_bytes: sum_kind(&|k| matches!(k, ValueKind::Persistent { .. })),
            input_bytes: sum_kind(&|k| matches!(k, ValueKind::Input)),
        };
        Ok(Plan {
            schedule,
            forward,
            slot_of,
            slots,
            fetch: fetch.to_vec(),
            memory,
        })
    }
}
