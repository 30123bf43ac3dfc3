//! The tracker actor (`kind = "sam2"`): SAM 2 streaming segmentation and multi-object
//! tracking.
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
//!
//! Objects come from the configuration (`prompts`), from other nodes over its control channel
//! ([`TrackerCommand`]: the agent's `track` tool), and from a zenoh topic of JSON prompts
//! (`prompt_topic`, a session opened when the tracker starts).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ocellus_io::kinds::{SessionKeys, key_expr};
use ocellus_io::session::{SessionSpec, spawn_host};
use ocellus_kernels::masks::{mask_box, mask_to_bytes};
use ocellus_kernels::{Fit, Normalization, Resize, ResizeMode, Transform};
use ocellus_perception::model::{Loaded, ModelSpec, Sam2Options};
use ocellus_perception::onnx::{Backend, OnnxEncoder, OnnxModel, OnnxOptions};
use ocellus_perception::sam2::Sam2;
use ocellus_perception::sam2::sam2_base::{DEFAULT_MAX_BATCH, GPU_MAX_BATCH, PointInputs};
use ocellus_perception::sam2::streaming::{Prompt, StreamConfig, StreamingTracker};
use ocellus_runtime::control::{ControlReceiver, ControlSender};
use ocellus_runtime::edge::EdgePolicy;
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, OutputPort, Ports};
use ocellus_runtime::{Packet, PortType, Result, RuntimeError, Track, TrackOrigin, Tracks};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::backbone::ResizeName;
use crate::{bad_frame, failed, model_spec};

/// Commands waiting in a tracker's control channel, at most.
pub const CONTROL_DEPTH: usize = 16;
/// Conditioning frames kept per object unless the configuration says otherwise.
const DEFAULT_MAX_COND_FRAMES: usize = 4;

/// A prompt in frame pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum FramePrompt {
    /// `[x0, y0, x1, y1]`.
    Box([f64; 4]),
    /// Points `[x, y]` with labels (1 positive, 0 negative).
    Points(Vec<[f64; 2]>, Vec<i32>),
    /// A binary mask (`height` rows of `width` bytes, non-zero inside), as discovery finds
    /// objects; resized to the model's side as the video predictor's `add_new_mask`.
    Mask {
        /// Columns.
        width: usize,
        /// Rows.
        height: usize,
        /// The pixels.
        mask: Arc<[u8]>,
    },
}

impl FramePrompt {
    /// The prompt in model pixels for a `width × height` frame and a model input `side`
    /// pixels square, computed as the official video predictor does (in f32:
    /// `point / [W, H] * side`).
    fn to_model(&self, width: f64, height: f64, side: i64, device: Device) -> Result<Prompt> {
        let (w, h, side) = (width as f32, height as f32, side as f32);
        let sx = |x: f64| (x as f32 / w) * side;
        let sy = |y: f64| (y as f32 / h) * side;
        Ok(match self {
            Self::Box([x0, y0, x1, y1]) => {
                let b = [sx(*x0), sy(*y0), sx(*x1), sy(*y1)];
                Prompt::Box { bbox: Tensor::f_from_slice(&b)?.f_view([1, 4])?.f_to_device(device)?, points: None }
            }
            Self::Points(points, labels) => {
                let coords: Vec<f32> = points.iter().flat_map(|[x, y]| [sx(*x), sy(*y)]).collect();
                let n = points.len() as i64;
                Prompt::Points(PointInputs {
                    coords: Tensor::f_from_slice(&coords)?.f_view([1, n, 2])?.f_to_device(device)?,
                    labels: Tensor::f_from_slice(labels)?.f_view([1, n])?.f_to_device(device)?,
                })
            }
            Self::Mask { width, height, mask } => {
                if mask.len() != width * height {
                    return Err(RuntimeError::BadInput(format!(
                        "a {width}x{height} mask prompt of {} bytes",
                        mask.len()
                    )));
                }
                let m = Tensor::f_from_slice(mask)?.f_ne(0)?.f_view([1, 1, *height as i64, *width as i64])?;
                Prompt::Mask(m.f_to_device(device)?)
            }
        })
    }
}

/// Commands to a tracker.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerCommand {
    /// Track a new object from the next frame of `camera` (all cameras when `None`).
    Add {
        /// Camera.
        camera: Option<Arc<str>>,
        /// Track id to use.
        id: u32,
        /// Where the object is.
        prompt: FramePrompt,
        /// Who asked (shown with the track).
        origin: TrackOrigin,
    },
    /// Stop tracking `id`.
    Remove {
        /// Track id.
        id: u32,
    },
}

