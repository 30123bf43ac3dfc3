//! Hiera (Ryali et al., "Hiera: A Hierarchical Vision Transformer without the Bells-and-
//! Whistles", ICML 2023), image and video, exact to the official `hiera/hiera.py`
//! (facebookresearch/hiera, PyPI `hiera-transformer` 0.1.4).
//!
//! Tokens are "unrolled" once after the patch embedding so that every 2×2 (or 1×2×2) pooling
//! is a max over the leading axis and every mask unit is contiguous; intermediates are
//! "rerolled" back to `[B, (T,) H, W, C]`. Variable names are the official checkpoint keys
//! (`patch_embed.proj`, `pos_embed`, `blocks.{i}.attn.qkv`, `norm`, `head.projection`).

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm, Linear, Mlp, max_dim, sdpa, softmax_last};
use serde::{Deserialize, Serialize};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// Hiera's LayerNorm epsilon.
const NORM_EPS: f64 = 1e-6;

/// Constructor arguments of the official `Hiera` (same names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HieraConfig {
    /// `(H, W)` or `(T, H, W)`.
    pub input_size: Vec<i64>,
    /// Input channels.
    pub in_chans: i64,
    /// Width of the first stage.
    pub embed_dim: i64,
    /// Heads of the first stage.
    pub num_heads: i64,
    /// Classes of the head.
    pub num_classes: i64,
    /// Blocks per stage.
    pub stages: Vec<usize>,
    /// Number of stage transitions that pool.
    pub q_pool: usize,
    /// Pooling stride per axis.
    pub q_stride: Vec<i64>,
    /// Mask unit size in tokens per axis.
    pub mask_unit_size: Vec<i64>,
    /// Mask-unit (local) attention per stage.
    pub mask_unit_attn: Vec<bool>,
    /// Width multiplier at each stage transition.
    pub dim_mul: f64,
    /// Head multiplier at each stage transition.
    pub head_mul: f64,
    /// Patch embedding kernel.
    pub patch_kernel: Vec<i64>,
    /// Patch embedding stride.
    pub patch_stride: Vec<i64>,
    /// Patch embedding padding.
    pub patch_padding: Vec<i64>,
    /// MLP hidden width ratio.
    pub mlp_ratio: f64,
    /// Separate spatial and temporal position embeddings (video).
    pub sep_pos_embed: bool,
}

impl Default for HieraConfig {
    fn default() -> Self {
        Self {
            input_size: vec![224, 224],
            in_chans: 3,
            embed_dim: 96,
            num_heads: 1,
            num_classes: 1000,
            stages: vec![2, 3, 16, 3],
            q_pool: 3,
            q_stride: vec![2, 2],
            mask_unit_size: vec![8, 8],
            mask_unit_attn: vec![true, true, false, false],
            dim_mul: 2.0,
            head_mul: 2.0,
            patch_kernel: vec![7, 7],
            patch_stride: vec![4, 4],
            patch_padding: vec![3, 3],
            mlp_ratio: 4.0,
            sep_pos_embed: false,
        }
    }
}

impl HieraConfig {
    fn image(embed_dim: i64, num_heads: i64, stages: &[usize]) -> Self {
        Self { embed_dim, num_heads, stages: stages.to_vec(), ..Self::default() }
    }

    fn video(embed_dim: i64, num_heads: i64, stages: &[usize]) -> Self {
        Self {
            num_classes: 400,
            input_size: vec![16, 224, 224],
            q_stride: vec![1, 2, 2],
            mask_unit_size: vec![1, 8, 8],
            patch_kernel: vec![3, 7, 7],
            patch_stride: vec![2, 4, 4],
            patch_padding: vec![1, 3, 3],
            sep_pos_embed: true,
            ..Self::image(embed_dim, num_heads, stages)
        }
    }

