//! `ocellus-bench device` (what `scripts/device-check` runs): one run that says how Ocellus
//! does on a machine's accelerator — parity of the models on CUDA in fp32 and bf16 against
//! the same models on the CPU in fp32 (which the parity tests tie to the official code),
//! MAE Hiera-T training (loss and every gradient) and its steps/s in fp32 and under autocast,
//! the reversible ViT's training memory against ordinary autograd at depths 4 to 32,
//! SAM 2.1 tiny streaming frames/s with 1, 4 and 16 objects, Hiera-B+ images/s, Llama 3.2 1B
//! decode tokens/s in bf16 and int4 against the device's bandwidth bound, and RSS and VRAM
//! late in a long stream. It writes `device-check.json` and `device-check.md` to `--out`.
//!
//! `--cpu` runs the same on the CPU (where there is no GPU), `--quick` at small sizes and few
//! frames: together they check in a few minutes that the whole run starts and reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use ocellus_kernels::DType;
use ocellus_kernels::optim::{AdamW, AdamWConfig};
use ocellus_language::config::LlamaConfig;
use ocellus_language::llama::Llama;
use ocellus_language::quant::Quantization;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::clip::{Clip, ClipConfig};
use ocellus_perception::hiera_mae::MaskedAutoencoderHiera;
use ocellus_perception::model::{Loaded, Model, ModelSpec, Sam2Options, WeightsSource};
use ocellus_perception::sam2::Sam2;
use ocellus_perception::sam2::sam2_base::{DEFAULT_MAX_BATCH, GPU_MAX_BATCH};
use ocellus_perception::sam2::streaming::{StreamConfig, StreamingTracker};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// `ocellus-bench device`.
#[derive(Debug, clap::Args)]
pub struct DeviceCheckArgs {
    /// Run on the CPU instead of CUDA device 0 (machines without a GPU).
    #[arg(long)]
    pub cpu: bool,
    /// Small models, inputs and streams: checks that everything starts and reports.
    #[arg(long)]
    pub quick: bool,
    /// Folder for `device-check.json` and `device-check.md`.
    #[arg(long, default_value = "out/device-check")]
    pub out: PathBuf,
    /// Intra-op threads on the CPU.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
}

/// Waits for the work queued on `device`.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Vocabulary of the quick run's Llama (the 1B shape otherwise).
const QUICK_VOCAB: i64 = 16_384;

/// Sizes of one run.
struct Plan {
    encoders: Vec<(&'static str, Option<(i64, i64)>)>,
    clip: &'static str,
    llama_layers: Option<i64>,
    stream_side: i64,
    stream_frames: usize,
    stream_objects: Vec<usize>,
    hiera: &'static str,
    hiera_batch: i64,
    hiera_iters: usize,
    mae_batch: i64,
    mae_steps: usize,
    revvit_depths: Vec<usize>,
    revvit_batch: i64,
    rev_hiera_image: i64,
    rev_hiera_batch: i64,
    memory_frames: u64,
    memory_objects: usize,
    prompt_len: usize,
    decode_len: usize,
    bandwidth_elements: i64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                encoders: vec![
                    ("hiera_tiny_224", None),
                    ("sam2.1_hiera_tiny", Some((256, 256))),
                    ("maws_vit_b16", None),
                ],
                clip: "ViT-B-32-quickgelu",
                llama_layers: Some(2),
                stream_side: 256,
                stream_frames: 4,
                stream_objects: vec![1, 4],
                hiera: "hiera_tiny_224",
                hiera_batch: 2,
                hiera_iters: 2,
                mae_batch: 2,
                mae_steps: 2,
                revvit_depths: vec![2, 4],
                revvit_batch: 2,
                rev_hiera_image: 64,
                rev_hiera_batch: 2,
                memory_frames: 20,
                memory_objects: 2,
                prompt_len: 16,
                decode_len: 8,
                bandwidth_elements: 1 << 24,
            }
        } else {
            Self {
                encoders: vec![
                    ("hiera_tiny_224", None),
                    ("hiera_base_plus_224", None),
                    ("sam2.1_hiera_tiny", None),
                    ("sam2.1_hiera_base_plus", None),
                    ("maws_vit_b16", None),
                ],
                clip: "ViT-B-32-quickgelu",
                llama_layers: None,
                stream_side: 1024,
                stream_frames: 60,
                stream_objects: vec![1, 4, 16],
                hiera: "hiera_base_plus_224",
                hiera_batch: 8,
                hiera_iters: 10,
                mae_batch: 32,
                mae_steps: 10,
                revvit_depths: vec![4, 8, 16, 32],
                revvit_batch: 64,
                rev_hiera_image: 224,
                rev_hiera_batch: 32,
                memory_frames: 2000,
                memory_objects: 4,
                prompt_len: 128,
                decode_len: 64,
                bandwidth_elements: 1 << 28,
            }
        }
    }
}

