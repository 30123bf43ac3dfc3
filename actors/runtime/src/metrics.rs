//! Per-node metrics: throughput, capture-to-output latency percentiles, drops, failures.
//!
//! Each node owns an `Arc<StageMetrics>`; the node's thread records, the monitor reads. The
//! latency window is a fixed ring, so memory does not grow with the length of a run. A node's
//! input figures add up its inputs' edges.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::edge::{EdgeSnapshot, EdgeStats};

/// Number of recent outputs kept for the fps and latency figures.
pub const WINDOW: usize = 1024;
/// Outputs older than this do not count towards fps.
const FPS_HORIZON_NS: i64 = 2_000_000_000;

/// Counters and a latency window of one stage.
#[derive(Debug, Default)]
pub struct StageMetrics {
    received: AtomicU64,
    emitted: AtomicU64,
    skipped: AtomicU64,
    failures: AtomicU64,
    restarts: AtomicU64,
    stalls: AtomicU64,
    unpaired: AtomicU64,
    /// (output time, capture-to-output latency), both in ns.
    window: Mutex<VecDeque<(i64, i64)>>,
    inputs: Mutex<Vec<std::sync::Arc<EdgeStats>>>,
}

/// A copy of a stage's figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// Inputs taken from the edge.
    pub received: u64,
    /// Outputs emitted (or, for sinks, inputs handled).
    pub emitted: u64,
    /// Malformed inputs counted and skipped.
    pub skipped: u64,
    /// Errors and panics of the processor.
    pub failures: u64,
    /// Restarts by the supervisor (for a source: reconnections).
    pub restarts: u64,
    /// Sources: times the stall watchdog saw no frame for too long.
    pub stalls: u64,
    /// Joined inputs: messages whose partner never came (dropped, or arrived too late).
    pub unpaired: u64,
    /// Outputs per second over the last two seconds.
    pub fps: f64,
    /// Median capture-to-output latency over the window, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile capture-to-output latency over the window, ms.
    pub latency_p99_ms: f64,
    /// The input edges' counters, added up (drops among them).
    pub input: EdgeSnapshot,
}

impl StageMetrics {
    /// Attaches an input edge whose counters are reported with this node.
    pub fn attach_input(&self, stats: std::sync::Arc<EdgeStats>) {
        self.inputs.lock().push(stats);
    }

    /// One input taken.
    pub fn record_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// One output at `now_ns` for a frame captured at `capture_ns`.
    pub fn record_output(&self, capture_ns: Option<i64>, now_ns: i64) {
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let mut window = self.window.lock();
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back((now_ns, capture_ns.map_or(-1, |c| now_ns - c)));
    }

    /// One malformed input skipped.
    pub fn record_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// One failure of the processor.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One restart by the supervisor.
    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// One stall of a source (no frame for too long).
    pub fn record_stall(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` joined messages dropped without their partner.
    pub fn record_unpaired(&self, n: u64) {
        self.unpaired.fetch_add(n, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self, now_ns: i64) -> MetricsSnapshot {
        let (fps, p50, p99) = {
            let window = self.window.lock();
            let recent = window.iter().filter(|(t, _)| now_ns - t <= FPS_HORIZON_NS).count();
            let span_ns = window.iter().find(|(t, _)| now_ns - t <= FPS_HORIZON_NS).map_or(0, |(t, _)| now_ns - t);
            let fps = if recent > 1 && span_ns > 0 { (recent - 1) as f64 / (span_ns as f64 * 1e-9) } else { 0.0 };
            let mut latencies: Vec<i64> = window.iter().map(|&(_, l)| l).filter(|&l| l >= 0).collect();
            latencies.sort_unstable();
            (fps, percentile_ms(&latencies, 0.50), percentile_ms(&latencies, 0.99))
        };
        MetricsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            unpaired: self.unpaired.load(Ordering::Relaxed),
            fps,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            input: self.inputs.lock().iter().map(|s| s.snapshot()).fold(EdgeSnapshot::default(), |a, b| EdgeSnapshot {
                pushed: a.pushed + b.pushed,
                delivered: a.delivered + b.delivered,
                dropped: a.dropped + b.dropped,
                depth: a.depth + b.depth,
                max_depth: a.max_depth.max(b.max_depth),
            }),
        }
    }
}

/// Nearest-rank percentile of sorted nanosecond values, in ms (0 when empty).
fn percentile_ms(sorted_ns: &[i64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 * 1e-6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_fps() {
        let m = StageMetrics::default();
        let t0 = 10_000_000_000;
        for i in 0..100 {
            // one output every 10 ms, latency i ms
            m.record_output(Some(t0 + i * 10_000_000 - i * 1_000_000), t0 + i * 10_000_000);
        }
        let s = m.snapshot(t0 + 99 * 10_000_000);
        assert_eq!(s.emitted, 100);
        assert!((s.fps - 100.0).abs() < 1e-6, "{}", s.fps);
        assert!((s.latency_p50_ms - 49.0).abs() < 1e-9);
        assert!((s.latency_p99_ms - 98.0).abs() < 1e-9);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn window_is_bounded() {
        let m = StageMetrics::default();
        for i in 0..(3 * WINDOW as i64) {
            m.record_output(None, i);
        }
        assert_eq!(m.window.lock().len(), WINDOW);
    }
}
