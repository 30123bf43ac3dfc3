//! The streaming tracker: identical to the video predictor when it sees the same prompts in
//! time order, and bounded in memory however long it runs.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_perception::sam2::tracker::{Horizon, PointInputs, Prompt, StreamConfig, StreamingTracker, VideoSession};
use ocellus_perception::sam2::{Sam2, Sam2Config};
use ocellus_perception::weights::{self, Scope};
use ocellus_tests::{fixture_io, fixtures_dir, max_abs_diff};
use tch::Device;
use tch::nn::VarStore;

fn model() -> (VarStore, Sam2) {
    tch::set_num_threads(2);
    let mut vs = VarStore::new(Device::Cpu);
    let sam = Sam2::new_with_tracking(&vs.root(), &Sam2Config::by_name("sam2.1_hiera_tiny").unwrap()).unwrap();
    weights::load(&mut vs, &fixtures_dir().join("sam2_video_tiny.weights.safetensors"), Scope::Exact).unwrap();
    (vs, sam)
}

fn points(io: &std::collections::HashMap<String, tch::Tensor>, i: usize) -> PointInputs {
    PointInputs {
        coords: io[&format!("prompt.{i}.coords")].shallow_clone(),
        labels: io[&format!("prompt.{i}.labels")].shallow_clone(),
    }
}

#[test]
fn streaming_equals_the_video_predictor_for_prompts_in_time_order() {
    let (_vs, sam) = model();
    let io = fixture_io("sam2_video_tiny");
    tch::no_grad(|| {
        let frames: Vec<tch::Tensor> = (0..8).map(|f| io["images"].get(f)).collect();
        let mut session = VideoSession::new(&sam, frames.iter().map(tch::Tensor::shallow_clone).collect());
        for (i, obj) in [(0, 1u64), (1, 2)] {
            let p = points(&io, i);
            session.add_points(obj, 0, &p.coords, &p.labels).unwrap();
        }
        let offline = session.propagate().unwrap();

        let mut tracker = StreamingTracker::new(StreamConfig { horizon: Horizon::Video(8), ..StreamConfig::default() });
        tracker.add_prompt(1, Prompt::Points(points(&io, 0)));
        tracker.add_prompt(2, Prompt::Points(points(&io, 1)));
        for (f, x) in frames.iter().enumerate() {
            let feats = sam.frame_features(&x.unsqueeze(0)).unwrap();
            for (obj, out) in tracker.step(&sam, f as u64, &feats).unwrap() {
                let reference = &offline[&(f as u64)][&obj];
                assert_eq!(max_abs_diff(&out.pred_masks, &reference.pred_masks), 0.0, "frame {f} object {obj}");
                assert_eq!(max_abs_diff(&out.obj_ptr, &reference.obj_ptr), 0.0);
            }
        }
    });
}

#[test]
fn memory_stays_bounded_on_a_long_stream() {
    let (_vs, sam) = model();
    let io = fixture_io("sam2_video_tiny");
    tch::no_grad(|| {
        let config = StreamConfig { max_cond_frames: 2, horizon: Horizon::Stream };
        let mut tracker = StreamingTracker::new(config);
        tracker.add_prompt(1, Prompt::Points(points(&io, 0)));
        let features: Vec<_> = (0..8).map(|f| sam.frame_features(&io["images"].get(f).unsqueeze(0)).unwrap()).collect();
        let frames = 24u64;
        for f in 0..frames {
            if f == 9 || f == 17 {
                // Corrections: each becomes a conditioning frame; the oldest correction goes.
                tracker.add_prompt(1, Prompt::Points(points(&io, 2)));
            }
            let out = tracker.step(&sam, f, &features[(f % 8) as usize]).unwrap();
            assert_eq!(out.len(), 1);
            let mem = tracker.memory(1).unwrap();
            assert!(mem.non_cond.len() <= 16, "frame {f}: {} non-conditioning frames kept", mem.non_cond.len());
            assert!(mem.cond.len() <= 2);
        }
        let mem = tracker.memory(1).unwrap();
        assert_eq!(
            mem.cond.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            [0, 17],
            "the first prompt and the latest correction"
        );
        assert_eq!(mem.non_cond.keys().next(), Some(&(frames - 16)));
        assert!(tracker.remove(1));
        assert_eq!(tracker.objects().count(), 0);
    });
}
