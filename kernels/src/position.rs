//! Position encodings.

use tch::{Device, Kind, Tensor};

use crate::Result;

/// `PositionEmbeddingSine` of SAM 2 / DETR (`sam2/modeling/position_encoding.py`), normalized,
/// scale 2π: a `[1, num_pos_feats, h, w]` map, `cat(pos_y, pos_x)` with sin/cos interleaved.
pub fn sine_2d(num_pos_feats: i64, temperature: f64, h: i64, w: i64, device: Device) -> Result<Tensor> {
    const EPS: f64 = 1e-6;
    let scale = 2.0 * std::f64::consts::PI;
    let npf = num_pos_feats / 2;
    let opts = (Kind::Float, device);
    // Positions 1..=n, divided by (n + eps) and scaled, as the reference computes them.
    let y = Tensor::f_arange_start(1, h + 1, opts)?.f_view([h, 1])?.f_expand([h, w], false)?;
    let x = Tensor::f_arange_start(1, w + 1, opts)?.f_view([1, w])?.f_expand([h, w], false)?;
    let y = y.f_div_scalar(h as f64 + EPS)?.f_mul_scalar(scale)?;
    let x = x.f_div_scalar(w as f64 + EPS)?.f_mul_scalar(scale)?;
    let dim_t = Tensor::f_arange(npf, opts)?.f_floor_divide_scalar(2)?.f_mul_scalar(2)?.f_div_scalar(npf as f64)?;
    let dim_t = Tensor::f_pow_scalar(temperature, &dim_t)?; // [npf]
    let interleave = |e: &Tensor| -> Result<Tensor> {
        let p = e.f_unsqueeze(-1)?.f_div(&dim_t)?; // [h, w, npf]
        let sin = p.f_slice(2, 0, npf, 2)?.f_sin()?;
        let cos = p.f_slice(2, 1, npf, 2)?.f_cos()?;
        Ok(Tensor::f_stack(&[sin, cos], 3)?.f_flatten(2, 3)?) // [h, w, npf]
    };
    let pos = Tensor::f_cat(&[interleave(&y)?, interleave(&x)?], 2)?; // [h, w, 2 * npf]
    Ok(pos.f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_contiguous()?) // [1, C, h, w]
}
