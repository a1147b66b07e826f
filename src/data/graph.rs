//! Segment graph builder (DESIGN §4.1): panoptic segments → nodes + edges + features.
//!
//! * **Nodes**: the `max_nodes` largest segments by pixel area (ties: smaller panoptic id first),
//!   ordered by descending area, then one **global node** (index `num_nodes − 1`). Segments beyond
//!   the cap become void in `pixel_node` and get no node.
//! * **Pixels**: the segment map is resized to the feature map's `(h, w)` by nearest neighbour
//!   (cell `(cy, cx)` takes the source pixel `(⌊(cy+½)·H/h⌋, ⌊(cx+½)·W/w⌋)`); void = −1.
//! * **Vanished-segment rule**: a node whose segment got no cell by nearest neighbour takes one cell:
//!   among the cells its full-resolution pixels fall into (pixel `(y, x)` → cell `(⌊y·h/H⌋, ⌊x·w/W⌋)`),
//!   the one holding most of its pixels (ties: lowest cell index) whose current owner is void or
//!   keeps at least one other cell. Vanished nodes are served in node order (largest first). If no
//!   such cell exists (only when segments outnumber cells around it) the segment is dropped and listed
//!   in [`SceneGraph::dropped_segments`]. So every segment node pools ≥ 1 cell: never a 0/0 mean.
//! * **Geometry** (full resolution, all in [0, 1]): centroid `((x̄+½)/W, (ȳ+½)/H)`, bbox
//!   `((x_max−x_min+1)/W, (y_max−y_min+1)/H)`, area fraction; the global node gets
//!   `(0.5, 0.5, 1, 1, 1)`. A stuff segment in several pieces is one node (its pooled geometry covers
//!   all pieces).
//! * **Category**: contiguous category index; the global node gets `num_categories`.
//! * **Edges** (directed, no duplicates, sorted by `(dst, src)`): a self-loop on every node (global
//!   included) ∪ both directions of every pair of segments that touch (a 4-neighbour pixel pair at full
//!   resolution) ∪ both directions of each segment's `k` nearest other segments by centroid distance
//!   (ties: lower node index) ∪ global ↔ every segment.
//! * **Edge features** of `src → dst` (5 floats): `x_src − x_dst`, `y_src − y_dst`,
//!   `ln(w_src / w_dst)`, `ln(h_src / h_dst)`, `touching ∈ {0, 1}` (1 only between segments that
//!   touch; self-loops and global edges have 0). Widths/heights are ≥ 1 pixel, so logs are finite.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::coco::{Sample, SegmentMap};
use super::error::{DataError, Result};
use super::features::{builtin_features, FeatureConfig, FeatureMap};

/// Geometry floats per node.
pub const GEOMETRY_DIM: usize = 5;
/// Floats per edge feature.
pub const EDGE_FEAT_DIM: usize = 5;

/// Graph builder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// Maximum number of segment nodes (the global node comes on top). Default 32.
    pub max_nodes: usize,
    /// Nearest neighbours by centroid per segment. Default 3.
    pub knn: usize,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            max_nodes: 32,
            knn: 3,
        }
    }
}

impl GraphConfig {
    /// The largest `max_nodes`: COCO panoptic images have under 100 segments, and the dense
    /// edge bound grows with its square.
    pub const MAX_NODES: usize = 4096;

    /// `max_nodes` in `1..=MAX_NODES`; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=Self::MAX_NODES).contains(&self.max_nodes) {
            return Err(format!(
                "data.graph.max_nodes must be in 1..={}, got {}",
                Self::MAX_NODES,
                self.max_nodes
            ));
        }
        Ok(())
    }

    /// Maximum nodes of one graph, global node included (`max_nodes + 1`).
    pub fn nodes_per_graph(&self) -> usize {
        self.max_nodes + 1
    }
    /// An upper bound on the edges of one graph: the dense `(max_nodes + 1)²`.
    pub fn max_edges_per_graph(&self) -> usize {
        self.nodes_per_graph() * self.nodes_per_graph()
    }
}

