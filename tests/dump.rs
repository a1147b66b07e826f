//! `gshn dump-batch`: the step it writes is the step `gshn train` takes (bit for bit, fresh
//! and from a checkpoint), the file holds everything python/twin_parity.py reads, and the
//! f64 step is the f32 step to f32 rounding.

use gshn::data::write_synthetic;
use gshn::tensor::io::load_safetensors;
use gshn::train::dump::{dump_step, DumpOptions, STEP_DUMP_FORMAT};
use gshn::train::{RunConfig, TrainOptions};
use gshn::{CpuBackend, DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-test-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_to(dir: &Path, cfg: &RunConfig, steps: usize, resume: bool) {
    let opts = TrainOptions {
        resume,
        stop_after_steps: Some(steps),
        ..common::fresh_run(dir, "run")
    };
    gshn::train::train(CpuBackend, cfg.clone(), &opts).unwrap();
}

fn checkpoint(dir: &Path) -> HashMap<String, Tensor> {
    let (t, _) = load_safetensors(&dir.join("run/checkpoint.safetensors")).unwrap();
    t.into_iter().collect()
}

type Dump = (HashMap<String, Tensor>, HashMap<String, String>);

fn dump(dir: &Path, cfg: &RunConfig, from_run: bool, float: DType, name: &str) -> Dump {
    let out = dir.join(name);
    let opts = DumpOptions {
        data: dir.to_path_buf(),
        checkpoint: from_run.then(|| dir.join("run")),
        config: cfg.clone(),
        step: None,
        float,
        out: out.clone(),
    };
    dump_step(CpuBackend, &opts).unwrap();
    let (t, meta) = load_safetensors(&out).unwrap();
    (t.into_iter().collect(), meta)
}

/// `prefix.<name>` of a dump as a name → tensor map.
fn part<'a>(d: &'a Dump, prefix: &str) -> HashMap<&'a str, &'a Tensor> {
    d.0.iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n, t)))
        .collect()
}

fn scale_of(t: &Tensor) -> f64 {
    t.to_f64_vec().iter().fold(1e-30, |m, x| m.max(x.abs()))
}

/// max |a − b| / max(max |b|, floor).
fn max_err(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    assert_eq!(x.len(), y.len());
    let diff = x
        .iter()
        .zip(&y)
        .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    diff / scale_of(b).max(floor)
}

