//! Reversible Vision Transformer (Mangalam et al., "Reversible Vision Transformers", CVPR 2022),
//! in the layout of the authors' reference `RevViT` (karttikeya/minREV `rev.py`, the code the
//! PySlowFast Rev-ViT follows): the patch tokens are duplicated into two streams and each block
//! computes `Y1 = X1 + F(X2)`, `Y2 = X2 + G(Y1)` with `F` = LayerNorm + attention and `G` =
//! LayerNorm + MLP. The inverse `X2 = Y2 − G(Y1)`, `X1 = Y1 − F(X2)` rebuilds every block's
//! input from its output, so training keeps no per-block activations:
//! [`RevVit::forward_backward`] runs the blocks without a graph, then walks them backwards,
//! recomputing one block at a time (minREV's `RevBackProp`). Memory for activations stays that
//! of one block whatever the depth; [`RevVit::forward`] is the same network under ordinary
//! autograd (what evaluation and the equality tests use).
//!
//! Parameter paths are minREV's module names: `patch_embed`, `pos_embeddings`,
//! `layers.{i}.F.norm`, `layers.{i}.F.attn.{in_proj_weight,in_proj_bias,out_proj}`,
//! `layers.{i}.G.norm`, `layers.{i}.G.mlp.{0,2}`, `norm`, `head`.

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LAYER_NORM_EPS, LayerNorm, Linear, parameter, sdpa};
use serde::{Deserialize, Serialize};
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// Epsilon of the attention sub-block's LayerNorm (`nn.LayerNorm(dim, eps=1e-6)`); the MLP
/// sub-block and the head use PyTorch's default.
const ATTENTION_NORM_EPS: f64 = 1e-6;
/// Hidden width of the MLP sub-block over the model width.
const MLP_RATIO: i64 = 4;

/// Constructor arguments of minREV's `RevViT` (same names and defaults: its CIFAR-10 setting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevVitConfig {
    /// Width of each stream.
    pub embed_dim: i64,
    /// Attention heads.
    pub n_head: i64,
    /// Reversible blocks.
    pub depth: usize,
    /// Patch size `(H, W)`.
    pub patch_size: [i64; 2],
    /// Input size `(H, W)`.
    pub image_size: [i64; 2],
    /// Classes of the head.
    pub num_classes: i64,
}

impl Default for RevVitConfig {
    fn default() -> Self {
        Self { embed_dim: 768, n_head: 8, depth: 8, patch_size: [2, 2], image_size: [32, 32], num_classes: 10 }
    }
}

impl RevVitConfig {
    fn check(&self) -> Result<()> {
        let ok = self.embed_dim > 0
            && self.n_head > 0
            && self.embed_dim % self.n_head == 0
            && self.patch_size.iter().all(|&p| p > 0)
            && self.image_size.iter().zip(&self.patch_size).all(|(i, p)| *i >= *p && i % p == 0)
            && self.num_classes > 0;
        if ok { Ok(()) } else { Err(config_error(format!("inconsistent config {self:?}"))) }
    }

    /// Patch tokens per image.
    pub fn num_patches(&self) -> i64 {
        (self.image_size[0] / self.patch_size[0]) * (self.image_size[1] / self.patch_size[1])
    }
}

/// `F`: LayerNorm + `nn.MultiheadAttention(dim, heads, batch_first=True)` (self-attention).
#[derive(Debug)]
struct AttentionSubBlock {
    norm: LayerNorm,
    in_proj_weight: Tensor, // [3 * dim, dim]
    in_proj_bias: Tensor,   // [3 * dim]
    out_proj: Linear,
    heads: i64,
}

