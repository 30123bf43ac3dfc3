//! The action actor (LART, seeded weights, full size):
//!
//! - driven frame by frame with people whose tracks start, pause and end, its scores equal
//!   LART run here on the window the issue describes — each person's span from their first
//!   detection, a frame without a detection inside it a masked token (not a zero), people
//!   grouped `max_people` to a clip, frame 0 at the clip's earliest start, the sigmoid averaged
//!   over `[kf − W, kf + W)` of the person's frames — for a causal and a centred window;
//! - in a real pipeline (camera frames through GStreamer → SAM 2 → HMR 2.0 + SMPL → LART with
//!   a Hiera-H appearance backbone → Rerun and zenoh): actions per person on the stride's
//!   frames, read back from the recording.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::BTreeMap;
use std::sync::Arc;

use ocellus_kernels::DType;
use ocellus_model_actors::actions::{ActionsSpec, ActionsStage, WindowKind};
use ocellus_perception::lart::pose_vector;
use ocellus_perception::lart::transformer::LartInput;
use ocellus_perception::lart::{Lart, LartConfig, ava};
use ocellus_perception::model::{ModelSpec, WeightsSource};
use ocellus_pipelines::build;
use ocellus_runtime::{Actions, FrameMeta, Input, Packet, PersonPose, Poses, Stage};
use ocellus_tests::{CameraClip, Collected, config_file, fixtures_dir, rerun_sink_toml, scratch_dir, test_context};
use tch::{Device, Tensor};

/// Scores: the same model on the same inputs in another order of assembly.
const TOLERANCE: f32 = 1e-5;
const SEED: i64 = 11;

/// A pose message's person with deterministic values (`k` varies them).
fn person(id: u32, k: u64) -> PersonPose {
    let v = |i: usize| ((id as f32) * 0.37 + (k as f32) * 0.11 + i as f32 * 0.013).sin();
    PersonPose {
        id,
        global_orient: std::array::from_fn(v),
        body_pose: (0..207).map(|i| v(i + 9)).collect(),
        betas: std::array::from_fn(|i| v(i + 216)),
        crop_cam: [0.9, 0.0, 0.0],
        bbox: [10.0, 10.0, 50.0, 90.0],
        translation: [v(300) * 0.5, v(301) * 0.5, 8.0 + v(302)],
        joints: Some((0..45).map(|j| [v(400 + 3 * j), v(401 + 3 * j), 8.0 + v(402 + 3 * j)]).collect()),
        vertices: None,
    }
}

/// Who is detected on which frame: 1 always but 5 and 6; 2 from frame 3; 3 on frames 0–2.
fn detected(id: u32, seq: u64) -> bool {
    match id {
        1 => !(5..=6).contains(&seq),
        2 => seq >= 3,
        3 => seq <= 2,
        _ => false,
    }
}

fn poses(seq: u64) -> Poses {
    Poses {
        meta: FrameMeta { camera: Arc::from("cam"), seq, capture_ns: seq as i64 * 33_000_000, frame_id: None },
        width: 640,
        height: 480,
        focal_length: 12_500.0,
        principal_point: [320.0, 240.0],
        people: [1, 2, 3].into_iter().filter(|id| detected(*id, seq)).map(|id| person(id, seq)).collect(),
        faces: None,
        labels: None,
    }
}

fn config() -> LartConfig {
    LartConfig { max_people: 2, ..LartConfig::default() }.with_features(&["joints_3D"])
}

fn spec(window: WindowKind, stride: u64, context: u64, average: u64) -> ActionsSpec {
    ActionsSpec {
        model: ModelSpec {
            name: "lart".into(),
            weights: WeightsSource::Random { seed: SEED },
            device: Device::Cpu,
            dtype: DType::F32,
        },
        config: config(),
        mean_std: None,
        stride,
        window,
        context,
        average,
        top_k: 60,
        min_score: 0.0,
        keep_lost: 4,
        appearance: None,
        classes: None,
    }
}

/// Runs the stage on frames `0..frames`; returns the actions emitted, by the frame handled.
fn drive(spec: ActionsSpec, frames: u64) -> BTreeMap<u64, Actions> {
    let mut stage = ActionsStage::new(spec);
    stage.start(&mut test_context().0).unwrap();
    let mut out = BTreeMap::new();
    for seq in 0..frames {
        let (mut ctx, mut rx) = test_context();
        stage.process(Input { port: 0, packet: Packet::Poses(Arc::new(poses(seq))), with: None }, &mut ctx).unwrap();
        drop(ctx);
        if let Some(packet) = rx.pop() {
            let Packet::Actions(a) = packet else { panic!("actions emitted {packet:?}") };
            out.insert(seq, (*a).clone());
        }
    }
    out
}

