//! SAM 2's video path as `sam2/modeling/sam2_base.py` has it: `track_step` and the memory it
//! reads, with typed per-object state (the official code keeps an untyped dict).
//!
//! [`Sam2Tracking`] holds the extra weights of the video path. [`ObjectMemory`] is one
//! object's memory bank (conditioning frames, recent non-conditioning frames). The drivers
//! that decide what goes into the memory live apart, as the official predictor does: the
//! [`VideoSession`](super::video_predictor::VideoSession) of `sam2_video_predictor.py` and the
//! [`StreamingTracker`](super::streaming::StreamingTracker) of an endless stream.

use std::collections::BTreeMap;

use ocellus_kernels::nn::{Activation, Conv, ConvShape, Linear, Mlp, parameter};
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use super::Sam2;
use super::memory_attention::MemoryAttention;
use super::memory_encoder::MemoryEncoder;
use crate::{PerceptionError, Result};

/// Memories per object: 1 input frame + 6 previous frames.
pub const NUM_MASKMEM: i64 = 7;
/// Most object pointers attended to.
pub const MAX_OBJ_PTRS_IN_ENCODER: i64 = 16;
/// Memory channels.
const MEM_DIM: i64 = 64;
/// Channels of the SAM heads.
const HIDDEN_DIM: i64 = 256;
/// Logit of "no object" masks.
const NO_OBJ_SCORE: f64 = -1024.0;
/// Mask → memory-encoder input: `sigmoid(m) * 20 - 10`.
const SIGMOID_SCALE_FOR_MEM_ENC: f64 = 20.0;
/// See [`SIGMOID_SCALE_FOR_MEM_ENC`].
const SIGMOID_BIAS_FOR_MEM_ENC: f64 = -10.0;
/// Low-resolution masks have a quarter of the input side (256 at 1024).
const LOW_RES_DIVISOR: i64 = 4;
/// Previous mask logits used as a prompt are clamped to this.
pub(crate) const PREV_LOGIT_CLAMP: f64 = 32.0;
/// Objects decoded in one batch by default: on a CPU, batches of 4 were 3 % faster per frame
/// than one object at a time and batches of 16 were 10 % slower (16 objects, sam2.1 tiny at
/// 1024, 2 threads: the memory attention is compute-bound and larger batches lose cache
/// locality). On a GPU, where per-object launches dominate, use [`GPU_MAX_BATCH`].
pub const DEFAULT_MAX_BATCH: usize = 4;
/// Objects decoded in one batch on a GPU.
pub const GPU_MAX_BATCH: usize = 16;
/// Checkpoint prefixes of the video path.
pub const TRACKING_KEYS: [&str; 10] = [
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "no_mem_embed",
];

/// The weights of SAM 2's video path.
#[derive(Debug)]
pub struct Sam2Tracking {
    memory_attention: MemoryAttention,
    memory_encoder: MemoryEncoder,
    maskmem_tpos_enc: Tensor,     // [7, 1, 1, 64]
    no_obj_ptr: Tensor,           // [1, 256]
    no_obj_embed_spatial: Tensor, // [1, 64]
    mask_downsample: Conv,
    obj_ptr_proj: Mlp,
    obj_ptr_tpos_proj: Linear,
}

impl Sam2Tracking {
    /// Builds the video path under the root path `p`.
    pub fn new(p: &Path) -> Result<Self> {
        let _in_checkpoint_unused_in_sam2_1 = parameter(p, "no_mem_pos_enc", &[1, 1, HIDDEN_DIM])?;
        Ok(Self {
            memory_attention: MemoryAttention::new(&(p / "memory_attention"), HIDDEN_DIM, MEM_DIM, 4, 2048)?,
            memory_encoder: MemoryEncoder::new(&(p / "memory_encoder"), HIDDEN_DIM, MEM_DIM)?,
            maskmem_tpos_enc: parameter(p, "maskmem_tpos_enc", &[NUM_MASKMEM, 1, 1, MEM_DIM])?,
            no_obj_ptr: parameter(p, "no_obj_ptr", &[1, HIDDEN_DIM])?,
            no_obj_embed_spatial: parameter(p, "no_obj_embed_spatial", &[1, MEM_DIM])?,
            mask_downsample: Conv::new(&(p / "mask_downsample"), 1, 1, ConvShape::new(&[4, 4], &[4, 4], &[0, 0]))?,
            obj_ptr_proj: Mlp::sam(&(p / "obj_ptr_proj"), HIDDEN_DIM, HIDDEN_DIM, HIDDEN_DIM, 3, Activation::Relu)?,
            obj_ptr_tpos_proj: Linear::new(&(p / "obj_ptr_tpos_proj"), HIDDEN_DIM, MEM_DIM, true)?,
        })
    }
}

