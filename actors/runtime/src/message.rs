//! The messages of the data plane, and the port types that name them.
//!
//! Every result carries the identity of the frame it derives from ([`FrameMeta`]: camera,
//! sequence number, capture time), so that a join can pair it with the frame and latency is
//! measured from capture to each output.

use std::sync::Arc;

use bytes::Bytes;
pub use ocellus_wire::{FrameLayout, PixelFormat};
use serde::{Deserialize, Serialize};

/// Identity of a frame, carried by every result derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMeta {
    /// Camera (source) name.
    pub camera: Arc<str>,
    /// Per-camera sequence number, from 0.
    pub seq: u64,
    /// Capture time, nanoseconds since the Unix epoch (sensor clock mapped to wall time).
    pub capture_ns: i64,
    /// The coordinate frame the sender named (a ROS 2 image's `header.frame_id`), kept for
    /// what is published about this frame; `None`: the camera's name.
    pub frame_id: Option<Arc<str>>,
}

/// A camera frame: its identity, its layout and the pixels as a shared, immutable buffer.
///
/// Cloning is cheap: the pixels are reference-counted (from a GStreamer source they are the
/// mapped GStreamer buffer itself, never copied between the source and preprocessing).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Camera, sequence number and capture time.
    pub meta: FrameMeta,
    /// Pixel format, width, height, stride and plane offsets.
    pub layout: FrameLayout,
    /// The pixels, laid out as `layout` says.
    pub pixels: Bytes,
}

impl Frame {
    /// A frame, after checking that `pixels` holds `layout`.
    pub fn new(meta: FrameMeta, layout: FrameLayout, pixels: Bytes) -> Result<Self, ocellus_wire::LayoutError> {
        layout.validate(pixels.len())?;
        Ok(Self { meta, layout, pixels })
    }
}

/// What a segmentation mask stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Motion: 1 where something moved since the previous frame.
    Motion,
}

/// A per-frame segmentation mask at frame resolution (row-major class ids).
#[derive(Debug, Clone)]
pub struct Mask {
    /// The frame it was computed from.
    pub meta: FrameMeta,
    /// What the class ids mean.
    pub kind: MaskKind,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` class ids.
    pub data: Bytes,
    /// Fraction of non-zero pixels.
    pub coverage: f64,
}

/// Feature maps computed from a frame, left on the device they were computed on.
///
/// Cloning shares the tensors (libtorch reference counts them): fan-out to several actors
/// never copies features, nor moves them off the GPU.
#[derive(Debug)]
pub struct Features {
    /// The frame they were computed from.
    pub meta: FrameMeta,
    /// The backbone that computed them.
    pub model: Arc<str>,
    /// Feature maps `[B, C, H, W]` (video: `[B, C, T, H, W]`), highest resolution first.
    pub levels: Vec<tch::Tensor>,
}

impl Clone for Features {
    fn clone(&self) -> Self {
        Self {
            meta: self.meta.clone(),
            model: self.model.clone(),
            levels: self.levels.iter().map(tch::Tensor::shallow_clone).collect(),
        }
    }
}

/// One tracked object on one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Track id (stable over the stream).
    pub id: u32,
    /// Bounding box of the mask in frame pixels, when visible.
    pub bbox: Option<ocellus_kernels::masks::PixelBox>,
    /// Probability that the object is present (sigmoid of the object score).
    pub score: f32,
    /// Not visible on this frame (occluded or gone): its mask is empty, not a guess.
    pub occluded: bool,
    /// Mask area in pixels.
    pub area: u64,
    /// What the object is, once a labeler has classified it.
    pub label: Option<TrackLabel>,
    /// How the track started (the tracker sets it; `None` elsewhere).
    pub origin: Option<TrackOrigin>,
}

/// How a track started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackOrigin {
    /// A prompt in the configuration.
    Config,
    /// An operator: a box from the agent's `track` tool, or a prompt on the tracker's topic.
    Operator,
    /// Found by the discovery actor (automatic mask generation).
    Discovery,
    /// Chosen by a text query (the agent's `track` tool with `query`).
    Query,
}

impl TrackOrigin {
    /// Its name (`config`, `operator`, `discovery`, `query`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Operator => "operator",
            Self::Discovery => "discovery",
            Self::Query => "query",
        }
    }
}

/// A track's class (e.g. a zero-shot CLIP label, smoothed over time).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackLabel {
    /// Class name.
    pub name: Arc<str>,
    /// Its probability.
    pub score: f32,
}

/// The tracks of one frame: a label image at frame resolution (0 = background, else the
/// track id) and one entry per track.
#[derive(Debug, Clone)]
pub struct Tracks {
    /// The frame they were computed from.
    pub meta: FrameMeta,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` little-endian u16 track ids.
    pub labels: Bytes,
    /// Every tracked object.
    pub tracks: Vec<Track>,
}

impl Tracks {
    /// The label image as track ids, row-major.
    pub fn label_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.labels.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
}

