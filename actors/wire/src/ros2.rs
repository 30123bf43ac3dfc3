//! ROS 2 without a ROS install: message types in CDR, rmw_zenoh keys, attachments and
//! liveliness tokens, and the zenoh-bridge-ros2dds key form.
//!
//! **CDR.** A ROS 2 payload is a 4-byte encapsulation header (`00 01 00 00`: plain CDR,
//! little-endian; `00 00`: big-endian) and the body, aligned relative to the body's start.
//! The message structs below mirror the ROS definitions field for field and go through the
//! `cdr-encoding` serde implementation.
//!
//! **rmw_zenoh keys.** `<domain>/<topic without its outer slashes>/<DDS type>/<type hash>`,
//! e.g. `0/camera/image_raw/sensor_msgs::msg::dds_::Image_/RIHS01_d31d…`. Humble writes
//! `TypeHashNotSupported` in the hash slot; a subscriber uses `*` there to take both.
//! zenoh-bridge-ros2dds keys are the topic alone (no leading slash), optionally under the
//! bridge's namespace.
//!
//! **Discovery.** ROS 2 tools on rmw_zenoh learn about publishers from liveliness tokens
//! `@ros2_lv/<domain>/<zid>/<nid>/<eid>/<NN|MP|MS>/<enclave>/<namespace>/<node>[/<topic>/<type>/<hash>/<qos>]`
//! with `/` in names written `%` (an empty name is `%`).

use byteorder::{BigEndian, LittleEndian};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::compressed::{self, Kind};
use crate::{CodecError, CodecResult, FrameLayout, PixelFormat, YuvMatrix};

/// Plain CDR, little-endian.
pub const CDR_LE: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Time {
    /// Seconds.
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}

impl Time {
    /// The time `ns` nanoseconds after the epoch (saturating at the `i32` seconds range).
    pub fn from_ns(ns: i64) -> Self {
        let sec = ns.div_euclid(1_000_000_000);
        let nanosec = ns.rem_euclid(1_000_000_000) as u32;
        match i32::try_from(sec) {
            Ok(sec) => Self { sec, nanosec },
            Err(_) if sec < 0 => Self { sec: i32::MIN, nanosec: 0 },
            Err(_) => Self { sec: i32::MAX, nanosec: 999_999_999 },
        }
    }

    /// Nanoseconds since the epoch.
    pub fn to_ns(self) -> i64 {
        i64::from(self.sec) * 1_000_000_000 + i64::from(self.nanosec)
    }
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Header {
    /// Acquisition time.
    pub stamp: Time,
    /// Coordinate frame.
    pub frame_id: String,
}

/// `sensor_msgs/msg/Image`; `data` borrows the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image<'a> {
    /// Header.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding (`rgb8`, `bgr8`, `mono8`, ...).
    pub encoding: String,
    /// Non-zero when multi-byte samples are big-endian.
    pub is_bigendian: u8,
    /// Bytes per row.
    pub step: u32,
    /// `step * rows` bytes.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

/// `sensor_msgs/msg/CompressedImage`; `data` borrows the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedImage<'a> {
    /// Header.
    pub header: Header,
    /// `jpeg`, `png`, or `<encoding>; <codec> compressed <encoding>`.
    pub format: String,
    /// The compressed image.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

/// `std_msgs/msg/String`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringMsg {
    /// The text.
    pub data: String,
}

/// `geometry_msgs/msg/Point`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}

/// `geometry_msgs/msg/Quaternion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w.
    pub w: f64,
}

/// `geometry_msgs/msg/Pose`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// Position.
    pub position: Point,
    /// Orientation.
    pub orientation: Quaternion,
}

/// `geometry_msgs/msg/PoseArray`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoseArray {
    /// Header.
    pub header: Header,
    /// The poses.
    pub poses: Vec<Pose>,
}

/// `vision_msgs/msg/Point2D`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point2D {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
}

