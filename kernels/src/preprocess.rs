//! Frame preprocessing: strided camera bytes → normalized `[1, 3, H, W]` float tensors.
//!
//! Camera buffers are rarely tightly packed: GStreamer pads RGB rows to a multiple of four
//! bytes and NV12 planes to the decoder's alignment. The layout ([`FrameLayout`], from
//! `ocellus-wire`) carries a stride and an offset per plane, and rows are cut to their visible
//! width on the device, after the one host→tensor copy that libtorch needs.

use tch::{Device, Kind, Tensor};
use tracing::trace_span;

pub use ocellus_wire::{FrameLayout, PixelFormat, YuvMatrix};

use crate::{KernelError, Result, resample};

/// Largest value of an 8-bit sample, as a float.
const U8_MAX: f64 = 255.0;

/// Per-channel normalization applied to `[0, 1]` RGB: `(x - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Channel means (R, G, B).
    pub mean: [f64; 3],
    /// Channel standard deviations (R, G, B).
    pub std: [f64; 3],
}

impl Normalization {
    /// ImageNet statistics, used by Hiera, SAM 2 and most Meta vision models.
    pub const IMAGENET: Self = Self { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// The statistics of Hiera's video example (`examples/inference.ipynb`: Kinetics means,
    /// and a blue deviation of 0.255 where the usual value is 0.225; the official numbers).
    pub const HIERA_VIDEO: Self = Self { mean: [0.45, 0.45, 0.45], std: [0.225, 0.225, 0.255] };
    /// CLIP / MetaCLIP statistics.
    pub const CLIP: Self =
        Self { mean: [0.481_454_66, 0.457_827_5, 0.408_210_73], std: [0.268_629_54, 0.261_302_58, 0.275_777_11] };

    /// `(x - mean) / std` per channel of `[B, 3, H, W]`, on `x`'s device.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let mean =
            Tensor::f_from_slice(&self.mean)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&self.std)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        Ok(x.f_sub(&mean)?.f_div(&std)?)
    }
}

/// One plane as a `[rows, cols]` u8 tensor on `device`, cut to its visible bytes.
fn plane_tensor(data: &[u8], layout: &FrameLayout, plane: usize, device: Device) -> Result<Tensor> {
    let rows = layout.format.plane_rows(plane, layout.height);
    let stride = layout.strides[plane];
    let row = layout.format.row_bytes(plane, layout.width);
    let start = layout.offsets[plane];
    // Take whole strided rows when the buffer has them (one contiguous copy); the last row of
    // a buffer may lack its padding, so fall back to the packed rows then.
    let full = start + stride * rows;
    let t = match data.get(start..full) {
        Some(bytes) => Tensor::f_from_slice(bytes)?
            .f_view([rows as i64, stride as i64])? // [rows, stride]
            .f_to_device(device)?
            .f_narrow(1, 0, row as i64)?, // [rows, row]
        None => {
            let mut packed = Vec::with_capacity(rows * row);
            for r in 0..rows {
                let s = start + r * stride;
                packed.extend_from_slice(
                    data.get(s..s + row)
                        .ok_or_else(|| KernelError::Layout(format!("plane {plane} row {r} outside the buffer")))?,
                );
            }
            Tensor::f_from_slice(&packed)?.f_view([rows as i64, row as i64])?.f_to_device(device)?
        }
    };
    Ok(t)
}

