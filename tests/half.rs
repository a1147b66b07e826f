//! Half-precision storage (issue 15): bf16 and f16 tensors, their conversions, safetensors,
//! the `cast` op with its gradient, and every op on half storage computing in f32: each
//! one-op output is its f32 output on the same (rounded) inputs, rounded once; the fused
//! ops keep their statistics (normalisers, LayerNorm mean and rstd, counts, the LIF charge)
//! in f32. Mixing dtypes is a typed error; the optimizer takes f32 master weights only.

use gshn::graph::gradcheck::random;
use gshn::tensor::io::{load_safetensors, to_safetensors};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph, Tensor, ValueId};

const HALVES: [DType; 2] = [DType::BF16, DType::F16];

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
}

/// Random values in ±1.5 that `h` represents exactly, as f32.
fn rounded(shape: &[usize], h: DType, rng: &mut SplitMix64) -> Tensor {
    random(shape.to_vec(), -1.5, 1.5, rng)
        .to_dtype(h)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn conversions_round_to_nearest_even_and_widen_exactly() {
    // 1 + 2⁻⁸ is a tie in bf16 (7 fraction bits): to even, 1; 1 + 3·2⁻⁸ rounds up to 1 + 2⁻⁶
    let t = Tensor::new([3], vec![1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5]).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(b.to_f64_vec(), [1.0, 1.0 + 1.0 / 64.0, -2.5]);
    // f16 has 10 fraction bits: 1 + 2⁻¹¹ ties to 1
    let h = Tensor::new([2], vec![1.0f64 + 1.0 / 2048.0, 65504.0])
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    assert_eq!(h.to_f64_vec(), [1.0, 65504.0]);
    // f64 → bf16 in one rounding (through f32 it would round twice): 1 + 2⁻⁸ + 2⁻³⁰ is
    // above the tie, so it rounds up
    let x = 1.0f64 + 1.0 / 256.0 + 1.0 / (1u64 << 30) as f64;
    let once = Tensor::new([1], vec![x])
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_eq!(once.to_f64_vec(), [1.0 + 1.0 / 128.0]);
    // every half value widens exactly and comes back
    let mut rng = SplitMix64::new(3);
    for h in HALVES {
        let v = rounded(&[1000], h, &mut rng);
        let back = v.to_dtype(h).unwrap().to_dtype(DType::F64).unwrap();
        assert_eq!(bits(&back), bits(&v.to_dtype(DType::F64).unwrap()));
        assert_eq!(h.size(), 2);
        assert!(h.is_float() && h.is_half());
    }
    assert!(Tensor::new([1], vec![1.0f32])
        .unwrap()
        .to_dtype(DType::I32)
        .is_err());
}

#[test]
fn safetensors_holds_half_tensors_natively() {
    let t = Tensor::new([2], vec![0.5f32, -3.0]).unwrap();
    let named = vec![
        ("b".to_string(), t.to_dtype(DType::BF16).unwrap()),
        ("h".to_string(), t.to_dtype(DType::F16).unwrap()),
    ];
    let bytes = to_safetensors(&named, None).unwrap();
    let header = String::from_utf8_lossy(&bytes[8..bytes.len().min(200)]).to_string();
    assert!(
        header.contains("\"BF16\"") && header.contains("\"F16\""),
        "{header}"
    );
    assert_eq!(bytes.len() % 2, 0);
    let path = std::env::temp_dir().join(format!("gshn-half-{}.safetensors", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    // readers widen half tensors to f32 (every consumer of a file computes in f32)
    let (back, _) = load_safetensors(&path).unwrap();
    std::fs::remove_file(&path).ok();
    for (_, b) in back {
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(b.to_f64_vec(), [0.5, -3.0]);
    }
}

/// An op applied to inputs of one float dtype: its outputs.
type Build = fn(&mut Graph, &[ValueId]) -> Vec<ValueId>;

/// [`Build`] that also declares inputs nobody differentiates (index tensors, masks): its
/// outputs and those inputs with their values (float ones converted to the input's dtype).
type Fed<'a> = &'a dyn Fn(&mut Graph, &[ValueId]) -> (Vec<ValueId>, Vec<(ValueId, Tensor)>);

/// What [`run`] returns for one dtype: outputs and gradients read back as f32, and the
/// outputs' dtypes.
type Ran = (Vec<Tensor>, Vec<Tensor>, Vec<DType>);

/// Runs `build` on inputs of `shapes` in f32 and in `h` (the same values, exactly
/// representable in `h`), with a loss `Σ cast(out, f32) ⊙ seed` so that gradients flow in `h`.
/// Only the first `in_loss` outputs enter the loss (the rest are statistics, not
/// differentiable). Returns outputs and gradients of both: the half ones read back as f32.
fn run(build: Fed, in_loss: usize, shapes: &[&[usize]], h: DType, seed: u64) -> [Ran; 2] {
    let mut rng = SplitMix64::new(seed);
    let values: Vec<Tensor> = shapes.iter().map(|s| rounded(s, h, &mut rng)).collect();
    [DType::F32, h].map(|dt| {
        let mut g = Graph::new();
        let xs: Vec<ValueId> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| g.param(format!("x{i}"), s.to_vec(), dt))
            .collect();
        let (outs, fixed) = build(&mut g, &xs);
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        let mut loss = None;
        let mut feeds = Vec::new();
        for (v, t) in fixed {
            let want = g.dtype(v).unwrap();
            feeds.push((v, t.to_dtype(want).unwrap()));
        }
        let out_types: Vec<DType> = outs.iter().map(|&o| g.dtype(o).unwrap()).collect();
        for &o in outs.iter().take(in_loss) {
            let shape = g.shape(o).unwrap().dims().to_vec();
            let s = g.input(format!("seed{}", o.0), shape.clone(), DType::F32);
            feeds.push((s, rounded(&shape, h, &mut rng)));
            let wide = g.cast(o, DType::F32).unwrap();
            let m = g.mul(wide, s).unwrap();
            let t = g.sum(m).unwrap();
            loss = Some(match loss {
                None => t,
                Some(l) => g.add(l, t).unwrap(),
            });
        }
        let grads = g.backward(loss.unwrap(), &xs).unwrap();
        let fetch: Vec<ValueId> = outs.iter().chain(&grads).copied().collect();
        let mut ex = Executor::new(CpuBackend, g, &fetch).unwrap();
        for (&x, v) in xs.iter().zip(&values) {
            ex.set(x, &v.to_dtype(dt).unwrap()).unwrap();
        }
        for (s, v) in &feeds {
            ex.set(*s, v).unwrap();
        }
        ex.run().unwrap();
        let read = |v: &ValueId| ex.get(*v).unwrap().to_dtype(DType::F32).unwrap();
        for gr in &grads {
            assert_eq!(
                ex.get(*gr).unwrap().dtype(),
                dt,
                "a gradient left its input's dtype"
            );
        }
        (
            outs.iter().map(read).collect(),
            grads.iter().map(read).collect(),
            out_types,
        )
    })
}

/// `a` within `tol` of `b`, relative to `b`'s largest magnitude.
fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(err <= tol * scale, "{what}: {err:e} of {scale:e}");
}

/// The relative spacing of `h` at 1 (2⁻⁷ for bf16, 2⁻¹⁰ for f16).
fn ulp(h: DType) -> f64 {
    if h == DType::BF16 {
        1.0 / 128.0
    } else {
        1.0 / 1024.0
    }
}

#[test]
fn half_ops_are_their_f32_results_rounded_once() {
    let cases: Vec<(&str, Build, Vec<&[usize]>)> = vec![
        ("gelu", |g, x| vec![g.gelu(x[0]).unwrap()], vec![&[37, 5]]),
        ("elu", |g, x| vec![g.elu(x[0]).unwrap()], vec![&[37]]),
        (
            "add",
            |g, x| vec![g.add(x[0], x[1]).unwrap()],
            vec![&[6, 7], &[6, 7]],
        ),
        (
            "mul",
            |g, x| vec![g.mul(x[0], x[1]).unwrap()],
            vec![&[13], &[13]],
        ),
        (
            "add_bias",
            |g, x| vec![g.add_bias(x[0], x[1]).unwrap()],
            vec![&[9, 4], &[4]],
        ),
        (
            "scale",
            |g, x| vec![g.scale(x[0], 0.3).unwrap()],
            vec![&[11]],
        ),
        (
            "matmul",
            |g, x| vec![g.matmul(x[0], x[1]).unwrap()],
            vec![&[5, 33], &[33, 3]],
        ),
        (
            "matmul_t batched",
            |g, x| vec![g.matmul_t(x[0], x[1], false, true).unwrap()],
            vec![&[3, 4, 9], &[3, 5, 9]],
        ),
        ("sum", |g, x| vec![g.sum(x[0]).unwrap()], vec![&[5, 70]]),
        (
            "mean_last",
            |g, x| vec![g.mean_last(x[0]).unwrap()],
            vec![&[5, 70]],
        ),
        (
            "sum_rows",
            |g, x| vec![g.sum_rows(x[0]).unwrap()],
            vec![&[70, 3]],
        ),
        (
            "reshape permute slice concat",
            |g, x| {
                let r = g.reshape(x[0], [3, 2, 4]).unwrap();
                let p = g.permute(r, &[2, 0, 1]).unwrap();
                let s = g.slice(p, 0, 1, 2).unwrap();
                let c = g.concat(&[s, s], 1).unwrap();
                vec![c]
            },
            vec![&[6, 4]],
        ),
        (
            "cast to f64",
            |g, x| vec![g.cast(x[0], DType::F64).unwrap()],
            vec![&[8]],
        ),
    ];
    for h in HALVES {
        let ulp = ulp(h);
        for (name, build, shapes) in &cases {
            let fed = |g: &mut Graph, x: &[ValueId]| (build(g, x), Vec::new());
            let [(o32, g32, _), (oh, gh, _)] = run(&fed, usize::MAX, shapes, h, name.len() as u64);
            let out_type = |i: usize| {
                if *name == "cast to f64" && i == 0 {
                    DType::F64
                } else {
                    h
                }
            };
            for (i, (a, b)) in oh.iter().zip(&o32).enumerate() {
                // one node: exactly the f32 result, rounded once to the half type
                let want = b
                    .to_dtype(out_type(i))
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                assert_eq!(bits(a), bits(&want), "{h:?} {name}: output {i}");
            }
            for (i, (a, b)) in gh.iter().zip(&g32).enumerate() {
                // gradients may pass several half-precision nodes: a few roundings
                assert_close(a, b, 4.0 * ulp, &format!("{h:?} {name}: gradient {i}"));
            }
        }
    }
}

#[test]
fn half_storage_errors_are_typed() {
    let mut g = Graph::new();
    let a = g.input("a", [4, 3], DType::BF16);
    let b = g.input("b", [4, 3], DType::F32);
    let f = g.input("f", [4, 3], DType::F16);
    // mixing dtypes in one op
    let e = g.add(a, b).unwrap_err().to_string();
    assert!(e.contains("BF16") && e.contains("F32"), "{e}");
    assert!(g.add(a, f).is_err());
    // a fused op's statistics are f32 on half storage, its activations the half type
    let gamma = g.input("gamma", [3], DType::BF16);
    let ln = g.layer_norm_values(a, gamma, gamma, 1e-5).unwrap();
    assert_eq!(g.dtype(ln.y).unwrap(), DType::BF16);
    assert_eq!(g.dtype(ln.mean).unwrap(), DType::F32);
    let e = g.layer_norm(a, gamma, b, 1e-5).unwrap_err().to_string();
    assert!(
        e.contains("input 2 is F32") && e.contains("an activation"),
        "{e}"
    );
    let gy = g.input("gy", [4, 3], DType::BF16);
    let half_mean = g.input("half_mean", [4], DType::BF16);
    let e = g
        .push(
            gshn::ops::Op::LayerNormBackward {
                eps: 1e-5,
                row_stride: 1,
            },
            &[gy, a, gamma, half_mean, ln.rstd],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("a statistic and must be F32"), "{e}");
    // the optimizer keeps f32 master weights
    let e = g.clip_scale(&[a], 1.0).unwrap_err().to_string();
    assert!(e.contains("master weights"), "{e}");
    // a cast to indices is no cast
    assert!(g.cast(a, DType::I32).is_err());
    // an executor refuses a tensor of another dtype for a half input
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::BF16);
    let y = g.gelu(x).unwrap();
    let mut ex = Executor::new(CpuBackend, g, &[y]).unwrap();
    let e = ex
        .set(x, &Tensor::new([2], vec![1.0f32, 2.0]).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("BF16"), "{e}");
}

