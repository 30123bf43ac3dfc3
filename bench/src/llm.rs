//! `ocellus-bench llm`: Llama 3 prompt and decode speed on this machine, in fp32, bf16, int8
//! and int4, against transformers' `LlamaForCausalLM` in fp32 and bf16 (same shape, threads,
//! prompt and token counts, CPU), and decode speed as a fraction of each format's
//! memory-bandwidth bound (every weight byte it stores is read once per decoded token, at the
//! copy bandwidth measured in the same run). Where a Python with `llama-cpp-python` and `gguf`
//! is found (`OCELLUS_LLAMA_CPP_PYTHON`, else the venv's), also against llama.cpp in F32, Q8_0
//! and Q4_0 on the same seeded weights converted to GGUF, with the share of Ocellus's fp32
//! greedy tokens llama.cpp's F32 reproduces (the conversion kept the model).

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
/// The llama.cpp timing script (GGUF conversion, llama.cpp's quantizer, greedy decoding).
const LLAMA_CPP_SCRIPT: &str = include_str!("../scripts/bench_llm_llamacpp.py");

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
    /// llama.cpp on the same weights, per GGUF type; `Err` says why it did not run.
    pub llama_cpp: Result<Vec<LlamaCppResult>, String>,
}

/// llama.cpp's speed on one GGUF file of the same weights.
#[derive(Debug, Clone)]
pub struct LlamaCppResult {
    /// `llama.cpp F32`, `llama.cpp Q8_0`, `llama.cpp Q4_0`.
    pub name: String,
    /// Prompt tokens per second (prefill and first token).
    pub prompt_tps: f64,
    /// Decode tokens per second.
    pub decode_tps: f64,
    /// Size of the GGUF file (every weight byte is read once per decoded token).
    pub file_bytes: f64,
    /// Share of Ocellus's fp32 greedy tokens this file's greedy decoding reproduces.
    pub greedy_agreement: f64,
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

/// The prompt every timed model gets.
fn prompt_tokens(config: &LlamaConfig, len: usize) -> anyhow::Result<Vec<u32>> {
    let vocab = u32::try_from(config.vocab_size)?;
    Ok((0..len as u32).map(|i| (i * 7919) % vocab.min(128_000)).collect())
}

/// What [`time_ocellus`] measured.
pub(crate) struct Timing {
    /// Prompt tokens per second (median).
    pub prompt_tps: f64,
    /// Decode tokens per second (median).
    pub decode_tps: f64,
    /// The prompt followed by the greedy continuation (every run decodes the same).
    pub tokens: Vec<u32>,
}

/// Prompt and decode tokens/s of `llama` (medians of `runs` after a warm-up; with `runs = 0`
/// only the warm-up: the tokens, rates 0).
pub(crate) fn time_ocellus(llama: &Llama, prompt_len: usize, decode_len: usize, runs: usize) -> anyhow::Result<Timing> {
    let prompt = prompt_tokens(llama.config(), prompt_len)?;
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(decode_len) };
    let mut cache = llama.new_cache(1, (prompt_len + decode_len) as i64)?;
    let (mut prompt_rates, mut decode_rates, mut continuation) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=runs {
        cache.clear()?;
        let g = generate(llama, None, &mut cache, &prompt, &options, |_| ControlFlow::Continue(()))?;
        if i > 0 {
            prompt_rates.push(prompt_len as f64 / g.prefill_secs);
            decode_rates.push((g.tokens.len() - 1) as f64 / g.decode_secs);
        }
        continuation = g.tokens;
    }
    Ok(Timing {
        prompt_tps: median(prompt_rates),
        decode_tps: median(decode_rates),
        tokens: prompt.into_iter().chain(continuation).collect(),
    })
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
    let mut greedy_f32 = None;
    for &format in formats {
        let (kind, quantization) = match format {
            Format::F32 => (Kind::Float, Quantization::None),
            Format::Bf16 => (Kind::BFloat16, Quantization::None),
            Format::Quantized(q) => (quantized_kind(), q),
        };
        let tensors = Llama::random_tensors(&config, 0)?;
        let path = std::path::Path::new("<random>");
        let llama = Llama::from_tensors_quantized(config.clone(), tensors, Device::Cpu, kind, path, quantization)?;
        let t = time_ocellus(&llama, prompt_len, decode_len, runs)?;
        let weight_bytes = llama.bytes_per_token() as f64;
        results.push(FormatResult { format, prompt_tps: t.prompt_tps, decode_tps: t.decode_tps, weight_bytes });
        if format == Format::F32 {
            greedy_f32 = Some(t.tokens);
        }
    }
    let reference_f32 = reference(&config, threads, prompt_len, decode_len, runs, "f32")?;
    let reference_bf16 = reference(&config, threads, prompt_len, decode_len, runs, "bf16")?;
    let llama_cpp = match llama_cpp_python() {
        Err(why) => Err(why),
        Ok(python) => {
            let tokens = match greedy_f32 {
                Some(t) => t,
                None => {
                    let llama = Llama::random(config.clone(), 0, Device::Cpu, Kind::Float)?;
                    time_ocellus(&llama, prompt_len, decode_len, 0)?.tokens
                }
            };
            Ok(llama_cpp(&python, &config, threads, prompt_len, decode_len, runs, &tokens)?)
        }
    };
    Ok(LlmBenchResult {
        model: model.to_owned(),
        formats: results,
        reference_f32,
        reference_bf16,
        bandwidth_gbs,
        llama_cpp,
    })
}