/// Converts a strided frame to a float `[1, 3, H, W]` RGB tensor on `device`.
///
/// Values are in `[0, 1]`, then normalized by `norm` when given. With `size = Some((h, w))`
/// the image is resized bilinearly (no corner alignment, as torchvision's `Resize`).
pub fn frame_to_tensor(
    data: &[u8],
    layout: &FrameLayout,
    device: Device,
    size: Option<(usize, usize)>,
    norm: Option<Normalization>,
) -> Result<Tensor> {
    let _span = trace_span!("frame_to_tensor", w = layout.width, h = layout.height).entered();
    layout.validate(data.len())?;
    let (h, w) = (layout.height as i64, layout.width as i64);
    let rgb = match layout.format {
        PixelFormat::Rgb | PixelFormat::Bgr => {
            let hwc = plane_tensor(data, layout, 0, device)?.f_view([h, w, 3])?; // [H, W, 3]
            let chw = hwc.f_permute([2, 0, 1])?; // [3, H, W]
            let chw = if layout.format == PixelFormat::Bgr { chw.f_flip([0])? } else { chw };
            chw.f_to_kind(Kind::Float)?.f_div_scalar(U8_MAX)?
        }
        PixelFormat::Gray8 => {
            let gray = plane_tensor(data, layout, 0, device)?; // [H, W]
            gray.f_to_kind(Kind::Float)?.f_div_scalar(U8_MAX)?.f_unsqueeze(0)?.f_expand([3, h, w], false)?
        }
        PixelFormat::Nv12 => nv12_to_rgb(data, layout, device)?,
    };
    let mut x = rgb.f_unsqueeze(0)?; // [1, 3, H, W]
    if let Some((th, tw)) = size.map(|(th, tw)| (th as i64, tw as i64)).filter(|&t| t != (h, w)) {
        x = x.f_upsample_bilinear2d([th, tw], false, None, None)?;
    }
    if let Some(n) = norm {
        x = n.apply(&x)?;
    }
    Ok(x.f_contiguous()?)
}

/// How a model's official preprocessing resizes an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Pillow's `Image.resize` of the 8-bit image with its bicubic filter, reproduced bit for
    /// bit on the host ([`crate::resample`]): SAM 2's video predictor, open_clip, Hiera.
    PilBicubic,
    /// torchvision's `Resize` of the float tensor: bilinear with antialiasing
    /// (`F.interpolate(..., antialias=True)`): SAM 2's image predictor.
    TorchvisionBilinear,
    /// `F.interpolate(mode="bilinear")` of the float tensor, no antialiasing: Hiera's video
    /// example, and the fast path of every transform.
    Bilinear,
}

/// Where the model's input comes from in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The whole image, stretched to `height × width` (SAM 2).
    Stretch {
        /// Output rows.
        height: i64,
        /// Output columns.
        width: i64,
    },
    /// The short side resized to `short` (the long one to `int(short · long / short_side)`,
    /// torchvision's rule), then a centred `crop × crop` square (offsets rounded half to even,
    /// torchvision's `CenterCrop`): Hiera's and CLIP's evaluation transforms.
    ShortSideCenterCrop {
        /// Length of the short side after resizing.
        short: i64,
        /// Side of the centred crop.
        crop: i64,
    },
    /// The centred square of side `min(H, W)` (offsets rounded down), resized to `side`.
    CenterSquare {
        /// Output side.
        side: i64,
    },
}

impl Fit {
    /// `(top, left, height, width)` of the region cut before resizing, and the size it is
    /// resized to, for an `h × w` image; then the `(top, left, height, width)` cut after.
    #[allow(clippy::type_complexity)]
    fn plan(self, h: i64, w: i64) -> ((i64, i64, i64, i64), (i64, i64), Option<(i64, i64, i64, i64)>) {
        match self {
            Self::Stretch { height, width } => ((0, 0, h, w), (height, width), None),
            Self::ShortSideCenterCrop { short, crop } => {
                let (short_side, long_side) = (h.min(w), h.max(w));
                let long = (short as f64 * long_side as f64 / short_side as f64) as i64;
                let (rh, rw) = if w <= h { (long, short) } else { (short, long) };
                let top = ((rh - crop) as f64 / 2.0).round_ties_even() as i64;
                let left = ((rw - crop) as f64 / 2.0).round_ties_even() as i64;
                ((0, 0, h, w), (rh, rw), Some((top, left, crop, crop)))
            }
            Self::CenterSquare { side } => {
                let s = h.min(w);
                (((h - s) / 2, (w - s) / 2, s, s), (side, side), None)
            }
        }
    }

    /// The model input's `(height, width)`.
    pub fn output_size(self) -> (i64, i64) {
        match self {
            Self::Stretch { height, width } => (height, width),
            Self::ShortSideCenterCrop { crop, .. } => (crop, crop),
            Self::CenterSquare { side } => (side, side),
        }
    }
}

