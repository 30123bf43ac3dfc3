//! The labeler actor: MetaCLIP zero-shot labels for SAM 2 tracks.
//!
//! It reads frames and the tracks computed from them (pairing them by camera and sequence
//! number), crops each visible track mask-aware — the box padded and made square, pixels
//! outside the track's mask and outside the frame filled with CLIP's mean colour — as an 8-bit
//! image that goes through open_clip's own preprocessing (Pillow bicubic resize of the short
//! side, centre crop, CLIP statistics), and classifies every crop of a frame in one batch over the vocabulary
//! (the configured one, or candidates an agent sets with
//! [`LabelerProcessor::set_candidates`]). Per track, class probabilities are smoothed over
//! time (an exponential moving average), and the tracks go out again with their label and its
//! smoothed probability; occluded tracks keep their last label.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use ocellus_kernels::{DType, Fit, Normalization, Resize, Transform};
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
/// Largest value of an 8-bit channel.
const U8_MAX: f64 = 255.0;

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
    /// open_clip's evaluation preprocessing at the model's image size.
    transform: Transform,
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
        let size = clip.config().vision_cfg.image_size;
        let transform = Transform {
            fit: Fit::ShortSideCenterCrop { short: size, crop: size },
            resize: Resize::PilBicubic,
            norm: Normalization::CLIP,
        };
        Ok(Self {
            transform,
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

    /// Mask-aware crops `[N, 3, S, S]` (normalized) of the visible tracks with a box: each an
    /// 8-bit square image (track pixels, CLIP's mean colour elsewhere) put through open_clip's
    /// evaluation preprocessing.
    fn crops(&self, frame: &Frame, tracks: &Tracks, ids: &[(u32, ocellus_kernels::masks::PixelBox)]) -> Result<Tensor> {
        let bad = |e: ocellus_kernels::KernelError| {
            ActorError::BadInput(format!("{} frame {}: {e}", frame.meta.camera, frame.meta.seq))
        };
        let rgb = frame.layout.to_rgb8(&frame.pixels).map_err(bad)?; // [H, W, 3]
        let (w, h) = (frame.layout.width, frame.layout.height);
        if tracks.width as usize != w || tracks.height as usize != h || tracks.labels.len() != 2 * w * h {
            return Err(ActorError::BadInput(format!(
                "tracks of {}x{} ({} label bytes) for a {w}x{h} frame",
                tracks.width,
                tracks.height,
                tracks.labels.len()
            )));
        }
        let mut crops = Vec::with_capacity(ids.len());
        for (id, b) in ids {
            let (x0, y0, side) = square(b, self.spec.padding);
            let crop = masked_square(&rgb, &tracks.labels, (w, h), *id, (x0, y0, side));
            let side = side as usize;
            crops.push(self.transform.apply_rgb8(&crop, side, side, self.spec.device)?); // [1, 3, S, S]
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

/// The square crop of box `[x0, y0, x1, y1)`: its longer side plus `padding` of it on each
/// side (rounded half away from zero), centred on the box, as `(x0, y0, side)` (it may leave
/// the frame).
pub fn square(b: &ocellus_kernels::masks::PixelBox, padding: f64) -> (i64, i64, i64) {
    let (w, h) = (i64::from(b.x1) - i64::from(b.x0), i64::from(b.y1) - i64::from(b.y0));
    let long = w.max(h).max(1);
    let side = long + 2 * (long as f64 * padding).round() as i64;
    let cx = i64::from(b.x0) + w / 2;
    let cy = i64::from(b.y0) + h / 2;
    (cx - side / 2, cy - side / 2, side)
}

/// The `side × side` square at `(x0, y0)` (it may leave the frame) of a packed RGB frame:
/// the pixels of track `id` (by the little-endian u16 `labels`), CLIP's mean colour elsewhere.
pub fn masked_square(rgb: &[u8], labels: &[u8], (w, h): (usize, usize), id: u32, (x0, y0, side): (i64, i64, i64)) -> Vec<u8> {
    let fill = Normalization::CLIP.mean.map(|m| (m * U8_MAX).round() as u8);
    let side = side.max(1) as usize;
    let mut crop: Vec<u8> = std::iter::repeat_n(fill, side * side).flatten().collect();
    for (r, row) in crop.chunks_exact_mut(side * 3).enumerate() {
        let Ok(y) = usize::try_from(y0 + r as i64) else { continue };
        if y >= h {
            break;
        }
        for (c, px) in row.chunks_exact_mut(3).enumerate() {
            let Ok(x) = usize::try_from(x0 + c as i64) else { continue };
            if x >= w {
                break;
            }
            let at = y * w + x;
            if u32::from(u16::from_le_bytes([labels[2 * at], labels[2 * at + 1]])) == id {
                px.copy_from_slice(&rgb[3 * at..3 * at + 3]);
            }
        }
    }
    crop
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
