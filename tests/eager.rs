//! The eager fused-op API (`gshn::fused`): every op form gives, bit for bit, what an executor
//! gives for the same graph (forward and gradients under random upstream gradients), in f32
//! and f64; and misuse is an error, never a panic.

use gshn::backend::View;
use gshn::fused::{self, Array, GatParams, InfoNceSaved, InfoNceUpstream};
use gshn::graph::gradcheck::random;
use gshn::ops::{AdamWConfig, CsrGraph, GatAttrs, GraphInputs, InfoNceAttrs, LifConfig, Op};
use gshn::tensor::Storage;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Error, Executor, Graph, Tensor, ValueId};

const CPU: CpuBackend = CpuBackend;

fn rand(shape: impl Into<gshn::Shape>, dt: DType, rng: &mut SplitMix64) -> Tensor {
    random(shape, -1.5, 1.5, rng).to_dtype(dt).unwrap()
}

/// Runs `g` on the CPU with `feeds` and returns `fetch`.
fn execute(g: Graph, feeds: &[(ValueId, &Tensor)], fetch: &[ValueId]) -> Vec<Tensor> {
    let mut ex = Executor::new(CPU, g, fetch).unwrap();
    for (v, t) in feeds {
        ex.set(*v, t).unwrap();
    }
    ex.run().unwrap();
    fetch.iter().map(|&v| ex.get(v).unwrap()).collect()
}

/// Adds `L = Σ_k sum(out_k ⊙ seed_k)` to `g`: its gradient into `out_k` is exactly `seed_k`.
fn seeded_loss(g: &mut Graph, outs: &[(ValueId, ValueId)]) -> ValueId {
    let mut loss = None;
    for &(o, s) in outs {
        let m = g.mul(o, s).unwrap();
        let t = g.sum(m).unwrap();
        loss = Some(match loss {
            None => t,
            Some(l) => g.add(l, t).unwrap(),
        });
    }
    loss.unwrap()
}

fn same(what: &str, got: Array<CpuBackend>, want: &Tensor) {
    let got = got.into_tensor().unwrap();
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let bits = |t: &Tensor| -> Vec<u64> {
        match t.storage() {
            Storage::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
            Storage::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as u64).collect(),
            s => panic!("no {:?} here", s.dtype()),
        }
    };
    assert_eq!(bits(&got), bits(want), "{what}: not bit-identical");
}

#[test]
fn lif_and_plif_equal_the_executor() {
    let mut rng = SplitMix64::new(1);
    for dt in [DType::F32, DType::F64] {
        for learnable in [false, true] {
            let (t, n) = (7, 301);
            let x = rand([t, n], dt, &mut rng);
            let tau = Tensor::scalar(2.5).to_dtype(dt).unwrap();
            let (gs, gv) = (rand([t, n], dt, &mut rng), rand([t, n], dt, &mut rng));
            let cfg = LifConfig {
                v_reset: None,
                ..LifConfig::default()
            };

            let mut g = Graph::new();
            let xi = g.input("x", [t, n], dt);
            let ti = g.input("tau", [], dt);
            let o = if learnable {
                g.plif(xi, ti, cfg).unwrap()
            } else {
                g.lif(xi, cfg).unwrap()
            };
            let (si, vi) = (g.input("gs", [t, n], dt), g.input("gv", [t, n], dt));
            let loss = seeded_loss(&mut g, &[(o.spikes, si), (o.membrane, vi)]);
            let wrt = if learnable { vec![xi, ti] } else { vec![xi] };
            let grads = g.backward(loss, &wrt).unwrap();
            let mut fetch = vec![o.spikes, o.membrane, o.charge];
            fetch.extend(&grads);
            let mut feeds = vec![(xi, &x), (si, &gs), (vi, &gv)];
            if learnable {
                feeds.push((ti, &tau));
            }
            let want = execute(g, &feeds, &fetch);

            let tau_view = learnable.then(|| tau.view());
            let f = fused::lif_forward(&CPU, x.view(), tau_view, &cfg).unwrap();
            let charge = f.charge.into_tensor().unwrap();
            same("spikes", f.spikes, &want[0]);
            same("membrane", f.membrane, &want[1]);
            same("charge", charge.clone().into(), &want[2]);
            let b = fused::lif_backward(
                &CPU,
                charge.view(),
                Some(gs.view()),
                Some(gv.view()),
                tau_view,
                &cfg,
            )
            .unwrap();
            same("grad x", b.x, &want[3]);
            assert_eq!(b.tau.is_some(), learnable);
            if let Some(gt) = b.tau {
                same("grad tau", gt, &want[4]);
            }
        }
    }
}