/// Which path a [`Transform`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// The official pipeline, bit for bit ([`Transform::apply`]).
    #[default]
    Exact,
    /// Bilinear on the device ([`Transform::apply_fast`]): cheaper, not exact.
    Fast,
}

/// A model's input transform: which region, how it is resized, how it is normalized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Region and size.
    pub fit: Fit,
    /// Resampling of the official pipeline.
    pub resize: Resize,
    /// Per-channel normalization after scaling to `[0, 1]`.
    pub norm: Normalization,
}

impl Transform {
    /// The model input of a frame, exactly as the official pipeline computes it from the same
    /// 8-bit RGB image: `[1, 3, H, W]` float on `device`.
    pub fn apply(&self, data: &[u8], layout: &FrameLayout, device: Device) -> Result<Tensor> {
        let _span = trace_span!("transform", w = layout.width, h = layout.height).entered();
        match self.resize {
            Resize::PilBicubic => {
                let rgb = layout.to_rgb8(data)?;
                self.apply_rgb8(&rgb, layout.width, layout.height, device)
            }
            Resize::TorchvisionBilinear | Resize::Bilinear => {
                let x = frame_to_tensor(data, layout, device, None, None)?; // [1, 3, H, W] in [0, 1]
                self.resize_tensor(&x, self.resize)
            }
        }
    }

    /// [`Transform::apply`] or [`Transform::apply_fast`], as `mode` says.
    pub fn apply_with(&self, mode: ResizeMode, data: &[u8], layout: &FrameLayout, device: Device) -> Result<Tensor> {
        match mode {
            ResizeMode::Exact => self.apply(data, layout, device),
            ResizeMode::Fast => self.apply_fast(data, layout, device),
        }
    }

    /// The fast path: the same region, resized bilinearly (no antialiasing) on `device`.
    /// Deviates from [`Transform::apply`] by resampling only; see the README for its size.
    pub fn apply_fast(&self, data: &[u8], layout: &FrameLayout, device: Device) -> Result<Tensor> {
        let _span = trace_span!("transform_fast", w = layout.width, h = layout.height).entered();
        let x = frame_to_tensor(data, layout, device, None, None)?; // [1, 3, H, W] in [0, 1]
        self.resize_tensor(&x, Resize::Bilinear)
    }

    /// [`Transform::apply`] on a packed 8-bit RGB image (`height` rows of `3 · width` bytes).
    pub fn apply_rgb8(&self, rgb: &[u8], width: usize, height: usize, device: Device) -> Result<Tensor> {
        if self.resize != Resize::PilBicubic {
            let layout = FrameLayout::packed(PixelFormat::Rgb, width, height);
            let x = frame_to_tensor(rgb, &layout, device, None, None)?; // [1, 3, H, W]
            return self.resize_tensor(&x, self.resize);
        }
        let (h, w) = (height as i64, width as i64);
        let ((top, left, ch, cw), (rh, rw), after) = self.fit.plan(h, w);
        check_region(h, w, top, left, ch, cw)?;
        let cut =
            if (top, left, ch, cw) == (0, 0, h, w) { None } else { Some(crop_rgb8(rgb, width, (top, left, ch, cw))) };
        let (src, sw, sh) = match &cut {
            Some(c) => (c.as_slice(), cw as usize, ch as usize),
            None => (rgb, width, height),
        };
        let resized = resample::resize_u8(src, (sw, sh, 3), (rw as usize, rh as usize), resample::Filter::Bicubic)?;
        let (out, oh, ow) = match after {
            Some(region) => {
                check_region(rh, rw, region.0, region.1, region.2, region.3)?;
                (crop_rgb8(&resized, rw as usize, region), region.2, region.3)
            }
            None => (resized, rh, rw),
        };
        // ToTensor then Normalize, in f32 as torchvision computes them.
        let plane = (oh * ow) as usize;
        let mut chw = vec![0f32; 3 * plane];
        for c in 0..3 {
            let (mean, std) = (self.norm.mean[c] as f32, self.norm.std[c] as f32);
            let lut: Vec<f32> = (0..=255u8).map(|v| (f32::from(v) / U8_MAX as f32 - mean) / std).collect();
            for (dst, px) in chw[c * plane..(c + 1) * plane].iter_mut().zip(out.chunks_exact(3)) {
                *dst = lut[usize::from(px[c])];
            }
        }
        Ok(Tensor::f_from_slice(&chw)?.f_view([1, 3, oh, ow])?.f_to_device(device)?) // [1, 3, H, W]
    }