    /// The official model of that name (`hiera_tiny_224` ... `hiera_huge_16x224`).
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "hiera_tiny_224" => Self::image(96, 1, &[1, 2, 7, 2]),
            "hiera_small_224" => Self::image(96, 1, &[1, 2, 11, 2]),
            "hiera_base_224" => Self::image(96, 1, &[2, 3, 16, 3]),
            "hiera_base_plus_224" => Self::image(112, 2, &[2, 3, 16, 3]),
            "hiera_large_224" => Self::image(144, 2, &[2, 6, 36, 4]),
            "hiera_huge_224" => Self::image(256, 4, &[2, 6, 36, 4]),
            "hiera_base_16x224" => Self::video(96, 1, &[2, 3, 16, 3]),
            "hiera_base_plus_16x224" => Self::video(112, 2, &[2, 3, 16, 3]),
            "hiera_large_16x224" => Self::video(144, 2, &[2, 6, 36, 4]),
            "hiera_huge_16x224" => Self::video(256, 4, &[2, 6, 36, 4]),
            _ => return None,
        })
    }

    /// Names accepted by [`HieraConfig::by_name`].
    pub const NAMES: [&'static str; 10] = [
        "hiera_tiny_224",
        "hiera_small_224",
        "hiera_base_224",
        "hiera_base_plus_224",
        "hiera_large_224",
        "hiera_huge_224",
        "hiera_base_16x224",
        "hiera_base_plus_16x224",
        "hiera_large_16x224",
        "hiera_huge_16x224",
    ];

    fn check(&self) -> Result<()> {
        let d = self.input_size.len();
        let ok = (2..=3).contains(&d)
            && [&self.q_stride, &self.mask_unit_size, &self.patch_kernel, &self.patch_stride, &self.patch_padding]
                .iter()
                .all(|v| v.len() == d)
            && self.q_pool < self.stages.len()
            && self.mask_unit_attn.len() == self.stages.len()
            && self.stages.iter().all(|&s| s > 0);
        if ok {
            Ok(())
        } else {
            Err(PerceptionError::Config { model: "hiera", message: format!("inconsistent config {self:?}") })
        }
    }
}

/// Local (mask unit) or global attention with optional query pooling (`MaskUnitAttention`).
#[derive(Debug)]
struct MaskUnitAttention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
    dim_out: i64,
    q_stride: i64,
    window_size: i64,
    use_mask_unit_attn: bool,
}

impl MaskUnitAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.size3()?;
        let head_dim = self.dim_out / self.heads;
        let num_windows = if self.use_mask_unit_attn { n / (self.q_stride * self.window_size) } else { 1 };
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, -1, num_windows, 3, self.heads, head_dim])? // [B, T, nW, 3, heads, hd]
            .f_permute([3, 0, 4, 2, 1, 5])?; // [3, B, heads, nW, T, hd]
        let (mut q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        if self.q_stride > 1 {
            // [B, heads, nW, q_stride, T / q_stride, hd] → max over the stride axis
            q = max_dim(&q.f_view([b, self.heads, num_windows, self.q_stride, -1, head_dim])?, 3)?;
        }
        let x = sdpa(&q, &k, &v)?; // [B, heads, nW, Tq, hd]
        let x = x.f_transpose(1, 3)?.f_reshape([b, -1, self.dim_out])?; // [B, Tq * nW, dim_out]
        Ok(self.proj.forward(&x)?)
    }
}

/// `HieraBlock`.
#[derive(Debug)]
pub(crate) struct HieraBlock {
    norm1: LayerNorm,
    attn: MaskUnitAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    proj: Option<Linear>,
}

/// `do_pool`: max over the unrolled stride axis, `[B, stride, N / stride, C]` → `[B, N / stride, C]`.
fn do_pool(x: &Tensor, stride: i64) -> Result<Tensor> {
    let (b, _, c) = x.size3()?;
    Ok(max_dim(&x.f_view([b, stride, -1, c])?, 1)?)
}

/// How a block attends: query pooling stride, mask-unit window and whether attention stays
/// inside mask units (`HieraBlock`'s `q_stride`, `window_size`, `use_mask_unit_attn`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockAttention {
    pub q_stride: i64,
    pub window_size: i64,
    pub use_mask_unit_attn: bool,
}

impl BlockAttention {
    /// Global attention without pooling (the MAE decoder's blocks).
    pub const GLOBAL: Self = Self { q_stride: 1, window_size: 0, use_mask_unit_attn: false };
}

