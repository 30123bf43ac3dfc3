//! The discovery actor in a real pipeline: camera frames (PNG through GStreamer) → SAM 2
//! tracker → discovery (joined with the frames) → Rerun. Every `every` frames the discovery
//! runs automatic mask generation, logs its candidates at `world/cam/discovery`, and hands the
//! new ones to the tracker as mask prompts; the tracker then follows them under the ids the
//! discovery gave. (Seeded weights: what SAM 2 finds is arbitrary, so this checks the wiring,
//! the cadence and the hand-over; which candidates become tracks is checked by the unit tests
//! of `discovery::decide`, and the generator's masks by `sam2_amg_parity`.)
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::BTreeSet;

use ocellus_pipelines::build;
use ocellus_tests::{CameraClip, boxes_of, buffers_of, config_file, fixtures_dir, rerun_sink_toml, scratch_dir};

const FRAMES: usize = 7;
const EVERY: i64 = 3;
/// Ids of discovered objects (the default `first_id`).
const FIRST: u16 = ocellus_model_actors::discovery::FIRST_DISCOVERED_ID as u16;

#[test]
fn discovered_objects_are_handed_to_the_tracker_on_a_cadence() {
    let clip = CameraClip::new("640x480");
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "discovery_actor");
    let rrd = dir.join("discovery.rrd");
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    let text = format!(
        "{source}\n\
         [[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{w}\"\n\
         inputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\n\
         prompts = [{{ id = 1, box = {box_} }}]\n\
         [[actor]]\nname = \"discovery\"\nkind = \"discovery\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{w}\"\n\
         inputs = {{ frames = {{ from = \"cam\", edge = {{ policy = \"block\" }} }}, \
         tracks = {{ from = \"tracker\", edge = {{ policy = \"block\" }} }} }}\n\
         every = {EVERY}\nmin_area = 100\n\
         generator = {{ points_per_side = 4, pred_iou_thresh = 0.0, stability_score_thresh = 0.0 }}\n{sink}",
        source = clip.source_toml("cam", FRAMES),
        w = weights.display(),
        box_ = clip.meta["box"],
        sink = rerun_sink_toml(&["tracker", "discovery"], &rrd),
    );
    let report = build(&config_file(&dir, "discovery.toml", &text)).unwrap().run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");

    let segmentation = rerun::SegmentationImage::descriptor_buffer().component;
    let candidates = buffers_of(&rrd, "world/cam/discovery", segmentation).unwrap();
    let frames: Vec<i64> = candidates.keys().copied().collect();
    let due: Vec<i64> = (0..FRAMES as i64).step_by(EVERY as usize).collect();
    assert_eq!(frames, due, "discovery runs on frames 0, {EVERY}, ...");
    for (f, image) in &candidates {
        assert_eq!(image.len(), 2 * clip.width * clip.height, "frame {f}: candidates at frame resolution");
    }
    // The verdicts, as the candidate boxes' labels say.
    let candidate_boxes = boxes_of(&rrd, "world/cam/discovery/boxes").unwrap();
    let mut handed = BTreeSet::new();
    for boxes in candidate_boxes.values() {
        for b in boxes {
            let label = b.label.clone().unwrap_or_default();
            assert!(label.contains("candidate") && label.contains("IoU"), "{label}");
            if let Some(rest) = label.split("new track ").nth(1) {
                handed.insert(rest.split_whitespace().next().unwrap().parse::<u16>().unwrap());
            }
        }
    }
    assert!(!handed.is_empty(), "the first run hands at least one object over: {candidate_boxes:?}");
    assert!(handed.iter().all(|&id| id >= FIRST), "discovered ids start at first_id: {handed:?}");
    // The tracker follows them under those ids, after the run that found them.
    let tracks = boxes_of(&rrd, "world/cam/tracks/boxes").unwrap();
    let images = buffers_of(&rrd, "world/cam/tracks", segmentation).unwrap();
    assert_eq!(images.len(), FRAMES, "the tracker saw every frame");
    let followed: BTreeSet<u16> = images
        .values()
        .flat_map(|b| b.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect::<Vec<_>>())
        .filter(|&id| id >= FIRST)
        .collect();
    let boxed: BTreeSet<u16> = tracks.values().flatten().filter_map(|b| b.class_id).filter(|&id| id >= FIRST).collect();
    eprintln!("candidates on frames {frames:?}; handed over {handed:?}; tracked {followed:?} (boxes {boxed:?})");
    assert!(!followed.is_empty() || !boxed.is_empty(), "a handed object is tracked");
    assert!(followed.is_subset(&handed) && boxed.is_subset(&handed), "{followed:?} {boxed:?} ⊆ {handed:?}");
    assert!(tracks.get(&0).is_none_or(|b| b.iter().all(|b| b.class_id < Some(FIRST))), "not before it was found");
}

#[test]
fn discovery_needs_a_tracker_and_valid_limits() {
    let clip = CameraClip::new("640x480");
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "discovery_config");
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    let tracker = format!(
        "[[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{}\"\ninputs = [\"cam\"]\n",
        weights.display()
    );
    let discovery = |extra: &str| {
        format!(
            "[[actor]]\nname = \"discovery\"\nkind = \"discovery\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{}\"\n\
             inputs = {{ frames = \"cam\", tracks = \"tracker\" }}\n{extra}\n",
            weights.display()
        )
    };
    for (extra, needle) in [
        ("every = 0", "every"),
        ("max_new = 0", "max_new"),
        ("match_iou = 1.5", "match_iou"),
        ("motion = 2.0", "motion"),
        ("first_id = 70000", "first_id"),
        ("generator = { points_per_side = 0 }", "points_per_side"),
        ("generator = { points_per_sid = 4 }", "points_per_sid"),
        ("tracker = \"cam\"", "not a sam2 actor"),
        ("keep = [\"cup\"]", "keep: needs `labels`"),
        ("query_threshold = 2.0", "query_threshold"),
        ("labels = { model = \"ViT-B-32-quickgelu\", vocabulary = [\"cup\"] }", "labels.weights"),
        ("labels = { model = \"ViT-X\", allow_random_weights = true, vocabulary = [\"cup\"] }", "unknown model"),
        (
            "labels = { model = \"ViT-B-32-quickgelu\", allow_random_weights = true, vocabulary = [] }",
            "labels.vocabulary",
        ),
        (
            "labels = { model = \"ViT-B-32-quickgelu\", allow_random_weights = true, vocabulary = [\"cup\"] }\n\
             keep = [\"cup\", \"person\"]",
            "\"person\" is not in labels.vocabulary",
        ),
    ] {
        let text = format!("{}{tracker}{}", clip.source_toml("cam", 1), discovery(extra));
        let err = ocellus_pipelines::PipelineConfig::parse(&dir.join("bad.toml"), &text).expect_err(extra).to_string();
        assert!(err.contains(needle), "{extra}: {err}");
        assert!(err.contains("bad.toml:") && err.contains("actor[1]"), "{extra}: file, line and key: {err}");
    }
}
