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
