//! Masked autoencoder pre-training of Hiera, exact to the official `MaskedAutoencoderHiera`
//! (`hiera/hiera_mae.py`, PyPI `hiera-transformer` 0.1.4): the Hiera encoder on the kept mask
//! units, multi-scale fusion of the pooled stages, a Hiera-block decoder over every token at the
//! final resolution with mask tokens where units were removed, and the mean squared error
//! against per-patch normalized pixels of the removed units.
//!
//! Parameter paths are the official keys: the Hiera trunk at the root (no `norm`, no `head`),
//! then `encoder_norm`, `multi_scale_fusion_heads.{i}`, `decoder_embed`, `mask_token`,
//! `decoder_pos_embed`, `decoder_blocks.{i}`, `decoder_norm`, `decoder_pred`. The trunk's keys
//! are those of [`Hiera`], so adapted weights load into the backbone as they are.
//!
//! The model is built for training: every op keeps the autograd graph, and
//! [`MaskedAutoencoderHiera::forward`] returns the loss to call `backward` on.

use ocellus_kernels::nn::{Conv, ConvShape, LayerNorm, Linear, parameter};
use serde::{Deserialize, Serialize};
use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::hiera::{BlockAttention, Hiera, HieraBlock, HieraConfig, undo_windowing};
use crate::{PerceptionError, Result};

/// LayerNorm epsilon of the MAE heads (`partial(nn.LayerNorm, eps=1e-6)`).
const NORM_EPS: f64 = 1e-6;
/// Added to the variance of each target patch before its square root (`get_pixel_label_*`).
const LABEL_VAR_EPS: f64 = 1e-6;
/// Standard deviation of `mask_token` and `decoder_pos_embed` at initialization.
const TOKEN_INIT_STD: f64 = 0.02;
/// Key prefixes of what MAE adds to the Hiera trunk (everything else is the backbone's).
const MAE_HEAD_KEYS: [&str; 8] = [
    "encoder_norm.",
    "multi_scale_fusion_heads.",
    "decoder_embed.",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
];

/// Whether parameter `name` belongs to the Hiera trunk (keys shared with the backbone) rather
/// than to the MAE heads.
pub fn is_trunk_key(name: &str) -> bool {
    !MAE_HEAD_KEYS.iter().any(|p| name.starts_with(p))
}

/// MAE's initialization of the heads (`initialize_weights`), seeded: Xavier-uniform linear
/// weights, zero biases, unit LayerNorms, `mask_token` and `decoder_pos_embed` at N(0, 0.02²),
/// the fusion convolutions at PyTorch's default (uniform ±1/√fan_in). The trunk is left as it is.
pub fn init_heads(vs: &VarStore, seed: i64) -> Result<()> {
    let all = vs.variables();
    let mut vars: Vec<(&String, &Tensor)> = all.iter().filter(|(k, _)| !is_trunk_key(k)).collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    ocellus_kernels::seeded(seed, || -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, v) in vars {
            let dims = v.size();
            let options = (Kind::Float, v.device());
            let uniform = |bound: f64| -> Result<Tensor> {
                Ok(Tensor::f_rand(dims.as_slice(), options)?.f_mul_scalar(2.0 * bound)?.f_sub_scalar(bound)?)
            };
            let conv = name.starts_with("multi_scale_fusion_heads.");
            let value = if name == "mask_token" || name == "decoder_pos_embed" {
                Tensor::f_randn(dims.as_slice(), options)?.f_mul_scalar(TOKEN_INIT_STD)?
            } else if conv {
                // fan_in of the convolution whose weight or bias this is.
                let weight = all.get(&name.replace(".bias", ".weight")).map(Tensor::size).unwrap_or_default();
                let fan_in: i64 = weight.iter().skip(1).product();
                uniform(1.0 / (fan_in.max(1) as f64).sqrt())?
            } else if name.ends_with(".bias") {
                Tensor::f_zeros(dims.as_slice(), options)?
            } else if dims.len() == 1 {
                Tensor::f_ones(dims.as_slice(), options)?
            } else {
                uniform((6.0 / (dims[0] + dims[1]) as f64).sqrt())?
            };
            v.shallow_clone().f_copy_(&value)?;
        }
        Ok(())
    })
}

