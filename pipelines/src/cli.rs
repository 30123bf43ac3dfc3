//! The `ocellus` command: each subcommand is an argument struct with its own `run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ocellus_io::kinds::RerunNode;
use ocellus_io::sink::RerunTarget;
use ocellus_io::source::ReplayTiming;
use ocellus_runtime::kind::BuildContext;

use crate::config::Fetching;
use crate::curate::CurateArgs;
use crate::{PipelineConfig, build_with, check, tools};

/// A subcommand of `ocellus`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline until its sources end (or Ctrl-C: once drains, twice stops).
    Run(RunArgs),
    /// Validate a pipeline configuration without running it.
    Check(CheckArgs),
    /// Run a pipeline on the camera images of a recording instead of its sources.
    Replay(ReplayArgs),
    /// Select a MetaCLIP-balanced subset of frames and captions from `.rrd` recordings.
    Curate(CurateArgs),
    /// Keep learning a Hiera backbone's features on recorded camera images (MAE, no labels).
    Adapt(Box<crate::adapt::AdaptArgs>),
    /// Model weights: import official checkpoints, or write seeded random ones.
    Weights(WeightsArgs),
    /// Print the JSON Schema of pipeline files (editor completion and checking).
    Schema(SchemaArgs),
    /// Show what this build finds: libtorch, CUDA devices, ONNX Runtime, GStreamer.
    Info(InfoArgs),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Run(a) => a.run(),
            Self::Check(a) => a.run(),
            Self::Replay(a) => a.run(),
            Self::Curate(a) => crate::curate::run(&a).map(|()| ExitCode::SUCCESS),
            Self::Adapt(a) => crate::adapt::run_interruptible(&a).map(|_| ExitCode::SUCCESS),
            Self::Weights(a) => a.run(),
            Self::Schema(a) => a.run(),
            Self::Info(a) => a.run(),
        }
    }
}

/// `ocellus run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline configuration (TOML).
    pub config: PathBuf,
    /// Where the pipeline's Rerun sink sends its recording instead.
    #[command(flatten)]
    pub rerun: RerunOverride,
}

impl RunArgs {
    /// Runs the pipeline.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut config = PipelineConfig::load_with(&self.config, fetching())?;
        self.rerun.apply(&mut config)?;
        run_config(&config, BuildContext::new())
    }
}

/// The Rerun sink's target from the command line, as Rerun's own `RerunArgs` takes it; it
/// replaces the configured one (the pipeline must have exactly one Rerun sink).
#[derive(Debug, Default, Args)]
pub struct RerunOverride {
    /// Start a viewer (the bootstrap's, else `rerun` on the PATH) unless one is running, and
    /// stream to it.
    #[arg(long, conflicts_with_all = ["connect", "save", "serve"])]
    pub spawn: bool,
    /// Stream to a running viewer (`rerun+http://127.0.0.1:9876/proxy`).
    #[arg(long, conflicts_with_all = ["save", "serve"])]
    pub connect: Option<String>,
    /// Write the recording to this `.rrd` file.
    #[arg(long, conflicts_with = "serve")]
    pub save: Option<PathBuf>,
    /// Serve the recording over gRPC on this port, for viewers to connect to.
    #[arg(long)]
    pub serve: Option<u16>,
}

impl RerunOverride {
    /// The target asked for, if any.
    pub fn target(&self) -> Option<RerunTarget> {
        if self.spawn {
            return Some(ocellus_io::kinds::SpawnConfig::default().target());
        }
        if let Some(url) = &self.connect {
            return Some(RerunTarget::Connect(url.clone()));
        }
        if let Some(path) = &self.save {
            return Some(RerunTarget::Save(path.clone()));
        }
        self.serve.map(ocellus_io::kinds::ServeConfig::on_port)
    }

