//! # ocellus-wire
//!
//! What Ocellus's data looks like outside a process, as pure functions over bytes with typed
//! errors: no runtime, no tensors, no transport.
//!
//! - [`frame`]: where the pixels of a frame are in a buffer ([`FrameLayout`]: format, strides,
//!   plane offsets), and the frame as packed 8-bit RGB.
//! - [`raw`]: Ocellus's raw frame (a 56-byte header, then the pixels as laid out).
//! - [`compressed`]: JPEG and PNG payloads decoded to RGB.
//! - [`ros2`]: `sensor_msgs/Image`, `sensor_msgs/CompressedImage` and `std_msgs/String` in
//!   CDR with the encapsulation header; rmw_zenoh keys, attachments and liveliness tokens; the
//!   zenoh-bridge-ros2dds key form.
//! - [`observations`]: tracks, masks, metrics, captions, decisions and alerts as JSON.
//!
//! A subscriber counts a message that fails to decode and skips it; nothing here panics on
//! input (the decoders are fuzzed).
#![warn(missing_docs)]

pub mod compressed;
pub mod frame;
pub mod observations;
pub mod raw;
pub mod ros2;

use bytes::Bytes;

pub use frame::{FrameLayout, LayoutError, PixelFormat, YuvMatrix};

/// Largest width or height a decoder accepts (guards size arithmetic against hostile headers).
pub const MAX_DIMENSION: u32 = 1 << 15;

/// What a source accepts from the wire, checked before anything is decoded or allocated: the
/// message's size, then the image's pixels as its header announces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest message, in bytes.
    pub max_message_bytes: usize,
    /// Largest image, in pixels (width × height).
    pub max_pixels: u64,
}

impl FrameLimits {
    /// Default: 128 MiB messages (an 8K RGB frame is 99.5 MB), 8K images (7680 × 4320).
    pub const DEFAULT: Self = Self { max_message_bytes: 128 << 20, max_pixels: 7680 * 4320 };

