//! A 500 fps camera into an actor that needs 20 ms a frame: edges stay bounded, drops are
//! counted, and with `latest` the actor always gets the newest frame.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::time::Duration;

use ocellus_io::source::{GstSourceSpec, OutputFormat};
use ocellus_runtime::{Context, DropPolicy, EdgePolicy, Input, Pipeline, PipelineReport, Stage, stage_factory};
use ocellus_tests::{Collected, gst_source};

const FRAMES: u64 = 250;
const WORK: Duration = Duration::from_millis(20);

struct Slow(Collected);

impl Stage for Slow {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        let pushed = ctx.upstream_pushed();
        std::thread::sleep(WORK);
        ctx.record_consumed(input.packet.meta().map(|m| m.capture_ns));
        self.0.0.lock().push((input.packet, pushed));
        Ok(())
    }
}

fn run(policy: EdgePolicy) -> (PipelineReport, Vec<(u64, u64)>) {
    let collected = Collected::default();
    let slow = collected.clone();
    let mut p = Pipeline::new();
    p.source(
        "fast",
        gst_source(GstSourceSpec {
            launch: format!(
                "videotestsrc is-live=true num-buffers={FRAMES} ! video/x-raw,width=64,height=48,framerate=500/1"
            ),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .stage("slow", &["fast"], policy, stage_factory(move || Slow(slow.clone())));
    let report = p.run().expect("pipeline runs");
    println!("{report}");
    let got = collected.take().into_iter().filter_map(|(p, pushed)| p.meta().map(|m| (m.seq, pushed))).collect();
    (report, got)
}

#[test]
fn latest_delivers_the_newest_frame_and_counts_drops() {
    let (report, got) = run(EdgePolicy::Latest);
    let slow = report.node("slow").expect("slow").metrics;
    assert_eq!(slow.input.pushed, FRAMES);
    assert!(slow.input.max_depth <= 1, "depth {}", slow.input.max_depth);
    assert!(slow.input.dropped > FRAMES / 2, "a 20 ms actor cannot keep up with 500 fps: {slow:?}");
    assert_eq!(slow.input.delivered + slow.input.dropped, FRAMES, "every frame is delivered or counted");
    assert_eq!(got.len() as u64, slow.input.delivered);
    for (seq, pushed) in &got {
        assert_eq!(seq + 1, *pushed, "frame {seq} was taken when {pushed} frames had been pushed: not the newest");
    }
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn queue_stays_within_its_depth_and_drops_the_oldest() {
    let depth = 4;
    let (report, got) = run(EdgePolicy::Queue { depth, drop: DropPolicy::Oldest });
    let slow = report.node("slow").expect("slow").metrics;
    assert!(slow.input.max_depth <= depth as u64, "depth {}", slow.input.max_depth);
    assert!(slow.input.dropped > FRAMES / 2);
    assert_eq!(slow.input.delivered + slow.input.dropped, FRAMES);
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // The stream drains at EOS: the last `depth` frames are never dropped.
    assert_eq!(&seqs[seqs.len() - depth..], &(FRAMES - depth as u64..FRAMES).collect::<Vec<_>>()[..]);
}
