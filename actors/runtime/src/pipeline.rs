//! Wiring and running a pipeline: sources, stages, typed edges, the monitor, the actix
//! system.
//!
//! ```text
//! source thread ──edge(policy)──► stage thread (one edge per input port) ──edge──► sink thread
//!     each output fans out to every input wired to it; every input edge rings the stage's signal
//! PipelineMonitor (actix, system arbiter): status polling, metrics, Ctrl-C, completion
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::warn;

use crate::clock::Clock;
use crate::edge::{EdgePolicy, EdgeSender, Signal, edge_with_signal};
use crate::message::{Packet, PortType};
use crate::metrics::MetricsSnapshot;
use crate::monitor::{NodeKind, PipelineMonitor, StopHandle, Watched};
use crate::node::{
    Inputs, NodeState, RestartPolicy, SourceFactory, SourceOutputs, StageFactory, spawn_source, spawn_stage,
};
use crate::port::{InputPort, Ports, Upstream, Wire};
use crate::{Result, RuntimeError, now_ns};

struct SourceDecl {
    name: Arc<str>,
    factory: SourceFactory,
}

struct StageDecl {
    name: Arc<str>,
    ports: Ports,
    wires: Vec<Wire>,
    factory: StageFactory,
}

/// A pipeline under construction.
pub struct Pipeline {
    sources: Vec<SourceDecl>,
    stages: Vec<StageDecl>,
    restart: RestartPolicy,
    metrics_every: Duration,
    metrics_to: Option<Arc<str>>,
    clock: Clock,
    stop: StopHandle,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            stages: Vec::new(),
            restart: RestartPolicy::default(),
            metrics_every: Duration::from_secs(1),
            metrics_to: None,
            clock: Clock::Live,
            stop: StopHandle::default(),
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
    pub state: NodeState,
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
        self.nodes.iter().filter(|n| n.state == NodeState::Failed)
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
                m.input.dropped + m.unpaired,
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

/// A sink's ports: one input `in` taking `accepts` from any number of upstreams, no outputs.
pub fn sink_ports(accepts: &[PortType], edge: EdgePolicy) -> Ports {
    Ports { inputs: vec![InputPort::new("in", accepts, edge)], outputs: Vec::new(), join: None }
}

/// Every message type.
pub const ALL_TYPES: [PortType; 10] = [
    PortType::Frame,
    PortType::Mask,
    PortType::Features,
    PortType::Tracks,
    PortType::Candidates,
    PortType::Metrics,
    PortType::Agent,
    PortType::Inpainted,
    PortType::Poses,
    PortType::Actions,
];

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The supervisor policy of every node.
    pub fn restart_policy(&mut self, policy: RestartPolicy) -> &mut Self {
        self.restart = policy;
        self
    }

    /// How often metrics are reported.
    pub fn metrics_every(&mut self, every: Duration) -> &mut Self {
        self.metrics_every = every;
        self
    }

    /// Sends metrics reports to stage `name` (its first input that takes metrics).
    pub fn metrics_to(&mut self, name: &str) -> &mut Self {
        self.metrics_to = Some(name.into());
        self
    }

    /// Where the nodes' logic takes the time from.
    pub fn clock(&mut self, clock: Clock) -> &mut Self {
        self.clock = clock;
        self
    }

    /// A handle that shuts the running pipeline down from another thread, as Ctrl-C does.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Adds a source (one `frames` output).
    pub fn source(&mut self, name: &str, factory: SourceFactory) -> &mut Self {
        self.sources.push(SourceDecl { name: name.into(), factory });
        self
    }

    /// Adds a stage with typed `ports`, its inputs wired by `wires`.
    pub fn node(&mut self, name: &str, ports: Ports, wires: Vec<Wire>, factory: StageFactory) -> &mut Self {
        self.stages.push(StageDecl { name: name.into(), ports, wires, factory });
        self
    }

    /// Adds a stage with one input `in` that takes every message type from `inputs` (`node`
    /// or `node.port`) through one edge with `policy`, and no outputs: a sink, or a test's
    /// collector.
    pub fn stage(&mut self, name: &str, inputs: &[&str], policy: EdgePolicy, factory: StageFactory) -> &mut Self {
        let wire = Wire { port: "in", from: inputs.iter().map(|i| Upstream::parse(i)).collect(), edge: policy };
        self.node(name, sink_ports(&ALL_TYPES, policy), vec![wire], factory)
    }

    /// [`Pipeline::stage`] with one output `out` emitting `emits`: a relay or a transform in a
    /// benchmark or a test.
    pub fn actor(
        &mut self,
        name: &str,
        inputs: &[&str],
        policy: EdgePolicy,
        emits: PortType,
        factory: StageFactory,
    ) -> &mut Self {
        let wire = Wire { port: "in", from: inputs.iter().map(|i| Upstream::parse(i)).collect(), edge: policy };
        let mut ports = sink_ports(&ALL_TYPES, policy);
        ports.outputs.push(crate::port::OutputPort { name: "out", ty: emits });
        self.node(name, ports, vec![wire], factory)
    }

