//! Mixed-precision training (`train.precision = "bf16" | "f16"`, issue 15): f32 master
//! weights and checkpoints, exact resume, evaluation in another precision, and f16's dynamic
//! loss scaling skipping an overflowing step; u8 spikes (`model.lif.u8_spikes`) training
//! bit-identically.

mod common;

use common::{fresh_run, tiny_config};
use gshn::data::write_synthetic;
use gshn::tensor::io::load_safetensors;
use gshn::train::checkpoint::Checkpoint;
use gshn::train::config::StepPrecision;
use gshn::train::trainer::{epoch_order, loss_weights, RunData, StepBatch};
use gshn::train::{Engine, TrainOptions};
use gshn::{CpuBackend, DType, Tensor};
use std::path::{Path, PathBuf};

fn tiny_data(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gshn-mixed-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    write_synthetic(&dir, 24, 8, 5).unwrap();
    dir
}

fn train(dir: &Path, out: &str, precision: StepPrecision, resume: bool, stop: Option<usize>) {
    let mut cfg = tiny_config();
    cfg.train.precision = precision;
    let opts = TrainOptions {
        resume,
        stop_after_steps: stop,
        ..fresh_run(dir, out)
    };
    gshn::train::train(CpuBackend, cfg, &opts).unwrap();
}

fn checkpoint(run: &Path) -> Vec<(String, Tensor)> {
    load_safetensors(&run.join("checkpoint.safetensors"))
        .unwrap()
        .0
}

#[test]
fn half_precision_runs_keep_f32_checkpoints_and_resume_exactly() {
    let dir = tiny_data("resume");
    for (p, tag) in [(StepPrecision::Bf16, "bf16"), (StepPrecision::F16, "f16")] {
        train(&dir, &format!("{tag}-full"), p, false, None);
        // interrupted mid-epoch (3 steps per epoch), then resumed
        train(&dir, &format!("{tag}-split"), p, false, Some(4));
        train(&dir, &format!("{tag}-split"), p, true, None);
        let full = checkpoint(&dir.join(format!("{tag}-full")));
        assert_eq!(full, checkpoint(&dir.join(format!("{tag}-split"))), "{tag}");
        // the file holds f32 tensors only (readers would widen half ones: look at the bytes)
        let bytes = std::fs::read(dir.join(format!("{tag}-full/checkpoint.safetensors"))).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + n]).to_string();
        assert!(
            header.contains("\"F32\"") && !header.contains("F16"),
            "{tag}"
        );
        // an f16 run saves its loss scaler; no other run has one
        let ck = Checkpoint::load_latest(&dir.join(format!("{tag}-full")))
            .unwrap()
            .unwrap();
        assert_eq!(
            ck.state.loss_scale.is_some(),
            p == StepPrecision::F16,
            "{tag}"
        );
    }
    // A bf16 run's checkpoint evaluates in f32 (and in its own bf16): the embeddings agree
    // to bf16's rounding.
    let run = dir.join("bf16-full");
    let embeddings = |p: Option<StepPrecision>, file: &str| {
        let path = dir.join(file);
        gshn::train::eval::evaluate_run(CpuBackend, &run, &dir, "val", Some(&path), p).unwrap();
        let t = load_safetensors(&path).unwrap().0;
        t.into_iter()
            .find(|(n, _)| n == "image")
            .unwrap()
            .1
            .to_f64_vec()
    };
    let own = embeddings(None, "own.safetensors");
    let wide = embeddings(Some(StepPrecision::F32), "wide.safetensors");
    let err = own
        .iter()
        .zip(&wide)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err > 0.0 && err < 0.1, "bf16 vs f32 embeddings: {err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_f16_step_whose_gradient_overflows_is_skipped_and_the_scale_backs_off() {
    let dir = tiny_data("overflow");
    let mut cfg = tiny_config();
    cfg.train.precision = StepPrecision::F16;
    // Without the SNN: at initialisation (zero biases) an SNN node that never spikes has an
    // all-zero row, whose L2-normalisation gradient g / eps = g · 10¹² is past f16's range
    // at any loss scale (see the README's precision notes).
    cfg.model.variant = gshn::model::Variant::GatOnly;
    let data = RunData::load(&dir, &cfg, None).unwrap();
    let mut engine = Engine::new(CpuBackend, cfg.clone(), data.shape, data.vocab).unwrap();
    engine.init().unwrap();
    let t = &cfg.train;
    let order = epoch_order(t.seed, 0, data.train_split.len());
    let w = loss_weights(t, 0, engine.model_outputs.stl.is_some());
    let step = |engine: &mut Engine<CpuBackend>, k: usize| {
        let (b, mut rng) = StepBatch::at_step(&data.train_split, t, &order, k, k);
        engine
            .step(&b.graphs, &b.captions, &b.negatives, w, 1e-3, k, &mut rng)
            .unwrap()
    };
    let before = engine.state_tensors().unwrap();
    // 2¹⁰⁰ · loss is a finite f32, but the f16 activation gradients overflow
    engine.scaler.as_mut().unwrap().scale = 2f64.powi(100);
    assert!(!step(&mut engine, 0), "the overflowing step was applied");
    assert_eq!(
        engine.state_tensors().unwrap(),
        before,
        "a skipped step changed the state"
    );
    let s = engine.scaler.unwrap();
    assert_eq!((s.scale, s.skipped, s.clean), (2f64.powi(99), 1, 0));
    assert!(!engine.stats().unwrap().grad_norm.is_finite());
    // at 2¹⁰ the next step is applied: AdamW's first step (the skipped one did not count),
    // with every parameter gradient finite. (At the default 2¹⁶ this tiny batch of 8
    // overflows too: ITC's gradient per row is about scale · e^logit_scale / B.)
    engine.scaler.as_mut().unwrap().scale = 1024.0;
    assert!(step(&mut engine, 1));
    assert_eq!(engine.scaler.unwrap().adam_step(1), 1);
    assert!(engine.stats().unwrap().grad_norm.is_finite());
    let after = engine.state_tensors().unwrap();
    assert_ne!(after, before);
    assert!(after.iter().all(|(_, t)| t.dtype() == DType::F32));
    std::fs::remove_dir_all(dir).ok();
}

/// A whole run (pre-training and fine-tuning, every SNN layer's spikes u8) writes the same
/// checkpoint, bit for bit, as the run that stores its spikes as floats, in f32 and in bf16.
#[test]
fn training_with_u8_spikes_is_bit_identical() {
    let dir = tiny_data("u8-spikes");
    for precision in [StepPrecision::F32, StepPrecision::Bf16] {
        let mut checkpoints = Vec::new();
        for u8_spikes in [false, true] {
            let mut cfg = tiny_config();
            cfg.model.snn_layers = 2;
            cfg.train.precision = precision;
            cfg.model.lif.u8_spikes = u8_spikes;
            let out = format!("{precision:?}-{u8_spikes}");
            gshn::train::train(CpuBackend, cfg, &fresh_run(&dir, &out)).unwrap();
            checkpoints.push(checkpoint(&dir.join(out)));
        }
        assert!(checkpoints[0].len() > 10);
        assert_eq!(checkpoints[0], checkpoints[1], "{precision:?}");
    }
}
