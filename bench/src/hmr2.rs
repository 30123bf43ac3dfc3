//! `ocellus-bench hmr2`: HMR 2.0 (the ViT-H backbone and the SMPL head, full size) per batch
//! of person crops against the official modules on this machine: same weights (seeded), crops
//! and threads, fp32 CPU. The official modules come from a checkout of 4D-Humans (`--repo`),
//! which is not on the package registry.

use std::time::Instant;

use anyhow::Context as _;
use ocellus_perception::hmr2::Hmr2;
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_hmr2_reference.py");

/// `ocellus-bench hmr2` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Hmr2BenchArgs {
    /// A checkout of github.com/shubham-goel/4D-Humans (the official modules).
    #[arg(long)]
    pub repo: std::path::PathBuf,
    /// Batch sizes (crops per forward).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub batches: Vec<i64>,
    /// Intra-op threads for both.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs per batch size (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the comparison and prints a table.
pub fn run(args: &Hmr2BenchArgs, scratch: &std::path::Path) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let model = crate::random::<Hmr2>(ocellus_perception::hmr2::HMR2, &())?;
    let weights = scratch.join("hmr2.bench.safetensors");
    model.vs.save(&weights)?;
    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    println!(
        "HMR 2.0 (ViT-H/16 backbone + SMPL head), 256x256 crops, {} threads, fp32 CPU, median of {}",
        args.threads, args.runs
    );
    println!(
        "{:<6} {:>10} {:>12} {:>10} {:>14} {:>7}",
        "batch", "ms", "official ms", "crops/s", "official crops/s", "ratio"
    );
    for &batch in &args.batches {
        let crops = Tensor::f_randn([batch, 3, 256, 256], (Kind::Float, Device::Cpu))?;
        let input = scratch.join("hmr2.bench.input.safetensors");
        Tensor::write_safetensors(&[("crops", &crops)], &input)?;
        let mut times = Vec::new();
        let mut checksum = 0.0;
        for i in 0..=args.runs {
            let start = Instant::now();
            let out = tch::no_grad(|| model.forward(&crops))?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            checksum = out.features.f_abs()?.f_sum(Kind::Double)?.double_value(&[]);
        }
        let ours = median(times);
        let output = std::process::Command::new(&python)
            .arg("-c")
            .arg(REFERENCE_SCRIPT)
            .arg(&args.repo)
            .args([&weights, &input])
            .args([args.threads.to_string(), args.runs.to_string()])
            .output()
            .context("running the official modules")?;
        std::fs::remove_file(&input).ok();
        anyhow::ensure!(output.status.success(), "reference failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reference: serde_json::Value =
            serde_json::from_str(stdout.lines().last().context("no reference output")?).context("reference output")?;
        let theirs = reference["ms"].as_f64().context("reference time")?;
        let their_sum = reference["features"].as_f64().context("reference checksum")?;
        anyhow::ensure!(
            (checksum - their_sum).abs() <= 1e-4 * their_sum.abs(),
            "the two computed different features (|x| sums {checksum} vs {their_sum})"
        );
        let rate = |ms: f64| batch as f64 * 1e3 / ms;
        println!(
            "{batch:<6} {ours:>10.0} {theirs:>12.0} {:>10.2} {:>14.2} {:>7.2}",
            rate(ours),
            rate(theirs),
            ours / theirs
        );
    }
    std::fs::remove_file(&weights).ok();
    Ok(())
}