    /// Refuses a message of `len` bytes over the limit.
    pub fn check_message(&self, len: usize) -> CodecResult<()> {
        if len > self.max_message_bytes {
            return Err(CodecError::TooLarge(format!(
                "a message of {len} bytes is over the limit of {} (max_message_mb)",
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// Refuses an image of `width × height` over the limit.
    pub fn check_pixels(&self, width: u64, height: u64) -> CodecResult<()> {
        if width.saturating_mul(height) > self.max_pixels {
            return Err(CodecError::TooLarge(format!(
                "a {width}x{height} image is over the limit of {} pixels (max_pixels)",
                self.max_pixels
            )));
        }
        Ok(())
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

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
    /// A message or image over the source's limits.
    #[error("refused: {0}")]
    TooLarge(String),
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

/// How frames arrive on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
pub enum WireFormat {
    /// Ocellus raw frames ([`raw`]).
    #[serde(rename = "raw")]
    Raw,
    /// A JPEG per message.
    #[serde(rename = "jpeg")]
    Jpeg,
    /// A PNG per message.
    #[serde(rename = "png")]
    Png,
    /// ROS 2 `sensor_msgs/msg/Image` in CDR.
    #[serde(rename = "ros2/sensor_msgs/Image")]
    Ros2Image,
    /// ROS 2 `sensor_msgs/msg/CompressedImage` (JPEG or PNG) in CDR.
    #[serde(rename = "ros2/sensor_msgs/CompressedImage")]
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
}

/// What the transport knows about a message besides its payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// Sequence number to use when the payload carries none.
    pub seq: u64,
    /// Capture time to use when the payload carries none (ns since the epoch).
    pub capture_ns: i64,
}

/// A frame decoded from a message: its layout, its pixels, its sequence number and capture
/// time (from the payload where it carries them, else from the [`MessageInfo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedFrame {
    /// Where the pixels are.
    pub layout: FrameLayout,
    /// The pixels (sharing the payload's memory for raw frames and uncompressed images).
    pub pixels: Bytes,
    /// Sequence number.
    pub seq: u64,
    /// Capture time, ns since the epoch.
    pub capture_ns: i64,
    /// The ROS 2 header's `frame_id`, when the message has one.
    pub frame_id: Option<String>,
}

/// Decodes one message of `format`.
///
/// Raw frames keep their own sequence number and capture time; ROS 2 images take the capture
/// time from their header stamp; everything else takes `info`'s. Raw frames and uncompressed
/// ROS 2 images share `payload`'s memory (no copy). The layout is checked against the pixels.
pub fn decode_frame(format: WireFormat, payload: &Bytes, info: MessageInfo) -> CodecResult<DecodedFrame> {
    decode_frame_within(format, payload, info, &FrameLimits::DEFAULT)
}

/// [`decode_frame`] within `limits`: a message over the size limit is refused before it is
/// read, a compressed image whose header announces more pixels than allowed before it is
/// decompressed (an uncompressed one shares the payload's memory, or is copied within the
/// message's size).
pub fn decode_frame_within(
    format: WireFormat,
    payload: &Bytes,
    info: MessageInfo,
    limits: &FrameLimits,
) -> CodecResult<DecodedFrame> {
    limits.check_message(payload.len())?;
    let frame = match format {
        WireFormat::Raw => {
            let (header, pixels) = raw::decode(payload)?;
            limits.check_pixels(header.layout.width as u64, header.layout.height as u64)?;
            DecodedFrame {
                layout: header.layout,
                pixels,
                seq: header.seq,
                capture_ns: header.capture_ns,
                frame_id: None,
            }
        }
        WireFormat::Jpeg | WireFormat::Png => {
            let kind = if format == WireFormat::Jpeg { compressed::Kind::Jpeg } else { compressed::Kind::Png };
            let (layout, pixels) = compressed::decode_rgb_within(kind, payload, limits)?;
            DecodedFrame { layout, pixels, seq: info.seq, capture_ns: info.capture_ns, frame_id: None }
        }
        WireFormat::Ros2Image | WireFormat::Ros2CompressedImage => {
            let image = if format == WireFormat::Ros2Image {
                let image = ros2::decode_image(payload)?;
                limits.check_pixels(image.layout.width as u64, image.layout.height as u64)?;
                image
            } else {
                ros2::decode_compressed_image_within(payload, limits)?
            };
            DecodedFrame {
                layout: image.layout,
                pixels: image.pixels,
                seq: info.seq,
                capture_ns: image.stamp.map_or(info.capture_ns, |t| t.to_ns()),
                frame_id: Some(image.frame_id),
            }
        }
    };
    frame.layout.validate(frame.pixels.len()).map_err(|e| CodecError::Size(e.to_string()))?;
    Ok(frame)
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn limits_refuse_before_decoding() {
        let layout = FrameLayout::packed(PixelFormat::Rgb, 64, 48);
        let message = Bytes::from(raw::encode(&layout, &vec![7u8; 64 * 48 * 3], 3, 9).unwrap());
        let info = MessageInfo::default();
        assert!(decode_frame_within(WireFormat::Raw, &message, info, &FrameLimits::DEFAULT).is_ok());
        let few_pixels = FrameLimits { max_pixels: 64 * 48 - 1, ..FrameLimits::DEFAULT };
        let err = decode_frame_within(WireFormat::Raw, &message, info, &few_pixels).unwrap_err();
        assert!(matches!(&err, CodecError::TooLarge(m) if m.contains("64x48") && m.contains("max_pixels")), "{err}");
        let few_bytes = FrameLimits { max_message_bytes: message.len() - 1, ..FrameLimits::DEFAULT };
        let err = decode_frame_within(WireFormat::Raw, &message, info, &few_bytes).unwrap_err();
        assert!(matches!(&err, CodecError::TooLarge(m) if m.contains("max_message_mb")), "{err}");
        // A header that claims 100,000 × 100,000 over a few bytes is refused from the header.
        let mut claim = message.to_vec();
        claim[12..16].copy_from_slice(&100_000u32.to_le_bytes());
        claim[16..20].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(decode_frame_within(WireFormat::Raw, &Bytes::from(claim), info, &FrameLimits::DEFAULT).is_err());
    }
}
