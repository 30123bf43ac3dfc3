//! The Rerun sink's network targets, against the real Rerun viewer/server binary from the
//! bootstrap venv (`rerun-sdk==0.36.3`), on loopback only.
//!
//! - `connect`: a Rerun server started with `--save` receives the stream and writes it out.
//! - `serve`: our pipeline hosts the gRPC server; `rerun --connect … --save` pulls from it.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ocellus_pipelines::build;
use ocellus_tests::{config_file, read_rrd, scratch_dir};

fn rerun_cli() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ocellus/venv")))
        .unwrap();
    let cli = venv.join("bin/rerun");
    assert!(cli.exists(), "{} missing: run scripts/bootstrap", cli.display());
    cli
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupt_and_wait(mut child: Child) {
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("rerun did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(dir: &std::path::Path, source: &str, target: &str) -> ocellus_pipelines::PipelineConfig {
    config_file(
        dir,
        "pipeline.toml",
        &format!(
            r#"
[[source]]
name = "cam"
preset = {{ kind = "test_pattern", width = 64, height = 48, {source} }}

[[actor]]
name = "motion"
kind = "motion"
inputs = ["cam"]
edge = {{ policy = "block" }}

[[sink]]
kind = "rerun"
inputs = ["cam", "motion"]
edge = {{ policy = "block" }}
{target}
"#
        ),
    )
}

#[test]
fn connect_streams_to_a_running_rerun_server() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rerun_connect");
    let saved = dir.join("received.rrd");
    let port = free_port();
    let server = Command::new(rerun_cli())
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save"])
        .arg(&saved)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    let config = config(&dir, "frames = 20", &format!("connect = \"rerun+http://127.0.0.1:{port}/proxy\""));
    let report = build(&config).unwrap().run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    // The sink flushed before the run returned; give the server a moment to write, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    interrupt_and_wait(server);
    let summary = read_rrd(&saved).unwrap();
    assert_eq!(summary.rows_of("world/cam/image").len(), 20);
    assert_eq!(summary.rows_of("world/cam/motion").len(), 20);
}

#[test]
fn serve_hosts_a_server_that_rerun_can_pull_from() {
    let _alone = ocellus_tests::exclusive(); // the viewer process must not starve
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rerun_serve");
    let pulled = dir.join("pulled.rrd");
    let port = free_port();
    // A live source keeps the server up for ~5 s, and `linger` 5 s more; the served stream
    // keeps everything for late viewers, so the client gets every frame that was logged.
    let config = config(
        &dir,
        "frames = 150, fps = 30, live = true",
        &format!("serve = {{ bind = \"127.0.0.1\", port = {port}, linger = \"5s\" }}"),
    );
    let pipeline = build(&config).unwrap();
    let runner = std::thread::spawn(move || pipeline.run());
    wait_for_port(port);
    let client_port = free_port();
    let client = Command::new(rerun_cli())
        .args(["--bind", "127.0.0.1", "--port", &client_port.to_string(), "--connect"])
        .arg(format!("rerun+http://127.0.0.1:{port}/proxy"))
        .arg("--save")
        .arg(&pulled)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let report = runner.join().unwrap().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    // The client stops by itself when our server goes away.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = client;
    while client.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            interrupt_and_wait(client);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every frame the server logged reached the viewer (a live source drops frames itself
    // when the machine is loaded: those never reach the sink).
    let summary = read_rrd(&pulled).unwrap();
    let logged = |node: &str| report.node(node).map_or(0, |n| n.metrics.emitted as usize);
    assert!(logged("cam") > 0 && logged("cam") <= 150);
    assert_eq!(summary.rows_of("world/cam/image").len(), logged("cam"));
    assert_eq!(summary.rows_of("world/cam/motion").len(), logged("motion"));
}

/// Every recording carries Ocellus's layout, read back from the file: the camera's image
/// view rooted at `world/<camera>` and the metrics over time; with `blueprint = false`, none
/// (the viewer lays it out itself).
#[test]
fn recordings_carry_the_default_layout() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rerun_blueprint");
    let rrd = dir.join("layout.rrd");
    let config = config(&dir, "frames = 3", &format!("save = \"{}\"", rrd.display()));
    let report = build(&config).unwrap().run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    let views = ocellus_io::recording::blueprint_views(&rrd).unwrap();
    let summary: Vec<(String, String, String)> =
        views.iter().map(|v| (v.class.clone(), v.name.clone(), v.origin.clone())).collect();
    assert!(summary.contains(&("2D".into(), "cam".into(), "world/cam".into())), "{summary:?}");
    assert!(summary.contains(&("TimeSeries".into(), "metrics".into(), "metrics".into())), "{summary:?}");
    assert_eq!(views.len(), 2, "no agent, people or actions here: {summary:?}");
    // The data is there as well.
    assert_eq!(read_rrd(&rrd).unwrap().rows_of("world/cam/image").len(), 3);

    let plain = dir.join("plain.rrd");
    let config = config_file(
        &dir,
        "plain.toml",
        &format!(
            "[[source]]\nname = \"cam\"\npreset = {{ kind = \"test_pattern\", width = 64, height = 48, frames = 2 }}\n\
             [[sink]]\nkind = \"rerun\"\ninputs = [\"cam\"]\nsave = \"{}\"\nblueprint = false\n",
            plain.display()
        ),
    );
    assert_eq!(build(&config).unwrap().run().unwrap().failures().count(), 0);
    assert!(ocellus_io::recording::blueprint_views(&plain).unwrap().is_empty());
}

