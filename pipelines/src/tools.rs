//! `ocellus weights import | init`, for every model: Hiera (and its MAE), SAM 2, MetaCLIP, DiffMAE, HMR 2.0,
//! LART, Llama 3, and the SMPL body model (import only: the user's own licensed file).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ocellus_kernels::DType;
use ocellus_language::config::{LlamaConfig, MetaParams};
use ocellus_language::llama::Llama;
use ocellus_language::quant::{self, Quantization};
use ocellus_perception::PerceptionError;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::clip::Clip;
use ocellus_perception::diffmae::DiffMae;
use ocellus_perception::hiera::HieraConfig;
use ocellus_perception::hiera_mae::MaskedAutoencoderHiera;
use ocellus_perception::hmr2::Hmr2;
use ocellus_perception::lart::Lart;
use ocellus_perception::model::{Model, ModelSpec, WeightsSource};
use ocellus_perception::sam2::Sam2;
use ocellus_perception::smpl;
use ocellus_perception::vit::VitConfig;
use ocellus_perception::weights::{self, Manifest};
use tch::{Device, Kind, Tensor};

/// The key prefix of a SAM 2 checkpoint's image encoder.
const SAM2_IMAGE_ENCODER_KEYS: &str = "image_encoder.";
/// The key prefix of LART's model in its Lightning checkpoint (the demo loader strips it).
const LART_ENCODER_KEYS: &str = "encoder.";

/// Default output of the weights commands: `weights/<model>.safetensors`.
pub fn default_weights_path(model: &str) -> PathBuf {
    Path::new("weights").join(format!("{model}.safetensors"))
}

/// The model families `ocellus weights` knows, by the names of their models.
enum Family {
    Llama,
    DiffMae,
    Sam2,
    Clip,
    Hiera,
    HieraMae,
    Hmr2,
    Lart,
    Smpl,
}

/// The SMPL body model's name in `ocellus weights`.
pub const SMPL: &str = "smpl";

impl Family {
    fn of(model: &str) -> anyhow::Result<Self> {
        let has = |names: Vec<&str>| names.contains(&model);
        Ok(if LlamaConfig::by_name(model).is_ok() {
            Self::Llama
        } else if has(DiffMae::names()) {
            Self::DiffMae
        } else if has(Sam2::names()) {
            Self::Sam2
        } else if has(Clip::names()) {
            Self::Clip
        } else if has(Backbone::names()) {
            Self::Hiera
        } else if has(MaskedAutoencoderHiera::names()) {
            Self::HieraMae
        } else if has(Hmr2::names()) {
            Self::Hmr2
        } else if has(Lart::names()) {
            Self::Lart
        } else if model == SMPL {
            Self::Smpl
        } else {
            let known: Vec<&str> = [
                DiffMae::names(),
                Sam2::names(),
                Clip::names(),
                HieraConfig::NAMES.to_vec(),
                VitConfig::NAMES.to_vec(),
                MaskedAutoencoderHiera::names(),
                Hmr2::names(),
                Lart::names(),
                vec![SMPL],
            ]
            .concat();
            anyhow::bail!("unknown model {model:?} (known: {}, and the Llama 3 models)", known.join(", "))
        })
    }
}

/// Whether `ocellus weights import` knows model `model`.
pub fn knows(model: &str) -> bool {
    Family::of(model).is_ok()
}

/// The CPU, f32 spec of `model` with `weights`.
fn spec(model: &str, weights: WeightsSource) -> ModelSpec {
    ModelSpec { name: model.to_owned(), weights, device: Device::Cpu, dtype: DType::F32 }
}

/// Converts an official checkpoint of `model` to safetensors at `out`, verifies every key
/// and shape against the architecture (both ways), and writes the manifest.
pub fn import(model: &str, checkpoint: &Path, out: &Path) -> anyhow::Result<Manifest> {
    import_with_extra(model, checkpoint, None, out)
}

/// [`import`] of a Llama 3 model with its linear layers quantized (`--quantize int8|int4`):
/// the file is read back and checked like any other.
pub fn import_quantized(model: &str, checkpoint: &Path, out: &Path, quantize: &str) -> anyhow::Result<Manifest> {
    let mode = Quantization::parse(quantize)?;
    if !matches!(Family::of(model)?, Family::Llama) {
        anyhow::bail!("--quantize is for the Llama 3 models (the agent and Llama Guard), not {model}");
    }
    import_llama(model, checkpoint, out, mode)
}

