//! HMR 2.0 against the golden data of the official code (`../shared/fixtures/hmr2`, README
//! there): the ViT backbone (depth 1 of 32) and the SMPL head (depth 2 of 6) with seeded
//! weights stored in BF16 (exact in f32), run on the fixture's inputs in f32 on the CPU; the
//! same again with every LayerNorm given non-trivial weights; the forward step of a 256×256
//! crop (the backbone sees its central 192 columns) with the camera translation and the 2-D
//! projection of given joints; and the full-size model's variables equal to the official
//! key list (503 keys, 670,459,037 parameters).
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::HashMap;

use ocellus_perception::hmr2::smpl_head::{SmplHeadCfg, TransformerDecoderCfg};
use ocellus_perception::hmr2::vit::VitConfig;
use ocellus_perception::hmr2::{Hmr2, Hmr2Config, ModelCfg};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{read_tensors, shared_fixtures};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Features and tokens (the README's bound for f32 on the CPU).
const FEATURES_TOL: f64 = 1e-4;
/// Rotations, betas, cameras.
const PARAMS_TOL: f64 = 1e-5;

/// The fixture's reduced configuration: backbone depth 1, decoder depth 2.
fn reduced() -> Hmr2Config {
    Hmr2Config {
        model: ModelCfg {
            backbone: VitConfig { depth: 1, ..VitConfig::default() },
            smpl_head: SmplHeadCfg {
                transformer_decoder: TransformerDecoderCfg { depth: 2, ..TransformerDecoderCfg::default() },
                ..SmplHeadCfg::default()
            },
            ..ModelCfg::default()
        },
        ..Hmr2Config::default()
    }
}

/// The reduced model with the fixture's weights, and LayerNorms from `ln_override` if asked.
fn model(ln_override: bool) -> (VarStore, Hmr2) {
    let dir = shared_fixtures("hmr2");
    let mut vs = VarStore::new(Device::Cpu);
    let model = Hmr2::new(&vs.root(), &reduced()).unwrap();
    weights::load(&mut vs, &dir.join("weights.safetensors"), Scope::Prefixes(&["backbone.", "smpl_head."])).unwrap();
    if ln_override {
        let norms = read_tensors(&dir.join("ln_override.safetensors"));
        let variables = vs.variables();
        tch::no_grad(|| {
            for (name, value) in &norms {
                let mut var = variables.get(name).unwrap_or_else(|| panic!("no variable {name}")).shallow_clone();
                var.copy_(&value.to_kind(tch::Kind::Float));
            }
        });
    }
    (vs, model)
}

fn max_diff(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "{name}: shape");
    let d = (ours - reference).abs().max().double_value(&[]);
    println!("{name}: max |Δ| = {d:.3e}");
    d
}

fn check(name: &str, ours: &Tensor, outputs: &HashMap<String, Tensor>, tol: f64) {
    let reference = outputs.get(name).unwrap_or_else(|| panic!("no {name} in the fixture"));
    let d = max_diff(name, ours, reference);
    assert!(d <= tol, "{name}: max |Δ| {d:.3e} > {tol:.0e}");
}

/// The backbone and the head on their own inputs; `prefix` is where the head and backbone
/// outputs are (`head.`, `backbone.`) and which outputs exist.
fn modules(ln_override: bool) {
    let dir = shared_fixtures("hmr2");
    let (_vs, hmr2) = model(ln_override);
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs =
        read_tensors(&dir.join(if ln_override { "outputs_ln_override.safetensors" } else { "outputs.safetensors" }));
    tch::no_grad(|| {
        let image = &inputs["backbone_image"];
        if !ln_override {
            check("backbone.patch_embed", &hmr2.backbone.patch_embed(image).unwrap(), &outputs, FEATURES_TOL);
            check("backbone.block0_output", &hmr2.backbone.tokens(image, Some(0)).unwrap(), &outputs, FEATURES_TOL);
        }
        check("backbone.features", &hmr2.backbone.forward(image).unwrap(), &outputs, FEATURES_TOL);

        let features = &inputs["head_features"];
        let (token, steps) = hmr2.smpl_head.decode(features).unwrap();
        check("head.dec_token_output", &token, &outputs, FEATURES_TOL);
        if !ln_override {
            check("head.dec_token_input", &steps[0], &outputs, FEATURES_TOL);
            check("head.dec_layer0_output", &steps[1], &outputs, FEATURES_TOL);
            check("head.dec_layer1_output", &steps[2], &outputs, FEATURES_TOL);
        }
        let (params, iterations) = hmr2.smpl_head.forward(features).unwrap();
        check("head.pred_global_orient", &params.global_orient, &outputs, PARAMS_TOL);
        check("head.pred_body_pose", &params.body_pose, &outputs, PARAMS_TOL);
        check("head.pred_betas", &params.betas, &outputs, PARAMS_TOL);
        check("head.pred_cam", &params.cam, &outputs, PARAMS_TOL);
        check("head.list_body_pose", &iterations.body_pose, &outputs, PARAMS_TOL);
        check("head.list_betas", &iterations.betas, &outputs, PARAMS_TOL);
        check("head.list_cam", &iterations.cam, &outputs, PARAMS_TOL);
    });
}

