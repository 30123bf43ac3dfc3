//! zenoh and ROS 2 transports over real sessions on loopback (TCP on 127.0.0.1, multicast
//! scouting off): frames into a pipeline through the zenoh source, observations and frames out
//! through the zenoh sink, ROS 2 messages checked against an independent CDR implementation.
//!
//! The independent encoder is `rosbags` (pure Python, from PyPI, installed in the bootstrap
//! venv): it has its own CDR serializer and its own copy of the ROS 2 message definitions, and
//! computes RIHS01 type hashes, so it shares no code and no assumption with our serde structs
//! (another Rust CDR crate would share serde's data model, and ours was written from the
//! same reading of the spec). It runs as a child process of the test.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ocellus_io::session::{SessionSpec, payload_bytes, wait_for_subscriber};
use ocellus_io::sink::{KeyStyle, ZenohSink, ZenohSinkSpec};
use ocellus_io::source::{SyntheticSource, SyntheticSpec, ZenohSource, ZenohSourceSpec};
use ocellus_runtime::{EdgePolicy, Frame, FrameMeta, Packet, Pipeline, PipelineReport, source_factory, stage_factory};
use ocellus_tests::Collected;
use ocellus_wire::ros2::{self, Attachment, MsgType, TypeHashes};
use ocellus_wire::{FrameLayout, FrameLimits, PixelFormat, WireFormat, compressed, raw};
use parking_lot::Mutex;
use zenoh::Wait;
use zenoh::qos::CongestionControl;

fn free_endpoint() -> String {
    format!("tcp/127.0.0.1:{}", ocellus_tests::free_port())
}

use ocellus_tests::listening_session;

fn source_spec(endpoint: &str, key: &str, format: WireFormat, frames: Option<u64>) -> ZenohSourceSpec {
    ZenohSourceSpec {
        session: SessionSpec::loopback(&[], &[endpoint]),
        key: key.into(),
        format,
        intake: EdgePolicy::Block { depth: 8 },
        frames,
        idle_timeout: Some(Duration::from_secs(3)),
        ros2: None,
        limits: FrameLimits::DEFAULT,
    }
}

fn collecting_pipeline(sources: &[(&str, ZenohSourceSpec)]) -> (Pipeline, Vec<Collected>) {
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_secs(3600));
    let mut all = Vec::new();
    for (name, spec) in sources {
        let c = Collected::default();
        let spec = spec.clone();
        p.source(name, source_factory(move || ZenohSource::new(spec.clone()))).stage(
            &format!("{name}.collect"),
            &[name],
            EdgePolicy::Block { depth: 16 },
            c.factory(),
        );
        all.push(c);
    }
    (p, all)
}

