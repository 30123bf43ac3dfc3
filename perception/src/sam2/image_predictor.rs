//! `SAM2ImagePredictor` (sam2 1.1.0, `sam2/sam2_image_predictor.py`): one image encoded once,
//! then any number of prompt batches, masks returned at the image's own size.

use ocellus_kernels::preprocess::{Fit, Normalization, Resize, Transform};
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use super::{ImageFeatures, Prompts, Sam2};
use crate::{PerceptionError, Result};

/// What a promptable segmenter answers for a batch of point prompts: the interface automatic
/// mask generation needs ([`super::automatic_mask_generator`]).
pub trait PointPredictor {
    /// Model input side: prompt coordinates are scaled from `[0, 1]` to it.
    fn resolution(&self) -> i64;
    /// Where prompts are placed and answers come back.
    fn device(&self) -> Device;
    /// Encodes a packed 8-bit RGB image (`height` rows of `3 · width` bytes).
    fn set_image(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<()>;
    /// `_predict` for point prompts `coords [B, N, 2]` (model-input pixels), `labels [B, N]`,
    /// and optional previous logits `mask_input [B, 1, 256, 256]`.
    fn predict_points(
        &self,
        coords: &Tensor,
        labels: &Tensor,
        mask_input: Option<&Tensor>,
        multimask: bool,
    ) -> Result<PointPrediction>;
    /// Drops the encoded image.
    fn reset(&mut self);
}

/// The answer to a batch of prompts.
#[derive(Debug)]
pub struct PointPrediction {
    /// Mask logits at the image's size `[B, M, H, W]` (bilinear from the low-resolution ones,
    /// before clamping, as the reference).
    pub masks: Tensor,
    /// Predicted IoU `[B, M]`.
    pub iou: Tensor,
    /// Low-resolution logits `[B, M, 256, 256]`, clamped to ±32.
    pub low_res_masks: Tensor,
}

/// SAM 2 answering prompts on one image at a time.
#[derive(Debug)]
pub struct ImagePredictor<'a> {
    sam: &'a Sam2,
    device: Device,
    transform: Transform,
    features: Option<ImageFeatures>,
    /// `(height, width)` of the image set.
    orig_hw: (i64, i64),
}

impl<'a> ImagePredictor<'a> {
    /// A predictor over `sam`, whose weights are on `device`.
    pub fn new(sam: &'a Sam2, device: Device) -> Self {
        let side = sam.image_size();
        Self {
            sam,
            device,
            // `SAM2Transforms`: ToTensor, torchvision Resize((side, side)), ImageNet Normalize.
            transform: Transform {
                fit: Fit::Stretch { height: side, width: side },
                resize: Resize::TorchvisionBilinear,
                norm: Normalization::IMAGENET,
            },
            features: None,
            orig_hw: (0, 0),
        }
    }

    /// The image features of the image set, if any.
    pub fn features(&self) -> Option<&ImageFeatures> {
        self.features.as_ref()
    }
}

impl PointPredictor for ImagePredictor<'_> {
    fn resolution(&self) -> i64 {
        self.sam.image_size()
    }

    fn device(&self) -> Device {
        self.device
    }

    fn set_image(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<()> {
        let _span = trace_span!("sam2_set_image", width, height).entered();
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(PerceptionError::Config {
                model: "sam2",
                message: format!(
                    "an RGB image of {width}×{height} needs {} bytes, got {}",
                    width * height * 3,
                    rgb.len()
                ),
            });
        }
        let x = self.transform.apply_rgb8(rgb, width, height, self.device)?; // [1, 3, S, S]
        self.features = Some(tch::no_grad(|| self.sam.encode_image(&x))?);
        self.orig_hw = (height as i64, width as i64);
        Ok(())
    }

    fn predict_points(
        &self,
        coords: &Tensor,
        labels: &Tensor,
        mask_input: Option<&Tensor>,
        multimask: bool,
    ) -> Result<PointPrediction> {
        let Some(features) = &self.features else {
            return Err(PerceptionError::Config { model: "sam2", message: "no image is set".into() });
        };
        let prompts = Prompts { points: Some((coords, labels)), boxes: None, mask_input };
        let p = tch::no_grad(|| self.sam.predict(features, 0, &prompts, multimask))?;
        let (h, w) = self.orig_hw;
        // `postprocess_masks`: the unclamped logits, bilinear to the image size.
        let masks =
            tch::no_grad(|| p.low_res_logits.f_to_kind(Kind::Float)?.f_upsample_bilinear2d([h, w], false, None, None))?; // [B, M, H, W]
        Ok(PointPrediction { masks, iou: p.iou, low_res_masks: p.low_res_masks })
    }

    fn reset(&mut self) {
        self.features = None;
        self.orig_hw = (0, 0);
    }
}