fn graph(rng: &mut SplitMix64, n: usize) -> CsrGraph {
    // Node 0 has no in-edge; the others get 0..=3 random in-edges.
    let mut edges = Vec::new();
    for i in 1..n {
        for _ in 0..rng.below(4) {
            edges.push((rng.below(n), i));
        }
    }
    CsrGraph::from_edges(n, &edges).unwrap()
}

#[test]
fn gat_forms_equal_the_executor() {
    let mut rng = SplitMix64::new(2);
    for dt in [DType::F32, DType::F64] {
        for with_bias in [false, true] {
            let (n, h, f) = (37, 3, 5);
            let csr = graph(&mut rng, n);
            let e = csr.edges();
            let z = rand([n, h, f], dt, &mut rng);
            let (a_s, a_d) = (rand([h, f], dt, &mut rng), rand([h, f], dt, &mut rng));
            let be = rand([e, h], dt, &mut rng);
            let (g_out, g_alpha) = (rand([n, h, f], dt, &mut rng), rand([e, h], dt, &mut rng));
            let at = GatAttrs {
                negative_slope: 0.15,
                edge_bias: with_bias,
            };

            let mut g = Graph::new();
            let zi = g.input("z", [n, h, f], dt);
            let si = g.input("a_src", [h, f], dt);
            let di = g.input("a_dst", [h, f], dt);
            let bi = g.input("be", [e, h], dt);
            let bias = with_bias.then_some(bi);
            let gi = GraphInputs::new(&mut g, "", n, e);
            let o = g.gat(zi, si, di, bias, &gi, at).unwrap();
            let alpha = g.gat_alpha(zi, si, di, bias, o.lse, &gi, at).unwrap();
            let (goi, gai) = (g.input("go", [n, h, f], dt), g.input("ga", [e, h], dt));
            let l_out = seeded_loss(&mut g, &[(o.out, goi)]);
            let l_alpha = seeded_loss(&mut g, &[(alpha, gai)]);
            let mut wrt = vec![zi, si, di];
            wrt.extend(bias);
            let grads_out = g.backward(l_out, &wrt).unwrap();
            let grads_alpha = g.backward(l_alpha, &wrt).unwrap();
            let mut fetch = vec![o.out, o.lse, alpha];
            fetch.extend(&grads_out);
            fetch.extend(&grads_alpha);
            let mut ex = Executor::new(CPU, g, &fetch).unwrap();
            for (v, t) in [
                (zi, &z),
                (si, &a_s),
                (di, &a_d),
                (goi, &g_out),
                (gai, &g_alpha),
            ] {
                ex.set(v, t).unwrap();
            }
            if with_bias {
                ex.set(bi, &be).unwrap();
            }
            gi.feed(&mut ex, &csr).unwrap();
            ex.run().unwrap();
            let want: Vec<Tensor> = fetch.iter().map(|&v| ex.get(v).unwrap()).collect();

            let params = GatParams {
                z: z.view(),
                a_src: a_s.view(),
                a_dst: a_d.view(),
                edge_bias: with_bias.then(|| be.view()),
            };
            let gv = csr.view();
            let fw = fused::gat_forward(&CPU, params, gv, 0.15).unwrap();
            let (out, lse) = (fw.out.into_tensor().unwrap(), fw.lse.into_tensor().unwrap());
            let al = fused::gat_alpha(&CPU, params, lse.view(), gv, 0.15).unwrap();
            let al = al.into_tensor().unwrap();
            same("out", out.clone().into(), &want[0]);
            same("lse", lse.clone().into(), &want[1]);
            same("alpha", al.clone().into(), &want[2]);
            let k = wrt.len();
            let check = |what: &str, gr: fused::GatGrads<CpuBackend>, want: &[Tensor]| {
                same(&format!("{what} z"), gr.z, &want[0]);
                same(&format!("{what} a_src"), gr.a_src, &want[1]);
                same(&format!("{what} a_dst"), gr.a_dst, &want[2]);
                assert_eq!(gr.edge_bias.is_some(), with_bias);
                if let Some(b) = gr.edge_bias {
                    same(&format!("{what} edge_bias"), b, &want[3]);
                }
            };
            let b =
                fused::gat_backward(&CPU, params, out.view(), lse.view(), g_out.view(), gv, 0.15)
                    .unwrap();
            check("via out", b, &want[3..3 + k]);
            let b = fused::gat_alpha_backward(&CPU, params, al.view(), g_alpha.view(), gv, 0.15)
                .unwrap();
            check("via alpha", b, &want[3 + k..]);
        }
    }
}