/// One image as a graph. All arrays row-major; `P = feat_h · feat_w`, `C = feat_dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneGraph {
    /// Segment nodes + 1 (the global node is `num_nodes − 1`).
    pub num_nodes: usize,
    /// Category count of the dataset; the global node's category is this value.
    pub num_categories: usize,
    /// Channels C of a feature cell.
    pub feat_dim: usize,
    /// See [`FeatureMap::position_channel`].
    pub position_channel: Option<usize>,
    /// Feature grid height in cells.
    pub feat_h: usize,
    /// Feature grid width in cells.
    pub feat_w: usize,
    /// `[P, C]` pixel-major features.
    pub pixel_feats: Vec<f32>,
    /// `[P]` node of each feature cell, −1 = void (never the global node).
    pub pixel_node: Vec<i32>,
    /// `[num_nodes, 5]`: centroid x, y, bbox w, h, area fraction.
    pub geometry: Vec<f32>,
    /// `[num_nodes]` category index (global: `num_categories`).
    pub category: Vec<i32>,
    /// `[E]` edge sources / destinations, sorted by (dst, src), no duplicates.
    pub edge_src: Vec<i32>,
    /// `[E]` destination of each edge (pairs with `edge_src`).
    pub edge_dst: Vec<i32>,
    /// `[E, 5]` edge features.
    pub edge_feats: Vec<f32>,
    /// `[num_nodes]` feature cells pooled by each node (≥ 1 for segments; `P` for the global node,
    /// which pools the whole map).
    pub node_area: Vec<f32>,
    /// `[num_nodes]` panoptic id of each node (0 for the global node).
    pub segment_ids: Vec<u32>,
    /// Segments left out by the `max_nodes` cap.
    pub truncated: usize,
    /// Segments that vanished at feature resolution and could not take a cell (see module rule).
    pub dropped_segments: Vec<u32>,
}

impl SceneGraph {
    /// Number of edges E.
    pub fn num_edges(&self) -> usize {
        self.edge_src.len()
    }
    /// Feature cells P = `feat_h · feat_w`.
    pub fn num_pixels(&self) -> usize {
        self.feat_h * self.feat_w
    }
    /// Index of the global node, `num_nodes − 1`.
    pub fn global_node(&self) -> usize {
        self.num_nodes - 1
    }
    /// Reference masked average pooling `[num_nodes, C]` (DESIGN §3.5): mean of the cells of each
    /// node; the global node takes the mean of all cells. f64 accumulation.
    pub fn pool_reference(&self) -> Vec<f32> {
        let c = self.feat_dim;
        let mut sum = vec![0f64; self.num_nodes * c];
        let mut cnt = vec![0usize; self.num_nodes];
        let g = self.global_node();
        for (p, &n) in self.pixel_node.iter().enumerate() {
            let f = &self.pixel_feats[p * c..(p + 1) * c];
            for (ch, v) in f.iter().enumerate() {
                sum[g * c + ch] += *v as f64;
                if n >= 0 {
                    sum[n as usize * c + ch] += *v as f64;
                }
            }
            cnt[g] += 1;
            if n >= 0 {
                cnt[n as usize] += 1;
            }
        }
        sum.iter()
            .enumerate()
            .map(|(i, s)| (s / cnt[i / c].max(1) as f64) as f32)
            .collect()
    }
}

/// Full-resolution statistics of one segment.
#[derive(Clone, Copy)]
struct Stats {
    count: u64,
    sx: f64,
    sy: f64,
    x0: u32,
    x1: u32,
    y0: u32,
    y1: u32,
}

/// Build the graph of one image from its segment map and a feature map (any resolution).
pub fn build_scene_graph(
    seg: &SegmentMap,
    num_categories: usize,
    feats: &FeatureMap,
    cfg: &GraphConfig,
) -> Result<SceneGraph> {
    check_inputs(seg, num_categories, feats, cfg)?;
    let st = segment_stats(seg)?;
    let (order, truncated) = select_nodes(seg, &st, cfg.max_nodes)?;
    let (cell_seg, kept, dropped_segments) = assign_cells(seg, feats, &order);
    // Final numbering: `kept` is in descending-area order already.
    let nseg = kept.len();
    let num_nodes = nseg + 1;
    let (seg_node, pixel_node, node_area) = number_nodes(seg, &kept, &cell_seg);
    let nodes = node_attributes(seg, &st, &kept, num_categories);
    let touch = touching_pairs(seg, &seg_node);
    let edges = edge_set(nseg, &touch, &nodes.centroid, cfg.knn);
    let (edge_src, edge_dst, edge_feats) = edge_arrays(&edges, &nodes.geometry, &touch);
    Ok(SceneGraph {
        num_nodes,
        num_categories,
        feat_dim: feats.c,
        position_channel: feats.position_channel,
        feat_h: feats.h,
        feat_w: feats.w,
        pixel_feats: feats.data.clone(),
        pixel_node,
        geometry: nodes.geometry,
        category: nodes.category,
        edge_src,
        edge_dst,
        edge_feats,
        node_area,
        segment_ids: nodes.segment_ids,
        truncated,
        dropped_segments,
    })
}