/// `vision_msgs/msg/Pose2D` (vision_msgs 4, Humble and later).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose2D {
    /// Position.
    pub position: Point2D,
    /// Rotation, radians.
    pub theta: f64,
}

/// `vision_msgs/msg/BoundingBox2D`: centre and size, pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox2D {
    /// Centre.
    pub center: Pose2D,
    /// Width.
    pub size_x: f64,
    /// Height.
    pub size_y: f64,
}

/// `vision_msgs/msg/ObjectHypothesis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectHypothesis {
    /// The class.
    pub class_id: String,
    /// Its score.
    pub score: f64,
}

/// A `float64[36]` (fixed size: no length on the wire).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Covariance(pub [f64; COVARIANCE_LEN]);

/// Entries of a 6×6 covariance.
pub const COVARIANCE_LEN: usize = 36;

impl Serialize for Covariance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(COVARIANCE_LEN)?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Covariance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Covariance;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{COVARIANCE_LEN} float64")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Covariance, A::Error> {
                let mut out = [0.0; COVARIANCE_LEN];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Covariance(out))
            }
        }
        d.deserialize_tuple(COVARIANCE_LEN, V)
    }
}

/// `geometry_msgs/msg/PoseWithCovariance`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoseWithCovariance {
    /// The pose.
    pub pose: Pose,
    /// Row-major 6×6 covariance (x, y, z, rotations about x, y, z).
    pub covariance: Covariance,
}

/// `vision_msgs/msg/ObjectHypothesisWithPose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectHypothesisWithPose {
    /// Class and score.
    pub hypothesis: ObjectHypothesis,
    /// A 3D pose (unknown for a 2D detection: zero).
    pub pose: PoseWithCovariance,
}

/// `vision_msgs/msg/Detection2D`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection2D {
    /// Header.
    pub header: Header,
    /// Class hypotheses.
    pub results: Vec<ObjectHypothesisWithPose>,
    /// The box.
    pub bbox: BoundingBox2D,
    /// The tracking id.
    pub id: String,
}

/// `vision_msgs/msg/Detection2DArray`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection2DArray {
    /// Header.
    pub header: Header,
    /// The detections.
    pub detections: Vec<Detection2D>,
}

/// One tracked object as a detection: its id, box `[x0, y0, x1, y1)` in pixels, class and
/// score.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionIn<'a> {
    /// Track id.
    pub id: u32,
    /// Box, pixels, exclusive upper corner.
    pub bbox: [f64; 4],
    /// Class (`""` when unknown).
    pub class_id: &'a str,
    /// Score of the class (or of the object's presence when unclassified).
    pub score: f64,
}

/// A ROS 2 message type Ocellus reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// `sensor_msgs/msg/Image`.
    Image,
    /// `sensor_msgs/msg/CompressedImage`.
    CompressedImage,
    /// `std_msgs/msg/String`.
    String,
    /// `geometry_msgs/msg/PoseArray`.
    PoseArray,
    /// `vision_msgs/msg/Detection2DArray`.
    Detection2DArray,
}

impl MsgType {
    /// The DDS type name rmw_zenoh puts in keys.
    pub fn dds_name(self) -> &'static str {
        match self {
            Self::Image => "sensor_msgs::msg::dds_::Image_",
            Self::CompressedImage => "sensor_msgs::msg::dds_::CompressedImage_",
            Self::String => "std_msgs::msg::dds_::String_",
            Self::PoseArray => "geometry_msgs::msg::dds_::PoseArray_",
            Self::Detection2DArray => "vision_msgs::msg::dds_::Detection2DArray_",
        }
    }

    /// The type hash of Iron and later (`RIHS01_` + SHA-256 of the type description; the
    /// definitions are unchanged since Iron; checked against `rosbags` by the tests).
    pub fn rihs01(self) -> &'static str {
        match self {
            Self::Image => "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
            Self::CompressedImage => "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
            Self::String => "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
            Self::PoseArray => "RIHS01_af0cc36d190e104d546d168d6b39df04fa4b4ccecf59cb4c9ed328d3d5004aa0",
            // vision_msgs 4.1 (Humble and later).
            Self::Detection2DArray => "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
        }
    }
}