/// [`import`], with an extra file some models take (SMPL: HMR 2.0's 19-joint regressor).
pub fn import_with_extra(model: &str, checkpoint: &Path, extra: Option<&Path>, out: &Path) -> anyhow::Result<Manifest> {
    let family = Family::of(model)?;
    if extra.is_some() && !matches!(family, Family::Smpl) {
        anyhow::bail!("--extra-regressor is for the SMPL body model only");
    }
    match family {
        Family::Smpl => Ok(import_smpl(checkpoint, extra, out)?),
        Family::Hmr2 => Ok(import_model::<Hmr2>(model, checkpoint, out)?),
        Family::Lart => Ok(import_lart(model, checkpoint, out)?),
        Family::Llama => import_llama(model, checkpoint, out, Quantization::None),
        Family::DiffMae => Ok(import_model::<DiffMae>(model, checkpoint, out)?),
        Family::Sam2 => Ok(import_sam2(model, checkpoint, out)?),
        Family::Clip => Ok(import_model::<Clip>(model, checkpoint, out)?),
        Family::Hiera => Ok(import_model::<Backbone>(model, checkpoint, out)?),
        Family::HieraMae => Ok(import_model::<MaskedAutoencoderHiera>(model, checkpoint, out)?),
    }
}

/// Converts `checkpoint` next to `out`, runs `verify` on the converted file (which returns the
/// configuration of the manifest), and keeps it only if that passes.
fn import_with(
    model: &str,
    checkpoint: &Path,
    out: &Path,
    verify: impl FnOnce(&Path) -> Result<serde_json::Value, PerceptionError>,
) -> Result<Manifest, PerceptionError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| PerceptionError::Weights { path: dir.to_path_buf(), message: e.to_string() })?;
    }
    let tmp = out.with_extension("safetensors.partial");
    weights::convert_checkpoint(checkpoint, &tmp)?;
    let config = match verify(&tmp) {
        Ok(config) => config,
        Err(e) => {
            std::fs::remove_file(&tmp).ok();
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)
        .map_err(|e| PerceptionError::Weights { path: out.to_path_buf(), message: e.to_string() })?;
    weights::write_manifest(out, model, config, format!("import {}", checkpoint.display()))
}

/// The converted file loaded as the actors load model `M`: every key and shape checked.
fn verify_as<M: Model>(model: &str, converted: &Path) -> Result<serde_json::Value, PerceptionError> {
    Ok(spec(model, WeightsSource::File(converted.to_path_buf())).load::<M>()?.config_json())
}

/// Any model of the [`Model`] trait.
fn import_model<M: Model>(model: &str, checkpoint: &Path, out: &Path) -> Result<Manifest, PerceptionError> {
    import_with(model, checkpoint, out, |tmp| verify_as::<M>(model, tmp))
}

/// SAM 2: a released checkpoint holds the whole model (every key checked, as the tracker
/// loads it); one holding only `image_encoder.*` is an image encoder (for the backbone actor).
fn import_sam2(model: &str, checkpoint: &Path, out: &Path) -> Result<Manifest, PerceptionError> {
    import_with(model, checkpoint, out, |tmp| {
        if weights::keys(tmp)?.iter().all(|k| k.starts_with(SAM2_IMAGE_ENCODER_KEYS)) {
            verify_as::<Backbone>(model, tmp)
        } else {
            verify_as::<Sam2>(model, tmp)
        }
    })
}

/// LART: the released Lightning checkpoint holds the model under `encoder.` (and the SMPL
/// body model's buffers under `smpl.`): the model's keys are kept without the prefix, as the
/// official demo loader does; a file of the bare module's keys is taken as it is. The unused
/// `conv_en`, `conv_de` and `pe` are accepted and ignored by name.
fn import_lart(model: &str, checkpoint: &Path, out: &Path) -> Result<Manifest, PerceptionError> {
    import_with(model, checkpoint, out, |tmp| {
        let keys = weights::keys(tmp)?;
        if keys.iter().any(|k| k.starts_with(LART_ENCODER_KEYS)) {
            let err = |e: tch::TchError| PerceptionError::Weights { path: tmp.to_path_buf(), message: e.to_string() };
            let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(tmp)
                .map_err(err)?
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(LART_ENCODER_KEYS).map(|k| (k.to_owned(), v)))
                .collect();
            let named: Vec<(&str, &Tensor)> = kept.iter().map(|(k, v)| (k.as_str(), v)).collect();
            Tensor::write_safetensors(&named, tmp).map_err(err)?;
        }
        verify_as::<Lart>(model, tmp)
    })
}

