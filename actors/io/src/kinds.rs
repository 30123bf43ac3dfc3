//! What a pipeline file says of sources and sinks, and how they are built.
//!
//! A `[[source]]` names a camera and gives one of `gstreamer` (a launch description), `preset`
//! (`test_pattern`, `file`, `v4l2`, `rtsp`) or `zenoh` (a key or a ROS 2 topic). Sinks are
//! node kinds (`rerun`, `zenoh`, `null`) like actors. Validation never opens or reads anything;
//! [`ConfiguredSource::check`] and a sink's start do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ocellus_runtime::edge::{DropPolicy, EdgeConfig, EdgePolicy};
use ocellus_runtime::kind::{Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView, duration, typed};
use ocellus_runtime::message::PortType;
use ocellus_runtime::node::{SourceFactory, StageFactory, source_factory, stage_factory};
use ocellus_runtime::pipeline::sink_ports;
use ocellus_runtime::port::Ports;
use ocellus_wire::WireFormat;
use ocellus_wire::ros2::{MsgType, Qos, TypeHashes};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::session::{self, Credentials, PasswordSource, SessionMode, SessionSpec};
use crate::sink::zenoh::FrameIds;
use crate::sink::{KeyStyle, NullSink, RerunSink, RerunTarget, SharedRecording, ZenohSink, ZenohSinkSpec};
use crate::source::{
    GstSource, GstSourceSpec, OutputFormat, Preset, Reconnect, ReplaySource, ReplaySpec, V4l2Request, ZenohSource,
    ZenohSourceSpec,
};

// --- zenoh sessions ----------------------------------------------------------------------

/// `mode = "peer" | "client"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// Talks to other peers directly (and to routers).
    Peer,
    /// Talks through one router or peer.
    Client,
}

/// The zenoh session keys an entry may carry (`mode`, `connect`, `listen`, `config`,
/// `multicast_scouting`, `shared_memory`, `user`, `password_env`, `password_file`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionKeys {
    /// `mode`.
    pub mode: Option<ModeName>,
    /// `connect`: endpoints like `tcp/127.0.0.1:7447`.
    pub connect: Vec<String>,
    /// `listen`.
    pub listen: Vec<String>,
    /// `config`: a zenoh configuration file (JSON5: TLS, user/password, access control).
    pub config: Option<PathBuf>,
    /// `multicast_scouting`.
    pub multicast_scouting: Option<bool>,
    /// `shared_memory`.
    pub shared_memory: Option<bool>,
    /// `user`: the zenoh user name (user/password authentication).
    pub user: Option<String>,
    /// `password_env`: the environment variable holding the user's password.
    pub password_env: Option<String>,
    /// `password_file`: a file holding the user's password (a container or systemd secret).
    pub password_file: Option<PathBuf>,
    /// `session`: a session of the `[zenoh.<name>]` table, shared with every entry naming it
    /// (its keys are copied in when the configuration is read).
    pub session: Option<String>,
}

impl SessionKeys {
    /// The session these keys describe. The configuration file is only checked to exist (it
    /// is read when the session opens); endpoints are checked here.
    pub fn spec(self) -> Result<SessionSpec, Issue> {
        if let Some(file) = self.config.as_ref().filter(|p| !p.exists()) {
            return Err(Issue::at("config", format!("zenoh configuration {} not found", file.display())));
        }
        let password = match (&self.password_env, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(Issue::at(
                    "password_file",
                    "give the password by `password_env` or `password_file`, not both",
                ));
            }
            (Some(var), None) => Some(PasswordSource::Env(var.clone())),
            (None, Some(file)) if !file.exists() => {
                return Err(Issue::at("password_file", format!("password file {} not found", file.display())));
            }
            (None, Some(file)) => Some(PasswordSource::File(file.clone())),
            (None, None) => None,
        };
        let credentials = match (self.user, password) {
            (Some(user), Some(password)) if !user.is_empty() => Some(Credentials { user, password }),
            (Some(_), Some(_)) => return Err(Issue::at("user", "the user name is empty")),
            (Some(_), None) => {
                return Err(Issue::at("user", "a user needs its password: `password_env` or `password_file`"));
            }
            (None, Some(_)) => {
                let key = if self.password_env.is_some() { "password_env" } else { "password_file" };
                return Err(Issue::at(key, "a password needs its `user`"));
            }
            (None, None) => None,
        };
        for (key, endpoints) in [("connect", &self.connect), ("listen", &self.listen)] {
            for (i, endpoint) in endpoints.iter().enumerate() {
                let protocol = endpoint.split_once('/').map(|(p, _)| p);
                if !protocol.is_some_and(|p| session::LINK_PROTOCOLS.contains(&p)) {
                    return Err(Issue::at(
                        key,
                        format!(
                            "endpoint {endpoint:?}: this build speaks {} (like \"tcp/127.0.0.1:7447\")",
                            session::LINK_PROTOCOLS.join(" and ")
                        ),
                    )
                    .index(i));
                }
            }
        }
        Ok(SessionSpec {
            config_file: self.config,
            mode: self.mode.map(|m| match m {
                ModeName::Peer => SessionMode::Peer,
                ModeName::Client => SessionMode::Client,
            }),
            connect: self.connect,
            listen: self.listen,
            multicast_scouting: self.multicast_scouting,
            shared_memory: self.shared_memory,
            credentials,
            shared: self.session,
        })
    }
}

