//! LART (Rajasegaran et al., "On the Benefits of 3D Pose and Tracking for Human Action
//! Recognition", CVPR 2023; `brjathu/LART`): a transformer over the tokens of up to
//! `max_people` tracked people across `frame_length` frames (3D pose, joints and appearance
//! per token), read out per token as AVA actions, SMPL parameters and a location.
//!
//! - [`transformer`]: `lart_transformer` (encoders, mask token, position embedding,
//!   masked attention, class tokens).
//! - [`smpl_head`]: PHALP's `SMPLHead`, which the model's `smpl_head` is.
//! - [`pose_vector`]: PHALP's helpers that turn a pose estimate into LART's input vectors.
//! - [`ava`]: the 60 AVA actions the head predicts, with their AVA ids and names.
//!
//! The heads are `LART_LitModule.decode`'s (`lart/models/lart.py`). Variable names are the
//! module's `state_dict()` keys; the released Lightning checkpoint prefixes them with
//! `encoder.` (stripped by `ocellus weights import`, as the official demo loader does).

pub mod ava;
pub mod pose_vector;
pub mod smpl_head;
pub mod transformer;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::Path;
use tracing::trace_span;

use self::smpl_head::{HeadOutput, SmplHead};
use self::transformer::{AttentionMasks, Encoder, LartInput, LartTransformer};
use crate::weights::Scope;
use crate::{PerceptionError, Result};

/// The model's name.
pub const LART: &str = "lart";
/// Body joints of SMPL besides the root.
const NUM_BODY_JOINTS: i64 = 23;
/// The location head's output `(tx, ty, tz/200)`.
const LOCATION_DIM: i64 = 3;
/// Focal length LART reports with its location (`FullConfig.EXTRA.FOCAL_LENGTH`).
pub const FOCAL_LENGTH: f64 = 5000.0;
/// State-dict entries the model does not use: the convolutions of an unused bottleneck and
/// the second copy of the position embedding.
pub const UNUSED_KEYS: &[&str] = &["conv_en.", "conv_de.", "pe"];

/// One input feature's encoder widths (`extra_feat.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatCfg {
    /// Input width.
    pub dim: i64,
    /// Hidden width.
    pub mid_dim: i64,
    /// Output width.
    pub en_dim: i64,
}

/// `extra_feat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtraFeat {
    /// Comma-separated features besides the pose (`joints_3D`, `apperance`).
    pub enable: String,
    /// The pose vector (229).
    pub pose_shape: FeatCfg,
    /// The joints vector (135).
    #[serde(rename = "joints_3D")]
    pub joints_3d: FeatCfg,
    /// The appearance feature (2048; the official spelling).
    pub apperance: FeatCfg,
}

impl Default for ExtraFeat {
    fn default() -> Self {
        Self {
            enable: "joints_3D,apperance".into(),
            pose_shape: FeatCfg { dim: 229, mid_dim: 229, en_dim: 128 },
            joints_3d: FeatCfg { dim: 135, mid_dim: 256, en_dim: 128 },
            apperance: FeatCfg { dim: 2048, mid_dim: 512, en_dim: 256 },
        }
    }
}

/// `transformer.conv` (its layers exist in the checkpoint but are unused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvCfg {
    /// Padding.
    pub pad: i64,
    /// Stride.
    pub stride: i64,
}

/// `transformer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerCfg {
    /// Layers.
    pub depth: usize,
    /// Heads.
    pub heads: i64,
    /// Feed-forward width.
    pub mlp_dim: i64,
    /// Width per head.
    pub dim_head: i64,
    /// The unused bottleneck.
    pub conv: ConvCfg,
}

impl Default for TransformerCfg {
    fn default() -> Self {
        Self { depth: 16, heads: 16, mlp_dim: 512, dim_head: 64, conv: ConvCfg { pad: 1, stride: 5 } }
    }
}

/// `ava`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AvaCfg {
    /// AVA's classes.
    pub num_action_classes: i64,
    /// The classes evaluated (the head's outputs with `predict_valid`).
    pub num_valid_action_classes: i64,
    /// Predict only the evaluated classes.
    pub predict_valid: bool,
}

