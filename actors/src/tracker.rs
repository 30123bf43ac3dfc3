//! The tracker actor: SAM 2 streaming segmentation and multi-object tracking.
//!
//! Each camera has its own [`StreamingTracker`] (bounded memory per object); all objects of a
//! frame share one image encoding. Frames are preprocessed as the official video predictor
//! loads them (`sam2/utils/misc.py`: Pillow's bicubic resize of the 8-bit image to
//! `image_size × image_size`, then `/255` and ImageNet normalization), unless `resize = fast`.
//! Prompts are given in frame pixels and scaled to the model's input as the predictor does
//! (`points / [W, H] · image_size`, in f32). Per frame it emits [`Tracks`]: a label image at
//! frame resolution (mask logits upsampled bilinearly, > 0, as `_get_orig_video_res_output`),
//! boxes, object scores, and an occlusion flag for objects SAM 2 scores as absent (their mask
//! is left empty).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ocellus_kernels::masks::{mask_box, mask_to_bytes};
use ocellus_kernels::{DType, Fit, Normalization, Resize, ResizeMode, Transform};
use ocellus_perception::sam2::tracker::{PointInputs, Prompt, StreamConfig, StreamingTracker};
use ocellus_perception::sam2::{Sam2, Sam2Config};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::backbone::WeightsSource;
use crate::control::{ControlReceiver, TrackerCommand};
use crate::frame::{Packet, Track, Tracks};
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// A prompt in frame pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum FramePrompt {
    /// `[x0, y0, x1, y1]`.
    Box([f64; 4]),
    /// Points `[x, y]` with labels (1 positive, 0 negative).
    Points(Vec<[f64; 2]>, Vec<i32>),
}

/// What the tracker actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerSpec {
    /// `sam2.1_hiera_{tiny,small,base_plus,large}`.
    pub model: String,
    /// Weights.
    pub weights: WeightsSource,
    /// Device.
    pub device: Device,
    /// Precision.
    pub dtype: DType,
    /// Objects to track from each camera's first frame: (track id, prompt).
    pub prompts: Vec<(u32, FramePrompt)>,
    /// Streaming memory settings.
    pub stream: StreamConfig,
    /// Input side, when not the model config's `image_size` (a multiple of 32).
    pub image_size: Option<i64>,
    /// The official preprocessing, or the fast path.
    pub resize: ResizeMode,
    /// Commands from other actors (the agent's `track` / `untrack` tools).
    pub control: Option<ControlReceiver<TrackerCommand>>,
}

impl FramePrompt {
    /// The prompt in model pixels for a `width × height` frame and a model input `side`
    /// pixels square, computed as the official video predictor does (in f32:
    /// `point / [W, H] * side`).
    fn to_model(&self, width: f64, height: f64, side: i64, device: Device) -> Result<Prompt> {
        let (w, h, side) = (width as f32, height as f32, side as f32);
        let sx = |x: f64| (x as f32 / w) * side;
        let sy = |y: f64| (y as f32 / h) * side;
        let err = |e: tch::TchError| ActorError::Failed(e.to_string());
        Ok(match self {
            Self::Box([x0, y0, x1, y1]) => {
                let b = [sx(*x0), sy(*y0), sx(*x1), sy(*y1)];
                Prompt::Box {
                    bbox: Tensor::f_from_slice(&b)
                        .and_then(|t| t.f_view([1, 4]))
                        .and_then(|t| t.f_to_device(device))
                        .map_err(err)?,
                    points: None,
                }
            }
            Self::Points(points, labels) => {
                let coords: Vec<f32> = points.iter().flat_map(|[x, y]| [sx(*x), sy(*y)]).collect();
                let n = points.len() as i64;
                Prompt::Points(PointInputs {
                    coords: Tensor::f_from_slice(&coords)
                        .and_then(|t| t.f_view([1, n, 2]))
                        .and_then(|t| t.f_to_device(device))
                        .map_err(err)?,
                    labels: Tensor::f_from_slice(labels)
                        .and_then(|t| t.f_view([1, n]))
                        .and_then(|t| t.f_to_device(device))
                        .map_err(err)?,
                })
            }
        })
    }
}

/// Loads SAM 2 with its video path (every checkpoint key checked).
pub fn load_sam2(spec: &TrackerSpec) -> Result<(VarStore, Sam2)> {
    let mut config = Sam2Config::by_name(&spec.model)
        .ok_or_else(|| ActorError::Failed(format!("unknown SAM 2 model {:?}", spec.model)))?;
    if let Some(side) = spec.image_size {
        config.image_size = side;
    }
    let mut vs = VarStore::new(spec.device);
    let sam = Sam2::new_with_tracking(&vs.root(), &config)?;
    spec.weights.fill(&mut vs, spec.dtype)?;
    Ok((vs, sam))
}

