//! The pipeline monitor: an actix actor that watches every source and stage, reports their
//! metrics periodically (tracing, and the metrics edge into a sink such as Rerun), turns
//! Ctrl-C into a graceful end of stream, and stops the actix system once everything has
//! drained. actix carries this control plane only; frames travel on bounded edges between
//! node threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use crate::edge::EdgeSender;
use crate::message::{MetricsReport, Packet};
use crate::metrics::StageMetrics;
use crate::node::{NodeState, NodeStatus, SourceOutputs};
use crate::now_ns;

/// How often the monitor checks whether the pipeline has drained.
const POLL: Duration = Duration::from_millis(20);

/// Whether a watched node produces frames or processes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A source.
    Source,
    /// A processing actor or a sink.
    Stage,
}

/// One node the monitor watches.
#[derive(Clone)]
pub struct Watched {
    /// Node name.
    pub name: Arc<str>,
    /// Source or stage.
    pub kind: NodeKind,
    /// Its metrics.
    pub metrics: Arc<StageMetrics>,
    /// Its state.
    pub status: Arc<NodeStatus>,
}

/// Asks a running pipeline to shut down from any thread (Ctrl-C goes through it too): the
/// first [`StopHandle::stop`] ends every source's stream (the pipeline drains, recordings are
/// flushed), a second one closes the sources at once. Taken with
/// [`Pipeline::stop_handle`](crate::Pipeline::stop_handle) before the pipeline runs.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicU32>);

impl StopHandle {
    /// Requests the shutdown (once more).
    pub fn stop(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn requests(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// The monitor actor.
pub struct PipelineMonitor {
    watched: Vec<Watched>,
    sources: Vec<SourceOutputs>,
    metrics_out: Option<EdgeSender<Packet>>,
    metrics_every: Duration,
    stop: StopHandle,
    /// Shutdown requests acted on so far.
    stops_handled: u32,
}

impl PipelineMonitor {
    /// A monitor of `watched`; `metrics_out` receives a report per node every `metrics_every`.
    pub fn new(
        watched: Vec<Watched>,
        sources: Vec<SourceOutputs>,
        metrics_out: Option<EdgeSender<Packet>>,
        metrics_every: Duration,
        stop: StopHandle,
    ) -> Self {
        Self { watched, sources, metrics_out, metrics_every, stop, stops_handled: 0 }
    }

    /// One more shutdown request: the first ends the sources' streams, later ones close them.
    fn shut_down(&mut self) {
        self.stops_handled += 1;
        let first = self.stops_handled == 1;
        if first {
            info!("shutting down: ending every source's stream (again to stop at once)");
        }
        for source in &self.sources {
            if first {
                source.control.request_end();
            } else {
                warn!(source = %source.name, "closing the source now");
                source.close(None);
            }
        }
    }

    fn report(&self) {
        let at_ns = now_ns();
        for w in &self.watched {
            let s = w.metrics.snapshot(at_ns);
            info!(
                target: "ocellus::metrics",
                stage = %w.name,
                fps = format_args!("{:.1}", s.fps),
                latency_p50_ms = format_args!("{:.2}", s.latency_p50_ms),
                latency_p99_ms = format_args!("{:.2}", s.latency_p99_ms),
                emitted = s.emitted,
                dropped = s.input.dropped,
                depth = s.input.depth,
                skipped = s.skipped,
                restarts = s.restarts,
                stalls = s.stalls,
            );
            if let Some(out) = &self.metrics_out {
                out.push(Packet::Metrics(MetricsReport { stage: w.name.clone(), at_ns, snapshot: s }));
            }
        }
    }

    fn poll(&mut self, _ctx: &mut Context<Self>) {
        while self.stops_handled < self.stop.requests() {
            self.shut_down();
        }
        let running =
            |kind: NodeKind| self.watched.iter().any(|w| w.kind == kind && w.status.state() == NodeState::Running);
        if self.metrics_out.is_some() && !running(NodeKind::Source) {
            // Sources are done: one last report, then let the metrics edge close so that its
            // sink can drain and finish.
            self.report();
            self.metrics_out = None;
        }
        if !running(NodeKind::Source) && !running(NodeKind::Stage) {
            info!("pipeline drained");
            System::current().stop();
        }
    }
}

impl Actor for PipelineMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(POLL, Self::poll);
        ctx.run_interval(self.metrics_every, |this, _| this.report());
    }
}
