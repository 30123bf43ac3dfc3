//! Source failures: the error names the GStreamer element, and the rest of the pipeline ends
//! cleanly instead of hanging.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_io::IoError;
use ocellus_io::source::{GstSourceSpec, OutputFormat};
use ocellus_runtime::node::NodeState;
use ocellus_runtime::{EdgePolicy, Pipeline};
use ocellus_tests::{Collected, gst_source};

#[test]
fn a_failing_element_is_named_and_downstream_finishes() {
    let collected = Collected::default();
    let sink = collected.clone();
    let mut p = Pipeline::new();
    p.source(
        "missing",
        gst_source(GstSourceSpec {
            launch: "filesrc location=/nonexistent/ocellus.mp4 ! decodebin".into(),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .stage("collect", &["missing"], EdgePolicy::Latest, sink.factory());
    let report = p.run().unwrap();
    println!("{report}");
    let source = report.node("missing").unwrap();
    assert_eq!(source.state, NodeState::Failed);
    let error = source.error.as_deref().unwrap_or_default();
    assert!(error.contains("filesrc"), "the failing element is named: {error}");
    assert_eq!(report.node("collect").unwrap().state, NodeState::Finished);
    assert!(collected.take().is_empty());
}

#[test]
fn an_unknown_element_is_named() {
    let spec = GstSourceSpec::new("videotestsrc ! notanelement", OutputFormat::Rgb);
    match ocellus_io::source::gst::check(&spec) {
        Err(IoError::Gstreamer { message, .. }) => assert!(message.contains("notanelement"), "{message}"),
        other => panic!("expected a GStreamer error, got {other:?}"),
    }
}
