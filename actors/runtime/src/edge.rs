//! Bounded edges between actors, each with a named policy and counters.
//!
//! | policy | when full | use |
//! |---|---|---|
//! | `latest` | replaces what is waiting: the receiver always gets the newest item | frames (default) |
//! | `queue { depth, drop = oldest }` | drops the oldest waiting item | sinks that want recent history |
//! | `queue { depth, drop = newest }` | drops the item being pushed | keep-first semantics |
//! | `block { depth }` | the producer waits for room | control messages, files, recordings |
//!
//! Memory is bounded by construction: an edge never holds more than its depth (1 for
//! `latest`). Every edge counts what was pushed, delivered and dropped, its current depth and
//! the largest depth it reached.
//!
//! A node with several inputs has one edge per input; their pushes all ring one [`Signal`],
//! so the node's thread waits on that signal and takes from whichever edge has an item.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

/// Depth of a `block` edge when the config does not say.
pub const DEFAULT_BLOCK_DEPTH: usize = 8;

/// Which item a full `queue` edge gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DropPolicy {
    /// Drop the oldest waiting item to make room.
    #[default]
    Oldest,
    /// Drop the item being pushed.
    Newest,
}

/// The named policy of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EdgePolicy {
    /// Keep only the newest item.
    #[default]
    Latest,
    /// Keep up to `depth` items, dropping per `drop` when full.
    Queue {
        /// Maximum number of waiting items (≥ 1).
        depth: usize,
        /// What to drop when full.
        drop: DropPolicy,
    },
    /// Keep up to `depth` items; the producer waits when full.
    Block {
        /// Maximum number of waiting items (≥ 1).
        depth: usize,
    },
}

/// How a configuration writes an edge: `{ policy = "queue", depth = 8, drop = "oldest" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// `latest` (keep the newest only), `queue` (up to `depth`, drop per `drop`) or `block`
    /// (up to `depth`; the producer waits).
    pub policy: PolicyName,
    /// Items the edge holds (`queue`, `block`).
    pub depth: Option<usize>,
    /// What a full `queue` drops: `oldest` (default) or `newest`.
    pub drop: Option<DropPolicy>,
}

/// The name of an edge policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Keep the newest item only.
    Latest,
    /// Keep up to `depth`, dropping per `drop`.
    Queue,
    /// Keep up to `depth`; the producer waits.
    Block,
}

impl EdgeConfig {
    /// The policy, or what is wrong with it (relative to the edge's table).
    pub fn policy(&self) -> Result<EdgePolicy, crate::kind::Issue> {
        use crate::kind::Issue;
        if self.depth == Some(0) {
            return Err(Issue::at("depth", "depth must be at least 1"));
        }
        match self.policy {
            PolicyName::Latest => {
                if let Some(key) = self.depth.map(|_| "depth").or(self.drop.map(|_| "drop")) {
                    return Err(Issue::at(
                        key,
                        "the `latest` policy keeps exactly one item and takes no depth or drop",
                    ));
                }
                Ok(EdgePolicy::Latest)
            }
            PolicyName::Queue => {
                let Some(depth) = self.depth else {
                    return Err(Issue::at("policy", "the `queue` policy needs a depth"));
                };
                Ok(EdgePolicy::Queue { depth, drop: self.drop.unwrap_or_default() })
            }
            PolicyName::Block => {
                if self.drop.is_some() {
                    return Err(Issue::at("drop", "the `block` policy never drops"));
                }
                Ok(EdgePolicy::Block { depth: self.depth.unwrap_or(DEFAULT_BLOCK_DEPTH) })
            }
        }
    }
}

impl EdgePolicy {
    /// Maximum number of items the edge holds.
    pub fn capacity(self) -> usize {
        match self {
            Self::Latest => 1,
            Self::Queue { depth, .. } | Self::Block { depth } => depth.max(1),
        }
    }
}

impl std::fmt::Display for EdgePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => write!(f, "latest"),
            Self::Queue { depth, drop } => write!(f, "queue(depth={depth}, drop={drop:?})"),
            Self::Block { depth } => write!(f, "block(depth={depth})"),
        }
    }
}

