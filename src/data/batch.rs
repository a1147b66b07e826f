//! Batching several [`SceneGraph`]s into ONE padded disjoint graph with fixed capacities, so one
//! static compute graph (one memory plan) serves every step (DESIGN §2, §3.2). [`collate`] builds
//! the layout the model reads, once per batch.
//!
//! # Layout
//! * Graph slot `g ∈ 0..batch_size` owns nodes `[g·cap, (g+1)·cap)` (`cap = max_nodes_per_graph`,
//!   global node included) and feature cells `[g·P, (g+1)·P)` (`P = pixels_per_graph`). Its real nodes
//!   come first in its block, its global node is the last real one; the rest are **pad nodes**.
//!   Slots `num_graphs..batch_size` are empty (all pad), so a short last batch keeps the same shapes.
//! * Pad nodes: geometry 0, category 0 (a valid index for an embedding gather), `node_graph` −1,
//!   `node_mask` 0. Pad cells: features 0, `pixel_node` −1.
//! * **Every edge slot is used**: the GAT / aggregation ops take a CSR whose edge count is exactly
//!   the edge capacity, so `row_ptr[node_cap] = edge_cap`. The `edge_cap − num_edges` unused slots
//!   are **self-loops of pad nodes**, spread over all pad nodes in node order (the first
//!   `spare mod pads` pad nodes get one more), so no node gets a long row; pad edges have
//!   `edge_feats = 0`. Pad nodes are isolated from real ones, and nothing reads their outputs.
//!   Hence a batch needs a pad node whenever it has a spare edge slot ([`DataShape`] adds one
//!   node slot per graph for this).
//! * **CSR by destination**: edges of node `i` are `row_ptr[i]..row_ptr[i+1]`, sources `src[k]`,
//!   ascending `src` inside a row; real edges keep their graph's `(dst, src)` order.
//! * **CSC transpose** (for deterministic scatters to sources): edges leaving node `j` are
//!   `col_edge[col_ptr[j]..col_ptr[j+1]]`, edge ids ascending inside a group (a permutation of
//!   `0..edge_cap`).
//! * `in_degree_of_edge[k]`: the in-degree of edge `k`'s destination (the uniform attention
//!   `1/in-degree` of the SNN-only ablation).
//!
//! [`DataShape`]: super::DataShape

use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::graph::{GraphConfig, SceneGraph, EDGE_FEAT_DIM, GEOMETRY_DIM};
use crate::ops::gat::{transpose, validate_csc, validate_csr};

/// Fixed capacities of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCapacity {
    /// Graph slots B.
    pub batch_size: usize,
    /// Node slots per graph, global node included.
    pub max_nodes_per_graph: usize,
    /// Edge slots per graph (edge_cap = B · this).
    pub max_edges_per_graph: usize,
    /// Feature cells per graph (P).
    pub pixels_per_graph: usize,
}

impl BatchCapacity {
    /// Capacities that hold every graph the builder can produce with `graph` and `P` cells,
    /// with the spare node slot per graph that the padding edges need.
    pub fn for_config(batch_size: usize, graph: &GraphConfig, pixels_per_graph: usize) -> Self {
        Self {
            batch_size,
            max_nodes_per_graph: graph.nodes_per_graph() + 1,
            max_edges_per_graph: graph.max_edges_per_graph(),
            pixels_per_graph,
        }
    }
    /// Node slots of the whole batch, `B · max_nodes_per_graph`.
    pub fn node_cap(&self) -> usize {
        self.batch_size * self.max_nodes_per_graph
    }
    /// Edge slots of the whole batch, `B · max_edges_per_graph`.
    pub fn edge_cap(&self) -> usize {
        self.batch_size * self.max_edges_per_graph
    }
    /// Feature cells of the whole batch, `B · P`.
    pub fn pixel_cap(&self) -> usize {
        self.batch_size * self.pixels_per_graph
    }
}