/// What the hash slot of an rmw_zenoh key holds when publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TypeHashes {
    /// `RIHS01_…` (Iron, Jazzy, Kilted, Rolling).
    #[default]
    Rihs01,
    /// `TypeHashNotSupported` (Humble).
    NotSupported,
}

/// Humble's hash slot.
pub const TYPE_HASH_NOT_SUPPORTED: &str = "TypeHashNotSupported";

/// A topic name without its outer slashes (`/camera/image_raw/` → `camera/image_raw`).
pub fn strip_topic(topic: &str) -> &str {
    topic.trim_matches('/')
}

/// The rmw_zenoh data key of `topic`. `hash = None` gives the subscriber's wildcard `*`.
pub fn rmw_zenoh_key(domain: u32, topic: &str, ty: MsgType, hash: Option<TypeHashes>) -> String {
    let hash = match hash {
        None => "*",
        Some(TypeHashes::Rihs01) => ty.rihs01(),
        Some(TypeHashes::NotSupported) => TYPE_HASH_NOT_SUPPORTED,
    };
    format!("{domain}/{}/{}/{hash}", strip_topic(topic), ty.dds_name())
}

/// The zenoh-bridge-ros2dds key of `topic`, under the bridge's `namespace` if any.
pub fn bridge_key(namespace: Option<&str>, topic: &str) -> String {
    match namespace.map(strip_topic).filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{}", strip_topic(topic)),
        None => strip_topic(topic).to_owned(),
    }
}

/// A name as rmw_zenoh writes it in a liveliness token: `/` → `%`, empty → `%`.
pub fn mangle(name: &str) -> String {
    if name.is_empty() { "%".to_owned() } else { name.replace('/', "%") }
}

/// ROS 2 QoS as rmw_zenoh writes it in a token (empty fields: the default profile's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// Best effort (else reliable).
    pub best_effort: bool,
    /// History depth (keep last).
    pub depth: u32,
}

impl Default for Qos {
    fn default() -> Self {
        Self { best_effort: false, depth: 10 }
    }
}

impl Qos {
    /// `<reliability>:<durability>:<history>,<depth>:<deadline>:<lifespan>:<liveliness>`,
    /// leaving default values empty as rmw_zenoh does (reliable, volatile, keep last 10).
    pub fn token(self) -> String {
        let reliability = if self.best_effort { "2" } else { "" };
        let depth = if self.depth == 10 { String::new() } else { self.depth.to_string() };
        format!("{reliability}::,{depth}:,:,:,,")
    }
}

/// The ROS 2 node a session stands for in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `ROS_DOMAIN_ID`.
    pub domain: u32,
    /// The session's zenoh id (hex).
    pub zid: String,
    /// Node id within the session.
    pub node_id: u32,
    /// Namespace (`/` or `/robot1`).
    pub namespace: String,
    /// Node name.
    pub name: String,
    /// Security enclave (usually empty).
    pub enclave: String,
}

/// Which entity a liveliness token announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// The node itself (`NN`).
    Node,
    /// A publisher (`MP`).
    Publisher,
    /// A subscription (`MS`).
    Subscription,
}

impl NodeIdentity {
    fn prefix(&self, entity_id: u32, kind: EntityKind) -> String {
        let kind = match kind {
            EntityKind::Node => "NN",
            EntityKind::Publisher => "MP",
            EntityKind::Subscription => "MS",
        };
        format!(
            "@ros2_lv/{}/{}/{}/{entity_id}/{kind}/{}/{}/{}",
            self.domain,
            self.zid,
            self.node_id,
            mangle(&self.enclave),
            mangle(&self.namespace),
            mangle(&self.name)
        )
    }

