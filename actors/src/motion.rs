//! The motion actor: frame differencing on the configured device, a mask per frame.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ocellus_kernels::masks::mask_to_bytes;
use ocellus_perception::PerceptionError;
use ocellus_perception::motion::{MotionConfig, MotionSegmenter, MotionState};
use tch::Device;
use tracing::trace_span;

use crate::frame::{Mask, MaskKind, Packet};
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// Segments motion in every frame it receives; one [`MotionState`] per camera.
pub struct MotionProcessor {
    model: MotionSegmenter,
    states: HashMap<Arc<str>, MotionState>,
}

impl MotionProcessor {
    /// A processor running `config` on `device`.
    pub fn new(config: MotionConfig, device: Device) -> Result<Self> {
        Ok(Self { model: MotionSegmenter::new(config, device)?, states: HashMap::new() })
    }
}

impl Processor for MotionProcessor {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        let Packet::Frame(frame) = input else { return Ok(()) };
        let _span = trace_span!("motion", camera = %frame.meta.camera, seq = frame.meta.seq).entered();
        let state = self.states.entry(frame.meta.camera.clone()).or_default();
        let output = match self.model.step(state, &frame.pixels, &frame.layout) {
            Ok(o) => o,
            // A frame whose bytes do not match its layout is the frame's fault, not the model's.
            Err(PerceptionError::Kernel(e)) => {
                state.reset();
                return Err(ActorError::BadInput(format!("{} frame {}: {e}", frame.meta.camera, frame.meta.seq)));
            }
            Err(e) => return Err(e.into()),
        };
        let data = mask_to_bytes(&output.mask)?;
        out.emit(Packet::Mask(Mask {
            meta: frame.meta,
            kind: MaskKind::Motion,
            width: frame.layout.width as u32,
            height: frame.layout.height as u32,
            data: Bytes::from(data),
            coverage: output.moving_fraction,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ocellus_kernels::{FrameLayout, PixelFormat};

    use super::*;
    use crate::edge::{EdgePolicy, edge};
    use crate::frame::{Frame, FrameMeta};
    use crate::metrics::StageMetrics;

    fn frame(seq: u64, pixels: Vec<u8>) -> Packet {
        let meta = FrameMeta { camera: "cam".into(), seq, capture_ns: 0 };
        // Built by hand, bypassing `Frame::new`'s check, as a corrupt upstream would.
        Packet::Frame(Frame { meta, layout: FrameLayout::packed(PixelFormat::Rgb, 8, 4), pixels: Bytes::from(pixels) })
    }

    #[test]
    fn a_corrupt_frame_is_bad_input_and_the_next_one_works() {
        let (tx, mut rx) = edge("out", EdgePolicy::Queue { depth: 4, drop: crate::DropPolicy::Oldest });
        let mut out = Outputs::new("motion".into(), vec![tx], Arc::new(StageMetrics::default()));
        let mut motion = MotionProcessor::new(MotionConfig::default(), Device::Cpu).unwrap();
        motion.process(frame(0, vec![0; 96]), &mut out).unwrap();
        let err = motion.process(frame(1, vec![0; 10]), &mut out).unwrap_err();
        assert!(matches!(err, ActorError::BadInput(ref m) if m.contains("cam frame 1")), "{err}");
        motion.process(frame(2, vec![255; 96]), &mut out).unwrap();
        let masks: Vec<u64> = std::iter::from_fn(|| match rx.pop_timeout(std::time::Duration::ZERO) {
            crate::edge::Recv::Item(p) => Some(p.meta().map_or(u64::MAX, |m| m.seq)),
            _ => None,
        })
        .collect();
        assert_eq!(masks, [0, 2]);
    }
}
