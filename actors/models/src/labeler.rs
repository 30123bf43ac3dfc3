//! The labeler actor (`kind = "labeler"`): MetaCLIP zero-shot labels for SAM 2 tracks.
//!
//! It reads frames and the tracks computed from them, joined by the runtime (by camera and
//! sequence number), crops each visible track mask-aware — the box padded and made square, pixels
//! outside the track's mask and outside the frame filled with CLIP's mean colour — as an 8-bit
//! image that goes through open_clip's own preprocessing (Pillow bicubic resize of the short
//! side, centre crop, CLIP statistics), and classifies every crop of a frame in one batch over the vocabulary
//! (the configured one, or candidates an agent sets with
//! [`Labeler::set_candidates`]). Per track, class probabilities are smoothed over
//! time (an exponential moving average), and the tracks go out again with their label and its
//! smoothed probability; occluded tracks keep their last label.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use ocellus_kernels::{Fit, Normalization, Resize, Transform};
use ocellus_perception::clip::Clip;
use ocellus_perception::clip::tokenizer::ClipTokenizer;
use ocellus_perception::clip::zero_shot::{ClassifierCache, OPENAI_IMAGENET_TEMPLATES, ZeroShotClassifier};
use ocellus_perception::model::{Loaded, ModelSpec};
use ocellus_perception::onnx::{Backend, OnnxEncoder, OnnxModel, OnnxOptions};
use ocellus_runtime::control::{ControlReceiver, ControlSender};
use ocellus_runtime::edge::{DropPolicy, EdgePolicy};
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, Join, OutputPort, Ports};
use ocellus_runtime::{Frame, Packet, PortType, Result, RuntimeError, TrackLabel, Tracks};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{failed, model_spec};

/// Frames held per camera while their tracks are computed.
const FRAME_BUFFER: usize = 32;
/// Commands waiting in a labeler's control channel, at most.
pub const CONTROL_DEPTH: usize = 16;
/// Vocabularies whose class embeddings are kept.
const CLASSIFIERS_CACHED: usize = 4;
/// Largest value of an 8-bit channel.
const U8_MAX: f64 = 255.0;

/// Commands to a labeler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelerCommand {
    /// Label `track_id` over `candidates` from now on (empty: back to the vocabulary).
    Candidates {
        /// Track id.
        track_id: u32,
        /// Candidate class names.
        candidates: Vec<String>,
    },
}

/// What the labeler runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelerSpec {
    /// The node's name (its control channel's).
    pub name: String,
    /// The CLIP model (open_clip's `state_dict` keys).
    pub model: ModelSpec,
    /// Class names.
    pub vocabulary: Vec<String>,
    /// Prompt templates (`{}` = the class name).
    pub templates: Vec<String>,
    /// `bpe_simple_vocab_16e6.txt.gz`; the built-in copy when `None`.
    pub bpe: Option<PathBuf>,
    /// Weight of the newest probabilities in the per-track moving average (1 = no smoothing).
    pub smoothing: f64,
    /// Box padding on each side, as a fraction of the box's longer side.
    pub padding: f64,
    /// The image tower exported to ONNX, run by ONNX Runtime instead of the native one.
    pub image_encoder: Option<OnnxEncoder>,
}

impl LabelerSpec {
    /// The 80 OpenAI ImageNet templates.
    pub fn openai_templates() -> Vec<String> {
        OPENAI_IMAGENET_TEMPLATES.iter().map(|t| (*t).to_owned()).collect()
    }
}

/// `templates = "openai"` or a list of strings with `{}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TemplatesEntry {
    /// `"openai"`: the 80 ImageNet templates.
    Named(String),
    /// Templates like `"a photo of a {}."`.
    List(Vec<String>),
}

