//! The built `ocellus` binary runs without any environment (rpath to libtorch, ONNX Runtime
//! found from the bootstrap venv) and reports errors with file, key path and line.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::process::Command;

fn ocellus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    for var in ["LD_LIBRARY_PATH", "ORT_DYLIB_PATH", "VIRTUAL_ENV", "LIBTORCH", "LIBTORCH_USE_PYTORCH"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[test]
fn info_needs_no_environment() {
    let out = ocellus().arg("info").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("libtorch: cuda available"), "{stdout}");
    assert!(stdout.contains("onnxruntime: /") && stdout.contains("ORT Build Info"), "{stdout}");
    assert!(stdout.contains("gstreamer: GStreamer 1."), "{stdout}");
}

#[test]
fn check_accepts_the_demo_and_rejects_a_bad_config() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.toml");
    let out = ocellus().args(["check", demo]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 sources, 1 actors, 1 sinks)"));

    let bad = std::env::temp_dir().join(format!("ocellus-cli-{}.toml", std::process::id()));
    std::fs::write(&bad, "[[source]]\nname = \"cam\"\ngstreamer = \"videotestsrc\"\nfps = 3\n").unwrap();
    let out = ocellus().arg("check").arg(&bad).output().unwrap();
    std::fs::remove_file(&bad).ok();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":4:1: source[0].fps: unknown field `fps`"), "{stderr}");
}

#[test]
fn check_rejects_a_port_of_the_wrong_type_with_its_line() {
    let bad = std::env::temp_dir().join(format!("ocellus-cli-ports-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "[[source]]\nname = \"cam\"\npreset = { kind = \"test_pattern\" }\n\n[[actor]]\nname = \"labels\"\n\
         kind = \"labeler\"\nmodel = \"ViT-B-32-quickgelu\"\nallow_random_weights = true\nvocabulary = [\"a\"]\n\
         inputs = { frames = \"cam\", tracks = \"cam\" }\n",
    )
    .unwrap();
    let out = ocellus().arg("check").arg(&bad).output().unwrap();
    std::fs::remove_file(&bad).ok();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":11:")
            && stderr.contains("actor[0].inputs.tracks: input `tracks` takes tracks, but \"cam\" emits frames"),
        "{stderr}"
    );
}

/// Ctrl-C (a real SIGINT to an `ocellus run` process) ends an endless live pipeline
/// gracefully: sources get EOS, stages drain, the recording is flushed and holds every frame
/// the source sent. (A child process: a SIGINT to the test process would reach every pipeline
/// running in it.)
#[test]
fn sigint_drains_and_flushes() {
    let dir = std::env::temp_dir().join(format!("ocellus-cli-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, rrd) = (dir.join("live.toml"), dir.join("live.rrd"));
    std::fs::write(
        &config,
        format!(
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
    )
    .unwrap();
    let started = std::time::Instant::now();
    let child = ocellus().arg("run").arg(&config).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Let the endless source run (and the SIGINT handler be installed), then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "shutdown took too long");
    // The report's line of the source: `live  -  <emitted> ...  Finished`.
    let line = report.lines().find(|l| l.starts_with("live ")).unwrap();
    assert!(line.ends_with("Finished"), "{line}");
    let sent: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(sent > 30, "the live source ran for a while: {sent}");
    let summary = ocellus_io::recording::summary(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/live/image").len(), sent, "every frame was flushed");
    assert_eq!(summary.rows_of("world/live/motion").len(), sent);
    std::fs::remove_dir_all(&dir).ok();
}
