//! Sinks: the Rerun recorder/streamer, zenoh (observations and frames, Ocellus keys or ROS 2)
//! and a null sink (benchmarks).

pub mod blueprint;
pub mod null;
pub mod rerun;
pub mod zenoh;

pub use self::blueprint::Layout;
pub use self::null::NullSink;
pub use self::rerun::{RerunSink, RerunTarget, SharedRecording};
pub use self::zenoh::{KeyStyle, ZenohSink, ZenohSinkSpec};
