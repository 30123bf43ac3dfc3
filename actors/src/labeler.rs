//! The labeler actor: MetaCLIP zero-shot labels for SAM 2 tracks.
//!
//! It reads frames and the tracks computed from them (pairing them by camera and sequence
//! number), crops each visible track mask-aware — the box padded and made square, pixels
//! outside the track's mask and outside the frame filled with CLIP's mean colour (zero after
//! normalization) — and classifies every crop of a frame in one batch over the vocabulary
//! (the configured one, or candidates an agent sets with
//! [`LabelerProcessor::set_candidates`]). Per track, class probabilities are smoothed over
//! time (an exponential moving average), and the tracks go out again with their label and its
//! smoothed probability; occluded tracks keep their last label.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use ocellus_kernels::preprocess::resize_shortest_center_crop;
use ocellus_kernels::{DType, Normalization, frame_to_tensor};
use ocellus_perception::clip::tokenizer::ClipTokenizer;
use ocellus_perception::clip::zero_shot::{ClassifierCache, OPENAI_IMAGENET_TEMPLATES, ZeroShotClassifier};
use ocellus_perception::clip::{Clip, ClipConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::backbone::WeightsSource;
use crate::frame::{Frame, Packet, TrackLabel, Tracks};
use crate::pairing::FramePairing;
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// Frames kept per camera while their tracks are computed.
const FRAME_BUFFER: usize = 32;
/// Vocabularies whose class embeddings are kept.
const CLASSIFIERS_CACHED: usize = 4;

/// What the labeler runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelerSpec {
    /// open_clip model name (`ViT-B-32-quickgelu`, ...).
    pub model: String,
    /// Weights (open_clip's `state_dict` keys).
    pub weights: WeightsSource,
    /// Device.
    pub device: Device,
    /// Precision.
    pub dtype: DType,
    /// Class names.
    pub vocabulary: Vec<String>,
    /// Prompt templates (`{}` = the class name).
    pub templates: Vec<String>,
    /// `bpe_simple_vocab_16e6.txt.gz`; the venv's open_clip copy when `None`.
    pub bpe: Option<PathBuf>,
    /// Weight of the newest probabilities in the per-track moving average (1 = no smoothing).
    pub smoothing: f64,
    /// Box padding on each side, as a fraction of the box's longer side.
    pub padding: f64,
    /// Commands from the agent's `label` tool: candidate names for one track.
    pub control: Option<crate::control::ControlReceiver<crate::control::LabelerCommand>>,
}

impl LabelerSpec {
    /// The 80 OpenAI ImageNet templates.
    pub fn openai_templates() -> Vec<String> {
        OPENAI_IMAGENET_TEMPLATES.iter().map(|t| (*t).to_owned()).collect()
    }
}

/// Loads CLIP (every key checked) for `spec`.
pub fn load_clip(model: &str, source: &WeightsSource, device: Device, dtype: DType) -> Result<(VarStore, Clip)> {
    let config =
        ClipConfig::by_name(model).ok_or_else(|| ActorError::Failed(format!("unknown CLIP model {model:?}")))?;
    let mut vs = VarStore::new(device);
    let clip = Clip::new(&vs.root(), &config)?;
    source.fill(&mut vs, dtype)?;
    Ok((vs, clip))
}

/// Zero-shot labels for tracks.
pub struct LabelerProcessor {
    _vs: VarStore,
    clip: Clip,
    tokenizer: ClipTokenizer,
    spec: LabelerSpec,
    classifiers: ClassifierCache,
    candidates: Option<Vec<String>>,
    frames: FramePairing,
    /// Smoothed probabilities per (camera, track), over `current`'s classes.
    smoothed: HashMap<(Arc<str>, u32), Vec<f32>>,
    current: Option<Rc<ZeroShotClassifier>>,
    /// Candidates the agent gave for single tracks, and their smoothed probabilities.
    track_candidates: HashMap<u32, Vec<String>>,
    track_smoothed: HashMap<(Arc<str>, u32), Vec<f32>>,
}

fn torch(e: tch::TchError) -> ActorError {
    ActorError::Failed(e.to_string())
}

