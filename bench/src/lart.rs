//! `ocellus-bench lart`: LART (full size: depth 16, every head the actor reads) per window
//! against the official model on this machine: same weights (seeded), tracklets and threads,
//! fp32 CPU, for the official demo's one person per clip, five people per clip, and eight
//! one-person clips in one batch. The official model comes from checkouts of LART and PHALP
//! (`--repo`, `--phalp`), which are not on the package registry.

use std::time::Instant;

use anyhow::Context as _;
use ocellus_perception::lart::transformer::LartInput;
use ocellus_perception::lart::{LART, Lart, LartConfig};
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_lart_reference.py");
/// (people per clip, clips) timed.
const SHAPES: [(i64, i64); 3] = [(1, 1), (5, 1), (1, 8)];

/// `ocellus-bench lart` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LartBenchArgs {
    /// A checkout of github.com/brjathu/LART.
    #[arg(long)]
    pub repo: std::path::PathBuf,
    /// A checkout of github.com/brjathu/PHALP (LART's SMPL head).
    #[arg(long)]
    pub phalp: std::path::PathBuf,
    /// Intra-op threads for both.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs per shape (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the comparison and prints a table.
pub fn run(args: &LartBenchArgs, scratch: &std::path::Path) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    println!("LART (depth 16, T = 125), {} threads, fp32 CPU, median of {}", args.threads, args.runs);
    println!("{:<8} {:<6} {:>8} {:>12} {:>7}", "people", "clips", "ms", "official ms", "ratio");
    for (people, clips) in SHAPES {
        let config = LartConfig { max_people: people, ..LartConfig::default() };
        let model = crate::random::<Lart>(LART, &config)?;
        let weights = scratch.join("lart.bench.safetensors");
        model.vs.save(&weights)?;
        let shape = |c: i64| [clips, config.frame_length, people, c];
        let opts = (Kind::Float, Device::Cpu);
        let (pose, joints, app) = (
            Tensor::f_randn(shape(229), opts)?,
            Tensor::f_randn(shape(135), opts)?,
            Tensor::f_randn(shape(2048), opts)?,
        );
        let (has, mask) = (Tensor::f_ones(shape(1), opts)?, Tensor::f_zeros(shape(1), opts)?);
        let input = scratch.join("lart.bench.input.safetensors");
        Tensor::write_safetensors(
            &[
                ("pose_shape", &pose),
                ("joints_3D", &joints),
                ("apperance_emb", &app),
                ("has_detection", &has),
                ("mask_detection", &mask),
            ],
            &input,
        )?;
        let data = LartInput {
            pose_shape: pose,
            joints_3d: Some(joints),
            apperance_emb: Some(app),
            has_detection: has,
            mask_detection: mask,
        };
        let mut times = Vec::new();
        let mut checksum = 0.0;
        for i in 0..=args.runs {
            let start = Instant::now();
            let out = tch::no_grad(|| model.forward(&data))?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            checksum = out.ava_logits.f_abs()?.f_sum(Kind::Double)?.double_value(&[]);
        }
        let ours = median(times);
        let output = std::process::Command::new(&python)
            .arg("-c")
            .arg(REFERENCE_SCRIPT)
            .args([&args.repo, &args.phalp, &weights, &input])
            .args([people.to_string(), args.threads.to_string(), args.runs.to_string()])
            .output()
            .context("running the official model")?;
        std::fs::remove_file(&input).ok();
        std::fs::remove_file(&weights).ok();
        anyhow::ensure!(output.status.success(), "reference failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reference: serde_json::Value =
            serde_json::from_str(stdout.lines().last().context("no reference output")?).context("reference output")?;
        let theirs = reference["ms"].as_f64().context("reference time")?;
        let their_sum = reference["ava"].as_f64().context("reference checksum")?;
        anyhow::ensure!(
            (checksum - their_sum).abs() <= 1e-4 * their_sum.abs(),
            "the two computed different logits (|x| sums {checksum} vs {their_sum})"
        );
        println!("{people:<8} {clips:<6} {ours:>8.1} {theirs:>12.1} {:>7.2}", ours / theirs);
    }
    Ok(())
}
