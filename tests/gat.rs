//! GAT with edge softmax, its attention export and the fixed-attention aggregation
//! (DESIGN §3.2, §3.3): f64 finite-difference gradient checks on random graphs, an independent
//! plain-loop reference, the two-op composition, empty/zero-in-degree graphs, huge logits,
//! typed errors for bad graphs and shapes, and bit-identical results for any thread count.

use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::gat::{CsrGraph, GatAttrs, GraphInputs};
use gshn::ops::Op;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor, ValueId};

// ---- fixtures ----------------------------------------------------------------------------

/// A random graph on `n` nodes: self-loops on about half the nodes, 0..=3 more in-edges per
/// node from random sources (repeats allowed), and (for n > 1) one node with no in-edge.
fn random_graph(rng: &mut SplitMix64, n: usize) -> CsrGraph {
    let mut edges = Vec::new();
    let empty = if n > 1 { rng.below(n) } else { usize::MAX };
    for i in 0..n {
        if i == empty {
            continue;
        }
        if rng.uniform() < 0.5 {
            edges.push((i, i));
        }
        for _ in 0..rng.below(4) {
            edges.push((rng.below(n), i));
        }
    }
    rng.shuffle(&mut edges);
    CsrGraph::from_edges(n, &edges).unwrap()
}

/// A GAT problem: graph, z[N,H,F], a_src[H,F], a_dst[H,F], optional be[E,H] (f64).
struct Case {
    n: usize,
    h: usize,
    f: usize,
    graph: CsrGraph,
    z: Tensor,
    a_src: Tensor,
    a_dst: Tensor,
    be: Option<Tensor>,
}

fn case(rng: &mut SplitMix64, n: usize, h: usize, f: usize, with_be: bool) -> Case {
    let graph = random_graph(rng, n);
    let e = graph.edges();
    Case {
        n,
        h,
        f,
        z: random([n, h, f], -1.0, 1.0, rng),
        a_src: random([h, f], -1.0, 1.0, rng),
        a_dst: random([h, f], -1.0, 1.0, rng),
        be: with_be.then(|| random([e, h], -1.0, 1.0, rng)),
        graph,
    }
}

