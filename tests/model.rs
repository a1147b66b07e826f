//! The model end to end: a two-branch graph learns, the whole GSHN loss has correct
//! gradients, training is deterministic and resumes exactly, and the CLI's eval JSON.

use gshn::data::{prepare, write_synthetic, DataShape, Vocab};
use gshn::graph::gradcheck::GradCheck;
use gshn::graph::initial_values;
use gshn::model::{Capacity, Gshn, Variant};
use gshn::ops::{AdamWConfig, GatAttrs, InfoNceAttrs, LifConfig};
use gshn::tensor::io::load_safetensors;
use gshn::train::batches::{Feeder, LossWeights};
use gshn::train::config::open_split;
use gshn::train::{RunConfig, TrainOptions};
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Graph, Tensor, ValueId};
use std::path::PathBuf;

mod common;
use common::{fresh_run, tiny_config};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-test-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// DESIGN §2's executor test: a small two-branch model (GAT and LIF, fused, InfoNCE loss)
/// trained on a tiny problem — each of 8 random graphs must find its own caption vector.
#[test]
fn two_branch_model_learns_a_tiny_problem() {
    let (graphs, nodes, feat, d, t_steps) = (8usize, 5usize, 6usize, 16usize, 4usize);
    let n = graphs * nodes;
    let mut edges = Vec::new();
    for gi in 0..graphs {
        for a in 0..nodes {
            for b in 0..nodes {
                if a == b || (a + b + gi) % 3 == 0 {
                    edges.push((gi * nodes + a, gi * nodes + b));
                }
            }
        }
    }
    let csr = gshn::ops::CsrGraph::from_edges(n, &edges).unwrap();
    let e = csr.edges();
    let mut g = Graph::new();
    let x = g.input("x", [n, feat], DType::F32);
    let node_graph = g.input("node_graph", [n], DType::I32);
    let gi = gshn::ops::GraphInputs::new(&mut g, "", n, e);
    let w_gat = g.param("w_gat", [feat, d], DType::F32);
    let a_src = g.param("a_src", [2, d / 2], DType::F32);
    let a_dst = g.param("a_dst", [2, d / 2], DType::F32);
    let w_snn = g.param("w_snn", [feat, d], DType::F32);
    let r = g.param("r", [], DType::F32);
    let txt = g.param("txt", [graphs, d], DType::F32);
    let scale = g.param("scale", [], DType::F32);
    // GAT branch
    let z = g.matmul(x, w_gat).unwrap();
    let z = g.reshape(z, [n, 2, d / 2]).unwrap();
    let gat = g
        .gat(z, a_src, a_dst, None, &gi, GatAttrs::default())
        .unwrap();
    let alpha = g
        .gat_alpha(z, a_src, a_dst, None, gat.lse, &gi, GatAttrs::default())
        .unwrap();
    let f_gat = g.reshape(gat.out, [n, d]).unwrap();
    let f_gat = g.elu(f_gat).unwrap();
    // SNN branch over T steps with the GAT's attention
    let cur = g.matmul(x, w_snn).unwrap();
    let cur = g.reshape(cur, [1, n, d]).unwrap();
    let cur = g.concat(&vec![cur; t_steps], 0).unwrap();
    let agg = g.aggregate(alpha, cur, &gi).unwrap();
    let agg = g.reshape(agg, [t_steps, n * d]).unwrap();
    let lif = g
        .lif(
            agg,
            LifConfig {
                v_th: 0.5,
                ..LifConfig::default()
            },
        )
        .unwrap();
    let mean_t = g
        .fill(1.0 / t_steps as f64, [1, t_steps], DType::F32)
        .unwrap();
    let rate = g.matmul(mean_t, lif.spikes).unwrap();
    let e_snn = g.reshape(rate, [n, d]).unwrap();
    // fusion, pooling, InfoNCE
    let scaled = g.mul_broadcast(e_snn, r).unwrap();
    let fused = g.add(scaled, f_gat).unwrap();
    let img = g.segment_mean(fused, node_graph, graphs).unwrap().mean;
    let img = g.l2_normalize(img, 1e-12).unwrap();
    let t = g.l2_normalize(txt, 1e-12).unwrap();
    let loss = g
        .infonce(img, t, scale, InfoNceAttrs::default())
        .unwrap()
        .loss;
    let params = g.params();
    let grads = g.backward(loss, &params).unwrap();
    let opt = g
        .adamw_step(
            &params,
            &grads,
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            Some(5.0),
        )
        .unwrap();
    let r_grad = grads[params.iter().position(|&p| p == r).unwrap()];
    let mut ex = Executor::new(CpuBackend, g, &[loss, r_grad]).unwrap();

    let mut rng = SplitMix64::new(3);
    let mut data = |k: usize, s: f64| {
        Tensor::new(
            [k],
            (0..k)
                .map(|_| (s * rng.normal()) as f32)
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    ex.set(x, &data(n * feat, 1.0).reshape([n, feat]).unwrap())
        .unwrap();
    ex.set(
        node_graph,
        &Tensor::new([n], (0..n).map(|v| (v / nodes) as i32).collect::<Vec<_>>()).unwrap(),
    )
    .unwrap();
    gi.feed(&mut ex, &csr).unwrap();
    for (p, s) in [
        (w_gat, 0.4),
        (a_src, 0.3),
        (a_dst, 0.3),
        (w_snn, 0.6),
        (txt, 1.0),
    ] {
        let shape = ex.graph().shape(p).unwrap().clone();
        ex.set(p, &data(shape.numel(), s).reshape(shape).unwrap())
            .unwrap();
    }
    ex.set(r, &Tensor::scalar(0.5f32)).unwrap();
    ex.set(scale, &Tensor::scalar(2.0f32)).unwrap();
    opt.zero_state(&mut ex).unwrap();
    let mut losses = Vec::new();
    let mut r_grads = Vec::new();
    for step in 1..=300u64 {
        opt.set_hyper(&mut ex, 0.01, step).unwrap();
        ex.run().unwrap();
        losses.push(ex.get(loss).unwrap().to_f64_vec()[0]);
        r_grads.push(ex.get(r_grad).unwrap().to_f64_vec()[0]);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 1.5, "starts near ln 8: {first}");
    assert!(last < 0.15 * first, "loss fell from {first} to only {last}");
    assert!(
        r_grads.iter().any(|g| g.abs() > 1e-6),
        "the spiking branch never received a gradient"
    );
}

/// Builds a tiny synthetic dataset, its prepared splits and the data shape.
fn tiny_data(tag: &str) -> (PathBuf, RunConfig) {
    let dir = temp_dir(tag);
    write_synthetic(&dir, 24, 8, 5).unwrap();
    (dir, tiny_config())
}

/// Finite differences of the whole GSHN loss (f64, smooth spikes). Each term is checked
/// against the parameters it reaches without crossing a stop-gradient (a stop-gradient is not
/// a derivative, so finite differences cannot see it): ITC against a parameter of every
/// part; STL and node CL against the spiking branch and their own heads.
#[test]
fn whole_gshn_loss_has_correct_gradients() {
    let (dir, mut cfg) = tiny_data("grad");
    cfg.model.dim = 8;
    cfg.model.category_dim = 3;
    cfg.model.time_steps = 2;
    cfg.model.text.max_len = 6;
    cfg.model.lif.smooth = true; // spikes = surrogate primitive: finite differences apply
    cfg.train.batch_size = 3;
    cfg.train.node_samples_per_graph = 2; // one pair of segments per image for the relation loss
    cfg.train.lambda_neg = 1.0; // prepare the hard negatives
    let ds = open_split(&dir, &cfg, "train").unwrap();
    let vocab = Vocab::build(ds.all_captions(), 1, None);
    let split = prepare(&ds, &cfg.prepare_options(), &vocab, "train").unwrap();
    let shape = DataShape::of(&[&split], ds.num_categories()).unwrap();
    let data_cap = shape.batch_capacity(3);
    let mut cap = Capacity::of_batch(&data_cap, &shape, vocab.len(), 2);
    cap.negatives = true;
    cap.relations = true;
    let model = Gshn::build_in(&cfg.model, cap, DType::F64).unwrap();
    let feeder = Feeder::new(model.inputs.clone(), data_cap, cap, &cfg.model);
    let snn = [
        "snn.input.weight",
        "snn.0.lin.weight",
        "snn.1.root.weight",
        "snn.1.norm.weight",
        "snn.out.weight",
    ];
    let terms: [(LossWeights, Vec<&str>); 5] = [
        (
            LossWeights {
                itc: 1.0,
                stl: 0.0,
                node: 0.0,
                neg: 0.0,
                rel: 0.0,
            },
            vec![
                "gat.0.att_src",
                "gat.1.lin.weight",
                "gat.0.edge.weight",
                "snn.0.lin.weight",
                "fusion.r",
                "text.0.q.weight",
                "text.position_embedding",
                "image.proj.weight",
                "logit_scale",
                "category_embedding",
            ],
        ),
        (
            LossWeights {
                itc: 0.0,
                stl: 1.0,
                node: 0.0,
                neg: 0.0,
                rel: 0.0,
            },
            [&snn[..], &["stl.proj.weight", "stl.logit_scale"]].concat(),
        ),
        (
            LossWeights {
                itc: 0.0,
                stl: 0.0,
                node: 1.0,
                neg: 0.0,
                rel: 0.0,
            },
            [&snn[..], &["node_cl.logit_scale"]].concat(),
        ),
        (
            LossWeights {
                itc: 0.0,
                stl: 0.0,
                node: 0.0,
                neg: 1.0,
                rel: 0.0,
            },
            vec![
                "gat.1.lin.weight",
                "snn.0.lin.weight",
                "fusion.r",
                "text.0.k.weight",
                "text.position_embedding",
                "image.proj.weight",
            ],
        ),
        (
            LossWeights {
                itc: 0.0,
                stl: 0.0,
                node: 0.0,
                neg: 0.0,
                rel: 1.0,
            },
            vec![
                "relation.z.weight",
                "relation.a.bias",
                "relation.b.weight",
                "relation.out.weight",
                "category_embedding",
                "gat.0.att_src",
                "snn.1.root.weight",
                "fusion.r",
                "text.0.v.weight",
                "text.proj.weight",
                "image.proj.bias",
            ],
        ),
    ];
    for (w, names) in terms {
        let mut ex = Executor::new(CpuBackend, model.graph.clone(), &[model.outputs.loss]).unwrap();
        feeder
            .feed_images(&mut ex, &split.graphs[..3], &mut SplitMix64::new(1))
            .unwrap();
        let caps: Vec<_> = (0..3).map(|i| &split.captions[i][0]).collect();
        feeder.feed_text(&mut ex, &caps).unwrap();
        // rows 0 and 2 carry their caption's hard negative, row 1 none (weight 0)
        let negs: Vec<_> = (0..3)
            .map(|i| split.negative(i, 0).filter(|_| i != 1))
            .collect();
        assert!(negs[0].is_some() && negs[2].is_some());
        feeder.feed_negatives(&mut ex, &negs).unwrap();
        feeder.feed_weights(&mut ex, w).unwrap();
        let mut values: Vec<(ValueId, Tensor)> =
            initial_values(&model.params, DType::F64, 9).unwrap();
        for v in model.graph.inputs() {
            values.push((v, ex.get(v).unwrap()));
        }
        let wrt: Vec<ValueId> = names
            .iter()
            .map(|n| {
                model
                    .graph
                    .find(n)
                    .unwrap_or_else(|| panic!("no parameter {n}"))
            })
            .collect();
        // Every term is active at this point (a hinge at rest would pass with zero gradients).
        for (v, t) in &values {
            ex.set(*v, t).unwrap();
        }
        ex.run().unwrap();
        let loss = ex.get(model.outputs.loss).unwrap().to_f64_vec()[0];
        assert!(loss > 1e-3, "{w:?}: loss {loss}");
        let check = GradCheck {
            max_elements: 6,
            rtol: 1e-4,
            atol: 1e-7,
            ..GradCheck::default()
        };
        let reports = check
            .check_graph(model.graph.clone(), model.outputs.loss, &values, &wrt)
            .unwrap();
        assert_eq!(reports.len(), names.len());
    }
    std::fs::remove_dir_all(dir).ok();
}

fn checkpoint_tensors(run: &std::path::Path) -> Vec<(String, Tensor)> {
    load_safetensors(&run.join("checkpoint.safetensors"))
        .unwrap()
        .0
}

/// `gshn` runs the ops on a worker of rayon's pool (`CpuBackend::pool_on_current_thread`):
/// a run from a pool's worker, with 1 or 3 workers, writes the checkpoint a run from outside
/// any pool writes, bit for bit (no kernel's arithmetic depends on its thread).
#[test]
fn training_gives_the_same_bits_on_any_thread_and_worker_count() {
    let (dir, cfg) = tiny_data("threads");
    let run = |out: &str| {
        gshn::train::train(CpuBackend, cfg.clone(), &fresh_run(&dir, out)).unwrap();
        checkpoint_tensors(&dir.join(out))
    };
    let outside = run("outside");
    for workers in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .build()
            .unwrap();
        let inside = pool.install(|| run(&format!("workers-{workers}")));
        assert_eq!(inside, outside, "{workers} workers");
    }
}

#[test]
fn training_is_deterministic_and_resumes_exactly() {
    let (dir, cfg) = tiny_data("resume");
    let run = |out: &str, epochs: usize, resume: bool, seed: u64, stop: Option<usize>| {
        let mut c = cfg.clone();
        c.train.epochs = epochs;
        c.train.seed = seed;
        let opts = TrainOptions {
            resume,
            stop_after_steps: stop,
            ..fresh_run(&dir, out)
        };
        gshn::train::train(CpuBackend, c, &opts).unwrap()
    };
    let full = run("full", 2, false, 0, None);
    let again = run("again", 2, false, 0, None);
    assert_eq!(
        checkpoint_tensors(&dir.join("full")),
        checkpoint_tensors(&dir.join("again")),
        "same seed, different numbers"
    );
    assert_eq!(full.final_recall, again.final_recall);
    // Interrupted in the middle of the second epoch (3 steps per epoch), then resumed: the
    // same numbers as the uninterrupted run.
    run("split", 2, false, 0, Some(4));
    let resumed = run("split", 2, true, 0, None);
    assert_eq!(
        checkpoint_tensors(&dir.join("full")),
        checkpoint_tensors(&dir.join("split")),
        "resume diverged"
    );
    assert_eq!(full.final_recall, resumed.final_recall);
    let losses = |run: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["loss"].as_f64())
            .collect()
    };
    assert_eq!(losses("split"), losses("full"), "the resumed log differs");
    // A finished run is never replaced by accident, a resume needs a checkpoint, and
    // --epochs extends a resumed run.
    let opts = |out: &str, resume: bool, epochs: Option<usize>| TrainOptions {
        resume,
        epochs,
        ..fresh_run(&dir, out)
    };
    let err = |o: TrainOptions| {
        gshn::train::train(CpuBackend, cfg.clone(), &o)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(err(opts("full", false, None)).contains("already holds a run"));
    assert!(err(opts("empty", true, None)).contains("no checkpoint"));
    assert!(err(opts("zero", false, Some(0))).contains("train.epochs"));
    let e = err(opts("full", true, Some(1)));
    assert!(e.contains("has done 2 epochs"), "{e}");
    // One trainer per run folder: a second one fails at once, naming the holder; the lock
    // goes with its holder.
    let held = gshn::train::trainer::lock_run_folder(&dir.join("full")).unwrap();
    let e = err(opts("full", true, None));
    assert!(e.contains("in use by another gshn train (pid "), "{e}");
    drop(held);
    // A link where the lock goes is refused, and its target left alone.
    #[cfg(unix)]
    {
        let run = dir.join("linked");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(dir.join("target.txt"), "keep").unwrap();
        std::os::unix::fs::symlink(dir.join("target.txt"), run.join(".lock")).unwrap();
        let e = gshn::train::trainer::lock_run_folder(&run)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a regular file"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("target.txt")).unwrap(),
            "keep"
        );
    }
    // The lock file stays behind with the old holder's pid, and does not block.
    assert!(dir.join("full").join(".lock").exists());
    gshn::train::trainer::lock_run_folder(&dir.join("full")).unwrap();
    // A plot that cannot be written (here: a folder in its place) only warns; the run and its
    // checkpoint go on.
    std::fs::remove_file(dir.join("again").join("loss.png")).unwrap();
    std::fs::create_dir(dir.join("again").join("loss.png")).unwrap();
    let longer =
        gshn::train::train(CpuBackend, cfg.clone(), &opts("again", true, Some(3))).unwrap();
    assert_eq!(longer.steps, full.steps * 3 / 2, "not extended to 3 epochs");
    // --resume --config: a config that differs in a key a resume cannot change is an error
    // naming each such key; one that differs only in resumable keys sets them.
    let mut asked = cfg.clone();
    (asked.train.lr, asked.model.dim, asked.train.epochs) = (0.5, 32, 4);
    let resume_asking = |asked: RunConfig| {
        let mut o = opts("again", true, None);
        o.resume_config = Some(asked);
        gshn::train::train(CpuBackend, cfg.clone(), &o)
    };
    let e = resume_asking(asked.clone())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.lr (checkpoint 0.002, --config 0.5)")
            && e.contains("model.dim (checkpoint 16, --config 32)")
            && !e.contains("train.epochs ("),
        "{e}"
    );
    let mut asked = cfg.clone();
    (asked.train.epochs, asked.train.log_every) = (4, 2);
    let longer = resume_asking(asked).unwrap();
    assert_eq!(longer.steps, full.steps * 2, "not extended to 4 epochs");
    // A checkpoint whose state or vocabulary was edited does not resume.
    let ck = dir.join("split").join("checkpoint.safetensors");
    let (tensors, meta) = load_safetensors(&ck).unwrap();
    let resume_with = |key: &str, value: String| {
        let mut m = meta.clone();
        m.insert(key.to_string(), value);
        gshn::tensor::io::save_safetensors(&ck, &tensors, Some(m)).unwrap();
        let mut c = cfg.clone();
        c.train.epochs = 2;
        let opts = TrainOptions {
            resume: true,
            ..fresh_run(&dir, "split")
        };
        gshn::train::train(CpuBackend, c, &opts)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let mut state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    state["batch"] = 999.into();
    let e = resume_with("state", state.to_string());
    assert!(e.contains("does not fit"), "{e}");
    let mut vocab: Vec<String> = serde_json::from_str(&meta["vocab"]).unwrap();
    vocab.push(vocab[3].clone());
    let e = resume_with("vocab", serde_json::to_string(&vocab).unwrap());
    assert!(e.contains("listed twice"), "{e}");
    // Sizes in its metadata are capped before anything is allocated by them (issue 23, D8).
    let mut shape: serde_json::Value = serde_json::from_str(&meta["data_shape"]).unwrap();
    shape["pixels_per_graph"] = 1_000_000_000.into();
    let e = resume_with("data_shape", shape.to_string());
    assert!(
        e.contains("data_shape.pixels_per_graph must be in 1..=1048576"),
        "{e}"
    );
    let e = resume_with(
        "config",
        meta["config"].replace("batch_size = ", "batch_size = 1000000000 #"),
    );
    assert!(e.contains("train.batch_size must be in 2..="), "{e}");
    // A NaN weight stops the resumed run on its first step, though the loss is logged only
    // every 1000 steps (the first step of a run always reads it back), and the checkpoint
    // stays as it was.
    let mut poisoned = tensors.clone();
    poison_image_proj_bias(&mut poisoned);
    gshn::tensor::io::save_safetensors(&ck, &poisoned, Some(meta.clone())).unwrap();
    let bytes = std::fs::read(&ck).unwrap();
    let state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    let at = |k: &str| state[k].as_u64().unwrap() as usize;
    let mut asked = cfg.clone();
    (asked.train.epochs, asked.train.log_every) = (at("epoch") + 1, 1000);
    let opts = TrainOptions {
        resume: true,
        resume_config: Some(asked.clone()),
        ..fresh_run(&dir, "split")
    };
    let e = gshn::train::train(CpuBackend, asked, &opts)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    let want = format!(
        "non-finite loss or gradient at step {} (loss NaN",
        at("step")
    );
    assert!(e.contains(&want), "{e}");
    assert_eq!(std::fs::read(&ck).unwrap(), bytes, "the checkpoint changed");
    // Another seed gives other numbers.
    run("other", 2, false, 1, None);
    assert_ne!(
        checkpoint_tensors(&dir.join("full")),
        checkpoint_tensors(&dir.join("other"))
    );
    for f in ["loss.png", "retrieval.png", "spikes.png", "metrics.jsonl"] {
        assert!(dir.join("full").join(f).exists(), "{f} missing");
    }
    // The CLI's eval prints one JSON object with the documented keys.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gshn"))
        .args(["eval", "--device", "cpu", "--json", "--data"])
        .arg(&dir)
        .arg("--checkpoint")
        .arg(dir.join("full"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
    ] {
        assert!(v[k].is_number(), "{k} missing in {v}");
    }
    assert_eq!(v["rsum"].as_f64().unwrap(), full.final_recall.rsum);
    // --save-embeddings writes what the recall was computed from.
    let emb = dir.join("emb.safetensors");
    let r = gshn::train::eval::evaluate_run(
        CpuBackend,
        &dir.join("full"),
        &dir,
        "val",
        Some(&emb),
        None,
    )
    .unwrap();
    let (t, _) = gshn::tensor::io::load_safetensors(&emb).unwrap();
    let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let (img, txt, owner, ids) = (
        get("image"),
        get("text"),
        get("caption_image"),
        get("image_id"),
    );
    let d = cfg.model.dim;
    assert_eq!(img.shape().dims(), &[8, d]);
    assert_eq!(ids.shape().dims(), &[8]);
    let owner: Vec<usize> = owner
        .data::<i32>()
        .unwrap()
        .iter()
        .map(|&i| i as usize)
        .collect();
    assert_eq!(txt.shape().dims(), &[owner.len(), d]);
    let again = gshn::train::retrieval::recall(
        img.data::<f32>().unwrap(),
        txt.data::<f32>().unwrap(),
        d,
        &owner,
    );
    assert_eq!(again, r);
    assert_eq!(r, full.final_recall);
    // scripts/synth_diagnostics.py reads them (standard-library Python; skipped without python3).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/synth_diagnostics.py");
    match std::process::Command::new("python3")
        .arg(script)
        .arg(&emb)
        .arg(dir.join("val"))
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = format!("t2i R@1 {:.1};", r.t2i_r1);
            assert!(text.contains(&line), "{line} not in {text}");
        }
        Err(_) => eprintln!("skipped: no python3 for scripts/synth_diagnostics.py"),
    }
    // Issue 23, D2: one NaN weight makes every embedding NaN; eval says so instead of scoring.
    let ck = dir.join("full").join("checkpoint.safetensors");
    let (mut tensors, meta) = load_safetensors(&ck).unwrap();
    poison_image_proj_bias(&mut tensors);
    gshn::tensor::io::save_safetensors(&ck, &tensors, Some(meta)).unwrap();
    let e = gshn::train::eval::evaluate_run(CpuBackend, &dir.join("full"), &dir, "val", None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("embeddings are not finite"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// Sets the first value of a checkpoint's `image.proj.bias` (not its AdamW moments) to NaN.
fn poison_image_proj_bias(tensors: &mut [(String, Tensor)]) {
    let w = tensors
        .iter_mut()
        .find(|(n, _)| n.ends_with("image.proj.bias") && !n.starts_with("adam"))
        .unwrap();
    let mut v = w.1.data::<f32>().unwrap().to_vec();
    v[0] = f32::NAN;
    w.1 = Tensor::new(w.1.shape().dims().to_vec(), v).unwrap();
}

/// `--profile`: every node of the step is counted once, under the part the model named.
#[test]
fn the_step_profile_covers_every_node_by_part() {
    let (dir, cfg) = tiny_data("profile");
    let mut opts = fresh_run(&dir, "run");
    opts.stop_after_steps = Some(2);
    opts.profile = true;
    let s = gshn::train::train(CpuBackend, cfg, &opts).unwrap();
    let p = s.profile.expect("a profile");
    assert_eq!(p.runs, 2);
    let nodes = |rows: &[gshn::graph::profile::ProfileRow]| rows.iter().map(|r| r.nodes).sum();
    let by_part: usize = nodes(&p.by_part);
    assert_eq!(by_part, nodes(&p.by_op));
    let ms: f64 = p.by_part.iter().map(|r| r.ms).sum();
    assert!((ms - p.total_ms).abs() <= 1e-9 * p.total_ms.max(1.0));
    assert!(p.step_ms.unwrap() >= p.total_ms);
    for part in [
        "gat",
        "gat (backward)",
        "snn",
        "snn (backward)",
        "text",
        "losses",
        "optimizer",
    ] {
        assert!(p.by_part.iter().any(|r| r.name == part), "no part {part:?}");
    }
    assert!(
        p.by_part.iter().all(|r| r.name != "other"),
        "an unnamed part"
    );
    assert!(p.by_op.iter().any(|r| r.name == "lif_backward"));
    assert!(dir.join("run/profile.json").exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn ablations_build_and_bad_configs_are_errors() {
    let (dir, cfg) = tiny_data("ablate");
    for v in [Variant::GatOnly, Variant::SnnOnly, Variant::MeanPoolMlp] {
        let mut c = cfg.clone();
        c.model.variant = v;
        c.train.epochs = 1;
        let opts = fresh_run(&dir, &format!("{v:?}"));
        let s = gshn::train::train(CpuBackend, c, &opts).unwrap();
        assert!(s.final_recall.rsum.is_finite());
    }
    // The relation loss trains end to end and is logged.
    let mut rel = cfg.clone();
    rel.train.lambda_rel = 100.0;
    rel.train.rel_warmup_epochs = 1;
    rel.train.node_samples_per_graph = 3;
    let opts = fresh_run(&dir, "relation");
    let s = gshn::train::train(CpuBackend, rel, &opts).unwrap();
    assert!(s.final_recall.rsum.is_finite());
    let logged: Vec<f64> = std::fs::read_to_string(dir.join("relation/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["rel"].as_f64())
        .collect();
    assert!(!logged.is_empty() && logged.iter().all(|v| v.is_finite() && *v > 0.0));
    // Every shipped config parses.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for d in [root.clone(), root.join("ablations")] {
        for f in std::fs::read_dir(d).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }
    // The SNN root weight is a switch: off gives DESIGN §4.3's layer as written.
    let mut literal = cfg.clone();
    literal.model.snn_root_weight = false;
    literal.train.epochs = 1;
    let opts = fresh_run(&dir, "no_root");
    let s = gshn::train::train(CpuBackend, literal, &opts).unwrap();
    assert!(s.final_recall.rsum.is_finite());
    let names: Vec<String> = checkpoint_tensors(&dir.join("no_root"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n == "snn.0.lin.weight"));
    assert!(!names.iter().any(|n| n.contains("root")), "{names:?}");
    assert!(RunConfig::parse("[model]\ndim = 10\nheads = 4\n")
        .unwrap_err()
        .contains("multiple"));
    assert!(RunConfig::parse("[train]\nbatch_sise = 4\n")
        .unwrap_err()
        .contains("batch_sise"));
    assert!(
        RunConfig::parse("[train]\nnode_samples_per_graph = 1\nlambda_rel = 1\n")
            .unwrap_err()
            .contains("lambda_rel")
    );
    assert!(RunConfig::parse("[train]\nnode_samples_per_graph = 1\n").is_ok());
    let t = RunConfig::parse("[train]\nlambda_rel = 100\nrel_warmup_epochs = 10\n")
        .unwrap()
        .train;
    let ramp: Vec<f64> = [0, 1, 5, 10, 40].map(|e| t.relation_weight(e)).to_vec();
    assert_eq!(ramp, [0.0, 10.0, 50.0, 100.0, 100.0]);
    let t = RunConfig::parse("[train]\nlambda_rel = 100\nrel_warmup_epochs = 0\n")
        .unwrap()
        .train;
    assert_eq!(t.relation_weight(0), 100.0);
    let missing = TrainOptions {
        data: dir.join("nope"),
        ..fresh_run(&dir, "x")
    };
    let e = gshn::train::train(CpuBackend, cfg.clone(), &missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// Writes `text_features.safetensors` for `split` of `dir`: `rows` rows (one per captions.json
/// annotation when `rows` is None) of width 5, deterministic in the caption text.
fn write_text_features(dir: &std::path::Path, split: &str, rows: Option<usize>, poison: bool) {
    let cj: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(split).join("captions.json")).unwrap(),
    )
    .unwrap();
    let caps: Vec<String> = cj["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["caption"].as_str().unwrap().to_string())
        .collect();
    let n = rows.unwrap_or(caps.len());
    let mut data = Vec::with_capacity(n * 5);
    for i in 0..n {
        let c = caps[i % caps.len()].as_bytes();
        for k in 0..5 {
            let h = c.iter().fold(k as u32 + 1, |h, &b| {
                h.wrapping_mul(31).wrapping_add(b as u32)
            });
            data.push((h % 1000) as f32 / 500.0 - 1.0);
        }
    }
    if poison {
        data[7] = f32::NAN;
    }
    let t = Tensor::new([n, 5], data).unwrap();
    gshn::tensor::io::save_safetensors(
        &dir.join(split).join("text_features.safetensors"),
        &[("features".to_string(), t)],
        None,
    )
    .unwrap();
}

#[test]
fn precomputed_text_features_train_and_bad_files_are_errors() {
    let (dir, mut cfg) = tiny_data("textfeat");
    cfg.model.text.source = gshn::model::TextSource::Features;
    cfg.train.epochs = 1;
    let opts = |out: &str| fresh_run(&dir, out);
    // Missing file: the error names where it was expected.
    let e = gshn::train::train(CpuBackend, cfg.clone(), &opts("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_features.safetensors"), "{e}");
    for split in ["train", "val"] {
        write_text_features(&dir, split, None, false);
    }
    let s = gshn::train::train(CpuBackend, cfg.clone(), &opts("ok")).unwrap();
    assert!(s.final_recall.rsum.is_finite());
    let names: Vec<(String, Vec<usize>)> = checkpoint_tensors(&dir.join("ok"))
        .into_iter()
        .map(|(n, t)| (n, t.shape().dims().to_vec()))
        .collect();
    assert!(names.contains(&("text.proj.weight".to_string(), vec![5, cfg.model.dim])));
    assert!(
        !names.iter().any(|(n, _)| n.starts_with("text.0.")),
        "no transformer"
    );
    // Bad files: a row count other than the annotation count, a non-finite value.
    write_text_features(&dir, "train", Some(3), false);
    let e = gshn::train::train(CpuBackend, cfg.clone(), &opts("rows"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("annotations") && e.contains("text_features"),
        "{e}"
    );
    write_text_features(&dir, "train", None, true);
    let e = gshn::train::train(CpuBackend, cfg.clone(), &opts("nan"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
    // A device in its place is read (8 bytes) and refused, not reported as missing.
    #[cfg(unix)]
    {
        let f = dir.join("train").join("text_features.safetensors");
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &f).unwrap();
        let e = gshn::train::train(CpuBackend, cfg.clone(), &opts("zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid safetensors file"), "{e}");
    }
    // Hard negatives need tokens.
    let e = RunConfig::parse("[train]\nlambda_neg = 1.0\n[model.text]\nsource = \"features\"\n")
        .unwrap_err();
    assert!(e.contains("lambda_neg"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// Issue 19: a checkpoint or metrics write that fails (injected halfway through, as on a full
/// disk) stops training with an error naming the file and leaves the previous checkpoint as it
/// was, with no temporary file behind; `--resume` then continues from it. A plot that cannot be
/// written only warns.
#[test]
fn failed_writes_lose_nothing() {
    let (dir, cfg) = tiny_data("faults");
    let mut c = cfg.clone();
    c.train.epochs = 1;
    std::fs::write(dir.join("tiny.toml"), c.to_toml()).unwrap();
    let run = dir.join("run");
    let train = |extra: &[&str], fault: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gshn"));
        cmd.args(["train", "--device", "cpu", "--data"])
            .arg(&dir)
            .arg("--out")
            .arg(&run)
            .args(extra)
            .env_remove("GSHN_FAULT_WRITE");
        if let Some(name) = fault {
            cmd.env("GSHN_FAULT_WRITE", name);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = dir.join("tiny.toml");
    let (rc, err) = train(&["--config", config.to_str().unwrap()], None);
    assert_eq!(rc, Some(0), "{err}");
    let ck = run.join("checkpoint.safetensors");
    let saved = std::fs::read(&ck).unwrap();
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let leftovers = || {
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect::<Vec<_>>()
    };
    for file in ["checkpoint.safetensors", "metrics.jsonl"] {
        let (rc, err) = train(&["--resume", "--epochs", "2"], Some(file));
        assert_eq!(rc, Some(1), "{file}: {err}");
        assert!(
            err.contains(file) && err.contains("injected write failure"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&ck).unwrap(),
            saved,
            "{file}: checkpoint changed"
        );
        assert!(leftovers().is_empty(), "{file}: left {:?}", leftovers());
    }
    // An append to the log that fails (a fresh run over the old one) stops it the same way.
    let (rc, err) = train(
        &["--overwrite", "--config", config.to_str().unwrap()],
        Some("metrics.jsonl"),
    );
    assert_eq!(rc, Some(1), "{err}");
    assert!(
        err.contains("metrics.jsonl: injected write failure"),
        "{err}"
    );
    assert_eq!(std::fs::read(&ck).unwrap(), saved, "checkpoint changed");
    std::fs::write(run.join("metrics.jsonl"), &metrics).unwrap();
    // The metrics log never lost its lines (a failed rewrite leaves the old file).
    let lines = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let (before, after) = (
        lines(&metrics),
        lines(&std::fs::read(run.join("metrics.jsonl")).unwrap()),
    );
    assert_eq!(before[..], after[..before.len()], "metrics lines lost");
    // A plot that cannot be written warns; training goes on and checkpoints.
    let (rc, err) = train(&["--resume", "--epochs", "2"], Some("loss.png"));
    assert_eq!(rc, Some(0), "{err}");
    assert!(err.contains("loss.png"), "{err}");
    assert_ne!(
        std::fs::read(&ck).unwrap(),
        saved,
        "the resumed epoch was not checkpointed"
    );
    assert!(leftovers().is_empty(), "left {:?}", leftovers());
}
