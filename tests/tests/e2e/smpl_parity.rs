//! The SMPL body model against `smplx` on a synthetic model file with SMPL's structure (the
//! real one is licensed; `tests/fixtures/generate_smpl.py` writes it as the official pickle,
//! with SciPy and chumpy objects, and as an `.npz`): `ocellus weights import` converts it natively,
//! and the native model poses it — vertices, smplx's 45 joints, and HMR 2.0's 44 joints (25
//! in OpenPose order and 19 from an extra regressor) — to within 1e-5 of `smplx`.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::smpl::{self, Smpl};
use ocellus_pipelines::tools;
use ocellus_tests::{fixture_io, fixtures_dir, scratch_dir};
use tch::{Device, Tensor};

/// Vertices and joints, f32 on the CPU.
const TOL: f64 = 1e-5;

fn max_diff(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "{name}: shape");
    let d = (ours - reference).abs().max().double_value(&[]);
    println!("{name}: max |Δ| = {d:.3e}");
    d
}

#[test]
fn smpl_poses_bodies_as_smplx_does() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "smpl");
    let out = dir.join("smpl.safetensors");
    let manifest = tools::import_with_extra(
        "smpl",
        &fixtures_dir().join("smpl_synthetic.pkl"),
        Some(&fixtures_dir().join("smpl_j19.pkl")),
        &out,
    )
    .unwrap();
    assert_eq!(manifest.config["extra_regressor"], true);
    let body = Smpl::load(&out, Device::Cpu).unwrap();
    let io = fixture_io("smpl");
    let posed = tch::no_grad(|| body.forward(&io["betas"], &io["global_orient"], &io["body_pose"])).unwrap();
    assert!(max_diff("vertices", &posed.vertices, &io["vertices"]) <= TOL);
    assert!(max_diff("joints (45)", &posed.joints, &io["joints"]) <= TOL);
    let joints44 = body.joints44(&posed).unwrap();
    assert!(max_diff("joints44", &joints44, &io["joints44"]) <= TOL);

    // The same model as plain arrays, without the extra regressor: 45 joints, and a clear
    // error for the 44.
    let plain = dir.join("smpl_npz.safetensors");
    let manifest = tools::import("smpl", &fixtures_dir().join("smpl_synthetic.npz"), &plain).unwrap();
    assert_eq!(manifest.config["extra_regressor"], false);
    let body = Smpl::load(&plain, Device::Cpu).unwrap();
    let posed = tch::no_grad(|| body.forward(&io["betas"], &io["global_orient"], &io["body_pose"])).unwrap();
    assert!(max_diff("vertices (npz)", &posed.vertices, &io["vertices"]) <= TOL);
    let err = body.joints44(&posed).unwrap_err().to_string();
    assert!(err.contains("J_regressor_extra"), "{err}");
}

#[test]
fn bad_model_files_are_refused_with_the_array_named() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "smpl_bad");
    // Not a model file at all: the reader's error naming the file, and no output left behind.
    let junk = dir.join("junk.pkl");
    std::fs::write(&junk, b"not a pickle").unwrap();
    let out = dir.join("junk.safetensors");
    let err = tools::import("smpl", &junk, &out).unwrap_err().to_string();
    assert!(err.contains("junk.pkl") && err.contains("not a readable pickle"), "{err}");
    assert!(!out.exists() && !out.with_extension("safetensors.partial").exists());
    // A pickle of something else: the arrays it lacks, named.
    let other = dir.join("other.pkl");
    std::fs::write(&other, b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.").unwrap(); // {'a': 1}
    let err = tools::import("smpl", &other, &out).unwrap_err().to_string();
    assert!(err.contains("not a SMPL model file") && err.contains("v_template"), "{err}");
    assert!(!out.exists() && !out.with_extension("safetensors.partial").exists());
    assert!(tools::init("smpl", 0, &out).unwrap_err().to_string().contains("import your own"));

    // A converted file with a wrong array, a non-finite one, a wrong tree: each named.
    let good = dir.join("good.safetensors");
    tools::import("smpl", &fixtures_dir().join("smpl_synthetic.npz"), &good).unwrap();
    let tensors = Tensor::read_safetensors(&good).unwrap();
    let variant = |name: &str, change: &dyn Fn(&Tensor) -> Tensor| {
        let path = dir.join(format!("bad_{name}.safetensors"));
        let changed: Vec<(String, Tensor)> =
            tensors.iter().map(|(k, v)| (k.clone(), if k == name { change(v) } else { v.shallow_clone() })).collect();
        Tensor::write_safetensors(&changed, &path).unwrap();
        Smpl::load(&path, Device::Cpu).unwrap_err().to_string()
    };
    let err = variant("shapedirs", &|t| t.narrow(2, 0, 8).contiguous());
    assert!(err.contains("shapedirs has shape [6890, 3, 8]"), "{err}");
    let err = variant("weights", &|t| {
        let t = t.copy();
        let _ = t.get(0).get(0).fill_(f64::NAN);
        t
    });
    assert!(err.contains("weights has values that are not finite"), "{err}");
    let err = variant(smpl::KINTREE, &|t| {
        let t = t.copy();
        let _ = t.get(0).get(5).fill_(3);
        t
    });
    assert!(err.contains("kinematic tree"), "{err}");
}

/// The seeded stand-in body (`allow_random_smpl`, before the user imports SMPL): SMPL's shapes
/// everywhere, so the pose and action actors run on it; the same seed gives the same body.
#[test]
fn the_seeded_stand_in_has_smpls_shapes_and_is_reproducible() {
    let body = Smpl::seeded(0, Device::Cpu).unwrap();
    assert!(body.has_extra_regressor());
    assert_eq!(body.faces().size(), [13776, 3]);
    let betas = Tensor::zeros([2, 10], (tch::Kind::Float, Device::Cpu));
    let eye = Tensor::eye(3, (tch::Kind::Float, Device::Cpu));
    let global = eye.view([1, 1, 3, 3]).repeat([2, 1, 1, 1]);
    let pose = eye.view([1, 1, 3, 3]).repeat([2, 23, 1, 1]);
    let out = body.forward(&betas, &global, &pose).unwrap();
    assert_eq!(out.vertices.size(), [2, 6890, 3]);
    assert_eq!(out.joints.size(), [2, 45, 3]);
    assert_eq!(body.joints44(&out).unwrap().size(), [2, 44, 3]);
    // Joints are convex combinations of vertices: inside the body's box.
    let extent = out.joints.abs().max().double_value(&[]);
    assert!(extent <= 0.9 + 1e-4, "{extent}");
    let again = Smpl::seeded(0, Device::Cpu).unwrap().forward(&betas, &global, &pose).unwrap();
    assert_eq!(max_diff("vertices", &out.vertices, &again.vertices), 0.0);
}