/// The case's tensors as gradcheck inputs: z, a_src, a_dst (, be), then the graph's four.
fn named_inputs(c: &Case) -> (Vec<(&'static str, Tensor)>, Vec<bool>) {
    let mut v = vec![
        ("z", c.z.clone()),
        ("a_src", c.a_src.clone()),
        ("a_dst", c.a_dst.clone()),
    ];
    let mut diff = vec![true; 3];
    if let Some(be) = &c.be {
        v.push(("be", be.clone()));
        diff.push(true);
    }
    for (name, t) in [
        ("row_ptr", &c.graph.row_ptr),
        ("src", &c.graph.src),
        ("col_ptr", &c.graph.col_ptr),
        ("col_edge", &c.graph.col_edge),
    ] {
        v.push((name, t.clone()));
        diff.push(false);
    }
    (v, diff)
}

fn graph_at(v: &[ValueId], at: usize) -> GraphInputs {
    GraphInputs {
        row_ptr: v[at],
        src: v[at + 1],
        col_ptr: v[at + 2],
        col_edge: v[at + 3],
    }
}

fn check(
    inputs: &[(&str, Tensor)],
    diff: &[bool],
    build: impl FnOnce(&mut Graph, &[ValueId]) -> gshn::Result<Vec<ValueId>>,
) {
    let reports = GradCheck::default().run(inputs, diff, build).unwrap();
    assert_eq!(reports.len(), diff.iter().filter(|&&d| d).count());
    for r in reports {
        let numel = inputs.iter().find(|(n, _)| *n == r.name).unwrap().1.numel();
        assert!(r.checked > 0 || numel == 0, "{} checked no element", r.name);
    }
}

/// Plain-loop f64 reference that materialises α: returns (out[N,H,F], lse[N,H], α[E,H]).
fn reference(c: &Case, slope: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, h, f) = (c.n, c.h, c.f);
    let z = c.z.data::<f64>().unwrap();
    let (asrc, adst) = (
        c.a_src.data::<f64>().unwrap(),
        c.a_dst.data::<f64>().unwrap(),
    );
    let src: Vec<usize> = c
        .graph
        .src
        .data::<i32>()
        .unwrap()
        .iter()
        .map(|&s| s as usize)
        .collect();
    let dst = c.graph.dst();
    let e = src.len();
    let zat = |node: usize, hh: usize, ff: usize| z[(node * h + hh) * f + ff];
    let mut logit = vec![0.0; e * h];
    for k in 0..e {
        for hh in 0..h {
            let mut p = 0.0;
            for ff in 0..f {
                p += zat(src[k], hh, ff) * asrc[hh * f + ff]
                    + zat(dst[k], hh, ff) * adst[hh * f + ff];
            }
            if let Some(be) = &c.be {
                p += be.data::<f64>().unwrap()[k * h + hh];
            }
            logit[k * h + hh] = if p > 0.0 { p } else { slope * p };
        }
    }
    let (mut out, mut lse, mut alpha) = (vec![0.0; n * h * f], vec![0.0; n * h], vec![0.0; e * h]);
    for i in 0..n {
        for hh in 0..h {
            let into: Vec<usize> = (0..e).filter(|&k| dst[k] == i).collect();
            if into.is_empty() {
                continue;
            }
            let m = into
                .iter()
                .map(|&k| logit[k * h + hh])
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = into.iter().map(|&k| (logit[k * h + hh] - m).exp()).sum();
            lse[i * h + hh] = m + s.ln();
            for &k in &into {
                let a = (logit[k * h + hh] - m).exp() / s;
                alpha[k * h + hh] = a;
                for ff in 0..f {
                    out[(i * h + hh) * f + ff] += a * zat(src[k], hh, ff);
                }
            }
        }
    }
    (out, lse, alpha)
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: got {a}, want {b}"
        );
    }
}

/// Built graph of one GAT layer with its attention export and the gradients of
/// L = Σ w ⊙ out (+ Σ wa ⊙ α when `alpha_loss`) w.r.t. z, a_src, a_dst (, be).
struct Built {
    g: Graph,
    z: ValueId,
    a_src: ValueId,
    a_dst: ValueId,
    be: Option<ValueId>,
    gi: GraphInputs,
    out: ValueId,
    lse: ValueId,
    alpha: ValueId,
    grads: Vec<ValueId>,
}

fn build(c: &Case, dtype: DType) -> Built {
    let (n, h, f, e) = (c.n, c.h, c.f, c.graph.edges());
    let mut g = Graph::new();
    let z = g.input("z", [n, h, f], dtype);
    let a_src = g.input("a_src", [h, f], dtype);
    let a_dst = g.input("a_dst", [h, f], dtype);
    let be = c.be.as_ref().map(|_| g.input("be", [e, h], dtype));
    let gi = GraphInputs::new(&mut g, "", n, e);
    let attrs = GatAttrs::default();
    let o = g.gat(z, a_src, a_dst, be, &gi, attrs).unwrap();
    let alpha = g.gat_alpha(z, a_src, a_dst, be, o.lse, &gi, attrs).unwrap();
    // Deterministic weights w = 1 + small pattern so every element matters.
    let w = g.fill(0.75, [n, h, f], dtype).unwrap();
    let wo = g.mul(o.out, w).unwrap();
    let l1 = g.sum(wo).unwrap();
    let sq = g.mul(alpha, alpha).unwrap();
    let l2 = g.sum(sq).unwrap();
    let loss = g.add(l1, l2).unwrap();
    let mut wrt = vec![z, a_src, a_dst];
    wrt.extend(be);
    let grads = g.backward(loss, &wrt).unwrap();
    Built {
        g,
        z,
        a_src,
        a_dst,
        be,
        gi,
        out: o.out,
        lse: o.lse,
        alpha,
        grads,
    }
}