/// A padded disjoint batch graph (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphBatch {
    /// Real graphs (≤ `capacity.batch_size`).
    pub num_graphs: usize,
    /// The fixed capacities this batch is padded to.
    pub capacity: BatchCapacity,
    /// Real edges E (the other `edge_cap − E` slots are pad self-loops).
    pub num_edges: usize,
    /// Channels C of a feature cell.
    pub feat_dim: usize,
    /// `[B·P, C]`.
    pub pixel_feats: Vec<f32>,
    /// `[B·P]` batch node index of each cell, −1 = void or pad.
    pub pixel_node: Vec<i32>,
    /// `[node_cap, 5]`.
    pub geometry: Vec<f32>,
    /// `[node_cap]` (pad: 0).
    pub category: Vec<i32>,
    /// `[node_cap]` graph slot of each node, −1 for pad nodes.
    pub node_graph: Vec<i32>,
    /// `[node_cap]` 1.0 for real nodes, 0.0 for pad nodes.
    pub node_mask: Vec<f32>,
    /// `[B]` batch index of each graph's global node, −1 for empty slots.
    pub global_node: Vec<i32>,
    /// `[node_cap + 1]` CSR by destination, ending at `edge_cap`.
    pub row_ptr: Vec<i32>,
    /// `[edge_cap]` source of each edge.
    pub src: Vec<i32>,
    /// `[node_cap + 1]` CSC (by source) offsets into `col_edge`.
    pub col_ptr: Vec<i32>,
    /// `[edge_cap]` edge ids grouped by source, ascending inside a group.
    pub col_edge: Vec<i32>,
    /// `[edge_cap, 5]` (pad edges 0).
    pub edge_feats: Vec<f32>,
    /// `[edge_cap]` in-degree of each edge's destination (≥ 1).
    pub in_degree_of_edge: Vec<usize>,
}

impl GraphBatch {
    /// Node slots, [`BatchCapacity::node_cap`].
    pub fn node_cap(&self) -> usize {
        self.capacity.node_cap()
    }
    /// Edge slots, [`BatchCapacity::edge_cap`].
    pub fn edge_cap(&self) -> usize {
        self.capacity.edge_cap()
    }

    /// `true` for real nodes.
    pub fn node_real(&self, n: usize) -> bool {
        self.node_mask.get(n).is_some_and(|&m| m > 0.0)
    }

    /// `[edge_cap]` destination of each edge, the expansion of `row_ptr`.
    pub fn edge_dst(&self) -> Vec<i32> {
        (0..self.node_cap())
            .flat_map(|i| (self.row_ptr[i]..self.row_ptr[i + 1]).map(move |_| i as i32))
            .collect()
    }

    /// Check every invariant of the layout: CSR, CSC = transpose of CSR, padding, degrees.
    pub fn validate(&self) -> Result<()> {
        let (n, ec) = (self.node_cap(), self.edge_cap());
        let bad = |m: String| Err(DataError::contract(format!("GraphBatch: {m}")));
        if self.src.len() != ec
            || self.in_degree_of_edge.len() != ec
            || self.edge_feats.len() != ec * EDGE_FEAT_DIM
        {
            return bad("edge arrays are not edge_cap long".into());
        }
        // The shared CSR / CSC rules of the graph ops, which read this layout.
        validate_csr("GraphBatch", n, &self.row_ptr, &self.src)
            .and_then(|_| validate_csc("GraphBatch", n, &self.src, &self.col_ptr, &self.col_edge))
            .map_err(|e| {
                DataError::contract(format!("GraphBatch: not the graph ops' CSR/CSC: {e}"))
            })?;
        let mut real_edges = 0;
        for i in 0..n {
            let row = self.row_ptr[i] as usize..self.row_ptr[i + 1] as usize;
            let degree = row.len().max(1);
            for k in row.clone() {
                let s = self.src[k] as usize;
                if self.in_degree_of_edge[k] != degree {
                    return bad(format!("in_degree_of_edge[{k}] ≠ {degree}"));
                }
                if !self.node_real(i) {
                    let feats = &self.edge_feats[k * EDGE_FEAT_DIM..(k + 1) * EDGE_FEAT_DIM];
                    if s != i || feats.iter().any(|&f| f != 0.0) {
                        return bad(format!("edge {k} of pad node {i} is not a bare self-loop"));
                    }
                    continue;
                }
                if !self.node_real(s) {
                    return bad(format!("edge {k} joins real node {i} to pad node {s}"));
                }
                if k > row.start && self.src[k - 1] >= self.src[k] {
                    return bad(format!("row {i} not strictly ascending in src at edge {k}"));
                }
                real_edges += 1;
            }
        }
        if real_edges != self.num_edges {
            return bad(format!(
                "{real_edges} edges between real nodes ≠ num_edges {}",
                self.num_edges
            ));
        }
        Ok(())
    }
}

