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

/// The header of a safetensors file: its JSON and where the data starts.
fn header(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, usize) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + len]).unwrap(), 8 + len)
}

/// `bytes` with its header replaced by `header`, padded with spaces to the old length.
fn with_header(bytes: &[u8], header: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let (_, start) = self::header(bytes);
    let mut text = serde_json::to_string(header).unwrap();
    assert!(text.len() <= start - 8, "the edited header grew");
    text.extend(std::iter::repeat_n(' ', start - 8 - text.len()));
    [&bytes[..8], text.as_bytes(), &bytes[start..]].concat()
}

/// A weights file cut short (an interrupted copy) or with a corrupt header is refused with an
/// error naming the file and the tensor at fault — by the loader, and by a pipeline whose
/// actor is given the file — and nothing panics.
#[test]
fn a_cut_or_corrupt_weights_file_is_refused_naming_the_tensor() {
    let dir = scratch("corrupt");
    let good = dir.join("good.safetensors");
    let run =
        ocellus(&["weights", "init", "--model", "sam2.1_hiera_tiny", "--seed", "3", "--out", good.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(&good).unwrap();
    let (json, start) = header(&bytes);
    let offsets = |v: &serde_json::Value| {
        let o = v["data_offsets"].as_array().unwrap();
        (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)
    };
    // Cut in the middle of the data: the first tensor (by position) not wholly there is named.
    let half = (bytes.len() - start) / 2;
    let (cut_name, _) = json
        .iter()
        .filter(|(k, v)| *k != "__metadata__" && offsets(v).1 > half)
        .min_by_key(|(_, v)| offsets(v).0)
        .unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..start + half]).unwrap();

    // A dtype that does not exist, and a shape that does not fit its bytes.
    let victim = "image_encoder.trunk.blocks.3.attn.qkv.weight";
    let mut edited = json.clone();
    edited[victim]["dtype"] = "F3X".into();
    let bad_dtype = dir.join("dtype.safetensors");
    std::fs::write(&bad_dtype, with_header(&bytes, &edited)).unwrap();
    let mut edited = json.clone();
    let dims = edited[victim]["shape"].as_array().unwrap().clone();
    edited[victim]["shape"] = serde_json::json!([dims[0].as_u64().unwrap() - 1, dims[1]]);
    let bad_shape = dir.join("shape.safetensors");
    std::fs::write(&bad_shape, with_header(&bytes, &edited)).unwrap();

    let cases = [
        (&cut, format!("tensor {cut_name:?}"), "the file is cut short"),
        (&bad_dtype, format!("tensor {victim:?}: unknown dtype \"F3X\""), "unknown dtype"),
        (&bad_shape, format!("tensor {victim:?}: F32"), "the header is corrupt"),
    ];
    for (file, names, says) in &cases {
        let err = weights::keys(file).unwrap_err().to_string();
        assert!(err.contains(file.to_str().unwrap()) && err.contains(names) && err.contains(says), "{err}");
        let err = weights::load(&mut VarStore::new(Device::Cpu), file, Scope::Prefix("image_encoder.")).unwrap_err();
        let err = err.to_string();
        assert!(err.contains(names), "{err}");

        // The same file given to an actor of a running pipeline.
        let config = dir.join("pipeline.toml");
        std::fs::write(
            &config,
            format!(
                "[[source]]\nname = \"cam\"\npreset = {{ kind = \"test_pattern\", width = 64, height = 48, frames = 2 }}\n\
                 [[actor]]\nname = \"features\"\nkind = \"backbone\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{}\"\n\
                 resolution = [256, 256]\ninputs = [\"cam\"]\n[[sink]]\nkind = \"null\"\ninputs = [\"cam\"]\n",
                file.display()
            ),
        )
        .unwrap();
        let run = ocellus(&["run", config.to_str().unwrap()]);
        let all = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        assert!(!run.status.success(), "{all}");
        assert!(all.contains(file.to_str().unwrap()) && all.contains(names), "{all}");
        assert!(!all.contains("panicked"), "{all}");
    }
}
