//! `ocellus-bench llm`: Llama 3 prompt and decode speed on this machine, in fp32, bf16, int8
//! and int4, against transformers' `LlamaForCausalLM` in fp32 and bf16 (same shape, threads,
//! prompt and token counts, CPU), and decode speed as a fraction of each format's
//! memory-bandwidth bound (every weight byte it stores is read once per decoded token, at the
//! copy bandwidth measured in the same run).

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::Context as _;
use ocellus_language::config::LlamaConfig;
use ocellus_language::generate::{GenerateOptions, generate};
use ocellus_language::llama::Llama;
use ocellus_language::quant::Quantization;
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_llm_reference.py");

/// A weight format Ocellus runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// fp32 weights and activations.
    F32,
    /// bf16 weights and activations.
    Bf16,
    /// Linear layers quantized (fp32 elsewhere; the kernels take bf16 activations).
    Quantized(Quantization),
}

impl Format {
    /// `f32`, `bf16`, `int8`, `int4`, `int4:<group>`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "f32" | "fp32" => Self::F32,
            "bf16" => Self::Bf16,
            other => Self::Quantized(Quantization::parse(other)?),
        })
    }

    /// Its name in tables.
    pub fn name(self) -> String {
        match self {
            Self::F32 => "fp32".into(),
            Self::Bf16 => "bf16".into(),
            Self::Quantized(q) => q.name(),
        }
    }
}

/// Ocellus's speed in one format.
#[derive(Debug, Clone)]
pub struct FormatResult {
    /// The format.
    pub format: Format,
    /// Prompt tokens per second (prefill and first token).
    pub prompt_tps: f64,
    /// Decode tokens per second.
    pub decode_tps: f64,
    /// Weight bytes read per decoded token.
    pub weight_bytes: f64,
}

/// One run of the comparison.
#[derive(Debug, Clone)]
pub struct LlmBenchResult {
    /// Model shape.
    pub model: String,
    /// Ocellus, per format.
    pub formats: Vec<FormatResult>,
    /// transformers fp32: prompt and decode tokens per second.
    pub reference_f32: (f64, f64),
    /// transformers bf16: prompt and decode tokens per second.
    pub reference_bf16: (f64, f64),
    /// Measured copy bandwidth, GB/s (bytes read + written).
    pub bandwidth_gbs: f64,
}

impl LlmBenchResult {
    /// Decode tokens/s if the `bytes` read per token streamed at the copy bandwidth.
    pub fn bound_tps(&self, bytes: f64) -> f64 {
        self.bandwidth_gbs * 1e9 / bytes
    }
}

/// Copy bandwidth of a 1 GiB fp32 buffer on the CPU (median of 5), GB/s counting read and
/// write.
fn copy_bandwidth() -> anyhow::Result<f64> {
    copy_bandwidth_on(Device::Cpu, 1 << 28)
}

/// Copy bandwidth of an fp32 buffer of `elements` on `device` (median of 5), GB/s counting
/// read and write.
pub(crate) fn copy_bandwidth_on(device: Device, elements: i64) -> anyhow::Result<f64> {
    let src = Tensor::f_ones([elements], (Kind::Float, device))?;
    let mut dst = Tensor::f_zeros([elements], (Kind::Float, device))?;
    let mut rates = Vec::new();
    for _ in 0..6 {
        crate::device::synchronize(device);
        let start = Instant::now();
        dst.f_copy_(&src)?;
        crate::device::synchronize(device);
        rates.push(2.0 * 4.0 * elements as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Prompt and decode tokens/s of `llama` (medians of `runs` after a warm-up).
pub(crate) fn time_ocellus(
    llama: &Llama,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let vocab = u32::try_from(llama.config().vocab_size)?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7919) % vocab.min(128_000)).collect();
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(decode_len) };
    let mut cache = llama.new_cache(1, (prompt_len + decode_len) as i64)?;
    let (mut prompt_rates, mut decode_rates) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        cache.clear()?;
        let g = generate(llama, None, &mut cache, &prompt, &options, |_| ControlFlow::Continue(()))?;
        if i > 0 {
            prompt_rates.push(prompt_len as f64 / g.prefill_secs);
            decode_rates.push((g.tokens.len() - 1) as f64 / g.decode_secs);
        }
    }
    Ok((median(prompt_rates), median(decode_rates)))
}

