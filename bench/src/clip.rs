//! `ocellus-bench clip`: zero-shot labels per second for 1 and 16 track crops (CLIP image
//! tower, normalization, classifier, softmax, argmax) against open_clip on this machine, same
//! model shape, threads and batch, fp32 CPU, random weights.

use std::time::Instant;

use anyhow::Context as _;
use ocellus_perception::clip::zero_shot::LOGIT_SCALE;
use ocellus_perception::clip::{Clip, normalize};
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_clip_reference.py");
/// Classes of the benchmark vocabulary.
const CLASSES: i64 = 10;

/// `ocellus-bench clip` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ClipBenchArgs {
    /// open_clip model.
    #[arg(long, default_value = "ViT-B-32-quickgelu")]
    pub model: String,
    /// Tracks (crops) per frame to time.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub tracks: Vec<i64>,
    /// Intra-op threads for both.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs per case (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the comparison and prints a table.
pub fn run(args: &ClipBenchArgs) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let clip = crate::random::<Clip>(&args.model, &())?;
    let config = clip.config().clone();
    let classifier = normalize(&Tensor::f_randn([CLASSES, config.embed_dim], (Kind::Float, Device::Cpu))?)?.f_t_()?; // [embed, classes]
    let mut ours = Vec::new();
    for &n in &args.tracks {
        let x = Tensor::f_randn([n, 3, 224, 224], (Kind::Float, Device::Cpu))?; // [N, 3, 224, 224]
        let mut times = Vec::new();
        for i in 0..=args.iters {
            let start = Instant::now();
            let labels: Vec<i64> = tch::no_grad(|| -> anyhow::Result<Vec<i64>> {
                let logits = normalize(&clip.encode_image(&x)?)?.f_matmul(&classifier)?.f_mul_scalar(LOGIT_SCALE)?;
                Ok(Vec::<i64>::try_from(logits.f_softmax(-1, None::<Kind>)?.f_argmax(-1, false)?)?)
            })?;
            anyhow::ensure!(labels.len() == n as usize);
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        ours.push((n, median(times)));
    }
    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(REFERENCE_SCRIPT).arg(&args.model).arg(args.threads.to_string()).arg(args.iters.to_string());
    cmd.args(args.tracks.iter().map(i64::to_string));
    let output = cmd.output().context("running the open_clip reference")?;
    anyhow::ensure!(output.status.success(), "reference failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("no reference output")?;
    let reference: serde_json::Value = serde_json::from_str(line).context("reference output")?;
    println!("{} zero-shot labelling, {} threads, fp32 CPU ({CLASSES} classes)", args.model, args.threads);
    println!("{:>7} {:>14} {:>16} {:>7}", "tracks", "ocellus lbl/s", "open_clip lbl/s", "ratio");
    for (n, secs) in ours {
        let reference = reference[n.to_string()].as_f64().context("reference timing missing")?;
        let (ours, theirs) = (n as f64 / secs, n as f64 / reference);
        println!("{n:>7} {ours:>14.2} {theirs:>16.2} {:>7.2}", ours / theirs);
    }
    Ok(())
}