/// The cast's gradient is the upstream gradient converted back: a finite-difference check
/// in f64 through an f32 cast (steps far above f32's rounding of the input).
#[test]
fn cast_gradient_by_finite_differences() {
    let mut g = Graph::new();
    let x = g.param("x", [5], DType::F64);
    let w = g.input("w", [5], DType::F32);
    let c = g.cast(x, DType::F32).unwrap();
    let m = g.mul(c, w).unwrap();
    let s = g.sum(m).unwrap();
    let loss = g.cast(s, DType::F64).unwrap();
    let gx = g.backward(loss, &[x]).unwrap()[0];
    let mut ex = Executor::new(CpuBackend, g, &[loss, gx]).unwrap();
    let wv = vec![0.5f32, -1.25, 2.0, 0.75, -0.5];
    ex.set(w, &Tensor::new([5], wv.clone()).unwrap()).unwrap();
    let x0 = vec![0.3f64, -1.1, 0.7, 2.2, -0.4];
    let mut f = |xv: &[f64]| {
        ex.set(x, &Tensor::new([5], xv.to_vec()).unwrap()).unwrap();
        ex.run().unwrap();
        (
            ex.get(loss).unwrap().to_f64_vec()[0],
            ex.get(gx).unwrap().to_f64_vec(),
        )
    };
    let (_, grad) = f(&x0);
    for i in 0..5 {
        assert_eq!(grad[i], f64::from(wv[i]), "analytic");
        let (mut up, mut down) = (x0.clone(), x0.clone());
        up[i] += 1e-2;
        down[i] -= 1e-2;
        let fd = (f(&up).0 - f(&down).0) / 2e-2;
        assert!(
            (fd - grad[i]).abs() < 1e-4,
            "x{i}: finite differences {fd} vs {}",
            grad[i]
        );
    }
}

