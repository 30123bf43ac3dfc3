#![allow(clippy::unwrap_used)]
//! Llama 3 against the reference implementations on the same seeded random weights (fp32,
//! CPU), from `tests/fixtures/generate_language.py`:
//! - the Llama 3.2 1B shape (full width, heads, vocabulary, tied embeddings, RoPE factor 32)
//!   with 2 of its 16 layers, in the Hugging Face layout, against transformers'
//!   `LlamaForCausalLM` and Meta's reference `Transformer`: prompt logits, 32 greedy tokens,
//!   and incremental decoding with the KV cache equal to full recomputation;
//! - the Llama 3.1 8B shape reduced to 2 layers and a 16384-token vocabulary in Meta's layout
//!   (`consolidated.00.pth`, imported by `ocellus weights import`) against Meta's reference
//!   and against transformers on the converted weights: Meta-layout weights give the outputs
//!   of HF-layout ones.
//!
//! Depth and the 8B vocabulary are reduced to keep the fixtures small; every code path runs
//! at full width, and the full-depth presets are checked against the fixtures' configs.

use std::ops::ControlFlow;

use ocellus_language::config::{LlamaConfig, MetaParams};
use ocellus_language::generate::{Finish, GenerateOptions, generate, generate_batch};
use ocellus_language::llama::Llama;
use ocellus_tests::{assert_close, fixture_io, fixtures_dir, scratch_dir};
use tch::{Device, Kind, Tensor};

/// Max abs error allowed on logits (fp32; logits have magnitude about 4 here).
const LOGITS_TOL: f64 = 2e-4;

/// The two big models (5 and 6 GB of fp32 weights) run one at a time.
static BIG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn one_big_model() -> std::sync::MutexGuard<'static, ()> {
    BIG.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    Vec::<i64>::try_from(t).unwrap().into_iter().map(|x| x as u32).collect()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).unsqueeze(0)
}

/// Logits of every position: the prompt in one pass, then one token at a time from the cache.
fn incremental_logits(model: &Llama, prompt: &[u32], continuation: &[u32]) -> Tensor {
    let mut cache = model.new_cache(1, (prompt.len() + continuation.len()) as i64).unwrap();
    let mut parts = vec![model.forward(&row(prompt), None, &mut cache, false).unwrap().squeeze_dim(0)];
    for &t in continuation {
        parts.push(model.forward(&row(&[t]), None, &mut cache, false).unwrap().squeeze_dim(0));
    }
    Tensor::cat(&parts, 0)
}

fn full_logits(model: &Llama, tokens: &[u32]) -> Tensor {
    let mut cache = model.new_cache(1, tokens.len() as i64).unwrap();
    model.forward(&row(tokens), None, &mut cache, false).unwrap().squeeze_dim(0)
}