/// A frame with tracked objects removed (the inpainter's output): what is shown and
/// published instead of the raw frame where privacy matters.
#[derive(Debug, Clone)]
pub struct Inpainted {
    /// The frame, inpainted (packed RGB, the source's size).
    pub frame: Frame,
    /// The tracks removed from it (empty: the frame unchanged).
    pub removed: Vec<u32>,
}

/// A periodic metrics report of one node.
#[derive(Debug, Clone)]
pub struct MetricsReport {
    /// The node.
    pub stage: Arc<str>,
    /// When the report was taken (ns since the epoch).
    pub at_ns: i64,
    /// The figures.
    pub snapshot: crate::metrics::MetricsSnapshot,
}

// --- The agent's messages -----------------------------------------------------------------

/// One phrase of a caption and the tracks behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phrase {
    /// The words.
    pub text: String,
    /// Track ids that support it (empty: context from the description or alt-text).
    #[serde(default)]
    pub tracks: Vec<u32>,
}

/// Where a caption's starting text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionBase {
    /// The previous caption.
    Previous,
    /// The camera's configured description.
    Description,
    /// An alt-text that arrived on the alt-text topic.
    AltText,
    /// Nothing: the first caption of a camera with no description.
    Empty,
}

/// A caption re-aligned to what is seen now (Altogether).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caption {
    /// Camera.
    pub camera: String,
    /// Frame it describes.
    pub seq: u64,
    /// The phrases.
    pub phrases: Vec<Phrase>,
    /// The text it re-aligned.
    pub previous: String,
    /// Where that text came from.
    pub base: CaptionBase,
    /// Model (backend name) that worded it, or `rules` when its answer was unusable.
    pub model: String,
    /// Seconds from the request to the caption (wall time: a measurement, not logic).
    pub latency_s: f64,
}

impl Caption {
    /// The caption as one text: phrases joined by `; `.
    pub fn text(&self) -> String {
        join_phrases(&self.phrases)
    }
}

/// Phrases joined by `; `.
pub fn join_phrases(phrases: &[Phrase]) -> String {
    phrases.iter().map(|p| p.text.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("; ")
}

/// What became of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// It ran.
    Executed(String),
    /// It was refused, with the reason.
    Refused(String),
}

/// A decision: one tool call (or answer) and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The instruction it answers.
    pub instruction: String,
    /// Tool name as the model wrote it (`answer` for a plain reply).
    pub tool: String,
    /// Arguments as the model wrote them.
    pub arguments: serde_json::Value,
    /// What happened.
    pub outcome: Outcome,
    /// Seconds from the instruction to the decision (wall time: a measurement, not logic).
    pub latency_s: f64,
}

/// An alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Text.
    pub text: String,
    /// 1 info, 2 warning, 3 critical.
    pub level: u8,
    /// `agent` (the `alert` tool) or `guard` (something was blocked).
    pub source: String,
}

/// Text that reached the agent from outside the pipeline: an operator's instruction or an
/// alt-text for a camera. The agent records each one with the frame it acted on, so that a
/// replay of the recording hands it the same text at the same frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InboxMessage {
    /// An operator's instruction.
    Operator {
        /// The instruction.
        text: String,
    },
    /// An alt-text for a camera (all cameras when `None`).
    AltText {
        /// The camera.
        camera: Option<String>,
        /// The text.
        text: String,
    },
}

/// What the agent emits.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutput {
    /// A re-aligned caption.
    Caption(Caption),
    /// A decision.
    Decision(Decision),
    /// An alert.
    Alert(Alert),
    /// Text for the `publish` tool's topic.
    Publish {
        /// Topic under the sink's prefix.
        topic: String,
        /// Text.
        text: String,
    },
    /// An inbox message, as received, on the frame it was acted on.
    Received(InboxMessage),
}

/// An agent output and the frame it is about.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    /// The frame.
    pub meta: FrameMeta,
    /// The output.
    pub output: AgentOutput,
}

// --- 3D people ------------------------------------------------------------------------------

/// One person's 3D body on a frame (HMR 2.0 on the track's crop).
#[derive(Debug, Clone, PartialEq)]
pub struct PersonPose {
    /// The track.
    pub id: u32,
    /// SMPL root rotation, row-major 3×3.
    pub global_orient: [f32; 9],
    /// SMPL body-joint rotations: 23 row-major 3×3 (207 values).
    pub body_pose: Vec<f32>,
    /// SMPL shape.
    pub betas: [f32; 10],
    /// The weak-perspective crop camera `(s, tx, ty)`.
    pub crop_cam: [f32; 3],
    /// The track's box `[x0, y0, x1, y1]` in frame pixels (the crop was cut around it).
    pub bbox: [f32; 4],
    /// The body's translation in the camera frame (metres; x right, y down, z forward).
    pub translation: [f32; 3],
    /// 45 joints in the camera frame (the 25 OpenPose joints, the 19 of the extra regressor,
    /// one zero joint, each plus `translation`); `None` without a body-model file.
    pub joints: Option<Vec<[f32; 3]>>,
    /// The SMPL mesh's 6890 vertices in the camera frame, when asked for (`mesh = true`).
    pub vertices: Option<Arc<[[f32; 3]]>>,
}

