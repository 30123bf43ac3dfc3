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
    #[error(
        "GStreamer element {element}: {}{}",
        redact(message),
        debug.as_deref().map(|d| format!(" ({})", redact(d))).unwrap_or_default()
    )]
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
    /// A recording file could not be written any further (the disk is full, a file size limit
    /// was reached): what was written before stays readable. A restart cannot mend it.
    #[error(
        "the recording {} could not be written past {written} bytes: {reason}; what was written is readable",
        path.display()
    )]
    RecordingWrite {
        /// The recording.
        path: PathBuf,
        /// Bytes in the file.
        written: u64,
        /// Why, as far as can be told.
        reason: String,
    },
    /// One input cannot be used (counted and skipped).
    #[error("{0}")]
    BadInput(String),
}

/// The element name of an error in a launch description itself.
const LAUNCH_DESCRIPTION: &str = "launch description";

/// `text` with credentials hidden: the password of every `scheme://user:password@` URL and
/// the value of `user-pw=` (RTSP) and `password=` properties become `<redacted>`. Everything
/// Ocellus logs or reports about a source goes through it.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URLs: `://user:password@` → `://user:<redacted>@`.
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c.is_whitespace() || c == '"').unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@').and_then(|a| authority[..a].find(':').map(|c| (c, a))) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("<redacted>");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // Properties: `user-pw=value`, `password=value` (quoted or not).
    for key in ["user-pw=", "password="] {
        let mut redacted = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            let (head, tail) = rest.split_at(at + key.len());
            redacted.push_str(head);
            redacted.push_str("<redacted>");
            let end = if let Some(quoted) = tail.strip_prefix('"') {
                quoted.find('"').map_or(tail.len(), |e| e + 2)
            } else {
                tail.find(char::is_whitespace).unwrap_or(tail.len())
            };
            rest = &tail[end..];
        }
        redacted.push_str(rest);
        out = redacted;
    }
    out
}

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
            e @ IoError::RecordingWrite { .. } => Self::Fatal(e.to_string()),
            e if e.is_launch_error() => Self::Fatal(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// Result alias of the I/O crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

#[cfg(test)]
mod redaction_tests {
    use super::redact;

    #[test]
    fn credentials_are_hidden_and_nothing_else_changes() {
        assert_eq!(
            redact("rtspsrc location=\"rtsp://bob:hunter2@10.0.0.5:554/stream\" user-pw=\"s3cret word\" latency=200"),
            "rtspsrc location=\"rtsp://bob:<redacted>@10.0.0.5:554/stream\" user-pw=<redacted> latency=200"
        );
        assert_eq!(redact("rtsp://cam.local/stream user-pw=x"), "rtsp://cam.local/stream user-pw=<redacted>");
        assert_eq!(redact("https://user@host/p and password=abc"), "https://user@host/p and password=<redacted>");
        assert_eq!(redact("no secrets here"), "no secrets here");
    }
}
