//! Replay: a recording's camera images fed back through the same pipeline give the same
//! masks, frame by frame; two cameras keep their own entity paths and frame timelines.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ocellus_io::source::ReplayTiming;
use ocellus_pipelines::{PipelineConfig, build_with, replay};
use ocellus_runtime::kind::BuildContext;
use ocellus_tests::{buffers_of, config_file, read_rrd, scratch_dir};

const CAMERAS: [(&str, usize); 2] = [("left", 30), ("right", 20)];

fn config(dir: &Path, rrd: &Path) -> PipelineConfig {
    let toml = format!(
        r#"
[runtime]
metrics_every = "200ms"

[[source]]
name = "left"
preset = {{ kind = "test_pattern", pattern = "ball", width = 96, height = 64, fps = 30, frames = 30, live = true }}

[[source]]
name = "right"
preset = {{ kind = "test_pattern", pattern = "ball", width = 80, height = 48, fps = 30, frames = 20, live = true }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["left", "right"]
edge = {{ policy = "block", depth = 4 }}

[[sink]]
kind = "rerun"
inputs = ["left", "right", "motion"]
edge = {{ policy = "block", depth = 16 }}
save = "{}"
"#,
        rrd.display()
    );
    config_file(dir, "multicam.toml", &toml)
}

/// Per camera: (images, masks) by frame number.
type Outputs = BTreeMap<&'static str, (BTreeMap<i64, Vec<u8>>, BTreeMap<i64, Vec<u8>>)>;

fn outputs(rrd: &Path) -> Outputs {
    let image = rerun::Image::descriptor_buffer().component;
    let mask = rerun::SegmentationImage::descriptor_buffer().component;
    CAMERAS
        .iter()
        .map(|(camera, _)| {
            let images = buffers_of(rrd, &format!("world/{camera}/image"), image).unwrap();
            let masks = buffers_of(rrd, &format!("world/{camera}/motion"), mask).unwrap();
            (*camera, (images, masks))
        })
        .collect()
}

fn run(config: &PipelineConfig, ctx: BuildContext) {
    let report = build_with(config, ctx).unwrap().run().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
}

#[test]
fn replaying_a_recording_reproduces_its_masks() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "replay");
    let original = dir.join("original.rrd");
    run(&config(&dir, &original), BuildContext::new());

    // Two cameras: their own entities, their own frame timelines, numbers from 0 each.
    let summary = read_rrd(&original).unwrap();
    for (camera, frames) in CAMERAS {
        let rows = summary.rows_of(&format!("world/{camera}/image"));
        let numbers: Vec<i64> = rows.iter().filter_map(|r| r.camera_frame).collect();
        assert_eq!(numbers, (0..frames as i64).collect::<Vec<_>>(), "{camera}");
        for row in rows.iter().chain(summary.rows_of(&format!("world/{camera}/motion"))) {
            let own = format!("frame/{camera}");
            assert!(row.timelines.contains(&own), "{camera}: {:?}", row.timelines);
            assert!(
                row.timelines.iter().all(|t| !t.starts_with("frame/") || *t == own),
                "{camera} logged on another camera's timeline: {:?}",
                row.timelines
            );
        }
    }
    let recorded = outputs(&original);
    for (camera, frames) in CAMERAS {
        let (images, masks) = &recorded[camera];
        assert_eq!((images.len(), masks.len()), (frames, frames), "{camera}");
        assert!(masks.values().any(|m| m.contains(&1)), "{camera}: the ball moves");
    }

    // As fast as it goes, then at the recorded pace: the same masks, frame by frame.
    let captures: Vec<i64> = summary.rows_of("world/left/image").iter().filter_map(|r| r.capture_ns).collect();
    let span_s = (captures[captures.len() - 1] - captures[0]) as f64 * 1e-9;
    for (timing, name) in [(ReplayTiming::Fast, "fast.rrd"), (ReplayTiming::Realtime, "realtime.rrd")] {
        let out = dir.join(name);
        let mut again = config(&dir, &original);
        // The configured file is the one being replayed: refused.
        let refused = replay::prepare(&mut again.clone(), &original, timing, None).unwrap_err();
        assert!(refused.to_string().contains("--save"), "{refused}");
        let (index, ctx) = replay::prepare(&mut again, &original, timing, Some(&out)).unwrap();
        assert_eq!(index.cameras.iter().map(|(c, r)| (c.as_str(), r.frames as usize)).collect::<Vec<_>>(), CAMERAS);
        let started = Instant::now();
        run(&again, ctx);
        let took = started.elapsed().as_secs_f64();
        println!("{timing:?}: {took:.2} s (recorded span {span_s:.2} s)");
        if timing == ReplayTiming::Realtime {
            assert!(took >= 0.9 * span_s, "realtime replay took {took:.2} s for {span_s:.2} s");
        }
        let replayed = outputs(&out);
        for (camera, _) in CAMERAS {
            let ((images, masks), (images2, masks2)) = (&recorded[camera], &replayed[camera]);
            assert_eq!(images2.keys().collect::<Vec<_>>(), images.keys().collect::<Vec<_>>(), "{camera} {timing:?}");
            assert!(images2 == images, "{camera} {timing:?}: the same images");
            assert_eq!(masks2.keys().collect::<Vec<_>>(), masks.keys().collect::<Vec<_>>(), "{camera} {timing:?}");
            for (frame, mask) in masks {
                assert!(masks2[frame] == *mask, "{camera} {timing:?}: mask of frame {frame} differs");
            }
        }
    }
}

#[test]
fn a_camera_missing_from_the_recording_is_named() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "replay_missing");
    let original = dir.join("original.rrd");
    let mut config = config(&dir, &original);
    config.sources.truncate(1);
    config.sinks.clear();
    config.actors.clear();
    std::fs::write(&original, b"").unwrap();
    let err = replay::prepare(&mut config, &original, ReplayTiming::Fast, None).unwrap_err();
    assert!(err.to_string().contains("\"left\""), "{err}");
}
