//! Pins every value the trainer feeds the model: a digest of the inputs of the first two
//! training steps (and of one short evaluation batch) on a fixed synthetic dataset. Moving data
//! preparation, batching or the graph layout around must leave it unchanged; a failure means an
//! input value, shape, dtype or order changed, and so would every recorded number.

use gshn::data::{prepare, write_synthetic, DataShape, Vocab};
use gshn::model::Variant;
use gshn::train::config::open_split;
use gshn::train::trainer::{epoch_order, loss_weights, schedule, step_rng, StepBatch};
use gshn::train::Engine;
use gshn::train::RunConfig;
use gshn::util::rng::SplitMix64;
use gshn::{CpuBackend, DType, Executor, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

mod common;

/// FNV-1a, 64 bit.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn tensor(&mut self, t: &Tensor) {
        self.u64(t.dims().len() as u64);
        for &d in t.dims() {
            self.u64(d as u64);
        }
        match t.dtype() {
            DType::F32 => {
                self.u64(0);
                for v in t.data::<f32>().unwrap() {
                    self.bytes(&v.to_bits().to_le_bytes());
                }
            }
            DType::F64 => {
                self.u64(1);
                for v in t.data::<f64>().unwrap() {
                    self.bytes(&v.to_bits().to_le_bytes());
                }
            }
            DType::I32 => {
                self.u64(2);
                for v in t.data::<i32>().unwrap() {
                    self.bytes(&v.to_le_bytes());
                }
            }
            d => panic!("the feed holds no {d:?}"),
        }
    }
    /// Every input of the executor's graph, in graph order, with its name.
    fn inputs(&mut self, ex: &Executor<Arc<CpuBackend>>) {
        for v in ex.graph().inputs() {
            self.bytes(ex.graph().value(v).unwrap().name.as_bytes());
            self.tensor(&ex.get(v).unwrap());
        }
    }
}

fn data_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-test-feed-digest-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    write_synthetic(&d, 24, 8, 5).unwrap();
    d
}

/// The tests' tiny model and schedule, with every input the trainer can feed in use.
fn config(variant: Variant) -> RunConfig {
    let mut c = common::tiny_config();
    c.model.variant = variant;
    c.train.node_samples_per_graph = 3;
    if variant == Variant::Full {
        c.train.lambda_neg = 1.0;
        c.train.lambda_rel = 0.5;
    }
    c
}

/// The first two steps of `train` (its split preparation, order, caption draws and weights),
/// hashing what each step fed; then one short image batch of the evaluation path.
fn digest(dir: &std::path::Path, cfg: RunConfig) -> u64 {
    let train_ds = open_split(dir, &cfg, &cfg.data.train_split).unwrap();
    let val_ds = open_split(dir, &cfg, &cfg.data.val_split).unwrap();
    let vocab = Vocab::build(train_ds.all_captions(), cfg.data.vocab_min_count, None);
    let train_split = prepare(&train_ds, &cfg.prepare_options(), &vocab, "train").unwrap();
    let val_split = prepare(&val_ds, &cfg.prepare_options(), &vocab, "val").unwrap();
    let shape = DataShape::of(&[&train_split, &val_split], train_ds.num_categories()).unwrap();
    let mut engine = Engine::new(CpuBackend, cfg.clone(), shape, vocab).unwrap();
    engine.init().unwrap();
    // Anomaly mode on the whole GSHN graph: no op of a healthy step writes a NaN or infinity.
    engine.train.check_finite(true);
    engine.image.check_finite(true);
    let t = &cfg.train;
    let sched = schedule(t, train_split.len() / t.batch_size);
    let order = epoch_order(t.seed, 0, train_split.len());
    let w = loss_weights(t, 0, engine.model_outputs.stl.is_some());
    let mut h = Fnv::new();
    for step in 0..2 {
        let idx = &order[step * t.batch_size..(step + 1) * t.batch_size];
        let mut rng = step_rng(t.seed, step);
        let b = StepBatch::pick(&train_split, idx, &mut rng);
        let lr = sched.at(step);
        engine
            .step(&b.graphs, &b.captions, &b.negatives, w, lr, step, &mut rng)
            .unwrap();
        h.inputs(&engine.train);
    }
    // A short batch (empty slots are all padding), as `embed` feeds the last chunk of a split.
    engine
        .feeder
        .feed_images(
            &mut engine.image,
            &val_split.graphs[..3],
            &mut SplitMix64::new(0),
        )
        .unwrap();
    let i = &engine.feeder.inputs;
    let image_inputs = [
        i.pixel_feats,
        i.pixel_node,
        i.geometry,
        i.category,
        i.node_graph,
        i.node_weight,
        i.edge_feats,
        i.node_sample,
    ]
    .into_iter()
    .chain(i.graph.ids())
    .chain(i.uniform_alpha);
    for v in image_inputs {
        h.bytes(engine.image.graph().value(v).unwrap().name.as_bytes());
        h.tensor(&engine.image.get(v).unwrap());
    }
    h.0
}

#[test]
fn trainer_feeds_the_same_inputs_bit_for_bit() {
    let dir = data_dir();
    let full = digest(&dir, config(Variant::Full));
    let snn_only = digest(&dir, config(Variant::SnnOnly));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        (full, snn_only),
        (7148080100452955623, 11460188579715119507),
        "the inputs fed to the model changed (values, shapes, dtypes or order)"
    );
}