impl HieraBlock {
    /// `HieraBlock(dim, dim_out, heads, mlp_ratio, ...)` under `p`.
    pub(crate) fn new(
        p: &Path,
        dim: i64,
        dim_out: i64,
        heads: i64,
        mlp_ratio: f64,
        attention: BlockAttention,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(&(p / "norm1"), dim, NORM_EPS)?,
            attn: MaskUnitAttention {
                qkv: Linear::new(&(p / "attn" / "qkv"), dim, 3 * dim_out, true)?,
                proj: Linear::new(&(p / "attn" / "proj"), dim_out, dim_out, true)?,
                heads,
                dim_out,
                q_stride: attention.q_stride,
                window_size: attention.window_size,
                use_mask_unit_attn: attention.use_mask_unit_attn,
            },
            norm2: LayerNorm::new(&(p / "norm2"), dim_out, NORM_EPS)?,
            mlp: Mlp::timm(&(p / "mlp"), dim_out, (dim_out as f64 * mlp_ratio) as i64, Activation::Gelu)?,
            proj: if dim_out != dim { Some(Linear::new(&(p / "proj"), dim, dim_out, true)?) } else { None },
        })
    }

    /// Width of the block's output.
    pub(crate) fn dim_out(&self) -> i64 {
        self.attn.dim_out
    }

    /// Whether the block keeps width and token count (no projection, no query pooling): the
    /// blocks a reversible Hiera runs as two streams.
    pub(crate) fn keeps_shape(&self) -> bool {
        self.proj.is_none() && self.attn.q_stride == 1
    }

    /// `attn(norm1(x))`: the attention branch (the reversible block's `F`).
    pub(crate) fn attention_branch(&self, x: &Tensor) -> Result<Tensor> {
        self.attn.forward(&self.norm1.forward(x)?)
    }

    /// `mlp(norm2(x))`: the MLP branch (the reversible block's `G`).
    pub(crate) fn mlp_branch(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.mlp.forward(&self.norm2.forward(x)?)?)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x_norm = self.norm1.forward(x)?;
        let x = match &self.proj {
            Some(proj) => do_pool(&proj.forward(&x_norm)?, self.attn.q_stride)?,
            None => x.shallow_clone(),
        };
        // Residuals added in place into the fresh branch outputs (a + b == b + a exactly; the
        // outputs of a linear layer are not needed by its backward, so autograd allows it).
        let mut x_attn = self.attn.forward(&x_norm)?;
        let _ = x_attn.f_add_(&x)?;
        let mut y = self.mlp.forward(&self.norm2.forward(&x_attn)?)?;
        let _ = y.f_add_(&x_attn)?;
        Ok(y)
    }
}

/// The outputs of a forward pass.
#[derive(Debug)]
pub struct HieraOutput {
    /// Head logits `[B, classes]` (absent with a mask).
    pub logits: Option<Tensor>,
    /// Softmax of the logits, what the official model returns in eval mode.
    pub probs: Option<Tensor>,
    /// Per stage: `[B, (T,) H, W, C]`, or with a mask `[B, #kept units, (MUt,) MUy, MUx, C]`.
    pub intermediates: Vec<Tensor>,
}

/// The Hiera model (weights only; it holds no per-stream state).
#[derive(Debug)]
pub struct Hiera {
    config: HieraConfig,
    patch_embed: Conv,
    pos_embed: Tensor,          // [1, N, C] (image)
    pos_embed_temporal: Tensor, // [1, T, C] (video, with `pos_embed` = spatial [1, H*W, C])
    blocks: Vec<HieraBlock>,
    /// `norm` and `head.projection`; absent in the MAE model, which replaces them.
    head: Option<(LayerNorm, Linear)>,
    tokens_spatial_shape: Vec<i64>, // tokens per axis after the patch embedding
    mask_spatial_shape: Vec<i64>,   // mask units per axis
    stage_ends: Vec<usize>,
    mu_size: i64,
}

impl Hiera {
    /// Builds the model under `p` (use the root path for official key names).
    pub fn new(p: &Path, config: &HieraConfig) -> Result<Self> {
        Self::build(p, config, true)
    }

    /// The model without `norm` and `head` (what `MaskedAutoencoderHiera` keeps of it).
    pub(crate) fn trunk(p: &Path, config: &HieraConfig) -> Result<Self> {
        Self::build(p, config, false)
    }