/// Declares a configuration entry with the zenoh session keys after its own fields: `mode`,
/// `connect`, `listen`, `config`, `multicast_scouting`, `shared_memory`, and `session` (a
/// `[zenoh.<name>]` session instead of the others). One definition for every entry that opens a
/// session: serde's `flatten` cannot be combined with `deny_unknown_fields`.
#[macro_export]
macro_rules! zenoh_entry {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty,)*
            /// zenoh mode: `peer` or `client`.
            pub mode: Option<$crate::kinds::ModeName>,
            /// Endpoints to connect to (`tcp/127.0.0.1:7447`, `tls/host:7447`).
            #[serde(default)]
            pub connect: Vec<String>,
            /// Endpoints to listen on.
            #[serde(default)]
            pub listen: Vec<String>,
            /// A zenoh configuration file (JSON5: TLS, user/password, access control).
            pub config: Option<std::path::PathBuf>,
            /// Multicast scouting (zenoh's default: on).
            pub multicast_scouting: Option<bool>,
            /// Shared memory between local processes (zenoh's default: on).
            pub shared_memory: Option<bool>,
            /// The zenoh user name, for user/password authentication (with `password_env` or
            /// `password_file`).
            pub user: Option<String>,
            /// The environment variable that holds the user's password.
            pub password_env: Option<String>,
            /// A file that holds the user's password (a container or systemd secret); one
            /// trailing line break is ignored.
            pub password_file: Option<std::path::PathBuf>,
            /// A session of the `[zenoh.<name>]` table instead of the keys above (shared with
            /// every entry naming it).
            pub session: Option<String>,
        }
    };
}

zenoh_entry! {
    /// `[zenoh.<name>]`: one zenoh session, named once and shared by every entry that names it.
    #[derive(Debug, Clone, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SessionEntry {}
}

/// Gathers the session keys of an entry struct that has them.
#[macro_export]
macro_rules! session_keys {
    ($e:expr) => {
        $crate::kinds::SessionKeys {
            mode: $e.mode,
            connect: $e.connect.clone(),
            listen: $e.listen.clone(),
            config: $e.config.clone(),
            multicast_scouting: $e.multicast_scouting,
            shared_memory: $e.shared_memory,
            user: $e.user.clone(),
            password_env: $e.password_env.clone(),
            password_file: $e.password_file.clone(),
            session: $e.session.clone(),
        }
    };
}

/// Checks a key expression (at `key`).
pub fn key_expr(key: &str, text: &str) -> Result<(), Issue> {
    session::check_key_expr(text).map_err(|m| Issue::at(key, m))
}

// --- Sources -------------------------------------------------------------------------------

/// `[[source]]`: a camera.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// The camera's name: `world/<name>/...` in Rerun, `frame/<name>` its timeline.
    pub name: String,
    /// A `gst-launch` description (an appsink is appended when it has none).
    pub gstreamer: Option<String>,
    /// A ready-made source.
    pub preset: Option<PresetEntry>,
    /// Frames from zenoh (a key, or a ROS 2 topic on rmw_zenoh).
    pub zenoh: Option<ZenohSourceEntry>,
    /// Pixel format delivered (GStreamer sources).
    pub format: Option<FormatName>,
    /// Reconnection: `true`, `false` or `{ initial, max, stall }` (GStreamer sources; on by
    /// default for RTSP).
    #[schemars(with = "Option<serde_json::Value>")]
    pub reconnect: Option<serde_json::Value>,
}

/// `format = "rgb" | ...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// Packed RGB.
    #[default]
    Rgb,
    /// Packed BGR.
    Bgr,
    /// 8-bit grey.
    Gray8,
    /// NV12.
    Nv12,
    /// Whatever the pipeline produces with the least conversion.
    Native,
}

/// The frame rate of an image sequence that does not give one.
pub const DEFAULT_SEQUENCE_FPS: u32 = 30;

