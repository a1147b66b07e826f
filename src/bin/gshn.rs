//! The `gshn` command-line program.

use clap::{Parser, Subcommand};
use gshn::backend::Device;
use gshn::error::Result;
use gshn::train::{RunConfig, TrainOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gshn",
    version,
    about = "Graph Spiking Hybrid Networks for vision-language alignment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the synthetic relational-scene dataset in the COCO panoptic + captions layout.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2000)]
        train: usize,
        #[arg(long, default_value_t = 200)]
        val: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Replace a synthetic dataset already in --out (without it, that is an error).
        #[arg(long)]
        overwrite: bool,
    },
    /// Train a GSHN (or an ablation) on a dataset root; evaluates on the val split every epoch.
    Train {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// TOML config ([model], [train], [data]); defaults everywhere else.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Epochs in total (with --resume: extends the run to this many).
        #[arg(long)]
        epochs: Option<usize>,
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Continue the run in --out from its checkpoint, with its config.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Time every op of the training step: a table by model part (forward, backward)
        /// and op kind at the end, and OUT/profile.json.
        #[arg(long)]
        profile: bool,
        /// Start over in an --out that already holds a run (without it, that is an error).
        #[arg(long)]
        overwrite: bool,
        /// On a GPU, launch the training step op by op instead of replaying it as one CUDA
        /// graph (the same numbers either way).
        #[arg(long)]
        no_cuda_graph: bool,
    },
    /// Image→text and text→image retrieval of a trained run on a split.
    Eval {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "val")]
        split: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Also write the embeddings (image, text, caption_image, image_id) to this
        /// .safetensors file, for error analysis.
        #[arg(long)]
        save_embeddings: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Storage type of the activations: f32 | bf16 | f16 (default: the run's
        /// train.precision; a checkpoint is f32 whatever it was trained in)
        #[arg(long)]
        precision: Option<gshn::train::config::StepPrecision>,
    },
    /// Draw an image with its segments, graph edges (by attention) and per-node spike rates.
    Show {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        image: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "val")]
        split: String,
    },
    /// synth (if missing) + train + eval with defaults: the quickest way to see gshn work.
    Demo {
        #[arg(long, default_value = "data/synth")]
        data: PathBuf,
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Run one fused op forward + backward on tensors from a .safetensors file (parity checks
    /// against PyTorch / SpikingJelly / PyG / open_clip); `--list` documents every op.
    Op {
        /// lif | gat | aggregate | infonce | infonce_1d | segment_mean (see --list)
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Input tensors (and optional upstream gradients grad_<output>).
        #[arg(long, required_unless_present = "list")]
        inputs: Option<PathBuf>,
        /// Where to write every output and grad_<input>.
        #[arg(long, required_unless_present = "list")]
        out: Option<PathBuf>,
        /// Attributes as a JSON object, e.g. '{"tau": 2.0, "v_reset": null}'.
        #[arg(long)]
        attrs: Option<String>,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print every op's tensors, layouts, attributes and gradient defaults.
        #[arg(long)]
        list: bool,
        /// Run inputs holding NaN or infinity (otherwise refused, naming the tensor).
        #[arg(long)]
        allow_non_finite: bool,
    },
    /// Benchmark the kernels on this machine: the device's floors (copy bandwidth, GEMM), then
    /// each kernel forward and backward with GB/s or TFLOP/s and the fraction of the floor;
    /// `--compare PYTHON` adds PyTorch (PyG, SpikingJelly) on the same shapes.
    Bench {
        /// auto | cpu | cuda | cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// Kernels, comma-separated (default: all of lif, gat, aggregate, infonce,
        /// segment_pool, matmul, layer_norm, adamw).
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
        /// Storage dtypes, comma-separated: f32, f64, bf16, f16 (half: f32 arithmetic and
        /// statistics; the optimizer and the step skip them; InfoNCE on bf16 runs its bf16
        /// tensor-core mode); and tf32, InfoNCE's TF32 mode on f32 tensors (the other ops skip it).
        #[arg(long, value_delimiter = ',', default_value = "f32")]
        dtype: Vec<String>,
        /// Problem sizes: small | default | large, or a TOML file of dims per op (on top of
        /// `base = "default"`; only its ops run unless --ops is given).
        #[arg(long, default_value = "default")]
        shapes: String,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A Python interpreter with torch: time the same cases in PyTorch too.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Sampling time per case in ms (default: 30 small, 600 default, 1500 large).
        #[arg(long)]
        budget_ms: Option<u64>,
        /// On a GPU, launch the training step (`--ops step`) op by op instead of replaying
        /// it as one CUDA graph, as `gshn train --no-cuda-graph` does.
        #[arg(long)]
        no_cuda_graph: bool,
    },
    /// Write one training step whole to a .safetensors file: the batch as fed (its random
    /// choices included), parameters and AdamW state before, every loss term and parameter
    /// gradient, parameters and state after. python/twin_parity.py replays it in PyTorch.
    DumpBatch {
        /// Dataset root holding the splits.
        #[arg(long)]
        data: PathBuf,
        /// A run folder: start from its checkpoint (its config; the step after its last).
        #[arg(long, conflicts_with = "config")]
        checkpoint: Option<PathBuf>,
        /// TOML config for fresh parameters (without --checkpoint); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The optimizer step whose batch, learning rate and loss weights to take.
        #[arg(long)]
        step: Option<usize>,
        /// f32 (the step as `gshn train` runs it) or f64 (an exact reference).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// The .safetensors file to write.
        #[arg(long)]
        out: PathBuf,
        /// cpu | cuda | cuda:N | auto (default cpu: the reference)
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print the default run configuration (TOML): every key a --config file may set.
    Config,
    /// Which backends and devices are available.
    Info,
}

/// The library logs through `log`; the program prints its messages on stderr: warnings and
/// notes prefixed `gshn:`, the per-epoch lines bare.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info && m.target().starts_with("gshn")
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        match r.level() {
            log::Level::Error | log::Level::Warn => eprintln!("gshn: warning: {}", r.args()),
            _ if r.target() == gshn::train::trainer::PROGRESS => eprintln!("{}", r.args()),
            _ => eprintln!("gshn: {}", r.args()),
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    static LOG: StderrLog = StderrLog;
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    // The ops run on this thread: as one of rayon's workers, their parallel loops split in
    // place instead of waiting for the pool (CpuBackend::pool_on_current_thread).
    if let Err(e) = gshn::CpuBackend::pool_on_current_thread(0) {
        log::warn!("{e}: the CPU ops' parallel loops go through the pool");
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gshn: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth {
            out,
            train,
            val,
            seed,
            overwrite,
        } => {
            if !overwrite && out.join("train").exists() {
                return Err(gshn::Error::invalid(
                    "synth",
                    format!(
                        "{} already holds a dataset: --overwrite replaces it",
                        out.display()
                    ),
                ));
            }
            let s = gshn::data::write_synthetic(&out, train, val, seed)?;
            println!(
                "wrote {} train + {} val scenes to {} ({s:?})",
                train,
                val,
                out.display()
            );
            Ok(())
        }
        Command::Train {
            data,
            out,
            config,
            epochs,
            device,
            resume,
            overwrite,
            profile,
            no_cuda_graph,
        } => {
            let cfg = match &config {
                Some(p) => RunConfig::load(p)?,
                None => RunConfig::default(),
            };
            let resume_config = (resume && config.is_some()).then(|| cfg.clone());
            let device: Device = device.parse()?;
            let opts = TrainOptions {
                data,
                out: out.clone(),
                resume,
                overwrite,
                epochs,
                quiet: false,
                stop_after_steps: None,
                resume_config,
                profile,
                cuda_graph: !no_cuda_graph,
            };
            let summary = gshn::train::train(device.backend()?, cfg, &opts)?;
            print_summary(&summary, &out);
            Ok(())
        }
        Command::Eval {
            data,
            checkpoint,
            split,
            json,
            save_embeddings,
            device,
            precision,
        } => {
            let device: Device = device.parse()?;
            let r = gshn::train::eval::evaluate_run(
                device.backend()?,
                &checkpoint,
                &data,
                &split,
                save_embeddings.as_deref(),
                precision,
            )?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("recall serialises"));
            } else {
                print_recall(&r);
            }
            Ok(())
        }
        Command::Show {
            data,
            checkpoint,
            image,
            out,
            split,
        } => {
            gshn::train::show::render(
                gshn::backend::CpuBackend,
                &checkpoint,
                &data,
                &split,
                image,
                &out,
            )?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Demo { data, out, device } => {
            if !data.join("train").join("panoptic.json").exists() {
                eprintln!(
                    "gshn demo: writing the synthetic dataset to {}",
                    data.display()
                );
                gshn::data::write_synthetic(&data, 2000, 200, 0)?;
            }
            let cfg = RunConfig::demo();
            let device: Device = device.parse()?;
            // The demo is rerun as it is: it always starts its run folder over.
            let opts = TrainOptions {
                data,
                out: out.clone(),
                resume: false,
                overwrite: true,
                epochs: None,
                quiet: false,
                stop_after_steps: None,
                resume_config: None,
                profile: false,
                cuda_graph: true,
            };
            let summary = gshn::train::train(device.backend()?, cfg, &opts)?;
            print_summary(&summary, &out);
            Ok(())
        }
        Command::Op {
            name,
            inputs,
            out,
            attrs,
            device,
            list,
            allow_non_finite,
        } => {
            if list {
                print!("{}", gshn::fused::list());
                return Ok(());
            }
            let (Some(name), Some(inputs), Some(out)) = (name, inputs, out) else {
                unreachable!("clap requires NAME, --inputs and --out without --list");
            };
            let backend = device.parse::<Device>()?.backend()?;
            let finite = if allow_non_finite {
                gshn::opcli::Finite::Allowed
            } else {
                gshn::opcli::Finite::Required
            };
            let line =
                gshn::opcli::run_files(&name, &inputs, &out, attrs.as_deref(), backend, finite)?;
            println!("{line}");
            Ok(())
        }
        Command::Bench {
            device,
            ops,
            dtype,
            shapes,
            json,
            compare,
            budget_ms,
            no_cuda_graph,
        } => bench(
            &device,
            ops,
            &dtype,
            &shapes,
            json,
            compare,
            budget_ms,
            !no_cuda_graph,
        ),
        Command::DumpBatch {
            data,
            checkpoint,
            config,
            step,
            dtype,
            out,
            device,
        } => {
            let device: Device = device.parse()?;
            let float = match dtype.as_str() {
                "f32" => gshn::tensor::DType::F32,
                "f64" => gshn::tensor::DType::F64,
                other => {
                    return Err(gshn::Error::invalid(
                        "dump-batch",
                        format!("--dtype is f32 or f64, got {other:?}"),
                    ))
                }
            };
            let opts = gshn::train::dump::DumpOptions {
                data,
                checkpoint,
                config: match &config {
                    Some(p) => RunConfig::load(p)?,
                    None => RunConfig::default(),
                },
                step,
                float,
                out: out.clone(),
            };
            let s = gshn::train::dump::dump_step(device.backend()?, &opts)?;
            println!(
                "step {}: loss {:.6}, {} tensors written to {}",
                s.step,
                s.loss,
                s.tensors,
                out.display()
            );
            Ok(())
        }
        Command::Config => {
            print!("{}", RunConfig::default().to_toml());
            Ok(())
        }
        Command::Info => {
            println!("gshn {}", env!("CARGO_PKG_VERSION"));
            println!("cpu: {} threads", rayon::current_num_threads());
            println!(
                "cuda: {}",
                if gshn::backend::cuda_available() {
                    "available"
                } else {
                    "not available (no driver or no device)"
                }
            );
            Ok(())
        }
    }
}

/// `gshn bench`: floors, kernels, the optional PyTorch comparison, a table and the JSON report.
#[allow(clippy::too_many_arguments)] // the command's flags
fn bench(
    device: &str,
    ops: Vec<String>,
    dtypes: &[String],
    shapes: &str,
    json: Option<PathBuf>,
    compare: Option<PathBuf>,
    budget_ms: Option<u64>,
    cuda_graph: bool,
) -> Result<()> {
    use gshn::bench;
    let backend = std::sync::Arc::new(device.parse::<Device>()?.backend()?);
    let mut opts = match shapes {
        "small" | "default" | "large" => bench::Options::new(shapes.parse()?),
        file if !std::path::Path::new(file).exists() => {
            return Err(gshn::Error::invalid(
                "bench",
                format!("--shapes {file:?}: use small, default or large, or a TOML file"),
            ))
        }
        file => {
            let (size, overrides) = shapes_file(std::path::Path::new(file))?;
            let mut o = bench::Options::new(size);
            o.ops = overrides.keys().cloned().collect();
            o.overrides = overrides;
            o
        }
    };
    if !ops.is_empty() {
        opts.ops = ops;
    }
    opts.dtypes = dtypes
        .iter()
        .map(|d| bench::parse_dtype(d))
        .collect::<Result<_>>()?;
    if let Some(ms) = budget_ms {
        opts.budget = std::time::Duration::from_millis(ms);
    }
    opts.cuda_graph = cuda_graph;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut report = bench::run(&backend, &opts, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.what.clone());
    })?;
    bar.finish_and_clear();
    if let Some(python) = compare {
        eprintln!("bench: timing the same cases with {} ...", python.display());
        if let Err(e) = bench::compare(&mut report, &python, rayon::current_num_threads()) {
            eprintln!("gshn: note: no comparison: {e}");
        }
    }
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| gshn::Error::graph(format!("bench report: {e}")))?;
        gshn::tensor::io::write_atomic(&path, text.as_bytes())?;
        println!("report: {}", path.display());
    }
    Ok(())
}