    /// The node's own token (its entity id is its node id).
    pub fn node_token(&self) -> String {
        self.prefix(self.node_id, EntityKind::Node)
    }

    /// The token of publisher or subscription `entity_id` on `topic` (a full ROS name).
    pub fn endpoint_token(
        &self,
        entity_id: u32,
        kind: EntityKind,
        topic: &str,
        ty: MsgType,
        hash: TypeHashes,
        qos: Qos,
    ) -> String {
        let hash = match hash {
            TypeHashes::Rihs01 => ty.rihs01(),
            TypeHashes::NotSupported => TYPE_HASH_NOT_SUPPORTED,
        };
        let topic = format!("/{}", strip_topic(topic));
        format!("{}/{}/{}/{hash}/{}", self.prefix(entity_id, kind), mangle(&topic), ty.dds_name(), qos.token())
    }
}

// --- CDR ---------------------------------------------------------------------------------

/// Prepends the little-endian encapsulation header to the CDR body of `value`.
pub fn to_cdr<T: Serialize>(value: &T) -> CodecResult<Vec<u8>> {
    let body = cdr_encoding::to_vec::<T, LittleEndian>(value).map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&CDR_LE);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a CDR payload (either byte order) as `T`.
pub fn from_cdr<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> CodecResult<T> {
    if payload.len() < 4 {
        return Err(CodecError::Truncated { what: "CDR encapsulation header", needed: 4, got: payload.len() });
    }
    let (header, body) = payload.split_at(4);
    let result = match [header[0], header[1]] {
        [0, 1] => cdr_encoding::from_bytes::<T, LittleEndian>(body),
        [0, 0] => cdr_encoding::from_bytes::<T, BigEndian>(body),
        other => return Err(CodecError::Encapsulation(other)),
    };
    result.map(|(v, _)| v).map_err(|e| CodecError::Cdr(e.to_string()))
}

/// A decoded image: layout, pixels (sharing the payload's memory when uncompressed) and
/// the header stamp (`None` when zero, i.e. unset).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// Pixel layout.
    pub layout: FrameLayout,
    /// Pixels.
    pub pixels: Bytes,
    /// Header stamp, when set.
    pub stamp: Option<Time>,
    /// Header frame id.
    pub frame_id: String,
}

fn stamp_of(header: &Header) -> Option<Time> {
    (header.stamp != Time::default()).then_some(header.stamp)
}

/// How a ROS 2 `encoding` maps to a frame: (format, bytes per pixel of the message, drop
/// an alpha channel).
fn ros_encoding(encoding: &str) -> CodecResult<(PixelFormat, usize, bool)> {
    Ok(match encoding {
        "rgb8" => (PixelFormat::Rgb, 3, false),
        "bgr8" => (PixelFormat::Bgr, 3, false),
        "rgba8" => (PixelFormat::Rgb, 4, true),
        "bgra8" => (PixelFormat::Bgr, 4, true),
        "mono8" | "8UC1" => (PixelFormat::Gray8, 1, false),
        "nv12" | "NV12" => (PixelFormat::Nv12, 1, false),
        other => return Err(CodecError::Encoding(other.to_owned())),
    })
}

/// The ROS 2 encoding name of a pixel format.
pub fn encoding_name(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Rgb => "rgb8",
        PixelFormat::Bgr => "bgr8",
        PixelFormat::Gray8 => "mono8",
        PixelFormat::Nv12 => "nv12",
    }
}