/// The features of one frame that tracking needs (shared by every object).
#[derive(Debug)]
pub struct FrameFeatures {
    /// `conv_s0` / `conv_s1` levels.
    pub high_res: (Tensor, Tensor),
    /// Raw stride-16 features `[1, 256, 64, 64]`.
    pub pix_feat: Tensor,
    /// Their position encoding `[1, 256, 64, 64]`.
    pub pix_pos: Tensor,
}

/// Point prompts in model pixels (1024 × 1024): coords `[1, N, 2]`, labels `[1, N]` (int).
#[derive(Debug)]
pub struct PointInputs {
    /// Coordinates.
    pub coords: Tensor,
    /// Labels: 1 positive, 0 negative, 2/3 box corners.
    pub labels: Tensor,
}

impl Clone for PointInputs {
    fn clone(&self) -> Self {
        Self { coords: self.coords.shallow_clone(), labels: self.labels.shallow_clone() }
    }
}

/// What tracking produced for one object on one frame.
#[derive(Debug)]
pub struct FrameOutput {
    /// Low-resolution mask logits `[1, 1, 256, 256]`.
    pub pred_masks: Tensor,
    /// Object pointer `[1, 256]`.
    pub obj_ptr: Tensor,
    /// Object score logit `[1, 1]` (≤ 0: not visible).
    pub object_score_logits: Tensor,
    /// Memory features `[1, 64, 64, 64]` (stored at bf16 precision, as the reference does).
    pub maskmem_features: Option<Tensor>,
}

impl Clone for FrameOutput {
    fn clone(&self) -> Self {
        Self {
            pred_masks: self.pred_masks.shallow_clone(),
            obj_ptr: self.obj_ptr.shallow_clone(),
            object_score_logits: self.object_score_logits.shallow_clone(),
            maskmem_features: self.maskmem_features.as_ref().map(Tensor::shallow_clone),
        }
    }
}

impl FrameOutput {
    /// Whether the object is visible (object score logit > 0).
    pub fn visible(&self) -> bool {
        self.object_score_logits.double_value(&[0, 0]) > 0.0
    }
}

/// One object's memory bank.
#[derive(Debug, Default)]
pub struct ObjectMemory {
    /// Conditioning frames (prompted), in insertion order.
    pub cond: Vec<(u64, FrameOutput)>,
    /// Tracked frames without prompts.
    pub non_cond: BTreeMap<u64, FrameOutput>,
}

impl ObjectMemory {
    pub(crate) fn cond_get(&self, frame: u64) -> Option<&FrameOutput> {
        self.cond.iter().find(|(f, _)| *f == frame).map(|(_, o)| o)
    }

    pub(crate) fn cond_insert(&mut self, frame: u64, out: FrameOutput) {
        match self.cond.iter_mut().find(|(f, _)| *f == frame) {
            Some(slot) => slot.1 = out,
            None => self.cond.push((frame, out)),
        }
    }
}

/// How object pointers' temporal distances are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// A video of this many frames (the reference's `num_frames`).
    Video(i64),
    /// An endless stream: normalized as for a video of 16 frames or more, no end.
    Stream,
}

impl Horizon {
    fn max_obj_ptrs(self) -> i64 {
        match self {
            Self::Video(n) => n.min(MAX_OBJ_PTRS_IN_ENCODER),
            Self::Stream => MAX_OBJ_PTRS_IN_ENCODER,
        }
    }

    fn contains(self, t: i64) -> bool {
        match self {
            Self::Video(n) => t < n,
            Self::Stream => true,
        }
    }
}

