//! Stages: a [`Processor`] on a dedicated thread, fed by one bounded edge, supervised.
//!
//! The supervisor lives on the stage's own thread. When the processor returns an error other
//! than [`ActorError::BadInput`] (or panics: the panic is caught at the processor boundary),
//! the processor is dropped and a new one is built by the factory after an exponential
//! backoff; inputs that arrive meanwhile are handled by the edge's policy. After
//! `max_restarts` consecutive failures the stage gives up: its input edge disconnects (further
//! pushes are counted as dropped), its outputs close, and the pipeline reports the failure.
//! A malformed input is counted and skipped without a restart.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{error, info, info_span, warn};

use crate::edge::{EdgeReceiver, EdgeSender};
use crate::frame::Packet;
use crate::metrics::StageMetrics;
use crate::{ActorError, Result, now_ns};

/// The work of one actor: handles one input at a time, on the stage's own thread.
///
/// The processor is built on that thread by its factory, so it may hold thread-bound state
/// (CUDA streams, libtorch tensors, GStreamer objects).
pub trait Processor {
    /// Handles one input, emitting any outputs through `out`.
    ///
    /// Return [`ActorError::BadInput`] for an input that cannot be used (it is counted and
    /// skipped); any other error makes the supervisor restart the processor.
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()>;

    /// Called once when the input has ended and been drained (flush here).
    fn finish(&mut self, _out: &mut Outputs) -> Result<()> {
        Ok(())
    }
}

/// Builds a processor; called on the stage thread at start and after every failure.
pub type ProcessorFactory = Box<dyn FnMut() -> Result<Box<dyn Processor>> + Send>;

/// How a stage's supervisor restarts its processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Consecutive failures tolerated before the stage gives up.
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

/// Where a stage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StageState {
    /// Handling inputs (or waiting to restart).
    Running = 0,
    /// Its input ended and it has flushed.
    Finished = 1,
    /// It gave up after too many failures.
    Failed = 2,
}

/// Shared view of a stage's state, read by the monitor.
#[derive(Debug, Default)]
pub struct StageStatus {
    state: AtomicU8,
    error: Mutex<Option<String>>,
}

impl StageStatus {
    /// The state now.
    pub fn state(&self) -> StageState {
        match self.state.load(Ordering::Acquire) {
            1 => StageState::Finished,
            2 => StageState::Failed,
            _ => StageState::Running,
        }
    }

    /// The error a failed stage gave up on.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Marks the stage finished.
    pub fn set_finished(&self) {
        self.state.store(StageState::Finished as u8, Ordering::Release);
    }

    /// Marks the stage failed with `error`.
    pub fn set_failed(&self, error: String) {
        *self.error.lock() = Some(error);
        self.state.store(StageState::Failed as u8, Ordering::Release);
    }
}

/// The output side handed to a processor.
pub struct Outputs {
    stage: Arc<str>,
    senders: Vec<EdgeSender<Packet>>,
    metrics: Arc<StageMetrics>,
    upstream_pushed: u64,
}

impl Outputs {
    /// Outputs of `stage` into `senders`, recorded in `metrics`.
    pub fn new(stage: Arc<str>, senders: Vec<EdgeSender<Packet>>, metrics: Arc<StageMetrics>) -> Self {
        Self { stage, senders, metrics, upstream_pushed: 0 }
    }

