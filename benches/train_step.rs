//! One full GSHN training step (forward, backward, clipping, AdamW) at the default model
//! config and batch 64 on the synthetic scenes: graphs per second (criterion "elem/s").

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gshn::data::{prepare, write_synthetic, DataShape, Vocab};
use gshn::train::batches::LossWeights;
use gshn::train::config::open_split;
use gshn::train::Engine;
use gshn::train::RunConfig;
use gshn::util::rng::SplitMix64;
use gshn::CpuBackend;

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("gshn-bench-{}", std::process::id()));
    write_synthetic(&dir, 256, 8, 0).unwrap();
    let cfg = RunConfig::default();
    let ds = open_split(&dir, &cfg, "train").unwrap();
    let vocab = Vocab::build(ds.all_captions(), 1, None);
    let split = prepare(&ds, &cfg.prepare_options(), &vocab, "bench").unwrap();
    let shape = DataShape::of(&[&split], ds.num_categories()).unwrap();
    let b = cfg.train.batch_size;
    let mut engine = Engine::new(CpuBackend, cfg.clone(), shape, vocab).unwrap();
    engine.init().unwrap();
    let graphs: Vec<_> = split.graphs[..b].iter().collect();
    let caps: Vec<_> = split.captions[..b].iter().map(|c| &c[0]).collect();
    let negs: Vec<_> = (0..b).map(|i| split.negative(i, 0)).collect();
    let w = LossWeights {
        itc: 1.0,
        stl: cfg.train.lambda_stl as f32,
        node: cfg.train.lambda_node as f32,
        neg: cfg.train.lambda_neg as f32,
        rel: cfg.train.lambda_rel as f32,
    };
    let mut step = 0;
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements(b as u64));
    group.bench_function(format!("gshn_full_default_batch{b}_cpu"), |bn| {
        bn.iter(|| {
            let mut rng = SplitMix64::new(step as u64);
            engine
                .step(&graphs, &caps, &negs, w, 1e-4, step, &mut rng)
                .unwrap();
            step += 1;
        })
    });
    group.finish();
    let mem = &engine.train.plan().memory;
    println!(
        "plan: peak intermediates {:.1} MiB (vs {:.1} MiB if none were freed), parameters + optimizer state {:.1} MiB",
        mem.peak_intermediate_bytes as f64 / 1048576.0,
        mem.total_intermediate_bytes as f64 / 1048576.0,
        mem.persistent_bytes as f64 / 1048576.0
    );
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, bench);
criterion_main!(benches);