impl LabelerProcessor {
    /// Builds the processor (loads the weights and the tokenizer).
    pub fn new(spec: LabelerSpec) -> Result<Self> {
        let (vs, clip) = load_clip(&spec.model, &spec.weights, spec.device, spec.dtype)?;
        let tokenizer = match &spec.bpe {
            Some(path) => ClipTokenizer::from_file(path)?,
            None => ClipTokenizer::from_venv()?,
        };
        Ok(Self {
            _vs: vs,
            clip,
            tokenizer,
            spec,
            classifiers: ClassifierCache::new(CLASSIFIERS_CACHED),
            candidates: None,
            frames: FramePairing::new(FRAME_BUFFER),
            smoothed: HashMap::new(),
            current: None,
            track_candidates: HashMap::new(),
            track_smoothed: HashMap::new(),
        })
    }

    /// Labels track `id` from `candidates` (the agent's `label` tool); smoothing restarts.
    pub fn set_track_candidates(&mut self, id: u32, candidates: Vec<String>) {
        self.track_smoothed.retain(|(_, t), _| *t != id);
        if candidates.is_empty() {
            self.track_candidates.remove(&id);
        } else {
            self.track_candidates.insert(id, candidates);
        }
    }

    /// Labels from these candidates (e.g. an agent's) instead of the configured vocabulary;
    /// `None` returns to the vocabulary. Smoothing restarts when the classes change.
    pub fn set_candidates(&mut self, candidates: Option<Vec<String>>) {
        self.candidates = candidates.filter(|c| !c.is_empty());
    }

    /// The classes labels are drawn from now.
    pub fn classes(&self) -> &[String] {
        self.candidates.as_deref().unwrap_or(&self.spec.vocabulary)
    }

    fn classifier(&mut self) -> Result<Rc<ZeroShotClassifier>> {
        let classes = self.classes().to_vec();
        let classifier =
            tch::no_grad(|| self.classifiers.get(&self.clip, &self.tokenizer, &classes, &self.spec.templates))?;
        if !self.current.as_ref().is_some_and(|c| Rc::ptr_eq(c, &classifier)) {
            self.smoothed.clear();
            self.current = Some(classifier.clone());
        }
        Ok(classifier)
    }

    /// The square crop of box `[x0, y0, x1, y1)` padded, as `(x0, y0, side)` (may leave the frame).
    fn square(&self, b: &ocellus_kernels::masks::PixelBox) -> (i64, i64, i64) {
        let (w, h) = (i64::from(b.x1) - i64::from(b.x0), i64::from(b.y1) - i64::from(b.y0));
        let long = w.max(h).max(1);
        let side = long + 2 * (long as f64 * self.spec.padding).round() as i64;
        let cx = i64::from(b.x0) + w / 2;
        let cy = i64::from(b.y0) + h / 2;
        (cx - side / 2, cy - side / 2, side)
    }

    /// Mask-aware crops `[N, 3, S, S]` (normalized) of the visible tracks with a box.
    fn crops(&self, frame: &Frame, tracks: &Tracks, ids: &[(u32, ocellus_kernels::masks::PixelBox)]) -> Result<Tensor> {
        let device = self.spec.device;
        let size = self.clip.config().vision_cfg.image_size;
        let rgb = frame_to_tensor(&frame.pixels, &frame.layout, device, None, None)
            .map_err(|e| ActorError::BadInput(format!("{} frame {}: {e}", frame.meta.camera, frame.meta.seq)))?; // [1, 3, H, W]
        let (h, w) = (frame.layout.height as i64, frame.layout.width as i64);
        if i64::from(tracks.width) != w || i64::from(tracks.height) != h {
            return Err(ActorError::BadInput(format!(
                "tracks of {}x{} for a {w}x{h} frame",
                tracks.width, tracks.height
            )));
        }
        let labels: Vec<i32> =
            tracks.labels.chunks_exact(2).map(|c| i32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
        let labels = Tensor::f_from_slice(&labels)
            .and_then(|t| t.f_view([h, w]))
            .and_then(|t| t.f_to_device(device))
            .map_err(torch)?; // [H, W]
        let mean = Tensor::f_from_slice(&Normalization::CLIP.mean)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_to_device(device))
            .and_then(|t| t.f_view([1, 3, 1, 1]))
            .map_err(torch)?; // [1, 3, 1, 1]
        let centred = rgb.f_sub(&mean).map_err(torch)?; // [1, 3, H, W], background will be 0
        let mut crops = Vec::with_capacity(ids.len());
        for (id, b) in ids {
            let inside = labels.f_eq(i64::from(*id)).and_then(|m| m.f_to_kind(Kind::Float)).map_err(torch)?; // [H, W]
            let masked = centred.f_mul(&inside.f_view([1, 1, h, w]).map_err(torch)?).map_err(torch)?; // [1, 3, H, W]
            let (x0, y0, side) = self.square(b);
            // Cut what lies inside the frame, then zero-pad (mean colour) to the square.
            let (cx0, cy0) = (x0.clamp(0, w), y0.clamp(0, h));
            let (cx1, cy1) = ((x0 + side).clamp(0, w), (y0 + side).clamp(0, h));
            let cut = masked
                .f_narrow(2, cy0, (cy1 - cy0).max(1))
                .and_then(|t| t.f_narrow(3, cx0, (cx1 - cx0).max(1)))
                .map_err(torch)?; // [1, 3, ch, cw]
            let pad = [cx0 - x0, x0 + side - cx1.max(cx0 + 1), cy0 - y0, y0 + side - cy1.max(cy0 + 1)];
            let square = cut.f_constant_pad_nd(pad).and_then(|t| t.f_add(&mean)).map_err(torch)?; // [1, 3, side, side]
            crops.push(resize_shortest_center_crop(&square, size, Some(Normalization::CLIP))?); // [1, 3, S, S]
        }
        Tensor::f_cat(&crops, 0).map_err(torch) // [N, 3, S, S]
    }