#[test]
fn aggregate_equals_the_executor() {
    let mut rng = SplitMix64::new(3);
    for dt in [DType::F32, DType::F64] {
        let (t, n, h, c) = (3, 29, 2, 6);
        let csr = graph(&mut rng, n);
        let e = csr.edges();
        let (alpha, s) = (rand([e, h], dt, &mut rng), rand([t, n, c], dt, &mut rng));
        let gy = rand([t, n, c], dt, &mut rng);

        let mut g = Graph::new();
        let ai = g.input("alpha", [e, h], dt);
        let si = g.input("s", [t, n, c], dt);
        let gi = GraphInputs::new(&mut g, "", n, e);
        let y = g.aggregate(ai, si, &gi).unwrap();
        let yi = g.input("gy", [t, n, c], dt);
        let loss = seeded_loss(&mut g, &[(y, yi)]);
        let grads = g.backward(loss, &[ai, si]).unwrap();
        let fetch = [y, grads[0], grads[1]];
        let mut ex = Executor::new(CPU, g, &fetch).unwrap();
        for (v, x) in [(ai, &alpha), (si, &s), (yi, &gy)] {
            ex.set(v, x).unwrap();
        }
        gi.feed(&mut ex, &csr).unwrap();
        ex.run().unwrap();

        let fy = fused::aggregate_forward(&CPU, alpha.view(), s.view(), csr.view()).unwrap();
        same("y", fy, &ex.get(y).unwrap());
        let b =
            fused::aggregate_backward(&CPU, alpha.view(), s.view(), gy.view(), csr.view()).unwrap();
        same("grad alpha", b.alpha, &ex.get(grads[0]).unwrap());
        same("grad s", b.s, &ex.get(grads[1]).unwrap());
    }
}

