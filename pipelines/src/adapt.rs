//! `ocellus adapt`: keeps learning a Hiera backbone's features on the robot's own footage,
//! without labels, by MAE pre-training (`MaskedAutoencoderHiera`, as in MAWS's first stage).
//!
//! Data: the camera images of `.rrd` recordings, or what a pipeline configuration's sources
//! deliver during `--collect` (every camera, or one), at most `max_frames` of them chosen
//! uniformly (reservoir sampling, seeded) and kept at 256 pixels on the short
//! side as 8-bit RGB; every tenth is held out. Each training image is MAE's augmentation
//! (`RandomResizedCrop(224, scale=(0.2, 1.0))` with bicubic resampling, a horizontal flip with
//! probability ½, ImageNet normalization), each batch gets a fresh random mask.
//!
//! Training: AdamW (`betas (0.9, 0.95)`, decay 0.05 except 1-D parameters, biases and position
//! embeddings), learning rate `blr × effective batch / 256` with linear warm-up and cosine
//! decay, gradient accumulation, optionally fp16 autocast with dynamic loss scaling on CUDA
//! (`torch.amp.GradScaler`'s rules). All randomness of step `s`
//! comes from a seed derived from `(seed, s)`, so a checkpoint (weights, optimizer moments and
//! step counts, the step reached) resumes exactly: the resumed run ends with the same bits as
//! an uninterrupted one.
//!
//! Output: a weights file with the backbone's own keys (the adapted trunk, the backbone's
//! `norm` and `head` as they were), which the backbone actor and `ocellus weights` load as any
//! other; a JSON report with the held-out reconstruction loss before and after, train losses
//! and steps/s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use ocellus_io::recording;
use ocellus_kernels::optim::{AdamW, AdamWConfig, CosineSchedule};
use ocellus_kernels::{FrameLayout, Normalization, frame_to_tensor, parse_device};
use ocellus_perception::hiera::HieraConfig;
use ocellus_perception::hiera_mae::{self, HieraMaeConfig, MaskedAutoencoderHiera};
use ocellus_perception::weights;
use ocellus_runtime::message::Packet;
use ocellus_runtime::{Context, DropPolicy, EdgePolicy, Input, Pipeline, RuntimeError, Stage, stage_factory};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::PipelineConfig;
use crate::config::Fetching;

/// Short side of the stored frames (pixels): what `RandomResizedCrop` cuts from.
const STORED_SHORT_SIDE: usize = 256;
/// One frame in this many is held out for evaluation.
const HELD_OUT_EVERY: usize = 10;
/// `RandomResizedCrop`'s area range and aspect range (torchvision defaults, MAE's scale).
const CROP_SCALE: (f64, f64) = (0.2, 1.0);
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Tries of `RandomResizedCrop` before its centre-crop fallback.
const CROP_TRIES: usize = 10;
/// MAE's optimizer betas.
const BETAS: (f64, f64) = (0.9, 0.95);
/// The batch size MAE's learning rate is quoted for.
const LR_REFERENCE_BATCH: f64 = 256.0;
/// Train losses averaged at each end of the run in the report.
const LOSS_WINDOW: usize = 10;

