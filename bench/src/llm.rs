//! `ocellus-bench llm`: Llama 3 prompt and decode speed on this machine against transformers'
//! `LlamaForCausalLM` (same shape, threads, prompt and token counts, fp32 CPU), and decode
//! speed as a fraction of the memory-bandwidth bound (every weight byte is read once per
//! decoded token, at the copy bandwidth measured here).

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::Context as _;
use ocellus_language::config::LlamaConfig;
use ocellus_language::generate::{GenerateOptions, generate};
use ocellus_language::llama::Llama;
use tch::{Device, Kind, Tensor};

/// The reference timing script.
const REFERENCE_SCRIPT: &str = include_str!("../scripts/bench_llm_reference.py");

/// One comparison.
#[derive(Debug, Clone)]
pub struct LlmBenchResult {
    /// Model shape.
    pub model: String,
    /// Prompt tokens per second (prefill and first token), Ocellus.
    pub prompt_tps: f64,
    /// Decode tokens per second, Ocellus.
    pub decode_tps: f64,
    /// The same for transformers.
    pub reference_prompt_tps: f64,
    /// The same for transformers.
    pub reference_decode_tps: f64,
    /// Measured copy bandwidth, GB/s (bytes read + written).
    pub bandwidth_gbs: f64,
    /// Weight bytes read per decoded token.
    pub weight_bytes: f64,
}

impl LlmBenchResult {
    /// Decode tokens/s if every weight byte streamed at the copy bandwidth.
    pub fn bound_tps(&self) -> f64 {
        self.bandwidth_gbs * 1e9 / self.weight_bytes
    }
}

/// Copy bandwidth of a 1 GiB fp32 buffer (median of 5), GB/s counting read and write.
fn copy_bandwidth() -> anyhow::Result<f64> {
    const ELEMENTS: i64 = 1 << 28;
    let src = Tensor::f_ones([ELEMENTS], (Kind::Float, Device::Cpu))?;
    let mut dst = Tensor::f_zeros([ELEMENTS], (Kind::Float, Device::Cpu))?;
    let mut rates = Vec::new();
    for _ in 0..6 {
        let start = Instant::now();
        dst.f_copy_(&src)?;
        rates.push(2.0 * 4.0 * ELEMENTS as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times `model` (a name of [`LlamaConfig::by_name`]) here and in transformers.
pub fn run(
    model: &str,
    threads: i32,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
    bf16: bool,
) -> anyhow::Result<LlmBenchResult> {
    tch::set_num_threads(threads);
    let config = LlamaConfig::by_name(model)?;
    let bandwidth_gbs = copy_bandwidth()?;
    let (kind, bytes) = if bf16 { (Kind::BFloat16, 2.0) } else { (Kind::Float, 4.0) };
    let weight_bytes = config.num_parameters() as f64 * bytes;
    let llama = Llama::random(config.clone(), 0, Device::Cpu, kind)?;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7919) % 128_000).collect();
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(decode_len) };
    let mut cache = llama.new_cache(1, (prompt_len + decode_len) as i64)?;
    let (mut prompt_rates, mut decode_rates) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        cache.clear()?;
        let g = generate(&llama, None, &mut cache, &prompt, &options, |_| ControlFlow::Continue(()))?;
        if i > 0 {
            prompt_rates.push(prompt_len as f64 / g.prefill_secs);
            decode_rates.push((g.tokens.len() - 1) as f64 / g.decode_secs);
        }
    }
    drop(llama);

    let scratch = std::env::temp_dir().join(format!("ocellus-bench-llm-{}.json", std::process::id()));
    let mut cfg = serde_json::to_value(&config)?;
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
        .arg(if bf16 { "bf16" } else { "f32" })
        .output()?;
    std::fs::remove_file(&scratch).ok();
    anyhow::ensure!(out.status.success(), "reference run failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().filter_map(|s| s.parse::<f64>().ok());
    let (reference_prompt_tps, reference_decode_tps) =
        (numbers.next().context("reference output")?, numbers.next().context("reference output")?);
    Ok(LlmBenchResult {
        model: model.to_owned(),
        prompt_tps: median(prompt_rates),
        decode_tps: median(decode_rates),
        reference_prompt_tps,
        reference_decode_tps,
        bandwidth_gbs,
        weight_bytes,
    })
}