#[test]
fn llama_3_2_1b_matches_transformers_and_meta() {
    let _one = one_big_model();
    let dir = fixtures_dir();
    let config = LlamaConfig::from_json(&std::fs::read_to_string(dir.join("llama_1b_2l.json")).unwrap()).unwrap();
    let preset = LlamaConfig::by_name("llama-3.2-1b").unwrap();
    assert_eq!(preset.num_hidden_layers, 16);
    assert_eq!(config, preset.with_layers(2), "config.json reads as the published 1B config (2 layers)");
    assert_eq!(config.rope_scaling.unwrap().factor, 32.0);
    let model = Llama::load(config, &dir.join("llama_1b_2l.weights.safetensors"), Device::Cpu, Kind::Float).unwrap();
    let io = fixture_io("llama_1b_2l");
    let prompt = ids_of(&io["prompt"]);
    let reference_greedy = ids_of(&io["greedy"]);

    let logits = full_logits(&model, &prompt);
    assert_close("1B prompt logits vs transformers", &logits, &io["logits"], LOGITS_TOL);
    assert_close("1B prompt logits vs llama-models", &logits, &io["meta_logits"], LOGITS_TOL);

    let mut cache = model.new_cache(1, 256).unwrap();
    let mut streamed = Vec::new();
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(reference_greedy.len()) };
    let generation = generate(&model, None, &mut cache, &prompt, &options, |t| {
        streamed.push(t.id);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(generation.tokens, reference_greedy, "32 greedy tokens equal transformers' generate");
    assert_eq!(streamed, reference_greedy, "every token is streamed");
    assert_eq!(generation.finish, Finish::Limit);

    let incremental = incremental_logits(&model, &prompt, &reference_greedy);
    let mut all = prompt.clone();
    all.extend(&reference_greedy);
    assert_close("1B KV-cache decoding vs full recomputation", &incremental, &full_logits(&model, &all), LOGITS_TOL);
    assert_close("1B KV-cache decoding vs transformers' full pass", &incremental, &io["full_logits"], LOGITS_TOL);

    // A left-padded batch gives each row the tokens it gets alone.
    let short = prompt[prompt.len() / 2..].to_vec();
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(6) };
    let mut batch_cache = model.new_cache(2, 128).unwrap();
    let batch = generate_batch(&model, &mut batch_cache, &[prompt.clone(), short.clone()], 128_004, &options).unwrap();
    assert_eq!(batch[0].tokens, reference_greedy[..6].to_vec(), "batched row 0");
    let mut alone = model.new_cache(1, 128).unwrap();
    let short_alone = generate(&model, None, &mut alone, &short, &options, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(batch[1].tokens, short_alone.tokens, "batched row 1 (left-padded)");

    // The budget is enforced: a cache too small for the prompt generates nothing.
    let mut tiny = model.new_cache(1, 4).unwrap();
    assert!(model.forward(&row(&prompt), None, &mut tiny, true).is_err());
    let none = generate(&model, None, &mut tiny, &prompt, &options, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(none.finish, Finish::Budget);
}

#[test]
fn meta_layout_8b_shape_matches_meta_and_transformers() {
    let _one = one_big_model();
    let dir = fixtures_dir();
    let params: MetaParams =
        serde_json::from_str(&std::fs::read_to_string(dir.join("llama_8b_2l.params.json")).unwrap()).unwrap();
    let config = LlamaConfig::from_meta_params(&params, 8.0, 131_072).unwrap();
    let mut expected = LlamaConfig::by_name("llama-3.1-8b").unwrap().with_layers(2);
    expected.vocab_size = params.vocab_size;
    assert_eq!(config, expected, "the 8B shape, 2 layers, the fixture's vocabulary");
    // `ocellus weights import` on a Meta folder (params.json + consolidated.00.pth): the
    // checkpoint is read by PyTorch, converted to transformers' layout, checked and saved.
    let scratch = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "llama_8b_2l");
    let meta_dir = scratch.join("Llama-3.1-8B-2L");
    std::fs::create_dir_all(&meta_dir).unwrap();
    std::os::unix::fs::symlink(dir.join("llama_8b_2l.params.json"), meta_dir.join("params.json")).unwrap();
    std::os::unix::fs::symlink(dir.join("llama_8b_2l.consolidated.00.pth"), meta_dir.join("consolidated.00.pth"))
        .unwrap();
    let imported = scratch.join("llama-3.1-8b-2l.safetensors");
    let manifest = ocellus_pipelines::tools::import("llama-3.1-8b", &meta_dir, &imported).unwrap();
    assert_eq!(manifest.config["num_hidden_layers"], 2, "the folder's params.json wins over the preset");
    let keys: Vec<String> = Tensor::read_safetensors(&imported).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"model.layers.1.self_attn.q_proj.weight".to_owned()), "saved in transformers' layout");
    let model = Llama::load(config.clone(), &imported, Device::Cpu, Kind::Float).unwrap();
    let io = fixture_io("llama_8b_2l");
    let prompt = ids_of(&io["prompt"]);
    let logits = full_logits(&model, &prompt);
    assert_close("8B-2L (Meta layout) logits vs llama-models", &logits, &io["meta_logits"], LOGITS_TOL);
    assert_close("8B-2L (Meta layout) logits vs transformers (HF layout)", &logits, &io["hf_logits"], LOGITS_TOL);
    let reference = ids_of(&io["meta_greedy"]);
    let mut cache = model.new_cache(1, 128).unwrap();
    let options = GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(reference.len()) };
    let generation = generate(&model, None, &mut cache, &prompt, &options, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(generation.tokens, reference, "greedy tokens equal llama-models' incremental decoding");
    drop((cache, model));

    // `--quantize int4`: the linear layers stored quantized (the untied LM head too), read back
    // and checked; it loads as int4 by itself, and runs as the same layers quantized at load.
    let int4_64 = ocellus_language::quant::Quantization::Int4 { group: 64 };
    let quantized = scratch.join("llama-3.1-8b-2l.int4.safetensors");
    let q_manifest =
        ocellus_pipelines::tools::import_quantized("llama-3.1-8b", &meta_dir, &quantized, "int4:64").unwrap();
    assert!(q_manifest.source.ends_with("(quantized int4:64)"), "{}", q_manifest.source);
    let keys: Vec<String> = Tensor::read_safetensors(&quantized).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"lm_head.weight_int4".to_owned()) && !keys.contains(&"lm_head.weight".to_owned()));
    let int4 = Llama::load(config.clone(), &quantized, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(int4.quantization(), int4_64);
    let stored_logits = full_logits(&int4, &prompt);
    drop(int4);
    let at_load = Llama::load_quantized(config, &imported, Device::Cpu, Kind::Float, int4_64).unwrap();
    assert_eq!(ocellus_tests::max_abs_diff(&stored_logits, &full_logits(&at_load, &prompt)), 0.0);
    drop(at_load);
    let (size, dense_size) =
        (std::fs::metadata(&quantized).unwrap().len(), std::fs::metadata(&imported).unwrap().len());
    std::fs::remove_dir_all(&scratch).ok();
    println!(
        "8B-2L int4:64 file {:.0} MB (fp32 {:.0} MB), max abs logit error vs fp32 {:.3}",
        size as f64 / 1e6,
        dense_size as f64 / 1e6,
        ocellus_tests::max_abs_diff(&stored_logits, &logits)
    );
}

#[test]
fn wrong_weights_name_every_bad_key() {
    let config = LlamaConfig::by_name("llama-3.2-1b").unwrap().with_layers(1);
    let mut tensors = Llama::random_tensors(&config, 1).unwrap();
    tensors.retain(|(k, _)| k != "model.norm.weight");
    tensors.push(("model.layers.0.self_attn.q_proj.bias".into(), Tensor::zeros([2048], (Kind::Float, Device::Cpu))));
    let err = Llama::from_tensors(config, tensors, Device::Cpu, Kind::Float, std::path::Path::new("x.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.norm.weight") && err.contains("q_proj.bias"), "{err}");
}
