//! Sinks: the Rerun recorder/streamer and a null sink (benchmarks).

pub mod null;
pub mod rerun;

pub use self::null::NullSink;
pub use self::rerun::{RerunSink, RerunTarget};
