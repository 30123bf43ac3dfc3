//! CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
//! Supervision", 2021) as trained by MetaCLIP (Xu et al., "Demystifying CLIP Data", ICLR
//! 2024): the vision and text towers exact to `open_clip` 3.3.0 (`open_clip/model.py`,
//! `open_clip/transformer.py`), on which the MetaCLIP checkpoints load (`ViT-B-32-quickgelu`,
//! `ViT-B-16-quickgelu`, `ViT-L-14-quickgelu`, `ViT-H-14-quickgelu`).
//!
//! Variable names are open_clip's `state_dict` keys (`visual.conv1.weight`,
//! `visual.transformer.resblocks.{i}.attn.in_proj_weight`, `token_embedding.weight`,
//! `positional_embedding`, `text_projection`, `logit_scale`).
//!
//! - [`tokenizer`]: the BPE tokenizer, token-exact with open_clip's `SimpleTokenizer`.
//! - [`zero_shot`]: prompt templates and the zero-shot classifier.
//! - [`curation`]: MetaCLIP's metadata-balanced data curation.

pub mod curation;
pub mod tokenizer;
pub mod zero_shot;

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LAYER_NORM_EPS, LayerNorm, Linear, embedding, parameter};
use serde::{Deserialize, Serialize};
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// `CLIPVisionCfg` (the fields MetaCLIP's configs set; open_clip's names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipVisionCfg {
    /// Input side in pixels.
    pub image_size: i64,
    /// Transformer blocks.
    pub layers: usize,
    /// Token width.
    pub width: i64,
    /// Width of one attention head (heads = width / head_width).
    pub head_width: i64,
    /// MLP hidden width ratio.
    pub mlp_ratio: f64,
    /// Patch side in pixels.
    pub patch_size: i64,
}

impl Default for ClipVisionCfg {
    fn default() -> Self {
        Self { image_size: 224, layers: 12, width: 768, head_width: 64, mlp_ratio: 4.0, patch_size: 16 }
    }
}

/// `CLIPTextCfg` (the fields MetaCLIP's configs set; open_clip's names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipTextCfg {
    /// Tokens per text.
    pub context_length: i64,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Token width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// Transformer blocks.
    pub layers: usize,
    /// MLP hidden width ratio.
    pub mlp_ratio: f64,
}

impl Default for ClipTextCfg {
    fn default() -> Self {
        Self { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12, mlp_ratio: 4.0 }
    }
}

/// An open_clip model config (`open_clip/model_configs/<name>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Width of the joint embedding.
    pub embed_dim: i64,
    /// `QuickGELU` (OpenAI and MetaCLIP weights) instead of exact GELU.
    #[serde(default)]
    pub quick_gelu: bool,
    /// The image tower.
    pub vision_cfg: ClipVisionCfg,
    /// The text tower.
    pub text_cfg: ClipTextCfg,
}

impl ClipConfig {
    /// Names accepted by [`ClipConfig::by_name`].
    pub const NAMES: [&'static str; 4] =
        ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu", "ViT-L-14-quickgelu", "ViT-H-14-quickgelu"];

    /// The open_clip config of that name (the MetaCLIP architectures).
    pub fn by_name(name: &str) -> Option<Self> {
        let vision = |layers, width, head_width, patch_size| ClipVisionCfg {
            layers,
            width,
            head_width,
            patch_size,
            ..ClipVisionCfg::default()
        };
        let text = |layers, width, heads| ClipTextCfg { layers, width, heads, ..ClipTextCfg::default() };
        let (embed_dim, vision_cfg, text_cfg) = match name {
            "ViT-B-32-quickgelu" => (512, vision(12, 768, 64, 32), text(12, 512, 8)),
            "ViT-B-16-quickgelu" => (512, vision(12, 768, 64, 16), text(12, 512, 8)),
            "ViT-L-14-quickgelu" => (768, vision(24, 1024, 64, 14), text(12, 768, 12)),
            "ViT-H-14-quickgelu" => (1024, vision(32, 1280, 80, 14), text(24, 1024, 16)),
            _ => return None,
        };
        Some(Self { embed_dim, quick_gelu: true, vision_cfg, text_cfg })
    }

    fn check(&self) -> Result<()> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let ok = v.head_width > 0
            && v.width % v.head_width == 0
            && v.patch_size > 0
            && v.image_size % v.patch_size == 0
            && t.heads > 0
            && t.width % t.heads == 0
            && t.context_length > 0;
        if ok {
            Ok(())
        } else {
            Err(PerceptionError::Config { model: "clip", message: format!("inconsistent config {self:?}") })
        }
    }

