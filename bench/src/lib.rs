//! # ocellus-bench
//!
//! The benchmarks of `ocellus-bench`: Ocellus side by side with the official Python code on
//! the same machine, threads and weights (reported as ratios), and the runtime and transport
//! alone. They drive the bootstrap venv's Python, so they live outside the product's CLI.
//!
//! This module: `runtime` (what the runtime alone costs), `models` (backbone forward time
//! against the official forward) and `tracker` (SAM 2 tracking per frame against the official
//! video predictor, and the memory of a long stream).
//!
//! The runtime case: a synthetic source (one pre-built RGB frame re-sent with new identities,
//! so capture and conversion cost nothing) → a no-op stage → a null sink, over real edges and
//! stage threads. Reported: frames/s through the sink and the latency the runtime adds from
//! the source's timestamp to the sink (p50/p99).
#![warn(missing_docs)]

pub mod adapt;
pub mod amg;
pub mod clip;
pub mod device;
pub mod hmr2;
pub mod lart;
pub mod llm;
pub mod preprocess;
pub mod revvit;
pub mod soak;
pub mod zenoh;

use std::time::Duration;

use ocellus_io::sink::NullSink;
use ocellus_io::source::{SyntheticSource, SyntheticSpec};
use ocellus_perception::model::{Loaded, Model, ModelSpec, WeightsSource};
use ocellus_runtime::{
    Context, EdgePolicy, Input, Pipeline, PipelineReport, PortType, Stage, source_factory, stage_factory,
};

/// Forwards every input unchanged.
struct Noop;

