//! HieraDet, the SAM 2 image trunk, with its FPN neck: exact to the official
//! `sam2/modeling/backbones/{hieradet,image_encoder,utils}.py` (facebookresearch/sam2).
//!
//! Unlike Hiera, tensors stay `[B, H, W, C]`; attention is windowed (zero-padded to a
//! multiple of the window, padded tokens take part) or global per block, and the position
//! embedding is "absolute-win": a bicubic-interpolated background embedding plus a tiled
//! window embedding. The neck adds 1×1 laterals, a nearest top-down path on the levels of
//! `fpn_top_down_levels`, and 2D sine position encodings. Variable names are the SAM 2
//! checkpoint keys under `image_encoder.` (`trunk.pos_embed`, `neck.convs.0.conv`, ...).

use ocellus_kernels::cache::SizeCache;
use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm, Linear, Mlp, sdpa};
use ocellus_kernels::position::sine_2d;
use ocellus_kernels::window;
use serde::{Deserialize, Serialize};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// LayerNorm epsilon of the trunk.
const NORM_EPS: f64 = 1e-6;
/// Temperature of the neck's sine position encoding.
const SINE_TEMPERATURE: f64 = 10_000.0;

/// `trunk` of the official config (`sam2.modeling.backbones.hieradet.Hiera`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkConfig {
    /// Width of the first stage.
    pub embed_dim: i64,
    /// Heads of the first stage.
    pub num_heads: i64,
    /// Stage transitions that pool.
    pub q_pool: usize,
    /// Pooling stride.
    pub q_stride: [i64; 2],
    /// Blocks per stage.
    pub stages: Vec<usize>,
    /// Width multiplier per transition.
    pub dim_mul: f64,
    /// Head multiplier per transition.
    pub head_mul: f64,
    /// Size of the interpolated background position embedding.
    pub window_pos_embed_bkg_spatial_size: [i64; 2],
    /// Window size per stage (the first also sizes the window embedding).
    pub window_spec: Vec<i64>,
    /// Blocks with global attention.
    pub global_att_blocks: Vec<usize>,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            embed_dim: 96,
            num_heads: 1,
            q_pool: 3,
            q_stride: [2, 2],
            stages: vec![2, 3, 16, 3],
            dim_mul: 2.0,
            head_mul: 2.0,
            window_pos_embed_bkg_spatial_size: [14, 14],
            window_spec: vec![8, 4, 14, 7],
            global_att_blocks: vec![12, 16, 20],
        }
    }
}

/// `neck` of the official config (`FpnNeck`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NeckConfig {
    /// Output width.
    pub d_model: i64,
    /// Trunk widths, lowest resolution first.
    pub backbone_channel_list: Vec<i64>,
    /// Levels that receive the top-down path.
    pub fpn_top_down_levels: Vec<usize>,
    /// Top-down interpolation (`nearest`; `bilinear` also supported).
    pub fpn_interp_model: String,
    /// `sum` or `avg`.
    pub fuse_type: String,
}

impl Default for NeckConfig {
    fn default() -> Self {
        Self {
            d_model: 256,
            backbone_channel_list: vec![896, 448, 224, 112],
            fpn_top_down_levels: vec![2, 3],
            fpn_interp_model: "nearest".into(),
            fuse_type: "sum".into(),
        }
    }
}

/// `image_encoder` of the official config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageEncoderConfig {
    /// Levels dropped from the lowest resolution end.
    pub scalp: usize,
    /// The trunk.
    pub trunk: TrunkConfig,
    /// The neck.
    pub neck: NeckConfig,
}

impl Default for ImageEncoderConfig {
    fn default() -> Self {
        Self { scalp: 1, trunk: TrunkConfig::default(), neck: NeckConfig::default() }
    }
}

