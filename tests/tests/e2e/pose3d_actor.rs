//! The 3D pose actor in a real pipeline: camera frames (PNG through GStreamer) → SAM 2 →
//! pose3d (full-size HMR 2.0 with seeded weights, the synthetic SMPL file imported as a user
//! imports theirs) → Rerun. Each person's numbers are checked against the parts they are
//! made of, each exact to its reference elsewhere (crops: OpenCV; HMR 2.0: the official
//! modules; SMPL: smplx; placement: PHALP): the translation is PHALP's from the crop camera
//! and the crop's square, the joints are SMPL's posed by the reported parameters plus the
//! translation. Without a body model, no joints, and the recording says so.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use nalgebra::{Vector2, Vector3};
use ocellus_perception::hmr2::camera::{BoxInFrame, FrameCamera};
use ocellus_perception::hmr2::preprocess;
use ocellus_perception::smpl::Smpl;
use ocellus_pipelines::build;
use ocellus_runtime::{EdgePolicy, Packet, Poses};
use ocellus_tests::{CameraClip, Collected, config_file, fixtures_dir, read_rrd, rerun_sink_toml, scratch_dir};
use tch::Tensor;

const FRAMES: usize = 2;

/// Runs the pipeline; with `zenoh` (an endpoint and `"zenoh"` or `"ros2"` keys), a zenoh
/// sink also publishes the poses there.
fn pipeline(
    dir: &std::path::Path,
    smpl: Option<&std::path::Path>,
    rrd: &std::path::Path,
    zenoh: Option<(&str, &str)>,
) -> (Vec<Poses>, CameraClip) {
    let clip = CameraClip::new("640x480");
    let weights = fixtures_dir().join("sam2_video_tiny.weights.safetensors");
    let smpl_line = smpl.map_or(String::new(), |p| format!("smpl = \"{}\"\nmesh = true\n", p.display()));
    let zenoh_sink = zenoh.map_or(String::new(), |(endpoint, keys)| {
        let naming = if keys == "ros2" { "domain = 0\nnamespace = \"/ocellus\"\n" } else { "prefix = \"ocellus\"\n" };
        format!(
            "[[sink]]\nkind = \"zenoh\"\ninputs = [\"people\"]\nkeys = \"{keys}\"\n{naming}\
             connect = [\"{endpoint}\"]\nmulticast_scouting = false\nedge = {{ policy = \"block\", depth = 4 }}\n"
        )
    });
    let text = format!(
        "{source}\n\
         [[actor]]\nname = \"tracker\"\nkind = \"sam2\"\nmodel = \"sam2.1_hiera_tiny\"\nweights = \"{w}\"\n\
         inputs = [\"cam\"]\nedge = {{ policy = \"block\" }}\nimage_size = 256\n\
         prompts = [{{ id = 3, box = {box_} }}]\n\
         [[actor]]\nname = \"people\"\nkind = \"pose3d\"\nmodel = \"hmr2\"\nallow_random_weights = true\n\
         inputs = {{ frames = {{ from = \"cam\", edge = {{ policy = \"block\" }} }}, \
         tracks = {{ from = \"tracker\", edge = {{ policy = \"block\" }} }} }}\n{smpl_line}\n{sink}\n{zenoh_sink}",
        source = clip.source_toml("cam", FRAMES),
        w = weights.display(),
        box_ = clip.meta["box"],
        sink = rerun_sink_toml(&["cam", "tracker", "people"], rrd),
    );
    let mut p = build(&config_file(dir, "people.toml", &text)).unwrap();
    let collected = Collected::default();
    p.stage("collect", &["people"], EdgePolicy::Block { depth: 16 }, collected.clone().factory());
    let report = p.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    let poses = collected
        .take()
        .into_iter()
        .map(|(packet, _)| match packet {
            Packet::Poses(p) => (*p).clone(),
            other => panic!("pose3d emitted {other:?}"),
        })
        .collect();
    (poses, clip)
}

