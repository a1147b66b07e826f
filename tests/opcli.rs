//! `gshn::opcli` (the engine of `gshn op`): gradient seeding, the PyG `edge_index` layout,
//! dtypes, and typed errors for bad calls.

use gshn::graph::Executor;
use gshn::ops::{CsrGraph, InfoNceAttrs, LifConfig, Precision};
use gshn::{opcli, CpuBackend, DType, Graph, Tensor};
use serde_json::json;

fn rnd(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}
fn t64(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), rnd(seed, n, -1.0, 1.0)).unwrap()
}
fn get<'a>(r: &'a [(String, Tensor)], k: &str) -> &'a Tensor {
    &r.iter()
        .find(|(n, _)| n == k)
        .unwrap_or_else(|| panic!("no {k}"))
        .1
}
fn close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    for (x, y) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn lif_default_seed_is_ones_and_matches_the_graph() {
    let x = Tensor::new([4, 9], rnd(1, 36, -0.5, 2.5)).unwrap();
    let r = opcli::run("lif", &[("x".into(), x.clone())], &json!({}), CpuBackend).unwrap();
    let names: Vec<&str> = r.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["spikes", "v", "h", "grad_x"]);
    // The same through the builders: L = sum(spikes) + sum(v).
    let mut g = Graph::new();
    let xv = g.input("x", [4, 9], DType::F64);
    let o = g.lif(xv, LifConfig::default()).unwrap();
    let a = g.sum(o.spikes).unwrap();
    let b = g.sum(o.membrane).unwrap();
    let l = g.add(a, b).unwrap();
    let gx = g.backward(l, &[xv]).unwrap()[0];
    let mut ex = Executor::new(CpuBackend, g, &[o.spikes, gx]).unwrap();
    ex.set(xv, &x).unwrap();
    ex.run().unwrap();
    close(get(&r, "spikes"), &ex.get(o.spikes).unwrap(), 0.0);
    close(get(&r, "grad_x"), &ex.get(gx).unwrap(), 1e-12);
    // An explicit seed scales linearly: grad_spikes = grad_v = 2 doubles grad_x.
    let two = Tensor::new([4, 9], vec![2.0f64; 36]).unwrap();
    let r2 = opcli::run(
        "lif",
        &[
            ("x".into(), x),
            ("grad_spikes".into(), two.clone()),
            ("grad_v".into(), two),
        ],
        &json!({}),
        CpuBackend,
    )
    .unwrap();
    let doubled: Vec<f64> = get(&r, "grad_x")
        .to_f64_vec()
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    close(
        get(&r2, "grad_x"),
        &Tensor::new([4, 9], doubled).unwrap(),
        1e-12,
    );
}

/// `u8_spikes`: the spikes come back as u8 holding the float run's 0/1, and everything else
/// (v, h, grad_x) is the same bits.
#[test]
fn lif_u8_spikes_equal_float_spikes() {
    let x = (
        "x".to_string(),
        Tensor::new([4, 9], rnd(5, 36, -0.5, 2.5)).unwrap(),
    );
    let float = opcli::run("lif", std::slice::from_ref(&x), &json!({}), CpuBackend).unwrap();
    let compact = opcli::run("lif", &[x], &json!({"u8_spikes": true}), CpuBackend).unwrap();
    assert_eq!(get(&compact, "spikes").dtype(), DType::U8);
    assert!(get(&float, "spikes").to_f64_vec().contains(&1.0));
    for k in ["spikes", "v", "h", "grad_x"] {
        assert_eq!(
            get(&compact, k).to_f64_vec(),
            get(&float, k).to_f64_vec(),
            "{k}"
        );
    }
}