/// A Python that imports `llama_cpp` and `gguf`, or why there is none.
fn llama_cpp_python() -> Result<std::path::PathBuf, String> {
    let python = std::env::var_os("OCELLUS_LLAMA_CPP_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(ocellus_perception::weights::venv_python)
        .ok_or("no Python with llama-cpp-python (set OCELLUS_LLAMA_CPP_PYTHON)")?;
    let ok = std::process::Command::new(&python)
        .args(["-c", "import llama_cpp, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import llama_cpp and gguf (`pip install llama-cpp-python gguf`, which builds llama.cpp; or set OCELLUS_LLAMA_CPP_PYTHON)",
            python.display()
        ))
    }
}

/// llama.cpp on the seeded weights Ocellus timed, converted to GGUF (F32, Q8_0, Q4_0).
fn llama_cpp(
    python: &std::path::Path,
    config: &LlamaConfig,
    threads: i32,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
    tokens: &[u32],
) -> anyhow::Result<Vec<LlamaCppResult>> {
    let scratch = std::env::temp_dir().join(format!("ocellus-bench-llama-cpp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| -> anyhow::Result<Vec<LlamaCppResult>> {
        let weights = scratch.join("weights.safetensors");
        Tensor::write_safetensors(&Llama::random_tensors(config, 0)?, &weights)?;
        let config_path = scratch.join("config.json");
        std::fs::write(&config_path, serde_json::to_string(config)?)?;
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let out = std::process::Command::new(python)
            .arg("-c")
            .arg(LLAMA_CPP_SCRIPT)
            .args([&weights, &config_path])
            .args([threads.to_string(), prompt_len.to_string(), decode_len.to_string(), runs.to_string()])
            .arg(scratch.join("gguf"))
            .arg(list.join(","))
            .output()?;
        anyhow::ensure!(out.status.success(), "llama.cpp run failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = Vec::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("gguf ")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> anyhow::Result<f64> {
                f.get(i).and_then(|v| v.parse().ok()).with_context(|| format!("llama.cpp output {line:?}"))
            };
            rows.push(LlamaCppResult {
                name: format!("llama.cpp {}", f.first().copied().unwrap_or("?")),
                prompt_tps: num(1)?,
                decode_tps: num(2)?,
                file_bytes: num(3)?,
                greedy_agreement: num(4)?,
            });
        }
        anyhow::ensure!(!rows.is_empty(), "llama.cpp printed no results: {text}");
        Ok(rows)
    })();
    std::fs::remove_dir_all(&scratch).ok();
    result
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
