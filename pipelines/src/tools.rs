//! `ocellus weights import | init`, for the vision models (Hiera, SAM 2), DiffMAE and Llama 3.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ocellus_language::config::{LlamaConfig, MetaParams};
use ocellus_language::llama::Llama;
use ocellus_perception::PerceptionError;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::diffmae::{DiffMae, DiffMaeConfig};
use ocellus_perception::weights::{self, Manifest};
use tch::{Device, Kind, Tensor};

/// Default output of the weights commands: `weights/<model>.safetensors`.
pub fn default_weights_path(model: &str) -> PathBuf {
    Path::new("weights").join(format!("{model}.safetensors"))
}

/// Converts an official checkpoint of `model` to safetensors at `out`, verifies every key
/// against the architecture, and writes the manifest.
pub fn import(model: &str, checkpoint: &Path, out: &Path) -> anyhow::Result<Manifest> {
    if LlamaConfig::by_name(model).is_ok() {
        return import_llama(model, checkpoint, out);
    }
    if let Some(config) = DiffMaeConfig::by_name(model) {
        return Ok(import_diffmae(model, &config, checkpoint, out)?);
    }
    Ok(import_vision(model, checkpoint, out)?)
}

/// DiffMAE from a checkpoint in MAE's layout (`model` / `state_dict` of a `.pth`, or
/// safetensors) with the DiffMAE decoder's keys; every key is checked.
fn import_diffmae(
    model: &str,
    config: &DiffMaeConfig,
    checkpoint: &Path,
    out: &Path,
) -> Result<Manifest, PerceptionError> {
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    DiffMae::new(&vs.root(), config)?;
    let tmp = out.with_extension("safetensors.partial");
    weights::convert_checkpoint(checkpoint, &tmp)?;
    if let Err(e) = weights::load(&mut vs, &tmp, weights::Scope::Exact) {
        std::fs::remove_file(&tmp).ok();
        return Err(e);
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| PerceptionError::Weights { path: out.to_path_buf(), message: e.to_string() })?;
    let json = serde_json::to_value(config)
        .map_err(|e| PerceptionError::Config { model: "diffmae", message: e.to_string() })?;
    weights::write_manifest(out, model, json, format!("import {}", checkpoint.display()))
}

fn import_vision(model: &str, checkpoint: &Path, out: &Path) -> Result<Manifest, PerceptionError> {
    let mut backbone = Backbone::new(model, Device::Cpu)?;
    let tmp = out.with_extension("safetensors.partial");
    weights::convert_checkpoint(checkpoint, &tmp)?;
    let verified = backbone.load(&tmp);
    if let Err(e) = verified {
        std::fs::remove_file(&tmp).ok();
        return Err(e);
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| PerceptionError::Weights { path: out.to_path_buf(), message: e.to_string() })?;
    weights::write_manifest(out, model, backbone.config().clone(), format!("import {}", checkpoint.display()))
}

/// Writes seeded random weights of `model` to `out`, with the manifest.
pub fn init(model: &str, seed: i64, out: &Path) -> anyhow::Result<Manifest> {
    if let Ok(config) = LlamaConfig::by_name(model) {
        let llama = Llama::random(config.clone(), seed, Device::Cpu, Kind::Float)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        llama.save(out)?;
        return Ok(weights::write_manifest(out, model, serde_json::to_value(&config)?, format!("init seed={seed}"))?);
    }
    if let Some(config) = DiffMaeConfig::by_name(model) {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        DiffMae::new(&vs.root(), &config)?;
        weights::init_seeded(&vs, seed)?;
        return Ok(weights::save(&vs, out, model, serde_json::to_value(&config)?, format!("init seed={seed}"))?);
    }
    Ok(init_vision(model, seed, out)?)
}

fn init_vision(model: &str, seed: i64, out: &Path) -> Result<Manifest, PerceptionError> {
    let backbone = Backbone::new(model, Device::Cpu)?;
    backbone.init_seeded(seed)?;
    weights::save(backbone.var_store(), out, model, backbone.config().clone(), format!("init seed={seed}"))
}

/// Llama 3 from a Hugging Face folder (`config.json` + `*.safetensors` shards), a Meta folder
/// (`params.json` + `consolidated.00.pth`), or a single file of either layout. The result is
/// one safetensors file in transformers' layout (Meta's q/k rows permuted), in the
/// checkpoint's dtype, every key and shape checked.
fn import_llama(model: &str, from: &Path, out: &Path) -> anyhow::Result<Manifest> {
    let preset = LlamaConfig::by_name(model)?;
    let dir = if from.is_dir() { from.to_path_buf() } else { from.parent().map(Path::to_path_buf).unwrap_or_default() };
    let config = if dir.join("config.json").exists() {
        LlamaConfig::from_json(&std::fs::read_to_string(dir.join("config.json"))?)?
    } else if dir.join("params.json").exists() {
        let params: MetaParams =
            serde_json::from_str(&std::fs::read_to_string(dir.join("params.json"))?).context("params.json")?;
        // llama-models hard-codes factor 8; the model's own factor comes from its name.
        let factor = preset.rope_scaling.map_or(8.0, |s| s.factor);
        let mut c = LlamaConfig::from_meta_params(&params, factor, preset.max_position_embeddings)?;
        c.tie_word_embeddings = preset.tie_word_embeddings;
        c
    } else {
        preset.clone()
    };
    let files: Vec<PathBuf> = if from.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(from)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.ends_with(".safetensors") || (name.starts_with("consolidated.") && name.ends_with(".pth"))
            })
            .collect();
        f.sort();
        f
    } else {
        vec![from.to_path_buf()]
    };
    anyhow::ensure!(!files.is_empty(), "{}: no *.safetensors or consolidated.*.pth found", from.display());
    let pth: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "pth")).collect();
    anyhow::ensure!(pth.len() <= 1, "model-parallel Meta checkpoints ({} shards) are not supported", pth.len());
    let mut tensors = Vec::new();
    let mut converted = Vec::new();
    for file in &files {
        let path = if file.extension().is_some_and(|e| e == "pth") {
            let tmp = out.with_extension(format!("{}.partial", converted.len()));
            weights::convert_checkpoint(file, &tmp)?;
            converted.push(tmp.clone());
            tmp
        } else {
            file.clone()
        };
        tensors.extend(Tensor::read_safetensors(&path).with_context(|| path.display().to_string())?);
    }
    let kind = tensors.first().map_or(Kind::Float, |(_, t)| t.kind());
    let llama = Llama::from_tensors(config.clone(), tensors, Device::Cpu, kind, from);
    converted.iter().for_each(|p| drop(std::fs::remove_file(p)));
    let llama = llama?;
    if let Some(parent) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    llama.save(out)?;
    Ok(weights::write_manifest(out, model, serde_json::to_value(&config)?, format!("import {}", from.display()))?)
}