#[test]
fn gat_edge_index_equals_csr_up_to_edge_order() {
    let (n, h, f) = (5, 2, 3);
    // Shuffled edges (src, dst); node 4 has no in-edge.
    let edges = [
        (1, 0),
        (0, 2),
        (3, 1),
        (0, 0),
        (2, 3),
        (1, 1),
        (4, 3),
        (2, 2),
        (0, 1),
    ];
    let e = edges.len();
    let mut ei = vec![0i32; 2 * e];
    for (k, &(s, d)) in edges.iter().enumerate() {
        ei[k] = s as i32;
        ei[e + k] = d as i32;
    }
    let be = t64(&[e, h], 4);
    let common = vec![
        ("z".to_string(), t64(&[n, h, f], 1)),
        ("a_src".into(), t64(&[h, f], 2)),
        ("a_dst".into(), t64(&[h, f], 3)),
    ];
    let mut a = common.clone();
    a.push(("edge_bias".into(), be.clone()));
    a.push(("edge_index".into(), Tensor::new([2, e], ei).unwrap()));
    a.push(("grad_alpha".into(), t64(&[e, h], 5)));
    let ra = opcli::run("gat", &a, &json!(null), CpuBackend).unwrap();

    // The same graph as a CSR: edges grouped by destination, stable.
    let csr = CsrGraph::from_edges(n, &edges).unwrap();
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by_key(|&k| edges[k].1);
    let permute = |t: &Tensor| {
        let v = t.to_f64_vec();
        let rows: Vec<f64> = order
            .iter()
            .flat_map(|&k| v[k * h..(k + 1) * h].to_vec())
            .collect();
        Tensor::new([e, h], rows).unwrap()
    };
    let mut b = common;
    b.push(("edge_bias".into(), permute(&be)));
    b.push(("row_ptr".into(), csr.row_ptr.clone()));
    b.push(("src".into(), csr.src.clone()));
    b.push(("grad_alpha".into(), permute(&t64(&[e, h], 5))));
    let rb = opcli::run("gat", &b, &json!({"negative_slope": 0.2}), CpuBackend).unwrap();

    for k in ["out", "lse", "grad_z", "grad_a_src", "grad_a_dst"] {
        close(get(&ra, k), get(&rb, k), 1e-12);
    }
    for k in ["alpha", "grad_edge_bias"] {
        close(&permute(get(&ra, k)), get(&rb, k), 1e-12);
    }
    // Node 4 has no in-edge: zero output.
    let out = get(&ra, "out").to_f64_vec();
    assert!(out[4 * h * f..].iter().all(|&v| v == 0.0));
}

#[test]
fn dtypes_follow_the_inputs() {
    let a = t64(&[6, 4], 7).to_dtype(DType::F32).unwrap();
    let p = t64(&[6, 4], 8).to_dtype(DType::F32).unwrap();
    let r = opcli::run(
        "infonce_1d",
        &[
            ("a".into(), a),
            ("p".into(), p),
            ("logit_scale".into(), Tensor::scalar(1.5f32)),
        ],
        &json!({"chunk": 4}),
        CpuBackend,
    )
    .unwrap();
    let names: Vec<&str> = r.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        ["loss", "lse_row", "grad_a", "grad_p", "grad_logit_scale"]
    );
    assert!(r.iter().all(|(_, t)| t.dtype() == DType::F32));

    let seg = Tensor::new([5], vec![0i32, 2, -1, 2, 0]).unwrap();
    let r = opcli::run(
        "segment_mean",
        &[("x".into(), t64(&[5, 3], 9)), ("seg".into(), seg)],
        &json!({}),
        CpuBackend,
    )
    .unwrap();
    assert_eq!(get(&r, "mean").dims(), [3, 3]); // segments = max(seg) + 1
    assert_eq!(get(&r, "count").to_f64_vec(), [2.0, 0.0, 2.0]);
    // d sum(mean) / dx = 1/count for kept rows, 0 for the void row.
    assert_eq!(get(&r, "grad_x").to_f64_vec()[6..9], [0.0, 0.0, 0.0]);
    assert_eq!(get(&r, "grad_x").to_f64_vec()[0], 0.5);
}

/// `gshn op` on bf16 / f16 inputs: the main outputs and gradients in the inputs' dtype, the
/// statistics f32, every value the f32 op's on the same (rounded) inputs, rounded once.
#[test]
fn half_precision_inputs_keep_their_dtype_and_f32_statistics() {
    for h in [DType::BF16, DType::F16] {
        let half = |t: Tensor| t.to_dtype(h).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let a = half(t64(&[6, 4], 7));
        let p = half(t64(&[6, 4], 8));
        let ls = half(Tensor::scalar(1.5f32));
        let x = half(t64(&[3, 11], 9));
        // (op, inputs, its statistics)
        type Case<'a> = (&'a str, Vec<(String, Tensor)>, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            (
                "infonce",
                vec![("a".into(), a), ("p".into(), p), ("logit_scale".into(), ls)],
                &["loss", "lse_row", "lse_col"],
            ),
            ("lif", vec![("x".into(), x)], &["h"]),
        ];
        for (op, inputs, stats) in cases {
            let r = opcli::run(op, &inputs, &json!({}), CpuBackend).unwrap();
            let wide_in: Vec<(String, Tensor)> =
                inputs.iter().map(|(n, t)| (n.clone(), wide(t))).collect();
            let r32 = opcli::run(op, &wide_in, &json!({}), CpuBackend).unwrap();
            for ((name, t), (_, t32)) in r.iter().zip(&r32) {
                let want = match stats.contains(&name.as_str()) {
                    true => DType::F32,
                    false => h,
                };
                assert_eq!(t.dtype(), want, "{h:?} {op}: {name}");
                // outputs: one rounding of the f32 op's; gradients pass the rounded outputs
                let tol = if name.starts_with("grad_") { 0.1 } else { 0.0 };
                let r = t32.to_dtype(want).unwrap();
                close(t, &r, tol);
            }
        }
        // an upstream gradient has its output's dtype: f32 for InfoNCE's loss
        let ins = |g: Tensor| -> Vec<(String, Tensor)> {
            vec![
                ("a".into(), half(t64(&[6, 4], 7))),
                ("p".into(), half(t64(&[6, 4], 8))),
                ("logit_scale".into(), half(Tensor::scalar(1.5f32))),
                ("grad_loss".into(), g),
            ]
        };
        opcli::run(
            "infonce",
            &ins(Tensor::scalar(2.0f32)),
            &json!({}),
            CpuBackend,
        )
        .unwrap();
        let e = opcli::run(
            "infonce",
            &ins(half(Tensor::scalar(2.0f32))),
            &json!({}),
            CpuBackend,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("grad_loss must have the dtype of loss, F32"),
            "{e}"
        );
    }
}

