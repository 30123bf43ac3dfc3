//! `MemoryAttention` (`sam2/modeling/memory_attention.py`): the current frame's features
//! attend to themselves and to the memory bank (spatial memories + object pointers), with 2D
//! axial RoPE.

use ocellus_kernels::cache::SizeCache;
use ocellus_kernels::nn::{Activation, LAYER_NORM_EPS, LayerNorm, Linear};
use ocellus_kernels::rope;
use tch::Tensor;
use tch::nn::Path;

use super::transformer::Attention;
use crate::Result;

/// RoPE base of the memory attention.
const ROPE_THETA: f64 = 10_000.0;
/// Scale of the position encoding added to the input.
const INPUT_POS_SCALE: f64 = 0.1;

/// `RoPEAttention`: attention with axial rotary encoding of queries and (spatial) keys.
#[derive(Debug)]
struct RopeAttention {
    attn: Attention,
    head_dim: i64,
    /// Rotary tables per grid side (the reference caches `freqs_cis` too).
    cis: SizeCache,
}

impl RopeAttention {
    /// `k_exclude`: trailing keys without RoPE (object pointers).
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, k_exclude: i64) -> Result<Tensor> {
        let (q, k, v) = self.attn.project(q, k, v)?; // [B, heads, N, hd]
        let nq = q.size()[2];
        let side = (nq as f64).sqrt() as i64;
        let cis = self.cis.get_or_insert(side, side, tch::Kind::ComplexFloat, q.device(), || {
            rope::axial_cis(self.head_dim, side, side, ROPE_THETA, q.device())
        })?;
        let q = rope::rotate(&q, &cis, 1)?;
        let nk = k.size()[2];
        let num_rope = nk - k_exclude;
        let k = if num_rope > 0 {
            let rotated = rope::rotate(&k.f_slice(2, 0, num_rope, 1)?, &cis, num_rope / nq)?;
            if k_exclude > 0 { Tensor::f_cat(&[rotated, k.f_slice(2, num_rope, nk, 1)?], 2)? } else { rotated }
        } else {
            k
        };
        self.attn.attend(&q, &k, &v)
    }
}

/// `MemoryAttentionLayer` (SAM 2.1: no position encoding in self-attention or on queries,
/// position encoding on cross-attention keys).
#[derive(Debug)]
struct MemoryAttentionLayer {
    self_attn: RopeAttention,
    cross_attn_image: RopeAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl MemoryAttentionLayer {
    fn forward(&self, tgt: &Tensor, memory: &Tensor, pos: &Tensor, k_exclude: i64) -> Result<Tensor> {
        let t2 = self.norm1.forward(tgt)?;
        let tgt = tgt.f_add(&self.self_attn.forward(&t2, &t2, &t2, 0)?)?;
        let t2 = self.norm2.forward(&tgt)?;
        let tgt = tgt.f_add(&self.cross_attn_image.forward(&t2, &memory.f_add(pos)?, memory, k_exclude)?)?;
        let t2 = self.norm3.forward(&tgt)?;
        let t2 = self.linear2.forward(&Activation::Relu.forward(&self.linear1.forward(&t2)?)?)?;
        Ok(tgt.f_add(&t2)?)
    }
}

/// The memory attention stack.
#[derive(Debug)]
pub struct MemoryAttention {
    layers: Vec<MemoryAttentionLayer>,
    norm: LayerNorm,
}

impl MemoryAttention {
    /// Builds the stack under `p` (`memory_attention`): `d_model` 256, memory channels
    /// `kv_dim` 64, 4 layers, feed-forward 2048, 1 head.
    pub fn new(p: &Path, d_model: i64, kv_dim: i64, num_layers: usize, dim_feedforward: i64) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                let lp = p / "layers" / i;
                let ln = |n: &str| LayerNorm::new(&(&lp / n), d_model, LAYER_NORM_EPS);
                Ok(MemoryAttentionLayer {
                    self_attn: RopeAttention {
                        attn: Attention::new(&(&lp / "self_attn"), d_model, 1, 1, None)?,
                        head_dim: d_model,
                        cis: SizeCache::default(),
                    },
                    cross_attn_image: RopeAttention {
                        attn: Attention::new(&(&lp / "cross_attn_image"), d_model, 1, 1, Some(kv_dim))?,
                        head_dim: d_model,
                        cis: SizeCache::default(),
                    },
                    linear1: Linear::new(&(&lp / "linear1"), d_model, dim_feedforward, true)?,
                    linear2: Linear::new(&(&lp / "linear2"), dim_feedforward, d_model, true)?,
                    norm1: ln("norm1")?,
                    norm2: ln("norm2")?,
                    norm3: ln("norm3")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, norm: LayerNorm::new(&(p / "norm"), d_model, LAYER_NORM_EPS)? })
    }

    /// `curr`/`curr_pos` `[HW, B, C]`, `memory`/`memory_pos` `[M, B, 64]`, the last
    /// `num_obj_ptr_tokens` memories being object pointers → `[HW, B, C]`.
    pub fn forward(
        &self,
        curr: &Tensor,
        curr_pos: &Tensor,
        memory: &Tensor,
        memory_pos: &Tensor,
        num_obj_ptr_tokens: i64,
    ) -> Result<Tensor> {
        let output = curr.f_add(&curr_pos.f_mul_scalar(INPUT_POS_SCALE)?)?;
        // Batch first: [B, N, C].
        let mut output = output.f_transpose(0, 1)?;
        let memory = memory.f_transpose(0, 1)?;
        let memory_pos = memory_pos.f_transpose(0, 1)?;
        for layer in &self.layers {
            output = layer.forward(&output, &memory, &memory_pos, num_obj_ptr_tokens)?;
        }
        Ok(self.norm.forward(&output)?.f_transpose(0, 1)?)
    }
}