/// Gradients and outputs of fused ops on half storage against their f32 path on the same
/// (rounded) inputs. Statistics stay f32; the LIF charge H is f32, so the backward sees
/// exactly the forward's spikes and the spike outputs equal the f32 ones bit for bit.
#[test]
fn fused_ops_on_half_storage_match_their_f32_path() {
    use gshn::ops::{CsrGraph, GatAttrs, GraphInputs, InfoNceAttrs, LifConfig};
    // 9 nodes; node 0 and node 5 have no incoming edge; a self-loop at 3
    let edges = [
        (1, 2),
        (2, 1),
        (3, 3),
        (4, 1),
        (0, 4),
        (6, 7),
        (8, 7),
        (7, 8),
        (2, 6),
        (1, 6),
    ];
    let csr = CsrGraph::from_edges(9, &edges).unwrap();
    let graph_feeds = |g: &mut Graph| {
        let gi = GraphInputs::new(g, "", 9, edges.len());
        let t = [&csr.row_ptr, &csr.src, &csr.col_ptr, &csr.col_edge];
        let feeds = gi.ids().into_iter().zip(t.map(Tensor::clone)).collect();
        (gi, feeds)
    };
    // (name, forward is one op whose outputs are its f32 outputs rounded once, how many
    // leading outputs the loss sums (the rest are statistics), inputs, build)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        bool,
        usize,
        Vec<&[usize]>,
        Box<dyn Fn(&mut Graph, &[ValueId]) -> (Vec<ValueId>, Vec<(ValueId, Tensor)>)>,
    )> = vec![
        (
            "layer_norm",
            true,
            1,
            vec![&[7, 37], &[37], &[37]],
            Box::new(|g, x| {
                let o = g.layer_norm_values(x[0], x[1], x[2], 1e-5).unwrap();
                (vec![o.y, o.mean, o.rstd], vec![])
            }),
        ),
        (
            "l2_normalize",
            true,
            1,
            vec![&[9, 13]],
            Box::new(|g, x| {
                let (y, n) = g.l2_normalize_with_norm(x[0], 1e-12).unwrap();
                (vec![y, n], vec![])
            }),
        ),
        (
            "masked_softmax",
            true,
            1,
            vec![&[2, 5, 7]],
            Box::new(|g, x| {
                let dt = g.dtype(x[0]).unwrap();
                let keep = g.input("keep", [2, 7], dt);
                let k: Vec<f32> = (0..14).map(|i| (i % 3 != 1) as u8 as f32).collect();
                (
                    vec![g.masked_softmax(x[0], keep).unwrap()],
                    vec![(keep, Tensor::new([2, 7], k).unwrap())],
                )
            }),
        ),
        (
            "lif",
            true,
            2,
            vec![&[4, 37]],
            Box::new(|g, x| {
                let o = g.lif(x[0], LifConfig::default()).unwrap();
                (vec![o.spikes, o.membrane, o.charge], vec![])
            }),
        ),
        (
            // wider than one CPU task (4096 neurons), which converts in its own loops
            "lif, several tasks",
            true,
            2,
            vec![&[3, 9001]],
            Box::new(|g, x| {
                let o = g.lif(x[0], LifConfig::default()).unwrap();
                (vec![o.spikes, o.membrane, o.charge], vec![])
            }),
        ),
        (
            // tau = 2.5 + x / 4 is computed (rounded) in the half type: not one op
            "lif learnable tau, soft reset",
            false,
            2,
            vec![&[5, 21], &[]],
            Box::new(|g, x| {
                let cfg = LifConfig {
                    v_reset: None,
                    ..LifConfig::default()
                };
                let tau = g.scale(x[1], 0.25).unwrap();
                let two = g.fill(2.5, [], g.dtype(x[1]).unwrap()).unwrap();
                let tau = g.add(tau, two).unwrap();
                let o = g.plif(x[0], tau, cfg).unwrap();
                (vec![o.spikes, o.membrane], vec![])
            }),
        ),
        (
            "segment_mean",
            true,
            1,
            vec![&[11, 6]],
            Box::new(|g, x| {
                let seg = g.input("seg", [11], DType::I32);
                let ids = vec![0, 2, 2, -1, 0, 3, 3, 3, -1, 0, 2];
                let o = g.segment_mean(x[0], seg, 5).unwrap();
                (
                    vec![o.mean, o.count],
                    vec![(seg, Tensor::new([11], ids).unwrap())],
                )
            }),
        ),
        (
            "gat, alpha, aggregate",
            false,
            3,
            vec![&[9, 2, 3], &[2, 3], &[2, 3], &[10, 2], &[3, 9, 4]],
            Box::new(move |g, x| {
                let (gi, feeds) = graph_feeds(g);
                let at = GatAttrs::default();
                let o = g.gat(x[0], x[1], x[2], Some(x[3]), &gi, at).unwrap();
                let alpha = g
                    .gat_alpha(x[0], x[1], x[2], Some(x[3]), o.lse, &gi, at)
                    .unwrap();
                let y = g.aggregate(alpha, x[4], &gi).unwrap();
                (vec![o.out, alpha, y, o.lse], feeds)
            }),
        ),
        (
            "infonce",
            true,
            3,
            vec![&[6, 5], &[6, 5], &[]],
            Box::new(|g, x| {
                let o = g
                    .infonce(
                        x[0],
                        x[1],
                        x[2],
                        InfoNceAttrs {
                            chunk: 4,
                            ..InfoNceAttrs::SYMMETRIC
                        },
                    )
                    .unwrap();
                (vec![o.loss, o.lse_row, o.lse_col], vec![])
            }),
        ),
        (
            "infonce one-directional",
            true,
            2,
            vec![&[7, 3], &[7, 3], &[]],
            Box::new(|g, x| {
                let o = g
                    .infonce(x[0], x[1], x[2], InfoNceAttrs::ONE_DIRECTIONAL)
                    .unwrap();
                (vec![o.loss, o.lse_row], vec![])
            }),
        ),
    ];
    for h in HALVES {
        for (name, exact, in_loss, shapes, build) in &cases {
            let [(o32, g32, _), (oh, gh, types)] =
                run(build.as_ref(), *in_loss, shapes, h, name.len() as u64 + 7);
            for (i, ((a, b), t)) in oh.iter().zip(&o32).zip(&types).enumerate() {
                let what = format!("{h:?} {name}: output {i}");
                assert!(*t == h || *t == DType::F32, "{what} is {t:?}");
                if *exact {
                    let want = b.to_dtype(*t).unwrap().to_dtype(DType::F32).unwrap();
                    assert_eq!(bits(a), bits(&want), "{what}");
                } else {
                    // a chain of half-precision nodes: each rounds its inputs' errors on
                    // (measured: at most 2 ulp)
                    assert_close(a, b, 4.0 * ulp(h), &what);
                }
            }
            for (i, (a, b)) in gh.iter().zip(&g32).enumerate() {
                // backward ops read rounded forward outputs, and the softmax derivative's
                // sums cancel (measured: at most 11 ulp of the largest element, GAT's a_dst
                // in bf16; 8 ulp for the PLIF tau, a T·N-term sum)
                assert_close(a, b, 16.0 * ulp(h), &format!("{h:?} {name}: gradient {i}"));
            }
        }
    }
}