/// Counters of one edge, shared with the metrics reporter.
#[derive(Debug, Default)]
pub struct EdgeStats {
    pushed: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    depth: AtomicU64,
    max_depth: AtomicU64,
}

/// A copy of an edge's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeSnapshot {
    /// Items offered to the edge.
    pub pushed: u64,
    /// Items handed to the receiver.
    pub delivered: u64,
    /// Items dropped (by policy, or because the receiver is gone).
    pub dropped: u64,
    /// Items waiting now.
    pub depth: u64,
    /// Most items ever waiting at once.
    pub max_depth: u64,
}

impl EdgeStats {
    /// The counters now.
    pub fn snapshot(&self) -> EdgeSnapshot {
        EdgeSnapshot {
            pushed: self.pushed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            depth: self.depth.load(Ordering::Relaxed),
            max_depth: self.max_depth.load(Ordering::Relaxed),
        }
    }

    fn set_depth(&self, depth: usize) {
        let depth = depth as u64;
        self.depth.store(depth, Ordering::Relaxed);
        self.max_depth.fetch_max(depth, Ordering::Relaxed);
    }
}

/// What happened to a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued; nothing was dropped.
    Queued,
    /// Queued, and `n` older items were dropped to make room.
    QueuedDroppedOlder(usize),
    /// Dropped: the edge was full (`drop = newest`).
    DroppedNewest,
    /// Dropped: the receiver is gone.
    Disconnected,
}

struct State<T> {
    queue: VecDeque<T>,
    producers: usize,
    receiver_alive: bool,
}

struct Shared<T> {
    name: Arc<str>,
    policy: EdgePolicy,
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    stats: Arc<EdgeStats>,
    signal: Option<Arc<Signal>>,
}

/// Wakes a consumer of several edges: every push into (and the closing of) an edge created
/// with [`edge_with_signal`] rings it.
#[derive(Debug, Default)]
pub struct Signal {
    rings: Mutex<u64>,
    rung: Condvar,
}

impl Signal {
    /// A new signal.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// How often it has rung; pass it to [`Signal::wait_after`].
    pub fn rings(&self) -> u64 {
        *self.rings.lock()
    }

    fn ring(&self) {
        *self.rings.lock() += 1;
        self.rung.notify_all();
    }

    /// Waits until it has rung more than `seen` times, or `timeout` passed.
    pub fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut rings = self.rings.lock();
        let deadline = std::time::Instant::now() + timeout;
        while *rings == seen {
            if self.rung.wait_until(&mut rings, deadline).timed_out() {
                return;
            }
        }
    }
}

/// Creates an edge; clone the sender for each producer. The edge closes when every sender is
/// dropped (the receiver then drains what is left and sees the end).
pub fn edge<T>(name: impl Into<Arc<str>>, policy: EdgePolicy) -> (EdgeSender<T>, EdgeReceiver<T>) {
    make_edge(name.into(), policy, None)
}

/// An edge whose pushes (and closing) also ring `signal`.
pub fn edge_with_signal<T>(
    name: impl Into<Arc<str>>,
    policy: EdgePolicy,
    signal: Arc<Signal>,
) -> (EdgeSender<T>, EdgeReceiver<T>) {
    make_edge(name.into(), policy, Some(signal))
}

fn make_edge<T>(name: Arc<str>, policy: EdgePolicy, signal: Option<Arc<Signal>>) -> (EdgeSender<T>, EdgeReceiver<T>) {
    let shared = Arc::new(Shared {
        name,
        policy,
        signal,
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(policy.capacity()),
            producers: 1,
            receiver_alive: true,
        }),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
        stats: Arc::new(EdgeStats::default()),
    });
    (EdgeSender { shared: shared.clone() }, EdgeReceiver { shared, pushed_at_last_pop: 0 })
}

/// The producing end of an edge.
pub struct EdgeSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for EdgeSender<T> {
    fn clone(&self) -> Self {
        self.shared.state.lock().producers += 1;
        Self { shared: self.shared.clone() }
    }
}