    fn activation(&self) -> Activation {
        if self.quick_gelu { Activation::QuickGelu } else { Activation::Gelu }
    }
}

/// `nn.MultiheadAttention` (batch first, packed `in_proj`).
#[derive(Debug)]
struct Attention {
    in_proj_weight: Tensor, // [3 * width, width]
    in_proj_bias: Tensor,   // [3 * width]
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: &Path, width: i64, heads: i64) -> Result<Self> {
        Ok(Self {
            in_proj_weight: parameter(p, "in_proj_weight", &[3 * width, width])?,
            in_proj_bias: parameter(p, "in_proj_bias", &[3 * width])?,
            out_proj: Linear::new(&(p / "out_proj"), width, width, true)?,
            heads,
        })
    }

    /// `x` `[B, L, width]`, `mask` additive `[L, L]`.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, width) = x.size3()?;
        let head_dim = width / self.heads;
        let qkv = x
            .f_linear(&self.in_proj_weight, Some(&self.in_proj_bias))?
            .f_view([b, l, 3, self.heads, head_dim])? // [B, L, 3, heads, hd]
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, heads, L, hd]
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, false)?; // [B, heads, L, hd]
        let y = y.f_transpose(1, 2)?.f_reshape([b, l, width])?; // [B, L, width]
        Ok(self.out_proj.forward(&y)?)
    }
}