/// Decodes a `sensor_msgs/Image` payload into a frame layout and its pixels.
///
/// `rgb8`, `bgr8`, `mono8`/`8UC1` and `nv12` share the payload's memory; `rgba8` and `bgra8`
/// are copied without their alpha. Other encodings (16-bit, float, Bayer, YUYV) are an
/// [`CodecError::Encoding`]; a `step` shorter than a row, or `data` shorter than
/// `step * rows`, a [`CodecError::Size`].
pub fn decode_image(payload: &Bytes) -> CodecResult<DecodedImage> {
    let image: Image<'_> = from_cdr(payload)?;
    let (format, bpp, strip_alpha) = ros_encoding(&image.encoding)?;
    let (width, height, step) = (image.width as usize, image.height as usize, image.step as usize);
    let max = crate::MAX_DIMENSION as usize;
    if width == 0 || height == 0 || width > max || height > max {
        return Err(CodecError::Size(format!("{width}x{height} is outside 1..={max} pixels per side")));
    }
    if step < width * bpp {
        return Err(CodecError::Size(format!(
            "step {step} is shorter than a row of {width} {} pixels",
            image.encoding
        )));
    }
    let rows = if format == PixelFormat::Nv12 { height + height.div_ceil(2) } else { height };
    let needed = step * rows;
    if image.data.len() < needed {
        return Err(CodecError::Size(format!(
            "data holds {} bytes, step {step} x {rows} rows needs {needed}",
            image.data.len()
        )));
    }
    let stamp = stamp_of(&image.header);
    if strip_alpha {
        let mut packed = Vec::with_capacity(width * height * 3);
        for row in image.data.chunks(step).take(height) {
            for px in row[..width * 4].chunks_exact(4) {
                packed.extend_from_slice(&px[..3]);
            }
        }
        let layout = FrameLayout::packed(format, width, height);
        return Ok(DecodedImage { layout, pixels: Bytes::from(packed), stamp, frame_id: image.header.frame_id });
    }
    // The data borrows the payload: find where, and share the payload's memory.
    let start = image.data.as_ptr() as usize - payload.as_ptr() as usize;
    let pixels = payload.slice(start..start + needed);
    let layout = FrameLayout {
        format,
        width,
        height,
        strides: if format == PixelFormat::Nv12 { [step, step] } else { [step, 0] },
        offsets: if format == PixelFormat::Nv12 { [0, step * height] } else { [0, 0] },
        yuv_matrix: YuvMatrix::default(),
    };
    crate::raw::check_layout(&layout, pixels.len())?;
    Ok(DecodedImage { layout, pixels, stamp, frame_id: image.header.frame_id })
}

/// Decodes a `sensor_msgs/CompressedImage` payload (JPEG or PNG) to packed RGB.
pub fn decode_compressed_image(payload: &[u8]) -> CodecResult<DecodedImage> {
    decode_compressed_image_within(payload, &crate::FrameLimits::DEFAULT)
}

/// [`decode_compressed_image`] refusing an image whose header announces more pixels than
/// `limits` allow, before it is decompressed.
pub fn decode_compressed_image_within(payload: &[u8], limits: &crate::FrameLimits) -> CodecResult<DecodedImage> {
    let image: CompressedImage<'_> = from_cdr(payload)?;
    let kind = Kind::from_ros_format(&image.format)?;
    let (layout, pixels) = compressed::decode_rgb_within(kind, image.data, limits)?;
    Ok(DecodedImage { layout, pixels, stamp: stamp_of(&image.header), frame_id: image.header.frame_id })
}

/// Encodes a frame (laid out as `l`, captured at `capture_ns`) as a `sensor_msgs/Image`
/// payload (packed rows; one copy of the pixels).
pub fn encode_image(l: &FrameLayout, pixels: &[u8], capture_ns: i64, frame_id: &str) -> CodecResult<Vec<u8>> {
    let packed = l.pack(pixels).map_err(|e| CodecError::Encode(e.to_string()))?;
    let to_u32 = |v: usize| u32::try_from(v).map_err(|_| CodecError::Encode(format!("{v} does not fit in 32 bits")));
    let image = Image {
        header: Header { stamp: Time::from_ns(capture_ns), frame_id: frame_id.to_owned() },
        height: to_u32(l.height)?,
        width: to_u32(l.width)?,
        encoding: encoding_name(l.format).to_owned(),
        is_bigendian: 0,
        step: to_u32(l.format.row_bytes(0, l.width))?,
        data: &packed,
    };
    to_cdr(&image)
}

