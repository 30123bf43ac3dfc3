//! A synthetic source: one pre-built frame re-sent with new identities.
//!
//! It measures the runtime alone (no capture, no conversion): the pixels are shared, never
//! copied, exactly as a GStreamer buffer is.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ocellus_runtime::node::{Flow, Source, SourceContext};
use ocellus_runtime::{Frame, FrameMeta, Packet, now_ns};
use ocellus_wire::{FrameLayout, PixelFormat};

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

/// The synthetic source.
pub struct SyntheticSource {
    spec: SyntheticSpec,
    layout: FrameLayout,
    pixels: Bytes,
    seq: u64,
    started: Instant,
}

impl SyntheticSource {
    /// A source sending `spec`'s frames.
    pub fn new(spec: SyntheticSpec) -> Self {
        let layout = FrameLayout::packed(PixelFormat::Rgb, spec.width, spec.height);
        let pixels = Bytes::from((0..layout.required_len()).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        Self { spec, layout, pixels, seq: 0, started: Instant::now() }
    }
}

impl Source for SyntheticSource {
    fn start(&mut self, _ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        self.started = Instant::now();
        Ok(())
    }

    fn process(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<Flow> {
        if self.seq >= self.spec.frames || ctx.end_requested() {
            return Ok(Flow::End);
        }
        if let Some(period) = self.spec.fps.filter(|f| *f > 0.0).map(|f| Duration::from_secs_f64(1.0 / f)) {
            let due = self.started + period.saturating_mul(u32::try_from(self.seq).unwrap_or(u32::MAX));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let meta = FrameMeta { camera: ctx.name().clone(), seq: self.seq, capture_ns: now_ns(), frame_id: None };
        let frame = Frame { meta, layout: self.layout, pixels: self.pixels.clone() };
        if !ctx.emit(Packet::Frame(frame)) {
            return Ok(Flow::End);
        }
        self.seq += 1;
        Ok(Flow::Continue)
    }
}