/// One person of the expected window: id, span `[from, to]`.
type Span = (u32, u64, u64);

/// LART's AVA scores `[B·T·P, 60]` on clips of people (frame 0 = each clip's earliest
/// start), built from the rules: inside a span a detected frame has its vectors, any other a
/// masked token; outside, padding.
fn reference(lart: &Lart, clips: &[Vec<Span>]) -> (Vec<f32>, Vec<u64>) {
    let (t, p) = (125usize, 2usize);
    let b = clips.len();
    let mut pose = vec![0f32; b * t * p * 229];
    let mut joints = vec![0f32; b * t * p * 135];
    let (mut has, mut mask) = (vec![0f32; b * t * p], vec![0f32; b * t * p]);
    let mut starts = Vec::new();
    for (ci, clip) in clips.iter().enumerate() {
        let start = clip.iter().map(|s| s.1).min().unwrap();
        starts.push(start);
        for (pi, &(id, from, to)) in clip.iter().enumerate() {
            for seq in from..=to {
                let slot = (ci * t + (seq - start) as usize) * p + pi;
                has[slot] = 1.0;
                if !detected(id, seq) {
                    mask[slot] = 1.0;
                    continue;
                }
                let q = person(id, seq);
                let v = pose_vector::pose_shape(&q.global_orient, &q.body_pose, &q.betas, q.translation).unwrap();
                pose[slot * 229..(slot + 1) * 229].copy_from_slice(&v);
                let raw: Vec<[f32; 3]> = q
                    .joints
                    .unwrap()
                    .iter()
                    .map(|j| [j[0] - q.translation[0], j[1] - q.translation[1], j[2] - q.translation[2]])
                    .collect();
                joints[slot * 135..(slot + 1) * 135]
                    .copy_from_slice(&pose_vector::joints_3d(&raw, q.translation).unwrap());
            }
        }
    }
    let shape = |c: i64| [b as i64, t as i64, p as i64, c];
    let input = LartInput {
        pose_shape: Tensor::from_slice(&pose).view(shape(229)),
        joints_3d: Some(Tensor::from_slice(&joints).view(shape(135))),
        apperance_emb: None,
        has_detection: Tensor::from_slice(&has).view(shape(1)),
        mask_detection: Tensor::from_slice(&mask).view(shape(1)),
    };
    let out = tch::no_grad(|| lart.forward(&input)).unwrap();
    (Vec::<f32>::try_from(out.ava_logits.sigmoid().view([-1])).unwrap(), starts)
}

/// Checks `actions` against the reference: each person's mean over `frames` of their scores.
fn check(actions: &Actions, lart: &Lart, clips: &[Vec<Span>], frames: &[(u32, std::ops::RangeInclusive<u64>)]) {
    let (scores, starts) = reference(lart, clips);
    let (t, p, c) = (125usize, 2usize, 60usize);
    let expected_ids: Vec<u32> = clips.iter().flatten().map(|s| s.0).collect();
    let got_ids: Vec<u32> = actions.people.iter().map(|q| q.id).collect();
    assert_eq!(got_ids, expected_ids, "people at frame {}", actions.meta.seq);
    for person in &actions.people {
        let (ci, pi) = clips
            .iter()
            .enumerate()
            .find_map(|(ci, clip)| clip.iter().position(|s| s.0 == person.id).map(|pi| (ci, pi)))
            .unwrap();
        let range = frames.iter().find(|(id, _)| *id == person.id).unwrap().1.clone();
        let n = range.clone().count() as f32;
        let mut mean = vec![0f32; c];
        for seq in range {
            let row = ((ci * t + (seq - starts[ci]) as usize) * p + pi) * c;
            for (m, s) in mean.iter_mut().zip(&scores[row..row + c]) {
                *m += s / n;
            }
        }
        assert_eq!(person.actions.len(), c, "top_k = 60: every class");
        assert_eq!(person.detected, detected(person.id, actions.meta.seq));
        for w in person.actions.windows(2) {
            assert!(w[0].score >= w[1].score, "best first");
        }
        for a in &person.actions {
            let i = ava::VALID_CLASSES.iter().position(|(id, _)| *id == a.ava_id).unwrap();
            assert_eq!(a.name, ava::VALID_CLASSES[i].1);
            let d = (a.score - mean[i]).abs();
            assert!(
                d <= TOLERANCE,
                "frame {} person {} {}: {} vs {} ({d:.2e})",
                actions.meta.seq,
                person.id,
                a.name,
                a.score,
                mean[i]
            );
        }
    }
}