/// One prompt message on a tracker's prompt topic (JSON):
/// `{"id": 5, "box": [x0, y0, x1, y1]}`, `{"id": 5, "points": [[x, y]], "labels": [1]}`,
/// `{"remove": 5}`; `"camera": "front"` limits it to one camera.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptMessage {
    id: Option<u32>,
    #[serde(rename = "box")]
    bbox: Option<[f64; 4]>,
    points: Option<Vec<[f64; 2]>>,
    labels: Option<Vec<i32>>,
    remove: Option<u32>,
    camera: Option<String>,
}

/// Reads a prompt message; the error says what is wrong.
pub fn parse_prompt_message(bytes: &[u8]) -> std::result::Result<TrackerCommand, String> {
    // JSON as it is, or inside a ROS 2 std_msgs/String.
    let text =
        ocellus_wire::ros2::text_payload(bytes).ok_or("not a prompt message: neither UTF-8 nor a std_msgs/String")?;
    let m: PromptMessage = serde_json::from_str(&text).map_err(|e| format!("not a prompt message: {e}"))?;
    let camera = m.camera.map(|c| Arc::<str>::from(c.as_str()));
    let id = |id: Option<u32>| id.filter(|i| *i != 0).ok_or_else(|| "needs a non-zero \"id\"".to_owned());
    match (m.remove, m.bbox, m.points) {
        (Some(remove), None, None) if remove != 0 => Ok(TrackerCommand::Remove { id: remove }),
        (None, Some([x0, y0, x1, y1]), None) => {
            let ok = [x0, y0, x1, y1].iter().all(|v| v.is_finite() && *v >= 0.0) && x0 < x1 && y0 < y1;
            if !ok {
                return Err("a box needs 0 <= x0 < x1 and 0 <= y0 < y1".into());
            }
            Ok(TrackerCommand::Add {
                camera,
                id: id(m.id)?,
                prompt: FramePrompt::Box([x0, y0, x1, y1]),
                origin: TrackOrigin::Operator,
            })
        }
        (None, None, Some(points)) => {
            let labels = m.labels.unwrap_or_else(|| vec![1; points.len()]);
            if points.is_empty() || labels.len() != points.len() || labels.iter().any(|l| !matches!(l, 0 | 1)) {
                return Err("points need one label each, 1 (positive) or 0 (negative)".into());
            }
            if points.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err("points must be finite and non-negative".into());
            }
            Ok(TrackerCommand::Add {
                camera,
                id: id(m.id)?,
                prompt: FramePrompt::Points(points, labels),
                origin: TrackOrigin::Operator,
            })
        }
        _ => Err("give exactly one of \"box\", \"points\" or \"remove\"".into()),
    }
}

/// Where a tracker's prompts come from on zenoh.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTopicSpec {
    /// Session.
    pub session: SessionSpec,
    /// Key of the prompt messages.
    pub key: String,
}

/// Feeds `tx` from the prompt topic, on a zenoh session living on its own runtime thread.
/// Malformed messages are counted in the log and skipped. Ends when `stop` is set (the
/// tracker stopped).
pub fn subscribe_prompts(
    spec: PromptTopicSpec,
    tx: ControlSender<TrackerCommand>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_host("tracker-prompts".into(), move || async move {
        let session = match ocellus_io::session::open(&spec.session).await {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "tracker prompts: cannot open the zenoh session"),
        };
        let subscriber = match session.declare_subscriber(spec.key.clone()).await {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, key = %spec.key, "tracker prompts: cannot subscribe"),
        };
        let mut bad = 0u64;
        while !stop.load(Ordering::Acquire) {
            match subscriber.try_recv() {
                Ok(Some(sample)) => match parse_prompt_message(&sample.payload().to_bytes()) {
                    Ok(command) => {
                        if tx.send(command).is_err() {
                            tracing::warn!("tracker prompts: the tracker's control queue is full, prompt dropped");
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        tracing::warn!(error = %e, bad, "tracker prompts: malformed message skipped");
                    }
                },
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        drop(subscriber);
        if let Err(e) = ocellus_io::session::close(session, &spec.session).await {
            tracing::warn!(error = %e, "tracker prompts: closing the session");
        }
    })
}

// --- Configuration -------------------------------------------------------------------------

/// `prompts = [{ box = [x0, y0, x1, y1] }, { id = 7, points = [[x, y]], labels = [1] }]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptEntry {
    /// Track id (default: its place in the list, from 1).
    pub id: Option<u32>,
    /// A box in frame pixels.
    #[serde(rename = "box")]
    pub bbox: Option<[f64; 4]>,
    /// Clicks in frame pixels.
    pub points: Option<Vec<[f64; 2]>>,
    /// One label per click: 1 positive, 0 negative (default all positive).
    pub labels: Option<Vec<i32>>,
}