    fn label(&mut self, frame: &Frame, mut tracks: Tracks) -> Result<Tracks> {
        if let Some(control) = &self.spec.control {
            for crate::control::LabelerCommand::Candidates { track_id, candidates } in control.drain() {
                self.set_track_candidates(track_id, candidates);
            }
        }
        let classifier = self.classifier()?;
        let visible: Vec<(u32, ocellus_kernels::masks::PixelBox)> =
            tracks.tracks.iter().filter(|t| !t.occluded).filter_map(|t| t.bbox.map(|b| (t.id, b))).collect();
        let camera = tracks.meta.camera.clone();
        let mut own: HashMap<u32, Rc<ZeroShotClassifier>> = HashMap::new();
        if !visible.is_empty() {
            let crops = self.crops(frame, &tracks, &visible)?.f_to_kind(self.clip.kind()).map_err(torch)?;
            let features = tch::no_grad(|| self.clip.encode_image(&crops))?; // [N, embed]
            let alpha = self.spec.smoothing as f32;
            for (row, (id, _)) in visible.iter().enumerate() {
                // A track the agent gave candidates for is classified over those.
                let track_classifier = match self.track_candidates.get(id).cloned() {
                    Some(classes) => {
                        let c = tch::no_grad(|| {
                            self.classifiers.get(&self.clip, &self.tokenizer, &classes, &self.spec.templates)
                        })?;
                        own.insert(*id, c.clone());
                        c
                    }
                    None => classifier.clone(),
                };
                let p = tch::no_grad(|| -> Result<Vec<f32>> {
                    let f = features.f_narrow(0, row as i64, 1).map_err(torch)?; // [1, embed]
                    let logits = track_classifier.logits(&f)?; // [1, classes]
                    let probs =
                        logits.f_to_kind(Kind::Float).and_then(|l| l.f_softmax(-1, None::<Kind>)).map_err(torch)?;
                    Vec::<f32>::try_from(probs.f_view([-1]).and_then(|t| t.f_to_device(Device::Cpu)).map_err(torch)?)
                        .map_err(torch)
                })?;
                let store = if own.contains_key(id) { &mut self.track_smoothed } else { &mut self.smoothed };
                let entry = store.entry((camera.clone(), *id)).or_insert_with(|| p.clone());
                for (s, n) in entry.iter_mut().zip(&p) {
                    *s = (1.0 - alpha) * *s + alpha * n;
                }
            }
        }
        for track in &mut tracks.tracks {
            let (store, c) = match own.get(&track.id) {
                Some(c) => (&self.track_smoothed, c.clone()),
                None if self.track_candidates.contains_key(&track.id) => {
                    track.label = None;
                    continue;
                }
                None => (&self.smoothed, classifier.clone()),
            };
            track.label = store.get(&(camera.clone(), track.id)).and_then(|p| {
                let (best, score) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
                Some(TrackLabel { name: c.classes().get(best)?.as_str().into(), score: *score })
            });
        }
        Ok(tracks)
    }
}

impl Processor for LabelerProcessor {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        match input {
            Packet::Frame(frame) => {
                self.frames.push(frame);
                Ok(())
            }
            Packet::Tracks(tracks) => {
                let _span = trace_span!("labeler", camera = %tracks.meta.camera, seq = tracks.meta.seq).entered();
                let frame = self.frames.take(&tracks.meta)?;
                let labelled = self.label(&frame, tracks)?;
                out.emit(Packet::Tracks(labelled));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
