//! LART's token model (`lart/models/components/lart_transformer/transformer.py`,
//! `lart_transformer`): per-token encoders for pose, joints and appearance, the mask token,
//! the learned 2-D position embedding over (frame, person), a pre-norm transformer whose
//! attention overwrites masked scores with −1000, and the class tokens prepended afterwards.
//!
//! Variable names are the module's `state_dict()` keys (`pose_shape_encoder.0.weight`,
//! `transformer.layers.{i}.0.fn.to_qkv.weight`, `pos_embedding`, …); the unused `conv_en`,
//! `conv_de` and the `pe` buffer (a second copy of `pos_embedding`) are accepted by the loader
//! and ignored by name.

use ocellus_kernels::nn::{LAYER_NORM_EPS, LayerNorm, Linear, PreNormFeedForward, parameter};
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use super::{FeatCfg, LartConfig};
use crate::{PerceptionError, Result};

/// The score written over a masked key (not added), after scaling: finite, so that a query
/// whose every key is masked attends uniformly instead of producing NaN.
pub const MASKED_SCORE: f64 = -1e3;
/// Frames of the position-embedding parameter (sliced to `frame_length`).
pub const POS_FRAMES: i64 = 250;
/// People of the position-embedding parameter (sliced to `max_people`).
pub const POS_PEOPLE: i64 = 10;

/// The inputs of one batch of clips: B clips, T = `frame_length` frames, P = `max_people`.
#[derive(Debug)]
pub struct LartInput {
    /// Normalized pose vectors `[B, T, P, 229]`.
    pub pose_shape: Tensor,
    /// 45 joints plus the camera translation `[B, T, P, 135]` (with `joints_3D` enabled).
    pub joints_3d: Option<Tensor>,
    /// Appearance features `[B, T, P, 2048]` (with `apperance` enabled).
    pub apperance_emb: Option<Tensor>,
    /// 1 where the track exists at that frame `[B, T, P, 1]`.
    pub has_detection: Tensor,
    /// 1 where the token is masked (no detection inside the track) `[B, T, P, 1]`.
    pub mask_detection: Tensor,
}

/// The two masks the attention reads, in token order (n = t·P + p), `[B, T·P]` each.
#[derive(Debug)]
pub struct AttentionMasks {
    /// `masks_np`: rows and columns that take part (all ones in evaluation).
    pub np: Tensor,
    /// `masks_bert`: keys nobody attends to (their token is the mask token).
    pub bert: Tensor,
}

impl AttentionMasks {
    /// The evaluation masks (`mask_type = "zero"`): every token takes part; a token without a
    /// detection, or masked, is a masked key.
    pub fn zero(input: &LartInput) -> Result<Self> {
        let (b, t, p, _) = input.has_detection.size4()?;
        let missing = input.has_detection.f_eq(0.0)?;
        let bert = input.mask_detection.f_eq(1.0)?.f_logical_or(&missing)?.f_reshape([b, t * p])?; // [B, T·P]
        let np = Tensor::f_ones([b, t * p], (Kind::Bool, bert.device()))?;
        Ok(Self { np, bert })
    }

    /// Masks given as they are (those the training mode drew, recorded).
    pub fn given(np: &Tensor, bert: &Tensor) -> Result<Self> {
        Ok(Self { np: np.f_ne(0.0)?, bert: bert.f_ne(0.0)? })
    }

    /// `[B, 1, N, N]`: true where the score is overwritten.
    fn masked_scores(&self) -> Result<Tensor> {
        let rows = self.np.f_unsqueeze(2)?; // [B, N, 1]
        let cols = self.np.f_unsqueeze(1)?; // [B, 1, N]
        let pair = rows.f_logical_and(&cols)?.f_logical_not()?; // [B, N, N]
        let bert = self.bert.f_unsqueeze(1)?; // [B, 1, N]: per key
        Ok(pair.f_logical_or(&bert)?.f_unsqueeze(1)?) // [B, 1, N, N]
    }
}

/// A Linear/ReLU chain with no activation after the last layer (`nn.Sequential` indices
/// 0, 2, 4, …).
#[derive(Debug)]
pub struct Encoder {
    layers: Vec<Linear>,
}

impl Encoder {
    /// `dims` = input, hidden…, output widths.
    pub fn new(p: &Path, dims: &[i64]) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&(p / (2 * i)), w[0], w[1], true))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self { layers })
    }

    /// The chain on `[…, in]` → `[…, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.f_relu()?;
            }
        }
        Ok(x)
    }
}

