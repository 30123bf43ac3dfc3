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
use std::time::Duration;

use bytes::Bytes;
use ocellus_io::session::{SessionSpec, payload_bytes, wait_for_subscriber};
use ocellus_io::sink::{KeyStyle, ZenohSink, ZenohSinkSpec};
use ocellus_io::source::{SyntheticSource, SyntheticSpec, ZenohSource, ZenohSourceSpec};
use ocellus_runtime::{EdgePolicy, Frame, FrameMeta, Packet, Pipeline, PipelineReport, source_factory, stage_factory};
use ocellus_tests::Collected;
use ocellus_wire::ros2::{self, Attachment, MsgType, TypeHashes};
use ocellus_wire::{FrameLayout, PixelFormat, WireFormat, compressed, raw};
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
    Frame::new(FrameMeta { camera: "cam".into(), seq, capture_ns: 1_000 + seq as i64 }, layout, Bytes::from(pixels))
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
ts = get_typestore(Stores.ROS2_JAZZY)
T = ts.types
mode = sys.argv[1]
if mode == "hashes":
    names = ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/String",
             "geometry_msgs/msg/PoseArray"]
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
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = tokens.clone();
    let _liveliness = session
        .liveliness()
        .declare_subscriber("@ros2_lv/0/**")
        .callback(move |s| seen.lock().push(s.key_expr().to_string()))
        .wait()
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::<(String, Vec<u8>, Option<Vec<u8>>)>::new()));
    let sink_received = received.clone();
    let _data = session
        .declare_subscriber("0/ocellus/**")
        .callback(move |s| {
            let attachment = s.attachment().map(|a| a.to_bytes().into_owned());
            sink_received.lock().push((s.key_expr().to_string(), payload_bytes(s.payload()).to_vec(), attachment));
        })
        .wait()
        .unwrap();

    let spec = ZenohSinkSpec {
        session: SessionSpec::loopback(&[], &[&endpoint]),
        keys: KeyStyle::Ros2 {
            domain: 0,
            namespace: "/ocellus".into(),
            node: "ocellus".into(),
            hashes: TypeHashes::Rihs01,
        },
        frames: true,
        block_on_congestion: true,
        shm_pool_bytes: None,
    };
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
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = tokens.clone();
    let _liveliness = session
        .liveliness()
        .declare_subscriber("@ros2_lv/7/**")
        .callback(move |s| seen.lock().push(s.key_expr().to_string()))
        .wait()
        .unwrap();
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
    let meta = FrameMeta { camera: "front".into(), seq: 0, capture_ns: 0 };
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