ocellus_io::zenoh_entry! {
    /// `prompt_topic = { key = "robot/front/prompts", connect = [...] }`, or from ROS 2 nodes
    /// `prompt_topic = { topic = "/ocellus/prompts" }` (`std_msgs/String` holding the JSON).
    #[derive(Debug, Clone, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PromptTopicEntry {
        /// Key of the prompt messages (JSON, or a ROS 2 `std_msgs/String` holding it).
        pub key: Option<String>,
        /// A ROS 2 topic on rmw_zenoh instead (`std_msgs/String` holding the JSON).
        pub topic: Option<String>,
        /// `ROS_DOMAIN_ID` of `topic` (default: the environment's, else 0).
        pub domain: Option<u32>,
    }
}

/// `[[actor]] kind = "sam2"` (with `model` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackerEntry {
    /// Objects to track from each camera's first frame.
    #[serde(default)]
    pub prompts: Vec<PromptEntry>,
    /// Conditioning frames kept per object (the first prompt and the latest corrections).
    #[serde(default = "default_max_cond_frames")]
    pub max_cond_frames: usize,
    /// Prompts from a zenoh topic (JSON).
    pub prompt_topic: Option<PromptTopicEntry>,
    /// Objects tracked at once per camera (each holds a memory bank): a prompt for a new
    /// object beyond it is refused, logged and counted.
    #[serde(default = "default_max_tracks")]
    pub max_tracks: usize,
    /// Input side, when not the model's `image_size` (a multiple of 32).
    pub image_size: Option<i64>,
    /// The video predictor's preprocessing (`exact`) or bilinear on the device (`fast`).
    #[serde(default)]
    pub resize: ResizeName,
    /// `tch`, or `onnx`: the image encoder in ONNX Runtime (`image_encoder`), the rest of
    /// SAM 2 from `weights` as usual.
    #[serde(default)]
    pub backend: Backend,
    /// The image encoder exported by `ocellus weights export-onnx` at this tracker's
    /// `image_size` (`backend = "onnx"`).
    pub image_encoder: Option<PathBuf>,
    /// ONNX Runtime session options (`backend = "onnx"`).
    pub onnx: Option<OnnxOptions>,
}

fn default_max_cond_frames() -> usize {
    DEFAULT_MAX_COND_FRAMES
}

/// Default of [`TrackerEntry::max_tracks`].
pub const DEFAULT_MAX_TRACKS: usize = 32;

fn default_max_tracks() -> usize {
    DEFAULT_MAX_TRACKS
}

/// Whether `tracker` may take a prompt for `id` within `max_tracks`: a correction of an
/// object it has always may, a new object while there is room.
pub fn admits(tracker: &StreamingTracker, id: u32, max_tracks: usize) -> bool {
    tracker.has(u64::from(id)) || tracker.num_objects() < max_tracks
}

/// What the tracker actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerSpec {
    /// The node's name (its control channel's).
    pub name: String,
    /// SAM 2.
    pub model: ModelSpec,
    /// Objects to track from each camera's first frame: (track id, prompt).
    pub prompts: Vec<(u32, FramePrompt)>,
    /// Streaming memory settings.
    pub stream: StreamConfig,
    /// Input side, when not the model config's `image_size`.
    pub image_size: Option<i64>,
    /// The image encoder exported to ONNX, run by ONNX Runtime instead of the native one.
    pub image_encoder: Option<OnnxEncoder>,
    /// The official preprocessing, or the fast path.
    pub resize: ResizeMode,
    /// Prompts from zenoh.
    pub prompt_topic: Option<PromptTopicSpec>,
    /// Objects tracked at once per camera.
    pub max_tracks: usize,
}

/// The `sam2` kind.
pub struct TrackerKind;

impl NodeKind for TrackerKind {
    const NAME: &'static str = "sam2";
    const DOC: &'static str = "SAM 2 streaming segmentation and tracking of prompted objects: tracks per frame";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = TrackerEntry;