    /// Gives the configuration's one Rerun sink the target asked for.
    pub fn apply(&self, config: &mut PipelineConfig) -> anyhow::Result<()> {
        let Some(target) = self.target() else { return Ok(()) };
        let sinks: Vec<usize> =
            (0..config.sinks.len()).filter(|&i| config.sinks[i].spec::<RerunNode>().is_some()).collect();
        let [i] = sinks.as_slice() else {
            anyhow::bail!(
                "--spawn/--connect/--save/--serve replace the target of the pipeline's Rerun sink; {} has {}",
                config.file.display(),
                sinks.len()
            );
        };
        if let Some(r) = config.sinks[*i].spec::<RerunNode>() {
            let node = RerunNode {
                target,
                metrics: r.metrics,
                app_id: r.app_id.clone(),
                layout: r.layout.clone(),
                jpeg: r.jpeg,
            };
            config.sinks[*i].node = std::sync::Arc::new(node);
        }
        Ok(())
    }
}

/// How `run` and `replay` fetch what a configuration asks for: with progress bars on a
/// terminal.
fn fetching() -> Fetching {
    Fetching::Download { progress: std::io::IsTerminal::is_terminal(&std::io::stderr()) }
}

/// The notices of `config` as a banner on standard error.
fn banner(config: &PipelineConfig) {
    if config.notices.is_empty() {
        return;
    }
    let rule = "=".repeat(78);
    eprintln!("{rule}");
    eprintln!("NOTICE: this run substitutes what could not be had (also written into the recording, `notices`):");
    for n in &config.notices {
        eprintln!("  - {} ({})", n.text, n.key);
    }
    eprintln!("{rule}");
}

/// Builds and runs `config`; reports every node and where recordings went.
fn run_config(config: &PipelineConfig, ctx: BuildContext) -> anyhow::Result<ExitCode> {
    banner(config);
    let report = build_with(config, ctx)?.run()?;
    println!("{report}");
    if report.failures().next().is_some() {
        return Ok(ExitCode::FAILURE);
    }
    for sink in &config.sinks {
        if let Some(RerunNode { target: RerunTarget::Save(path), .. }) = sink.spec::<RerunNode>() {
            let path = path.display();
            println!("recording: {path} (open it with `rerun {path}`; viewer: pip install rerun-sdk==0.36.3)");
        }
    }
    banner(config);
    Ok(ExitCode::SUCCESS)
}

/// `ocellus check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pipeline configuration (TOML).
    pub config: PathBuf,
}

impl CheckArgs {
    /// Validates the file: keys, kinds, typed wiring, GStreamer descriptions.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let c = PipelineConfig::load(&self.config)?;
        check(&c)?;
        for n in &c.notices {
            println!("{}: would run with: {} ({})", c.file.display(), n.text, n.key);
        }
        println!(
            "{}: ok ({} sources, {} actors, {} sinks)",
            c.file.display(),
            c.sources.len(),
            c.actors.len(),
            c.sinks.len()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `ocellus replay`: each `[[source]]` is fed `world/<source name>/image` of the recording,
/// at the recorded pace or as fast as the pipeline takes frames; the agent gets what it
/// received when the recording was made.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Recording (`.rrd`) written by a Rerun sink.
    pub recording: PathBuf,
    /// Pipeline configuration (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// At the recorded pace (the default).
    #[arg(long, conflicts_with = "fast")]
    pub realtime: bool,
    /// As fast as the pipeline takes frames (outputs are the same: time is the recorded one).
    #[arg(long)]
    pub fast: bool,
    /// Where the pipeline's Rerun sink sends its recording instead (`--save` writes the one
    /// saving sink's file elsewhere).
    #[command(flatten)]
    pub rerun: RerunOverride,
}

impl ReplayArgs {
    /// Replays the recording through the pipeline.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut config = PipelineConfig::load_with(&self.config, fetching())?;
        let timing = if self.fast { ReplayTiming::Fast } else { ReplayTiming::Realtime };
        let (index, ctx) = crate::replay::prepare(&mut config, &self.recording, timing, self.rerun.save.as_deref())?;
        if self.rerun.save.is_none() {
            self.rerun.apply(&mut config)?;
        }
        for (camera, c) in &index.cameras {
            println!("{}: camera {camera}, {} images", self.recording.display(), c.frames);
        }
        run_config(&config, ctx)
    }
}