#[test]
fn infonce_1d_takes_gathered_negatives_and_a_precision() {
    // a[3] against p[8] with the positives at rows 4..7, in bf16 mode: the same numbers as
    // the graph op with those attributes; bad attribute values are typed errors.
    let (a, p) = (t64(&[3, 5], 10), t64(&[8, 5], 11));
    let ins = vec![
        ("a".to_string(), a.clone()),
        ("p".to_string(), p.clone()),
        ("logit_scale".to_string(), Tensor::scalar(1.2)),
    ];
    let attrs = json!({"offset": 4, "precision": "bf16", "chunk": 2});
    let r = opcli::run("infonce_1d", &ins, &attrs, CpuBackend).unwrap();
    assert_eq!(get(&r, "grad_p").dims(), [8, 5]);
    let at = InfoNceAttrs {
        chunk: 2,
        offset: 4,
        precision: Precision::Bf16,
        ..InfoNceAttrs::ONE_DIRECTIONAL
    };
    let mut g = Graph::new();
    let (av, pv, lv) = (
        g.input("a", [3, 5], DType::F64),
        g.input("p", [8, 5], DType::F64),
        g.input("ls", [], DType::F64),
    );
    let o = g.infonce(av, pv, lv, at).unwrap();
    let gr = g.backward(o.loss, &[av, pv]).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[o.loss, gr[1]]).unwrap();
    ex.set(av, &a).unwrap();
    ex.set(pv, &p).unwrap();
    ex.set(lv, &Tensor::scalar(1.2)).unwrap();
    ex.run().unwrap();
    close(get(&r, "loss"), &ex.get(o.loss).unwrap(), 0.0);
    close(get(&r, "grad_p"), &ex.get(gr[1]).unwrap(), 0.0);
    for (attrs, want) in [
        (json!({"precision": "fp8"}), "precision"),
        (json!({"offset": 6}), "outside"),
    ] {
        let e = opcli::run("infonce_1d", &ins, &attrs, CpuBackend)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{attrs}: {e}");
    }
}

