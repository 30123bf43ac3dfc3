//! The zenoh source: frames from a zenoh key expression (raw, JPEG, PNG, ROS 2 images).
//!
//! ```text
//! zenoh session (thread zenoh:<name>, multi-thread tokio runtime)
//!   subscriber callback ──intake edge (named policy, counted)──► decoder thread source:<name>
//!                                                                 decode, count and skip bad
//!                                                                 messages ──► SourceOutputs
//! ```
//!
//! The session is opened and closed on its own thread (never on an actix arbiter, where
//! zenoh's blocking paths panic). The subscriber's callback only pushes the sample into the
//! bounded intake edge (`latest` by default: a slow pipeline sees the newest frame; `block`
//! makes zenoh wait, which with a `block` congestion-controlled publisher loses nothing).
//! Decoding (JPEG, PNG, CDR) runs on the decoder thread. A message that does not decode is
//! counted (the source's `skipped`) and skipped. The stream ends after `frames` frames, after
//! `idle_timeout` without a message, or when the pipeline closes the source (Ctrl-C).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{info, warn};
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::sample::Sample;

use super::SourceOutputs;
use crate::edge::{EdgePolicy, Recv, edge};
use crate::frame::Packet;
use crate::now_ns;
use crate::transport::{self, MessageInfo, SessionSpec, WireFormat, ros2};

/// What a zenoh source subscribes to and how it reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZenohSourceSpec {
    /// The session.
    pub session: SessionSpec,
    /// Key expression subscribed to.
    pub key: String,
    /// How frames are encoded.
    pub format: WireFormat,
    /// The edge between zenoh's callback and the decoder.
    pub intake: EdgePolicy,
    /// End after this many frames.
    pub frames: Option<u64>,
    /// End after this long without a message.
    pub idle_timeout: Option<Duration>,
}

/// A zenoh payload as [`Bytes`], without a copy when it is one contiguous slice (always
/// for shared memory and for messages that were not fragmented).
pub fn payload_bytes(payload: &ZBytes) -> Bytes {
    struct Contiguous(ZBytes);
    impl AsRef<[u8]> for Contiguous {
        fn as_ref(&self) -> &[u8] {
            self.0.slices().next().unwrap_or(&[])
        }
    }
    if payload.slices().count() == 1 {
        Bytes::from_owner(Contiguous(payload.clone()))
    } else {
        Bytes::from(payload.to_bytes().into_owned())
    }
}

/// Capture time of a sample without one in its payload: the rmw_zenoh attachment's source
/// time, else the zenoh timestamp, else now.
fn sample_time(sample: &Sample) -> i64 {
    if let Some(a) = sample.attachment().and_then(|a| ros2::Attachment::decode(&a.to_bytes()).ok()) {
        return a.source_timestamp;
    }
    sample.timestamp().map_or_else(now_ns, transport::timestamp_ns)
}

/// Starts the source: its session thread and its decoder thread.
pub fn spawn(spec: ZenohSourceSpec, outputs: SourceOutputs) -> std::io::Result<()> {
    let name = outputs.name.clone();
    let (tx, mut rx) = edge::<Sample>(format!("{name}.zenoh"), spec.intake);
    outputs.metrics.attach_input(rx.stats().clone());
    let error: Arc<Mutex<Option<String>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    let (session, key, host_error) = (spec.session.clone(), spec.key.clone(), error.clone());
    let host = transport::spawn_host(format!("zenoh:{name}"), move || async move {
        let config = match session.to_config() {
            Ok(c) => c,
            Err(e) => {
                *host_error.lock() = Some(e);
                return;
            }
        };
        let session = match zenoh::open(config).await {
            Ok(s) => s,
            Err(e) => {
                *host_error.lock() = Some(format!("opening the zenoh session: {e}"));
                return;
            }
        };
        match session
            .declare_subscriber(&key)
            .callback(move |sample| {
                tx.push(sample);
            })
            .await
        {
            Ok(subscriber) => {
                info!(%key, zid = %session.zid(), "zenoh source subscribed");
                let _ = stop_rx.await;
                if let Err(e) = subscriber.undeclare().await {
                    warn!(error = %e, "undeclaring the zenoh subscriber");
                }
            }
            Err(e) => *host_error.lock() = Some(format!("subscribing to {key:?}: {e}")),
        }
        if let Err(e) = session.close().await {
            warn!(error = %e, "closing the zenoh session");
        }
    })?;

    std::thread::Builder::new().name(format!("source:{name}")).spawn(move || {
        let started = Instant::now();
        let mut last_message = started;
        let mut emitted = 0u64;
        let mut skipped = 0u64;
        while !outputs.is_closed() && spec.frames.is_none_or(|n| emitted < n) {
            let sample = match rx.pop_timeout(Duration::from_millis(50)) {
                Recv::Item(sample) => sample,
                Recv::Timeout => {
                    if spec.idle_timeout.is_some_and(|t| last_message.elapsed() >= t) {
                        info!(source = %outputs.name, "no message for the idle timeout: end of stream");
                        break;
                    }
                    continue;
                }
                Recv::Closed => break,
            };
            last_message = Instant::now();
            let info = MessageInfo { seq: emitted, capture_ns: sample_time(&sample) };
            let payload = payload_bytes(sample.payload());
            match transport::decode_frame(spec.format, &payload, &outputs.name, info) {
                Ok(frame) => {
                    if !outputs.emit(Packet::Frame(frame)) {
                        break;
                    }
                    emitted += 1;
                }
                Err(e) => {
                    outputs.metrics.record_skipped();
                    skipped += 1;
                    // The first few, then one in a hundred: a bad publisher must not flood the log.
                    if skipped <= 5 || skipped.is_multiple_of(100) {
                        warn!(source = %outputs.name, key = %sample.key_expr(), error = %e, skipped, "skipped a message");
                    }
                }
            }
        }
        drop(rx);
        let _ = stop_tx.send(());
        if host.join().is_err() {
            warn!(source = %outputs.name, "the zenoh session thread panicked");
        }
        let error = error.lock().take();
        if let Some(e) = &error {
            warn!(source = %outputs.name, error = %e, "zenoh source failed");
        }
        outputs.close(error);
    })?;
    Ok(())
}

/// Waits until `publisher` has a matching subscriber, at most `timeout` (tests and tools;
/// never on an actix arbiter).
pub fn wait_for_subscriber(publisher: &zenoh::pubsub::Publisher<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if publisher.matching_status().wait().is_ok_and(|s| s.matching()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
