//! Sources: GStreamer pipelines (an actix actor on its own arbiter), zenoh subscriptions (a
//! session thread and a decoder thread), Rerun recordings replayed (a thread) and a synthetic
//! frame generator (benchmarks and tests of the runtime alone).

pub mod gst;
pub mod replay;
pub mod synthetic;
pub mod zenoh;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::edge::EdgeSender;
use crate::frame::Packet;
use crate::metrics::StageMetrics;
use crate::stage::StageStatus;

pub use self::gst::{GstSource, GstSourceSpec, OutputFormat, Preset, Reconnect, V4l2Request};
pub use self::replay::{ReplaySpec, ReplayTiming};
pub use self::synthetic::SyntheticSpec;
pub use self::zenoh::ZenohSourceSpec;

/// The output side of a source, shared between its producer thread and its controller.
///
/// Taking the senders out ([`SourceOutputs::close`]) closes the downstream edges; pushes
/// after that are no-ops.
#[derive(Clone)]
pub struct SourceOutputs {
    /// The source's name.
    pub name: Arc<str>,
    senders: Arc<Mutex<Option<Vec<EdgeSender<Packet>>>>>,
    /// Frames emitted, corrupt frames skipped.
    pub metrics: Arc<StageMetrics>,
    /// Running, finished or failed.
    pub status: Arc<StageStatus>,
}

impl SourceOutputs {
    /// Outputs of source `name` into `senders`.
    pub fn new(name: Arc<str>, senders: Vec<EdgeSender<Packet>>) -> Self {
        Self {
            name,
            senders: Arc::new(Mutex::new(Some(senders))),
            metrics: Arc::new(StageMetrics::default()),
            status: Arc::new(StageStatus::default()),
        }
    }

    /// Sends `packet` to every subscriber; false once closed.
    pub fn emit(&self, packet: Packet) -> bool {
        let capture = packet.meta().map(|m| m.capture_ns);
        let guard = self.senders.lock();
        let Some(senders) = guard.as_ref() else { return false };
        // Push outside the record so that a blocked `block` edge does not skew latency.
        for sender in senders {
            sender.push(packet.clone());
        }
        drop(guard);
        self.metrics.record_output(capture, crate::now_ns());
        true
    }

    /// Whether the outputs are closed (end of stream, or the pipeline is shutting down).
    pub fn is_closed(&self) -> bool {
        self.senders.lock().is_none()
    }

    /// Closes the downstream edges (end of stream) and records how the source ended; only
    /// the first call counts.
    pub fn close(&self, error: Option<String>) {
        if self.senders.lock().take().is_none() {
            return;
        }
        match error {
            Some(e) => self.status.set_failed(e),
            None => self.status.set_finished(),
        }
    }
}
