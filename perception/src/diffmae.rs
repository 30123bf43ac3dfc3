//! DiffMAE (Wei et al., "Diffusion Models as Masked Autoencoders", ICCV 2023, arXiv
//! 2304.03283): a masked autoencoder whose decoder is a diffusion denoiser, used here to inpaint
//! the masked part of an image.
//!
//! # Provenance
//!
//! There is **no official code or checkpoint** (no `facebookresearch/DiffMAE`; the project page
//! links none; see `models-vision.md` §4). This file follows the paper, and wherever a module
//! exists in Meta's MAE (`facebookresearch/mae`, `models_mae.py`, `MaskedAutoencoderViT`) it has
//! MAE's structure, numerics and state_dict keys, so that the encoder of an MAE checkpoint loads
//! unchanged:
//!
//! - encoder (MAE): `patch_embed.proj` (Conv2d p×p, stride p), `cls_token`, `pos_embed` (fixed
//!   2D sin-cos of MAE's `get_2d_sincos_pos_embed`, a non-trainable parameter in MAE and so a
//!   checkpoint key), `blocks.{i}` (timm `Block`: `norm1`, `attn.qkv`, `attn.proj`, `norm2`,
//!   `mlp.fc1`, `mlp.fc2`; qkv bias, LayerNorm eps 1e-6, exact GELU), `norm`;
//! - decoder (MAE): `decoder_embed` (D → Dd over the encoder tokens, class token included),
//!   `decoder_pos_embed` (fixed sin-cos), `decoder_blocks.{i}`, `decoder_norm`, `decoder_pred`
//!   (Dd → p²·3 pixels of a patch, in MAE's `patchify` order `nchpwq → nhwpqc`);
//! - decoder (DiffMAE, names of ours): `decoder_noisy_embed` (p²·3 → Dd over the noisy masked
//!   patches x_t) and `decoder_time_embed.{0,2}` (Linear → SiLU → Linear over guided-diffusion's
//!   sinusoidal `timestep_embedding`, `cat(cos, sin)`, max period 10 000), added to every noisy
//!   token. MAE's `mask_token` does not exist: the noisy tokens take its place.
//!
//! The decoder is the paper's "joint" variant (MAE-style self-attention over visible and noisy
//! tokens; the "cross-self" and "cross" variants are not built): the visible tokens of the
//! encoder and the noisy tokens are put back in raster order (MAE's `ids_restore` unshuffle),
//! after the class token, `decoder_pos_embed` is added, and `decoder_pred` predicts the clean
//! pixels x0 of each masked patch (the "predict x0" parameterisation of the paper). The data
//! space is ImageNet-normalized pixels, as MAE's input (no per-patch normalization).
//!
//! # Diffusion
//!
//! guided-diffusion (`gaussian_diffusion.py`, `respace.py`) conventions, computed in f64 and
//! applied as f32 scalars: the cosine schedule of Nichol & Dhariwal (`s = 0.008`, betas clipped
//! at 0.999) or the linear one (1e-4 … 0.02 at 1000 steps), x0 prediction, the DDPM posterior
//! with the "fixed small" variance β̃ₜ (log clipped at step 0), x0 clipped to the range of
//! normalized `[0, 1]` pixels (guided-diffusion's `clip_denoised`).
//!
//! **Strided sampling is respaced DDPM** (guided-diffusion's `timestep_respacing`): `steps`
//! timesteps are kept evenly (`space_timesteps`), the betas are recomputed from the base
//! `alphas_cumprod` over them, and ancestral sampling runs on that shorter chain, the model
//! seeing the original timesteps. With `steps == num_timesteps` it is exactly full DDPM, so one
//! code path serves both (DDIM was not chosen: it would be a second sampler to keep exact).
//! Noise comes from the caller: [`DiffMae::sample`] takes it as a tensor (the parity test
//! replays recorded noise) and [`DiffMae::seeded_noise`] draws it from a seed, on the CPU, so a
//! run is reproducible on any device.
//!
//! # Parity
//!
//! `tests/fixtures/generate_diffmae.py` builds the same architecture in PyTorch from timm's
//! `PatchEmbed` and `Block` (what `models_mae.py` itself uses) and MAE's sin-cos code, on
//! seeded random weights; `tests/tests/diffmae_parity.rs` checks the encoder, the denoiser and
//! a 4-step sampling run against it. That is parity with a reference of this design, not with
//! an official model (there is none).

use ocellus_kernels::Normalization;
use ocellus_kernels::nn::{Conv, ConvShape, LayerNorm, Linear, parameter};
use serde::{Deserialize, Serialize};
use tch::nn::Path;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::vit::{Block, blocks};
use crate::{PerceptionError, Result};

