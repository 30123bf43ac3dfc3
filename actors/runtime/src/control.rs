//! Control channels: commands from one node to another (the agent's `track` tool to the
//! tracker), outside the data edges. Each channel is bounded (policy: refuse when full; the
//! sender reports it and it is counted). The receiving side is shared, so a stage rebuilt by
//! its supervisor goes on reading the same channel. What travels on a channel is the
//! receiving node's own command type; the runtime knows none of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    capacity: usize,
    sent: AtomicU64,
    refused: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

/// The sending side (cloneable).
pub struct ControlSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ControlSender<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for ControlSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSender").field("capacity", &self.shared.capacity).finish()
    }
}

/// The receiving side (cloneable: a restarted processor takes over the same queue).
pub struct ControlReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ControlReceiver<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for ControlReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlReceiver").field("capacity", &self.shared.capacity).finish()
    }
}

impl<T> PartialEq for ControlReceiver<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A bounded control channel (policy: refuse when full).
pub fn control_channel<T>(capacity: usize) -> (ControlSender<T>, ControlReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::with_capacity(capacity)),
        capacity: capacity.max(1),
        sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    (ControlSender { shared: shared.clone() }, ControlReceiver { shared })
}

impl<T> ControlSender<T> {
    /// Queues `command`; gives it back when the channel is full.
    pub fn send(&self, command: T) -> Result<(), T> {
        let mut q = self.shared.queue.lock();
        if q.len() >= self.shared.capacity {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(command);
        }
        q.push_back(command);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// (sent, refused) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.sent.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }

    /// Whether the receiving actor has finished (feeders stop).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<T> ControlReceiver<T> {
    /// Takes every queued command, oldest first.
    pub fn drain(&self) -> Vec<T> {
        self.shared.queue.lock().drain(..).collect()
    }

    /// Marks the channel finished: feeders (a zenoh prompt subscription) stop.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}
