//! Messages of the data plane.

use std::sync::Arc;

use bytes::Bytes;
pub use ocellus_kernels::{FrameLayout, PixelFormat};

/// Identity of a frame, carried by every result derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMeta {
    /// Camera (source) name.
    pub camera: Arc<str>,
    /// Per-camera sequence number, from 0.
    pub seq: u64,
    /// Capture time, nanoseconds since the Unix epoch (sensor clock mapped to wall time).
    pub capture_ns: i64,
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
    pub fn new(meta: FrameMeta, layout: FrameLayout, pixels: Bytes) -> Result<Self, ocellus_kernels::KernelError> {
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

/// A frame with tracked objects removed (the inpainter's output): what is shown and
/// published instead of the raw frame where privacy matters.
#[derive(Debug, Clone)]
pub struct Inpainted {
    /// The frame, inpainted (packed RGB, the source's size).
    pub frame: Frame,
    /// The tracks removed from it (empty: the frame unchanged).
    pub removed: Vec<u32>,
}

/// A periodic metrics report of one stage.
#[derive(Debug, Clone)]
pub struct MetricsReport {
    /// The stage.
    pub stage: Arc<str>,
    /// When the report was taken (ns since the epoch).
    pub at_ns: i64,
    /// The figures.
    pub snapshot: crate::metrics::MetricsSnapshot,
}

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
    /// A metrics report.
    Metrics(MetricsReport),
    /// A caption, decision, alert or published text of the agent.
    Agent(Arc<crate::agent::AgentPacket>),
    /// A frame with tracks inpainted away.
    Inpainted(Inpainted),
}

impl Packet {
    /// The frame this packet derives from, if any.
    pub fn meta(&self) -> Option<&FrameMeta> {
        match self {
            Self::Frame(f) => Some(&f.meta),
            Self::Mask(m) => Some(&m.meta),
            Self::Features(f) => Some(&f.meta),
            Self::Tracks(t) => Some(&t.meta),
            Self::Metrics(_) => None,
            Self::Agent(a) => Some(&a.meta),
            Self::Inpainted(i) => Some(&i.frame.meta),
        }
    }
}
