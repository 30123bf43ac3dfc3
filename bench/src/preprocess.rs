//! `ocellus-bench preprocess`: time per camera frame of each model's official preprocessing
//! (bit-exact on the host where the official path resizes 8-bit images with Pillow) against the
//! fast path (bilinear on the device), and how far the fast path lands from the exact one.

use std::time::Instant;

use ocellus_kernels::{Fit, FrameLayout, Normalization, PixelFormat, Resize, Transform};
use tch::{Device, Kind};

/// `ocellus-bench preprocess` options.
#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessBenchArgs {
    /// Frame width.
    #[arg(long, default_value_t = 1280)]
    pub width: usize,
    /// Frame height.
    #[arg(long, default_value_t = 720)]
    pub height: usize,
    /// Intra-op threads of libtorch.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Timed runs per path (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
}

/// One model input's figures.
#[derive(Debug, Clone)]
pub struct PreprocessBenchRow {
    /// What is preprocessed.
    pub name: &'static str,
    /// Median ms per frame, exact path.
    pub exact_ms: f64,
    /// Median ms per frame, fast path.
    pub fast_ms: f64,
    /// Largest difference between the paths, in 8-bit levels of the input.
    pub max_levels: f64,
    /// Mean difference, in 8-bit levels.
    pub mean_levels: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A camera-like frame: smooth gradients with edges and noise, RGB rows padded to 4 bytes.
fn frame(width: usize, height: usize) -> (Vec<u8>, FrameLayout) {
    let mut layout = FrameLayout::packed(PixelFormat::Rgb, width, height);
    layout.strides[0] = (width * 3).div_ceil(4) * 4;
    let mut data = vec![0u8; layout.strides[0] * height];
    let mut state = 0x2545_f491_u32;
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let edge = if (x / 64 + y / 48) % 2 == 0 { 60 } else { 0 };
            let at = y * layout.strides[0] + 3 * x;
            for c in 0..3 {
                let v = (x * 255 / width + y * 127 / height + c * 40 + edge) as u32 + (state >> (8 * c) & 15);
                data[at + c] = v.min(255) as u8;
            }
        }
    }
    (data, layout)
}

/// Times both paths of each model input on one frame.
pub fn run(args: &PreprocessBenchArgs) -> anyhow::Result<Vec<PreprocessBenchRow>> {
    tch::set_num_threads(args.threads);
    let (data, layout) = frame(args.width, args.height);
    let cases: [(&'static str, Transform); 3] = [
        (
            "SAM 2 tracker (video predictor, 1024²)",
            Transform {
                fit: Fit::Stretch { height: 1024, width: 1024 },
                resize: Resize::PilBicubic,
                norm: Normalization::IMAGENET,
            },
        ),
        (
            "SAM 2 encoder (image predictor, 1024²)",
            Transform {
                fit: Fit::Stretch { height: 1024, width: 1024 },
                resize: Resize::TorchvisionBilinear,
                norm: Normalization::IMAGENET,
            },
        ),
        (
            "Hiera (resize 256, crop 224)",
            Transform {
                fit: Fit::ShortSideCenterCrop { short: 256, crop: 224 },
                resize: Resize::PilBicubic,
                norm: Normalization::IMAGENET,
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, transform) in cases {
        let time = |fast: bool| -> anyhow::Result<(f64, tch::Tensor)> {
            let mut times = Vec::new();
            let mut last = None;
            for i in 0..=args.iters {
                let start = Instant::now();
                let x = if fast {
                    transform.apply_fast(&data, &layout, Device::Cpu)?
                } else {
                    transform.apply(&data, &layout, Device::Cpu)?
                };
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
                last = Some(x);
            }
            Ok((median(times), last.ok_or_else(|| anyhow::anyhow!("no run"))?))
        };
        let (exact_ms, exact) = time(false)?;
        let (fast_ms, fast) = time(true)?;
        // Normalized values back to 8-bit levels: × std × 255.
        let std = tch::Tensor::f_from_slice(&transform.norm.std)?.f_to_kind(Kind::Float)?.f_view([1, 3, 1, 1])?;
        let levels = exact.f_sub(&fast)?.f_abs()?.f_mul(&std)?.f_mul_scalar(255.0)?;
        rows.push(PreprocessBenchRow {
            name,
            exact_ms,
            fast_ms,
            max_levels: levels.f_max()?.f_double_value(&[])?,
            mean_levels: levels.f_mean(Kind::Float)?.f_double_value(&[])?,
        });
    }
    Ok(rows)
}
