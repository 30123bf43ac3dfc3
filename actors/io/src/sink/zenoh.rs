//! The zenoh sink: publishes observations (and optionally frames) on zenoh, in Ocellus's own
//! key space or as a ROS 2 node on rmw_zenoh (or through zenoh-bridge-ros2dds).
//!
//! ```text
//! stage thread sink:<name>: encode (JSON, CDR, raw frame header) ──hop edge block(8), counted──►
//!   session thread zenoh:<name> (multi-thread tokio runtime): publishers declared on first use,
//!   liveliness tokens (ROS 2), attachments, optional shared-memory buffers ──► zenoh
//! ```
//!
//! The stage's input edge carries the sink's named drop policy; the hop to the session thread
//! is a small `block` edge, so when zenoh is slower than the pipeline the stage waits and the
//! input edge drops (counted) per its policy. The session opens when the sink starts and
//! closes when it stops.
//!
//! | keys | observations | frames (`frames = true`) |
//! |---|---|---|
//! | `zenoh` | `<prefix>/<camera>/<tracks\|motion>`, `<prefix>/metrics/<stage>`: JSON | `<prefix>/<camera>/frames`: raw |
//! | `ros2` (rmw_zenoh) | `<domain>/<ns>/<camera>/<topic>/std_msgs::msg::dds_::String_/<hash>`: JSON in a `std_msgs/String` | `…/<camera>/image/sensor_msgs::msg::dds_::Image_/<hash>` |
//! | `ros2dds` (bridge) | `<bridge ns>/<ns>/<camera>/<topic>`: the same CDR | `…/<camera>/image` |
//!
//! As a ROS 2 node, tracks also go out as `vision_msgs/Detection2DArray` on
//! `<camera>/detections` (one detection per visible track: its box, its label and score, its
//! id) and as a `sensor_msgs/Image` (`mono8`) on `<camera>/masks` whose pixel value is the
//! index of the pixel's track in that frame's detections plus one (0: no track); 3D people go
//! out as a `geometry_msgs/PoseArray` on `<camera>/people/poses`. Every header carries the
//! frame id the configuration sets for the camera (`frame_id`), else the one the camera's own
//! messages carried, else the camera's name.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ocellus_runtime::edge::{EdgePolicy, EdgeReceiver, EdgeSender, Recv, edge};
use ocellus_runtime::message::{AgentOutput, MetricsReport};
use ocellus_runtime::node::{Context, Input, Stage};
use ocellus_runtime::{Actions, Frame, FrameMeta, Mask, Packet, Poses, RuntimeError, Tracks, now_ns};
use ocellus_wire::observations::{
    ActionJson, FrameRef, Observation, PersonActionsJson, PersonJson, TextKind, TrackJson,
};
use ocellus_wire::ros2::{self, MsgType, NodeIdentity, Qos, TypeHashes};
use ocellus_wire::{CodecError, raw};
use parking_lot::Mutex;
use tracing::{info, warn};
use zenoh::Wait;
use zenoh::bytes::{Encoding, ZBytes};
use zenoh::qos::{CongestionControl, Reliability};

use crate::session::{self, SessionSpec};

type Result<T> = ocellus_runtime::Result<T>;

/// Which key space and payloads a zenoh sink uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStyle {
    /// Ocellus's own: `<prefix>/...`, JSON observations, raw frames.
    Zenoh {
        /// First chunks of every key (`ocellus`).
        prefix: String,
    },
    /// A ROS 2 node on rmw_zenoh: data keys with domain, type and hash, CDR payloads,
    /// attachments, liveliness tokens.
    Ros2 {
        /// `ROS_DOMAIN_ID`.
        domain: u32,
        /// Topic namespace (`/ocellus`).
        namespace: String,
        /// Node name.
        node: String,
        /// What goes in the hash slot (RIHS01 for Iron and later, Humble's placeholder).
        hashes: TypeHashes,
    },
    /// zenoh-bridge-ros2dds: keys are ROS topic names (under the bridge's namespace), CDR.
    Ros2Dds {
        /// The bridge's namespace, if it has one.
        bridge_namespace: Option<String>,
        /// Topic namespace (`/ocellus`).
        namespace: String,
    },
}

