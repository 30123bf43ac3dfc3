//! Training memory of the reversible ViT (or the reversible Hiera, `--arch hiera`: depth = blocks
//! of its third stage) against the same network under ordinary autograd, by depth: one child
//! process per (mode, depth) so that each peak RSS is its own.
//!
//! A child builds the model on seeded weights, takes one warm-up step (allocating the
//! gradients), records its resident set, resets the kernel's peak (`/proc/self/clear_refs`,
//! value 5) and takes one measured step (forward, cross-entropy, backward). Reported per step:
//! peak − resident before it, i.e. the activations and temporaries training needs beyond the
//! weights and gradients. glibc's mmap threshold is pinned in the children so that freed tensors
//! go back to the system and the resident set follows what is alive.
//!
//! On CUDA (`--device cuda`, the device check) the child reads the GPU's memory in use
//! (`nvidia-smi`) once its context exists and again after two steps: the caching allocator
//! keeps every block it reserved, so the difference is its peak, from which the weights and
//! gradients are subtracted. The children run one after another, so nothing else moves it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use ocellus_perception::hiera::HieraConfig;
use ocellus_perception::rev_hiera::RevHiera;
use ocellus_perception::revvit::{RevVit, RevVitConfig};
use ocellus_perception::weights;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// glibc's mmap threshold in the children: allocations above it are mapped and unmapped.
const MMAP_THRESHOLD: &str = "65536";
/// Seed of the weights and the batch.
const SEED: i64 = 21;

/// How a child trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reversible backpropagation (activations rebuilt).
    Reversible,
    /// Ordinary autograd (activations kept).
    Vanilla,
}

/// Which reversible network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The reversible ViT (minREV's layout); depth = blocks.
    Vit,
    /// The reversible Hiera (`--embed-dim`/`--heads` of its first stage, Hiera-T's stages
    /// `[1, 2, depth, 2]`); depth = blocks of the third stage.
    Hiera,
}

/// Blocks of a reversible Hiera's first, second and fourth stage in the benchmark (Hiera-T's).
const HIERA_OTHER_STAGES: [usize; 3] = [1, 2, 2];

/// `ocellus-bench revvit`.
#[derive(Debug, Clone, Args)]
pub struct RevVitBenchArgs {
    /// Which reversible network.
    #[arg(long, value_enum, default_value = "vit")]
    pub arch: Arch,
    /// Depths to measure.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    pub depths: Vec<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Width of each stream.
    #[arg(long, default_value_t = 192)]
    pub embed_dim: i64,
    /// Attention heads.
    #[arg(long, default_value_t = 3)]
    pub heads: i64,
    /// Input side (pixels).
    #[arg(long, default_value_t = 64)]
    pub image: i64,
    /// Patch side (pixels).
    #[arg(long, default_value_t = 4)]
    pub patch: i64,
    /// Threads of libtorch.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// `cpu` (peak RSS) or `cuda` / `cuda:N` (GPU memory the caching allocator reserved).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Folder for `revvit.json` (`rev_hiera.json` with `--arch hiera`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// (child process) Measure this depth only and print one JSON line.
    #[arg(long, hide = true)]
    pub child_depth: Option<usize>,
    /// (child process) In this mode.
    #[arg(long, hide = true, value_enum)]
    pub child_mode: Option<Mode>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Blocks.
    pub depth: usize,
    /// Training mode.
    pub mode: Mode,
    /// Parameters (MiB, fp32).
    pub params_mib: f64,
    /// Resident set before the measured step (MiB; on CUDA: the weights and gradients).
    pub resident_mib: f64,
    /// Peak of the measured step above it (MiB; on CUDA: reserved above the weights and
    /// gradients).
    pub step_peak_mib: f64,
    /// Wall time of the measured step (s).
    pub step_s: f64,
}

fn status_mib(field: &str) -> anyhow::Result<f64> {
    crate::proc_status_mib(field).with_context(|| format!("no {field} in /proc/self/status"))
}

fn hiera_config(args: &RevVitBenchArgs, depth: usize) -> HieraConfig {
    let [first, second, last] = HIERA_OTHER_STAGES;
    HieraConfig {
        input_size: vec![args.image, args.image],
        embed_dim: args.embed_dim,
        num_heads: args.heads,
        num_classes: 10,
        stages: vec![first, second, depth, last],
        ..HieraConfig::default()
    }
}

/// The network a child trains.
enum Network {
    Vit(Box<RevVit>),
    Hiera(Box<RevHiera>),
}

fn config(args: &RevVitBenchArgs, depth: usize) -> RevVitConfig {
    RevVitConfig {
        embed_dim: args.embed_dim,
        n_head: args.heads,
        depth,
        patch_size: [args.patch, args.patch],
        image_size: [args.image, args.image],
        num_classes: 10,
    }
}

/// Memory in use on GPU `index`, MiB, as `nvidia-smi` reports it.
fn gpu_used_mib(index: usize) -> anyhow::Result<f64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", &format!("--id={index}")])
        .output()
        .context("running nvidia-smi")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| format!("nvidia-smi printed {text:?}"))
}

