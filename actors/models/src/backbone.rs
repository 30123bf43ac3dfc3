//! The backbone actor (`kind = "backbone"`): Hiera or the SAM 2 image encoder on every frame,
//! at the model's resolution, on the configured device and precision; features stay on the
//! device. Frames go through the model's official transform
//! ([`Backbone::transform`](ocellus_perception::backbone::Backbone::transform)) unless
//! `resize = "fast"`.
//!
//! Video models (`hiera_*_16x224`) run on a clip of the latest `T` frames of each camera; the
//! clip is a bounded ring, so memory does not grow with the stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ocellus_kernels::{ResizeMode, Transform};
use ocellus_perception::backbone::{self, Backbone};
use ocellus_perception::hiera::HieraConfig;
use ocellus_perception::model::{Loaded, ModelSpec, WeightsSource};
use ocellus_perception::onnx::{Backend, OnnxModel, OnnxOptions};
use ocellus_runtime::edge::EdgePolicy;
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, OutputPort, Ports};
use ocellus_runtime::{Features, Packet, PortType, Result, RuntimeError};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::Tensor;
use tracing::trace_span;

use crate::{bad_frame, failed, model_spec};

/// `resize = "exact" | "fast"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResizeName {
    /// The model's official preprocessing, bit for bit.
    #[default]
    Exact,
    /// Bilinear on the device: cheaper, not exact.
    Fast,
}

impl From<ResizeName> for ResizeMode {
    fn from(r: ResizeName) -> Self {
        match r {
            ResizeName::Exact => Self::Exact,
            ResizeName::Fast => Self::Fast,
        }
    }
}

/// `[[actor]] kind = "backbone"` (with `model` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackboneEntry {
    /// Input `[H, W]`: SAM 2 encoders take multiples of 32; Hiera runs at its own size only.
    pub resolution: Option<[i64; 2]>,
    /// The official preprocessing (`exact`) or bilinear on the device (`fast`).
    #[serde(default)]
    pub resize: ResizeName,
    /// `tch` (Ocellus's own model) or `onnx`: ONNX Runtime on the file `weights` names,
    /// exported by `ocellus weights export-onnx` at this entry's resolution.
    #[serde(default)]
    pub backend: Backend,
    /// ONNX Runtime session options (`backend = "onnx"`): `threads`, `optimization`,
    /// `providers`.
    pub onnx: Option<OnnxOptions>,
}

/// The backbone kind.
pub struct BackboneKind;

/// How the backbone runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneBackend {
    /// Ocellus's own model.
    Tch,
    /// ONNX Runtime on an exported file (the model's `weights`).
    Onnx(OnnxOptions),
}

/// What the backbone actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneSpec {
    /// The model.
    pub model: ModelSpec,
    /// Its backend.
    pub backend: BackboneBackend,
    /// Input `(H, W)`; the model's own when `None`.
    pub resolution: Option<(i64, i64)>,
    /// The official transform, or the fast path.
    pub resize: ResizeMode,
}

impl NodeKind for BackboneKind {
    const NAME: &'static str = "backbone";
    const DOC: &'static str = "Hiera or the SAM 2 image encoder on every frame: feature maps on the device";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = BackboneEntry;

    fn configure(common: &Common, e: BackboneEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Backbone>(common)?;
        let backend = match crate::onnx_options(e.backend, e.onnx, model.dtype)? {
            None => BackboneBackend::Tch,
            Some(options) => {
                match &model.weights {
                    WeightsSource::File(f) if f.extension().is_some_and(|e| e == "onnx") => {}
                    WeightsSource::File(f) => {
                        return Err(Issue::at(
                            "weights",
                            format!(
                                "`backend = \"onnx\"` runs an .onnx file (`ocellus weights export-onnx --model {} --weights {}`)",
                                model.name,
                                f.display()
                            ),
                        ));
                    }
                    WeightsSource::Random { .. } => {
                        return Err(Issue::at(
                            "backend",
                            "`backend = \"onnx\"` runs an exported file: give it as `weights` (ocellus weights export-onnx)",
                        ));
                    }
                }
                BackboneBackend::Onnx(options)
            }
        };
        let resolution = match (e.resolution, HieraConfig::by_name(&model.name)) {
            (None, _) => None,
            (Some([h, w]), Some(hiera)) => {
                let own = &hiera.input_size[hiera.input_size.len() - 2..];
                if own != [h, w] {
                    return Err(Issue::at(
                        "resolution",
                        format!("{} runs at {own:?} only (its position embedding is fixed)", model.name),
                    ));
                }
                Some((h, w))
            }
            (Some([h, w]), None) => {
                if h <= 0 || w <= 0 || h % 32 != 0 || w % 32 != 0 {
                    return Err(Issue::at(
                        "resolution",
                        format!("[{h}, {w}]: SAM 2 encoders need positive multiples of 32"),
                    ));
                }
                Some((h, w))
            }
        };
        Ok(Arc::new(BackboneSpec { model, backend, resolution, resize: e.resize.into() }))
    }
}