/// Runs `b` on the case's data (converted to `dtype`); returns out, lse, alpha, grads.
fn run(b: &Built, c: &Case, dtype: DType) -> gshn::Result<Vec<Tensor>> {
    let mut fetch = vec![b.out, b.lse, b.alpha];
    fetch.extend(&b.grads);
    let mut ex = Executor::new(CpuBackend, b.g.clone(), &fetch)?;
    ex.set(b.z, &c.z.to_dtype(dtype)?)?;
    ex.set(b.a_src, &c.a_src.to_dtype(dtype)?)?;
    ex.set(b.a_dst, &c.a_dst.to_dtype(dtype)?)?;
    if let (Some(id), Some(t)) = (b.be, &c.be) {
        ex.set(id, &t.to_dtype(dtype)?)?;
    }
    b.gi.feed(&mut ex, &c.graph)?;
    ex.run()?;
    fetch.iter().map(|&v| ex.get(v)).collect()
}

// ---- host graph ----------------------------------------------------------------------------

#[test]
fn csr_graph_from_edges_builds_csr_and_csc() {
    // Edges (src → dst): 0: 2→1, 1: 0→0, 2: 0→1, 3: 1→2, 4: 2→2 (listed out of order).
    let g = CsrGraph::from_edges(4, &[(2, 1), (1, 2), (0, 0), (0, 1), (2, 2)]).unwrap();
    assert_eq!(g.row_ptr.data::<i32>().unwrap(), &[0, 1, 3, 5, 5]);
    // Inside a destination group the input order is kept.
    assert_eq!(g.src.data::<i32>().unwrap(), &[0, 2, 0, 1, 2]);
    assert_eq!(g.col_ptr.data::<i32>().unwrap(), &[0, 2, 3, 5, 5]);
    assert_eq!(g.col_edge.data::<i32>().unwrap(), &[0, 2, 3, 1, 4]);
    assert_eq!(g.dst(), vec![0, 1, 1, 2, 2]);
    g.validate(4).unwrap();
    let empty = CsrGraph::from_edges(3, &[]).unwrap();
    assert_eq!(empty.edges(), 0);
    empty.validate(3).unwrap();
    assert!(matches!(
        CsrGraph::from_edges(3, &[(0, 3)]),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn invalid_graphs_are_typed_errors() {
    let ok = CsrGraph::from_edges(3, &[(0, 1), (2, 1), (1, 2), (2, 2)]).unwrap();
    ok.validate(3).unwrap();
    let with = |f: &dyn Fn(&mut CsrGraph)| {
        let mut g = ok.clone();
        f(&mut g);
        g
    };
    let set = |t: &mut Tensor, v: Vec<i32>| *t = Tensor::new([v.len()], v).unwrap();
    let bad = [
        with(&|g| set(&mut g.row_ptr, vec![0, 3, 2, 4])), // decreasing
        with(&|g| set(&mut g.row_ptr, vec![1, 1, 3, 4])), // not from 0
        with(&|g| set(&mut g.row_ptr, vec![0, 0, 2, 3])), // last ≠ E
        with(&|g| set(&mut g.src, vec![0, 3, 1, 2])),     // src ≥ N
        with(&|g| set(&mut g.src, vec![0, -1, 1, 2])),    // src < 0
        with(&|g| set(&mut g.col_edge, vec![0, 1, 2, 3])), // wrong source group
        with(&|g| set(&mut g.col_edge, vec![0, 2, 3, 3])), // repeated edge
        with(&|g| set(&mut g.col_edge, vec![0, 2, 4, 3])), // out of range
        with(&|g| set(&mut g.col_ptr, vec![0, 2, 1, 4])), // decreasing
        with(&|g| set(&mut g.col_ptr, vec![0, 9, 9, 4])), // past E before the end
    ];
    for (i, g) in bad.iter().enumerate() {
        assert!(
            matches!(g.validate(3), Err(Error::Invalid { .. })),
            "case {i} accepted"
        );
    }
    assert!(ok.validate(4).is_err());

    // The same bad arrays fed at run time: the kernels answer with Error::Invalid.
    let mut rng = SplitMix64::new(3);
    let mut c = case(&mut rng, 3, 2, 3, true);
    c.be = Some(random([4, 2], -1.0, 1.0, &mut rng));
    for (i, g) in bad.iter().enumerate() {
        c.graph = g.clone();
        let b = build(&c, DType::F64);
        let r = run(&b, &c, DType::F64);
        assert!(
            matches!(r, Err(Error::Invalid { .. })),
            "case {i}: {:?}",
            r.err()
        );
        // Aggregation too (forward reads the CSR, backward the CSC).
        let mut g2 = Graph::new();
        let alpha = g2.input("alpha", [4, 2], DType::F64);
        let s = g2.input("s", [2, 3, 4], DType::F64);
        let gi = GraphInputs::new(&mut g2, "", 3, 4);
        let y = g2.aggregate(alpha, s, &gi).unwrap();
        let l = g2.sum(y).unwrap();
        let gr = g2.backward(l, &[alpha, s]).unwrap();
        let mut ex = Executor::new(CpuBackend, g2, &gr).unwrap();
        ex.set(alpha, &random([4, 2], -1.0, 1.0, &mut rng)).unwrap();
        ex.set(s, &random([2, 3, 4], -1.0, 1.0, &mut rng)).unwrap();
        gi.feed(&mut ex, g).unwrap();
        assert!(
            matches!(ex.run(), Err(Error::Invalid { .. })),
            "aggregate case {i}"
        );
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let mut g = Graph::new();
    let z = g.input("z", [5, 2, 3], DType::F64);
    let a_ok = g.input("a", [2, 3], DType::F64);
    let a_bad = g.input("ab", [3, 2], DType::F64);
    let a_f32 = g.input("a32", [2, 3], DType::F32);
    let gi = GraphInputs::new(&mut g, "", 5, 7);
    let gi_wrong_n = GraphInputs::new(&mut g, "w", 4, 7);
    let be_bad = g.input("be", [6, 2], DType::F64);
    let at = GatAttrs::default();
    fn shape_err<T>(r: gshn::Result<T>) -> bool {
        matches!(r, Err(Error::Shape { .. }))
    }
    assert!(shape_err(g.gat(z, a_bad, a_ok, None, &gi, at)));
    assert!(shape_err(g.gat(z, a_ok, a_f32, None, &gi, at)));
    assert!(shape_err(g.gat(z, a_ok, a_ok, Some(be_bad), &gi, at)));
    assert!(shape_err(g.gat(z, a_ok, a_ok, None, &gi_wrong_n, at)));
    assert!(shape_err(g.gat(a_ok, a_ok, a_ok, None, &gi, at)));
    let float_graph = GraphInputs { row_ptr: z, ..gi };
    assert!(shape_err(g.gat(z, a_ok, a_ok, None, &float_graph, at)));
    let alpha = g.input("alpha", [7, 2], DType::F64);
    let s_bad = g.input("s", [2, 5, 5], DType::F64); // 5 channels, 2 heads
    assert!(shape_err(g.aggregate(alpha, s_bad, &gi)));
    let alpha_bad = g.input("alpha_bad", [6, 2], DType::F64);
    let s = g.input("s_ok", [2, 5, 4], DType::F64);
    assert!(shape_err(g.aggregate(alpha_bad, s, &gi)));
    // Wrong arity through the raw op.
    assert!(shape_err(
        g.push(Op::Gat(GatAttrs::default()), &[z, a_ok, a_ok])
            .map(|_| ())
    ));
    assert!(g.aggregate(alpha, s, &gi).is_ok());
    // A non-finite slope would make every attention weight NaN: a value error, every form.
    for slope in [f64::NAN, f64::INFINITY] {
        let bad = GatAttrs {
            negative_slope: slope,
            ..at
        };
        let r = g.gat(z, a_ok, a_ok, None, &gi, bad);
        assert!(
            matches!(&r, Err(Error::Invalid { msg, .. }) if msg.contains("negative_slope")),
            "{r:?}"
        );
    }
}

// ---- forward -----------------------------------------------------------------------------

#[test]
fn forward_matches_plain_loop_reference() {
    for seed in 0..8 {
        let mut rng = SplitMix64::new(100 + seed);
        let n = 1 + rng.below(12);
        let (h, f) = (1 + rng.below(3), 1 + rng.below(10));
        let c = case(&mut rng, n, h, f, seed % 2 == 0);
        let (out, lse, alpha) = reference(&c, 0.2);
        let b = build(&c, DType::F64);
        let got = run(&b, &c, DType::F64).unwrap();
        assert_close("out", &got[0].to_f64_vec(), &out, 1e-12);
        assert_close("lse", &got[1].to_f64_vec(), &lse, 1e-12);
        assert_close("alpha", &got[2].to_f64_vec(), &alpha, 1e-12);
        let b32 = build(&c, DType::F32);
        let got = run(&b32, &c, DType::F32).unwrap();
        assert_close("out f32", &got[0].to_f64_vec(), &out, 1e-5);
        assert_close("lse f32", &got[1].to_f64_vec(), &lse, 1e-5);
        assert_close("alpha f32", &got[2].to_f64_vec(), &alpha, 1e-5);
    }
}

#[test]
fn zero_in_degree_and_empty_graph_give_exact_zeros() {
    // Node 0 and 2 have no in-edge; node 4 has no edge at all.
    let graph = CsrGraph::from_edges(5, &[(0, 1), (1, 1), (2, 1), (1, 3), (0, 3)]).unwrap();
    let empty = CsrGraph::from_edges(3, &[]).unwrap();
    for (graph, isolated) in [(graph, vec![4usize]), (empty, vec![0, 1, 2])] {
        for dtype in [DType::F32, DType::F64] {
            let graph = graph.clone();
            let mut rng = SplitMix64::new(4);
            let n = graph.nodes();
            let (h, f) = (2, 3);
            let c = Case {
                n,
                h,
                f,
                z: random([n, h, f], -1.0, 1.0, &mut rng),
                a_src: random([h, f], -1.0, 1.0, &mut rng),
                a_dst: random([h, f], -1.0, 1.0, &mut rng),
                be: Some(random([graph.edges(), h], -1.0, 1.0, &mut rng)),
                graph,
            };
            let b = build(&c, dtype);
            let got = run(&b, &c, dtype).unwrap();
            for t in &got {
                assert!(t.to_f64_vec().iter().all(|x| x.is_finite()));
            }
            let row_ptr = c.graph.row_ptr.data::<i32>().unwrap();
            let (out, lse, gz) = (
                got[0].to_f64_vec(),
                got[1].to_f64_vec(),
                got[3].to_f64_vec(),
            );
            for i in 0..n {
                if row_ptr[i] == row_ptr[i + 1] {
                    assert!(out[i * h * f..(i + 1) * h * f].iter().all(|&x| x == 0.0));
                    assert!(lse[i * h..(i + 1) * h].iter().all(|&x| x == 0.0));
                }
            }
            for &i in &isolated {
                assert!(gz[i * h * f..(i + 1) * h * f].iter().all(|&x| x == 0.0));
            }
            if c.graph.edges() == 0 {
                for t in &got {
                    assert!(t.to_f64_vec().iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}

#[test]
fn huge_logits_do_not_overflow() {
    for dtype in [DType::F32, DType::F64] {
        let mut rng = SplitMix64::new(21);
        let mut c = case(&mut rng, 9, 2, 8, true);
        // Scores ~ ±1e3: exp would overflow both dtypes without the max subtraction.
        for t in [&mut c.a_src, &mut c.a_dst] {
            for v in t.data_mut::<f64>().unwrap() {
                *v *= 400.0;
            }
        }
        let (out, lse, alpha) = reference(&c, 0.2);
        assert!(lse.iter().any(|x| x.abs() > 500.0), "scores not large");
        let b = build(&c, dtype);
        let got = run(&b, &c, dtype).unwrap();
        for t in &got {
            assert!(t.to_f64_vec().iter().all(|x| x.is_finite()));
        }
        let tol = if dtype == DType::F32 { 1e-3 } else { 1e-10 };
        assert_close("out", &got[0].to_f64_vec(), &out, tol);
        assert_close("lse", &got[1].to_f64_vec(), &lse, tol);
        assert_close("alpha", &got[2].to_f64_vec(), &alpha, tol);
        // α sums to one over the edges entering every node that has one.
        let a = got[2].to_f64_vec();
        let dst = c.graph.dst();
        for i in 0..c.n {
            for hh in 0..c.h {
                let ks: Vec<usize> = (0..dst.len()).filter(|&k| dst[k] == i).collect();
                if !ks.is_empty() {
                    let s: f64 = ks.iter().map(|&k| a[k * c.h + hh]).sum();
                    assert!((s - 1.0).abs() < tol, "node {i} head {hh}: Σα = {s}");
                }
            }
        }
    }
}

// ---- gradients -----------------------------------------------------------------------------

#[test]
fn gat_gradcheck_random_graphs() {
    for seed in 0..8 {
        let mut rng = SplitMix64::new(seed);
        let n = 1 + rng.below(12);
        let (h, f) = (1 + rng.below(3), 1 + rng.below(4));
        let with_be = seed % 2 == 1;
        let c = case(&mut rng, n, h, f, with_be);
        let (inputs, diff) = named_inputs(&c);
        let at = 3 + with_be as usize;
        check(&inputs, &diff, |g, v| {
            let be = with_be.then(|| v[3]);
            let o = g.gat(v[0], v[1], v[2], be, &graph_at(v, at), GatAttrs::default())?;
            Ok(vec![o.out])
        });
    }
}

#[test]
fn gat_gradcheck_empty_edge_set() {
    let mut rng = SplitMix64::new(77);
    let mut c = case(&mut rng, 4, 2, 3, true);
    c.graph = CsrGraph::from_edges(4, &[]).unwrap();
    c.be = Some(Tensor::zeros([0, 2], DType::F64));
    let (inputs, diff) = named_inputs(&c);
    check(&inputs, &diff, |g, v| {
        let o = g.gat(
            v[0],
            v[1],
            v[2],
            Some(v[3]),
            &graph_at(v, 4),
            GatAttrs::default(),
        )?;
        let a = g.gat_alpha(
            v[0],
            v[1],
            v[2],
            Some(v[3]),
            o.lse,
            &graph_at(v, 4),
            GatAttrs::default(),
        )?;
        Ok(vec![o.out, a])
    });
}

#[test]
fn gat_alpha_gradcheck_random_graphs() {
    for seed in 0..8 {
        let mut rng = SplitMix64::new(40 + seed);
        let n = 1 + rng.below(12);
        let (h, f) = (1 + rng.below(3), 1 + rng.below(4));
        let with_be = seed % 2 == 0;
        let c = case(&mut rng, n, h, f, with_be);
        let (inputs, diff) = named_inputs(&c);
        let at = 3 + with_be as usize;
        let attrs = GatAttrs {
            negative_slope: 0.1 + 0.05 * seed as f64,
            ..GatAttrs::default()
        };
        check(&inputs, &diff, |g, v| {
            let be = with_be.then(|| v[3]);
            let gi = graph_at(v, at);
            let o = g.gat(v[0], v[1], v[2], be, &gi, attrs)?;
            Ok(vec![g.gat_alpha(v[0], v[1], v[2], be, o.lse, &gi, attrs)?])
        });
    }
}

#[test]
fn aggregate_gradcheck_random_graphs() {
    for seed in 0..8 {
        let mut rng = SplitMix64::new(60 + seed);
        let n = 1 + rng.below(12);
        let graph = if seed == 3 {
            CsrGraph::from_edges(n, &[]).unwrap()
        } else {
            random_graph(&mut rng, n)
        };
        let (t, h) = (1 + rng.below(3), 1 + rng.below(3));
        let c = h * (1 + rng.below(3));
        let e = graph.edges();
        let inputs = vec![
            ("alpha", random([e, h], -1.0, 1.0, &mut rng)),
            ("s", random([t, n, c], -1.0, 1.0, &mut rng)),
            ("row_ptr", graph.row_ptr.clone()),
            ("src", graph.src.clone()),
            ("col_ptr", graph.col_ptr.clone()),
            ("col_edge", graph.col_edge.clone()),
        ];
        check(
            &inputs,
            &[true, true, false, false, false, false],
            |g, v| Ok(vec![g.aggregate(v[0], v[1], &graph_at(v, 2))?]),
        );
    }
}

/// Fused GAT = aggregate(gat_alpha(..), z as [1, N, H·F]), forward and gradients (f64).
/// `z` reaches the aggregation as a second input `s` holding the same numbers, so the
/// composed gradient for z is g_z(through α) + g_s (the reshape is a no-op on the data).
#[test]
fn gat_equals_alpha_then_aggregate() {
    for seed in 0..6 {
        let mut rng = SplitMix64::new(200 + seed);
        let n = 1 + rng.below(12);
        let (h, f) = (1 + rng.below(3), 1 + rng.below(5));
        let c = case(&mut rng, n, h, f, seed % 2 == 0);
        let e = c.graph.edges();
        let mut g = Graph::new();
        let z = g.input("z", [n, h, f], DType::F64);
        let s = g.input("s", [1, n, h * f], DType::F64);
        let a_src = g.input("a_src", [h, f], DType::F64);
        let a_dst = g.input("a_dst", [h, f], DType::F64);
        let be = c.be.as_ref().map(|_| g.input("be", [e, h], DType::F64));
        let gi = GraphInputs::new(&mut g, "", n, e);
        let w = g.input("w", [n, h, f], DType::F64);
        let ws = g.input("ws", [1, n, h * f], DType::F64);
        let at = GatAttrs::default();
        let fused = g.gat(z, a_src, a_dst, be, &gi, at).unwrap();
        let alpha = g
            .gat_alpha(z, a_src, a_dst, be, fused.lse, &gi, at)
            .unwrap();
        let composed = g.aggregate(alpha, s, &gi).unwrap();
        let mut wrt = vec![z, a_src, a_dst];
        wrt.extend(be);
        let mut fetch = vec![fused.out, composed];
        let p = g.mul(fused.out, w).unwrap();
        let l = g.sum(p).unwrap();
        fetch.extend(g.backward(l, &wrt).unwrap());
        let p = g.mul(composed, ws).unwrap();
        let l = g.sum(p).unwrap();
        let mut wrt_s = wrt.clone();
        wrt_s.push(s);
        fetch.extend(g.backward(l, &wrt_s).unwrap());
        let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
        ex.set(z, &c.z).unwrap();
        ex.set(s, &c.z.clone().reshape([1, n, h * f]).unwrap())
            .unwrap();
        ex.set(a_src, &c.a_src).unwrap();
        ex.set(a_dst, &c.a_dst).unwrap();
        if let (Some(id), Some(t)) = (be, &c.be) {
            ex.set(id, t).unwrap();
        }
        let w_val = random([n, h, f], -1.0, 1.0, &mut rng);
        ex.set(w, &w_val).unwrap();
        ex.set(ws, &w_val.reshape([1, n, h * f]).unwrap()).unwrap();
        gi.feed(&mut ex, &c.graph).unwrap();
        ex.run().unwrap();
        let got: Vec<Vec<f64>> = fetch
            .iter()
            .map(|&v| ex.get(v).unwrap().to_f64_vec())
            .collect();
        assert_close("forward", &got[0], &got[1], 1e-13);
        let k = wrt.len();
        let (fused_g, comp_g) = (&got[2..2 + k], &got[2 + k..]);
        let gz_comp: Vec<f64> = comp_g[0]
            .iter()
            .zip(&comp_g[k])
            .map(|(a, b)| a + b)
            .collect();
        assert_close("grad z", &fused_g[0], &gz_comp, 1e-12);
        for i in 1..k {
            assert_close(&format!("grad {i}"), &fused_g[i], &comp_g[i], 1e-12);
        }
    }
}

// ---- determinism ---------------------------------------------------------------------------

#[test]
fn bit_identical_for_any_thread_count() {
    let mut rng = SplitMix64::new(9);
    let n = 1500;
    let mut edges = Vec::new();
    for i in 0..n {
        edges.push((i, i));
        for _ in 0..rng.below(12) {
            edges.push((rng.below(n), i));
        }
    }
    let graph = CsrGraph::from_edges(n, &edges).unwrap();
    let (h, f) = (4, 12);
    let c = Case {
        n,
        h,
        f,
        z: random([n, h, f], -1.0, 1.0, &mut rng),
        a_src: random([h, f], -1.0, 1.0, &mut rng),
        a_dst: random([h, f], -1.0, 1.0, &mut rng),
        be: Some(random([graph.edges(), h], -1.0, 1.0, &mut rng)),
        graph,
    };
    // GAT layer + attention export, and an aggregation of T = 3 steps on that attention.
    let mut b = build(&c, DType::F32);
    let s = b.g.input("s", [3, n, 8], DType::F32);
    let y = b.g.aggregate(b.alpha, s, &b.gi).unwrap();
    let ly = b.g.sum(y).unwrap();
    let mut wrt = vec![b.z, s];
    wrt.extend(b.be);
    let gy = b.g.backward(ly, &wrt).unwrap();
    b.grads.push(y);
    b.grads.extend(gy);
    let s_val = random([3, n, 8], -1.0, 1.0, &mut rng)
        .to_dtype(DType::F32)
        .unwrap();
    let mut results = Vec::new();
    for threads in [1, 2, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let r = pool.install(|| {
            let mut fetch = vec![b.out, b.lse, b.alpha];
            fetch.extend(&b.grads);
            let mut ex = Executor::new(CpuBackend, b.g.clone(), &fetch).unwrap();
            ex.set(b.z, &c.z.to_dtype(DType::F32).unwrap()).unwrap();
            ex.set(b.a_src, &c.a_src.to_dtype(DType::F32).unwrap())
                .unwrap();
            ex.set(b.a_dst, &c.a_dst.to_dtype(DType::F32).unwrap())
                .unwrap();
            ex.set(
                b.be.unwrap(),
                &c.be.as_ref().unwrap().to_dtype(DType::F32).unwrap(),
            )
            .unwrap();
            ex.set(s, &s_val).unwrap();
            b.gi.feed(&mut ex, &c.graph).unwrap();
            ex.run().unwrap();
            fetch
                .iter()
                .map(|&v| ex.get(v).unwrap())
                .collect::<Vec<_>>()
        });
        results.push(r);
    }
    for r in &results[1..] {
        for (i, (a, b)) in results[0].iter().zip(r).enumerate() {
            let (a, b) = (a.data::<f32>().unwrap(), b.data::<f32>().unwrap());
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "fetch {i} differs between thread counts"
            );
        }
    }
}