/// `ocellus adapt` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AdaptArgs {
    /// The Hiera image backbone to adapt (`hiera_tiny_224` ... `hiera_huge_224`).
    #[arg(long)]
    pub model: String,
    /// Its weights (what `ocellus weights fetch|import` wrote); the output has the same keys.
    #[arg(long, required_unless_present = "random_weights")]
    pub weights: Option<PathBuf>,
    /// Start from seeded random weights instead (demonstrations and tests).
    #[arg(long, conflicts_with = "weights")]
    pub random_weights: Option<i64>,
    /// MAE heads to start from (`ocellus weights fetch mae_hiera_tiny_224`); without them the
    /// heads start from MAE's initialization, seeded.
    #[arg(long)]
    pub decoder: Option<PathBuf>,
    /// Recordings whose camera images are the training data.
    #[arg(long = "from", required_unless_present = "config", conflicts_with = "config")]
    pub recordings: Vec<PathBuf>,
    /// Or a pipeline configuration: its sources (only they: no model runs) are collected
    /// from for `--collect`, then training starts on what was kept.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long to collect from `--config`'s sources (`90s`, `10m`); sources that end sooner
    /// end it sooner.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub collect: Duration,
    /// Only this camera's images (default: every camera's).
    #[arg(long)]
    pub camera: Option<String>,
    /// Optimizer steps of the schedule.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Stop after this many minutes even if steps remain (a checkpoint is written; run again
    /// to go on).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Stop once this step is reached (a checkpoint is written; run again to go on).
    #[arg(long)]
    pub stop_at: Option<u64>,
    /// Images per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accum: u64,
    /// Base learning rate: the rate is `blr × batch × accum / 256`.
    #[arg(long, default_value_t = 1.5e-4)]
    pub blr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Warm-up steps (default: 5 % of the steps).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Fraction of mask units removed.
    #[arg(long, default_value_t = 0.6)]
    pub mask_ratio: f64,
    /// Device (`cpu`, `cuda`, `cuda:1`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// fp16 autocast with dynamic loss scaling (CUDA only).
    #[arg(long)]
    pub mixed_precision: bool,
    /// Most frames kept from the recordings or the sources (chosen uniformly).
    #[arg(long, default_value_t = 1024)]
    pub max_frames: usize,
    /// Seed of every draw (frames kept, crops, flips, masks, fresh heads).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint file: written every `--checkpoint-every` steps and at the end, resumed from
    /// when it exists.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Threads of libtorch on the CPU.
    #[arg(long)]
    pub threads: Option<i32>,
    /// The adapted backbone weights.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also write the report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptReport {
    /// Backbone.
    pub model: String,
    /// Frames used for training / held out.
    pub train_frames: usize,
    /// Frames held out.
    pub held_out_frames: usize,
    /// Images whose layout could not be read (skipped).
    pub skipped_images: u64,
    /// The step the run started from (0, or a checkpoint's).
    pub start_step: u64,
    /// The step reached.
    pub end_step: u64,
    /// Optimizer steps per second in this run.
    pub steps_per_s: f64,
    /// Mean train loss of the first and of the last steps of this run.
    pub train_loss_first: f64,
    /// See `train_loss_first`.
    pub train_loss_last: f64,
    /// MAE loss on the held-out frames (fixed crops and masks) before this run's training.
    pub held_out_loss_before: Option<f64>,
    /// The same after.
    pub held_out_loss_after: Option<f64>,
    /// Whether the schedule's last step was reached (the output is final).
    pub finished: bool,
}

/// The settings a checkpoint must agree with to be resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunIdentity {
    model: String,
    steps: u64,
    batch: i64,
    accum: u64,
    blr: f64,
    min_lr: f64,
    warmup_steps: u64,
    weight_decay: f64,
    mask_ratio: f64,
    seed: u64,
}

/// Dynamic loss scaling for fp16 autocast, with `torch.amp.GradScaler`'s rules: gradients of
/// the scaled loss are unscaled before the step; a step whose gradients are not finite is
/// skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a row it doubles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct LossScaler {
    scale: f64,
    good_steps: u64,
}

impl LossScaler {
    const INIT_SCALE: f64 = 65536.0;
    const GROWTH_INTERVAL: u64 = 2000;

    fn new() -> Self {
        Self { scale: Self::INIT_SCALE, good_steps: 0 }
    }

    /// Unscales every gradient; whether they are all finite (else the step is to be skipped).
    fn unscale(&mut self, vs: &VarStore) -> anyhow::Result<bool> {
        let mut finite = true;
        tch::no_grad(|| -> anyhow::Result<()> {
            for var in vs.trainable_variables() {
                let mut grad = var.grad();
                if grad.defined() {
                    let _ = grad.f_mul_scalar_(1.0 / self.scale)?;
                    finite &= grad.f_isfinite()?.f_all()?.f_int64_value(&[])? == 1;
                }
            }
            Ok(())
        })?;
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        Ok(finite)
    }
}

