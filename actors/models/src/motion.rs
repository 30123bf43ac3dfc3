//! The motion actor (`kind = "motion"`): frame differencing on the configured device, a mask
//! per frame; one [`MotionState`] per camera.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ocellus_kernels::masks::mask_to_bytes;
use ocellus_perception::PerceptionError;
use ocellus_perception::motion::{MotionConfig, MotionSegmenter, MotionState};
use ocellus_runtime::edge::EdgePolicy;
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory};
use ocellus_runtime::port::{InputPort, OutputPort, Ports};
use ocellus_runtime::{Mask, MaskKind, Packet, PortType, Result, RuntimeError};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::Device;
use tracing::trace_span;

use crate::bad_frame;

/// `[[actor]] kind = "motion"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MotionEntry {
    /// Minimum change of the blurred luma, in `[0, 1]`, for a pixel to move.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Side of the box blur before differencing (odd; 1 disables it).
    #[serde(default = "default_blur")]
    pub blur: i64,
    /// Side of the dilation of the mask (odd; 1 disables it).
    #[serde(default = "default_dilate")]
    pub dilate: i64,
}

fn default_threshold() -> f64 {
    MotionConfig::default().threshold
}
fn default_blur() -> i64 {
    MotionConfig::default().blur
}
fn default_dilate() -> i64 {
    MotionConfig::default().dilate
}

/// The motion kind.
pub struct MotionKind;

/// A configured motion actor.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionNode {
    /// The segmenter's settings.
    pub config: MotionConfig,
    /// Where it runs.
    pub device: Device,
}

impl NodeKind for MotionKind {
    const NAME: &'static str = "motion";
    const DOC: &'static str = "Motion segmentation by frame differencing: a mask per frame";
    const MODEL: ModelUse = ModelUse::None;
    type Config = MotionEntry;

    fn configure(common: &Common, e: MotionEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        if !(0.0..=1.0).contains(&e.threshold) {
            return Err(Issue::at("threshold", format!("{} is outside [0, 1]", e.threshold)));
        }
        for (key, v) in [("blur", e.blur), ("dilate", e.dilate)] {
            if v < 1 || v % 2 == 0 {
                return Err(Issue::at(key, format!("{v} must be odd and at least 1")));
            }
        }
        let config = MotionConfig { threshold: e.threshold, blur: e.blur, dilate: e.dilate };
        Ok(Arc::new(MotionNode { config, device: common.device }))
    }
}

/// The motion actor's ports.
pub fn ports() -> Ports {
    Ports {
        inputs: vec![InputPort::new("frames", &[PortType::Frame], EdgePolicy::Latest)],
        outputs: vec![OutputPort { name: "masks", ty: PortType::Mask }],
        join: None,
    }
}

impl ConfiguredNode for MotionNode {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, _ctx: &mut BuildContext) -> Result<StageFactory> {
        let (config, device) = (self.config, self.device);
        Ok(Box::new(move || Ok(Box::new(MotionStage::new(config, device)?) as Box<dyn Stage>)))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Segments motion in every frame it receives; one [`MotionState`] per camera.
pub struct MotionStage {
    model: MotionSegmenter,
    states: HashMap<Arc<str>, MotionState>,
}

impl MotionStage {
    /// A stage running `config` on `device`.
    pub fn new(config: MotionConfig, device: Device) -> Result<Self> {
        Ok(Self { model: MotionSegmenter::new(config, device).map_err(crate::failed)?, states: HashMap::new() })
    }
}

impl Stage for MotionStage {
    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let Packet::Frame(frame) = input.packet else {
            return Err(RuntimeError::BadInput("motion takes frames".into()));
        };
        let _span = trace_span!("motion", camera = %frame.meta.camera, seq = frame.meta.seq).entered();
        let state = self.states.entry(frame.meta.camera.clone()).or_default();
        let output = match self.model.step(state, &frame.pixels, &frame.layout) {
            Ok(o) => o,
            // A frame whose bytes do not match its layout is the frame's fault, not the model's.
            Err(PerceptionError::Kernel(e)) => {
                state.reset();
                return Err(bad_frame(&frame.meta, e));
            }
            Err(e) => return Err(crate::failed(e)),
        };
        let data = mask_to_bytes(&output.mask)?;
        ctx.emit(Packet::Mask(Mask {
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
    use ocellus_runtime::edge::{DropPolicy, Recv, edge};
    use ocellus_runtime::metrics::StageMetrics;
    use ocellus_runtime::{Clock, Frame, FrameMeta};
    use ocellus_wire::{FrameLayout, PixelFormat};

    use super::*;

    fn frame(seq: u64, pixels: Vec<u8>) -> Input {
        let meta = FrameMeta { camera: "cam".into(), seq, capture_ns: 0, frame_id: None };
        // Built by hand, bypassing `Frame::new`'s check, as a corrupt upstream would.
        let frame = Frame { meta, layout: FrameLayout::packed(PixelFormat::Rgb, 8, 4), pixels: Bytes::from(pixels) };
        Input { port: 0, packet: Packet::Frame(frame), with: None }
    }

    #[test]
    fn a_corrupt_frame_is_bad_input_and_the_next_one_works() {
        let (tx, mut rx) = edge("out", EdgePolicy::Queue { depth: 4, drop: DropPolicy::Oldest });
        let mut ctx = Context::new("motion".into(), vec![vec![tx]], Arc::new(StageMetrics::default()), Clock::Live);
        let mut motion = MotionStage::new(MotionConfig::default(), Device::Cpu).unwrap();
        motion.process(frame(0, vec![0; 96]), &mut ctx).unwrap();
        let err = motion.process(frame(1, vec![0; 10]), &mut ctx).unwrap_err();
        assert!(matches!(err, RuntimeError::BadInput(ref m) if m.contains("cam frame 1")), "{err}");
        motion.process(frame(2, vec![255; 96]), &mut ctx).unwrap();
        let masks: Vec<u64> = std::iter::from_fn(|| match rx.try_pop() {
            Recv::Item(p) => Some(p.meta().map_or(u64::MAX, |m| m.seq)),
            _ => None,
        })
        .collect();
        assert_eq!(masks, [0, 2]);
    }
}