/// `[[actor]] kind = "labeler"` (with `model` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelerEntry {
    /// Class names.
    pub vocabulary: Vec<String>,
    /// Prompt templates (default `"openai"`).
    pub templates: Option<TemplatesEntry>,
    /// The CLIP BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`); the built-in one when absent.
    pub bpe: Option<PathBuf>,
    /// Weight of new probabilities in the per-track moving average, in (0, 1].
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Box padding per side, a fraction of the box's longer side, in [0, 1].
    #[serde(default = "default_padding")]
    pub padding: f64,
    /// `tch`, or `onnx`: the image tower in ONNX Runtime (`image_encoder`), the text tower
    /// from `weights` as usual.
    #[serde(default)]
    pub backend: Backend,
    /// The image tower exported by `ocellus weights export-onnx` (`backend = "onnx"`).
    pub image_encoder: Option<PathBuf>,
    /// ONNX Runtime session options (`backend = "onnx"`).
    pub onnx: Option<OnnxOptions>,
}

fn default_smoothing() -> f64 {
    0.3
}
fn default_padding() -> f64 {
    0.1
}

/// The labeler kind.
pub struct LabelerKind;

impl NodeKind for LabelerKind {
    const NAME: &'static str = "labeler";
    const DOC: &'static str = "MetaCLIP zero-shot labels of tracks: reads frames and tracks, writes labelled tracks";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = LabelerEntry;

    fn configure(common: &Common, e: LabelerEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Clip>(common)?;
        let image_encoder = crate::onnx_encoder(e.backend, e.image_encoder, e.onnx, model.dtype)?;
        check_vocabulary(&e.vocabulary)?;
        let templates = templates_of(e.templates)?;
        if !(e.smoothing > 0.0 && e.smoothing <= 1.0) {
            return Err(Issue::at("smoothing", format!("{}: must be in (0, 1] (1 = no smoothing)", e.smoothing)));
        }
        if !(0.0..=1.0).contains(&e.padding) {
            return Err(Issue::at("padding", format!("{}: must be in [0, 1]", e.padding)));
        }
        if let Some(bpe) = e.bpe.as_ref().filter(|p| !p.exists()) {
            return Err(Issue::at("bpe", format!("{} not found", bpe.display())));
        }
        Ok(Arc::new(LabelerSpec {
            name: common.name.clone(),
            model,
            vocabulary: e.vocabulary,
            templates,
            bpe: e.bpe,
            smoothing: e.smoothing,
            padding: e.padding,
            image_encoder,
        }))
    }
}

/// Checks class names: at least one, unique, non-empty.
pub fn check_vocabulary(vocabulary: &[String]) -> Result<(), Issue> {
    if vocabulary.is_empty() {
        return Err(Issue::at("vocabulary", "needs at least one class name"));
    }
    let mut seen = HashSet::new();
    for (i, class) in vocabulary.iter().enumerate() {
        if class.trim().is_empty() || !seen.insert(class.as_str()) {
            return Err(Issue::at("vocabulary", format!("{class:?}: class names are unique and non-empty")).index(i));
        }
    }
    Ok(())
}

/// The templates of `templates = ...` (the 80 OpenAI ones by default).
pub fn templates_of(templates: Option<TemplatesEntry>) -> Result<Vec<String>, Issue> {
    match templates {
        None => Ok(LabelerSpec::openai_templates()),
        Some(TemplatesEntry::Named(s)) if s == "openai" => Ok(LabelerSpec::openai_templates()),
        Some(TemplatesEntry::List(items)) if !items.is_empty() => {
            if let Some(i) = items.iter().position(|t| !t.contains("{}")) {
                return Err(
                    Issue::at("templates", "a template is a string with `{}` where the class name goes").index(i)
                );
            }
            Ok(items)
        }
        Some(_) => Err(Issue::at(
            "templates",
            "\"openai\" (the 80 ImageNet templates) or a non-empty list like [\"a photo of a {}.\"]",
        )),
    }
}

