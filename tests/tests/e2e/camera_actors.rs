//! Every model actor on camera-sized frames (640×480, 1280×720, and 641×479 whose RGB rows
//! GStreamer pads), through a real pipeline (PNG frames decoded by GStreamer), against the
//! official pipeline it reproduces on the same frames (`tests/fixtures/camera.py`; the
//! generators run the official code): SAM 2's video predictor for the tracker, Hiera's and
//! SAM 2's transforms and encoders for the backbone, open_clip's preprocessing and model for
//! the labeler, the DiffMAE reference for the inpainter. Results are read back from the `.rrd`
//! where the recording holds them.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_io::sink::{RerunSink, RerunTarget, SharedRecording};
use ocellus_perception::model::{ModelSpec, WeightsSource};
use ocellus_pipelines::build;
use ocellus_runtime::node::StageFactory;
use ocellus_runtime::{EdgePolicy, Packet, PortType, Ports, Wire, stage_factory};
use ocellus_tests::{
    CAMERA_SIZES, CameraClip, Collected, GroundTruthTracks, assert_close, boxes_of, buffers_of, config_file,
    fixture_io, fixtures_dir, rerun_sink_toml, scratch_dir,
};

/// Pixel agreement of the tracker's label images with the video predictor's.
const MIN_AGREEMENT: f64 = 0.9999;

#[test]
fn tracker_matches_the_video_predictor_on_camera_frames() {
    for size in CAMERA_SIZES {
        tracker_case(size, "");
    }
}

/// The tracker on the camera frames of `size` against SAM 2's video predictor, with `extra`
/// lines in the tracker's table (another backend, say).
pub(crate) fn tracker_case(size: &'static str, extra: &str) {
    let clip = CameraClip::new(size);
    let tag = if extra.is_empty() { "" } else { "_extra" };
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("camera_tracker_{size}{tag}"));
    let rrd = dir.join("tracks.rrd");
    let box_ = clip.meta["box"].to_string();
    let points = clip.meta["points"].to_string();
    let labels = clip.meta["point_labels"].to_string();
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    let text = format!(
        "{}\n[[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{}\"\n\
         inputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\n\
         prompts = [{{ id = 1, box = {box_} }}, {{ id = 2, points = {points}, labels = {labels} }}]\n{extra}\n{}",
        clip.source_toml("cam", clip.tracked),
        weights.display(),
        rerun_sink_toml(&["tracker"], &rrd)
    );
    let report = build(&config_file(&dir, "tracker.toml", &text)).unwrap().run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");

    let io = clip.io();
    let segmentation = rerun::SegmentationImage::descriptor_buffer().component;
    let images = buffers_of(&rrd, "world/cam/tracks", segmentation).unwrap();
    let boxes = boxes_of(&rrd, "world/cam/tracks/boxes").unwrap();
    assert_eq!(images.len(), clip.tracked, "{size}: one label image per frame");
    for f in 0..clip.tracked {
        let ours: Vec<u16> = images[&(f as i64)].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let theirs = Vec::<i32>::try_from(io[&format!("sam2.frame{f}.labels")].flatten(0, -1)).unwrap();
        assert_eq!(ours.len(), clip.width * clip.height);
        let same = ours.iter().zip(&theirs).filter(|(a, b)| i32::from(**a) == **b).count();
        let agreement = same as f64 / ours.len() as f64;
        println!("{size} frame {f}: {agreement:.6} of pixels agree ({} differ)", ours.len() - same);
        assert!(agreement >= MIN_AGREEMENT, "{size} frame {f}: agreement {agreement}");
        for id in [1u16, 2] {
            let reference = Vec::<i32>::try_from(&io[&format!("sam2.frame{f}.obj{id}.box")]).unwrap();
            let logged = boxes.get(&(f as i64)).and_then(|b| b.iter().find(|b| b.class_id == Some(id)));
            match logged {
                Some(b) => {
                    let corners: Vec<i32> = b.corners.iter().map(|&c| c.round() as i32).collect();
                    assert_eq!(corners, reference, "{size} frame {f} track {id}: box");
                }
                None => assert_eq!(reference, [-1, -1, -1, -1], "{size} frame {f} track {id}: no box logged"),
            }
        }
    }
}

