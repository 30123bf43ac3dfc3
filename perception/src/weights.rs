//! Weights: checked loading, seeded initialization, checkpoint import, manifests.
//!
//! Every model builds its variables under the official checkpoint key names, so a weights
//! file is a safetensors file with exactly those keys. Loading checks the key set and shapes
//! both ways and reports every missing, unexpected or mis-shaped key at once.
//!
//! `import` converts an official PyTorch checkpoint (Hiera `.pth`: `{"model_state": …}`,
//! SAM 2 `.pt`: `{"model": …}`, Lightning `.ckpt`: `{"state_dict": …}`, or a bare state dict)
//! natively with `pytorch-reader` (no Python: the pickle is parsed, never run, and other
//! pickled objects such as Lightning's hyper-parameters are left opaque), then verifies the
//! keys against the model's architecture and writes a manifest beside the file.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::{PerceptionError, Result};

/// Where checkpoints keep their state dict, tried in this order (Hiera, SAM 2, Lightning).
const STATE_DICT_KEYS: [&str; 3] = ["model_state", "model", "state_dict"];
/// Standard deviation of seeded random weights.
const INIT_STD: f64 = 0.02;

/// Which keys of a file a model must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The file holds exactly the model's keys.
    Exact,
    /// Only keys under this prefix belong to the model (e.g. `image_encoder.` of a SAM 2
    /// checkpoint); others are ignored.
    Prefix(&'a str),
    /// Only keys under these prefixes belong to the model.
    Prefixes(&'a [&'a str]),
    /// Every key belongs to the model but these, which a released file has and the model
    /// does not use: accepted and ignored by name (an entry ending in `.` is a prefix).
    Ignoring(&'a [&'a str]),
}

impl Scope<'_> {
    /// Whether key `k` of a weights file is the model's.
    pub fn contains(&self, k: &str) -> bool {
        match self {
            Scope::Exact => true,
            Scope::Prefix(p) => k.starts_with(p),
            Scope::Prefixes(ps) => ps.iter().any(|p| k.starts_with(p)),
            Scope::Ignoring(ignored) => !ignored.iter().any(|i| k == *i || (i.ends_with('.') && k.starts_with(i))),
        }
    }
}

fn weights_error(path: &Path, message: String) -> PerceptionError {
    PerceptionError::Weights { path: path.to_path_buf(), message }
}

/// Loads `path` (safetensors) into `vs`, checking names and shapes per `scope`.
pub fn load(vs: &mut VarStore, path: &Path, scope: Scope<'_>) -> Result<()> {
    let file = ocellus_kernels::safetensors::read(path).map_err(|e| weights_error(path, e))?;
    let mut vars = vs.variables();
    let file: BTreeMap<String, Tensor> = file.into_iter().filter(|(k, _)| scope.contains(k)).collect();
    let model: BTreeMap<String, Vec<i64>> = vars.iter().map(|(k, v)| (k.clone(), v.size())).collect();
    let in_file: BTreeMap<String, Vec<i64>> = file.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    if let Some(report) = ocellus_kernels::keys::key_report(&model, &in_file, str::to_owned) {
        return Err(weights_error(path, report));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &file {
            if let Some(var) = vars.get_mut(name) {
                var.f_copy_(&t.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
            }
        }
        Ok(())
    })
}

/// Fills every variable of `vs` with seeded normal noise (std 0.02; norms' weights around 1).
pub fn init_seeded(vs: &VarStore, seed: i64) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    ocellus_kernels::seeded(seed, || -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, mut v) in vars {
            let noise = Tensor::f_randn(v.size().as_slice(), (Kind::Float, v.device()))?.f_mul_scalar(INIT_STD)?;
            let value = if is_norm_weight(&name) { noise.f_add_scalar(1.0)? } else { noise };
            v.f_copy_(&value)?;
        }
        Ok(())
    })
}

/// Norm scales start around 1: `*norm*.weight` (Hiera, SAM 2) and CLIP's `ln_*.weight`.
fn is_norm_weight(name: &str) -> bool {
    let last = name.rsplit('.').nth(1).unwrap_or_default();
    name.ends_with(".weight") && (name.contains("norm") || last.starts_with("ln_"))
}