/// The contract of [`build_scene_graph`]'s arguments.
fn check_inputs(
    seg: &SegmentMap,
    num_categories: usize,
    feats: &FeatureMap,
    cfg: &GraphConfig,
) -> Result<()> {
    let (wd, ht) = (seg.width as usize, seg.height as usize);
    if wd == 0 || ht == 0 || seg.index.len() != wd * ht {
        return Err(DataError::contract(format!(
            "segment map {}x{} has {} entries",
            wd,
            ht,
            seg.index.len()
        )));
    }
    if feats.c == 0
        || feats.h == 0
        || feats.w == 0
        || feats.data.len() != feats.h * feats.w * feats.c
    {
        return Err(DataError::contract(format!(
            "feature map c={} h={} w={} has {} values",
            feats.c,
            feats.h,
            feats.w,
            feats.data.len()
        )));
    }
    if cfg.max_nodes == 0 {
        return Err(DataError::contract("GraphConfig.max_nodes must be ≥ 1"));
    }
    if let Some(s) = seg.segments.iter().find(|s| s.category >= num_categories) {
        return Err(DataError::contract(format!(
            "segment {} has category index {} ≥ num_categories {num_categories}",
            s.id, s.category
        )));
    }
    Ok(())
}

/// Pixel count, coordinate sums and bounding box of every segment at full resolution.
fn segment_stats(seg: &SegmentMap) -> Result<Vec<Stats>> {
    let wd = seg.width as usize;
    let ns = seg.segments.len();
    let mut st = vec![
        Stats {
            count: 0,
            sx: 0.0,
            sy: 0.0,
            x0: u32::MAX,
            x1: 0,
            y0: u32::MAX,
            y1: 0
        };
        ns
    ];
    for (i, &k) in seg.index.iter().enumerate() {
        if k < 0 {
            continue;
        }
        let k = k as usize;
        if k >= ns {
            return Err(DataError::contract(format!(
                "segment map entry {k} at pixel {i} ≥ {ns} segments"
            )));
        }
        let (x, y) = ((i % wd) as u32, (i / wd) as u32);
        let s = &mut st[k];
        s.count += 1;
        s.sx += x as f64;
        s.sy += y as f64;
        s.x0 = s.x0.min(x);
        s.x1 = s.x1.max(x);
        s.y0 = s.y0.min(y);
        s.y1 = s.y1.max(y);
    }
    Ok(st)
}

/// Node selection: the `max_nodes` largest segments, largest first (ties: smaller panoptic
/// id), and how many were left out.
fn select_nodes(seg: &SegmentMap, st: &[Stats], max_nodes: usize) -> Result<(Vec<usize>, usize)> {
    let ns = seg.segments.len();
    let mut order: Vec<usize> = (0..ns).filter(|&k| st[k].count > 0).collect();
    if order.is_empty() {
        return Err(DataError::contract("segment map has no non-void segment"));
    }
    order.sort_by(|&a, &b| {
        st[b]
            .count
            .cmp(&st[a].count)
            .then(seg.segments[a].id.cmp(&seg.segments[b].id))
            .then(a.cmp(&b))
    });
    let truncated = order.len().saturating_sub(max_nodes);
    order.truncate(max_nodes);
    Ok((order, truncated))
}