fn frames_of(c: &Collected) -> Vec<Frame> {
    c.take()
        .into_iter()
        .filter_map(|(p, _)| match p {
            Packet::Frame(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// Frame `seq` of the exchange: the format and row padding vary, the pixels depend on `seq`.
fn test_frame(seq: u64) -> Frame {
    let format = [PixelFormat::Rgb, PixelFormat::Bgr, PixelFormat::Gray8, PixelFormat::Nv12][seq as usize % 4];
    let mut layout = FrameLayout::packed(format, 32, 24);
    if seq.is_multiple_of(3) {
        layout.strides[0] += 8;
        if format == PixelFormat::Nv12 {
            layout.strides[1] += 8;
            layout.offsets[1] = layout.strides[0] * 24;
        }
    }
    let pixels: Vec<u8> = (0..layout.required_len()).map(|i| ((i as u64 * 31 + seq * 7) % 251) as u8).collect();
    Frame::new(
        FrameMeta { camera: "cam".into(), seq, capture_ns: 1_000 + seq as i64, frame_id: None },
        layout,
        Bytes::from(pixels),
    )
    .unwrap()
}

/// `f` as an Ocellus raw frame message.
fn encode_raw(f: &Frame) -> Vec<u8> {
    raw::encode(&f.layout, &f.pixels, f.meta.seq, f.meta.capture_ns).unwrap()
}

#[test]
fn two_sessions_exchange_1000_frames() {
    let (session, endpoint) = listening_session();
    let publisher =
        session.declare_publisher("test/cam/frames").congestion_control(CongestionControl::Block).wait().unwrap();
    let (pipeline, collected) =
        collecting_pipeline(&[("cam", source_spec(&endpoint, "test/cam/frames", WireFormat::Raw, Some(1000)))]);
    let sender = std::thread::spawn(move || {
        assert!(wait_for_subscriber(&publisher, Duration::from_secs(20)), "the source never subscribed");
        for seq in 0..1000 {
            publisher.put(encode_raw(&test_frame(seq))).wait().unwrap();
        }
        publisher
    });
    let report = pipeline.run().unwrap();
    drop(sender.join().unwrap());
    session.close().wait().unwrap();

    let frames = frames_of(&collected[0]);
    assert_eq!(frames.len(), 1000, "{report}");
    for (i, f) in frames.iter().enumerate() {
        let want = test_frame(i as u64);
        assert_eq!((f.meta.seq, f.meta.capture_ns, &*f.meta.camera), (i as u64, want.meta.capture_ns, "cam"));
        assert_eq!(f.layout, want.layout, "frame {i}");
        assert_eq!(f.pixels, want.pixels, "frame {i}");
    }
    let source = report.node("cam").unwrap();
    assert_eq!((source.metrics.emitted, source.metrics.skipped, source.metrics.input.dropped), (1000, 0, 0));
    assert_eq!(report.failures().count(), 0, "{report}");
}

#[test]
fn messages_over_the_limits_are_refused_before_decoding() {
    let (session, endpoint) = listening_session();
    let publisher = session.declare_publisher("big/jpeg").congestion_control(CongestionControl::Block).wait().unwrap();
    // 64×48 frames pass; a 640×480 one is over 10,000 pixels; a header claiming 65535×65535
    // (4.3 gigapixels, 12.9 GB of RGB) is refused from its header alone; a message over the
    // byte limit is refused before it is read.
    let limits = FrameLimits { max_message_bytes: 200_000, max_pixels: 10_000 };
    let mut spec = source_spec(&endpoint, "big/jpeg", WireFormat::Jpeg, None);
    spec.limits = limits;
    let (pipeline, collected) = collecting_pipeline(&[("cam", spec)]);
    let jpeg = |w: u32, h: u32| compressed::encode_jpeg(w, h, &vec![90u8; (w * h * 3) as usize], 80).unwrap();
    let small = jpeg(64, 48);
    let mut bomb = small.clone();
    let sof = bomb.windows(2).position(|m| m == [0xff, 0xc0]).unwrap(); // baseline frame header
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]); // height, width
    let heavy: Vec<u8> = small.iter().copied().chain(std::iter::repeat_n(0u8, 300_000)).collect();
    let messages = vec![small.clone(), jpeg(640, 480), bomb.clone(), heavy, small];
    assert!(matches!(
        ocellus_wire::decode_frame_within(
            WireFormat::Jpeg,
            &Bytes::from(bomb),
            Default::default(),
            &FrameLimits::DEFAULT
        ),
        Err(ocellus_wire::CodecError::TooLarge(_))
    ));
    let sender = std::thread::spawn(move || {
        assert!(wait_for_subscriber(&publisher, Duration::from_secs(20)));
        for m in messages {
            publisher.put(m).wait().unwrap();
        }
        publisher
    });
    let report = pipeline.run().unwrap();
    drop(sender.join().unwrap());
    session.close().wait().unwrap();
    let frames = frames_of(&collected[0]);
    assert_eq!(frames.len(), 2, "{report}");
    assert!(frames.iter().all(|f| (f.layout.width, f.layout.height) == (64, 48)));
    let cam = report.node("cam").unwrap().metrics;
    assert_eq!(cam.skipped, 3, "{report}");
}

#[test]
fn malformed_messages_are_counted_and_skipped() {
    let (session, endpoint) = listening_session();
    let raw_pub = session.declare_publisher("bad/raw").congestion_control(CongestionControl::Block).wait().unwrap();
    let ros_pub = session.declare_publisher("bad/ros").congestion_control(CongestionControl::Block).wait().unwrap();
    let (pipeline, collected) = collecting_pipeline(&[
        ("raw", source_spec(&endpoint, "bad/raw", WireFormat::Raw, None)),
        ("ros", source_spec(&endpoint, "bad/ros", WireFormat::Ros2Image, None)),
    ]);

    let good = encode_raw(&test_frame(1));
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    let mut wrong_size = good.clone();
    wrong_size[12..16].copy_from_slice(&4000u32.to_le_bytes()); // wider than the pixels sent
    let mut wrong_format = good.clone();
    wrong_format[8] = 42;
    let raw_messages: Vec<Vec<u8>> = vec![
        good.clone(),
        good[..good.len() / 2].to_vec(), // truncated pixels
        good[..20].to_vec(),             // truncated header
        wrong_magic,
        wrong_size,
        wrong_format,
        Vec::new(),
        good.clone(),
    ];

    let image = |encoding: &str, step: u32, len: usize| {
        let data = vec![5u8; len];
        ros2::to_cdr(&ros2::Image {
            header: ros2::Header::default(),
            height: 4,
            width: 6,
            encoding: encoding.into(),
            is_bigendian: 0,
            step,
            data: &data,
        })
        .unwrap()
    };
    let good_ros = image("rgb8", 18, 72);
    let mut bad_encapsulation = good_ros.clone();
    bad_encapsulation[1] = 7;
    let ros_messages: Vec<Vec<u8>> = vec![
        good_ros.clone(),
        image("16UC1", 12, 48),                   // wrong encoding
        image("yuv422_yuy2", 12, 48),             // wrong encoding
        image("rgb8", 10, 72),                    // step shorter than a row
        image("rgb8", 18, 71),                    // data shorter than step * height
        good_ros[..good_ros.len() - 40].to_vec(), // truncated CDR
        b"\x00\x01\x00\x00garbage".to_vec(),      // malformed CDR
        bad_encapsulation,
        vec![0, 1],
        good_ros,
    ];
    let sender = std::thread::spawn(move || {
        for (publisher, messages) in [(&raw_pub, &raw_messages), (&ros_pub, &ros_messages)] {
            assert!(wait_for_subscriber(publisher, Duration::from_secs(20)));
            for m in messages {
                publisher.put(m.clone()).wait().unwrap();
            }
        }
        (raw_pub, ros_pub)
    });
    let report = pipeline.run().unwrap();
    drop(sender.join().unwrap());
    session.close().wait().unwrap();

    for (name, c, good, bad) in [("raw", &collected[0], 2, 6), ("ros", &collected[1], 2, 8)] {
        let m = report.node(name).unwrap().metrics;
        assert_eq!((m.emitted, m.skipped), (good, bad), "{name}: {report}");
        assert_eq!(frames_of(c).len() as u64, good);
    }
    assert_eq!(report.failures().count(), 0, "{report}");
}

// --- ROS 2 --------------------------------------------------------------------------------

const ROSBAGS: &str = r#"
import json, sys
import numpy as np
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys import get_types_from_msg
ts = get_typestore(Stores.ROS2_JAZZY)
# vision_msgs 4.1.1 (ros-perception/vision_msgs, ros2 branch): not in rosbags' stores.
VISION = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Detection2D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n",
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
}
types = {}
for name, text in VISION.items():
    types.update(get_types_from_msg(text, name))
ts.register(types)
T = ts.types
mode = sys.argv[1]
if mode == "hashes":
    names = ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/String",
             "geometry_msgs/msg/PoseArray", "vision_msgs/msg/Detection2DArray"]
    print(json.dumps({n: ts.hash_rihs01(n) for n in names}))
