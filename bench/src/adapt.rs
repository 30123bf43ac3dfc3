//! Evidence that `ocellus adapt` helps, on a synthetic domain: the procedurally generated
//! scenes `tests/fixtures/generate_train.py` writes (a floor-like background, one shape: disk,
//! square, triangle or cross).
//!
//! 1. The unlabelled frames go through a pipeline (image-sequence source → Rerun sink) into a
//!    recording, as a robot's footage would.
//! 2. `ocellus adapt` trains Hiera-T on it from the starting weights (seeded: what a robot has
//!    without a download); its report gives the MAE loss on held-out frames before and after.
//! 3. A linear probe (multinomial logistic regression on the mean- and max-pooled feature maps of
//!    every stage, standardized, full batch) is fitted on 75 % of the labelled frames and scored
//!    on the rest, once on the starting features and once on the adapted ones.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use ocellus_kernels::DType;
use ocellus_kernels::optim::{AdamW, AdamWConfig};
use ocellus_perception::backbone::Backbone;
use ocellus_perception::model::{ModelSpec, WeightsSource};
use ocellus_pipelines::adapt::{AdaptArgs, AdaptReport};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The backbone adapted.
const MODEL: &str = "hiera_tiny_224";
/// Share of the labelled frames the probe is fitted on.
const PROBE_TRAIN_SHARE: f64 = 0.75;
/// Full-batch optimizer steps of the probe, its learning rate and L2 weight.
const PROBE_STEPS: u64 = 500;
const PROBE_LR: f64 = 1e-2;
const PROBE_DECAY: f64 = 1e-4;

/// `ocellus-bench adapt`.
#[derive(Debug, Args)]
pub struct AdaptBenchArgs {
    /// The synthetic domain (`synthetic/` of the fixtures: `train/`, `probe/`, `labels.json`).
    #[arg(long)]
    pub scenes: PathBuf,
    /// Adaptation steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Base learning rate of `adapt`.
    #[arg(long, default_value_t = 1.5e-3)]
    pub blr: f64,
    /// Seed of the starting weights and of every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads of libtorch.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Working folder (recording, weights, `adapt-evidence.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Only the probe, on the weights and report a previous run left in `--out`.
    #[arg(long)]
    pub probe_only: bool,
}

/// What the bench found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    /// The adaptation run's report (held-out MAE loss before/after, steps/s).
    pub adapt: AdaptReport,
    /// Probe accuracy on the held-out labelled frames, starting features.
    pub probe_accuracy_before: f64,
    /// The same with the adapted features.
    pub probe_accuracy_after: f64,
    /// Labelled frames the probe was fitted / scored on.
    pub probe_train: usize,
    /// See `probe_train`.
    pub probe_test: usize,
}

/// Records the unlabelled frames through a pipeline into `out/scenes.rrd`.
fn record(scenes: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let frames = std::fs::read_dir(scenes.join("train"))?.count();
    let rrd = out.join("scenes.rrd");
    let config = out.join("record.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"floor\"\npreset = {{ kind = \"file\", path = \"{}\", fps = 10, frames = {frames} }}\n\n\
             [[sink]]\nkind = \"rerun\"\ninputs = [\"floor\"]\nedge = {{ policy = \"block\", depth = 8 }}\nsave = \"{}\"\n",
            scenes.join("train").join("%05d.png").display(),
            rrd.display()
        ),
    )?;
    let run = ocellus_pipelines::cli::RunArgs { config, rerun: Default::default() };
    run.run()?;
    Ok(rrd)
}

