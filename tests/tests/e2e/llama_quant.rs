#![allow(clippy::unwrap_used)]
//! Weight-only int8 and int4 Llama against PyTorch (`tests/fixtures/generate_quant.py`): the
//! Llama 3.2 1B shape with 2 layers (`llama_1b_2l`'s seeded weights), every linear layer and
//! the tied LM head quantized as gpt-fast quantizes them, run by the same ATen kernels.
//!
//! - The quantized values and scales are PyTorch's bit for bit (SHA-256 of every layer's).
//! - The kernels' outputs are PyTorch's bit for bit (layer 0's q_proj on 7 rows, the LM head
//!   on 3).
//! - The whole model's logits match transformers' `LlamaForCausalLM` with the quantized
//!   layers as closely as the fp32 model matches it (the attention and norms are ours), and
//!   its greedy tokens are the same.
//! - A file quantized by `quant::quantize_named` loads to the same model (int8 here; int4 files
//!   in `llama_parity`, through `ocellus weights import --quantize`).
//! - The error against the fp32 model is reported (max abs logit error, greedy agreement).

use std::collections::HashMap;

use ocellus_language::config::LlamaConfig;
use ocellus_language::llama::Llama;
use ocellus_language::quant::{self, QLinear, Quantization};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir, max_abs_diff, scratch_dir};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// Max abs error allowed on logits (as the fp32 parity: the same attention, norms and RoPE).
const LOGITS_TOL: f64 = 2e-4;

fn sha256(t: &Tensor) -> String {
    let t = t.contiguous();
    let bytes = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; bytes];
    t.copy_data_u8(&mut buf, t.numel());
    Sha256::digest(&buf).iter().map(|b| format!("{b:02x}")).collect()
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn logits(model: &Llama, tokens: &[i64]) -> Tensor {
    let mut cache = model.new_cache(1, tokens.len() as i64).unwrap();
    model.forward(&Tensor::from_slice(tokens).unsqueeze(0), None, &mut cache, false).unwrap().squeeze_dim(0)
}

/// Greedy decoding with the KV cache (prefill, then one token per step: the kernels' M = 1).
fn greedy(model: &Llama, prompt: &[i64], n: usize) -> Vec<i64> {
    let mut cache = model.new_cache(1, (prompt.len() + n) as i64).unwrap();
    let mut next = model.forward(&Tensor::from_slice(prompt).unsqueeze(0), None, &mut cache, true).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = next.argmax(-1, false).int64_value(&[0, 0]);
        out.push(id);
        next = model.forward(&Tensor::from_slice(&[id]).unsqueeze(0), None, &mut cache, true).unwrap();
    }
    out
}