/// Tracks the configured objects on every frame.
pub struct TrackerProcessor {
    _vs: VarStore,
    sam: Sam2,
    spec: TrackerSpec,
    cameras: HashMap<Arc<str>, StreamingTracker>,
    /// Commands for cameras not seen yet, applied on their first frame.
    pending: Vec<TrackerCommand>,
    /// The video predictor's frame loading.
    transform: Transform,
}

impl TrackerProcessor {
    /// Builds the processor (loads the weights).
    pub fn new(spec: TrackerSpec) -> Result<Self> {
        let (vs, sam) = load_sam2(&spec)?;
        let side = sam.image_size();
        let transform = Transform {
            fit: Fit::Stretch { height: side, width: side },
            resize: Resize::PilBicubic,
            norm: Normalization::IMAGENET,
        };
        Ok(Self { _vs: vs, sam, spec, cameras: HashMap::new(), pending: Vec::new(), transform })
    }

    /// Applies queued commands to `camera`'s tracker (frame size `w × h`).
    fn apply_commands(&mut self, camera: &Arc<str>, w: f64, h: f64) -> Result<()> {
        let mut commands = std::mem::take(&mut self.pending);
        if let Some(control) = &self.spec.control {
            commands.extend(control.drain());
        }
        let (device, side) = (self.spec.device, self.sam.image_size());
        for command in commands {
            let applies = match &command {
                TrackerCommand::Add { camera: Some(c), .. } => c == camera,
                _ => true,
            };
            let Some(tracker) = self.cameras.get_mut(camera).filter(|_| applies) else {
                if !applies {
                    self.pending.push(command);
                }
                continue;
            };
            match command {
                TrackerCommand::Add { id, prompt, .. } => {
                    tracing::info!(%camera, id, "tracking a new object");
                    tracker.add_prompt(u64::from(id), prompt.to_model(w, h, side, device)?);
                }
                TrackerCommand::Remove { id } => {
                    tracker.remove(u64::from(id));
                }
            }
        }
        Ok(())
    }
}

impl Processor for TrackerProcessor {
    fn finish(&mut self, _out: &mut Outputs) -> Result<()> {
        if let Some(control) = &self.spec.control {
            control.close();
        }
        Ok(())
    }

    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        let Packet::Frame(frame) = input else { return Ok(()) };
        let _span = trace_span!("tracker", camera = %frame.meta.camera, seq = frame.meta.seq).entered();
        let (w, h) = (frame.layout.width, frame.layout.height);
        let (device, side) = (self.spec.device, self.sam.image_size());
        let x = self
            .transform
            .apply_with(self.spec.resize, &frame.pixels, &frame.layout, device)
            .map_err(|e| ActorError::BadInput(format!("{} frame {}: {e}", frame.meta.camera, frame.meta.seq)))?
            .f_to_kind(self.spec.dtype.kind())
            .map_err(|e| ActorError::Failed(e.to_string()))?; // [1, 3, side, side]
        if !self.cameras.contains_key(&frame.meta.camera) {
            let mut t = StreamingTracker::new(self.spec.stream);
            for (id, prompt) in &self.spec.prompts {
                t.add_prompt(u64::from(*id), prompt.to_model(w as f64, h as f64, side, device)?);
            }
            self.cameras.insert(frame.meta.camera.clone(), t);
        }
        self.apply_commands(&frame.meta.camera, w as f64, h as f64)?;
        let Some(tracker) = self.cameras.get_mut(&frame.meta.camera) else { return Ok(()) };
        let outputs = tch::no_grad(|| -> Result<_> {
            let feats = self.sam.frame_features(&x)?;
            Ok(tracker.step(&self.sam, frame.meta.seq, &feats)?)
        })?;
        let err = |e: tch::TchError| ActorError::Failed(e.to_string());
        let mut labels = vec![0u16; w * h];
        let mut tracks = Vec::with_capacity(outputs.len());
        for (id, o) in outputs {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let score = o.object_score_logits.f_sigmoid().map_err(err)?.double_value(&[0, 0]) as f32;
            let occluded = !o.visible();
            let (mut bbox, mut area) = (None, 0u64);
            if !occluded {
                let logits = o
                    .pred_masks
                    .f_to_kind(Kind::Float)
                    .and_then(|m| m.f_upsample_bilinear2d([h as i64, w as i64], false, None, None))
                    .map_err(err)?;
                let mask = mask_to_bytes(&logits.f_view([h as i64, w as i64]).and_then(|m| m.f_gt(0.0)).map_err(err)?)?;
                for (l, m) in labels.iter_mut().zip(&mask) {
                    if *m != 0 {
                        *l = id as u16;
                        area += 1;
                    }
                }
                bbox = mask_box(&mask, w);
            }
            tracks.push(Track { id, bbox, score, occluded, area, label: None });
        }
        let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        out.emit(Packet::Tracks(Tracks {
            meta: frame.meta,
            width: w as u32,
            height: h as u32,
            labels: Bytes::from(bytes),
            tracks,
        }));
        Ok(())
    }
}
