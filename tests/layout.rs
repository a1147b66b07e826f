//! Layout ops: reshape, permute, concat, slice, gather/scatter-add, dropout.
//! Values against plain-loop references, round trips, f64 finite-difference gradients, and the
//! typed errors for bad shapes and bad indices.

use gshn::graph::gradcheck::evaluate as eval;
use gshn::graph::gradcheck::{random, GradCheck};
use gshn::ops::layout::{dropout_keeps, dropout_scale};
use gshn::ops::Op;
use gshn::util::rng::SplitMix64;
use gshn::{DType, Error, Graph, Tensor, ValueId};

/// Builds a graph on fresh inputs, runs it once and returns the fetched outputs.
fn check(
    inputs: Vec<(&str, Tensor)>,
    diff: &[bool],
    build: impl FnOnce(&mut Graph, &[ValueId]) -> gshn::Result<Vec<ValueId>>,
) {
    GradCheck::default().run(&inputs, diff, build).unwrap();
}

fn idx(v: &[i32]) -> Tensor {
    Tensor::new([v.len()], v.to_vec()).unwrap()
}

fn seed(s: i32) -> Tensor {
    Tensor::scalar(s)
}

fn shape_err<T: std::fmt::Debug>(r: gshn::Result<T>) -> String {
    match r {
        Err(e @ Error::Shape { .. }) | Err(e @ Error::Invalid { .. }) => e.to_string(),
        other => panic!("expected a shape/invalid error, got {other:?}"),
    }
}

fn row_major_strides(d: &[usize]) -> Vec<usize> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

/// Plain-loop permute: output multi-index o ↦ input multi-index with in[perm[i]] = o[i].
fn permute_ref(x: &[f64], dims: &[usize], perm: &[usize]) -> Vec<f64> {
    let od: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let is = row_major_strides(dims);
    let n: usize = od.iter().product();
    (0..n)
        .map(|mut lin| {
            let mut src = 0;
            for i in (0..od.len()).rev() {
                src += (lin % od[i]) * is[perm[i]];
                lin /= od[i];
            }
            x[src]
        })
        .collect()
}

#[test]
fn permute_matches_reference_all_ranks_and_inverts() {
    let mut rng = SplitMix64::new(21);
    for rank in 0..=6usize {
        for _ in 0..4 {
            let dims: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4)).collect();
            let mut perm: Vec<usize> = (0..rank).collect();
            rng.shuffle(&mut perm);
            let x = random(dims.clone(), -1.0, 1.0, &mut rng);
            let mut inv = vec![0; rank];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            let out = eval(std::slice::from_ref(&x), |g, v| {
                let y = g.push1(Op::Permute(perm.clone()), &[v[0]])?;
                let back = g.push1(Op::Permute(inv.clone()), &[y])?;
                Ok(vec![y, back])
            })
            .unwrap();
            let want = permute_ref(&x.to_f64_vec(), &dims, &perm);
            let od: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
            assert_eq!(out[0].dims(), &od[..]);
            assert_eq!(out[0].to_f64_vec(), want, "dims {dims:?} perm {perm:?}");
            assert_eq!(out[1], x, "permute then inverse is not the identity");
        }
    }
}

#[test]
fn permute_large_parallel_path_and_other_dtypes() {
    // Big enough for the parallel chunked path; i32 and f32 go through the same kernel.
    let dims = [37usize, 64, 29];
    let n: usize = dims.iter().product();
    let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let want = permute_ref(&xs, &dims, &[2, 0, 1]);
    let xi = Tensor::new(dims, (0..n as i32).collect::<Vec<i32>>()).unwrap();
    let xf = Tensor::new(dims, (0..n).map(|i| i as f32).collect::<Vec<f32>>()).unwrap();
    for x in [xi, xf] {
        let out = eval(&[x], |g, v| Ok(vec![g.permute(v[0], &[2, 0, 1])?])).unwrap();
        assert_eq!(out[0].to_f64_vec(), want);
    }
}