/// The C ABI on bf16 / f16 buffers (16-bit words): the same results as its f32 call on the
/// same (rounded) values, rounded once; the statistics buffers (LIF h, InfoNCE loss and
/// log-sum-exps) are f32 and equal the f32 call's.
#[test]
fn the_c_abi_takes_half_buffers_with_f32_statistics() {
    use gshn::capi::*;
    let mut rng = SplitMix64::new(11);
    for (h, code) in [(DType::BF16, GSHN_BF16), (DType::F16, GSHN_F16)] {
        let words = |t: &Tensor| -> Vec<u16> {
            let v = t.to_dtype(h).unwrap();
            match v.storage() {
                gshn::tensor::Storage::BF16(v) => v.iter().map(|x| x.to_bits()).collect(),
                gshn::tensor::Storage::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
                _ => unreachable!(),
            }
        };
        let widen = |w: &[u16]| -> Vec<f32> {
            w.iter()
                .map(|&b| match h {
                    DType::BF16 => half::bf16::from_bits(b).to_f32(),
                    _ => half::f16::from_bits(b).to_f32(),
                })
                .collect()
        };
        let round = |v: &[f32]| -> Vec<f32> {
            let t = Tensor::new([v.len()], v.to_vec()).unwrap();
            widen(&words(&t))
        };
        // LIF over x[5, 23]
        let (t, n) = (5usize, 23usize);
        let x = rounded(&[t, n], h, &mut rng);
        let x32 = x.data::<f32>().unwrap().to_vec();
        let lp = gshn_lif_params_default();
        let (mut s32, mut v32, mut h32) = (vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * n]);
        let (mut s16, mut v16, mut hh) = (vec![0u16; t * n], vec![0u16; t * n], vec![0f32; t * n]);
        let xw = words(&x);
        // SAFETY: every buffer holds T·N elements of its dtype (h: f32 in both calls).
        unsafe {
            let (tt, nn) = (t as i64, n as i64);
            let rc = gshn_lif_forward_cpu(
                &lp,
                GSHN_F32,
                tt,
                nn,
                x32.as_ptr().cast(),
                s32.as_mut_ptr().cast(),
                v32.as_mut_ptr().cast(),
                h32.as_mut_ptr().cast(),
            );
            assert_eq!(rc, GSHN_OK);
            let rc = gshn_lif_forward_cpu(
                &lp,
                code,
                tt,
                nn,
                xw.as_ptr().cast(),
                s16.as_mut_ptr().cast(),
                v16.as_mut_ptr().cast(),
                hh.as_mut_ptr().cast(),
            );
            assert_eq!(rc, GSHN_OK, "{h:?}");
        }
        assert_eq!(widen(&s16), s32, "{h:?} spikes");
        assert_eq!(widen(&v16), round(&v32), "{h:?} membrane");
        assert_eq!(hh, h32, "{h:?} charge (f32)");
        // InfoNCE over a, p [6, 4]: loss and log-sum-exps are f32
        let a = rounded(&[6, 4], h, &mut rng);
        let p = rounded(&[6, 4], h, &mut rng);
        let ls = rounded(&[], h, &mut rng);
        let run = |code: i32, a: *const u8, p: *const u8, ls: *const u8| {
            let (mut loss, mut lr, mut lc) = (0f32, [0f32; 6], [0f32; 6]);
            // SAFETY: a, p hold 6·4 elements, ls one, of the call's dtype; outputs are f32.
            let rc = unsafe {
                gshn_infonce_forward_cpu(
                    code,
                    6,
                    4,
                    1,
                    a.cast(),
                    p.cast(),
                    ls.cast(),
                    (&mut loss as *mut f32).cast(),
                    lr.as_mut_ptr().cast(),
                    lc.as_mut_ptr().cast(),
                )
            };
            assert_eq!(rc, GSHN_OK);
            (loss, lr, lc)
        };
        let (aw, pw, lw) = (words(&a), words(&p), words(&ls));
        let wide = run(
            GSHN_F32,
            a.data::<f32>().unwrap().as_ptr().cast(),
            p.data::<f32>().unwrap().as_ptr().cast(),
            ls.data::<f32>().unwrap().as_ptr().cast(),
        );
        let narrow = run(
            code,
            aw.as_ptr().cast(),
            pw.as_ptr().cast(),
            lw.as_ptr().cast(),
        );
        assert_eq!(narrow, wide, "{h:?} infonce statistics");
        // the CUDA entry points refuse half buffers (or have no device): never a crash
        let mut loss = 0f32;
        // SAFETY: as above.
        let rc = unsafe {
            gshn_infonce_forward_cuda(
                code,
                6,
                4,
                1,
                aw.as_ptr().cast(),
                pw.as_ptr().cast(),
                lw.as_ptr().cast(),
                (&mut loss as *mut f32).cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_ne!(rc, GSHN_OK);
    }
}
