//! The discovery actor (`kind = "discovery"`): finds the objects nobody prompted and hands
//! them to a tracker.
//!
//! On a cadence (every `every` frames of a camera, or sooner when more than `motion` of the
//! image changed since its last run) it runs SAM 2's automatic mask generation
//! ([`AutomaticMaskGenerator`], exact to the official generator) on the frame, and compares
//! each candidate with what the tracker already follows on that frame (the tracks joined with
//! it): a candidate that overlaps a track (IoU ≥ `match_iou`, or mostly inside tracked pixels)
//! is known; one that matches the last mask of a track lost in the last `remember` frames is
//! that track found again and is handed back under the same id; the others become new tracks,
//! best predicted IoU first, within `max_new` per run and `max_tracks` in all. New objects go
//! to the tracker's control channel as mask prompts (SAM 2's `add_new_mask` path), applied on
//! the tracker's next frame. Every run's candidates are emitted on `candidates` (Rerun shows
//! them at `world/<camera>/discovery`).
//!
//! With `labels` (a MetaCLIP model and a vocabulary) every candidate is labelled zero-shot from
//! its mask-aware crop, as the labeler crops a track; `keep` then lets only candidates labelled
//! with one of its classes become tracks. The same embeddings answer text queries
//! ([`DiscoveryCommand::Query`], the agent's `track` tool with `query`): the candidates of the
//! camera's latest run (a fresh run when there is none yet) are ranked by the cosine similarity
//! of their crop's embedding with the query's text embedding (through the templates, as a
//! zero-shot class), and the best, when at least `query_threshold`, becomes a track under the
//! asker's id; the answer says which, or why none.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use bytes::Bytes;
use ocellus_kernels::masks::{PixelBox, mask_box, mask_to_bytes};
use ocellus_perception::clip::Clip;
use ocellus_perception::model::{Loaded, ModelSpec, Sam2Options};
use ocellus_perception::sam2::Sam2;
use ocellus_perception::sam2::automatic_mask_generator::{AmgConfig, AmgMask, AutomaticMaskGenerator};
use ocellus_perception::sam2::image_predictor::ImagePredictor;
use ocellus_runtime::control::{ControlReceiver, ControlSender};
use ocellus_runtime::edge::{DropPolicy, EdgePolicy};
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, Join, OutputPort, Ports};
use ocellus_runtime::{Frame, Packet, PortType, Result, RuntimeError, Track, TrackOrigin, Tracks};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Tensor};
use tracing::trace_span;

use crate::labeler::{self, Labeler, LabelerSpec, TemplatesEntry};
use crate::tracker::{self, FramePrompt, TrackerCommand};
use crate::{bad_frame, failed, model_spec, nested_model_spec};

/// Frames held per camera while their tracks are computed (the tracker lags the camera).
const FRAME_BUFFER: usize = 32;
/// Tracks waiting for their frame, per camera.
const TRACKS_BUFFER: usize = 8;
/// Side of the grey thumbnail the motion trigger compares.
const MOTION_GRID: usize = 32;
/// A thumbnail cell has changed when its grey level moved by more than this.
const MOTION_LEVELS: f64 = 12.0;
/// Ids of discovered objects start here by default: config prompts use small ids, the agent's
/// `track` tool 1000 and up.
pub const FIRST_DISCOVERED_ID: u32 = 2000;
/// A candidate mostly inside tracked pixels (this fraction of its area) is part of a track.
const INSIDE_TRACKS: f64 = 0.5;
/// Commands waiting in a discovery's control channel, at most.
pub const CONTROL_DEPTH: usize = 16;
/// Queries waiting for a frame of their camera, at most (policy: the oldest is answered
/// "dropped").
const QUERIES_WAITING: usize = 16;

/// `[[actor]] kind = "discovery"` (with the SAM 2 `model` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryEntry {
    /// The `sam2` tracker that new objects are handed to (default: the one its `tracks` come
    /// from).
    pub tracker: Option<String>,
    /// Run every this many frames of a camera (its first frame included).
    #[serde(default = "default_every")]
    pub every: u64,
    /// Also run when this fraction of the image changed since the last run (0 to 1).
    pub motion: Option<f64>,
    /// Automatic mask generation settings (the official generator's names and defaults).
    #[serde(default)]
    pub generator: AmgConfig,
    /// A candidate whose mask has at least this IoU with a track is that track.
    #[serde(default = "default_match_iou")]
    pub match_iou: f64,
    /// Most objects tracked at once (those tracked already included).
    #[serde(default = "default_max_tracks")]
    pub max_tracks: usize,
    /// Smallest object, in pixels.
    #[serde(default = "default_min_area")]
    pub min_area: u64,
    /// Largest object, as a fraction of the frame: masks over it are background or the whole
    /// scene, not objects (0 to 1).
    #[serde(default = "default_max_area")]
    pub max_area: f64,
    /// Most new objects per run.
    #[serde(default = "default_max_new")]
    pub max_new: usize,
    /// Frames a lost track's last mask is kept, to find it again under the same id.
    #[serde(default = "default_remember")]
    pub remember: u64,
    /// Ids of discovered objects start here (config prompts use small ids, the agent's `track`
    /// tool 1000 and up).
    #[serde(default = "default_first_id")]
    pub first_id: u32,
    /// MetaCLIP labels for the candidates (needed by `keep` and by text queries).
    pub labels: Option<LabelsEntry>,
    /// Only candidates labelled with one of these classes (of `labels.vocabulary`) become tracks.
    #[serde(default)]
    pub keep: Vec<String>,
    /// Least cosine similarity between a text query and a candidate's crop for the query to
    /// pick it (-1 to 1).
    #[serde(default = "default_query_threshold")]
    pub query_threshold: f64,
}

