//! LART against the golden data of the official code (`../shared/fixtures/lart`, README
//! there): the model at depth 2 of 16 with seeded weights stored in BF16 (exact in f32), run
//! in f32 on the CPU on a batch of tracklets with gaps and padding — the evaluation masks
//! (`"zero"`), the training masks as recorded (`"random"`), the official demo's one person
//! per clip with `readout_pose`, and every LayerNorm given non-trivial weights; PHALP's pose
//! and joints vectors; and the full-size model's variables equal to the official key list
//! (227 keys, 5 of them unused and ignored by name).
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::HashMap;

use nalgebra::{Vector2, Vector3};
use ocellus_perception::hmr2::camera::FrameCamera;
use ocellus_perception::lart::pose_vector::{self, MeanStd};
use ocellus_perception::lart::transformer::{AttentionMasks, LartInput};
use ocellus_perception::lart::{Lart, LartConfig, SCOPE, TransformerCfg, UNUSED_KEYS};
use ocellus_perception::weights;
use ocellus_tests::{assert_close, max_abs_diff, read_tensors, scratch_dir, shared_fixtures};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Tokens and logits (the README's bound for f32 on the CPU).
const TOKENS_TOL: f64 = 1e-4;
/// Rotations, betas, locations.
const PARAMS_TOL: f64 = 1e-5;

/// The fixture's configuration: depth 2, `max_people` as given.
fn reduced(max_people: i64) -> LartConfig {
    LartConfig {
        max_people,
        transformer: TransformerCfg { depth: 2, ..TransformerCfg::default() },
        ..LartConfig::default()
    }
}

/// The model with the fixture's weights, and LayerNorms from `ln_override` if asked.
fn model(max_people: i64, ln_override: bool) -> (VarStore, Lart) {
    let dir = shared_fixtures("lart");
    let mut vs = VarStore::new(Device::Cpu);
    let model = Lart::new(&vs.root(), &reduced(max_people)).unwrap();
    weights::load(&mut vs, &dir.join("weights.safetensors"), SCOPE).unwrap();
    if ln_override {
        let norms = read_tensors(&dir.join("ln_override.safetensors"));
        let variables = vs.variables();
        tch::no_grad(|| {
            for (name, value) in &norms {
                let mut var = variables.get(name).unwrap_or_else(|| panic!("no variable {name}")).shallow_clone();
                var.copy_(&value.to_kind(Kind::Float));
            }
        });
    }
    (vs, model)
}

fn input(t: &HashMap<String, Tensor>, mask_detection: Option<&Tensor>) -> LartInput {
    let get = |k: &str| t.get(k).unwrap_or_else(|| panic!("no {k} in the fixture")).shallow_clone();
    LartInput {
        pose_shape: get("pose_shape"),
        joints_3d: Some(get("joints_3D")),
        apperance_emb: Some(get("apperance_emb")),
        has_detection: get("has_detection"),
        mask_detection: mask_detection.map_or_else(|| get("mask_detection"), Tensor::shallow_clone),
    }
}

fn check(name: &str, ours: &Tensor, outputs: &HashMap<String, Tensor>, tol: f64) {
    let reference = outputs.get(name).unwrap_or_else(|| panic!("no {name} in the fixture"));
    assert_close(name, ours, reference, tol);
}

/// The evaluation forward (`mask_type = "zero"`) and every head, with the main weights or
/// with the LayerNorm overrides.
fn zero_mode(ln_override: bool) {
    let dir = shared_fixtures("lart");
    let (_vs, lart) = model(5, ln_override);
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs =
        read_tensors(&dir.join(if ln_override { "outputs_ln_override.safetensors" } else { "outputs.safetensors" }));
    let data = input(&inputs, None);
    tch::no_grad(|| {
        let masks = AttentionMasks::zero(&data).unwrap();
        if !ln_override {
            check("attn_mask_np", &masks.np.to_kind(Kind::Float), &outputs, 0.0);
            check("attn_mask_bert", &masks.bert.to_kind(Kind::Float), &outputs, 0.0);
            let after = masks.bert.to_kind(Kind::Float).view([2, 125, 5, 1]);
            check("mask_detection_after", &after, &outputs, 0.0);
            let masked: Vec<i64> = (0..2).map(|b| masks.bert.get(b).sum(Kind::Int64).int64_value(&[])).collect();
            assert_eq!(masked, [326, 394], "masked tokens per clip (README)");
            let enc = lart.encoder.encode(&data).unwrap();
            check("enc_pose_shape", &enc.pose_shape, &outputs, TOKENS_TOL);
            check("enc_joints_3D", enc.joints_3d.as_ref().unwrap(), &outputs, TOKENS_TOL);
            check("enc_apperance", enc.apperance.as_ref().unwrap(), &outputs, TOKENS_TOL);
            let x = lart.encoder.tokens(&data, &masks).unwrap();
            check("transformer_input", &x, &outputs, TOKENS_TOL);
            let layer0 = lart.encoder.transformer.forward_layers(&x, &masks, 1).unwrap();
            check("layer0_output", &layer0, &outputs, TOKENS_TOL);
        }
        let out = lart.forward(&data).unwrap();
        check("hidden", &out.hidden, &outputs, TOKENS_TOL);
        check("ava_logits", &out.ava_logits.unsqueeze(1), &outputs, TOKENS_TOL);
        check("smpl_betas", &out.smpl.betas, &outputs, PARAMS_TOL);
        check("loca_cam", &out.location, &outputs, PARAMS_TOL);
        if !ln_override {
            check("smpl_global_orient", &out.smpl.global_orient, &outputs, PARAMS_TOL);
            check("smpl_body_pose", &out.smpl.body_pose, &outputs, PARAMS_TOL);
            check("smpl_head_cam", &out.smpl.cam, &outputs, PARAMS_TOL);
            check("kinetics_logits", &out.kinetics_logits, &outputs, TOKENS_TOL);
        }
    });
    // The inputs are not changed (the reference's forward changes `mask_detection`).
    let fresh = read_tensors(&dir.join("inputs.safetensors"));
    assert_eq!(max_abs_diff(&data.mask_detection, &fresh["mask_detection"]), 0.0, "mask_detection unchanged");
}

#[test]
fn zero_mask_forward_and_heads_match_the_official_model() {
    zero_mode(false);
}

#[test]
fn layer_norm_affine_is_applied_as_the_official_model_does() {
    zero_mode(true);
}

/// The training masks (`"random"`), given as the reference drew them: queries without a
/// detection attend uniformly (every score −1000), masked keys get the mask token.
#[test]
fn recorded_random_masks_match_the_official_model() {
    let dir = shared_fixtures("lart");
    let (_vs, lart) = model(5, false);
    let inputs = read_tensors(&dir.join("inputs.safetensors"));
    let outputs = read_tensors(&dir.join("outputs_random_mask.safetensors"));
    let data = input(&inputs, Some(&outputs["mask_detection_after"]));
    tch::no_grad(|| {
        let masks = AttentionMasks::given(&outputs["attn_mask_np"], &outputs["attn_mask_bert"]).unwrap();
        let keys: Vec<i64> = (0..2).map(|b| masks.bert.get(b).sum(Kind::Int64).int64_value(&[])).collect();
        assert_eq!(keys, [126, 100], "masked keys per clip (README)");
        check("transformer_input", &lart.encoder.tokens(&data, &masks).unwrap(), &outputs, TOKENS_TOL);
        let hidden = lart.encoder.forward(&data, &masks).unwrap();
        check("hidden", &hidden, &outputs, TOKENS_TOL);
        assert!(hidden.isfinite().all().int64_value(&[]) == 1, "fully masked queries stay finite");
        let out = lart.decode(hidden).unwrap();
        check("ava_logits", &out.ava_logits.unsqueeze(1), &outputs, TOKENS_TOL);
    });
}

/// The official demo's configuration (`max_people = 1`) and `Pose_transformer.readout_pose`.
#[test]
fn one_person_demo_configuration_and_readout_match_the_official_model() {
    let dir = shared_fixtures("lart");
    let (_vs, lart) = model(1, false);
    let inputs = read_tensors(&dir.join("inputs_p1.safetensors"));
    let outputs = read_tensors(&dir.join("outputs_p1.safetensors"));
    let data = input(&inputs, None);
    tch::no_grad(|| {
        let masks = AttentionMasks::zero(&data).unwrap();
        check("transformer_input", &lart.encoder.tokens(&data, &masks).unwrap(), &outputs, TOKENS_TOL);
        check("mask_detection_after", &masks.bert.to_kind(Kind::Float).view([2, 125, 1, 1]), &outputs, 0.0);
        let out = lart.forward(&data).unwrap();
        check("hidden", &out.hidden, &outputs, TOKENS_TOL);
        let (vector, location, ava) = lart.readout_pose(&out.hidden.narrow(1, 1, 125)).unwrap();
        check("readout_pose_camera", &vector, &outputs, PARAMS_TOL);
        check("readout_camera", &location, &outputs, PARAMS_TOL);
        check("readout_ava_action", &ava, &outputs, TOKENS_TOL);
    });
}

/// The full-size model has the official keys and shapes, less the unused ones; a released
/// file with them loads, and a file short of a key fails naming it.
#[test]
fn full_size_model_has_the_official_keys_and_ignores_the_unused_ones() {
    let dir = shared_fixtures("lart");
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("keys_full_depth16.json")).unwrap()).unwrap();
    let official: Vec<(String, Vec<i64>)> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e[0].as_str().unwrap().to_owned(), e[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect())
        })
        .collect();
    assert_eq!(official.len(), 227);
    let vs = VarStore::new(Device::Cpu);
    let _lart = Lart::new(&vs.root(), &LartConfig::default()).unwrap();
    let ours: HashMap<String, Vec<i64>> = vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect();
    let unused = |k: &str| UNUSED_KEYS.iter().any(|u| k == *u || (u.ends_with('.') && k.starts_with(u)));
    let used: HashMap<String, Vec<i64>> = official.iter().filter(|(k, _)| !unused(k)).cloned().collect();
    assert_eq!(used.len(), 222, "227 keys, 5 unused (conv_en, conv_de, pe)");
    assert_eq!(ours, used);
    let params: i64 = ours.values().map(|s| s.iter().product::<i64>()).sum();
    println!("LART full size: {} keys, {params} parameters", ours.len());

    // The fixture's file (with `pe`, `conv_en`, `conv_de`) loads; one missing a key does not.
    let tmp = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "lart_keys");
    let mut tensors = read_tensors(&dir.join("weights.safetensors"));
    tensors.remove("loca_head.0.2.bias");
    let short = tmp.join("short.safetensors");
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, &short).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let _lart = Lart::new(&vs.root(), &reduced(5)).unwrap();
    let err = weights::load(&mut vs, &short, SCOPE).unwrap_err().to_string();
    assert!(err.contains("loca_head.0.2.bias"), "{err}");
}