/// Nearest-neighbour resize (segment indices) to the feature grid, then the vanished-segment
/// rule. Returns each cell's segment (−1 = void), the segments kept as nodes (in `order`'s
/// order) and the panoptic ids of those dropped.
fn assign_cells(
    seg: &SegmentMap,
    feats: &FeatureMap,
    order: &[usize],
) -> (Vec<i32>, Vec<usize>, Vec<u32>) {
    let (wd, ht) = (seg.width as usize, seg.height as usize);
    let ns = seg.segments.len();
    let (fh, fw) = (feats.h, feats.w);
    let p = fh * fw;
    let mut seg_node = vec![-1i32; ns];
    for (n, &k) in order.iter().enumerate() {
        seg_node[k] = n as i32;
    }
    let mut cell_seg = vec![-1i32; p];
    for cy in 0..fh {
        let sy = ((2 * cy + 1) * ht / (2 * fh)).min(ht - 1);
        for cx in 0..fw {
            let sx = ((2 * cx + 1) * wd / (2 * fw)).min(wd - 1);
            let k = seg.index[sy * wd + sx];
            if k >= 0 && seg_node[k as usize] >= 0 {
                cell_seg[cy * fw + cx] = k;
            }
        }
    }
    let mut cells = vec![0usize; ns];
    for &k in &cell_seg {
        if k >= 0 {
            cells[k as usize] += 1;
        }
    }
    let mut dropped_segments = Vec::new();
    let mut kept = Vec::with_capacity(order.len());
    for &k in order {
        if cells[k] > 0 {
            kept.push(k);
            continue;
        }
        // Cells its pixels fall into, by pixel count.
        let mut hits: Vec<(usize, usize)> = Vec::new(); // (cell, count)
        let mut tally = std::collections::HashMap::new();
        for (i, &kk) in seg.index.iter().enumerate() {
            if kk == k as i32 {
                let (x, y) = (i % wd, i / wd);
                *tally
                    .entry((y * fh / ht) * fw + x * fw / wd)
                    .or_insert(0usize) += 1;
            }
        }
        hits.extend(tally);
        hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let pick = hits.iter().map(|h| h.0).find(|&c| {
            let owner = cell_seg[c];
            owner < 0 || cells[owner as usize] >= 2
        });
        match pick {
            Some(c) => {
                let owner = cell_seg[c];
                if owner >= 0 {
                    cells[owner as usize] -= 1;
                }
                cell_seg[c] = k as i32;
                cells[k] = 1;
                kept.push(k);
            }
            None => dropped_segments.push(seg.segments[k].id),
        }
    }
    (cell_seg, kept, dropped_segments)
}

/// Node numbers of the kept segments: each segment's node (−1: none), each cell's node and
/// the cells pooled per node (the global node, last, pools all of them).
fn number_nodes(
    seg: &SegmentMap,
    kept: &[usize],
    cell_seg: &[i32],
) -> (Vec<i32>, Vec<i32>, Vec<f32>) {
    let global = kept.len();
    let mut seg_node = vec![-1i32; seg.segments.len()];
    for (n, &k) in kept.iter().enumerate() {
        seg_node[k] = n as i32;
    }
    let pixel_node: Vec<i32> = cell_seg
        .iter()
        .map(|&k| if k >= 0 { seg_node[k as usize] } else { -1 })
        .collect();
    let mut node_area = vec![0f32; global + 1];
    for &n in &pixel_node {
        if n >= 0 {
            node_area[n as usize] += 1.0;
        }
    }
    node_area[global] = cell_seg.len() as f32;
    (seg_node, pixel_node, node_area)
}

/// Per node (global last): geometry, category, panoptic id; per segment node its centroid.
struct NodeAttributes {
    geometry: Vec<f32>,
    category: Vec<i32>,
    segment_ids: Vec<u32>,
    centroid: Vec<(f64, f64)>,
}

/// Geometry and category of the kept segments and the global node.
fn node_attributes(
    seg: &SegmentMap,
    st: &[Stats],
    kept: &[usize],
    num_categories: usize,
) -> NodeAttributes {
    let num_nodes = kept.len() + 1;
    let (wf, hf) = (seg.width as f64, seg.height as f64);
    let mut geometry = Vec::with_capacity(num_nodes * GEOMETRY_DIM);
    let mut category = Vec::with_capacity(num_nodes);
    let mut segment_ids = Vec::with_capacity(num_nodes);
    let mut centroid = Vec::with_capacity(kept.len());
    for &k in kept {
        let s = &st[k];
        let c = s.count as f64;
        let cx = (s.sx / c + 0.5) / wf;
        let cy = (s.sy / c + 0.5) / hf;
        centroid.push((cx, cy));
        geometry.extend_from_slice(&[
            cx as f32,
            cy as f32,
            ((s.x1 - s.x0 + 1) as f64 / wf) as f32,
            ((s.y1 - s.y0 + 1) as f64 / hf) as f32,
            (c / (wf * hf)) as f32,
        ]);
        category.push(seg.segments[k].category as i32);
        segment_ids.push(seg.segments[k].id);
    }
    geometry.extend_from_slice(&[0.5, 0.5, 1.0, 1.0, 1.0]);
    category.push(num_categories as i32);
    segment_ids.push(0);
    NodeAttributes {
        geometry,
        category,
        segment_ids,
        centroid,
    }
}