/// What one object attends to on a frame: spatial memories with their temporal slot and
/// object pointers with their distance in frames. Objects whose layouts have the same
/// [`key`](Self::key) are tracked in one batch.
struct MemoryLayout<'m> {
    /// `(t_pos, maskmem_features [1, 64, H, W])`: conditioning frames (0), then the previous
    /// frames (1..=6).
    spatial: Vec<(i64, &'m Tensor)>,
    /// `(t_diff, obj_ptr [1, 256])`: conditioning frames, then up to 15 previous frames.
    ptrs: Vec<(i64, &'m Tensor)>,
    /// Pointer distances are normalized by `max_ptrs - 1`.
    max_ptrs: i64,
}

impl<'m> MemoryLayout<'m> {
    /// The memories `mem` offers on `frame` (`_prepare_memory_conditioned_features`).
    fn of(frame: u64, mem: &'m ObjectMemory, horizon: Horizon) -> Result<Self> {
        if mem.cond.is_empty() {
            return Err(PerceptionError::Config {
                model: "sam2",
                message: "tracking an object without a conditioning frame".into(),
            });
        }
        let frame_i = frame as i64;
        // Spatial memories: every conditioning frame (t_pos 0), then the 6 previous frames.
        let mut with_outputs: Vec<(i64, &FrameOutput)> = mem.cond.iter().map(|(_, o)| (0, o)).collect();
        for t_pos in 1..NUM_MASKMEM {
            let prev = frame_i - (NUM_MASKMEM - t_pos);
            if let Some(out) = u64::try_from(prev).ok().and_then(|p| mem.non_cond.get(&p)) {
                with_outputs.push((t_pos, out));
            }
        }
        let spatial =
            with_outputs.into_iter().filter_map(|(t_pos, o)| o.maskmem_features.as_ref().map(|m| (t_pos, m))).collect();
        // Object pointers: past conditioning frames, then up to 15 previous frames.
        let max_ptrs = horizon.max_obj_ptrs();
        let mut ptrs: Vec<(i64, &Tensor)> =
            mem.cond.iter().filter(|(f, _)| *f <= frame).map(|(f, o)| (frame_i - *f as i64, &o.obj_ptr)).collect();
        for t_diff in 1..max_ptrs {
            let tt = frame_i - t_diff;
            if tt < 0 || !horizon.contains(tt) {
                break;
            }
            if let Some(out) = mem.non_cond.get(&(tt as u64)) {
                ptrs.push((t_diff, &out.obj_ptr));
            }
        }
        Ok(Self { spatial, ptrs, max_ptrs })
    }

    /// Equal keys: the same memory slots and pointer distances, so the memories stack.
    fn key(&self) -> (Vec<i64>, Vec<i64>, i64) {
        (self.spatial.iter().map(|(t, _)| *t).collect(), self.ptrs.iter().map(|(t, _)| *t).collect(), self.max_ptrs)
    }
}

/// Outputs of the SAM heads (`_forward_sam_heads`).
struct SamHeads {
    low_res_masks: Tensor,
    high_res_masks: Tensor,
    obj_ptr: Tensor,
    object_score_logits: Tensor,
}

impl Sam2 {
    /// The tracking features of a normalized `[1, 3, 1024, 1024]` frame.
    pub fn frame_features(&self, x: &Tensor) -> Result<FrameFeatures> {
        let f = self.encode_image(x)?;
        let pix_pos = f
            .backbone
            .vision_pos_enc
            .last()
            .map(Tensor::shallow_clone)
            .ok_or_else(|| PerceptionError::Config { model: "sam2", message: "no position encoding".into() })?;
        Ok(FrameFeatures { high_res: f.high_res, pix_feat: f.backbone.vision_features, pix_pos })
    }

    fn tracking(&self) -> Result<&Sam2Tracking> {
        self.tracking
            .as_ref()
            .ok_or_else(|| PerceptionError::Config { model: "sam2", message: "built without the video path".into() })
    }

    /// `_forward_sam_heads`.
    fn forward_sam_heads(
        &self,
        backbone: &Tensor,
        points: Option<&PointInputs>,
        mask_inputs: Option<&Tensor>,
        high_res: (&Tensor, &Tensor),
        multimask: bool,
    ) -> Result<SamHeads> {
        let t = self.tracking()?;
        let b = backbone.size()[0];
        let device = backbone.device();
        let (coords, labels) = match points {
            Some(p) => (p.coords.shallow_clone(), p.labels.shallow_clone()),
            None => (
                Tensor::f_zeros([b, 1, 2], (Kind::Float, device))?,
                Tensor::f_ones([b, 1], (Kind::Int, device))?.f_neg()?,
            ),
        };
        let (side, low_res) = (self.image_size(), self.image_size() / LOW_RES_DIVISOR);
        let mask_prompt = match mask_inputs {
            Some(m) if m.size()[2..] != [low_res, low_res] => Some(
                m.f_to_kind(Kind::Float)?.f_internal_upsample_bilinear2d_aa([low_res, low_res], false, None, None)?,
            ),
            Some(m) => Some(m.shallow_clone()),
            None => None,
        };
        let (sparse, dense) = self.prompt_encoder.forward(Some((&coords, &labels)), mask_prompt.as_ref())?;
        let out = self.mask_decoder.forward(
            backbone,
            &self.prompt_encoder.dense_pe()?,
            &sparse,
            &dense,
            multimask,
            false,
            high_res,
        )?;
        let appearing = out.object_score_logits.f_gt(0.0)?; // [B, 1]
        let no_obj = Tensor::f_full([1], NO_OBJ_SCORE, (Kind::Float, device))?;
        let low_res_multi =
            out.masks.f_where_self(&appearing.f_unsqueeze(-1)?.f_unsqueeze(-1)?, &no_obj)?.f_to_kind(Kind::Float)?;
        let high_res_multi = low_res_multi.f_upsample_bilinear2d([side, side], false, None, None)?;
        let mut token = out.sam_tokens_out.f_select(1, 0)?;
        let (low_res_masks, high_res_masks) = if multimask {
            let best = out.iou_pred.f_argmax(-1, false)?;
            let batch = Tensor::f_arange(b, (Kind::Int64, device))?;
            let low = low_res_multi.f_index(&[Some(&batch), Some(&best)])?.f_unsqueeze(1)?;
            let high = high_res_multi.f_index(&[Some(&batch), Some(&best)])?.f_unsqueeze(1)?;
            if out.sam_tokens_out.size()[1] > 1 {
                token = out.sam_tokens_out.f_index(&[Some(&batch), Some(&best)])?;
            }
            (low, high)
        } else {
            (low_res_multi, high_res_multi)
        };
        let obj_ptr = t.obj_ptr_proj.forward(&token)?;
        let lambda = appearing.f_to_kind(Kind::Float)?;
        let obj_ptr = lambda.f_mul(&obj_ptr)?;
        let obj_ptr = obj_ptr.f_add(&lambda.f_neg()?.f_add_scalar(1.0)?.f_mul(&t.no_obj_ptr)?)?;
        Ok(SamHeads { low_res_masks, high_res_masks, obj_ptr, object_score_logits: out.object_score_logits })
    }

    /// `_use_mask_as_output`: a binary mask prompt is the output.
    fn use_mask_as_output(&self, backbone: &Tensor, high_res: (&Tensor, &Tensor), mask: &Tensor) -> Result<SamHeads> {
        let t = self.tracking()?;
        let m = mask.f_to_kind(Kind::Float)?;
        let high_res_masks = m.f_mul_scalar(SIGMOID_SCALE_FOR_MEM_ENC)?.f_add_scalar(SIGMOID_BIAS_FOR_MEM_ENC)?;
        let (h, w) = (high_res_masks.size()[2], high_res_masks.size()[3]);
        let low_res_masks = high_res_masks.f_internal_upsample_bilinear2d_aa(
            [h / LOW_RES_DIVISOR, w / LOW_RES_DIVISOR],
            false,
            None,
            None,
        )?;
        let heads = self.forward_sam_heads(backbone, None, Some(&t.mask_downsample.forward(&m)?), high_res, false)?;
        let appearing = m.f_flatten(1, -1)?.f_gt(0.0)?.f_any_dim(1, false)?.f_unsqueeze(-1)?.f_to_kind(Kind::Float)?;
        let object_score_logits =
            appearing.f_mul_scalar(SIGMOID_SCALE_FOR_MEM_ENC)?.f_add_scalar(SIGMOID_BIAS_FOR_MEM_ENC)?;
        let obj_ptr = appearing.f_mul(&heads.obj_ptr)?;
        let obj_ptr = obj_ptr.f_add(&appearing.f_neg()?.f_add_scalar(1.0)?.f_mul(&t.no_obj_ptr)?)?;
        Ok(SamHeads { low_res_masks, high_res_masks, obj_ptr, object_score_logits })
    }

    /// `_prepare_memory_conditioned_features`: the frame's features attending to the memory.
    fn memory_conditioned(
        &self,
        frame: u64,
        init_cond: bool,
        feats: &FrameFeatures,
        mem: &ObjectMemory,
        horizon: Horizon,
    ) -> Result<Tensor> {
        if init_cond {
            // directly_add_no_mem_embed
            return Ok(feats.pix_feat.f_add(&self.no_mem_embed.f_view([1, -1, 1, 1])?)?);
        }
        self.memory_conditioned_batch(feats, &[&MemoryLayout::of(frame, mem, horizon)?])
    }

    /// The memory-conditioned features of several objects whose memories have the same
    /// [`MemoryLayout::key`], in one batch: `[B, C, H, W]`, one row per layout.
    fn memory_conditioned_batch(&self, feats: &FrameFeatures, layouts: &[&MemoryLayout<'_>]) -> Result<Tensor> {
        let t = self.tracking()?;
        let (_, c, h, w) = feats.pix_feat.size4()?;
        let Some(first) = layouts.first() else {
            return Err(PerceptionError::Config { model: "sam2", message: "an empty batch of objects".into() });
        };
        if layouts.iter().any(|l| l.key() != first.key()) {
            return Err(PerceptionError::Config {
                model: "sam2",
                message: "objects batched with unequal memories".into(),
            });
        }
        let b = layouts.len() as i64;
        let mut memories = Vec::new();
        let mut memory_pos = Vec::new();
        // Spatial memories: the same slots for every object of the batch.
        let mem_pos_enc = self.maskmem_pos_enc(&feats.pix_feat)?.f_flatten(2, -1)?.f_permute([2, 0, 1])?; // [HW, 1, 64]
        for (slot, (t_pos, _)) in first.spatial.iter().enumerate() {
            let rows: Vec<&Tensor> = layouts.iter().map(|l| l.spatial[slot].1).collect();
            let features = Tensor::f_cat(&rows, 0)?; // [B, 64, H, W]
            memories.push(features.f_flatten(2, -1)?.f_permute([2, 0, 1])?); // [HW, B, 64]
            let enc = mem_pos_enc.f_add(&t.maskmem_tpos_enc.f_get(NUM_MASKMEM - t_pos - 1)?)?;
            memory_pos.push(enc.f_expand([-1, b, MEM_DIM], false)?);
        }
        let mut num_obj_ptr_tokens = 0;
        if !first.ptrs.is_empty() {
            let ptrs = first
                .ptrs
                .iter()
                .enumerate()
                .map(|(slot, _)| Tensor::f_cat(&layouts.iter().map(|l| l.ptrs[slot].1).collect::<Vec<_>>(), 0))
                .collect::<Result<Vec<_>, _>>()?;
            let obj_ptrs = Tensor::f_stack(&ptrs, 0)?; // [N, B, C]
            let pos: Vec<i64> = first.ptrs.iter().map(|(p, _)| *p).collect();
            let t_diff_max = (first.max_ptrs - 1) as f64;
            let obj_pos = Tensor::f_from_slice(&pos)?.f_to_device(feats.pix_feat.device())?.f_div_scalar(t_diff_max)?;
            let obj_pos = t.obj_ptr_tpos_proj.forward(&sine_1d(&obj_pos, c)?)?; // [N, 64]
            let obj_pos = obj_pos.f_unsqueeze(1)?.f_expand([-1, b, MEM_DIM], false)?;
            let split = c / MEM_DIM;
            let obj_ptrs = obj_ptrs.f_reshape([-1, b, split, MEM_DIM])?.f_permute([0, 2, 1, 3])?.f_flatten(0, 1)?; // [N*4, B, 64]
            let obj_pos = obj_pos.f_repeat_interleave_self_int(split, 0, None)?;
            num_obj_ptr_tokens = obj_ptrs.size()[0];
            memories.push(obj_ptrs);
            memory_pos.push(obj_pos);
        }
        let memory = Tensor::f_cat(&memories, 0)?;
        let memory_pos = Tensor::f_cat(&memory_pos, 0)?;
        let curr = feats.pix_feat.f_flatten(2, -1)?.f_permute([2, 0, 1])?.f_expand([-1, b, c], false)?; // [HW, B, C]
        let curr_pos = feats.pix_pos.f_flatten(2, -1)?.f_permute([2, 0, 1])?.f_expand([-1, b, c], false)?;
        let out = t.memory_attention.forward(&curr, &curr_pos, &memory, &memory_pos, num_obj_ptr_tokens)?;
        Ok(out.f_permute([1, 2, 0])?.f_view([b, c, h, w])?)
    }

    /// The memory position encoding (the same for every frame and object).
    fn maskmem_pos_enc(&self, like: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = like.size4()?;
        self.tracking()?.memory_encoder.pos_enc(h, w, like.kind(), like.device())
    }

    /// `_encode_new_memory`: the memory features of a predicted mask (bf16-rounded, as the
    /// reference stores them).
    fn encode_new_memory(
        &self,
        feats: &FrameFeatures,
        high_res_masks: &Tensor,
        object_score_logits: &Tensor,
        from_points: bool,
    ) -> Result<Tensor> {
        let t = self.tracking()?;
        let mask =
            if from_points { high_res_masks.f_gt(0.0)?.f_to_kind(Kind::Float)? } else { high_res_masks.f_sigmoid()? };
        let mask = mask.f_mul_scalar(SIGMOID_SCALE_FOR_MEM_ENC)?.f_add_scalar(SIGMOID_BIAS_FOR_MEM_ENC)?;
        let features = t.memory_encoder.forward(&feats.pix_feat, &mask)?;
        let appearing = object_score_logits.f_gt(0.0)?.f_to_kind(Kind::Float)?; // [B, 1]
        let no_obj = appearing.f_neg()?.f_add_scalar(1.0)?.f_unsqueeze(-1)?.f_unsqueeze(-1)?; // [B, 1, 1, 1]
        let spatial =
            t.no_obj_embed_spatial.f_unsqueeze(-1)?.f_unsqueeze(-1)?.f_expand(features.size().as_slice(), false)?;
        let features = features.f_add(&no_obj.f_mul(&spatial)?)?;
        Ok(features.f_to_kind(Kind::BFloat16)?.f_to_kind(Kind::Float)?)
    }

    /// `track_step` for one object (batch 1).
    #[allow(clippy::too_many_arguments)]
    pub fn track_step(
        &self,
        frame: u64,
        init_cond: bool,
        feats: &FrameFeatures,
        points: Option<&PointInputs>,
        mask_inputs: Option<&Tensor>,
        mem: &ObjectMemory,
        horizon: Horizon,
        run_mem_encoder: bool,
        prev_sam_mask_logits: Option<&Tensor>,
    ) -> Result<FrameOutput> {
        let _span = trace_span!("sam2_track_step", frame, init_cond).entered();
        let high_res = (&feats.high_res.0, &feats.high_res.1);
        let heads = match mask_inputs {
            Some(m) => self.use_mask_as_output(&feats.pix_feat, high_res, m)?,
            None => {
                let pix = self.memory_conditioned(frame, init_cond, feats, mem, horizon)?;
                let num_pts = points.map_or(0, |p| p.labels.size()[1]);
                // multimask_output_in_sam, for tracking too, with 0 or 1 point.
                let multimask = num_pts <= 1;
                self.forward_sam_heads(&pix, points, prev_sam_mask_logits, high_res, multimask)?
            }
        };
        let maskmem_features = match (run_mem_encoder, mask_inputs) {
            (false, _) => None,
            // A mask prompt is encoded as the video predictor's `propagate_in_video_preflight`
            // encodes prompted frames: from the low-resolution logits (the antialiased
            // downsampling of the mask) upsampled back, and binarized as a user input.
            (true, Some(_)) => {
                let side = heads.high_res_masks.size()[2];
                let high = heads.low_res_masks.f_upsample_bilinear2d([side, side], false, None, None)?;
                Some(self.encode_new_memory(feats, &high, &heads.object_score_logits, true)?)
            }
            (true, None) => Some(self.encode_new_memory(
                feats,
                &heads.high_res_masks,
                &heads.object_score_logits,
                points.is_some(),
            )?),
        };
        Ok(FrameOutput {
            pred_masks: heads.low_res_masks,
            obj_ptr: heads.obj_ptr,
            object_score_logits: heads.object_score_logits,
            maskmem_features,
        })
    }

    /// `track_step` without prompts for every object of a frame, batched: objects whose
    /// memories have the same [`MemoryLayout::key`] (in a steady stream, all of them) share
    /// one memory-attention pass, and all objects share one mask-decoder and one
    /// memory-encoder pass over the frame's single encoding. One output per memory, in order.
    pub fn track_objects(
        &self,
        frame: u64,
        feats: &FrameFeatures,
        mems: &[&ObjectMemory],
        horizon: Horizon,
    ) -> Result<Vec<FrameOutput>> {
        let _span = trace_span!("sam2_track_objects", frame, objects = mems.len()).entered();
        if mems.is_empty() {
            return Ok(Vec::new());
        }
        let layouts = mems.iter().map(|m| MemoryLayout::of(frame, m, horizon)).collect::<Result<Vec<_>>>()?;
        let mut groups: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for (i, layout) in layouts.iter().enumerate() {
            groups.entry(layout.key()).or_default().push(i);
        }
        let mut order = Vec::with_capacity(mems.len()); // batch row → index in `mems`
        let mut pix = Vec::with_capacity(groups.len());
        for members in groups.values() {
            let batch: Vec<&MemoryLayout<'_>> = members.iter().map(|&i| &layouts[i]).collect();
            pix.push(self.memory_conditioned_batch(feats, &batch)?); // [B_g, C, H, W]
            order.extend_from_slice(members);
        }
        let pix = Tensor::f_cat(&pix, 0)?; // [B, C, H, W]
        let high_res = (&feats.high_res.0, &feats.high_res.1);
        // No points: multimask_output_in_sam applies (0 points ≤ 1).
        let heads = self.forward_sam_heads(&pix, None, None, high_res, true)?;
        let maskmem = self.encode_new_memory(feats, &heads.high_res_masks, &heads.object_score_logits, false)?;
        let mut outputs: Vec<Option<FrameOutput>> = (0..mems.len()).map(|_| None).collect();
        for (row, &i) in order.iter().enumerate() {
            let row = row as i64;
            // Rows are copied out so no object's memory keeps the whole batch alive.
            let take = |t: &Tensor| -> Result<Tensor> { Ok(t.f_narrow(0, row, 1)?.f_contiguous()?.f_detach_copy()?) };
            outputs[i] = Some(FrameOutput {
                pred_masks: take(&heads.low_res_masks)?,
                obj_ptr: take(&heads.obj_ptr)?,
                object_score_logits: take(&heads.object_score_logits)?,
                maskmem_features: Some(take(&maskmem)?),
            });
        }
        outputs
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| PerceptionError::Config { model: "sam2", message: "an object lost its row".into() })
            })
            .collect()
    }

    /// Memory of an output computed without it (`propagate_in_video_preflight`).
    pub(crate) fn memory_of(&self, feats: &FrameFeatures, out: &FrameOutput) -> Result<Tensor> {
        let side = self.image_size();
        let high = out.pred_masks.f_upsample_bilinear2d([side, side], false, None, None)?;
        self.encode_new_memory(feats, &high, &out.object_score_logits, true)
    }
}

/// `get_1d_sine_pe(pos, dim)`: `cat(sin, cos)` of `pos / 10000^(2⌊i/2⌋/(dim/2))`.
fn sine_1d(pos: &Tensor, dim: i64) -> Result<Tensor> {
    let pe_dim = dim / 2;
    let dim_t = Tensor::f_arange(pe_dim, (Kind::Float, pos.device()))?;
    let dim_t =
        Tensor::f_pow_scalar(10_000.0, &dim_t.f_floor_divide_scalar(2)?.f_mul_scalar(2)?.f_div_scalar(pe_dim as f64)?)?;
    let p = pos.f_unsqueeze(-1)?.f_div(&dim_t)?;
    Ok(Tensor::f_cat(&[p.f_sin()?, p.f_cos()?], -1)?)
}