/// A zenoh sink's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ZenohSinkSpec {
    /// The session.
    pub session: SessionSpec,
    /// Key space and payloads.
    pub keys: KeyStyle,
    /// Publish frames too (raw, or `sensor_msgs/Image` for ROS 2).
    pub frames: bool,
    /// zenoh congestion control: block (wait for the network) or drop.
    pub block_on_congestion: bool,
    /// Publish frames from a shared-memory pool of this many bytes (local subscribers then
    /// read them without a copy).
    pub shm_pool_bytes: Option<usize>,
    /// ROS 2 QoS of the publishers (reliability and depth, in their liveliness tokens).
    pub qos: Qos,
    /// The frame id of each camera's headers.
    pub frame_ids: FrameIds,
}

/// The `header.frame_id` of what is published about a camera's frames: the configuration's,
/// else the frame's own (a ROS 2 camera's), else the camera's name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameIds {
    /// For every camera.
    pub all: Option<String>,
    /// Per camera (over `all`).
    pub by_camera: HashMap<String, String>,
}

impl FrameIds {
    /// The frame id for `meta`'s frame.
    pub fn of<'a>(&'a self, meta: &'a FrameMeta) -> &'a str {
        self.by_camera
            .get(&*meta.camera)
            .or(self.all.as_ref())
            .map(String::as_str)
            .or(meta.frame_id.as_deref())
            .unwrap_or(&meta.camera)
    }
}

/// Each visible track of `t` as a detection (class: its label, else `""` with the presence
/// score).
pub fn detections(t: &Tracks) -> Vec<ros2::DetectionIn<'_>> {
    t.tracks
        .iter()
        .filter(|tr| !tr.occluded)
        .filter_map(|tr| {
            let b = tr.bbox?;
            let (class_id, score) = match &tr.label {
                Some(l) => (&*l.name, f64::from(l.score)),
                None => ("", f64::from(tr.score)),
            };
            Some(ros2::DetectionIn { id: tr.id, bbox: [b.x0, b.y0, b.x1, b.y1].map(f64::from), class_id, score })
        })
        .collect()
}

