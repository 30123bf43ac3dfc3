//! A failing actor is restarted by its supervisor and the pipeline still finishes.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ocellus_io::source::{GstSourceSpec, OutputFormat};
use ocellus_runtime::node::NodeState;
use ocellus_runtime::{Context, EdgePolicy, Input, Pipeline, PortType, RestartPolicy, RuntimeError, Stage};
use ocellus_tests::{Collected, gst_source};

const FRAMES: u64 = 40;

/// Fails on one frame: with an error, or with a panic.
struct FailOnce {
    fail_on: u64,
    panic: bool,
}

impl Stage for FailOnce {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        if input.packet.meta().map(|m| m.seq) == Some(self.fail_on) {
            if self.panic {
                panic!("injected panic on frame {}", self.fail_on);
            }
            return Err(RuntimeError::Failed(format!("injected failure on frame {}", self.fail_on)));
        }
        ctx.emit(input.packet);
        Ok(())
    }
}

fn run(panic: bool) {
    let fail_on = 10;
    let starts = Arc::new(AtomicU32::new(0));
    let collected = Collected::default();
    let mut p = Pipeline::new();
    let factory_starts = starts.clone();
    let sink = collected.clone();
    p.restart_policy(RestartPolicy {
        max_restarts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    })
    .source(
        "cam",
        gst_source(GstSourceSpec {
            launch: format!("videotestsrc num-buffers={FRAMES} ! video/x-raw,width=64,height=48"),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .actor(
        "flaky",
        &["cam"],
        EdgePolicy::Block { depth: 4 },
        PortType::Frame,
        Box::new(move || {
            factory_starts.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FailOnce { fail_on, panic }) as Box<dyn Stage>)
        }),
    )
    .stage("sink", &["flaky"], EdgePolicy::Block { depth: 4 }, sink.factory());
    let report = p.run().expect("pipeline runs");
    println!("{report}");
    let flaky = report.node("flaky").expect("flaky node");
    assert_eq!(flaky.state, NodeState::Finished);
    assert_eq!((flaky.metrics.failures, flaky.metrics.restarts), (1, 1));
    assert_eq!(starts.load(Ordering::SeqCst), 2, "built once, rebuilt once");
    // With `block` edges nothing is lost but the frame that killed the actor.
    let seqs: Vec<u64> = collected.take().iter().filter_map(|(p, _)| p.meta().map(|m| m.seq)).collect();
    let expected: Vec<u64> = (0..FRAMES).filter(|&s| s != fail_on).collect();
    assert_eq!(seqs, expected);
    assert_eq!(report.node("sink").map(|n| n.state), Some(NodeState::Finished));
}

#[test]
fn restarted_after_an_error() {
    run(false);
}

#[test]
fn restarted_after_a_panic() {
    run(true);
}
