//! `ocellus adapt` through the binary: MAE adaptation of Hiera-T on the camera images of a
//! recording the pipeline wrote; a run stopped at step 2 and resumed ends bit for bit where an
//! uninterrupted run ends; the output loads as the backbone, with the trunk changed and the
//! head kept; what cannot be trained on is refused with a reason.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::{Path, PathBuf};
use std::process::Command;

use ocellus_perception::backbone::Backbone;
use ocellus_perception::model::{ModelSpec, WeightsSource};
use tch::{Device, Tensor};

fn ocellus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ocellus"))
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 20 frames of the moving-ball test pattern at 320×240, recorded by the Rerun sink.
fn recording(dir: &Path) -> PathBuf {
    let rrd = dir.join("camera.rrd");
    let config = dir.join("record.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"front\"\npreset = {{ kind = \"test_pattern\", pattern = \"ball\", width = 320, height = 240, frames = 20 }}\n\n\
             [[sink]]\nkind = \"rerun\"\ninputs = [\"front\"]\nsave = \"{}\"\n",
            rrd.display()
        ),
    )
    .unwrap();
    let out = ocellus().args(["run", config.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rrd
}

fn adapt(rrd: &Path, extra: &[&str]) -> std::process::Output {
    let args = ["adapt", "--model", "hiera_tiny_224", "--random-weights", "3", "--from", rrd.to_str().unwrap()];
    let schedule =
        ["--steps", "4", "--batch", "2", "--warmup-steps", "1", "--blr", "0.01", "--threads", "2", "--seed", "7"];
    ocellus().args(args).args(schedule).args(extra).output().unwrap()
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap()
}

fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn adapt_trains_on_a_recording_resumes_exactly_and_writes_a_loadable_backbone() {
    let dir = scratch("adapt_resume");
    let rrd = recording(&dir);
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let (ck_a, ck_b) = (dir.join("a.ckpt"), dir.join("b.ckpt"));

    // Uninterrupted.
    let whole = report(&adapt(&rrd, &["--out", a.to_str().unwrap(), "--checkpoint", ck_a.to_str().unwrap()]));
    println!("{whole:#}");
    assert_eq!((whole["start_step"].as_u64(), whole["end_step"].as_u64()), (Some(0), Some(4)));
    assert_eq!(whole["finished"], true);
    assert_eq!((whole["train_frames"].as_u64(), whole["held_out_frames"].as_u64()), (Some(18), Some(2)));
    assert!(whole["steps_per_s"].as_f64().unwrap() > 0.0);
    let (before, after) =
        (whole["held_out_loss_before"].as_f64().unwrap(), whole["held_out_loss_after"].as_f64().unwrap());
    assert!(before.is_finite() && after.is_finite() && before != after, "{before} {after}");

    // Stopped at step 2, then resumed from the checkpoint.
    let first =
        report(&adapt(&rrd, &["--out", b.to_str().unwrap(), "--checkpoint", ck_b.to_str().unwrap(), "--stop-at", "2"]));
    assert_eq!((first["end_step"].as_u64(), first["finished"].as_bool()), (Some(2), Some(false)));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("b.ckpt.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 2);
    let rest = report(&adapt(&rrd, &["--out", b.to_str().unwrap(), "--checkpoint", ck_b.to_str().unwrap()]));
    assert_eq!((rest["start_step"].as_u64(), rest["end_step"].as_u64()), (Some(2), Some(4)));
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert!(va.equal(vb), "{ka} differs between the whole run and the resumed one");
    }
    for ((ka, va), (_, vb)) in tensors(&ck_a).iter().zip(&tensors(&ck_b)) {
        assert!(va.equal(vb), "checkpoint {ka} differs");
    }

    // The output is a backbone like any other: same keys as the starting weights, the trunk
    // trained, norm and head as they were.
    let loaded = ModelSpec {
        name: "hiera_tiny_224".into(),
        weights: WeightsSource::File(b.clone()),
        device: Device::Cpu,
        dtype: ocellus_kernels::DType::F32,
    }
    .load::<Backbone>()
    .unwrap();
    drop(loaded);
    let init = dir.join("init.safetensors");
    let out = ocellus()
        .args(["weights", "init", "--model", "hiera_tiny_224", "--seed", "3", "--out", init.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start: std::collections::HashMap<String, Tensor> = tensors(&init).into_iter().collect();
    for (k, v) in &tb {
        let same = v.equal(&start[k]);
        if k.starts_with("norm.") || k.starts_with("head.") {
            assert!(same, "{k} changed");
        } else if k == "blocks.0.attn.qkv.weight" || k == "pos_embed" {
            assert!(!same, "{k} did not train");
        }
    }
    let manifest = std::fs::read_to_string(ocellus_perception::weights::manifest_path(&b)).unwrap();
    assert!(manifest.contains("adapt seed=3"), "{manifest}");

    // A checkpoint of other settings is not resumed.
    let out = adapt(
        &rrd,
        &[
            "--out",
            dir.join("c.safetensors").to_str().unwrap(),
            "--checkpoint",
            ck_a.to_str().unwrap(),
            "--mask-ratio",
            "0.75",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("written by a different run"), "{err}");
}

#[test]
fn adapt_collects_from_a_live_config_then_trains() {
    let dir = scratch("adapt_live");
    let weights = dir.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    // A camera-paced endless source, and an actor whose official weights are not there: only
    // the sources run, so nothing is fetched and no model is loaded.
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        "[[source]]\nname = \"front\"\npreset = { kind = \"test_pattern\", pattern = \"ball\", width = 320, height = 240, fps = 30, live = true }\n\n\
         [[actor]]\nname = \"features\"\nkind = \"backbone\"\ninputs = [\"front\"]\nmodel = \"hiera_base_224\"\nweights = \"official\"\n\n\
         [[sink]]\nkind = \"null\"\ninputs = [\"features\"]\n",
    )
    .unwrap();
    let out_file = dir.join("live.safetensors");
    let started = std::time::Instant::now();
    let out = ocellus()
        .env("OCELLUS_WEIGHTS", &weights)
        .env("OCELLUS_MIRROR", "http://127.0.0.1:9/")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(["adapt", "--model", "hiera_tiny_224", "--random-weights", "2", "--config", config.to_str().unwrap()])
        .args(["--collect", "3s", "--max-frames", "40", "--steps", "2", "--batch", "2", "--threads", "2"])
        .args(["--out", out_file.to_str().unwrap(), "--report", dir.join("report.json").to_str().unwrap()])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    println!("{r:#}\n{stderr}\n{elapsed:?}");
    assert!(stderr.contains("collecting frames of front for 3s"), "{stderr}");
    // 3 s at 30 frames/s offered ~90 frames: the reservoir keeps 40, every tenth held out.
    assert_eq!((r["train_frames"].as_u64(), r["held_out_frames"].as_u64()), (Some(36), Some(4)));
    assert_eq!((r["end_step"].as_u64(), r["finished"].as_bool()), (Some(2), Some(true)));
    let collected = stderr.lines().find(|l| l.starts_with("adapt ")).unwrap();
    let offered: u64 = collected.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(offered > 40, "the collector saw {offered} frames: {collected}");
    assert!(std::fs::read_dir(&weights).unwrap().next().is_none(), "something was fetched");
    let manifest = std::fs::read_to_string(ocellus_perception::weights::manifest_path(&out_file)).unwrap();
    assert!(manifest.contains("the sources of"), "{manifest}");

    // A camera the configuration does not have is refused, naming the ones it has.
    let out = ocellus()
        .env("OCELLUS_WEIGHTS", &weights)
        .args(["adapt", "--model", "hiera_tiny_224", "--random-weights", "2", "--config", config.to_str().unwrap()])
        .args(["--camera", "back", "--out", out_file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no source named \"back\" (its sources: front)"), "{err}");
}

#[test]
fn ctrl_c_stops_adapt_after_the_step_and_writes_the_checkpoint_and_weights() {
    let dir = scratch("adapt_ctrl_c");
    let rrd = recording(&dir);
    let (out_file, ck, report_path) = (dir.join("w.safetensors"), dir.join("w.ckpt"), dir.join("report.json"));
    let child = ocellus()
        .args(["adapt", "--model", "hiera_tiny_224", "--random-weights", "3", "--from", rrd.to_str().unwrap()])
        .args(["--steps", "1000", "--batch", "1", "--threads", "2", "--checkpoint-every", "1"])
        .args(["--checkpoint", ck.to_str().unwrap(), "--out", out_file.to_str().unwrap()])
        .args(["--report", report_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Training is under way once the first checkpoint is there.
    let meta = dir.join("w.ckpt.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !meta.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted: stopping after this step"), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let end = r["end_step"].as_u64().unwrap();
    assert!((1..1000).contains(&end) && r["finished"] == false, "{r:#}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(meta["step"].as_u64(), Some(end), "the checkpoint is at the step reached");
    let keys: Vec<String> = tensors(&out_file).into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().any(|k| k == "pos_embed") && keys.iter().any(|k| k.starts_with("head.")), "{keys:?}");
}

#[test]
fn adapt_refuses_what_it_cannot_train_on() {
    let dir = scratch("adapt_refusals");
    let rrd = recording(&dir);
    let out_file = dir.join("x.safetensors");
    let run = |args: &[&str]| {
        let mut cmd = ocellus();
        cmd.args([
            "adapt",
            "--random-weights",
            "1",
            "--from",
            rrd.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ]);
        let out = cmd.args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--model", "hiera_base_16x224"]);
    assert!(err.contains("adapt takes a Hiera image model (hiera_tiny_224"), "{err}");
    let err = run(&["--model", "hiera_tiny_224", "--camera", "back"]);
    assert!(err.contains("no images of camera \"back\""), "{err}");
    let err = run(&["--model", "hiera_tiny_224", "--mixed-precision"]);
    assert!(err.contains("--mixed-precision needs a CUDA device"), "{err}");
    assert!(!out_file.exists());
}

#[test]
fn gradient_accumulation_takes_several_micro_batches_per_step() {
    let dir = scratch("adapt_accum");
    let rrd = recording(&dir);
    let run = |accum: &str| {
        let out = dir.join(format!("accum{accum}.safetensors"));
        let args = ["adapt", "--model", "hiera_tiny_224", "--random-weights", "3", "--from", rrd.to_str().unwrap()];
        let schedule =
            ["--steps", "2", "--batch", "1", "--accum", accum, "--threads", "2", "--out", out.to_str().unwrap()];
        (report(&ocellus().args(args).args(schedule).output().unwrap()), tensors(&out))
    };
    let (one, single) = run("1");
    let (two, accumulated) = run("2");
    assert_eq!((two["end_step"].as_u64(), two["finished"].as_bool()), (Some(2), Some(true)));
    assert!(two["train_loss_last"].as_f64().unwrap().is_finite() && one["train_loss_last"] != two["train_loss_last"]);
    // Two micro-batches a step (and the rate scaled to the effective batch) train differently.
    let differ = single.iter().zip(&accumulated).any(|((k, a), (_, b))| k == "blocks.0.attn.qkv.weight" && !a.equal(b));
    assert!(differ, "two micro-batches a step gave the same weights as one");
}