/// The sidecar of a checkpoint (`<checkpoint>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    identity: RunIdentity,
    step: u64,
    /// The loss scaler's state (mixed precision only).
    scaler: Option<LossScaler>,
}

/// Key prefixes of the checkpoint file.
const MODEL_PREFIX: &str = "model.";
const OPTIM_PREFIX: &str = "optim.";

/// Frames kept in memory: 8-bit RGB `[3, H, W]`.
struct Frames {
    train: Vec<Tensor>,
    held_out: Vec<Tensor>,
    skipped: u64,
}

/// At most `max` frames chosen uniformly from however many are offered (reservoir sampling,
/// seeded), each stored at `STORED_SHORT_SIDE` pixels on its short side.
struct Reservoir {
    max: usize,
    rng: StdRng,
    /// Frames offered so far.
    seen: usize,
    /// `(arrival order, frame)`.
    kept: Vec<(usize, Tensor)>,
    /// Frames that could not be read (counted, skipped).
    skipped: u64,
}

impl Reservoir {
    fn new(max: usize, seed: u64) -> Self {
        Self { max, rng: StdRng::seed_from_u64(seed), seen: 0, kept: Vec::new(), skipped: 0 }
    }

    /// Offers one frame; it replaces a kept one with probability `max / seen`.
    fn offer(&mut self, pixels: &[u8], layout: &FrameLayout) -> anyhow::Result<()> {
        let slot = if self.kept.len() < self.max {
            Some(self.kept.len())
        } else {
            Some(self.rng.random_range(0..=self.seen)).filter(|&j| j < self.max)
        };
        self.seen += 1;
        let Some(slot) = slot else { return Ok(()) };
        let (w, h) = (layout.width, layout.height);
        let scale = STORED_SHORT_SIDE as f64 / w.min(h) as f64;
        let size = ((h as f64 * scale).round() as usize, (w as f64 * scale).round() as usize);
        let rgb = frame_to_tensor(pixels, layout, Device::Cpu, Some(size), None)?
            .f_mul_scalar(255.0)?
            .f_round()?
            .f_to_kind(Kind::Uint8)?
            .f_squeeze_dim(0)?; // [1, 3, h, w] -> [3, h, w]
        if slot == self.kept.len() {
            self.kept.push((self.seen, rgb));
        } else {
            self.kept[slot] = (self.seen, rgb);
        }
        Ok(())
    }

    /// The kept frames in arrival order, every tenth held out (with fewer than
    /// `HELD_OUT_EVERY` frames nothing is held out); `from` names the data in the error when
    /// nothing was kept.
    fn into_frames(mut self, args: &AdaptArgs, from: &str) -> anyhow::Result<Frames> {
        if self.kept.is_empty() {
            let which = args
                .camera
                .as_deref()
                .map_or_else(|| "no camera images".to_owned(), |c| format!("no images of camera {c:?}"));
            bail!("{which} in {from}");
        }
        self.kept.sort_by_key(|(order, _)| *order);
        let (mut train, mut held_out) = (Vec::new(), Vec::new());
        for (i, (_, frame)) in self.kept.into_iter().enumerate() {
            if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 {
                held_out.push(frame);
            } else {
                train.push(frame);
            }
        }
        Ok(Frames { train, held_out, skipped: self.skipped })
    }
}

/// The training data: the recordings' camera images, or what `--config`'s sources deliver.
fn read_frames(args: &AdaptArgs) -> anyhow::Result<Frames> {
    match &args.config {
        Some(config) => collect_frames(args, config),
        None => read_recordings(args),
    }
}