/// Runs `model` as a backbone actor on the first `frames` frames of `clip`; the features of
/// every frame, in order.
fn backbone_features(clip: &CameraClip, model: &str, weights: &str, frames: usize) -> Vec<Vec<tch::Tensor>> {
    backbone_features_with(clip, model, &fixtures_dir().join(weights), frames, "")
}

/// [`backbone_features`] with a weights path and `extra` lines in the actor's table.
pub(crate) fn backbone_features_with(
    clip: &CameraClip,
    model: &str,
    weights: &std::path::Path,
    frames: usize,
    extra: &str,
) -> Vec<Vec<tch::Tensor>> {
    let tag = if extra.is_empty() { "" } else { "_extra" };
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("camera_backbone_{model}_{}{tag}", clip.size));
    let text = format!(
        "{}\n[[actor]]\nname = \"backbone\"\nkind = \"backbone\"\nmodel = \"{model}\"\nweights = \"{}\"\n\
         inputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\n{extra}\n",
        clip.source_toml("cam", frames),
        weights.display()
    );
    let mut pipeline = build(&config_file(&dir, "backbone.toml", &text)).unwrap();
    let collected = Collected::default();
    let sink = collected.clone();
    pipeline.stage("collect", &["backbone"], EdgePolicy::Block { depth: 4 }, sink.factory());
    let report = pipeline.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    collected
        .take()
        .into_iter()
        .filter_map(|(p, _)| if let Packet::Features(f) = p { Some(f.levels) } else { None })
        .collect()
}

#[test]
fn backbone_matches_the_official_transforms_on_camera_frames() {
    for size in CAMERA_SIZES {
        let clip = CameraClip::new(size);
        let io = clip.io();
        let hiera = backbone_features(&clip, "hiera_tiny_224", "hiera_tiny_224.weights.safetensors", clip.tracked);
        let sam2 =
            backbone_features(&clip, "sam2.1_hiera_tiny", "hieradet_tiny_1024.weights.safetensors", clip.tracked);
        assert_eq!((hiera.len(), sam2.len()), (clip.tracked, clip.tracked));
        for f in 0..clip.tracked {
            for (i, level) in hiera[f].iter().enumerate() {
                assert_close(
                    &format!("{size} hiera frame {f} level {i}"),
                    level,
                    &io[&format!("hiera.frame{f}.{i}")],
                    1e-4,
                );
            }
            for (i, level) in sam2[f].iter().enumerate() {
                // The fixture keeps every 4th row and column.
                let ours = level.slice(2, 0, None, 4).slice(3, 0, None, 4);
                let name = format!("sam2_encoder.frame{f}.{i}");
                assert_close(&format!("{size} {name}"), &ours, &io[&name], 1e-4);
            }
        }
    }
    // Hiera's video example: one clip of the first 16 frames.
    let clip = CameraClip::new("640x480");
    let io = clip.io();
    let video = backbone_features(&clip, "hiera_base_16x224", "hiera_base_16x224.weights.safetensors", 16);
    assert_eq!(video.len(), 1, "one clip from 16 frames");
    for (i, level) in video[0].iter().enumerate() {
        assert_close(&format!("hiera video level {i}"), level, &io[&format!("hiera_video.{i}")], 1e-4);
    }
}

/// Model `name` with the weights of fixture file `weights`, on the CPU in f32.
fn fixture_model(name: &str, weights: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        weights: WeightsSource::File(fixtures_dir().join(weights)),
        device: tch::Device::Cpu,
        dtype: ocellus_kernels::DType::F32,
    }
}