    fn build(p: &Path, config: &HieraConfig, with_head: bool) -> Result<Self> {
        config.check()?;
        let c = config;
        let tokens_spatial_shape: Vec<i64> = c.input_size.iter().zip(&c.patch_stride).map(|(i, s)| i / s).collect();
        let num_tokens: i64 = tokens_spatial_shape.iter().product();
        let mask_spatial_shape = tokens_spatial_shape.iter().zip(&c.mask_unit_size).map(|(t, m)| t / m).collect();
        let mut flat_mu_size: i64 = c.mask_unit_size.iter().product();
        let flat_q_stride: i64 = c.q_stride.iter().product();
        let stage_ends: Vec<usize> = (1..=c.stages.len()).map(|i| c.stages[..i].iter().sum::<usize>() - 1).collect();
        let patch_embed = Conv::new(
            &(p / "patch_embed" / "proj"),
            c.in_chans,
            c.embed_dim,
            ConvShape::new(&c.patch_kernel, &c.patch_stride, &c.patch_padding),
        )?;
        let (pos_embed, pos_embed_temporal) = if c.sep_pos_embed {
            let spatial = tokens_spatial_shape[1] * tokens_spatial_shape[2];
            (
                p.f_var("pos_embed_spatial", &[1, spatial, c.embed_dim], Init::Const(0.0))?,
                p.f_var("pos_embed_temporal", &[1, tokens_spatial_shape[0], c.embed_dim], Init::Const(0.0))?,
            )
        } else {
            (p.f_var("pos_embed", &[1, num_tokens, c.embed_dim], Init::Const(0.0))?, Tensor::new())
        };
        let q_pool_blocks: Vec<usize> = stage_ends[..c.q_pool].iter().map(|e| e + 1).collect();
        let (mut embed_dim, mut num_heads, mut cur_stage) = (c.embed_dim, c.num_heads, 0usize);
        let mut blocks = Vec::new();
        for i in 0..c.stages.iter().sum() {
            let mut dim_out = embed_dim;
            // Mask unit or global attention: read before the stage advances (the "lag").
            let use_mask_unit_attn = c.mask_unit_attn[cur_stage];
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = (embed_dim as f64 * c.dim_mul) as i64;
                num_heads = (num_heads as f64 * c.head_mul) as i64;
                cur_stage += 1;
                if q_pool_blocks.contains(&i) {
                    flat_mu_size /= flat_q_stride;
                }
            }
            let q_stride = if q_pool_blocks.contains(&i) { flat_q_stride } else { 1 };
            let attention = BlockAttention { q_stride, window_size: flat_mu_size, use_mask_unit_attn };
            blocks.push(HieraBlock::new(&(p / "blocks" / i), embed_dim, dim_out, num_heads, c.mlp_ratio, attention)?);
            embed_dim = dim_out;
        }
        Ok(Self {
            config: config.clone(),
            patch_embed,
            pos_embed,
            pos_embed_temporal,
            blocks,
            head: if with_head {
                Some((
                    LayerNorm::new(&(p / "norm"), embed_dim, NORM_EPS)?,
                    Linear::new(&(p / "head" / "projection"), embed_dim, c.num_classes, true)?,
                ))
            } else {
                None
            },
            tokens_spatial_shape,
            mask_spatial_shape,
            stage_ends,
            mu_size: c.mask_unit_size.iter().product(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HieraConfig {
        &self.config
    }

    /// Mask units per axis (the mask passed to [`Hiera::forward`] has their product per row).
    pub fn mask_spatial_shape(&self) -> &[i64] {
        &self.mask_spatial_shape
    }

    /// Tokens per axis after the patch embedding.
    pub fn tokens_spatial_shape(&self) -> &[i64] {
        &self.tokens_spatial_shape
    }

    /// Index of the last block of each stage.
    pub fn stage_ends(&self) -> &[usize] {
        &self.stage_ends
    }

    /// Output width of block `i`.
    pub(crate) fn block_dim_out(&self, i: usize) -> Option<i64> {
        self.blocks.get(i).map(HieraBlock::dim_out)
    }

    /// The blocks, in order.
    pub(crate) fn blocks(&self) -> &[HieraBlock] {
        &self.blocks
    }

    /// Patch embedding, position and unroll: `[B, 3, (T,) H, W]` → `[B, N, C]` (unrolled).
    pub(crate) fn embed(&self, input: &Tensor) -> Result<Tensor> {
        let x = self.patch_embed.forward(input)?;
        let (b, c) = (x.size()[0], x.size()[1]);
        let x = x.f_reshape([b, c, -1])?.f_transpose(2, 1)?; // [B, N, C]
        self.unroll(&x.f_add(&self.pos_embed()?)?)
    }

    /// `norm` → `head.projection` on the mean token: `[B, N, C]` → logits and their softmax;
    /// `None` for the trunk without a head.
    pub(crate) fn head(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some((norm, head)) = self.head.as_ref() else {
            return Ok(None);
        };
        let pooled = norm.forward(&x.f_mean_dim(Some(&[1i64][..]), false, None::<Kind>)?)?;
        let logits = head.forward(&pooled)?;
        let probs = softmax_last(&logits)?;
        Ok(Some((logits, probs)))
    }

    fn pos_embed(&self) -> Result<Tensor> {
        if !self.config.sep_pos_embed {
            return Ok(self.pos_embed.shallow_clone());
        }
        let t = self.tokens_spatial_shape[0];
        let hw = self.tokens_spatial_shape[1] * self.tokens_spatial_shape[2];
        let spatial = self.pos_embed.f_repeat([1, t, 1])?; // [1, T*H*W, C]
        let temporal = self.pos_embed_temporal.f_repeat_interleave_self_int(hw, 1, None)?; // [1, T*H*W, C]
        Ok(spatial.f_add(&temporal)?)
    }

    /// `Unroll`: `[B, N, C]` in raster order → the stride axes outermost, applied once per
    /// pooling stage (`len(stages) - 1` times).
    fn unroll(&self, x: &Tensor) -> Result<Tensor> {
        let (b0, _, c) = x.size3()?;
        let d = self.tokens_spatial_shape.len();
        let mut size = self.tokens_spatial_shape.clone();
        let mut b = b0;
        let mut shape = vec![b];
        shape.extend(&size);
        shape.push(c);
        let mut x = x.f_view(shape.as_slice())?; // [B, *size, C]
        for _ in 0..self.stage_ends.len() - 1 {
            let strides = &self.config.q_stride;
            size = size.iter().zip(strides).map(|(s, q)| s / q).collect();
            let mut new_shape = vec![b];
            for (s, q) in size.iter().zip(strides) {
                new_shape.extend([*s, *q]);
            }
            new_shape.push(c);
            x = x.f_view(new_shape.as_slice())?; // [B, s0, q0, s1, q1, (s2, q2,) C]
            let l = new_shape.len() as i64;
            let mut perm: Vec<i64> = vec![0];
            perm.extend((2..l - 1).step_by(2));
            perm.extend((1..l - 1).step_by(2));
            perm.push(l - 1);
            x = x.f_permute(perm.as_slice())?.f_flatten(0, d as i64)?; // [B * prod(q), *size, C]
            b *= strides.iter().product::<i64>();
        }
        Ok(x.f_reshape([-1, self.tokens_spatial_shape.iter().product(), c])?)
    }

    /// `Reroll` of the output of block `block`: back to `[B, *size, C]`, or per mask unit.
    pub(crate) fn reroll(&self, x: &Tensor, block: usize, masked: bool) -> Result<Tensor> {
        // The unroll schedule still pending at `block`, and the spatial size there.
        let mut schedule = self.stage_ends.len() - 1;
        let mut size = self.tokens_spatial_shape.clone();
        for end in &self.stage_ends[..self.config.q_pool] {
            if *end < block {
                if schedule > 0 {
                    size = size.iter().zip(&self.config.q_stride).map(|(s, q)| s / q).collect();
                }
                schedule = schedule.saturating_sub(1);
            }
        }
        let (b, mut n, c) = x.size3()?;
        let d = size.len();
        let strides = &self.config.q_stride;
        let mut mu_shape = vec![1i64; d];
        let mut x = x.shallow_clone();
        for _ in 0..schedule {
            let mut shape = vec![b];
            shape.extend(strides);
            shape.push(n / strides.iter().product::<i64>());
            shape.extend(&mu_shape);
            shape.push(c);
            x = x.f_view(shape.as_slice())?; // [B, *q, N', *mu, C]
            let l = shape.len();
            let mut perm: Vec<i64> = vec![0, 1 + d as i64];
            for (a, m) in (1..1 + d).zip(2 + d..l - 1) {
                perm.extend([a as i64, m as i64]);
            }
            perm.push(l as i64 - 1);
            x = x.f_permute(perm.as_slice())?; // [B, N', q0, mu0, q1, mu1, ..., C]
            for (m, q) in mu_shape.iter_mut().zip(strides) {
                *m *= q;
            }
            let mut out = vec![b, -1];
            out.extend(&mu_shape);
            out.push(c);
            x = x.f_reshape(out.as_slice())?;
            n = x.size()[1];
        }
        let mut shape = vec![b, n];
        shape.extend(&mu_shape);
        shape.push(c);
        x = x.f_view(shape.as_slice())?; // [B, #MU, *mu, C]
        if masked {
            return Ok(x);
        }
        undo_windowing(&x, &size, &mu_shape)
    }

    /// Runs the model on `[B, 3, (T,) H, W]`. With `mask` (`[B, #mask units]`, true = keep, the
    /// same count per row) only kept units are processed, MAE-style, and no head runs.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, return_intermediates: bool) -> Result<HieraOutput> {
        let _span = trace_span!("hiera_forward").entered();
        let b = x.size()[0];
        let input = match mask {
            Some(m) => {
                // do_masked_conv: zero the removed units before the (overlapping) patch conv.
                let mut shape = vec![b, 1];
                shape.extend(&self.mask_spatial_shape);
                let m = m.f_view(shape.as_slice())?.f_to_kind(Kind::Float)?;
                let target: Vec<i64> = x.size()[2..].to_vec();
                let resized = if target.len() == 3 {
                    m.f_upsample_nearest3d(target.as_slice(), None, None, None)?
                } else {
                    m.f_upsample_nearest2d(target.as_slice(), None, None)?
                };
                x.f_mul(&resized.f_to_kind(Kind::Bool)?)?
            }
            None => x.shallow_clone(),
        };
        let mut x = self.embed(&input)?;
        let c = x.size()[2];
        if let Some(m) = mask {
            // Keep the tokens of kept units: token t belongs to unit t % #units after unrolling.
            let keep = m.f_to_kind(Kind::Bool)?.f_unsqueeze(-1)?.f_tile([1, self.mu_size, c])?; // [B, N, C]
            x = x.f_masked_select(&keep)?.f_view([b, -1, c])?;
        }
        let mut intermediates = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if return_intermediates && self.stage_ends.contains(&i) {
                intermediates.push(self.reroll(&x, i, mask.is_some())?);
            }
        }
        let head = if mask.is_none() { self.head(&x)? } else { None };
        let (logits, probs) = head.unzip();
        Ok(HieraOutput { logits, probs, intermediates })
    }
}

/// `undo_windowing`: `[B, #MU, *mu_shape, C]` (mask units in raster order) → `[B, *size, C]`.
pub(crate) fn undo_windowing(x: &Tensor, size: &[i64], mu_shape: &[i64]) -> Result<Tensor> {
    let dims = x.size();
    let (Some(&b), Some(&c)) = (dims.first(), dims.last()) else {
        return Err(PerceptionError::Config { model: "hiera", message: "undo_windowing of a scalar".into() });
    };
    let d = size.len();
    let num_mus: Vec<i64> = size.iter().zip(mu_shape).map(|(s, m)| s / m).collect();
    let mut shape = vec![b];
    shape.extend(&num_mus);
    shape.extend(mu_shape);
    shape.push(c);
    let x = x.f_view(shape.as_slice())?; // [B, *#MU, *mu, C]
    let mut perm: Vec<i64> = vec![0];
    for i in 1..=d as i64 {
        perm.extend([i, i + d as i64]);
    }
    perm.push(2 * d as i64 + 1);
    let mut out = vec![b];
    out.extend(size);
    out.push(c);
    Ok(x.f_permute(perm.as_slice())?.f_reshape(out.as_slice())?) // [B, *size, C]
}