/// The label image of `t` as `mono8`: each pixel the index of its track in `detections` plus
/// one, 0 elsewhere (and for tracks past the 255th).
pub fn mask_indices(t: &Tracks, detections: &[ros2::DetectionIn<'_>]) -> Vec<u8> {
    let mut index = vec![0u8; usize::from(u16::MAX) + 1];
    for (i, d) in detections.iter().enumerate().take(usize::from(u8::MAX)) {
        if let Some(slot) = usize::try_from(d.id).ok().and_then(|id| index.get_mut(id)) {
            *slot = (i + 1) as u8;
        }
    }
    t.label_ids().map(|id| index[usize::from(id)]).collect()
}

/// A ROS 2-safe name part: letters, digits and `_`.
fn ros_name(part: &str) -> String {
    part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// What one message puts on the wire.
enum Body {
    Bytes(Vec<u8>),
    RawFrame { header: [u8; raw::HEADER_LEN], pixels: Bytes },
}

struct Outgoing {
    /// Topic path below the prefix or namespace (`front/tracks`, `metrics/motion`).
    topic: String,
    ty: MsgType,
    encoding: Encoding,
    body: Body,
}

/// The session side of a started zenoh sink.
#[derive(Clone)]
struct ZenohSinkHandle {
    tx: EdgeSender<Outgoing>,
    closing: Arc<AtomicBool>,
    host: Arc<Mutex<Option<JoinHandle<()>>>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl ZenohSinkHandle {
    /// Starts the session thread of sink `name` (the session opens there).
    fn start(name: &str, spec: Arc<ZenohSinkSpec>) -> Result<Self> {
        let (tx, rx) = edge::<Outgoing>(format!("{name}.zenoh"), EdgePolicy::Block { depth: 8 });
        let closing = Arc::new(AtomicBool::new(false));
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let host_spec = spec.clone();
        let host_closing = closing.clone();
        let host_failed = failed.clone();
        let host = session::spawn_host(format!("zenoh:{name}"), move || async move {
            if let Err(e) = publish_loop(&host_spec, rx, &host_closing).await {
                warn!(error = %e, "zenoh sink failed");
                *host_failed.lock() = Some(e);
            }
        })
        .map_err(|e| RuntimeError::Failed(format!("starting the zenoh session thread: {e}")))?;
        Ok(Self { tx, closing, host: Arc::new(Mutex::new(Some(host))), failed })
    }

    fn send(&self, out: Outgoing) -> Result<()> {
        if let Some(e) = self.failed.lock().clone() {
            return Err(RuntimeError::Failed(e));
        }
        self.tx.push(out);
        Ok(())
    }

    /// Publishes what is queued, closes the session and waits for its thread.
    fn close(&self) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        if let Some(host) = self.host.lock().take()
            && host.join().is_err()
        {
            return Err(RuntimeError::Failed("the zenoh session thread panicked".into()));
        }
        match self.failed.lock().clone() {
            Some(e) => Err(RuntimeError::Failed(e)),
            None => Ok(()),
        }
    }
}

/// The sink stage: encodes on the stage thread, hands over to the session thread.
pub struct ZenohSink {
    name: String,
    spec: Arc<ZenohSinkSpec>,
    handle: Option<ZenohSinkHandle>,
}

/// The frame an observation is about.
fn frame_ref(m: &FrameMeta) -> FrameRef<'_> {
    FrameRef { camera: &m.camera, seq: m.seq, capture_ns: m.capture_ns }
}

/// The tracks of a frame as an observation.
pub fn tracks_observation(t: &Tracks) -> Observation<'_> {
    let tracks = t
        .tracks
        .iter()
        .map(|tr| TrackJson {
            id: tr.id,
            bbox: tr.bbox.map(|b| [b.x0, b.y0, b.x1, b.y1]),
            score: tr.score,
            occluded: tr.occluded,
            area: tr.area,
            label: tr.label.as_ref().map(|l| l.name.to_string()),
            label_score: tr.label.as_ref().map(|l| l.score),
            origin: tr.origin.map(|o| o.name()),
        })
        .collect();
    Observation::Tracks { frame: frame_ref(&t.meta), width: t.width, height: t.height, tracks }
}

/// The 3D people of a frame as an observation.
pub fn poses_observation(p: &Poses) -> Observation<'_> {
    let people = p
        .people
        .iter()
        .map(|q| PersonJson {
            id: q.id,
            translation: q.translation,
            global_orient: &q.global_orient,
            body_pose: &q.body_pose,
            betas: &q.betas,
            crop_cam: q.crop_cam,
            joints: q.joints.as_deref(),
        })
        .collect();
    Observation::Poses {
        frame: frame_ref(&p.meta),
        width: p.width,
        height: p.height,
        focal_length: p.focal_length,
        principal_point: p.principal_point,
        people,
    }
}

/// The actions of a frame's people as an observation.
pub fn actions_observation(a: &Actions) -> Observation<'_> {
    let people = a
        .people
        .iter()
        .map(|p| PersonActionsJson {
            id: p.id,
            detected: p.detected,
            actions: p.actions.iter().map(|s| ActionJson { ava_id: s.ava_id, name: &s.name, score: s.score }).collect(),
        })
        .collect();
    Observation::Actions { frame: frame_ref(&a.meta), people }
}

