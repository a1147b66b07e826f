//! `RUN/metrics.jsonl` (one JSON object per line: `kind` = "step" or "eval") and the PNG
//! plots drawn from it.

use super::engine::StepStats;
use super::retrieval::Recall;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Appends JSON lines to `RUN/metrics.jsonl`, flushed after each line.
pub struct MetricsLog {
    file: BufWriter<std::fs::File>,
    path: String,
}

impl MetricsLog {
    /// Opens (or creates) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(MetricsLog {
            file: BufWriter::new(f),
            path: path.display().to_string(),
        })
    }
    fn write(&mut self, v: Value) -> Result<()> {
        crate::tensor::io::injected_failure(Path::new(&self.path))
            .map_or(Ok(()), Err)
            .and_then(|_| writeln!(self.file, "{v}"))
            .and_then(|_| self.file.flush())
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }
    /// Writes a `"step"` line: the step's losses, lr, gradient norm, spike rates and throughput.
    pub fn step(
        &mut self,
        step: usize,
        epoch: usize,
        lr: f64,
        s: &StepStats,
        graphs_per_s: f64,
    ) -> Result<()> {
        self.write(json!({
            "kind": "step", "step": step, "epoch": epoch, "lr": lr, "loss": s.loss, "itc": s.itc,
            "stl": s.stl, "node_cl": s.node_cl, "neg": s.neg, "rel": s.rel, "grad_norm": s.grad_norm, "r": s.r,
            "logit_scale": s.logit_scale, "loss_scale": s.loss_scale, "spike_rate": s.spike_rates, "graphs_per_s": graphs_per_s,
            "device_ops": s.device_ops,
        }))
    }
    /// Writes an `"eval"` line: the recalls at `step`, with the 1-based epoch.
    pub fn eval(&mut self, step: usize, epoch: usize, r: &Recall) -> Result<()> {
        let mut v = serde_json::to_value(r).expect("recall serialises");
        v["kind"] = json!("eval");
        v["step"] = json!(step);
        v["epoch"] = json!(epoch + 1);
        self.write(v)
    }
    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn read(path: &Path) -> Result<Vec<Value>> {
    use crate::util::bounded::{read_bounded, MAX_METRICS_BYTES};
    let text = match read_bounded(path, MAX_METRICS_BYTES, "the metrics log's fixed limit") {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(Error::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Drops lines logged after `step` (a resumed run rewrites what the interrupted one logged
/// past its checkpoint).
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let keep: Vec<String> = read(path)?
        .into_iter()
        .filter(|v| v["step"].as_u64().is_some_and(|s| s as usize <= step))
        .map(|v| v.to_string())
        .collect();
    let mut text = keep.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::tensor::io::write_atomic(path, text.as_bytes())
}

/// Draws `loss.png`, `retrieval.png` and `spikes.png` in `run` from its metrics log.
pub fn plot_run(run: &Path) -> Result<()> {
    let rows = read(&run.join("metrics.jsonl"))?;
    let series = |kind: &str, x: &str, key: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|v| v["kind"] == kind)
            .filter_map(|v| Some((v[x].as_f64()?, v[key].as_f64()?)))
            .collect()
    };
    let named = |kind: &str, x: &str, keys: &[&str]| -> Vec<(String, Vec<(f64, f64)>)> {
        keys.iter()
            .map(|k| (k.to_string(), series(kind, x, k)))
            .collect()
    };
    // Each plot is drawn even when another cannot be written; the first failure is reported.
    let loss = super::plot::line_plot(
        &run.join("loss.png"),
        "training loss",
        "step",
        &named(
            "step",
            "step",
            &["loss", "itc", "stl", "node_cl", "neg", "rel"],
        ),
    );
    let retrieval = super::plot::line_plot(
        &run.join("retrieval.png"),
        "val retrieval (%)",
        "epoch",
        &named("eval", "epoch", &["t2i_r1", "i2t_r1", "t2i_r5", "i2t_r5"]),
    );
    let layers = rows
        .iter()
        .filter_map(|v| v["spike_rate"].as_array().map(|a| a.len()))
        .max()
        .unwrap_or(0);
    let mut spikes: Vec<(String, Vec<(f64, f64)>)> = (0..layers)
        .map(|l| {
            let pts = rows
                .iter()
                .filter(|v| v["kind"] == "step")
                .filter_map(|v| Some((v["step"].as_f64()?, v["spike_rate"][l].as_f64()?)))
                .collect();
            (format!("spike rate, layer {}", l + 1), pts)
        })
        .collect();
    spikes.push(("fusion r".to_string(), series("step", "step", "r")));
    let spikes = super::plot::line_plot(
        &run.join("spikes.png"),
        "SNN firing rate and fusion ratio",
        "step",
        &spikes,
    );
    loss.and(retrieval).and(spikes)
}
