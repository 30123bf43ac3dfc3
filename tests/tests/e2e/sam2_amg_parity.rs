//! SAM 2 automatic mask generation against the official `SAM2AutomaticMaskGenerator` (sam2
//! 1.1.0), from `tests/fixtures/generate_amg.py`:
//! - the real model (SAM 2.1 tiny and base_plus, the seeded weights of the image parity
//!   cases) on camera-sized frames, crop layers and m2m refinement included: the same number
//!   of masks, every mask ≥ 99.9 % of pixels equal, boxes and crop boxes equal, predicted IoU
//!   and stability within 1e-4;
//! - the generator's own logic on hundreds of distinct masks, with the predictor replaced on
//!   both sides by the same closed-form one: everything equal (masks, boxes, points, order),
//!   scores within 1e-6, including the small-region post-processing;
//! - the native `remove_small_regions` against the reference's OpenCV one, pixel for pixel.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::HashMap;

use ocellus_perception::sam2::amg::{self, RegionMode};
use ocellus_perception::sam2::automatic_mask_generator::{AmgConfig, AmgMask, AutomaticMaskGenerator};
use ocellus_perception::sam2::image_predictor::{ImagePredictor, PointPrediction, PointPredictor};
use ocellus_perception::sam2::{IMAGE_PREDICTOR_KEYS, Sam2, Sam2Config};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{CameraClip, fixture_io, fixtures_dir, png_frames};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Pixel agreement required of each mask of the real model (the bar).
const MIN_AGREEMENT: f64 = 0.999;
/// Predicted IoU and stability score (fp32 model outputs).
const SCORE_TOL: f32 = 1e-4;