/// Reads the recordings' camera images into the reservoir.
fn read_recordings(args: &AdaptArgs) -> anyhow::Result<Frames> {
    let mut reservoir = Reservoir::new(args.max_frames, args.seed);
    for path in &args.recordings {
        for chunk in recording::chunks(path).with_context(|| format!("reading {}", path.display()))? {
            let chunk = chunk.with_context(|| format!("reading {}", path.display()))?;
            let entity = recording::entity_of(&chunk);
            let Some(camera) = recording::camera_of_image(&entity) else { continue };
            if chunk.is_static() || args.camera.as_deref().is_some_and(|c| c != camera) {
                continue;
            }
            let mut skipped = 0;
            for image in recording::images_of(&chunk, &mut skipped) {
                reservoir.offer(&image.pixels, &image.layout)?;
            }
            reservoir.skipped += skipped;
        }
    }
    let from = args.recordings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    reservoir.into_frames(args, &from)
}

/// Queue in front of the collector: frames arriving while one is being stored wait here, the
/// oldest dropped beyond it (counted in the pipeline's report).
const COLLECT_QUEUE: usize = 8;

/// The stage that offers every frame of the sources to the reservoir.
struct Collector(Arc<Mutex<Reservoir>>);

impl Stage for Collector {
    fn process(&mut self, input: Input, _ctx: &mut Context) -> ocellus_runtime::Result<()> {
        let Packet::Frame(frame) = input.packet else { return Ok(()) };
        let mut reservoir =
            self.0.lock().map_err(|_| RuntimeError::Failed("the reservoir's lock is poisoned".into()))?;
        reservoir.offer(&frame.pixels, &frame.layout).map_err(|e| {
            reservoir.skipped += 1;
            RuntimeError::BadInput(format!("frame {} of {}: {e:#}", frame.meta.seq, frame.meta.camera))
        })
    }
}

/// Runs `config`'s sources (every one, or `--camera`) for `--collect` into the reservoir.
fn collect_frames(args: &AdaptArgs, path: &Path) -> anyhow::Result<Frames> {
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let config = PipelineConfig::load_with(path, Fetching::Sources { progress })?;
    let sources: Vec<&str> = config
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| args.camera.as_deref().is_none_or(|c| c == *name))
        .collect();
    if sources.is_empty() {
        let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        match &args.camera {
            Some(c) => bail!("{} has no source named {c:?} (its sources: {})", path.display(), names.join(", ")),
            None => bail!("{} has no sources to collect from", path.display()),
        }
    }
    let reservoir = Arc::new(Mutex::new(Reservoir::new(args.max_frames, args.seed)));
    let mut pipeline = Pipeline::new();
    pipeline.restart_policy(config.runtime.restart).metrics_every(config.runtime.metrics_every);
    for source in config.sources.iter().filter(|s| sources.contains(&s.name.as_str())) {
        pipeline.source(&source.name, source.kind.factory());
    }
    let policy = EdgePolicy::Queue { depth: COLLECT_QUEUE, drop: DropPolicy::Oldest };
    let shared = reservoir.clone();
    pipeline.stage("adapt", &sources, policy, stage_factory(move || Collector(shared.clone())));
    // Stop after `--collect` (as one Ctrl-C does: the sources end, what was sent is drained).
    let stop = pipeline.stop_handle();
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let duration = args.collect;
    let timer = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(duration) {
            stop.stop();
        }
    });
    eprintln!("collecting frames of {} for {}", sources.join(", "), humantime::format_duration(duration));
    let report = pipeline.run();
    drop(done_tx);
    let _ = timer.join();
    let report = report?;
    eprintln!("{report}");
    if let Some(failed) = report.failures().next() {
        bail!("source {} failed while collecting: {}", failed.name, failed.error.as_deref().unwrap_or("no message"));
    }
    let reservoir = Arc::try_unwrap(reservoir)
        .map_err(|_| anyhow::anyhow!("the collector outlived its pipeline"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("the reservoir's lock is poisoned"))?;
    reservoir.into_frames(args, &format!("what {} delivered", sources.join(", ")))
}