/// `labels = { model = "ViT-B-32-quickgelu", weights = "...", vocabulary = ["person", "cup"] }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsEntry {
    /// The open_clip model name of the MetaCLIP checkpoint (`ViT-B-32-quickgelu`, ...).
    pub model: String,
    /// Its weights (open_clip's `state_dict` keys, safetensors).
    pub weights: Option<PathBuf>,
    /// Seeded random weights instead (demos and tests).
    #[serde(default)]
    pub allow_random_weights: bool,
    /// Seed of random weights.
    #[serde(default)]
    pub seed: i64,
    /// Class names the candidates are labelled over (list what the camera sees besides the
    /// kept classes, so that other things are not forced into one of them).
    pub vocabulary: Vec<String>,
    /// Prompt templates (default `"openai"`).
    pub templates: Option<TemplatesEntry>,
    /// The CLIP BPE vocabulary (`bpe_simple_vocab_16e6.txt.gz`); the built-in one when absent.
    pub bpe: Option<PathBuf>,
    /// Box padding per side, a fraction of the box's longer side, in [0, 1].
    #[serde(default = "default_padding")]
    pub padding: f64,
}

fn default_padding() -> f64 {
    0.1
}
fn default_query_threshold() -> f64 {
    0.2
}

fn default_every() -> u64 {
    15
}
fn default_match_iou() -> f64 {
    0.5
}
fn default_max_tracks() -> usize {
    16
}
fn default_max_area() -> f64 {
    0.8
}
fn default_min_area() -> u64 {
    400
}
fn default_max_new() -> usize {
    4
}
fn default_remember() -> u64 {
    150
}
fn default_first_id() -> u32 {
    FIRST_DISCOVERED_ID
}

/// What the discovery actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySpec {
    /// The node's name (its control channel's).
    pub name: String,
    /// SAM 2 (its image predictor).
    pub model: ModelSpec,
    /// The tracker's node name.
    pub tracker: String,
    /// Run every this many frames.
    pub every: u64,
    /// Run sooner on this fraction of changed image.
    pub motion: Option<f64>,
    /// Generation settings.
    pub generator: AmgConfig,
    /// Matching and limits.
    pub limits: Limits,
    /// MetaCLIP labels (one prediction per candidate: no smoothing).
    pub labels: Option<LabelerSpec>,
    /// Classes that become tracks (all when empty).
    pub keep: Vec<String>,
    /// Least similarity for a text query.
    pub query_threshold: f64,
}

/// How candidates become tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// IoU for a candidate to be a known track (or a lost one).
    pub match_iou: f64,
    /// Most tracks at once.
    pub max_tracks: usize,
    /// Smallest object (pixels).
    pub min_area: u64,
    /// Largest object (fraction of the frame).
    pub max_area: f64,
    /// Most new objects per run.
    pub max_new: usize,
    /// Frames a lost track is remembered.
    pub remember: u64,
    /// First id handed out.
    pub first_id: u32,
}

/// The `discovery` kind.
pub struct DiscoveryKind;

impl NodeKind for DiscoveryKind {
    const NAME: &'static str = "discovery";
    const DOC: &'static str =
        "SAM 2 automatic mask generation on a cadence: new objects handed to a tracker as mask prompts";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = DiscoveryEntry;

    fn configure(common: &Common, e: DiscoveryEntry, view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Sam2>(common)?;
        let tracker = view
            .resolve("tracker", e.tracker.as_deref(), tracker::TrackerKind::NAME, "a sam2 actor")?
            .ok_or_else(|| Issue::at("tracker", "needs a sam2 actor to hand objects to (in `inputs` or `tracker`)"))?;
        if e.every == 0 {
            return Err(Issue::at("every", "must be at least 1"));
        }
        if let Some(m) = e.motion.filter(|m| !(0.0..=1.0).contains(m)) {
            return Err(Issue::at("motion", format!("{m}: a fraction of the image, 0 to 1")));
        }
        if !(0.0..=1.0).contains(&e.match_iou) || e.match_iou == 0.0 {
            return Err(Issue::at("match_iou", "must be in (0, 1]"));
        }
        if !(e.max_area > 0.0 && e.max_area <= 1.0) {
            return Err(Issue::at("max_area", format!("{}: a fraction of the frame, in (0, 1]", e.max_area)));
        }
        if e.max_tracks == 0 || e.max_new == 0 {
            return Err(Issue::at(if e.max_tracks == 0 { "max_tracks" } else { "max_new" }, "must be at least 1"));
        }
        if e.first_id == 0 || e.first_id >= u32::from(u16::MAX) {
            return Err(Issue::at("first_id", "must be between 1 and 65534 (track ids label 16-bit images)"));
        }
        AutomaticMaskGenerator::new(e.generator.clone()).map_err(|err| Issue::at("generator", err.to_string()))?;
        let labels = e.labels.map(|l| labels_spec(common, l).map_err(|i| i.inside("labels"))).transpose()?;
        if !e.keep.is_empty() {
            let Some(labels) = &labels else {
                return Err(Issue::at(
                    "keep",
                    "needs `labels` (a MetaCLIP model and a vocabulary) to know what is what",
                ));
            };
            if let Some((i, class)) = e.keep.iter().enumerate().find(|(_, c)| !labels.vocabulary.contains(c)) {
                return Err(Issue::at(
                    "keep",
                    format!("{class:?} is not in labels.vocabulary (candidates are labelled over the vocabulary)"),
                )
                .index(i));
            }
        }
        if !(-1.0..=1.0).contains(&e.query_threshold) {
            return Err(Issue::at("query_threshold", format!("{}: a cosine similarity, -1 to 1", e.query_threshold)));
        }
        Ok(Arc::new(DiscoverySpec {
            name: common.name.clone(),
            model,
            tracker,
            every: e.every,
            motion: e.motion,
            generator: e.generator,
            limits: Limits {
                match_iou: e.match_iou,
                max_tracks: e.max_tracks,
                min_area: e.min_area,
                max_area: e.max_area,
                max_new: e.max_new,
                remember: e.remember,
                first_id: e.first_id,
            },
            labels,
            keep: e.keep,
            query_threshold: e.query_threshold,
        }))
    }
}

