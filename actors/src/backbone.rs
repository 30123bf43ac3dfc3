//! The backbone actor: Hiera or the SAM 2 image encoder on every frame, at the model's
//! resolution, on the configured device and dtype; features stay on the device. Frames go
//! through the model's official transform ([`Backbone::transform`]) unless `resize = fast`.
//!
//! Video models (`hiera_*_16x224`) run on a clip of the latest `T` frames of each camera; the
//! clip is a bounded ring, so memory does not grow with the stream.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use ocellus_kernels::{DType, ResizeMode, Transform};
use ocellus_perception::backbone::Backbone;
use tch::{Device, Tensor};
use tracing::trace_span;

use crate::frame::{Features, Packet};
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// Where a backbone's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A safetensors file with the official key names (`ocellus weights import`).
    File(PathBuf),
    /// Seeded random weights (demos and tests only).
    Random {
        /// Seed.
        seed: i64,
    },
}

impl WeightsSource {
    /// Fills `vs` (built by a model's constructor): loads the file, every key checked, or
    /// seeds it; then casts it to `dtype`.
    pub fn fill(&self, vs: &mut tch::nn::VarStore, dtype: DType) -> Result<()> {
        use ocellus_perception::weights;
        match self {
            Self::File(path) => weights::load(vs, path, weights::Scope::Exact)?,
            Self::Random { seed } => weights::init_seeded(vs, *seed)?,
        }
        match dtype {
            DType::F32 => {}
            DType::Bf16 => vs.bfloat16(),
            DType::F16 => vs.half(),
        }
        Ok(())
    }
}

/// What the backbone actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneSpec {
    /// Model name (`hiera_tiny_224`, `sam2.1_hiera_tiny`, ...).
    pub model: String,
    /// Weights.
    pub weights: WeightsSource,
    /// Input `(H, W)`; the model's own when `None`.
    pub resolution: Option<(i64, i64)>,
    /// The official transform, or the fast path.
    pub resize: ResizeMode,
    /// Device.
    pub device: Device,
    /// Precision.
    pub dtype: DType,
}

/// Loads the backbone of `spec` (the weights are checked key by key).
pub fn load_backbone(spec: &BackboneSpec) -> Result<Backbone> {
    let mut backbone = Backbone::new(&spec.model, spec.device)?;
    match &spec.weights {
        WeightsSource::File(path) => backbone.load(path)?,
        WeightsSource::Random { seed } => backbone.init_seeded(*seed)?,
    }
    backbone.set_dtype(spec.dtype);
    Ok(backbone)
}

/// Runs a backbone on every frame it receives.
pub struct BackboneProcessor {
    backbone: Backbone,
    name: Arc<str>,
    transform: Transform,
    clip_len: Option<i64>,
    clips: HashMap<Arc<str>, VecDeque<Tensor>>,
    spec: BackboneSpec,
}

impl BackboneProcessor {
    /// Builds the processor (loads the weights).
    pub fn new(spec: BackboneSpec) -> Result<Self> {
        let backbone = load_backbone(&spec)?;
        let input = backbone.input_size().to_vec();
        let clip_len = match input.as_slice() {
            [t, _, _] => Some(*t),
            [_, _] => None,
            _ => return Err(ActorError::Failed(format!("backbone input {input:?}"))),
        };
        Ok(Self {
            name: spec.model.as_str().into(),
            transform: backbone.transform(spec.resolution),
            clip_len,
            clips: HashMap::new(),
            backbone,
            spec,
        })
    }
}

impl Processor for BackboneProcessor {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        let Packet::Frame(frame) = input else { return Ok(()) };
        let _span = trace_span!("backbone", model = %self.name, seq = frame.meta.seq).entered();
        let x = self
            .transform
            .apply_with(self.spec.resize, &frame.pixels, &frame.layout, self.spec.device)
            .map_err(|e| ActorError::BadInput(format!("{} frame {}: {e}", frame.meta.camera, frame.meta.seq)))?; // [1, 3, H, W]
        let x = x.f_to_kind(self.spec.dtype.kind()).map_err(|e| ActorError::Failed(e.to_string()))?;
        let x = match self.clip_len {
            None => x,
            Some(t) => {
                let clip = self.clips.entry(frame.meta.camera.clone()).or_default();
                clip.push_back(x);
                while clip.len() as i64 > t {
                    clip.pop_front();
                }
                if (clip.len() as i64) < t {
                    return Ok(()); // the first clip is still filling
                }
                let frames: Vec<&Tensor> = clip.iter().collect();
                Tensor::f_stack(&frames, 2).map_err(|e| ActorError::Failed(e.to_string()))? // [1, 3, T, H, W]
            }
        };
        let levels = self.backbone.forward(&x)?;
        out.emit(Packet::Features(Features { meta: frame.meta, model: self.name.clone(), levels }));
        Ok(())
    }
}