#[test]
fn concat_values_and_slice_concat_identity() {
    let a = Tensor::new([2, 1, 2], vec![1.0f64, 2.0, 3.0, 4.0]).unwrap();
    let b = Tensor::new(
        [2, 2, 2],
        vec![5.0f64, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
    )
    .unwrap();
    let out = eval(&[a, b], |g, v| Ok(vec![g.concat(&[v[0], v[1]], 1)?])).unwrap();
    assert_eq!(out[0].dims(), &[2, 3, 2]);
    assert_eq!(
        out[0].to_f64_vec(),
        vec![1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]
    );

    // Slicing a tensor into pieces along each axis and concatenating them back is the identity,
    // for floats and indices, small and big (parallel path).
    let mut rng = SplitMix64::new(4);
    for dims in [[3usize, 5, 4], [2, 130, 70]] {
        let x = random(dims, -1.0, 1.0, &mut rng);
        let xi = Tensor::new(
            dims,
            (0..x.numel() as i32)
                .map(|i| i * 7 - 3)
                .collect::<Vec<i32>>(),
        )
        .unwrap();
        for t in [x, xi] {
            for axis in 0..3 {
                let d = dims[axis];
                let cut1 = d / 3;
                let cut2 = d - d / 4;
                let out = eval(std::slice::from_ref(&t), |g, v| {
                    let p0 = g.slice(v[0], axis, 0, cut1)?;
                    let p1 = g.slice(v[0], axis, cut1, cut2 - cut1)?;
                    let p2 = g.slice(v[0], axis, cut2, d - cut2)?;
                    Ok(vec![g.concat(&[p0, p1, p2], axis)?, p1])
                })
                .unwrap();
                assert_eq!(out[0], t, "slice+concat along {axis} of {dims:?}");
                // The middle piece against a plain loop.
                let mut want = Vec::new();
                let xv = t.to_f64_vec();
                let s = row_major_strides(&dims);
                for i in 0..dims[0] {
                    for j in 0..dims[1] {
                        for k in 0..dims[2] {
                            let c = [i, j, k][axis];
                            if c >= cut1 && c < cut2 {
                                want.push(xv[i * s[0] + j * s[1] + k * s[2]]);
                            }
                        }
                    }
                }
                assert_eq!(out[1].to_f64_vec(), want);
            }
        }
    }
}

#[test]
fn reshape_copies_and_checks_numel() {
    let x = Tensor::new([2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let out = eval(std::slice::from_ref(&x), |g, v| {
        Ok(vec![g.reshape(v[0], [3, 1, 2])?])
    })
    .unwrap();
    assert_eq!(out[0], x.clone().reshape([3, 1, 2]).unwrap());
    let mut g = Graph::new();
    let v = g.input("x", [2, 3], DType::F32);
    let msg = shape_err(g.reshape(v, [4, 2]));
    assert!(msg.contains("reshape"), "{msg}");
}

#[test]
fn gather_repeated_indices_and_scatter_accumulates() {
    let table = Tensor::new([3, 2], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let ix = idx(&[2, 0, 2, 2, 1]);
    let gy = Tensor::new(
        [5, 2],
        vec![1.0f64, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0, 5.0, 50.0],
    )
    .unwrap();
    let out = eval(&[table, ix, gy], |g, v| {
        Ok(vec![g.gather(v[0], v[1])?, g.scatter_add(v[2], v[1], 4)?])
    })
    .unwrap();
    assert_eq!(
        out[0].to_f64_vec(),
        vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0, 5.0, 6.0, 3.0, 4.0]
    );
    // Row 2 gets k = 0, 2, 3; row 3 gets nothing (zeros).
    assert_eq!(
        out[1].to_f64_vec(),
        vec![2.0, 20.0, 5.0, 50.0, 8.0, 80.0, 0.0, 0.0]
    );
}

#[test]
fn scatter_add_is_ordered_and_deterministic() {
    // f32 sums are order-sensitive: the kernel must add each row's contributions in ascending
    // k, exactly like this loop, also on the parallel path.
    let (k, c, rows) = (20_000usize, 3usize, 37usize);
    let mut rng = SplitMix64::new(8);
    let ixs: Vec<i32> = (0..k).map(|_| rng.below(rows) as i32).collect();
    let gv: Vec<f32> = (0..k * c)
        .map(|_| (rng.normal() * 1e3) as f32 * if rng.uniform() < 0.5 { 1e-4 } else { 1.0 })
        .collect();
    let mut want = vec![0.0f32; rows * c];
    for (kk, &r) in ixs.iter().enumerate() {
        for j in 0..c {
            want[r as usize * c + j] += gv[kk * c + j];
        }
    }
    let out = eval(&[Tensor::new([k, c], gv).unwrap(), idx(&ixs)], |g, v| {
        Ok(vec![g.scatter_add(v[0], v[1], rows)?])
    })
    .unwrap();
    assert_eq!(out[0].data::<f32>().unwrap(), &want[..]);
}

#[test]
fn gather_and_scatter_reject_bad_indices_at_run_time() {
    let table = Tensor::new([3, 2], vec![1.0f64; 6]).unwrap();
    for bad in [[0, 3], [-1, 0]] {
        let r = eval(&[table.clone(), idx(&bad)], |g, v| {
            Ok(vec![g.gather(v[0], v[1])?])
        });
        match r {
            Err(Error::Invalid { op, msg }) => {
                assert_eq!(op, "gather");
                assert!(msg.contains("out of range"), "{msg}");
            }
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
        let gy = Tensor::new([2, 2], vec![1.0f64; 4]).unwrap();
        let r = eval(&[gy, idx(&bad)], |g, v| {
            Ok(vec![g.scatter_add(v[0], v[1], 3)?])
        });
        assert!(
            matches!(
                r,
                Err(Error::Invalid {
                    op: "scatter_add",
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

#[test]
fn shape_rules_reject_bad_graphs() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 4], DType::F64);
    let y = g.input("y", [2, 5, 4], DType::F64);
    let z = g.input("z", [2, 5, 4], DType::F32);
    let i = g.input("i", [7], DType::I32);
    let fi = g.input("fi", [7], DType::F64);
    let s = g.input("s", [], DType::I32);
    let s1 = g.input("s1", [1], DType::I32);
    let big = g.input("big", [1, 1, 1, 1, 1, 1, 1], DType::F64);

    assert!(shape_err(g.permute(x, &[0, 0, 1])).contains("permutation"));
    assert!(shape_err(g.permute(x, &[0, 1])).contains("axes"));
    assert!(shape_err(g.permute(x, &[0, 1, 3])).contains("permutation"));
    assert!(shape_err(g.permute(big, &[6, 5, 4, 3, 2, 1, 0])).contains("rank"));
    assert!(shape_err(g.concat(&[], 0)).contains("at least one"));
    assert!(shape_err(g.concat(&[x, y], 2)).contains("must match"));
    assert!(shape_err(g.concat(&[x, y], 3)).contains("axis 3"));
    assert!(shape_err(g.concat(&[y, z], 0)).contains("dtypes"));
    let c = g.concat(&[x, y], 1).unwrap();
    assert_eq!(g.shape(c).unwrap().dims(), &[2, 8, 4]);
    assert!(shape_err(g.slice(x, 1, 2, 2)).contains("out of bounds"));
    assert!(shape_err(g.slice(x, 1, usize::MAX, 2)).contains("out of bounds"));
    assert!(shape_err(g.slice(x, 3, 0, 1)).contains("axis 3"));
    let e = g.slice(x, 2, 4, 0).unwrap();
    assert_eq!(g.shape(e).unwrap().dims(), &[2, 3, 0]);
    assert!(shape_err(g.gather(x, i)).contains("rank 2"));
    let t = g.input("t", [5, 3], DType::F64);
    assert!(shape_err(g.gather(t, fi)).contains("i32"));
    assert!(shape_err(g.scatter_add(t, i, 4)).contains("idx"));
    assert!(shape_err(g.dropout(x, s, 1.0)).contains("[0, 1)"));
    assert!(shape_err(g.dropout(x, s, -0.1)).contains("[0, 1)"));
    assert!(shape_err(g.dropout(x, s, f64::NAN)).contains("[0, 1)"));
    assert!(shape_err(g.dropout(x, s1, 0.5)).contains("seed"));
    assert!(shape_err(g.dropout(i, s, 0.5)).contains("must be a float type"));
    assert!(shape_err(g.push1(
        Op::SliceBackward {
            axis: 1,
            start: 2,
            full: [2, 3, 4].into()
        },
        &[x]
    ))
    .contains("does not fit"));
}

#[test]
fn gradients_reshape_permute_concat_slice() {
    for seed in 0..3u64 {
        let mut rng = SplitMix64::new(100 + seed);
        let (a, b, c) = (2 + rng.below(3), 1 + rng.below(4), 2 + rng.below(3));
        let x = random([a, b, c], -1.0, 1.0, &mut rng);
        check(vec![("x", x.clone())], &[true], |g, v| {
            Ok(vec![g.reshape(v[0], [b, a * c])?])
        });
        for perm in [[2usize, 0, 1], [1, 2, 0], [0, 2, 1]] {
            check(vec![("x", x.clone())], &[true], |g, v| {
                Ok(vec![g.permute(v[0], &perm)?])
            });
        }
        let x4 = random([2, 3, 1, 2], -1.0, 1.0, &mut rng);
        check(vec![("x", x4)], &[true], |g, v| {
            Ok(vec![g.permute(v[0], &[3, 1, 0, 2])?])
        });
        for axis in 0..3 {
            let mut d2 = [a, b, c];
            d2[axis] = 1 + rng.below(3);
            let y = random(d2, -1.0, 1.0, &mut rng);
            check(
                vec![("x", x.clone()), ("y", y), ("x2", x.clone())],
                &[true, true, true],
                |g, v| Ok(vec![g.concat(&[v[0], v[1], v[2]], axis)?]),
            );
            let d = [a, b, c][axis];
            let start = rng.below(d);
            let len = 1 + rng.below(d - start);
            check(vec![("x", x.clone())], &[true], |g, v| {
                Ok(vec![g.slice(v[0], axis, start, len)?])
            });
        }
    }
}

#[test]
fn gradient_gather_with_repeats() {
    for seed in 0..3u64 {
        let mut rng = SplitMix64::new(200 + seed);
        let (r, c, k) = (2 + rng.below(4), 1 + rng.below(4), 3 + rng.below(6));
        let table = random([r, c], -1.0, 1.0, &mut rng);
        let mut ix: Vec<i32> = (0..k).map(|_| rng.below(r) as i32).collect();
        ix[1] = ix[0]; // at least one repeat
        check(
            vec![("table", table), ("idx", idx(&ix))],
            &[true, false],
            |g, v| Ok(vec![g.gather(v[0], v[1])?]),
        );
    }
}

#[test]
fn dropout_mask_reproducible_rate_and_scale() {
    let n = 100_000usize;
    let p = 0.3;
    let x = Tensor::new(
        [n / 100, 100],
        (0..n).map(|i| 1.0 + (i % 7) as f64).collect::<Vec<_>>(),
    )
    .unwrap();
    let xf = x.to_dtype(DType::F32).unwrap();
    let run = |t: &Tensor, s: i32| {
        eval(&[t.clone(), seed(s)], |g, v| {
            Ok(vec![g.dropout(v[0], v[1], p)?])
        })
        .unwrap()
        .remove(0)
    };
    let y1 = run(&x, 17);
    let y2 = run(&x, 17);
    let y3 = run(&x, 18);
    let yf = run(&xf, 17);
    assert_eq!(y1, y2, "same seed, different mask");
    assert_ne!(y1, y3, "different seeds, same mask");
    let (xv, v1, vf) = (x.to_f64_vec(), y1.to_f64_vec(), yf.to_f64_vec());
    let scale = dropout_scale(p);
    let mut dropped = 0;
    for i in 0..n {
        let keep = dropout_keeps(17, i as u64, p);
        if keep {
            assert_eq!(v1[i], xv[i] * scale);
            assert_eq!(vf[i] as f32, xv[i] as f32 * scale as f32);
        } else {
            dropped += 1;
            assert_eq!(v1[i], 0.0);
            assert_eq!(vf[i], 0.0, "f32 and f64 masks differ at {i}");
        }
    }
    let rate = dropped as f64 / n as f64;
    // σ = sqrt(p(1−p)/n) ≈ 0.0014.
    assert!((rate - p).abs() < 0.008, "drop rate {rate} for p = {p}");
    // The mean is preserved in expectation.
    let (mx, my): (f64, f64) = (xv.iter().sum(), v1.iter().sum());
    assert!((my / mx - 1.0).abs() < 0.02, "{my} vs {mx}");

    // Negative seeds are fine; other rates.
    for (s, p) in [(-5, 0.1), (123_456_789, 0.75)] {
        let y = eval(&[x.clone(), seed(s)], |g, v| {
            Ok(vec![g.dropout(v[0], v[1], p)?])
        })
        .unwrap()
        .remove(0);
        let rate = y.to_f64_vec().iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((rate - p).abs() < 0.008, "drop rate {rate} for p = {p}");
    }
}

#[test]
fn dropout_p0_is_identity() {
    let mut rng = SplitMix64::new(3);
    let x = random([50, 7], -1.0, 1.0, &mut rng);
    let out = eval(&[x.clone(), seed(9)], |g, v| {
        Ok(vec![g.dropout(v[0], v[1], 0.0)?])
    })
    .unwrap();
    assert_eq!(out[0], x);
}

#[test]
fn gradient_dropout_fixed_seed() {
    for (s, p) in [(1, 0.5), (42, 0.2), (-7, 0.0)] {
        let mut rng = SplitMix64::new((s + 300) as u64);
        let x = random([6, 5], -1.0, 1.0, &mut rng);
        check(vec![("x", x), ("seed", seed(s))], &[true, false], |g, v| {
            Ok(vec![g.dropout(v[0], v[1], p)?])
        });
    }
    // The backward reuses the forward's mask: g·mask/(1−p) on the same elements.
    let x = Tensor::new([1000], vec![1.0f64; 1000]).unwrap();
    let out = eval(&[x, seed(5)], |g, v| {
        let y = g.dropout(v[0], v[1], 0.4)?;
        let l = g.sum(y)?;
        let gx = g.backward(l, &[v[0]])?[0];
        Ok(vec![y, gx])
    })
    .unwrap();
    assert_eq!(out[0], out[1]);
}