impl<T> Drop for EdgeSender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.producers -= 1;
        if state.producers == 0 {
            self.shared.not_empty.notify_all();
            drop(state);
            if let Some(signal) = &self.shared.signal {
                signal.ring();
            }
        }
    }
}

impl<T> EdgeSender<T> {
    /// Offers `item` to the edge, applying its policy. Only `block` edges wait.
    pub fn push(&self, item: T) -> PushOutcome {
        let shared = &*self.shared;
        let stats = &shared.stats;
        stats.pushed.fetch_add(1, Ordering::Relaxed);
        let mut state = shared.state.lock();
        if !state.receiver_alive {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return PushOutcome::Disconnected;
        }
        let mut dropped = 0;
        match shared.policy {
            EdgePolicy::Latest => {
                dropped = state.queue.len();
                state.queue.clear();
            }
            EdgePolicy::Queue { depth, drop } => {
                if state.queue.len() >= depth.max(1) {
                    match drop {
                        DropPolicy::Oldest => {
                            state.queue.pop_front();
                            dropped = 1;
                        }
                        DropPolicy::Newest => {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            return PushOutcome::DroppedNewest;
                        }
                    }
                }
            }
            EdgePolicy::Block { depth } => {
                while state.queue.len() >= depth.max(1) && state.receiver_alive {
                    shared.not_full.wait(&mut state);
                }
                if !state.receiver_alive {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return PushOutcome::Disconnected;
                }
            }
        }
        state.queue.push_back(item);
        stats.set_depth(state.queue.len());
        drop(state);
        shared.not_empty.notify_one();
        if let Some(signal) = &shared.signal {
            signal.ring();
        }
        if dropped > 0 {
            stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            PushOutcome::QueuedDroppedOlder(dropped)
        } else {
            PushOutcome::Queued
        }
    }

    /// The edge's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The edge's counters.
    pub fn stats(&self) -> &Arc<EdgeStats> {
        &self.shared.stats
    }
}

/// The consuming end of an edge (one per edge).
pub struct EdgeReceiver<T> {
    shared: Arc<Shared<T>>,
    pushed_at_last_pop: u64,
}

impl<T> Drop for EdgeReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.receiver_alive = false;
        let left = state.queue.len() as u64;
        state.queue.clear();
        self.shared.stats.dropped.fetch_add(left, Ordering::Relaxed);
        self.shared.stats.set_depth(0);
        drop(state);
        self.shared.not_full.notify_all();
    }
}

/// Result of [`EdgeReceiver::pop_timeout`].
#[derive(Debug)]
pub enum Recv<T> {
    /// An item.
    Item(T),
    /// Nothing arrived in time.
    Timeout,
    /// Every sender is gone and the edge is drained.
    Closed,
}

impl<T> EdgeReceiver<T> {
    /// Waits for the next item; `None` once every sender is gone and the edge is drained.
    pub fn pop(&mut self) -> Option<T> {
        match self.pop_inner(None) {
            Recv::Item(item) => Some(item),
            Recv::Timeout | Recv::Closed => None,
        }
    }

    /// Waits at most `timeout` for the next item.
    pub fn pop_timeout(&mut self, timeout: Duration) -> Recv<T> {
        self.pop_inner(Some(timeout))
    }

    /// The next item if one is waiting ([`Recv::Timeout`] when none is).
    pub fn try_pop(&mut self) -> Recv<T> {
        self.pop_inner(Some(Duration::ZERO))
    }

