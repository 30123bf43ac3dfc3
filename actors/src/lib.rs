//! # ocellus-actors
//!
//! The Ocellus runtime and its actors.
//!
//! - **Data plane**: typed [`Packet`]s ([`Frame`]s, masks, metrics) travel over bounded
//!   [`edge`]s, each with a named [`EdgePolicy`] (`latest`, `queue { depth, drop }`, `block`)
//!   and counters (delivered, dropped, depth). actix mailboxes are not used for frames: they
//!   cannot drop the oldest entry, and `do_send` ignores their bound.
//! - **Stages** ([`stage`]): every processing actor and sink runs its [`Processor`] on a
//!   dedicated thread (model inference never runs on an actix arbiter), under a supervisor that
//!   restarts it with exponential backoff after an error or a panic.
//! - **Control plane** (actix): sources are actors on their own arbiters (the GStreamer bus is
//!   their stream), and the [`monitor::PipelineMonitor`] actor watches stages, reports metrics
//!   and stops the system when everything has drained or on Ctrl-C.
//! - **Transports** ([`transport`]): zenoh sources and sinks (sessions on their own runtime
//!   threads), raw/JPEG/PNG frames, ROS 2 messages in CDR, rmw_zenoh keys and discovery.
//!
//! [`runtime::Pipeline`] wires it all together.
#![warn(missing_docs)]

pub mod agent;
pub mod backbone;
pub mod control;
pub mod edge;
pub mod frame;
pub mod inpainter;
pub mod labeler;
pub mod metrics;
pub mod monitor;
pub mod motion;
pub mod pairing;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod stage;
pub mod tracker;
pub mod transport;

pub use edge::{DropPolicy, EdgePolicy, EdgeReceiver, EdgeSender, EdgeStats, edge};
pub use frame::{Features, Frame, FrameMeta, Inpainted, Mask, Packet, Track, TrackLabel, Tracks};
pub use runtime::{Pipeline, PipelineReport};
pub use stage::{Outputs, Processor, RestartPolicy};

/// Errors of the runtime and its actors.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    /// One input was malformed: it is counted and skipped, the actor keeps running.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The actor failed and needs a restart.
    #[error("{0}")]
    Failed(String),
    /// A GStreamer pipeline failed; `element` names the element that reported it.
    #[error("GStreamer element {element}: {message}{}", debug.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Gstreamer {
        /// Path of the element that failed (or the pipeline).
        element: String,
        /// GStreamer's message.
        message: String,
        /// GStreamer's debug details.
        debug: Option<String>,
    },
    /// A model failed.
    #[error(transparent)]
    Perception(#[from] ocellus_perception::PerceptionError),
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] ocellus_kernels::KernelError),
    /// Rerun failed.
    #[error("rerun: {0}")]
    Rerun(String),
    /// A pipeline description is inconsistent (unknown stage, cycle, ...).
    #[error("pipeline: {0}")]
    Pipeline(String),
}

/// Result alias of the actors crate.
pub type Result<T, E = ActorError> = std::result::Result<T, E>;

/// Nanoseconds since the Unix epoch, now (the clock capture times are expressed in).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
