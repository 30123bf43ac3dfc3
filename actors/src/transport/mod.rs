//! Transports: zenoh sessions, the wire formats of frames and observations, ROS 2 interop.
//!
//! - [`raw`]: Ocellus's raw frame (a 40-byte header, then the pixels as laid out).
//! - [`compressed`]: JPEG and PNG payloads decoded to RGB frames.
//! - [`ros2`]: `sensor_msgs/Image`, `sensor_msgs/CompressedImage` and `std_msgs/String` in CDR
//!   with the encapsulation header; rmw_zenoh keys, attachments and liveliness tokens; the
//!   zenoh-bridge-ros2dds key form.
//! - [`observations`]: tracks, masks, metrics, captions, decisions and alerts as JSON.
//!
//! Every decoder is a pure function over bytes with a typed error ([`CodecError`]): a zenoh
//! source counts a message that fails to decode and skips it.
//!
//! **Threading.** zenoh's synchronous paths (`zenoh::open`, dropping the last handle of a
//! session) call `block_in_place`, which panics on a current-thread tokio runtime, and every
//! actix arbiter is one. So a zenoh session is opened, used and closed only on a thread of
//! its own running a multi-thread tokio runtime ([`spawn_host`]); it meets the pipeline
//! through bounded edges only.

pub mod compressed;
pub mod observations;
pub mod raw;
pub mod ros2;

use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;

use crate::frame::{Frame, FrameMeta};

/// Largest width or height a decoder accepts (guards size arithmetic against hostile headers).
pub const MAX_DIMENSION: u32 = 1 << 15;

/// Why a message could not be decoded (or an observation encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The message ends before what it announces.
    #[error("truncated {what}: needs {needed} bytes, got {got}")]
    Truncated {
        /// The part that is cut.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes there are.
        got: usize,
    },
    /// Not an Ocellus raw frame.
    #[error("bad magic {0:02x?}: not an Ocellus raw frame")]
    BadMagic([u8; 4]),
    /// A raw frame of a version this build does not read.
    #[error("raw frame version {0} is not supported (this build reads version 1)")]
    Version(u16),
    /// An unknown pixel format code in a raw frame header.
    #[error("unknown pixel format code {0}")]
    PixelFormatCode(u8),
    /// An image encoding Ocellus does not take.
    #[error("unsupported image encoding {0:?} (supported: rgb8, bgr8, rgba8, bgra8, mono8, 8UC1, nv12)")]
    Encoding(String),
    /// A compressed image format Ocellus does not take.
    #[error("unsupported compressed format {0:?} (supported: jpeg, png)")]
    CompressedFormat(String),
    /// Sizes that contradict each other or the payload.
    #[error("bad size: {0}")]
    Size(String),
    /// CDR that does not parse as the expected type.
    #[error("malformed CDR: {0}")]
    Cdr(String),
    /// A CDR encapsulation other than plain CDR.
    #[error("CDR encapsulation {0:02x?} is not plain CDR (00 00 big-endian, 00 01 little-endian)")]
    Encapsulation([u8; 2]),
    /// A JPEG or PNG that does not decode.
    #[error("image: {0}")]
    Image(String),
    /// An rmw_zenoh attachment in neither known layout.
    #[error("attachment: {0}")]
    Attachment(String),
    /// An observation that cannot be encoded.
    #[error("encoding: {0}")]
    Encode(String),
}

/// Result alias of the codecs.
pub type CodecResult<T> = std::result::Result<T, CodecError>;

/// How frames arrive on a zenoh key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Ocellus raw frames ([`raw`]).
    Raw,
    /// A JPEG per message.
    Jpeg,
    /// A PNG per message.
    Png,
    /// ROS 2 `sensor_msgs/msg/Image` in CDR.
    Ros2Image,
    /// ROS 2 `sensor_msgs/msg/CompressedImage` (JPEG or PNG) in CDR.
    Ros2CompressedImage,
}

impl WireFormat {
    /// The names a configuration uses.
    pub const NAMES: [&'static str; 5] =
        ["raw", "jpeg", "png", "ros2/sensor_msgs/Image", "ros2/sensor_msgs/CompressedImage"];

    /// The format named `name` (see [`Self::NAMES`]).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "raw" => Self::Raw,
            "jpeg" => Self::Jpeg,
            "png" => Self::Png,
            "ros2/sensor_msgs/Image" => Self::Ros2Image,
            "ros2/sensor_msgs/CompressedImage" => Self::Ros2CompressedImage,
            _ => return None,
        })
    }

    /// The zenoh encoding a publisher of this format declares.
    pub fn encoding(self) -> zenoh::bytes::Encoding {
        use zenoh::bytes::Encoding;
        match self {
            Self::Raw => Encoding::VIDEO_RAW,
            Self::Jpeg => Encoding::IMAGE_JPEG,
            Self::Png => Encoding::IMAGE_PNG,
            Self::Ros2Image | Self::Ros2CompressedImage => Encoding::APPLICATION_CDR,
        }
    }
}

/// What the transport knows about a message besides its payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// Sequence number to use when the payload carries none.
    pub seq: u64,
    /// Capture time to use when the payload carries none (ns since the epoch).
    pub capture_ns: i64,
}