    fn configure(common: &Common, e: TrackerEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Sam2>(common)?;
        if e.max_cond_frames == 0 {
            return Err(Issue::at("max_cond_frames", "must be at least 1"));
        }
        if e.max_tracks == 0 || e.prompts.len() > e.max_tracks {
            let why = format!("must be at least 1 and hold the {} configured prompts", e.prompts.len());
            return Err(Issue::at("max_tracks", why));
        }
        let mut prompts = Vec::new();
        let mut ids = HashSet::new();
        for (i, p) in e.prompts.into_iter().enumerate() {
            let at = |key: &str, m: &str| Issue::at("prompts", m).index(i).key(key);
            let id = p.id.unwrap_or(i as u32 + 1);
            if id == 0 || !ids.insert(id) {
                return Err(at("id", &format!("track id {id} must be unique and non-zero")));
            }
            let prompt = match (p.bbox, p.points, p.labels) {
                (Some([x0, y0, x1, y1]), None, None) => {
                    if !(x0 < x1 && y0 < y1) {
                        return Err(at("box", "needs x0 < x1 and y0 < y1"));
                    }
                    FramePrompt::Box([x0, y0, x1, y1])
                }
                (None, Some(points), labels) => {
                    let labels = labels.unwrap_or_else(|| vec![1; points.len()]);
                    if points.is_empty() || labels.len() != points.len() {
                        return Err(at("labels", "needs one label per point (1 positive, 0 negative)"));
                    }
                    if labels.iter().any(|l| !matches!(l, 0 | 1)) {
                        return Err(at("labels", "labels are 1 (positive) or 0 (negative)"));
                    }
                    FramePrompt::Points(points, labels)
                }
                _ => {
                    return Err(Issue::at("prompts", "give either `box` or `points` (with optional `labels`)").index(i));
                }
            };
            prompts.push((id, prompt));
        }
        let prompt_topic = match e.prompt_topic {
            None => None,
            Some(t) => {
                let inside = |i: Issue| i.inside("prompt_topic");
                let key = match (&t.key, &t.topic) {
                    (Some(key), None) => key.clone(),
                    (None, Some(topic)) => ocellus_wire::ros2::rmw_zenoh_key(
                        ocellus_io::kinds::ros_domain(t.domain).map_err(inside)?,
                        topic,
                        ocellus_wire::ros2::MsgType::String,
                        None,
                    ),
                    (Some(_), Some(_)) => return Err(inside(Issue::at("topic", "give `key` or `topic`, not both"))),
                    (None, None) => {
                        return Err(inside(Issue::here("needs `key` (zenoh) or `topic` (a ROS 2 topic)")));
                    }
                };
                if t.domain.is_some() && t.topic.is_none() {
                    return Err(inside(Issue::at("domain", "`domain` is for a ROS 2 `topic`")));
                }
                key_expr("key", &key).map_err(inside)?;
                let keys: SessionKeys = ocellus_io::session_keys!(t);
                let session = keys.spec().map_err(inside)?;
                Some(PromptTopicSpec { session, key })
            }
        };
        if let Some(side) = e.image_size.filter(|s| *s <= 0 || s % 32 != 0) {
            return Err(Issue::at("image_size", format!("{side}: SAM 2 needs a positive multiple of 32")));
        }
        let max_batch = if common.device.is_cuda() { GPU_MAX_BATCH } else { DEFAULT_MAX_BATCH };
        let stream = StreamConfig { max_cond_frames: e.max_cond_frames, max_batch, ..StreamConfig::default() };
        let image_encoder = crate::onnx_encoder(e.backend, e.image_encoder, e.onnx, model.dtype)?;
        Ok(Arc::new(TrackerSpec {
            name: common.name.clone(),
            model,
            prompts,
            stream,
            image_size: e.image_size,
            image_encoder,
            resize: e.resize.into(),
            prompt_topic,
            max_tracks: e.max_tracks,
        }))
    }
}

/// The tracker's ports.
pub fn ports() -> Ports {
    Ports {
        inputs: vec![InputPort::new("frames", &[PortType::Frame], EdgePolicy::Latest)],
        outputs: vec![OutputPort { name: "tracks", ty: PortType::Tracks }],
        join: None,
    }
}

