//! Hiera, exact to the official `hiera-transformer` 0.1.4 on the same seeded random weights:
//! fp32 on the CPU, max abs error ≤ 1e-4 on the output and every intermediate, for tiny and
//! base_plus at 224 and base 16×224 video, plus MAE-style masked input.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::hiera::{Hiera, HieraConfig};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir};
use tch::nn::VarStore;
use tch::{Device, Kind};

/// The bound of the issue: fp32, CPU.
const TOL: f64 = 1e-4;

fn check(case: &str, model: &str) {
    tch::set_num_threads(2);
    let config = HieraConfig::by_name(model).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let hiera = Hiera::new(&vs.root(), &config).unwrap();
    weights::load(&mut vs, &fixtures_dir().join(format!("{case}.weights.safetensors")), Scope::Exact).unwrap();
    let io = fixture_io(case);
    let out = tch::no_grad(|| hiera.forward(&io["input"], None, true)).unwrap();
    assert_close(&format!("{case} probs"), out.probs.as_ref().unwrap(), &io["probs"], TOL);
    assert_close(&format!("{case} logits"), out.logits.as_ref().unwrap(), &io["logits"], TOL);
    assert_eq!(out.intermediates.len(), config.stages.len());
    for (i, t) in out.intermediates.iter().enumerate() {
        assert_close(&format!("{case} intermediates.{i}"), t, &io[&format!("intermediates.{i}")], TOL);
    }
    let mask = io["mask"].to_kind(Kind::Bool);
    let masked = tch::no_grad(|| hiera.forward(&io["input"], Some(&mask), true)).unwrap();
    assert!(masked.probs.is_none());
    for (i, t) in masked.intermediates.iter().enumerate() {
        assert_close(&format!("{case} masked_intermediates.{i}"), t, &io[&format!("masked_intermediates.{i}")], TOL);
    }
}

#[test]
fn hiera_tiny_224() {
    check("hiera_tiny_224", "hiera_tiny_224");
}

#[test]
fn hiera_base_plus_224() {
    check("hiera_base_plus_224", "hiera_base_plus_224");
}

#[test]
fn hiera_base_16x224_video() {
    check("hiera_base_16x224", "hiera_base_16x224");
}

#[test]
fn wrong_weights_list_every_bad_key() {
    // base_plus weights into a tiny model: every block past the tiny depth is unexpected and
    // every shared key has the wrong shape.
    let mut vs = VarStore::new(Device::Cpu);
    Hiera::new(&vs.root(), &HieraConfig::by_name("hiera_tiny_224").unwrap()).unwrap();
    let err = weights::load(&mut vs, &fixtures_dir().join("hiera_base_plus_224.weights.safetensors"), Scope::Exact)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected keys: blocks.12."), "{err}");
    assert!(err.contains("shape mismatches: blocks.0.attn.proj.bias: file [112], model [96]"), "{err}");
}