/// `preset = { kind = "...", ... }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PresetEntry {
    /// `videotestsrc`.
    TestPattern {
        /// videotestsrc pattern (`ball`, `smpte`, `snow`, ...).
        #[serde(default = "default_pattern")]
        pattern: String,
        /// Width.
        #[serde(default = "default_width")]
        width: u32,
        /// Height.
        #[serde(default = "default_height")]
        height: u32,
        /// Frames per second.
        #[serde(default = "default_fps")]
        fps: u32,
        /// Frames before the end of the stream (endless when absent).
        frames: Option<u64>,
        /// Paced in real time like a camera.
        #[serde(default)]
        live: bool,
    },
    /// A media file, or an image sequence (`frames/%05d.jpg`, JPEG or PNG).
    File {
        /// Its path, or the printf pattern of a sequence's frames.
        path: String,
        /// A sequence's frame rate (default 30).
        fps: Option<u32>,
        /// A sequence's frames (default: until the first missing one).
        frames: Option<u64>,
    },
    /// A public sample clip, fetched once into the cache by `ocellus run` (`sam2-bedroom`:
    /// the SAM 2 repository's example video), then read as an image sequence.
    Sample {
        /// Its name.
        name: String,
        /// The first N frames (all when absent).
        frames: Option<u64>,
        /// The source that runs when the sample cannot be had (another preset table).
        fallback: Option<Box<PresetEntry>>,
    },
    /// A V4L2 camera.
    V4l2 {
        /// Device node.
        #[serde(default = "default_v4l2_device")]
        device: String,
        /// Requested width.
        width: Option<u32>,
        /// Requested height.
        height: Option<u32>,
        /// Requested frames per second.
        fps: Option<u32>,
    },
    /// An RTSP stream (over TCP).
    Rtsp {
        /// `rtsp://` URL (credentials in it are hidden in every log and error).
        url: String,
        /// Jitter-buffer latency, ms.
        #[serde(default = "default_latency")]
        latency_ms: u32,
        /// User name for the camera.
        user: Option<String>,
        /// The environment variable holding the camera's password (read when the source
        /// starts; never written to the configuration, the launch description or a log).
        password_env: Option<String>,
    },
}

fn default_pattern() -> String {
    "ball".to_owned()
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    30
}
fn default_v4l2_device() -> String {
    "/dev/video0".to_owned()
}
fn default_latency() -> u32 {
    200
}

crate::zenoh_entry! {
    /// `zenoh = { key = "...", encoding = "...", ... }` of a source.
    #[derive(Debug, Clone, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ZenohSourceEntry {
        /// Key expression.
        pub key: Option<String>,
        /// A ROS 2 topic (rmw_zenoh keys; needs a `ros2/...` encoding).
        pub topic: Option<String>,
        /// `ROS_DOMAIN_ID` of `topic` (default: the `ROS_DOMAIN_ID` environment variable, else 0).
        pub domain: Option<u32>,
        /// The ROS 2 node the subscription belongs to in the graph (`topic`; default `ocellus`).
        pub node: Option<String>,
        /// How frames are encoded.
        pub encoding: WireFormat,
        /// End after this many frames.
        pub frames: Option<u64>,
        /// End after this long without a message (`"5s"`).
        pub idle_timeout: Option<String>,
        /// The edge from zenoh's callback to the decoder (default `latest`; with `qos.depth`, a
        /// queue of that depth dropping the oldest).
        pub intake: Option<EdgeConfig>,
        /// ROS 2 QoS of the subscription (`topic`): `{ reliability = "reliable" | "best_effort",
        /// depth = 10 }`, declared in its liveliness token; `depth` keeps the newest N messages.
        pub qos: Option<QosEntry>,
        /// What a message may hold: `{ max_message_mb = 128, max_pixels = 33177600 }` (8K);
        /// larger ones are refused before they are decoded, and counted as skipped.
        pub limits: Option<LimitsEntry>,
    }
}

/// `limits = { max_message_mb, max_pixels }` of a source reading from the wire.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsEntry {
    /// Largest message, MiB (default 128).
    pub max_message_mb: Option<f64>,
    /// Largest image, pixels (default 7680 × 4320).
    pub max_pixels: Option<u64>,
}

impl LimitsEntry {
    /// The limits, each checked to be positive.
    pub fn limits(self) -> Result<ocellus_wire::FrameLimits, Issue> {
        let mut limits = ocellus_wire::FrameLimits::DEFAULT;
        if let Some(mb) = self.max_message_mb {
            if !(mb > 0.0 && mb <= 4096.0) {
                return Err(Issue::at("max_message_mb", format!("{mb}: must be in (0, 4096]")));
            }
            limits.max_message_bytes = (mb * (1 << 20) as f64) as usize;
        }
        if let Some(px) = self.max_pixels {
            if px == 0 {
                return Err(Issue::at("max_pixels", "must be at least 1"));
            }
            limits.max_pixels = px;
        }
        Ok(limits)
    }
}

/// A source as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfiguredSource {
    /// A GStreamer pipeline.
    Gstreamer(GstSourceSpec),
    /// A zenoh subscription.
    Zenoh(ZenohSourceSpec),
    /// A camera of a recording, replayed.
    Replay(ReplaySpec),
}

