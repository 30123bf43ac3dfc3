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
