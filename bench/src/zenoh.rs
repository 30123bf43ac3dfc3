//! `ocellus-bench zenoh`: 1080p RGB frames between two local processes over zenoh, with and
//! without shared memory.
//!
//! The publisher is a child `ocellus-bench` process running a real pipeline: a synthetic source →
//! the zenoh sink (`frames = true`, raw frames, congestion control `block`; with shared
//! memory, frames are written into a pool and the subscriber maps them). The subscriber is
//! this process: the zenoh source (a `block` intake) → a stage that records arrival times.
//! Without shared memory both sessions disable it, so frames go over loopback TCP.
//! Throughput is counted from the first to the last arrival (frames published before the
//! subscription reached the publisher are not counted); latency is from the publisher's
//! capture stamp to the subscriber's stage, both on this machine's clock, at a paced rate.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocellus_io::session::SessionSpec;
use ocellus_io::sink::{KeyStyle, ZenohSink, ZenohSinkSpec};
use ocellus_io::source::{SyntheticSource, SyntheticSpec, ZenohSource, ZenohSourceSpec};
use ocellus_runtime::node::{Flow, SourceContext};
use ocellus_runtime::{Context, EdgePolicy, Input, Pipeline, Source, Stage, now_ns, source_factory, stage_factory};
use ocellus_wire::WireFormat;
use parking_lot::Mutex;

/// Camera name of the benchmark frames (the key is `bench/<camera>/frames`).
const CAMERA: &str = "bench";

/// One case.
#[derive(Debug, Clone, Copy)]
pub struct ZenohBench {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Frames the publisher sends.
    pub frames: u64,
    /// Publisher rate (`None`: as fast as it can).
    pub fps: Option<f64>,
    /// Publish from a shared-memory pool (else both sessions disable shared memory).
    pub shm: bool,
}

/// What one case measured.
#[derive(Debug, Clone, Copy)]
pub struct ZenohBenchResult {
    /// The case.
    pub case: ZenohBench,
    /// Frames received.
    pub received: u64,
    /// Frames per second from the first to the last arrival.
    pub fps: f64,
    /// Capture-to-subscriber latency, median, ms.
    pub latency_p50_ms: f64,
    /// Capture-to-subscriber latency, 99th percentile, ms.
    pub latency_p99_ms: f64,
}

/// Records (arrival, capture) of every frame.
struct Arrivals(Arc<Mutex<Vec<(Instant, i64)>>>);

impl Stage for Arrivals {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        let capture = input.packet.meta().map(|m| m.capture_ns);
        self.0.lock().push((Instant::now(), now_ns() - capture.unwrap_or(0)));
        ctx.record_consumed(capture);
        Ok(())
    }
}

/// The synthetic source, starting once the publisher's session has had time to connect and
/// learn the subscription (frames published before would not be received).
struct AfterConnect(SyntheticSource);

/// How long the publisher waits for its session before the first frame.
const CONNECT_WAIT: Duration = Duration::from_millis(500);

impl Source for AfterConnect {
    fn start(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        std::thread::sleep(CONNECT_WAIT);
        self.0.start(ctx)
    }

    fn process(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<Flow> {
        self.0.process(ctx)
    }
}

fn session(listen: &[&str], connect: &[&str], shm: bool) -> SessionSpec {
    SessionSpec { shared_memory: Some(shm), ..SessionSpec::loopback(listen, connect) }
}

/// The child side: publishes `frames` synthetic frames to `endpoint` through the zenoh sink.
pub fn publish(
    endpoint: &str,
    width: usize,
    height: usize,
    frames: u64,
    fps: Option<f64>,
    shm: bool,
) -> anyhow::Result<()> {
    let frame_bytes = width * height * 3 + ocellus_wire::raw::HEADER_LEN;
    let spec = Arc::new(ZenohSinkSpec {
        session: session(&[], &[endpoint], shm),
        keys: KeyStyle::Zenoh { prefix: "bench".into() },
        frames: true,
        block_on_congestion: true,
        shm_pool_bytes: shm.then_some(frame_bytes * 8),
        qos: Default::default(),
        frame_ids: Default::default(),
    });
    let source = SyntheticSpec { width, height, frames, fps };
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_secs(3600))
        .source(CAMERA, source_factory(move || AfterConnect(SyntheticSource::new(source))))
        .stage(
            "zenoh",
            &[CAMERA],
            EdgePolicy::Block { depth: 2 },
            stage_factory(move || ZenohSink::new("zenoh", spec.clone())),
        );
    let report = p.run()?;
    anyhow::ensure!(report.failures().next().is_none(), "publisher failed:\n{report}");
    Ok(())
}

fn percentile_ms(sorted_ns: &[i64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 * 1e-6
}

/// Runs one case: this process subscribes, a child `ocellus-bench` publishes.
pub fn run(case: ZenohBench) -> anyhow::Result<ZenohBenchResult> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let arrivals: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let spec = ZenohSourceSpec {
        session: session(&[&endpoint], &[], case.shm),
        key: format!("bench/{CAMERA}/frames"),
        format: WireFormat::Raw,
        intake: EdgePolicy::Block { depth: 2 },
        frames: Some(case.frames),
        idle_timeout: Some(Duration::from_secs(3)),
        ros2: None,
        limits: ocellus_wire::FrameLimits::DEFAULT,
    };
    let mut p = Pipeline::new();
    let sink = arrivals.clone();
    p.metrics_every(Duration::from_secs(3600))
        .source(CAMERA, source_factory(move || ZenohSource::new(spec.clone())))
        .stage("arrivals", &[CAMERA], EdgePolicy::Block { depth: 2 }, stage_factory(move || Arrivals(sink.clone())));
    let receiver = std::thread::spawn(move || p.run());
    std::thread::sleep(Duration::from_millis(300));

    let mut child = Command::new(std::env::current_exe()?);
    child.args(["zenoh", "--publish", &endpoint, "--frames", &case.frames.to_string()]);
    child.args(["--width", &case.width.to_string(), "--height", &case.height.to_string()]);
    if let Some(fps) = case.fps {
        child.args(["--fps", &fps.to_string()]);
    }
    if case.shm {
        child.arg("--shm");
    }
    let status = child.env("RUST_LOG", "warn").stdin(Stdio::null()).status()?;
    let report = receiver.join().map_err(|_| anyhow::anyhow!("the subscriber panicked"))??;
    anyhow::ensure!(status.success(), "the publisher failed ({status})");
    anyhow::ensure!(report.failures().next().is_none(), "subscriber failed:\n{report}");

    let arrivals = arrivals.lock().clone();
    let span = match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) => last.0.duration_since(first.0).as_secs_f64(),
        _ => 0.0,
    };
    let fps = if arrivals.len() > 1 && span > 0.0 { (arrivals.len() - 1) as f64 / span } else { 0.0 };
    let mut latencies: Vec<i64> = arrivals.iter().map(|&(_, l)| l).collect();
    latencies.sort_unstable();
    Ok(ZenohBenchResult {
        case,
        received: arrivals.len() as u64,
        fps,
        latency_p50_ms: percentile_ms(&latencies, 0.5),
        latency_p99_ms: percentile_ms(&latencies, 0.99),
    })
}
