//! `ocellus bench runtime`: what the runtime alone costs; `ocellus bench models`: backbone
//! forward time against the official Python forward on the same machine, threads and weights.
//!
//! A synthetic source (one pre-built RGB frame re-sent with new identities, so capture and
//! conversion cost nothing) → a no-op actor → a null sink, over real edges and stage threads.
//! Reported: frames/s through the sink and the latency the runtime adds from the source's
//! timestamp to the sink (p50/p99).

use std::time::Duration;

use ocellus_actors::edge::EdgePolicy;
use ocellus_actors::frame::Packet;
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::sink::NullSink;
use ocellus_actors::source::SyntheticSpec;
use ocellus_actors::stage::{Outputs, Processor};
use ocellus_actors::{Pipeline, PipelineReport};

/// Forwards every input unchanged.
struct Noop;

impl Processor for Noop {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> ocellus_actors::Result<()> {
        out.emit(input);
        Ok(())
    }
}

/// One benchmark case.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeBench {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Frames sent.
    pub frames: u64,
    /// Source rate (`None`: as fast as the edges accept, i.e. throughput).
    pub fps: Option<f64>,
    /// Policy of both edges.
    pub edge: EdgePolicy,
}

/// What one case measured.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeBenchResult {
    /// The case.
    pub case: RuntimeBench,
    /// Frames that reached the sink per second of wall time.
    pub fps: f64,
    /// Frames that reached the sink.
    pub delivered: u64,
    /// Frames dropped on the way.
    pub dropped: u64,
    /// Source-to-sink latency, median, ms.
    pub latency_p50_ms: f64,
    /// Source-to-sink latency, 99th percentile, ms.
    pub latency_p99_ms: f64,
}

/// Runs one case.
pub fn run(case: RuntimeBench) -> ocellus_actors::Result<RuntimeBenchResult> {
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_secs(3600))
        .source(
            "bench",
            SourceKind::Synthetic(SyntheticSpec {
                width: case.width,
                height: case.height,
                frames: case.frames,
                fps: case.fps,
            }),
        )
        .stage("noop", &["bench"], case.edge, Box::new(|| Ok(Box::new(Noop) as Box<dyn Processor>)))
        .stage("null", &["noop"], case.edge, Box::new(|| Ok(Box::new(NullSink) as Box<dyn Processor>)));
    let report: PipelineReport = p.run()?;
    let sink = report.node("null").map(|n| n.metrics).unwrap_or_default();
    let noop = report.node("noop").map(|n| n.metrics).unwrap_or_default();
    Ok(RuntimeBenchResult {
        case,
        fps: sink.received as f64 / report.elapsed.as_secs_f64(),
        delivered: sink.received,
        dropped: noop.input.dropped + sink.input.dropped,
        latency_p50_ms: sink.latency_p50_ms,
        latency_p99_ms: sink.latency_p99_ms,
    })
}

/// The reference timing script, run with the bootstrap venv's Python.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_reference.py");

/// One backbone timing.
#[derive(Debug, Clone)]
pub struct ModelBenchResult {
    /// Model name.
    pub model: String,
    /// Input shape.
    pub input: Vec<i64>,
    /// Median forward time of Ocellus, ms.
    pub ocellus_ms: f64,
    /// Median forward time of the official code, ms.
    pub reference_ms: f64,
}

/// Times backbone `model` here and in the official code: same seeded weights, same input
/// shape, `threads` intra-op threads each, median of `iters` runs after 2 warm-ups.
pub fn model(model: &str, threads: i32, iters: usize, scratch: &std::path::Path) -> anyhow::Result<ModelBenchResult> {
    use anyhow::Context as _;
    let backbone = ocellus_perception::backbone::Backbone::new(model, tch::Device::Cpu)?;
    backbone.init_seeded(0)?;
    let weights = scratch.join(format!("{model}.bench.safetensors"));
    backbone.var_store().save(&weights)?;

    tch::set_num_threads(threads);
    let mut input = vec![1, 3];
    input.extend(backbone.input_size());
    let x = tch::Tensor::randn(input.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 2 {
        let start = std::time::Instant::now();
        backbone.forward(&x)?;
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let ocellus_ms = times[times.len() / 2];

    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(REFERENCE_SCRIPT)
        .args([model, &weights.display().to_string(), &threads.to_string(), &iters.to_string()])
        .output()?;
    std::fs::remove_file(&weights).ok();
    anyhow::ensure!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference_ms: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("reference output")?;
    Ok(ModelBenchResult { model: model.to_owned(), input, ocellus_ms, reference_ms })
}