/// The labeler that `labels = { ... }` describes.
fn labels_spec(common: &Common, l: LabelsEntry) -> Result<LabelerSpec, Issue> {
    let weights = crate::nested_weights(l.weights.as_ref(), l.allow_random_weights, l.seed)?;
    let model = nested_model_spec::<Clip>(&l.model, &weights, common)?;
    labeler::check_vocabulary(&l.vocabulary)?;
    let templates = labeler::templates_of(l.templates)?;
    if !(0.0..=1.0).contains(&l.padding) {
        return Err(Issue::at("padding", format!("{}: must be in [0, 1]", l.padding)));
    }
    if let Some(bpe) = l.bpe.as_ref().filter(|p| !p.exists()) {
        return Err(Issue::at("bpe", format!("{} not found", bpe.display())));
    }
    Ok(LabelerSpec {
        name: format!("{}.labels", common.name),
        model,
        vocabulary: l.vocabulary,
        templates,
        bpe: l.bpe,
        smoothing: 1.0,
        padding: l.padding,
        image_encoder: None,
    })
}

/// Commands to a discovery actor.
#[derive(Debug, Clone)]
pub enum DiscoveryCommand {
    /// Find the object `text` describes among the latest candidates of `camera` (the first
    /// camera with a frame when `None`) and track it as `id`; the answer goes to `reply`.
    Query {
        /// Camera.
        camera: Option<Arc<str>>,
        /// The track id to use.
        id: u32,
        /// What to look for ("the red cup").
        text: String,
        /// Where the answer goes.
        reply: SyncSender<QueryAnswer>,
    },
}

/// A query's answer: the candidate chosen, or why none.
pub type QueryAnswer = std::result::Result<QueryMatch, String>;

/// The candidate a query chose.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    /// The camera.
    pub camera: Arc<str>,
    /// The track that follows it: the query's id, or the track that already did.
    pub id: u32,
    /// Already tracked before the query (as `id`).
    pub already_tracked: bool,
    /// The frame of the discovery run it was found on.
    pub seq: u64,
    /// Its rank among that run's candidates (1 = best predicted IoU), as on `candidates`.
    pub candidate: u32,
    /// Cosine similarity of its crop with the query.
    pub similarity: f32,
    /// Its MetaCLIP label and probability.
    pub label: Option<(Arc<str>, f32)>,
}

/// The discovery actor's ports: tracks joined with their frames in, candidates out.
pub fn ports() -> Ports {
    let queue = |depth| EdgePolicy::Queue { depth, drop: DropPolicy::Oldest };
    Ports {
        inputs: vec![
            InputPort::new("frames", &[PortType::Frame], queue(FRAME_BUFFER)),
            InputPort::new("tracks", &[PortType::Tracks], queue(TRACKS_BUFFER)),
        ],
        outputs: vec![OutputPort { name: "candidates", ty: PortType::Candidates }],
        join: Some(Join { primary: "tracks", with: "frames", capacity: FRAME_BUFFER }),
    }
}

impl ConfiguredNode for DiscoverySpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, ctx: &mut BuildContext) -> Result<StageFactory> {
        let (tx, _) = ctx.control::<TrackerCommand>(&self.tracker, tracker::CONTROL_DEPTH);
        let (_, rx) = ctx.control::<DiscoveryCommand>(&self.name, CONTROL_DEPTH);
        let spec = self.clone();
        Ok(stage_factory(move || DiscoveryStage::new(spec.clone(), tx.clone(), Some(rx.clone()))))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The sending side of a discovery actor's control channel, for other nodes (the agent).
pub fn control_of(ctx: &mut BuildContext, discovery: &str) -> ControlSender<DiscoveryCommand> {
    ctx.control::<DiscoveryCommand>(discovery, CONTROL_DEPTH).0
}

// --- Matching --------------------------------------------------------------------------------

/// What became of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new object, tracked under this id.
    New(u32),
    /// A lost track found again.
    Found(u32),
    /// Already tracked (or being handed over) as this id.
    Known(u32),
    /// Mostly inside tracked pixels (a part of a tracked object).
    InsideTracks,
    /// Mostly inside a candidate chosen before it in this run.
    Duplicate,
    /// Labelled with a class that `keep` leaves out.
    NotKept,
    /// Larger than `max_area` of the frame.
    Large,
    /// Smaller than `min_area`.
    Small,
    /// Over `max_new` or `max_tracks`.
    OverLimit,
}

/// A mask at frame resolution with its area.
#[derive(Debug, Clone)]
struct Shape {
    mask: Arc<[u8]>,
    area: u64,
}

