//! The agent's inbox: operator instructions and alt-texts, from a zenoh topic or from code,
//! in a bounded queue that drops the oldest message when full (counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::transport::{SessionSpec, spawn_host};

/// Messages kept (policy: drop the oldest).
pub const INBOX_DEPTH: usize = 32;

/// What arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxMessage {
    /// An operator's instruction.
    Operator(String),
    /// An upstream alt-text for a camera (all cameras when `None`).
    AltText {
        /// Camera.
        camera: Option<String>,
        /// The text.
        text: String,
    },
}

/// The bounded queue.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<VecDeque<InboxMessage>>,
    received: AtomicU64,
    dropped: AtomicU64,
    closed: AtomicBool,
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

    /// Takes every message, oldest first.
    pub fn drain(&self) -> Vec<InboxMessage> {
        self.queue.lock().drain(..).collect()
    }

    /// (received, dropped).
    pub fn counts(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }

    /// Stops the zenoh subscription feeding it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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
/// thread (never on an actix arbiter). The thread ends when the inbox is closed.
pub fn subscribe(spec: InboxSpec, inbox: Arc<Inbox>) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_host("agent-inbox".into(), move || async move {
        let config = match spec.session.to_config() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "agent inbox: bad zenoh config");
                return;
            }
        };
        let session = match zenoh::open(config).await {
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
        while !inbox.closed.load(Ordering::Acquire) {
            let recv = |s: &Option<
                zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
            >| { s.as_ref().and_then(|s| s.try_recv().ok().flatten()) };
            let mut got = false;
            if let Some(sample) = recv(&operator) {
                got = true;
                match String::from_utf8(sample.payload().to_bytes().to_vec()) {
                    Ok(text) => inbox.push(InboxMessage::Operator(text)),
                    Err(_) => tracing::warn!("agent inbox: an operator message is not UTF-8, skipped"),
                }
            }
            if let Some(sample) = recv(&alt) {
                got = true;
                if let Ok(text) = String::from_utf8(sample.payload().to_bytes().to_vec()) {
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
        if let Err(e) = session.close().await {
            tracing::warn!(error = %e, "agent inbox: closing the session");
        }
    })
}