/// Encodes poses — `(position, orientation as x, y, z, w)` — as a `geometry_msgs/PoseArray`
/// payload.
pub fn encode_pose_array(capture_ns: i64, frame_id: &str, poses: &[([f64; 3], [f64; 4])]) -> CodecResult<Vec<u8>> {
    let poses = poses
        .iter()
        .map(|(p, q)| Pose {
            position: Point { x: p[0], y: p[1], z: p[2] },
            orientation: Quaternion { x: q[0], y: q[1], z: q[2], w: q[3] },
        })
        .collect();
    to_cdr(&PoseArray { header: Header { stamp: Time::from_ns(capture_ns), frame_id: frame_id.to_owned() }, poses })
}

/// Encodes tracked objects as a `vision_msgs/Detection2DArray` payload: each a box (centre
/// and size), one hypothesis (its class and score), its track id as `id`.
pub fn encode_detections(capture_ns: i64, frame_id: &str, detections: &[DetectionIn<'_>]) -> CodecResult<Vec<u8>> {
    let header = Header { stamp: Time::from_ns(capture_ns), frame_id: frame_id.to_owned() };
    let unknown_pose = PoseWithCovariance {
        pose: Pose {
            position: Point { x: 0.0, y: 0.0, z: 0.0 },
            orientation: Quaternion { x: 0.0, y: 0.0, z: 0.0, w: 1.0 },
        },
        covariance: Covariance([0.0; COVARIANCE_LEN]),
    };
    let detections = detections
        .iter()
        .map(|d| {
            let [x0, y0, x1, y1] = d.bbox;
            Detection2D {
                header: header.clone(),
                results: vec![ObjectHypothesisWithPose {
                    hypothesis: ObjectHypothesis { class_id: d.class_id.to_owned(), score: d.score },
                    pose: unknown_pose,
                }],
                bbox: BoundingBox2D {
                    center: Pose2D { position: Point2D { x: (x0 + x1) / 2.0, y: (y0 + y1) / 2.0 }, theta: 0.0 },
                    size_x: x1 - x0,
                    size_y: y1 - y0,
                },
                id: d.id.to_string(),
            }
        })
        .collect();
    to_cdr(&Detection2DArray { header, detections })
}

/// Encodes `text` as a `std_msgs/String` payload.
pub fn encode_string(text: &str) -> CodecResult<Vec<u8>> {
    to_cdr(&StringMsg { data: text.to_owned() })
}

/// Decodes a `std_msgs/String` payload.
pub fn decode_string(payload: &[u8]) -> CodecResult<String> {
    let msg: StringMsg = from_cdr(payload)?;
    Ok(msg.data)
}

/// The text of a message that is either plain UTF-8 or a ROS 2 `std_msgs/String` (CDR, told
/// apart by its encapsulation header, which plain text never starts with).
pub fn text_payload(payload: &[u8]) -> Option<String> {
    match payload.get(..2) {
        Some([0, 0 | 1]) => decode_string(payload).ok(),
        _ => String::from_utf8(payload.to_vec()).ok(),
    }
}

// --- Attachments -------------------------------------------------------------------------

/// What rmw_zenoh attaches to every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// Per-publisher sequence number.
    pub sequence_number: i64,
    /// Source time, ns since the epoch.
    pub source_timestamp: i64,
    /// Publisher GID.
    pub source_gid: [u8; 16],
}

