//! A synthetic source: one pre-built frame re-sent with new identities, on a thread.
//!
//! It measures the runtime alone (no capture, no conversion): the pixels are shared, never
//! copied, exactly as a GStreamer buffer is.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ocellus_kernels::{FrameLayout, PixelFormat};

use super::SourceOutputs;
use crate::frame::{Frame, FrameMeta, Packet};
use crate::now_ns;

/// What the synthetic source sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Frames to send.
    pub frames: u64,
    /// Frames per second; `None` sends as fast as the edges accept.
    pub fps: Option<f64>,
}

/// Runs the source on a new thread until `spec.frames` are sent or the outputs close.
pub fn spawn(spec: SyntheticSpec, outputs: SourceOutputs) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("source:{}", outputs.name)).spawn(move || {
        let layout = FrameLayout::packed(PixelFormat::Rgb, spec.width, spec.height);
        let pixels = Bytes::from((0..layout.required_len()).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let period = spec.fps.filter(|f| *f > 0.0).map(|f| Duration::from_secs_f64(1.0 / f));
        let start = Instant::now();
        for seq in 0..spec.frames {
            if let Some(p) = period {
                let due = start + p.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let meta = FrameMeta { camera: outputs.name.clone(), seq, capture_ns: now_ns() };
            let frame = Frame { meta, layout, pixels: pixels.clone() };
            if !outputs.emit(Packet::Frame(frame)) {
                break;
            }
        }
        outputs.close(None);
    })
}
