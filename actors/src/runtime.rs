//! Wiring and running a pipeline: sources, stages, edges, the monitor, the actix system.
//!
//! ```text
//! source (arbiter / thread) ──edge(policy)──► stage thread ──edge(policy)──► sink thread
//!                                   ▲ one edge per stage; every upstream holds a sender
//! PipelineMonitor (actix, system arbiter): status polling, metrics, Ctrl-C, completion
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{error, warn};

use crate::edge::{EdgePolicy, EdgeSender, edge};
use crate::frame::Packet;
use crate::metrics::MetricsSnapshot;
use crate::monitor::{NodeKind, PipelineMonitor, Shutdown, SourceControl, Watched};
use crate::source::{GstSourceSpec, ReplaySpec, SourceOutputs, SyntheticSpec, ZenohSourceSpec, gst, replay, synthetic};
use crate::stage::{ProcessorFactory, RestartPolicy, StageState, spawn_stage};
use crate::{ActorError, Result, now_ns};

/// What a source node runs.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A GStreamer pipeline.
    Gstreamer(GstSourceSpec),
    /// Synthetic frames (benchmarks, tests of the runtime alone).
    Synthetic(SyntheticSpec),
    /// Frames from a zenoh key expression.
    Zenoh(ZenohSourceSpec),
    /// One camera's images read back from a Rerun recording.
    Replay(ReplaySpec),
}

struct SourceDecl {
    name: Arc<str>,
    kind: SourceKind,
}

struct StageDecl {
    name: Arc<str>,
    inputs: Vec<Arc<str>>,
    edge: EdgePolicy,
    factory: ProcessorFactory,
}

/// A pipeline under construction.
pub struct Pipeline {
    sources: Vec<SourceDecl>,
    stages: Vec<StageDecl>,
    restart: RestartPolicy,
    metrics_every: Duration,
    metrics_to: Option<Arc<str>>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            stages: Vec::new(),
            restart: RestartPolicy::default(),
            metrics_every: Duration::from_secs(1),
            metrics_to: None,
        }
    }
}

/// How one node ended, and its figures.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Node name.
    pub name: Arc<str>,
    /// Source or stage.
    pub kind: NodeKind,
    /// Finished or failed.
    pub state: StageState,
    /// Why it failed.
    pub error: Option<String>,
    /// Its final metrics.
    pub metrics: MetricsSnapshot,
}

/// How a pipeline run ended.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    /// Every node, sources first, in declaration order.
    pub nodes: Vec<NodeReport>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl PipelineReport {
    /// The report of node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeReport> {
        self.nodes.iter().find(|n| &*n.name == name)
    }

    /// Nodes that failed.
    pub fn failures(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter(|n| n.state == StageState::Failed)
    }
}