impl ImageEncoderConfig {
    /// The `image_encoder` of `sam2.1_hiera_{tiny,small,base_plus,large}`.
    pub fn by_name(name: &str) -> Option<Self> {
        let (trunk, channels) = match name {
            "sam2.1_hiera_tiny" => (
                TrunkConfig {
                    stages: vec![1, 2, 7, 2],
                    global_att_blocks: vec![5, 7, 9],
                    window_pos_embed_bkg_spatial_size: [7, 7],
                    ..TrunkConfig::default()
                },
                vec![768, 384, 192, 96],
            ),
            "sam2.1_hiera_small" => (
                TrunkConfig {
                    stages: vec![1, 2, 11, 2],
                    global_att_blocks: vec![7, 10, 13],
                    window_pos_embed_bkg_spatial_size: [7, 7],
                    ..TrunkConfig::default()
                },
                vec![768, 384, 192, 96],
            ),
            "sam2.1_hiera_base_plus" => {
                (TrunkConfig { embed_dim: 112, num_heads: 2, ..TrunkConfig::default() }, vec![896, 448, 224, 112])
            }
            "sam2.1_hiera_large" => (
                TrunkConfig {
                    embed_dim: 144,
                    num_heads: 2,
                    stages: vec![2, 6, 36, 4],
                    global_att_blocks: vec![23, 33, 43],
                    window_pos_embed_bkg_spatial_size: [7, 7],
                    window_spec: vec![8, 4, 16, 8],
                    ..TrunkConfig::default()
                },
                vec![1152, 576, 288, 144],
            ),
            _ => return None,
        };
        Some(Self { scalp: 1, trunk, neck: NeckConfig { backbone_channel_list: channels, ..NeckConfig::default() } })
    }

    /// Names accepted by [`ImageEncoderConfig::by_name`].
    pub const NAMES: [&'static str; 4] =
        ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"];
}

/// `MultiScaleAttention`: attention over `[B, H, W, C]` with an optional 2×2 query max-pool.
#[derive(Debug)]
struct MultiScaleAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
    q_stride: Option<[i64; 2]>,
}

fn max_pool(x: &Tensor, stride: [i64; 2]) -> Result<Tensor> {
    // [B, H, W, C] → [B, C, H, W] → pool → [B, H', W', C]
    Ok(x.f_permute([0, 3, 1, 2])?.f_max_pool2d(stride, stride, [0, 0], [1, 1], false)?.f_permute([0, 2, 3, 1])?)
}

impl MultiScaleAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.size4()?;
        let qkv = self.qkv.forward(x)?.f_reshape([b, h * w, 3, self.num_heads, -1])?; // [B, HW, 3, heads, hd]
        let parts = qkv.f_unbind(2)?; // 3 × [B, HW, heads, hd]
        let (mut q, k, v) = (parts[0].shallow_clone(), &parts[1], &parts[2]);
        let (mut h, mut w) = (h, w);
        if let Some(stride) = self.q_stride {
            q = max_pool(&q.f_reshape([b, h, w, -1])?, stride)?;
            (h, w) = (q.size()[1], q.size()[2]);
            q = q.f_reshape([b, h * w, self.num_heads, -1])?;
        }
        let x = sdpa(&q.f_transpose(1, 2)?, &k.f_transpose(1, 2)?, &v.f_transpose(1, 2)?)?; // [B, heads, HW', hd]
        let x = x.f_transpose(1, 2)?.f_reshape([b, h, w, -1])?;
        Ok(self.proj.forward(&x)?)
    }
}

/// `MultiScaleBlock`.
#[derive(Debug)]
struct MultiScaleBlock {
    norm1: LayerNorm,
    attn: MultiScaleAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    proj: Option<Linear>,
    window_size: i64,
}

