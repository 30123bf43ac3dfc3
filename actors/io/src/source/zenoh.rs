//! The zenoh source: frames from a zenoh key expression (raw, JPEG, PNG, ROS 2 images).
//!
//! ```text
//! zenoh session (thread zenoh:<name>, multi-thread tokio runtime)
//!   subscriber callback ──intake edge (named policy, counted)──► source thread source:<name>
//!                                                                 decode, count and skip bad
//!                                                                 messages ──► outputs
//! ```
//!
//! The session opens when the source starts, on its own thread (never on an actix arbiter,
//! where zenoh's blocking paths panic), and closes when it stops. The subscriber's callback only
//! pushes the sample into the bounded intake edge (`latest` by default: a slow pipeline sees
//! the newest frame; `block` makes zenoh wait, which with a `block` congestion-controlled
//! publisher loses nothing). Decoding (JPEG, PNG, CDR) runs on the source thread. A message
//! that does not decode, or is over the source's `limits` (message bytes, image pixels as its
//! header announces them: checked before anything is decompressed), is counted (the source's
//! `skipped`) and skipped. The stream ends after
//! `frames` frames, after `idle_timeout` without a message, or when the pipeline asks.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ocellus_runtime::edge::{EdgePolicy, EdgeReceiver, Recv, edge};
use ocellus_runtime::node::{Flow, Source, SourceContext};
use ocellus_runtime::{Frame, FrameMeta, Packet, RuntimeError, now_ns};
use ocellus_wire::{FrameLimits, MessageInfo, WireFormat, decode_frame_within, ros2};
use parking_lot::Mutex;
use tracing::{info, warn};
use zenoh::sample::Sample;

use crate::session::{self, SessionSpec, payload_bytes};

/// How long the source waits for a message before it looks at its limits and requests.
const WAIT: Duration = Duration::from_millis(50);

/// What a zenoh source subscribes to and how it reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZenohSourceSpec {
    /// The session.
    pub session: SessionSpec,
    /// Key expression subscribed to.
    pub key: String,
    /// How frames are encoded.
    pub format: WireFormat,
    /// The edge between zenoh's callback and the decoder.
    pub intake: EdgePolicy,
    /// End after this many frames.
    pub frames: Option<u64>,
    /// End after this long without a message.
    pub idle_timeout: Option<Duration>,
    /// A ROS 2 topic: the source appears in the ROS 2 graph as a node with a subscription
    /// (rmw_zenoh liveliness tokens), so `ros2 topic info` lists it and publishers that wait
    /// for subscribers start sending.
    pub ros2: Option<Ros2Subscription>,
    /// What a message may hold: larger messages and images are refused (counted as skipped)
    /// before they are decoded.
    pub limits: FrameLimits,
}

/// How a zenoh source that reads a ROS 2 topic announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ros2Subscription {
    /// `ROS_DOMAIN_ID`.
    pub domain: u32,
    /// The topic (a full ROS name).
    pub topic: String,
    /// Its message type.
    pub ty: ocellus_wire::ros2::MsgType,
    /// The node's name.
    pub node: String,
    /// Its QoS (in the subscription's token).
    pub qos: ros2::Qos,
}

/// The entity id of a source's ROS 2 subscription within its node.
const SUBSCRIPTION_ENTITY: u32 = 10;

/// Capture time of a sample without one in its payload: the rmw_zenoh attachment's source
/// time, else the zenoh timestamp, else now.
fn sample_time(sample: &Sample) -> i64 {
    if let Some(a) = sample.attachment().and_then(|a| ros2::Attachment::decode(&a.to_bytes()).ok()) {
        return a.source_timestamp;
    }
    sample.timestamp().map_or_else(now_ns, session::timestamp_ns)
}

/// The running session of a started source.
struct Subscription {
    intake: EdgeReceiver<Sample>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    host: Option<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Subscription {
    /// Closes the session and joins its thread; the error the session ended with, if any.
    fn close(mut self) -> Option<String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.host.take().is_some_and(|h| h.join().is_err()) {
            warn!("the zenoh session thread panicked");
        }
        self.error.lock().take()
    }
}

/// The zenoh source.
pub struct ZenohSource {
    spec: ZenohSourceSpec,
    subscription: Option<Subscription>,
    emitted: u64,
    skipped: u64,
    last_message: Instant,
}

impl ZenohSource {
    /// A source reading `spec` once started.
    pub fn new(spec: ZenohSourceSpec) -> Self {
        Self { spec, subscription: None, emitted: 0, skipped: 0, last_message: Instant::now() }
    }
}