/// Model `name` with the seeded weights of [`crate::random`] (written to `scratch` once, so that
/// every device and dtype loads the same values), on `device` in `dtype`.
fn seeded_on<M: Model>(
    name: &str,
    options: &M::Options,
    scratch: &Path,
    device: Device,
    dtype: DType,
) -> anyhow::Result<Loaded<M>> {
    let file = scratch.join(format!("{}-{name}.safetensors", M::FAMILY));
    if !file.exists() {
        crate::random::<M>(name, options)?.vs.save(&file)?;
    }
    let spec = ModelSpec { name: name.to_owned(), weights: WeightsSource::File(file), device, dtype };
    Ok(spec.load_with(options)?)
}

/// Largest abs difference of `got` (any device and kind) to `expected` (CPU, f32).
fn max_error(expected: &[Tensor], got: &[Tensor]) -> anyhow::Result<f64> {
    anyhow::ensure!(expected.len() == got.len(), "{} outputs, expected {}", got.len(), expected.len());
    let mut worst = 0f64;
    for (e, g) in expected.iter().zip(got) {
        let g = g.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
        worst = worst.max(e.f_sub(&g)?.f_abs()?.f_max()?.f_double_value(&[])?);
    }
    Ok(worst)
}

/// One model's outputs on the CPU in f32, and on `device` in f32 and bf16.
fn parity_row(
    model: &str,
    device: Device,
    run: &dyn Fn(Device, DType) -> anyhow::Result<Vec<Tensor>>,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let reference = run(Device::Cpu, DType::F32)?;
    let fp32 = max_error(&reference, &run(device, DType::F32)?)?;
    let bf16 = max_error(&reference, &run(device, DType::Bf16)?)?;
    let scale = reference.iter().map(|t| t.abs().max().double_value(&[])).fold(0.0, f64::max);
    eprintln!(
        "[device-check] parity {model}: fp32 {fp32:.2e}, bf16 {bf16:.2e} ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(json!({"model": model, "fp32_max_abs": fp32, "bf16_max_abs": bf16, "max_abs_reference": scale}))
}

fn parity(plan: &Plan, device: Device, scratch: &Path) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &(name, resolution) in &plan.encoders {
        let mut shape = vec![1, 3];
        shape.extend(ocellus_perception::backbone::input_size_of(name).context("backbone size")?);
        if let Some((h, w)) = resolution {
            let n = shape.len();
            shape[n - 2..].copy_from_slice(&[h, w]);
        }
        tch::manual_seed(0);
        let x = Tensor::f_randn(shape.as_slice(), (Kind::Float, Device::Cpu))?;
        rows.push(parity_row(name, device, &|d, dtype| {
            let b = seeded_on::<Backbone>(name, &(), scratch, d, dtype)?;
            Ok(b.forward(&x.f_to_device(d)?.f_to_kind(dtype.kind())?)?)
        })?);
    }
    let side = ClipConfig::by_name(plan.clip).context("CLIP config")?.vision_cfg.image_size;
    tch::manual_seed(0);
    let x = Tensor::f_randn([2, 3, side, side], (Kind::Float, Device::Cpu))?;
    rows.push(parity_row(plan.clip, device, &|d, dtype| {
        let c = seeded_on::<Clip>(plan.clip, &(), scratch, d, dtype)?;
        Ok(vec![tch::no_grad(|| c.encode_image(&x.f_to_device(d)?.f_to_kind(dtype.kind())?))?])
    })?);
    // Training: MAE Hiera-T's loss and every gradient on one fixed batch and mask.
    tch::manual_seed(0);
    let x = Tensor::f_randn([2, 3, 224, 224], (Kind::Float, Device::Cpu))?;
    rows.push(parity_row(&format!("{MAE} (loss, gradients)"), device, &|d, dtype| {
        let mae = seeded_on::<MaskedAutoencoderHiera>(MAE, &(), scratch, d, dtype)?;
        let mask = ocellus_kernels::seeded(1, || mae.random_mask(2, 0.6, d))?;
        let out = mae.forward(&x.f_to_device(d)?.f_to_kind(dtype.kind())?, 0.6, Some(&mask))?;
        out.loss.f_backward()?;
        let mut grads: Vec<(String, Tensor)> = mae.vs.variables().into_iter().map(|(k, v)| (k, v.grad())).collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        let mut outputs = vec![out.loss.f_detach()?];
        outputs.extend(grads.into_iter().map(|(_, g)| g));
        Ok(outputs)
    })?);
    let config = llama_config(plan)?;
    let vocab = config.vocab_size;
    let tokens = Tensor::f_from_slice(&(0..32i64).map(|i| (i * 7919) % vocab).collect::<Vec<_>>())?.f_view([1, 32])?; // [1, 32]
    rows.push(parity_row(&llama_name(plan), device, &|d, dtype| {
        let llama = Llama::from_tensors_quantized(
            config.clone(),
            Llama::random_tensors(&config, 0)?,
            d,
            dtype.kind(),
            Path::new("<random>"),
            Quantization::None,
        )?;
        let mut cache = llama.new_cache(1, 32)?;
        Ok(vec![tch::no_grad(|| llama.forward(&tokens.f_to_device(d)?, None, &mut cache, false))?])
    })?);
    Ok(rows)
}

