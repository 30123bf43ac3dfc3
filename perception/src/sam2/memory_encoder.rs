//! `MemoryEncoder` (`sam2/modeling/memory_encoder.py`): a frame's features fused with its
//! (scaled) mask into a 64-channel memory, with its sine position encoding.

use ocellus_kernels::cache::SizeCache;
use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm2d, Linear, parameter};
use ocellus_kernels::position::sine_2d;
use tch::Tensor;
use tch::nn::Path;

use crate::Result;

/// LayerNorm2d epsilon.
const NORM_EPS: f64 = 1e-6;
/// Temperature of the memory position encoding.
const SINE_TEMPERATURE: f64 = 10_000.0;

/// `CXBlock` (ConvNeXt block, linear pointwise convolutions).
#[derive(Debug)]
struct CxBlock {
    dwconv: Conv,
    norm: LayerNorm2d,
    pwconv1: Linear,
    pwconv2: Linear,
    gamma: Tensor, // [C]
}

impl CxBlock {
    fn new(p: &Path, dim: i64) -> Result<Self> {
        Ok(Self {
            dwconv: Conv::new(
                &(p / "dwconv"),
                dim,
                dim,
                ConvShape { groups: dim, ..ConvShape::new(&[7, 7], &[1, 1], &[3, 3]) },
            )?,
            norm: LayerNorm2d::new(&(p / "norm"), dim, NORM_EPS)?,
            pwconv1: Linear::new(&(p / "pwconv1"), dim, 4 * dim, true)?,
            pwconv2: Linear::new(&(p / "pwconv2"), 4 * dim, dim, true)?,
            gamma: parameter(p, "gamma", &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.norm.forward(&self.dwconv.forward(x)?)?.f_permute([0, 2, 3, 1])?; // [N, H, W, C]
        let y = self.pwconv2.forward(&Activation::Gelu.forward(&self.pwconv1.forward(&y)?)?)?;
        let y = self.gamma.f_mul(&y)?.f_permute([0, 3, 1, 2])?; // [N, C, H, W]
        Ok(x.f_add(&y)?)
    }
}

/// The memory encoder.
#[derive(Debug)]
pub struct MemoryEncoder {
    downsampler: Vec<(Conv, LayerNorm2d)>,
    downsampler_out: Conv,
    pix_feat_proj: Conv,
    fuser: Vec<CxBlock>,
    out_proj: Conv,
    out_dim: i64,
    /// Sine encodings per size (as the reference's `PositionEmbeddingSine` caches).
    pos_cache: SizeCache,
}

impl MemoryEncoder {
    /// Builds the encoder under `p` (`memory_encoder`): mask downsampling ×16 in four k3 s2
    /// steps (1→4→16→64→256 channels), two CX blocks, output `out_dim` channels.
    pub fn new(p: &Path, in_dim: i64, out_dim: i64) -> Result<Self> {
        let enc = p / "mask_downsampler" / "encoder";
        let mut downsampler = Vec::new();
        let mut chans = 1;
        for i in 0..4 {
            let out = chans * 4;
            downsampler.push((
                Conv::new(&(&enc / (3 * i)), chans, out, ConvShape::new(&[3, 3], &[2, 2], &[1, 1]))?,
                LayerNorm2d::new(&(&enc / (3 * i + 1)), out, NORM_EPS)?,
            ));
            chans = out;
        }
        Ok(Self {
            downsampler,
            downsampler_out: Conv::new(&(&enc / 12), chans, in_dim, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))?,
            pix_feat_proj: Conv::new(
                &(p / "pix_feat_proj"),
                in_dim,
                in_dim,
                ConvShape::new(&[1, 1], &[1, 1], &[0, 0]),
            )?,
            fuser: (0..2).map(|i| CxBlock::new(&(p / "fuser" / "layers" / i), in_dim)).collect::<Result<Vec<_>>>()?,
            out_proj: Conv::new(&(p / "out_proj"), in_dim, out_dim, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))?,
            out_dim,
            pos_cache: SizeCache::default(),
        })
    }

    /// `pix_feat` `[B, 256, 64, 64]`, `masks` `[B, 1, 1024, 1024]` already scaled (sigmoid
    /// skipped) → features `[B, 64, 64, 64]`. Their position encoding depends on the size
    /// only ([`MemoryEncoder::pos_enc`]); the tracker computes it once.
    pub fn forward(&self, pix_feat: &Tensor, masks: &Tensor) -> Result<Tensor> {
        let mut m = masks.shallow_clone();
        for (conv, norm) in &self.downsampler {
            m = Activation::Gelu.forward(&norm.forward(&conv.forward(&m)?)?)?;
        }
        let m = self.downsampler_out.forward(&m)?;
        let mut x = self.pix_feat_proj.forward(pix_feat)?.f_add(&m)?;
        for block in &self.fuser {
            x = block.forward(&x)?;
        }
        Ok(self.out_proj.forward(&x)?)
    }

    /// The position encoding of `h × w` memory features, `[1, out_dim, h, w]` (cached).
    pub fn pos_enc(&self, h: i64, w: i64, kind: tch::Kind, device: tch::Device) -> Result<Tensor> {
        Ok(self
            .pos_cache
            .get_or_insert(h, w, kind, device, || sine_2d(self.out_dim, SINE_TEMPERATURE, h, w, device))?)
    }
}
