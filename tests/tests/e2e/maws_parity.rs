//! MAWS backbones: a MAWS-format checkpoint (a bare timm state dict) imported by `ocellus weights
//! import` matches timm's `VisionTransformer` built with MAWS's arguments (`vit_b16`, seeded
//! weights, fp32 CPU, max abs error ≤ 1e-4 on every token and the pooled output), and loads as
//! a backbone whose feature map is the patch tokens.
#![allow(clippy::unwrap_used)] // tests may unwrap

use ocellus_kernels::DType;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::model::{ModelSpec, WeightsSource};
use ocellus_perception::vit::{VisionTransformer, VitConfig};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir, scratch_dir};
use tch::Device;
use tch::nn::VarStore;

/// The bound of the issue: fp32, CPU.
const TOL: f64 = 1e-4;

#[test]
fn maws_vit_b16_imported_from_its_checkpoint_matches_timm() {
    tch::set_num_threads(2);
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "maws_vit_b16");
    let file = dir.join("maws_vit_b16.safetensors");
    ocellus_pipelines::tools::import("maws_vit_b16", &fixtures_dir().join("maws_vit_b16.pt"), &file).unwrap();
    let config = VitConfig::by_name("maws_vit_b16").unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let vit = VisionTransformer::new(&vs.root(), &config).unwrap();
    weights::load(&mut vs, &file, Scope::Exact).unwrap();
    let io = fixture_io("maws_vit_b16");
    let out = tch::no_grad(|| vit.forward(&io["input"])).unwrap();
    assert!(out.logits.is_none());
    assert_close("maws_vit_b16 tokens", &out.tokens, &io["tokens"], TOL);
    assert_close("maws_vit_b16 pooled", &out.pooled, &io["pooled"], TOL);

    // As the backbone actor loads it: one feature map, the patch tokens on a 14×14 grid.
    let spec = ModelSpec {
        name: "maws_vit_b16".into(),
        weights: WeightsSource::File(file),
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let backbone = spec.load::<Backbone>().unwrap();
    let maps = backbone.forward(&io["input"]).unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].size(), [2, 768, 14, 14]);
    let patches = io["tokens"].narrow(1, 1, 196).transpose(1, 2).reshape([2, 768, 14, 14]);
    assert_close("maws_vit_b16 feature map", &maps[0], &patches, TOL);
}

#[test]
fn maws_names_follow_its_model_builder() {
    let ft = VitConfig::by_name("maws_vit_h14_ft_in1k").unwrap();
    assert_eq!(
        (ft.img_size, ft.patch_size, ft.embed_dim, ft.depth, ft.num_heads, ft.num_classes),
        (518, 14, 1280, 32, 16, 1000)
    );
    let ft = VitConfig::by_name("maws_vit_l16_ft_in1k").unwrap();
    assert_eq!((ft.img_size, ft.num_classes), (512, 1000));
    let mae = VitConfig::by_name("mae_vit_2b14").unwrap();
    assert_eq!((mae.img_size, mae.embed_dim, mae.depth, mae.num_heads, mae.num_classes), (224, 2560, 24, 32, 0));
    assert!(VitConfig::by_name("mae_vit_b16_ft_in1k").is_none());
    assert!(VitConfig::NAMES.iter().all(|n| VitConfig::by_name(n).is_some()));
}
