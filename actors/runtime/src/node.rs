//! Nodes: stages (which read inputs) and sources (which produce frames), with one lifecycle
//! and one supervisor.
//!
//! Every node runs on a thread of its own (`stage:<name>`, `source:<name>`), built there by
//! its factory, so it may hold thread-bound state (CUDA streams, libtorch tensors, GStreamer
//! objects). Its life is `start` (open devices, sessions, files) → `process`, repeatedly →
//! `stop` (drain and flush). The supervisor on that thread catches errors and panics at the
//! node boundary: a [`RuntimeError::BadInput`] is counted and skipped; anything else stops the
//! node, drops it, and builds a new one after an exponential backoff, until `max_restarts`
//! consecutive failures, when the node gives up: its inputs disconnect (upstream pushes are
//! counted as dropped), its outputs close, and the pipeline reports the failure. A source
//! that gives up closes its outputs too, so the pipeline still drains and ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{error, info, info_span, warn};

use crate::clock::Clock;
use crate::edge::{EdgeReceiver, EdgeSender, Recv, Signal};
use crate::join::Joiner;
use crate::message::{FrameMeta, Packet};
use crate::metrics::StageMetrics;
use crate::port::Join;
use crate::{Result, RuntimeError, now_ns};

/// How long a node waits for input before it looks again at its inputs' state.
const WAIT: Duration = Duration::from_millis(100);

// --- Stages --------------------------------------------------------------------------------

/// One message handed to a stage, with the input it came on.
#[derive(Debug)]
pub struct Input {
    /// Index of the input port (in the stage's [`crate::port::Ports`]).
    pub port: usize,
    /// The message.
    pub packet: Packet,
    /// For a joined input: the message of the other input from the same frame.
    pub with: Option<Packet>,
}

/// The work of a stage: handles one input at a time, on the stage's own thread.
pub trait Stage {
    /// Opens what the stage needs (sessions, files); called once per (re)start.
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }

    /// Handles one input, emitting any outputs through `ctx`.
    ///
    /// Return [`RuntimeError::BadInput`] for an input that cannot be used (it is counted and
    /// skipped); any other error makes the supervisor restart the stage.
    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()>;

    /// Called once when the inputs have ended and been drained, and before a restart (flush,
    /// close).
    fn stop(&mut self, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
}

/// Builds a stage; called on the stage thread at start and after every failure.
pub type StageFactory = Box<dyn FnMut() -> Result<Box<dyn Stage>> + Send>;

/// The factory of a stage that `make` builds afresh at every (re)start.
pub fn stage_factory<S: Stage + 'static>(mut make: impl FnMut() -> S + Send + 'static) -> StageFactory {
    Box::new(move || Ok(Box::new(make()) as Box<dyn Stage>))
}

/// What a stage sees of the pipeline: its outputs, its metrics, the clock.
pub struct Context {
    name: Arc<str>,
    /// Per output port, the edges downstream of it.
    outputs: Vec<Vec<EdgeSender<Packet>>>,
    metrics: Arc<StageMetrics>,
    clock: Clock,
    current: Option<FrameMeta>,
    upstream_pushed: u64,
}

impl Context {
    /// The context of node `name` writing into `outputs` (per output port, its downstream
    /// edges), recording in `metrics`.
    pub fn new(
        name: Arc<str>,
        outputs: Vec<Vec<EdgeSender<Packet>>>,
        metrics: Arc<StageMetrics>,
        clock: Clock,
    ) -> Self {
        Self { name, outputs, metrics, clock, current: None, upstream_pushed: 0 }
    }

    /// Sends `packet` out of the first output port.
    pub fn emit(&mut self, packet: Packet) {
        self.emit_to(0, packet);
    }

    /// Sends `packet` to every edge downstream of output port `port` (each applies its own
    /// policy), and records the capture-to-output latency.
    pub fn emit_to(&mut self, port: usize, packet: Packet) {
        self.metrics.record_output(packet.meta().map(|m| m.capture_ns), now_ns());
        if let Some((last, rest)) = self.outputs.get(port).and_then(|o| o.split_last()) {
            for sender in rest {
                sender.push(packet.clone());
            }
            last.push(packet);
        }
    }