impl std::fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}  state",
            "node", "in", "out", "dropped", "skipped", "p50 ms", "p99 ms", "restarts"
        )?;
        for n in &self.nodes {
            let m = &n.metrics;
            let received = if n.kind == NodeKind::Source { "-".to_owned() } else { m.received.to_string() };
            write!(
                f,
                "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9.2} {:>9.2} {:>8}  {:?}",
                n.name,
                received,
                m.emitted,
                m.input.dropped,
                m.skipped,
                m.latency_p50_ms,
                m.latency_p99_ms,
                m.restarts,
                n.state
            )?;
            if let Some(e) = &n.error {
                write!(f, " ({e})")?;
            }
            writeln!(f)?;
        }
        write!(f, "elapsed {:.2} s", self.elapsed.as_secs_f64())
    }
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The supervisor policy of every stage.
    pub fn restart_policy(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart = policy;
        self
    }

    /// How often metrics are reported.
    pub fn metrics_every(&mut self, every: Duration) -> &mut Self {
        self.metrics_every = every;
        self
    }

    /// Sends metrics reports into stage `name`'s input edge (a Rerun sink, say).
    pub fn metrics_to(&mut self, name: &str) -> &mut Self {
        self.metrics_to = Some(name.into());
        self
    }

    /// Adds a source.
    pub fn source(&mut self, name: &str, kind: SourceKind) -> &mut Self {
        self.sources.push(SourceDecl { name: name.into(), kind });
        self
    }

    /// Adds a stage fed by `inputs` (sources or stages) through one edge with `policy`.
    pub fn stage(&mut self, name: &str, inputs: &[&str], policy: EdgePolicy, factory: ProcessorFactory) -> &mut Self {
        self.stages.push(StageDecl {
            name: name.into(),
            inputs: inputs.iter().map(|&i| i.into()).collect(),
            edge: policy,
            factory,
        });
        self
    }

    /// Checks names, inputs and the absence of cycles.
    pub fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for name in self.sources.iter().map(|s| &s.name).chain(self.stages.iter().map(|s| &s.name)) {
            if !names.insert(name.clone()) {
                return Err(ActorError::Pipeline(format!("two nodes are named {name:?}")));
            }
        }
        for stage in &self.stages {
            if stage.inputs.is_empty() {
                return Err(ActorError::Pipeline(format!("stage {:?} has no inputs", stage.name)));
            }
            if let Some(missing) = stage.inputs.iter().find(|i| !names.contains(*i)) {
                return Err(ActorError::Pipeline(format!(
                    "stage {:?} reads from unknown node {missing:?}",
                    stage.name
                )));
            }
        }
        if let Some(m) = self.metrics_to.as_ref().filter(|m| !self.stages.iter().any(|s| &s.name == *m)) {
            return Err(ActorError::Pipeline(format!("metrics go to unknown stage {m:?}")));
        }
        // Depth-first search for a cycle among stages.
        let inputs: HashMap<&str, Vec<&str>> =
            self.stages.iter().map(|s| (&*s.name, s.inputs.iter().map(|i| &**i).collect())).collect();
        fn visit<'a>(
            n: &'a str,
            g: &HashMap<&'a str, Vec<&'a str>>,
            on_path: &mut Vec<&'a str>,
            done: &mut HashSet<&'a str>,
        ) -> Option<String> {
            if let Some(pos) = on_path.iter().position(|p| *p == n) {
                return Some(format!("{} -> {n}", on_path[pos..].join(" -> ")));
            }
            if !done.insert(n) {
                return None;
            }
            on_path.push(n);
            let found = g.get(n).into_iter().flatten().find_map(|i| visit(i, g, on_path, done));
            on_path.pop();
            found
        }
        let mut done = HashSet::new();
        for s in &self.stages {
            if let Some(cycle) = visit(&s.name, &inputs, &mut Vec::new(), &mut done) {
                return Err(ActorError::Pipeline(format!("cycle: {cycle}")));
            }
        }
        Ok(())
    }

    /// Runs the pipeline until every source has ended and every stage has drained (or
    /// Ctrl-C), then returns the report.
    pub fn run(self) -> Result<PipelineReport> {
        self.validate()?;
        let started = std::time::Instant::now();
        let Self { sources, stages, restart, metrics_every, metrics_to } = self;

        // One edge per stage; every upstream gets a sender.
        let mut senders_of: HashMap<Arc<str>, Vec<EdgeSender<Packet>>> = HashMap::new();
        let mut metrics_tx = None;
        let mut receivers = Vec::with_capacity(stages.len());
        for s in &stages {
            let (tx, rx) = edge(format!("{}.in", s.name), s.edge);
            for input in &s.inputs {
                senders_of.entry(input.clone()).or_default().push(tx.clone());
            }
            if metrics_to.as_ref() == Some(&s.name) {
                metrics_tx = Some(tx.clone());
            }
            receivers.push(rx);
        }

        let mut watched = Vec::new();
        let mut controls = Vec::new();
        for s in &sources {
            let outputs = SourceOutputs::new(s.name.clone(), senders_of.remove(&s.name).unwrap_or_default());
            watched.push(Watched {
                name: s.name.clone(),
                kind: NodeKind::Source,
                metrics: outputs.metrics.clone(),
                status: outputs.status.clone(),
            });
            controls.push(outputs);
        }

        let mut threads = Vec::new();
        for (s, rx) in stages.into_iter().zip(receivers) {
            let outputs = senders_of.remove(&s.name).unwrap_or_default();
            let handle = spawn_stage(s.name.clone(), s.factory, rx, outputs, restart)
                .map_err(|e| ActorError::Pipeline(format!("spawning stage {:?}: {e}", s.name)))?;
            watched.push(Watched {
                name: handle.name.clone(),
                kind: NodeKind::Stage,
                metrics: handle.metrics.clone(),
                status: handle.status.clone(),
            });
            threads.push(handle.thread);
        }

        let system = System::new();
        let kinds: Vec<SourceKind> = sources.into_iter().map(|s| s.kind).collect();
        let monitor_watched = watched.clone();
        let arbiters = system.block_on(async move {
            let mut arbiters = Vec::new();
            let mut source_controls = Vec::new();
            for (outputs, kind) in controls.into_iter().zip(kinds) {
                let eos = match kind {
                    SourceKind::Gstreamer(spec) => {
                        let (addr, arbiter) = gst::start(spec, outputs.clone());
                        arbiters.push(arbiter);
                        Some(addr.recipient())
                    }
                    SourceKind::Synthetic(spec) => {
                        if let Err(e) = synthetic::spawn(spec, outputs.clone()) {
                            error!(source = %outputs.name, error = %e, "cannot start the source");
                            outputs.close(Some(e.to_string()));
                        }
                        None
                    }
                    SourceKind::Replay(spec) => {
                        if let Err(e) = replay::spawn(spec, outputs.clone()) {
                            error!(source = %outputs.name, error = %e, "cannot start the source");
                            outputs.close(Some(e.to_string()));
                        }
                        None
                    }
                    SourceKind::Zenoh(spec) => {
                        if let Err(e) = crate::source::zenoh::spawn(spec, outputs.clone()) {
                            error!(source = %outputs.name, error = %e, "cannot start the source");
                            outputs.close(Some(e.to_string()));
                        }
                        None
                    }
                };
                source_controls.push(SourceControl { outputs, eos });
            }
            let monitor = PipelineMonitor::new(monitor_watched, source_controls, metrics_tx, metrics_every).start();
            actix::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if monitor.try_send(Shutdown).is_err() {
                        break;
                    }
                }
            });
            arbiters
        });
        system.run().map_err(|e| ActorError::Pipeline(format!("actix system: {e}")))?;

        for t in threads {
            if t.join().is_err() {
                warn!("a stage thread panicked outside its processor");
            }
        }
        for arbiter in arbiters {
            arbiter.stop();
            if arbiter.join().is_err() {
                warn!("a source arbiter panicked");
            }
        }
        let at = now_ns();
        Ok(PipelineReport {
            nodes: watched
                .into_iter()
                .map(|w| NodeReport {
                    name: w.name,
                    kind: w.kind,
                    state: w.status.state(),
                    error: w.status.error(),
                    metrics: w.metrics.snapshot(at),
                })
                .collect(),
            elapsed: started.elapsed(),
        })
    }
}