/// The labeler's ports: frames joined with the tracks derived from them.
pub fn ports() -> Ports {
    let frames_edge = EdgePolicy::Queue { depth: FRAME_BUFFER, drop: DropPolicy::Oldest };
    Ports {
        inputs: vec![
            InputPort::new("frames", &[PortType::Frame], frames_edge),
            InputPort::new("tracks", &[PortType::Tracks], EdgePolicy::Queue { depth: 8, drop: DropPolicy::Oldest }),
        ],
        outputs: vec![OutputPort { name: "tracks", ty: PortType::Tracks }],
        join: Some(Join { primary: "tracks", with: "frames", capacity: FRAME_BUFFER }),
    }
}

impl ConfiguredNode for LabelerSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, ctx: &mut BuildContext) -> Result<StageFactory> {
        let (_, rx) = ctx.control::<LabelerCommand>(&self.name, CONTROL_DEPTH);
        let spec = self.clone();
        Ok(stage_factory(move || LabelerStage::new(spec.clone(), Some(rx.clone()))))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The sending side of a labeler's control channel, for other nodes (the agent).
pub fn control_of(ctx: &mut BuildContext, labeler: &str) -> ControlSender<LabelerCommand> {
    ctx.control::<LabelerCommand>(labeler, CONTROL_DEPTH).0
}

/// Zero-shot labels for tracks (the model loads when the stage starts).
pub struct LabelerStage {
    spec: LabelerSpec,
    control: Option<ControlReceiver<LabelerCommand>>,
    labeler: Option<Labeler>,
}

impl LabelerStage {
    /// A stage running `spec`, commanded over `control`.
    pub fn new(spec: LabelerSpec, control: Option<ControlReceiver<LabelerCommand>>) -> Self {
        Self { spec, control, labeler: None }
    }
}

/// The labeler, loaded.
pub struct Labeler {
    clip: Loaded<Clip>,
    /// The image tower in ONNX Runtime, when the spec names one.
    image_onnx: Option<OnnxModel>,
    tokenizer: ClipTokenizer,
    spec: LabelerSpec,
    classifiers: ClassifierCache,
    candidates: Option<Vec<String>>,
    /// Smoothed probabilities per (camera, track), over `current`'s classes.
    smoothed: HashMap<(Arc<str>, u32), Vec<f32>>,
    current: Option<Rc<ZeroShotClassifier>>,
    /// Candidates the agent gave for single tracks, and their smoothed probabilities.
    track_candidates: HashMap<u32, Vec<String>>,
    track_smoothed: HashMap<(Arc<str>, u32), Vec<f32>>,
    /// open_clip's evaluation preprocessing at the model's image size.
    transform: Transform,
}

fn torch(e: tch::TchError) -> RuntimeError {
    RuntimeError::Torch(e)
}

impl Labeler {
    /// Loads the model and the tokenizer of `spec`.
    pub fn new(spec: LabelerSpec) -> Result<Self> {
        let clip = spec.model.load::<Clip>().map_err(failed)?;
        let tokenizer = match &spec.bpe {
            Some(path) => ClipTokenizer::from_file(path),
            None => ClipTokenizer::embedded(),
        }
        .map_err(failed)?;
        let image_onnx =
            spec.image_encoder.as_ref().map(|e| OnnxModel::load(&e.file, &e.options)).transpose().map_err(failed)?;
        let size = clip.config().vision_cfg.image_size;
        let transform = Transform {
            fit: Fit::ShortSideCenterCrop { short: size, crop: size },
            resize: Resize::PilBicubic,
            norm: Normalization::CLIP,
        };
        Ok(Self {
            transform,
            clip,
            image_onnx,
            tokenizer,
            spec,
            classifiers: ClassifierCache::new(CLASSIFIERS_CACHED),
            candidates: None,
            smoothed: HashMap::new(),
            current: None,
            track_candidates: HashMap::new(),
            track_smoothed: HashMap::new(),
        })
    }