/// `ResidualAttentionBlock`: pre-norm attention and MLP (`c_fc` → act → `c_proj`).
#[derive(Debug)]
struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl ResidualAttentionBlock {
    fn new(p: &Path, width: i64, heads: i64, mlp_ratio: f64, act: Activation) -> Result<Self> {
        let hidden = (width as f64 * mlp_ratio) as i64;
        Ok(Self {
            ln_1: LayerNorm::new(&(p / "ln_1"), width, LAYER_NORM_EPS)?,
            attn: Attention::new(&(p / "attn"), width, heads)?,
            ln_2: LayerNorm::new(&(p / "ln_2"), width, LAYER_NORM_EPS)?,
            c_fc: Linear::new(&(p / "mlp" / "c_fc"), width, hidden, true)?,
            c_proj: Linear::new(&(p / "mlp" / "c_proj"), hidden, width, true)?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = x.f_add(&self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        let mut h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        self.act.forward_(&mut h)?;
        Ok(x.f_add(&self.c_proj.forward(&h)?)?)
    }
}

/// `Transformer`: `resblocks.{i}`.
#[derive(Debug)]
struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    fn new(p: &Path, width: i64, layers: usize, heads: i64, mlp_ratio: f64, act: Activation) -> Result<Self> {
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(&(p / "resblocks" / i), width, heads, mlp_ratio, act))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { resblocks })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for block in &self.resblocks {
            x = block.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// `VisionTransformer` (class token pooling, `ln_post` then `proj`).
#[derive(Debug)]
struct VisionTower {
    conv1: Conv,
    class_embedding: Tensor,      // [width]
    positional_embedding: Tensor, // [grid² + 1, width]
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor, // [width, embed_dim]
    width: i64,
}

impl VisionTower {
    fn new(p: &Path, c: &ClipConfig) -> Result<Self> {
        let v = &c.vision_cfg;
        let grid = v.image_size / v.patch_size;
        let patch = [v.patch_size, v.patch_size];
        let mut shape = ConvShape::new(&patch, &patch, &[0, 0]);
        shape.bias = false;
        Ok(Self {
            conv1: Conv::new(&(p / "conv1"), 3, v.width, shape)?,
            class_embedding: parameter(p, "class_embedding", &[v.width])?,
            positional_embedding: parameter(p, "positional_embedding", &[grid * grid + 1, v.width])?,
            ln_pre: LayerNorm::new(&(p / "ln_pre"), v.width, LAYER_NORM_EPS)?,
            transformer: Transformer::new(
                &(p / "transformer"),
                v.width,
                v.layers,
                v.width / v.head_width,
                v.mlp_ratio,
                c.activation(),
            )?,
            ln_post: LayerNorm::new(&(p / "ln_post"), v.width, LAYER_NORM_EPS)?,
            proj: parameter(p, "proj", &[v.width, c.embed_dim])?,
            width: v.width,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(x)?; // [B, width, grid, grid]
        let b = x.size()[0];
        let x = x.f_reshape([b, self.width, -1])?.f_permute([0, 2, 1])?; // [B, grid², width]
        let cls = self.class_embedding.f_view([1, 1, self.width])?.f_expand([b, 1, self.width], false)?; // [B, 1, width]
        let x = Tensor::f_cat(&[cls.f_to_kind(x.kind())?, x], 1)?; // [B, grid² + 1, width]
        let x = x.f_add(&self.positional_embedding.f_to_kind(x.kind())?)?;
        let x = self.ln_pre.forward(&x)?;
        let x = self.transformer.forward(&x, None)?;
        let x = self.ln_post.forward(&x)?;
        let pooled = x.f_select(1, 0)?; // [B, width]
        Ok(pooled.f_matmul(&self.proj)?) // [B, embed_dim]
    }
}

/// The text tower of `CLIP` (causal mask, `ln_final`, the EOT token, `text_projection`).
#[derive(Debug)]
struct TextTower {
    token_embedding: Tensor,      // [vocab, width]
    positional_embedding: Tensor, // [context, width]
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor, // [width, embed_dim]
    context_length: i64,
}

impl TextTower {
    fn new(p: &Path, c: &ClipConfig) -> Result<Self> {
        let t = &c.text_cfg;
        Ok(Self {
            token_embedding: embedding(&(p / "token_embedding"), t.vocab_size, t.width)?,
            positional_embedding: parameter(p, "positional_embedding", &[t.context_length, t.width])?,
            transformer: Transformer::new(
                &(p / "transformer"),
                t.width,
                t.layers,
                t.heads,
                t.mlp_ratio,
                c.activation(),
            )?,
            ln_final: LayerNorm::new(&(p / "ln_final"), t.width, LAYER_NORM_EPS)?,
            text_projection: parameter(p, "text_projection", &[t.width, c.embed_dim])?,
            context_length: t.context_length,
        })
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.size2()?;
        if l != self.context_length {
            return Err(PerceptionError::Config {
                model: "clip",
                message: format!("text of {l} tokens, the model takes {}", self.context_length),
            });
        }
        let kind = self.token_embedding.kind();
        let device = self.token_embedding.device();
        let x = Tensor::f_embedding(&self.token_embedding, ids, -1, false, false)?; // [B, L, width]
        let x = x.f_add(&self.positional_embedding)?;
        // Additive causal mask: -inf above the diagonal.
        let mask = Tensor::f_full([l, l], f64::NEG_INFINITY, (kind, device))?.f_triu(1)?; // [L, L]
        let x = self.transformer.forward(&x, Some(&mask))?;
        let x = self.ln_final.forward(&x)?;
        // The EOT token (the highest id) of each row.
        let eot = ids.f_argmax(-1, false)?; // [B]
        let rows = Tensor::f_arange(b, (Kind::Int64, device))?;
        let pooled = x.f_index(&[Some(rows), Some(eot)])?; // [B, width]
        Ok(pooled.f_matmul(&self.text_projection)?) // [B, embed_dim]
    }
}

/// CLIP: both towers and the logit scale (weights only, no per-stream state).
#[derive(Debug)]
pub struct Clip {
    config: ClipConfig,
    visual: VisionTower,
    text: TextTower,
    logit_scale: Tensor, // [] (log of the temperature's inverse)
}

impl Clip {
    /// Builds the model under `p` (the root path gives open_clip's key names).
    pub fn new(p: &Path, config: &ClipConfig) -> Result<Self> {
        config.check()?;
        Ok(Self {
            config: config.clone(),
            visual: VisionTower::new(&(p / "visual"), config)?,
            text: TextTower::new(p, config)?,
            logit_scale: parameter(p, "logit_scale", &[])?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Image embeddings `[B, embed_dim]` (not normalized) of preprocessed images
    /// `[B, 3, image_size, image_size]`.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("clip_encode_image").entered();
        self.visual.forward(images)
    }

    /// Text embeddings `[B, embed_dim]` (not normalized) of token ids `[B, context_length]`.
    pub fn encode_text(&self, ids: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("clip_encode_text").entered();
        self.text.forward(ids)
    }

    /// `logit_scale.exp()` (100 for trained CLIP models).
    pub fn logit_scale(&self) -> Result<f64> {
        Ok(self.logit_scale.f_exp()?.f_double_value(&[])?)
    }

    /// The device of the weights.
    pub fn device(&self) -> tch::Device {
        self.logit_scale.device()
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.logit_scale.kind()
    }
}

/// `F.normalize(x, dim=-1)`: `x / max(‖x‖, 1e-12)`.
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2, [-1i64], true)?.f_clamp_min(1e-12)?; // [.., 1]
    Ok(x.f_div(&norm)?)
}