impl Source for ZenohSource {
    fn start(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        let name = ctx.name().clone();
        let (tx, intake) = edge::<Sample>(format!("{name}.zenoh"), self.spec.intake);
        ctx.metrics().attach_input(intake.stats().clone());
        // A bad configuration is fatal here, before any thread starts.
        self.spec.session.to_config().map_err(RuntimeError::Fatal)?;
        let session_spec = self.spec.session.clone();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (key, host_error) = (self.spec.key.clone(), error.clone());
        let ros2 = self.spec.ros2.clone();
        let host = session::spawn_host(format!("zenoh:{name}"), move || async move {
            let session = match session::open(&session_spec).await {
                Ok(s) => s,
                Err(e) => {
                    *host_error.lock() = Some(e);
                    return;
                }
            };
            match session
                .declare_subscriber(&key)
                .callback(move |sample| {
                    tx.push(sample);
                })
                .await
            {
                Ok(subscriber) => {
                    info!(%key, zid = %session.zid(), "zenoh source subscribed");
                    // In the ROS 2 graph: the node and its subscription (rmw_zenoh tokens).
                    let mut tokens = Vec::new();
                    if let Some(r) = &ros2 {
                        let node = ros2::NodeIdentity {
                            domain: r.domain,
                            zid: session.zid().to_string(),
                            node_id: session::next_node_id(),
                            namespace: "/".to_owned(),
                            name: r.node.clone(),
                            enclave: String::new(),
                        };
                        let subscription = node.endpoint_token(
                            SUBSCRIPTION_ENTITY,
                            ros2::EntityKind::Subscription,
                            &r.topic,
                            r.ty,
                            ros2::TypeHashes::Rihs01,
                            r.qos,
                        );
                        for token in [node.node_token(), subscription] {
                            match session.liveliness().declare_token(token.clone()).await {
                                Ok(t) => tokens.push(t),
                                Err(e) => warn!(error = %e, %token, "declaring a ROS 2 liveliness token"),
                            }
                        }
                    }
                    let _ = stop_rx.await;
                    drop(tokens);
                    if let Err(e) = subscriber.undeclare().await {
                        warn!(error = %e, "undeclaring the zenoh subscriber");
                    }
                }
                Err(e) => *host_error.lock() = Some(format!("subscribing to {key:?}: {e}")),
            }
            if let Err(e) = session::close(session, &session_spec).await {
                warn!(error = %e, "closing the zenoh session");
            }
        })
        .map_err(|e| RuntimeError::Failed(format!("starting the zenoh session thread: {e}")))?;
        self.subscription = Some(Subscription { intake, stop: Some(stop_tx), host: Some(host), error });
        self.last_message = Instant::now();
        Ok(())
    }

    fn process(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<Flow> {
        if ctx.end_requested() || self.spec.frames.is_some_and(|n| self.emitted >= n) {
            return Ok(Flow::End);
        }
        let Some(sub) = self.subscription.as_mut() else { return Ok(Flow::End) };
        let sample = match sub.intake.pop_timeout(WAIT) {
            Recv::Item(sample) => sample,
            Recv::Timeout => {
                if let Some(e) = sub.error.lock().take() {
                    return Err(RuntimeError::Failed(e));
                }
                if self.spec.idle_timeout.is_some_and(|t| self.last_message.elapsed() >= t) {
                    info!(source = %ctx.name(), "no message for the idle timeout: end of stream");
                    return Ok(Flow::End);
                }
                return Ok(Flow::Continue);
            }
            Recv::Closed => {
                let error = sub.error.lock().take();
                return error.map_or(Ok(Flow::End), |e| Err(RuntimeError::Failed(e)));
            }
        };
        self.last_message = Instant::now();
        let info = MessageInfo { seq: self.emitted, capture_ns: sample_time(&sample) };
        match decode_frame_within(self.spec.format, &payload_bytes(sample.payload()), info, &self.spec.limits) {
            Ok(d) => {
                // A ROS 2 image's `header.frame_id` is kept for what is published about it.
                let frame_id = d.frame_id.filter(|f| !f.is_empty()).map(Arc::<str>::from);
                let meta = FrameMeta { camera: ctx.name().clone(), seq: d.seq, capture_ns: d.capture_ns, frame_id };
                let frame = Frame::new(meta, d.layout, d.pixels)?;
                if !ctx.emit(Packet::Frame(frame)) {
                    return Ok(Flow::End);
                }
                self.emitted += 1;
            }
            Err(e) => {
                ctx.metrics().record_skipped();
                self.skipped += 1;
                // The first few, then one in a hundred: a bad publisher must not flood the log.
                if self.skipped <= 5 || self.skipped.is_multiple_of(100) {
                    warn!(source = %ctx.name(), key = %sample.key_expr(), error = %e, skipped = self.skipped, "skipped a message");
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn stop(&mut self, _ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        match self.subscription.take().and_then(Subscription::close) {
            Some(e) => Err(RuntimeError::Failed(e)),
            None => Ok(()),
        }
    }
}