/// Touching pairs `(a < b)` of nodes at full resolution (4-neighbour pixel pairs).
fn touching_pairs(seg: &SegmentMap, seg_node: &[i32]) -> BTreeSet<(usize, usize)> {
    let (wd, ht) = (seg.width as usize, seg.height as usize);
    let mut touch: BTreeSet<(usize, usize)> = BTreeSet::new();
    let node_at = |i: usize| -> i32 {
        let k = seg.index[i];
        if k >= 0 {
            seg_node[k as usize]
        } else {
            -1
        }
    };
    for y in 0..ht {
        for x in 0..wd {
            let a = node_at(y * wd + x);
            if a < 0 {
                continue;
            }
            for (nx, ny) in [(x + 1, y), (x, y + 1)] {
                if nx < wd && ny < ht {
                    let b = node_at(ny * wd + nx);
                    if b >= 0 && b != a {
                        touch.insert((a.min(b) as usize, a.max(b) as usize));
                    }
                }
            }
        }
    }
    touch
}

/// The edge set as `(dst, src)` (so sorted by destination): self-loops, global ↔ segments,
/// touching pairs and `knn` nearest centroids, all in both directions.
fn edge_set(
    nseg: usize,
    touch: &BTreeSet<(usize, usize)>,
    centroid: &[(f64, f64)],
    knn: usize,
) -> BTreeSet<(usize, usize)> {
    let (num_nodes, global) = (nseg + 1, nseg);
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    for n in 0..num_nodes {
        edges.insert((n, n));
    }
    for n in 0..nseg {
        edges.insert((n, global));
        edges.insert((global, n));
    }
    for &(a, b) in touch {
        edges.insert((a, b));
        edges.insert((b, a));
    }
    for a in 0..nseg {
        let mut others: Vec<(f64, usize)> = (0..nseg)
            .filter(|&b| b != a)
            .map(|b| {
                let (dx, dy) = (centroid[a].0 - centroid[b].0, centroid[a].1 - centroid[b].1);
                (dx * dx + dy * dy, b)
            })
            .collect();
        others.sort_by(|u, v| u.0.total_cmp(&v.0).then(u.1.cmp(&v.1)));
        for &(_, b) in others.iter().take(knn) {
            edges.insert((a, b));
            edges.insert((b, a));
        }
    }
    edges
}

/// Sources, destinations and features of the edges in `(dst, src)` order.
fn edge_arrays(
    edges: &BTreeSet<(usize, usize)>,
    geometry: &[f32],
    touch: &BTreeSet<(usize, usize)>,
) -> (Vec<i32>, Vec<i32>, Vec<f32>) {
    let ne = edges.len();
    let mut edge_src = Vec::with_capacity(ne);
    let mut edge_dst = Vec::with_capacity(ne);
    let mut edge_feats = Vec::with_capacity(ne * EDGE_FEAT_DIM);
    for &(d, s) in edges {
        edge_src.push(s as i32);
        edge_dst.push(d as i32);
        let gs = &geometry[s * GEOMETRY_DIM..(s + 1) * GEOMETRY_DIM];
        let gd = &geometry[d * GEOMETRY_DIM..(d + 1) * GEOMETRY_DIM];
        let t = s != d && touch.contains(&(s.min(d), s.max(d)));
        edge_feats.extend_from_slice(&[
            gs[0] - gd[0],
            gs[1] - gd[1],
            (gs[2] / gd[2]).ln(),
            (gs[3] / gd[3]).ln(),
            if t { 1.0 } else { 0.0 },
        ]);
    }
    (edge_src, edge_dst, edge_feats)
}

