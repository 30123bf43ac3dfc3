//! `scripts/device-check --cpu --quick` starts, runs every part and writes its report, so the
//! script is known to work before a machine with a GPU runs it in full.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::process::Command;

#[test]
fn device_check_runs_on_the_cpu_and_reports() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("device-check");
    std::fs::remove_dir_all(&out).ok();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/device-check");
    let status = Command::new(&script)
        .args(["--cpu", "--quick", "--out"])
        .arg(&out)
        .env("OCELLUS_BENCH", env!("CARGO_BIN_EXE_ocellus-bench"))
        .status()
        .unwrap();
    assert!(status.success(), "{status}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("device-check.json")).unwrap()).unwrap();
    assert_eq!(report["device"], "cpu");
    let parity = report["parity"].as_array().unwrap();
    assert_eq!(parity.len(), 6, "three encoders, the CLIP image tower, MAE training, Llama: {parity:?}");
    for p in parity {
        // On the CPU the "device" run is the reference run: the same kernels, the same result.
        assert_eq!(p["fp32_max_abs"].as_f64(), Some(0.0), "{p}");
        let bf16 = p["bf16_max_abs"].as_f64().unwrap();
        if p["model"].as_str().unwrap().contains("gradients") {
            assert!(bf16.is_finite() && bf16 > 0.0, "{p}"); // bf16 training is reported, not bounded
        } else {
            assert!(bf16 > 0.0 && bf16 < p["max_abs_reference"].as_f64().unwrap(), "{p}");
        }
    }
    let mae = report["mae_training"]["runs"].as_array().unwrap();
    assert_eq!(mae.len(), 2, "fp32 and autocast");
    assert!(mae.iter().all(|r| r["steps_per_s"].as_f64().unwrap() > 0.0), "{mae:?}");
    let revvit = report["revvit_memory"]["runs"].as_array().unwrap();
    assert_eq!(revvit.len(), 4, "ordinary and reversible at depths 2 and 4: {revvit:?}");
    assert!(revvit.iter().all(|r| r["step_peak_mib"].as_f64().unwrap().is_finite()), "{revvit:?}");
    let rev_hiera = report["rev_hiera_memory"]["runs"].as_array().unwrap();
    assert_eq!(rev_hiera.len(), 4, "ordinary and reversible Hiera at depths 2 and 4: {rev_hiera:?}");
    assert!(rev_hiera.iter().all(|r| r["step_peak_mib"].as_f64().unwrap().is_finite()), "{rev_hiera:?}");
    let runs = report["sam2_streaming"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["frames_per_s"].as_f64().unwrap() > 0.0), "{runs:?}");
    assert!(report["memory"]["rss_mib"].as_f64().unwrap() > 0.0);
    assert!(report["memory"]["vram_mib"].is_null(), "no GPU memory on the CPU");
    assert!(report["hiera"]["images_per_s"].as_f64().unwrap() > 0.0);
    let formats = report["llama"]["formats"].as_array().unwrap();
    assert_eq!(formats.iter().map(|f| f["format"].as_str().unwrap()).collect::<Vec<_>>(), ["bf16", "int4"]);
    for f in formats {
        let (decode, bound) = (f["decode_tokens_per_s"].as_f64().unwrap(), f["bound_tokens_per_s"].as_f64().unwrap());
        assert!(decode > 0.0 && bound > 0.0, "{f}");
    }
    let md = std::fs::read_to_string(out.join("device-check.md")).unwrap();
    assert!(md.starts_with("# Device check: cpu (quick)"), "{md}");
    assert!(md.contains("| int4 |"), "{md}");
    assert!(
        md.contains("RevViT, patch 4, width 192 ×2 streams: training step on cpu")
            && md.contains(
                "reversible Hiera, stages [1, 2, depth, 2], width 96 (first stage) ×2 streams: training step"
            )
            && md.matches("| depth | ordinary MiB | reversible MiB |").count() == 2,
        "{md}"
    );
}