/// `ocellus weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// What to do.
    #[command(subcommand)]
    pub what: WeightsCommand,
}

/// `ocellus weights import | init`.
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Official checkpoint (Hiera `.pth`, SAM 2 `.pt`, open_clip `.bin`/`.pt`, DiffMAE `.pth`,
    /// Llama 3 Hugging Face or Meta folder) → safetensors with the official key names and a
    /// manifest; every missing, unexpected or mis-shaped key is an error.
    Import(ImportArgs),
    /// Seeded random weights (tests, offline demos).
    Init(InitArgs),
    /// Downloads official checkpoints from where their authors publish them, then converts
    /// and checks them as `import` does (Hugging Face: `HF_TOKEN` for gated models,
    /// `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE=1`).
    Fetch(FetchArgs),
    /// Every model `fetch` knows: where it comes from, its licence, whether it is present.
    List(ListArgs),
    /// An image encoder (Hiera, a SAM 2 image encoder, a CLIP image tower) exported to ONNX
    /// from its official PyTorch module, for `backend = "onnx"`; checked against the native
    /// forward through ONNX Runtime. Needs a Python with torch, onnx and the model's package
    /// (hiera-transformer, sam2 or open-clip-torch): the venv of `scripts/bootstrap` has them.
    ExportOnnx(ExportOnnxArgs),
}

/// `ocellus weights export-onnx`.
#[derive(Debug, Args)]
pub struct ExportOnnxArgs {
    /// Model name (`hiera_base_plus_224`, `sam2.1_hiera_tiny`, `ViT-B-32-quickgelu`, ...).
    #[arg(long)]
    pub model: String,
    /// Its weights (from `ocellus weights fetch`, `import` or `init`).
    #[arg(long)]
    pub weights: PathBuf,
    /// Output (default `weights/<model>.onnx`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Input height and width (SAM 2 encoders: multiples of 32; default the model's own).
    #[arg(long, num_args = 2, value_names = ["H", "W"])]
    pub resolution: Option<Vec<i64>>,
    /// The Python to export with (default `OCELLUS_PYTHON`, the active venv, then the
    /// bootstrap venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// ONNX opset.
    #[arg(long, default_value_t = crate::onnx_export::DEFAULT_OPSET)]
    pub opset: i64,
}