fn err_seg(seg: Tensor) -> String {
    let x = ("x".to_string(), t64(&[4, 2], 3));
    opcli::run(
        "segment_mean",
        &[x, ("seg".into(), seg)],
        &json!({}),
        CpuBackend,
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn bad_calls_are_typed_errors() {
    let x = || ("x".to_string(), t64(&[3, 4], 1));
    let err = |name: &str, ins: Vec<(String, Tensor)>, attrs: serde_json::Value| {
        opcli::run(name, &ins, &attrs, CpuBackend)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (err("nope", vec![x()], json!({})), "unknown op"),
        (
            err("lif", vec![x()], json!({"tua": 2.0})),
            "unknown attr \"tua\"",
        ),
        (
            err("lif", vec![x()], json!({"tau": "2"})),
            "attr tau must be a number",
        ),
        (
            err("lif", vec![x()], json!({"tau": 0.5})),
            "tau must be finite and > 1",
        ),
        (
            err("lif", vec![x()], json!({"surrogate": "relu"})),
            "surrogate \"relu\"",
        ),
        (
            err("lif", vec![x()], json!([1])),
            "attrs must be a JSON object",
        ),
        (err("lif", vec![], json!({})), "missing input tensor \"x\""),
        (
            err("lif", vec![x(), ("y".into(), t64(&[1], 1))], json!({})),
            "unknown input tensor \"y\"",
        ),
        (
            err(
                "lif",
                vec![x(), ("grad_h".into(), t64(&[3, 4], 1))],
                json!({}),
            ),
            "not differentiable",
        ),
        (
            err(
                "lif",
                vec![x(), ("grad_v".into(), t64(&[4, 3], 1))],
                json!({}),
            ),
            "grad_v must have the shape",
        ),
        (
            err(
                "lif",
                vec![("x".into(), Tensor::new([2], vec![1i32, 2]).unwrap())],
                json!({}),
            ),
            "x must be f32 or f64",
        ),
        (
            err(
                "lif",
                vec![x(), ("tau".into(), Tensor::scalar(2.0f32))],
                json!({}),
            ),
            "share one dtype",
        ),
        (
            err(
                "gat",
                vec![
                    ("z".into(), t64(&[2, 1, 2], 1)),
                    ("a_src".into(), t64(&[1, 2], 1)),
                    ("a_dst".into(), t64(&[1, 2], 1)),
                ],
                json!({}),
            ),
            "needs the graph",
        ),
        (
            err(
                "gat",
                vec![
                    ("z".into(), t64(&[2, 1, 2], 1)),
                    ("a_src".into(), t64(&[1, 2], 1)),
                    ("a_dst".into(), t64(&[1, 2], 1)),
                    (
                        "edge_index".into(),
                        Tensor::new([2, 1], vec![0i32, 5]).unwrap(),
                    ),
                ],
                json!({}),
            ),
            "outside 0..2",
        ),
    ];
    for (msg, want) in cases {
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    }
    // The largest i32 id is named, not a wrapped S that blames seg[0].
    let seg = Tensor::new([4], vec![0i32, 1, i32::MAX, -1]).unwrap();
    let e = err_seg(seg);
    assert!(e.contains("seg[2]"), "{e}");
    // A 16-byte seg must not size a gigabyte output: ids past the row count, or a huge attribute.
    let e = err_seg(Tensor::new([4], vec![0i32, 1, 1 << 27, -1]).unwrap());
    assert!(e.contains("134217729 segments for 4 rows"), "{e}");
    let x = ("x".to_string(), t64(&[4, 2], 3));
    let seg = (
        "seg".to_string(),
        Tensor::new([4], vec![0i32, 1, 2, -1]).unwrap(),
    );
    let e = opcli::run(
        "segment_mean",
        &[x, seg],
        &json!({"segments": 1_000_000_000_000u64}),
        CpuBackend,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("up to 2^20 output values"), "{e}");
    let list = gshn::fused::list();
    assert!(list.contains("\naggregate: ") && list.contains("also accepted as: gat_aggregate"));
}

#[test]
fn non_finite_inputs_are_refused_unless_allowed() {
    let mut v = vec![0.5f64; 12];
    v[7] = f64::NAN;
    let x = ("x".to_string(), Tensor::new([3, 4], v).unwrap());
    let e = opcli::run("lif", std::slice::from_ref(&x), &json!({}), CpuBackend)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x[7] is not finite") && e.contains("--allow-non-finite"),
        "{e}"
    );
    let r =
        opcli::run_checked("lif", &[x], &json!({}), CpuBackend, opcli::Finite::Allowed).unwrap();
    assert!(get(&r, "h").to_f64_vec()[7].is_nan());
}

#[test]
fn old_op_names_and_surrogate_spellings_still_work() {
    let seg = Tensor::new([3], vec![0i32, 1, 0]).unwrap();
    let ins = [("x".to_string(), t64(&[3, 2], 4)), ("seg".to_string(), seg)];
    let new = opcli::run("segment_mean", &ins, &json!({}), CpuBackend).unwrap();
    let old = opcli::run("segment_pool", &ins, &json!({}), CpuBackend).unwrap();
    assert_eq!(new, old);
    assert_eq!(
        gshn::fused::spec("gat_aggregate").unwrap().name,
        "aggregate"
    );
    let x = ("x".to_string(), t64(&[3, 4], 1));
    let a = opcli::run(
        "lif",
        std::slice::from_ref(&x),
        &json!({"surrogate": "atan"}),
        CpuBackend,
    )
    .unwrap();
    let b = opcli::run("lif", &[x], &json!({"surrogate": "a_tan"}), CpuBackend).unwrap();
    assert_eq!(a, b);
    // Configs: the same names, the old one still read.
    for kind in ["atan", "a_tan"] {
        let cfg: LifConfig =
            toml::from_str(&format!("surrogate = {{ kind = \"{kind}\", alpha = 3.0 }}")).unwrap();
        assert_eq!(cfg.surrogate, gshn::ops::Surrogate::ATan(3.0));
    }
    let written = toml::to_string(&LifConfig::default()).unwrap();
    assert!(written.contains("kind = \"atan\""), "{written}");
}