/// PHALP's pose vector (229) and joints vector (135) of four detections, from HMR 2.0's
/// outputs placed in the frame as PHALP does; a frame without a detection is a zero row in the
/// reference's fast tracks (the actor makes it a masked token instead).
#[test]
fn pose_and_joints_vectors_match_phalp() {
    let dir = shared_fixtures("lart");
    let t = read_tensors(&dir.join("pose_vector.safetensors"));
    let rows = |k: &str| -> Vec<f32> { Vec::<f32>::try_from(t[k].reshape([-1])).unwrap() };
    let (orient, body, betas, cam) =
        (rows("in.global_orient"), rows("in.body_pose"), rows("in.betas"), rows("in.pred_cam"));
    let (center, scale, joints44) = (rows("in.center"), rows("in.scale"), rows("in.smpl_joints44"));
    let camera = FrameCamera::default();
    let (mut pose, mut joints) = (Vec::new(), Vec::new());
    for i in 0..4 {
        let c = Vector3::new(cam[3 * i], cam[3 * i + 1], cam[3 * i + 2]).cast::<f64>();
        let tr = camera.translation(c, Vector2::new(center[2 * i], center[2 * i + 1]).cast(), f64::from(scale[i]));
        let tr = [tr.x as f32, tr.y as f32, tr.z as f32];
        let go: [f32; 9] = orient[9 * i..9 * i + 9].try_into().unwrap();
        let b: [f32; 10] = betas[10 * i..10 * i + 10].try_into().unwrap();
        pose.extend(pose_vector::pose_shape(&go, &body[207 * i..207 * (i + 1)], &b, tr).unwrap());
        let mut j45: Vec<[f32; 3]> = joints44[132 * i..132 * (i + 1)].chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
        j45.push([0.0; 3]);
        joints.extend(pose_vector::joints_3d(&j45, tr).unwrap());
    }
    let rel = |name: &str, ours: &[f32], reference: &Tensor| {
        let r = Vec::<f32>::try_from(reference.reshape([-1])).unwrap();
        assert_eq!(ours.len(), r.len(), "{name}: length");
        let d = ours
            .iter()
            .zip(&r)
            .map(|(a, b)| (f64::from(a - b)).abs() / f64::from(b.abs()).max(1.0))
            .fold(0.0, f64::max);
        println!("{name}: max relative |Δ| = {d:.3e}");
        assert!(d <= PARAMS_TOL, "{name}: {d:.3e}");
    };
    rel("pose_shape229", &pose, &t["out.pose_shape229"]);
    rel("fast_track_pose_shape229", &pose, &t["out.fast_track_pose_shape229"].narrow(0, 0, 4));
    rel("joints_3D135", &joints, &t["out.joints_3D135"].narrow(0, 0, 4));
    assert_eq!(t["out.fast_track_has_detection"].get(4).double_value(&[]), 0.0);
    assert_eq!(t["out.joints_3D135"].get(4).abs().sum(Kind::Float).double_value(&[]), 0.0);
    // Joint 44 is the location itself (a zero joint moved by it).
    rel(
        "location",
        &pose.chunks(229).flat_map(|p| p[226..].to_vec()).collect::<Vec<_>>(),
        &t["out.fast_track_camera"].narrow(0, 0, 4),
    );

    // Normalization: (v − mean) / (std + 1e-10), statistics padded to 229 with 0 and 1.
    let stats = MeanStd::new(&Tensor::from_slice(&[1.0f32, 2.0]), &Tensor::from_slice(&[2.0f32, 4.0])).unwrap();
    let v = Tensor::ones([229], (Kind::Float, Device::Cpu)) * 3.0;
    let n = Vec::<f32>::try_from(stats.normalize(&v).unwrap()).unwrap();
    assert!((n[0] - 1.0).abs() < 1e-6 && (n[1] - 0.25).abs() < 1e-6 && (n[2] - 3.0).abs() < 1e-6, "{:?}", &n[..3]);
}