/// Times `model` (a name of [`LlamaConfig::by_name`]) here in each of `formats` and in
/// transformers (fp32 and bf16), on seeded weights, in one run.
pub fn run(
    model: &str,
    threads: i32,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
    formats: &[Format],
) -> anyhow::Result<LlmBenchResult> {
    tch::set_num_threads(threads);
    let config = LlamaConfig::by_name(model)?;
    let bandwidth_gbs = copy_bandwidth()?;
    let mut results = Vec::new();
    for &format in formats {
        let (kind, quantization) = match format {
            Format::F32 => (Kind::Float, Quantization::None),
            Format::Bf16 => (Kind::BFloat16, Quantization::None),
            Format::Quantized(q) => (quantized_kind(), q),
        };
        let tensors = Llama::random_tensors(&config, 0)?;
        let path = std::path::Path::new("<random>");
        let llama = Llama::from_tensors_quantized(config.clone(), tensors, Device::Cpu, kind, path, quantization)?;
        let (prompt_tps, decode_tps) = time_ocellus(&llama, prompt_len, decode_len, runs)?;
        results.push(FormatResult { format, prompt_tps, decode_tps, weight_bytes: llama.bytes_per_token() as f64 });
    }
    let reference_f32 = reference(&config, threads, prompt_len, decode_len, runs, "f32")?;
    let reference_bf16 = reference(&config, threads, prompt_len, decode_len, runs, "bf16")?;
    Ok(LlmBenchResult { model: model.to_owned(), formats: results, reference_f32, reference_bf16, bandwidth_gbs })
}

/// transformers' prompt and decode tokens/s in `dtype`.
fn reference(
    config: &LlamaConfig,
    threads: i32,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
    dtype: &str,
) -> anyhow::Result<(f64, f64)> {
    let scratch = std::env::temp_dir().join(format!("ocellus-bench-llm-{}.json", std::process::id()));
    let mut cfg = serde_json::to_value(config)?;
    if let Some(obj) = cfg.as_object_mut() {
        // transformers 5 takes the RoPE settings as `rope_parameters`.
        let mut rope = serde_json::json!({"rope_type": "default", "rope_theta": config.rope_theta});
        if let Some(s) = config.rope_scaling {
            rope = serde_json::json!({"rope_type": "llama3", "rope_theta": config.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings});
        }
        obj.remove("rope_scaling");
        obj.remove("rope_theta");
        obj.insert("rope_parameters".into(), rope);
    }
    std::fs::write(&scratch, cfg.to_string())?;
    let python = ocellus_perception::weights::venv_python().context("no venv Python: run scripts/bootstrap")?;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(REFERENCE_SCRIPT)
        .arg(&scratch)
        .args([threads.to_string(), prompt_len.to_string(), decode_len.to_string(), runs.to_string()])
        .arg(dtype)
        .output()?;
    std::fs::remove_file(&scratch).ok();
    anyhow::ensure!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().filter_map(|s| s.parse::<f64>().ok());
    Ok((numbers.next().context("reference output")?, numbers.next().context("reference output")?))
}

/// The activations' type of a quantized model in this bench: fp32 around the bf16 kernels, as
/// the agent runs it on the CPU (`OCELLUS_BENCH_QUANT_KIND=bf16` runs the rest of the model in
/// bf16 too).
fn quantized_kind() -> Kind {
    match std::env::var("OCELLUS_BENCH_QUANT_KIND").as_deref() {
        Ok("bf16") => Kind::BFloat16,
        _ => Kind::Float,
    }
}
