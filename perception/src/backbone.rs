//! Backbones by name: Hiera (`hiera_*`), the SAM 2 image encoder (`sam2.1_hiera_*`) and the MAWS
//! ViTs (`maws_vit_*`, `mae_vit_*`), so that tools and actors handle them alike. Loaded through [`crate::model::ModelSpec`].

use ocellus_kernels::{Fit, Normalization, Resize, Transform};
use tch::Tensor;
use tch::nn::Path;

use crate::Result;
use crate::hiera::{Hiera, HieraConfig};
use crate::hieradet::{ImageEncoder, ImageEncoderConfig};
use crate::model::{Model, unknown_model};
use crate::sam2::Sam2Config;
use crate::vit::{VisionTransformer, VitConfig};
use crate::weights::Scope;

/// SAM 2 checkpoint keys of the image encoder start with this.
const SAM2_IMAGE_ENCODER: &str = "image_encoder";

enum Inner {
    Hiera(Box<Hiera>),
    ImageEncoder(Box<ImageEncoder>),
    Vit(Box<VisionTransformer>),
}

/// Which preprocessing a backbone takes.
#[derive(Clone, Copy)]
enum Family {
    Hiera,
    Sam2,
    Vit,
}

/// A backbone (its weights live in the [`crate::model::Loaded`] store it came from).
pub struct Backbone {
    name: String,
    model: Inner,
    config: serde_json::Value,
    input_size: Vec<i64>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone").field("name", &self.name).field("input_size", &self.input_size).finish()
    }
}

/// Every backbone name.
pub fn names() -> Vec<&'static str> {
    HieraConfig::NAMES.iter().chain(ImageEncoderConfig::NAMES.iter()).chain(VitConfig::NAMES.iter()).copied().collect()
}

/// `(T,) H, W` backbone `name` is built for, without building it.
pub fn input_size_of(name: &str) -> Option<Vec<i64>> {
    if let Some(c) = HieraConfig::by_name(name) {
        Some(c.input_size)
    } else if ImageEncoderConfig::by_name(name).is_some() {
        Sam2Config::by_name(name).map(|c| vec![c.image_size, c.image_size])
    } else {
        VitConfig::by_name(name).map(|c| vec![c.img_size, c.img_size])
    }
}

/// [`Backbone::transform`] of backbone `name`, without building it (a backend that runs an
/// exported model preprocesses as the native one does).
pub fn transform_of(name: &str, resolution: Option<(i64, i64)>) -> Option<Transform> {
    let size = input_size_of(name)?;
    let family = if HieraConfig::by_name(name).is_some() {
        Family::Hiera
    } else if VitConfig::by_name(name).is_some() {
        Family::Vit
    } else {
        Family::Sam2
    };
    Some(transform_for(family, &size, resolution))
}

fn transform_for(family: Family, input_size: &[i64], resolution: Option<(i64, i64)>) -> Transform {
    let (h, w) = resolution.unwrap_or_else(|| match input_size[..] {
        [.., h, w] => (h, w),
        _ => (0, 0),
    });
    match (family, input_size.len()) {
        (Family::Hiera, 3) => {
            Transform { fit: Fit::CenterSquare { side: h }, resize: Resize::Bilinear, norm: Normalization::HIERA_VIDEO }
        }
        (Family::Hiera, _) => Transform {
            // int((256 / 224) * input_size), computed as the example does.
            fit: Fit::ShortSideCenterCrop { short: ((256.0 / 224.0) * h as f64) as i64, crop: h },
            resize: Resize::PilBicubic,
            norm: Normalization::IMAGENET,
        },
        // MAWS's evaluation: Resize(size, BICUBIC) of the Pillow image, CenterCrop(size).
        (Family::Vit, _) => Transform {
            fit: Fit::ShortSideCenterCrop { short: h, crop: h },
            resize: Resize::PilBicubic,
            norm: Normalization::IMAGENET,
        },
        (Family::Sam2, _) => Transform {
            fit: Fit::Stretch { height: h, width: w },
            resize: Resize::TorchvisionBilinear,
            norm: Normalization::IMAGENET,
        },
    }
}

impl Model for Backbone {
    type Options = ();
    const FAMILY: &'static str = "backbone";

    fn names() -> Vec<&'static str> {
        names()
    }

    fn build(name: &str, _options: &(), p: &Path) -> Result<Self> {
        let to_json = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
        let (model, config, input_size) = if let Some(c) = HieraConfig::by_name(name) {
            (Inner::Hiera(Box::new(Hiera::new(p, &c)?)), to_json(serde_json::to_value(&c)), c.input_size.clone())
        } else if let (Some(c), Some(sam2)) = (ImageEncoderConfig::by_name(name), Sam2Config::by_name(name)) {
            let encoder = ImageEncoder::new(&(p / SAM2_IMAGE_ENCODER), &c)?;
            let side = sam2.image_size;
            (Inner::ImageEncoder(Box::new(encoder)), to_json(serde_json::to_value(&c)), vec![side, side])
        } else if let Some(c) = VitConfig::by_name(name) {
            let side = c.img_size;
            (Inner::Vit(Box::new(VisionTransformer::new(p, &c)?)), to_json(serde_json::to_value(&c)), vec![side, side])
        } else {
            return Err(unknown_model::<Self>(name));
        };
        Ok(Self { name: name.to_owned(), model, config, input_size })
    }

    fn scope(&self) -> Scope<'static> {
        match self.model {
            Inner::Hiera(_) | Inner::Vit(_) => Scope::Exact,
            Inner::ImageEncoder(_) => Scope::Prefix("image_encoder."),
        }
    }

    fn weights_changed(&self) {
        if let Inner::ImageEncoder(e) = &self.model {
            e.trunk.clear_cache();
        }
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.clone()
    }
}

impl Backbone {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
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
    ///   float tensor to `H × W`, antialiased bilinear; ImageNet statistics);
    /// - MAWS ViTs: MAWS's evaluation, `Resize(size, BICUBIC)` of the Pillow image,
    ///   `CenterCrop(size)`, ImageNet statistics.
    pub fn transform(&self, resolution: Option<(i64, i64)>) -> Transform {
        let family = match self.model {
            Inner::Hiera(_) => Family::Hiera,
            Inner::ImageEncoder(_) => Family::Sam2,
            Inner::Vit(_) => Family::Vit,
        };
        transform_for(family, &self.input_size, resolution)
    }

    /// Runs the backbone on a normalized `[B, 3, (T,) H, W]` input; returns its feature maps
    /// as `[B, C, H, W]` (video: `[B, C, T, H, W]`), highest resolution first: Hiera's stage
    /// outputs, the SAM 2 encoder's kept FPN levels, or a ViT's patch tokens after its final norm.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        tch::no_grad(|| match &self.model {
            Inner::Hiera(h) => h
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
            Inner::ImageEncoder(e) => Ok(e.forward(x)?.backbone_fpn),
            Inner::Vit(v) => Ok(vec![v.feature_map(&v.forward(x)?.tokens)?]),
        })
    }
}
