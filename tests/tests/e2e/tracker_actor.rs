//! The SAM 2 tracker actor in a configured pipeline: a box prompt from the config, tracks per
//! frame (label image at frame resolution, boxes, scores, occlusion), and the Rerun layout.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_pipelines::build;
use ocellus_tests::{
    ZenohPublisher, cam_and_tracker_toml, config_file, fixtures_dir, free_port, read_rrd, rerun_sink_toml, scratch_dir,
};

const FRAMES: usize = 3;

#[test]
fn tracks_reach_the_recording() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "tracker_actor");
    let rrd = dir.join("tracks.rrd");
    let tracker = cam_and_tracker_toml(
        FRAMES,
        "prompts = [{ box = [120, 80, 200, 160] }, { id = 7, points = [[60, 60], [250, 200]], labels = [1, 0] }]",
    );
    let sink = rerun_sink_toml(&["cam", "tracker"], &rrd);
    let config = config_file(&dir, "tracker.toml", &format!("{tracker}\n{sink}"));
    let report = build(&config).unwrap().run().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
    assert_eq!(report.node("tracker").unwrap().metrics.emitted, FRAMES as u64);
    let summary = read_rrd(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/cam/tracks").len(), FRAMES, "{:?}", summary.rows.keys().collect::<Vec<_>>());
    assert_eq!(summary.rows_of("world/cam/tracks/boxes").len(), FRAMES);
    assert!(summary.statics.get("world/cam/tracks").is_some_and(|c| c.iter().any(|n| n.contains("context"))));
}