/// Pooling stages of every official MAE preset (`q_pool=2`): stages 3 and 4 share a resolution.
const MAE_Q_POOL: usize = 2;

/// Constructor arguments of `MaskedAutoencoderHiera`: the Hiera ones (`encoder`, the official
/// names) and the decoder's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HieraMaeConfig {
    /// The Hiera encoder's arguments (`embed_dim`, `stages`, `q_pool`, ...).
    pub encoder: HieraConfig,
    /// Width of the decoder.
    pub decoder_embed_dim: i64,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Heads of each decoder block.
    pub decoder_num_heads: i64,
}

impl HieraMaeConfig {
    /// The official preset of that name (`mae_hiera_tiny_224` ... `mae_hiera_huge_16x224`):
    /// the Hiera model of the same size with `q_pool=2` and the default decoder (512 wide, 8
    /// blocks, 16 heads).
    pub fn by_name(name: &str) -> Option<Self> {
        let hiera = name.strip_prefix("mae_")?;
        let mut encoder = HieraConfig::by_name(hiera)?;
        encoder.q_pool = MAE_Q_POOL;
        Some(Self { encoder, decoder_embed_dim: 512, decoder_depth: 8, decoder_num_heads: 16 })
    }

    /// Names accepted by [`HieraMaeConfig::by_name`].
    pub const NAMES: [&'static str; 10] = [
        "mae_hiera_tiny_224",
        "mae_hiera_small_224",
        "mae_hiera_base_224",
        "mae_hiera_base_plus_224",
        "mae_hiera_large_224",
        "mae_hiera_huge_224",
        "mae_hiera_base_16x224",
        "mae_hiera_base_plus_16x224",
        "mae_hiera_large_16x224",
        "mae_hiera_huge_16x224",
    ];

    /// Whether the model takes video clips `[B, 3, T, H, W]`.
    pub fn is_video(&self) -> bool {
        self.encoder.input_size.len() == 3
    }
}

/// What one forward pass returns (`loss, pred, label, mask` of the official forward).
#[derive(Debug)]
pub struct MaeOutput {
    /// Mean squared error over the removed units' pixels (a scalar).
    pub loss: Tensor,
    /// Predictions of the removed prediction tokens `[#removed, pixels per token]`.
    pub pred: Tensor,
    /// Their normalized pixel targets, same shape.
    pub label: Tensor,
    /// The mask units kept `[B, #units]` (true = visible to the encoder).
    pub mask: Tensor,
}

/// The model (weights only: the optimizer and data live with the trainer).
#[derive(Debug)]
pub struct MaskedAutoencoderHiera {
    config: HieraMaeConfig,
    encoder: Hiera,
    encoder_norm: LayerNorm,
    /// One per pooled stage (`stage_ends[:q_pool]`); the last stage is added as it is.
    fusion_heads: Vec<Conv>,
    decoder_embed: Linear,
    mask_token: Tensor,        // [1, 1, D]
    decoder_pos_embed: Tensor, // [1, prod(tokens_spatial_shape_final), D]
    decoder_blocks: Vec<HieraBlock>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
    /// Pixels per prediction token along H and W.
    pred_stride: i64,
    tokens_spatial_shape_final: Vec<i64>,
    mask_unit_spatial_shape_final: Vec<i64>,
}