/// Collate up to `cap.batch_size` graphs into one padded batch. All graphs must share the feature
/// width C; each must fit the per-graph node / edge / cell capacities (else an error naming the graph).
pub fn collate<G: std::borrow::Borrow<SceneGraph>>(
    graphs: &[G],
    cap: &BatchCapacity,
) -> Result<GraphBatch> {
    let graphs: Vec<&SceneGraph> = graphs.iter().map(|g| g.borrow()).collect();
    let c = check_fit(&graphs, cap)?;
    let mut b = place_nodes(&graphs, cap, c)?;
    let real = RealEdges::of(&graphs, cap)?;
    b.num_edges = real.src.len();
    b.pad_edges(&real)?;
    Ok(b)
}

fn collate_error<T>(m: String) -> Result<T> {
    Err(DataError::contract(format!("collate: {m}")))
}

/// The feature width C shared by `graphs`, once each fits the capacities.
fn check_fit(graphs: &[&SceneGraph], cap: &BatchCapacity) -> Result<usize> {
    let err = collate_error;
    if graphs.len() > cap.batch_size {
        return err(format!(
            "{} graphs > batch_size {}",
            graphs.len(),
            cap.batch_size
        ));
    }
    let c = graphs.first().map_or(0, |g| g.feat_dim);
    let (ncap, pcap) = (cap.max_nodes_per_graph, cap.pixels_per_graph);
    // Every slot is addressed by an i32 index; checked here, before anything is allocated.
    for (what, per_graph) in [
        ("max_nodes_per_graph", ncap),
        ("max_edges_per_graph", cap.max_edges_per_graph),
        ("pixels_per_graph", pcap),
    ] {
        let total = cap.batch_size.saturating_mul(per_graph);
        if total > i32::MAX as usize || total.checked_mul(c.max(1)).is_none() {
            return err(format!(
                "batch_size {} × {what} {per_graph} exceeds i32 indices",
                cap.batch_size
            ));
        }
    }
    for (g, gr) in graphs.iter().enumerate() {
        if gr.feat_dim != c {
            return err(format!(
                "graph {g} has {} feature channels, graph 0 has {c}",
                gr.feat_dim
            ));
        }
        if gr.num_nodes > ncap {
            return err(format!(
                "graph {g} has {} nodes > max_nodes_per_graph {ncap}",
                gr.num_nodes
            ));
        }
        if gr.num_edges() > cap.max_edges_per_graph {
            return err(format!(
                "graph {g} has {} edges > max_edges_per_graph {}",
                gr.num_edges(),
                cap.max_edges_per_graph
            ));
        }
        if gr.num_pixels() > pcap {
            return err(format!(
                "graph {g} has {} cells > pixels_per_graph {pcap}",
                gr.num_pixels()
            ));
        }
    }
    Ok(c)
}

/// The batch with every node and cell array filled and no edges yet.
fn place_nodes(graphs: &[&SceneGraph], cap: &BatchCapacity, c: usize) -> Result<GraphBatch> {
    let (ncap, pcap) = (cap.max_nodes_per_graph, cap.pixels_per_graph);
    let node_cap = cap.node_cap();
    // The one buffer that scales with batch × cells × channels: refused, not aborted, when
    // it does not fit in memory.
    let pixel_feats = crate::tensor::try_filled(cap.pixel_cap() * c, 0.0f32)
        .map_err(|e| DataError::contract(format!("collate: pixel features: {e}")))?;
    let mut b = GraphBatch {
        num_graphs: graphs.len(),
        capacity: *cap,
        num_edges: 0,
        feat_dim: c,
        pixel_feats,
        pixel_node: vec![-1; cap.pixel_cap()],
        geometry: vec![0.0; node_cap * GEOMETRY_DIM],
        category: vec![0; node_cap],
        node_graph: vec![-1; node_cap],
        node_mask: vec![0.0; node_cap],
        global_node: vec![-1; cap.batch_size],
        row_ptr: Vec::new(),
        src: Vec::new(),
        col_ptr: Vec::new(),
        col_edge: Vec::new(),
        edge_feats: Vec::new(),
        in_degree_of_edge: Vec::new(),
    };
    for (g, gr) in graphs.iter().enumerate() {
        let n0 = g * ncap;
        let p0 = g * pcap;
        b.pixel_feats[p0 * c..(p0 + gr.num_pixels()) * c].copy_from_slice(&gr.pixel_feats);
        for (p, &nd) in gr.pixel_node.iter().enumerate() {
            b.pixel_node[p0 + p] = if nd >= 0 {
                (n0 + nd as usize) as i32
            } else {
                -1
            };
        }
        b.geometry[n0 * GEOMETRY_DIM..(n0 + gr.num_nodes) * GEOMETRY_DIM]
            .copy_from_slice(&gr.geometry);
        b.category[n0..n0 + gr.num_nodes].copy_from_slice(&gr.category);
        for n in n0..n0 + gr.num_nodes {
            b.node_graph[n] = g as i32;
            b.node_mask[n] = 1.0;
        }
        b.global_node[g] = (n0 + gr.global_node()) as i32;
    }
    Ok(b)
}

