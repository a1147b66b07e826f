//! Batching several [`SceneGraph`]s into ONE padded disjoint graph with fixed capacities, so one
//! static compute graph (one memory plan, one CUDA graph) serves every step (DESIGN §2, §3.2).
//!
//! # Layout
//! * Graph slot `g ∈ 0..batch_size` owns nodes `[g·cap, (g+1)·cap)` (`cap = max_nodes_per_graph`,
//!   global node included) and feature cells `[g·P, (g+1)·P)` (`P = pixels_per_graph`). Its real nodes
//!   come first in its block, its global node is the last real one; the rest are **pad nodes**.
//!   Slots `num_graphs..batch_size` are empty (all pad), so a short last batch keeps the same shapes.
//! * Pad nodes: geometry 0, category 0 (a valid index for an embedding gather), `node_graph` −1,
//!   `node_mask` 0, `node_area` 0, **no edges** (zero in-degree and out-degree are legal: GAT gives 0).
//!   Pad cells: features 0, `pixel_node` −1.
//! * **Edges are packed at the front**: the `E` real edges of all graphs, sorted by `(dst, src)`
//!   (so by graph, since node blocks are ordered), occupy `[0, E)`; **`row_ptr[node_cap] = E`** and
//!   `num_edges = E ≤ edge_cap`. The tail `[E, edge_cap)` is padding: `src = dst = 0` (a *valid* node
//!   index, so an edge-parallel kernel may gather over all `edge_cap` rows without a bounds check),
//!   `edge_feats = 0`, `edge_mask = 0`. No row range of `row_ptr` / `col_ptr` reaches the tail, so
//!   node-parallel kernels never see it; an edge-parallel kernel that *writes* per-edge results
//!   (e.g. `gBe`) must zero rows `k ≥ num_edges` (or multiply by `edge_mask`).
//! * **CSR by destination**: edges of node `i` are `row_ptr[i]..row_ptr[i+1]`, sources `src[k]`,
//!   ascending `src` inside a row.
//! * **CSC transpose** (for deterministic scatters to sources): edges leaving node `j` are
//!   `col_edge[col_ptr[j]..col_ptr[j+1]]`, edge ids ascending inside a group. `col_ptr[node_cap] = E`;
//!   the tail of `col_edge` is the identity (`col_edge[k] = k` for `k ≥ E`), so `col_edge` is a
//!   permutation of `0..edge_cap`.

use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};
use super::graph::{GraphConfig, SceneGraph, EDGE_FEAT_DIM, GEOMETRY_DIM};

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
    /// Capacities that hold every graph the builder can produce with `graph` and `P` cells.
    pub fn for_config(batch_size: usize, graph: &GraphConfig, pixels_per_graph: usize) -> Self {
        Self {
            batch_size,
            max_nodes_per_graph: graph.nodes_per_graph(),
            max_edges_per_graph: graph.max_edges_per_graph(),
            pixels_per_graph,
        }
    }
    pub fn node_cap(&self) -> usize {
        self.batch_size * self.max_nodes_per_graph
    }
    pub fn edge_cap(&self) -> usize {
        self.batch_size * self.max_edges_per_graph
    }
    pub fn pixel_cap(&self) -> usize {
        self.batch_size * self.pixels_per_graph
    }
}

/// A padded disjoint batch graph (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphBatch {
    /// Real graphs (≤ `capacity.batch_size`).
    pub num_graphs: usize,
    pub capacity: BatchCapacity,
    pub node_cap: usize,
    pub edge_cap: usize,
    /// Real edges E (= `row_ptr[node_cap]`).
    pub num_edges: usize,
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
    /// `[node_cap]` cells pooled per node (see [`SceneGraph::node_area`]); pad 0.
    pub node_area: Vec<f32>,
    /// `[B]` batch index of each graph's global node, −1 for empty slots.
    pub global_node: Vec<i32>,
    /// `[node_cap + 1]` CSR by destination.
    pub row_ptr: Vec<i32>,
    /// `[edge_cap]` source of each edge (pad 0).
    pub src: Vec<i32>,
    /// `[edge_cap]` destination of each edge (pad 0), the expansion of `row_ptr`.
    pub dst: Vec<i32>,
    /// `[node_cap + 1]` CSC (by source) offsets into `col_edge`.
    pub col_ptr: Vec<i32>,
    /// `[edge_cap]` edge ids grouped by source, ascending inside a group; tail = identity.
    pub col_edge: Vec<i32>,
    /// `[edge_cap, 5]` (pad 0).
    pub edge_feats: Vec<f32>,
    /// `[edge_cap]` 1.0 for real edges, 0.0 for padding.
    pub edge_mask: Vec<f32>,
}