#[test]
fn a_dumped_step_is_the_training_step() {
    let dir = temp_dir("dump");
    write_synthetic(&dir, 24, 8, 5).unwrap();
    let cfg = common::tiny_config(); // 3 steps per epoch, epoch 0 pre-trains

    // Fresh parameters, step 0: the dump's state after the step is the checkpoint of a run
    // stopped after one step, bit for bit.
    let fresh = dump(&dir, &cfg, false, DType::F32, "fresh.safetensors");
    train_to(&dir, &cfg, 1, false);
    let ck = checkpoint(&dir);
    let after = part(&fresh, "after.");
    assert_eq!(after.len(), ck.len());
    for (name, t) in &ck {
        assert_eq!(
            after[name.as_str()],
            t,
            "after.{name} is not the trained value"
        );
    }

    // A stop on an epoch's last step keeps it: the checkpoint is the end of the epoch.
    train_to(&dir, &cfg, 3, true);
    let ck = gshn::train::checkpoint::Checkpoint::load_latest(&dir.join("run"))
        .unwrap()
        .unwrap();
    assert_eq!((ck.state.step, ck.state.epoch, ck.state.batch), (3, 1, 0));
    assert!(ck.state.last_recall.is_some(), "the epoch was evaluated");

    // From a checkpoint in the middle of epoch 1 (every loss term on): the step it dumps is
    // the one `--resume` takes next.
    train_to(&dir, &cfg, 4, true);
    let before = checkpoint(&dir);
    let d32 = dump(&dir, &cfg, true, DType::F32, "f32.safetensors");
    let d64 = dump(&dir, &cfg, true, DType::F64, "f64.safetensors");
    train_to(&dir, &cfg, 5, true);
    let next = checkpoint(&dir);
    let (param, state, after) = (
        part(&d32, "param."),
        part(&d32, "state."),
        part(&d32, "after."),
    );
    for (name, t) in &before {
        let dumped = match name.starts_with("adam_") {
            true => state[name.as_str()],
            false => param[name.as_str()],
        };
        assert_eq!(dumped, t, "{name} before the step");
        assert_eq!(after[name.as_str()], &next[name], "{name} after the step");
    }

    // Everything the twin reads is there.
    let meta = &d32.1;
    assert_eq!(meta["format"], STEP_DUMP_FORMAT);
    assert_eq!(meta["float"], "f32");
    assert_eq!(meta["step"], "4");
    let cfg_back: RunConfig = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(cfg_back, cfg);
    let names: Vec<String> = serde_json::from_str(&meta["param_names"]).unwrap();
    assert_eq!(names.len(), param.len());
    let grads = part(&d32, "grad.");
    for n in &names {
        assert_eq!(grads[n.as_str()].shape(), param[n.as_str()].shape(), "{n}");
        assert!(state.contains_key(format!("adam_m.{n}").as_str()), "{n}");
        assert!(grads[n.as_str()].first_non_finite().is_none(), "{n}");
    }
    let adamw: serde_json::Value = serde_json::from_str(&meta["adamw"]).unwrap();
    assert_eq!(adamw["t"], 5);
    let inputs = part(&d32, "input.");
    assert_eq!(inputs["node_sample"].dtype(), DType::I32);
    assert_eq!(inputs["adamw.hyper"].to_f64_vec()[1], 5.0);
    assert_eq!(inputs["w_itc"].to_f64_vec(), [1.0]);
    let outputs = part(&d32, "output.");
    for o in [
        "loss",
        "itc",
        "stl",
        "node_cl",
        "grad_norm",
        "z_img",
        "z_txt",
    ] {
        assert!(outputs.contains_key(o), "output.{o} missing");
    }

    // f64: the same parameters widened, the same step to f32 rounding.
    assert_eq!(d64.1["float"], "f64");
    for (name, t) in part(&d64, "param.") {
        assert_eq!(t.dtype(), DType::F64);
        assert_eq!(t, &param[name].to_dtype(DType::F64).unwrap(), "{name}");
    }
    for o in ["loss", "itc", "stl", "node_cl"] {
        let e = max_err(part(&d32, "output.")[o], part(&d64, "output.")[o], 0.0);
        assert!(e < 1e-5, "output.{o}: f32 vs f64 {e:e}");
    }
    let g64 = part(&d64, "grad.");
    // Relative to each gradient's size, with a floor: some are 0 but for rounding (the
    // attention keys' bias: a softmax does not see a constant added to every score).
    let floor = 1e-3 * g64.values().map(|t| scale_of(t)).fold(0f64, f64::max);
    let worst = names
        .iter()
        .map(|n| max_err(grads[n.as_str()], g64[n.as_str()], floor))
        .fold(0f64, f64::max);
    assert!(worst < 1e-4, "gradients: f32 vs f64 {worst:e}");

    // Misuse: no checkpoint, not a float type.
    let bad = |from_run: bool, float: DType, data: PathBuf| {
        let opts = DumpOptions {
            data,
            checkpoint: from_run.then(|| dir.join("nothing")),
            config: cfg.clone(),
            step: None,
            float,
            out: dir.join("bad.safetensors"),
        };
        dump_step(CpuBackend, &opts).unwrap_err().to_string()
    };
    assert!(bad(true, DType::F32, dir.clone()).contains("no checkpoint"));
    assert!(bad(false, DType::I32, dir.clone()).contains("f32 or f64"));
    assert!(!dir.join("bad.safetensors").exists());
    std::fs::remove_dir_all(dir).ok();
}
