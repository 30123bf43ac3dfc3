//! The agent's inbox: operator instructions and alt-texts, from a zenoh topic or from code,
//! in a bounded queue that drops the oldest message when full (counted). In a replay, the
//! inbox is the recording's: each frame gets the messages the agent acted on at that frame
//! when the recording was made ([`ocellus_io::recording::RecordedInbox`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ocellus_io::recording::RecordedInbox;
use ocellus_io::session::{SessionSpec, spawn_host};
use ocellus_runtime::message::FrameMeta;
pub use ocellus_runtime::message::InboxMessage;
use parking_lot::Mutex;

/// Messages kept (policy: drop the oldest).
pub const INBOX_DEPTH: usize = 32;

/// The bounded queue, or a recording's messages.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<VecDeque<InboxMessage>>,
    received: AtomicU64,
    dropped: AtomicU64,
    recorded: Option<RecordedInbox>,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a message, dropping the oldest when full.
    pub fn push(&self, message: InboxMessage) {
        let mut q = self.queue.lock();
        if q.len() >= INBOX_DEPTH {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(message);
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The inbox of a replay: each frame gets what `recorded` holds for it.
    pub fn replayed(recorded: RecordedInbox) -> Arc<Self> {
        Arc::new(Self { recorded: Some(recorded), ..Self::default() })
    }

    /// Takes the messages for frame `meta`: every queued one, oldest first (live), or those
    /// recorded at that frame (replay).
    pub fn take(&self, meta: &FrameMeta) -> Vec<InboxMessage> {
        match &self.recorded {
            Some(r) => r.messages.get(&(meta.camera.to_string(), meta.seq)).cloned().unwrap_or_default(),
            None => self.queue.lock().drain(..).collect(),
        }
    }

    /// Whether it replays a recording.
    pub fn is_replay(&self) -> bool {
        self.recorded.is_some()
    }

    /// (received, dropped).
    pub fn counts(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }
}

/// Where operator instructions and alt-texts come from on zenoh.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxSpec {
    /// Session.
    pub session: SessionSpec,
    /// Key of operator instructions (UTF-8 text).
    pub operator_key: Option<String>,
    /// Key of alt-texts (UTF-8 text; `<camera>: text` names a camera).
    pub alt_text_key: Option<String>,
}

/// Subscribes `inbox` to the keys of `spec` on a zenoh session living on its own runtime
/// thread (never on an actix arbiter). The thread ends when `stop` is set.
pub fn subscribe(
    spec: InboxSpec,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_host("agent-inbox".into(), move || async move {
        let session = match ocellus_io::session::open(&spec.session).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "agent inbox: cannot open the zenoh session");
                return;
            }
        };
        let subscribe = |key: &Option<String>| {
            let session = session.clone();
            let key = key.clone();
            async move {
                match key {
                    Some(k) => session.declare_subscriber(k).await.ok(),
                    None => None,
                }
            }
        };
        let operator = subscribe(&spec.operator_key).await;
        let alt = subscribe(&spec.alt_text_key).await;
        while !stop.load(Ordering::Acquire) {
            let recv = |s: &Option<
                zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
            >| { s.as_ref().and_then(|s| s.try_recv().ok().flatten()) };
            let mut got = false;
            if let Some(sample) = recv(&operator) {
                got = true;
                match ocellus_wire::ros2::text_payload(&sample.payload().to_bytes()) {
                    Some(text) => inbox.push(InboxMessage::Operator { text }),
                    None => tracing::warn!(
                        "agent inbox: an operator message is neither UTF-8 nor a std_msgs/String, skipped"
                    ),
                }
            }
            if let Some(sample) = recv(&alt) {
                got = true;
                if let Some(text) = ocellus_wire::ros2::text_payload(&sample.payload().to_bytes()) {
                    let (camera, text) = match text.split_once(": ") {
                        Some((c, t)) if !c.contains(' ') => (Some(c.to_owned()), t.to_owned()),
                        _ => (None, text),
                    };
                    inbox.push(InboxMessage::AltText { camera, text });
                }
            }
            if !got {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        drop((operator, alt));
        if let Err(e) = ocellus_io::session::close(session, &spec.session).await {
            tracing::warn!(error = %e, "agent inbox: closing the session");
        }
    })
}