/// LayerNorm epsilon of MAE (`partial(nn.LayerNorm, eps=1e-6)`).
const NORM_EPS: f64 = 1e-6;
/// `max_period` of guided-diffusion's `timestep_embedding`.
const MAX_PERIOD: f64 = 10_000.0;
/// Temperature of MAE's 1D sin-cos embedding.
const SINCOS_TEMPERATURE: f64 = 10_000.0;
/// Offset `s` of the cosine schedule.
const COSINE_S: f64 = 0.008;
/// Largest beta of the cosine schedule.
const MAX_BETA: f64 = 0.999;
/// First and last beta of the linear schedule at 1000 steps (scaled by 1000 / T).
const LINEAR_BETA_START: f64 = 1e-4;
const LINEAR_BETA_END: f64 = 0.02;
/// Channels MAE's `patchify` assumes.
const RGB: i64 = 3;
/// What the errors name.
const MODEL: &str = "diffmae";

fn input_error(message: String) -> PerceptionError {
    PerceptionError::Config { model: MODEL, message }
}

// --- configuration -----------------------------------------------------------------------------

/// The noise schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Nichol & Dhariwal: ᾱ(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008, betas ≤ 0.999.
    #[default]
    Cosine,
    /// Ho et al.: betas linear from 1e-4 to 0.02 (scaled by 1000 / T).
    Linear,
}

impl BetaSchedule {
    /// guided-diffusion's `get_named_beta_schedule` (f64).
    pub fn betas(self, num_timesteps: usize) -> Vec<f64> {
        let t = num_timesteps as f64;
        match self {
            Self::Cosine => {
                let alpha_bar = |x: f64| ((x + COSINE_S) / (1.0 + COSINE_S) * std::f64::consts::PI / 2.0).cos().powi(2);
                (0..num_timesteps)
                    .map(|i| (1.0 - alpha_bar((i + 1) as f64 / t) / alpha_bar(i as f64 / t)).min(MAX_BETA))
                    .collect()
            }
            Self::Linear => {
                // np.linspace(start, end, T): start + i * step, the last value exactly `end`.
                let scale = 1000.0 / t;
                let (start, end) = (scale * LINEAR_BETA_START, scale * LINEAR_BETA_END);
                let step = (end - start) / (t - 1.0).max(1.0);
                (0..num_timesteps)
                    .map(|i| if i + 1 == num_timesteps && i > 0 { end } else { i as f64 * step + start })
                    .collect()
            }
        }
    }
}

/// DiffMAE's constructor arguments: MAE's `MaskedAutoencoderViT` names and defaults, plus the
/// diffusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffMaeConfig {
    /// Input side in pixels (square).
    pub img_size: i64,
    /// Patch side in pixels.
    pub patch_size: i64,
    /// Input channels (3: MAE's `patchify` is RGB only).
    pub in_chans: i64,
    /// Encoder width.
    pub embed_dim: i64,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder heads.
    pub num_heads: i64,
    /// Decoder width.
    pub decoder_embed_dim: i64,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder heads.
    pub decoder_num_heads: i64,
    /// MLP hidden width ratio.
    pub mlp_ratio: f64,
    /// Diffusion steps T of training.
    pub num_timesteps: usize,
    /// The beta schedule.
    pub schedule: BetaSchedule,
}

impl Default for DiffMaeConfig {
    /// MAE's constructor defaults (the ViT-L encoder) with a 1000-step cosine schedule.
    fn default() -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: RGB,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            mlp_ratio: 4.0,
            num_timesteps: 1000,
            schedule: BetaSchedule::Cosine,
        }
    }
}

