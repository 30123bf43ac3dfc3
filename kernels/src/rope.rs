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