/// The reconnection policy of `reconnect` (`true`, `false`, `{ initial, max, stall }`).
fn reconnect(value: Option<&serde_json::Value>, default_on: bool) -> Result<Option<Reconnect>, Issue> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        initial: Option<String>,
        max: Option<String>,
        stall: Option<String>,
    }
    let settings = match value {
        None if default_on => Settings::default(),
        None | Some(serde_json::Value::Bool(false)) => return Ok(None),
        Some(serde_json::Value::Bool(true)) => Settings::default(),
        Some(v @ serde_json::Value::Object(_)) => typed(v.clone())?,
        Some(_) => return Err(Issue::here("expected true, false or { initial, max, stall }")),
    };
    let defaults = Reconnect::default();
    let time =
        |key: &str, text: &Option<String>, default: Duration| text.as_deref().map_or(Ok(default), |t| duration(key, t));
    let initial = time("initial", &settings.initial, defaults.initial)?;
    let max = time("max", &settings.max, defaults.max)?;
    let stall = time("stall", &settings.stall, defaults.stall.unwrap_or_default())?;
    if initial.is_zero() {
        return Err(Issue::at("initial", "must be longer than zero"));
    }
    if max < initial {
        return Err(Issue::at("max", "must be at least `initial`"));
    }
    Ok(Some(Reconnect { initial, max, stall: (!stall.is_zero()).then_some(stall) }))
}

/// The ROS 2 domain: `given`, else the `ROS_DOMAIN_ID` environment variable, else 0.
pub fn ros_domain(given: Option<u32>) -> Result<u32, Issue> {
    if let Some(d) = given {
        return Ok(d);
    }
    match std::env::var("ROS_DOMAIN_ID") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
            Issue::at("domain", format!("the ROS_DOMAIN_ID environment variable ({v:?}) is not a domain number"))
        }),
        _ => Ok(0),
    }
}

impl ConfiguredSource {
    /// Validates a `[[source]]` entry.
    pub fn configure(entry: &SourceEntry) -> Result<Self, Issue> {
        if let Some(zenoh) = &entry.zenoh {
            let other = [("gstreamer", entry.gstreamer.is_some()), ("preset", entry.preset.is_some())];
            if let Some((key, _)) = other.iter().find(|(_, given)| *given) {
                return Err(Issue::at(key, "give one of `gstreamer`, `preset` or `zenoh`"));
            }
            if entry.reconnect.is_some() {
                return Err(Issue::at(
                    "reconnect",
                    "a zenoh source waits for publishers by itself (`reconnect` is for GStreamer sources)",
                ));
            }
            if entry.format.is_some() {
                return Err(Issue::at(
                    "format",
                    "a zenoh source delivers frames as they arrive (`format` is for GStreamer sources)",
                ));
            }
            return Self::zenoh(zenoh).map_err(|i| i.inside("zenoh")).map(Self::Zenoh);
        }
        let (launch, preset) = match (&entry.gstreamer, &entry.preset) {
            (Some(launch), None) if !launch.trim().is_empty() => (launch.clone(), None),
            (Some(_), None) => return Err(Issue::at("gstreamer", "empty launch description")),
            (None, Some(preset)) => {
                let preset = Self::preset(preset).map_err(|i| i.inside("preset"))?;
                (preset.launch(), Some(preset))
            }
            (Some(_), Some(_)) => return Err(Issue::at("preset", "give either `gstreamer` or `preset`, not both")),
            (None, None) => return Err(Issue::here("needs `gstreamer` (a launch description), `preset` or `zenoh`")),
        };
        let format = match entry.format.unwrap_or_default() {
            FormatName::Rgb => OutputFormat::Rgb,
            FormatName::Bgr => OutputFormat::Bgr,
            FormatName::Gray8 => OutputFormat::Gray8,
            FormatName::Nv12 => OutputFormat::Nv12,
            FormatName::Native => OutputFormat::Native,
        };
        // RTSP cameras reconnect unless told not to; other sources when told to.
        let rtsp = matches!(preset, Some(Preset::Rtsp { .. }));
        let reconnect = reconnect(entry.reconnect.as_ref(), rtsp).map_err(|i| i.inside("reconnect"))?;
        let password_env = match &preset {
            Some(Preset::Rtsp { password_env, .. }) => password_env.clone(),
            _ => None,
        };
        let v4l2 = match preset {
            Some(Preset::V4l2 { device, width, height, fps }) => Some(V4l2Request { device, width, height, fps }),
            _ => None,
        };
        Ok(Self::Gstreamer(GstSourceSpec { launch, format, reconnect, v4l2, password_env }))
    }

    fn preset(entry: &PresetEntry) -> Result<Preset, Issue> {
        Ok(match entry.clone() {
            PresetEntry::TestPattern { pattern, width, height, fps, frames, live } => {
                if width == 0 || height == 0 || fps == 0 {
                    return Err(Issue::here("width, height and fps must be positive"));
                }
                Preset::TestPattern { pattern, width, height, fps, frames, live }
            }
            PresetEntry::File { path, fps, frames } => {
                let sequence = crate::source::gst::is_sequence(&path);
                if !sequence && (fps.is_some() || frames.is_some()) {
                    return Err(Issue::at("fps", "`fps` and `frames` are for image sequences (`frames/%05d.jpg`)"));
                }
                if fps == Some(0) || frames == Some(0) {
                    return Err(Issue::here("fps and frames must be positive"));
                }
                Preset::File { path, fps: fps.unwrap_or(DEFAULT_SEQUENCE_FPS), frames }
            }
            PresetEntry::Sample { .. } => {
                return Err(Issue::at("kind", "a sample is resolved when the configuration is loaded"));
            }
            PresetEntry::V4l2 { device, width, height, fps } => Preset::V4l2 { device, width, height, fps },
            PresetEntry::Rtsp { url, latency_ms, user, password_env } => {
                Preset::Rtsp { url, latency_ms, user, password_env }
            }
        })
    }