    fn pop_inner(&mut self, timeout: Option<Duration>) -> Recv<T> {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if let Some(item) = state.queue.pop_front() {
                shared.stats.set_depth(state.queue.len());
                shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.pushed_at_last_pop = shared.stats.pushed.load(Ordering::Relaxed);
                drop(state);
                shared.not_full.notify_one();
                return Recv::Item(item);
            }
            if state.producers == 0 {
                return Recv::Closed;
            }
            match deadline {
                None => shared.not_empty.wait(&mut state),
                Some(d) => {
                    if shared.not_empty.wait_until(&mut state, d).timed_out() && state.queue.is_empty() {
                        return if state.producers == 0 { Recv::Closed } else { Recv::Timeout };
                    }
                }
            }
        }
    }

    /// How many items had been pushed into the edge when the last item was popped. With the
    /// `latest` policy and a source numbering its items from 0, the item popped is always
    /// number `pushed_at_last_pop() - 1`: the newest.
    pub fn pushed_at_last_pop(&self) -> u64 {
        self.pushed_at_last_pop
    }

    /// The edge's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The edge's policy.
    pub fn policy(&self) -> EdgePolicy {
        self.shared.policy
    }

    /// The edge's counters.
    pub fn stats(&self) -> &Arc<EdgeStats> {
        &self.shared.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_keeps_only_the_newest() {
        let (tx, mut rx) = edge::<u32>("e", EdgePolicy::Latest);
        assert_eq!(tx.push(1), PushOutcome::Queued);
        assert_eq!(tx.push(2), PushOutcome::QueuedDroppedOlder(1));
        assert_eq!(rx.pop(), Some(2));
        assert_eq!(rx.pushed_at_last_pop(), 2);
        drop(tx);
        assert_eq!(rx.pop(), None);
        let s = rx.stats().snapshot();
        assert_eq!((s.pushed, s.delivered, s.dropped, s.max_depth), (2, 1, 1, 1));
    }

    #[test]
    fn queue_drops_oldest_or_newest() {
        let (tx, mut rx) = edge::<u32>("e", EdgePolicy::Queue { depth: 2, drop: DropPolicy::Oldest });
        for i in 0..5 {
            tx.push(i);
        }
        drop(tx);
        assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(3), Some(4), None));
        let (tx, mut rx) = edge::<u32>("e", EdgePolicy::Queue { depth: 2, drop: DropPolicy::Newest });
        for i in 0..5 {
            tx.push(i);
        }
        assert_eq!(rx.stats().snapshot().dropped, 3);
        drop(tx);
        assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(0), Some(1), None));
    }

    #[test]
    fn block_waits_and_loses_nothing() {
        let (tx, mut rx) = edge::<u32>("e", EdgePolicy::Block { depth: 2 });
        let producer = std::thread::spawn(move || {
            for i in 0..100 {
                assert_eq!(tx.push(i), PushOutcome::Queued);
            }
        });
        let mut got = Vec::new();
        while let Some(v) = rx.pop() {
            got.push(v);
        }
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert!(rx.stats().snapshot().max_depth <= 2);
    }

    #[test]
    fn dropped_receiver_releases_blocked_producers() {
        let (tx, rx) = edge::<u32>("e", EdgePolicy::Block { depth: 1 });
        tx.push(0);
        let producer = std::thread::spawn(move || tx.push(1));
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(producer.join().unwrap(), PushOutcome::Disconnected);
    }

    #[test]
    fn signal_wakes_a_consumer_of_several_edges() {
        let signal = Signal::new();
        let (a, mut ra) = edge_with_signal::<u32>("a", EdgePolicy::Latest, signal.clone());
        let (b, mut rb) = edge_with_signal::<u32>("b", EdgePolicy::Latest, signal.clone());
        let seen = signal.rings();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            b.push(2);
            drop(a);
        });
        signal.wait_after(seen, Duration::from_secs(5));
        producer.join().unwrap();
        assert!(matches!(ra.try_pop(), Recv::Closed));
        assert!(matches!(rb.try_pop(), Recv::Item(2)));
        assert!(matches!(rb.try_pop(), Recv::Closed));
    }

    #[test]
    fn pop_timeout_and_close() {
        let (tx, mut rx) = edge::<u32>("e", EdgePolicy::Latest);
        assert!(matches!(rx.pop_timeout(Duration::from_millis(5)), Recv::Timeout));
        let tx2 = tx.clone();
        drop(tx);
        tx2.push(7);
        drop(tx2);
        assert!(matches!(rx.pop_timeout(Duration::from_millis(5)), Recv::Item(7)));
        assert!(matches!(rx.pop_timeout(Duration::from_millis(5)), Recv::Closed));
    }
}