/// Mean and max of every stage's feature map, per probe frame: `[N, 2 × ΣC]`.
fn features(weights: &Path, scenes: &Path, count: usize) -> anyhow::Result<Tensor> {
    let spec = ModelSpec {
        name: MODEL.into(),
        weights: WeightsSource::File(weights.to_path_buf()),
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let backbone = spec.load::<Backbone>()?;
    let transform = backbone.transform(None);
    let mut rows = Vec::with_capacity(count);
    for i in 0..count {
        let path = scenes.join("probe").join(format!("{i:05}.png"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (layout, pixels) = ocellus_wire::compressed::decode_rgb(ocellus_wire::compressed::Kind::Png, &bytes)?;
        let x = transform.apply(&pixels, &layout, Device::Cpu)?;
        let mut pooled = Vec::new();
        for map in backbone.forward(&x)? {
            pooled.push(map.f_mean_dim(&[2i64, 3][..], false, None::<Kind>)?); // [1, C]
            pooled.push(map.f_flatten(2, -1)?.f_amax(&[2i64][..], false)?); // [1, C]
        }
        rows.push(Tensor::f_cat(&pooled, 1)?);
    }
    Ok(Tensor::f_cat(&rows, 0)?)
}

/// Accuracy on the test split of a linear probe fitted on the train split.
fn probe(features: &Tensor, labels: &Tensor, train: i64, classes: i64) -> anyhow::Result<f64> {
    let (n, d) = features.size2()?;
    let (xtr, xte) = (features.f_narrow(0, 0, train)?, features.f_narrow(0, train, n - train)?);
    let (ytr, yte) = (labels.f_narrow(0, 0, train)?, labels.f_narrow(0, train, n - train)?);
    let mean = xtr.f_mean_dim(0, true, None::<Kind>)?;
    let std = xtr.f_std_dim(0, true, true)?.f_clamp_min(1e-6)?;
    let (xtr, xte) = (xtr.f_sub(&mean)?.f_div(&std)?, xte.f_sub(&mean)?.f_div(&std)?);
    let w = Tensor::f_zeros([d, classes], (Kind::Float, Device::Cpu))?.set_requires_grad(true);
    let b = Tensor::f_zeros([classes], (Kind::Float, Device::Cpu))?.set_requires_grad(true);
    let params = [("w".to_string(), w.shallow_clone(), true), ("b".to_string(), b.shallow_clone(), false)];
    let config = AdamWConfig { lr: PROBE_LR, weight_decay: PROBE_DECAY, ..AdamWConfig::default() };
    let mut opt = AdamW::new(params, config)?;
    for _ in 0..PROBE_STEPS {
        opt.zero_grad();
        let logits = xtr.f_matmul(&w)?.f_add(&b)?;
        logits.f_cross_entropy_loss::<Tensor>(&ytr, None, tch::Reduction::Mean, -100, 0.0)?.f_backward()?;
        opt.step(PROBE_LR)?;
    }
    let predicted = tch::no_grad(|| xte.f_matmul(&w)?.f_add(&b)?.f_argmax(1, false))?;
    Ok(predicted.f_eq_tensor(&yte)?.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?.f_double_value(&[])?)
}

/// Runs the bench.
pub fn run(args: &AdaptBenchArgs) -> anyhow::Result<Evidence> {
    tch::set_num_threads(args.threads);
    std::fs::create_dir_all(&args.out)?;
    let labels_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(args.scenes.join("labels.json")).context("labels.json")?)?;
    let labels: Vec<i64> =
        labels_json["labels"].as_array().context("labels")?.iter().filter_map(|v| v.as_i64()).collect();
    let classes = labels_json["classes"].as_array().context("classes")?.len() as i64;
    let start = args.out.join("start.safetensors");
    let adapted = args.out.join("adapted.safetensors");
    let report_path = args.out.join("adapt.json");
    let adapt: AdaptReport = if args.probe_only {
        serde_json::from_str(&std::fs::read_to_string(&report_path).context("adapt.json of a previous run")?)?
    } else {
        let rrd = record(&args.scenes, &args.out)?;
        ocellus_pipelines::tools::init(MODEL, args.seed as i64, &start)?;
        ocellus_pipelines::adapt::run(&AdaptArgs {
            model: MODEL.into(),
            weights: Some(start.clone()),
            random_weights: None,
            decoder: None,
            recordings: vec![rrd],
            config: None,
            collect: std::time::Duration::from_secs(60),
            camera: None,
            steps: args.steps,
            minutes: None,
            stop_at: None,
            batch: args.batch,
            accum: 1,
            blr: args.blr,
            min_lr: 0.0,
            warmup_steps: None,
            weight_decay: 0.05,
            mask_ratio: 0.6,
            device: "cpu".into(),
            mixed_precision: false,
            max_frames: 1024,
            seed: args.seed,
            checkpoint: None,
            checkpoint_every: 100,
            threads: Some(args.threads),
            out: adapted.clone(),
            report: Some(report_path),
        })?
    };
    let labels_t = Tensor::from_slice(&labels);
    let train = (labels.len() as f64 * PROBE_TRAIN_SHARE) as i64;
    let before = probe(&features(&start, &args.scenes, labels.len())?, &labels_t, train, classes)?;
    let after = probe(&features(&adapted, &args.scenes, labels.len())?, &labels_t, train, classes)?;
    let evidence = Evidence {
        adapt,
        probe_accuracy_before: before,
        probe_accuracy_after: after,
        probe_train: train as usize,
        probe_test: labels.len() - train as usize,
    };
    println!(
        "| {MODEL}, {} steps × {} images | held-out MAE loss | linear probe accuracy ({} classes, {} test frames) |",
        evidence.adapt.end_step, args.batch, classes, evidence.probe_test
    );
    println!("|---|---:|---:|");
    let (lb, la) = (
        evidence.adapt.held_out_loss_before.unwrap_or(f64::NAN),
        evidence.adapt.held_out_loss_after.unwrap_or(f64::NAN),
    );
    println!("| starting weights | {lb:.4} | {before:.3} |");
    println!("| adapted | {la:.4} | {after:.3} |");
    println!("steps/s: {:.3}", evidence.adapt.steps_per_s);
    std::fs::write(args.out.join("adapt-evidence.json"), serde_json::to_string_pretty(&evidence)?)?;
    Ok(evidence)
}