impl ConfiguredNode for TrackerSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, ctx: &mut BuildContext) -> Result<StageFactory> {
        let (tx, rx) = ctx.control::<TrackerCommand>(&self.name, CONTROL_DEPTH);
        let spec = self.clone();
        Ok(stage_factory(move || TrackerStage::new(spec.clone(), Some((tx.clone(), rx.clone())))))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

// --- The stage ---------------------------------------------------------------------------

/// The model and what the stage derives from it, once started.
struct Running {
    sam: Loaded<Sam2>,
    /// The video predictor's frame loading.
    transform: Transform,
}

/// Tracks the configured objects (and those commanded) on every frame.
pub struct TrackerStage {
    spec: TrackerSpec,
    control: Option<(ControlSender<TrackerCommand>, ControlReceiver<TrackerCommand>)>,
    running: Option<Running>,
    cameras: HashMap<Arc<str>, StreamingTracker>,
    /// Commands for cameras not seen yet, applied on their first frame.
    pending: Vec<TrackerCommand>,
    /// The prompt topic's session thread and its stop flag.
    prompts: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
    /// How each (camera, track) started.
    origins: HashMap<(Arc<str>, u32), TrackOrigin>,
    /// Prompts refused for `max_tracks`.
    refused: u64,
}

impl TrackerStage {
    /// A stage running `spec`, commanded over `control` (the model loads when it starts).
    pub fn new(
        spec: TrackerSpec,
        control: Option<(ControlSender<TrackerCommand>, ControlReceiver<TrackerCommand>)>,
    ) -> Self {
        Self {
            spec,
            control,
            running: None,
            cameras: HashMap::new(),
            pending: Vec::new(),
            prompts: None,
            origins: HashMap::new(),
            refused: 0,
        }
    }

    /// Applies queued commands to `camera`'s tracker (frame size `w × h`).
    fn apply_commands(&mut self, camera: &Arc<str>, w: f64, h: f64, side: i64) -> Result<()> {
        let mut commands = std::mem::take(&mut self.pending);
        if let Some((_, rx)) = &self.control {
            commands.extend(rx.drain());
        }
        let device = self.spec.model.device;
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
                TrackerCommand::Add { id, prompt, origin, .. } => {
                    if !admits(tracker, id, self.spec.max_tracks) {
                        self.refused += 1;
                        let (max_tracks, refused) = (self.spec.max_tracks, self.refused);
                        tracing::warn!(%camera, id, origin = origin.name(), max_tracks, refused, "prompt refused: max_tracks objects are tracked");
                        continue;
                    }
                    tracing::info!(%camera, id, origin = origin.name(), "tracking a new object");
                    tracker.add_prompt(u64::from(id), prompt.to_model(w, h, side, device)?);
                    self.origins.insert((camera.clone(), id), origin);
                }
                TrackerCommand::Remove { id } => {
                    tracker.remove(u64::from(id));
                    self.origins.remove(&(camera.clone(), id));
                }
            }
        }
        Ok(())
    }
}

