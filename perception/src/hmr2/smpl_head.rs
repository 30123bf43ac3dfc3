//! HMR 2.0's SMPL head (`hmr2/models/heads/smpl_head.py`, `SMPLTransformerDecoderHead`, with
//! `hmr2/models/components/pose_transformer.py`, `TransformerDecoder`): one query token
//! cross-attends to the backbone's tokens through a pre-norm decoder; the token is read out
//! as corrections to the mean SMPL parameters (iterative error feedback), and the 6-D joint
//! rotations become rotation matrices (`hmr2/utils/geometry.py`, `rot6d_to_rotmat`).
//!
//! Variable names are the checkpoint's under `smpl_head.` (`init_body_pose`, `decpose.weight`,
//! `transformer.to_token_embedding.weight`, `transformer.pos_embedding`,
//! `transformer.transformer.layers.{i}.{0,1,2}.…`).

use ocellus_kernels::nn::{LAYER_NORM_EPS, LayerNorm, Linear, PreNormFeedForward, parameter};
use serde::{Deserialize, Serialize};
use tch::nn::Path;
use tch::{Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// Values per 6-D rotation.
const ROT6D: i64 = 6;
/// SMPL's shape coefficients.
pub const NUM_BETAS: i64 = 10;
/// The weak-perspective camera `(s, tx, ty)`.
const CAM_DIM: i64 = 3;
/// `F.normalize`'s epsilon.
const NORMALIZE_EPS: f64 = 1e-12;
/// The decoder's width (hard-coded in the head).
const DECODER_DIM: i64 = 1024;

/// `MODEL.SMPL_HEAD.TRANSFORMER_DECODER` (the official keys and HMR 2.0's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerDecoderCfg {
    /// Layers.
    pub depth: usize,
    /// Heads.
    pub heads: i64,
    /// Feed-forward hidden width.
    pub mlp_dim: i64,
    /// Width per head.
    pub dim_head: i64,
    /// Width of the backbone tokens.
    pub context_dim: i64,
}

impl Default for TransformerDecoderCfg {
    fn default() -> Self {
        Self { depth: 6, heads: 8, mlp_dim: 1024, dim_head: 64, context_dim: 1280 }
    }
}

/// `MODEL.SMPL_HEAD` (with `SMPL.NUM_BODY_JOINTS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmplHeadCfg {
    /// The decoder.
    pub transformer_decoder: TransformerDecoderCfg,
    /// Refinement iterations (`IEF_ITERS`).
    pub ief_iters: usize,
    /// Body joints besides the root.
    pub num_body_joints: i64,
}

impl Default for SmplHeadCfg {
    fn default() -> Self {
        Self { transformer_decoder: TransformerDecoderCfg::default(), ief_iters: 1, num_body_joints: 23 }
    }
}

/// What the head predicts for a batch.
#[derive(Debug)]
pub struct SmplParams {
    /// Root rotation `[B, 1, 3, 3]`.
    pub global_orient: Tensor,
    /// Body-joint rotations `[B, 23, 3, 3]`.
    pub body_pose: Tensor,
    /// Shape `[B, 10]`.
    pub betas: Tensor,
    /// Weak-perspective crop camera `(s, tx, ty)` `[B, 3]`.
    pub cam: Tensor,
}

/// Every iteration's body pose, betas and camera, stacked along the batch axis (the
/// reference's `pred_smpl_params_list`).
#[derive(Debug)]
pub struct IterationParams {
    /// `[iters · B, 23, 3, 3]`.
    pub body_pose: Tensor,
    /// `[iters · B, 10]`.
    pub betas: Tensor,
    /// `[iters · B, 3]`.
    pub cam: Tensor,
}

/// `PreNorm(Attention)` over a single token: the token's own value, projected.
#[derive(Debug)]
struct SelfAttention {
    norm: LayerNorm,
    to_qkv: Tensor, // [3 · inner, dim]
    to_out: Linear,
    heads: i64,
    dim_head: i64,
}

impl SelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.size3()?;
        let inner = self.heads * self.dim_head;
        let qkv = self.norm.forward(x)?.f_linear::<&Tensor>(&self.to_qkv, None)?; // [B, N, 3 · inner]
        let split = |i: i64| -> Result<Tensor> {
            Ok(qkv.f_narrow(-1, i * inner, inner)?.f_reshape([b, n, self.heads, self.dim_head])?.f_transpose(1, 2)?) // [B, heads, N, d]
        };
        let y = Tensor::f_scaled_dot_product_attention(
            &split(0)?,
            &split(1)?,
            &split(2)?,
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        Ok(self.to_out.forward(&y.f_transpose(1, 2)?.f_reshape([b, n, inner])?)?) // [B, N, dim]
    }
}