    /// Records an input consumed without output (sinks), for fps and latency.
    pub fn record_consumed(&self, capture_ns: Option<i64>) {
        self.metrics.record_output(capture_ns, now_ns());
    }

    /// The node's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The time for the node's logic: the capture time of the input being handled (see
    /// [`crate::clock`]).
    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns(self.current.as_ref())
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Sets the message being handled (its capture time is [`Context::now_ns`]). The runtime
    /// sets it before every input; a stage driven by hand (a test) sets it likewise.
    pub fn set_current(&mut self, meta: Option<FrameMeta>) {
        self.current = meta;
    }

    /// How many items had been pushed into the current input's edge when it was taken (see
    /// [`EdgeReceiver::pushed_at_last_pop`]).
    pub fn upstream_pushed(&self) -> u64 {
        self.upstream_pushed
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &StageMetrics {
        &self.metrics
    }
}

/// A stage's inputs: one edge per port, one signal for all of them, and the join if any.
pub struct Inputs {
    receivers: Vec<EdgeReceiver<Packet>>,
    closed: Vec<bool>,
    signal: Arc<Signal>,
    join: Option<(usize, usize, Joiner)>,
    next: usize,
}

impl Inputs {
    /// `receivers` (one per input port, in port order) whose edges ring `signal`; `join`:
    /// (primary port, with port, the join).
    pub fn new(receivers: Vec<EdgeReceiver<Packet>>, signal: Arc<Signal>, join: Option<(usize, usize, Join)>) -> Self {
        let closed = vec![false; receivers.len()];
        let join = join.map(|(p, w, j)| (p, w, Joiner::new(j.capacity)));
        Self { receivers, closed, signal, join, next: 0 }
    }

    /// The next input, waiting for one; `None` once every input has closed and drained (or
    /// `stopping` says so). Unpaired joined messages are recorded in `metrics`.
    fn next(&mut self, metrics: &StageMetrics, upstream_pushed: &mut u64) -> Option<Input> {
        let n = self.receivers.len();
        if n == 0 {
            return None;
        }
        loop {
            let seen = self.signal.rings();
            for k in 0..n {
                let port = (self.next + k) % n;
                if self.closed[port] {
                    continue;
                }
                let packet = match self.receivers[port].try_pop() {
                    Recv::Item(p) => p,
                    Recv::Closed => {
                        self.closed[port] = true;
                        continue;
                    }
                    Recv::Timeout => continue,
                };
                self.next = port + 1;
                *upstream_pushed = self.receivers[port].pushed_at_last_pop();
                let Some((primary, _, joiner)) = self.join.as_mut().filter(|(p, w, _)| port == *p || port == *w) else {
                    return Some(Input { port, packet, with: None });
                };
                let before = joiner.unpaired();
                let pair = if port == *primary { joiner.push_primary(packet) } else { joiner.push_with(packet) };
                metrics.record_unpaired(joiner.unpaired() - before);
                if let Some((p, w)) = pair {
                    return Some(Input { port: *primary, packet: p, with: Some(w) });
                }
            }
            if self.closed.iter().all(|c| *c) {
                if let Some((_, _, joiner)) = &self.join {
                    metrics.record_unpaired(joiner.waiting());
                }
                return None;
            }
            self.signal.wait_after(seen, WAIT);
        }
    }
}

// --- Sources -------------------------------------------------------------------------------

/// Whether a source should go on after a call to [`Source::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// More is coming.
    Continue,
    /// The stream has ended.
    End,
}

/// A source of frames: a camera, a stream from other nodes, a recording.
pub trait Source {
    /// Opens the device, session or file; called once per (re)start.
    fn start(&mut self, _ctx: &mut SourceContext) -> Result<()> {
        Ok(())
    }

    /// Waits a little (at most about 100 ms, so that a stop request is seen soon) for what
    /// the source has next and emits it through `ctx`.
    fn process(&mut self, ctx: &mut SourceContext) -> Result<Flow>;

