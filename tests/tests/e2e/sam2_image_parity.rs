//! SAM 2 image prediction, exact to the official `SAM2ImagePredictor` (`sam2` 1.1.0) on the
//! same seeded random weights: point and box prompts, multimask and single-mask (dynamic
//! multimask via stability) outputs; low-resolution mask logits (≤ 1e-3), IoU and object
//! scores (≤ 1e-4), plus the image features they come from; sam2.1 tiny and base_plus.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::sam2::{IMAGE_PREDICTOR_KEYS, Prompts, Sam2, Sam2Config};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, fixture_io, fixtures_dir};
use tch::Device;
use tch::nn::VarStore;

const TOL_LOGITS: f64 = 1e-3;
const TOL: f64 = 1e-4;

fn check(case: &str, model: &str) {
    tch::set_num_threads(2);
    let mut vs = VarStore::new(Device::Cpu);
    let sam = Sam2::new(&vs.root(), &Sam2Config::by_name(model).unwrap()).unwrap();
    weights::load(
        &mut vs,
        &fixtures_dir().join(format!("{case}.weights.safetensors")),
        Scope::Prefixes(&IMAGE_PREDICTOR_KEYS),
    )
    .unwrap();
    let io = fixture_io(case);
    tch::no_grad(|| {
        let features = sam.encode_image(&io["input"]).unwrap();
        assert_close(&format!("{case} image_embed"), &features.image_embed, &io["image_embed"], TOL);
        assert_close(&format!("{case} high_res_feats.0"), &features.high_res.0, &io["high_res_feats.0"], TOL);
        assert_close(&format!("{case} high_res_feats.1"), &features.high_res.1, &io["high_res_feats.1"], TOL);
        let coords = io["point.coords"].unsqueeze(0);
        let labels = io["point.labels"].unsqueeze(0);
        let boxes = io["box.coords"].unsqueeze(0);
        for (kind, prompts) in [
            ("point", Prompts { points: Some((&coords, &labels)), ..Prompts::default() }),
            ("box", Prompts { boxes: Some(&boxes), ..Prompts::default() }),
        ] {
            for (mode, multimask) in [("multi", true), ("single", false)] {
                let tag = format!("{kind}.{mode}");
                let p = sam.predict(&features, 0, &prompts, multimask).unwrap();
                assert_close(
                    &format!("{case} {tag} low_res_masks"),
                    &p.low_res_masks.squeeze_dim(0),
                    &io[&format!("{tag}.low_res_masks")],
                    TOL_LOGITS,
                );
                assert_close(&format!("{case} {tag} iou"), &p.iou.squeeze_dim(0), &io[&format!("{tag}.iou")], TOL);
                assert_close(
                    &format!("{case} {tag} object_score"),
                    &p.object_score_logits,
                    &io[&format!("{tag}.object_score")],
                    TOL,
                );
            }
        }
    });
}

#[test]
fn sam2_1_hiera_tiny_image_predictor() {
    check("sam2_image_tiny", "sam2.1_hiera_tiny");
}

#[test]
fn sam2_1_hiera_base_plus_image_predictor() {
    check("sam2_image_base_plus", "sam2.1_hiera_base_plus");
}