    fn zenoh(e: &ZenohSourceEntry) -> Result<ZenohSourceSpec, Issue> {
        let key = match (&e.key, &e.topic) {
            (Some(key), None) => key.clone(),
            (None, Some(topic)) => {
                let ty = match e.encoding {
                    WireFormat::Ros2Image => MsgType::Image,
                    WireFormat::Ros2CompressedImage => MsgType::CompressedImage,
                    _ => {
                        return Err(Issue::at(
                            "topic",
                            "`topic` (a ROS 2 topic on rmw_zenoh) needs a ros2/... encoding; give `key` otherwise",
                        ));
                    }
                };
                ocellus_wire::ros2::rmw_zenoh_key(ros_domain(e.domain)?, topic, ty, None)
            }
            (Some(_), Some(_)) => return Err(Issue::at("topic", "give either `key` or `topic`, not both")),
            (None, None) => return Err(Issue::here("needs `key` (a zenoh key expression) or `topic` (ROS 2)")),
        };
        key_expr("key", &key)?;
        let idle_timeout = e.idle_timeout.as_deref().map(|t| duration("idle_timeout", t)).transpose()?;
        if e.frames == Some(0) {
            return Err(Issue::at("frames", "must be at least 1"));
        }
        if e.qos.is_some() && e.topic.is_none() {
            return Err(Issue::at("qos", "QoS is for a ROS 2 `topic`"));
        }
        let qos = e.qos.unwrap_or_default().qos().map_err(|i| i.inside("qos"))?;
        let intake = match (&e.intake, e.qos.and_then(|q| q.depth)) {
            (Some(_), Some(_)) => return Err(Issue::at("intake", "give `intake` or `qos.depth`, not both")),
            (Some(edge), None) => edge.policy().map_err(|i| i.inside("intake"))?,
            (None, Some(depth)) => EdgePolicy::Queue { depth: depth as usize, drop: DropPolicy::Oldest },
            (None, None) => EdgePolicy::Latest,
        };
        let session = session_keys!(e).spec()?;
        let ros2 = match (&e.topic, e.encoding) {
            (Some(topic), WireFormat::Ros2Image | WireFormat::Ros2CompressedImage) => {
                Some(crate::source::zenoh::Ros2Subscription {
                    domain: ros_domain(e.domain)?,
                    topic: topic.clone(),
                    ty: if e.encoding == WireFormat::Ros2Image { MsgType::Image } else { MsgType::CompressedImage },
                    node: e.node.clone().unwrap_or_else(|| "ocellus".to_owned()),
                    qos,
                })
            }
            _ => None,
        };
        let limits = e.limits.map(LimitsEntry::limits).transpose().map_err(|i| i.inside("limits"))?.unwrap_or_default();
        Ok(ZenohSourceSpec { session, key, format: e.encoding, intake, frames: e.frames, idle_timeout, ros2, limits })
    }

    /// A factory of the source.
    pub fn factory(&self) -> SourceFactory {
        match self.clone() {
            Self::Gstreamer(spec) => source_factory(move || GstSource::new(spec.clone())),
            Self::Zenoh(spec) => source_factory(move || ZenohSource::new(spec.clone())),
            Self::Replay(spec) => source_factory(move || ReplaySource::new(spec.clone())),
        }
    }

    /// What `ocellus check` verifies beyond validation, without running: GStreamer builds the
    /// pipeline (unknown elements, bad properties, unlinkable caps), zenoh reads the
    /// configuration file.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Gstreamer(spec) => crate::source::gst::check(spec).map_err(|e| e.to_string()),
            Self::Zenoh(spec) => spec.session.check(),
            Self::Replay(_) => Ok(()),
        }
    }
}

// --- Sinks ---------------------------------------------------------------------------------

/// The message types the Rerun sink logs.
const RERUN_TAKES: [PortType; 9] = [
    PortType::Frame,
    PortType::Mask,
    PortType::Tracks,
    PortType::Candidates,
    PortType::Metrics,
    PortType::Agent,
    PortType::Inpainted,
    PortType::Poses,
    PortType::Actions,
];
/// The message types the zenoh sink publishes.
const ZENOH_TAKES: [PortType; 8] = [
    PortType::Frame,
    PortType::Mask,
    PortType::Tracks,
    PortType::Metrics,
    PortType::Agent,
    PortType::Inpainted,
    PortType::Poses,
    PortType::Actions,
];