/// `ocellus weights fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Model names (`sam2.1_hiera_tiny`, `ViT-B-32-quickgelu`, `llama-3.2-1b-instruct`, ...).
    #[arg(required = true)]
    pub models: Vec<String>,
    /// Folder of the converted weights.
    #[arg(long, default_value = "weights")]
    pub dir: PathBuf,
    /// Fetch again even if the weights are there.
    #[arg(long)]
    pub force: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `ocellus weights list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Folder of the converted weights.
    #[arg(long, default_value = "weights")]
    pub dir: PathBuf,
}

/// `ocellus weights import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Model name (`hiera_tiny_224`, `sam2.1_hiera_tiny`, `ViT-B-32-quickgelu`,
    /// `llama-3.2-1b-instruct`, ...).
    #[arg(long)]
    pub model: String,
    /// The checkpoint (SMPL: your `SMPL_NEUTRAL.pkl` or an `.npz` of its arrays).
    #[arg(long = "from")]
    pub from: PathBuf,
    /// SMPL only: HMR 2.0's 19-joint regressor (`SMPL_to_J19.pkl`), for the 44 joints LART reads.
    #[arg(long)]
    pub extra_regressor: Option<PathBuf>,
    /// Llama 3 only: store the linear layers quantized, `int8`, `int4` (groups of 128) or
    /// `int4:<32|64|128|256>` (the agent's `dtype` then follows the file).
    #[arg(long)]
    pub quantize: Option<String>,
    /// Output (default `weights/<model>.safetensors`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `ocellus weights init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Output (default `weights/<model>.safetensors`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl WeightsArgs {
    /// Imports, initializes, fetches or lists, and prints what it did.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let manifest = match self.what {
            WeightsCommand::List(ListArgs { dir }) => {
                println!("{:<26} {:<8} {:<40} source", "model", "present", "licence");
                for (name, source, licence, present) in crate::fetch::list(&dir) {
                    println!("{name:<26} {:<8} {licence:<40} {source}", if present { "yes" } else { "no" });
                }
                return Ok(ExitCode::SUCCESS);
            }
            WeightsCommand::Fetch(FetchArgs { models, dir, force, quiet }) => {
                // Every name is checked before anything is downloaded.
                for m in &models {
                    crate::fetch::known(m)?;
                }
                for m in &models {
                    let out = dir.join(format!("{m}.safetensors"));
                    if out.exists() && !force {
                        println!("{m}: {} is there (--force to fetch again)", out.display());
                        continue;
                    }
                    let fetched = crate::fetch::fetch(m, &out, !quiet)?;
                    println!(
                        "{m} → {} (download sha256 {}, weights sha256 {})",
                        out.display(),
                        fetched.source_sha256,
                        fetched.manifest.sha256
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            WeightsCommand::ExportOnnx(ExportOnnxArgs { model, weights, out, resolution, python, opset }) => {
                let out = out.unwrap_or_else(|| Path::new("weights").join(format!("{model}.onnx")));
                let resolution = resolution.map(|r| (r[0], r[1]));
                let python = crate::onnx_export::python(python.as_deref());
                let exported = crate::onnx_export::export(&model, &weights, &out, resolution, &python, opset)?;
                println!("exported {model} → {}", out.display());
                for (name, shape) in &exported.outputs {
                    println!("  {name} {shape:?}");
                }
                println!(
                    "max abs difference to the native forward (f32, seeded input): {:.2e}",
                    exported.max_abs_error
                );
                return Ok(ExitCode::SUCCESS);
            }
            WeightsCommand::Import(ImportArgs { model, from, extra_regressor, quantize, out }) => {
                let out = out.unwrap_or_else(|| tools::default_weights_path(&model));
                let m = match quantize {
                    Some(q) if extra_regressor.is_none() => tools::import_quantized(&model, &from, &out, &q)?,
                    Some(_) => anyhow::bail!("--quantize and --extra-regressor are for different models"),
                    None => tools::import_with_extra(&model, &from, extra_regressor.as_deref(), &out)?,
                };
                println!("imported {} → {}", from.display(), out.display());
                m
            }
            WeightsCommand::Init(InitArgs { model, seed, out }) => {
                let out = out.unwrap_or_else(|| tools::default_weights_path(&model));
                let m = tools::init(&model, seed, &out)?;
                println!("initialized {model} (seed {seed}) → {}", out.display());
                m
            }
        };
        println!("model {}, sha256 {}", manifest.model, manifest.sha256);
        Ok(ExitCode::SUCCESS)
    }
}

/// `ocellus schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write it to this file instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SchemaArgs {
    /// Prints or writes the schema.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let text = crate::config::schema::schema_text();
        match self.out {
            Some(path) => std::fs::write(&path, text)?,
            None => print!("{text}"),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `ocellus info`.
#[derive(Debug, Args)]
pub struct InfoArgs {}

impl InfoArgs {
    /// Prints what this build finds.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        println!("ocellus {}", env!("CARGO_PKG_VERSION"));
        println!("libtorch: cuda available = {}, devices = {}", tch::Cuda::is_available(), tch::Cuda::device_count());
        match ocellus_perception::onnx::init() {
            Ok(info) => println!("onnxruntime: {} ({})", info.path.display(), info.build_info),
            Err(e) => println!("onnxruntime: {e}"),
        }
        ocellus_io::source::gst::init()?;
        println!("gstreamer: {}", ocellus_io::source::gst::version());
        println!("node kinds:");
        for (kind, doc) in PipelineConfig::kind_names() {
            println!("  {kind:<12} {}", doc.lines().next().unwrap_or(""));
        }
        Ok(ExitCode::SUCCESS)
    }
}