/// A crop `(top, left, height, width)` of an `h × w` image, as torchvision's
/// `RandomResizedCrop.get_params` draws it.
fn random_crop(rng: &mut StdRng, h: i64, w: i64) -> (i64, i64, i64, i64) {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..CROP_TRIES {
        let target = area * rng.random_range(CROP_SCALE.0..=CROP_SCALE.1);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as i64;
        let ch = (target / ratio).sqrt().round() as i64;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            return (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw), ch, cw);
        }
    }
    // Fallback: the whole image cut to the nearest allowed aspect, centred.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < CROP_RATIO.0 {
        ((w as f64 / CROP_RATIO.0).round() as i64, w)
    } else if in_ratio > CROP_RATIO.1 {
        (h, (h as f64 * CROP_RATIO.1).round() as i64)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// One crop resized to `side` (bicubic, as `RandomResizedCrop`), in `[0, 1]`: `[1, 3, side, side]`.
fn crop_resize(
    frame: &Tensor,
    (top, left, ch, cw): (i64, i64, i64, i64),
    side: i64,
    flip: bool,
) -> anyhow::Result<Tensor> {
    let crop = frame.f_narrow(1, top, ch)?.f_narrow(2, left, cw)?.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?;
    let resized = crop.f_unsqueeze(0)?.f_upsample_bicubic2d([side, side], false, None, None)?.f_clamp(0.0, 1.0)?;
    Ok(if flip { resized.f_flip([3])? } else { resized })
}

/// The seed of every draw of micro-batch `micro` of step `step`.
fn step_seed(seed: u64, step: u64, micro: u64) -> u64 {
    // SplitMix64's finalizer over the three numbers: distinct steps give unrelated seeds.
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A training batch: random frames, crops and flips, normalized, and a random mask.
fn training_batch(
    mae: &MaskedAutoencoderHiera,
    frames: &[Tensor],
    args: &AdaptArgs,
    seed: u64,
    side: i64,
    device: Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut images = Vec::with_capacity(args.batch as usize);
    for _ in 0..args.batch {
        let frame = &frames[rng.random_range(0..frames.len())];
        let (h, w) = (frame.size()[1], frame.size()[2]);
        let crop = random_crop(&mut rng, h, w);
        images.push(crop_resize(frame, crop, side, rng.random_bool(0.5))?);
    }
    let x = Normalization::IMAGENET.apply(&Tensor::f_cat(&images, 0)?.f_to_device(device)?)?;
    let mask_seed = (seed >> 1) as i64; // libtorch seeds are signed
    let mask = ocellus_kernels::seeded(mask_seed, || mae.random_mask(args.batch, args.mask_ratio, device))?;
    Ok((x, mask))
}

/// The held-out frames as a fixed evaluation set: centre crops and masks from a fixed seed.
fn held_out_loss(
    mae: &MaskedAutoencoderHiera,
    frames: &[Tensor],
    args: &AdaptArgs,
    side: i64,
    device: Device,
) -> anyhow::Result<Option<f64>> {
    if frames.is_empty() {
        return Ok(None);
    }
    let _no_grad = tch::no_grad_guard();
    let mut total = 0.0;
    for (i, frame) in frames.iter().enumerate() {
        let (h, w) = (frame.size()[1], frame.size()[2]);
        let s = h.min(w);
        let x = Normalization::IMAGENET
            .apply(&crop_resize(frame, ((h - s) / 2, (w - s) / 2, s, s), side, false)?.f_to_device(device)?)?;
        let mask = ocellus_kernels::seeded(i as i64, || mae.random_mask(1, args.mask_ratio, device))?;
        total += mae.forward(&x, args.mask_ratio, Some(&mask))?.loss.f_double_value(&[])?;
    }
    Ok(Some(total / frames.len() as f64))
}

/// Fills the MAE model: the trunk from the backbone weights (or seeded), the heads from
/// `--decoder` (or MAE's initialization). Returns the backbone's own tensors, for the output.
fn initial_weights(
    vs: &mut VarStore,
    args: &AdaptArgs,
    hiera: &HieraConfig,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let backbone: BTreeMap<String, Tensor> = match (&args.weights, args.random_weights) {
        (Some(path), _) => read_tensors(path)?.into_iter().collect(),
        (None, Some(seed)) => {
            let bvs = VarStore::new(Device::Cpu);
            let _model = ocellus_perception::hiera::Hiera::new(&bvs.root(), hiera)?;
            weights::init_seeded(&bvs, seed)?;
            bvs.variables().into_iter().map(|(k, v)| (k, v.detach())).collect()
        }
        (None, None) => bail!("--weights or --random-weights is required"),
    };
    let heads: HashMap<String, Tensor> = match &args.decoder {
        Some(path) => read_tensors(path)?.into_iter().filter(|(k, _)| !hiera_mae::is_trunk_key(k)).collect(),
        None => {
            hiera_mae::init_heads(vs, args.seed as i64)?;
            HashMap::new()
        }
    };
    let mut missing = Vec::new();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, mut var) in vs.variables() {
            let source = if hiera_mae::is_trunk_key(&name) {
                backbone.get(&name)
            } else if args.decoder.is_some() {
                heads.get(&name)
            } else {
                continue;
            };
            match source {
                Some(t) if t.size() == var.size() => {
                    var.f_copy_(t)?;
                }
                Some(t) => bail!("{name}: the weights have shape {:?}, {} has {:?}", t.size(), args.model, var.size()),
                None => missing.push(name),
            }
        }
        Ok(())
    })?;
    missing.sort();
    ensure!(missing.is_empty(), "keys missing from the starting weights: {}", missing.join(", "));
    Ok(backbone)
}