/// Writes seeded random weights of `model` to `out`, with the manifest.
pub fn init(model: &str, seed: i64, out: &Path) -> anyhow::Result<Manifest> {
    match Family::of(model)? {
        Family::Llama => {
            let config = LlamaConfig::by_name(model)?;
            let llama = Llama::random(config.clone(), seed, Device::Cpu, Kind::Float)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            llama.save(out)?;
            Ok(weights::write_manifest(out, model, serde_json::to_value(&config)?, format!("init seed={seed}"))?)
        }
        Family::DiffMae => Ok(init_model::<DiffMae>(model, seed, out)?),
        Family::Sam2 => Ok(init_model::<Sam2>(model, seed, out)?),
        Family::Clip => Ok(init_model::<Clip>(model, seed, out)?),
        Family::Hiera => Ok(init_model::<Backbone>(model, seed, out)?),
        Family::HieraMae => Ok(init_model::<MaskedAutoencoderHiera>(model, seed, out)?),
        Family::Hmr2 => Ok(init_model::<Hmr2>(model, seed, out)?),
        Family::Lart => Ok(init_model::<Lart>(model, seed, out)?),
        Family::Smpl => anyhow::bail!(
            "the SMPL body model is not generated: import your own licensed file with \
             `ocellus weights import --model smpl --from SMPL_NEUTRAL.pkl`"
        ),
    }
}

/// The SMPL body model: the user's file converted (every array checked), with the manifest.
fn import_smpl(model_file: &Path, extra: Option<&Path>, out: &Path) -> Result<Manifest, PerceptionError> {
    let tmp = out.with_extension("safetensors.partial");
    let body = match smpl::convert(model_file, extra, &tmp) {
        Ok(body) => body,
        Err(e) => {
            std::fs::remove_file(&tmp).ok();
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)
        .map_err(|e| PerceptionError::Weights { path: out.to_path_buf(), message: e.to_string() })?;
    let config = serde_json::json!({
        "vertices": smpl::NUM_VERTICES,
        "joints": smpl::NUM_JOINTS,
        "betas": smpl::NUM_BETAS,
        "extra_regressor": body.has_extra_regressor(),
    });
    let source = match extra {
        Some(e) => format!("import {} + {}", model_file.display(), e.display()),
        None => format!("import {}", model_file.display()),
    };
    weights::write_manifest(out, SMPL, config, source)
}

fn init_model<M: Model>(model: &str, seed: i64, out: &Path) -> Result<Manifest, PerceptionError> {
    let loaded = spec(model, WeightsSource::Random { seed }).load::<M>()?;
    weights::save(&loaded.vs, out, model, loaded.config_json(), format!("init seed={seed}"))
}

/// Llama 3 from a Hugging Face folder (`config.json` + `*.safetensors` shards), a Meta folder
/// (`params.json` + `consolidated.00.pth`), or a single file of either layout. The result is
/// one safetensors file in transformers' layout (Meta's q/k rows permuted), in the
/// checkpoint's dtype, every key and shape checked.
fn import_llama(model: &str, from: &Path, out: &Path, quantize: Quantization) -> anyhow::Result<Manifest> {
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
    let source = match quantize {
        Quantization::None => {
            llama.save(out)?;
            format!("import {}", from.display())
        }
        mode => {
            let tensors = quant::quantize_named(llama.named_tensors()?, config.tie_word_embeddings, mode)?;
            drop(llama);
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
            Tensor::write_safetensors(&refs, out).with_context(|| out.display().to_string())?;
            drop(tensors);
            // Checked as it will be loaded: every key, shape and quantized layer.
            let back = Llama::load(config.clone(), out, Device::Cpu, Kind::Float)?;
            anyhow::ensure!(back.quantization() == mode, "{} reads back as {:?}", out.display(), back.quantization());
            format!("import {} (quantized {quantize_name})", from.display(), quantize_name = mode.name())
        }
    };
    // The tokenizer travels with the weights: the agent finds it next to them.
    for (found, name) in [
        (dir.join("tokenizer.json"), "tokenizer.json"),
        (dir.join("original").join("tokenizer.model"), "tokenizer.model"),
        (dir.join("tokenizer.model"), "tokenizer.model"),
    ] {
        if found.exists() {
            std::fs::copy(&found, llama_tokenizer_path(out, name))?;
            break;
        }
    }
    Ok(weights::write_manifest(out, model, serde_json::to_value(&config)?, source)?)
}

/// Where `ocellus weights import` puts a Llama model's tokenizer (`tokenizer.json` of a
/// Hugging Face folder, or Meta's `tokenizer.model`): `X.safetensors` → `X.tokenizer.json`.
pub fn llama_tokenizer_path(weights: &Path, name: &str) -> PathBuf {
    weights.with_extension(name)
}
