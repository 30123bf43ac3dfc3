//! SAM 2 video tracking, exact to the official `SAM2VideoPredictor` (`sam2` 1.1.0) on the same
//! seeded random weights: a synthetic clip, two objects prompted on frame 0, a corrective
//! click on frame 3, propagation to the end (8 frames for tiny, which fill the memory bank;
//! 4 for base_plus). Every frame's mask logits (≤ 1e-3), object pointers, object scores and
//! memory features (≤ 1e-4) per object.
//!
//! Memory features are stored in bf16 by the reference (and by us): an fp32 difference far
//! below 1e-4 can still round to neighbouring bf16 values. They must therefore agree within
//! 1e-4 or one bf16 ulp of the value, elementwise, on all but 0.1% of the elements; the fp32
//! path itself is held to the bounds above by every later frame, which reads these memories.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::sam2::video_predictor::VideoSession;
use ocellus_perception::sam2::{Sam2, Sam2Config};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{assert_close, assert_close_bf16, fixture_io, fixtures_dir};
use tch::Device;
use tch::nn::VarStore;

const TOL_LOGITS: f64 = 1e-3;
const TOL: f64 = 1e-4;
/// (object, frame) of each prompt of the fixture, in order.
const PROMPTS: [(u64, u64); 3] = [(1, 0), (2, 0), (1, 3)];

fn check(case: &str, model: &str, frames: i64) {
    tch::set_num_threads(2);
    let mut vs = VarStore::new(Device::Cpu);
    let sam = Sam2::new_with_tracking(&vs.root(), &Sam2Config::by_name(model).unwrap()).unwrap();
    weights::load(&mut vs, &fixtures_dir().join(format!("{case}.weights.safetensors")), Scope::Exact).unwrap();
    let io = fixture_io(case);
    tch::no_grad(|| {
        assert_eq!(io["images"].size()[0], frames);
        let mut session = VideoSession::new(&sam, (0..frames).map(|f| io["images"].get(f)).collect());
        for (i, (obj, frame)) in PROMPTS.iter().enumerate() {
            session
                .add_points(*obj, *frame, &io[&format!("prompt.{i}.coords")], &io[&format!("prompt.{i}.labels")])
                .unwrap();
        }
        let results = session.propagate().unwrap();
        assert_eq!(results.len() as i64, frames);
        for (frame, per_obj) in &results {
            for (obj, out) in per_obj {
                let tag = format!("obj{obj}.frame{frame}");
                assert_close(
                    &format!("{case} {tag} pred_masks"),
                    &out.pred_masks,
                    &io[&format!("{tag}.pred_masks")],
                    TOL_LOGITS,
                );
                assert_close(&format!("{case} {tag} obj_ptr"), &out.obj_ptr, &io[&format!("{tag}.obj_ptr")], TOL);
                assert_close(
                    &format!("{case} {tag} object_score_logits"),
                    &out.object_score_logits,
                    &io[&format!("{tag}.object_score_logits")],
                    TOL,
                );
                let ours = out.maskmem_features.as_ref().unwrap();
                let reference = &io[&format!("{tag}.maskmem_features")];
                assert_close_bf16(&format!("{case} {tag} maskmem_features"), ours, reference, TOL);
            }
        }
        assert_eq!(session.memory(1).unwrap().cond.len(), 2, "frames 0 and 3 condition object 1");
        assert_eq!(session.memory(2).unwrap().cond.len(), 1);
    });
}

#[test]
fn sam2_1_hiera_tiny_video() {
    check("sam2_video_tiny", "sam2.1_hiera_tiny", 8);
}

#[test]
fn sam2_1_hiera_base_plus_video() {
    check("sam2_video_base_plus", "sam2.1_hiera_base_plus", 4);
}