#[test]
fn int8_and_int4_llama_equal_pytorchs_kernels_on_the_same_quantized_weights() {
    let _one = crate::llama_parity::one_big_model();
    let dir = fixtures_dir();
    let config = LlamaConfig::from_json(&std::fs::read_to_string(dir.join("llama_1b_2l.json")).unwrap()).unwrap();
    let weights = dir.join("llama_1b_2l.weights.safetensors");
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&weights).unwrap().into_iter().collect();
    // Every model below shares these tensors (loading them again would double the memory).
    let shared = || tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect::<Vec<_>>();
    let from = |q: Quantization| {
        Llama::from_tensors_quantized(config.clone(), shared(), Device::Cpu, Kind::Float, &weights, q).unwrap()
    };
    let prompt = ids_of(&fixture_io("quant_int8")["prompt"]);
    let dense = from(Quantization::None);
    let (full, dense_bytes) = (logits(&dense, &prompt), dense.bytes_per_token());
    drop(dense);
    for (mode, quantization) in [
        ("int8", Quantization::Int8),
        ("int4_g32", Quantization::Int4 { group: 32 }),
        ("int4_g128", Quantization::Int4 { group: 128 }),
    ] {
        let case = format!("quant_{mode}");
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap()).unwrap();
        let io = fixture_io(&case);

        // Quantization: every layer's values and scales as PyTorch computes them.
        let digests = expected["digests"].as_object().unwrap();
        assert_eq!(digests.len(), 2 * 7 + 1, "every projection and the LM head");
        for (key, d) in digests {
            let w = if key == "lm_head.weight" { &tensors["model.embed_tokens.weight"] } else { &tensors[key] };
            let (values, scales) = match quantization {
                Quantization::Int8 => quant::quantize_int8(w).unwrap(),
                Quantization::Int4 { group } => quant::quantize_int4(w, group).unwrap(),
                Quantization::None => unreachable!(),
            };
            assert_eq!(sha256(&values), d["values"].as_str().unwrap(), "{mode} {key}: values");
            assert_eq!(sha256(&scales), d["scales"].as_str().unwrap(), "{mode} {key}: scales");
        }

        // The kernels: bit for bit.
        for (key, x, y) in [
            ("model.layers.0.self_attn.q_proj.weight", "x_q", "y_q"),
            ("model.embed_tokens.weight", "x_head", "y_head"),
        ] {
            let layer = QLinear::new(&tensors[key], quantization, Device::Cpu, Kind::Float).unwrap();
            let out = layer.forward(&io[x]).unwrap();
            assert_eq!(max_abs_diff(&out, &io[y]), 0.0, "{mode} {key}: the kernel's output");
        }

        let started = std::time::Instant::now();
        // The model.
        let model = from(quantization);
        assert_eq!(ids_of(&io["prompt"]), prompt);
        let ours = logits(&model, &prompt);
        let last = io["logits"].size()[0];
        let tail = ours.narrow(0, ours.size()[0] - last, last);
        assert_close(&format!("{mode} logits vs transformers with the kernels"), &tail, &io["logits"], LOGITS_TOL);
        let reference_greedy = ids_of(&io["greedy"]);
        assert_eq!(greedy(&model, &prompt, reference_greedy.len()), reference_greedy, "{mode} greedy tokens");

        println!("{mode}: model checks {:.1} s", started.elapsed().as_secs_f64());
        // A file quantized ahead of time loads to the same model.
        if mode == "int8" {
            let stored = quant::quantize_named(shared(), config.tie_word_embeddings, quantization).unwrap();
            let path = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("quant_{mode}")).join("w.safetensors");
            let refs: Vec<(&str, &Tensor)> = stored.iter().map(|(k, t)| (k.as_str(), t)).collect();
            Tensor::write_safetensors(&refs, &path).unwrap();
            drop(refs);
            drop(stored);
            let bytes = std::fs::metadata(&path).unwrap().len();
            let loaded = Llama::load(config.clone(), &path, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(loaded.quantization(), quantization);
            assert_eq!(max_abs_diff(&logits(&loaded, &prompt), &ours), 0.0, "{mode}: stored = quantized at load");
            drop(loaded);
            std::fs::remove_file(&path).ok();
            println!("{mode}: file {:.0} MB", bytes as f64 / 1e6);
        }

        // The error of the format against fp32 (reported: seeded weights, so the logits are
        // nearly flat and greedy agreement says little; trained weights are in the bench).
        let error = max_abs_diff(&full, &ours);
        let agree = full
            .argmax(-1, false)
            .eq_tensor(&ours.argmax(-1, false))
            .to_kind(Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[]);
        println!(
            "{mode}: max abs logit error vs fp32 {error:.4} (logits up to {:.2}); next-token agreement over the prompt's {} positions {agree}; weights read per token {:.0} MB vs {:.0} MB fp32",
            full.abs().max().double_value(&[]),
            prompt.len(),
            model.bytes_per_token() as f64 / 1e6,
            dense_bytes as f64 / 1e6
        );
        assert!(agree > 0 && error < full.abs().max().double_value(&[]), "{mode}: not the same model ({error})");
    }
}