/// `PreNorm(CrossAttention)`: queries from the (normalized) token, keys and values from the
/// context as it is.
#[derive(Debug)]
struct CrossAttention {
    norm: LayerNorm,
    to_q: Tensor,  // [inner, dim]
    to_kv: Tensor, // [2 · inner, context_dim]
    to_out: Linear,
    heads: i64,
    dim_head: i64,
}

impl CrossAttention {
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.size3()?;
        let m = context.size()[1];
        let inner = self.heads * self.dim_head;
        let heads = |t: Tensor, len: i64| -> Result<Tensor> {
            Ok(t.f_reshape([b, len, self.heads, self.dim_head])?.f_transpose(1, 2)?) // [B, heads, len, d]
        };
        let q = heads(self.norm.forward(x)?.f_linear::<&Tensor>(&self.to_q, None)?, n)?;
        let kv = context.f_linear::<&Tensor>(&self.to_kv, None)?; // [B, M, 2 · inner]
        let k = heads(kv.f_narrow(-1, 0, inner)?, m)?;
        let v = heads(kv.f_narrow(-1, inner, inner)?, m)?;
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false)?; // [B, heads, N, d]
        Ok(self.to_out.forward(&y.f_transpose(1, 2)?.f_reshape([b, n, inner])?)?) // [B, N, dim]
    }
}

/// One layer of `TransformerCrossAttn`: self-attention, cross-attention, feed-forward.
#[derive(Debug)]
struct Layer {
    self_attn: SelfAttention,
    cross_attn: CrossAttention,
    ff: PreNormFeedForward,
}