impl Default for AvaCfg {
    fn default() -> Self {
        Self { num_action_classes: 80, num_valid_action_classes: 60, predict_valid: true }
    }
}

/// `kinetics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KineticsCfg {
    /// Kinetics-400's classes.
    pub num_action_classes: i64,
}

impl Default for KineticsCfg {
    fn default() -> Self {
        Self { num_action_classes: 400 }
    }
}

/// LART's configuration (the `configs:` keys of `configs/lart.yaml` the model reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LartConfig {
    /// Token width.
    pub in_feat: i64,
    /// Frames per window (T).
    pub frame_length: i64,
    /// People per window (P; the official demo uses 1, training 5).
    pub max_people: i64,
    /// SMPL / location / AVA heads.
    pub num_smpl_heads: usize,
    /// Input features.
    pub extra_feat: ExtraFeat,
    /// The transformer.
    pub transformer: TransformerCfg,
    /// AVA.
    pub ava: AvaCfg,
    /// Kinetics.
    pub kinetics: KineticsCfg,
}

impl Default for LartConfig {
    fn default() -> Self {
        Self {
            in_feat: 512,
            frame_length: 125,
            max_people: 5,
            num_smpl_heads: 1,
            extra_feat: ExtraFeat::default(),
            transformer: TransformerCfg::default(),
            ava: AvaCfg::default(),
            kinetics: KineticsCfg::default(),
        }
    }
}

impl LartConfig {
    fn enabled(&self, name: &str) -> bool {
        self.extra_feat.enable.split(',').any(|f| f.trim() == name)
    }

    /// Whether the model reads the joints vector.
    pub fn uses_joints(&self) -> bool {
        self.enabled("joints_3D")
    }

    /// Whether the model reads appearance features.
    pub fn uses_apperance(&self) -> bool {
        self.enabled("apperance")
    }

    /// The configuration of a checkpoint trained with `features` besides the pose
    /// (`joints_3D`, `apperance`): `extra_feat.enable` set, and the token width `in_feat`
    /// the concatenated encoders give (the official model requires them equal).
    pub fn with_features(mut self, features: &[&str]) -> Self {
        self.extra_feat.enable = features.join(",");
        let e = &self.extra_feat;
        self.in_feat = e.pose_shape.en_dim
            + if self.uses_joints() { e.joints_3d.en_dim } else { 0 }
            + if self.uses_apperance() { e.apperance.en_dim } else { 0 };
        self
    }

    /// Outputs of the AVA head.
    pub fn ava_outputs(&self) -> i64 {
        if self.ava.predict_valid { self.ava.num_valid_action_classes } else { self.ava.num_action_classes }
    }
}

/// What `decode` reads from the pose tokens, row r = b·T·P + t·P + p.
#[derive(Debug)]
pub struct LartOutput {
    /// The transformer's output `[B, P + T·P, dim]` (class tokens first).
    pub hidden: Tensor,
    /// SMPL parameters of every pose token (`smpl_head.0`).
    pub smpl: HeadOutput,
    /// Location `(tx, ty, tz/200)` `[B·T·P, 3]` (`loca_head.0`).
    pub location: Tensor,
    /// AVA logits `[B·T·P, 60]` (`action_head_ava.0`; a sigmoid gives the scores).
    pub ava_logits: Tensor,
    /// Kinetics logits of the class tokens `[B, P, 400]`.
    pub kinetics_logits: Tensor,
}

/// LART: the token model and its heads (the first of `num_smpl_heads`; the others, if any,
/// are loaded and not read, as in `decode`).
#[derive(Debug)]
pub struct Lart {
    /// `lart_transformer`'s body.
    pub encoder: LartTransformer,
    smpl_head: Vec<SmplHead>,
    loca_head: Vec<Encoder>,
    action_head_ava: Vec<Encoder>,
    action_head_kinetics: Encoder,
    config: LartConfig,
}