/// What a weights file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name (`hiera_tiny_224`, `sam2.1_hiera_tiny`, ...).
    pub model: String,
    /// The model's configuration, with the official names.
    pub config: serde_json::Value,
    /// SHA-256 of the safetensors file.
    pub sha256: String,
    /// Where the weights came from (`import FILE`, `init seed=N`).
    pub source: String,
}

/// The manifest path of a weights file: `X.safetensors` → `X.manifest.json`.
pub fn manifest_path(weights: &Path) -> PathBuf {
    weights.with_extension("manifest.json")
}

/// The tensor names of a safetensors file, read from its header (no tensor is loaded); the
/// header is checked against the file's size, naming the tensor a cut file lacks.
pub fn keys(path: &Path) -> Result<Vec<String>> {
    let entries = ocellus_kernels::safetensors::entries(path).map_err(|e| weights_error(path, e))?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| weights_error(path, e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| weights_error(path, e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `vs` to `path` (safetensors) and its manifest.
pub fn save(vs: &VarStore, path: &Path, model: &str, config: serde_json::Value, source: String) -> Result<Manifest> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| weights_error(path, e.to_string()))?;
    }
    vs.save(path).map_err(|e| weights_error(path, e.to_string()))?;
    write_manifest(path, model, config, source)
}

/// Writes the manifest of an existing weights file.
pub fn write_manifest(path: &Path, model: &str, config: serde_json::Value, source: String) -> Result<Manifest> {
    let manifest = Manifest { model: model.to_owned(), config, sha256: sha256_file(path)?, source };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| weights_error(path, e.to_string()))?;
    std::fs::write(manifest_path(path), json).map_err(|e| weights_error(path, e.to_string()))?;
    Ok(manifest)
}

/// The Python of the bootstrap venv (`VIRTUAL_ENV`, else `$OCELLUS_CACHE` or
/// `~/.cache/ocellus`).
pub fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from).or_else(|| {
        std::env::var_os("OCELLUS_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ocellus")))
            .map(|c| c.join("venv"))
    })?;
    Some(venv.join("bin/python")).filter(|p| p.exists())
}

/// Converts an official PyTorch checkpoint to safetensors at `out` (keys unchanged, tensors
/// contiguous, dtypes kept): the state dict under `model_state`, `model` or `state_dict` when
/// the file holds one there, else the file's own tensors.
pub fn convert_checkpoint(checkpoint: &Path, out: &Path) -> Result<()> {
    let reader = STATE_DICT_KEYS
        .iter()
        .find_map(|key| {
            pytorch_reader::PytorchReader::with_top_level_key(checkpoint, key).ok().filter(|r| !r.is_empty())
        })
        .map_or_else(|| pytorch_reader::PytorchReader::new(checkpoint), Ok)
        .map_err(|e| weights_error(checkpoint, format!("not a PyTorch checkpoint: {e}")))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(reader.len());
    for (name, t) in reader.into_tensors() {
        let kind = match t.dtype() {
            pytorch_reader::DType::F64 => Kind::Double,
            pytorch_reader::DType::F32 => Kind::Float,
            pytorch_reader::DType::F16 => Kind::Half,
            pytorch_reader::DType::BF16 => Kind::BFloat16,
            pytorch_reader::DType::I64 => Kind::Int64,
            pytorch_reader::DType::I32 => Kind::Int,
            pytorch_reader::DType::I16 => Kind::Int16,
            pytorch_reader::DType::I8 => Kind::Int8,
            pytorch_reader::DType::U8 => Kind::Uint8,
            pytorch_reader::DType::Bool => Kind::Bool,
            other => return Err(weights_error(checkpoint, format!("{name}: unsupported element type {other:?}"))),
        };
        let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let bytes = t.read().map_err(|e| weights_error(checkpoint, e.to_string()))?;
        tensors.push((name, Tensor::f_from_data_size(&bytes, &shape, kind)?));
    }
    if tensors.is_empty() {
        return Err(weights_error(checkpoint, "holds no tensors".into()));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| weights_error(out, e.to_string()))?;
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, out).map_err(|e| weights_error(out, e.to_string()))
}