/// A `--shapes` TOML file: an optional `base` preset and one table of dims per op, e.g.
/// `base = "small"` then `[infonce]` with `B = 2048` and `D = 128`.
fn shapes_file(path: &std::path::Path) -> Result<(gshn::bench::Size, gshn::bench::Overrides)> {
    let bad = |msg: String| gshn::Error::Format {
        path: path.display().to_string(),
        msg,
    };
    let bytes = gshn::util::bounded::read_bounded(path, 1 << 20, "--shapes").map_err(|source| {
        gshn::Error::Io {
            path: path.display().to_string(),
            source,
        }
    })?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let table: toml::Table = text.parse().map_err(|e| bad(format!("not TOML: {e}")))?;
    let mut size = gshn::bench::Size::Default;
    let mut overrides = gshn::bench::Overrides::new();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("base", toml::Value::String(b)) => size = b.parse()?,
            (op, toml::Value::Table(dims)) => {
                let mut d = std::collections::BTreeMap::new();
                for (name, v) in dims {
                    let n = v
                        .as_integer()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(format!("{op}.{name} must be a positive integer")))?;
                    d.insert(name, n);
                }
                overrides.insert(op.to_string(), d);
            }
            (other, _) => {
                return Err(bad(format!(
                    "{other}: expected `base = \"small|default|large\"` or a table of dims per op"
                )))
            }
        }
    }
    if overrides.is_empty() {
        return Err(bad("no op tables (e.g. [infonce] with B = 2048)".into()));
    }
    Ok((size, overrides))
}