impl Layer {
    fn new(p: &Path, c: &TransformerDecoderCfg) -> Result<Self> {
        let (dim, inner) = (DECODER_DIM, c.heads * c.dim_head);
        let (sa, ca, ff) = (p / 0, p / 1, p / 2);
        Ok(Self {
            self_attn: SelfAttention {
                norm: LayerNorm::new(&(&sa / "norm"), dim, LAYER_NORM_EPS)?,
                to_qkv: parameter(&(&sa / "fn" / "to_qkv"), "weight", &[3 * inner, dim])?,
                to_out: Linear::new(&(&sa / "fn" / "to_out" / 0), inner, dim, true)?,
                heads: c.heads,
                dim_head: c.dim_head,
            },
            cross_attn: CrossAttention {
                norm: LayerNorm::new(&(&ca / "norm"), dim, LAYER_NORM_EPS)?,
                to_q: parameter(&(&ca / "fn" / "to_q"), "weight", &[inner, dim])?,
                to_kv: parameter(&(&ca / "fn" / "to_kv"), "weight", &[2 * inner, c.context_dim])?,
                to_out: Linear::new(&(&ca / "fn" / "to_out" / 0), inner, dim, true)?,
                heads: c.heads,
                dim_head: c.dim_head,
            },
            ff: PreNormFeedForward::new(&ff, dim, c.mlp_dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = x.f_add(&self.self_attn.forward(x)?)?;
        let x = x.f_add(&self.cross_attn.forward(&x, context)?)?;
        Ok(x.f_add(&self.ff.forward(&x)?)?)
    }
}

/// `SMPLTransformerDecoderHead`.
#[derive(Debug)]
pub struct SmplHead {
    init_body_pose: Tensor, // [1, 6 · (joints + 1)]
    init_betas: Tensor,     // [1, 10]
    init_cam: Tensor,       // [1, 3]
    to_token_embedding: Linear,
    pos_embedding: Tensor, // [1, 1, 1024]
    layers: Vec<Layer>,
    decpose: Linear,
    decshape: Linear,
    deccam: Linear,
    config: SmplHeadCfg,
}

impl SmplHead {
    /// The head under `p`.
    pub fn new(p: &Path, config: &SmplHeadCfg) -> Result<Self> {
        let c = &config.transformer_decoder;
        if c.heads <= 0 || c.dim_head <= 0 || config.ief_iters == 0 {
            return Err(PerceptionError::Config {
                model: "hmr2 head",
                message: format!("inconsistent config {config:?}"),
            });
        }
        let pose = ROT6D * (config.num_body_joints + 1);
        let t = p / "transformer";
        Ok(Self {
            init_body_pose: parameter(p, "init_body_pose", &[1, pose])?,
            init_betas: parameter(p, "init_betas", &[1, NUM_BETAS])?,
            init_cam: parameter(p, "init_cam", &[1, CAM_DIM])?,
            // TRANSFORMER_INPUT 'zero': a one-dimensional zero token.
            to_token_embedding: Linear::new(&(&t / "to_token_embedding"), 1, DECODER_DIM, true)?,
            pos_embedding: parameter(&t, "pos_embedding", &[1, 1, DECODER_DIM])?,
            layers: (0..c.depth).map(|i| Layer::new(&(&t / "transformer" / "layers" / i), c)).collect::<Result<_>>()?,
            decpose: Linear::new(&(p / "decpose"), DECODER_DIM, pose, true)?,
            decshape: Linear::new(&(p / "decshape"), DECODER_DIM, NUM_BETAS, true)?,
            deccam: Linear::new(&(p / "deccam"), DECODER_DIM, CAM_DIM, true)?,
            config: config.clone(),
        })
    }

    /// The decoder's output token `[B, 1, 1024]` for features `[B, C, H, W]`, and each layer's
    /// output (`layers` of them) with the embedded input first.
    pub fn decode(&self, features: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, c, h, w) = features.size4()?;
        let context = features.f_reshape([b, c, h * w])?.f_transpose(1, 2)?; // [B, H·W, C], token = row · W + col
        let zero = Tensor::f_zeros([b, 1, 1], (features.kind(), features.device()))?;
        let mut x = self.to_token_embedding.forward(&zero)?.f_add(&self.pos_embedding.f_to_kind(features.kind())?)?; // [B, 1, 1024]
        let mut steps = vec![x.shallow_clone()];
        for layer in &self.layers {
            x = layer.forward(&x, &context)?;
            steps.push(x.shallow_clone());
        }
        Ok((x, steps))
    }

    /// SMPL parameters and camera for backbone features `[B, 1280, 16, 12]`, with every
    /// iteration's.
    pub fn forward(&self, features: &Tensor) -> Result<(SmplParams, IterationParams)> {
        let _span = trace_span!("hmr2_head").entered();
        let b = features.size()[0];
        let kind = features.kind();
        let expand = |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_kind(kind)?.f_expand([b, -1], false)?) };
        let (mut pose, mut betas, mut cam) =
            (expand(&self.init_body_pose)?, expand(&self.init_betas)?, expand(&self.init_cam)?);
        let (mut poses, mut all_betas, mut cams) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.config.ief_iters {
            let (token, _) = self.decode(features)?;
            let token = token.f_squeeze_dim(1)?; // [B, 1024]
            pose = self.decpose.forward(&token)?.f_add(&pose)?;
            betas = self.decshape.forward(&token)?.f_add(&betas)?;
            cam = self.deccam.forward(&token)?.f_add(&cam)?;
            poses.push(pose.shallow_clone());
            all_betas.push(betas.shallow_clone());
            cams.push(cam.shallow_clone());
        }
        let joints = self.config.num_body_joints + 1;
        let rotations = |p: &Tensor| -> Result<Tensor> { Ok(rot6d_to_rotmat(p)?.f_view([b, joints, 3, 3])?) };
        let body_poses = poses
            .iter()
            .map(|p| rotations(p).and_then(|r| Ok(r.f_narrow(1, 1, joints - 1)?)))
            .collect::<Result<Vec<_>>>()?;
        let all = rotations(&pose)?; // [B, joints, 3, 3]
        Ok((
            SmplParams {
                global_orient: all.f_narrow(1, 0, 1)?,
                body_pose: all.f_narrow(1, 1, joints - 1)?,
                betas,
                cam,
            },
            IterationParams {
                body_pose: Tensor::f_cat(&body_poses, 0)?,
                betas: Tensor::f_cat(&all_betas, 0)?,
                cam: Tensor::f_cat(&cams, 0)?,
            },
        ))
    }
}

/// 6-D rotations `[…, 6k]` → rotation matrices `[N, 3, 3]` (N = all groups of 6): the first
/// three values and the next three are two columns, made orthonormal (Gram–Schmidt), the third
/// column their cross product.
pub fn rot6d_to_rotmat(x: &Tensor) -> Result<Tensor> {
    let x = x.f_reshape([-1, 2, 3])?; // [N, 2, 3]: a1, a2
    let normalize = |t: &Tensor| -> Result<Tensor> {
        Ok(t.f_div(&t.f_norm_scalaropt_dim(2, [-1i64], true)?.f_clamp_min(NORMALIZE_EPS)?)?)
    };
    let a1 = x.f_select(1, 0)?; // [N, 3]
    let a2 = x.f_select(1, 1)?;
    let b1 = normalize(&a1)?;
    let dot = b1.f_mul(&a2)?.f_sum_dim_intlist(&[-1i64][..], true, None::<Kind>)?; // [N, 1]
    let b2 = normalize(&a2.f_sub(&dot.f_mul(&b1)?)?)?;
    let b3 = b1.f_linalg_cross(&b2, -1)?;
    Ok(Tensor::f_stack(&[b1, b2, b3], -1)?) // [N, 3, 3], columns b1 b2 b3
}