    /// Sends `packet` to every downstream edge (each applies its own policy) and records the
    /// capture-to-output latency.
    pub fn emit(&mut self, packet: Packet) {
        self.metrics.record_output(packet.meta().map(|m| m.capture_ns), now_ns());
        if let Some((last, rest)) = self.senders.split_last() {
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

    /// The stage's name.
    pub fn stage(&self) -> &Arc<str> {
        &self.stage
    }

    /// How many items had been pushed into this stage's input edge when the current input
    /// was taken (see [`EdgeReceiver::pushed_at_last_pop`]).
    pub fn upstream_pushed(&self) -> u64 {
        self.upstream_pushed
    }
}

/// A running stage.
pub struct StageHandle {
    /// The stage's name.
    pub name: Arc<str>,
    /// Its metrics.
    pub metrics: Arc<StageMetrics>,
    /// Its state.
    pub status: Arc<StageStatus>,
    /// Its thread.
    pub thread: JoinHandle<()>,
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
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(ActorError::Failed(panic_message(&*p))))
}

/// Starts a stage thread named after the stage.
pub fn spawn_stage(
    name: Arc<str>,
    mut factory: ProcessorFactory,
    mut input: EdgeReceiver<Packet>,
    outputs: Vec<EdgeSender<Packet>>,
    policy: RestartPolicy,
) -> std::io::Result<StageHandle> {
    let metrics = Arc::new(StageMetrics::default());
    metrics.attach_input(input.stats().clone());
    let status = Arc::new(StageStatus::default());
    let (thread_metrics, thread_status, thread_name) = (metrics.clone(), status.clone(), name.clone());
    let thread = std::thread::Builder::new().name(format!("stage:{name}")).spawn(move || {
        let _span = info_span!("stage", name = %thread_name).entered();
        let mut out = Outputs::new(thread_name.clone(), outputs, thread_metrics.clone());
        let mut processor: Option<Box<dyn Processor>> = None;
        let mut consecutive_failures = 0u32;
        // Returns false when the stage must give up.
        let on_failure = |error: String, consecutive: &mut u32| -> bool {
            thread_metrics.record_failure();
            *consecutive += 1;
            if *consecutive > policy.max_restarts {
                error!(%error, failures = *consecutive, "giving up");
                thread_status.set_failed(error);
                return false;
            }
            let wait = policy.backoff(*consecutive);
            warn!(%error, attempt = *consecutive, wait_ms = wait.as_millis() as u64, "restarting");
            std::thread::sleep(wait);
            thread_metrics.record_restart();
            true
        };
        loop {
            if processor.is_none() {
                match guarded(&mut factory) {
                    Ok(p) => processor = Some(p),
                    Err(e) => {
                        if on_failure(e.to_string(), &mut consecutive_failures) {
                            continue;
                        }
                        return; // input and outputs drop here: upstream sees a disconnect
                    }
                }
            }
            let Some(p) = processor.as_mut() else { continue };
            let Some(packet) = input.pop() else { break };
            thread_metrics.record_received();
            out.upstream_pushed = input.pushed_at_last_pop();
            match guarded(|| p.process(packet, &mut out)) {
                Ok(()) => consecutive_failures = 0,
                Err(ActorError::BadInput(reason)) => {
                    thread_metrics.record_skipped();
                    warn!(%reason, "skipped a malformed input");
                }
                Err(e) => {
                    processor = None;
                    if !on_failure(e.to_string(), &mut consecutive_failures) {
                        return;
                    }
                }
            }
        }
        if let Some(Err(e)) = processor.as_mut().map(|p| guarded(|| p.finish(&mut out))) {
            error!(error = %e, "finishing failed");
            thread_status.set_failed(e.to_string());
            return;
        }
        info!("finished");
        thread_status.set_finished();
    })?;
    Ok(StageHandle { name, metrics, status, thread })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{EdgePolicy, edge};
    use crate::frame::{FrameMeta, Mask, MaskKind};

    fn mask(seq: u64) -> Packet {
        Packet::Mask(Mask {
            meta: FrameMeta { camera: "c".into(), seq, capture_ns: 0 },
            kind: MaskKind::Motion,
            width: 1,
            height: 1,
            data: bytes::Bytes::from_static(&[0]),
            coverage: 0.0,
        })
    }

    struct Forward;
    impl Processor for Forward {
        fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
            match input.meta().map(|m| m.seq) {
                Some(3) => Err(ActorError::BadInput("seq 3".into())),
                Some(5) => panic!("boom at 5"),
                _ => {
                    out.emit(input);
                    Ok(())
                }
            }
        }
    }

    #[test]
    fn restarts_after_a_panic_and_skips_bad_input() {
        let (tx, rx) = edge("in", EdgePolicy::Block { depth: 4 });
        let (out_tx, mut out_rx) = edge("out", EdgePolicy::Block { depth: 16 });
        let policy = RestartPolicy { initial_backoff: Duration::from_millis(1), ..Default::default() };
        let handle = spawn_stage(
            "fwd".into(),
            Box::new(|| Ok(Box::new(Forward) as Box<dyn Processor>)),
            rx,
            vec![out_tx],
            policy,
        )
        .unwrap();
        for i in 0..8 {
            tx.push(mask(i));
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
        assert_eq!(handle.status.state(), StageState::Finished);
    }

    #[test]
    fn gives_up_after_max_restarts() {
        let (tx, rx) = edge("in", EdgePolicy::Block { depth: 1 });
        let policy = RestartPolicy {
            max_restarts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let handle =
            spawn_stage("bad".into(), Box::new(|| Err(ActorError::Failed("no model".into()))), rx, vec![], policy)
                .unwrap();
        handle.thread.join().unwrap();
        assert_eq!(handle.status.state(), StageState::Failed);
        assert_eq!(handle.status.error().as_deref(), Some("no model"));
        assert_eq!(tx.push(mask(0)), crate::edge::PushOutcome::Disconnected);
        assert_eq!(policy.backoff(1), Duration::from_millis(1));
        assert_eq!(policy.backoff(9), Duration::from_millis(2));
    }
}
