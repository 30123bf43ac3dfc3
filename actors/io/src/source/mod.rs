//! Sources: GStreamer pipelines (cameras, files, RTSP), zenoh subscriptions (raw frames,
//! JPEG/PNG, ROS 2 images), Rerun recordings replayed, and a synthetic frame generator
//! (benchmarks and tests of the runtime alone). Each is a [`ocellus_runtime::Source`] on a
//! thread of its own, supervised like a stage.

pub mod gst;
pub mod replay;
pub mod synthetic;
pub mod zenoh;

pub use self::gst::{GstSource, GstSourceSpec, OutputFormat, Preset, Reconnect, V4l2Request};
pub use self::replay::{ReplayClock, ReplaySource, ReplaySpec, ReplayTiming};
pub use self::synthetic::{SyntheticSource, SyntheticSpec};
pub use self::zenoh::{ZenohSource, ZenohSourceSpec};
