//! HMR 2.0 (Goel et al., "Humans in 4D: Reconstructing and Tracking Humans with
//! Transformers", ICCV 2023; `shubham-goel/4D-Humans`): a person crop → SMPL body parameters
//! and a weak-perspective camera. The ViT-H backbone ([`vit`]) turns the central 256×192 of a
//! 256×256 crop into 1280×16×12 features; the SMPL head ([`smpl_head`]) reads them with one
//! cross-attending query token.
//!
//! Variable names are the checkpoint's (`backbone.…`, `smpl_head.…`); the released Lightning
//! checkpoint's other keys (`smpl.…` buffers, `discriminator.…`) are ignored by prefix.

pub mod camera;
pub mod preprocess;
pub mod smpl_head;
pub mod vit;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::Path;

use self::smpl_head::{IterationParams, SmplHead, SmplHeadCfg, SmplParams};
use self::vit::{Vit, VitConfig};
use crate::weights::Scope;
use crate::{PerceptionError, Result};

/// The model's name.
pub const HMR2: &str = "hmr2";
/// Columns of the square crop left out on each side: the backbone sees `[32, 224)`.
const CROP_MARGIN: i64 = 32;
/// Added to the camera scale before dividing by it (the reference's).
const CAM_EPS: f64 = 1e-9;

/// `MODEL` (the keys HMR 2.0 reads; the backbone's arguments are hard-coded in `vit(cfg)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCfg {
    /// Side of the square person crop (`IMAGE_SIZE`).
    pub image_size: i64,
    /// The ViT.
    pub backbone: VitConfig,
    /// The head (`SMPL_HEAD`, with `SMPL.NUM_BODY_JOINTS`).
    pub smpl_head: SmplHeadCfg,
}

impl Default for ModelCfg {
    fn default() -> Self {
        Self { image_size: 256, backbone: VitConfig::default(), smpl_head: SmplHeadCfg::default() }
    }
}

/// HMR 2.0's configuration (`MODEL`, `EXTRA.FOCAL_LENGTH`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hmr2Config {
    /// The model.
    pub model: ModelCfg,
    /// Focal length of the crop camera, in pixels of a 256-px crop (`EXTRA.FOCAL_LENGTH`).
    pub focal_length: f64,
}

impl Default for Hmr2Config {
    fn default() -> Self {
        Self { model: ModelCfg::default(), focal_length: 5000.0 }
    }
}

/// One forward step's outputs (the reference's `HMR2.forward_step` without the body model).
#[derive(Debug)]
pub struct Hmr2Output {
    /// Backbone features `[B, 1280, 16, 12]`.
    pub features: Tensor,
    /// SMPL parameters and the crop camera.
    pub params: SmplParams,
    /// Every refinement iteration's.
    pub iterations: IterationParams,
    /// Camera translation `(tx, ty, tz)` `[B, 3]`, tz = 2 f / (S · s).
    pub cam_t: Tensor,
}

/// HMR 2.0: backbone and SMPL head.
#[derive(Debug)]
pub struct Hmr2 {
    /// The ViT.
    pub backbone: Vit,
    /// The head.
    pub smpl_head: SmplHead,
    config: Hmr2Config,
}

impl Hmr2 {
    /// The model under `p` (`backbone.`, `smpl_head.`).
    pub fn new(p: &Path, config: &Hmr2Config) -> Result<Self> {
        let m = &config.model;
        if m.backbone.img_size[0] != m.image_size || m.backbone.img_size[1] + 2 * CROP_MARGIN != m.image_size {
            return Err(PerceptionError::Config {
                model: "hmr2",
                message: format!("the backbone sees {:?} of a {} crop", m.backbone.img_size, m.image_size),
            });
        }
        Ok(Self {
            backbone: Vit::new(&(p / "backbone"), &m.backbone)?,
            smpl_head: SmplHead::new(&(p / "smpl_head"), &m.smpl_head)?,
            config: config.clone(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &Hmr2Config {
        &self.config
    }

    /// Runs on normalized square person crops `[B, 3, 256, 256]` (ImageNet statistics): the
    /// backbone sees their central 192 columns.
    pub fn forward(&self, crops: &Tensor) -> Result<Hmr2Output> {
        let s = self.config.model.image_size;
        let size = crops.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(PerceptionError::Config {
                model: "hmr2",
                message: format!("expects [B, 3, {s}, {s}] crops, got {size:?}"),
            });
        }
        let x = crops.f_narrow(3, CROP_MARGIN, s - 2 * CROP_MARGIN)?; // [B, 3, 256, 192]
        let features = self.backbone.forward(&x)?;
        let (params, iterations) = self.smpl_head.forward(&features)?;
        let cam_t = self.cam_t(&params.cam)?;
        Ok(Hmr2Output { features, params, iterations, cam_t })
    }

    /// The crop camera's translation from the weak-perspective camera `(s, tx, ty)` `[B, 3]`:
    /// `(tx, ty, 2 f / (S · s + 1e-9))`.
    pub fn cam_t(&self, cam: &Tensor) -> Result<Tensor> {
        let s = cam.f_select(1, 0)?;
        let tz = s
            .f_mul_scalar(self.config.model.image_size as f64)?
            .f_add_scalar(CAM_EPS)?
            .f_reciprocal()?
            .f_mul_scalar(2.0 * self.config.focal_length)?;
        Ok(Tensor::f_stack(&[cam.f_select(1, 1)?, cam.f_select(1, 2)?, tz], -1)?) // [B, 3]
    }

    /// 2-D keypoints `[B, J, 2]` of 3-D joints `[B, J, 3]` seen by the crop camera at
    /// `cam_t`, in units of the crop side (the reference's `perspective_projection` with focal
    /// length f / S and no principal point).
    pub fn project(&self, joints: &Tensor, cam_t: &Tensor) -> Result<Tensor> {
        let p = joints.f_add(&cam_t.f_unsqueeze(1)?)?; // [B, J, 3]
        let z = p.f_narrow(-1, 2, 1)?;
        let f = self.config.focal_length / self.config.model.image_size as f64;
        Ok(p.f_narrow(-1, 0, 2)?.f_div(&z)?.f_mul_scalar(f)?) // [B, J, 2]
    }
}

impl crate::model::Model for Hmr2 {
    type Options = ();
    const FAMILY: &'static str = "HMR 2.0";

    fn names() -> Vec<&'static str> {
        vec![HMR2]
    }

    fn build(name: &str, _options: &(), p: &Path) -> Result<Self> {
        if name != HMR2 {
            return Err(crate::model::unknown_model::<Self>(name));
        }
        Self::new(p, &Hmr2Config::default())
    }

    fn scope(&self) -> Scope<'static> {
        Scope::Prefixes(&["backbone.", "smpl_head."])
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}