/// Every tensor of a safetensors file (its header and sizes checked first).
fn read_tensors(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    ocellus_kernels::safetensors::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn checkpoint_meta_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Writes the weights and optimizer state (safetensors) and the sidecar, each atomically.
fn save_checkpoint(path: &Path, vs: &VarStore, opt: &AdamW, meta: &CheckpointMeta) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (format!("{MODEL_PREFIX}{k}"), v.detach().to_device(Device::Cpu)))
        .collect();
    named.extend(opt.state()?.into_iter().map(|(k, v)| (format!("{OPTIM_PREFIX}{k}"), v.to_device(Device::Cpu))));
    write_atomically(path, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
    let text = serde_json::to_string_pretty(meta)?;
    write_atomically(&checkpoint_meta_path(path), |tmp| Ok(std::fs::write(tmp, &text)?))
}

/// Writes `path` through a `.partial` file renamed into place (its folder made first), so an
/// interrupted write never leaves half a file under the final name.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("partial");
    write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Restores a checkpoint written for the same run; returns its step.
fn load_checkpoint(
    path: &Path,
    vs: &VarStore,
    opt: &mut AdamW,
    identity: &RunIdentity,
) -> anyhow::Result<CheckpointMeta> {
    let meta_path = checkpoint_meta_path(path);
    let meta: CheckpointMeta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("reading {}", meta_path.display()))?;
    if &meta.identity != identity {
        bail!(
            "checkpoint {} was written by a different run ({:?}); this run is {:?}: remove it or pass the same settings",
            path.display(),
            meta.identity,
            identity
        );
    }
    let tensors = read_tensors(path)?;
    let mut model = HashMap::new();
    let mut optim = BTreeMap::new();
    for (k, v) in tensors {
        if let Some(name) = k.strip_prefix(MODEL_PREFIX) {
            model.insert(name.to_owned(), v);
        } else if let Some(name) = k.strip_prefix(OPTIM_PREFIX) {
            optim.insert(name.to_owned(), v);
        }
    }
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, mut var) in vs.variables() {
            let t = model.get(&name).with_context(|| format!("checkpoint {} has no {name}", path.display()))?;
            ensure!(t.size() == var.size(), "checkpoint {}: {name} has shape {:?}", path.display(), t.size());
            var.f_copy_(t)?;
        }
        Ok(())
    })?;
    opt.load_state(&optim)?;
    Ok(meta)
}

