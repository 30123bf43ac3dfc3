//! Backbones by name: Hiera (`hiera_*`) and the SAM 2 image encoder (`sam2.1_hiera_*`), with
//! their weights store, so that tools and actors handle them alike.

use std::path::Path;

use ocellus_kernels::{DType, Fit, Normalization, Resize, Transform};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::hiera::{Hiera, HieraConfig};
use crate::hieradet::{ImageEncoder, ImageEncoderConfig};
use crate::weights::{self, Scope};
use crate::{PerceptionError, Result};

/// SAM 2 checkpoint keys of the image encoder start with this.
const SAM2_IMAGE_ENCODER: &str = "image_encoder";

enum Model {
    Hiera(Box<Hiera>),
    ImageEncoder(Box<ImageEncoder>),
}

/// A backbone and its weights (shared, read-only once loaded).
pub struct Backbone {
    name: String,
    vs: VarStore,
    model: Model,
    config: serde_json::Value,
    input_size: Vec<i64>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone").field("name", &self.name).field("input_size", &self.input_size).finish()
    }
}

/// Every backbone name [`Backbone::new`] accepts.
pub fn names() -> Vec<&'static str> {
    HieraConfig::NAMES.iter().chain(ImageEncoderConfig::NAMES.iter()).copied().collect()
}

impl Backbone {
    /// Builds backbone `name` on `device` (weights zero until loaded or initialized).
    pub fn new(name: &str, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let to_json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| PerceptionError::Config { model: "backbone", message: e.to_string() })
        };
        let (model, config, input_size) = if let Some(c) = HieraConfig::by_name(name) {
            let model = Model::Hiera(Box::new(Hiera::new(&vs.root(), &c)?));
            (model, to_json(serde_json::to_value(&c))?, c.input_size.clone())
        } else if let Some(c) = ImageEncoderConfig::by_name(name) {
            let model = Model::ImageEncoder(Box::new(ImageEncoder::new(&(vs.root() / SAM2_IMAGE_ENCODER), &c)?));
            (model, to_json(serde_json::to_value(&c))?, vec![1024, 1024])
        } else {
            return Err(PerceptionError::Config {
                model: "backbone",
                message: format!("unknown backbone {name:?} (known: {})", names().join(", ")),
            });
        };
        Ok(Self { name: name.to_owned(), vs, model, config, input_size })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The official configuration, as JSON (for manifests).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// `(T,) H, W` the model was built for.
    pub fn input_size(&self) -> &[i64] {
        &self.input_size
    }

    /// The official input transform of this model at `(H, W)` (its own size when `None`):
    ///
    /// - Hiera images: Hiera's inference example, `Resize(int(256 / 224 · size), BICUBIC)` of
    ///   the Pillow image, `CenterCrop(size)`, ImageNet statistics;
    /// - Hiera video: the same example's clip path, frames scaled to `[0, 1]` and resized with
    ///   `F.interpolate` (bilinear in space), with its statistics; the example's clips were
    ///   cut square beforehand, so the centred square of each frame is taken;
    /// - SAM 2 encoders: the image predictor's `SAM2Transforms` (torchvision `Resize` of the
    ///   float tensor to `H × W`, antialiased bilinear; ImageNet statistics).
    pub fn transform(&self, resolution: Option<(i64, i64)>) -> Transform {
        let (h, w) = resolution.unwrap_or_else(|| match self.input_size[..] {
            [.., h, w] => (h, w),
            _ => (0, 0),
        });
        match (&self.model, self.input_size.len()) {
            (Model::Hiera(_), 3) => {
                Transform { fit: Fit::CenterSquare { side: h }, resize: Resize::Bilinear, norm: Normalization::HIERA_VIDEO }
            }
            (Model::Hiera(_), _) => Transform {
                // int((256 / 224) * input_size), computed as the example does.
                fit: Fit::ShortSideCenterCrop { short: ((256.0 / 224.0) * h as f64) as i64, crop: h },
                resize: Resize::PilBicubic,
                norm: Normalization::IMAGENET,
            },
            (Model::ImageEncoder(_), _) => Transform {
                fit: Fit::Stretch { height: h, width: w },
                resize: Resize::TorchvisionBilinear,
                norm: Normalization::IMAGENET,
            },
        }
    }

    /// Which keys of a weights file belong to this model.
    pub fn scope(&self) -> Scope<'static> {
        match self.model {
            Model::Hiera(_) => Scope::Exact,
            Model::ImageEncoder(_) => Scope::Prefix("image_encoder."),
        }
    }

    /// Loads weights, checking every key (see [`weights::load`]).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let scope = self.scope();
        weights::load(&mut self.vs, path, scope)?;
        self.weights_changed();
        Ok(())
    }

    /// Seeded random weights.
    pub fn init_seeded(&self, seed: i64) -> Result<()> {
        weights::init_seeded(&self.vs, seed)?;
        self.weights_changed();
        Ok(())
    }

    /// Drops what was derived from the weights.
    fn weights_changed(&self) {
        if let Model::ImageEncoder(e) = &self.model {
            e.trunk.clear_cache();
        }
    }

    /// The weights store.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Casts the weights to `dtype` (bf16/f16 for GPUs).
    pub fn set_dtype(&mut self, dtype: DType) {
        match dtype {
            DType::F32 => self.vs.float(),
            DType::Bf16 => self.vs.bfloat16(),
            DType::F16 => self.vs.half(),
        }
        self.weights_changed();
    }

    /// Runs the backbone on a normalized `[B, 3, (T,) H, W]` input; returns its feature maps
    /// as `[B, C, H, W]` (video: `[B, C, T, H, W]`), highest resolution first: Hiera's stage
    /// outputs, or the SAM 2 encoder's kept FPN levels.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        tch::no_grad(|| match &self.model {
            Model::Hiera(h) => h
                .forward(x, None, true)?
                .intermediates
                .iter()
                .map(|t| {
                    // [B, (T,) H, W, C] → channels first
                    let d = t.dim() as i64;
                    let mut perm = vec![0, d - 1];
                    perm.extend(1..d - 1);
                    Ok(t.f_permute(perm.as_slice())?)
                })
                .collect(),
            Model::ImageEncoder(e) => Ok(e.forward(x)?.backbone_fpn),
        })
    }
}
