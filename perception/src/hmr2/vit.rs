//! The ViTPose-style ViT backbone of HMR 2.0 (`hmr2/models/backbones/vit.py`, `ViT`): a plain
//! ViT-H/16 on a 256×192 person crop whose patch convolution is padded by 2, with a learned
//! position embedding whose class slot is added to every patch slot, and a final LayerNorm;
//! the tokens come back as a feature map `[B, 1280, 16, 12]`.
//!
//! Variable names are the checkpoint's under `backbone.` (`patch_embed.proj.weight`,
//! `pos_embed`, `blocks.{i}.attn.qkv.weight`, `blocks.{i}.mlp.fc1.weight`, `last_norm.weight`).

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm, Linear, Mlp, parameter};
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::Path;
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// The ViT's LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`).
const VIT_NORM_EPS: f64 = 1e-6;

/// The arguments `vit(cfg)` gives `ViT` (hard-coded there; the constructor's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    /// Input `(height, width)`.
    pub img_size: [i64; 2],
    /// Patch side.
    pub patch_size: i64,
    /// Zero padding of the patch convolution (`padding=4 + 2 * (ratio // 2 - 1)` with ratio 1).
    pub patch_padding: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: i64,
    /// MLP hidden width over `embed_dim`.
    pub mlp_ratio: f64,
    /// Whether `qkv` has a bias.
    pub qkv_bias: bool,
}

impl Default for VitConfig {
    /// HMR 2.0's ViT-H: 256×192, patch 16 padded by 2, width 1280, 32 blocks, 16 heads.
    fn default() -> Self {
        Self {
            img_size: [256, 192],
            patch_size: 16,
            patch_padding: 2,
            embed_dim: 1280,
            depth: 32,
            num_heads: 16,
            mlp_ratio: 4.0,
            qkv_bias: true,
        }
    }
}

impl VitConfig {
    /// The token grid `(rows, columns)` of the padded patch convolution.
    pub fn grid(&self) -> (i64, i64) {
        let side = |n: i64| (n + 2 * self.patch_padding - self.patch_size) / self.patch_size + 1;
        (side(self.img_size[0]), side(self.img_size[1]))
    }

    /// Rows of `pos_embed`: one per patch of the unpadded grid, plus the class slot.
    fn positions(&self) -> i64 {
        (self.img_size[0] / self.patch_size) * (self.img_size[1] / self.patch_size) + 1
    }

    fn check(&self) -> Result<()> {
        let (h, w) = self.grid();
        let ok = self.patch_size > 0
            && self.num_heads > 0
            && self.embed_dim % self.num_heads == 0
            && h * w + 1 == self.positions();
        if ok {
            Ok(())
        } else {
            Err(PerceptionError::Config { model: "hmr2 backbone", message: format!("inconsistent config {self:?}") })
        }
    }
}

/// `Attention`: one `qkv` projection (with bias), heads, `proj`.
#[derive(Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        let qkv = self
            .qkv
            .forward(x)? // [B, N, 3C]
            .f_reshape([b, n, 3, self.heads, c / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, heads, N, hd]
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false)?; // [B, heads, N, hd]
        let y = y.f_transpose(1, 2)?.f_reshape([b, n, c])?; // [B, N, C]
        Ok(self.proj.forward(&y)?)
    }
}

/// `Block`: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: &Path, c: &VitConfig) -> Result<Self> {
        let dim = c.embed_dim;
        Ok(Self {
            norm1: LayerNorm::new(&(p / "norm1"), dim, VIT_NORM_EPS)?,
            attn: Attention {
                qkv: Linear::new(&(p / "attn" / "qkv"), dim, 3 * dim, c.qkv_bias)?,
                proj: Linear::new(&(p / "attn" / "proj"), dim, dim, true)?,
                heads: c.num_heads,
            },
            norm2: LayerNorm::new(&(p / "norm2"), dim, VIT_NORM_EPS)?,
            mlp: Mlp::timm(&(p / "mlp"), dim, (dim as f64 * c.mlp_ratio) as i64, Activation::Gelu)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_add(&self.attn.forward(&self.norm1.forward(x)?)?)?;
        Ok(x.f_add(&self.mlp.forward(&self.norm2.forward(&x)?)?)?)
    }
}

/// HMR 2.0's ViT backbone.
#[derive(Debug)]
pub struct Vit {
    proj: Conv,
    pos_embed: Tensor, // [1, grid + 1, C]
    blocks: Vec<Block>,
    last_norm: LayerNorm,
    config: VitConfig,
}

impl Vit {
    /// The backbone under `p` (`patch_embed`, `pos_embed`, `blocks`, `last_norm`).
    pub fn new(p: &Path, config: &VitConfig) -> Result<Self> {
        config.check()?;
        let c = config;
        let patch = [c.patch_size, c.patch_size];
        let padding = [c.patch_padding, c.patch_padding];
        Ok(Self {
            proj: Conv::new(&(p / "patch_embed" / "proj"), 3, c.embed_dim, ConvShape::new(&patch, &patch, &padding))?,
            pos_embed: parameter(p, "pos_embed", &[1, c.positions(), c.embed_dim])?,
            blocks: (0..c.depth).map(|i| Block::new(&(p / "blocks" / i), c)).collect::<Result<_>>()?,
            last_norm: LayerNorm::new(&(p / "last_norm"), c.embed_dim, VIT_NORM_EPS)?,
            config: c.clone(),
        })
    }

    /// The patch tokens before the position embedding, `[B, N, C]` (N = rows · columns,
    /// row-major).
    pub fn patch_embed(&self, x: &Tensor) -> Result<Tensor> {
        let (h, w) = (self.config.img_size[0], self.config.img_size[1]);
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || size[2] != h || size[3] != w {
            return Err(PerceptionError::Config {
                model: "hmr2 backbone",
                message: format!("expects [B, 3, {h}, {w}] crops, got {size:?}"),
            });
        }
        let x = self.proj.forward(x)?; // [B, C, rows, cols]
        Ok(x.f_flatten(2, 3)?.f_transpose(1, 2)?) // [B, N, C]
    }

    /// Tokens after `blocks[..=last]` (`None`: all), before `last_norm`, `[B, N, C]`.
    pub fn tokens(&self, x: &Tensor, last: Option<usize>) -> Result<Tensor> {
        let x = self.patch_embed(x)?;
        // The class slot (row 0) is added to every patch slot: `pos_embed[:, 1:] + pos_embed[:, :1]`.
        let pos =
            self.pos_embed.f_narrow(1, 1, self.pos_embed.size()[1] - 1)?.f_add(&self.pos_embed.f_narrow(1, 0, 1)?)?; // [1, N, C]
        let mut x = x.f_add(&pos.f_to_kind(x.kind())?)?;
        let end = last.map_or(self.blocks.len(), |l| (l + 1).min(self.blocks.len()));
        for block in &self.blocks[..end] {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    /// Features `[B, C, rows, cols]` of normalized crops `[B, 3, 256, 192]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("hmr2_vit").entered();
        let x = self.last_norm.forward(&self.tokens(x, None)?)?; // [B, N, C]
        let (rows, cols) = self.config.grid();
        let b = x.size()[0];
        Ok(x.f_permute([0, 2, 1])?.f_reshape([b, self.config.embed_dim, rows, cols])?) // [B, C, rows, cols]
    }

    /// Its configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }
}