impl MaskedAutoencoderHiera {
    /// Builds the model under `p` (the root path for the official key names).
    pub fn new(p: &Path, config: &HieraMaeConfig) -> Result<Self> {
        let c = &config.encoder;
        let encoder = Hiera::trunk(p, c)?;
        let stage_ends = encoder.stage_ends().to_vec();
        let last = *stage_ends.last().ok_or_else(|| config_error("no stages".into()))?;
        let encoder_dim_out = encoder.block_dim_out(last).ok_or_else(|| config_error("no blocks".into()))?;
        let pool = |v: i64, s: i64| v / s.pow(c.q_pool as u32);
        let mask_unit_spatial_shape_final: Vec<i64> =
            c.mask_unit_size.iter().zip(&c.q_stride).map(|(&m, &s)| pool(m, s)).collect();
        let tokens_spatial_shape_final: Vec<i64> =
            encoder.tokens_spatial_shape().iter().zip(&c.q_stride).map(|(&t, &s)| pool(t, s)).collect();
        if mask_unit_spatial_shape_final.contains(&0) || tokens_spatial_shape_final.contains(&0) {
            return Err(config_error(format!("q_pool {} pools mask units away", c.q_pool)));
        }
        let mut fusion_heads = Vec::with_capacity(c.q_pool);
        let mut curr_mu_size = c.mask_unit_size.clone();
        for (i, &end) in stage_ends[..c.q_pool].iter().enumerate() {
            let kernel: Vec<i64> =
                curr_mu_size.iter().zip(&mask_unit_spatial_shape_final).map(|(m, f)| m / f).collect();
            curr_mu_size = curr_mu_size.iter().zip(&c.q_stride).map(|(m, s)| m / s).collect();
            let dim = encoder.block_dim_out(end).ok_or_else(|| config_error("stage end past the blocks".into()))?;
            let padding = vec![0; kernel.len()];
            fusion_heads.push(Conv::new(
                &(p / "multi_scale_fusion_heads" / i),
                dim,
                encoder_dim_out,
                ConvShape::new(&kernel, &kernel, &padding),
            )?);
        }
        let d = config.decoder_embed_dim;
        let decoder_blocks = (0..config.decoder_depth)
            .map(|i| {
                let bp = p / "decoder_blocks" / i;
                HieraBlock::new(&bp, d, d, config.decoder_num_heads, c.mlp_ratio, BlockAttention::GLOBAL)
            })
            .collect::<Result<Vec<_>>>()?;
        let pred_stride =
            c.patch_stride.last().copied().unwrap_or(1) * c.q_stride.last().copied().unwrap_or(1).pow(c.q_pool as u32);
        let pred_dim = pred_stride.pow(c.q_stride.len().min(2) as u32) * c.in_chans;
        let num_final: i64 = tokens_spatial_shape_final.iter().product();
        Ok(Self {
            config: config.clone(),
            encoder,
            encoder_norm: LayerNorm::new(&(p / "encoder_norm"), encoder_dim_out, NORM_EPS)?,
            fusion_heads,
            decoder_embed: Linear::new(&(p / "decoder_embed"), encoder_dim_out, d, true)?,
            mask_token: parameter(p, "mask_token", &[1, 1, d])?,
            decoder_pos_embed: parameter(p, "decoder_pos_embed", &[1, num_final, d])?,
            decoder_blocks,
            decoder_norm: LayerNorm::new(&(p / "decoder_norm"), d, NORM_EPS)?,
            decoder_pred: Linear::new(&(p / "decoder_pred"), d, pred_dim, true)?,
            pred_stride,
            tokens_spatial_shape_final,
            mask_unit_spatial_shape_final,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HieraMaeConfig {
        &self.config
    }

    /// The encoder (the backbone being adapted).
    pub fn encoder(&self) -> &Hiera {
        &self.encoder
    }

    /// Whether AdamW's weight decay applies to parameter `name` of rank `rank` (the MAE recipe:
    /// not to 1-D parameters, biases and the position embeddings of Hiera's `no_weight_decay()`).
    pub fn weight_decay_applies(&self, name: &str, rank: usize) -> bool {
        let no_decay: &[&str] = if self.config.encoder.sep_pos_embed {
            &["pos_embed_spatial", "pos_embed_temporal"]
        } else {
            &["pos_embed"]
        };
        !(rank == 1 || name.ends_with(".bias") || no_decay.contains(&name))
    }

    /// Mask units per image or clip.
    pub fn num_mask_units(&self) -> i64 {
        self.encoder.mask_spatial_shape().iter().product()
    }

    /// `get_random_mask`: per row, `int(#units * (1 - mask_ratio))` units kept, chosen by the
    /// order of uniform noise from libtorch's generator (the official draws, given the seed).
    pub fn random_mask(&self, batch: i64, mask_ratio: f64, device: Device) -> Result<Tensor> {
        let num_windows = self.num_mask_units();
        let len_keep = (num_windows as f64 * (1.0 - mask_ratio)) as i64;
        if !(0.0..1.0).contains(&mask_ratio) || len_keep < 1 {
            return Err(config_error(format!("mask_ratio {mask_ratio} keeps no mask unit of {num_windows}")));
        }
        let noise = Tensor::f_rand([batch, num_windows], (Kind::Float, device))?;
        let ids_shuffle = noise.f_argsort(1, false)?; // ascending: small is kept
        let ids_restore = ids_shuffle.f_argsort(1, false)?;
        let mask = Tensor::f_zeros([batch, num_windows], (Kind::Float, device))?;
        let _ = mask.f_narrow(1, 0, len_keep)?.f_fill_(1.0)?;
        Ok(mask.f_gather(1, &ids_restore, false)?.f_to_kind(Kind::Bool)?) // [B, #units]
    }

    /// `forward(x, mask_ratio, mask)`: a random mask unless `mask` (`[B, #units]`, true = keep,
    /// the same count per row) is given.
    pub fn forward(&self, x: &Tensor, mask_ratio: f64, mask: Option<&Tensor>) -> Result<MaeOutput> {
        let _span = trace_span!("hiera_mae_forward").entered();
        let mask = match mask {
            Some(m) => m.f_to_kind(Kind::Bool)?,
            None => self.random_mask(x.size()[0], mask_ratio, x.device())?,
        };
        let latent = self.forward_encoder(x, &mask)?;
        let (pred, pred_mask) = self.forward_decoder(&latent, &mask)?;
        let removed = pred_mask.f_logical_not()?;
        let label = self.pixel_label(x, &removed)?;
        let pred = pred.f_index(&[Some(&removed)])?; // [#removed, P]
        let loss = pred.f_sub(&label)?.f_square()?.f_mean(None::<Kind>)?;
        Ok(MaeOutput { loss, pred, label, mask })
    }

    /// Encoder features of the kept units, the pooled stages fused: `[B, #kept, *mu_final, C]`.
    fn forward_encoder(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let intermediates = self.encoder.forward(x, Some(mask), true)?.intermediates;
        // Resolution is unchanged after the pooled stages: those in between are skipped. The sum
        // runs in the official order: each pooled stage through its head, then the last stage.
        let last = intermediates.last().ok_or_else(|| config_error("no intermediates".into()))?;
        let mut pooled = self.fusion_heads.iter().zip(&intermediates).map(|(head, t)| apply_fusion_head(head, t));
        let fused = match pooled.next() {
            None => last.shallow_clone(),
            Some(first) => {
                let mut acc = first?;
                for y in pooled {
                    acc = acc.f_add(&y?)?;
                }
                acc.f_add(last)?
            }
        };
        Ok(self.encoder_norm.forward(&fused)?)
    }

    /// Decoder predictions `[B, #tokens_final, P]` and the final-resolution mask `[B, #tokens_final]`
    /// (true = visible).
    fn forward_decoder(&self, x: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.decoder_embed.forward(x)?; // [B, #kept, *mu_final, D]
        let (b, num_units) = mask.size2()?;
        let inner: Vec<i64> = x.size()[2..].to_vec(); // [*mu_final, D]
        let mut full = vec![b, num_units];
        full.extend(&inner);
        let mut unit_shape = vec![b, num_units];
        unit_shape.extend(std::iter::repeat_n(1, inner.len()));
        let mut expand = vec![-1, -1];
        expand.extend(&inner);
        let mask_full = mask.f_reshape(unit_shape.as_slice())?.f_expand(expand.as_slice(), false)?; // [B, #units, *mu_final, D]
        // x_dec[mask] = x.flatten(); x_dec = ~mask * mask_tokens + mask * x_dec
        let x_dec = Tensor::f_zeros(full.as_slice(), (x.kind(), x.device()))?
            .f_masked_scatter(&mask_full, &x.f_flatten(0, -1)?)?;
        let visible = mask_full.f_to_kind(x.kind())?;
        let hidden = mask_full.f_logical_not()?.f_to_kind(x.kind())?;
        let x_dec = hidden.f_mul(&self.mask_token)?.f_add(&visible.f_mul(&x_dec)?)?;
        // Back to raster order at the final resolution.
        let x = undo_windowing(&x_dec, &self.tokens_spatial_shape_final, &self.mask_unit_spatial_shape_final)?;
        let mask_tokens = undo_windowing(
            &mask_full.f_narrow(-1, 0, 1)?,
            &self.tokens_spatial_shape_final,
            &self.mask_unit_spatial_shape_final,
        )?;
        let d = x.size().last().copied().unwrap_or(0);
        let mut x = x.f_reshape([b, -1, d])?.f_add(&self.decoder_pos_embed)?; // [B, N_final, D]
        let pred_mask = mask_tokens.f_view([b, -1])?; // [B, N_final]
        for block in &self.decoder_blocks {
            x = block.forward(&x)?;
        }
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x)?)?; // [B, N_final, P]
        Ok((x, pred_mask))
    }

    /// `get_pixel_label_2d` / `_3d`: per prediction token, its `pred_stride²` pixels (video:
    /// of the first frame of each temporal patch), normalized per token, for `selected`.
    fn pixel_label(&self, input: &Tensor, selected: &Tensor) -> Result<Tensor> {
        let s = self.pred_stride;
        let label = if self.config.is_video() {
            // Time-strided: the first frame of each token only.
            let t = input.size()[2];
            let step = self.config.encoder.patch_stride[0];
            let v = input.f_slice(2, 0, t, step)?; // [B, C, T', H, W]
            let v = v.f_unfold(3, s, s)?.f_unfold(4, s, s)?; // [B, C, T', H/s, W/s, s, s]
            // The official order puts channels last for video (pixels, then channel).
            v.f_permute([0, 2, 3, 4, 5, 6, 1])?.f_flatten(1, 3)?.f_flatten(2, -1)? // [B, N, s*s*C]
        } else {
            let v = input.f_permute([0, 2, 3, 1])?; // [B, H, W, C]
            let v = v.f_unfold(1, s, s)?.f_unfold(2, s, s)?; // [B, H/s, W/s, C, s, s]
            v.f_flatten(1, 2)?.f_flatten(2, -1)? // [B, N, C*s*s]
        };
        let label = label.f_index(&[Some(selected)])?; // [#selected, P]
        let mean = label.f_mean_dim(-1, true, None::<Kind>)?;
        let var = label.f_var_dim(-1, true, true)?;
        Ok(label.f_sub(&mean)?.f_div(&var.f_add_scalar(LABEL_VAR_EPS)?.f_pow_tensor_scalar(0.5)?)?)
    }
}

/// `apply_fusion_head`: the head's convolution on each mask unit,
/// `[B, #units, *mu, C]` → `[B, #units, *mu', C']`.
fn apply_fusion_head(head: &Conv, x: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (b, units, d) = (size[0], size[1], size.len() as i64 - 3);
    let mut flat = vec![b * units];
    flat.extend(&size[2..]);
    let mut to_channels_first = vec![0, d + 1];
    to_channels_first.extend(1..=d);
    let y = head.forward(&x.f_reshape(flat.as_slice())?.f_permute(to_channels_first.as_slice())?)?; // [B*#units, C', *mu']
    let mut to_channels_last = vec![0];
    to_channels_last.extend(2..=d + 1);
    to_channels_last.push(1);
    let y = y.f_permute(to_channels_last.as_slice())?; // [B*#units, *mu', C']
    let mut out = vec![b, units];
    out.extend(&y.size()[1..]);
    Ok(y.f_reshape(out.as_slice())?)
}

fn config_error(message: String) -> PerceptionError {
    PerceptionError::Config { model: "hiera_mae", message }
}
