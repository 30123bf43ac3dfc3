//! `MaskDecoder` (`sam2/modeling/sam/mask_decoder.py`) with high-resolution features, object
//! scores and dynamic multimask selection via stability.

use ocellus_kernels::nn::{Activation, Conv, ConvShape, ConvTranspose2d, LayerNorm2d, Mlp, embedding};
use tch::nn::Path;
use tch::{Kind, Tensor};

use super::transformer::TwoWayTransformer;
use crate::Result;

/// LayerNorm2d epsilon of the upscaler.
const NORM_EPS: f64 = 1e-6;

/// Decoder settings (`MaskDecoder.__init__` arguments of the SAM 2.1 configs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskDecoderConfig {
    /// Channels of the transformer.
    pub transformer_dim: i64,
    /// Masks besides the single-mask output.
    pub num_multimask_outputs: i64,
    /// IoU head depth.
    pub iou_head_depth: usize,
    /// IoU head width.
    pub iou_head_hidden_dim: i64,
    /// Sigmoid on the IoU predictions.
    pub iou_prediction_use_sigmoid: bool,
    /// Pick among the multimask outputs when the single mask is unstable.
    pub dynamic_multimask_via_stability: bool,
    /// Logit offset of the stability score.
    pub dynamic_multimask_stability_delta: f64,
    /// Stability needed to keep the single mask.
    pub dynamic_multimask_stability_thresh: f64,
    /// Object pointer from the multimask tokens when multimask.
    pub use_multimask_token_for_obj_ptr: bool,
}

impl Default for MaskDecoderConfig {
    fn default() -> Self {
        Self {
            transformer_dim: 256,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            iou_prediction_use_sigmoid: true,
            dynamic_multimask_via_stability: true,
            dynamic_multimask_stability_delta: 0.05,
            dynamic_multimask_stability_thresh: 0.98,
            use_multimask_token_for_obj_ptr: true,
        }
    }
}

/// What the decoder returns.
#[derive(Debug)]
pub struct MaskDecoderOutput {
    /// Mask logits `[B, M, 4h, 4w]` (M = 3 multimask, else 1).
    pub masks: Tensor,
    /// IoU predictions `[B, M]`.
    pub iou_pred: Tensor,
    /// Output tokens for object pointers `[B, M', C]`.
    pub sam_tokens_out: Tensor,
    /// Object score logits `[B, 1]`.
    pub object_score_logits: Tensor,
}

/// The mask decoder.
#[derive(Debug)]
pub struct MaskDecoder {
    config: MaskDecoderConfig,
    transformer: TwoWayTransformer,
    iou_token: Tensor,       // [1, C]
    mask_tokens: Tensor,     // [num_mask_tokens, C]
    obj_score_token: Tensor, // [1, C]
    upscale: (ConvTranspose2d, LayerNorm2d, ConvTranspose2d),
    /// 1×1 projection of the stride-4 features (applied once per image, `forward_image`).
    pub conv_s0: Conv,
    /// 1×1 projection of the stride-8 features.
    pub conv_s1: Conv,
    hypernetworks: Vec<Mlp>,
    iou_head: Mlp,
    obj_score_head: Mlp,
}

