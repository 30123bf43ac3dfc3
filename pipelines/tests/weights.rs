//! `ocellus weights import | init` on official-format checkpoints written by the official code
//! (the golden fixtures' `.pth` / `.pt`): keys verified, manifest written, outputs unchanged.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ocellus_perception::hiera::{Hiera, HieraConfig};
use ocellus_perception::weights::{self, Manifest, Scope};
use tch::Device;
use tch::nn::VarStore;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(std::env::var_os("OCELLUS_FIXTURES").expect("OCELLUS_FIXTURES: run `make test`"));
    assert!(dir.join(".complete").exists(), "incomplete fixtures in {}", dir.display());
    dir
}

fn ocellus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ocellus")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

/// `ocellus weights import --model MODEL --from CHECKPOINT --out OUT`.
fn import(model: &str, checkpoint: &Path, out: &Path) -> Output {
    ocellus(&[
        "weights",
        "import",
        "--model",
        model,
        "--from",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn manifest(out: &Path) -> Manifest {
    serde_json::from_str(&std::fs::read_to_string(weights::manifest_path(out)).unwrap()).unwrap()
}

#[test]
fn imports_an_official_hiera_checkpoint_and_keeps_its_outputs() {
    let dir = scratch("import_hiera");
    let out = dir.join("hiera_tiny_224.safetensors");
    let ckpt = fixtures().join("hiera_tiny_224.pth");
    let run = import("hiera_tiny_224", &ckpt, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = manifest(&out);
    assert_eq!(m.model, "hiera_tiny_224");
    assert_eq!(m.sha256, weights::sha256_file(&out).unwrap());
    assert_eq!(m.config["embed_dim"], 96);
    assert_eq!(m.config["stages"], serde_json::json!([1, 2, 7, 2]));

    let mut vs = VarStore::new(Device::Cpu);
    let hiera = Hiera::new(&vs.root(), &HieraConfig::by_name("hiera_tiny_224").unwrap()).unwrap();
    weights::load(&mut vs, &out, Scope::Exact).unwrap();
    let io: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(fixtures().join("hiera_tiny_224.io.safetensors")).unwrap().into_iter().collect();
    let probs = tch::no_grad(|| hiera.forward(&io["input"], None, false)).unwrap().probs.unwrap();
    let diff = (&probs - &io["probs"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "imported weights change the output: {diff:e}");
}

#[test]
fn imports_the_image_encoder_of_an_official_sam2_checkpoint() {
    let dir = scratch("import_sam2");
    let out = dir.join("sam2.safetensors");
    let ckpt = fixtures().join("hieradet_tiny_1024.pt");
    let run = import("sam2.1_hiera_tiny", &ckpt, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(manifest(&out).config["trunk"]["global_att_blocks"], serde_json::json!([5, 7, 9]));
}

#[test]
fn a_checkpoint_of_another_model_is_refused_with_its_keys() {
    let dir = scratch("import_wrong");
    let out = dir.join("wrong.safetensors");
    let ckpt = fixtures().join("hieradet_tiny_1024.pt");
    let run = import("sam2.1_hiera_small", &ckpt, &out);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("missing keys: image_encoder.trunk.blocks.12.attn.proj.bias"), "{stderr}");
    assert!(!out.exists(), "nothing is written on failure");

    let ckpt = fixtures().join("hiera_tiny_224.pth");
    let run = import("hiera_base_224", &ckpt, &out);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("missing keys") && stderr.contains("blocks.12."), "{stderr}");
}

#[test]
fn init_is_seeded() {
    let dir = scratch("init");
    let path = |n: &str| dir.join(n);
    for (name, seed) in [("a.safetensors", "7"), ("b.safetensors", "7"), ("c.safetensors", "8")] {
        let run = ocellus(&[
            "weights",
            "init",
            "--model",
            "hiera_tiny_224",
            "--seed",
            seed,
            "--out",
            path(name).to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let sha = |n: &str| manifest(&path(n)).sha256;
    assert_eq!(sha("a.safetensors"), sha("b.safetensors"));
    assert_ne!(sha("a.safetensors"), sha("c.safetensors"));
    let mut vs = VarStore::new(Device::Cpu);
    Hiera::new(&vs.root(), &HieraConfig::by_name("hiera_tiny_224").unwrap()).unwrap();
    weights::load(&mut vs, &path("a.safetensors"), Scope::Exact).unwrap();
}

/// MetaCLIP / open_clip: a state dict saved by PyTorch (as open_clip's pretrained files are)
/// imports without Python, bit for bit, under the open_clip model name; a corrupt file is
/// refused naming it, with nothing left behind.
#[test]
fn imports_an_open_clip_checkpoint_without_python() {
    let dir = scratch("import_clip");
    let ckpt = dir.join("open_clip_pytorch_model.bin");
    let source = fixtures().join("clip_b32.weights.safetensors");
    let python = weights::venv_python().expect("no venv Python: run scripts/bootstrap");
    let script =
        "import sys, torch; from safetensors.torch import load_file; torch.save(load_file(sys.argv[1]), sys.argv[2])";
    let status = Command::new(python).args(["-c", script]).arg(&source).arg(&ckpt).status().unwrap();
    assert!(status.success());
    let out = dir.join("ViT-B-32-quickgelu.safetensors");
    let run = import("ViT-B-32-quickgelu", &ckpt, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(manifest(&out).model, "ViT-B-32-quickgelu");
    let ours: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let theirs = tch::Tensor::read_safetensors(&source).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (k, v) in &theirs {
        assert!(ours[k].equal(v), "{k} changed");
    }

    let corrupt = dir.join("corrupt.pt");
    std::fs::write(&corrupt, b"PK\x03\x04 not really a zip").unwrap();
    let bad = dir.join("bad.safetensors");
    let run = import("ViT-B-32-quickgelu", &corrupt, &bad);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("corrupt.pt") && stderr.contains("not a PyTorch checkpoint"), "{stderr}");
    assert!(!bad.exists() && !bad.with_extension("safetensors.partial").exists(), "nothing is left behind");
}