impl MultiScaleBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut shortcut = x.shallow_clone(); // [B, H, W, C]
        let x = self.norm1.forward(x)?;
        if let Some(proj) = &self.proj {
            shortcut = proj.forward(&x)?;
            if let Some(stride) = self.attn.q_stride {
                shortcut = max_pool(&shortcut, stride)?;
            }
        }
        let (mut h, mut w) = (x.size()[1], x.size()[2]);
        let mut window_size = self.window_size;
        let (mut x, mut pad_hw) = if window_size > 0 { window::partition(&x, window_size)? } else { (x, (h, w)) };
        x = self.attn.forward(&x)?;
        if let Some(stride) = self.attn.q_stride {
            // Shapes after pooling.
            window_size = self.window_size / stride[0];
            (h, w) = (shortcut.size()[1], shortcut.size()[2]);
            let pad_h = (window_size - h % window_size) % window_size;
            let pad_w = (window_size - w % window_size) % window_size;
            pad_hw = (h + pad_h, w + pad_w);
        }
        if self.window_size > 0 {
            x = window::unpartition(&x, window_size, pad_hw, (h, w))?;
        }
        // Residuals added in place into the freshly computed branch (a + b == b + a exactly),
        // saving a full-size allocation per add.
        let _ = x.f_add_(&shortcut)?;
        let mut y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        let _ = y.f_add_(&x)?;
        Ok(y)
    }
}

/// The HieraDet trunk.
#[derive(Debug)]
pub struct Trunk {
    /// `_get_pos_embed` results per `(h, w)`: weights do not change after loading.
    pos_cache: SizeCache,
    patch_embed: Conv,
    pos_embed: Tensor,        // [1, C, bkg_h, bkg_w]
    pos_embed_window: Tensor, // [1, C, ws0, ws0]
    blocks: Vec<MultiScaleBlock>,
    stage_ends: Vec<usize>,
}

impl Trunk {
    /// Builds the trunk under `p` (`…trunk`).
    pub fn new(p: &Path, c: &TrunkConfig) -> Result<Self> {
        if c.stages.len() != c.window_spec.len() || c.q_pool >= c.stages.len() || c.stages.contains(&0) {
            return Err(PerceptionError::Config {
                model: "hieradet",
                message: format!("inconsistent trunk config {c:?}"),
            });
        }
        let stage_ends: Vec<usize> = (1..=c.stages.len()).map(|i| c.stages[..i].iter().sum::<usize>() - 1).collect();
        let q_pool_blocks: Vec<usize> =
            stage_ends[..stage_ends.len() - 1].iter().map(|e| e + 1).take(c.q_pool).collect();
        let patch_embed =
            Conv::new(&(p / "patch_embed" / "proj"), 3, c.embed_dim, ConvShape::new(&[7, 7], &[4, 4], &[3, 3]))?;
        let [bh, bw] = c.window_pos_embed_bkg_spatial_size;
        let pos_embed = p.f_var("pos_embed", &[1, c.embed_dim, bh, bw], Init::Const(0.0))?;
        let ws0 = c.window_spec[0];
        let pos_embed_window = p.f_var("pos_embed_window", &[1, c.embed_dim, ws0, ws0], Init::Const(0.0))?;
        let (mut embed_dim, mut num_heads, mut cur_stage) = (c.embed_dim, c.num_heads, 1usize);
        let mut blocks = Vec::new();
        for i in 0..c.stages.iter().sum() {
            let mut dim_out = embed_dim;
            // The window of the previous stage applies to a transition block (the "lag").
            let mut window_size = c.window_spec[cur_stage - 1];
            if c.global_att_blocks.contains(&i) {
                window_size = 0;
            }
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = (embed_dim as f64 * c.dim_mul) as i64;
                num_heads = (num_heads as f64 * c.head_mul) as i64;
                cur_stage += 1;
            }
            let bp = p / "blocks" / i;
            blocks.push(MultiScaleBlock {
                norm1: LayerNorm::new(&(&bp / "norm1"), embed_dim, NORM_EPS)?,
                attn: MultiScaleAttention {
                    qkv: Linear::new(&(&bp / "attn" / "qkv"), embed_dim, dim_out * 3, true)?,
                    proj: Linear::new(&(&bp / "attn" / "proj"), dim_out, dim_out, true)?,
                    num_heads,
                    q_stride: q_pool_blocks.contains(&i).then_some(c.q_stride),
                },
                norm2: LayerNorm::new(&(&bp / "norm2"), dim_out, NORM_EPS)?,
                mlp: Mlp::sam(&(&bp / "mlp"), dim_out, dim_out * 4, dim_out, 2, Activation::Gelu)?,
                proj: if dim_out != embed_dim {
                    Some(Linear::new(&(&bp / "proj"), embed_dim, dim_out, true)?)
                } else {
                    None
                },
                window_size,
            });
            embed_dim = dim_out;
        }
        Ok(Self { pos_cache: SizeCache::default(), patch_embed, pos_embed, pos_embed_window, blocks, stage_ends })
    }

    /// `_get_pos_embed`: bicubic background (no corner alignment, no antialias) plus the
    /// tiled window embedding, as `[1, h, w, C]`.
    fn pos_embed(&self, h: i64, w: i64) -> Result<Tensor> {
        self.pos_cache
            .get_or_insert(h, w, self.pos_embed.kind(), self.pos_embed.device(), || self.compute_pos_embed(h, w))
    }

    /// Forgets cached position embeddings (after the weights change).
    pub fn clear_cache(&self) {
        self.pos_cache.clear();
    }

    fn compute_pos_embed(&self, h: i64, w: i64) -> Result<Tensor> {
        let bkg = self.pos_embed.f_upsample_bicubic2d([h, w], false, None, None)?; // [1, C, h, w]
        let ws = self.pos_embed_window.size();
        let tiled = self.pos_embed_window.f_tile([1, 1, h / ws[2], w / ws[3]])?;
        Ok(bkg.f_add(&tiled)?.f_permute([0, 2, 3, 1])?)
    }

    /// Runs the trunk on `[B, 3, H, W]`; returns every stage's output `[B, C_i, H_i, W_i]`,
    /// highest resolution first.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let _span = trace_span!("hieradet_trunk").entered();
        let x = self.patch_embed.forward(x)?.f_permute([0, 2, 3, 1])?; // [B, H/4, W/4, C]
        let (h, w) = (x.size()[1], x.size()[2]);
        let mut x = x.f_add(&self.pos_embed(h, w)?)?;
        let mut outputs = Vec::with_capacity(self.stage_ends.len());
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if self.stage_ends.contains(&i) {
                outputs.push(x.f_permute([0, 3, 1, 2])?); // [B, C, H, W]
            }
        }
        Ok(outputs)
    }
}