fn llama_config(plan: &Plan) -> anyhow::Result<LlamaConfig> {
    let mut config = LlamaConfig::by_name("llama-3.2-1b")?;
    if let Some(layers) = plan.llama_layers {
        config.num_hidden_layers = layers;
        config.vocab_size = QUICK_VOCAB;
    }
    Ok(config)
}

fn llama_name(plan: &Plan) -> String {
    match plan.llama_layers {
        Some(n) => format!("llama-3.2-1b ({n} layers, vocabulary {QUICK_VOCAB})"),
        None => "llama-3.2-1b".into(),
    }
}

/// Streams `frames` frames of a fixed random clip through SAM 2 with `objects` objects on
/// `device`; frames/s after the first, and (RSS MiB, VRAM MiB) at the end.
fn stream(
    sam: &Sam2,
    device: Device,
    side: i64,
    objects: usize,
    frames: u64,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let max_batch = if device.is_cuda() { GPU_MAX_BATCH } else { DEFAULT_MAX_BATCH };
    let mut tracker = StreamingTracker::new(StreamConfig { max_batch, ..StreamConfig::default() });
    let scale = side as f32 / 1024.0;
    for obj in 0..objects {
        tracker.add_prompt(obj as u64 + 1, crate::click_at(obj, scale)?);
    }
    tch::manual_seed(0);
    let clip = Tensor::f_randn([8, 3, side, side], (Kind::Float, device))?;
    let mut started = Instant::now();
    tch::no_grad(|| -> anyhow::Result<()> {
        for f in 0..frames {
            if f == 1 {
                synchronize(device);
                started = Instant::now();
            }
            let feats = sam.frame_features(&clip.f_get((f % 8) as i64)?.f_unsqueeze(0)?)?;
            tracker.step(sam, f, &feats)?;
        }
        Ok(())
    })?;
    synchronize(device);
    let fps = (frames.saturating_sub(1)) as f64 / started.elapsed().as_secs_f64();
    Ok((fps, crate::rss_mib(), vram_mib(device)))
}