/// A pipeline: the clip's frames, ground-truth tracks, `actor` (with `ports`: frames joined
/// with tracks) reading both, a Rerun sink (into `rrd`) and a collector of the actor's
/// outputs.
fn with_ground_truth(clip: &CameraClip, ports: Ports, actor: StageFactory, rrd: &std::path::Path) -> Vec<Packet> {
    let text = clip.source_toml("cam", clip.tracked);
    let dir = rrd.parent().unwrap();
    let mut pipeline = build(&config_file(dir, "source.toml", &text)).unwrap();
    let (labels, width) = (clip.labels(), clip.width);
    let collected = Collected::default();
    let sink = collected.clone();
    let rec = SharedRecording::new("ocellus", RerunTarget::Save(rrd.to_path_buf()));
    let block = EdgePolicy::Block { depth: 8 };
    pipeline
        .node("actor", ports, vec![Wire::new("frames", &["cam"], block), Wire::new("tracks", &["truth"], block)], actor)
        .actor(
            "truth",
            &["cam"],
            EdgePolicy::Block { depth: 4 },
            PortType::Tracks,
            stage_factory(move || GroundTruthTracks::new(labels.clone(), width)),
        )
        .stage("collect", &["actor"], block, sink.factory())
        .stage("rerun", &["actor"], block, stage_factory(move || RerunSink::new(rec.clone())));
    let report = pipeline.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    collected.take().into_iter().map(|(p, _)| p).collect()
}

#[test]
fn labeler_matches_open_clip_on_camera_frames() {
    for size in CAMERA_SIZES {
        labeler_case(size, None);
    }
}

/// The labeler on the camera frames of `size` against open_clip, with the native image tower
/// or `image_encoder` (ONNX Runtime).
pub(crate) fn labeler_case(size: &'static str, image_encoder: Option<ocellus_perception::onnx::OnnxEncoder>) {
    use ocellus_model_actors::labeler::{self, LabelerSpec, LabelerStage};

    let clip = CameraClip::new(size);
    let onnx = image_encoder.is_some();
    let case = format!("labeler_{size}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join(format!("{case}.json"))).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> {
        meta[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };
    let (classes, templates) = (strings("classes"), strings("templates"));
    let spec = LabelerSpec {
        name: "labeler".into(),
        model: fixture_model("ViT-B-32-quickgelu", "clip_b32.weights.safetensors"),
        vocabulary: classes.clone(),
        templates,
        bpe: None,
        smoothing: meta["smoothing"].as_f64().unwrap(),
        padding: meta["padding"].as_f64().unwrap(),
        image_encoder,
    };
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("camera_labeler_{size}_onnx{onnx}"));
    let rrd = dir.join("labels.rrd");
    let outputs =
        with_ground_truth(&clip, labeler::ports(), stage_factory(move || LabelerStage::new(spec.clone(), None)), &rrd);
    let io = fixture_io(&case);
    let tracks: Vec<_> =
        outputs.into_iter().filter_map(|p| if let Packet::Tracks(t) = p { Some(t) } else { None }).collect();
    assert_eq!(tracks.len(), clip.tracked);
    let boxes = boxes_of(&rrd, "world/cam/tracks/boxes").unwrap();
    for (f, t) in tracks.iter().enumerate() {
        for track in &t.tracks {
            let probs = &io[&format!("frame{f}.track{}.probs", track.id)];
            let best = probs.argmax(0, false).int64_value(&[]);
            let score = probs.double_value(&[best]);
            let label = track.label.as_ref().unwrap();
            assert_eq!(&*label.name, classes[best as usize], "{size} frame {f} track {}", track.id);
            println!(
                "{size} (onnx {onnx}) frame {f} track {}: {} {:.6} (reference {score:.6})",
                track.id, label.name, label.score
            );
            assert!((f64::from(label.score) - score).abs() <= 1e-4, "{size} frame {f} track {}: score", track.id);
            // The recording shows the same label and score.
            let logged = boxes[&(f as i64)].iter().find(|b| b.class_id == Some(track.id as u16)).unwrap();
            let text = format!("{} {:.2} (track {})", label.name, label.score, track.id);
            assert_eq!(logged.label.as_deref(), Some(text.as_str()));
        }
    }
}