#[test]
fn infonce_equals_the_executor() {
    let mut rng = SplitMix64::new(4);
    for dt in [DType::F32, DType::F64] {
        // (symmetric, chunk, gradients into the lse outputs too)
        for (symmetric, chunk, into_lse) in [
            (true, 0, false),
            (true, 7, false),
            (true, 7, true),
            (false, 0, false),
            (false, 5, false),
        ] {
            let (b, d) = (19, 11);
            let (a, p) = (rand([b, d], dt, &mut rng), rand([b, d], dt, &mut rng));
            let ls = Tensor::scalar(1.3).to_dtype(dt).unwrap();
            let gl = Tensor::scalar(0.7).to_dtype(dt).unwrap();
            let (gr, gc) = (rand([b], dt, &mut rng), rand([b], dt, &mut rng));
            let at = InfoNceAttrs {
                symmetric,
                chunk,
                ..InfoNceAttrs::default()
            };

            let mut g = Graph::new();
            let (ai, pi) = (g.input("a", [b, d], dt), g.input("p", [b, d], dt));
            let li = g.input("ls", [], dt);
            let o = g.infonce(ai, pi, li, at).unwrap();
            let (gi, ri, ci) = (
                g.input("gl", [], dt),
                g.input("gr", [b], dt),
                g.input("gc", [b], dt),
            );
            let mut seeds = vec![(o.loss, gi)];
            if into_lse {
                seeds.extend([(o.lse_row, ri), (o.lse_col, ci)]);
            }
            let loss = seeded_loss(&mut g, &seeds);
            let grads = g.backward(loss, &[ai, pi, li]).unwrap();
            let mut fetch = vec![o.loss, o.lse_row, o.lse_col];
            fetch.extend(&grads);
            let feeds = [
                (ai, &a),
                (pi, &p),
                (li, &ls),
                (gi, &gl),
                (ri, &gr),
                (ci, &gc),
            ];
            let want = execute(g, &feeds, &fetch);

            let f = fused::infonce_forward(&CPU, a.view(), p.view(), ls.view(), at).unwrap();
            let lse_row = f.lse_row.into_tensor().unwrap();
            let lse_col = f.lse_col.into_tensor().unwrap();
            same("loss", f.loss, &want[0]);
            same("lse_row", lse_row.clone().into(), &want[1]);
            same("lse_col", lse_col.clone().into(), &want[2]);
            let saved = InfoNceSaved {
                lse_row: lse_row.view(),
                lse_col: lse_col.view(),
            };
            let upstream = InfoNceUpstream {
                loss: gl.view(),
                lse: into_lse.then(|| (gr.view(), gc.view())),
            };
            let grads =
                fused::infonce_backward(&CPU, a.view(), p.view(), ls.view(), saved, upstream, at)
                    .unwrap();
            same("grad a", grads.a, &want[3]);
            same("grad p", grads.p, &want[4]);
            same("grad logit_scale", grads.logit_scale, &want[5]);
        }
    }
}

#[test]
fn segment_mean_equals_the_executor() {
    let mut rng = SplitMix64::new(5);
    for dt in [DType::F32, DType::F64] {
        let (rows, c, segments) = (83, 4, 9);
        let x = rand([rows, c], dt, &mut rng);
        // Ids in -1..segments, with segment 3 left empty.
        let ids: Vec<i32> = (0..rows)
            .map(|_| rng.below(segments + 1) as i32 - 1)
            .map(|i| if i == 3 { -1 } else { i })
            .collect();
        let seg = Tensor::new([rows], ids).unwrap();
        let gm = rand([segments, c], dt, &mut rng);

        let mut g = Graph::new();
        let xi = g.input("x", [rows, c], dt);
        let si = g.input("seg", [rows], DType::I32);
        let o = g.segment_mean(xi, si, segments).unwrap();
        let mi = g.input("gm", [segments, c], dt);
        let loss = seeded_loss(&mut g, &[(o.mean, mi)]);
        let grads = g.backward(loss, &[xi]).unwrap();
        let want = execute(
            g,
            &[(xi, &x), (si, &seg), (mi, &gm)],
            &[o.mean, o.count, grads[0]],
        );

        let f = fused::segment_mean_forward(&CPU, x.view(), seg.view(), segments).unwrap();
        let count = f.count.into_tensor().unwrap();
        same("mean", f.mean, &want[0]);
        same("count", count.clone().into(), &want[1]);
        let gx = fused::segment_mean_backward(&CPU, gm.view(), seg.view(), count.view()).unwrap();
        same("grad x", gx, &want[2]);
    }
}