    /// Closes what `start` opened; called at the end and before a restart.
    fn stop(&mut self, _ctx: &mut SourceContext) -> Result<()> {
        Ok(())
    }
}

/// Builds a source; called on the source thread at start and after every failure.
pub type SourceFactory = Box<dyn FnMut() -> Result<Box<dyn Source>> + Send>;

/// The factory of a source that `make` builds afresh at every (re)start.
pub fn source_factory<S: Source + 'static>(mut make: impl FnMut() -> S + Send + 'static) -> SourceFactory {
    Box::new(move || Ok(Box::new(make()) as Box<dyn Source>))
}

/// What has been asked of a source.
#[derive(Debug, Default)]
pub struct SourceControl {
    state: AtomicU8,
}

impl SourceControl {
    const RUN: u8 = 0;
    const DRAIN: u8 = 1;

    /// Asks the source to end its stream (a GStreamer source sends EOS and delivers what is
    /// in flight).
    pub fn request_end(&self) {
        self.state.store(Self::DRAIN, Ordering::Release);
    }

    /// Whether an end was asked.
    pub fn end_requested(&self) -> bool {
        self.state.load(Ordering::Acquire) != Self::RUN
    }
}

/// The output side of a source, shared by its thread and the monitor (which may close it at
/// once: a second Ctrl-C).
#[derive(Clone)]
pub struct SourceOutputs {
    /// The source's name.
    pub name: Arc<str>,
    senders: Arc<Mutex<Option<Vec<EdgeSender<Packet>>>>>,
    /// Frames emitted, corrupt frames skipped, reconnections.
    pub metrics: Arc<StageMetrics>,
    /// Running, finished or failed.
    pub status: Arc<NodeStatus>,
    /// Requests from the monitor.
    pub control: Arc<SourceControl>,
}

impl SourceOutputs {
    /// Outputs of source `name` into `senders`.
    pub fn new(name: Arc<str>, senders: Vec<EdgeSender<Packet>>) -> Self {
        Self {
            name,
            senders: Arc::new(Mutex::new(Some(senders))),
            metrics: Arc::new(StageMetrics::default()),
            status: Arc::new(NodeStatus::default()),
            control: Arc::new(SourceControl::default()),
        }
    }

    /// Sends `packet` to every subscriber; false once closed.
    pub fn emit(&self, packet: Packet) -> bool {
        let capture = packet.meta().map(|m| m.capture_ns);
        let senders = self.senders.lock().clone();
        let Some(senders) = senders else { return false };
        // Pushed outside the lock: a full `block` edge must not hold up a close.
        for sender in &senders {
            sender.push(packet.clone());
        }
        self.metrics.record_output(capture, now_ns());
        true
    }

    /// Whether the outputs are closed (end of stream, or the pipeline is stopping now).
    pub fn is_closed(&self) -> bool {
        self.senders.lock().is_none()
    }

    /// Closes the downstream edges and records how the source ended; only the first call
    /// counts.
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

/// What a source sees of the pipeline.
pub struct SourceContext {
    outputs: SourceOutputs,
    clock: Clock,
}

impl SourceContext {
    /// The context of a source writing into `outputs`.
    pub fn new(outputs: SourceOutputs, clock: Clock) -> Self {
        Self { outputs, clock }
    }

    /// Sends a frame (or any packet) downstream; false once the outputs are closed (the
    /// source should end).
    pub fn emit(&self, packet: Packet) -> bool {
        self.outputs.emit(packet)
    }

    /// Whether the pipeline asked the source to end its stream.
    pub fn end_requested(&self) -> bool {
        self.outputs.control.end_requested() || self.outputs.is_closed()
    }

    /// The source's name (the camera).
    pub fn name(&self) -> &Arc<str> {
        &self.outputs.name
    }