/// The real edges of all graphs in batch node numbers, packed: sorted by `(dst, src)`, so
/// `row_ptr` is a CSR over them alone.
struct RealEdges {
    row_ptr: Vec<i32>,
    src: Vec<i32>,
    edge_feats: Vec<f32>,
}

impl RealEdges {
    fn of(graphs: &[&SceneGraph], cap: &BatchCapacity) -> Result<RealEdges> {
        let ncap = cap.max_nodes_per_graph;
        let node_cap = cap.node_cap();
        let mut src = Vec::new();
        let mut edge_feats = Vec::new();
        let mut in_deg = vec![0i32; node_cap];
        for (g, gr) in graphs.iter().enumerate() {
            let n0 = g * ncap;
            // The graph's edges are sorted by (dst, src); offsetting keeps that order globally.
            for e in 0..gr.num_edges() {
                let (s, d) = (gr.edge_src[e], gr.edge_dst[e]);
                if s < 0 || d < 0 || s as usize >= gr.num_nodes || d as usize >= gr.num_nodes {
                    return collate_error(format!("graph {g} edge {e} ({s} → {d}) out of range"));
                }
                if e > 0 && (gr.edge_dst[e - 1], gr.edge_src[e - 1]) >= (d, s) {
                    return collate_error(format!(
                        "graph {g} edges are not sorted by (dst, src) without duplicates at {e}"
                    ));
                }
                src.push((n0 + s as usize) as i32);
                edge_feats
                    .extend_from_slice(&gr.edge_feats[e * EDGE_FEAT_DIM..(e + 1) * EDGE_FEAT_DIM]);
                in_deg[n0 + d as usize] += 1;
            }
        }
        let mut row_ptr = vec![0i32; node_cap + 1];
        for i in 0..node_cap {
            row_ptr[i + 1] = row_ptr[i] + in_deg[i];
        }
        Ok(RealEdges {
            row_ptr,
            src,
            edge_feats,
        })
    }
}