#[test]
fn backbone_and_head_match_the_official_modules() {
    modules(false);
}

#[test]
fn layer_norm_weights_are_applied_as_the_official_modules_do() {
    modules(true);
}

#[test]
fn forward_step_matches_the_official_one() {
    let dir = shared_fixtures("hmr2");
    let (_vs, hmr2) = model(false);
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs = read_tensors(&dir.join("outputs.safetensors"));
    tch::no_grad(|| {
        let out = hmr2.forward(&inputs["e2e_image"]).unwrap();
        check("e2e.backbone_features", &out.features, &outputs, FEATURES_TOL);
        check("e2e.pred_global_orient", &out.params.global_orient, &outputs, PARAMS_TOL);
        check("e2e.pred_body_pose", &out.params.body_pose, &outputs, PARAMS_TOL);
        check("e2e.pred_betas", &out.params.betas, &outputs, PARAMS_TOL);
        check("e2e.pred_cam", &out.params.cam, &outputs, PARAMS_TOL);
        // tz = 2 f / (256 s) is large (f = 5000): relative precision.
        let cam_t = &outputs["e2e.pred_cam_t"];
        let rel = ((&out.cam_t - cam_t).abs() / cam_t.abs().clamp_min(1.0)).max().double_value(&[]);
        println!(
            "e2e.pred_cam_t: {out_t:?} (relative max |Δ| {rel:.3e})",
            out_t = Vec::<f32>::try_from(out.cam_t.view([-1])).unwrap()
        );
        assert!(rel <= PARAMS_TOL, "camera translation");
        let f = &outputs["e2e.focal_length"];
        assert!(
            f.eq_tensor(&Tensor::full([1, 2], hmr2.config().focal_length, (tch::Kind::Float, Device::Cpu)))
                .all()
                .int64_value(&[])
                == 1
        );
        // The body model is a stand-in in the fixture: its joints are given.
        let keypoints = hmr2.project(&inputs["e2e_smpl_joints44"], &out.cam_t).unwrap();
        check("e2e.pred_keypoints_2d", &keypoints, &outputs, FEATURES_TOL);
    });
}

#[test]
fn full_size_model_has_the_official_keys() {
    let dir = shared_fixtures("hmr2");
    let text = std::fs::read_to_string(dir.join("keys_full.json")).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: HashMap<String, Vec<i64>> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (k[0].as_str().unwrap().to_owned(), k[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect())
        })
        .collect();
    let vs = VarStore::new(Device::Cpu);
    let _model = Hmr2::new(&vs.root(), &Hmr2Config::default()).unwrap();
    let ours: HashMap<String, Vec<i64>> = vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect();
    let missing: Vec<&String> = keys.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<&String> = ours.keys().filter(|k| !keys.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (k, shape) in &keys {
        assert_eq!(&ours[k], shape, "{k}");
    }
    // The mean parameters (`smpl_head.init_*`) are buffers: keys, not parameters.
    let parameters: i64 =
        ours.iter().filter(|(k, _)| !k.starts_with("smpl_head.init_")).map(|(_, s)| s.iter().product::<i64>()).sum();
    assert_eq!(keys.len(), listed["num_keys"].as_u64().unwrap() as usize);
    assert_eq!(parameters, listed["num_parameters"].as_i64().unwrap(), "parameters");
}