/// `PreNorm(Attention)`: bias-free qkv, 16 heads × 64, masked scores overwritten.
#[derive(Debug)]
struct Attention {
    norm: LayerNorm,
    to_qkv: Tensor, // [3 · inner, dim]
    to_out: Linear,
    heads: i64,
    dim_head: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, masked: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.size3()?;
        let inner = self.heads * self.dim_head;
        let qkv = self.norm.forward(x)?.f_linear::<&Tensor>(&self.to_qkv, None)?; // [B, N, 3 · inner]
        let split = |i: i64| -> Result<Tensor> {
            // Channel c of q, k or v belongs to head c / dim_head.
            Ok(qkv.f_narrow(-1, i * inner, inner)?.f_reshape([b, n, self.heads, self.dim_head])?.f_transpose(1, 2)?) // [B, heads, N, d]
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scale = (self.dim_head as f64).powf(-0.5);
        let dots = q.f_matmul(&k.f_transpose(-1, -2)?)?.f_mul_scalar(scale)?; // [B, heads, N, N]
        let dots = dots.f_masked_fill(masked, MASKED_SCORE)?;
        let attn = dots.f_softmax(-1, None::<Kind>)?;
        let out = attn.f_matmul(&v)?.f_transpose(1, 2)?.f_reshape([b, n, inner])?; // [B, N, inner]
        Ok(self.to_out.forward(&out)?)
    }
}

/// `Transformer`: pre-norm layers, no final norm.
#[derive(Debug)]
pub struct Transformer {
    layers: Vec<(Attention, PreNormFeedForward)>,
}