#[test]
fn people_get_3d_bodies_placed_in_the_camera() {
    let _alone = ocellus_tests::exclusive(); // full-size HMR 2.0 takes both cores
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "pose3d");
    let smpl_file = ocellus_tests::imported_smpl(&dir);
    let rrd = dir.join("people.rrd");
    // A zenoh peer listening on loopback gets each frame's people as JSON.
    let (session, endpoint) = ocellus_tests::listening_session();
    let (_subscriber, published) = ocellus_tests::json_messages(&session, "ocellus/cam/people");
    let (poses, clip) = pipeline(&dir, Some(&smpl_file), &rrd, Some((&endpoint, "zenoh")));
    assert_eq!(poses.len(), FRAMES, "one message per frame");
    let smpl = Smpl::load(&smpl_file, tch::Device::Cpu).unwrap();
    let camera = FrameCamera::default();
    let mut people = 0;
    let mut checked = Vec::new();
    for p in &poses {
        assert_eq!((p.width as usize, p.height as usize), (clip.width, clip.height));
        assert_eq!(p.faces.as_ref().map(|f| f.len()), Some(13776), "the mesh's triangles");
        // The frame camera: f = 5000 · 640 / 256, the principal point at the frame's centre.
        assert!((p.focal_length - 12500.0).abs() < 1e-9 && p.principal_point == [320.0, 240.0]);
        for person in &p.people {
            people += 1;
            assert_eq!(person.id, 3);
            assert_eq!(person.body_pose.len(), 207);
            // Joints: SMPL posed by the reported parameters, plus the translation.
            let t = Tensor::from_slice;
            let posed = smpl
                .forward(
                    &t(&person.betas).view([1, 10]),
                    &t(&person.global_orient).view([1, 1, 3, 3]),
                    &t(&person.body_pose).view([1, 23, 3, 3]),
                )
                .unwrap();
            let j44 = Vec::<f32>::try_from(smpl.joints44(&posed).unwrap().view([-1])).unwrap();
            // The mesh: SMPL's vertices plus the translation.
            let v = Vec::<f32>::try_from(posed.vertices.reshape([-1])).unwrap();
            let vertices = person.vertices.as_ref().expect("the mesh, asked for");
            assert_eq!(vertices.len(), 6890);
            for (k, vertex) in vertices.iter().enumerate() {
                for c in 0..3 {
                    let want = v[3 * k + c] + person.translation[c];
                    assert!((vertex[c] - want).abs() <= 1e-4 * want.abs().max(1.0), "vertex {k}");
                }
            }
            let joints = person.joints.as_ref().expect("joints with a body model");
            assert_eq!(joints.len(), 45);
            for (k, joint) in joints.iter().enumerate() {
                let base = if k < 44 { [j44[3 * k], j44[3 * k + 1], j44[3 * k + 2]] } else { [0.0; 3] };
                for c in 0..3 {
                    let want = base[c] + person.translation[c];
                    assert!((joint[c] - want).abs() <= 1e-4 * want.abs().max(1.0), "joint {k}: {joint:?}");
                }
            }
            // (Seeded weights: the crop camera's scale, hence the depth, may have any sign.)
            assert!(person.translation.iter().all(|v| v.is_finite()));
            checked.push((p.meta.seq, person.crop_cam, person.translation));
        }
    }
    assert!(people >= 1, "the tracked object got a body");
    // The translation is PHALP's from the crop camera and the crop's square of the track's
    // box (the tracker's boxes, read back from the recording).
    let boxes = ocellus_io::recording::boxes_of(&rrd, "world/cam/tracks/boxes").unwrap();
    for (seq, cam, translation) in &checked {
        let b = boxes[&(*seq as i64)].iter().find(|b| b.class_id == Some(3)).expect("the track's box");
        let (center, side) = preprocess::crop_square(b.corners.map(f64::from));
        let (c, s) = camera.to_render(BoxInFrame { center: Vector2::new(center[0], center[1]), side }, 640, 480);
        let t = camera.translation(Vector3::new(cam[0], cam[1], cam[2]).cast(), c, s);
        for (a, b) in translation.iter().zip(t.iter()) {
            assert!((f64::from(*a) - b).abs() <= 1e-4 * b.abs().max(1.0), "frame {seq}: {translation:?} vs {t:?}");
        }
        println!("frame {seq}: translation {translation:?} from crop camera {cam:?}");
    }
    let published = published.lock().clone();
    assert_eq!(published.len(), FRAMES, "one JSON message per frame on <prefix>/<camera>/people");
    for (json, p) in published.iter().zip(&poses) {
        assert_eq!(json["type"], "poses");
        assert_eq!(json["seq"], p.meta.seq);
        assert_eq!(json["people"].as_array().map(Vec::len), Some(p.people.len()));
        for (j, q) in json["people"].as_array().unwrap().iter().zip(&p.people) {
            assert_eq!(j["id"], q.id);
            assert_eq!(j["joints"].as_array().map(Vec::len), Some(45));
            assert!((j["translation"][2].as_f64().unwrap() - f64::from(q.translation[2])).abs() < 1e-3);
        }
    }
    let summary = read_rrd(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/cam/people/3").len(), people, "each person's joints are logged");
    assert_eq!(summary.rows_of("world/cam/people/3/skeleton").len(), people, "and its skeleton");
    assert_eq!(summary.rows_of("world/cam/people/3/mesh").len(), people, "and its mesh");

    // Without a body model: parameters and translation, no joints, and the recording says so.
    // ROS 2 keys: each frame's root poses as a geometry_msgs/PoseArray too.
    let (session, endpoint) = ocellus_tests::listening_session();
    let arrays = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = arrays.clone();
    let _subscriber = zenoh::Wait::wait(
        session
            .declare_subscriber("0/ocellus/cam/people/poses/geometry_msgs::msg::dds_::PoseArray_/*")
            .callback(move |s| sink.lock().push(s.payload().to_bytes().to_vec())),
    )
    .unwrap();
    let rrd = dir.join("no_smpl.rrd");
    let (poses, _) = pipeline(&dir, None, &rrd, Some((&endpoint, "ros2")));
    let arrays = arrays.lock().clone();
    assert_eq!(arrays.len(), FRAMES, "one PoseArray per frame");
    for (cdr, p) in arrays.iter().zip(&poses) {
        let decoded: ocellus_wire::ros2::PoseArray = ocellus_wire::ros2::from_cdr(cdr).unwrap();
        assert_eq!(decoded.poses.len(), p.people.len());
        for (pose, person) in decoded.poses.iter().zip(&p.people) {
            // Without joints the root is the translation; the orientation is SMPL's root rotation.
            let at = [pose.position.x, pose.position.y, pose.position.z];
            assert!(at.iter().zip(person.translation).all(|(a, b)| (a - f64::from(b)).abs() < 1e-6), "{at:?}");
            let q = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
                pose.orientation.w,
                pose.orientation.x,
                pose.orientation.y,
                pose.orientation.z,
            ));
            let r = q.to_rotation_matrix();
            for (k, v) in person.global_orient.iter().enumerate() {
                assert!((r[(k / 3, k % 3)] - f64::from(*v)).abs() < 1e-4, "rotation [{k}]");
            }
        }
    }
    assert!(poses.iter().flat_map(|p| &p.people).all(|p| p.joints.is_none()));
    let labels = ocellus_io::recording::components_of::<rerun::components::Text>(
        &rrd,
        "world/cam/people/3",
        rerun::Points3D::descriptor_labels().component,
    )
    .unwrap();
    assert!(labels.values().flatten().all(|l| l.as_str().contains("joints unavailable")), "{labels:?}");
    assert!(!labels.is_empty());
}

#[test]
fn pose3d_configuration_errors_name_the_key() {
    let clip = CameraClip::new("640x480");
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "pose3d_config");
    for (extra, needle) in [
        ("smpl = \"missing.safetensors\"", "ocellus weights import --model smpl"),
        ("people = []", "people"),
        ("batch = 0", "batch"),
        ("mesh = true", "mesh: needs the body model"),
        ("model = \"hmr3\"", "unknown model \"hmr3\""),
    ] {
        let model = if extra.starts_with("model") { "" } else { "model = \"hmr2\"\n" };
        let text = format!(
            "{}\n[[actor]]\nname = \"people\"\nkind = \"pose3d\"\n{model}allow_random_weights = true\n\
             inputs = {{ frames = \"cam\", tracks = \"cam\" }}\n{extra}\n",
            clip.source_toml("cam", 1)
        );
        let err = ocellus_pipelines::PipelineConfig::parse(&dir.join("bad.toml"), &text).expect_err(extra).to_string();
        assert!(err.contains(needle) && err.contains("bad.toml:") && err.contains("actor[0]"), "{extra}: {err}");
    }
}