impl Attachment {
    /// The current layout (zenoh-ext serializer): i64, i64, then the 16-byte GID with its
    /// length (one LEB128 byte): 33 bytes.
    pub fn encode(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0..8].copy_from_slice(&self.sequence_number.to_le_bytes());
        out[8..16].copy_from_slice(&self.source_timestamp.to_le_bytes());
        out[16] = 16;
        out[17..33].copy_from_slice(&self.source_gid);
        out
    }

    /// The older layout, where each field follows its name (a LEB128-length string).
    pub fn encode_keyed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        let key = |out: &mut Vec<u8>, k: &str| {
            out.push(k.len() as u8);
            out.extend_from_slice(k.as_bytes());
        };
        key(&mut out, "sequence_number");
        out.extend_from_slice(&self.sequence_number.to_le_bytes());
        key(&mut out, "source_timestamp");
        out.extend_from_slice(&self.source_timestamp.to_le_bytes());
        key(&mut out, "source_gid");
        out.push(16);
        out.extend_from_slice(&self.source_gid);
        out
    }

    /// Reads either layout. Tolerant: keyed fields may come in any order, the GID with or
    /// without its length, and unknown keys are an error only if their value cannot be
    /// skipped.
    pub fn decode(b: &[u8]) -> CodecResult<Self> {
        if b.len() == 33 && b[16] == 16 {
            return Ok(Self {
                sequence_number: i64_at(b, 0),
                source_timestamp: i64_at(b, 8),
                source_gid: gid_at(b, 17),
            });
        }
        if b.len() == 32 {
            // The same without the GID's length prefix.
            return Ok(Self {
                sequence_number: i64_at(b, 0),
                source_timestamp: i64_at(b, 8),
                source_gid: gid_at(b, 16),
            });
        }
        Self::decode_keyed(b)
    }

    fn decode_keyed(b: &[u8]) -> CodecResult<Self> {
        let bad = |m: &str| CodecError::Attachment(format!("{m} (neither the 33-byte nor the keyed layout)"));
        let (mut seq, mut ts, mut gid) = (None, None, None);
        let mut at = 0;
        while at < b.len() {
            let len = usize::from(b[at]);
            let key = b.get(at + 1..at + 1 + len).ok_or_else(|| bad("a key runs past the end"))?;
            at += 1 + len;
            match key {
                b"sequence_number" | b"source_timestamp" => {
                    let v = b.get(at..at + 8).ok_or_else(|| bad("an integer runs past the end"))?;
                    let v = i64_at(v, 0);
                    at += 8;
                    if key == b"sequence_number" { seq = Some(v) } else { ts = Some(v) }
                }
                b"source_gid" => {
                    // With its length prefix, or the 16 bytes alone.
                    if b.get(at) == Some(&16) && b.len() - at >= 17 {
                        at += 1;
                    }
                    let g = b.get(at..at + 16).ok_or_else(|| bad("the GID runs past the end"))?;
                    gid = Some(gid_at(g, 0));
                    at += 16;
                }
                _ => return Err(bad(&format!("unknown key {:?}", String::from_utf8_lossy(key)))),
            }
        }
        match (seq, ts, gid) {
            (Some(sequence_number), Some(source_timestamp), Some(source_gid)) => {
                Ok(Self { sequence_number, source_timestamp, source_gid })
            }
            _ => Err(bad(&format!("{} bytes without all three fields", b.len()))),
        }
    }
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(v)
}

fn gid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