impl Transformer {
    fn new(p: &Path, c: &LartConfig) -> Result<Self> {
        let t = &c.transformer;
        let (dim, inner) = (c.in_feat, t.heads * t.dim_head);
        let layers = (0..t.depth)
            .map(|i| -> Result<_> {
                let l = p / "layers" / i;
                let (a, f) = (&l / 0, &l / 1);
                Ok((
                    Attention {
                        norm: LayerNorm::new(&(&a / "norm"), dim, LAYER_NORM_EPS)?,
                        to_qkv: parameter(&(&a / "fn" / "to_qkv"), "weight", &[3 * inner, dim])?,
                        to_out: Linear::new(&(&a / "fn" / "to_out" / 0), inner, dim, true)?,
                        heads: t.heads,
                        dim_head: t.dim_head,
                    },
                    PreNormFeedForward::new(&f, dim, t.mlp_dim)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The first `n` layers on tokens `[B, N, dim]` (all of them with `n = usize::MAX`).
    pub fn forward_layers(&self, x: &Tensor, masks: &AttentionMasks, n: usize) -> Result<Tensor> {
        let masked = masks.masked_scores()?;
        let mut x = x.shallow_clone();
        for (attn, ff) in self.layers.iter().take(n) {
            x = x.f_add(&attn.forward(&x, &masked)?)?;
            x = x.f_add(&ff.forward(&x)?)?;
        }
        Ok(x)
    }
}

/// The three per-token encoders' outputs `[B, T, P, en_dim]`, before concatenation.
#[derive(Debug)]
pub struct Encoded {
    /// `pose_shape_encoder`.
    pub pose_shape: Tensor,
    /// `joint_encoder`.
    pub joints_3d: Option<Tensor>,
    /// `apperance_encoder`.
    pub apperance: Option<Tensor>,
}

/// `lart_transformer`.
#[derive(Debug)]
pub struct LartTransformer {
    mask_token: Tensor,    // [dim]
    class_token: Tensor,   // [1, 1, dim]
    pos_embedding: Tensor, // [dim, 250, 10]
    /// The transformer.
    pub transformer: Transformer,
    pose_shape_encoder: Encoder,
    joint_encoder: Option<Encoder>,
    apperance_encoder: Option<Encoder>,
    config: LartConfig,
}

fn widths(f: &FeatCfg, hidden_layers: usize) -> Vec<i64> {
    let mut dims = vec![f.dim];
    dims.extend(std::iter::repeat_n(f.mid_dim, hidden_layers));
    dims.push(f.en_dim);
    dims
}

impl LartTransformer {
    /// The module under `p`.
    pub fn new(p: &Path, config: &LartConfig) -> Result<Self> {
        let e = &config.extra_feat;
        let width = e.pose_shape.en_dim
            + if config.uses_joints() { e.joints_3d.en_dim } else { 0 }
            + if config.uses_apperance() { e.apperance.en_dim } else { 0 };
        if width != config.in_feat {
            return Err(PerceptionError::Config {
                model: "lart",
                message: format!("the encoders give {width} channels, in_feat is {}", config.in_feat),
            });
        }
        if config.frame_length > POS_FRAMES || config.max_people > POS_PEOPLE {
            return Err(PerceptionError::Config {
                model: "lart",
                message: format!(
                    "the position embedding covers {POS_FRAMES} frames and {POS_PEOPLE} people, not {} × {}",
                    config.frame_length, config.max_people
                ),
            });
        }
        let dim = config.in_feat;
        Ok(Self {
            mask_token: parameter(p, "mask_token", &[dim])?,
            class_token: parameter(p, "class_token", &[1, 1, dim])?,
            pos_embedding: parameter(p, "pos_embedding", &[dim, POS_FRAMES, POS_PEOPLE])?,
            transformer: Transformer::new(&(p / "transformer"), config)?,
            // pose 229 → 229 → 128; joints 135 → 256 → 256 → 128; appearance 2048 → 512 → 512 → 256.
            pose_shape_encoder: Encoder::new(&(p / "pose_shape_encoder"), &widths(&e.pose_shape, 1))?,
            joint_encoder: match config.uses_joints() {
                true => Some(Encoder::new(&(p / "joint_encoder"), &widths(&e.joints_3d, 2))?),
                false => None,
            },
            apperance_encoder: match config.uses_apperance() {
                true => Some(Encoder::new(&(p / "apperance_encoder"), &widths(&e.apperance, 2))?),
                false => None,
            },
            config: config.clone(),
        })
    }

    fn check(&self, name: &str, t: &Tensor, channels: i64) -> Result<()> {
        let c = &self.config;
        let size = t.size();
        if size.len() != 4 || size[1] != c.frame_length || size[2] != c.max_people || size[3] != channels {
            return Err(PerceptionError::Config {
                model: "lart",
                message: format!(
                    "{name} must be [B, {}, {}, {channels}] (frame_length, max_people), got {size:?}",
                    c.frame_length, c.max_people
                ),
            });
        }
        Ok(())
    }

    /// Checks every input's shape against the configuration.
    pub fn check_input(&self, input: &LartInput) -> Result<()> {
        let e = &self.config.extra_feat;
        self.check("pose_shape", &input.pose_shape, e.pose_shape.dim)?;
        self.check("has_detection", &input.has_detection, 1)?;
        self.check("mask_detection", &input.mask_detection, 1)?;
        match (&input.joints_3d, self.config.uses_joints()) {
            (Some(j), true) => self.check("joints_3D", j, e.joints_3d.dim)?,
            (None, false) => {}
            (_, need) => return Err(input_error("joints_3D", need)),
        }
        match (&input.apperance_emb, self.config.uses_apperance()) {
            (Some(a), true) => self.check("apperance_emb", a, e.apperance.dim)?,
            (None, false) => {}
            (_, need) => return Err(input_error("apperance_emb", need)),
        }
        Ok(())
    }

    /// The encoders on their inputs.
    pub fn encode(&self, input: &LartInput) -> Result<Encoded> {
        self.check_input(input)?;
        Ok(Encoded {
            pose_shape: self.pose_shape_encoder.forward(&input.pose_shape)?,
            joints_3d: match (&self.joint_encoder, &input.joints_3d) {
                (Some(e), Some(j)) => Some(e.forward(j)?),
                _ => None,
            },
            apperance: match (&self.apperance_encoder, &input.apperance_emb) {
                (Some(e), Some(a)) => Some(e.forward(a)?),
                _ => None,
            },
        })
    }

    /// The transformer's input `[B, T·P, dim]`: the encoded tokens concatenated, the masked
    /// keys' tokens (the reference's `mask_detection` after its in-place update, which is
    /// `masks.bert`) replaced by `mask_token`, the position embedding added.
    pub fn tokens(&self, input: &LartInput, masks: &AttentionMasks) -> Result<Tensor> {
        let enc = self.encode(input)?;
        let parts: Vec<Tensor> = [Some(enc.pose_shape), enc.joints_3d, enc.apperance].into_iter().flatten().collect();
        let x = Tensor::f_cat(&parts, -1)?; // [B, T, P, dim]
        let (b, t, p, dim) = x.size4()?;
        let masked = masks.bert.f_reshape([b, t, p, 1])?; // [B, T, P, 1]
        let x = x.f_where_self(&masked.f_logical_not()?, &self.mask_token.f_to_kind(x.kind())?)?;
        let x = x.f_reshape([b, t * p, dim])?; // [B, T·P, dim], token n = t·P + p
        let pos = self
            .pos_embedding
            .f_narrow(1, 0, t)?
            .f_narrow(2, 0, p)?
            .f_reshape([1, dim, t * p])?
            .f_permute([0, 2, 1])?; // [1, T·P, dim]
        Ok(x.f_add(&pos.f_to_kind(x.kind())?)?)
    }

    /// The forward (`mask_type = "zero"` with [`AttentionMasks::zero`]): `[B, P + T·P, dim]`,
    /// the P class tokens first. Unlike the reference, the inputs are not changed.
    pub fn forward(&self, input: &LartInput, masks: &AttentionMasks) -> Result<Tensor> {
        let _span = trace_span!("lart_transformer").entered();
        let x = self.tokens(input, masks)?;
        let x = self.transformer.forward_layers(&x, masks, usize::MAX)?;
        let b = x.size()[0];
        let class = self.class_token.f_to_kind(x.kind())?.f_expand([b, self.config.max_people, -1], false)?; // [B, P, dim]
        Ok(Tensor::f_cat(&[class, x], 1)?)
    }
}

fn input_error(name: &str, needed: bool) -> PerceptionError {
    PerceptionError::Config {
        model: "lart",
        message: match needed {
            true => format!("the model reads {name} (extra_feat.enable) but it was not given"),
            false => format!("{name} was given but the model does not read it (extra_feat.enable)"),
        },
    }
}