    /// The source's metrics (skipped corrupt frames, stalls, reconnections).
    pub fn metrics(&self) -> &StageMetrics {
        &self.outputs.metrics
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The shared outputs (for callbacks on other threads that emit, such as a zenoh
    /// subscriber's).
    pub fn outputs(&self) -> &SourceOutputs {
        &self.outputs
    }
}

// --- Supervision ---------------------------------------------------------------------------

/// How a supervisor restarts its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Consecutive failures tolerated before the node gives up.
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further consecutive failure.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { max_restarts: 5, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }
}

impl RestartPolicy {
    /// The wait before restart number `attempt` (1-based) of a run of consecutive failures.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    /// Running (or waiting to restart).
    Running = 0,
    /// Its stream ended (sources) or its inputs ended and it has flushed (stages).
    Finished = 1,
    /// It gave up after too many failures.
    Failed = 2,
}

/// Shared view of a node's state, read by the monitor.
#[derive(Debug, Default)]
pub struct NodeStatus {
    state: AtomicU8,
    error: Mutex<Option<String>>,
}

impl NodeStatus {
    /// The state now.
    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            1 => NodeState::Finished,
            2 => NodeState::Failed,
            _ => NodeState::Running,
        }
    }

    /// The error a failed node gave up on.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Marks the node finished.
    pub fn set_finished(&self) {
        self.state.store(NodeState::Finished as u8, Ordering::Release);
    }

    /// Marks the node failed with `error`.
    pub fn set_failed(&self, error: String) {
        *self.error.lock() = Some(error);
        self.state.store(NodeState::Failed as u8, Ordering::Release);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map_or_else(|| "panic".to_owned(), |m| format!("panic: {m}"))
}

/// Runs `f`, turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(RuntimeError::Failed(panic_message(&*p))))
}

/// The restart bookkeeping of one node.
struct Supervisor {
    policy: RestartPolicy,
    metrics: Arc<StageMetrics>,
    consecutive: u32,
}

impl Supervisor {
    /// Records a failure; sleeps the backoff and returns true when the node may restart,
    /// false when it must give up (too many failures in a row, or a fatal one).
    fn failed(&mut self, error: &RuntimeError) -> bool {
        self.metrics.record_failure();
        self.consecutive += 1;
        if matches!(error, RuntimeError::Fatal(_)) {
            error!(%error, "giving up (a restart cannot mend this)");
            return false;
        }
        if self.consecutive > self.policy.max_restarts {
            error!(%error, failures = self.consecutive, "giving up");
            return false;
        }
        let wait = self.policy.backoff(self.consecutive);
        warn!(%error, attempt = self.consecutive, wait_ms = wait.as_millis() as u64, "restarting");
        std::thread::sleep(wait);
        self.metrics.record_restart();
        true
    }
}

/// Builds and starts a node (one attempt): `Err` names what failed.
fn build_started<N: ?Sized>(
    factory: &mut dyn FnMut() -> Result<Box<N>>,
    start: impl FnOnce(&mut N) -> Result<()>,
) -> Result<Box<N>> {
    let mut node = guarded(factory)?;
    guarded(|| start(&mut node))?;
    Ok(node)
}

/// A running node.
pub struct NodeHandle {
    /// The node's name.
    pub name: Arc<str>,
    /// Its metrics.
    pub metrics: Arc<StageMetrics>,
    /// Its state.
    pub status: Arc<NodeStatus>,
    /// Its thread.
    pub thread: JoinHandle<()>,
}