/// PHALP's placement of a person in the frame (`get_3d_parameters`), against the LART
/// fixture's pose-vector data: the translation from the crop camera and the box, the 45 joints
/// (44 and a zero one) and their 2-D projection in render pixels.
#[test]
fn people_are_placed_in_the_frame_as_phalp_does() {
    use nalgebra::{Vector2, Vector3};
    use ocellus_perception::hmr2::camera::FrameCamera;
    let data = read_tensors(&shared_fixtures("lart").join("pose_vector.safetensors"));
    let values = |k: &str| Vec::<f64>::try_from(data[k].to_kind(tch::Kind::Double).reshape([-1])).unwrap();
    let (cam, center, scale, joints44) =
        (values("in.pred_cam"), values("in.center"), values("in.scale"), values("in.smpl_joints44"));
    let (t_ref, keypoints_ref, joints45_ref) =
        (values("out.pred_cam_t"), values("out.keypoints_2d"), values("out.joints45"));
    let camera = FrameCamera::default();
    let mut worst = (0.0f64, 0.0f64);
    for i in 0..4 {
        let t = camera.translation(
            Vector3::new(cam[3 * i], cam[3 * i + 1], cam[3 * i + 2]),
            Vector2::new(center[2 * i], center[2 * i + 1]),
            scale[i],
        );
        for (a, b) in t.iter().zip(&t_ref[3 * i..3 * i + 3]) {
            worst.0 = worst.0.max((a - b).abs() / b.abs().max(1.0));
        }
        for j in 0..45 {
            let p = if j < 44 {
                Vector3::new(joints44[(i * 44 + j) * 3], joints44[(i * 44 + j) * 3 + 1], joints44[(i * 44 + j) * 3 + 2])
            } else {
                Vector3::zeros()
            };
            for (a, b) in p.iter().zip(&joints45_ref[(i * 45 + j) * 3..(i * 45 + j) * 3 + 3]) {
                assert!((a - b).abs() <= 1e-7, "joint {j}");
            }
            let k = camera.project(p, t);
            for (a, b) in k.iter().zip(&keypoints_ref[(i * 45 + j) * 2..(i * 45 + j) * 2 + 2]) {
                worst.1 = worst.1.max((a - b).abs());
            }
        }
    }
    println!("translation: relative max |Δ| {:.3e}; keypoints: max |Δ| {:.3e} px", worst.0, worst.1);
    assert!(worst.0 <= PARAMS_TOL && worst.1 <= 1e-3, "{worst:?}");
}

/// Person crops as PHALP cuts them for HMR 2.0, against OpenCV (`generate_pose.py`): the
/// affine matrix, every byte of the 8-bit crop (boxes inside, across the border, tiny, the
/// whole frame, fractional), and the normalized input.
#[test]
fn person_crops_equal_opencv() {
    use ocellus_perception::hmr2::preprocess;
    let io = ocellus_tests::fixture_io("pose_crops");
    let frame = &io["frame"];
    let (h, w) = (frame.size()[0] as usize, frame.size()[1] as usize);
    let rgb = Vec::<u8>::try_from(frame.reshape([-1])).unwrap();
    let boxes = Vec::<f64>::try_from(io["boxes"].reshape([-1])).unwrap();
    let matrices = Vec::<f64>::try_from(io["matrix"].reshape([-1])).unwrap();
    let mut crops = Vec::new();
    for (i, b) in boxes.chunks_exact(4).enumerate() {
        let b = [b[0], b[1], b[2], b[3]];
        let (center, side) = preprocess::crop_square(b);
        let m = preprocess::crop_matrix(center, side).unwrap();
        for (k, (a, r)) in m.iter().zip(&matrices[6 * i..6 * i + 6]).enumerate() {
            assert!((a - r).abs() <= 1e-12 * r.abs().max(1.0), "box {i} matrix[{k}]: {a} vs {r}");
        }
        let crop = preprocess::crop(&rgb, (w, h), b).unwrap();
        let reference = Vec::<u8>::try_from(io["crops"].get(i as i64).reshape([-1])).unwrap();
        let differ = crop.iter().zip(&reference).filter(|(a, b)| a != b).count();
        println!("box {i} {b:?}: square side {side:.2}, {differ} bytes differ");
        assert_eq!(differ, 0, "box {i}: the crop equals OpenCV's");
        crops.push(crop);
    }
    let normalized = preprocess::normalize(&crops, tch::Device::Cpu).unwrap();
    let d = max_diff("normalized", &normalized, &io["normalized"]);
    assert!(d <= 1e-6);
}

/// HMR 2.0's released checkpoint is a Lightning `.ckpt`: its state dict sits under
/// `state_dict` next to pickled OmegaConf hyper-parameters. The converter keeps the tensors
/// and leaves the other objects opaque (no code of theirs runs).
#[test]
fn lightning_checkpoints_convert_without_running_their_objects() {
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "lightning_ckpt");
    let ckpt = dir.join("toy.ckpt");
    let script = r#"
import sys, types, torch
for name in ("omegaconf", "omegaconf.dictconfig"):
    sys.modules[name] = types.ModuleType(name)
class DictConfig:
    def __reduce__(self):
        import os
        return (os.system, ("echo this must not run > " + sys.argv[2],))
torch.save({"state_dict": {"backbone.pos_embed": torch.ones(1, 3), "smpl_head.init_cam": torch.zeros(1, 3)},
            "hyper_parameters": DictConfig(), "epoch": 35}, sys.argv[1])
"#;
    let marker = dir.join("ran");
    let python = ocellus_perception::weights::venv_python().unwrap();
    let status = std::process::Command::new(python).args(["-c", script]).arg(&ckpt).arg(&marker).status().unwrap();
    assert!(status.success());
    let out = dir.join("toy.safetensors");
    weights::convert_checkpoint(&ckpt, &out).unwrap();
    let tensors = read_tensors(&out);
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    assert_eq!(keys, ["backbone.pos_embed", "smpl_head.init_cam"]);
    assert!(!marker.exists(), "the checkpoint's pickled call did not run");
}