impl DiffMaeConfig {
    /// Names accepted by [`DiffMaeConfig::by_name`].
    pub const NAMES: [&'static str; 2] = ["diffmae_vit_base_patch16", "diffmae_vit_large_patch16"];

    /// The preset of that name (MAE's `mae_vit_*_patch16_dec512d8b` shapes at 224).
    pub fn by_name(name: &str) -> Option<Self> {
        let (embed_dim, depth, num_heads) = match name {
            "diffmae_vit_base_patch16" => (768, 12, 12),
            "diffmae_vit_large_patch16" => (1024, 24, 16),
            _ => return None,
        };
        Some(Self { embed_dim, depth, num_heads, ..Self::default() })
    }

    /// Patches per side.
    pub fn grid_size(&self) -> i64 {
        self.img_size / self.patch_size
    }

    /// Patches per image (N).
    pub fn num_patches(&self) -> i64 {
        self.grid_size() * self.grid_size()
    }

    /// Values per patch, `p² · 3`.
    pub fn patch_dim(&self) -> i64 {
        self.patch_size * self.patch_size * self.in_chans
    }

    fn check(&self) -> Result<()> {
        let heads_ok = |dim: i64, heads: i64| heads > 0 && dim > 0 && dim % heads == 0;
        // The 2D sin-cos embedding splits the width in 4 (two axes, sin and cos).
        let ok = self.in_chans == RGB
            && self.patch_size > 0
            && self.img_size >= self.patch_size
            && self.img_size % self.patch_size == 0
            && heads_ok(self.embed_dim, self.num_heads)
            && heads_ok(self.decoder_embed_dim, self.decoder_num_heads)
            && self.embed_dim % 4 == 0
            && self.decoder_embed_dim % 4 == 0
            && self.mlp_ratio > 0.0
            && self.num_timesteps > 0;
        if ok { Ok(()) } else { Err(input_error(format!("inconsistent config {self:?}"))) }
    }
}

// --- the schedule ------------------------------------------------------------------------------

/// guided-diffusion's `space_timesteps(num_timesteps, [steps])`: `steps` timesteps spread
/// evenly over `0..num_timesteps`, the first and last included (ascending).
pub fn space_timesteps(num_timesteps: usize, steps: usize) -> Result<Vec<i64>> {
    if steps == 0 || steps > num_timesteps {
        return Err(input_error(format!("cannot take {steps} steps of a {num_timesteps}-step schedule")));
    }
    let stride = if steps <= 1 { 1.0 } else { (num_timesteps - 1) as f64 / (steps - 1) as f64 };
    let mut cur = 0.0f64;
    let mut taken = Vec::with_capacity(steps);
    for _ in 0..steps {
        // Python's round: half to even.
        taken.push(cur.round_ties_even() as i64);
        cur += stride;
    }
    taken.sort_unstable();
    taken.dedup();
    Ok(taken)
}

/// A diffusion chain (`GaussianDiffusion`'s arrays, f64): the training schedule, or a respaced
/// one whose step `i` is the original timestep `timesteps[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The original timestep of each step (what the model sees).
    pub timesteps: Vec<i64>,
    /// βᵢ.
    pub betas: Vec<f64>,
    /// ᾱᵢ = ∏ (1 − β).
    pub alphas_cumprod: Vec<f64>,
    /// β̃ᵢ = βᵢ (1 − ᾱᵢ₋₁) / (1 − ᾱᵢ).
    pub posterior_variance: Vec<f64>,
    /// log β̃, step 0 taking step 1's value (β̃₀ = 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of x0 in the posterior mean.
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of x_t in the posterior mean.
    pub posterior_mean_coef2: Vec<f64>,
}

impl Schedule {
    /// The training schedule of `num_timesteps` steps.
    pub fn new(schedule: BetaSchedule, num_timesteps: usize) -> Self {
        Self::from_betas(schedule.betas(num_timesteps), (0..num_timesteps as i64).collect())
    }

    fn from_betas(betas: Vec<f64>, timesteps: Vec<i64>) -> Self {
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let prev: Vec<f64> = std::iter::once(1.0).chain(alphas_cumprod.iter().copied()).take(betas.len()).collect();
        let posterior_variance: Vec<f64> =
            (0..betas.len()).map(|i| betas[i] * (1.0 - prev[i]) / (1.0 - alphas_cumprod[i])).collect();
        let first = posterior_variance.get(1).or(posterior_variance.first()).copied().unwrap_or(0.0);
        let posterior_log_variance_clipped = std::iter::once(first)
            .chain(posterior_variance.iter().skip(1).copied())
            .take(betas.len())
            .map(f64::ln)
            .collect();
        let posterior_mean_coef1 =
            (0..betas.len()).map(|i| betas[i] * prev[i].sqrt() / (1.0 - alphas_cumprod[i])).collect();
        let posterior_mean_coef2 =
            (0..betas.len()).map(|i| (1.0 - prev[i]) * alphas[i].sqrt() / (1.0 - alphas_cumprod[i])).collect();
        Self {
            timesteps,
            betas,
            alphas_cumprod,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
        }
    }

    /// Steps of the chain.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// A chain without steps.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// guided-diffusion's `SpacedDiffusion` over `steps` evenly kept timesteps: βᵢ = 1 −
    /// ᾱ(kept i) / ᾱ(kept i − 1). `steps == len()` gives the same chain.
    pub fn respaced(&self, steps: usize) -> Result<Self> {
        let kept = space_timesteps(self.len(), steps)?;
        let mut last = 1.0;
        let mut betas = Vec::with_capacity(kept.len());
        let mut timesteps = Vec::with_capacity(kept.len());
        for &k in &kept {
            let (Some(&ac), Some(&t)) = (self.alphas_cumprod.get(k as usize), self.timesteps.get(k as usize)) else {
                return Err(input_error(format!("timestep {k} outside the schedule")));
            };
            betas.push(1.0 - ac / last);
            last = ac;
            timesteps.push(t);
        }
        Ok(Self::from_betas(betas, timesteps))
    }
}