impl GraphBatch {
    /// `true` for real nodes.
    pub fn node_real(&self, n: usize) -> bool {
        self.node_mask.get(n).is_some_and(|&m| m > 0.0)
    }

    /// Check every invariant of the layout: CSR, CSC = transpose of CSR, padding values, masks.
    pub fn validate(&self) -> Result<()> {
        let (n, ec, e) = (self.node_cap, self.edge_cap, self.num_edges);
        let bad = |m: String| Err(DataError::contract(format!("GraphBatch: {m}")));
        if self.src.len() != ec || self.dst.len() != ec || self.col_edge.len() != ec {
            return bad("edge arrays are not edge_cap long".into());
        }
        validate_csr(&self.row_ptr, &self.src, n)?;
        if self.row_ptr[n] as usize != e {
            return bad(format!(
                "row_ptr[node_cap] = {} ≠ num_edges {e}",
                self.row_ptr[n]
            ));
        }
        if self.col_ptr.len() != n + 1
            || self.col_ptr[0] != 0
            || self.col_ptr.windows(2).any(|w| w[1] < w[0])
            || self.col_ptr[n] as usize != e
        {
            return bad("col_ptr is not node_cap+1 monotone offsets from 0 to num_edges".into());
        }
        for i in 0..n {
            for k in self.row_ptr[i]..self.row_ptr[i + 1] {
                let k = k as usize;
                if self.dst[k] as usize != i {
                    return bad(format!("dst[{k}] = {} but edge is in row {i}", self.dst[k]));
                }
                if k > self.row_ptr[i] as usize && self.src[k - 1] >= self.src[k] {
                    return bad(format!("row {i} not strictly ascending in src at edge {k}"));
                }
                if self.node_mask[i] == 0.0 || self.node_mask[self.src[k] as usize] == 0.0 {
                    return bad(format!("edge {k} touches a pad node"));
                }
            }
        }
        let mut seen = vec![false; ec];
        for j in 0..n {
            let g = &self.col_edge[self.col_ptr[j] as usize..self.col_ptr[j + 1] as usize];
            for (t, &k) in g.iter().enumerate() {
                let k = k as usize;
                if k >= e
                    || seen[k]
                    || self.src[k] as usize != j
                    || (t > 0 && g[t - 1] as usize >= k)
                {
                    return bad(format!(
                        "col_edge group of node {j} is not its out-edges ascending"
                    ));
                }
                seen[k] = true;
            }
        }
        if seen[..e].iter().any(|s| !s) {
            return bad("CSC misses an edge".into());
        }
        for k in e..ec {
            if self.src[k] != 0
                || self.dst[k] != 0
                || self.col_edge[k] as usize != k
                || self.edge_mask[k] != 0.0
            {
                return bad(format!("padding edge {k} has non-padding values"));
            }
        }
        Ok(())
    }
}

/// Check a CSR index: `row_ptr` has `n + 1` entries, starts at 0, is non-decreasing, ends at
/// `E = row_ptr[n] ≤ idx.len()`, and `idx[0..E]` are in `0..n`. (Entries of `idx` past `E` are padding
/// and not checked.)
pub fn validate_csr(row_ptr: &[i32], idx: &[i32], n: usize) -> Result<()> {
    let bad = |m: String| Err(DataError::contract(format!("CSR: {m}")));
    if row_ptr.len() != n + 1 {
        return bad(format!(
            "row_ptr has {} entries, expected n + 1 = {}",
            row_ptr.len(),
            n + 1
        ));
    }
    if row_ptr[0] != 0 {
        return bad(format!("row_ptr[0] = {} ≠ 0", row_ptr[0]));
    }
    if let Some(i) = (0..n).find(|&i| row_ptr[i + 1] < row_ptr[i]) {
        return bad(format!(
            "row_ptr decreases at {i}: {} > {}",
            row_ptr[i],
            row_ptr[i + 1]
        ));
    }
    let e = row_ptr[n] as usize;
    if e > idx.len() {
        return bad(format!("row_ptr[n] = E = {e} > index length {}", idx.len()));
    }
    if let Some(k) = (0..e).find(|&k| idx[k] < 0 || idx[k] as usize >= n) {
        return bad(format!("index[{k}] = {} not in 0..{n}", idx[k]));
    }
    Ok(())
}

