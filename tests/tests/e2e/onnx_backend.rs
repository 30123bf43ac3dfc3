//! The ONNX Runtime backend of the image encoders: `ocellus weights export-onnx` on the official
//! modules (run in the reference venv), checked against Ocellus's native forward; the backbone
//! actor with `backend = "onnx"` on camera frames whose RGB rows GStreamer pads, against the
//! official transforms and encoders (the same fixture as the native backend); and the
//! configuration errors of the backend.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ocellus_perception::onnx::{OnnxEncoder, OnnxOptions};
use ocellus_pipelines::PipelineConfig;
use ocellus_pipelines::onnx_export::{DEFAULT_OPSET, export, python};
use ocellus_tests::{CameraClip, assert_close, fixtures_dir, scratch_dir};

use crate::camera_actors::{backbone_features_with, labeler_case, tracker_case};

/// Largest difference allowed between ONNX Runtime and the native forward (f32, CPU).
const ONNX_TOLERANCE: f64 = 1e-4;

/// Exports fixture weights `weights` of `model` (once for every test of this binary, one
/// export at a time); checks the exporter's own comparison.
fn exported(model: &str, weights: &str, resolution: Option<(i64, i64)>) -> PathBuf {
    static DONE: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut done = DONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let size = resolution.map_or("default".to_owned(), |(h, w)| format!("{h}x{w}"));
    let name = format!("{model}.{}.{size}", weights.trim_end_matches(".safetensors"));
    if let Some(out) = done.get(&name) {
        return out.clone();
    }
    let out = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("onnx_{name}")).join(format!("{model}.onnx"));
    let report = export(model, &fixtures_dir().join(weights), &out, resolution, &python(None), DEFAULT_OPSET).unwrap();
    println!("{model}: {:?}, max abs error to the native forward {:.2e}", report.outputs, report.max_abs_error);
    assert!(report.max_abs_error <= ONNX_TOLERANCE, "{model}: {}", report.max_abs_error);
    done.insert(name, out.clone());
    out
}

#[test]
fn exported_encoders_equal_the_native_forward() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "onnx_export");
    // Hiera's four stages, and the MetaCLIP image tower (B/32).
    exported("hiera_tiny_224", "hiera_tiny_224.weights.safetensors", None);
    exported("ViT-B-32-quickgelu", "clip_b32.weights.safetensors", None);
    // Weights of another model: named by key before anything is exported.
    let err = export(
        "hiera_base_plus_224",
        &fixtures_dir().join("hiera_tiny_224.weights.safetensors"),
        &dir.join("wrong.onnx"),
        None,
        &python(None),
        DEFAULT_OPSET,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("blocks."), "{err:#}");
    assert!(!dir.join("wrong.onnx").exists());
    let err = export(
        "sam2.1_hiera_tiny",
        &fixtures_dir().join("hieradet_tiny_1024.weights.safetensors"),
        &dir.join("nopython.onnx"),
        Some((512, 512)),
        Path::new("/nonexistent/python"),
        DEFAULT_OPSET,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--python"), "{err:#}");
}

#[test]
fn onnx_backbone_matches_the_official_transforms_on_camera_frames() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "onnx_backbone");
    let hiera = exported("hiera_tiny_224", "hiera_tiny_224.weights.safetensors", None);
    let sam2 = exported("sam2.1_hiera_tiny", "hieradet_tiny_1024.weights.safetensors", None);
    // 641×479: GStreamer pads the RGB rows.
    let clip = CameraClip::new("641x479");
    let io = clip.io();
    let options = "backend = \"onnx\"\nonnx = { threads = 2, optimization = \"all\" }";
    let hiera_levels = backbone_features_with(&clip, "hiera_tiny_224", &hiera, clip.tracked, options);
    let sam2_levels = backbone_features_with(&clip, "sam2.1_hiera_tiny", &sam2, clip.tracked, options);
    assert_eq!((hiera_levels.len(), sam2_levels.len()), (clip.tracked, clip.tracked));
    for f in 0..clip.tracked {
        for (i, level) in hiera_levels[f].iter().enumerate() {
            assert_close(&format!("onnx hiera frame {f} level {i}"), level, &io[&format!("hiera.frame{f}.{i}")], 1e-4);
        }
        for (i, level) in sam2_levels[f].iter().enumerate() {
            // The fixture keeps every 4th row and column.
            let ours = level.slice(2, 0, None, 4).slice(3, 0, None, 4);
            let name = format!("sam2_encoder.frame{f}.{i}");
            assert_close(&format!("onnx {name}"), &ours, &io[&name], 1e-4);
        }
    }
    // A file exported at another resolution is refused when the stage starts, saying how to fix it.
    let small = exported("sam2.1_hiera_tiny", "hieradet_tiny_1024.weights.safetensors", Some((512, 512)));
    let text = format!(
        "{}\n[[actor]]\nname = \"backbone\"\nkind = \"backbone\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{}\"\n\
         inputs = [\"cam\"]\nbackend = \"onnx\"\n",
        clip.source_toml("cam", 1),
        small.display()
    );
    let report =
        ocellus_pipelines::build(&ocellus_tests::config_file(&dir, "wrong_size.toml", &text)).unwrap().run().unwrap();
    let shown = report.to_string();
    assert!(shown.contains("--resolution 1024 1024"), "{shown}");
}