/// The FPN neck.
#[derive(Debug)]
pub struct FpnNeck {
    /// Sine encodings per `(h, w, kind)` (they depend on the size only, as the reference caches).
    pe_cache: SizeCache,
    convs: Vec<Conv>,
    config: NeckConfig,
}

impl FpnNeck {
    /// Builds the neck under `p` (`…neck`).
    pub fn new(p: &Path, c: &NeckConfig) -> Result<Self> {
        if !["nearest", "bilinear"].contains(&c.fpn_interp_model.as_str())
            || !["sum", "avg"].contains(&c.fuse_type.as_str())
        {
            return Err(PerceptionError::Config { model: "fpn_neck", message: format!("unsupported {c:?}") });
        }
        let convs = c
            .backbone_channel_list
            .iter()
            .enumerate()
            .map(|(i, &dim)| {
                Conv::new(&(p / "convs" / i / "conv"), dim, c.d_model, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { pe_cache: SizeCache::default(), convs, config: c.clone() })
    }

    fn sine(&self, h: i64, w: i64, like: &Tensor) -> Result<Tensor> {
        self.pe_cache.get_or_insert(h, w, like.kind(), like.device(), || {
            Ok(sine_2d(self.config.d_model, SINE_TEMPERATURE, h, w, like.device())?.f_to_kind(like.kind())?)
        })
    }

    /// Features and position encodings per level, highest resolution first.
    pub fn forward(&self, xs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let n = self.convs.len();
        if xs.len() != n {
            return Err(PerceptionError::Config {
                model: "fpn_neck",
                message: format!("{} levels for {n} convs", xs.len()),
            });
        }
        let mut out: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut pos: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let mut prev: Option<Tensor> = None;
        for i in (0..n).rev() {
            let lateral = self.convs[n - 1 - i].forward(&xs[i])?;
            let features = match prev.as_ref().filter(|_| self.config.fpn_top_down_levels.contains(&i)) {
                Some(p) => {
                    let (h, w) = (p.size()[2], p.size()[3]);
                    let p32 = p.f_to_kind(Kind::Float)?;
                    let top_down = if self.config.fpn_interp_model == "nearest" {
                        p32.f_upsample_nearest2d([2 * h, 2 * w], Some(2.0), Some(2.0))?
                    } else {
                        p32.f_upsample_bilinear2d([2 * h, 2 * w], false, Some(2.0), Some(2.0))?
                    };
                    let fused = lateral.f_add(&top_down)?;
                    if self.config.fuse_type == "avg" { fused.f_div_scalar(2.0)? } else { fused }
                }
                None => lateral,
            };
            let (b, _, h, w) = features.size4()?;
            pos[i] = Some(self.sine(h, w, &features)?.f_expand([b, -1, -1, -1], false)?);
            out[i] = Some(features.shallow_clone());
            prev = Some(features);
        }
        Ok((out.into_iter().flatten().collect(), pos.into_iter().flatten().collect()))
    }
}

/// What the image encoder returns (`ImageEncoder.forward`).
#[derive(Debug)]
pub struct ImageEncoderOutput {
    /// The lowest-resolution kept level (`backbone_fpn[-1]`).
    pub vision_features: Tensor,
    /// Position encodings of the kept levels.
    pub vision_pos_enc: Vec<Tensor>,
    /// The kept FPN levels, highest resolution first.
    pub backbone_fpn: Vec<Tensor>,
}

/// SAM 2's image encoder: HieraDet trunk + FPN neck, `scalp` lowest levels dropped.
#[derive(Debug)]
pub struct ImageEncoder {
    /// The trunk.
    pub trunk: Trunk,
    /// The neck.
    pub neck: FpnNeck,
    scalp: usize,
}

impl ImageEncoder {
    /// Builds the encoder under `p` (`image_encoder` for SAM 2 checkpoint keys).
    pub fn new(p: &Path, c: &ImageEncoderConfig) -> Result<Self> {
        let trunk = Trunk::new(&(p / "trunk"), &c.trunk)?;
        let neck = FpnNeck::new(&(p / "neck"), &c.neck)?;
        Ok(Self { trunk, neck, scalp: c.scalp })
    }

    /// The output for kept levels `backbone_fpn` (highest resolution first) computed elsewhere
    /// (by an export of this encoder in ONNX Runtime): the neck's position encodings added.
    pub fn output_from_levels(&self, backbone_fpn: Vec<Tensor>) -> Result<ImageEncoderOutput> {
        let vision_pos_enc = backbone_fpn
            .iter()
            .map(|features| {
                let (b, _, h, w) = features.size4()?; // [B, C, H, W]
                Ok(self.neck.sine(h, w, features)?.f_expand([b, -1, -1, -1], false)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let vision_features = backbone_fpn
            .last()
            .map(Tensor::shallow_clone)
            .ok_or_else(|| PerceptionError::Config { model: "image_encoder", message: "no levels".into() })?;
        Ok(ImageEncoderOutput { vision_features, vision_pos_enc, backbone_fpn })
    }

    /// Runs trunk and neck on `[B, 3, 1024, 1024]` (any size divisible by 32 works).
    pub fn forward(&self, x: &Tensor) -> Result<ImageEncoderOutput> {
        let _span = trace_span!("sam2_image_encoder").entered();
        let (mut features, mut pos) = self.neck.forward(&self.trunk.forward(x)?)?;
        let keep = features.len().saturating_sub(self.scalp);
        features.truncate(keep);
        pos.truncate(keep);
        let vision_features = features.last().map(Tensor::shallow_clone).ok_or_else(|| PerceptionError::Config {
            model: "image_encoder",
            message: "scalp removes every level".into(),
        })?;
        Ok(ImageEncoderOutput { vision_features, vision_pos_enc: pos, backbone_fpn: features })
    }
}