/// Writes the adapted backbone: the trunk from the MAE model, the rest as it was.
fn write_backbone(
    args: &AdaptArgs,
    vs: &VarStore,
    backbone: &BTreeMap<String, Tensor>,
    end_step: u64,
    hiera: &HieraConfig,
) -> anyhow::Result<()> {
    let trained = vs.variables();
    let named: Vec<(String, Tensor)> = backbone
        .iter()
        .map(|(k, v)| {
            (k.clone(), trained.get(k).map_or_else(|| v.shallow_clone(), |t| t.detach().to_device(Device::Cpu)))
        })
        .collect();
    write_atomically(&args.out, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
    let start = match (&args.weights, args.random_weights) {
        (Some(p), _) => p.display().to_string(),
        (None, seed) => format!("seed={}", seed.unwrap_or_default()),
    };
    let data = match &args.config {
        Some(config) => format!("the sources of {}", config.display()),
        None => args.recordings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
    };
    let source = format!("adapt {start} on {data} (MAE, {end_step} steps, seed {})", args.seed);
    weights::write_manifest(&args.out, &args.model, serde_json::to_value(hiera)?, source)?;
    Ok(())
}

/// Runs `ocellus adapt` as the command does: the first Ctrl-C during training stops it after
/// the current step as `--minutes` does (checkpoint, weights and report written), a second one
/// exits at once.
pub fn run_interruptible(args: &AdaptArgs) -> anyhow::Result<AdaptReport> {
    run_until(args, &ctrl_c_flag())
}

/// A flag the first Ctrl-C sets; the second exits the process (status 130). Listens on its own
/// thread with its own runtime, for the rest of the process.
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let listener = std::thread::Builder::new().name("adapt-ctrl-c".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                if set.swap(true, Ordering::SeqCst) {
                    eprintln!("interrupted again: exiting without writing");
                    std::process::exit(130);
                }
                eprintln!("interrupted: stopping after this step (Ctrl-C again exits at once)");
            }
        });
    });
    if let Err(e) = listener {
        tracing::warn!("Ctrl-C will not stop adapt cleanly: {e}");
    }
    flag
}

/// Runs `ocellus adapt` (Ctrl-C as the process has it).
pub fn run(args: &AdaptArgs) -> anyhow::Result<AdaptReport> {
    run_until(args, &AtomicBool::new(false))
}

