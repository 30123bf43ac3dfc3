//! Frame preprocessing: strided camera bytes → normalized `[1, 3, H, W]` float tensors.
//!
//! Camera buffers are rarely tightly packed: GStreamer pads RGB rows to a multiple of four
//! bytes and NV12 planes to the decoder's alignment. The layout therefore carries a stride and
//! an offset per plane, and rows are cut to their visible width on the device, after the one
//! host→tensor copy that libtorch needs.

use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{KernelError, Result};

/// Largest value of an 8-bit sample, as a float.
const U8_MAX: f64 = 255.0;

/// Pixel formats a [`FrameLayout`] can describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb,
    /// Packed 8-bit B, G, R.
    Bgr,
    /// 8-bit luma only.
    Gray8,
    /// Planar luma plus interleaved, 2×2-subsampled U/V (two planes).
    Nv12,
}

impl PixelFormat {
    /// Bytes per pixel of the first plane.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb | Self::Bgr => 3,
            Self::Gray8 | Self::Nv12 => 1,
        }
    }

    /// Number of planes.
    pub fn planes(self) -> usize {
        match self {
            Self::Nv12 => 2,
            _ => 1,
        }
    }

    /// Visible bytes of one row of `plane` for a frame `width` pixels wide.
    pub fn row_bytes(self, plane: usize, width: usize) -> usize {
        match (self, plane) {
            // U and V interleaved at half horizontal resolution, rounded up.
            (Self::Nv12, 1) => width.div_ceil(2) * 2,
            _ => width * self.bytes_per_pixel(),
        }
    }

    /// Number of rows of `plane` for a frame `height` pixels high.
    pub fn plane_rows(self, plane: usize, height: usize) -> usize {
        match (self, plane) {
            (Self::Nv12, 1) => height.div_ceil(2),
            _ => height,
        }
    }
}

/// YUV → RGB matrix for NV12 frames (limited range, as GStreamer's `videoconvert` uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YuvMatrix {
    /// ITU-R BT.601 (SD and GStreamer's default for small frames).
    #[default]
    Bt601,
    /// ITU-R BT.709 (HD).
    Bt709,
}

impl YuvMatrix {
    /// `(r_v, g_u, g_v, b_u)` coefficients applied to centred chroma.
    fn coefficients(self) -> (f64, f64, f64, f64) {
        match self {
            Self::Bt601 => (1.596_027, -0.391_762, -0.812_968, 2.017_232),
            Self::Bt709 => (1.792_741, -0.213_249, -0.532_909, 2.112_402),
        }
    }
}

/// Where the pixels of a frame are inside its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next, per plane (unused planes are 0).
    pub strides: [usize; 2],
    /// Byte offset of each plane in the buffer (unused planes are 0).
    pub offsets: [usize; 2],
    /// Matrix for NV12; ignored by the other formats.
    pub yuv_matrix: YuvMatrix,
}

impl FrameLayout {
    /// A tightly packed layout (stride = visible row bytes, planes back to back).
    pub fn packed(format: PixelFormat, width: usize, height: usize) -> Self {
        let stride0 = format.row_bytes(0, width);
        let (stride1, offset1) =
            if format.planes() == 2 { (format.row_bytes(1, width), stride0 * height) } else { (0, 0) };
        Self {
            format,
            width,
            height,
            strides: [stride0, stride1],
            offsets: [0, offset1],
            yuv_matrix: YuvMatrix::default(),
        }
    }

    /// Bytes a buffer needs to hold this layout (the last row of a plane needs no padding).
    pub fn required_len(&self) -> usize {
        (0..self.format.planes())
            .map(|p| {
                let rows = self.format.plane_rows(p, self.height);
                self.offsets[p] + self.strides[p] * rows.saturating_sub(1) + self.format.row_bytes(p, self.width)
            })
            .max()
            .unwrap_or(0)
    }