fn lart() -> Lart {
    let spec = spec(WindowKind::Causal, 1, 0, 0);
    spec.model.load_with::<Lart>(&spec.config).unwrap().model
}

/// Causal: every 4th frame, the actions of the newest frame; a person lost for more than
/// `keep_lost` frames is no longer predicted.
#[test]
fn causal_window_scores_equal_lart_on_the_described_tokens() {
    let lart = lart();
    let out = drive(spec(WindowKind::Causal, 4, 0, 2), 9);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), [0, 4, 8], "every 4th frame, from the first");
    for a in out.values() {
        println!(
            "frame {}: {:?}",
            a.meta.seq,
            a.people.iter().map(|q| (q.id, &q.actions[0].name, q.actions[0].score)).collect::<Vec<_>>()
        );
    }
    // Frame 0: people 1 and 3 on one clip.
    check(&out[&0], &lart, &[vec![(1, 0, 0), (3, 0, 0)]], &[(1, 0..=0), (3, 0..=0)]);
    // Frame 4: 1 (0–4), 2 (3–4) on one clip; 3 lost since 2 (within keep_lost: frames 3–4
    // masked). Scores averaged over [4 − 2, 4 + 2) ∩ each span.
    check(&out[&4], &lart, &[vec![(1, 0, 4), (2, 3, 4)], vec![(3, 0, 4)]], &[(1, 2..=4), (2, 3..=4), (3, 2..=4)]);
    // Frame 8: 3 is gone (last seen 2, 2 + 4 < 8); 1's frames 5–6 are masked tokens.
    check(&out[&8], &lart, &[vec![(1, 0, 8), (2, 3, 8)]], &[(1, 6..=8), (2, 6..=8)]);
    assert!(!out[&8].people.iter().any(|q| q.id == 3));
}

/// Centred: the key frame is `context` frames behind; the window holds the `stride` key
/// frames and `context` frames on either side.
#[test]
fn centred_window_scores_equal_lart_on_the_described_tokens() {
    let lart = lart();
    let out = drive(spec(WindowKind::Centred, 2, 3, 1), 11);
    // Frames 0, 2 have no key frame yet (0 − 3 < 0).
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), [4, 6, 8, 10]);
    for (seq, a) in &out {
        assert_eq!(a.meta.seq, seq - 3, "actions are about the frame `context` behind");
    }
    // Handled frame 10: key 7, window [7 + 1 − (2 + 3), 10] = [3, 10]; 1 is seen from 3 on
    // (5–6 masked), 2 from 3; 3 (last seen 2) is outside the window.
    check(&out[&10], &lart, &[vec![(1, 3, 10), (2, 3, 10)]], &[(1, 6..=7), (2, 6..=7)]);
    // Handled frame 6: key 3, window [0, 6]: 1 (0–6, 5–6 masked), 2 (3–6), 3 (seen 0–2, then
    // presumed there for keep_lost = 4 frames: 3–6 masked). Averaged over [2, 4).
    check(&out[&6], &lart, &[vec![(1, 0, 6), (2, 3, 6)], vec![(3, 0, 6)]], &[(1, 2..=3), (2, 3..=3), (3, 2..=3)]);
}

const FRAMES: usize = 3;