impl AttentionSubBlock {
    fn new(p: &Path, dim: i64, heads: i64) -> Result<Self> {
        let attn = p / "attn";
        Ok(Self {
            norm: LayerNorm::new(&(p / "norm"), dim, ATTENTION_NORM_EPS)?,
            in_proj_weight: parameter(&attn, "in_proj_weight", &[3 * dim, dim])?,
            in_proj_bias: parameter(&attn, "in_proj_bias", &[3 * dim])?,
            out_proj: Linear::new(&(&attn / "out_proj"), dim, dim, true)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = x.size3()?;
        let qkv = self
            .norm
            .forward(x)?
            .f_linear(&self.in_proj_weight, Some(&self.in_proj_bias))?
            .f_reshape([b, n, 3, self.heads, dim / self.heads])? // [B, N, 3, heads, hd]
            .f_permute([2, 0, 3, 1, 4])?; // [3, B, heads, N, hd]
        let out = sdpa(&qkv.f_get(0)?, &qkv.f_get(1)?, &qkv.f_get(2)?)?; // [B, heads, N, hd]
        Ok(self.out_proj.forward(&out.f_transpose(1, 2)?.f_reshape([b, n, dim])?)?)
    }
}

/// `G`: LayerNorm + `Linear(dim, 4 dim)` → GELU → `Linear(4 dim, dim)`.
#[derive(Debug)]
struct MlpSubblock {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl MlpSubblock {
    fn new(p: &Path, dim: i64) -> Result<Self> {
        let mlp = p / "mlp";
        Ok(Self {
            norm: LayerNorm::new(&(p / "norm"), dim, LAYER_NORM_EPS)?,
            fc1: Linear::new(&(&mlp / 0), dim, MLP_RATIO * dim, true)?,
            fc2: Linear::new(&(&mlp / 2), MLP_RATIO * dim, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = Activation::Gelu.forward(&self.fc1.forward(&self.norm.forward(x)?)?)?;
        Ok(self.fc2.forward(&hidden)?)
    }
}

/// `ReversibleBlock`: `F` and `G` and the two streams.
#[derive(Debug)]
struct ReversibleBlock {
    f: AttentionSubBlock,
    g: MlpSubblock,
}

/// The two streams of a reversible block and their gradients, `[B, N, D]` each.
pub(crate) struct Streams {
    pub x1: Tensor,
    pub x2: Tensor,
    pub dx1: Tensor,
    pub dx2: Tensor,
}

/// `(t * weight).sum()`: its backward sends exactly `weight` into `t` (`t.backward(weight)`,
/// which tch does not expose).
pub(crate) fn weighted_sum(t: &Tensor, weight: &Tensor) -> Result<Tensor> {
    Ok(t.f_mul(weight)?.f_sum(Kind::Float)?)
}

/// A reversible block given by its two functions (the ViT's here, Hiera's in
/// [`crate::rev_hiera`]): the forward pass and minREV's reversible backward pass.
pub(crate) trait Reversible {
    /// `F`, applied to the second stream.
    fn f(&self, x: &Tensor) -> Result<Tensor>;
    /// `G`, applied to the first stream's output.
    fn g(&self, x: &Tensor) -> Result<Tensor>;

    /// `Y1 = X1 + F(X2)`, `Y2 = X2 + G(Y1)`.
    fn forward_streams(&self, x1: &Tensor, x2: &Tensor) -> Result<(Tensor, Tensor)> {
        let y1 = x1.f_add(&self.f(x2)?)?;
        let y2 = x2.f_add(&self.g(&y1)?)?;
        Ok((y1, y2))
    }

    /// minREV's `backward_pass`: from the outputs and their gradients, the inputs (rebuilt:
    /// `X2 = Y2 − G(Y1)`, `X1 = Y1 − F(X2)`) and their gradients; `F`'s and `G`'s parameter
    /// gradients are accumulated on the way.
    fn backward_pass(&self, s: Streams) -> Result<Streams> {
        let Streams { x1: y1, x2: y2, dx1: dy1, dx2: dy2 } = s;
        let y1 = y1.f_detach()?.set_requires_grad(true);
        let g_y1 = self.g(&y1)?;
        weighted_sum(&g_y1, &dy2)?.f_backward()?;
        let (x2, dy1) = tch::no_grad(|| -> Result<_> { Ok((y2.f_sub(&g_y1)?, dy1.f_add(&y1.grad())?)) })?;
        drop(g_y1);
        let x2 = x2.set_requires_grad(true);
        let f_x2 = self.f(&x2)?;
        weighted_sum(&f_x2, &dy1)?.f_backward()?;
        let (x1, dy2) = tch::no_grad(|| -> Result<_> { Ok((y1.f_sub(&f_x2)?, dy2.f_add(&x2.grad())?)) })?;
        Ok(Streams { x1, x2: x2.f_detach()?, dx1: dy1, dx2: dy2 })
    }
}

impl ReversibleBlock {
    fn new(p: &Path, dim: i64, heads: i64) -> Result<Self> {
        Ok(Self { f: AttentionSubBlock::new(&(p / "F"), dim, heads)?, g: MlpSubblock::new(&(p / "G"), dim)? })
    }
}

impl Reversible for ReversibleBlock {
    fn f(&self, x: &Tensor) -> Result<Tensor> {
        self.f.forward(x)
    }

    fn g(&self, x: &Tensor) -> Result<Tensor> {
        self.g.forward(x)
    }
}

/// The reversible ViT classifier.
#[derive(Debug)]
pub struct RevVit {
    config: RevVitConfig,
    patch_embed: Conv,
    pos_embeddings: Tensor, // [1, N, D]
    layers: Vec<ReversibleBlock>,
    norm: LayerNorm,
    head: Linear,
}

impl RevVit {
    /// Builds the model under `p`.
    pub fn new(p: &Path, config: &RevVitConfig) -> Result<Self> {
        config.check()?;
        let d = config.embed_dim;
        let padding = [0, 0];
        Ok(Self {
            config: config.clone(),
            patch_embed: Conv::new(
                &(p / "patch_embed"),
                3,
                d,
                ConvShape::new(&config.patch_size, &config.patch_size, &padding),
            )?,
            pos_embeddings: parameter(p, "pos_embeddings", &[1, config.num_patches(), d])?,
            layers: (0..config.depth)
                .map(|i| ReversibleBlock::new(&(p / "layers" / i), d, config.n_head))
                .collect::<Result<_>>()?,
            norm: LayerNorm::new(&(p / "norm"), 2 * d, LAYER_NORM_EPS)?,
            head: Linear::new(&(p / "head"), 2 * d, config.num_classes, true)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RevVitConfig {
        &self.config
    }

    /// Patch embedding plus position: `[B, 3, H, W]` → `[B, N, D]`.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || size[2..] != self.config.image_size {
            return Err(config_error(format!(
                "input {size:?}, expected [B, 3, {}, {}]",
                self.config.image_size[0], self.config.image_size[1]
            )));
        }
        let x = self.patch_embed.forward(x)?.f_flatten(2, -1)?.f_transpose(1, 2)?; // [B, N, D]
        Ok(x.f_add(&self.pos_embeddings)?)
    }

    /// Mean over tokens, LayerNorm, head: `[B, N, 2D]` → `[B, classes]`.
    fn classify(&self, x1: &Tensor, x2: &Tensor) -> Result<Tensor> {
        let h = Tensor::f_cat(&[x1, x2], -1)?.f_mean_dim(1, false, None::<Kind>)?; // [B, 2D]
        Ok(self.head.forward(&self.norm.forward(&h)?)?)
    }

    /// Logits under ordinary autograd (every block's activations kept when a graph is built).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("revvit_forward").entered();
        let h = self.embed(x)?;
        let (mut x1, mut x2) = (h.shallow_clone(), h);
        for layer in &self.layers {
            (x1, x2) = layer.forward_streams(&x1, &x2)?;
        }
        self.classify(&x1, &x2)
    }

    /// One training pass with reversible backpropagation: the loss of `loss_fn` on the logits
    /// (returned, detached) and every parameter's gradient accumulated into its `.grad`, as
    /// `loss_fn(forward(x)).backward()` would give, with one block's activations alive at a time.
    pub fn forward_backward(&self, x: &Tensor, loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let _span = trace_span!("revvit_forward_backward").entered();
        let h = self.embed(x)?;
        let (y1, y2) = tch::no_grad(|| -> Result<_> {
            let (mut x1, mut x2) = (h.f_detach()?, h.f_detach()?);
            for layer in &self.layers {
                (x1, x2) = layer.forward_streams(&x1, &x2)?;
            }
            Ok((x1, x2))
        })?;
        let (top1, top2) = (y1.set_requires_grad(true), y2.set_requires_grad(true));
        let loss = loss_fn(&self.classify(&top1, &top2)?)?;
        loss.f_backward()?;
        let mut s = Streams { dx1: top1.grad(), dx2: top2.grad(), x1: top1.f_detach()?, x2: top2.f_detach()? };
        for layer in self.layers.iter().rev() {
            s = layer.backward_pass(s)?;
        }
        // Both streams started as the embedding: its gradient is the sum of theirs.
        weighted_sum(&h, &s.dx1.f_add(&s.dx2)?)?.f_backward()?;
        Ok(loss.f_detach()?)
    }
}

fn config_error(message: String) -> PerceptionError {
    PerceptionError::Config { model: "revvit", message }
}