/// Each person's root joint (the pelvis, OpenPose's mid-hip; the body's translation without
/// a body model) and root orientation (SMPL's global orientation) in the camera frame.
pub fn root_poses(p: &Poses) -> Vec<([f64; 3], [f64; 4])> {
    p.people
        .iter()
        .map(|q| {
            let position = q.joints.as_ref().and_then(|j| j.get(MID_HIP)).copied().unwrap_or(q.translation);
            let m = nalgebra::Matrix3::from_row_slice(&q.global_orient.map(f64::from));
            let r = nalgebra::UnitQuaternion::from_matrix(&m);
            (position.map(f64::from), [r.i, r.j, r.k, r.w])
        })
        .collect()
}

/// OpenPose's mid-hip (SMPL's pelvis) among the 45 joints.
const MID_HIP: usize = 8;

/// A motion mask's summary as an observation.
pub fn motion_observation(m: &Mask) -> Observation<'_> {
    Observation::Motion { frame: frame_ref(&m.meta), width: m.width, height: m.height, coverage: m.coverage }
}

/// A metrics report as an observation.
pub fn metrics_observation(r: &MetricsReport) -> Observation<'_> {
    let s = &r.snapshot;
    Observation::Metrics {
        stage: &r.stage,
        at_ns: r.at_ns,
        fps: s.fps,
        latency_p50_ms: s.latency_p50_ms,
        latency_p99_ms: s.latency_p99_ms,
        emitted: s.emitted,
        dropped: s.input.dropped,
        skipped: s.skipped,
        restarts: s.restarts,
    }
}

impl ZenohSink {
    /// A sink `name` publishing per `spec` once started.
    pub fn new(name: &str, spec: Arc<ZenohSinkSpec>) -> Self {
        Self { name: name.to_owned(), spec, handle: None }
    }

    fn send(&self, out: Outgoing) -> Result<()> {
        match &self.handle {
            Some(h) => h.send(out),
            None => Err(RuntimeError::Failed("the zenoh sink is not started".into())),
        }
    }

    fn observation(&self, obs: &Observation<'_>, topic: String) -> Result<Outgoing> {
        let bad = |e: CodecError| RuntimeError::BadInput(e.to_string());
        Ok(match self.spec.keys {
            KeyStyle::Zenoh { .. } => Outgoing {
                topic,
                ty: MsgType::String,
                encoding: Encoding::APPLICATION_JSON,
                body: Body::Bytes(obs.to_json().map_err(bad)?),
            },
            KeyStyle::Ros2 { .. } | KeyStyle::Ros2Dds { .. } => Outgoing {
                topic,
                ty: MsgType::String,
                encoding: Encoding::APPLICATION_CDR,
                body: Body::Bytes(obs.to_ros_string().map_err(bad)?),
            },
        })
    }
}

impl ZenohSink {
    /// A frame on `<camera>/<topic>` (Ocellus raw) or `<camera>/<ros_topic>`
    /// (`sensor_msgs/Image`).
    fn image(
        f: &Frame,
        (topic, ros_topic): (&str, &str),
        ros: bool,
        camera: &dyn Fn(&str) -> String,
        frame_id: &FrameIds,
    ) -> Result<Outgoing> {
        let bad = |e: CodecError| RuntimeError::BadInput(e.to_string());
        Ok(if ros {
            Outgoing {
                topic: format!("{}/{ros_topic}", camera(&f.meta.camera)),
                ty: MsgType::Image,
                encoding: Encoding::APPLICATION_CDR,
                body: Body::Bytes(
                    ros2::encode_image(&f.layout, &f.pixels, f.meta.capture_ns, frame_id.of(&f.meta)).map_err(bad)?,
                ),
            }
        } else {
            Outgoing {
                topic: format!("{}/{topic}", f.meta.camera),
                ty: MsgType::Image,
                encoding: Encoding::VIDEO_RAW,
                body: Body::RawFrame {
                    header: raw::encode_header(&f.layout, f.meta.seq, f.meta.capture_ns).map_err(bad)?,
                    pixels: f.pixels.clone(),
                },
            }
        })
    }
}