/// The whole chain on camera frames, with appearance from Hiera-H: actions on the stride's
/// frames for the tracked person, in the recording and on zenoh.
#[test]
fn people_get_actions_in_a_real_pipeline() {
    let _alone = ocellus_tests::exclusive(); // full-size HMR 2.0 and Hiera-H take both cores
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "actions");
    let smpl_file = ocellus_tests::imported_smpl(&dir);
    let rrd = dir.join("actions.rrd");
    let (session, endpoint) = ocellus_tests::listening_session();
    let (_subscriber, published) = ocellus_tests::json_messages(&session, "ocellus/cam/actions");
    let clip = CameraClip::new("640x480");
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    let block = "edge = { policy = \"block\" }";
    let text = format!(
        "{source}\n\
         [[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{w}\"\n\
         inputs = [\"cam\"]\n{block}\nimage_size = 256\nprompts = [{{ id = 3, box = {box_} }}]\n\
         [[actor]]\nname = \"people\"\nkind = \"pose3d\"\nmodel = \"hmr2\"\nallow_random_weights = true\n\
         smpl = \"{smpl}\"\n\
         inputs = {{ frames = {{ from = \"cam\", {block} }}, tracks = {{ from = \"tracker\", {block} }} }}\n\
         [[actor]]\nname = \"actions\"\nkind = \"actions\"\nmodel = \"lart\"\nallow_random_weights = true\nseed = 3\n\
         stride = 2\ntop_k = 3\n\
         appearance = {{ model = \"hiera_huge_224\", allow_random_weights = true, every = 6 }}\n\
         inputs = {{ poses = {{ from = \"people\", {block} }}, frames = {{ from = \"cam\", {block} }} }}\n\
         {sink}\n\
         [[sink]]\nkind = \"zenoh\"\ninputs = [\"actions\"]\nkeys = \"zenoh\"\nprefix = \"ocellus\"\n\
         connect = [\"{endpoint}\"]\nmulticast_scouting = false\nedge = {{ policy = \"block\", depth = 4 }}\n",
        source = clip.source_toml("cam", FRAMES),
        w = weights.display(),
        box_ = clip.meta["box"],
        smpl = smpl_file.display(),
        sink = rerun_sink_toml(&["cam", "tracker", "people", "actions"], &rrd),
    );
    let mut p = build(&config_file(&dir, "actions.toml", &text)).unwrap();
    let collected = Collected::default();
    p.stage("collect", &["actions"], ocellus_runtime::EdgePolicy::Block { depth: 16 }, collected.clone().factory());
    let report = p.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    let actions: Vec<Actions> = collected
        .take()
        .into_iter()
        .map(|(packet, _)| match packet {
            Packet::Actions(a) => (*a).clone(),
            other => panic!("actions emitted {other:?}"),
        })
        .collect();
    let seqs: Vec<u64> = actions.iter().map(|a| a.meta.seq).collect();
    assert_eq!(seqs, [0, 2], "every 2nd frame");
    for a in &actions {
        for q in &a.people {
            assert_eq!(q.id, 3);
            assert_eq!(q.actions.len(), 3);
            assert!(q.actions.iter().all(|s| (0.0..=1.0).contains(&s.score)));
            println!("frame {}: {:?}", a.meta.seq, q.actions);
        }
    }
    assert!(actions.iter().any(|a| !a.people.is_empty()), "the tracked person got actions");
    // The recording has each person's line at world/cam/actions on the key frames.
    let texts = ocellus_io::recording::texts_of(&rrd, "world/cam/actions").unwrap();
    for a in actions.iter().filter(|a| !a.people.is_empty()) {
        let lines = &texts[&(a.meta.seq as i64)];
        assert_eq!(lines[0], ocellus_io::sink::rerun::actions_line(&a.people[0]));
    }
    // zenoh: the same actions as JSON.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while published.lock().len() < actions.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let got = published.lock().clone();
    assert_eq!(got.len(), actions.len(), "{got:?}");
    assert_eq!(got[0]["type"], "actions");
    assert_eq!(got[0]["seq"], 0);
}

/// Bad `actions` entries are refused before anything runs, naming the key and the line.
#[test]
fn actions_configuration_errors_name_the_key() {
    let clip = CameraClip::new("640x480");
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "actions_config");
    let weights = dir.join("lart.safetensors");
    std::fs::write(&weights, b"not checked until the actor starts").unwrap();
    let appearance = "appearance = { model = \"hiera_huge_224\", allow_random_weights = true }";
    for (extra, needle) in [
        ("window = \"sideways\"", "window"),
        ("max_people = 11", "max_people: 11: must be in 1..=10"),
        ("stride = 0", "stride"),
        ("window = \"centred\"\ncontext = 60", "context"),
        ("top_k = 0", "top_k"),
        ("min_score = 2.0", "min_score"),
        ("features = [\"joints_3D\", \"depth\"]", "features"),
        ("", "appearance: the model reads appearance"),
        ("appearance = { model = \"hiera_tiny_224\", allow_random_weights = true }", "appearance.model"),
        ("appearance = { model = \"hiera_huge_224\" }", "appearance.weights"),
        (
            "features = [\"joints_3D\"]\nappearance = { model = \"hiera_huge_224\", allow_random_weights = true }",
            "appearance",
        ),
        ("classes = \"missing.npy\"", "classes"),
        ("model = \"lart2\"", "unknown model \"lart2\""),
    ] {
        let model = if extra.starts_with("model") { "" } else { "model = \"lart\"\n" };
        let appearance = if extra.is_empty() || extra.contains("appearance") || extra.contains("features") {
            ""
        } else {
            appearance
        };
        let text = format!(
            "{}\n[[actor]]\nname = \"actions\"\nkind = \"actions\"\n{model}allow_random_weights = true\n\
             inputs = {{ poses = \"cam\", frames = \"cam\" }}\n{appearance}\n{extra}\n",
            clip.source_toml("cam", 1)
        );
        let err = ocellus_pipelines::PipelineConfig::parse(&dir.join("bad.toml"), &text).expect_err(extra).to_string();
        assert!(err.contains(needle) && err.contains("bad.toml:") && err.contains("actor[0]"), "{extra}: {err}");
    }
    // Real weights need the pose statistics.
    let text = format!(
        "{}\n[[actor]]\nname = \"actions\"\nkind = \"actions\"\nmodel = \"lart\"\nweights = \"{}\"\n\
         inputs = {{ poses = \"cam\", frames = \"cam\" }}\n{appearance}\n",
        clip.source_toml("cam", 1),
        weights.display()
    );
    let err = ocellus_pipelines::PipelineConfig::parse(&dir.join("bad.toml"), &text).expect_err("mean_std").to_string();
    assert!(err.contains("mean_std") && err.contains("mean_std.npy"), "{err}");
}