impl Stage for TrackerStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let options = Sam2Options { image_size: self.spec.image_size };
        let mut sam = self.spec.model.load_with::<Sam2>(&options).map_err(failed)?;
        if let Some(encoder) = &self.spec.image_encoder {
            let onnx = OnnxModel::load(&encoder.file, &encoder.options).map_err(failed)?;
            sam.model.use_onnx_image_encoder(onnx).map_err(failed)?;
        }
        let side = sam.image_size();
        let transform = Transform {
            fit: Fit::Stretch { height: side, width: side },
            resize: Resize::PilBicubic,
            norm: Normalization::IMAGENET,
        };
        self.running = Some(Running { sam, transform });
        if let (Some(topic), Some((tx, _)), None) = (&self.spec.prompt_topic, &self.control, &self.prompts) {
            let stop = Arc::new(AtomicBool::new(false));
            let handle = subscribe_prompts(topic.clone(), tx.clone(), stop.clone())
                .map_err(|e| RuntimeError::Failed(format!("prompt topic: {e}")))?;
            self.prompts = Some((handle, stop));
        }
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) -> Result<()> {
        if let Some((handle, stop)) = self.prompts.take() {
            stop.store(true, Ordering::Release);
            if handle.join().is_err() {
                tracing::warn!("the prompt topic's thread panicked");
            }
        }
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let Packet::Frame(frame) = input.packet else {
            return Err(RuntimeError::BadInput("the tracker takes frames".into()));
        };
        let _span = trace_span!("tracker", camera = %frame.meta.camera, seq = frame.meta.seq).entered();
        let Some(run) = self.running.as_ref() else { return Err(RuntimeError::Failed("not started".into())) };
        let (w, h) = (frame.layout.width, frame.layout.height);
        let (device, side) = (self.spec.model.device, run.sam.image_size());
        let x = run
            .transform
            .apply_with(self.spec.resize, &frame.pixels, &frame.layout, device)
            .map_err(|e| bad_frame(&frame.meta, e))?
            .f_to_kind(self.spec.model.dtype.kind())?; // [1, 3, side, side]
        if !self.cameras.contains_key(&frame.meta.camera) {
            let mut t = StreamingTracker::new(self.spec.stream);
            for (id, prompt) in &self.spec.prompts {
                t.add_prompt(u64::from(*id), prompt.to_model(w as f64, h as f64, side, device)?);
                self.origins.insert((frame.meta.camera.clone(), *id), TrackOrigin::Config);
            }
            self.cameras.insert(frame.meta.camera.clone(), t);
        }
        self.apply_commands(&frame.meta.camera, w as f64, h as f64, side)?;
        let (Some(run), Some(tracker)) = (self.running.as_ref(), self.cameras.get_mut(&frame.meta.camera)) else {
            return Ok(());
        };
        let outputs = tch::no_grad(|| -> ocellus_perception::Result<_> {
            let feats = run.sam.frame_features(&x)?;
            tracker.step(&run.sam, frame.meta.seq, &feats)
        })
        .map_err(failed)?;
        let mut labels = vec![0u16; w * h];
        let mut tracks = Vec::with_capacity(outputs.len());
        for (id, o) in outputs {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let score = o.object_score_logits.f_sigmoid()?.f_double_value(&[0, 0])? as f32;
            let occluded = !o.visible();
            let (mut bbox, mut area) = (None, 0u64);
            if !occluded {
                let logits = o.pred_masks.f_to_kind(Kind::Float)?.f_upsample_bilinear2d(
                    [h as i64, w as i64],
                    false,
                    None,
                    None,
                )?;
                let mask = mask_to_bytes(&logits.f_view([h as i64, w as i64])?.f_gt(0.0)?)?;
                for (l, m) in labels.iter_mut().zip(&mask) {
                    if *m != 0 {
                        *l = id as u16;
                        area += 1;
                    }
                }
                bbox = mask_box(&mask, w);
            }
            let origin = self.origins.get(&(frame.meta.camera.clone(), id)).copied();
            tracks.push(Track { id, bbox, score, occluded, area, label: None, origin });
        }
        let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        ctx.emit(Packet::Tracks(Tracks {
            meta: frame.meta,
            width: w as u32,
            height: h as u32,
            labels: Bytes::from(bytes),
            tracks,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_beyond_max_tracks_are_refused_corrections_are_not() {
        let prompt = || FramePrompt::Box([1.0, 1.0, 9.0, 9.0]).to_model(16.0, 16.0, 32, tch::Device::Cpu).unwrap();
        let mut tracker = StreamingTracker::new(StreamConfig::default());
        for id in 1..=2 {
            assert!(admits(&tracker, id, 2));
            tracker.add_prompt(u64::from(id), prompt());
        }
        assert!(!admits(&tracker, 3, 2), "a third object over max_tracks = 2");
        assert!(admits(&tracker, 2, 2), "a correction of a tracked object");
        tracker.remove(1);
        assert!(admits(&tracker, 3, 2), "room again once one is removed");
    }

    #[test]
    fn prompt_messages() {
        assert!(matches!(
            parse_prompt_message(br#"{"id": 4, "box": [1, 2, 30, 40]}"#),
            Ok(TrackerCommand::Add { id: 4, .. })
        ));
        assert!(matches!(parse_prompt_message(br#"{"remove": 4}"#), Ok(TrackerCommand::Remove { id: 4 })));
        assert!(matches!(
            parse_prompt_message(br#"{"id": 2, "points": [[5, 5]], "camera": "front"}"#),
            Ok(TrackerCommand::Add { camera: Some(_), .. })
        ));
        for bad in [
            &br#"{"box": [1, 2, 3, 4]}"#[..],
            br#"{"id": 1, "box": [5, 2, 3, 4]}"#,
            br#"{"id": 1}"#,
            b"\xff",
            br#"{"id": 1, "points": [[1, 1]], "labels": [2]}"#,
            br#"{"id": 1, "box": [1, 2, 3, 4], "extra": 1}"#,
        ] {
            assert!(parse_prompt_message(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