    /// Region, resize and normalization of `[1, 3, H, W]` values in `[0, 1]`.
    fn resize_tensor(&self, x: &Tensor, resize: Resize) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        let ((top, left, ch, cw), (rh, rw), after) = self.fit.plan(h, w);
        check_region(h, w, top, left, ch, cw)?;
        let mut x = x.f_narrow(2, top, ch)?.f_narrow(3, left, cw)?; // [1, 3, ch, cw]
        if (rh, rw) != (ch, cw) {
            x = match resize {
                Resize::TorchvisionBilinear => x.f_internal_upsample_bilinear2d_aa([rh, rw], false, None, None)?,
                Resize::Bilinear | Resize::PilBicubic => x.f_upsample_bilinear2d([rh, rw], false, None, None)?,
            }; // [1, 3, rh, rw]
        }
        if let Some((t, l, ah, aw)) = after {
            check_region(rh, rw, t, l, ah, aw)?;
            x = x.f_narrow(2, t, ah)?.f_narrow(3, l, aw)?; // [1, 3, crop, crop]
        }
        Ok(self.norm.apply(&x)?.f_contiguous()?)
    }
}

/// Checks that a `(top, left, height, width)` region lies inside an `h × w` image.
fn check_region(h: i64, w: i64, top: i64, left: i64, rh: i64, rw: i64) -> Result<()> {
    if h <= 0 || w <= 0 || rh <= 0 || rw <= 0 || top < 0 || left < 0 || top + rh > h || left + rw > w {
        return Err(KernelError::Layout(format!("region {rw}x{rh} at ({left}, {top}) does not fit a {w}x{h} image")));
    }
    Ok(())
}

/// The `(top, left, height, width)` region of a packed RGB image `width` pixels wide.
fn crop_rgb8(rgb: &[u8], width: usize, (top, left, h, w): (i64, i64, i64, i64)) -> Vec<u8> {
    let (top, left, h, w) = (top as usize, left as usize, h as usize, w as usize);
    let mut out = Vec::with_capacity(h * w * 3);
    for r in top..top + h {
        out.extend_from_slice(&rgb[(r * width + left) * 3..(r * width + left + w) * 3]);
    }
    out
}

