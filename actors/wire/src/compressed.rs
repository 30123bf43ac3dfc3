//! JPEG and PNG payloads, decoded to packed RGB frames (the `image` crate, JPEG and PNG only,
//! with size limits so that a hostile header cannot make it allocate gigabytes).

use std::io::Cursor;

use crate::{CodecError, CodecResult, FrameLayout, MAX_DIMENSION, PixelFormat};
use bytes::Bytes;
use image::{ImageFormat, ImageReader, Limits};

/// Largest decoded image, bytes.
pub const MAX_ALLOC: u64 = 512 << 20;

/// A compressed image kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
}

impl Kind {
    /// The kind a ROS 2 `CompressedImage.format` names (`"jpeg"`, `"png"`, `"rgb8; jpeg
    /// compressed bgr8"`, ...).
    pub fn from_ros_format(format: &str) -> CodecResult<Self> {
        let lower = format.to_ascii_lowercase();
        let codec = lower.split(';').nth(1).unwrap_or(&lower);
        if codec.contains("jpeg") || codec.contains("jpg") {
            Ok(Self::Jpeg)
        } else if codec.contains("png") {
            Ok(Self::Png)
        } else {
            Err(CodecError::CompressedFormat(format.to_owned()))
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
        }
    }
}

/// Decodes `data` (a JPEG or PNG) to packed RGB.
pub fn decode_rgb(kind: Kind, data: &[u8]) -> CodecResult<(FrameLayout, Bytes)> {
    decode_rgb_within(kind, data, &crate::FrameLimits::DEFAULT)
}

/// [`decode_rgb`], refusing an image whose header announces more pixels than `limits` allow
/// before anything is decompressed.
pub fn decode_rgb_within(kind: Kind, data: &[u8], limits: &crate::FrameLimits) -> CodecResult<(FrameLayout, Bytes)> {
    let (width, height) = ImageReader::with_format(Cursor::new(data), kind.image_format())
        .into_dimensions()
        .map_err(|e| CodecError::Image(format!("{kind:?}: {e}")))?;
    limits.check_pixels(u64::from(width), u64::from(height))?;
    let mut reader = ImageReader::with_format(Cursor::new(data), kind.image_format());
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| CodecError::Image(format!("{kind:?}: {e}")))?;
    let rgb = image.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let layout = FrameLayout::packed(PixelFormat::Rgb, w, h);
    crate::raw::check_layout(&layout, rgb.as_raw().len())?;
    Ok((layout, Bytes::from(rgb.into_raw())))
}

/// Encodes packed RGB as a JPEG of `quality` (1–100).
pub fn encode_jpeg(width: u32, height: u32, rgb: &[u8], quality: u8) -> CodecResult<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| CodecError::Encode(format!("Jpeg: {e}")))?;
    Ok(out)
}

/// Encodes packed RGB as `kind` (JPEG quality 90).
pub fn encode_rgb(kind: Kind, width: u32, height: u32, rgb: &[u8]) -> CodecResult<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let result = match kind {
        Kind::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).write_image(
            rgb,
            width,
            height,
            image::ExtendedColorType::Rgb8,
        ),
        Kind::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            rgb,
            width,
            height,
            image::ExtendedColorType::Rgb8,
        ),
    };
    result.map_err(|e| CodecError::Encode(format!("{kind:?}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_is_lossless_and_jpeg_close() {
        let (w, h) = (16u32, 8u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 200) as u8).collect();
        let png = encode_rgb(Kind::Png, w, h, &rgb).expect("png");
        let (layout, pixels) = decode_rgb(Kind::Png, &png).expect("decode");
        assert_eq!((layout.width, layout.height, &pixels[..]), (16, 8, &rgb[..]));
        let flat = vec![120u8; (w * h * 3) as usize];
        let jpeg = encode_rgb(Kind::Jpeg, w, h, &flat).expect("jpeg");
        let (_, pixels) = decode_rgb(Kind::Jpeg, &jpeg).expect("decode");
        assert!(pixels.iter().all(|&p| p.abs_diff(120) <= 2));
        assert!(matches!(decode_rgb(Kind::Jpeg, &png), Err(CodecError::Image(_))));
    }

    #[test]
    fn ros_format_names() {
        assert_eq!(Kind::from_ros_format("jpeg"), Ok(Kind::Jpeg));
        assert_eq!(Kind::from_ros_format("rgb8; jpeg compressed bgr8"), Ok(Kind::Jpeg));
        assert_eq!(Kind::from_ros_format("PNG"), Ok(Kind::Png));
        assert!(matches!(Kind::from_ros_format("16UC1; compressedDepth png"), Ok(Kind::Png)));
        assert!(Kind::from_ros_format("theora").is_err());
    }
}