impl Shape {
    fn new(mask: Vec<u8>) -> Self {
        let area = mask.iter().filter(|&&m| m != 0).count() as u64;
        Self { mask: mask.into(), area }
    }

    fn iou(&self, other: &Shape) -> f64 {
        let inter = self.mask.iter().zip(other.mask.iter()).filter(|(a, b)| **a != 0 && **b != 0).count() as f64;
        let union = self.area as f64 + other.area as f64 - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Fraction of this shape's pixels that are non-zero in `cover`.
    fn inside(&self, cover: &[u8]) -> f64 {
        if self.area == 0 {
            return 0.0;
        }
        let n = self.mask.iter().zip(cover).filter(|(m, c)| **m != 0 && **c != 0).count();
        n as f64 / self.area as f64
    }
}

/// What one camera's discovery remembers between frames: the tracks it saw (their last mask
/// and when), the objects it handed over that the tracker has not shown yet, the next id.
#[derive(Debug, Default)]
pub struct Memory {
    /// Track id → (last visible mask, frame it was seen).
    last_seen: BTreeMap<u32, (Shape, u64)>,
    /// Handed over, not yet in the tracks: id → (mask, frame handed over).
    pending: BTreeMap<u32, (Shape, u64)>,
    next_id: u32,
    /// The frame of the last run, and its grey thumbnail (with a motion trigger).
    last_run: Option<(u64, Option<Vec<f64>>)>,
    /// The last run's candidates (what text queries choose from).
    last: Option<LastRun>,
}

/// One run's candidates, kept for text queries.
#[derive(Debug)]
struct LastRun {
    seq: u64,
    masks: Vec<Vec<u8>>,
    verdicts: Vec<Verdict>,
    /// Unit-norm MetaCLIP embeddings of their crops `[N, embed]` (with `labels`).
    features: Option<Tensor>,
    labels: Vec<Option<(Arc<str>, f32)>>,
}

impl Memory {
    /// Learns the tracks of a frame (label image of `width` columns, little-endian u16).
    fn observe(&mut self, tracks: &Tracks, seq: u64, remember: u64) {
        let n = tracks.width as usize * tracks.height as usize;
        // One pass over the label image fills the mask of every visible track.
        let mut masks: BTreeMap<u16, Vec<u8>> =
            tracks.tracks.iter().filter(|t| !t.occluded && t.area > 0).map(|t| (t.id as u16, vec![0u8; n])).collect();
        if !masks.is_empty() {
            for (p, l) in tracks.labels.chunks_exact(2).enumerate() {
                if let Some(mask) = masks.get_mut(&u16::from_le_bytes([l[0], l[1]])) {
                    mask[p] = 1;
                }
            }
        }
        for (id, mask) in masks {
            let id = u32::from(id);
            self.last_seen.insert(id, (Shape::new(mask), seq));
            self.pending.remove(&id);
        }
        self.last_seen.retain(|_, (_, at)| seq.saturating_sub(*at) <= remember);
        self.pending.retain(|_, (_, at)| seq.saturating_sub(*at) <= remember);
    }

