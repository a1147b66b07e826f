//! Where a graph's time goes: the wall time of every node over the profiled runs, summed by
//! model part (forward and backward apart) and by op kind (`Executor::profile`).

use super::Graph;
use serde::Serialize;
use std::collections::BTreeMap;

/// One line of a profile: a model part or an op kind.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    /// `gat`, `gat (backward)`, `optimizer`, … or an op name (`matmul`, `lif`, …).
    pub name: String,
    /// Milliseconds per run.
    pub ms: f64,
    /// Fraction of the profiled total (0–1).
    pub share: f64,
    /// Nodes of the graph it covers.
    pub nodes: usize,
    /// GFLOP/s of its matrix products (`2·batch·m·n·k` each), if it has any.
    pub gflops: Option<f64>,
}

/// Time per run of a graph, by part and by op kind, slowest first.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// Runs averaged over.
    pub runs: usize,
    /// Milliseconds per run, all nodes.
    pub total_ms: f64,
    /// Wall milliseconds per step around the run, when the caller measured it (feeding the
    /// batch included): what it has over `total_ms` is spent outside the graph.
    pub step_ms: Option<f64>,
    /// By model part, forward and backward apart.
    pub by_part: Vec<ProfileRow>,
    /// By op kind.
    pub by_op: Vec<ProfileRow>,
}

impl Profile {
    /// Sums `seconds[n]` (node `n`'s total over `runs` runs) by part and by op kind.
    pub fn of(graph: &Graph, seconds: &[f64], runs: usize) -> Profile {
        let per_run = 1e3 / runs.max(1) as f64;
        let total_ms = seconds.iter().sum::<f64>() * per_run;
        let nodes = graph.nodes();
        let flops: Vec<f64> = nodes.iter().map(|n| matmul_flops(graph, n)).collect();
        let rows = |key: &dyn Fn(usize) -> String| {
            let mut sums: BTreeMap<String, (f64, usize, f64)> = BTreeMap::new();
            for (n, &s) in seconds.iter().enumerate() {
                let e = sums.entry(key(n)).or_default();
                e.0 += s * per_run;
                e.1 += 1;
                e.2 += flops[n];
            }
            let mut rows: Vec<ProfileRow> = sums
                .into_iter()
                .map(|(name, (ms, nodes, flops))| ProfileRow {
                    name,
                    ms,
                    share: ms / total_ms.max(f64::MIN_POSITIVE),
                    nodes,
                    gflops: (flops > 0.0 && ms > 0.0).then(|| flops / (ms * 1e6)),
                })
                .collect();
            rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            rows
        };
        Profile {
            runs,
            total_ms,
            step_ms: None,
            by_part: rows(&|n| {
                let p = nodes[n].part;
                let name = if p.name.is_empty() { "other" } else { p.name };
                match p.backward {
                    true => format!("{name} (backward)"),
                    false => name.to_string(),
                }
            }),
            by_op: rows(&|n| nodes[n].op.name().to_string()),
        }
    }

    /// The two tables as text: every part, and the op kinds down to 1% of the total.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:.2} ms per step in the graph's nodes, over {} steps\n",
            self.total_ms, self.runs
        );
        if let Some(step) = self.step_ms {
            s += &format!(
                "{step:.2} ms per step in all: {:.2} ms outside the graph (batch assembly, host)\n",
                step - self.total_ms
            );
        }
        for (title, rows, all) in [("part", &self.by_part, true), ("op", &self.by_op, false)] {
            s += &format!(
                "  {title:<24} {:>9} {:>6} {:>6}\n",
                "ms/step", "share", "nodes"
            );
            for r in rows.iter().filter(|r| all || r.share >= 0.01) {
                s += &format!(
                    "  {:<24} {:>9.3} {:>5.1}% {:>6}\n",
                    r.name,
                    r.ms,
                    100.0 * r.share,
                    r.nodes
                );
            }
        }
        s
    }
}

/// `2·batch·m·n·k` of a matrix product node, 0 for any other.
fn matmul_flops(graph: &Graph, node: &super::Node) -> f64 {
    let crate::ops::Op::MatMul {
        trans_a, trans_b, ..
    } = node.op
    else {
        return 0.0;
    };
    let shape = |i: usize| graph.shape(node.inputs[i]);
    match (shape(0), shape(1)) {
        (Ok(a), Ok(b)) => crate::ops::MatMulDims::of(a, b, trans_a, trans_b)
            .map_or(0.0, |d| 2.0 * (d.batch * d.m * d.n * d.k) as f64),
        _ => 0.0,
    }
}