// --- fixed embeddings --------------------------------------------------------------------------

/// MAE's `get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token)`: `[(1 +) g², embed_dim]`
/// (f32, computed in f64), the first half encoding the column, the second the row, each
/// `cat(sin, cos)`; the class token's row is zeros.
pub fn sincos_pos_embed(embed_dim: i64, grid_size: i64, cls_token: bool) -> Result<Tensor> {
    if embed_dim <= 0 || embed_dim % 4 != 0 || grid_size <= 0 {
        return Err(input_error(format!("no 2D sin-cos embedding of width {embed_dim} on a {grid_size}² grid")));
    }
    let quarter = embed_dim / 4;
    let omega: Vec<f64> =
        (0..quarter).map(|d| 1.0 / SINCOS_TEMPERATURE.powf(d as f64 / (embed_dim / 4) as f64)).collect();
    let rows = grid_size * grid_size + i64::from(cls_token);
    let mut values = Vec::with_capacity((rows * embed_dim) as usize);
    if cls_token {
        values.extend(std::iter::repeat_n(0f32, embed_dim as usize));
    }
    for row in 0..grid_size {
        for col in 0..grid_size {
            // grid[0] of MAE's meshgrid(grid_w, grid_h) is the column.
            for pos in [col as f64, row as f64] {
                values.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                values.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    Ok(Tensor::f_from_slice(&values)?.f_view([rows, embed_dim])?) // [(1 +) g², D]
}

/// guided-diffusion's `timestep_embedding(t, dim)`: `[B, dim]` f32, `cat(cos, sin)` of
/// `t · exp(−ln(10000) · k / (dim / 2))` (zero-padded when `dim` is odd).
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Result<Tensor> {
    let half = dim / 2;
    let freqs = Tensor::f_arange(half, (Kind::Float, t.device()))?
        .f_mul_scalar(-MAX_PERIOD.ln())?
        .f_div_scalar(half as f64)?
        .f_exp()?; // [half]
    let args = t.f_to_kind(Kind::Float)?.f_unsqueeze(1)?.f_mul(&freqs.f_unsqueeze(0)?)?; // [B, half]
    let emb = Tensor::f_cat(&[args.f_cos()?, args.f_sin()?], -1)?; // [B, 2 * half]
    if dim % 2 == 1 {
        let pad = emb.f_narrow(1, 0, 1)?.f_zeros_like()?; // [B, 1]
        return Ok(Tensor::f_cat(&[emb, pad], -1)?);
    }
    Ok(emb)
}

// --- blocks ------------------------------------------------------------------------------------

/// A parameter `[1, 1 + g², dim]` filled with the fixed sin-cos embedding.
fn fixed_pos_embed(p: &Path, name: &str, dim: i64, grid: i64) -> Result<Tensor> {
    let mut var = parameter(p, name, &[1, 1 + grid * grid, dim])?;
    let value = sincos_pos_embed(dim, grid, /* cls_token */ true)?.f_unsqueeze(0)?; // [1, 1 + N, dim]
    tch::no_grad(|| -> Result<()> {
        var.f_copy_(&value.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        Ok(())
    })?;
    Ok(var)
}

// --- the model ---------------------------------------------------------------------------------

/// DiffMAE: the MAE encoder and the denoising decoder (weights only; sampling state is per
/// call). Share it behind an `Arc`.
#[derive(Debug)]
pub struct DiffMae {
    config: DiffMaeConfig,
    patch_embed: Conv,
    cls_token: Tensor, // [1, 1, D]
    pos_embed: Tensor, // [1, 1 + N, D]
    blocks: Vec<Block>,
    norm: LayerNorm,
    decoder_embed: Linear,
    decoder_noisy_embed: Linear,
    decoder_time_fc1: Linear,  // decoder_time_embed.0
    decoder_time_fc2: Linear,  // decoder_time_embed.2
    decoder_pos_embed: Tensor, // [1, 1 + N, Dd]
    decoder_blocks: Vec<Block>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
    schedule: Schedule,
}

impl DiffMae {
    /// Builds the model under `p` (the root path gives MAE's key names). The position
    /// embeddings start at their fixed sin-cos values; a checkpoint's (MAE stores them) load
    /// over them.
    pub fn new(p: &Path, config: &DiffMaeConfig) -> Result<Self> {
        config.check()?;
        let c = config;
        let patch = [c.patch_size, c.patch_size];
        let (grid, d, dd, pd) = (c.grid_size(), c.embed_dim, c.decoder_embed_dim, c.patch_dim());
        Ok(Self {
            config: c.clone(),
            patch_embed: Conv::new(
                &(p / "patch_embed" / "proj"),
                c.in_chans,
                d,
                ConvShape::new(&patch, &patch, &[0, 0]),
            )?,
            cls_token: parameter(p, "cls_token", &[1, 1, d])?,
            pos_embed: fixed_pos_embed(p, "pos_embed", d, grid)?,
            blocks: blocks(&(p / "blocks"), c.depth, d, c.num_heads, c.mlp_ratio)?,
            norm: LayerNorm::new(&(p / "norm"), d, NORM_EPS)?,
            decoder_embed: Linear::new(&(p / "decoder_embed"), d, dd, true)?,
            decoder_noisy_embed: Linear::new(&(p / "decoder_noisy_embed"), pd, dd, true)?,
            decoder_time_fc1: Linear::new(&(p / "decoder_time_embed" / 0), dd, dd, true)?,
            decoder_time_fc2: Linear::new(&(p / "decoder_time_embed" / 2), dd, dd, true)?,
            decoder_pos_embed: fixed_pos_embed(p, "decoder_pos_embed", dd, grid)?,
            decoder_blocks: blocks(&(p / "decoder_blocks"), c.decoder_depth, dd, c.decoder_num_heads, c.mlp_ratio)?,
            decoder_norm: LayerNorm::new(&(p / "decoder_norm"), dd, NORM_EPS)?,
            decoder_pred: Linear::new(&(p / "decoder_pred"), dd, pd, true)?,
            schedule: Schedule::new(c.schedule, c.num_timesteps),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiffMaeConfig {
        &self.config
    }

    /// The training schedule (`num_timesteps` steps).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.cls_token.device()
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.cls_token.kind()
    }

    /// MAE's `patchify`: `[B, 3, H, W]` → `[B, N, p²·3]` (`nchpwq → nhwpqc`).
    pub fn patchify(&self, imgs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = imgs.size4()?;
        let p = self.config.patch_size;
        if c != RGB || h != self.config.img_size || w != self.config.img_size {
            let s = self.config.img_size;
            return Err(input_error(format!("images {:?}, the model takes [B, 3, {s}, {s}]", imgs.size())));
        }
        let (gh, gw) = (h / p, w / p);
        let x = imgs.f_reshape([b, c, gh, p, gw, p])?; // [B, c, h, p, w, q]
        let x = x.f_permute([0, 2, 4, 3, 5, 1])?; // [B, h, w, p, q, c]
        Ok(x.f_reshape([b, gh * gw, p * p * c])?) // [B, N, p²·3]
    }

    /// MAE's `unpatchify`: `[B, N, p²·3]` → `[B, 3, H, W]`.
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.size3()?;
        let (p, g, pd) = (self.config.patch_size, self.config.grid_size(), self.config.patch_dim());
        if n != g * g || d != pd {
            return Err(input_error(format!("patches {:?}, expected [B, {}, {pd}]", x.size(), g * g)));
        }
        let x = x.f_reshape([b, g, g, p, p, RGB])?; // [B, h, w, p, q, c]
        let x = x.f_permute([0, 5, 1, 3, 2, 4])?; // [B, c, h, p, w, q]
        Ok(x.f_reshape([b, RGB, g * p, g * p])?) // [B, 3, H, W]
    }

    /// Checks that `ids` is `[B, count]` of patch indices and returns it as int64 on the
    /// weights' device.
    fn ids(&self, name: &str, ids: &Tensor, b: i64) -> Result<Tensor> {
        let size = ids.size();
        let integral = matches!(ids.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8);
        if size.len() != 2 || size[0] != b || !integral {
            return Err(input_error(format!("{name} {size:?} {:?}, expected [{b}, count] integers", ids.kind())));
        }
        Ok(ids.f_to_kind(Kind::Int64)?.f_to_device(self.device())?)
    }

    /// Checks that the visible and masked ids partition the patches of each row.
    fn check_partition(&self, visible: &Tensor, masked: &Tensor) -> Result<()> {
        let n = self.config.num_patches();
        let all = Tensor::f_cat(&[visible, masked], 1)?; // [B, N]
        let ok = all.size()[1] == n && {
            let (sorted, _) = all.f_sort(1, false)?;
            let expected = Tensor::f_arange(n, (Kind::Int64, all.device()))?.f_unsqueeze(0)?.f_expand_as(&sorted)?;
            sorted.f_equal(&expected)?
        };
        if ok {
            Ok(())
        } else {
            Err(input_error(format!(
                "visible {:?} and masked {:?} ids do not partition the {n} patches",
                visible.size(),
                masked.size()
            )))
        }
    }

    /// MAE's `forward_encoder` on the visible patches `visible_ids` `[B, V]` of normalized
    /// images `[B, 3, img_size, img_size]`: the latent `[B, 1 + V, D]` (class token first).
    pub fn forward_encoder(&self, imgs: &Tensor, visible_ids: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("diffmae_encoder").entered();
        let (b, c, h, w) = imgs.size4()?;
        let s = self.config.img_size;
        if c != self.config.in_chans || h != s || w != s {
            return Err(input_error(format!("images {:?}, the model takes [B, 3, {s}, {s}]", imgs.size())));
        }
        let ids = self.ids("visible ids", visible_ids, b)?;
        let n = self.config.num_patches();
        if ids.numel() > 0 && (ids.f_min()?.f_int64_value(&[])? < 0 || ids.f_max()?.f_int64_value(&[])? >= n) {
            return Err(input_error(format!("visible ids outside 0..{n}")));
        }
        let d = self.config.embed_dim;
        let x = self.patch_embed.forward(&imgs.f_to_kind(self.kind())?.f_to_device(self.device())?)?; // [B, D, g, g]
        let x = x.f_flatten(2, 3)?.f_transpose(1, 2)?; // [B, N, D]
        let x = x.f_add(&self.pos_embed.f_narrow(1, 1, n)?)?;
        let v = ids.size()[1];
        let x = x.f_gather(1, &ids.f_unsqueeze(-1)?.f_expand([b, v, d], false)?, false)?; // [B, V, D]
        let cls = self.cls_token.f_add(&self.pos_embed.f_narrow(1, 0, 1)?)?.f_expand([b, 1, d], false)?; // [B, 1, D]
        let mut x = Tensor::f_cat(&[cls, x], 1)?; // [B, 1 + V, D]
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// One denoiser pass: the predicted clean pixels x0 `[B, M, p²·3]` (normalized) of the
    /// masked patches `masked_ids` `[B, M]`, given the encoder's `latent` `[B, 1 + V, D]` of
    /// `visible_ids` `[B, V]`, their noisy pixels `x_t` `[B, M, p²·3]` and the timestep `t`
    /// `[B]` (of the training schedule). The ids must partition the patches of each row.
    pub fn denoise(
        &self,
        latent: &Tensor,
        x_t: &Tensor,
        visible_ids: &Tensor,
        masked_ids: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        let (embedded, visible, masked) = self.embed_latent(latent, visible_ids, masked_ids)?;
        let b = embedded.size()[0];
        self.check_noisy(x_t, b, masked.size()[1])?;
        if t.size() != [b] {
            return Err(input_error(format!("timesteps {:?}, expected [{b}]", t.size())));
        }
        self.decode(&embedded, &x_t.f_to_kind(self.kind())?.f_to_device(self.device())?, &visible, &masked, t)
    }

    /// Checks the latent `[B, 1 + V, D]` and ids of a decoder call; returns the latent after
    /// `decoder_embed` `[B, 1 + V, Dd]` and the ids as int64 on the weights' device.
    fn embed_latent(
        &self,
        latent: &Tensor,
        visible_ids: &Tensor,
        masked_ids: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, d) = latent.size3()?;
        let visible = self.ids("visible ids", visible_ids, b)?;
        let masked = self.ids("masked ids", masked_ids, b)?;
        self.check_partition(&visible, &masked)?;
        if l != 1 + visible.size()[1] || d != self.config.embed_dim {
            return Err(input_error(format!("latent {:?} for {} visible patches", latent.size(), visible.size()[1])));
        }
        let embedded = self.decoder_embed.forward(&latent.f_to_kind(self.kind())?.f_to_device(self.device())?)?;
        Ok((embedded, visible, masked))
    }

    fn check_noisy(&self, x_t: &Tensor, b: i64, m: i64) -> Result<()> {
        let expected = [b, m, self.config.patch_dim()];
        if x_t.size() != expected {
            return Err(input_error(format!("noisy patches {:?}, expected {expected:?}", x_t.size())));
        }
        Ok(())
    }

    /// The decoder on checked inputs: `embedded` `[B, 1 + V, Dd]` (after `decoder_embed`).
    fn decode(&self, embedded: &Tensor, x_t: &Tensor, visible: &Tensor, masked: &Tensor, t: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("diffmae_denoise").entered();
        let (b, _, dd) = embedded.size3()?;
        let (n, pd) = (self.config.num_patches(), self.config.patch_dim());
        let (v, m) = (visible.size()[1], masked.size()[1]);
        let temb = timestep_embedding(&t.f_to_device(self.device())?, dd)?.f_to_kind(self.kind())?; // [B, Dd]
        let mut temb = self.decoder_time_fc1.forward(&temb)?;
        temb = self.decoder_time_fc2.forward(&temb.f_silu()?)?; // [B, Dd]
        let noisy = self.decoder_noisy_embed.forward(x_t)?.f_add(&temb.f_unsqueeze(1)?)?; // [B, M, Dd]
        // MAE's unshuffle, the noisy tokens where MAE puts mask tokens: [B, N, Dd] in raster order.
        let tokens = Tensor::f_zeros([b, n, dd], (self.kind(), self.device()))?
            .f_scatter(1, &visible.f_unsqueeze(-1)?.f_expand([b, v, dd], false)?, &embedded.f_narrow(1, 1, v)?)?
            .f_scatter(1, &masked.f_unsqueeze(-1)?.f_expand([b, m, dd], false)?, &noisy)?;
        let x = Tensor::f_cat(&[embedded.f_narrow(1, 0, 1)?, tokens], 1)?; // [B, 1 + N, Dd]
        let mut x = x.f_add(&self.decoder_pos_embed)?;
        for block in &self.decoder_blocks {
            x = block.forward(&x)?;
        }
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x)?)?; // [B, 1 + N, p²·3]
        let x = x.f_narrow(1, 1, n)?; // [B, N, p²·3]
        Ok(x.f_gather(1, &masked.f_unsqueeze(-1)?.f_expand([b, m, pd], false)?, false)?) // [B, M, p²·3]
    }

    /// Standard normal noise for [`DiffMae::sample`], `[steps, B, M, p²·3]`, drawn on the CPU
    /// right after seeding libtorch's generator with `seed` (under the crate-wide seeding lock),
    /// then moved to the weights' device: the same seed gives the same run on any device.
    pub fn seeded_noise(&self, seed: i64, steps: usize, batch: i64, masked: i64) -> Result<Tensor> {
        let shape = [steps as i64, batch, masked, self.config.patch_dim()];
        let noise = ocellus_kernels::seeded(seed, || Tensor::f_randn(shape, (Kind::Float, Device::Cpu)))?;
        Ok(noise.f_to_kind(self.kind())?.f_to_device(self.device())?)
    }

    /// Per-value bounds `[p²·3]` of normalized `[0, 1]` pixels in patch layout (channel last).
    fn pixel_bounds(&self) -> Result<(Tensor, Tensor)> {
        let n = Normalization::IMAGENET;
        let lo: Vec<f32> = (0..3).map(|c| ((0.0 - n.mean[c]) / n.std[c]) as f32).collect();
        let hi: Vec<f32> = (0..3).map(|c| ((1.0 - n.mean[c]) / n.std[c]) as f32).collect();
        let reps = self.config.patch_size * self.config.patch_size;
        let to = |v: &[f32]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?.f_repeat([reps])?.f_to_kind(self.kind())?.f_to_device(self.device())?)
        };
        Ok((to(&lo)?, to(&hi)?))
    }

    /// Respaced DDPM ancestral sampling with x0 prediction over `steps = noise.size()[0]` steps
    /// of the schedule (all of them for `steps == num_timesteps`): the sampled clean pixels
    /// `[B, M, p²·3]` (normalized) of the masked patches. `noise` `[steps, B, M, p²·3]`:
    /// `noise[0]` is x_T, `noise[k]` the noise added at the k-th step (the last step adds
    /// none). Each x0 prediction is clipped to the range of normalized `[0, 1]` pixels.
    pub fn sample(&self, latent: &Tensor, visible_ids: &Tensor, masked_ids: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let _span = trace_span!("diffmae_sample").entered();
        let (embedded, visible, masked) = self.embed_latent(latent, visible_ids, masked_ids)?;
        let (b, m) = (embedded.size()[0], masked.size()[1]);
        let steps = match noise.size().first() {
            Some(&s) if s > 0 => s,
            _ => return Err(input_error(format!("noise {:?}, expected [steps, {b}, {m}, p²·3]", noise.size()))),
        };
        let chain = self.schedule.respaced(steps as usize)?;
        let noise = noise.f_to_kind(self.kind())?.f_to_device(self.device())?;
        self.check_noisy(&noise.f_get(0)?, b, m)?;
        let (lo, hi) = self.pixel_bounds()?;
        let mut x = noise.f_get(0)?; // x_T [B, M, p²·3]
        for (k, i) in (0..chain.len()).rev().enumerate() {
            let _step = trace_span!("diffmae_step", t = chain.timesteps[i]).entered();
            let t = Tensor::f_full([b], chain.timesteps[i], (Kind::Int64, self.device()))?;
            let x0 =
                self.decode(&embedded, &x, &visible, &masked, &t)?.f_clamp_min_tensor(&lo)?.f_clamp_max_tensor(&hi)?;
            let mean = x0
                .f_mul_scalar(chain.posterior_mean_coef1[i])?
                .f_add(&x.f_mul_scalar(chain.posterior_mean_coef2[i])?)?;
            x = if i > 0 {
                let std = (0.5 * chain.posterior_log_variance_clipped[i]).exp();
                mean.f_add(&noise.f_get(k as i64 + 1)?.f_mul_scalar(std)?)?
            } else {
                mean
            };
        }
        Ok(x)
    }

    /// Inpaints the masked pixels of `image` `[1, 3, H, W]` (float, `[0, 1]`, any size) where
    /// `mask` `[1, 1, H, W]` (bool) is true, sampling `steps` steps from noise seeded by `seed`.
    ///
    /// The image is resized (bilinear) to `img_size` and ImageNet-normalized; every patch whose
    /// region of the original image holds a masked pixel is masked (an adaptive max pool of the
    /// mask onto the patch grid), the others are visible. The sampled patches are unnormalized,
    /// resized back, and pasted into a copy of `image` at the masked pixels only: every other
    /// pixel is bit-identical to the input. With nothing masked the input itself is returned.
    pub fn inpaint(&self, image: &Tensor, mask: &Tensor, steps: usize, seed: i64) -> Result<Tensor> {
        let _span = trace_span!("diffmae_inpaint", steps).entered();
        let size = image.size();
        let [1, 3, h, w] = size[..] else {
            return Err(input_error(format!("image {size:?}, expected [1, 3, H, W]")));
        };
        if h == 0 || w == 0 || !image.is_floating_point() {
            return Err(input_error(format!("image {size:?} {:?}, expected a non-empty float image", image.kind())));
        }
        if mask.size() != [1, 1, h, w] || mask.kind() != Kind::Bool {
            return Err(input_error(format!(
                "mask {:?} {:?}, expected [1, 1, {h}, {w}] bool",
                mask.size(),
                mask.kind()
            )));
        }
        if steps == 0 || steps > self.config.num_timesteps {
            return Err(input_error(format!("{steps} steps, expected 1..={}", self.config.num_timesteps)));
        }
        if mask.f_any()?.f_to_kind(Kind::Int64)?.f_int64_value(&[])? == 0 {
            return Ok(image.shallow_clone());
        }
        let (s, g, dev) = (self.config.img_size, self.config.grid_size(), self.device());
        // The masked patches: any masked pixel in the patch's region of the original image.
        let touched = mask.f_to_device(dev)?.f_to_kind(Kind::Float)?.f_adaptive_max_pool2d([g, g])?.0; // [1, 1, g, g]
        let touched = touched.f_gt(0.0)?.f_reshape([-1])?; // [N]
        let masked_ids = touched.f_nonzero()?.f_reshape([1, -1])?; // [1, M]
        let visible_ids = touched.f_logical_not()?.f_nonzero()?.f_reshape([1, -1])?; // [1, V]
        let m = masked_ids.size()[1];
        // Resize and normalize.
        let x = image.f_to_device(dev)?.f_to_kind(Kind::Float)?;
        let x = if (h, w) == (s, s) { x } else { x.f_upsample_bilinear2d([s, s], false, None, None)? }; // [1, 3, s, s]
        let norm = Normalization::IMAGENET;
        let mean = Tensor::f_from_slice(&norm.mean)?.f_to_kind(Kind::Float)?.f_to_device(dev)?.f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&norm.std)?.f_to_kind(Kind::Float)?.f_to_device(dev)?.f_view([1, 3, 1, 1])?;
        let x = x.f_sub(&mean)?.f_div(&std)?.f_to_kind(self.kind())?;
        // Encode, sample, put the sampled patches in place.
        let latent = self.forward_encoder(&x, &visible_ids)?; // [1, 1 + V, D]
        let noise = self.seeded_noise(seed, steps, 1, m)?; // [steps, 1, M, p²·3]
        let x0 = self.sample(&latent, &visible_ids, &masked_ids, &noise)?; // [1, M, p²·3]
        let pd = self.config.patch_dim();
        let index = masked_ids.f_unsqueeze(-1)?.f_expand([1, m, pd], false)?; // [1, M, p²·3]
        let patches = self.patchify(&x)?.f_scatter(1, &index, &x0)?; // [1, N, p²·3]
        let out = self.unpatchify(&patches)?.f_to_kind(Kind::Float)?; // [1, 3, s, s]
        let out = out.f_mul(&std)?.f_add(&mean)?.f_clamp(0.0, 1.0)?;
        let out = if (h, w) == (s, s) { out } else { out.f_upsample_bilinear2d([h, w], false, None, None)? }; // [1, 3, H, W]
        let out = out.f_to_kind(image.kind())?.f_to_device(image.device())?;
        // Paste the masked pixels only; the others are the input's own values.
        Ok(out.f_where_self(&mask.f_to_device(image.device())?, image)?)
    }
}