#[test]
fn onnx_labeler_matches_open_clip_on_camera_frames() {
    // Exported with a dynamic batch: the labeler encodes every track's crop in one batch.
    let file = exported("ViT-B-32-quickgelu", "clip_b32.weights.safetensors", None);
    let encoder = OnnxEncoder { file, options: OnnxOptions { threads: Some(2), ..OnnxOptions::default() } };
    labeler_case("641x479", Some(encoder));
}

#[test]
fn onnx_tracker_matches_the_video_predictor_on_camera_frames() {
    // The video fixture's weights: its image encoder exported, the rest of SAM 2 native.
    let file = exported("sam2.1_hiera_tiny", "sam2_video_tiny.weights.safetensors", None);
    tracker_case("641x479", &format!("backend = \"onnx\"\nimage_encoder = \"{}\"", file.display()));
}

#[test]
fn onnx_backend_configuration_errors_name_the_key() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "onnx_config");
    let file = dir.join("model.onnx");
    std::fs::write(&file, b"not read while validating").unwrap();
    let entry = |extra: &str, weights: &str| {
        format!(
            "[[source]]\nname = \"cam\"\npreset = {{ kind = \"test_pattern\", frames = 2 }}\n\n\
             [[actor]]\nname = \"backbone\"\nkind = \"backbone\"\nmodel = \"hiera_tiny_224\"\n{weights}\n\
             inputs = [\"cam\"]\n{extra}\n"
        )
    };
    let weights = format!("weights = \"{}\"", file.display());
    let tensors = dir.join("model.safetensors");
    std::fs::write(&tensors, b"not read while validating").unwrap();
    let safetensors = format!("weights = \"{}\"", tensors.display());
    let cases = [
        (entry("backend = \"onnx\"", "allow_random_weights = true"), "backend", "runs an exported file"),
        (entry("backend = \"onnx\"\ndtype = \"bf16\"", &weights), "dtype", "f32"),
        (entry("onnx = { threads = 2 }", &weights), "onnx", "session options"),
        (entry("backend = \"onnx\"", &safetensors), "weights", "export-onnx"),
        (
            entry("backend = \"onnx\"\nonnx = { optimisation = \"all\" }", &weights),
            "onnx.optimisation",
            "unknown field",
        ),
        (entry("backend = \"openvino\"", &weights), "backend", "unknown variant"),
    ];
    let labeler = |extra: &str| {
        format!(
            "[[source]]\nname = \"cam\"\npreset = {{ kind = \"test_pattern\", frames = 2 }}\n\n\
             [[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\n\
             allow_random_weights = true\ninputs = [\"cam\"]\n\n\
             [[actor]]\nname = \"labels\"\nkind = \"labeler\"\nmodel = \"ViT-B-32-quickgelu\"\n\
             allow_random_weights = true\nvocabulary = [\"cup\"]\ninputs = {{ frames = \"cam\", tracks = \"tracker\" }}\n{extra}\n"
        )
    };
    let cases = cases.into_iter().chain([
        (labeler("backend = \"onnx\""), "backend", "needs `image_encoder`"),
        (labeler(&format!("image_encoder = \"{}\"", file.display())), "image_encoder", "backend = \"onnx\""),
        (labeler("backend = \"onnx\"\nimage_encoder = \"missing.onnx\""), "image_encoder", "not found"),
    ]);
    for (text, key, needle) in cases {
        let err = PipelineConfig::parse(&dir.join("bad.toml"), &text).expect_err(key);
        let shown = err.to_string();
        assert!(err.path.to_string().ends_with(key), "{key}: {shown}");
        assert!(err.line.is_some(), "{shown}");
        assert!(shown.contains(needle), "{key}: {shown}");
    }
}
