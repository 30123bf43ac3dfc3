//! Mask post-processing: device masks → host bytes, boxes and areas.

use tch::{Kind, Tensor};

use crate::{KernelError, Result};

/// An axis-aligned box in pixels, `[x0, y0, x1, y1)` (exclusive upper corner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBox {
    /// Left column.
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// One past the right column.
    pub x1: u32,
    /// One past the bottom row.
    pub y1: u32,
}

/// A `[H, W]` mask of any integer or bool kind → row-major `u8` bytes on the host.
pub fn mask_to_bytes(mask: &Tensor) -> Result<Vec<u8>> {
    let size = mask.size();
    if size.len() != 2 {
        return Err(KernelError::Layout(format!("mask must be [H, W], got {size:?}")));
    }
    let host = mask.f_to_kind(Kind::Uint8)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = host.numel();
    let mut out = vec![0u8; numel];
    host.f_copy_data_u8(&mut out, numel)?;
    Ok(out)
}

/// Bounding box of the non-zero pixels of a row-major `width`-wide mask, if any.
pub fn mask_box(mask: &[u8], width: usize) -> Option<PixelBox> {
    if width == 0 {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (y, row) in mask.chunks_exact(width).enumerate() {
        let Some(first) = row.iter().position(|&v| v != 0) else { continue };
        let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y + 1;
    }
    (x0 != usize::MAX).then_some(PixelBox { x0: x0 as u32, y0: y0 as u32, x1: x1 as u32, y1: y1 as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_box() {
        let m = Tensor::from_slice(&[0u8, 0, 0, 0, 1, 1, 0, 1, 0]).view([3, 3]).gt(0);
        let bytes = mask_to_bytes(&m).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 1, 1, 0, 1, 0]);
        assert_eq!(mask_box(&bytes, 3), Some(PixelBox { x0: 1, y0: 1, x1: 3, y1: 3 }));
        assert_eq!(mask_box(&[0, 0], 2), None);
        assert!(mask_to_bytes(&Tensor::zeros([2], (Kind::Uint8, tch::Device::Cpu))).is_err());
    }
}