/// Appearance: the crop is the frame's square (black outside the frame), the mask is the
/// person's pixels in it, and a feature map is averaged over the cells the mask covers.
#[test]
fn appearance_is_the_feature_map_averaged_over_the_persons_mask() {
    use ocellus_model_actors::actions::{pool_over_masks, square_crop};
    // A 4×4 frame, person 7 on its left half; the square starts one pixel outside.
    let rgb: Vec<u8> = (0..48u8).collect();
    let labels: Vec<u8> =
        (0..16).flat_map(|i| if i % 4 < 2 { 7u16.to_le_bytes() } else { 0u16.to_le_bytes() }).collect();
    let (crop, mask) = square_crop(&rgb, Some(&labels), (4, 4), 7, (-1, 0, 4));
    assert_eq!(&crop[..3], &[0, 0, 0], "outside the frame");
    assert_eq!(&crop[3..6], &rgb[..3], "the frame's (0, 0)");
    assert_eq!(&mask[..4], &[0.0, 1.0, 1.0, 0.0], "the person's pixels in the first row");
    // Feature maps 2×2 of 3 channels: the mask covers the left column half, the right not at all.
    let maps =
        Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0, 0.0, 0.0, 5.0, 5.0]).view([1, 3, 2, 2]);
    let m = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
        .view([1, 1, 4, 4]);
    let pooled = Vec::<f32>::try_from(pool_over_masks(&maps, &[m]).unwrap().view([-1])).unwrap();
    // Cover: top-left 2/4, bottom-left 4/4 → weights 1/3, 2/3 on cells 0 and 2.
    let want = [1.0 / 3.0 + 3.0 * 2.0 / 3.0, 10.0 / 3.0 + 30.0 * 2.0 / 3.0, 5.0 * 2.0 / 3.0];
    for (a, b) in pooled.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{pooled:?} vs {want:?}");
    }
    // An empty mask: the plain mean.
    let empty = Tensor::zeros([1, 1, 4, 4], (tch::Kind::Float, Device::Cpu));
    let plain = Vec::<f32>::try_from(pool_over_masks(&maps, &[empty]).unwrap().view([-1])).unwrap();
    assert!((plain[0] - 2.5).abs() < 1e-6 && (plain[2] - 2.5).abs() < 1e-6, "{plain:?}");
}

/// PHALP's `mean_std.npy` (mean then std stacked, each `[1, D]`, D < 229) loads padded to 229
/// with zeros and ones.
#[test]
fn pose_statistics_load_from_phalps_npy() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "mean_std");
    let path = dir.join("mean_std.npy");
    let mean = Tensor::arange(226, (tch::Kind::Float, Device::Cpu)).view([1, 226]);
    let std = Tensor::full([1, 226], 2.0, (tch::Kind::Float, Device::Cpu));
    Tensor::stack(&[mean, std], 0).write_npy(&path).unwrap();
    let stats = pose_vector::MeanStd::load(&path).unwrap();
    let v = Tensor::full([229], 10.0, (tch::Kind::Float, Device::Cpu));
    let n = Vec::<f32>::try_from(stats.normalize(&v).unwrap()).unwrap();
    assert!(
        (n[0] - 5.0).abs() < 1e-5 && (n[225] - (10.0 - 225.0) / 2.0).abs() < 1e-4 && (n[226] - 10.0).abs() < 1e-5,
        "{:?}",
        &n[224..]
    );
    std::fs::write(dir.join("bad.npy"), b"not an array").unwrap();
    let err = pose_vector::MeanStd::load(&dir.join("bad.npy")).unwrap_err().to_string();
    assert!(err.contains("bad.npy"), "{err}");
}