/// NV12 → float RGB `[3, H, W]` in `[0, 1]`, limited range, nearest-neighbour chroma.
fn nv12_to_rgb(data: &[u8], layout: &FrameLayout, device: Device) -> Result<Tensor> {
    let (h, w) = (layout.height as i64, layout.width as i64);
    let (ch, cw) = (layout.height.div_ceil(2) as i64, layout.width.div_ceil(2) as i64);
    let y = plane_tensor(data, layout, 0, device)?.f_to_kind(Kind::Float)?; // [H, W]
    let uv = plane_tensor(data, layout, 1, device)?.f_to_kind(Kind::Float)?.f_view([ch, cw, 2])?; // [H/2, W/2, 2]
    let uv = uv
        .f_repeat_interleave_self_int(2, 0, None)?
        .f_repeat_interleave_self_int(2, 1, None)?
        .f_narrow(0, 0, h)?
        .f_narrow(1, 0, w)?; // [H, W, 2]
    let u = uv.f_select(2, 0)?.f_sub_scalar(128.0)?;
    let v = uv.f_select(2, 1)?.f_sub_scalar(128.0)?;
    let luma = y.f_sub_scalar(16.0)?.f_mul_scalar(255.0 / 219.0)?;
    let (r_v, g_u, g_v, b_u) = layout.yuv_matrix.coefficients();
    let r = luma.f_add(&v.f_mul_scalar(r_v)?)?;
    let g = luma.f_add(&u.f_mul_scalar(g_u)?)?.f_add(&v.f_mul_scalar(g_v)?)?;
    let b = luma.f_add(&u.f_mul_scalar(b_u)?)?;
    Ok(Tensor::f_stack(&[r, g, b], 0)?.f_clamp(0.0, U8_MAX)?.f_div_scalar(U8_MAX)?) // [3, H, W]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(pixels: &[u8], row: usize, rows: usize, stride: usize) -> Vec<u8> {
        let mut out = vec![0xAB; stride * rows];
        for r in 0..rows {
            out[r * stride..r * stride + row].copy_from_slice(&pixels[r * row..(r + 1) * row]);
        }
        out
    }

    #[test]
    fn rgb_stride_is_cut() {
        let (w, h) = (5usize, 3usize);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut layout = FrameLayout::packed(PixelFormat::Rgb, w, h);
        layout.strides[0] = 16;
        let t = frame_to_tensor(&padded(&pixels, w * 3, h, 16), &layout, Device::Cpu, None, None).unwrap();
        assert_eq!(t.size(), [1, 3, h as i64, w as i64]);
        let reference =
            Tensor::from_slice(&pixels).view([h as i64, w as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
        assert!(t.squeeze_dim(0).allclose(&reference, 0.0, 0.0, false));
    }

    #[test]
    fn bgr_is_flipped_and_gray_expanded() {
        let layout = FrameLayout::packed(PixelFormat::Bgr, 1, 1);
        let t = frame_to_tensor(&[10, 20, 30], &layout, Device::Cpu, None, None).unwrap();
        let v: Vec<f32> = t.flatten(0, -1).try_into().unwrap();
        assert_eq!(v, [30.0 / 255.0, 20.0 / 255.0, 10.0 / 255.0]);
        let layout = FrameLayout::packed(PixelFormat::Gray8, 2, 1);
        let t = frame_to_tensor(&[0, 255], &layout, Device::Cpu, None, None).unwrap();
        let v: Vec<f32> = t.flatten(0, -1).try_into().unwrap();
        assert_eq!(v, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn short_and_bad_layouts_are_errors() {
        let layout = FrameLayout::packed(PixelFormat::Rgb, 4, 4);
        assert!(matches!(
            frame_to_tensor(&[0; 10], &layout, Device::Cpu, None, None),
            Err(KernelError::Frame(ocellus_wire::LayoutError::ShortBuffer { needed: 48, got: 10, .. }))
        ));
        let mut bad = layout;
        bad.strides[0] = 5;
        assert!(matches!(bad.validate(1000), Err(ocellus_wire::LayoutError::Invalid(_))));
    }

    #[test]
    fn nv12_grey_is_grey_and_resize_normalize_shape() {
        // Y = 126, U = V = 128 → mid grey in every channel.
        let (w, h) = (4usize, 2usize);
        let mut data = vec![126u8; w * h];
        data.extend(vec![128u8; w]);
        let layout = FrameLayout::packed(PixelFormat::Nv12, w, h);
        let t = frame_to_tensor(&data, &layout, Device::Cpu, Some((4, 8)), Some(Normalization::IMAGENET)).unwrap();
        assert_eq!(t.size(), [1, 3, 4, 8]);
        let expected = ((126.0 - 16.0) * 255.0 / 219.0 / 255.0 - 0.485) / 0.229;
        let r = t.get(0).get(0).get(0).get(0).double_value(&[]);
        assert!((r - expected).abs() < 1e-5, "{r} vs {expected}");
    }

    #[test]
    fn pack_removes_padding() {
        let mut layout = FrameLayout::packed(PixelFormat::Gray8, 3, 2);
        layout.strides[0] = 4;
        assert_eq!(layout.pack(&[1, 2, 3, 0, 4, 5, 6]).unwrap(), [1, 2, 3, 4, 5, 6]);
    }
}
