//! # ocellus-io
//!
//! Where frames come from and where results go.
//!
//! - [`source`]: GStreamer (cameras, files, RTSP; reconnection and a stall watchdog), zenoh
//!   (raw frames, JPEG/PNG, ROS 2 images over rmw_zenoh), replays of Rerun recordings, and a
//!   synthetic source.
//! - [`sink`]: Rerun (`.rrd`, a live viewer, a gRPC server), zenoh (JSON observations and
//!   frames, in Ocellus's keys or as a ROS 2 node), null.
//! - [`recording`]: every Rerun entity path and timeline Ocellus uses, and reading `.rrd`
//!   files back.
//! - [`session`]: zenoh sessions (configuration, the one place they open).
//! - [`kinds`]: the configuration of sources and sinks (what a pipeline file says of them).
#![warn(missing_docs)]

pub mod kinds;
pub mod recording;
pub mod session;
pub mod sink;
pub mod source;

use std::path::PathBuf;

use ocellus_runtime::RuntimeError;

/// Errors of sources and sinks.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
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
    /// Rerun failed.
    #[error("rerun: {0}")]
    Rerun(String),
    /// A recording cannot be read.
    #[error("{path}: {message}")]
    Recording {
        /// The recording.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// One input cannot be used (counted and skipped).
    #[error("{0}")]
    BadInput(String),
}

/// The element name of an error in a launch description itself.
const LAUNCH_DESCRIPTION: &str = "launch description";

impl IoError {
    /// Whether this is a launch description that does not parse (it never will).
    pub fn is_launch_error(&self) -> bool {
        matches!(self, Self::Gstreamer { element, .. } if element == LAUNCH_DESCRIPTION)
    }
}

impl From<IoError> for RuntimeError {
    fn from(e: IoError) -> Self {
        match e {
            IoError::BadInput(m) => Self::BadInput(m),
            e if e.is_launch_error() => Self::Fatal(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Result alias of the I/O crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