/// The 3D people of one frame, and the camera they are seen by.
#[derive(Debug, Clone, PartialEq)]
pub struct Poses {
    /// The frame.
    pub meta: FrameMeta,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Focal length of the frame camera, pixels.
    pub focal_length: f64,
    /// Principal point `(x, y)`, frame pixels.
    pub principal_point: [f64; 2],
    /// One entry per person.
    pub people: Vec<PersonPose>,
    /// The SMPL mesh's triangles (vertex indices), when meshes are output.
    pub faces: Option<Arc<[[u32; 3]]>>,
    /// The tracks' label image of the frame (`width * height` little-endian u16 track ids,
    /// shared with the tracks message), for per-person masks downstream.
    pub labels: Option<Bytes>,
}

// --- Actions ------------------------------------------------------------------------------

/// One action and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionScore {
    /// AVA's id of the action (1–80).
    pub ava_id: u16,
    /// AVA's name of it (`stand`, `talk to (e.g., self, a person, a group)`, ...).
    pub name: String,
    /// Probability (the sigmoid of the logit, averaged over the frames around the key frame).
    pub score: f32,
}

/// One person's actions on a frame (LART).
#[derive(Debug, Clone, PartialEq)]
pub struct PersonActions {
    /// The track.
    pub id: u32,
    /// Whether the person was detected on this frame (else the model filled the frame in).
    pub detected: bool,
    /// The best actions, best first.
    pub actions: Vec<ActionScore>,
}

/// The actions of the people of one frame (the key frame of a window).
#[derive(Debug, Clone, PartialEq)]
pub struct Actions {
    /// The frame the actions are about.
    pub meta: FrameMeta,
    /// One entry per person.
    pub people: Vec<PersonActions>,
}

// --- Packets and port types ---------------------------------------------------------------

/// Everything that travels over an edge.
#[derive(Debug, Clone)]
pub enum Packet {
    /// A camera frame.
    Frame(Frame),
    /// A mask computed from a frame.
    Mask(Mask),
    /// Backbone features of a frame.
    Features(Features),
    /// Tracked objects of a frame.
    Tracks(Tracks),
    /// Objects found on a frame without prompts (automatic mask generation), not tracks:
    /// `id` is the candidate's rank, `score` its predicted IoU.
    Candidates(Tracks),
    /// A metrics report.
    Metrics(MetricsReport),
    /// A caption, decision, alert or published text of the agent.
    Agent(Arc<AgentEvent>),
    /// A frame with tracks inpainted away.
    Inpainted(Inpainted),
    /// 3D people of a frame.
    Poses(Arc<Poses>),
    /// Actions of the people of a frame.
    Actions(Arc<Actions>),
}

/// The type of what a port carries: one per [`Packet`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortType {
    /// [`Frame`].
    Frame,
    /// [`Mask`].
    Mask,
    /// [`Features`].
    Features,
    /// [`Tracks`].
    Tracks,
    /// [`Tracks`] of discovered candidates ([`Packet::Candidates`]).
    Candidates,
    /// [`MetricsReport`].
    Metrics,
    /// [`AgentEvent`].
    Agent,
    /// [`Inpainted`].
    Inpainted,
    /// [`Poses`].
    Poses,
    /// [`Actions`].
    Actions,
}

impl PortType {
    /// Its name in configurations and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frame => "frames",
            Self::Mask => "masks",
            Self::Features => "features",
            Self::Tracks => "tracks",
            Self::Candidates => "candidates",
            Self::Metrics => "metrics",
            Self::Agent => "agent events",
            Self::Inpainted => "inpainted frames",
            Self::Poses => "poses",
            Self::Actions => "actions",
        }
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Packet {
    /// The frame this packet derives from, if any.
    pub fn meta(&self) -> Option<&FrameMeta> {
        match self {
            Self::Frame(f) => Some(&f.meta),
            Self::Mask(m) => Some(&m.meta),
            Self::Features(f) => Some(&f.meta),
            Self::Tracks(t) | Self::Candidates(t) => Some(&t.meta),
            Self::Metrics(_) => None,
            Self::Agent(a) => Some(&a.meta),
            Self::Inpainted(i) => Some(&i.frame.meta),
            Self::Poses(p) => Some(&p.meta),
            Self::Actions(a) => Some(&a.meta),
        }
    }

    /// What kind of message it is.
    pub fn port_type(&self) -> PortType {
        match self {
            Self::Frame(_) => PortType::Frame,
            Self::Mask(_) => PortType::Mask,
            Self::Features(_) => PortType::Features,
            Self::Tracks(_) => PortType::Tracks,
            Self::Candidates(_) => PortType::Candidates,
            Self::Metrics(_) => PortType::Metrics,
            Self::Agent(_) => PortType::Agent,
            Self::Inpainted(_) => PortType::Inpainted,
            Self::Poses(_) => PortType::Poses,
            Self::Actions(_) => PortType::Actions,
        }
    }
}