impl Stage for Noop {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        ctx.emit(input.packet);
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
pub fn run(case: RuntimeBench) -> ocellus_runtime::Result<RuntimeBenchResult> {
    let mut p = Pipeline::new();
    let spec = SyntheticSpec { width: case.width, height: case.height, frames: case.frames, fps: case.fps };
    p.metrics_every(Duration::from_secs(3600))
        .source("bench", source_factory(move || SyntheticSource::new(spec)))
        .actor("noop", &["bench"], case.edge, PortType::Frame, stage_factory(|| Noop))
        .stage("null", &["noop"], case.edge, stage_factory(|| NullSink));
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

/// One image-encoder timing.
#[derive(Debug, Clone)]
pub struct ModelBenchResult {
    /// Model name.
    pub model: String,
    /// Input shape.
    pub input: Vec<i64>,
    /// Median forward time of Ocellus over libtorch, ms.
    pub ocellus_ms: f64,
    /// Median forward time of the same model exported to ONNX, in ONNX Runtime, ms.
    pub onnx_ms: f64,
    /// Max abs difference of the ONNX export to the libtorch forward.
    pub onnx_error: f64,
    /// Median forward time of the official code, ms.
    pub reference_ms: f64,
}

/// The median of `iters` timed runs of `f` after 2 warm-ups, ms.
fn median_ms(iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + 2 {
        let start = std::time::Instant::now();
        f()?;
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times image encoder `model` (a backbone, or a CLIP image tower) here over libtorch, here
/// over ONNX Runtime (exported from the official module by `ocellus weights export-onnx`), and
/// in the official code: same seeded weights, same input, `threads` intra-op threads each,
/// median of `iters` runs after 2 warm-ups.
pub fn model(model: &str, threads: i32, iters: usize, scratch: &std::path::Path) -> anyhow::Result<ModelBenchResult> {
    use anyhow::Context as _;
    use ocellus_perception::onnx::{OnnxModel, OnnxOptions};
    let weights = scratch.join(format!("{model}.bench.safetensors"));
    tch::set_num_threads(threads);
    let clip = ocellus_perception::clip::Clip::names().contains(&model);
    let (input, ocellus_ms) = if clip {
        let clip = random::<ocellus_perception::clip::Clip>(model, &())?;
        clip.vs.save(&weights)?;
        let side = clip.config().vision_cfg.image_size;
        let x = tch::Tensor::randn([1, 3, side, side], (tch::Kind::Float, tch::Device::Cpu));
        (x.size(), median_ms(iters, || Ok(tch::no_grad(|| clip.encode_image(&x)).map(drop)?))?)
    } else {
        let backbone = random::<ocellus_perception::backbone::Backbone>(model, &())?;
        backbone.vs.save(&weights)?;
        let mut input = vec![1, 3];
        input.extend(backbone.input_size());
        let x = tch::Tensor::randn(input.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
        (input, median_ms(iters, || Ok(backbone.forward(&x).map(drop)?))?)
    };

    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let onnx_file = scratch.join(format!("{model}.bench.onnx"));
    let exported = ocellus_pipelines::onnx_export::export(
        model,
        &weights,
        &onnx_file,
        None,
        &python,
        ocellus_pipelines::onnx_export::DEFAULT_OPSET,
    )?;
    let options = OnnxOptions { threads: Some(usize::try_from(threads)?), ..OnnxOptions::default() };
    let onnx = OnnxModel::load(&onnx_file, &options)?;
    let x = tch::Tensor::randn(input.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
    let onnx_ms = median_ms(iters, || Ok(onnx.forward(&x).map(drop)?))?;
    drop(onnx);
    std::fs::remove_file(&onnx_file).ok();

    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(REFERENCE_SCRIPT)
        .args([model, &weights.display().to_string(), &threads.to_string(), &iters.to_string()])
        .output()?;
    std::fs::remove_file(&weights).ok();
    anyhow::ensure!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference_ms: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("reference output")?;
    Ok(ModelBenchResult {
        model: model.to_owned(),
        input,
        ocellus_ms,
        onnx_ms,
        onnx_error: exported.max_abs_error,
        reference_ms,
    })
}

/// The tracker reference timing script.
const TRACKER_REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_tracker_reference.py");

/// One tracking timing.
#[derive(Debug, Clone)]
pub struct TrackerBenchResult {
    /// Objects tracked.
    pub objects: usize,
    /// Median time of one frame (encoder + every object), Ocellus, ms.
    pub ocellus_ms: f64,
    /// The same for the official video predictor, ms.
    pub reference_ms: f64,
}

/// Resident set size of this process in MiB (Linux).
pub fn rss_mib() -> f64 {
    proc_status_mib("VmRSS:").unwrap_or(0.0)
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS:`, `VmHWM:`, ...), in MiB.
pub fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn click(obj: usize) -> Result<ocellus_perception::sam2::streaming::Prompt, tch::TchError> {
    click_at(obj, 1.0)
}

/// [`click`] for a model whose input side is `scale` × 1024.
fn click_at(obj: usize, scale: f32) -> Result<ocellus_perception::sam2::streaming::Prompt, tch::TchError> {
    // The reference clicks at (32 + 128 i, 32 + 128 j) on 512² frames: ×2 in model pixels.
    let (x, y) = (2.0 * (32 + (obj % 4) * 128) as f32 * scale, 2.0 * (32 + (obj / 4) * 128) as f32 * scale);
    Ok(ocellus_perception::sam2::streaming::Prompt::Points(ocellus_perception::sam2::sam2_base::PointInputs {
        coords: tch::Tensor::f_from_slice(&[x, y])?.f_view([1, 1, 2])?,
        labels: tch::Tensor::f_from_slice(&[1i32])?.f_view([1, 1])?,
    }))
}

/// Model `name` of family `M` with seeded random weights (seed 0), on the CPU in f32: the
/// same weights as the reference scripts are given.
pub(crate) fn random<M: Model>(name: &str, options: &M::Options) -> anyhow::Result<Loaded<M>> {
    let spec = ModelSpec {
        name: name.to_owned(),
        weights: WeightsSource::Random { seed: 0 },
        device: tch::Device::Cpu,
        dtype: ocellus_kernels::DType::F32,
    };
    Ok(spec.load_with(options)?)
}

/// SAM 2 `model`, random, at input side `image_size` when given.
fn random_sam2(model: &str, image_size: Option<i64>) -> anyhow::Result<Loaded<ocellus_perception::sam2::Sam2>> {
    random(model, &ocellus_perception::model::Sam2Options { image_size })
}

/// Times SAM 2 tracking of `objects` objects over `frames` frames here and in the official
/// video predictor: same weights, same frames, `threads` threads each.
pub fn tracker(
    model: &str,
    objects: usize,
    frames: usize,
    threads: i32,
    scratch: &std::path::Path,
) -> anyhow::Result<TrackerBenchResult> {
    use anyhow::Context as _;
    use ocellus_perception::sam2::sam2_base::Horizon;
    use ocellus_perception::sam2::streaming::{StreamConfig, StreamingTracker};
    let sam = random_sam2(model, None)?;
    let weights = scratch.join("tracker.bench.safetensors");
    sam.vs.save(&weights)?;
    let images = scratch.join("tracker.images.safetensors");
    tch::set_num_threads(threads);

    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(TRACKER_REFERENCE_SCRIPT)
        .args([model, &weights.display().to_string(), &objects.to_string(), &frames.to_string(), &threads.to_string()])
        .arg(&images)
        .output()?;
    anyhow::ensure!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference_ms: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("reference output")?;

    let clip = tch::Tensor::read_safetensors(&images)?.into_iter().find(|(k, _)| k == "images").context("images")?.1;
    let mut tracker =
        StreamingTracker::new(StreamConfig { horizon: Horizon::Video(frames as i64), ..StreamConfig::default() });
    for obj in 0..objects {
        tracker.add_prompt(obj as u64 + 1, click(obj)?);
    }
    let mut times = Vec::new();
    tch::no_grad(|| -> anyhow::Result<()> {
        for f in 0..frames {
            let start = std::time::Instant::now();
            let feats = sam.frame_features(&clip.f_get(f as i64)?.f_unsqueeze(0)?)?;
            tracker.step(&sam, f as u64, &feats)?;
            if f > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(())
    })?;
    std::fs::remove_file(&weights).ok();
    std::fs::remove_file(&images).ok();
    times.sort_by(f64::total_cmp);
    Ok(TrackerBenchResult { objects, ocellus_ms: times.get(times.len() / 2).copied().unwrap_or(0.0), reference_ms })
}

/// Streams `frames` frames (a fixed random clip of 8, repeated) through the streaming tracker
/// with `objects` objects, the model at input side `image_size`, and reports the RSS (MiB)
/// after each frame in `at`.
pub fn tracker_memory(
    model: &str,
    objects: usize,
    frames: u64,
    image_size: i64,
    at: &[u64],
) -> anyhow::Result<Vec<(u64, f64)>> {
    use ocellus_perception::sam2::streaming::{StreamConfig, StreamingTracker};
    let sam = random_sam2(model, Some(image_size))?;
    let clip = tch::Tensor::f_randn([8, 3, image_size, image_size], (tch::Kind::Float, tch::Device::Cpu))?;
    let mut tracker = StreamingTracker::new(StreamConfig::default());
    let scale = image_size as f32 / 1024.0;
    for obj in 0..objects {
        tracker.add_prompt(obj as u64 + 1, click_at(obj, scale)?);
    }
    let mut report = Vec::new();
    let started = std::time::Instant::now();
    tch::no_grad(|| -> anyhow::Result<()> {
        for f in 0..frames {
            let feats = sam.frame_features(&clip.f_get((f % 8) as i64)?.f_unsqueeze(0)?)?;
            tracker.step(&sam, f, &feats)?;
            if at.contains(&(f + 1)) {
                report.push((f + 1, rss_mib()));
                eprintln!("[{:.0} s] stream frame {}", started.elapsed().as_secs_f64(), f + 1);
            }
        }
        Ok(())
    })?;
    Ok(report)
}