    /// The ports of node `name` (sources have one `frames` output).
    fn ports_of(&self, name: &str) -> Option<Ports> {
        if self.sources.iter().any(|s| &*s.name == name) {
            return Some(Ports::source());
        }
        self.stages.iter().find(|s| &*s.name == name).map(|s| s.ports.clone())
    }

    /// Checks names, wires (every upstream exists and emits what its input takes; every
    /// required input is wired), joins and the absence of cycles.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(RuntimeError::Pipeline(m));
        let mut names = HashSet::new();
        for name in self.sources.iter().map(|s| &s.name).chain(self.stages.iter().map(|s| &s.name)) {
            if !names.insert(name.clone()) {
                return err(format!("two nodes are named {name:?}"));
            }
        }
        for stage in &self.stages {
            for wire in &stage.wires {
                let Some((_, input)) = stage.ports.input(wire.port) else {
                    return err(format!("{:?} has no input `{}`", stage.name, wire.port));
                };
                if wire.from.is_empty() {
                    return err(format!("{:?}: input `{}` reads from nothing", stage.name, wire.port));
                }
                for up in &wire.from {
                    let Some(ports) = self.ports_of(&up.node) else {
                        return err(format!("{:?} reads from unknown node {:?}", stage.name, up.node));
                    };
                    let (_, out) = ports
                        .output(up.port.as_deref())
                        .map_err(|e| RuntimeError::Pipeline(format!("{:?} reads from {up}, which {e}", stage.name)))?;
                    if !input.takes(out.ty) {
                        return err(format!(
                            "{:?}: input `{}` takes {}, but {up} emits {}",
                            stage.name,
                            wire.port,
                            input.accepts_text(),
                            out.ty
                        ));
                    }
                }
            }
            for input in stage.ports.inputs.iter().filter(|p| p.required) {
                if !stage.wires.iter().any(|w| w.port == input.name) {
                    return err(format!(
                        "{:?}: input `{}` ({}) is not wired",
                        stage.name,
                        input.name,
                        input.accepts_text()
                    ));
                }
            }
            if let Some(join) = &stage.ports.join
                && (stage.ports.input(join.primary).is_none() || stage.ports.input(join.with).is_none())
            {
                return err(format!("{:?}: its join names an input it does not have", stage.name));
            }
        }
        if let Some(m) = &self.metrics_to {
            let takes = self
                .stages
                .iter()
                .find(|s| &s.name == m)
                .is_some_and(|s| s.ports.inputs.iter().any(|p| p.takes(PortType::Metrics)));
            if !takes {
                return err(format!("metrics go to {m:?}, which has no input for metrics"));
            }
        }
        // Depth-first search for a cycle among stages.
        let graph: HashMap<&str, Vec<&str>> = self
            .stages
            .iter()
            .map(|s| (&*s.name, s.wires.iter().flat_map(|w| w.from.iter().map(|u| &*u.node)).collect()))
            .collect();
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
            if let Some(cycle) = visit(&s.name, &graph, &mut Vec::new(), &mut done) {
                return err(format!("cycle: {cycle}"));
            }
        }
        Ok(())
    }

    /// Runs the pipeline until every source has ended and every stage has drained (or
    /// Ctrl-C), then returns the report.
    pub fn run(self) -> Result<PipelineReport> {
        self.validate()?;
        let started = std::time::Instant::now();
        let port_types: HashMap<Arc<str>, Ports> = self
            .sources
            .iter()
            .map(|s| (s.name.clone(), Ports::source()))
            .chain(self.stages.iter().map(|s| (s.name.clone(), s.ports.clone())))
            .collect();
        let Self { sources, stages, restart, metrics_every, metrics_to, clock, stop } = self;

        // One edge per wired input; every upstream output gets a sender.
        let mut senders_of: HashMap<(Arc<str>, usize), Vec<EdgeSender<Packet>>> = HashMap::new();
        let mut metrics_tx = None;
        let mut stage_inputs = Vec::with_capacity(stages.len());
        for s in &stages {
            let signal = Signal::new();
            let mut receivers = Vec::new();
            let mut index_of = HashMap::new();
            for (k, input) in s.ports.inputs.iter().enumerate() {
                let wire = s.wires.iter().find(|w| w.port == input.name);
                let edge = wire.map_or(input.default_edge, |w| w.edge);
                let (tx, rx) = edge_with_signal(format!("{}.{}", s.name, input.name), edge, signal.clone());
                for up in wire.map(|w| w.from.as_slice()).unwrap_or_default() {
                    let out =
                        port_types.get(&up.node).and_then(|p| p.output(up.port.as_deref()).ok()).map_or(0, |(i, _)| i);
                    senders_of.entry((up.node.clone(), out)).or_default().push(tx.clone());
                }
                if metrics_to.as_ref() == Some(&s.name) && metrics_tx.is_none() && input.takes(PortType::Metrics) {
                    metrics_tx = Some(tx.clone());
                }
                index_of.insert(input.name, k);
                receivers.push(rx);
            }
            let join = s.ports.join.and_then(|j| Some((*index_of.get(j.primary)?, *index_of.get(j.with)?, j)));
            stage_inputs.push(Inputs::new(receivers, signal, join));
        }

        let mut watched = Vec::new();
        let mut threads = Vec::new();
        let mut source_outputs = Vec::new();
        for s in sources {
            let outputs =
                SourceOutputs::new(s.name.clone(), senders_of.remove(&(s.name.clone(), 0)).unwrap_or_default());
            source_outputs.push(outputs.clone());
            let handle = spawn_source(s.factory, outputs, restart, clock)
                .map_err(|e| RuntimeError::Pipeline(format!("spawning source {:?}: {e}", s.name)))?;
            watched.push(Watched {
                name: handle.name.clone(),
                kind: NodeKind::Source,
                metrics: handle.metrics.clone(),
                status: handle.status.clone(),
            });
            threads.push(handle.thread);
        }
        for (s, inputs) in stages.into_iter().zip(stage_inputs) {
            let outputs: Vec<Vec<EdgeSender<Packet>>> = (0..s.ports.outputs.len())
                .map(|k| senders_of.remove(&(s.name.clone(), k)).unwrap_or_default())
                .collect();
            let handle = spawn_stage(s.name.clone(), s.factory, inputs, outputs, restart, clock)
                .map_err(|e| RuntimeError::Pipeline(format!("spawning stage {:?}: {e}", s.name)))?;
            watched.push(Watched {
                name: handle.name.clone(),
                kind: NodeKind::Stage,
                metrics: handle.metrics.clone(),
                status: handle.status.clone(),
            });
            threads.push(handle.thread);
        }
        // Senders left are those of outputs nobody reads: drop them with this scope.
        drop(senders_of);

        let system = System::new();
        let monitor_watched = watched.clone();
        system.block_on(async move {
            let ctrl_c = stop.clone();
            PipelineMonitor::new(monitor_watched, source_outputs, metrics_tx, metrics_every, stop).start();
            actix::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    ctrl_c.stop();
                }
            });
        });
        system.run().map_err(|e| RuntimeError::Pipeline(format!("actix system: {e}")))?;

        for t in threads {
            if t.join().is_err() {
                warn!("a node thread panicked outside its supervisor");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PortType;
    use crate::node::{Context, Flow, Input, Source, SourceContext, Stage};
    use crate::port::{Join, OutputPort};

    struct Nothing;
    impl Stage for Nothing {
        fn process(&mut self, _input: Input, _ctx: &mut Context) -> Result<()> {
            Ok(())
        }
    }

    struct Empty;
    impl Source for Empty {
        fn process(&mut self, _ctx: &mut SourceContext) -> Result<Flow> {
            Ok(Flow::End)
        }
    }

    fn labeler_ports() -> Ports {
        Ports {
            inputs: vec![
                InputPort::new("frames", &[PortType::Frame], EdgePolicy::Latest),
                InputPort::new("tracks", &[PortType::Tracks], EdgePolicy::Latest),
            ],
            outputs: vec![OutputPort { name: "tracks", ty: PortType::Tracks }],
            join: Some(Join { primary: "tracks", with: "frames", capacity: 8 }),
        }
    }

    fn wire(port: &'static str, from: &str) -> Wire {
        Wire { port, from: vec![Upstream::parse(from)], edge: EdgePolicy::Latest }
    }

    fn nothing() -> StageFactory {
        Box::new(|| Ok(Box::new(Nothing) as Box<dyn Stage>))
    }

    #[test]
    fn wires_are_typed() {
        let mut p = Pipeline::new();
        p.source("cam", Box::new(|| Ok(Box::new(Empty) as Box<dyn Source>)));
        p.node("labeler", labeler_ports(), vec![wire("frames", "cam")], nothing());
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("input `tracks` (tracks) is not wired"), "{e}");

        let mut p = Pipeline::new();
        p.source("cam", Box::new(|| Ok(Box::new(Empty) as Box<dyn Source>)));
        p.node("labeler", labeler_ports(), vec![wire("frames", "cam"), wire("tracks", "cam")], nothing());
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("input `tracks` takes tracks, but cam emits frames"), "{e}");

        let mut p = Pipeline::new();
        p.source("cam", Box::new(|| Ok(Box::new(Empty) as Box<dyn Source>)));
        p.node("other", labeler_ports(), vec![wire("frames", "cam"), wire("tracks", "labeler")], nothing());
        p.node("labeler", labeler_ports(), vec![wire("frames", "cam"), wire("tracks", "other.tracks")], nothing());
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }
}
