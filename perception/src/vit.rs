//! timm's `VisionTransformer` (class token, learned position embedding including the class
//! slot, pre-norm blocks, final LayerNorm, class-token pooling, optional linear head), the
//! architecture of the MAWS checkpoints (facebookresearch/maws `model_builder.py`, built with
//! `VisionTransformer(patch_size, embed_dim, depth, num_heads, num_classes, img_size)` and
//! timm's defaults). Variable names are timm's, which the MAWS `.pt` files use as they are:
//! `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
//! mlp.fc1,mlp.fc2}`, `norm`, `head`.
//!
//! Its `Block` is also DiffMAE's encoder and decoder block (MAE's `models_mae.py` builds them
//! from timm).

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm, Linear, Mlp, parameter, sdpa};
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::Path;
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// timm's LayerNorm epsilon in vision transformers (`partial(nn.LayerNorm, eps=1e-6)`).
pub(crate) const NORM_EPS: f64 = 1e-6;

/// timm `Attention` (qkv bias, no q/k norm).
#[derive(Debug)]
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
}

impl Attention {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, n, 3, self.heads, c / self.heads])? // [B, N, 3, heads, hd]
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, heads, N, hd]
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let y = sdpa(&q, &k, &v)?; // [B, heads, N, hd]
        let y = y.f_transpose(1, 2)?.f_reshape([b, n, c])?; // [B, N, C]
        Ok(self.proj.forward(&y)?)
    }
}

/// timm `Block`: pre-norm attention and MLP, residuals, no layer scale.
#[derive(Debug)]
pub(crate) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    pub(crate) fn new(p: &Path, dim: i64, heads: i64, mlp_ratio: f64) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(&(p / "norm1"), dim, NORM_EPS)?,
            attn: Attention {
                qkv: Linear::new(&(p / "attn" / "qkv"), dim, 3 * dim, /* bias */ true)?,
                proj: Linear::new(&(p / "attn" / "proj"), dim, dim, /* bias */ true)?,
                heads,
            },
            norm2: LayerNorm::new(&(p / "norm2"), dim, NORM_EPS)?,
            mlp: Mlp::timm(&(p / "mlp"), dim, (dim as f64 * mlp_ratio) as i64, Activation::Gelu)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Residuals added in place into the fresh branch outputs (a + b == b + a exactly).
        let mut y = self.attn.forward(&self.norm1.forward(x)?)?;
        let _ = y.f_add_(x)?;
        let mut z = self.mlp.forward(&self.norm2.forward(&y)?)?;
        let _ = z.f_add_(&y)?;
        Ok(z)
    }
}

/// `count` blocks under `p.{i}`.
pub(crate) fn blocks(p: &Path, count: usize, dim: i64, heads: i64, mlp_ratio: f64) -> Result<Vec<Block>> {
    (0..count).map(|i| Block::new(&(p / i), dim, heads, mlp_ratio)).collect()
}

/// The `VisionTransformer` arguments MAWS sets (timm's names; the rest are timm's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    /// Input side.
    pub img_size: i64,
    /// Patch side.
    pub patch_size: i64,
    /// Width.
    pub embed_dim: i64,
    /// Blocks.
    pub depth: usize,
    /// Heads.
    pub num_heads: i64,
    /// MLP hidden width over the width.
    pub mlp_ratio: f64,
    /// Classes of the head (0: no head, the pooled features are the output).
    pub num_classes: i64,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self { img_size: 224, patch_size: 16, embed_dim: 768, depth: 12, num_heads: 12, mlp_ratio: 4.0, num_classes: 0 }
    }
}

/// MAWS's sizes (`MODEL_CONFIGS`): `(name, patch, width, depth, heads)`.
const MAWS_SIZES: [(&str, i64, i64, usize, i64); 4] = [
    ("vit_b16", 16, 768, 12, 12),
    ("vit_l16", 16, 1024, 24, 16),
    ("vit_h14", 14, 1280, 32, 16),
    ("vit_2b14", 14, 2560, 24, 32),
];

impl VitConfig {
    /// Names: `maws_<size>` and `mae_<size>` (MAWS's MAE-only stage, same architecture) at
    /// 224 without a head, `maws_<size>_ft_in1k` (ImageNet-1k fine-tuned: 512 for /16, 518 for
    /// /14, 1000 classes), for sizes `vit_b16`, `vit_l16`, `vit_h14`, `vit_2b14`.
    pub fn by_name(name: &str) -> Option<Self> {
        let (stage, rest) = name.split_once('_')?;
        if stage != "maws" && stage != "mae" {
            return None;
        }
        let (size, finetuned) = match rest.strip_suffix("_ft_in1k") {
            Some(size) if stage == "maws" => (size, true),
            Some(_) => return None,
            None => (rest, false),
        };
        let &(_, patch_size, embed_dim, depth, num_heads) = MAWS_SIZES.iter().find(|s| s.0 == size)?;
        let base = Self { patch_size, embed_dim, depth, num_heads, ..Self::default() };
        Some(if finetuned {
            Self { img_size: if patch_size == 16 { 512 } else { 518 }, num_classes: 1000, ..base }
        } else {
            base
        })
    }