/// Memory in use on the GPU, MiB (`nvidia-smi`), when there is one.
fn vram_mib(device: Device) -> Option<f64> {
    let Device::Cuda(i) = device else { return None };
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", &format!("--id={i}")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The MAE model whose training the check times (`ocellus adapt`'s default backbone).
const MAE: &str = "mae_hiera_tiny_224";

/// MAE training steps per second on `device` (forward, backward, AdamW), after one warm-up step;
/// with `mixed`, the forward and backward under autocast (fp16 on CUDA; nothing changes on the
/// CPU).
fn mae_steps_per_s(plan: &Plan, device: Device, scratch: &Path, mixed: bool) -> anyhow::Result<f64> {
    let mae = seeded_on::<MaskedAutoencoderHiera>(MAE, &(), scratch, device, DType::F32)?;
    let params = mae.vs.variables().into_iter().map(|(n, v)| {
        let decay = mae.weight_decay_applies(&n, v.dim());
        (n, v, decay)
    });
    let mut opt = AdamW::new(params, AdamWConfig::default())?;
    tch::manual_seed(0);
    let x = Tensor::f_randn([plan.mae_batch, 3, 224, 224], (Kind::Float, device))?;
    let mut step = || -> anyhow::Result<()> {
        opt.zero_grad();
        let out = tch::autocast(mixed, || mae.forward(&x, 0.6, None))?;
        out.loss.f_to_kind(Kind::Float)?.f_backward()?;
        opt.step(1e-4)?;
        Ok(())
    };
    step()?; // warm-up
    synchronize(device);
    let t = Instant::now();
    for _ in 0..plan.mae_steps {
        step()?;
    }
    synchronize(device);
    Ok(plan.mae_steps as f64 / t.elapsed().as_secs_f64())
}

/// Runs the whole check; returns the report written.
pub fn run(args: &DeviceCheckArgs) -> anyhow::Result<Value> {
    let device = if args.cpu { Device::Cpu } else { Device::Cuda(0) };
    anyhow::ensure!(args.cpu || tch::Cuda::is_available(), "no CUDA device: run with --cpu");
    tch::set_num_threads(args.threads);
    let plan = Plan::new(args.quick);
    let scratch = std::env::temp_dir().join(format!("ocellus-device-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();

    let parity = parity(&plan, device, &scratch)?;

    // SAM 2.1 tiny streaming, and memory late in a long stream.
    let options = Sam2Options { image_size: Some(plan.stream_side) };
    let sam = seeded_on::<Sam2>("sam2.1_hiera_tiny", &options, &scratch, device, DType::F32)?;
    let mut streaming = Vec::new();
    for &objects in &plan.stream_objects {
        let (fps, _, _) = stream(&sam, device, plan.stream_side, objects, plan.stream_frames as u64)?;
        eprintln!("[device-check] SAM 2.1 tiny at {}: {objects} objects {fps:.2} frames/s", plan.stream_side);
        streaming.push(json!({"objects": objects, "frames_per_s": fps}));
    }
    let (_, rss, vram) = stream(&sam, device, plan.stream_side, plan.memory_objects, plan.memory_frames)?;
    drop(sam);
    eprintln!("[device-check] after {} frames: RSS {rss:.0} MiB, VRAM {vram:?} MiB", plan.memory_frames);

    // Hiera images/s.
    let hiera = seeded_on::<Backbone>(plan.hiera, &(), &scratch, device, DType::F32)?;
    let mut shape = vec![plan.hiera_batch, 3];
    shape.extend(hiera.input_size());
    let x = Tensor::f_randn(shape.as_slice(), (Kind::Float, device))?;
    hiera.forward(&x)?; // warm-up
    synchronize(device);
    let t = Instant::now();
    for _ in 0..plan.hiera_iters {
        hiera.forward(&x)?;
    }
    synchronize(device);
    let images_per_s = (plan.hiera_batch as usize * plan.hiera_iters) as f64 / t.elapsed().as_secs_f64();
    drop(hiera);
    eprintln!("[device-check] {} batch {}: {images_per_s:.1} images/s", plan.hiera, plan.hiera_batch);

    // MAE training steps/s (what `ocellus adapt` runs), fp32 and under autocast.
    let mut mae_rows = Vec::new();
    for mixed in [false, true] {
        let steps_per_s = mae_steps_per_s(&plan, device, &scratch, mixed)?;
        eprintln!(
            "[device-check] {MAE} training, batch {}, autocast {mixed}: {steps_per_s:.2} steps/s",
            plan.mae_batch
        );
        mae_rows.push(json!({"autocast": mixed, "steps_per_s": steps_per_s}));
    }

    // Training memory of the reversible ViT against ordinary autograd, by depth (children).
    let revvit_args = crate::revvit::RevVitBenchArgs {
        arch: crate::revvit::Arch::Vit,
        depths: plan.revvit_depths.clone(),
        batch: plan.revvit_batch,
        embed_dim: 192,
        heads: 3,
        image: 64,
        patch: 4,
        threads: args.threads,
        device: if args.cpu { "cpu".into() } else { "cuda:0".into() },
        out: None,
        child_depth: None,
        child_mode: None,
    };
    let revvit = crate::revvit::run(&revvit_args)?;
    let revvit_rows: Vec<Value> = revvit.iter().map(|m| json!(m)).collect();
    // The same for the reversible Hiera (Hiera-T widths; depth = blocks of the third stage).
    let rev_hiera_args = crate::revvit::RevVitBenchArgs {
        arch: crate::revvit::Arch::Hiera,
        batch: plan.rev_hiera_batch,
        embed_dim: 96,
        heads: 1,
        image: plan.rev_hiera_image,
        ..revvit_args.clone()
    };
    let rev_hiera = crate::revvit::run(&rev_hiera_args)?;
    let rev_hiera_rows: Vec<Value> = rev_hiera.iter().map(|m| json!(m)).collect();

    // Llama decode in bf16 and int4 against the device's bandwidth bound.
    let bandwidth = crate::llm::copy_bandwidth_on(device, plan.bandwidth_elements)?;
    let config = llama_config(&plan)?;
    let mut llama_rows = Vec::new();
    for (format, kind, quantization) in
        [("bf16", Kind::BFloat16, Quantization::None), ("int4", Kind::BFloat16, Quantization::parse("int4")?)]
    {
        let llama = Llama::from_tensors_quantized(
            config.clone(),
            Llama::random_tensors(&config, 0)?,
            device,
            kind,
            Path::new("<random>"),
            quantization,
        )?;
        let timing = crate::llm::time_ocellus(&llama, plan.prompt_len, plan.decode_len, 2)?;
        let (prompt_tps, decode_tps) = (timing.prompt_tps, timing.decode_tps);
        let bound = bandwidth * 1e9 / llama.bytes_per_token() as f64;
        eprintln!(
            "[device-check] {} {format}: decode {decode_tps:.1} tokens/s ({:.0} % of bound)",
            llama_name(&plan),
            100.0 * decode_tps / bound
        );
        llama_rows.push(json!({"format": format, "prompt_tokens_per_s": prompt_tps, "decode_tokens_per_s": decode_tps,
            "bound_tokens_per_s": bound, "of_bound": decode_tps / bound}));
    }
    std::fs::remove_dir_all(&scratch).ok();

    let report = json!({
        "device": if args.cpu { "cpu".to_owned() } else { format!("cuda ({} devices)", tch::Cuda::device_count()) },
        "quick": args.quick,
        "threads": args.threads,
        "parity": parity,
        "sam2_streaming": {"model": "sam2.1_hiera_tiny", "image_size": plan.stream_side, "frames": plan.stream_frames, "runs": streaming},
        "memory": {"frames": plan.memory_frames, "objects": plan.memory_objects, "rss_mib": rss, "vram_mib": vram},
        "hiera": {"model": plan.hiera, "batch": plan.hiera_batch, "images_per_s": images_per_s},
        "mae_training": {"model": MAE, "batch": plan.mae_batch, "runs": mae_rows},
        "revvit_memory": {"what": crate::revvit::title(&revvit_args), "runs": revvit_rows},
        "rev_hiera_memory": {"what": crate::revvit::title(&rev_hiera_args), "runs": rev_hiera_rows},
        "llama": {"model": llama_name(&plan), "bandwidth_gb_s": bandwidth, "formats": llama_rows},
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(args.out.join("device-check.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("device-check.md"), markdown(&report))?;
    Ok(report)
}

/// The report as Markdown tables.
pub fn markdown(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut md = format!(
        "# Device check: {}{}\n\n| model | fp32 max abs vs CPU fp32 | bf16 max abs | max abs output |\n|---|---|---|---|\n",
        r["device"].as_str().unwrap_or("?"),
        if r["quick"].as_bool() == Some(true) { " (quick)" } else { "" }
    );
    for p in r["parity"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {:.2e} | {:.2e} | {:.2} |\n",
            p["model"].as_str().unwrap_or("?"),
            f(&p["fp32_max_abs"]),
            f(&p["bf16_max_abs"]),
            f(&p["max_abs_reference"])
        );
    }
    let s = &r["sam2_streaming"];
    md += &format!("\n| SAM 2.1 tiny at {} | frames/s |\n|---|---|\n", s["image_size"]);
    for run in s["runs"].as_array().into_iter().flatten() {
        md += &format!("| {} objects | {:.2} |\n", run["objects"], f(&run["frames_per_s"]));
    }
    let m = &r["memory"];
    md += &format!(
        "\nAfter {} frames with {} objects: RSS {:.0} MiB, VRAM {}.\n",
        m["frames"],
        m["objects"],
        f(&m["rss_mib"]),
        m["vram_mib"].as_f64().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0} MiB"))
    );
    let h = &r["hiera"];
    md += &format!(
        "\n{} (batch {}): {:.1} images/s.\n",
        h["model"].as_str().unwrap_or("?"),
        h["batch"],
        f(&h["images_per_s"])
    );
    let t = &r["mae_training"];
    for run in t["runs"].as_array().into_iter().flatten() {
        md += &format!(
            "\n{} training (batch {}, autocast {}): {:.2} steps/s.",
            t["model"].as_str().unwrap_or("?"),
            t["batch"],
            run["autocast"],
            f(&run["steps_per_s"])
        );
    }
    md += "\n";
    for rv in [&r["revvit_memory"], &r["rev_hiera_memory"]] {
        md += &format!(
            "\n{}\n\n| depth | ordinary MiB | reversible MiB |\n|---:|---:|---:|\n",
            rv["what"].as_str().unwrap_or("?")
        );
        let runs: Vec<&Value> = rv["runs"].as_array().into_iter().flatten().collect();
        for pair in runs.chunks(2) {
            if let [v, rev] = pair {
                md +=
                    &format!("| {} | {:.1} | {:.1} |\n", v["depth"], f(&v["step_peak_mib"]), f(&rev["step_peak_mib"]));
            }
        }
    }
    let l = &r["llama"];
    md += &format!(
        "\n| {} | prompt tokens/s | decode tokens/s | bound (copy {:.1} GB/s) | of bound |\n|---|---|---|---|---|\n",
        l["model"].as_str().unwrap_or("?"),
        f(&l["bandwidth_gb_s"])
    );
    for row in l["formats"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.0} % |\n",
            row["format"].as_str().unwrap_or("?"),
            f(&row["prompt_tokens_per_s"]),
            f(&row["decode_tokens_per_s"]),
            f(&row["bound_tokens_per_s"]),
            100.0 * f(&row["of_bound"])
        );
    }
    md
}
