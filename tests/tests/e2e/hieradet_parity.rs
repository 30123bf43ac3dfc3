//! HieraDet + FPN neck (SAM 2 image encoder), exact to the official SAM 2 code (`sam2` 1.1.0)
//! on the same seeded random weights at 1024×1024: every trunk stage, every FPN level and
//! position encoding, and the encoder's outputs; fp32 CPU, max abs error ≤ 1e-4.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::hieradet::{ImageEncoder, ImageEncoderConfig};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir};
use tch::Device;
use tch::nn::VarStore;

const TOL: f64 = 1e-4;

fn check(case: &str, model: &str) {
    tch::set_num_threads(2);
    let config = ImageEncoderConfig::by_name(model).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let encoder = ImageEncoder::new(&(vs.root() / "image_encoder"), &config).unwrap();
    weights::load(
        &mut vs,
        &fixtures_dir().join(format!("{case}.weights.safetensors")),
        Scope::Prefix("image_encoder."),
    )
    .unwrap();
    let io = fixture_io(case);
    let x = &io["input"];
    tch::no_grad(|| {
        let trunk = encoder.trunk.forward(x).unwrap();
        assert_eq!(trunk.len(), 4);
        for (i, t) in trunk.iter().enumerate() {
            assert_close(&format!("{case} trunk.{i}"), t, &io[&format!("trunk.{i}")], TOL);
        }
        let (features, pos) = encoder.neck.forward(&trunk).unwrap();
        for i in 0..4 {
            assert_close(&format!("{case} neck.features.{i}"), &features[i], &io[&format!("neck.features.{i}")], TOL);
            assert_close(&format!("{case} neck.pos.{i}"), &pos[i], &io[&format!("neck.pos.{i}")], TOL);
        }
        let out = encoder.forward(x).unwrap();
        assert_eq!(out.backbone_fpn.len(), 3, "scalp = 1 drops the stride-32 level");
        for (i, t) in out.backbone_fpn.iter().enumerate() {
            assert_close(&format!("{case} backbone_fpn.{i}"), t, &io[&format!("backbone_fpn.{i}")], TOL);
        }
        assert_close(&format!("{case} vision_features"), &out.vision_features, &io["vision_features"], TOL);
    });
}

#[test]
fn sam2_1_hiera_tiny_1024() {
    check("hieradet_tiny_1024", "sam2.1_hiera_tiny");
}

#[test]
fn sam2_1_hiera_base_plus_1024() {
    check("hieradet_base_plus_1024", "sam2.1_hiera_base_plus");
}