/// The backbone actor's ports.
pub fn ports() -> Ports {
    Ports {
        inputs: vec![InputPort::new("frames", &[PortType::Frame], EdgePolicy::Latest)],
        outputs: vec![OutputPort { name: "features", ty: PortType::Features }],
        join: None,
    }
}

impl ConfiguredNode for BackboneSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, _ctx: &mut BuildContext) -> Result<StageFactory> {
        let spec = self.clone();
        Ok(stage_factory(move || BackboneStage::new(spec.clone())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The model as it runs.
enum Runner {
    Tch(Loaded<Backbone>),
    Onnx(OnnxModel),
}

impl Runner {
    fn forward(&self, x: &Tensor) -> ocellus_perception::Result<Vec<Tensor>> {
        match self {
            Self::Tch(b) => b.forward(x),
            Self::Onnx(m) => m.forward(x),
        }
    }
}

/// The model and what the stage derives from it, once started.
struct Running {
    backbone: Runner,
    transform: Transform,
    clip_len: Option<i64>,
}

/// Runs a backbone on every frame it receives.
pub struct BackboneStage {
    spec: BackboneSpec,
    name: Arc<str>,
    running: Option<Running>,
    clips: HashMap<Arc<str>, VecDeque<Tensor>>,
}

impl BackboneStage {
    /// A stage running `spec` (the model loads when it starts).
    pub fn new(spec: BackboneSpec) -> Self {
        Self { name: spec.model.name.as_str().into(), spec, running: None, clips: HashMap::new() }
    }
}

impl Stage for BackboneStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let name = &self.spec.model.name;
        let (size, transform) = backbone::input_size_of(name)
            .zip(backbone::transform_of(name, self.spec.resolution))
            .ok_or_else(|| RuntimeError::Failed(format!("unknown backbone {name}")))?;
        let clip_len = match size[..] {
            [t, _, _] => Some(t),
            [_, _] => None,
            ref other => return Err(RuntimeError::Failed(format!("backbone input {other:?}"))),
        };
        let backbone = match &self.spec.backend {
            BackboneBackend::Tch => Runner::Tch(self.spec.model.load::<Backbone>().map_err(failed)?),
            BackboneBackend::Onnx(options) => {
                let WeightsSource::File(file) = &self.spec.model.weights else {
                    return Err(RuntimeError::Failed("the onnx backend needs a file".into()));
                };
                let model = OnnxModel::load(file, options).map_err(failed)?;
                // [1, 3, (T,) H, W] as the entry runs it
                let (h, w) = self.spec.resolution.unwrap_or((size[size.len() - 2], size[size.len() - 1]));
                let mut expected = vec![1, 3];
                expected.extend(clip_len);
                expected.extend([h, w]);
                if !model.accepts(&expected) {
                    return Err(RuntimeError::Failed(format!(
                        "{}: exported for input {:?}, this backbone runs {expected:?} (export it with --resolution {h} {w})",
                        file.display(),
                        model.input_shape()
                    )));
                }
                Runner::Onnx(model)
            }
        };
        self.running = Some(Running { backbone, transform, clip_len });
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let Packet::Frame(frame) = input.packet else {
            return Err(RuntimeError::BadInput("the backbone takes frames".into()));
        };
        let Some(run) = self.running.as_ref() else { return Err(RuntimeError::Failed("not started".into())) };
        let _span = trace_span!("backbone", model = %self.name, seq = frame.meta.seq).entered();
        let x = run
            .transform
            .apply_with(self.spec.resize, &frame.pixels, &frame.layout, self.spec.model.device)
            .map_err(|e| bad_frame(&frame.meta, e))?; // [1, 3, H, W]
        let x = x.f_to_kind(self.spec.model.dtype.kind())?;
        let x = match run.clip_len {
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
                Tensor::f_stack(&frames, 2)? // [1, 3, T, H, W]
            }
        };
        let levels = run.backbone.forward(&x).map_err(failed)?;
        ctx.emit(Packet::Features(Features { meta: frame.meta, model: self.name.clone(), levels }));
        Ok(())
    }
}
