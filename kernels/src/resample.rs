//! Pillow's 8-bit resampling, reproduced bit for bit on the host.
//!
//! The official preprocessing of SAM 2's video predictor (`sam2/utils/misc.py`:
//! `Image.resize((side, side))`), of open_clip (`transforms.Resize(size, BICUBIC)` on a PIL
//! image) and of Hiera (the same, in its inference example) resizes 8-bit images with Pillow.
//! Pillow does it in two separable passes, horizontal first, each in fixed point: the filter
//! weights of an output pixel are computed in double precision, normalized to sum to one,
//! scaled by 2^22 and rounded to integers; each pass accumulates `pixel × weight` in integers
//! starting from one half, shifts back and clamps to 8 bits. libtorch's antialiased bicubic
//! follows the same geometry in floating point and can land one level away, so this module
//! implements the fixed-point arithmetic itself. When downscaling, the filter is widened by
//! the scale factor (antialiasing); when upscaling it keeps its own support.

use crate::{KernelError, Result};

/// Fractional bits of the fixed-point weights (Pillow: 32 − 8 − 2).
const PRECISION_BITS: u32 = 22;
/// The Keys cubic's `a` parameter that Pillow uses.
const BICUBIC_A: f64 = -0.5;

/// A resampling filter of Pillow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BICUBIC` (Keys cubic, `a = -0.5`, support 2): Pillow's default for `resize`.
    Bicubic,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
}

impl Filter {
    /// Half-width of the kernel at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            Self::Bicubic => 2.0,
            Self::Bilinear => 1.0,
        }
    }

    /// The kernel's value at distance `x`.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bicubic if x < 1.0 => ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0,
            Self::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A,
            Self::Bilinear if x < 1.0 => 1.0 - x,
            _ => 0.0,
        }
    }
}

/// Fixed-point weights of one resampling pass: for each output index, the first input index
/// it reads and its integer weights.
#[derive(Debug)]
struct Coefficients {
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `taps` weights per output index (unused taps are 0).
    weights: Vec<i32>,
    /// Weights per output index.
    taps: usize,
}

impl Coefficients {
    /// Weights mapping `input` samples onto `output` samples (the whole extent on both sides).
    fn new(input: usize, output: usize, filter: Filter) -> Self {
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let taps = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(output);
        let mut weights = vec![0i32; output * taps];
        let mut real = vec![0f64; taps];
        for (o, row) in weights.chunks_exact_mut(taps).enumerate() {
            let center = (o as f64 + 0.5) * scale;
            // C's `(int)` truncates towards zero; negative starts are clamped to 0 anyway.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, input as i64) as usize;
            let count = end.saturating_sub(first);
            let mut total = 0.0;
            for (x, w) in real.iter_mut().enumerate().take(count) {
                *w = filter.weight(((x + first) as f64 - center + 0.5) / filter_scale);
                total += *w;
            }
            for (x, w) in real.iter().enumerate().take(count) {
                let normalized = if total != 0.0 { w / total } else { *w };
                let scaled = normalized * f64::from(1u32 << PRECISION_BITS);
                // Rounded half away from zero, as Pillow's `(int)(±0.5 + w · 2^22)`.
                row[x] = if scaled < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
            }
            bounds.push((first, count));
        }
        Self { bounds, weights, taps }
    }

    /// The `(first input, taps, weights)` of output index `o`.
    fn of(&self, o: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[o];
        (first, &self.weights[o * self.taps..o * self.taps + count])
    }
}

