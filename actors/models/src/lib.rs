//! # ocellus-model-actors
//!
//! The actors that run vision models, each a node kind that owns its configuration (its keys,
//! their defaults and validation), declares its typed ports and builds its stage:
//!
//! | kind | inputs | outputs | model |
//! |---|---|---|---|
//! | [`motion`] | `frames` | `masks` | frame differencing |
//! | [`backbone`] | `frames` | `features` | Hiera, SAM 2 image encoder |
//! | [`tracker`] (`sam2`) | `frames` | `tracks` | SAM 2 streaming tracker |
//! | [`discovery`] | `frames` ⋈ `tracks` | `candidates` (+ mask prompts to the tracker) | SAM 2 automatic mask generation |
//! | [`labeler`] | `frames` ⋈ `tracks` | `tracks` | MetaCLIP zero-shot |
//! | [`inpainter`] | `frames` ⋈ `tracks` | `inpainted` | DiffMAE, or blur |
//! | [`pose3d`] | `frames` ⋈ `tracks` | `poses` | HMR 2.0 (+ the SMPL body model) |
//! | [`actions`] | `poses` (⋈ `frames` for appearance) | `actions` | LART (+ a Hiera backbone) |
//!
//! (⋈: joined by camera and frame number.) Models are loaded through
//! [`ocellus_perception::model::ModelSpec`] when the stage starts on its own thread.
#![warn(missing_docs)]

pub mod actions;
pub mod backbone;
pub mod discovery;
pub mod inpainter;
pub mod labeler;
pub mod motion;
pub mod pose3d;
pub mod tracker;

use std::path::PathBuf;

use ocellus_perception::model::{Model, ModelSpec, WeightsSource};
use ocellus_perception::onnx::{Backend, OnnxEncoder, OnnxOptions};
use ocellus_runtime::kind::{Common, ErasedKind, Issue, WeightsKeys, kind};
use ocellus_runtime::{RuntimeError, message::FrameMeta};

/// The node kinds of this crate.
pub fn kinds() -> Vec<&'static dyn ErasedKind> {
    vec![
        kind::<motion::MotionKind>(),
        kind::<backbone::BackboneKind>(),
        kind::<tracker::TrackerKind>(),
        kind::<discovery::DiscoveryKind>(),
        kind::<labeler::LabelerKind>(),
        kind::<inpainter::InpainterKind>(),
        kind::<pose3d::PoseKind>(),
        kind::<actions::ActionsKind>(),
    ]
}

/// The model of an entry's model keys, checked to be one of family `M`.
pub fn model_spec<M: Model>(common: &Common) -> Result<ModelSpec, Issue> {
    let name = common.model_name()?;
    known_model::<M>(name)?; // an unknown name is the first thing to say
    nested_model_spec::<M>(name, common.weights()?, common)
}

fn known_model<M: Model>(name: &str) -> Result<(), Issue> {
    if M::names().contains(&name) {
        Ok(())
    } else {
        Err(Issue::at(
            "model",
            format!("unknown model {name:?} (known {} models: {})", M::FAMILY, M::names().join(", ")),
        ))
    }
}

/// A second model of an entry (e.g. discovery's MetaCLIP), named `name` with `weights`, on the
/// entry's device and dtype.
pub fn nested_model_spec<M: Model>(name: &str, weights: &WeightsKeys, common: &Common) -> Result<ModelSpec, Issue> {
    known_model::<M>(name)?;
    Ok(ModelSpec {
        name: name.to_owned(),
        weights: weights_source(weights),
        device: common.device,
        dtype: common.dtype,
    })
}

/// The weights of a nested model entry (`labels = { ... }`, `appearance = { ... }`): a file
/// that exists, or seeded random weights, never both; issues name the nested key.
pub fn nested_weights(
    weights: Option<&std::path::PathBuf>,
    allow_random: bool,
    seed: i64,
) -> Result<WeightsKeys, Issue> {
    match (weights, allow_random) {
        (Some(path), false) if path.exists() => Ok(WeightsKeys::File(path.clone())),
        (Some(path), false) => Err(Issue::at("weights", format!("{} not found", path.display()))),
        (None, true) => Ok(WeightsKeys::Random { seed }),
        (Some(_), true) => {
            Err(Issue::at("allow_random_weights", "give either `weights` or `allow_random_weights`, not both"))
        }
        (None, false) => Err(Issue::at("weights", "needs `weights` or `allow_random_weights = true`")),
    }
}

/// The weights a configuration names.
pub fn weights_source(keys: &WeightsKeys) -> WeightsSource {
    match keys {
        WeightsKeys::File(path) => WeightsSource::File(path.clone()),
        WeightsKeys::Random { seed } => WeightsSource::Random { seed: *seed },
    }
}

/// The session options of an entry's `backend` and `onnx` keys, checked: `None` for
/// `backend = "tch"` (which takes no options), else the options (defaults when absent) of an
/// f32 entry.
pub fn onnx_options(
    backend: Backend,
    options: Option<OnnxOptions>,
    dtype: ocellus_kernels::DType,
) -> Result<Option<OnnxOptions>, Issue> {
    match (backend, options) {
        (Backend::Tch, None) => Ok(None),
        (Backend::Tch, Some(_)) => Err(Issue::at("onnx", "session options are for `backend = \"onnx\"`")),
        (Backend::Onnx, _) if dtype != ocellus_kernels::DType::F32 => {
            Err(Issue::at("dtype", "`backend = \"onnx\"` runs the exported f32 model: use dtype = \"f32\""))
        }
        (Backend::Onnx, options) => Ok(Some(options.unwrap_or_default())),
    }
}

/// The ONNX image encoder of an entry with `backend`, `image_encoder` (the exported file) and
/// `onnx` (session options) keys, checked: `None` for `backend = "tch"`.
pub fn onnx_encoder(
    backend: Backend,
    file: Option<PathBuf>,
    options: Option<OnnxOptions>,
    dtype: ocellus_kernels::DType,
) -> Result<Option<OnnxEncoder>, Issue> {
    let options = onnx_options(backend, options, dtype)?;
    match (options, file) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Issue::at("image_encoder", "an ONNX image encoder needs `backend = \"onnx\"`")),
        (Some(_), None) => Err(Issue::at(
            "backend",
            "`backend = \"onnx\"` needs `image_encoder`, a file from `ocellus weights export-onnx`",
        )),
        (Some(_), Some(file)) if !file.is_file() => {
            Err(Issue::at("image_encoder", format!("{} not found", file.display())))
        }
        (Some(options), Some(file)) => Ok(Some(OnnxEncoder { file, options })),
    }
}

/// A model error while loading or running: the stage restarts.
pub fn failed(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed(e.to_string())
}

/// A frame that cannot be used: counted and skipped.
pub fn bad_frame(meta: &FrameMeta, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::BadInput(format!("{} frame {}: {e}", meta.camera, meta.seq))
}