fn print_recall(r: &gshn::train::retrieval::Recall) {
    println!("           R@1    R@5   R@10");
    println!(
        "image→text {:5.1}  {:5.1}  {:5.1}",
        r.i2t_r1, r.i2t_r5, r.i2t_r10
    );
    println!(
        "text→image {:5.1}  {:5.1}  {:5.1}",
        r.t2i_r1, r.t2i_r5, r.t2i_r10
    );
    println!("rsum {:.1}", r.rsum);
}

fn print_summary(s: &gshn::train::TrainSummary, out: &std::path::Path) {
    println!();
    println!(
        "== gshn: {} steps in {:.1} s ({:.1} graphs/s)",
        s.steps, s.seconds, s.graphs_per_second
    );
    if let Some(n) = s.device_ops_per_step {
        let how = match s.replayed {
            true => "the step replayed as one CUDA graph",
            false => "kernel launches, cuBLAS calls, copies",
        };
        println!("{n} device operations per step ({how})");
    }
    print_recall(&s.final_recall);
    println!("best rsum {:.1}", s.best_rsum);
    if let Some(r) = s.final_r {
        println!("fusion ratio r = {r:.3}");
    }
    if !s.final_spike_rates.is_empty() {
        let rates: Vec<String> = s
            .final_spike_rates
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect();
        println!("spike rate per SNN layer: {}", rates.join(", "));
    }
    println!("run folder: {} (metrics.jsonl, loss.png, retrieval.png, spikes.png, checkpoint.safetensors)", out.display());
    if let Some(p) = &s.profile {
        print!(
            "\nprofile of the training step (also in profile.json):\n{}",
            p.table()
        );
    }
}