#[test]
fn arrays_chain_ops_and_round_trip() {
    // The outputs of one op feed the next without leaving the backend.
    let mut rng = SplitMix64::new(6);
    let x = rand([4, 10], DType::F32, &mut rng);
    let cfg = LifConfig::default();
    let f = fused::lif_forward(&CPU, x.view(), None, &cfg).unwrap();
    let gx = fused::lif_backward(
        &CPU,
        f.charge.view(),
        Some(f.spikes.view()),
        None,
        None,
        &cfg,
    )
    .unwrap();
    assert_eq!(gx.x.shape().dims(), [4, 10]);
    let up = Array::upload(&CPU, &x).unwrap();
    assert_eq!(up.to_tensor(&CPU).unwrap(), x);
    assert_eq!(Array::from(x.clone()).into_tensor().unwrap(), x);
    // A longer buffer holds a shorter tensor; into_tensor returns just the tensor.
    let long = Array::from_buffer(
        &CPU,
        Storage::F32(vec![1.0; 12]),
        gshn::Meta::new([2, 5], DType::F32),
    )
    .unwrap();
    assert_eq!(long.into_tensor().unwrap().numel(), 10);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut rng = SplitMix64::new(7);
    let x = rand([4, 10], DType::F32, &mut rng);
    let cfg = LifConfig::default();
    let err = |r: Result<(), Error>| r.expect_err("must be refused").to_string();

    // A rank-1 x; an f64 tau with f32 x; a tau ≤ 1.
    let flat = Tensor::new([40], x.data::<f32>().unwrap().to_vec()).unwrap();
    err(fused::lif_forward(&CPU, flat.view(), None, &cfg).map(|_| ()));
    let tau64 = Tensor::scalar(2.0f64);
    err(fused::lif_forward(&CPU, x.view(), Some(tau64.view()), &cfg).map(|_| ()));
    let bad = LifConfig { tau: 0.5, ..cfg };
    err(fused::lif_forward(&CPU, x.view(), None, &bad).map(|_| ()));
    // A backward with no upstream gradient.
    err(fused::lif_backward(&CPU, x.view(), None, None, None, &cfg).map(|_| ()));
    // A view larger than its buffer (built by hand).
    let shape = gshn::Shape::new([5, 10]);
    let short = View {
        buf: x.storage(),
        shape: &shape,
        dtype: DType::F32,
    };
    err(fused::lif_forward(&CPU, short, None, &cfg).map(|_| ()));
    // A view whose dims overflow.
    let huge = gshn::Shape::new([usize::MAX / 2, 3]);
    let over = View {
        buf: x.storage(),
        shape: &huge,
        dtype: DType::F32,
    };
    let msg = err(fused::lif_forward(&CPU, over, None, &cfg).map(|_| ()));
    assert!(msg.contains("larger than any memory"), "{msg}");
    // A buffer too short for its meta.
    let m = gshn::Meta::new([3, 3], DType::F32);
    err(Array::from_buffer(&CPU, Storage::F32(vec![0.0; 8]), m).map(|_| ()));

    // A graph whose source ids are out of range, and a graph of other size.
    let z = rand([3, 1, 2], DType::F32, &mut rng);
    let a = rand([1, 2], DType::F32, &mut rng);
    let params = GatParams {
        z: z.view(),
        a_src: a.view(),
        a_dst: a.view(),
        edge_bias: None,
    };
    let mut broken = CsrGraph::from_edges(3, &[(0, 1), (1, 2)]).unwrap();
    broken.src.data_mut::<i32>().unwrap()[1] = 7;
    let msg = err(fused::gat_forward(&CPU, params, broken.view(), 0.2).map(|_| ()));
    assert!(msg.contains('7'), "{msg}");
    let other = CsrGraph::from_edges(5, &[(0, 1)]).unwrap();
    err(fused::gat_forward(&CPU, params, other.view(), 0.2).map(|_| ()));
    err(fused::gat_forward(
        &CPU,
        params,
        CsrGraph::from_edges(3, &[]).unwrap().view(),
        f64::NAN,
    )
    .map(|_| ()));

    // Segment ids out of range.
    let seg = Tensor::new([4], vec![0i32, 1, 5, -1]).unwrap();
    let xs = rand([4, 2], DType::F32, &mut rng);
    let msg = err(fused::segment_mean_forward(&CPU, xs.view(), seg.view(), 2).map(|_| ()));
    assert!(msg.contains("seg[2] = 5"), "{msg}");

    // InfoNCE with an empty batch.
    let e = Tensor::new([0, 3], Vec::<f32>::new()).unwrap();
    let ls = Tensor::scalar(1.0f32);
    let at = InfoNceAttrs::default();
    err(fused::infonce_forward(&CPU, e.view(), e.view(), ls.view(), at).map(|_| ()));

    // An op that updates its inputs in place has no eager form.
    let msg = err(fused::run(&CPU, &Op::AdamW(AdamWConfig::default()), &[]).map(|_| ()));
    assert!(msg.contains("in place"), "{msg}");
}
