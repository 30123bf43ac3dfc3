//! SAM 2 (Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024), exact to the
//! official `sam2/modeling` (facebookresearch/sam2; PyPI `sam2` 1.1.0 is a verbatim copy).
//!
//! Mirrors the official module split: the image encoder is [`crate::hieradet`];
//! [`prompt_encoder`], [`mask_decoder`] and [`transformer`] are SAM's heads. [`Sam2`] holds
//! the weights (shared, read-only) and answers image prompts like `SAM2ImagePredictor`.
//! Variable names are the official checkpoint keys.

pub mod amg;
pub mod automatic_mask_generator;
pub mod image_predictor;
pub mod mask_decoder;
pub mod memory_attention;
pub mod memory_encoder;
pub mod prompt_encoder;
pub mod sam2_base;
pub mod streaming;
pub mod transformer;
pub mod video_predictor;

use ocellus_kernels::nn::parameter;
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use self::mask_decoder::{MaskDecoder, MaskDecoderConfig};
use self::prompt_encoder::PromptEncoder;
use crate::hieradet::{ImageEncoder, ImageEncoderConfig, ImageEncoderOutput};
use crate::{PerceptionError, Result};

/// Channels of the SAM heads and the memory (`hidden_dim`).
const HIDDEN_DIM: i64 = 256;
/// Hidden channels of the mask-prompt downscaler.
const MASK_IN_CHANS: i64 = 16;
/// Low-resolution logits returned by the image predictor are clamped to this.
const LOGIT_CLAMP: f64 = 32.0;
/// Checkpoint prefixes of the parts built by [`Sam2`].
pub const IMAGE_PREDICTOR_KEYS: [&str; 4] =
    ["image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed"];

/// The SAM 2 model configuration (the `model` section of `sam2.1_hiera_*.yaml`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sam2Config {
    /// Input side in pixels.
    pub image_size: i64,
    /// Stride of the image embedding.
    pub backbone_stride: i64,
    /// The image encoder.
    pub image_encoder: ImageEncoderConfig,
    /// The mask decoder.
    pub mask_decoder: MaskDecoderConfig,
}

impl Sam2Config {
    /// `sam2.1_hiera_{tiny,small,base_plus,large}`.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(Self {
            image_size: 1024,
            backbone_stride: 16,
            image_encoder: ImageEncoderConfig::by_name(name)?,
            mask_decoder: MaskDecoderConfig::default(),
        })
    }
}

/// Prompts of one image predictor call, in input-image pixels (1024 × 1024).
#[derive(Debug, Default)]
pub struct Prompts<'a> {
    /// Point coordinates `[B, N, 2]` (x, y) and labels `[B, N]` (1 positive, 0 negative).
    pub points: Option<(&'a Tensor, &'a Tensor)>,
    /// Boxes `[B, 4]` (x0, y0, x1, y1).
    pub boxes: Option<&'a Tensor>,
    /// Mask logits `[B, 1, 256, 256]` from a previous prediction.
    pub mask_input: Option<&'a Tensor>,
}

/// Image features of one image, ready for any number of prompts.
#[derive(Debug)]
pub struct ImageFeatures {
    /// Stride-16 embedding with `no_mem_embed` added, `[B, 256, 64, 64]`.
    pub image_embed: Tensor,
    /// `conv_s0` / `conv_s1` of the stride-4 and stride-8 levels.
    pub high_res: (Tensor, Tensor),
    /// The encoder's raw outputs (for the memory path).
    pub backbone: ImageEncoderOutput,
}

/// A prediction for a batch of prompts.
#[derive(Debug)]
pub struct Prediction {
    /// Low-resolution mask logits `[B, M, 256, 256]`, clamped to ±32.
    pub low_res_masks: Tensor,
    /// The same logits before clamping (the image predictor upsamples these).
    pub low_res_logits: Tensor,
    /// Predicted IoU per mask `[B, M]`.
    pub iou: Tensor,
    /// Object score logits `[B, 1]` (≤ 0: no object).
    pub object_score_logits: Tensor,
}

/// SAM 2's weights and image path.
#[derive(Debug)]
pub struct Sam2 {
    /// Image encoder.
    pub image_encoder: ImageEncoder,
    /// Prompt encoder.
    pub prompt_encoder: PromptEncoder,
    /// Mask decoder.
    pub mask_decoder: MaskDecoder,
    no_mem_embed: Tensor, // [1, 1, 256]
    /// Input side in pixels (`image_size`); masks at high resolution have this side.
    image_size: i64,
    /// The video path (memory attention, memory encoder, object pointers), when built.
    tracking: Option<sam2_base::Sam2Tracking>,
    /// The image encoder exported to ONNX, run instead of `image_encoder` when set.
    onnx_image_encoder: Option<crate::onnx::OnnxModel>,
}