/// Runs `ocellus adapt`, stopping after the step during which `stop` is set.
fn run_until(args: &AdaptArgs, stop: &AtomicBool) -> anyhow::Result<AdaptReport> {
    let hiera = HieraConfig::by_name(&args.model).filter(|c| c.input_size.len() == 2).with_context(|| {
        format!("--model {:?}: adapt takes a Hiera image model ({})", args.model, image_models().join(", "))
    })?;
    let config = HieraMaeConfig::by_name(&format!("mae_{}", args.model)).context("no MAE preset for this model")?;
    let device = parse_device(&args.device)?;
    ensure!(!args.mixed_precision || device.is_cuda(), "--mixed-precision needs a CUDA device (--device cuda)");
    ensure!(args.batch >= 1 && args.accum >= 1 && args.steps >= 1, "--batch, --accum and --steps must be at least 1");
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let frames = read_frames(args)?;
    if args.config.is_some() {
        // A Ctrl-C while collecting ended the collection (as in `ocellus run`), not the training.
        stop.store(false, Ordering::SeqCst);
    }
    ensure!(!frames.train.is_empty(), "no frames left to train on after holding out");
    let side = hiera.input_size[0];
    let mut vs = VarStore::new(device);
    let mae = MaskedAutoencoderHiera::new(&vs.root(), &config)?;
    let backbone = initial_weights(&mut vs, args, &hiera)?;
    let warmup_steps = args.warmup_steps.unwrap_or(args.steps / 20);
    let identity = RunIdentity {
        model: args.model.clone(),
        steps: args.steps,
        batch: args.batch,
        accum: args.accum,
        blr: args.blr,
        min_lr: args.min_lr,
        warmup_steps,
        weight_decay: args.weight_decay,
        mask_ratio: args.mask_ratio,
        seed: args.seed,
    };
    let lr = args.blr * (args.batch as f64 * args.accum as f64) / LR_REFERENCE_BATCH;
    let schedule = CosineSchedule { lr, min_lr: args.min_lr, warmup_steps, total_steps: args.steps };
    let params = vs.variables().into_iter().map(|(n, v)| {
        let decay = mae.weight_decay_applies(&n, v.dim());
        (n, v, decay)
    });
    let adamw = AdamWConfig { lr, betas: BETAS, eps: AdamWConfig::default().eps, weight_decay: args.weight_decay };
    let mut opt = AdamW::new(params, adamw)?;
    let (start_step, mut scaler) = match &args.checkpoint {
        Some(path) if path.exists() => {
            let meta = load_checkpoint(path, &vs, &mut opt, &identity)?;
            (meta.step, meta.scaler)
        }
        _ => (0, None),
    };
    if args.mixed_precision {
        scaler = scaler.or_else(|| Some(LossScaler::new()));
    }
    let held_out_loss_before = held_out_loss(&mae, &frames.held_out, args, side, device)?;
    let end = args.stop_at.map_or(args.steps, |s| s.min(args.steps));
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template("adapt {pos}/{len} [{bar:30}] {per_sec} loss {msg} ({eta})")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_position(start_step);
    let started = Instant::now();
    let deadline = args.minutes.map(|m| std::time::Duration::from_secs_f64(m * 60.0));
    let mut losses = Vec::new();
    let mut step = start_step;
    while step < end {
        if deadline.is_some_and(|d| started.elapsed() >= d) || stop.load(Ordering::SeqCst) {
            break;
        }
        opt.zero_grad();
        let mut step_loss = 0.0;
        for micro in 0..args.accum {
            let (x, mask) = training_batch(&mae, &frames.train, args, step_seed(args.seed, step, micro), side, device)?;
            let out = tch::autocast(args.mixed_precision, || mae.forward(&x, args.mask_ratio, Some(&mask)))?;
            let loss = out.loss.f_to_kind(Kind::Float)?.f_div_scalar(args.accum as f64)?;
            let scale = scaler.map_or(1.0, |s| s.scale);
            loss.f_mul_scalar(scale)?.f_backward()?;
            step_loss += loss.f_double_value(&[])?;
        }
        let finite = match scaler.as_mut() {
            Some(s) => s.unscale(&vs)?,
            None => true,
        };
        ensure!(
            scaler.is_some() || step_loss.is_finite(),
            "the loss of step {step} is not finite ({step_loss}): lower --blr"
        );
        if finite {
            opt.step(schedule.lr(step))?;
        }
        step += 1;
        losses.push(step_loss);
        bar.set_message(format!("{step_loss:.4}"));
        bar.set_position(step);
        if let Some(path) = &args.checkpoint
            && (step % args.checkpoint_every == 0 || step == end)
        {
            save_checkpoint(path, &vs, &opt, &CheckpointMeta { identity: identity.clone(), step, scaler })?;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(path) = &args.checkpoint
        && step != end
        && step > start_step
    {
        save_checkpoint(path, &vs, &opt, &CheckpointMeta { identity: identity.clone(), step, scaler })?;
    }
    let held_out_loss_after = held_out_loss(&mae, &frames.held_out, args, side, device)?;
    write_backbone(args, &vs, &backbone, step, &hiera)?;
    let mean = |xs: &[f64]| if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 };
    let window = LOSS_WINDOW.min(losses.len());
    let report = AdaptReport {
        model: args.model.clone(),
        train_frames: frames.train.len(),
        held_out_frames: frames.held_out.len(),
        skipped_images: frames.skipped,
        start_step,
        end_step: step,
        steps_per_s: (step - start_step) as f64 / elapsed.max(f64::MIN_POSITIVE),
        train_loss_first: mean(&losses[..window]),
        train_loss_last: mean(&losses[losses.len() - window..]),
        held_out_loss_before,
        held_out_loss_after,
        finished: step == args.steps,
    };
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn image_models() -> Vec<&'static str> {
    HieraConfig::NAMES
        .iter()
        .copied()
        .filter(|n| HieraConfig::by_name(n).is_some_and(|c| c.input_size.len() == 2))
        .collect()
}