impl GraphBatch {
    /// Lays out every edge slot (see the module docs): real rows copied from `real`, the spare
    /// slots as self-loops spread over the pad nodes, then the CSC transpose.
    fn pad_edges(&mut self, real: &RealEdges) -> Result<()> {
        let (n, cap, spare) = (
            self.node_cap(),
            self.edge_cap(),
            self.edge_cap() - self.num_edges,
        );
        let fw = EDGE_FEAT_DIM;
        let pads: Vec<usize> = (0..n).filter(|&v| !self.node_real(v)).collect();
        if spare > 0 && pads.is_empty() {
            return collate_error("no padding node to hold unused edge slots (node capacity must exceed the largest graph)".into());
        }
        let mut degree: Vec<usize> = (0..n)
            .map(|v| (real.row_ptr[v + 1] - real.row_ptr[v]) as usize)
            .collect();
        for (k, &p) in pads.iter().enumerate() {
            degree[p] = spare / pads.len() + usize::from(k < spare % pads.len());
        }
        let mut row_ptr = vec![0i32; n + 1];
        for v in 0..n {
            row_ptr[v + 1] = row_ptr[v] + degree[v] as i32;
        }
        let mut src = vec![0i32; cap];
        let mut edge_feats = vec![0f32; cap * fw];
        let mut in_degree_of_edge = vec![1usize; cap];
        for v in 0..n {
            let (lo, hi) = (row_ptr[v] as usize, row_ptr[v + 1] as usize);
            in_degree_of_edge[lo..hi].fill(degree[v].max(1));
            if self.node_real(v) {
                let old = real.row_ptr[v] as usize;
                src[lo..hi].copy_from_slice(&real.src[old..old + hi - lo]);
                edge_feats[lo * fw..hi * fw]
                    .copy_from_slice(&real.edge_feats[old * fw..(old + hi - lo) * fw]);
            } else {
                src[lo..hi].fill(v as i32);
            }
        }
        (self.col_ptr, self.col_edge) = transpose(n, &src);
        self.row_ptr = row_ptr;
        self.src = src;
        self.edge_feats = edge_feats;
        self.in_degree_of_edge = in_degree_of_edge;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::graph::build_scene_graph;
    use crate::data::graph::tests::{feats, hand_map, seg_map};

    fn graphs() -> Vec<SceneGraph> {
        let g0 = build_scene_graph(
            &hand_map(),
            4,
            &feats(3, 4, 2),
            &GraphConfig {
                max_nodes: 8,
                knn: 1,
            },
        )
        .unwrap();
        let m = seg_map(
            4,
            2,
            &["AABB", "CCBB"],
            &[('A', 5, 0), ('B', 6, 2), ('C', 7, 3)],
        );
        let g1 = build_scene_graph(
            &m,
            4,
            &feats(2, 2, 2),
            &GraphConfig {
                max_nodes: 8,
                knn: 2,
            },
        )
        .unwrap();
        let g2 = build_scene_graph(
            &hand_map(),
            4,
            &feats(3, 4, 2),
            &GraphConfig {
                max_nodes: 2,
                knn: 3,
            },
        )
        .unwrap();
        vec![g0, g1, g2]
    }

    fn cap() -> BatchCapacity {
        BatchCapacity {
            batch_size: 4,
            max_nodes_per_graph: 7,
            max_edges_per_graph: 49,
            pixels_per_graph: 12,
        }
    }

    #[test]
    fn collate_layout_and_csr_csc_transpose() {
        let gs = graphs();
        let b = collate(&gs, &cap()).unwrap();
        b.validate().unwrap();
        assert_eq!((b.num_graphs, b.node_cap(), b.edge_cap()), (3, 28, 196));
        let e: usize = gs.iter().map(|g| g.num_edges()).sum();
        assert_eq!(b.num_edges, e);
        assert_eq!(
            b.row_ptr[b.node_cap()] as usize,
            b.edge_cap(),
            "every edge slot is used"
        );
        // Dense adjacency from the graphs, from CSR and from CSC must agree (CSC = transpose);
        // pad nodes carry only self-loops, together all the spare slots, spread evenly.
        let n = b.node_cap();
        let dst = b.edge_dst();
        let mut want = vec![0u8; n * n];
        for (g, gr) in gs.iter().enumerate() {
            for k in 0..gr.num_edges() {
                let (s, d) = (
                    g * 7 + gr.edge_src[k] as usize,
                    g * 7 + gr.edge_dst[k] as usize,
                );
                want[d * n + s] += 1;
            }
        }
        let pads: Vec<usize> = (0..n).filter(|&v| !b.node_real(v)).collect();
        let spare = b.edge_cap() - e;
        for (k, &p) in pads.iter().enumerate() {
            let loops = spare / pads.len() + usize::from(k < spare % pads.len());
            want[p * n + p] = loops as u8;
            assert_eq!(b.row_ptr[p + 1] - b.row_ptr[p], loops as i32);
        }
        let mut csr = vec![0u8; n * n];
        for i in 0..n {
            for k in b.row_ptr[i]..b.row_ptr[i + 1] {
                assert_eq!(dst[k as usize] as usize, i);
                csr[i * n + b.src[k as usize] as usize] += 1;
            }
        }
        let mut csc = vec![0u8; n * n];
        for j in 0..n {
            for t in b.col_ptr[j]..b.col_ptr[j + 1] {
                let k = b.col_edge[t as usize] as usize;
                assert_eq!(b.src[k] as usize, j);
                csc[dst[k] as usize * n + j] += 1;
            }
        }
        assert_eq!(csr, want);
        assert_eq!(csc, want);
        // Edge features travel with their edge; the in-degree is that of the destination.
        let (g, gr) = (1, &gs[1]);
        for k in 0..gr.num_edges() {
            let (s, d) = (
                g * 7 + gr.edge_src[k] as usize,
                g * 7 + gr.edge_dst[k] as usize,
            );
            let kb = (b.row_ptr[d]..b.row_ptr[d + 1])
                .find(|&kb| b.src[kb as usize] as usize == s)
                .unwrap() as usize;
            assert_eq!(
                &b.edge_feats[kb * 5..kb * 5 + 5],
                &gr.edge_feats[k * 5..k * 5 + 5]
            );
            let deg = gr.edge_dst.iter().filter(|&&x| x == gr.edge_dst[k]).count();
            assert_eq!(b.in_degree_of_edge[kb], deg);
        }
        // Nodes, pads, pixels.
        assert_eq!(
            b.global_node,
            vec![
                gs[0].global_node() as i32,
                7 + gs[1].global_node() as i32,
                14 + 2,
                -1
            ]
        );
        for (g, gr) in gs.iter().enumerate() {
            for nd in 0..7 {
                let i = g * 7 + nd;
                let real = nd < gr.num_nodes;
                assert_eq!(b.node_real(i), real);
                assert_eq!(b.node_graph[i], if real { g as i32 } else { -1 });
                if real {
                    assert_eq!(b.category[i], gr.category[nd]);
                    assert_eq!(
                        &b.geometry[i * 5..i * 5 + 5],
                        &gr.geometry[nd * 5..nd * 5 + 5]
                    );
                }
            }
            for p in 0..12 {
                let want = match gr.pixel_node.get(p) {
                    Some(&v) if v >= 0 => (g * 7) as i32 + v,
                    _ => -1,
                };
                assert_eq!(b.pixel_node[g * 12 + p], want, "graph {g} cell {p}");
            }
            assert_eq!(
                &b.pixel_feats[g * 12 * 2..(g * 12 + gr.num_pixels()) * 2],
                &gr.pixel_feats[..]
            );
        }
        assert!(b.node_mask[21..].iter().all(|&m| m == 0.0));
        assert!(b.pixel_node[36..].iter().all(|&p| p == -1));
    }

    #[test]
    fn collate_rejects_overflow_and_validate_catches_corruption() {
        let gs = graphs();
        let mut c = cap();
        c.batch_size = 2;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
        let mut c = cap();
        c.max_nodes_per_graph = 3;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("graph 0 has"));
        let mut c = cap();
        c.max_edges_per_graph = 5;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("max_edges_per_graph"));
        // Capacities from a corrupt checkpoint are refused before anything is allocated.
        let mut c = cap();
        c.pixels_per_graph = 1 << 40;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("exceeds i32 indices"));
        let mut c = cap();
        c.pixels_per_graph = 4;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("pixels_per_graph"));
        // Full slots with no spare node cannot hold the spare edge slots.
        let full = [&gs[2], &gs[2]];
        let mut c = cap();
        (c.batch_size, c.max_nodes_per_graph) = (2, gs[2].num_nodes);
        assert!(collate(&full, &c)
            .unwrap_err()
            .to_string()
            .contains("no padding node"));
        let b = collate(&gs, &cap()).unwrap();
        let mut x = b.clone();
        x.col_edge.swap(0, 1);
        assert!(x.validate().is_err());
        let mut x = b.clone();
        x.src[0] = 3;
        assert!(x.validate().is_err());
        let mut x = b.clone();
        let last = b.edge_cap() - 1;
        x.edge_feats[last * 5] = 1.0;
        assert!(x.validate().unwrap_err().to_string().contains("self-loop"));
        let mut x = b.clone();
        x.in_degree_of_edge[0] += 1;
        assert!(x.validate().is_err());
        // Empty batch is legal: every slot a pad self-loop.
        let e = collate::<SceneGraph>(&[], &cap()).unwrap();
        e.validate().unwrap();
        assert_eq!(e.num_edges, 0);
    }
}
