//! GStreamer test pattern → motion actor (tch) → Rerun `.rrd`, read back with Rerun's decoder.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_pipelines::build;
use ocellus_tests::{config_file, read_rrd, scratch_dir};

const FRAMES: usize = 60;

#[test]
fn sixty_frames_reach_the_recording() -> anyhow::Result<()> {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "end_to_end");
    let rrd = dir.join("e2e.rrd");
    let toml = format!(
        r#"
[runtime]
device = "cpu"
metrics_every = "100ms"

[[source]]
name = "front"
preset = {{ kind = "test_pattern", pattern = "ball", width = 160, height = 120, fps = 30, frames = {FRAMES} }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["front"]
edge = {{ policy = "block", depth = 2 }}

[[sink]]
kind = "rerun"
inputs = ["front", "motion"]
edge = {{ policy = "block", depth = 8 }}
save = "{}"
"#,
        rrd.display()
    );
    let config = config_file(&dir, "e2e.toml", &toml);
    let report = build(&config)?.run()?;
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
    assert_eq!(report.node("motion").map(|n| n.metrics.emitted), Some(FRAMES as u64));

    let summary = read_rrd(&rrd)?;
    let images = summary.rows_of("world/front/image");
    let masks = summary.rows_of("world/front/motion");
    assert_eq!(images.len(), FRAMES, "images: {:?}", summary.rows.keys().collect::<Vec<_>>());
    assert_eq!(masks.len(), FRAMES);
    assert!(images.iter().all(|r| r.components.iter().any(|c| c.contains("buffer"))), "{:?}", images[0]);
    assert!(masks.iter().all(|r| r.components.iter().any(|c| c.contains("buffer"))));
    // Frames 0..60 on the `frame` timeline, capture times strictly increasing.
    let frames: Vec<i64> = images.iter().filter_map(|r| r.frame).collect();
    assert_eq!(frames, (0..FRAMES as i64).collect::<Vec<_>>());
    let captures: Vec<i64> = images.iter().filter_map(|r| r.capture_ns).collect();
    assert_eq!(captures.len(), FRAMES);
    assert!(captures.windows(2).all(|w| w[0] < w[1]), "{captures:?}");
    let mask_captures: Vec<i64> = masks.iter().filter_map(|r| r.capture_ns).collect();
    assert_eq!(mask_captures, captures, "a mask carries its frame's capture time");
    // The annotation context is static on the mask's path; metrics were logged too.
    assert!(
        summary.statics.get("world/front/motion").is_some_and(|c| c.iter().any(|n| n.contains("context"))),
        "{:?}",
        summary.statics
    );
    assert!(summary.rows.keys().any(|k| k.starts_with("metrics/motion/")), "{:?}", summary.rows.keys());
    Ok(())
}
