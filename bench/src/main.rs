//! `ocellus-bench`: Ocellus side by side with the official Python code on this machine (same
//! threads, weights and inputs; ratios reported), and the runtime and transport alone. The
//! reference sides run in the bootstrap venv (`scripts/bootstrap`).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ocellus_runtime::{DropPolicy, EdgePolicy};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "ocellus-bench", version, about = "Benchmarks of Ocellus against the official references")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What to measure.
#[derive(Subcommand)]
enum Command {
    /// SAM 2 automatic mask generation per frame against the official generator, and the cost
    /// of discovery per frame at its cadence.
    Amg(ocellus_bench::amg::AmgBenchArgs),
    /// HMR 2.0 crops/s (backbone + SMPL head, batch 1 and 4) against the official modules of
    /// a 4D-Humans checkout (`--repo`).
    Hmr2(ocellus_bench::hmr2::Hmr2BenchArgs),
    /// LART per window (demo: 1 person; 5 people; 8 clips in a batch) against the official
    /// model of LART and PHALP checkouts (`--repo`, `--phalp`).
    Lart(ocellus_bench::lart::LartBenchArgs),
    /// Zero-shot CLIP labels/s for 1 and 16 track crops against open_clip (same threads).
    Clip(ocellus_bench::clip::ClipBenchArgs),
    /// Preprocessing per camera frame: each model's exact official path against the fast path.
    Preprocess(ocellus_bench::preprocess::PreprocessBenchArgs),
    /// The accelerator check (`scripts/device-check`): model parity on CUDA in fp32 and bf16,
    /// SAM 2 streaming frames/s, Hiera images/s, Llama decode vs the bandwidth bound, memory
    /// late in a stream; JSON and Markdown in `--out`.
    Device(ocellus_bench::device::DeviceCheckArgs),
    /// Evidence that `ocellus adapt` helps on a synthetic domain: held-out MAE loss and a linear
    /// probe's accuracy before and after.
    Adapt(ocellus_bench::adapt::AdaptBenchArgs),
    /// Training memory by depth of the reversible ViT against ordinary autograd (peak RSS per
    /// step, one process per case).
    Revvit(ocellus_bench::revvit::RevVitBenchArgs),
    /// A pipeline (`configs/soak.toml`: the demo's actors) under overload for minutes: RSS
    /// every second, every drop counted, latency p50/p99 per node.
    Soak(ocellus_bench::soak::SoakArgs),
    /// SAM 2 tracking per frame against the official video predictor, and the RSS of a long
    /// stream.
    Tracker {
        /// SAM 2 model.
        #[arg(long, default_value = "sam2.1_hiera_tiny")]
        model: String,
        /// Object counts to time.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        objects: Vec<usize>,
        /// Frames per timing (the first, prompted, is not timed; 0: no timing).
        #[arg(long, default_value_t = 6)]
        frames: usize,
        /// Intra-op threads for both.
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Stream this many frames afterwards and report the RSS (0: skip).
        #[arg(long, default_value_t = 0)]
        stream_frames: u64,
        /// Objects tracked on that stream.
        #[arg(long, default_value_t = 1)]
        stream_objects: usize,
        /// Input side of that stream's model (1024 as released; smaller sides run faster on a
        /// CPU and keep the same memory bank).
        #[arg(long, default_value_t = 1024)]
        stream_image_size: i64,
    },
    /// Llama 3 prompt and decode tokens/s against transformers (same shape and threads) and,
    /// where llama-cpp-python is installed, llama.cpp F32/Q8_0/Q4_0 on the same weights; decode
    /// as a fraction of the memory-bandwidth bound.
    Llm {
        /// Model shape (random weights).
        #[arg(long, default_value = "llama-3.2-1b")]
        model: String,
        /// Intra-op threads for both.
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Prompt length.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to decode.
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Timed runs (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Formats to time (`f32`, `bf16`, `int8`, `int4`, `int4:<group>`).
        #[arg(long, value_delimiter = ',', default_value = "f32,bf16,int8,int4")]
        formats: Vec<String>,
    },
    /// Image encoders (backbones, CLIP image towers) over libtorch and over ONNX Runtime,
    /// against the official Python forward (same threads, weights, input).
    Models {
        /// Models to time.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "hiera_tiny_224,hiera_base_plus_224,sam2.1_hiera_tiny,ViT-B-32-quickgelu"
        )]
        models: Vec<String>,
        /// Intra-op threads for both.
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Timed runs per model (after 2 warm-ups).
        #[arg(long, default_value_t = 10)]
        iters: usize,
    },
    /// 1080p RGB frames between two local processes over zenoh, with and without shared memory.
    Zenoh {
        /// Frames per throughput case.
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Frame width.
        #[arg(long, default_value_t = 1920)]
        width: usize,
        /// Frame height.
        #[arg(long, default_value_t = 1080)]
        height: usize,
        /// Publisher rate for the latency cases (frames/s).
        #[arg(long, default_value_t = 30.0)]
        paced_fps: f64,
        /// Frames per latency case.
        #[arg(long, default_value_t = 150)]
        paced_frames: u64,
        /// (child process) Publish to this endpoint instead.
        #[arg(long, hide = true)]
        publish: Option<String>,
        /// (child process) Publisher rate.
        #[arg(long, hide = true)]
        fps: Option<f64>,
        /// (child process) Publish from shared memory.
        #[arg(long, hide = true)]
        shm: bool,
    },
    /// The runtime alone: synthetic source → no-op actor → null sink.
    Runtime {
        /// Frames per case.
        #[arg(long, default_value_t = 3000)]
        frames: u64,
        /// Edge policy (`block` measures throughput, `latest` the freshest-frame path).
        #[arg(long, value_enum, default_value_t = BenchEdge::Block)]
        edge: BenchEdge,
        /// Source rate for the latency cases (frames/s).
        #[arg(long, default_value_t = 30.0)]
        paced_fps: f64,
        /// Frames per latency (paced) case.
        #[arg(long, default_value_t = 300)]
        paced_frames: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchEdge {
    Latest,
    Queue,
    Block,
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

fn bench_llm(
    model: &str,
    threads: i32,
    prompt: usize,
    decode: usize,
    runs: usize,
    formats: &[String],
) -> anyhow::Result<()> {
    let formats: Vec<ocellus_bench::llm::Format> =
        formats.iter().map(|f| ocellus_bench::llm::Format::parse(f)).collect::<anyhow::Result<_>>()?;
    println!("{model}, CPU, {threads} threads, prompt {prompt} tokens, decode {decode} tokens (medians of {runs})");
    let r = ocellus_bench::llm::run(model, threads, prompt, decode, runs, &formats)?;
    let (f32_ref, bf16_ref) = (r.reference_f32, r.reference_bf16);
    println!(
        "transformers: fp32 prompt {:.1} / decode {:.2} tokens/s, bf16 prompt {:.1} / decode {:.2} tokens/s; copy bandwidth {:.1} GB/s",
        f32_ref.0, f32_ref.1, bf16_ref.0, bf16_ref.1, r.bandwidth_gbs
    );
    println!(
        "| Ocellus | prompt tok/s | vs tf fp32 | vs tf bf16 | decode tok/s | vs tf fp32 | vs tf bf16 | GB/token | bound tok/s | of bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &r.formats {
        let bound = r.bound_tps(f.weight_bytes);
        println!(
            "| {} | {:.1} | {:.2}x | {:.2}x | {:.2} | {:.2}x | {:.2}x | {:.3} | {:.2} | {:.0}% |",
            f.format.name(),
            f.prompt_tps,
            f.prompt_tps / f32_ref.0,
            f.prompt_tps / bf16_ref.0,
            f.decode_tps,
            f.decode_tps / f32_ref.1,
            f.decode_tps / bf16_ref.1,
            f.weight_bytes / 1e9,
            bound,
            100.0 * f.decode_tps / bound
        );
    }
    match &r.llama_cpp {
        Err(why) => println!("llama.cpp: not run: {why}"),
        Ok(rows) => {
            println!(
                "| llama.cpp (same weights, GGUF) | prompt tok/s | decode tok/s | vs tf fp32 | GB/token (file) | bound tok/s | of bound | fp32 greedy tokens reproduced |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            for l in rows {
                let bound = r.bound_tps(l.file_bytes);
                println!(
                    "| {} | {:.1} | {:.2} | {:.2}x | {:.3} | {:.2} | {:.0}% | {:.0}% |",
                    l.name,
                    l.prompt_tps,
                    l.decode_tps,
                    l.decode_tps / f32_ref.1,
                    l.file_bytes / 1e9,
                    bound,
                    100.0 * l.decode_tps / bound,
                    100.0 * l.greedy_agreement
                );
            }
            // Ocellus's formats against the llama.cpp type that stores the same precision.
            for (ours, theirs) in [("fp32", "llama.cpp F32"), ("int8", "llama.cpp Q8_0"), ("int4", "llama.cpp Q4_0")] {
                let o = r.formats.iter().find(|f| f.format.name().starts_with(ours));
                if let (Some(o), Some(l)) = (o, rows.iter().find(|l| l.name == theirs)) {
                    println!(
                        "Ocellus {} / {theirs}: prompt {:.2}x, decode {:.2}x",
                        o.format.name(),
                        o.prompt_tps / l.prompt_tps,
                        o.decode_tps / l.decode_tps
                    );
                }
            }
        }
    }
    Ok(())
}

fn bench_runtime(frames: u64, edge: BenchEdge, paced_fps: f64, paced_frames: u64) -> anyhow::Result<()> {
    let policy = match edge {
        BenchEdge::Latest => EdgePolicy::Latest,
        BenchEdge::Queue => EdgePolicy::Queue { depth: 8, drop: DropPolicy::Oldest },
        BenchEdge::Block => EdgePolicy::Block { depth: 8 },
    };
    println!(
        "{:<11} {:>10} {:>9} {:>12} {:>8} {:>9} {:>9}",
        "resolution", "source", "edge", "frames/s", "dropped", "p50 ms", "p99 ms"
    );
    for (width, height) in [(640, 480), (1920, 1080)] {
        for fps in [None, Some(paced_fps)] {
            let frames = if fps.is_some() { paced_frames } else { frames };
            let r = ocellus_bench::run(ocellus_bench::RuntimeBench { width, height, frames, fps, edge: policy })?;
            let source = fps.map_or_else(|| "unpaced".to_owned(), |f| format!("{f} fps"));
            println!(
                "{:<11} {:>10} {:>9} {:>12.0} {:>8} {:>9.3} {:>9.3}",
                format!("{width}x{height}"),
                source,
                format!("{policy}").split('(').next().unwrap_or("?"),
                r.fps,
                r.dropped,
                r.latency_p50_ms,
                r.latency_p99_ms
            );
        }
    }
    Ok(())
}

/// What `bench tracker` streams after timing, to report the RSS.
struct StreamBench {
    frames: u64,
    objects: usize,
    image_size: i64,
}

fn bench_tracker(
    model: &str,
    objects: &[usize],
    frames: usize,
    threads: i32,
    stream: &StreamBench,
) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("ocellus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let objects = if frames == 0 { &[][..] } else { objects };
    if !objects.is_empty() {
        println!("{:<20} {:>8} {:>12} {:>14} {:>7}", "model", "objects", "ocellus ms", "reference ms", "ratio");
    }
    for &n in objects {
        let r = ocellus_bench::tracker(model, n, frames, threads, &scratch)?;
        println!(
            "{:<20} {:>8} {:>12.1} {:>14.1} {:>7.3}",
            model,
            r.objects,
            r.ocellus_ms,
            r.reference_ms,
            r.ocellus_ms / r.reference_ms
        );
    }
    std::fs::remove_dir_all(&scratch).ok();
    if stream.frames > 0 {
        let marks: Vec<u64> = [1, 10, 100, 200, 500, 1000, 1500, 2000, stream.frames]
            .into_iter()
            .filter(|&m| m <= stream.frames)
            .collect();
        println!("stream: {} object(s) at {} pixels", stream.objects, stream.image_size);
        for (frame, rss) in
            ocellus_bench::tracker_memory(model, stream.objects, stream.frames, stream.image_size, &marks)?
        {
            println!("stream frame {frame:>5}: RSS {rss:.0} MiB");
        }
    }
    Ok(())
}

fn bench_models(models: &[String], threads: i32, iters: usize) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("ocellus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    println!(
        "{:<24} {:>22} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "model", "input", "tch ms", "onnx ms", "official ms", "tch/off", "onnx/off", "onnx err"
    );
    for model in models {
        let r = ocellus_bench::model(model, threads, iters, &scratch)?;
        println!(
            "{:<24} {:>22} {:>9.1} {:>9.1} {:>12.1} {:>10.3} {:>10.3} {:>10.1e}",
            r.model,
            format!("{:?}", r.input),
            r.ocellus_ms,
            r.onnx_ms,
            r.reference_ms,
            r.ocellus_ms / r.reference_ms,
            r.onnx_ms / r.reference_ms,
            r.onnx_error
        );
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(())
}

fn bench_zenoh(width: usize, height: usize, frames: u64, paced_fps: f64, paced_frames: u64) -> anyhow::Result<()> {
    println!(
        "{:<11} {:<7} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "resolution", "memory", "source", "received", "frames/s", "MB/s", "p50 ms", "p99 ms"
    );
    for shm in [false, true] {
        for fps in [None, Some(paced_fps)] {
            let n = if fps.is_some() { paced_frames } else { frames };
            let r = ocellus_bench::zenoh::run(ocellus_bench::zenoh::ZenohBench { width, height, frames: n, fps, shm })?;
            println!(
                "{:<11} {:<7} {:>10} {:>9} {:>10.1} {:>9.0} {:>9.2} {:>9.2}",
                format!("{width}x{height}"),
                if shm { "shm" } else { "tcp" },
                fps.map_or_else(|| "unpaced".to_owned(), |f| format!("{f} fps")),
                r.received,
                r.fps,
                r.fps * (width * height * 3) as f64 / 1e6,
                r.latency_p50_ms,
                r.latency_p99_ms
            );
        }
    }
    Ok(())
}

fn preprocess(args: &ocellus_bench::preprocess::PreprocessBenchArgs) -> anyhow::Result<()> {
    let rows = ocellus_bench::preprocess::run(args)?;
    println!("{}x{} RGB frame, {} threads, median of {} runs", args.width, args.height, args.threads, args.iters);
    println!(
        "{:<40} {:>10} {:>10} {:>8} {:>14} {:>15}",
        "input", "exact ms", "fast ms", "ratio", "max Δ levels", "mean Δ levels"
    );
    for r in rows {
        println!(
            "{:<40} {:>10.2} {:>10.2} {:>8.2} {:>14.2} {:>15.3}",
            r.name,
            r.exact_ms,
            r.fast_ms,
            r.exact_ms / r.fast_ms,
            r.max_levels,
            r.mean_levels
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    init_tracing();
    let result = match Cli::parse().command {
        Command::Tracker { model, objects, frames, threads, stream_frames, stream_objects, stream_image_size } => {
            let stream = StreamBench { frames: stream_frames, objects: stream_objects, image_size: stream_image_size };
            bench_tracker(&model, &objects, frames, threads, &stream)
        }
        Command::Llm { model, threads, prompt_tokens, decode_tokens, runs, formats } => {
            bench_llm(&model, threads, prompt_tokens, decode_tokens, runs, &formats)
        }
        Command::Models { models, threads, iters } => bench_models(&models, threads, iters),
        Command::Runtime { frames, edge, paced_fps, paced_frames } => {
            bench_runtime(frames, edge, paced_fps, paced_frames)
        }
        Command::Zenoh { frames, width, height, paced_fps, paced_frames, publish, fps, shm } => match publish {
            Some(endpoint) => ocellus_bench::zenoh::publish(&endpoint, width, height, frames, fps, shm),
            None => bench_zenoh(width, height, frames, paced_fps, paced_frames),
        },
        Command::Clip(args) => ocellus_bench::clip::run(&args),
        Command::Amg(args) => ocellus_bench::amg::run(&args, &std::env::temp_dir()),
        Command::Hmr2(args) => ocellus_bench::hmr2::run(&args, &std::env::temp_dir()),
        Command::Lart(args) => ocellus_bench::lart::run(&args, &std::env::temp_dir()),
        Command::Preprocess(args) => preprocess(&args),
        Command::Soak(args) => ocellus_bench::soak::run(&args).map(|_| ()),
        Command::Adapt(args) => ocellus_bench::adapt::run(&args).map(|_| ()),
        Command::Revvit(args) => ocellus_bench::revvit::run(&args).map(|_| ()),
        Command::Device(args) => {
            ocellus_bench::device::run(&args).map(|r| println!("{}", ocellus_bench::device::markdown(&r)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
