//! Ctrl-C (a real SIGINT to this process) ends an endless live pipeline gracefully: sources
//! get EOS, stages drain, the recording is flushed and holds every frame the source sent.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::time::{Duration, Instant};

use ocellus_pipelines::build;
use ocellus_tests::{config_file, read_rrd, scratch_dir};

#[test]
fn sigint_drains_and_flushes() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "shutdown");
    let rrd = dir.join("live.rrd");
    let config = config_file(
        &dir,
        "live.toml",
        &format!(
            r#"
[[source]]
name = "live"
preset = {{ kind = "test_pattern", pattern = "ball", width = 96, height = 64, fps = 60, live = true }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["live"]
edge = {{ policy = "block" }}

[[sink]]
kind = "rerun"
inputs = ["live", "motion"]
edge = {{ policy = "block", depth = 32 }}
save = "{}"
"#,
            rrd.display()
        ),
    );
    let pipeline = build(&config).unwrap();
    let started = Instant::now();
    let runner = std::thread::spawn(move || pipeline.run());
    // Let the endless source run (and tokio install its SIGINT handler), then interrupt.
    std::thread::sleep(Duration::from_millis(1500));
    let status = std::process::Command::new("kill").args(["-INT", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    let report = runner.join().unwrap().unwrap();
    println!("{report}");
    assert!(started.elapsed() < Duration::from_secs(20), "shutdown took too long");
    assert_eq!(report.failures().count(), 0, "{report}");
    let sent = report.node("live").unwrap().metrics.emitted;
    assert!(sent > 30, "the live source ran for a while: {sent}");
    let summary = read_rrd(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/live/image").len() as u64, sent, "every frame was flushed");
    assert_eq!(summary.rows_of("world/live/motion").len() as u64, sent);
}
