//! A live RTSP camera that goes away and comes back: a local RTSP server (GStreamer's RTSP
//! server library) is stopped mid-stream and started again on the same port; the source
//! reconnects (backoff, counted) and frames keep coming, their numbers going on. Beside it,
//! a live source that sends nothing (no error, no EOS) is restarted by the stall watchdog.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::time::{Duration, Instant};

use gstreamer_rtsp_server as rtsp;
use ocellus_io::source::{GstSourceSpec, OutputFormat, Reconnect};
use ocellus_runtime::node::NodeState;
use ocellus_runtime::{EdgePolicy, Packet, Pipeline};
use ocellus_tests::{Collected, config_file, gst_source, scratch_dir};
use rtsp::glib;
use rtsp::prelude::*;

/// A small moving picture, MJPEG over RTP (plugins-good only).
const MEDIA: &str = "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
                     ! jpegenc ! rtpjpegpay name=pay0 pt=96 )";

/// An RTSP server on its own thread and GLib main context.
struct RtspServer {
    main_loop: glib::MainLoop,
    thread: std::thread::JoinHandle<()>,
}

impl RtspServer {
    fn start(port: u16) -> Self {
        gstreamer::init().unwrap();
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::spawn(move || {
            let context = glib::MainContext::new();
            context
                .with_thread_default(|| {
                    let main_loop = glib::MainLoop::new(Some(&context), false);
                    let server = rtsp::RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = rtsp::RTSPMediaFactory::new();
                    factory.set_launch(MEDIA);
                    factory.set_shared(true);
                    server.mount_points().unwrap().add_factory("/cam", factory);
                    let source = server.attach(Some(&context)).unwrap();
                    ready.send(main_loop.clone()).unwrap();
                    main_loop.run();
                    // Gone: every client disconnected, the port closed.
                    server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                    if let Some(source) = context.find_source_by_id(&source) {
                        source.destroy();
                    }
                })
                .unwrap();
        });
        let main_loop = started.recv_timeout(Duration::from_secs(5)).unwrap();
        Self { main_loop, thread }
    }

    fn stop(self) {
        self.main_loop.quit();
        self.thread.join().unwrap();
    }
}

fn frames(collected: &Collected) -> Vec<u64> {
    collected
        .0
        .lock()
        .iter()
        .filter_map(|(p, _)| match p {
            Packet::Frame(f) => Some(f.meta.seq),
            _ => None,
        })
        .collect()
}

fn wait_for(collected: &Collected, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while frames(collected).len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} frames", frames(collected).len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_source_reconnects_when_the_server_comes_back() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).with_test_writer().init();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rtsp_reconnect");
    // The source as a configuration declares it (RTSP reconnects by default; faster here).
    let config = config_file(
        &dir,
        "rtsp.toml",
        &format!(
            r#"
[[source]]
name = "gate"
preset = {{ kind = "rtsp", url = "rtsp://127.0.0.1:{port}/cam", latency_ms = 50 }}
reconnect = {{ initial = "100ms", max = "1s", stall = "2s" }}

[[sink]]
kind = "null"
inputs = ["gate"]
"#
        ),
    );
    let started = Instant::now();
    let server = RtspServer::start(port);
    let collected = Collected::default();
    let sink = collected.clone();
    let mut pipeline = Pipeline::new();
    pipeline.source("gate", config.sources[0].kind.factory()).stage(
        "collect",
        &["gate"],
        EdgePolicy::Block { depth: 8 },
        sink.factory(),
    );
    let runner = std::thread::spawn(move || pipeline.run());
    // A camera that stays silent: only the watchdog notices.
    let silent = GstSourceSpec {
        reconnect: Some(Reconnect {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            stall: Some(Duration::from_millis(300)),
        }),
        ..GstSourceSpec::new(
            "videotestsrc is-live=true ! video/x-raw,width=32,height=32 ! valve drop=true",
            OutputFormat::Rgb,
        )
    };
    let mut stalled = Pipeline::new();
    stalled.source("silent", gst_source(silent)).stage(
        "drop",
        &["silent"],
        EdgePolicy::Latest,
        Collected::default().factory(),
    );
    let stalled = std::thread::spawn(move || stalled.run());

    wait_for(&collected, 15, Duration::from_secs(10));
    server.stop();
    let before = frames(&collected).len();
    std::thread::sleep(Duration::from_millis(1000));
    let during = frames(&collected).len();
    let server = RtspServer::start(port);
    wait_for(&collected, during + 15, Duration::from_secs(15));

    // Ctrl-C: the source ends its stream and the pipeline drains.
    let status = std::process::Command::new("kill").args(["-INT", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    let report = runner.join().unwrap().unwrap();
    server.stop();
    let silent = stalled.join().unwrap().unwrap();
    println!("{silent}");
    let silent = silent.node("silent").unwrap();
    assert_eq!(silent.state, NodeState::Finished);
    assert!(silent.metrics.stalls >= 2 && silent.metrics.restarts >= silent.metrics.stalls, "{silent:?}");
    println!("{report}");
    let source = report.node("gate").unwrap();
    assert_eq!(source.state, NodeState::Finished, "{report}");
    assert!(source.metrics.restarts >= 1, "reconnections are counted: {report}");
    let seqs = frames(&collected);
    println!(
        "{} frames ({before} before the server stopped, {} after it came back), {} reconnections, {} stalls, {:.1} s",
        seqs.len(),
        seqs.len() - during,
        source.metrics.restarts,
        source.metrics.stalls,
        started.elapsed().as_secs_f64()
    );
    assert!(seqs.len() >= during + 15);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frame numbers go on across reconnections: {seqs:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