impl MaskDecoder {
    /// Builds the decoder under `p` (`sam_mask_decoder`).
    pub fn new(p: &Path, c: MaskDecoderConfig) -> Result<Self> {
        let d = c.transformer_dim;
        let n = c.num_multimask_outputs + 1;
        let up = p / "output_upscaling";
        Ok(Self {
            config: c,
            transformer: TwoWayTransformer::new(&(p / "transformer"), 2, d, 8, 2048, 2)?,
            iou_token: embedding(&(p / "iou_token"), 1, d)?,
            mask_tokens: embedding(&(p / "mask_tokens"), n, d)?,
            obj_score_token: embedding(&(p / "obj_score_token"), 1, d)?,
            upscale: (
                ConvTranspose2d::new(&(&up / 0), d, d / 4, 2, 2)?,
                LayerNorm2d::new(&(&up / 1), d / 4, NORM_EPS)?,
                ConvTranspose2d::new(&(&up / 3), d / 4, d / 8, 2, 2)?,
            ),
            conv_s0: Conv::new(&(p / "conv_s0"), d, d / 8, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))?,
            conv_s1: Conv::new(&(p / "conv_s1"), d, d / 4, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))?,
            hypernetworks: (0..n)
                .map(|i| Mlp::sam(&(p / "output_hypernetworks_mlps" / i), d, d, d / 8, 3, Activation::Relu))
                .collect::<Result<Vec<_>, _>>()?,
            iou_head: Mlp::sam(
                &(p / "iou_prediction_head"),
                d,
                c.iou_head_hidden_dim,
                n,
                c.iou_head_depth,
                Activation::Relu,
            )?,
            obj_score_head: Mlp::sam(&(p / "pred_obj_score_head"), d, d, 1, 3, Activation::Relu)?,
        })
    }

    /// `forward`: predicts masks for `sparse` prompts on `image` `[B or 1, C, h, w]`
    /// (`repeat_image` repeats a single image over the prompt batch).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res: (&Tensor, &Tensor),
    ) -> Result<MaskDecoderOutput> {
        let (masks, iou_pred, mask_tokens_out, object_score_logits) =
            self.predict_masks(image, image_pe, sparse, dense, repeat_image, high_res)?;
        let n = masks.size()[1];
        let (masks, iou_pred) = if multimask_output {
            (masks.f_slice(1, 1, n, 1)?, iou_pred.f_slice(1, 1, n, 1)?)
        } else if self.config.dynamic_multimask_via_stability {
            self.dynamic_multimask_via_stability(&masks, &iou_pred)?
        } else {
            (masks.f_slice(1, 0, 1, 1)?, iou_pred.f_slice(1, 0, 1, 1)?)
        };
        let sam_tokens_out = if multimask_output && self.config.use_multimask_token_for_obj_ptr {
            mask_tokens_out.f_slice(1, 1, n, 1)?
        } else {
            mask_tokens_out.f_slice(1, 0, 1, 1)?
        };
        Ok(MaskDecoderOutput { masks, iou_pred, sam_tokens_out, object_score_logits })
    }

    fn predict_masks(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        repeat_image: bool,
        (feat_s0, feat_s1): (&Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let b = sparse.size()[0];
        let output_tokens = Tensor::f_cat(&[&self.obj_score_token, &self.iou_token, &self.mask_tokens], 0)?;
        let output_tokens = output_tokens.f_unsqueeze(0)?.f_expand([b, -1, -1], false)?;
        let tokens = Tensor::f_cat(&[&output_tokens, sparse], 1)?; // [B, 6 + N, C]
        let src = if repeat_image { image.f_repeat_interleave_self_int(b, 0, None)? } else { image.shallow_clone() };
        let src = src.f_add(dense)?;
        let pos_src = image_pe.f_repeat_interleave_self_int(b, 0, None)?;
        let (bs, c, h, w) = src.size4()?;
        let (hs, src) = self.transformer.forward(&src, &pos_src, &tokens)?;
        let n = self.mask_tokens.size()[0];
        let iou_token_out = hs.f_select(1, 1)?;
        let mask_tokens_out = hs.f_slice(1, 2, 2 + n, 1)?; // [B, n, C]
        let src = src.f_transpose(1, 2)?.f_view([bs, c, h, w])?;
        let (dc1, ln1, dc2) = &self.upscale;
        let up = Activation::Gelu.forward(&ln1.forward(&dc1.forward(&src)?.f_add(feat_s1)?)?)?;
        let up = Activation::Gelu.forward(&dc2.forward(&up)?.f_add(feat_s0)?)?; // [B, C/8, 4h, 4w]
        let hyper_in = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&mask_tokens_out.f_select(1, i as i64)?))
            .collect::<Result<Vec<_>, _>>()?;
        let hyper_in = Tensor::f_stack(&hyper_in, 1)?; // [B, n, C/8]
        let (ub, uc, uh, uw) = up.size4()?;
        let masks = hyper_in.f_matmul(&up.f_view([ub, uc, uh * uw])?)?.f_view([ub, -1, uh, uw])?;
        let mut iou_pred = self.iou_head.forward(&iou_token_out)?;
        if self.config.iou_prediction_use_sigmoid {
            iou_pred = iou_pred.f_sigmoid()?;
        }
        let object_score_logits = self.obj_score_head.forward(&hs.f_select(1, 0)?)?;
        Ok((masks, iou_pred, mask_tokens_out, object_score_logits))
    }

    fn dynamic_multimask_via_stability(&self, masks: &Tensor, iou: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = masks.size()[1];
        let multimask_logits = masks.f_slice(1, 1, n, 1)?;
        let multimask_iou = iou.f_slice(1, 1, n, 1)?;
        let best = multimask_iou.f_argmax(-1, false)?; // [B]
        let b = masks.size()[0];
        let batch = Tensor::f_arange(b, (Kind::Int64, masks.device()))?;
        let best_logits = multimask_logits.f_index(&[Some(&batch), Some(&best)])?.f_unsqueeze(1)?;
        let best_iou = multimask_iou.f_index(&[Some(&batch), Some(&best)])?.f_unsqueeze(1)?;
        let single_logits = masks.f_slice(1, 0, 1, 1)?;
        let single_iou = iou.f_slice(1, 0, 1, 1)?;
        // Stability: IoU of the mask thresholded at ±delta.
        let flat = single_logits.f_flatten(-2, -1)?;
        let delta = self.config.dynamic_multimask_stability_delta;
        let area_i =
            flat.f_gt(delta)?.f_sum_dim_intlist(Some(&[-1i64][..]), false, None::<Kind>)?.f_to_kind(Kind::Float)?;
        let area_u =
            flat.f_gt(-delta)?.f_sum_dim_intlist(Some(&[-1i64][..]), false, None::<Kind>)?.f_to_kind(Kind::Float)?;
        let ones = area_i.f_ones_like()?;
        let stability = area_i.f_div(&area_u)?.f_where_self(&area_u.f_gt(0)?, &ones)?;
        let stable = stability.f_ge(self.config.dynamic_multimask_stability_thresh)?; // [B, 1]
        let logits = single_logits
            .f_where_self(&stable.f_unsqueeze(-1)?.f_unsqueeze(-1)?.f_expand_as(&single_logits)?, &best_logits)?;
        let iou = single_iou.f_where_self(&stable.f_expand_as(&single_iou)?, &best_iou)?;
        Ok((logits, iou))
    }
}