/// An accumulated fixed-point sum back to 8 bits (clamped).
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding offset every accumulation starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes a packed 8-bit image (`height` rows of `width × channels` bytes) to
/// `out_width × out_height` exactly as Pillow's `Image.resize` does (no `box`, no
/// `reducing_gap`). Returns the packed result.
pub fn resize_u8(
    pixels: &[u8],
    (width, height, channels): (usize, usize, usize),
    (out_width, out_height): (usize, usize),
    filter: Filter,
) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || channels == 0 || out_width == 0 || out_height == 0 {
        return Err(KernelError::Layout(format!(
            "cannot resize a {width}x{height}x{channels} image to {out_width}x{out_height}"
        )));
    }
    if pixels.len() != width * height * channels {
        return Err(KernelError::Layout(format!(
            "{} bytes for a packed {width}x{height}x{channels} image",
            pixels.len()
        )));
    }
    let horizontal = Coefficients::new(width, out_width, filter);
    let vertical = Coefficients::new(height, out_height, filter);
    // Only the rows the vertical pass reads go through the horizontal pass (as in Pillow).
    let (row_first, row_end) = if out_height != height {
        let (last_first, last_count) = vertical.bounds[out_height - 1];
        (vertical.bounds[0].0, last_first + last_count)
    } else {
        (0, height)
    };

    // Horizontal pass: [rows, width, C] → [rows, out_width, C]. Sums fit in i32 (Pillow keeps
    // two spare bits for it: 8-bit samples, weights of at most 2^22, at most ~2 in sum).
    let rows = row_end - row_first;
    let stage: std::borrow::Cow<'_, [u8]> = if out_width != width {
        let mut out = vec![0u8; rows * out_width * channels];
        let mut sums = vec![0i32; channels];
        for (r, out_row) in out.chunks_exact_mut(out_width * channels).enumerate() {
            let in_row = &pixels[(row_first + r) * width * channels..][..width * channels];
            for (o, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
                let (first, weights) = horizontal.of(o);
                sums.fill(HALF);
                for (px, &w) in in_row[first * channels..].chunks_exact(channels).zip(weights) {
                    for (sum, &v) in sums.iter_mut().zip(px) {
                        *sum += i32::from(v) * w;
                    }
                }
                for (value, &sum) in out_px.iter_mut().zip(&sums) {
                    *value = clip8(sum);
                }
            }
        }
        out.into()
    } else {
        pixels[row_first * width * channels..row_end * width * channels].into()
    };
    if out_height == height {
        return Ok(stage.into_owned());
    }

    // Vertical pass: [rows, out_width, C] → [out_height, out_width, C], rows shifted by
    // row_first; whole rows at a time (the inner loop vectorizes).
    let line = out_width * channels;
    let mut out = vec![0u8; out_height * line];
    let mut sums = vec![0i32; line];
    for (o, out_row) in out.chunks_exact_mut(line).enumerate() {
        let (first, weights) = vertical.of(o);
        let first = first - row_first;
        sums.fill(HALF);
        for (y, &w) in weights.iter().enumerate() {
            let in_row = &stage[(first + y) * line..][..line];
            for (sum, &v) in sums.iter_mut().zip(in_row) {
                *sum += i32::from(v) * w;
            }
        }
        for (value, &sum) in out_row.iter_mut().zip(&sums) {
            *value = clip8(sum);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let px: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_u8(&px, (5, 4, 3), (5, 4), Filter::Bicubic).unwrap(), px);
        // A constant image stays constant at any size (weights sum to one).
        let flat = vec![173u8; 7 * 3 * 3];
        for size in [(2, 2), (11, 5), (7, 9), (1, 1)] {
            let out = resize_u8(&flat, (7, 3, 3), size, Filter::Bicubic).unwrap();
            assert!(out.iter().all(|&v| v == 173), "{size:?}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 1024), (1280, 1024), (480, 1024), (720, 224), (3, 7)] {
            let c = Coefficients::new(i, o, Filter::Bicubic);
            for k in 0..o {
                let sum: i64 = c.of(k).1.iter().map(|&w| i64::from(w)).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= c.taps as i64, "{i}->{o} [{k}]: {sum}");
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(resize_u8(&[0; 12], (2, 2, 3), (0, 4), Filter::Bicubic).is_err());
        assert!(resize_u8(&[0; 11], (2, 2, 3), (4, 4), Filter::Bicubic).is_err());
    }
}