/// The released checkpoint is a Lightning file with the model under `encoder.` and the body
/// model's buffers under `smpl.`: `ocellus weights import --model lart` keeps the model's
/// keys without the prefix, checks them against the full-size model (the unused ones
/// accepted), and writes the manifest.
#[test]
fn released_lightning_checkpoint_imports_with_its_prefix_stripped() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "lart_import");
    let keys = shared_fixtures("lart").join("keys_full_depth16.json");
    let ckpt = dir.join("epoch_002-EMA.ckpt");
    let script = r#"
import json, sys, torch
keys = json.load(open(sys.argv[1]))["keys"]
state = {"encoder." + k: torch.full(s, 0.5) for k, s, _ in keys}
state["smpl.betas"] = torch.zeros(1, 10)
torch.save({"state_dict": state, "epoch": 2}, sys.argv[2])
"#;
    let python = ocellus_perception::weights::venv_python().unwrap();
    let status = std::process::Command::new(python).args(["-c", script]).arg(&keys).arg(&ckpt).status().unwrap();
    assert!(status.success());
    let out = dir.join("lart.safetensors");
    let manifest = ocellus_pipelines::tools::import("lart", &ckpt, &out).unwrap();
    assert_eq!(manifest.model, "lart");
    let tensors = read_tensors(&out);
    assert!(tensors.keys().all(|k| !k.starts_with("encoder.") && !k.starts_with("smpl.")));
    assert_eq!(tensors.len(), 227, "the model's keys, unused ones included");
    assert!(tensors.contains_key("transformer.layers.15.1.fn.net.3.bias"));
}
