//! HMR 2.0's person crops as PHALP cuts them for it (4D-Humans' tracker): the box grown to
//! the aspect 192:256 about its centre, the square of its longer side, warped to 256×256 with
//! OpenCV's bilinear affine warp (bit-exact here, [`ocellus_kernels::warp`]), normalized with
//! ImageNet statistics in 8-bit units. The backbone then sees the central 192 columns.

use ocellus_kernels::warp::{affine_from_points, warp_affine_linear};
use tch::{Device, Tensor};

use crate::{PerceptionError, Result};

/// Side of the square crop.
pub const CROP_SIDE: usize = 256;
/// The aspect (width, height) a box is grown to (4D-Humans' `expand_bbox_shape`).
pub const CROP_ASPECT: (f64, f64) = (192.0, 256.0);
/// Per-channel mean and standard deviation, 8-bit units (RGB).
const MEAN: [f64; 3] = [123.675, 116.28, 103.53];
const STD: [f64; 3] = [58.395, 57.12, 57.375];

/// The square a box `[x0, y0, x1, y1]` (frame pixels) is cut as: its centre and side, from
/// the box grown to [`CROP_ASPECT`] (the grown box's corners, then its centre and longer
/// side, in that order of operations).
pub fn crop_square(b: [f64; 4]) -> ([f64; 2], f64) {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let (wt, ht) = CROP_ASPECT;
    let (w_new, h_new) = if h / w < ht / wt { (w, (w * ht / wt).max(h)) } else { ((h * wt / ht).max(w), h) };
    let grown = [cx - w_new / 2.0, cy - h_new / 2.0, cx + w_new / 2.0, cy + h_new / 2.0];
    let center = [(grown[2] + grown[0]) / 2.0, (grown[3] + grown[1]) / 2.0];
    (center, (grown[2] - grown[0]).max(grown[3] - grown[1]))
}

/// The affine map of the square `(center, side)` onto the crop, as `cv2.getAffineTransform`
/// gives it from three float32 points (centre, half a side down, half a side right).
pub fn crop_matrix(center: [f64; 2], side: f64) -> Result<[f64; 6]> {
    let half = (side * 0.5) as f32;
    let f = |v: f64| v as f32;
    let src = [
        [f(center[0]), f(center[1])],
        [f(center[0]), f(center[1] + f64::from(half))],
        [f(center[0] + f64::from(half)), f(center[1])],
    ];
    let c = (CROP_SIDE / 2) as f32;
    let s = CROP_SIDE as f32;
    affine_from_points(src, [[c, c], [c, s], [s, c]])
        .ok_or_else(|| PerceptionError::Config { model: "hmr2", message: format!("a box of side {side} has no crop") })
}

/// The 8-bit RGB crop `[256, 256, 3]` of box `b` on a packed RGB frame of `w × h`.
pub fn crop(rgb: &[u8], (w, h): (usize, usize), b: [f64; 4]) -> Result<Vec<u8>> {
    if rgb.len() != w * h * 3 {
        return Err(PerceptionError::Config {
            model: "hmr2",
            message: format!("{} bytes for a {w}x{h} RGB frame", rgb.len()),
        });
    }
    let (center, side) = crop_square(b);
    if !(side.is_finite() && side > 0.0) {
        return Err(PerceptionError::Config { model: "hmr2", message: format!("box {b:?} is empty") });
    }
    let m = crop_matrix(center, side)?;
    Ok(warp_affine_linear(rgb, (w, h, 3), &m, (CROP_SIDE, CROP_SIDE)))
}

/// The model's input `[N, 3, 256, 256]` (f32) of 8-bit RGB crops: (v − mean) / std per channel.
pub fn normalize(crops: &[Vec<u8>], device: Device) -> Result<Tensor> {
    let n = CROP_SIDE * CROP_SIDE;
    let mut data = vec![0f32; crops.len() * 3 * n];
    for (i, crop) in crops.iter().enumerate() {
        for (p, px) in crop.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[(i * 3 + c) * n + p] = ((f64::from(px[c]) - MEAN[c]) / STD[c]) as f32;
            }
        }
    }
    let side = CROP_SIDE as i64;
    Ok(Tensor::f_from_slice(&data)?.f_view([crops.len() as i64, 3, side, side])?.f_to_device(device)?) // [N, 3, 256, 256]
}