/// Decodes one message of `format` into a frame of camera `camera`.
///
/// Raw frames keep their own sequence number and capture time; ROS 2 images take the capture
/// time from their header stamp; everything else takes `info`'s. Raw frames and uncompressed
/// ROS 2 images share `payload`'s memory (no copy).
pub fn decode_frame(
    format: WireFormat,
    payload: &Bytes,
    camera: &std::sync::Arc<str>,
    info: MessageInfo,
) -> CodecResult<Frame> {
    let (meta, layout, pixels) = match format {
        WireFormat::Raw => {
            let (header, pixels) = raw::decode(payload)?;
            (
                FrameMeta { camera: camera.clone(), seq: header.seq, capture_ns: header.capture_ns },
                header.layout,
                pixels,
            )
        }
        WireFormat::Jpeg | WireFormat::Png => {
            let kind = if format == WireFormat::Jpeg { compressed::Kind::Jpeg } else { compressed::Kind::Png };
            let (layout, pixels) = compressed::decode_rgb(kind, payload)?;
            (FrameMeta { camera: camera.clone(), seq: info.seq, capture_ns: info.capture_ns }, layout, pixels)
        }
        WireFormat::Ros2Image => {
            let image = ros2::decode_image(payload)?;
            let capture_ns = image.stamp.map_or(info.capture_ns, |t| t.to_ns());
            (FrameMeta { camera: camera.clone(), seq: info.seq, capture_ns }, image.layout, image.pixels)
        }
        WireFormat::Ros2CompressedImage => {
            let image = ros2::decode_compressed_image(payload)?;
            let capture_ns = image.stamp.map_or(info.capture_ns, |t| t.to_ns());
            (FrameMeta { camera: camera.clone(), seq: info.seq, capture_ns }, image.layout, image.pixels)
        }
    };
    Frame::new(meta, layout, pixels).map_err(|e| CodecError::Size(e.to_string()))
}

/// The zenoh link protocols this build compiles in.
pub const LINK_PROTOCOLS: [&str; 2] = ["tcp", "tls"];

/// zenoh session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// A peer: talks to other peers directly (and to routers).
    Peer,
    /// A client: talks through one router or peer.
    Client,
}

/// How to open a zenoh session: a zenoh configuration file (TLS, user/password, access
/// control, QoS, ...) with the few settings a pipeline names laid over it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionSpec {
    /// A zenoh configuration file (JSON5), read first.
    pub config_file: Option<PathBuf>,
    /// Mode; `None`: the file's, else peer.
    pub mode: Option<SessionMode>,
    /// Endpoints to connect to (`tcp/127.0.0.1:7447`, `tls/host:7447`); empty: the file's.
    pub connect: Vec<String>,
    /// Endpoints to listen on; empty: the file's.
    pub listen: Vec<String>,
    /// Multicast scouting; `None`: the file's (zenoh's default: on).
    pub multicast_scouting: Option<bool>,
    /// Shared memory between local processes; `None`: the file's (zenoh's default: on).
    pub shared_memory: Option<bool>,
}

impl SessionSpec {
    /// A hermetic peer that listens on `listen` and connects to `connect`, without scouting
    /// (tests, benchmarks).
    pub fn loopback(listen: &[&str], connect: &[&str]) -> Self {
        Self {
            mode: Some(SessionMode::Peer),
            connect: connect.iter().map(|s| (*s).to_owned()).collect(),
            listen: listen.iter().map(|s| (*s).to_owned()).collect(),
            multicast_scouting: Some(false),
            ..Self::default()
        }
    }

    /// The zenoh configuration (reads the file; opens nothing).
    pub fn to_config(&self) -> Result<zenoh::Config, String> {
        let mut config = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => zenoh::Config::default(),
        };
        let mut set = |key: &str, json: String| {
            config.insert_json5(key, &json).map_err(|e| format!("zenoh setting {key} = {json}: {e}"))
        };
        if let Some(mode) = self.mode {
            set("mode", format!("{:?}", if mode == SessionMode::Peer { "peer" } else { "client" }))?;
        }
        for endpoint in self.connect.iter().chain(&self.listen) {
            let protocol = endpoint.split_once('/').map(|(p, _)| p);
            if !protocol.is_some_and(|p| LINK_PROTOCOLS.contains(&p)) {
                return Err(format!(
                    "endpoint {endpoint:?}: this build speaks {} (like \"tcp/127.0.0.1:7447\")",
                    LINK_PROTOCOLS.join(" and ")
                ));
            }
        }
        let list = |v: &[String]| format!("[{}]", v.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(","));
        if !self.connect.is_empty() {
            set("connect/endpoints", list(&self.connect))?;
        }
        if !self.listen.is_empty() {
            set("listen/endpoints", list(&self.listen))?;
        }
        if let Some(on) = self.multicast_scouting {
            set("scouting/multicast/enabled", on.to_string())?;
        }
        if let Some(on) = self.shared_memory {
            set("transport/shared_memory/enabled", on.to_string())?;
        }
        Ok(config)
    }
}

/// Checks a key expression without opening anything.
pub fn check_key_expr(key: &str) -> Result<(), String> {
    zenoh::key_expr::KeyExpr::try_from(key)
        .map(|_| ())
        .map_err(|e| format!("{key:?} is not a zenoh key expression: {e}"))
}

/// Runs `task` on a new thread named `name` with its own multi-thread tokio runtime: the
/// only place where Ocellus opens, uses and closes zenoh sessions.
pub fn spawn_host<F, Fut>(name: String, task: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{name}-rt"))
        .enable_all()
        .build()?;
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(task());
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    })
}

/// Nanoseconds since the epoch of a zenoh (uhlc) timestamp.
pub fn timestamp_ns(ts: &zenoh::time::Timestamp) -> i64 {
    let d = ts.get_time().to_duration();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