impl Lart {
    /// The model under `p`.
    pub fn new(p: &Path, config: &LartConfig) -> Result<Self> {
        if config.num_smpl_heads == 0 || config.transformer.heads <= 0 || config.transformer.dim_head <= 0 {
            return Err(PerceptionError::Config { model: "lart", message: format!("inconsistent config {config:?}") });
        }
        let d = config.in_feat;
        let heads = |name: &str, dims: &[i64]| -> Result<Vec<Encoder>> {
            (0..config.num_smpl_heads).map(|i| Encoder::new(&(p / name / i), dims)).collect()
        };
        Ok(Self {
            encoder: LartTransformer::new(p, config)?,
            smpl_head: (0..config.num_smpl_heads)
                .map(|i| SmplHead::new(&(p / "smpl_head" / i), d, NUM_BODY_JOINTS))
                .collect::<Result<_>>()?,
            loca_head: heads("loca_head", &[d, d, d, LOCATION_DIM])?,
            action_head_ava: heads("action_head_ava", &[d, config.ava_outputs()])?,
            action_head_kinetics: Encoder::new(
                &(p / "action_head_kinetics"),
                &[d, d, d, config.kinetics.num_action_classes],
            )?,
            config: config.clone(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &LartConfig {
        &self.config
    }

    /// The forward with the evaluation masks, and every head.
    pub fn forward(&self, input: &LartInput) -> Result<LartOutput> {
        let masks = AttentionMasks::zero(input)?;
        let hidden = self.encoder.forward(input, &masks)?;
        self.decode(hidden)
    }

    /// The heads on the transformer's output `[B, P + T·P, dim]`.
    pub fn decode(&self, hidden: Tensor) -> Result<LartOutput> {
        let _span = trace_span!("lart_heads").entered();
        let (b, n, d) = hidden.size3()?;
        let p = self.config.max_people;
        let class = hidden.f_narrow(1, 0, p)?; // [B, P, dim]
        let tokens = hidden.f_narrow(1, p, n - p)?.f_reshape([b * (n - p), d])?; // [B·T·P, dim]
        let (smpl, location, ava) = (&self.smpl_head[0], &self.loca_head[0], &self.action_head_ava[0]);
        Ok(LartOutput {
            smpl: smpl.forward(&tokens)?,
            location: location.forward(&tokens)?,
            ava_logits: ava.forward(&tokens)?,
            kinetics_logits: self.action_head_kinetics.forward(&class)?,
            hidden,
        })
    }

    /// `Pose_transformer.readout_pose` on pose tokens `[B, T·P, dim]`: the pose vector
    /// `[B, T, P, 229]` (global orientation 9, body pose 207, betas 10, location 3), the
    /// location `[B, T, P, 3]` and the AVA logits `[B, T, P, 60]`.
    pub fn readout_pose(&self, pose_tokens: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, tp, d) = pose_tokens.size3()?;
        let p = self.config.max_people;
        let t = tp / p;
        let flat = pose_tokens.f_reshape([b * tp, d])?;
        let smpl = self.smpl_head[0].forward(&flat)?;
        let location = self.loca_head[0].forward(pose_tokens)?.f_reshape([b, t, p, LOCATION_DIM])?;
        let ava = self.action_head_ava[0].forward(pose_tokens)?.f_reshape([b, t, p, -1])?;
        let vector = Tensor::f_cat(
            &[
                smpl.global_orient.f_reshape([b, t, p, 9])?,
                smpl.body_pose.f_reshape([b, t, p, 9 * NUM_BODY_JOINTS])?,
                smpl.betas.f_reshape([b, t, p, -1])?,
                location.shallow_clone(),
            ],
            -1,
        )?; // [B, T, P, 229]
        Ok((vector, location, ava))
    }
}

/// The scope of a LART weights file: every key is the model's but the unused ones.
pub const SCOPE: Scope<'static> = Scope::Ignoring(UNUSED_KEYS);

impl crate::model::Model for Lart {
    type Options = LartConfig;
    const FAMILY: &'static str = "LART";

    fn names() -> Vec<&'static str> {
        vec![LART]
    }

    fn build(name: &str, options: &LartConfig, p: &Path) -> Result<Self> {
        if name != LART {
            return Err(crate::model::unknown_model::<Self>(name));
        }
        Self::new(p, options)
    }

    fn scope(&self) -> Scope<'static> {
        SCOPE
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}