/// A publisher GID: the first 16 bytes of a hash of its liveliness token (rmw_zenoh hashes
/// the token too; only uniqueness matters to subscribers).
pub fn gid_of(token: &str) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut gid = [0u8; 16];
    for (i, chunk) in gid.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, token).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    gid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens() {
        assert_eq!(
            rmw_zenoh_key(0, "/camera/image_raw", MsgType::Image, None),
            "0/camera/image_raw/sensor_msgs::msg::dds_::Image_/*"
        );
        assert_eq!(
            rmw_zenoh_key(7, "chatter", MsgType::String, Some(TypeHashes::NotSupported)),
            "7/chatter/std_msgs::msg::dds_::String_/TypeHashNotSupported"
        );
        assert_eq!(bridge_key(Some("/bot1"), "/camera/image_raw"), "bot1/camera/image_raw");
        assert_eq!(bridge_key(None, "/camera/image_raw"), "camera/image_raw");
        let node = NodeIdentity {
            domain: 0,
            zid: "abc".into(),
            node_id: 0,
            namespace: "/".into(),
            name: "ocellus".into(),
            enclave: String::new(),
        };
        assert_eq!(node.node_token(), "@ros2_lv/0/abc/0/0/NN/%/%/ocellus");
        let t = node.endpoint_token(
            3,
            EntityKind::Publisher,
            "/ocellus/captions",
            MsgType::String,
            TypeHashes::Rihs01,
            Qos::default(),
        );
        assert_eq!(
            t,
            format!(
                "@ros2_lv/0/abc/0/3/MP/%/%/ocellus/%ocellus%captions/std_msgs::msg::dds_::String_/{}/::,:,:,:,,",
                MsgType::String.rihs01()
            )
        );
        assert_eq!(Qos { best_effort: true, depth: 5 }.token(), "2::,5:,:,:,,");
    }

    #[test]
    fn attachments_in_both_layouts() {
        let a = Attachment { sequence_number: 7, source_timestamp: 1_700_000_000_123_456_789, source_gid: [3; 16] };
        assert_eq!(Attachment::decode(&a.encode()), Ok(a));
        assert_eq!(Attachment::decode(&a.encode_keyed()), Ok(a));
        let mut no_len = a.encode_keyed();
        let at = no_len.len() - 17;
        no_len.remove(at);
        assert_eq!(Attachment::decode(&no_len), Ok(a));
        assert!(Attachment::decode(&[1, 2, 3]).is_err());
        assert!(Attachment::decode(&[]).is_err());
    }

    #[test]
    fn image_checks_sizes_and_encodings() {
        let data = vec![9u8; 4 * 3 * 2];
        let mut image = Image {
            header: Header { stamp: Time { sec: 1, nanosec: 2 }, frame_id: "cam".into() },
            height: 2,
            width: 3,
            encoding: "rgba8".into(),
            is_bigendian: 0,
            step: 12,
            data: &data,
        };
        let decoded = decode_image(&Bytes::from(to_cdr(&image).expect("cdr"))).expect("rgba8");
        assert_eq!((decoded.layout.format, decoded.pixels.len()), (PixelFormat::Rgb, 18));
        assert_eq!(decoded.stamp.map(Time::to_ns), Some(1_000_000_002));
        image.encoding = "16UC1".into();
        let err = decode_image(&Bytes::from(to_cdr(&image).expect("cdr"))).expect_err("16-bit");
        assert_eq!(err, CodecError::Encoding("16UC1".into()));
        image.encoding = "rgb8".into();
        image.step = 20;
        assert!(matches!(decode_image(&Bytes::from(to_cdr(&image).expect("cdr"))), Err(CodecError::Size(_))));
        image.step = 8;
        assert!(matches!(decode_image(&Bytes::from(to_cdr(&image).expect("cdr"))), Err(CodecError::Size(_))));
        assert_eq!(
            decode_image(&Bytes::from_static(&[0, 9, 0, 0, 1])).expect_err("encapsulation"),
            CodecError::Encapsulation([0, 9])
        );
    }

    #[test]
    fn time_conversions() {
        assert_eq!(Time::from_ns(1_500_000_000), Time { sec: 1, nanosec: 500_000_000 });
        assert_eq!(Time::from_ns(-1), Time { sec: -1, nanosec: 999_999_999 });
        assert_eq!(Time::from_ns(-1).to_ns(), -1);
        assert_eq!(Time::from_ns(i64::MAX).sec, i32::MAX);
    }
}

#[cfg(test)]
mod text_payload_tests {
    use super::*;

    #[test]
    fn strings_and_plain_text() {
        assert_eq!(text_payload(&encode_string("hello ü").unwrap()).as_deref(), Some("hello ü"));
        assert_eq!(text_payload(b"plain text").as_deref(), Some("plain text"));
        assert_eq!(text_payload(&[0, 1, 0, 0, 9, 0, 0, 0, b'a']), None, "a truncated std_msgs/String");
    }
}
