//! One way to load a model: a [`ModelSpec`] names the model, its weights, its device and its
//! precision, and [`ModelSpec::load`] yields it with its weights (shared, read-only once
//! loaded). Every actor and `ocellus weights` go through it.
//!
//! A [`Model`] builds its variables under the official checkpoint key names by model name;
//! the weights are then filled from a safetensors file (every key and shape checked, both
//! ways) or seeded, cast to the precision, and whatever the model derived from them is
//! dropped.

use std::path::PathBuf;

use ocellus_kernels::DType;
use tch::Device;
use tch::nn::{Path, VarStore};

use crate::weights::{self, Scope};
use crate::{PerceptionError, Result};

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A safetensors file with the official key names (`ocellus weights import`).
    File(PathBuf),
    /// Seeded random weights (demos and tests only).
    Random {
        /// Seed.
        seed: i64,
    },
}

/// A model to load: which, from where, on which device, at which precision.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Model name (`sam2.1_hiera_tiny`, `hiera_tiny_224`, `ViT-B-32-quickgelu`, ...).
    pub name: String,
    /// Its weights.
    pub weights: WeightsSource,
    /// Device.
    pub device: Device,
    /// Precision.
    pub dtype: DType,
}

/// A model built by name under checkpoint key names.
pub trait Model: Sized {
    /// Build options beyond the name (an input size, say).
    type Options: Default;

    /// What the family is called in errors (`SAM 2`).
    const FAMILY: &'static str;

    /// Every name it builds.
    fn names() -> Vec<&'static str>;

    /// Builds model `name` under the root path `p` (weights zero until filled).
    fn build(name: &str, options: &Self::Options, p: &Path) -> Result<Self>;

    /// Which keys of a weights file are the model's.
    fn scope(&self) -> Scope<'static> {
        Scope::Exact
    }

    /// Drops what was derived from the weights (caches of position encodings, ...).
    fn weights_changed(&self) {}

    /// The official configuration, as JSON (for manifests).
    fn config_json(&self) -> serde_json::Value;
}

/// A model with the weights store that holds its tensors.
#[derive(Debug)]
pub struct Loaded<M> {
    /// The weights.
    pub vs: VarStore,
    /// The model.
    pub model: M,
}

impl<M> std::ops::Deref for Loaded<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.model
    }
}

/// The error of a name no model of family `M` has.
pub fn unknown_model<M: Model>(name: &str) -> PerceptionError {
    PerceptionError::Config {
        model: M::FAMILY,
        message: format!("unknown model {name:?} (known: {})", M::names().join(", ")),
    }
}

impl ModelSpec {
    /// Builds model `M` and fills its weights.
    pub fn load<M: Model>(&self) -> Result<Loaded<M>> {
        self.load_with(&M::Options::default())
    }

    /// [`ModelSpec::load`] with build options.
    pub fn load_with<M: Model>(&self, options: &M::Options) -> Result<Loaded<M>> {
        let mut vs = VarStore::new(self.device);
        let model = M::build(&self.name, options, &vs.root())?;
        match &self.weights {
            WeightsSource::File(path) => weights::load(&mut vs, path, model.scope())?,
            WeightsSource::Random { seed } => weights::init_seeded(&vs, *seed)?,
        }
        match self.dtype {
            DType::F32 => {}
            DType::Bf16 => vs.bfloat16(),
            DType::F16 => vs.half(),
        }
        model.weights_changed();
        Ok(Loaded { vs, model })
    }
}

impl crate::clip::Clip {
    fn config_of(name: &str) -> Result<crate::clip::ClipConfig> {
        crate::clip::ClipConfig::by_name(name).ok_or_else(|| unknown_model::<Self>(name))
    }
}

impl Model for crate::clip::Clip {
    type Options = ();
    const FAMILY: &'static str = "CLIP";

    fn names() -> Vec<&'static str> {
        crate::clip::ClipConfig::NAMES.to_vec()
    }

    fn build(name: &str, _options: &(), p: &Path) -> Result<Self> {
        Self::new(p, &Self::config_of(name)?)
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(self.config()).unwrap_or_default()
    }
}

impl Model for crate::diffmae::DiffMae {
    type Options = ();
    const FAMILY: &'static str = "DiffMAE";

    fn names() -> Vec<&'static str> {
        crate::diffmae::DiffMaeConfig::NAMES.to_vec()
    }

    fn build(name: &str, _options: &(), p: &Path) -> Result<Self> {
        let config = crate::diffmae::DiffMaeConfig::by_name(name).ok_or_else(|| unknown_model::<Self>(name))?;
        Self::new(p, &config)
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(self.config()).unwrap_or_default()
    }
}

impl Model for crate::hiera_mae::MaskedAutoencoderHiera {
    type Options = ();
    const FAMILY: &'static str = "Hiera MAE";

    fn names() -> Vec<&'static str> {
        crate::hiera_mae::HieraMaeConfig::NAMES.to_vec()
    }

    fn build(name: &str, _options: &(), p: &Path) -> Result<Self> {
        let config = crate::hiera_mae::HieraMaeConfig::by_name(name).ok_or_else(|| unknown_model::<Self>(name))?;
        Self::new(p, &config)
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(self.config()).unwrap_or_default()
    }
}

/// Options of a SAM 2 model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sam2Options {
    /// Input side, when not the config's `image_size` (a multiple of 32).
    pub image_size: Option<i64>,
}

impl Model for crate::sam2::Sam2 {
    type Options = Sam2Options;
    const FAMILY: &'static str = "SAM 2";

    fn names() -> Vec<&'static str> {
        crate::hieradet::ImageEncoderConfig::NAMES.to_vec()
    }

    /// The whole model, video path included (every key of a SAM 2 checkpoint).
    fn build(name: &str, options: &Sam2Options, p: &Path) -> Result<Self> {
        let mut config = crate::sam2::Sam2Config::by_name(name).ok_or_else(|| unknown_model::<Self>(name))?;
        if let Some(side) = options.image_size {
            if side <= 0 || side % 32 != 0 {
                return Err(PerceptionError::Config {
                    model: Self::FAMILY,
                    message: format!("image_size {side}: a positive multiple of 32"),
                });
            }
            config.image_size = side;
        }
        Self::new_with_tracking(p, &config)
    }

    fn weights_changed(&self) {
        self.image_encoder.trunk.clear_cache();
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({ "image_size": self.image_size() })
    }
}
