//! The labeler actor in a configured pipeline: a test pattern, SAM 2 tracks (the fixture's
//! seeded weights), MetaCLIP zero-shot labels (ViT-B-32-quickgelu, the fixture's seeded
//! weights) over a configured vocabulary, and the Rerun recording read back.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_pipelines::build;
use ocellus_runtime::{EdgePolicy, Packet};
use ocellus_tests::{
    Collected, cam_and_tracker_toml, config_file, fixtures_dir, read_rrd, rerun_sink_toml, scratch_dir,
};

const FRAMES: usize = 3;
const VOCABULARY: [&str; 3] = ["ball", "person", "robot"];

#[test]
fn labels_reach_the_recording() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "labeler_actor");
    let rrd = dir.join("labels.rrd");
    let clip = fixtures_dir().join("clip_b32.weights.safetensors");
    let tracker =
        cam_and_tracker_toml(FRAMES, "prompts = [{ box = [120, 80, 200, 160] }, { id = 7, box = [10, 10, 300, 230] }]");
    let labeler = format!(
        r#"
[[actor]]
name = "labels"
kind = "labeler"
model = "ViT-B-32-quickgelu"
weights = "{}"
inputs = {{ frames = "cam", tracks = "tracker" }}
edge = {{ policy = "block", depth = 16 }}
vocabulary = {VOCABULARY:?}
templates = ["a photo of a {{}}.", "a blurry photo of a {{}}."]
smoothing = 0.5
"#,
        clip.display()
    );
    let sink = rerun_sink_toml(&["cam", "labels"], &rrd);
    let config = config_file(&dir, "labeler.toml", &format!("{tracker}{labeler}\n{sink}"));
    let mut pipeline = build(&config).unwrap();
    let collected = Collected::default();
    let sink = collected.clone();
    pipeline.stage("collect", &["labels"], EdgePolicy::Block { depth: 16 }, sink.factory());
    let report = pipeline.run().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
    assert_eq!(report.node("labels").unwrap().metrics.emitted, FRAMES as u64);
    let mut labelled = 0;
    for (packet, _) in collected.take() {
        let Packet::Tracks(tracks) = packet else { panic!("labeler emitted {packet:?}") };
        for track in &tracks.tracks {
            if track.bbox.is_some() && !track.occluded {
                let label = track.label.as_ref().unwrap_or_else(|| panic!("track {} has no label", track.id));
                assert!(VOCABULARY.contains(&&*label.name), "{label:?}");
                assert!((0.0..=1.0).contains(&label.score));
                println!("frame {} track {}: {} {:.3}", tracks.meta.seq, track.id, label.name, label.score);
                labelled += 1;
            }
        }
    }
    assert!(labelled > 0, "no visible track was labelled");
    let summary = read_rrd(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/cam/tracks/boxes").len(), FRAMES);
    assert_eq!(summary.rows_of("world/cam/image").len(), FRAMES);
}