/// The whole layout: two cameras as tabs, each with its image and its 3D people; metrics,
/// the caption, decisions, alerts and the actions of every camera beside them.
#[test]
fn the_full_layout_has_a_view_for_everything_ocellus_shows() {
    use ocellus_io::sink::{Layout, RerunTarget, SharedRecording};
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rerun_layout");
    let rrd = dir.join("full.rrd");
    let layout = Layout {
        cameras: vec!["front".into(), "back".into()],
        people: true,
        actions: true,
        agent: true,
        metrics: true,
        notices: true,
    };
    let recording = SharedRecording::with_blueprint("ocellus-test", RerunTarget::Save(rrd.clone()), Some(layout));
    let rec = recording.stream().unwrap();
    rec.flush_blocking().unwrap();
    drop(rec);
    drop(recording);
    let views = ocellus_io::recording::blueprint_views(&rrd).unwrap();
    let mut summary: Vec<(String, String, String)> =
        views.iter().map(|v| (v.class.clone(), v.name.clone(), v.origin.clone())).collect();
    summary.sort();
    let expected: Vec<(String, String, String)> = [
        ("2D", "back", "world/back"),
        ("2D", "front", "world/front"),
        ("3D", "back 3D", "world/back"),
        ("3D", "front 3D", "world/front"),
        ("TextDocument", "caption", "agent/caption"),
        ("TextLog", "actions", ""),
        ("TextLog", "alerts", "agent/alerts"),
        ("TextLog", "decisions", "agent/decisions"),
        ("TextLog", "notices", "notices"),
        ("TimeSeries", "metrics", "metrics"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
    .collect();
    assert_eq!(summary, expected);
}

/// `jpeg = 80`: camera images as JPEG (`EncodedImage`) for viewers over a thin link; the
/// recording is a fraction of the raw one, and replay reads the images back, decoded, close
/// to the originals.
#[test]
fn jpeg_images_save_bandwidth_and_replay() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "rerun_jpeg");
    let clip = ocellus_tests::CameraClip::new("640x480");
    let frames = 8;
    let run = |name: &str, extra: &str| -> std::path::PathBuf {
        let rrd = dir.join(format!("{name}.rrd"));
        let config = config_file(
            &dir,
            &format!("{name}.toml"),
            &format!(
                "{}\n[[sink]]\nkind = \"rerun\"\ninputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\nmetrics = false\nsave = \"{}\"\n{extra}\n",
                clip.source_toml("cam", frames),
                rrd.display()
            ),
        );
        assert_eq!(build(&config).unwrap().run().unwrap().failures().count(), 0);
        rrd
    };
    let raw = run("raw", "");
    let jpeg = run("jpeg", "jpeg = 80");
    let (raw_size, jpeg_size) = (std::fs::metadata(&raw).unwrap().len(), std::fs::metadata(&jpeg).unwrap().len());
    println!(
        "{frames} camera frames 640x480: raw {raw_size} bytes, JPEG q80 {jpeg_size} bytes ({:.1}x smaller)",
        raw_size as f64 / jpeg_size as f64
    );
    assert!(jpeg_size * 2 < raw_size, "JPEG saves bandwidth: {jpeg_size} vs {raw_size}");
    let index = ocellus_io::recording::index(&jpeg).unwrap();
    assert_eq!(index.cameras["cam"].frames, frames as u64, "replay finds every JPEG image");
    let mut skipped = 0;
    let (mut originals, mut decoded) = (Vec::new(), Vec::new());
    for chunk in ocellus_io::recording::chunks(&raw).unwrap() {
        originals.extend(ocellus_io::recording::images_of(&chunk.unwrap(), &mut skipped));
    }
    for chunk in ocellus_io::recording::chunks(&jpeg).unwrap() {
        decoded.extend(ocellus_io::recording::images_of(&chunk.unwrap(), &mut skipped));
    }
    assert_eq!((originals.len(), decoded.len(), skipped), (frames, frames, 0));
    assert_eq!(originals[3].seq, decoded[3].seq);
    let (a, b) = (&originals[3].pixels, &decoded[3].pixels);
    assert_eq!(a.len(), b.len());
    let mean = a.iter().zip(b.iter()).map(|(x, y)| (i32::from(*x) - i32::from(*y)).unsigned_abs() as f64).sum::<f64>()
        / a.len() as f64;
    println!("mean absolute difference after JPEG q80: {mean:.2} levels");
    // Camera noise is what JPEG drops first; a broken decode would be off by ~100.
    assert!(mean < 16.0, "{mean}");
}
