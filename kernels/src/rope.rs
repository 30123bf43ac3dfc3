//! 2D axial rotary position encoding of SAM 2's memory attention
//! (`sam2/modeling/position_encoding.py`: `compute_axial_cis`, `apply_rotary_enc`).
//!
//! Channels are paired `(2k, 2k+1)` as complex numbers; the first half of the pairs rotate
//! with the token's x, the second half with its y. Applied in fp32.

use tch::{Device, Kind, Tensor};

use crate::Result;

/// `compute_axial_cis(dim, end_x, end_y, theta)`: complex `[end_x * end_y, dim / 2]`.
pub fn axial_cis(dim: i64, end_x: i64, end_y: i64, theta: f64, device: Device) -> Result<Tensor> {
    let exps = Tensor::f_arange_start_step(0, dim, 4, (Kind::Int64, device))?.f_slice(0, 0, dim / 4, 1)?;
    let freqs = |e: &Tensor| -> Result<Tensor> {
        Ok(Tensor::f_pow_scalar(theta, &e.f_to_kind(Kind::Float)?.f_div_scalar(dim as f64)?)?.f_reciprocal()?)
    };
    let (freqs_x, freqs_y) = (freqs(&exps)?, freqs(&exps)?);
    let t = Tensor::f_arange(end_x * end_y, (Kind::Float, device))?;
    let t_x = t.f_remainder(end_x)?.f_to_kind(Kind::Float)?;
    let t_y = t.f_div_scalar_mode(end_x, "floor")?.f_to_kind(Kind::Float)?;
    let fx = t_x.f_outer(&freqs_x)?;
    let fy = t_y.f_outer(&freqs_y)?;
    let cis_x = Tensor::f_polar(&fx.f_ones_like()?, &fx)?;
    let cis_y = Tensor::f_polar(&fy.f_ones_like()?, &fy)?;
    Ok(Tensor::f_cat(&[cis_x, cis_y], -1)?)
}

/// Rotates `x` `[B, heads, N, C]` by `cis` `[N / repeat, C / 2]`, the frequencies repeated
/// `repeat` times along the tokens (memory keys span several frames).
pub fn rotate(x: &Tensor, cis: &Tensor, repeat: i64) -> Result<Tensor> {
    let size = x.size();
    let mut pairs = size.clone();
    let last = pairs.pop().unwrap_or(0);
    pairs.extend([last / 2, 2]);
    let xc = x.f_to_kind(Kind::Float)?.f_reshape(pairs.as_slice())?.f_view_as_complex()?; // [B, h, N, C/2]
    let (n, c) = (cis.size()[0], cis.size()[1]);
    let cis = cis.f_view([1, 1, n, c])?;
    let cis =
        if repeat > 1 { cis.f_unsqueeze(2)?.f_expand([-1, -1, repeat, -1, -1], false)?.f_flatten(2, 3)? } else { cis };
    let out = xc.f_mul(&cis)?.f_view_as_real()?.f_flatten(3, -1)?;
    Ok(out.f_to_kind(x.kind())?)
}

/// Llama 3's RoPE frequency scaling (`apply_scaling` of llama-models, `rope_type = "llama3"`
/// of transformers), with the factor read from the model's config (32 for Llama 3.2 1B/3B,
/// 8 for 3.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`: how much the low frequencies are slowed.
    pub factor: f64,
    /// `low_freq_factor` (1).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192).
    pub original_max_position_embeddings: f64,
}

/// The inverse frequencies `1 / theta^(2i / head_dim)` (fp32, `[head_dim / 2]`), scaled for
/// Llama 3 when `scaling` is given, computed as transformers' `_compute_llama3_parameters`.
pub fn llama3_inv_freq(head_dim: i64, theta: f64, scaling: Option<Llama3Scaling>, device: Device) -> Result<Tensor> {
    let exps = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?.f_to_kind(Kind::Float)?;
    let inv_freq = Tensor::f_pow_scalar(theta, &exps.f_div_scalar(head_dim as f64)?)?.f_reciprocal()?;
    let Some(s) = scaling else { return Ok(inv_freq) };
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = inv_freq.f_reciprocal()?.f_mul_scalar(2.0 * std::f64::consts::PI)?;
    // Long wavelengths are slowed by `factor`; short ones are kept; the band between blends.
    let slowed = inv_freq.f_div_scalar(s.factor)?;
    let scaled = inv_freq.f_where_self(&wavelen.f_le(low_wavelen)?, &slowed)?;
    let smooth = wavelen
        .f_reciprocal()?
        .f_mul_scalar(s.original_max_position_embeddings)?
        .f_sub_scalar(s.low_freq_factor)?
        .f_div_scalar(s.high_freq_factor - s.low_freq_factor)?;
    let blended = smooth.f_rsub_scalar(1.0)?.f_mul(&scaled)?.f_div_scalar(s.factor)?.f_add(&smooth.f_mul(&scaled)?)?;
    let medium = wavelen.f_ge(high_wavelen)?.f_logical_and(&wavelen.f_le(low_wavelen)?)?;
    Ok(blended.f_where_self(&medium, &scaled)?)
}

/// `cos` and `sin` `[B, T, head_dim]` (fp32) for integer `positions` `[B, T]`, halves
/// repeated as transformers' `LlamaRotaryEmbedding` does (`cat(freqs, freqs)`).
pub fn half_rotation_tables(inv_freq: &Tensor, positions: &Tensor) -> Result<(Tensor, Tensor)> {
    let freqs = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?.f_mul(inv_freq)?; // [B, T, hd/2]
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?; // [B, T, hd]
    Ok((emb.f_cos()?, emb.f_sin()?))
}

/// `x * cos + rotate_half(x) * sin` for `x` `[B, heads, T, hd]` and tables `[B, T, hd]`
/// already in `x`'s dtype.
pub fn rotate_half_apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let (x1, x2) = (x.f_narrow(-1, 0, half)?, x.f_narrow(-1, half, half)?);
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    let (cos, sin) = (cos.f_unsqueeze(1)?, sin.f_unsqueeze(1)?); // [B, 1, T, hd]
    Ok(x.f_mul(&cos)?.f_add(&rotated.f_mul(&sin)?)?)
}