fn meta(case: &str) -> serde_json::Value {
    let path = fixtures_dir().join(format!("{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn settings(meta: &serde_json::Value) -> AmgConfig {
    serde_json::from_value(meta["settings"].clone()).expect("the fixture's settings are official names")
}

/// Compares the generator's output with the reference's, mask by mask in order.
fn compare(case: &str, ours: &[AmgMask], io: &HashMap<String, Tensor>, min_agreement: f64, score_tol: f32) {
    let n = io["masks"].size()[0] as usize;
    assert_eq!(ours.len(), n, "{case}: number of masks");
    let rows = |k: &str| -> Vec<f32> { Vec::try_from(io[k].to_kind(Kind::Float).flatten(0, -1)).unwrap() };
    let (boxes, iou, stability, points, crops) =
        (rows("boxes"), rows("iou"), rows("stability"), rows("points"), rows("crop_boxes"));
    let mut worst = 1.0f64;
    let (mut iou_err, mut stab_err) = (0f32, 0f32);
    for (i, m) in ours.iter().enumerate() {
        let reference = io["masks"].get(i as i64).to_kind(Kind::Bool);
        let equal = m.segmentation.eq_tensor(&reference).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        worst = worst.min(equal);
        assert_eq!(m.xyxy(), boxes[4 * i..4 * i + 4], "{case}: box of mask {i}");
        let c = &crops[4 * i..4 * i + 4];
        assert_eq!(m.crop_box.map(|v| v as f32), [c[0], c[1], c[2] - c[0], c[3] - c[1]], "{case}: crop of mask {i}");
        assert_eq!(m.point_coords, points[2 * i..2 * i + 2], "{case}: point of mask {i}");
        assert_eq!(m.area, m.segmentation.sum(Kind::Int64).int64_value(&[]), "{case}: area of mask {i}");
        if min_agreement >= 1.0 {
            assert_eq!(m.area, reference.sum(Kind::Int64).int64_value(&[]), "{case}: area of mask {i}");
        }
        iou_err = iou_err.max((m.predicted_iou - iou[i]).abs());
        stab_err = stab_err.max((m.stability_score - stability[i]).abs());
    }
    eprintln!("{case}: {n} masks, worst pixel agreement {worst:.6}, IoU err {iou_err:e}, stability err {stab_err:e}");
    assert!(worst >= min_agreement, "{case}: a mask agrees on only {:.4} % of pixels", worst * 100.0);
    assert!(iou_err <= score_tol && stab_err <= score_tol, "{case}: scores off by {iou_err:e} / {stab_err:e}");
}

fn real_model_case(case: &str) {
    tch::set_num_threads(2);
    let meta = meta(case);
    let weights_case = meta["weights"].as_str().unwrap();
    let path = fixtures_dir().join(format!("{weights_case}.weights.safetensors"));
    // The generator's weights: the same seeded file (checksum over every tensor, name order).
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let sum: f64 = tensors.iter().map(|(_, t)| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[])).sum();
    let expected = meta["checksum"].as_f64().unwrap();
    assert!((sum - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{case}: weights checksum {sum} != {expected}");
    drop(tensors);

    let mut vs = VarStore::new(Device::Cpu);
    let sam = Sam2::new(&vs.root(), &Sam2Config::by_name(meta["model"].as_str().unwrap()).unwrap()).unwrap();
    weights::load(&mut vs, &path, Scope::Prefixes(&IMAGE_PREDICTOR_KEYS)).unwrap();
    let clip = CameraClip::new(match meta["frame"].as_str().unwrap() {
        "640x480" => "640x480",
        "641x479" => "641x479",
        other => panic!("frame size {other}"),
    });
    let rgb = png_frames(&clip, 1).remove(0);
    let generator = AutomaticMaskGenerator::new(settings(&meta)).unwrap();
    let mut predictor = ImagePredictor::new(&sam, Device::Cpu);
    let masks = generator.generate(&mut predictor, &rgb, clip.width, clip.height).unwrap();
    compare(case, &masks, &fixture_io(case), MIN_AGREEMENT, SCORE_TOL);
}

#[test]
fn tiny_with_crop_layers_matches_the_official_generator() {
    real_model_case("amg_tiny");
}

#[test]
fn tiny_with_m2m_refinement_on_an_odd_frame_size_matches() {
    real_model_case("amg_tiny_m2m");
}

#[test]
fn base_plus_matches_the_official_generator() {
    real_model_case("amg_base_plus");
}

/// The fixture's closed-form predictor (`synthetic_predict` in generate_amg.py), op for op.
struct Synthetic {
    hw: (i64, i64),
}

const LOW_RES: i64 = 256;
const RADII_MULTI: [f32; 3] = [60.0, 120.0, 240.0];
const RADIUS_SINGLE: f32 = 150.0;

impl PointPredictor for Synthetic {
    fn resolution(&self) -> i64 {
        1024
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn set_image(&mut self, _rgb: &[u8], width: usize, height: usize) -> ocellus_perception::Result<()> {
        self.hw = (height as i64, width as i64);
        Ok(())
    }

    fn predict_points(
        &self,
        coords: &Tensor,
        _labels: &Tensor,
        mask_input: Option<&Tensor>,
        multimask: bool,
    ) -> ocellus_perception::Result<PointPrediction> {
        let stride = 1024.0 / LOW_RES as f64;
        let g = (Tensor::arange(LOW_RES, (Kind::Float, Device::Cpu)) + 0.5) * stride;
        let (gx, gy) = (g.view([1, 1, 1, LOW_RES]), g.view([1, 1, LOW_RES, 1]));
        let px = coords.select(1, 0).select(1, 0).view([-1, 1, 1, 1]);
        let py = coords.select(1, 0).select(1, 1).view([-1, 1, 1, 1]);
        let radii: &[f32] = if multimask { &RADII_MULTI } else { &[RADIUS_SINGLE] };
        let r = Tensor::from_slice(radii).view([1, -1, 1, 1]);
        let (dx, dy) = (&gx - &px, &gy - &py);
        let d2 = &dx * &dx + &dy * &dy;
        let ripple = (&gx * 0.21).sin() * (&gy * 0.17).cos() * 3.0;
        let mut low = (&r * &r - d2) / (&r * 4.0) + ripple; // [B, M, 256, 256]
        if let Some(m) = mask_input {
            low = low * 0.5 + m * 0.5;
        }
        let m = Tensor::arange(low.size()[1], (Kind::Float, Device::Cpu)).view([1, -1]);
        let iou = (px.view([-1, 1]) * 0.0137 + py.view([-1, 1]) * 0.0071 + m * 0.29).remainder(1.0);
        let masks = low.upsample_bilinear2d([self.hw.0, self.hw.1], false, None, None);
        Ok(PointPrediction { masks, iou, low_res_masks: low.clamp(-32.0, 32.0) })
    }

    fn reset(&mut self) {
        self.hw = (0, 0);
    }
}

fn synthetic_case(case: &str) {
    let meta = meta(case);
    let (w, h) = (meta["size"][0].as_u64().unwrap() as usize, meta["size"][1].as_u64().unwrap() as usize);
    let generator = AutomaticMaskGenerator::new(settings(&meta)).unwrap();
    let masks = generator.generate(&mut Synthetic { hw: (0, 0) }, &vec![0u8; w * h * 3], w, h).unwrap();
    compare(case, &masks, &fixture_io(case), 1.0, 1e-6);
}

#[test]
fn crop_layers_thresholds_and_nms_equal_the_reference() {
    synthetic_case("amg_synthetic_crops");
}

#[test]
fn single_mask_output_offset_threshold_and_overlap_equal_the_reference() {
    synthetic_case("amg_synthetic_single");
}

#[test]
fn m2m_refinement_equals_the_reference() {
    synthetic_case("amg_synthetic_m2m");
}

#[test]
fn min_mask_region_area_equals_the_reference_postprocessing() {
    synthetic_case("amg_synthetic_small_regions");
}

#[test]
fn remove_small_regions_equals_opencv() {
    let meta = meta("small_regions");
    let io = fixture_io("small_regions");
    let cases = meta["cases"].as_array().unwrap();
    let mut changed_count = 0;
    for (k, case) in cases.iter().enumerate() {
        let input = &io[&format!("{k}.input")];
        let width = input.size()[1] as usize;
        let mut mask: Vec<bool> = Vec::<u8>::try_from(input.flatten(0, -1)).unwrap().iter().map(|&v| v != 0).collect();
        let expected: Vec<bool> =
            Vec::<u8>::try_from(io[&format!("{k}.output")].flatten(0, -1)).unwrap().iter().map(|&v| v != 0).collect();
        let mode = if case["mode"] == "holes" { RegionMode::Holes } else { RegionMode::Islands };
        let changed = amg::remove_small_regions(&mut mask, width, case["area"].as_f64().unwrap(), mode);
        assert_eq!(changed, case["changed"].as_bool().unwrap(), "case {k} {case}: changed");
        assert_eq!(mask, expected, "case {k} {case}: pixels");
        changed_count += usize::from(changed);
    }
    assert!(changed_count > cases.len() / 4, "the cases remove something ({changed_count} of {})", cases.len());
}

#[test]
fn bad_settings_are_refused_with_the_key() {
    for (toml, needle) in [
        ("points_per_side = 0", "points_per_side"),
        ("points_per_batch = 0", "points_per_batch"),
        ("crop_overlap_ratio = 1.5", "crop_overlap_ratio"),
        ("crop_n_layers = 2\npoint_grids = [[[0.5, 0.5]]]\npoints_per_side = 4", "exactly one"),
        ("box_nms_thresh = 2.0", "box_nms_thresh"),
    ] {
        let config: AmgConfig = toml::from_str(toml).unwrap();
        let err = AutomaticMaskGenerator::new(config).unwrap_err().to_string();
        assert!(err.contains(needle), "{toml}: {err}");
    }
    let err = toml::from_str::<AmgConfig>("points_per_sid = 4").unwrap_err().to_string();
    assert!(err.contains("points_per_sid"), "{err}");
}

/// Discovered objects start as mask prompts: the streaming tracker given two masks at frame
/// resolution equals the video predictor's `add_new_mask` and propagation (tiny, 640×480).
#[test]
fn mask_prompts_equal_add_new_mask_of_the_video_predictor() {
    use ocellus_kernels::{Fit, Normalization, Resize, Transform};
    use ocellus_perception::sam2::sam2_base::Horizon;
    use ocellus_perception::sam2::streaming::{Prompt, StreamConfig, StreamingTracker};
    use ocellus_tests::{assert_close, assert_close_bf16};

    tch::set_num_threads(2);
    let meta = meta("video_mask_prompt");
    let io = fixture_io("video_mask_prompt");
    let (w, h) = (meta["size"][0].as_i64().unwrap(), meta["size"][1].as_i64().unwrap());
    let frames = meta["frames"].as_u64().unwrap();
    let path = fixtures_dir().join(format!("{}.weights.safetensors", meta["weights"].as_str().unwrap()));
    let mut vs = VarStore::new(Device::Cpu);
    let sam = Sam2::new_with_tracking(&vs.root(), &Sam2Config::by_name("sam2.1_hiera_tiny").unwrap()).unwrap();
    weights::load(&mut vs, &path, Scope::Exact).unwrap();
    let transform = Transform {
        fit: Fit::Stretch { height: 1024, width: 1024 },
        resize: Resize::PilBicubic,
        norm: Normalization::IMAGENET,
    };
    let mut tracker =
        StreamingTracker::new(StreamConfig { horizon: Horizon::Video(frames as i64), ..StreamConfig::default() });
    for obj in [1u64, 2] {
        let mask = io[&format!("obj{obj}.mask")].to_kind(Kind::Bool).view([1, 1, h, w]);
        tracker.add_prompt(obj, Prompt::Mask(mask));
    }
    let (mut worst, mut compared) = (1.0f64, 0);
    tch::no_grad(|| {
        for f in 0..frames {
            let png = fixtures_dir().join(format!("amg_video_640x480/{f:05}.png"));
            let rgb = image::open(&png).unwrap().to_rgb8().into_raw();
            let x = transform.apply_rgb8(&rgb, w as usize, h as usize, Device::Cpu).unwrap();
            let feats = sam.frame_features(&x).unwrap();
            for (obj, out) in tracker.step(&sam, f, &feats).unwrap() {
                let tag = format!("frame{f}.obj{obj}");
                assert_close(&format!("{tag} pred_masks"), &out.pred_masks, &io[&format!("{tag}.pred_masks")], 1e-3);
                assert_close(&format!("{tag} obj_ptr"), &out.obj_ptr, &io[&format!("{tag}.obj_ptr")], 1e-4);
                let scores = &io[&format!("{tag}.object_score_logits")];
                assert_close(&format!("{tag} object_score_logits"), &out.object_score_logits, scores, 1e-4);
                let memory = out.maskmem_features.as_ref().unwrap();
                assert_close_bf16(
                    &format!("{tag} maskmem_features"),
                    memory,
                    &io[&format!("{tag}.maskmem_features")],
                    1e-4,
                );
                // At frame resolution, as `_get_orig_video_res_output`.
                let video = out.pred_masks.upsample_bilinear2d([h, w], false, None, None).gt(0.0).view([h, w]);
                let reference = io[&format!("{tag}.video_mask")].to_kind(Kind::Bool);
                let agree = video.eq_tensor(&reference).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                worst = worst.min(agree);
                compared += 1;
            }
        }
    });
    assert_eq!(compared, 2 * frames, "both objects on every frame");
    assert!(worst >= 0.9999, "mask pixel agreement {worst}");
}
