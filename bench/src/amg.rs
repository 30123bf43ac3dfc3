//! `ocellus-bench amg`: SAM 2 automatic mask generation per frame (the whole generator: image
//! encoding, the point grid in batches, filtering, NMS) against the official
//! `SAM2AutomaticMaskGenerator` on this machine: same weights (seeded), image, grid and
//! threads, fp32 CPU. Also what discovery costs per frame when it runs every `cadence` frames.

use std::time::Instant;

use anyhow::Context as _;
use ocellus_perception::sam2::Sam2;
use ocellus_perception::sam2::automatic_mask_generator::{AmgConfig, AutomaticMaskGenerator};
use ocellus_perception::sam2::image_predictor::ImagePredictor;
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_amg_reference.py");

/// `ocellus-bench amg` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AmgBenchArgs {
    /// SAM 2 model.
    #[arg(long, default_value = "sam2.1_hiera_tiny")]
    pub model: String,
    /// Image side (square, the model's input side: no resize).
    #[arg(long, default_value_t = 1024)]
    pub side: usize,
    /// Points per side of the grid.
    #[arg(long, default_value_t = 32)]
    pub points_per_side: usize,
    /// Intra-op threads for both.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Discovery's cadence (frames between runs) for the amortised cost.
    #[arg(long, default_value_t = 15)]
    pub cadence: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the comparison and prints a table.
pub fn run(args: &AmgBenchArgs, scratch: &std::path::Path) -> anyhow::Result<()> {
    tch::set_num_threads(args.threads);
    let sam = crate::random::<Sam2>(&args.model, &ocellus_perception::model::Sam2Options { image_size: None })?;
    let weights = scratch.join("amg.bench.safetensors");
    sam.vs.save(&weights)?;
    // A noise image: with seeded weights the content does not matter, the work is the same.
    let side = args.side as i64;
    let image = Tensor::f_randint(256, [side, side, 3], (Kind::Uint8, Device::Cpu))?; // [H, W, 3]
    let image_path = scratch.join("amg.image.safetensors");
    Tensor::write_safetensors(&[("image", &image)], &image_path)?;
    let rgb: Vec<u8> = Vec::try_from(image.f_flatten(0, -1)?)?;

    let config = AmgConfig { points_per_side: Some(args.points_per_side), ..AmgConfig::default() };
    let generator = AutomaticMaskGenerator::new(config)?;
    let mut times = Vec::new();
    let mut masks = 0;
    for i in 0..=args.runs {
        let mut predictor = ImagePredictor::new(&sam, Device::Cpu);
        let start = Instant::now();
        masks = generator.generate(&mut predictor, &rgb, args.side, args.side)?.len();
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ours = median(times);

    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(REFERENCE_SCRIPT)
        .args([&args.model, &weights.display().to_string(), &image_path.display().to_string()])
        .args([args.points_per_side.to_string(), args.threads.to_string(), args.runs.to_string()])
        .output()
        .context("running the official generator")?;
    std::fs::remove_file(&weights).ok();
    std::fs::remove_file(&image_path).ok();
    anyhow::ensure!(output.status.success(), "reference failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reference: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no reference output")?).context("reference output")?;
    let theirs = reference["ms"].as_f64().context("reference time")?;
    println!(
        "{} automatic mask generation, {}x{} image, {}x{} grid, {} threads, fp32 CPU, median of {}",
        args.model, args.side, args.side, args.points_per_side, args.points_per_side, args.threads, args.runs
    );
    println!("{:<10} {:>12} {:>12} {:>7} {:>8}", "", "ms/frame", "official ms", "ratio", "masks");
    println!("{:<10} {ours:>12.0} {theirs:>12.0} {:>7.2} {masks:>4}/{}", "generate", ours / theirs, reference["masks"]);
    println!(
        "discovery every {} frames: {:.0} ms per frame amortised (official generator: {:.0})",
        args.cadence,
        ours / args.cadence as f64,
        theirs / args.cadence as f64
    );
    Ok(())
}