elif mode == "image":
    w, h, step = 6, 4, 20
    data = np.array([(i * 13) % 256 for i in range(step * h)], dtype=np.uint8)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1700000000, nanosec=123456789), frame_id="cam_optical")
    msg = T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="bgr8", is_bigendian=0, step=step, data=data)
    sys.stdout.write(bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image")).hex())
elif mode == "compressed":
    data = np.frombuffer(bytes.fromhex(sys.stdin.read().strip()), dtype=np.uint8)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="c")
    msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="rgb8; png compressed rgb8", data=data)
    sys.stdout.write(bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")).hex())
elif mode == "decode":
    out = []
    for line in sys.stdin.read().split():
        typename, payload = line.split(":")
        m = ts.deserialize_cdr(bytes.fromhex(payload), typename)
        if typename == "std_msgs/msg/String":
            out.append({"data": m.data})
        elif typename == "vision_msgs/msg/Detection2DArray":
            out.append({"sec": m.header.stamp.sec, "nanosec": m.header.stamp.nanosec, "frame_id": m.header.frame_id,
                        "detections": [{"id": d.id, "frame_id": d.header.frame_id,
                                        "results": [[r.hypothesis.class_id, r.hypothesis.score,
                                                     r.pose.pose.orientation.w, float(sum(r.pose.covariance))]
                                                    for r in d.results],
                                        "bbox": [d.bbox.center.position.x, d.bbox.center.position.y,
                                                 d.bbox.center.theta, d.bbox.size_x, d.bbox.size_y]}
                                       for d in m.detections]})
        elif typename == "geometry_msgs/msg/PoseArray":
            out.append({"sec": m.header.stamp.sec, "nanosec": m.header.stamp.nanosec, "frame_id": m.header.frame_id,
                        "poses": [[p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y,
                                   p.orientation.z, p.orientation.w] for p in m.poses]})
        else:
            out.append({"sec": m.header.stamp.sec, "nanosec": m.header.stamp.nanosec, "frame_id": m.header.frame_id,
                        "height": m.height, "width": m.width, "encoding": m.encoding, "step": m.step,
                        "data": bytes(m.data).hex()})
    print(json.dumps(out))
"#;

/// Runs the rosbags helper in the bootstrap venv.
fn rosbags(mode: &str, stdin: &str) -> String {
    let python = ocellus_perception::weights::venv_python().expect("no venv Python: run scripts/bootstrap");
    let mut child = Command::new(python)
        .args(["-c", ROSBAGS, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rosbags helper failed (scripts/bootstrap installs rosbags): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A zenoh sink as the ROS 2 node `/ocellus/ocellus` on domain 0, connecting to `endpoint`.
fn ros2_sink(endpoint: &str, frames: bool) -> ZenohSinkSpec {
    ZenohSinkSpec {
        session: SessionSpec::loopback(&[], &[endpoint]),
        keys: KeyStyle::Ros2 {
            domain: 0,
            namespace: "/ocellus".into(),
            node: "ocellus".into(),
            hashes: TypeHashes::Rihs01,
        },
        frames,
        block_on_congestion: true,
        shm_pool_bytes: None,
        qos: ros2::Qos::default(),
        frame_ids: Default::default(),
    }
}

/// Every liveliness token declared under `prefix`, as seen by `session` (while the handle lives).
fn liveliness_tokens(
    session: &zenoh::Session,
    prefix: &str,
) -> (zenoh::pubsub::Subscriber<()>, Arc<Mutex<Vec<String>>>) {
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = tokens.clone();
    let subscriber = session
        .liveliness()
        .declare_subscriber(prefix.to_owned())
        .callback(move |s| seen.lock().push(s.key_expr().to_string()))
        .wait()
        .unwrap();
    (subscriber, tokens)
}

/// A message as received: its key, payload and attachment.
type Received = (String, Vec<u8>, Option<Vec<u8>>);

/// Every message on `key` seen by `session` (while the handle lives).
fn messages(session: &zenoh::Session, key: &str) -> (zenoh::pubsub::Subscriber<()>, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    let sink = received.clone();
    let subscriber = session
        .declare_subscriber(key.to_owned())
        .callback(move |s| {
            let attachment = s.attachment().map(|a| a.to_bytes().into_owned());
            sink.lock().push((s.key_expr().to_string(), payload_bytes(s.payload()).to_vec(), attachment));
        })
        .wait()
        .unwrap();
    (subscriber, received)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.trim().len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn type_hashes_match_rosbags() {
    let hashes: serde_json::Value = serde_json::from_str(&rosbags("hashes", "")).unwrap();
    assert_eq!(hashes["sensor_msgs/msg/Image"], MsgType::Image.rihs01());
    assert_eq!(hashes["sensor_msgs/msg/CompressedImage"], MsgType::CompressedImage.rihs01());
    assert_eq!(hashes["std_msgs/msg/String"], MsgType::String.rihs01());
    assert_eq!(hashes["geometry_msgs/msg/PoseArray"], MsgType::PoseArray.rihs01());
    assert_eq!(hashes["vision_msgs/msg/Detection2DArray"], MsgType::Detection2DArray.rihs01());
}

/// Scripted tracks on an 8×6 frame: track 1 (a labelled person, pixels of the box
/// [1, 1, 4, 3)), track 300 (unlabelled, box [5, 2, 8, 6)), track 7 occluded.
struct ScriptedTracks;

impl ocellus_runtime::Stage for ScriptedTracks {
    fn process(
        &mut self,
        input: ocellus_runtime::Input,
        ctx: &mut ocellus_runtime::Context,
    ) -> ocellus_runtime::Result<()> {
        use ocellus_kernels::masks::PixelBox;
        use ocellus_runtime::{Track, TrackLabel, Tracks};
        let Packet::Frame(f) = input.packet else { return Ok(()) };
        let (w, h) = (8u32, 6u32);
        let boxes = [(1u16, PixelBox { x0: 1, y0: 1, x1: 4, y1: 3 }), (300, PixelBox { x0: 5, y0: 2, x1: 8, y1: 6 })];
        let mut labels = vec![0u16; (w * h) as usize];
        for (id, b) in boxes {
            for y in b.y0..b.y1 {
                for x in b.x0..b.x1 {
                    labels[(y * w + x) as usize] = id;
                }
            }
        }
        let track = |id: u32, bbox: Option<PixelBox>, score: f32, label: Option<&str>, occluded: bool| Track {
            id,
            bbox,
            score,
            occluded,
            area: bbox.map_or(0, |b| u64::from((b.x1 - b.x0) * (b.y1 - b.y0))),
            label: label.map(|l| TrackLabel { name: l.into(), score: 0.75 }),
            origin: None,
        };
        let tracks = vec![
            track(1, Some(boxes[0].1), 0.9, Some("person"), false),
            track(300, Some(boxes[1].1), 0.625, None, false),
            track(7, None, 0.1, None, true),
        ];
        let labels = Bytes::from(labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        ctx.emit(Packet::Tracks(Tracks { meta: f.meta, width: w, height: h, labels, tracks }));
        Ok(())
    }
}

/// Tracks as a ROS 2 node publishes them: `vision_msgs/Detection2DArray` on
/// `<camera>/detections` and a `mono8` `sensor_msgs/Image` on `<camera>/masks` (the value of a
/// pixel: its track's index among the detections plus one), both read back by rosbags, with
/// the frame id the configuration sets; QoS (best effort, depth 3) in the publishers' tokens.
#[test]
fn tracks_go_out_as_detection_arrays_and_mono8_masks() {
    let (session, endpoint) = ocellus_tests::listening_session();
    let (_liveliness, tokens) = liveliness_tokens(&session, "@ros2_lv/0/**");
    let (_data, received) = messages(&session, "0/ocellus/**");
    let spec = Arc::new(ZenohSinkSpec {
        qos: ros2::Qos { best_effort: true, depth: 3 },
        frame_ids: ocellus_io::sink::zenoh::FrameIds {
            all: None,
            by_camera: [("cam".to_owned(), "cam_optical".to_owned())].into(),
        },
        ..ros2_sink(&endpoint, false)
    });
    let source = SyntheticSpec { width: 8, height: 6, frames: 30, fps: Some(30.0) };
    let mut p = Pipeline::new();
    p.source("cam", source_factory(move || SyntheticSource::new(source)))
        .actor(
            "tracks",
            &["cam"],
            EdgePolicy::Block { depth: 4 },
            ocellus_runtime::PortType::Tracks,
            stage_factory(|| ScriptedTracks),
        )
        .stage(
            "ros",
            &["tracks"],
            EdgePolicy::Block { depth: 8 },
            stage_factory(move || ZenohSink::new("ros", spec.clone())),
        );
    let report = p.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    std::thread::sleep(Duration::from_millis(300));

    let tokens = tokens.lock().clone();
    let detections_token = format!(
        "/MP/%/%ocellus/ocellus/%ocellus%cam%detections/vision_msgs::msg::dds_::Detection2DArray_/{}/2::,3:,:,:,,",
        MsgType::Detection2DArray.rihs01()
    );
    assert!(tokens.iter().any(|t| t.contains(&detections_token)), "{tokens:?}");
    let received = received.lock().clone();
    let key = |topic: &str, ty| ros2::rmw_zenoh_key(0, topic, ty, Some(TypeHashes::Rihs01));
    let detections_key = key("/ocellus/cam/detections", MsgType::Detection2DArray);
    let masks_key = key("/ocellus/cam/masks", MsgType::Image);
    let (_, detections, _) = received.iter().find(|(k, _, _)| *k == detections_key).expect("detections");
    let (_, mask, _) = received.iter().find(|(k, _, _)| *k == masks_key).expect("masks");
    let decoded: serde_json::Value = serde_json::from_str(&rosbags(
        "decode",
        &format!("vision_msgs/msg/Detection2DArray:{} sensor_msgs/msg/Image:{}", hex(detections), hex(mask)),
    ))
    .unwrap();
    let d = &decoded[0];
    assert_eq!(d["frame_id"], "cam_optical");
    assert_eq!(
        d["detections"],
        serde_json::json!([
            {"id": "1", "frame_id": "cam_optical", "results": [["person", 0.75, 1.0, 0.0]], "bbox": [2.5, 2.0, 0.0, 3.0, 2.0]},
            {"id": "300", "frame_id": "cam_optical", "results": [["", 0.625, 1.0, 0.0]], "bbox": [6.5, 4.0, 0.0, 3.0, 4.0]},
        ])
    );
    let m = &decoded[1];
    assert_eq!(
        (m["frame_id"].as_str(), m["encoding"].as_str(), m["width"].as_u64(), m["height"].as_u64(), m["step"].as_u64()),
        (Some("cam_optical"), Some("mono8"), Some(8), Some(6), Some(8))
    );
    let pixels = unhex(m["data"].as_str().unwrap());
    let expected: Vec<u8> = (0..48)
        .map(|i| {
            let (x, y) = (i % 8, i / 8);
            if (1..4).contains(&x) && (1..3).contains(&y) {
                1
            } else if (5..8).contains(&x) && (2..6).contains(&y) {
                2
            } else {
                0
            }
        })
        .collect();
    assert_eq!(pixels, expected);
    drop((_liveliness, _data));
    session.close().wait().unwrap();
}

/// One `[zenoh.robot]` session shared by a ROS 2 source and two ROS 2 sinks (one zenoh
/// session id behind all three nodes); the camera's own `header.frame_id` is kept on what is
/// published about its frames unless the configuration sets one; the source's QoS (best
/// effort, depth 5) is in its subscription's token.
#[test]
fn one_shared_session_keeps_the_cameras_frame_id_and_declares_qos() {
    let (session, endpoint) = ocellus_tests::listening_session();
    let (_liveliness, tokens) = liveliness_tokens(&session, "@ros2_lv/0/**");
    let (_data, received) = messages(&session, "0/**");
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "ros2_shared_session");
    let config = ocellus_tests::config_file(
        &dir,
        "shared.toml",
        &format!(
            r#"
[zenoh.robot]
connect = ["{endpoint}"]
multicast_scouting = false

[[source]]
name = "cam"
zenoh = {{ topic = "/robot/camera/image_raw", encoding = "ros2/sensor_msgs/Image", session = "robot", frames = 3, idle_timeout = "10s", qos = {{ reliability = "best_effort", depth = 5 }} }}

[[sink]]
name = "kept"
kind = "zenoh"
keys = "ros2"
namespace = "/out_kept"
frames = true
session = "robot"
inputs = ["cam"]
edge = {{ policy = "block", depth = 8 }}

[[sink]]
name = "set"
kind = "zenoh"
keys = "ros2"
namespace = "/out_set"
frames = true
frame_id = "base_camera"
session = "robot"
inputs = ["cam"]
edge = {{ policy = "block", depth = 8 }}
"#
        ),
    );
    let pipeline = ocellus_pipelines::build(&config).unwrap();
    let running = std::thread::spawn(move || pipeline.run().unwrap());
    let topic = ros2::rmw_zenoh_key(0, "/robot/camera/image_raw", MsgType::Image, Some(TypeHashes::Rihs01));
    let publisher = session.declare_publisher(topic).wait().unwrap();
    assert!(wait_for_subscriber(&publisher, Duration::from_secs(20)));
    // The sinks declare their publishers on their first message: give them a moment to be
    // matched by the test's subscriber before the frames that matter.
    let l = FrameLayout::packed(PixelFormat::Rgb, 4, 2);
    for i in 0..3u8 {
        let cdr = ros2::encode_image(&l, &[i; 24], 1_000_000_000 + i64::from(i), "camera_optical").unwrap();
        publisher.put(cdr).wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = running.join().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    std::thread::sleep(Duration::from_millis(300));
    let received = received.lock().clone();
    let frame_ids = |ns: &str| -> Vec<String> {
        let key = ros2::rmw_zenoh_key(0, &format!("/{ns}/cam/image"), MsgType::Image, Some(TypeHashes::Rihs01));
        received
            .iter()
            .filter(|(k, _, _)| *k == key)
            .map(|(_, p, _)| ros2::decode_image(&Bytes::from(p.clone())).unwrap().frame_id)
            .collect()
    };
    let (kept, set) = (frame_ids("out_kept"), frame_ids("out_set"));
    assert!(!kept.is_empty() && kept.iter().all(|f| f == "camera_optical"), "{kept:?}");
    assert!(!set.is_empty() && set.iter().all(|f| f == "base_camera"), "{set:?}");
    let tokens = tokens.lock().clone();
    // @ros2_lv/<domain>/<zid>/<node id>/<entity id>/<kind>/...: one zid for the three nodes.
    let zids: std::collections::BTreeSet<&str> =
        tokens.iter().filter(|t| t.contains("/NN/")).filter_map(|t| t.split('/').nth(2)).collect();
    let nodes = tokens.iter().filter(|t| t.contains("/NN/")).count();
    assert!(nodes >= 3 && zids.len() == 1, "{nodes} nodes over sessions {zids:?}: {tokens:?}");
    let subscription = format!(
        "/MS/%/%/ocellus/%robot%camera%image_raw/sensor_msgs::msg::dds_::Image_/{}/2::,5:,:,:,,",
        MsgType::Image.rihs01()
    );
    assert!(tokens.iter().any(|t| t.contains(&subscription)), "{tokens:?}");
    drop((_liveliness, _data));
    session.close().wait().unwrap();
}

/// People's root poses as `geometry_msgs/PoseArray`, read back by an independent decoder.
#[test]
fn pose_arrays_decode_with_rosbags() {
    let poses = [([0.1, -0.2, 3.5], [0.0, 0.0, 0.0, 1.0]), ([1.0, 2.0, 9.0], [0.5, 0.5, 0.5, 0.5])];
    let cdr = ros2::encode_pose_array(1_700_000_000_123_456_789, "front", &poses).unwrap();
    let decoded: serde_json::Value =
        serde_json::from_str(&rosbags("decode", &format!("geometry_msgs/msg/PoseArray:{}", hex(&cdr)))).unwrap();
    assert_eq!(decoded[0]["sec"], 1_700_000_000);
    assert_eq!(decoded[0]["nanosec"], 123_456_789);
    assert_eq!(decoded[0]["frame_id"], "front");
    let expected: Vec<Vec<f64>> = poses.iter().map(|(p, q)| p.iter().chain(q).copied().collect()).collect();
    assert_eq!(decoded[0]["poses"], serde_json::json!(expected));
}

#[test]
fn ros2_image_from_an_independent_encoder_arrives_as_the_right_frame() {
    let image_cdr = unhex(&rosbags("image", ""));
    let png = compressed::encode_rgb(compressed::Kind::Png, 5, 3, &(0..45u8).collect::<Vec<_>>()).unwrap();
    let compressed_cdr = unhex(&rosbags("compressed", &hex(&png)));

    let (session, endpoint) = listening_session();
    // What a Jazzy publisher of /camera/image_raw writes: the full key with the type hash,
    // the 33-byte attachment. Ours subscribes with the wildcard hash.
    let key = ros2::rmw_zenoh_key(0, "/camera/image_raw", MsgType::Image, Some(TypeHashes::Rihs01));
    let ckey = ros2::rmw_zenoh_key(
        0,
        "/camera/image_raw/compressed",
        MsgType::CompressedImage,
        Some(TypeHashes::NotSupported),
    );
    let image_pub = session.declare_publisher(key).congestion_control(CongestionControl::Block).wait().unwrap();
    let compressed_pub = session.declare_publisher(ckey).congestion_control(CongestionControl::Block).wait().unwrap();
    let wildcard = |topic: &str, ty| ros2::rmw_zenoh_key(0, topic, ty, None);
    let (pipeline, collected) = collecting_pipeline(&[
        (
            "image",
            source_spec(&endpoint, &wildcard("/camera/image_raw", MsgType::Image), WireFormat::Ros2Image, Some(1)),
        ),
        (
            "compressed",
            source_spec(
                &endpoint,
                &wildcard("/camera/image_raw/compressed", MsgType::CompressedImage),
                WireFormat::Ros2CompressedImage,
                Some(1),
            ),
        ),
    ]);
    let sender = std::thread::spawn(move || {
        let attachment = Attachment { sequence_number: 1, source_timestamp: 42, source_gid: [9; 16] };
        assert!(wait_for_subscriber(&image_pub, Duration::from_secs(20)));
        image_pub.put(image_cdr.clone()).attachment(attachment.encode().to_vec()).wait().unwrap();
        assert!(wait_for_subscriber(&compressed_pub, Duration::from_secs(20)));
        compressed_pub.put(compressed_cdr).attachment(attachment.encode_keyed()).wait().unwrap();
        (image_pub, compressed_pub, image_cdr)
    });
    let report = pipeline.run().unwrap();
    let (_, _, image_cdr) = sender.join().unwrap();
    session.close().wait().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");

    let frames = frames_of(&collected[0]);
    assert_eq!(frames.len(), 1, "{report}");
    let f = &frames[0];
    assert_eq!((f.layout.format, f.layout.width, f.layout.height, f.layout.strides[0]), (PixelFormat::Bgr, 6, 4, 20));
    assert_eq!(f.meta.capture_ns, 1_700_000_000_123_456_789);
    let want: Vec<u8> = (0..80u32).map(|i| (i * 13 % 256) as u8).collect();
    assert_eq!(&f.pixels[..], &want[..]);
    let frames = frames_of(&collected[1]);
    assert_eq!(frames.len(), 1, "{report}");
    assert_eq!((frames[0].layout.width, frames[0].layout.height), (5, 3));
    assert_eq!(&frames[0].pixels[..], &(0..45u8).collect::<Vec<_>>()[..]);
    assert_eq!(frames[0].meta.capture_ns, 3_000_000_004);

    // And what ours encodes, rosbags decodes: the frame back, and a string.
    let ours = ros2::encode_image(&f.layout, &f.pixels, f.meta.capture_ns, "cam_optical").unwrap();
    let text = "{\"type\":\"caption\",\"text\":\"ü\"}";
    let lines = format!(
        "sensor_msgs/msg/Image:{} std_msgs/msg/String:{}",
        hex(&ours),
        hex(&ros2::encode_string(text).unwrap())
    );
    let decoded: serde_json::Value = serde_json::from_str(&rosbags("decode", &lines)).unwrap();
    let packed: Vec<u8> = (0..4).flat_map(|r| want[r * 20..r * 20 + 18].to_vec()).collect();
    assert_eq!(
        decoded[0],
        serde_json::json!({"sec": 1700000000, "nanosec": 123456789, "frame_id": "cam_optical", "height": 4,
                           "width": 6, "encoding": "bgr8", "step": 18, "data": hex(&packed)})
    );
    assert_eq!(decoded[1]["data"], text);
    // The rosbags payload decodes with ours directly too.
    let d = ros2::decode_image(&Bytes::from(image_cdr)).unwrap();
    assert_eq!((d.frame_id.as_str(), d.layout.strides[0]), ("cam_optical", 20));
}

#[test]
fn zenoh_sink_publishes_frames_and_observations_as_a_ros2_node() {
    let (session, endpoint) = listening_session();
    let (_liveliness, tokens) = liveliness_tokens(&session, "@ros2_lv/0/**");
    let (_data, received) = messages(&session, "0/ocellus/**");

    let spec = ros2_sink(&endpoint, true);
    let spec = Arc::new(spec);
    let source = SyntheticSpec { width: 8, height: 6, frames: 40, fps: Some(40.0) };
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_millis(200))
        .source("cam", source_factory(move || SyntheticSource::new(source)))
        .stage(
            "ros",
            &["cam"],
            EdgePolicy::Block { depth: 8 },
            stage_factory(move || ZenohSink::new("ros", spec.clone())),
        )
        .metrics_to("ros");
    let report = p.run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    std::thread::sleep(Duration::from_millis(300));

    let tokens = tokens.lock().clone();
    assert!(tokens.iter().any(|t| t.contains("/NN/%/%ocellus/ocellus")), "{tokens:?}");
    let image_token = format!(
        "/MP/%/%ocellus/ocellus/%ocellus%cam%image/sensor_msgs::msg::dds_::Image_/{}/",
        MsgType::Image.rihs01()
    );
    assert!(tokens.iter().any(|t| t.contains(&image_token)), "{tokens:?}");
    assert!(tokens.iter().any(|t| t.contains("%ocellus%metrics%cam/std_msgs::msg::dds_::String_/")), "{tokens:?}");

    let received = received.lock().clone();
    let image_key = ros2::rmw_zenoh_key(0, "/ocellus/cam/image", MsgType::Image, Some(TypeHashes::Rihs01));
    let images: Vec<_> = received.iter().filter(|(k, _, _)| *k == image_key).collect();
    // Frames published before the subscriber was matched may be lost; the rest arrive in order.
    assert!(images.len() >= 30, "{} images of 40", images.len());
    let mut last_seq = 0;
    for (_, payload, attachment) in &images {
        let d = ros2::decode_image(&Bytes::from(payload.clone())).unwrap();
        assert_eq!((d.layout.width, d.layout.height, d.layout.format), (8, 6, PixelFormat::Rgb));
        let a = Attachment::decode(attachment.as_deref().unwrap()).unwrap();
        assert!(a.sequence_number > last_seq);
        last_seq = a.sequence_number;
    }
    // Metrics: a std_msgs/String holding JSON, read back by rosbags.
    let (_, payload, _) = received.iter().find(|(k, _, _)| k.starts_with("0/ocellus/metrics/cam/")).expect("metrics");
    let decoded: serde_json::Value =
        serde_json::from_str(&rosbags("decode", &format!("std_msgs/msg/String:{}", hex(payload)))).unwrap();
    let json: serde_json::Value = serde_json::from_str(decoded[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!((json["type"].as_str(), json["stage"].as_str()), (Some("metrics"), Some("cam")));
    drop((_liveliness, _data));
    session.close().wait().unwrap();
}

#[test]
fn zenoh_sink_to_zenoh_source_between_two_pipelines() {
    let endpoint = free_endpoint();
    // The receiving pipeline listens; the sending one connects to it.
    let mut receiver = source_spec(&endpoint, "ocellus/cam/frames", WireFormat::Raw, Some(30));
    receiver.session = SessionSpec::loopback(&[&endpoint], &[]);
    let (pipeline, collected) = collecting_pipeline(&[("cam", receiver)]);
    let receiving = std::thread::spawn(move || pipeline.run().unwrap());
    std::thread::sleep(Duration::from_millis(500));

    let spec = ZenohSinkSpec {
        session: SessionSpec::loopback(&[], &[&endpoint]),
        keys: KeyStyle::Zenoh { prefix: "ocellus".into() },
        frames: true,
        block_on_congestion: true,
        shm_pool_bytes: Some(8 << 20),
        qos: ros2::Qos::default(),
        frame_ids: Default::default(),
    };
    let spec = Arc::new(spec);
    let source = SyntheticSpec { width: 64, height: 48, frames: 300, fps: Some(100.0) };
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_secs(3600))
        .source("cam", source_factory(move || SyntheticSource::new(source)))
        .stage(
            "out",
            &["cam"],
            EdgePolicy::Block { depth: 8 },
            stage_factory(move || ZenohSink::new("out", spec.clone())),
        );
    let sent: PipelineReport = p.run().unwrap();
    let report = receiving.join().unwrap();
    assert_eq!(sent.failures().count() + report.failures().count(), 0, "{sent}\n{report}");
    let frames = frames_of(&collected[0]);
    assert_eq!(frames.len(), 30, "{report}");
    let pattern: Vec<u8> = (0..64 * 48 * 3).map(|i| (i % 251) as u8).collect();
    for w in frames.windows(2) {
        assert_eq!(w[1].meta.seq, w[0].meta.seq + 1);
    }
    for f in &frames {
        assert_eq!((f.layout.width, f.layout.height, &f.pixels[..]), (64, 48, &pattern[..]));
    }
}

/// A source on a ROS 2 topic appears in the ROS 2 graph as other nodes expect: the node and
/// its subscription as rmw_zenoh liveliness tokens (what `ros2 topic info` lists, and what
/// publishers that wait for subscribers watch), on the configured domain.
#[test]
fn a_ros2_source_declares_its_node_and_subscription() {
    let (session, endpoint) = listening_session();
    let (_liveliness, tokens) = liveliness_tokens(&session, "@ros2_lv/7/**");
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "ros2_source_tokens");
    let config = ocellus_tests::config_file(
        &dir,
        "ros2.toml",
        &format!(
            "[[source]]\nname = \"cam\"\nzenoh = {{ topic = \"/robot/camera/image_raw\", domain = 7, node = \"eyes\", \
             encoding = \"ros2/sensor_msgs/Image\", connect = [\"{endpoint}\"], multicast_scouting = false, idle_timeout = \"2s\" }}\n\
             [[sink]]\nkind = \"null\"\ninputs = [\"cam\"]\n"
        ),
    );
    let report = ocellus_pipelines::build(&config).unwrap().run().unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    let tokens = tokens.lock().clone();
    assert!(tokens.iter().any(|t| t.contains("/NN/%/%/eyes")), "{tokens:?}");
    let subscription =
        format!("/MS/%/%/eyes/%robot%camera%image_raw/sensor_msgs::msg::dds_::Image_/{}/", MsgType::Image.rihs01());
    assert!(tokens.iter().any(|t| t.contains(&subscription)), "{tokens:?}");
    drop(_liveliness);
    session.close().wait().unwrap();
}

/// Operator instructions on a ROS 2 topic (`std_msgs/String` over rmw_zenoh, as
/// `ros2 topic pub /ocellus/instructions std_msgs/msg/String` sends them) and plain UTF-8 on
/// a zenoh key both reach the agent's inbox as text.
#[test]
fn operator_instructions_arrive_from_a_ros2_topic() {
    use ocellus_agent::inbox::{Inbox, InboxSpec, subscribe};
    let (session, endpoint) = listening_session();
    let ros_key = ros2::rmw_zenoh_key(0, "/ocellus/instructions", MsgType::String, Some(TypeHashes::Rihs01));
    let wildcard = ros2::rmw_zenoh_key(0, "/ocellus/instructions", MsgType::String, None);
    let inbox = Inbox::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spec = InboxSpec {
        session: SessionSpec::loopback(&[], &[&endpoint]),
        operator_key: Some(wildcard),
        alt_text_key: Some("robot/alt".into()),
    };
    let host = subscribe(spec, inbox.clone(), stop.clone()).unwrap();
    let publisher = session.declare_publisher(ros_key).wait().unwrap();
    assert!(wait_for_subscriber(&publisher, Duration::from_secs(20)));
    let alt = session.declare_publisher("robot/alt").wait().unwrap();
    assert!(wait_for_subscriber(&alt, Duration::from_secs(20)));
    publisher.put(ros2::encode_string("track the red cup").unwrap()).wait().unwrap();
    alt.put("front: a kitchen").wait().unwrap();
    let meta = FrameMeta { camera: "front".into(), seq: 0, capture_ns: 0, frame_id: None };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 2 && std::time::Instant::now() < deadline {
        got.extend(inbox.take(&meta));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    host.join().unwrap();
    session.close().wait().unwrap();
    assert!(
        got.contains(&ocellus_runtime::message::InboxMessage::Operator { text: "track the red cup".into() }),
        "{got:?}"
    );
    assert!(
        got.contains(&ocellus_runtime::message::InboxMessage::AltText {
            camera: Some("front".into()),
            text: "a kitchen".into()
        }),
        "{got:?}"
    );
}

/// A zenoh router between two Ocellus pipelines is killed mid-stream and started again on
/// the same endpoint: both pipelines keep running (no failure, no hang), the clients
/// reconnect by themselves, and frames flow again after the restart; what was sent while the
/// router was down is gone (best effort), nothing else.
#[test]
fn a_router_restarted_between_two_pipelines_is_rejoined() {
    let endpoint = free_endpoint();
    let router_config = || {
        let mut c = zenoh::Config::default();
        c.insert_json5("mode", r#""router""#).unwrap();
        c.insert_json5("listen/endpoints", &format!("[{endpoint:?}]")).unwrap();
        c.insert_json5("scouting/multicast/enabled", "false").unwrap();
        c
    };
    let router = zenoh::open(router_config()).wait().unwrap();
    let client = |listen: &[&str]| SessionSpec {
        mode: Some(ocellus_io::session::SessionMode::Client),
        ..SessionSpec::loopback(listen, &[&endpoint])
    };

    let mut receiver = source_spec(&endpoint, "ocellus/cam/frames", WireFormat::Raw, None);
    receiver.session = client(&[]);
    // zenoh's clients retry a lost router with a backoff (1, 2, 4, 4 s, ...: `connect/retry`),
    // so they may rejoin up to 4 s after the restart, 7 s after the last frame before the
    // outage: the receiver's idle timeout must outlast that, or it ends its stream first.
    receiver.idle_timeout = Some(Duration::from_secs(12));
    let (pipeline, collected) = collecting_pipeline(&[("cam", receiver)]);
    let receiving = std::thread::spawn(move || pipeline.run().unwrap());

    let spec = Arc::new(ZenohSinkSpec {
        session: client(&[]),
        keys: KeyStyle::Zenoh { prefix: "ocellus".into() },
        frames: true,
        block_on_congestion: false,
        shm_pool_bytes: None,
        qos: ros2::Qos::default(),
        frame_ids: Default::default(),
    });
    // 16 s of frames at 25 fps; the router is down from 4 s to 7 s.
    let source = SyntheticSpec { width: 64, height: 48, frames: 400, fps: Some(25.0) };
    let mut p = Pipeline::new();
    p.metrics_every(Duration::from_secs(3600))
        .source("cam", source_factory(move || SyntheticSource::new(source)))
        .stage("out", &["cam"], EdgePolicy::Latest, stage_factory(move || ZenohSink::new("out", spec.clone())));
    let sending = std::thread::spawn(move || p.run().unwrap());

    std::thread::sleep(Duration::from_secs(4));
    router.close().wait().unwrap();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let router = zenoh::open(router_config()).wait().unwrap();
    let restarted_after = down.elapsed();
    let sent: PipelineReport = sending.join().unwrap();
    let report = receiving.join().unwrap();
    router.close().wait().unwrap();
    assert_eq!(sent.failures().count() + report.failures().count(), 0, "{sent}\n{report}");
    let seqs: Vec<u64> = frames_of(&collected[0]).iter().map(|f| f.meta.seq).collect();
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let last = seqs.last().copied().unwrap_or(0);
    println!(
        "router down {:.1} s: {} of 400 frames arrived, the longest gap {gap} frames, the last frame {last}",
        restarted_after.as_secs_f64(),
        seqs.len()
    );
    assert!(seqs.first().is_some_and(|s| *s < 100), "frames flowed before the restart: {seqs:?}");
    assert!(gap >= 50, "the outage shows as a gap: {seqs:?}");
    assert!(last >= 390, "frames flow again after the restart: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
}