impl Sam2 {
    /// Builds the model under the root path `p` (checkpoint key names).
    pub fn new(p: &Path, c: &Sam2Config) -> Result<Self> {
        let grid = c.image_size / c.backbone_stride;
        Ok(Self {
            image_encoder: ImageEncoder::new(&(p / "image_encoder"), &c.image_encoder)?,
            prompt_encoder: PromptEncoder::new(
                &(p / "sam_prompt_encoder"),
                HIDDEN_DIM,
                (grid, grid),
                (c.image_size, c.image_size),
                MASK_IN_CHANS,
            )?,
            mask_decoder: MaskDecoder::new(&(p / "sam_mask_decoder"), c.mask_decoder)?,
            no_mem_embed: parameter(p, "no_mem_embed", &[1, 1, HIDDEN_DIM])?,
            image_size: c.image_size,
            tracking: None,
            onnx_image_encoder: None,
        })
    }

    /// Builds the whole model, video path included (every key of a SAM 2 checkpoint).
    pub fn new_with_tracking(p: &Path, c: &Sam2Config) -> Result<Self> {
        let mut sam = Self::new(p, c)?;
        sam.tracking = Some(sam2_base::Sam2Tracking::new(p)?);
        Ok(sam)
    }

    /// Runs the image encoder in ONNX Runtime from now on: `model` is an export of this
    /// model's image encoder (`ocellus weights export-onnx`) at its input side.
    pub fn use_onnx_image_encoder(&mut self, model: crate::onnx::OnnxModel) -> Result<()> {
        let side = self.image_size;
        if !model.accepts(&[1, 3, side, side]) {
            return Err(PerceptionError::Config {
                model: "sam2",
                message: format!(
                    "the ONNX image encoder was exported for input {:?}, this model runs {side}×{side} \
                     (export it with --resolution {side} {side})",
                    model.input_shape()
                ),
            });
        }
        self.onnx_image_encoder = Some(model);
        Ok(())
    }

    /// Input side in pixels (`image_size` of the config).
    pub fn image_size(&self) -> i64 {
        self.image_size
    }

    /// `forward_image` + the image predictor's `set_image`: encodes a normalized
    /// `[B, 3, 1024, 1024]` image.
    pub fn encode_image(&self, x: &Tensor) -> Result<ImageFeatures> {
        let _span = trace_span!("sam2_encode_image").entered();
        let backbone = match &self.onnx_image_encoder {
            Some(onnx) => self.image_encoder.output_from_levels(onnx.forward(x)?)?,
            None => self.image_encoder.forward(x)?,
        };
        let [fpn0, fpn1, ..] = backbone.backbone_fpn.as_slice() else {
            return Err(PerceptionError::Config { model: "sam2", message: "the encoder must keep 3 levels".into() });
        };
        let high_res = (self.mask_decoder.conv_s0.forward(fpn0)?, self.mask_decoder.conv_s1.forward(fpn1)?);
        let no_mem = self.no_mem_embed.f_view([1, -1, 1, 1])?;
        let image_embed = backbone.vision_features.f_add(&no_mem)?;
        Ok(ImageFeatures { image_embed, high_res, backbone })
    }

    /// The image predictor's `_predict` for image `index` of `features`.
    pub fn predict(
        &self,
        features: &ImageFeatures,
        index: i64,
        prompts: &Prompts<'_>,
        multimask: bool,
    ) -> Result<Prediction> {
        let _span = trace_span!("sam2_predict").entered();
        // Boxes become two corner points (labels 2, 3) placed before the clicks.
        let mut points: Option<(Tensor, Tensor)> = prompts.points.map(|(c, l)| (c.shallow_clone(), l.shallow_clone()));
        if let Some(boxes) = prompts.boxes {
            let coords = boxes.f_reshape([-1, 2, 2])?;
            let b = coords.size()[0];
            let labels =
                Tensor::f_from_slice(&[2i32, 3])?.f_to_device(boxes.device())?.f_view([1, 2])?.f_repeat([b, 1])?;
            points = Some(match points {
                Some((c, l)) => {
                    (Tensor::f_cat(&[&coords, &c], 1)?, Tensor::f_cat(&[&labels, &l.f_to_kind(Kind::Int)?], 1)?)
                }
                None => (coords, labels),
            });
        }
        let (sparse, dense) = self.prompt_encoder.forward(points.as_ref().map(|(c, l)| (c, l)), prompts.mask_input)?;
        let batched = points.as_ref().is_some_and(|(c, _)| c.size()[0] > 1);
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.f_get(index)?.f_unsqueeze(0)?) };
        let out = self.mask_decoder.forward(
            &pick(&features.image_embed)?,
            &self.prompt_encoder.dense_pe()?,
            &sparse,
            &dense,
            multimask,
            batched,
            (&pick(&features.high_res.0)?, &pick(&features.high_res.1)?),
        )?;
        Ok(Prediction {
            low_res_masks: out.masks.f_clamp(-LOGIT_CLAMP, LOGIT_CLAMP)?,
            low_res_logits: out.masks,
            iou: out.iou_pred,
            object_score_logits: out.object_score_logits,
        })
    }
}