    /// Image embeddings `[N, embed]` of preprocessed crops `[N, 3, S, S]`.
    fn encode_images(&self, crops: &Tensor) -> Result<Tensor> {
        let features = match &self.image_onnx {
            Some(onnx) => onnx.forward(crops).map_err(failed)?.into_iter().next(),
            None => Some(tch::no_grad(|| self.clip.encode_image(crops)).map_err(failed)?),
        };
        features.ok_or_else(|| RuntimeError::Failed("the ONNX image encoder has no output".into()))
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
            tch::no_grad(|| self.classifiers.get(&self.clip, &self.tokenizer, &classes, &self.spec.templates))
                .map_err(failed)?;
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
        let bad = |e: ocellus_wire::LayoutError| crate::bad_frame(&frame.meta, e);
        let rgb = frame.layout.to_rgb8(&frame.pixels).map_err(bad)?; // [H, W, 3]
        let (w, h) = (frame.layout.width, frame.layout.height);
        if tracks.width as usize != w || tracks.height as usize != h || tracks.labels.len() != 2 * w * h {
            return Err(RuntimeError::BadInput(format!(
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
            crops.push(self.transform.apply_rgb8(&crop, side, side, self.spec.model.device)?); // [1, 3, S, S]
        }
        Tensor::f_cat(&crops, 0).map_err(torch) // [N, 3, S, S]
    }

    /// Unit-norm image embeddings `[N, embed]` (fp32) of mask-aware crops of `masks` (binary,
    /// `w × h`, each with at least one pixel) on the packed RGB frame `rgb`: the crop the
    /// labeler makes of a track with that mask.
    pub fn embed_masks(&self, rgb: &[u8], (w, h): (usize, usize), masks: &[&[u8]]) -> Result<Tensor> {
        if rgb.len() != 3 * w * h || masks.iter().any(|m| m.len() != w * h) {
            return Err(RuntimeError::BadInput(format!("masks or image of another size than {w}x{h}")));
        }
        let mut crops = Vec::with_capacity(masks.len());
        for mask in masks {
            let b = ocellus_kernels::masks::mask_box(mask, w)
                .ok_or_else(|| RuntimeError::BadInput("an empty mask has no crop".into()))?;
            let (x0, y0, side) = square(&b, self.spec.padding);
            let crop = masked_square_of(rgb, mask, (w, h), (x0, y0, side));
            let side = side as usize;
            crops.push(self.transform.apply_rgb8(&crop, side, side, self.spec.model.device)?); // [1, 3, S, S]
        }
        let crops = Tensor::f_cat(&crops, 0).and_then(|c| c.f_to_kind(self.clip.kind())).map_err(torch)?; // [N, 3, S, S]
        let features = self.encode_images(&crops)?; // [N, embed]
        ocellus_perception::clip::normalize(&features.f_to_kind(Kind::Float).map_err(torch)?).map_err(failed)
    }

    /// Unit-norm text embeddings `[embed, N]` (fp32) of `texts`, each put through the
    /// templates and averaged as a zero-shot class is.
    pub fn embed_texts(&mut self, texts: &[String]) -> Result<Tensor> {
        let classifier =
            tch::no_grad(|| self.classifiers.get(&self.clip, &self.tokenizer, texts, &self.spec.templates))
                .map_err(failed)?;
        classifier.weights().f_to_kind(Kind::Float).map_err(torch)
    }

    /// The most probable class of the vocabulary, and its probability, for each image
    /// embedding of `features` (`[N, embed]`).
    pub fn classify(&mut self, features: &Tensor) -> Result<Vec<(Arc<str>, f32)>> {
        let classifier = self.classifier()?;
        let probs = tch::no_grad(|| -> Result<Tensor> {
            let logits = classifier.logits(&features.f_to_kind(self.clip.kind()).map_err(torch)?).map_err(failed)?;
            logits.f_to_kind(Kind::Float).and_then(|l| l.f_softmax(-1, None::<Kind>)).map_err(torch) // [N, classes]
        })?;
        let (best, index) = probs.f_max_dim(-1, false).map_err(torch)?; // [N], [N]
        let best = Vec::<f32>::try_from(best.f_to_device(Device::Cpu).map_err(torch)?).map_err(torch)?;
        let index = Vec::<i64>::try_from(index.f_to_device(Device::Cpu).map_err(torch)?).map_err(torch)?;
        Ok(index
            .iter()
            .zip(best)
            .map(|(&i, p)| (classifier.classes().get(i as usize).map_or_else(|| "?".into(), |c| c.as_str().into()), p))
            .collect())
    }

    /// The tracks of `frame`, labelled.
    pub fn label(&mut self, frame: &Frame, mut tracks: Tracks) -> Result<Tracks> {
        let classifier = self.classifier()?;
        let visible: Vec<(u32, ocellus_kernels::masks::PixelBox)> =
            tracks.tracks.iter().filter(|t| !t.occluded).filter_map(|t| t.bbox.map(|b| (t.id, b))).collect();
        let camera = tracks.meta.camera.clone();
        let mut own: HashMap<u32, Rc<ZeroShotClassifier>> = HashMap::new();
        if !visible.is_empty() {
            let crops = self.crops(frame, &tracks, &visible)?.f_to_kind(self.clip.kind()).map_err(torch)?;
            let features = self.encode_images(&crops)?; // [N, embed]
            let alpha = self.spec.smoothing as f32;
            for (row, (id, _)) in visible.iter().enumerate() {
                // A track the agent gave candidates for is classified over those.
                let track_classifier = match self.track_candidates.get(id).cloned() {
                    Some(classes) => {
                        let c = tch::no_grad(|| {
                            self.classifiers.get(&self.clip, &self.tokenizer, &classes, &self.spec.templates)
                        })
                        .map_err(failed)?;
                        own.insert(*id, c.clone());
                        c
                    }
                    None => classifier.clone(),
                };
                let p = tch::no_grad(|| -> Result<Vec<f32>> {
                    let f = features.f_narrow(0, row as i64, 1).map_err(torch)?; // [1, embed]
                    let logits = track_classifier.logits(&f).map_err(failed)?; // [1, classes]
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
pub fn masked_square(rgb: &[u8], labels: &[u8], (w, h): (usize, usize), id: u32, square: (i64, i64, i64)) -> Vec<u8> {
    masked_square_by(
        rgb,
        (w, h),
        |at| u32::from(u16::from_le_bytes([labels[2 * at], labels[2 * at + 1]])) == id,
        square,
    )
}

/// [`masked_square`] of a binary `mask` (non-zero inside, frame resolution).
pub fn masked_square_of(rgb: &[u8], mask: &[u8], (w, h): (usize, usize), square: (i64, i64, i64)) -> Vec<u8> {
    masked_square_by(rgb, (w, h), |at| mask[at] != 0, square)
}

/// The square with the frame's pixels where `inside(pixel index)`, CLIP's mean colour elsewhere.
fn masked_square_by(
    rgb: &[u8],
    (w, h): (usize, usize),
    inside: impl Fn(usize) -> bool,
    (x0, y0, side): (i64, i64, i64),
) -> Vec<u8> {
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
            if inside(at) {
                px.copy_from_slice(&rgb[3 * at..3 * at + 3]);
            }
        }
    }
    crop
}

impl Stage for LabelerStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        self.labeler = Some(Labeler::new(self.spec.clone())?);
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let (Packet::Tracks(tracks), Some(Packet::Frame(frame))) = (input.packet, input.with) else {
            return Err(RuntimeError::BadInput("the labeler takes tracks joined with their frame".into()));
        };
        let Some(labeler) = self.labeler.as_mut() else { return Err(RuntimeError::Failed("not started".into())) };
        if let Some(control) = &self.control {
            for LabelerCommand::Candidates { track_id, candidates } in control.drain() {
                labeler.set_track_candidates(track_id, candidates);
            }
        }
        let _span = trace_span!("labeler", camera = %tracks.meta.camera, seq = tracks.meta.seq).entered();
        let labelled = labeler.label(&frame, tracks)?;
        ctx.emit(Packet::Tracks(labelled));
        Ok(())
    }
}