impl ZenohSink {
    /// A frame's tracks as a ROS 2 node publishes them: `<camera>/detections`
    /// (`vision_msgs/Detection2DArray`) and `<camera>/masks` (`sensor_msgs/Image`, `mono8`).
    fn ros_tracks(&self, t: &Tracks, camera: &str) -> Result<()> {
        let bad = |e: CodecError| RuntimeError::BadInput(e.to_string());
        let frame_id = self.spec.frame_ids.of(&t.meta);
        let detections = detections(t);
        self.send(Outgoing {
            topic: format!("{camera}/detections"),
            ty: MsgType::Detection2DArray,
            encoding: Encoding::APPLICATION_CDR,
            body: Body::Bytes(ros2::encode_detections(t.meta.capture_ns, frame_id, &detections).map_err(bad)?),
        })?;
        if t.labels.len() != 2 * t.width as usize * t.height as usize {
            return Ok(()); // no label image with these tracks
        }
        let indices = mask_indices(t, &detections);
        let layout =
            ocellus_wire::FrameLayout::packed(ocellus_wire::PixelFormat::Gray8, t.width as usize, t.height as usize);
        self.send(Outgoing {
            topic: format!("{camera}/masks"),
            ty: MsgType::Image,
            encoding: Encoding::APPLICATION_CDR,
            body: Body::Bytes(ros2::encode_image(&layout, &indices, t.meta.capture_ns, frame_id).map_err(bad)?),
        })
    }
}

impl Stage for ZenohSink {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        self.handle = Some(ZenohSinkHandle::start(&self.name, self.spec.clone())?);
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let input = input.packet;
        let capture = input.meta().map(|m| m.capture_ns);
        let ros = !matches!(self.spec.keys, KeyStyle::Zenoh { .. });
        let camera = |c: &str| if ros { ros_name(c) } else { c.to_owned() };
        let message = match &input {
            Packet::Tracks(t) => {
                if ros {
                    self.ros_tracks(t, &camera(&t.meta.camera))?;
                }
                Some(self.observation(&tracks_observation(t), format!("{}/tracks", camera(&t.meta.camera)))?)
            }
            Packet::Mask(m) => {
                Some(self.observation(&motion_observation(m), format!("{}/motion", camera(&m.meta.camera)))?)
            }
            Packet::Metrics(r) => {
                Some(self.observation(&metrics_observation(r), format!("metrics/{}", camera(&r.stage)))?)
            }
            Packet::Frame(f) if self.spec.frames => {
                Some(Self::image(f, ("frames", "image"), ros, &camera, &self.spec.frame_ids)?)
            }
            // Inpainted frames are routed here on purpose: always published.
            Packet::Inpainted(i) => {
                Some(Self::image(&i.frame, ("inpainted", "inpainted/image"), ros, &camera, &self.spec.frame_ids)?)
            }
            // What came in from outside is not sent back out.
            Packet::Agent(a) if matches!(a.output, AgentOutput::Received(_)) => None,
            Packet::Agent(a) => {
                let frame = Some(frame_ref(&a.meta));
                let (kind, text, topic) = match &a.output {
                    AgentOutput::Caption(c) => (TextKind::Caption, c.text(), "captions".to_owned()),
                    AgentOutput::Decision(d) => {
                        (TextKind::Decision, serde_json::to_string(d).unwrap_or_default(), "decisions".to_owned())
                    }
                    AgentOutput::Alert(al) => (TextKind::Alert, al.text.clone(), "alerts".to_owned()),
                    AgentOutput::Publish { topic, text } => {
                        (TextKind::Decision, text.clone(), format!("publish/{topic}"))
                    }
                    AgentOutput::Received(_) => return Ok(()),
                };
                let observation = Observation::Text { kind, frame, text: &text };
                Some(self.observation(&observation, format!("{}/agent/{topic}", camera(&a.meta.camera)))?)
            }
            // Frames without `frames = true`, and features (tensors on the device), stay local.
            Packet::Poses(p) => {
                let topic = format!("{}/people", camera(&p.meta.camera));
                if ros {
                    // ROS 2 tools get the people's root joints as a PoseArray too.
                    self.send(Outgoing {
                        topic: format!("{topic}/poses"),
                        ty: MsgType::PoseArray,
                        encoding: Encoding::APPLICATION_CDR,
                        body: Body::Bytes(
                            ros2::encode_pose_array(p.meta.capture_ns, self.spec.frame_ids.of(&p.meta), &root_poses(p))
                                .map_err(|e| RuntimeError::BadInput(e.to_string()))?,
                        ),
                    })?;
                }
                Some(self.observation(&poses_observation(p), topic)?)
            }
            Packet::Actions(a) => {
                Some(self.observation(&actions_observation(a), format!("{}/actions", camera(&a.meta.camera)))?)
            }
            Packet::Frame(_) | Packet::Features(_) | Packet::Candidates(_) => None,
        };
        if let Some(message) = message {
            self.send(message)?;
        }
        ctx.record_consumed(capture);
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) -> Result<()> {
        self.handle.take().map_or(Ok(()), |h| h.close())
    }
}