    /// Names accepted by [`VitConfig::by_name`].
    pub const NAMES: [&'static str; 12] = [
        "maws_vit_b16",
        "maws_vit_l16",
        "maws_vit_h14",
        "maws_vit_2b14",
        "mae_vit_b16",
        "mae_vit_l16",
        "mae_vit_h14",
        "mae_vit_2b14",
        "maws_vit_b16_ft_in1k",
        "maws_vit_l16_ft_in1k",
        "maws_vit_h14_ft_in1k",
        "maws_vit_2b14_ft_in1k",
    ];

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.img_size / self.patch_size
    }

    fn check(&self) -> Result<()> {
        let ok = self.patch_size > 0
            && self.img_size % self.patch_size == 0
            && self.num_heads > 0
            && self.embed_dim % self.num_heads == 0
            && self.num_classes >= 0;
        if ok {
            Ok(())
        } else {
            Err(PerceptionError::Config { model: "vit", message: format!("inconsistent config {self:?}") })
        }
    }
}

/// The outputs of a forward pass.
#[derive(Debug)]
pub struct VitOutput {
    /// Every token after the final norm `[B, 1 + N, D]` (`forward_features`).
    pub tokens: Tensor,
    /// The class token `[B, D]` (the pooled features, what MAWS's pre-trained models return).
    pub pooled: Tensor,
    /// Head logits `[B, classes]` when the model has a head.
    pub logits: Option<Tensor>,
}

/// The model (weights only).
#[derive(Debug)]
pub struct VisionTransformer {
    config: VitConfig,
    patch_embed: Conv,
    cls_token: Tensor, // [1, 1, D]
    pos_embed: Tensor, // [1, 1 + N, D]
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Option<Linear>,
}

impl VisionTransformer {
    /// Builds the model under `p` (the root path for timm's key names).
    pub fn new(p: &Path, config: &VitConfig) -> Result<Self> {
        config.check()?;
        let c = config;
        let (patch, padding) = ([c.patch_size, c.patch_size], [0, 0]);
        let n = c.grid() * c.grid();
        Ok(Self {
            config: config.clone(),
            patch_embed: Conv::new(
                &(p / "patch_embed" / "proj"),
                3,
                c.embed_dim,
                ConvShape::new(&patch, &patch, &padding),
            )?,
            cls_token: parameter(p, "cls_token", &[1, 1, c.embed_dim])?,
            pos_embed: parameter(p, "pos_embed", &[1, 1 + n, c.embed_dim])?,
            blocks: blocks(&(p / "blocks"), c.depth, c.embed_dim, c.num_heads, c.mlp_ratio)?,
            norm: LayerNorm::new(&(p / "norm"), c.embed_dim, NORM_EPS)?,
            head: if c.num_classes > 0 {
                Some(Linear::new(&(p / "head"), c.embed_dim, c.num_classes, true)?)
            } else {
                None
            },
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Runs the model on a normalized `[B, 3, img_size, img_size]`.
    pub fn forward(&self, x: &Tensor) -> Result<VitOutput> {
        let _span = trace_span!("vit_forward").entered();
        let size = x.size();
        let side = self.config.img_size;
        if size.len() != 4 || size[1..] != [3, side, side] {
            return Err(PerceptionError::Config {
                model: "vit",
                message: format!("input {size:?}, expected [B, 3, {side}, {side}]"),
            });
        }
        let b = size[0];
        let x = self.patch_embed.forward(x)?.f_flatten(2, -1)?.f_transpose(1, 2)?; // [B, N, D]
        let cls = self.cls_token.f_expand([b, -1, -1], false)?; // [B, 1, D]
        let mut x = Tensor::f_cat(&[&cls, &x], 1)?.f_add(&self.pos_embed)?; // [B, 1 + N, D]
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let tokens = self.norm.forward(&x)?;
        let pooled = tokens.f_select(1, 0)?; // [B, D]
        let logits = self.head.as_ref().map(|h| h.forward(&pooled)).transpose()?;
        Ok(VitOutput { tokens, pooled, logits })
    }

    /// The patch tokens of `tokens` as a feature map `[B, D, grid, grid]`.
    pub fn feature_map(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, _, d) = tokens.size3()?;
        let g = self.config.grid();
        Ok(tokens.f_narrow(1, 1, g * g)?.f_transpose(1, 2)?.f_reshape([b, d, g, g])?) // [B, D, g, g]
    }
}