/// Starts a stage thread named after the stage.
pub fn spawn_stage(
    name: Arc<str>,
    mut factory: StageFactory,
    mut inputs: Inputs,
    outputs: Vec<Vec<EdgeSender<Packet>>>,
    policy: RestartPolicy,
    clock: Clock,
) -> std::io::Result<NodeHandle> {
    let metrics = Arc::new(StageMetrics::default());
    for r in &inputs.receivers {
        metrics.attach_input(r.stats().clone());
    }
    let status = Arc::new(NodeStatus::default());
    let (thread_metrics, thread_status, thread_name) = (metrics.clone(), status.clone(), name.clone());
    let thread = std::thread::Builder::new().name(format!("stage:{name}")).spawn(move || {
        let _span = info_span!("stage", name = %thread_name).entered();
        let mut ctx = Context::new(thread_name, outputs, thread_metrics.clone(), clock);
        let mut supervisor = Supervisor { policy, metrics: thread_metrics.clone(), consecutive: 0 };
        let mut stage: Option<Box<dyn Stage>> = None;
        loop {
            let Some(s) = stage.as_mut() else {
                match build_started(&mut factory, |s: &mut (dyn Stage + 'static)| s.start(&mut ctx)) {
                    Ok(s) => stage = Some(s),
                    Err(e) if supervisor.failed(&e) => {}
                    Err(e) => return thread_status.set_failed(e.to_string()),
                }
                continue;
            };
            let Some(input) = inputs.next(&thread_metrics, &mut ctx.upstream_pushed) else { break };
            thread_metrics.record_received();
            if let Some(meta) = input.packet.meta() {
                ctx.current = Some(meta.clone());
            }
            match guarded(|| s.process(input, &mut ctx)) {
                Ok(()) => supervisor.consecutive = 0,
                Err(RuntimeError::BadInput(reason)) => {
                    thread_metrics.record_skipped();
                    warn!(%reason, "skipped a malformed input");
                }
                Err(e) => {
                    if let Err(stop) = guarded(|| s.stop(&mut ctx)) {
                        warn!(error = %stop, "stopping after a failure failed too");
                    }
                    stage = None;
                    if !supervisor.failed(&e) {
                        return thread_status.set_failed(e.to_string());
                    }
                }
            }
        }
        if let Some(Err(e)) = stage.as_mut().map(|s| guarded(|| s.stop(&mut ctx))) {
            error!(error = %e, "stopping failed");
            return thread_status.set_failed(e.to_string());
        }
        info!("finished");
        thread_status.set_finished();
    })?;
    Ok(NodeHandle { name, metrics, status, thread })
}

/// Starts a source thread named after the source.
pub fn spawn_source(
    mut factory: SourceFactory,
    outputs: SourceOutputs,
    policy: RestartPolicy,
    clock: Clock,
) -> std::io::Result<NodeHandle> {
    let (name, metrics, status) = (outputs.name.clone(), outputs.metrics.clone(), outputs.status.clone());
    let thread = std::thread::Builder::new().name(format!("source:{name}")).spawn(move || {
        let _span = info_span!("source", name = %outputs.name).entered();
        let mut ctx = SourceContext::new(outputs.clone(), clock);
        let mut supervisor = Supervisor { policy, metrics: outputs.metrics.clone(), consecutive: 0 };
        let mut source: Option<Box<dyn Source>> = None;
        let ended = loop {
            if outputs.is_closed() {
                break None;
            }
            let Some(s) = source.as_mut() else {
                match build_started(&mut factory, |s: &mut (dyn Source + 'static)| s.start(&mut ctx)) {
                    Ok(s) => source = Some(s),
                    Err(e) if supervisor.failed(&e) => {}
                    Err(e) => break Some(e.to_string()),
                }
                continue;
            };
            match guarded(|| s.process(&mut ctx)) {
                Ok(Flow::Continue) => supervisor.consecutive = 0,
                Ok(Flow::End) => break None,
                Err(RuntimeError::BadInput(reason)) => {
                    outputs.metrics.record_skipped();
                    warn!(%reason, "skipped a corrupt frame");
                }
                Err(e) => {
                    if let Err(stop) = guarded(|| s.stop(&mut ctx)) {
                        warn!(error = %stop, "stopping after a failure failed too");
                    }
                    source = None;
                    if !supervisor.failed(&e) {
                        break Some(e.to_string());
                    }
                }
            }
        };
        let stopped = source.as_mut().map(|s| guarded(|| s.stop(&mut ctx)));
        let error = ended.or_else(|| match stopped {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        });
        match &error {
            Some(e) => error!(error = %e, "source ended with an error"),
            None => info!("stream ended"),
        }
        outputs.close(error);
    })?;
    Ok(NodeHandle { name, metrics, status, thread })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{EdgePolicy, edge, edge_with_signal};
    use crate::message::{Mask, MaskKind};

    fn mask(camera: &str, seq: u64) -> Packet {
        Packet::Mask(Mask {
            meta: FrameMeta { camera: camera.into(), seq, capture_ns: seq as i64, frame_id: None },
            kind: MaskKind::Motion,
            width: 1,
            height: 1,
            data: bytes::Bytes::from_static(&[0]),
            coverage: 0.0,
        })
    }

    struct Forward;
    impl Stage for Forward {
        fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
            match input.packet.meta().map(|m| m.seq) {
                Some(3) => Err(RuntimeError::BadInput("seq 3".into())),
                Some(5) => panic!("boom at 5"),
                _ => {
                    ctx.emit(input.packet);
                    Ok(())
                }
            }
        }
    }

    fn one_input(policy: EdgePolicy) -> (EdgeSender<Packet>, Inputs) {
        let signal = Signal::new();
        let (tx, rx) = edge_with_signal("in", policy, signal.clone());
        (tx, Inputs::new(vec![rx], signal, None))
    }

    fn fast() -> RestartPolicy {
        RestartPolicy { initial_backoff: Duration::from_millis(1), ..Default::default() }
    }

    #[test]
    fn restarts_after_a_panic_and_skips_bad_input() {
        let (tx, inputs) = one_input(EdgePolicy::Block { depth: 4 });
        let (out_tx, mut out_rx) = edge("out", EdgePolicy::Block { depth: 16 });
        let handle = spawn_stage(
            "fwd".into(),
            Box::new(|| Ok(Box::new(Forward) as Box<dyn Stage>)),
            inputs,
            vec![vec![out_tx]],
            fast(),
            Clock::Live,
        )
        .unwrap();
        for i in 0..8 {
            tx.push(mask("c", i));
        }
        drop(tx);
        let mut seqs = Vec::new();
        while let Some(p) = out_rx.pop() {
            seqs.push(p.meta().unwrap().seq);
        }
        handle.thread.join().unwrap();
        assert_eq!(seqs, [0, 1, 2, 4, 6, 7]);
        let s = handle.metrics.snapshot(now_ns());
        assert_eq!((s.received, s.emitted, s.skipped, s.failures, s.restarts), (8, 6, 1, 1, 1));
        assert_eq!(handle.status.state(), NodeState::Finished);
    }

    #[test]
    fn gives_up_after_max_restarts() {
        let (tx, inputs) = one_input(EdgePolicy::Block { depth: 1 });
        let policy = RestartPolicy {
            max_restarts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let handle = spawn_stage(
            "bad".into(),
            Box::new(|| Err(RuntimeError::Failed("no model".into()))),
            inputs,
            vec![],
            policy,
            Clock::Live,
        )
        .unwrap();
        handle.thread.join().unwrap();
        assert_eq!(handle.status.state(), NodeState::Failed);
        assert_eq!(handle.status.error().as_deref(), Some("no model"));
        assert_eq!(tx.push(mask("c", 0)), crate::edge::PushOutcome::Disconnected);
        assert_eq!(policy.backoff(1), Duration::from_millis(1));
        assert_eq!(policy.backoff(9), Duration::from_millis(2));
    }

    /// Emits the time its clock gives for each input.
    struct Now;
    impl Stage for Now {
        fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
            let mut m = match input.packet {
                Packet::Mask(m) => m,
                _ => return Err(RuntimeError::BadInput("not a mask".into())),
            };
            m.coverage = ctx.now_ns() as f64;
            ctx.emit(Packet::Mask(m));
            Ok(())
        }
    }

    #[test]
    fn the_clock_gives_the_input_time() {
        let (tx, inputs) = one_input(EdgePolicy::Block { depth: 4 });
        let (out_tx, mut out_rx) = edge("out", EdgePolicy::Block { depth: 16 });
        let factory = Box::new(|| Ok(Box::new(Now) as Box<dyn Stage>));
        let handle = spawn_stage("now".into(), factory, inputs, vec![vec![out_tx]], fast(), Clock::Replay).unwrap();
        for i in [5, 9] {
            tx.push(mask("c", i));
        }
        drop(tx);
        let mut times = Vec::new();
        while let Some(Packet::Mask(m)) = out_rx.pop() {
            times.push(m.coverage);
        }
        handle.thread.join().unwrap();
        assert_eq!(times, [5.0, 9.0]);
    }

    /// Panics on its third frame, once.
    struct Flaky {
        emitted: u64,
        panicked: Arc<std::sync::atomic::AtomicBool>,
    }
    impl Source for Flaky {
        fn process(&mut self, ctx: &mut SourceContext) -> Result<Flow> {
            if self.emitted == 2 && !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("camera gone");
            }
            if self.emitted == 5 || ctx.end_requested() {
                return Ok(Flow::End);
            }
            ctx.emit(mask(ctx.name(), self.emitted));
            self.emitted += 1;
            Ok(Flow::Continue)
        }
    }

    #[test]
    fn a_panicking_source_is_restarted_and_its_stream_ends() {
        let (tx, mut rx) = edge("out", EdgePolicy::Block { depth: 16 });
        let outputs = SourceOutputs::new("cam".into(), vec![tx]);
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = panicked.clone();
        let factory: SourceFactory = Box::new(move || Ok(Box::new(Flaky { emitted: 0, panicked: flag.clone() })));
        let handle = spawn_source(factory, outputs, fast(), Clock::Live).unwrap();
        let mut seqs = Vec::new();
        while let Some(p) = rx.pop() {
            seqs.push(p.meta().unwrap().seq);
        }
        handle.thread.join().unwrap();
        // Two frames, the panic, a new source from frame 0 to its end: the edge closed.
        assert_eq!(seqs, [0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(handle.status.state(), NodeState::Finished);
        let s = handle.metrics.snapshot(now_ns());
        assert_eq!((s.failures, s.restarts), (1, 1));
    }

    #[test]
    fn a_source_that_keeps_failing_closes_its_outputs() {
        let (tx, mut rx) = edge::<Packet>("out", EdgePolicy::Block { depth: 1 });
        let outputs = SourceOutputs::new("cam".into(), vec![tx]);
        let policy = RestartPolicy { max_restarts: 1, ..fast() };
        let handle =
            spawn_source(Box::new(|| Err(RuntimeError::Failed("no camera".into()))), outputs, policy, Clock::Live)
                .unwrap();
        assert!(rx.pop().is_none(), "the edge closes: downstream drains and ends");
        handle.thread.join().unwrap();
        assert_eq!(handle.status.state(), NodeState::Failed);
        assert_eq!(handle.status.error().as_deref(), Some("no camera"));
    }

    /// Records (tracks seq, frame seq) of each joined input.
    struct Pairs(Arc<Mutex<Vec<(u64, u64)>>>);
    impl Stage for Pairs {
        fn process(&mut self, input: Input, _ctx: &mut Context) -> Result<()> {
            let seq = |p: &Packet| p.meta().map_or(0, |m| m.seq);
            let with = input.with.as_ref().map_or(u64::MAX, seq);
            self.0.lock().push((seq(&input.packet), with));
            Ok(())
        }
    }

    #[test]
    fn joined_inputs_arrive_together() {
        let signal = Signal::new();
        let (frames, rf) = edge_with_signal("frames", EdgePolicy::Block { depth: 8 }, signal.clone());
        let (tracks, rt) = edge_with_signal("tracks", EdgePolicy::Block { depth: 8 }, signal.clone());
        let join = Join { primary: "tracks", with: "frames", capacity: 4 };
        let inputs = Inputs::new(vec![rf, rt], signal, Some((1, 0, join)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let handle = spawn_stage(
            "join".into(),
            Box::new(move || Ok(Box::new(Pairs(sink.clone())) as Box<dyn Stage>)),
            inputs,
            vec![],
            fast(),
            Clock::Live,
        )
        .unwrap();
        // Tracks of frame 0 before the frame; frame 1 never gets tracks.
        tracks.push(mask("c", 0));
        for seq in 0..3 {
            frames.push(mask("c", seq));
        }
        tracks.push(mask("c", 2));
        drop((frames, tracks));
        handle.thread.join().unwrap();
        assert_eq!(*seen.lock(), [(0, 0), (2, 2)]);
        assert_eq!(handle.metrics.snapshot(now_ns()).unpaired, 1);
    }
}