/// The child: one model, one warm-up step, one measured step.
fn child(args: &RevVitBenchArgs, depth: usize, mode: Mode) -> anyhow::Result<Measurement> {
    tch::set_num_threads(args.threads);
    let device = ocellus_kernels::parse_device(&args.device)?;
    let gpu_before = match device {
        Device::Cuda(i) => {
            let _context = Tensor::f_zeros([1], (Kind::Float, device))?;
            crate::device::synchronize(device);
            Some(gpu_used_mib(i)?)
        }
        _ => None,
    };
    let vs = VarStore::new(device);
    let (model, classes) = match args.arch {
        Arch::Vit => {
            let config = config(args, depth);
            (Network::Vit(Box::new(RevVit::new(&vs.root(), &config)?)), config.num_classes)
        }
        Arch::Hiera => {
            let config = hiera_config(args, depth);
            (Network::Hiera(Box::new(RevHiera::new(&vs.root(), &config)?)), config.num_classes)
        }
    };
    weights::init_seeded(&vs, SEED)?;
    let (x, labels) = ocellus_kernels::seeded(SEED + 1, || {
        (
            Tensor::randn([args.batch, 3, args.image, args.image], (Kind::Float, device)),
            Tensor::randint(classes, [args.batch], (Kind::Int64, device)),
        )
    });
    let loss_of = |logits: &Tensor| -> ocellus_perception::Result<Tensor> {
        Ok(logits.f_cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, -100, 0.0)?)
    };
    let step = || -> anyhow::Result<()> {
        match (&model, mode) {
            (Network::Vit(m), Mode::Reversible) => {
                let _loss = m.forward_backward(&x, loss_of)?;
            }
            (Network::Vit(m), Mode::Vanilla) => loss_of(&m.forward(&x)?)?.f_backward()?,
            (Network::Hiera(m), Mode::Reversible) => {
                let _loss = m.forward_backward(&x, loss_of)?;
            }
            (Network::Hiera(m), Mode::Vanilla) => {
                let logits = m.forward(&x, false)?.logits.context("the reversible Hiera has no head")?;
                loss_of(&logits)?.f_backward()?
            }
        }
        Ok(())
    };
    step()?;
    for mut v in vs.trainable_variables() {
        v.zero_grad();
    }
    let params: i64 = vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum();
    let params_mib = params as f64 * 4.0 / (1024.0 * 1024.0);
    if let (Device::Cuda(i), Some(before)) = (device, gpu_before) {
        let start = Instant::now();
        step()?;
        crate::device::synchronize(device);
        let step_s = start.elapsed().as_secs_f64();
        let reserved = gpu_used_mib(i)? - before;
        let kept = 2.0 * params_mib; // weights and gradients
        return Ok(Measurement { depth, mode, params_mib, resident_mib: kept, step_peak_mib: reserved - kept, step_s });
    }
    let resident = status_mib("VmRSS:")?;
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak resident set")?;
    let start = Instant::now();
    step()?;
    let step_s = start.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:")?;
    Ok(Measurement { depth, mode, params_mib, resident_mib: resident, step_peak_mib: peak - resident, step_s })
}

/// What the table measures.
pub fn title(args: &RevVitBenchArgs) -> String {
    let what = if args.device.starts_with("cuda") {
        "GPU memory the caching allocator reserved above the weights and gradients"
    } else {
        "CPU peak RSS above the resident weights and gradients"
    };
    let network = match args.arch {
        Arch::Vit => format!("RevViT, patch {}, width {} ×2 streams", args.patch, args.embed_dim),
        Arch::Hiera => {
            let [first, second, last] = HIERA_OTHER_STAGES;
            format!(
                "reversible Hiera, stages [{first}, {second}, depth, {last}], width {} (first stage) ×2 streams",
                args.embed_dim
            )
        }
    };
    format!(
        "{network}: training step on {}, batch {}, {}×{} px, {} threads ({what})",
        args.device, args.batch, args.image, args.image, args.threads
    )
}

/// Runs the benchmark (or, with the hidden child arguments, one measurement).
pub fn run(args: &RevVitBenchArgs) -> anyhow::Result<Vec<Measurement>> {
    if let (Some(depth), Some(mode)) = (args.child_depth, args.child_mode) {
        let m = child(args, depth, mode)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(vec![m]);
    }
    let exe = std::env::current_exe()?;
    let mut all = Vec::new();
    for &depth in &args.depths {
        for mode in [Mode::Vanilla, Mode::Reversible] {
            let mode_name = serde_json::to_value(mode)?.as_str().unwrap_or_default().to_string();
            let out = Command::new(&exe)
                .env("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
                .args(["revvit", "--child-depth", &depth.to_string(), "--child-mode", &mode_name])
                .args(["--arch", if args.arch == Arch::Hiera { "hiera" } else { "vit" }])
                .args(["--batch", &args.batch.to_string(), "--embed-dim", &args.embed_dim.to_string()])
                .args(["--heads", &args.heads.to_string(), "--image", &args.image.to_string()])
                .args(["--patch", &args.patch.to_string(), "--threads", &args.threads.to_string()])
                .args(["--device", &args.device])
                .output()?;
            if !out.status.success() {
                bail!("depth {depth} {mode_name}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let line = String::from_utf8_lossy(&out.stdout);
            let m: Measurement = serde_json::from_str(line.lines().last().unwrap_or_default())
                .with_context(|| format!("child output {line:?}"))?;
            all.push(m);
        }
    }
    println!("{}", title(args));
    println!(
        "| depth | params MiB | ordinary MiB | reversible MiB | ordinary / reversible | ordinary s | reversible s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for pair in all.chunks(2) {
        if let [v, r] = pair {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
                v.depth,
                v.params_mib,
                v.step_peak_mib,
                r.step_peak_mib,
                v.step_peak_mib / r.step_peak_mib.max(f64::MIN_POSITIVE),
                v.step_s,
                r.step_s
            );
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(if args.arch == Arch::Hiera { "rev_hiera.json" } else { "revvit.json" }),
            serde_json::to_string_pretty(&all)?,
        )?;
    }
    Ok(all)
}