/// The full key of `topic` in `style` (`ty` matters to ROS 2 keys only).
pub fn key_of(style: &KeyStyle, topic: &str, ty: MsgType) -> String {
    match style {
        KeyStyle::Zenoh { prefix } => format!("{}/{topic}", ros2::strip_topic(prefix)),
        KeyStyle::Ros2 { domain, namespace, hashes, .. } => {
            ros2::rmw_zenoh_key(*domain, &format!("{}/{topic}", ros2::strip_topic(namespace)), ty, Some(*hashes))
        }
        KeyStyle::Ros2Dds { bridge_namespace, namespace } => {
            ros2::bridge_key(bridge_namespace.as_deref(), &format!("{}/{topic}", ros2::strip_topic(namespace)))
        }
    }
}

struct Declared {
    publisher: zenoh::pubsub::Publisher<'static>,
    _token: Option<zenoh::liveliness::LivelinessToken>,
    gid: [u8; 16],
    seq: i64,
}

async fn publish_loop(
    spec: &ZenohSinkSpec,
    mut rx: EdgeReceiver<Outgoing>,
    closing: &AtomicBool,
) -> std::result::Result<(), String> {
    let session = session::open(&spec.session).await?;
    let node = match &spec.keys {
        KeyStyle::Ros2 { domain, namespace, node, .. } => Some(NodeIdentity {
            domain: *domain,
            zid: session.zid().to_string(),
            node_id: session::next_node_id(),
            namespace: format!("/{}", ros2::strip_topic(namespace)),
            name: ros_name(node),
            enclave: String::new(),
        }),
        _ => None,
    };
    let node_token = match &node {
        Some(n) => Some(
            session
                .liveliness()
                .declare_token(n.node_token())
                .await
                .map_err(|e| format!("declaring the ROS 2 node token: {e}"))?,
        ),
        None => None,
    };
    let shm = match spec.shm_pool_bytes {
        Some(bytes) => Some(
            zenoh::shm::ShmProviderBuilder::default_backend(bytes)
                .wait()
                .map_err(|e| format!("creating a {bytes}-byte shared-memory pool: {e}"))?,
        ),
        None => None,
    };
    info!(zid = %session.zid(), "zenoh sink ready");
    // Best effort (ROS 2 QoS) drops what the network cannot take, whatever `congestion` says.
    let congestion = if spec.block_on_congestion && !spec.qos.best_effort {
        CongestionControl::Block
    } else {
        CongestionControl::Drop
    };
    let reliability = if spec.qos.best_effort { Reliability::BestEffort } else { Reliability::Reliable };
    let mut declared: HashMap<String, Declared> = HashMap::new();
    let mut result = Ok(());
    // This future runs on the host thread itself (`block_on`), not on a runtime worker, so
    // waiting on the edge blocks nobody; zenoh's own tasks run on zenoh's runtimes.
    loop {
        let message = match rx.pop_timeout(Duration::from_millis(20)) {
            Recv::Item(m) => m,
            Recv::Timeout if closing.load(Ordering::Acquire) => break,
            Recv::Timeout => continue,
            Recv::Closed => break,
        };
        let key = key_of(&spec.keys, &message.topic, message.ty);
        if !declared.contains_key(&key) {
            let publisher = session
                .declare_publisher(key.clone())
                .encoding(message.encoding.clone())
                .congestion_control(congestion)
                .reliability(reliability)
                .await
                .map_err(|e| format!("declaring a publisher on {key:?}: {e}"));
            let publisher = match publisher {
                Ok(p) => p,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let (token, gid) = match &node {
                Some(n) => {
                    let entity = 10 + declared.len() as u32;
                    let topic = format!("{}/{}", n.namespace, message.topic);
                    let hashes = match spec.keys {
                        KeyStyle::Ros2 { hashes, .. } => hashes,
                        _ => TypeHashes::default(),
                    };
                    let token_key =
                        n.endpoint_token(entity, ros2::EntityKind::Publisher, &topic, message.ty, hashes, spec.qos);
                    let token = session.liveliness().declare_token(token_key.clone()).await;
                    match token {
                        Ok(t) => (Some(t), ros2::gid_of(&token_key)),
                        Err(e) => {
                            result = Err(format!("declaring the liveliness token {token_key:?}: {e}"));
                            break;
                        }
                    }
                }
                None => (None, [0; 16]),
            };
            info!(%key, "zenoh sink publishing");
            declared.insert(key.clone(), Declared { publisher, _token: token, gid, seq: 0 });
        }
        let Some(d) = declared.get_mut(&key) else { continue };
        let payload = match (message.body, &shm) {
            (Body::RawFrame { header, pixels }, Some(provider)) => {
                use zenoh::shm::{BlockOn, GarbageCollect};
                let len = header.len() + pixels.len();
                match provider.alloc(len).with_policy::<BlockOn<GarbageCollect>>().await {
                    Ok(mut buf) => {
                        buf[..header.len()].copy_from_slice(&header);
                        buf[header.len()..].copy_from_slice(&pixels);
                        ZBytes::from(buf)
                    }
                    Err(e) => {
                        warn!(error = %e, len, "shared-memory allocation failed: sending by copy");
                        raw_zbytes(&header, pixels)
                    }
                }
            }
            (Body::RawFrame { header, pixels }, None) => raw_zbytes(&header, pixels),
            (Body::Bytes(b), _) => ZBytes::from(b),
        };
        let mut put = d.publisher.put(payload);
        if node.is_some() {
            d.seq += 1;
            let a = ros2::Attachment { sequence_number: d.seq, source_timestamp: now_ns(), source_gid: d.gid };
            put = put.attachment(ZBytes::from(a.encode().to_vec()));
        }
        if let Err(e) = put.await {
            warn!(%key, error = %e, "zenoh put failed");
        }
    }
    for (_, d) in declared.drain() {
        let _ = d.publisher.undeclare().await;
    }
    drop(node_token);
    if let Err(e) = session::close(session, &spec.session).await {
        warn!(error = %e, "closing the zenoh session");
    }
    result
}

/// Header and pixels as one zenoh payload of two slices (the pixels are not copied).
fn raw_zbytes(header: &[u8], pixels: Bytes) -> ZBytes {
    let mut writer = ZBytes::writer();
    writer.append(ZBytes::from(header.to_vec()));
    writer.append(ZBytes::from(pixels));
    writer.finish()
}