/// `[[sink]] kind = "rerun"`: a recording, a live viewer, or a server viewers pull from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunConfig {
    /// Write an `.rrd` file.
    pub save: Option<PathBuf>,
    /// Stream to a viewer (`rerun+http://127.0.0.1:9876/proxy`).
    pub connect: Option<String>,
    /// Host a gRPC server (`{ bind = "0.0.0.0", port = 9876 }`).
    pub serve: Option<ServeConfig>,
    /// Start a viewer unless one is running, and stream to it (`spawn = {}`; the viewer of
    /// `scripts/bootstrap`, else `rerun` on the `PATH`).
    pub spawn: Option<SpawnConfig>,
    /// Also log every node's metrics.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Rerun application id.
    #[serde(default = "default_app_id")]
    pub app_id: String,
    /// Send Ocellus's layout (per camera the image with tracks and boxes, the 3D people;
    /// metrics, captions, decisions, alerts, actions) with the recording; `false` leaves the
    /// layout to the viewer.
    #[serde(default = "yes")]
    pub blueprint: bool,
    /// Camera images as JPEG of this quality (1–100, `EncodedImage`) instead of raw pixels: a
    /// fraction of the bandwidth for viewers over Wi-Fi (replay decodes them).
    pub jpeg: Option<u8>,
}

fn yes() -> bool {
    true
}
fn default_app_id() -> String {
    "ocellus".to_owned()
}

/// `spawn = { port, memory_limit, headless }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnConfig {
    /// The viewer's port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The viewer's memory limit (`"75%"` of the machine, `"8GB"`): beyond it the viewer drops
    /// the oldest data (as `RERUN_MEMORY_LIMIT` does).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// No window: a viewer that only serves (for machines without a display).
    #[serde(default)]
    pub headless: bool,
}

fn default_memory_limit() -> String {
    "75%".to_owned()
}

impl Default for SpawnConfig {
    fn default() -> Self {
        Self { port: default_port(), memory_limit: default_memory_limit(), headless: false }
    }
}

impl SpawnConfig {
    /// The target this entry describes.
    pub fn target(self) -> RerunTarget {
        RerunTarget::Spawn { port: self.port, memory_limit: self.memory_limit, headless: self.headless }
    }
}

impl ServeConfig {
    /// Serving on `port` on every interface, with no linger.
    pub fn on_port(port: u16) -> RerunTarget {
        RerunTarget::Serve { bind: default_bind(), port, linger: std::time::Duration::ZERO }
    }
}

/// `serve = { bind, port }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to bind.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// How long to keep serving after the stream ends, for viewers still catching up
    /// (`"5s"`; default none).
    pub linger: Option<String>,
}

fn default_bind() -> String {
    "0.0.0.0".to_owned()
}
fn default_port() -> u16 {
    9876
}

/// A configured Rerun sink.
#[derive(Debug)]
pub struct RerunNode {
    /// Where to.
    pub target: RerunTarget,
    /// Whether it logs metrics.
    pub metrics: bool,
    /// Application id.
    pub app_id: String,
    /// The layout sent with the recording (`blueprint = true`).
    pub layout: Option<crate::sink::Layout>,
    /// JPEG quality of camera images (raw when `None`).
    pub jpeg: Option<u8>,
}

impl ConfiguredNode for RerunNode {
    fn ports(&self) -> Ports {
        sink_ports(&RERUN_TAKES, EdgePolicy::Queue { depth: 64, drop: DropPolicy::Oldest })
    }

    fn build(&self, ctx: &mut ocellus_runtime::kind::BuildContext) -> ocellus_runtime::Result<StageFactory> {
        let notices = ctx.extension::<ocellus_runtime::kind::Notices>().map(|n| n.0.clone()).unwrap_or_default();
        let layout = self.layout.clone().map(|l| crate::sink::Layout { notices: !notices.is_empty(), ..l });
        let recording = SharedRecording::opening(self.app_id.clone(), self.target.clone(), layout, notices);
        let jpeg = self.jpeg;
        Ok(stage_factory(move || RerunSink::new(recording.clone()).with_jpeg(jpeg)))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn takes_metrics(&self) -> bool {
        self.metrics
    }
}

/// The Rerun sink kind.
pub struct RerunKind;

impl NodeKind for RerunKind {
    const NAME: &'static str = "rerun";
    const DOC: &'static str = "Records to an .rrd file, streams to a viewer, or serves viewers over gRPC";
    const MODEL: ModelUse = ModelUse::None;
    type Config = RerunConfig;