#[test]
fn tracks_are_consistent_per_frame() {
    use ocellus_io::source::{GstSourceSpec, OutputFormat};
    use ocellus_model_actors::tracker::{self, FramePrompt, TrackerSpec, TrackerStage};
    use ocellus_perception::model::{ModelSpec, WeightsSource};
    use ocellus_perception::sam2::streaming::StreamConfig;
    use ocellus_runtime::{EdgePolicy, Packet, Pipeline, Wire, stage_factory};

    let spec = TrackerSpec {
        name: "tracker".into(),
        model: ModelSpec {
            name: "sam2.1_hiera_tiny".into(),
            weights: WeightsSource::File(fixtures_dir().join("sam2_video_tiny.weights.safetensors")),
            device: tch::Device::Cpu,
            dtype: ocellus_kernels::DType::F32,
        },
        prompts: vec![
            (1, FramePrompt::Box([120.0, 80.0, 200.0, 160.0])),
            (2, FramePrompt::Points(vec![[40.0, 40.0]], vec![1])),
        ],
        stream: StreamConfig::default(),
        image_size: Some(256),
        image_encoder: None,
        resize: ocellus_kernels::ResizeMode::Exact,
        prompt_topic: None,
        max_tracks: ocellus_model_actors::tracker::DEFAULT_MAX_TRACKS,
    };
    let collected = ocellus_tests::Collected::default();
    let sink = collected.clone();
    let mut p = Pipeline::new();
    p.source(
        "cam",
        ocellus_tests::gst_source(GstSourceSpec {
            launch: format!("videotestsrc pattern=ball num-buffers={FRAMES} ! video/x-raw,width=200,height=150"),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .node(
        "tracker",
        tracker::ports(),
        vec![Wire::new("frames", &["cam"], EdgePolicy::Block { depth: 2 })],
        stage_factory(move || TrackerStage::new(spec.clone(), None)),
    )
    .stage("collect", &["tracker"], EdgePolicy::Block { depth: 8 }, sink.factory());
    let report = p.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    let tracks: Vec<_> = collected
        .take()
        .into_iter()
        .filter_map(|(p, _)| if let Packet::Tracks(t) = p { Some(t) } else { None })
        .collect();
    assert_eq!(tracks.len(), FRAMES);
    for (seq, t) in tracks.iter().enumerate() {
        assert_eq!(t.meta.seq, seq as u64);
        assert_eq!((t.width, t.height), (200, 150));
        assert_eq!(t.labels.len(), 2 * 200 * 150);
        let ids: Vec<u32> = t.tracks.iter().map(|tr| tr.id).collect();
        assert_eq!(ids, [1, 2]);
        let labels: Vec<u16> = t.labels.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        for tr in &t.tracks {
            assert!((0.0..=1.0).contains(&tr.score));
            let pixels = labels.iter().filter(|&&l| u32::from(l) == tr.id).count() as u64;
            if tr.occluded {
                assert_eq!((tr.area, tr.bbox), (0, None), "an occluded track has no mask");
                assert!(tr.score <= 0.5);
            } else {
                assert!(tr.score > 0.5);
                assert!(pixels <= tr.area, "later tracks may cover earlier ones");
                assert_eq!(tr.bbox.is_some(), tr.area > 0);
            }
        }
    }
}

#[test]
fn prompts_from_a_zenoh_topic_add_objects() {
    let port = free_port();
    let messages = [r#"{"id": 0, "box": [1, 1, 2]}"#, r#"{"id": 42, "box": [120, 80, 200, 160]}"#];
    prompt_topic_case(
        "tracker_prompt_topic",
        &format!(
            "prompt_topic = {{ key = \"ocellus/test/prompts\", listen = [\"tcp/127.0.0.1:{port}\"], multicast_scouting = false }}"
        ),
        (port, "ocellus/test/prompts"),
        messages.iter().map(|m| m.as_bytes().to_vec()).collect(),
    );
}

/// The same prompts from a ROS 2 node: `std_msgs/String` holding the JSON on a topic over
/// rmw_zenoh (`ros2 topic pub /ocellus/prompts std_msgs/msg/String "data: '{...}'"`).
#[test]
fn prompts_from_a_ros2_topic_add_objects() {
    use ocellus_wire::ros2::{self, MsgType, TypeHashes};
    let port = free_port();
    let key = ros2::rmw_zenoh_key(0, "/ocellus/prompts", MsgType::String, Some(TypeHashes::Rihs01));
    let messages = [r#"{"id": 0, "box": [1, 1, 2]}"#, r#"{"id": 42, "box": [120, 80, 200, 160]}"#];
    prompt_topic_case(
        "tracker_prompt_ros2",
        &format!(
            "prompt_topic = {{ topic = \"/ocellus/prompts\", domain = 0, listen = [\"tcp/127.0.0.1:{port}\"], multicast_scouting = false }}"
        ),
        (port, &key),
        messages.iter().map(|m| ros2::encode_string(m).unwrap()).collect(),
    );
}

/// A paced tracker with `prompt_topic` (TOML) fed `payloads` on `key`: a malformed prompt is
/// skipped, track 42 reaches the recording.
fn prompt_topic_case(test: &str, prompt_topic: &str, (port, key): (u16, &str), payloads: Vec<Vec<u8>>) {
    use std::time::Duration;
    const FRAMES: usize = 8;
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), test);
    let rrd = dir.join("prompts.rrd");
    let tracker = cam_and_tracker_toml(FRAMES, prompt_topic)
        // Paced at 2 frames/s, so that the stream outlasts the peers' meeting (the publisher
        // repeats every 400 ms): the prompt arrives mid-stream however fast the tracker is.
        .replace(&format!("frames = {FRAMES} }}"), &format!("frames = {FRAMES}, fps = 2, live = true }}"));
    assert!(tracker.contains("fps = 2"), "{tracker}");
    let sink = rerun_sink_toml(&["tracker"], &rrd);
    let config = config_file(&dir, "prompts.toml", &format!("{tracker}\n{sink}"));
    let pipeline = ocellus_pipelines::build(&config).unwrap();
    // A malformed message between good ones is skipped.
    let publisher = ZenohPublisher::start_bytes(port, key, payloads, Duration::from_millis(400));
    let report = pipeline.run().unwrap();
    drop(publisher);
    assert_eq!(report.failures().count(), 0, "{report}");
    let summary = read_rrd(&rrd).unwrap();
    // No config prompts: the annotation context appears once track 42 arrives over zenoh.
    let contexts =
        summary.statics.get("world/cam/tracks").map_or(0, |c| c.iter().filter(|n| n.contains("context")).count());
    assert!(contexts >= 1, "track 42 from the prompt topic reached Rerun");
    assert_eq!(summary.rows_of("world/cam/tracks").len(), FRAMES);
}
