//! Source failures: the error names the GStreamer element, and the rest of the pipeline ends
//! cleanly instead of hanging.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_actors::edge::EdgePolicy;
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::source::{GstSourceSpec, OutputFormat};
use ocellus_actors::stage::StageState;
use ocellus_actors::{ActorError, Pipeline};
use ocellus_tests::Collected;

#[test]
fn a_failing_element_is_named_and_downstream_finishes() {
    let collected = Collected::default();
    let sink = collected.clone();
    let mut p = Pipeline::new();
    p.source(
        "missing",
        SourceKind::Gstreamer(GstSourceSpec {
            launch: "filesrc location=/nonexistent/ocellus.mp4 ! decodebin".into(),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .stage("collect", &["missing"], EdgePolicy::Latest, Box::new(move || Ok(sink.processor())));
    let report = p.run().unwrap();
    println!("{report}");
    let source = report.node("missing").unwrap();
    assert_eq!(source.state, StageState::Failed);
    let error = source.error.as_deref().unwrap_or_default();
    assert!(error.contains("filesrc"), "the failing element is named: {error}");
    assert_eq!(report.node("collect").unwrap().state, StageState::Finished);
    assert!(collected.take().is_empty());
}

#[test]
fn an_unknown_element_is_named() {
    let spec = GstSourceSpec::new("videotestsrc ! notanelement", OutputFormat::Rgb);
    match ocellus_actors::source::gst::check(&spec) {
        Err(ActorError::Gstreamer { message, .. }) => assert!(message.contains("notanelement"), "{message}"),
        other => panic!("expected a GStreamer error, got {other:?}"),
    }
}