    /// Objects tracked or handed over: the frame's tracks and those handed over not shown yet.
    fn count(&self, tracks: &Tracks) -> usize {
        tracks.tracks.len() + self.pending.keys().filter(|id| !tracks.tracks.iter().any(|t| t.id == **id)).count()
    }
}

/// Decides, best candidate first, which candidates become tracks, given the frame's `tracks`
/// (label image and entries); `kept[i]` says whether candidate `i`'s label passes `keep`.
pub fn decide(
    candidates: &[Vec<u8>],
    kept: &[bool],
    tracks: &Tracks,
    memory: &mut Memory,
    limits: &Limits,
    seq: u64,
) -> Vec<Verdict> {
    let n = tracks.width as usize * tracks.height as usize;
    let tracked: Vec<u8> =
        (0..n).map(|p| u8::from(tracks.labels[2 * p] != 0 || tracks.labels[2 * p + 1] != 0)).collect();
    let visible: Vec<u32> = tracks.tracks.iter().filter(|t| !t.occluded && t.area > 0).map(|t| t.id).collect();
    let mut count = memory.count(tracks);
    let mut chosen: Vec<u8> = vec![0; n];
    memory.next_id = memory.next_id.max(limits.first_id);
    let mut verdicts = Vec::with_capacity(candidates.len());
    for (i, mask) in candidates.iter().enumerate() {
        let shape = Shape::new(mask.clone());
        let verdict = 'v: {
            if shape.area < limits.min_area {
                break 'v Verdict::Small;
            }
            if shape.area as f64 > limits.max_area * n as f64 {
                break 'v Verdict::Large;
            }
            // Tracks visible on this frame, and objects handed over but not shown yet.
            let current = memory
                .last_seen
                .iter()
                .filter(|(id, (_, at))| *at == seq && visible.contains(id))
                .chain(memory.pending.iter())
                .map(|(id, (s, _))| (*id, shape.iou(s)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((id, _)) = current.filter(|(_, iou)| *iou >= limits.match_iou) {
                break 'v Verdict::Known(id);
            }
            if shape.inside(&tracked) >= INSIDE_TRACKS {
                break 'v Verdict::InsideTracks;
            }
            if shape.inside(&chosen) >= INSIDE_TRACKS {
                break 'v Verdict::Duplicate;
            }
            if !kept.get(i).copied().unwrap_or(true) {
                break 'v Verdict::NotKept;
            }
            let new = verdicts.iter().filter(|v| matches!(v, Verdict::New(_) | Verdict::Found(_))).count();
            if new >= limits.max_new || count >= limits.max_tracks {
                break 'v Verdict::OverLimit;
            }
            // A track lost recently (occluded, or gone from the tracker): the same id again.
            let lost = memory
                .last_seen
                .iter()
                .filter(|(id, _)| !visible.contains(id))
                .map(|(id, (s, _))| (*id, shape.iou(s)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .filter(|(_, iou)| *iou >= limits.match_iou);
            let (verdict, id) = match lost {
                Some((id, _)) => (Verdict::Found(id), id),
                None => {
                    let id = memory.next_id;
                    memory.next_id += 1;
                    (Verdict::New(id), id)
                }
            };
            if matches!(verdict, Verdict::New(_)) || !tracks.tracks.iter().any(|t| t.id == id) {
                count += 1;
            }
            for (c, m) in chosen.iter_mut().zip(mask) {
                *c |= *m;
            }
            memory.pending.insert(id, (shape, seq));
            verdict
        };
        verdicts.push(verdict);
    }
    verdicts
}

// --- The stage ---------------------------------------------------------------------------

struct Running {
    sam: Loaded<Sam2>,
    generator: AutomaticMaskGenerator,
    labeler: Option<Labeler>,
}

/// A query waiting for a frame of its camera.
struct Query {
    camera: Option<Arc<str>>,
    id: u32,
    text: String,
    reply: SyncSender<QueryAnswer>,
}

/// Runs discovery on the frames of every camera.
pub struct DiscoveryStage {
    spec: DiscoverySpec,
    tracker: ControlSender<TrackerCommand>,
    control: Option<ControlReceiver<DiscoveryCommand>>,
    running: Option<Running>,
    cameras: HashMap<Arc<str>, Memory>,
    /// Queries for cameras without a frame yet.
    queries: Vec<Query>,
}

impl DiscoveryStage {
    /// A stage running `spec`, handing objects to `tracker`, answering queries from `control`.
    pub fn new(
        spec: DiscoverySpec,
        tracker: ControlSender<TrackerCommand>,
        control: Option<ControlReceiver<DiscoveryCommand>>,
    ) -> Self {
        Self { spec, tracker, control, running: None, cameras: HashMap::new(), queries: Vec::new() }
    }

    /// Whether this frame is due a run (cadence, or motion since the last run).
    fn due(&self, memory: &Memory, seq: u64, thumb: Option<&[f64]>) -> bool {
        let Some((at, last)) = &memory.last_run else { return true };
        if seq.saturating_sub(*at) >= self.spec.every {
            return true;
        }
        let (Some(threshold), Some(thumb), Some(last)) = (self.spec.motion, thumb, last) else { return false };
        let changed = thumb.iter().zip(last).filter(|(a, b)| (**a - **b).abs() > MOTION_LEVELS).count();
        changed as f64 / thumb.len().max(1) as f64 > threshold
    }

    /// The queries for `camera` (those without a camera go to the first camera seen); the
    /// others wait, the oldest answered "dropped" beyond [`QUERIES_WAITING`].
    fn queries_for(&mut self, camera: &Arc<str>) -> Vec<Query> {
        if let Some(control) = &self.control {
            for DiscoveryCommand::Query { camera, id, text, reply } in control.drain() {
                self.queries.push(Query { camera, id, text, reply });
            }
        }
        let (mine, others): (Vec<Query>, Vec<Query>) =
            std::mem::take(&mut self.queries).into_iter().partition(|q| q.camera.as_ref().is_none_or(|c| c == camera));
        self.queries = others;
        while self.queries.len() > QUERIES_WAITING {
            let q = self.queries.remove(0);
            let _ = q.reply.try_send(Err(format!("dropped: more than {QUERIES_WAITING} queries waiting for cameras")));
        }
        mine
    }

    /// Answers `query` from the camera's latest run: the candidate most similar to its text,
    /// tracked under the query's id unless it is tracked already.
    fn answer(&mut self, query: &Query, camera: &Arc<str>, tracks: &Tracks, memory: &mut Memory) -> QueryAnswer {
        let Some(labeler) = self.running.as_mut().and_then(|r| r.labeler.as_mut()) else {
            return Err("this discovery actor has no MetaCLIP model (`labels`) to compare objects with text".into());
        };
        let count = memory.count(tracks);
        let Some(last) = memory.last.as_mut() else { return Err("discovery has not run on this camera yet".into()) };
        let eligible: Vec<usize> = (0..last.masks.len())
            .filter(|&i| {
                !matches!(
                    last.verdicts[i],
                    Verdict::Small | Verdict::Large | Verdict::InsideTracks | Verdict::Duplicate
                )
            })
            .collect();
        let Some(features) = last.features.as_ref().filter(|_| !eligible.is_empty()) else {
            return Err(format!("nothing matched: discovery found no object on frame {} to choose from", last.seq));
        };
        let mut compare = || -> Result<Vec<f32>> {
            let text = labeler.embed_texts(std::slice::from_ref(&query.text))?; // [embed, 1]
            let s = features.f_matmul(&text).and_then(|s| s.f_view([-1])).map_err(RuntimeError::Torch)?; // [N]
            Vec::<f32>::try_from(s.f_to_device(Device::Cpu).map_err(RuntimeError::Torch)?).map_err(RuntimeError::Torch)
        };
        let similarity = compare().map_err(|e| format!("comparing with the text failed: {e}"))?;
        let Some(&best) = eligible.iter().max_by(|&&a, &&b| similarity[a].total_cmp(&similarity[b])) else {
            return Err("nothing matched".into());
        };
        let label = last.labels.get(best).cloned().flatten();
        let what = label.as_ref().map_or(String::new(), |(l, p)| format!(", labelled {l} {p:.2}"));
        let s = similarity[best];
        if f64::from(s) < self.spec.query_threshold {
            return Err(format!(
                "nothing matched {:?}: the closest object (candidate {} of frame {}{what}) has similarity {s:.3}, below \
                 the threshold {:.2}",
                query.text,
                best + 1,
                last.seq,
                self.spec.query_threshold
            ));
        }
        let found = |id: u32, already_tracked: bool| QueryMatch {
            camera: camera.clone(),
            id,
            already_tracked,
            seq: last.seq,
            candidate: best as u32 + 1,
            similarity: s,
            label: label.clone(),
        };
        if let Verdict::New(id) | Verdict::Found(id) | Verdict::Known(id) = last.verdicts[best] {
            return Ok(found(id, true));
        }
        if count >= self.spec.limits.max_tracks {
            return Err(format!(
                "{} objects are tracked, the most this discovery allows (max_tracks); untrack one first",
                self.spec.limits.max_tracks
            ));
        }
        let (w, h) = (tracks.width as usize, tracks.height as usize);
        let mask = last.masks[best].clone();
        let prompt = FramePrompt::Mask { width: w, height: h, mask: mask.as_slice().into() };
        let command =
            TrackerCommand::Add { camera: Some(camera.clone()), id: query.id, prompt, origin: TrackOrigin::Query };
        if self.tracker.send(command).is_err() {
            return Err("the tracker's control queue is full".into());
        }
        last.verdicts[best] = Verdict::Known(query.id);
        let answer = found(query.id, false);
        let run_seq = last.seq;
        memory.pending.insert(query.id, (Shape::new(mask), run_seq));
        Ok(answer)
    }
}

/// A `MOTION_GRID²` grey thumbnail (cell means) of a packed RGB image.
fn thumbnail(rgb: &[u8], width: usize, height: usize) -> Vec<f64> {
    let mut sums = vec![0.0; MOTION_GRID * MOTION_GRID];
    let mut counts = vec![0u32; MOTION_GRID * MOTION_GRID];
    for y in 0..height {
        let gy = y * MOTION_GRID / height.max(1);
        for x in 0..width {
            let gx = x * MOTION_GRID / width.max(1);
            let p = &rgb[(y * width + x) * 3..(y * width + x) * 3 + 3];
            sums[gy * MOTION_GRID + gx] += (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) as f64 / 3.0;
            counts[gy * MOTION_GRID + gx] += 1;
        }
    }
    sums.iter().zip(&counts).map(|(s, &c)| if c > 0 { s / f64::from(c) } else { 0.0 }).collect()
}

/// The candidates as a message: a label image by rank (1 = best) and one entry per candidate,
/// its label saying what became of it (and its MetaCLIP class, with `labels`).
fn candidates_message(
    frame: &Frame,
    masks: &[AmgMask],
    bytes: &[Vec<u8>],
    verdicts: &[Verdict],
    labels: &[Option<(Arc<str>, f32)>],
) -> Tracks {
    let (w, h) = (frame.layout.width, frame.layout.height);
    let mut image = vec![0u16; w * h];
    let mut entries = Vec::with_capacity(masks.len());
    // Worst first, so that better candidates are drawn over them.
    for (rank, (m, mask)) in masks.iter().zip(bytes).enumerate().rev() {
        let id = rank as u32 + 1;
        for (l, &v) in image.iter_mut().zip(mask) {
            if v != 0 {
                *l = id as u16;
            }
        }
        let bbox: Option<PixelBox> = mask_box(mask, w);
        let verdict = verdict_name(verdicts[rank]);
        let label = match labels.get(rank).cloned().flatten() {
            Some((class, p)) => {
                ocellus_runtime::message::TrackLabel { name: format!("{class}: {verdict}").into(), score: p }
            }
            None => ocellus_runtime::message::TrackLabel { name: verdict.into(), score: m.stability_score },
        };
        entries.push(Track {
            id,
            bbox,
            score: m.predicted_iou,
            occluded: false,
            area: m.area.max(0) as u64,
            label: Some(label),
            origin: None,
        });
    }
    entries.reverse();
    Tracks {
        meta: frame.meta.clone(),
        width: w as u32,
        height: h as u32,
        labels: Bytes::from(image.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>()),
        tracks: entries,
    }
}

fn verdict_name(v: Verdict) -> String {
    match v {
        Verdict::New(id) => format!("new track {id}"),
        Verdict::Found(id) => format!("found track {id} again"),
        Verdict::Known(id) => format!("track {id}"),
        Verdict::InsideTracks => "inside a track".into(),
        Verdict::Duplicate => "duplicate".into(),
        Verdict::NotKept => "not kept".into(),
        Verdict::Small => "too small".into(),
        Verdict::Large => "too large".into(),
        Verdict::OverLimit => "over the limit".into(),
    }
}

impl Stage for DiscoveryStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let sam = self.spec.model.load_with::<Sam2>(&Sam2Options { image_size: None }).map_err(failed)?;
        let generator = AutomaticMaskGenerator::new(self.spec.generator.clone()).map_err(failed)?;
        let labeler = self.spec.labels.clone().map(Labeler::new).transpose()?;
        self.running = Some(Running { sam, generator, labeler });
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) -> Result<()> {
        for q in std::mem::take(&mut self.queries) {
            let _ = q.reply.try_send(Err("the pipeline stopped before a frame of that camera came".into()));
        }
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let (Packet::Tracks(tracks), Some(Packet::Frame(frame))) = (input.packet, input.with) else {
            return Err(RuntimeError::BadInput("discovery takes tracks joined with their frame".into()));
        };
        let (w, h) = (frame.layout.width, frame.layout.height);
        if (tracks.width as usize, tracks.height as usize) != (w, h) || tracks.labels.len() != 2 * w * h {
            return Err(bad_frame(&frame.meta, "tracks of another size than their frame"));
        }
        let seq = frame.meta.seq;
        let camera = frame.meta.camera.clone();
        let mut memory = self.cameras.remove(&camera).unwrap_or_default();
        memory.observe(&tracks, seq, self.spec.limits.remember);
        let queries = self.queries_for(&camera);
        let result = self.run(&frame, &tracks, &mut memory, !queries.is_empty(), ctx);
        if result.is_ok() {
            for q in &queries {
                let answer = self.answer(q, &camera, &tracks, &mut memory);
                match &answer {
                    Ok(m) => {
                        tracing::info!(%camera, id = m.id, text = %q.text, "discovery: a text query chose an object")
                    }
                    Err(why) => tracing::info!(%camera, text = %q.text, %why, "discovery: a text query chose nothing"),
                }
                let _ = q.reply.try_send(answer);
            }
        } else {
            for q in &queries {
                let _ = q.reply.try_send(Err(format!("discovery failed on frame {seq} of {camera}")));
            }
        }
        self.cameras.insert(camera, memory);
        result
    }
}

impl DiscoveryStage {
    /// One frame: a generator run when due (or when a query finds no run to choose from),
    /// candidates handed over and emitted.
    fn run(
        &mut self,
        frame: &Frame,
        tracks: &Tracks,
        memory: &mut Memory,
        queried: bool,
        ctx: &mut Context,
    ) -> Result<()> {
        let (w, h) = (frame.layout.width, frame.layout.height);
        let seq = frame.meta.seq;
        // The frame is unpacked only when the motion trigger needs it or the generator runs.
        let mut rgb = None;
        let unpack =
            || -> Result<Vec<u8>> { frame.layout.to_rgb8(&frame.pixels).map_err(|e| bad_frame(&frame.meta, e)) };
        let thumb = match self.spec.motion {
            Some(_) => {
                let pixels = unpack()?;
                let t = thumbnail(&pixels, w, h);
                rgb = Some(pixels);
                Some(t)
            }
            None => None,
        };
        // A query with no run to choose from runs the generator now.
        let run_now = self.due(memory, seq, thumb.as_deref()) || (queried && memory.last.is_none());
        if !run_now {
            return Ok(());
        }
        let rgb = match rgb {
            Some(pixels) => pixels,
            None => unpack()?,
        };
        let _span = trace_span!("discovery", camera = %frame.meta.camera, seq).entered();
        let Some(run) = self.running.as_mut() else { return Err(RuntimeError::Failed("not started".into())) };
        let mut predictor = ImagePredictor::new(&run.sam, self.spec.model.device);
        let masks = run.generator.generate(&mut predictor, &rgb, w, h).map_err(failed)?;
        let bytes = masks.iter().map(|m| mask_to_bytes(&m.segmentation)).collect::<std::result::Result<Vec<_>, _>>()?;
        // MetaCLIP: one embedding and one label per (non-empty) candidate.
        let (features, labels) = match run.labeler.as_mut() {
            Some(labeler) if !bytes.is_empty() && bytes.iter().all(|m| m.iter().any(|&v| v != 0)) => {
                let views: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
                let features = labeler.embed_masks(&rgb, (w, h), &views)?; // [N, embed]
                let labels = labeler.classify(&features)?.into_iter().map(Some).collect();
                (Some(features), labels)
            }
            _ => (None, vec![None; bytes.len()]),
        };
        let kept: Vec<bool> = labels
            .iter()
            .map(|l: &Option<(Arc<str>, f32)>| {
                self.spec.keep.is_empty() || l.as_ref().is_some_and(|(c, _)| self.spec.keep.iter().any(|k| **k == **c))
            })
            .collect();
        let verdicts = decide(&bytes, &kept, tracks, memory, &self.spec.limits, seq);
        for (verdict, mask) in verdicts.iter().zip(&bytes) {
            let (Verdict::New(id) | Verdict::Found(id)) = *verdict else { continue };
            let prompt = FramePrompt::Mask { width: w, height: h, mask: mask.as_slice().into() };
            let command = TrackerCommand::Add {
                camera: Some(frame.meta.camera.clone()),
                id,
                prompt,
                origin: TrackOrigin::Discovery,
            };
            if self.tracker.send(command).is_err() {
                tracing::warn!(id, "discovery: the tracker's control queue is full, object dropped");
                memory.pending.remove(&id);
            } else {
                tracing::info!(camera = %frame.meta.camera, id, ?verdict, "discovery: handing an object to the tracker");
            }
        }
        memory.last_run = Some((seq, thumb));
        ctx.emit(Packet::Candidates(candidates_message(frame, &masks, &bytes, &verdicts, &labels)));
        memory.last = Some(LastRun { seq, masks: bytes, verdicts, features, labels });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocellus_runtime::message::FrameMeta;

    const W: usize = 64;
    const H: usize = 48;

    fn rect(x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<u8> {
        let mut m = vec![0u8; W * H];
        for y in y0..y1 {
            for x in x0..x1 {
                m[y * W + x] = 1;
            }
        }
        m
    }

    /// The tracks a tracker that follows every handed object perfectly would report: `shown`
    /// (id, mask) visible, `hidden` ids occluded.
    fn tracks(seq: u64, shown: &[(u32, &Vec<u8>)], hidden: &[u32]) -> Tracks {
        let mut labels = vec![0u16; W * H];
        let mut list = Vec::new();
        for (id, mask) in shown {
            for (l, m) in labels.iter_mut().zip(mask.iter()) {
                if *m != 0 {
                    *l = *id as u16;
                }
            }
            let area = mask.iter().filter(|&&m| m != 0).count() as u64;
            list.push(Track {
                id: *id,
                bbox: mask_box(mask, W),
                score: 0.9,
                occluded: false,
                area,
                label: None,
                origin: None,
            });
        }
        for &id in hidden {
            list.push(Track { id, bbox: None, score: 0.1, occluded: true, area: 0, label: None, origin: None });
        }
        Tracks {
            meta: FrameMeta { camera: "cam".into(), seq, capture_ns: 0, frame_id: None },
            width: W as u32,
            height: H as u32,
            labels: Bytes::from(labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>()),
            tracks: list,
        }
    }

    fn limits() -> Limits {
        Limits { match_iou: 0.5, max_tracks: 8, min_area: 20, max_area: 0.8, max_new: 4, remember: 60, first_id: 1000 }
    }

    /// One discovery run on frame `seq`: the tracker shows `shown`, has `hidden` occluded.
    fn run(
        memory: &mut Memory,
        seq: u64,
        shown: &[(u32, &Vec<u8>)],
        hidden: &[u32],
        found: &[&Vec<u8>],
    ) -> Vec<Verdict> {
        let t = tracks(seq, shown, hidden);
        memory.observe(&t, seq, limits().remember);
        let candidates: Vec<Vec<u8>> = found.iter().map(|c| (*c).clone()).collect();
        decide(&candidates, &vec![true; candidates.len()], &t, memory, &limits(), seq)
    }

    /// Objects entering mid-stream get exactly one track each; parts and duplicates of tracked
    /// objects, small specks and objects already tracked are not tracked again; an object back
    /// from an occlusion the tracker did not recover from gets its own id back.
    #[test]
    fn one_track_per_object_through_entries_and_an_occlusion() {
        let a = rect(2, 2, 20, 20);
        let b = rect(30, 5, 50, 25);
        let c = rect(10, 30, 30, 46);
        let part_of_a = rect(4, 4, 12, 12);
        let part_of_c = rect(12, 32, 20, 40);
        let speck = rect(60, 40, 63, 43);
        let mut m = Memory::default();
        // Frame 0: only A is there (and a speck): A becomes track 1000.
        assert_eq!(run(&mut m, 0, &[], &[], &[&a, &speck]), [Verdict::New(1000), Verdict::Small]);
        // Frame 15: the tracker has not shown A yet: it is not handed over twice.
        assert_eq!(run(&mut m, 15, &[], &[], &[&a]), [Verdict::Known(1000)]);
        // Frame 30: A tracked; B entered; A and a part of A are known.
        assert_eq!(
            run(&mut m, 30, &[(1000, &a)], &[], &[&b, &a, &part_of_a]),
            [Verdict::New(1001), Verdict::Known(1000), Verdict::InsideTracks]
        );
        // Frame 45: C entered, and a part of it was found too.
        assert_eq!(
            run(&mut m, 45, &[(1000, &a), (1001, &b)], &[], &[&c, &part_of_c, &b]),
            [Verdict::New(1002), Verdict::Duplicate, Verdict::Known(1001)]
        );
        // Frame 60: A occluded (the tracker keeps its id, without a mask): nothing new.
        assert_eq!(
            run(&mut m, 60, &[(1001, &b), (1002, &c)], &[1000], &[&b, &c]),
            [Verdict::Known(1001), Verdict::Known(1002)]
        );
        // Frame 75: A is back and the tracker has not recovered it: A gets its id back.
        assert_eq!(
            run(&mut m, 75, &[(1001, &b), (1002, &c)], &[1000], &[&a, &b]),
            [Verdict::Found(1000), Verdict::Known(1001)]
        );
        // Frame 90: all three tracked: nothing new, whatever the generator finds again.
        assert_eq!(
            run(&mut m, 90, &[(1000, &a), (1001, &b), (1002, &c)], &[], &[&c, &a, &b, &part_of_a]),
            [Verdict::Known(1002), Verdict::Known(1000), Verdict::Known(1001), Verdict::InsideTracks]
        );
    }

    #[test]
    fn limits_are_kept() {
        let objects: Vec<Vec<u8>> = (0..6).map(|i| rect(i * 10, 0, i * 10 + 8, 8)).collect();
        let mut memory = Memory::default();
        let t = tracks(0, &[], &[]);
        memory.observe(&t, 0, limits().remember);
        let v = decide(&objects, &[true; 6], &t, &mut memory, &limits(), 0);
        let new = v.iter().filter(|v| matches!(v, Verdict::New(_))).count();
        assert_eq!(new, 4, "max_new per run: {v:?}");
        assert_eq!(v[4..], [Verdict::OverLimit, Verdict::OverLimit]);
        // Next run: 4 pending + 4 more would pass max_tracks = 8 only if nothing is tracked.
        let few = Limits { max_tracks: 5, ..limits() };
        let v = decide(&objects[4..], &[true; 2], &t, &mut memory, &few, 15);
        assert_eq!(v, [Verdict::New(1004), Verdict::OverLimit], "max_tracks counts the objects handed over");
    }
}
