//! Motion segmentation by frame differencing.
//!
//! Per camera: grey = BT.601 luma of the RGB frame, box-blurred to suppress sensor noise;
//! a pixel moves when `|grey_t - grey_{t-1}| > threshold`; the mask is then dilated so that
//! objects come out as blobs rather than edges. The first frame of a stream has no motion.
//! The model has no weights: [`MotionSegmenter`] is the (immutable) configuration and
//! [`MotionState`] the per-stream state, as for the learned models.

use ocellus_kernels::{FrameLayout, frame_to_tensor};
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// BT.601 luma weights (R, G, B).
const LUMA_WEIGHTS: [f64; 3] = [0.299, 0.587, 0.114];

/// Motion segmentation settings (names as in pipeline configs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionConfig {
    /// Minimum absolute change of the blurred luma, in `[0, 1]`, for a pixel to move.
    pub threshold: f64,
    /// Side of the box blur applied before differencing (odd; 1 disables it).
    pub blur: i64,
    /// Side of the dilation applied to the mask (odd; 1 disables it).
    pub dilate: i64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self { threshold: 0.08, blur: 5, dilate: 3 }
    }
}

/// Per-stream state: the previous blurred luma frame `[1, 1, H, W]`.
#[derive(Debug, Default)]
pub struct MotionState {
    previous: Option<Tensor>,
}

impl MotionState {
    /// Forgets the previous frame (after a resolution change or a reconnect).
    pub fn reset(&mut self) {
        self.previous = None;
    }
}

/// Result of one step: the mask and the fraction of pixels that moved.
#[derive(Debug)]
pub struct MotionOutput {
    /// `[H, W]` u8 mask on the model's device: 1 where something moved.
    pub mask: Tensor,
    /// Fraction of moving pixels in `[0, 1]`.
    pub moving_fraction: f64,
}

/// Frame-differencing motion segmenter running on one device.
#[derive(Debug)]
pub struct MotionSegmenter {
    config: MotionConfig,
    device: Device,
    luma: Tensor, // [1, 3, 1, 1]
}

impl MotionSegmenter {
    /// Validates `config` and prepares the model on `device`.
    pub fn new(config: MotionConfig, device: Device) -> Result<Self> {
        let odd = |v: i64| v >= 1 && v % 2 == 1;
        if !(0.0..=1.0).contains(&config.threshold) || !odd(config.blur) || !odd(config.dilate) {
            return Err(PerceptionError::Config {
                model: "motion",
                message: format!("threshold must be in [0, 1] and blur/dilate odd and ≥ 1, got {config:?}"),
            });
        }
        let luma =
            Tensor::f_from_slice(&LUMA_WEIGHTS)?.f_to_kind(Kind::Float)?.f_to_device(device)?.f_view([1, 3, 1, 1])?;
        Ok(Self { config, device, luma })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Segments motion in one strided frame, updating `state`.
    pub fn step(&self, state: &mut MotionState, pixels: &[u8], layout: &FrameLayout) -> Result<MotionOutput> {
        let _span = trace_span!("motion_step", w = layout.width, h = layout.height).entered();
        tch::no_grad(|| {
            let rgb = frame_to_tensor(pixels, layout, self.device, None, None)?; // [1, 3, H, W]
            self.step_tensor(state, &rgb)
        })
    }

    /// Segments motion in a `[1, 3, H, W]` RGB tensor in `[0, 1]`, updating `state`.
    pub fn step_tensor(&self, state: &mut MotionState, rgb: &Tensor) -> Result<MotionOutput> {
        let grey = rgb.f_mul(&self.luma)?.f_sum_dim_intlist(Some(&[1i64][..]), true, Kind::Float)?; // [1, 1, H, W]
        let k = self.config.blur;
        let grey = if k > 1 { grey.f_avg_pool2d([k, k], [1, 1], [k / 2, k / 2], false, false, None)? } else { grey };
        let (h, w) = (grey.size()[2], grey.size()[3]);
        let moving = match state.previous.as_ref().filter(|p| p.size() == grey.size()) {
            Some(previous) => grey.f_sub(previous)?.f_abs()?.f_gt(self.config.threshold)?,
            None => Tensor::f_zeros([1, 1, h, w], (Kind::Bool, self.device))?,
        };
        let d = self.config.dilate;
        let moving = if d > 1 {
            moving.f_to_kind(Kind::Float)?.f_max_pool2d([d, d], [1, 1], [d / 2, d / 2], [1, 1], false)?
        } else {
            moving.f_to_kind(Kind::Float)?
        };
        let moving_fraction = moving.f_mean(Kind::Float)?.f_double_value(&[])?;
        let mask = moving.f_view([h, w])?.f_to_kind(Kind::Uint8)?; // [H, W]
        state.previous = Some(grey);
        Ok(MotionOutput { mask, moving_fraction })
    }
}

#[cfg(test)]
mod tests {
    use ocellus_kernels::PixelFormat;

    use super::*;

    #[test]
    fn detects_a_moving_square() {
        let (w, h) = (32usize, 24usize);
        let frame = |x0: usize| {
            let mut px = vec![0u8; w * h];
            for y in 8..16 {
                for x in x0..x0 + 6 {
                    px[y * w + x] = 255;
                }
            }
            px
        };
        let layout = FrameLayout::packed(PixelFormat::Gray8, w, h);
        let model = MotionSegmenter::new(MotionConfig { threshold: 0.2, blur: 1, dilate: 1 }, Device::Cpu).unwrap();
        let mut state = MotionState::default();
        let first = model.step(&mut state, &frame(4), &layout).unwrap();
        assert_eq!(first.moving_fraction, 0.0);
        let second = model.step(&mut state, &frame(8), &layout).unwrap();
        let mask = ocellus_kernels::masks::mask_to_bytes(&second.mask).unwrap();
        // Columns 4..8 were vacated and 10..14 newly covered; 8..10 stayed white.
        let bbox = ocellus_kernels::masks::mask_box(&mask, w).unwrap();
        assert_eq!((bbox.x0, bbox.y0, bbox.x1, bbox.y1), (4, 8, 14, 16));
        assert_eq!(mask[12 * w + 9], 0);
        assert!((second.moving_fraction - (8.0 * 8.0) / (w * h) as f64).abs() < 1e-6, "{}", second.moving_fraction);
    }

    #[test]
    fn rejects_bad_config() {
        assert!(MotionSegmenter::new(MotionConfig { threshold: 2.0, ..Default::default() }, Device::Cpu).is_err());
        assert!(MotionSegmenter::new(MotionConfig { blur: 4, ..Default::default() }, Device::Cpu).is_err());
    }
}