    /// Checks that the layout is self-consistent and fits in `len` bytes.
    pub fn validate(&self, len: usize) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(KernelError::Layout(format!("empty frame {}x{}", self.width, self.height)));
        }
        for p in 0..self.format.planes() {
            let row = self.format.row_bytes(p, self.width);
            if self.strides[p] < row {
                return Err(KernelError::Layout(format!(
                    "plane {p} stride {} is smaller than its {row} visible bytes",
                    self.strides[p]
                )));
            }
        }
        let needed = self.required_len();
        if len < needed {
            return Err(KernelError::ShortBuffer {
                format: self.format,
                width: self.width,
                height: self.height,
                needed,
                got: len,
            });
        }
        Ok(())
    }

    /// Copies the visible pixels of each plane into one tightly packed buffer.
    pub fn pack(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.validate(data.len())?;
        let packed = Self::packed(self.format, self.width, self.height);
        let mut out = Vec::with_capacity(packed.required_len());
        for p in 0..self.format.planes() {
            let row = self.format.row_bytes(p, self.width);
            for r in 0..self.format.plane_rows(p, self.height) {
                let start = self.offsets[p] + r * self.strides[p];
                out.extend_from_slice(
                    data.get(start..start + row)
                        .ok_or_else(|| KernelError::Layout(format!("plane {p} row {r} outside the buffer")))?,
                );
            }
        }
        Ok(out)
    }
}

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
    /// CLIP / MetaCLIP statistics.
    pub const CLIP: Self =
        Self { mean: [0.481_454_66, 0.457_827_5, 0.408_210_73], std: [0.268_629_54, 0.261_302_58, 0.275_777_11] };
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
        let mean = Tensor::f_from_slice(&n.mean)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&n.std)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        x = x.f_sub(&mean)?.f_div(&std)?;
    }
    Ok(x.f_contiguous()?)
}

/// PIL's bicubic resize of `[B, C, H, W]` 8-bit values (as floats in `[0, 255]`) to `(h, w)`:
/// antialiased (the kernel widens when downscaling, `a = -0.5`), the horizontal pass first,
/// each pass rounded (half up) and clamped to 8 bits as PIL does for 8-bit images.
pub fn resize_bicubic_u8(x: &Tensor, size: (i64, i64)) -> Result<Tensor> {
    let (_, _, h, w) = x.size4()?;
    let round8 = |t: Tensor| -> Result<Tensor> { Ok(t.f_add_scalar(0.5)?.f_floor()?.f_clamp(0.0, U8_MAX)?) };
    let mut y = x.shallow_clone();
    if size.1 != w {
        y = round8(y.f_internal_upsample_bicubic2d_aa([h, size.1], false, None, None)?)?; // [B, C, H, w']
    }
    if size.0 != h {
        y = round8(y.f_internal_upsample_bicubic2d_aa([size.0, size.1], false, None, None)?)?; // [B, C, h', w']
    }
    Ok(y)
}

/// CLIP's evaluation preprocessing (open_clip's `image_transform`, `resize_mode = "shortest"`):
/// the short side resized to `size` with PIL's bicubic filter (torchvision's `Resize(size)`
/// rule for the long side: `int(size * long / short)`), a centred `size × size` crop (offsets
/// rounded half to even, as torchvision's `CenterCrop`), then `[0, 1]` and `norm`.
///
/// `rgb` is `[1, 3, H, W]` in `[0, 1]` from 8-bit pixels (what [`frame_to_tensor`] returns).
pub fn resize_shortest_center_crop(rgb: &Tensor, size: i64, norm: Option<Normalization>) -> Result<Tensor> {
    let (_, _, h, w) = rgb.size4()?;
    if h <= 0 || w <= 0 || size <= 0 {
        return Err(KernelError::Layout(format!("cannot resize {w}x{h} to {size}")));
    }
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as i64;
    let (new_h, new_w) = if w <= h { (new_long, size) } else { (size, new_long) };
    let x = rgb.f_mul_scalar(U8_MAX)?.f_round()?; // [1, 3, H, W] in 0..=255
    let x = resize_bicubic_u8(&x, (new_h, new_w))?; // [1, 3, new_h, new_w]
    let top = ((new_h - size) as f64 / 2.0).round_ties_even() as i64;
    let left = ((new_w - size) as f64 / 2.0).round_ties_even() as i64;
    let mut x = x.f_narrow(2, top, size)?.f_narrow(3, left, size)?.f_div_scalar(U8_MAX)?; // [1, 3, size, size]
    if let Some(n) = norm {
        let device = x.device();
        let mean = Tensor::f_from_slice(&n.mean)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&n.std)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        x = x.f_sub(&mean)?.f_div(&std)?;
    }
    Ok(x.f_contiguous()?)
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
            Err(KernelError::ShortBuffer { needed: 48, got: 10, .. })
        ));
        let mut bad = layout;
        bad.strides[0] = 5;
        assert!(matches!(bad.validate(1000), Err(KernelError::Layout(_))));
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