/// Graph of a decoded sample: its external feature map if it has one, else the built-in features.
pub fn graph_from_sample(
    sample: &Sample,
    num_categories: usize,
    graph: &GraphConfig,
    features: &FeatureConfig,
) -> Result<SceneGraph> {
    let built;
    let f = match &sample.features {
        Some(f) => f,
        None => {
            built = builtin_features(&sample.image, features)?;
            &built
        }
    };
    build_scene_graph(&sample.segments, num_categories, f, graph)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::coco::Segment;
    use crate::data::rng::SynthRng;

    pub(crate) fn seg_map(w: u32, h: u32, rows: &[&str], ids: &[(char, u32, usize)]) -> SegmentMap {
        let mut index = Vec::new();
        for r in rows {
            for ch in r.chars().filter(|c| !c.is_whitespace()) {
                index.push(ids.iter().position(|x| x.0 == ch).map_or(-1, |p| p as i32));
            }
        }
        assert_eq!(index.len(), (w * h) as usize);
        let segments = ids
            .iter()
            .enumerate()
            .map(|(k, &(_, id, cat))| Segment {
                id,
                category: cat,
                category_id: cat as u64 + 100,
                is_thing: true,
                iscrowd: false,
                area: index.iter().filter(|&&v| v == k as i32).count() as u64,
            })
            .collect();
        SegmentMap {
            width: w,
            height: h,
            index,
            segments,
        }
    }

    pub(crate) fn feats(h: usize, w: usize, c: usize) -> FeatureMap {
        FeatureMap {
            c,
            h,
            w,
            data: (0..h * w * c).map(|i| (i % 17) as f32 * 0.25).collect(),
            position_channel: None,
        }
    }

    /// A-B touch, D (two pieces) touches E; C touches nothing.
    pub(crate) fn hand_map() -> SegmentMap {
        seg_map(
            8,
            6,
            &[
                "AABB..CC", //
                "AABB..CC", //
                "........", //
                "DD....DD", //
                "DD..EEDD", //
                "DD..EEDD",
            ],
            &[
                ('A', 10, 0),
                ('B', 20, 1),
                ('C', 30, 2),
                ('D', 40, 3),
                ('E', 50, 1),
            ],
        )
    }

    fn edge_set(g: &SceneGraph) -> BTreeSet<(i32, i32)> {
        g.edge_src
            .iter()
            .copied()
            .zip(g.edge_dst.iter().copied())
            .collect()
    }

    fn edge_feat(g: &SceneGraph, s: i32, d: i32) -> &[f32] {
        let k = (0..g.num_edges())
            .find(|&k| g.edge_src[k] == s && g.edge_dst[k] == d)
            .unwrap_or_else(|| panic!("no edge {s}->{d}"));
        &g.edge_feats[k * 5..k * 5 + 5]
    }

    pub(crate) fn check_invariants(g: &SceneGraph, knn: usize) {
        let n = g.num_nodes as i32;
        let glob = n - 1;
        let es = edge_set(g);
        assert_eq!(es.len(), g.num_edges(), "duplicate edges");
        let pairs: Vec<(i32, i32)> = g
            .edge_dst
            .iter()
            .copied()
            .zip(g.edge_src.iter().copied())
            .collect();
        assert!(
            pairs.windows(2).all(|w| w[0] < w[1]),
            "not sorted by (dst, src)"
        );
        for i in 0..n {
            assert!(es.contains(&(i, i)), "node {i} lacks a self-loop");
            if i != glob {
                assert!(
                    es.contains(&(i, glob)) && es.contains(&(glob, i)),
                    "global not linked to {i}"
                );
                let nb = es
                    .iter()
                    .filter(|&&(s, d)| d == i && s != i && s != glob)
                    .count();
                assert!(
                    nb >= knn.min(g.num_nodes - 2),
                    "node {i} has {nb} segment neighbours"
                );
            }
        }
        for &(s, d) in &es {
            assert!(es.contains(&(d, s)), "edge {s}->{d} has no reverse");
            assert!((0..n).contains(&s) && (0..n).contains(&d));
        }
        assert!(g
            .geometry
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
        assert!(g.edge_feats.iter().all(|v| v.is_finite()));
        assert_eq!(g.geometry.len(), g.num_nodes * 5);
        assert_eq!(g.category.len(), g.num_nodes);
        assert_eq!(g.category[glob as usize], g.num_categories as i32);
        assert_eq!(&g.geometry[glob as usize * 5..], &[0.5, 0.5, 1.0, 1.0, 1.0]);
        for i in 0..glob {
            let cells = g.pixel_node.iter().filter(|&&p| p == i).count();
            assert!(cells >= 1, "node {i} pools no cell");
            assert_eq!(g.node_area[i as usize], cells as f32);
        }
        assert!(g.pixel_node.iter().all(|&p| p >= -1 && p < glob));
        assert!(g.pool_reference().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn hand_drawn_map_nodes_geometry_touching() {
        let m = hand_map();
        let cfg = GraphConfig {
            max_nodes: 32,
            knn: 0,
        };
        let g = build_scene_graph(&m, 4, &feats(6, 8, 3), &cfg).unwrap();
        // Node order: D (12 px), then the 4-px segments by id: A, B, C, E; global = 5.
        assert_eq!(g.segment_ids, vec![40, 10, 20, 30, 50, 0]);
        assert_eq!(g.category, vec![3, 0, 1, 2, 1, 4]);
        check_invariants(&g, 0);
        // D in two pieces is ONE node with the pooled geometry of both pieces.
        assert_eq!(&g.geometry[0..5], &[0.5, 0.75, 1.0, 0.5, 0.25]);
        assert_eq!(
            &g.geometry[5..10],
            &[1.0 / 8.0, 1.0 / 6.0, 0.25, 2.0 / 6.0, 4.0 / 48.0]
        );
        // Exactly self-loops + global + touching (A-B, D-E) when knn = 0.
        let (d, a, b, e, gl) = (0, 1, 2, 4, 5);
        let mut want: BTreeSet<(i32, i32)> = (0..6).map(|i| (i, i)).collect();
        for i in 0..5 {
            want.insert((i, gl));
            want.insert((gl, i));
        }
        for (x, y) in [(a, b), (d, e)] {
            want.insert((x, y));
            want.insert((y, x));
        }
        assert_eq!(edge_set(&g), want);
        assert_eq!(edge_feat(&g, a, b), &[-0.25, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(edge_feat(&g, e, d)[4], 1.0);
        assert_eq!(edge_feat(&g, a, gl)[4], 0.0);
        assert_eq!(edge_feat(&g, a, a), &[0.0; 5]);
        // log(w_D / w_E) = ln(1 / 0.25)
        assert!((edge_feat(&g, d, e)[2] - 4f32.ln()).abs() < 1e-6);
        // Same-resolution features: pixel_node is the map itself (renumbered).
        assert_eq!(g.pixel_node[0], a);
        assert_eq!(g.pixel_node[8 * 4 + 4], e);
        assert_eq!(g.pixel_node[8 * 2], -1);
    }

    #[test]
    fn knn_adds_nearest_by_centroid() {
        let m = hand_map();
        let g0 = build_scene_graph(
            &m,
            4,
            &feats(6, 8, 3),
            &GraphConfig {
                max_nodes: 32,
                knn: 0,
            },
        )
        .unwrap();
        let g1 = build_scene_graph(
            &m,
            4,
            &feats(6, 8, 3),
            &GraphConfig {
                max_nodes: 32,
                knn: 1,
            },
        )
        .unwrap();
        let (b, c) = (2, 3);
        assert!(!edge_set(&g0).contains(&(c, b)));
        // C's nearest centroid is B: both directions added, touching flag 0.
        assert!(edge_set(&g1).contains(&(c, b)) && edge_set(&g1).contains(&(b, c)));
        assert_eq!(edge_feat(&g1, c, b)[4], 0.0);
        check_invariants(&g1, 1);
        // Nearest: A↔B, B←C, D↔E, so k=1 adds only B-C beyond touching: 6 self + 10 global + 3 pairs.
        assert_eq!(g1.num_edges(), 6 + 10 + 6);
        let g2 = build_scene_graph(
            &m,
            4,
            &feats(6, 8, 3),
            &GraphConfig {
                max_nodes: 32,
                knn: 4,
            },
        )
        .unwrap();
        assert_eq!(g2.num_edges(), 36, "k ≥ segments − 1 gives the dense graph");
    }

    #[test]
    fn max_nodes_keeps_largest() {
        let m = hand_map();
        let g = build_scene_graph(
            &m,
            4,
            &feats(6, 8, 3),
            &GraphConfig {
                max_nodes: 3,
                knn: 3,
            },
        )
        .unwrap();
        assert_eq!(g.num_nodes, 4);
        assert_eq!(g.segment_ids, vec![40, 10, 20, 0]);
        assert_eq!(g.truncated, 2);
        // C and E became void; D-E touching is gone with E.
        assert_eq!(g.pixel_node[6], -1);
        assert_eq!(g.pixel_node[8 * 4 + 4], -1);
        check_invariants(&g, 2);
    }

    #[test]
    fn vanished_segment_takes_a_cell() {
        // 16x16 background + a 1-pixel segment at (0,0). Nearest neighbour on a 4x4 grid samples
        // pixels 2, 6, 10, 14 only, so the tiny segment vanishes; the rule gives it cell (0,0).
        let mut rows = vec!["BBBBBBBBBBBBBBBB".to_string(); 16];
        rows[0] = format!("t{}", "B".repeat(15));
        let r: Vec<&str> = rows.iter().map(String::as_str).collect();
        let m = seg_map(16, 16, &r, &[('B', 1, 0), ('t', 2, 1)]);
        let g = build_scene_graph(&m, 2, &feats(4, 4, 2), &GraphConfig::default()).unwrap();
        assert_eq!(g.segment_ids, vec![1, 2, 0]);
        assert_eq!(g.pixel_node[0], 1);
        assert_eq!(g.node_area[..2], [15.0, 1.0]);
        assert!(g.dropped_segments.is_empty());
        let pooled = g.pool_reference();
        assert_eq!(&pooled[2..4], &g.pixel_feats[0..2]);
        check_invariants(&g, 1);

        // Takes a void cell first if that is where its pixels are.
        let mut rows = vec!["................".to_string(); 16];
        rows[0] = format!("t{}", ".".repeat(15));
        rows[8] = "BBBBBBBBBBBBBBBB".to_string();
        let r: Vec<&str> = rows.iter().map(String::as_str).collect();
        let m = seg_map(16, 16, &r, &[('B', 1, 0), ('t', 2, 1)]);
        let g = build_scene_graph(&m, 2, &feats(4, 4, 2), &GraphConfig::default()).unwrap();
        assert_eq!(g.pixel_node[0], 1);
        check_invariants(&g, 1);

        // A 1x1 map cannot host two segments: the small one is dropped and reported.
        let m = seg_map(4, 1, &["BBBt"], &[('B', 1, 0), ('t', 2, 1)]);
        let g = build_scene_graph(&m, 2, &feats(1, 1, 2), &GraphConfig::default()).unwrap();
        assert_eq!(g.num_nodes, 2);
        assert_eq!(g.dropped_segments, vec![2]);
        check_invariants(&g, 0);
    }

    #[test]
    fn random_maps_keep_invariants() {
        let mut rng = SynthRng::new(3);
        for case in 0..40 {
            let (w, h) = (8 + rng.below(40) as u32, 8 + rng.below(40) as u32);
            let nseg = 1 + rng.below(12);
            let mut index = vec![-1i32; (w * h) as usize];
            for k in 0..nseg {
                let (x0, y0) = (rng.below(w as usize), rng.below(h as usize));
                let (x1, y1) = (
                    x0 + 1 + rng.below(w as usize / 2),
                    y0 + 1 + rng.below(h as usize / 2),
                );
                for y in y0..y1.min(h as usize) {
                    for x in x0..x1.min(w as usize) {
                        index[y * w as usize + x] = k as i32;
                    }
                }
            }
            let segments = (0..nseg)
                .map(|k| Segment {
                    id: 1000 + k as u32 * 7,
                    category: k % 3,
                    category_id: 0,
                    is_thing: true,
                    iscrowd: false,
                    area: 0,
                })
                .collect();
            let m = SegmentMap {
                width: w,
                height: h,
                index,
                segments,
            };
            let cfg = GraphConfig {
                max_nodes: 1 + rng.below(8),
                knn: rng.below(4),
            };
            let f = feats(1 + rng.below(12), 1 + rng.below(12), 3);
            match build_scene_graph(&m, 3, &f, &cfg) {
                Ok(g) => {
                    assert!(g.num_nodes - 1 <= cfg.max_nodes, "case {case}");
                    check_invariants(&g, cfg.knn);
                }
                Err(e) => assert!(
                    e.to_string().contains("no non-void segment"),
                    "case {case}: {e}"
                ),
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut m = hand_map();
        assert!(
            build_scene_graph(&m, 3, &feats(2, 2, 1), &GraphConfig::default())
                .unwrap_err()
                .to_string()
                .contains("num_categories")
        );
        m.index[0] = 9;
        assert!(build_scene_graph(&m, 4, &feats(2, 2, 1), &GraphConfig::default()).is_err());
        m.index.pop();
        assert!(build_scene_graph(&m, 4, &feats(2, 2, 1), &GraphConfig::default()).is_err());
        let mut f = feats(2, 2, 1);
        f.data.pop();
        assert!(build_scene_graph(&hand_map(), 4, &f, &GraphConfig::default()).is_err());
        let void = seg_map(2, 1, &[".."], &[('A', 1, 0)]);
        assert!(build_scene_graph(&void, 1, &feats(1, 1, 1), &GraphConfig::default()).is_err());
    }
}