    fn configure(_common: &Common, c: RerunConfig, view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let has = |kind: &str| view.kinds.values().any(|k| k == kind);
        let layout = c.blueprint.then(|| {
            let mut cameras: Vec<String> =
                view.kinds.iter().filter(|(_, k)| *k == "source").map(|(n, _)| n.clone()).collect();
            cameras.sort();
            crate::sink::Layout {
                cameras,
                people: has("pose3d"),
                actions: has("actions"),
                agent: has("agent"),
                metrics: c.metrics,
                notices: false,
            }
        });
        let target = match (c.save, c.connect, c.serve, c.spawn) {
            (Some(path), None, None, None) => RerunTarget::Save(path),
            (None, Some(url), None, None) => RerunTarget::Connect(url),
            (None, None, None, Some(s)) => s.target(),
            (None, None, Some(s), None) => {
                let linger = s
                    .linger
                    .as_deref()
                    .map(|t| duration("linger", t).map_err(|i| i.inside("serve")))
                    .transpose()?
                    .unwrap_or_default();
                RerunTarget::Serve { bind: s.bind, port: s.port, linger }
            }
            _ => return Err(Issue::here("a rerun sink needs exactly one of `save`, `connect`, `serve` or `spawn`")),
        };
        if let Some(q) = c.jpeg.filter(|q| !(1..=100).contains(q)) {
            return Err(Issue::at("jpeg", format!("{q}: a JPEG quality is 1 to 100")));
        }
        Ok(Arc::new(RerunNode { target, metrics: c.metrics, app_id: c.app_id, layout, jpeg: c.jpeg }))
    }
}

crate::zenoh_entry! {
    /// `[[sink]] kind = "zenoh"`: observations (and frames) on zenoh, or a ROS 2 node.
    #[derive(Debug, Clone, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ZenohSinkConfig {
        /// `zenoh` (Ocellus's keys), `ros2` (a ROS 2 node on rmw_zenoh) or `ros2dds` (the keys of
        /// zenoh-bridge-ros2dds).
        #[serde(default)]
        pub keys: KeysName,
        /// First chunks of every key (`keys = "zenoh"`; default `ocellus`).
        pub prefix: Option<String>,
        /// `ROS_DOMAIN_ID` (`keys = "ros2"`).
        pub domain: Option<u32>,
        /// Topic namespace (ROS 2; default `/ocellus`).
        pub namespace: Option<String>,
        /// Node name (`keys = "ros2"`; default `ocellus`).
        pub node: Option<String>,
        /// `rihs01` (Iron and later) or `humble`.
        pub type_hash: Option<TypeHashName>,
        /// The bridge's namespace (`keys = "ros2dds"`).
        pub bridge_namespace: Option<String>,
        /// Publish frames too.
        #[serde(default)]
        pub frames: bool,
        /// zenoh congestion control: `block` or `drop`.
        #[serde(default)]
        pub congestion: CongestionName,
        /// Frames from a shared-memory pool of this many MiB (needs `frames = true`).
        pub shm_pool_mib: Option<usize>,
        /// ROS 2 QoS of the publishers: `{ reliability = "reliable" | "best_effort", depth = 10 }`.
        pub qos: Option<QosEntry>,
        /// The `header.frame_id` of what is published (ROS 2): one for every camera
        /// (`"camera_optical"`) or per camera (`{ front = "front_optical" }`); default: the frame id
        /// the camera's own ROS 2 messages carried, else the camera's name.
        pub frame_id: Option<FrameIdEntry>,
    }
}

/// `qos = { reliability, depth }`: ROS 2 QoS, as rmw_zenoh maps it (best effort: zenoh's best
/// effort reliability and congestion drop; depth: keep last N).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QosEntry {
    /// `reliable` (default) or `best_effort`.
    pub reliability: Option<ReliabilityName>,
    /// History depth, keep last N (default 10; a source keeps the newest N messages).
    pub depth: Option<u32>,
}

/// `reliability = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReliabilityName {
    /// Every message, resent when lost.
    Reliable,
    /// What arrives; nothing is resent (sensors on Wi-Fi).
    BestEffort,
}

impl QosEntry {
    /// The QoS these keys describe.
    pub fn qos(self) -> Result<Qos, Issue> {
        let default = Qos::default();
        let depth = self.depth.unwrap_or(default.depth);
        if depth == 0 {
            return Err(Issue::at("depth", "must be at least 1"));
        }
        Ok(Qos { best_effort: self.reliability == Some(ReliabilityName::BestEffort), depth })
    }
}

/// `frame_id = "x"` or `frame_id = { camera = "x" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FrameIdEntry {
    /// For every camera.
    All(String),
    /// Per camera.
    PerCamera(std::collections::BTreeMap<String, String>),
}

/// `keys = ...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeysName {
    /// Ocellus's keys.
    #[default]
    Zenoh,
    /// rmw_zenoh.
    Ros2,
    /// zenoh-bridge-ros2dds.
    Ros2dds,
}

/// `type_hash = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TypeHashName {
    /// RIHS01 (Iron and later).
    Rihs01,
    /// Humble's placeholder.
    Humble,
}

/// `congestion = ...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CongestionName {
    /// Wait for the network.
    #[default]
    Block,
    /// Drop what the network cannot take.
    Drop,
}

/// A configured zenoh sink.
#[derive(Debug)]
pub struct ZenohSinkNode {
    /// Its name.
    pub name: String,
    /// What it publishes.
    pub spec: Arc<ZenohSinkSpec>,
}

impl ConfiguredNode for ZenohSinkNode {
    fn ports(&self) -> Ports {
        sink_ports(&ZENOH_TAKES, EdgePolicy::Queue { depth: 16, drop: DropPolicy::Oldest })
    }