/// Collate up to `cap.batch_size` graphs into one padded batch. All graphs must share the feature
/// width C; each must fit the per-graph node / edge / cell capacities (else an error naming the graph).
pub fn collate<G: std::borrow::Borrow<SceneGraph>>(
    graphs: &[G],
    cap: &BatchCapacity,
) -> Result<GraphBatch> {
    let graphs: Vec<&SceneGraph> = graphs.iter().map(|g| g.borrow()).collect();
    let err = |m: String| Err(DataError::contract(format!("collate: {m}")));
    if graphs.len() > cap.batch_size {
        return err(format!(
            "{} graphs > batch_size {}",
            graphs.len(),
            cap.batch_size
        ));
    }
    let c = graphs.first().map_or(0, |g| g.feat_dim);
    let (ncap, pcap) = (cap.max_nodes_per_graph, cap.pixels_per_graph);
    let (node_cap, edge_cap) = (cap.node_cap(), cap.edge_cap());
    if node_cap > i32::MAX as usize || edge_cap > i32::MAX as usize {
        return err("capacity exceeds i32 indices".into());
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
    let mut b = GraphBatch {
        num_graphs: graphs.len(),
        capacity: *cap,
        node_cap,
        edge_cap,
        num_edges: 0,
        feat_dim: c,
        pixel_feats: vec![0.0; cap.pixel_cap() * c],
        pixel_node: vec![-1; cap.pixel_cap()],
        geometry: vec![0.0; node_cap * GEOMETRY_DIM],
        category: vec![0; node_cap],
        node_graph: vec![-1; node_cap],
        node_mask: vec![0.0; node_cap],
        node_area: vec![0.0; node_cap],
        global_node: vec![-1; cap.batch_size],
        row_ptr: vec![0; node_cap + 1],
        src: vec![0; edge_cap],
        dst: vec![0; edge_cap],
        col_ptr: vec![0; node_cap + 1],
        col_edge: (0..edge_cap as i32).collect(),
        edge_feats: vec![0.0; edge_cap * EDGE_FEAT_DIM],
        edge_mask: vec![0.0; edge_cap],
    };
    let mut in_deg = vec![0i32; node_cap];
    let mut out_deg = vec![0i32; node_cap];
    let mut k = 0usize;
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
        b.node_area[n0..n0 + gr.num_nodes].copy_from_slice(&gr.node_area);
        for n in n0..n0 + gr.num_nodes {
            b.node_graph[n] = g as i32;
            b.node_mask[n] = 1.0;
        }
        b.global_node[g] = (n0 + gr.global_node()) as i32;
        // The graph's edges are sorted by (dst, src); offsetting keeps that order globally.
        for e in 0..gr.num_edges() {
            let (s, d) = (gr.edge_src[e], gr.edge_dst[e]);
            if s < 0 || d < 0 || s as usize >= gr.num_nodes || d as usize >= gr.num_nodes {
                return err(format!("graph {g} edge {e} ({s} → {d}) out of range"));
            }
            if e > 0 && (gr.edge_dst[e - 1], gr.edge_src[e - 1]) >= (d, s) {
                return err(format!(
                    "graph {g} edges are not sorted by (dst, src) without duplicates at {e}"
                ));
            }
            let (s, d) = (n0 + s as usize, n0 + d as usize);
            b.src[k] = s as i32;
            b.dst[k] = d as i32;
            b.edge_mask[k] = 1.0;
            b.edge_feats[k * EDGE_FEAT_DIM..(k + 1) * EDGE_FEAT_DIM]
                .copy_from_slice(&gr.edge_feats[e * EDGE_FEAT_DIM..(e + 1) * EDGE_FEAT_DIM]);
            in_deg[d] += 1;
            out_deg[s] += 1;
            k += 1;
        }
    }
    b.num_edges = k;
    for i in 0..node_cap {
        b.row_ptr[i + 1] = b.row_ptr[i] + in_deg[i];
        b.col_ptr[i + 1] = b.col_ptr[i] + out_deg[i];
    }
    // Counting sort by source; scanning edges in ascending id keeps ids ascending in each group.
    let mut fill: Vec<i32> = b.col_ptr[..node_cap].to_vec();
    for e in 0..k {
        let s = b.src[e] as usize;
        b.col_edge[fill[s] as usize] = e as i32;
        fill[s] += 1;
    }
    Ok(b)
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
        assert_eq!((b.num_graphs, b.node_cap, b.edge_cap), (3, 28, 196));
        let e: usize = gs.iter().map(|g| g.num_edges()).sum();
        assert_eq!(b.num_edges, e);
        assert_eq!(b.row_ptr[b.node_cap] as usize, e);
        // Dense adjacency from the graphs, from CSR and from CSC must agree (CSC = transpose).
        let n = b.node_cap;
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
        let mut csr = vec![0u8; n * n];
        for i in 0..n {
            for k in b.row_ptr[i]..b.row_ptr[i + 1] {
                csr[i * n + b.src[k as usize] as usize] += 1;
            }
        }
        let mut csc = vec![0u8; n * n];
        for j in 0..n {
            for t in b.col_ptr[j]..b.col_ptr[j + 1] {
                let k = b.col_edge[t as usize] as usize;
                assert_eq!(b.src[k] as usize, j);
                csc[b.dst[k] as usize * n + j] += 1;
            }
        }
        assert_eq!(csr, want);
        assert_eq!(csc, want);
        // Edge features travel with their edge.
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
                } else {
                    assert_eq!(b.row_ptr[i], b.row_ptr[i + 1], "pad node {i} has in-edges");
                    assert_eq!(b.col_ptr[i], b.col_ptr[i + 1], "pad node {i} has out-edges");
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
        // Padding tail of the edge arrays.
        assert!(b.src[e..].iter().all(|&s| s == 0) && b.edge_mask[e..].iter().all(|&m| m == 0.0));
        assert!((e..b.edge_cap).all(|k| b.col_edge[k] as usize == k));
        let mut perm = b.col_edge.clone();
        perm.sort_unstable();
        assert!(
            perm.iter().enumerate().all(|(i, &v)| v as usize == i),
            "col_edge is not a permutation"
        );
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
        let mut c = cap();
        c.pixels_per_graph = 4;
        assert!(collate(&gs, &c)
            .unwrap_err()
            .to_string()
            .contains("pixels_per_graph"));
        let b = collate(&gs, &cap()).unwrap();
        let mut x = b.clone();
        x.col_edge.swap(0, 1);
        assert!(x.validate().is_err());
        let mut x = b.clone();
        x.src[0] = 3;
        assert!(x.validate().is_err());
        let mut x = b.clone();
        x.src[b.num_edges] = 5;
        assert!(x.validate().is_err());
        // Empty batch is legal: no edges at all.
        let e = collate::<SceneGraph>(&[], &cap()).unwrap();
        e.validate().unwrap();
        assert_eq!(e.num_edges, 0);
    }

    #[test]
    fn validate_csr_checks() {
        validate_csr(&[0, 2, 3], &[0, 1, 1], 2).unwrap();
        validate_csr(&[0, 2, 3], &[0, 1, 1, 9], 2).unwrap(); // padding past E unchecked
        validate_csr(&[0], &[], 0).unwrap();
        assert!(validate_csr(&[0, 2], &[0, 1], 2).is_err()); // wrong length
        assert!(validate_csr(&[1, 2, 3], &[0, 1, 1], 2).is_err()); // not from 0
        assert!(validate_csr(&[0, 3, 2], &[0, 1, 1], 2).is_err()); // decreasing
        assert!(validate_csr(&[0, 2, 4], &[0, 1, 1], 2).is_err()); // E > len
        assert!(validate_csr(&[0, 2, 3], &[0, 2, 1], 2).is_err()); // out of range
        assert!(validate_csr(&[0, 2, 3], &[0, -1, 1], 2).is_err()); // negative
    }
}
