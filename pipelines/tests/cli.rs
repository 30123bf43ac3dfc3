//! The built `ocellus` binary runs without any environment (rpath to libtorch, ONNX Runtime
//! found from the bootstrap venv) and reports errors with file, key path and line.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::process::Command;

fn ocellus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    with_clean_env(&mut cmd);
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
    // The demo is the whole chain; checking it fetches nothing and says what would run in
    // place of what is not there yet (no weights folder here: seeded weights, a stand-in SMPL).
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.toml");
    let scratch = std::env::temp_dir().join(format!("ocellus-cli-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let out = ocellus().args(["check", demo]).env("OCELLUS_WEIGHTS", &scratch).output().unwrap();
    std::fs::remove_dir_all(&scratch).ok();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok (1 sources, 5 actors, 1 sinks)"), "{stdout}");
    for model in ["sam2.1_hiera_tiny", "ViT-B-32-quickgelu", "hmr2", "lart", "hiera_huge_224"] {
        assert!(stdout.contains(&format!("would run with: {model}: SEEDED RANDOM WEIGHTS")), "{model}: {stdout}");
    }
    assert!(stdout.contains("would run with: SMPL: a SEEDED STAND-IN BODY MODEL"), "{stdout}");
    let motion = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/motion.toml");
    let out = ocellus().args(["check", motion]).output().unwrap();
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

/// Ctrl-C (a real SIGINT to an `ocellus run` process) ends an endless live pipeline under
/// heavy load gracefully: a SAM 2 tracker keeps both cores busy (on a `latest` edge, dropping
/// what it cannot take) while camera frames and motion masks go to the recording through
/// `block` edges. Sources get EOS, stages drain, the recording is flushed: it holds every
/// frame the source sent, every motion mask and every tracker output the report counts. (A
/// child process: a SIGINT to the test process would reach every pipeline running in it.)
#[test]
fn sigint_under_load_drains_and_flushes_every_blocked_frame() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_sigint");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let (config, rrd) = (dir.join("live.toml"), dir.join("live.rrd"));
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
device = "cpu"

[[source]]
name = "live"
preset = {{ kind = "test_pattern", pattern = "ball", width = 640, height = 480, fps = 30, live = true }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["live"]
edge = {{ policy = "block" }}

[[actor]]
name = "tracker"
kind = "sam2"
model = "sam2.1_hiera_tiny"
allow_random_weights = true
inputs = ["live"]
edge = {{ policy = "latest" }}
prompts = [{{ id = 1, box = [260, 180, 380, 300] }}]

[[sink]]
kind = "rerun"
inputs = ["live", "motion", "tracker"]
edge = {{ policy = "block", depth = 32 }}
save = "{}"
"#,
            rrd.display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let child = ocellus().arg("run").arg(&config).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Let the source run and the tracker load and take a few frames, then interrupt.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "shutdown took too long");
    // The report's lines: `name  in  out  dropped  skipped  p50  p99  restarts  state`.
    let line = |name: &str| report.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().to_owned();
    let column = |name: &str, k: usize| -> usize { line(name).split_whitespace().nth(k).unwrap().parse().unwrap() };
    for name in ["live", "motion", "tracker", "rerun"] {
        assert!(line(name).ends_with("Finished"), "{}", line(name));
    }
    let sent = column("live", 2);
    assert!(sent > 30, "the live source ran for a while: {sent}");
    let tracked = column("tracker", 2);
    assert!(tracked >= 1 && column("tracker", 3) > 0, "the tracker was overloaded: {}", line("tracker"));
    assert_eq!(column("rerun", 3), 0, "the block edge dropped nothing: {}", line("rerun"));
    let summary = ocellus_io::recording::summary(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/live/image").len(), sent, "every frame was flushed");
    assert_eq!(summary.rows_of("world/live/motion").len(), sent);
    let tracks = ocellus_io::recording::path::tracks("live");
    assert_eq!(summary.rows_of(&tracks).len(), tracked, "every tracker output was flushed");
}

/// The disk filling while a recording is written (a 2 MiB tmpfs in a private mount namespace;
/// where namespaces are not allowed, a file size limit, which fails writes the same way):
/// the Rerun sink stops with an error naming the file and the reason, the rest of the
/// pipeline runs to its end, and what was written reads back.
#[test]
fn a_full_disk_stops_the_recording_with_a_clear_error_and_keeps_what_was_written() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_disk_full");
    std::fs::remove_dir_all(&dir).ok();
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let (config, kept) = (dir.join("full.toml"), dir.join("kept.rrd"));
    let rrd = small.join("run.rrd");
    // Noise does not compress: each 320×240 frame adds ~230 kB to the file.
    std::fs::write(
        &config,
        format!(
            r#"
[[source]]
name = "cam"
preset = {{ kind = "test_pattern", pattern = "snow", width = 320, height = 240, fps = 30, frames = 90, live = true }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["cam"]
edge = {{ policy = "block" }}

[[sink]]
kind = "rerun"
inputs = ["cam", "motion"]
edge = {{ policy = "block" }}
save = "{}"
"#,
            rrd.display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_ocellus");
    // The run, then a copy of the file out of the tmpfs (which goes with the namespace).
    let script = format!(
        "\"{bin}\" run \"{}\"; rc=$?; cp \"{}\" \"{}\"; exit $rc",
        config.display(),
        rrd.display(),
        kept.display()
    );
    let mounted = tmpfs_available(&small);
    let out = if mounted {
        let inner = format!("mount -t tmpfs -o size=2m tmpfs \"{}\" && {{ {script}; }}", small.display());
        let mut cmd = Command::new("unshare");
        cmd.args(["-rm", "sh", "-c", &inner]);
        with_clean_env(&mut cmd).output().unwrap()
    } else {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("trap '' XFSZ; ulimit -f 2048; {script}")]);
        with_clean_env(&mut cmd).output().unwrap()
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{}\n{stdout}\n{stderr}", if mounted { "tmpfs" } else { "ulimit -f" });
    assert!(!out.status.success(), "a failed sink fails the run");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains(&format!("the recording {} could not be written past", rrd.display())), "{all}");
    let reason = if mounted { "no space left on the device" } else { "file size limit" };
    assert!(all.contains(reason), "{all}");
    // The pipeline ran to its end: the source sent every frame, motion took every one.
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().to_owned();
    assert!(line("cam").ends_with("Finished") && line("cam").split_whitespace().nth(2) == Some("90"), "{stdout}");
    assert!(line("motion").split_whitespace().nth(2) == Some("90"), "{stdout}");
    assert!(line("rerun").contains("Failed"), "{stdout}");
    // What was written reads back: whole chunks, then at most one cut at the very end.
    let mut images = 0;
    let mut cut = false;
    for chunk in ocellus_io::recording::chunks(&kept).unwrap() {
        match chunk {
            Ok(c) => {
                assert!(!cut, "a chunk after the cut");
                if ocellus_io::recording::entity_of(&c) == "world/cam/image" {
                    images += c.num_rows();
                }
            }
            Err(e) => {
                println!("the cut: {e}");
                cut = true;
            }
        }
    }
    assert!(images >= 2, "{images} frames read back");
}

/// Whether this process may mount a tmpfs in a private user and mount namespace.
fn tmpfs_available(dir: &std::path::Path) -> bool {
    Command::new("unshare")
        .args(["-rm", "sh", "-c", &format!("mount -t tmpfs -o size=1m tmpfs \"{}\"", dir.display())])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cmd` without the variables the binary must not need (as [`ocellus`]).
fn with_clean_env(cmd: &mut Command) -> &mut Command {
    for var in ["LD_LIBRARY_PATH", "ORT_DYLIB_PATH", "VIRTUAL_ENV", "LIBTORCH", "LIBTORCH_USE_PYTORCH"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn")
}

/// `ocellus run CONFIG --save FILE` (and `--spawn`, `--connect`, `--serve`, as Rerun's own
/// arguments) replaces where the pipeline's Rerun sink sends its recording; with two Rerun
/// sinks it says which it cannot choose.
#[test]
fn rerun_target_from_the_command_line() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_rerun_target");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let configured = dir.join("configured.rrd");
    let instead = dir.join("instead.rrd");
    let sink = |path: &std::path::Path| {
        format!("[[sink]]\nkind = \"rerun\"\ninputs = [\"cam\"]\nsave = \"{}\"\n", path.display())
    };
    let source =
        "[[source]]\nname = \"cam\"\npreset = { kind = \"test_pattern\", width = 64, height = 48, frames = 2 }\n";
    let one = dir.join("one.toml");
    std::fs::write(&one, format!("{source}{}", sink(&configured))).unwrap();
    let out = ocellus().args(["run", one.to_str().unwrap(), "--save", instead.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(instead.exists() && !configured.exists());
    assert!(String::from_utf8_lossy(&out.stdout).contains(instead.to_str().unwrap()));

    let two = dir.join("two.toml");
    let second = sink(&dir.join("other.rrd")).replace("[[sink]]\n", "[[sink]]\nname = \"second\"\n");
    std::fs::write(&two, format!("{source}{}{second}", sink(&configured))).unwrap();
    let out = ocellus().args(["run", two.to_str().unwrap(), "--serve", "9"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has 2") && err.contains("two.toml"), "{err}");
    let out = ocellus().args(["run", one.to_str().unwrap(), "--save", "x.rrd", "--serve", "9"]).output().unwrap();
    assert!(!out.status.success(), "--save and --serve conflict");
}

/// `spawn`: the pipeline starts the bootstrap's viewer on the port (here the venv's `rerun`
/// behind a wrapper that makes it save what it receives, as a machine without a display
/// cannot open the viewer's window) and streams to it.
#[test]
fn spawn_starts_the_bootstrap_viewer_and_streams_to_it() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_spawn");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(dir.join("venv/bin")).unwrap();
    let home = std::env::var("HOME").unwrap();
    let real = std::path::PathBuf::from(std::env::var("VIRTUAL_ENV").unwrap_or(format!("{home}/.cache/ocellus/venv")))
        .join("bin/rerun");
    assert!(real.exists(), "{} missing: run scripts/bootstrap", real.display());
    let received = dir.join("received.rrd");
    let wrapper = dir.join("venv/bin/rerun");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} --save {} \"$@\"\n", real.display(), received.display()))
        .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("spawn.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"cam\"\npreset = {{ kind = \"test_pattern\", width = 64, height = 48, frames = 10 }}\n\
             [[sink]]\nkind = \"rerun\"\ninputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\nspawn = {{ port = {port} }}\n"
        ),
    )
    .unwrap();
    // The viewer outlives the run and inherits its output: files, not pipes, so nothing waits on it.
    let log = dir.join("run.log");
    let status = ocellus()
        .arg("run")
        .arg(&config)
        .env("VIRTUAL_ENV", dir.join("venv"))
        .stdout(std::fs::File::create(dir.join("run.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rows = || ocellus_io::recording::summary(&received).map(|s| s.rows_of("world/cam/image").len()).unwrap_or(0);
    while rows() < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::process::Command::new("pkill").args(["-INT", "-f", &format!("port={port} ")]).status().ok();
    assert_eq!(rows(), 10, "the spawned viewer received every frame");
}

/// An RTSP camera's credentials — in its URL, or a password from the environment
/// (`password_env`) — never appear in what Ocellus prints or logs, even when the camera
/// cannot be reached; a missing password variable is named.
#[test]
fn rtsp_credentials_are_never_printed() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_rtsp_secrets");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("rtsp.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"door\"\nreconnect = false\n\
             preset = {{ kind = \"rtsp\", url = \"rtsp://bob:url-secret-1@127.0.0.1:{port}/stream\", user = \"bob\", password_env = \"DOOR_CAM_PASSWORD\" }}\n\
             [[sink]]\nkind = \"rerun\"\ninputs = [\"door\"]\nsave = \"{}\"\n",
            dir.join("door.rrd").display()
        ),
    )
    .unwrap();
    let out = ocellus()
        .args(["run", config.to_str().unwrap()])
        .env("DOOR_CAM_PASSWORD", "env-secret-2")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("url-secret-1") && !all.contains("env-secret-2"), "{all}");
    assert!(all.contains("rtsp://bob:<redacted>@127.0.0.1"), "the URL is shown, its password hidden: {all}");

    let out = ocellus().args(["run", config.to_str().unwrap()]).env_remove("DOOR_CAM_PASSWORD").output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("DOOR_CAM_PASSWORD") && all.contains("not set"), "{all}");
    assert!(!all.contains("url-secret-1"), "{all}");
}

/// `ROS_DOMAIN_ID` is honoured where the configuration gives no `domain`; a value that is not
/// a number is refused naming it.
#[test]
fn ros_domain_id_from_the_environment() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_ros_domain");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ros2.toml");
    std::fs::write(
        &config,
        "[[source]]\nname = \"cam\"\nzenoh = { topic = \"/camera/image_raw\", encoding = \"ros2/sensor_msgs/Image\" }\n\
         [[sink]]\nkind = \"null\"\ninputs = [\"cam\"]\n",
    )
    .unwrap();
    let ok = ocellus().args(["check", config.to_str().unwrap()]).env("ROS_DOMAIN_ID", "7").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = ocellus().args(["check", config.to_str().unwrap()]).env("ROS_DOMAIN_ID", "seven").output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("ROS_DOMAIN_ID") && err.contains("source[0].zenoh.domain"), "{err}");
}

#[test]
fn export_onnx_writes_a_checked_file() {
    // The bootstrap venv's Python is found without VIRTUAL_ENV; the file is compared with the
    // native forward through ONNX Runtime before the command says it is done.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_export_onnx");
    std::fs::create_dir_all(&dir).unwrap();
    let (weights, onnx) = (dir.join("hiera_tiny_224.safetensors"), dir.join("hiera_tiny_224.onnx"));
    let init = ocellus()
        .args(["weights", "init", "--model", "hiera_tiny_224", "--seed", "1", "--out"])
        .arg(&weights)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let out = ocellus()
        .args(["weights", "export-onnx", "--model", "hiera_tiny_224", "--weights"])
        .arg(&weights)
        .arg("--out")
        .arg(&onnx)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("level3 [1, 768, 7, 7]"), "{stdout}");
    let error: f64 = stdout.rsplit(": ").next().unwrap().trim().parse().unwrap();
    assert!(error <= 1e-4, "{stdout}");
    assert!(onnx.metadata().unwrap().len() > 100_000_000, "the weights are in the file");

    // A model that is not an image encoder is named with the ones that are.
    let out = ocellus()
        .args(["weights", "export-onnx", "--model", "llama-3.2-1b", "--weights"])
        .arg(&weights)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("exports image encoders") && stderr.contains("ViT-B-32-quickgelu"), "{stderr}");
}
