//! Odd-width frames from GStreamer (rows padded to 4 bytes by `videoconvert`) become tensors
//! identical to references built from the unpadded pixels.
//!
//! Each case writes known, unpadded pixels to a raw file, lets GStreamer parse it
//! (`rawvideoparse` with explicit unpadded strides) and convert it (`videoconvert`, which
//! writes GStreamer's default, padded layout), and compares what the source delivers, through
//! `frame_to_tensor`, with a tensor built directly from the file's bytes.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::Path;

use ocellus_io::source::{GstSourceSpec, OutputFormat};
use ocellus_kernels::{PixelFormat, YuvMatrix, frame_to_tensor};
use ocellus_runtime::{EdgePolicy, Frame, Packet, Pipeline};
use ocellus_tests::{Collected, gst_source, scratch_dir};
use tch::{Device, Kind, Tensor};

const W: usize = 321;
const H: usize = 241;
const FRAMES: usize = 2;

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// Runs `launch` through a real GStreamer source and returns the frames it delivers.
fn frames(launch: String, format: OutputFormat) -> Vec<Frame> {
    let collected = Collected::default();
    let sink = collected.clone();
    let mut p = Pipeline::new();
    p.source("raw", gst_source(GstSourceSpec::new(launch, format))).stage(
        "collect",
        &["raw"],
        EdgePolicy::Block { depth: 4 },
        sink.factory(),
    );
    let report = p.run().expect("pipeline runs");
    assert_eq!(report.failures().count(), 0, "{report}");
    collected
        .take()
        .into_iter()
        .filter_map(|(p, _)| match p {
            Packet::Frame(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// RGBx → RGB or BGR: the reference is the RGB bytes of the file.
fn packed_case(format: OutputFormat, expected: PixelFormat, caps: &str) {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("stride_{caps}"));
    let rgbx = noise(W * H * 4 * FRAMES, 7);
    let file = write_raw(&dir, "in.rgbx", &rgbx);
    let launch = format!(
        "filesrc location={file} ! rawvideoparse format=rgbx width={W} height={H} framerate=30/1 plane-strides=<{}> ! videoconvert dither=none ! video/x-raw,format={caps}",
        W * 4
    );
    let got = frames(launch, format);
    assert_eq!(got.len(), FRAMES);
    for (i, frame) in got.iter().enumerate() {
        assert_eq!(frame.layout.format, expected);
        assert_eq!((frame.layout.width, frame.layout.height), (W, H));
        assert!(frame.layout.strides[0] > W * 3, "rows must arrive padded, stride {}", frame.layout.strides[0]);
        let tensor = frame_to_tensor(&frame.pixels, &frame.layout, Device::Cpu, None, None).unwrap();
        let rgb: Vec<u8> =
            rgbx[i * W * H * 4..(i + 1) * W * H * 4].chunks_exact(4).flat_map(|px| [px[0], px[1], px[2]]).collect();
        let reference =
            Tensor::from_slice(&rgb).view([H as i64, W as i64, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float)
                / 255.0;
        assert_eq!(max_abs_diff(&tensor, &reference), 0.0, "frame {i}");
    }
}

#[test]
fn odd_width_rgb() {
    packed_case(OutputFormat::Rgb, PixelFormat::Rgb, "RGB");
}

#[test]
fn odd_width_bgr() {
    packed_case(OutputFormat::Bgr, PixelFormat::Bgr, "BGR");
}

#[test]
fn odd_width_gray8() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "stride_gray8");
    let grey = noise(W * H * FRAMES, 11);
    // GRAY16 with an empty low byte converts to exactly the high byte.
    let gray16: Vec<u8> = grey.iter().flat_map(|&g| [0u8, g]).collect();
    let file = write_raw(&dir, "in.gray16", &gray16);
    let launch = format!(
        "filesrc location={file} ! rawvideoparse format=gray16-le width={W} height={H} framerate=30/1 plane-strides=<{}> ! videoconvert dither=none ! video/x-raw,format=GRAY8",
        W * 2
    );
    let got = frames(launch, OutputFormat::Gray8);
    assert_eq!(got.len(), FRAMES);
    for (i, frame) in got.iter().enumerate() {
        assert_eq!(frame.layout.format, PixelFormat::Gray8);
        assert!(frame.layout.strides[0] > W, "stride {}", frame.layout.strides[0]);
        let tensor = frame_to_tensor(&frame.pixels, &frame.layout, Device::Cpu, None, None).unwrap();
        let g =
            Tensor::from_slice(&grey[i * W * H..(i + 1) * W * H]).view([1, 1, H as i64, W as i64]).to_kind(Kind::Float)
                / 255.0;
        let reference = g.expand([1, 3, H as i64, W as i64], false);
        assert_eq!(max_abs_diff(&tensor, &reference), 0.0, "frame {i}");
    }
}

/// Limited-range BT.601 YUV → RGB in [0, 1], one pixel, written independently of the kernel.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let (y, u, v) = ((f64::from(y) - 16.0) * 255.0 / 219.0, f64::from(u) - 128.0, f64::from(v) - 128.0);
    let c = |x: f64| (x.clamp(0.0, 255.0) / 255.0) as f32;
    [c(y + 1.596_027 * v), c(y - 0.391_762 * u - 0.812_968 * v), c(y + 2.017_232 * u)]
}

#[test]
fn odd_width_nv12() {
    let (cw, ch) = (W.div_ceil(2), H.div_ceil(2));
    let frame_bytes = W * H + 2 * cw * ch;
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "stride_nv12");
    let i420 = noise(frame_bytes * FRAMES, 13);
    let file = write_raw(&dir, "in.i420", &i420);
    let launch = format!(
        "filesrc location={file} ! rawvideoparse format=i420 width={W} height={H} framerate=30/1 plane-strides=<{W},{cw},{cw}> plane-offsets=<0,{},{}> frame-size={frame_bytes} ! videoconvert dither=none ! video/x-raw,format=NV12",
        W * H,
        W * H + cw * ch
    );
    let got = frames(launch, OutputFormat::Nv12);
    assert_eq!(got.len(), FRAMES);
    for (i, frame) in got.iter().enumerate() {
        assert_eq!(frame.layout.format, PixelFormat::Nv12);
        assert_eq!(frame.layout.yuv_matrix, YuvMatrix::Bt601);
        assert!(frame.layout.strides[0] > W, "stride {}", frame.layout.strides[0]);
        let tensor = frame_to_tensor(&frame.pixels, &frame.layout, Device::Cpu, None, None).unwrap();
        let src = &i420[i * frame_bytes..(i + 1) * frame_bytes];
        let (y, rest) = src.split_at(W * H);
        let (u, v) = rest.split_at(cw * ch);
        let mut reference = vec![0f32; 3 * W * H];
        for r in 0..H {
            for c in 0..W {
                let k = (r / 2) * cw + c / 2;
                let rgb = yuv_to_rgb(y[r * W + c], u[k], v[k]);
                for (ch_i, value) in rgb.iter().enumerate() {
                    reference[ch_i * W * H + r * W + c] = *value;
                }
            }
        }
        let reference = Tensor::from_slice(&reference).view([1, 3, H as i64, W as i64]);
        let diff = max_abs_diff(&tensor, &reference);
        assert!(diff < 1e-5, "frame {i}: max abs diff {diff}");
    }
}
