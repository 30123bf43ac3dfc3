//! # ocellus-runtime
//!
//! The core of Ocellus: what nodes exchange and how they run. It knows no concrete source,
//! sink or actor.
//!
//! - [`message`]: frames, masks, features, tracks, inpainted frames, agent events, metrics;
//!   [`PortType`] names each.
//! - [`port`]: typed, named ports; a kind declares its inputs and outputs, a pipeline wires
//!   them, and a wire of the wrong type or an unwired input is refused before anything runs.
//! - [`edge`]: bounded edges with named policies (`latest`, `queue { depth, drop }`, `block`)
//!   and counters; never unbounded.
//! - [`node`]: [`Stage`]s and [`Source`]s with one lifecycle (`start` / `process` / `stop`) on
//!   threads of their own, supervised alike (errors and panics caught, restarts with
//!   backoff, a node that gives up closes its outputs so the pipeline still drains).
//! - [`join`]: a stage reading frames and the results derived from them gets each pair
//!   together (by camera and sequence number).
//! - [`clock`]: wall time live, recorded capture time in replays.
//! - [`control`]: bounded command channels between nodes (the agent's tools).
//! - [`kind`]: how a node kind owns its configuration and builds its node.
//! - [`pipeline`]: the builder, the typed validation, the run; [`monitor`]: metrics, Ctrl-C
//!   and completion on an actix actor.
#![warn(missing_docs)]

pub mod clock;
pub mod control;
pub mod edge;
pub mod join;
pub mod kind;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod pipeline;
pub mod port;

pub use clock::Clock;
pub use edge::{DropPolicy, EdgePolicy, EdgeReceiver, EdgeSender, EdgeStats, edge};
pub use message::{
    ActionScore, Actions, AgentEvent, AgentOutput, Features, Frame, FrameMeta, Inpainted, Mask, MaskKind, Packet,
    PersonActions, PersonPose, PortType, Poses, Track, TrackLabel, TrackOrigin, Tracks,
};
pub use monitor::StopHandle;
pub use node::{Context, Flow, Input, RestartPolicy, Source, SourceContext, Stage, source_factory, stage_factory};
pub use pipeline::{Pipeline, PipelineReport};
pub use port::{InputPort, Join, OutputPort, Ports, Upstream, Wire};

/// Errors of the runtime and its nodes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// One input was malformed: it is counted and skipped, the node keeps running.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The node failed and needs a restart.
    #[error("{0}")]
    Failed(String),
    /// The node failed in a way a restart cannot mend (a launch description that does not
    /// parse, a file source that broke): it gives up at once.
    #[error("{0}")]
    Fatal(String),
    /// A pipeline description is inconsistent (unknown node, wrong port type, cycle, ...).
    #[error("pipeline: {0}")]
    Pipeline(String),
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] ocellus_kernels::KernelError),
    /// A frame's buffer does not hold its layout.
    #[error(transparent)]
    Layout(#[from] ocellus_wire::LayoutError),
    /// A codec failed.
    #[error(transparent)]
    Codec(#[from] ocellus_wire::CodecError),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result alias of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Nanoseconds since the Unix epoch, now (the clock capture times are expressed in).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