#[test]
fn labeler_crops_are_open_clip_preprocessing() {
    use ocellus_kernels::masks::mask_box;
    use ocellus_kernels::{Fit, Normalization, Resize, Transform};

    // The crop of each track, as the actor builds it, against open_clip's `preprocess` of the
    // same 8-bit crop: equal to the float.
    for size in CAMERA_SIZES {
        let clip = CameraClip::new(size);
        let io = fixture_io(&format!("labeler_{size}"));
        let transform = Transform {
            fit: Fit::ShortSideCenterCrop { short: 224, crop: 224 },
            resize: Resize::PilBicubic,
            norm: Normalization::CLIP,
        };
        let frames = ocellus_tests::png_frames(&clip, clip.tracked);
        for (f, (rgb, labels)) in frames.iter().zip(clip.labels()).enumerate() {
            for id in [1u32, 2] {
                let mask: Vec<u8> = labels
                    .chunks_exact(2)
                    .map(|b| u8::from(u32::from(u16::from_le_bytes([b[0], b[1]])) == id))
                    .collect();
                let b = mask_box(&mask, clip.width).unwrap();
                let (x0, y0, side) = ocellus_model_actors::labeler::square(&b, 0.1);
                let crop = ocellus_model_actors::labeler::masked_square(
                    rgb,
                    &labels,
                    (clip.width, clip.height),
                    id,
                    (x0, y0, side),
                );
                let ours = transform.apply_rgb8(&crop, side as usize, side as usize, tch::Device::Cpu).unwrap();
                assert_close(
                    &format!("{size} frame {f} track {id} crop"),
                    &ours,
                    &io[&format!("frame{f}.track{id}.crop")],
                    0.0,
                );
            }
        }
    }
}

#[test]
fn inpainter_matches_the_reference_on_camera_frames() {
    use ocellus_model_actors::inpainter::{self, InpaintMethod, InpainterSpec, InpainterStage};

    for size in CAMERA_SIZES {
        let clip = CameraClip::new(size);
        let case = format!("inpainter_{size}");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join(format!("{case}.json"))).unwrap())
                .unwrap();
        let spec = InpainterSpec {
            name: "inpainter".into(),
            method: InpaintMethod::DiffMae {
                model: fixture_model("diffmae_vit_base_patch16", "diffmae_base.weights.safetensors"),
                steps: meta["steps"].as_u64().unwrap() as usize,
                seed: meta["seed"].as_i64().unwrap(),
            },
            device: tch::Device::Cpu,
            tracks: vec![1],
            labels: vec![],
            dilate: meta["dilate"].as_u64().unwrap() as u32,
        };
        let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), &format!("camera_inpainter_{size}"));
        let rrd = dir.join("inpainted.rrd");
        with_ground_truth(
            &clip,
            inpainter::ports(),
            stage_factory(move || InpainterStage::new(spec.clone(), None)),
            &rrd,
        );
        let io = fixture_io(&case);
        let images = buffers_of(&rrd, "world/cam/inpainted", rerun::Image::descriptor_buffer().component).unwrap();
        assert_eq!(images.len(), clip.tracked);
        for f in 0..clip.tracked {
            let theirs = Vec::<u8>::try_from(io[&format!("frame{f}.inpainted")].flatten(0, -1)).unwrap();
            let ours = &images[&(f as i64)];
            assert_eq!(ours.len(), theirs.len(), "{size} frame {f}: packed RGB");
            let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            let worst = ours.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
            println!("{size} frame {f}: {differ} of {} values differ, by at most {worst}", ours.len());
            assert!(worst <= 1, "{size} frame {f}: a value differs by {worst} levels");
            assert!(differ * 10_000 <= ours.len(), "{size} frame {f}: {differ} values differ");
        }
    }
}