    fn build(&self, _ctx: &mut ocellus_runtime::kind::BuildContext) -> ocellus_runtime::Result<StageFactory> {
        let (name, spec) = (self.name.clone(), self.spec.clone());
        Ok(stage_factory(move || ZenohSink::new(&name, spec.clone())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The zenoh sink kind.
pub struct ZenohSinkKind;

impl NodeKind for ZenohSinkKind {
    const NAME: &'static str = "zenoh";
    const DOC: &'static str = "Publishes observations (and frames) on zenoh, or as a ROS 2 node on rmw_zenoh";
    const MODEL: ModelUse = ModelUse::None;
    type Config = ZenohSinkConfig;

    fn configure(common: &Common, e: ZenohSinkConfig, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let misplaced: &[(&str, bool)] = match e.keys {
            KeysName::Zenoh => &[
                ("domain", e.domain.is_some()),
                ("namespace", e.namespace.is_some()),
                ("node", e.node.is_some()),
                ("type_hash", e.type_hash.is_some()),
                ("bridge_namespace", e.bridge_namespace.is_some()),
                ("qos", e.qos.is_some()),
                ("frame_id", e.frame_id.is_some()),
            ],
            KeysName::Ros2 => &[("prefix", e.prefix.is_some()), ("bridge_namespace", e.bridge_namespace.is_some())],
            KeysName::Ros2dds => &[
                ("prefix", e.prefix.is_some()),
                ("domain", e.domain.is_some()),
                ("node", e.node.is_some()),
                ("type_hash", e.type_hash.is_some()),
                ("qos", e.qos.is_some()),
            ],
        };
        if let Some((key, _)) = misplaced.iter().find(|(_, given)| *given) {
            let keys = match e.keys {
                KeysName::Zenoh => "zenoh",
                KeysName::Ros2 => "ros2",
                KeysName::Ros2dds => "ros2dds",
            };
            return Err(Issue::at(key, format!("`{key}` does not apply to keys = {keys:?}")));
        }
        let namespace = e.namespace.clone().unwrap_or_else(|| "/ocellus".to_owned());
        let keys = match e.keys {
            KeysName::Zenoh => KeyStyle::Zenoh { prefix: e.prefix.clone().unwrap_or_else(|| "ocellus".to_owned()) },
            KeysName::Ros2 => KeyStyle::Ros2 {
                domain: ros_domain(e.domain)?,
                namespace,
                node: e.node.clone().unwrap_or_else(|| "ocellus".to_owned()),
                hashes: match e.type_hash {
                    Some(TypeHashName::Humble) => TypeHashes::NotSupported,
                    Some(TypeHashName::Rihs01) | None => TypeHashes::Rihs01,
                },
            },
            KeysName::Ros2dds => KeyStyle::Ros2Dds { bridge_namespace: e.bridge_namespace.clone(), namespace },
        };
        // Every key this sink may write must be a valid key expression.
        let probe = crate::sink::zenoh::key_of(&keys, "camera/tracks", MsgType::String);
        key_expr(if e.keys == KeysName::Zenoh { "prefix" } else { "namespace" }, &probe)?;
        if e.shm_pool_mib == Some(0) {
            return Err(Issue::at("shm_pool_mib", "must be at least 1 (leave it out for no pool)"));
        }
        if e.shm_pool_mib.is_some() && !e.frames {
            return Err(Issue::at("shm_pool_mib", "the shared-memory pool is for frames: set `frames = true`"));
        }
        let session = session_keys!(e).spec()?;
        let qos = e.qos.unwrap_or_default().qos().map_err(|i| i.inside("qos"))?;
        let frame_ids = match e.frame_id {
            None => FrameIds::default(),
            Some(FrameIdEntry::All(id)) => FrameIds { all: Some(id), ..FrameIds::default() },
            Some(FrameIdEntry::PerCamera(m)) => FrameIds { all: None, by_camera: m.into_iter().collect() },
        };
        let spec = ZenohSinkSpec {
            session,
            keys,
            frames: e.frames,
            block_on_congestion: e.congestion == CongestionName::Block,
            shm_pool_bytes: e.shm_pool_mib.map(|m| m << 20),
            qos,
            frame_ids,
        };
        Ok(Arc::new(ZenohSinkNode { name: common.name.clone(), spec: Arc::new(spec) }))
    }
}

/// `[[sink]] kind = "null"`: counts and drops (benchmarks).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullConfig {}

/// A configured null sink.
#[derive(Debug)]
pub struct NullNode;

impl ConfiguredNode for NullNode {
    fn ports(&self) -> Ports {
        sink_ports(&ocellus_runtime::pipeline::ALL_TYPES, EdgePolicy::Latest)
    }

    fn build(&self, _ctx: &mut ocellus_runtime::kind::BuildContext) -> ocellus_runtime::Result<StageFactory> {
        Ok(stage_factory(|| NullSink))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The null sink kind.
pub struct NullKind;

impl NodeKind for NullKind {
    const NAME: &'static str = "null";
    const DOC: &'static str = "Counts and drops everything (benchmarks)";
    const MODEL: ModelUse = ModelUse::None;
    type Config = NullConfig;

    fn configure(_common: &Common, _c: NullConfig, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        Ok(Arc::new(NullNode))
    }
}
