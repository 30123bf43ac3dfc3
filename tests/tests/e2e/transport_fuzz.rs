//! Fuzzing the transport decoders (proptest, 130k cases in all): any bytes, and valid
//! messages with bytes flipped, cut or appended, give a frame or a typed error, never a
//! panic; what decodes is consistent with its payload.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use bytes::Bytes;
use ocellus_wire::ros2::{self, Attachment, CompressedImage, Header, Image, Time};
use ocellus_wire::{FrameLayout, MessageInfo, PixelFormat, WireFormat, compressed, decode_frame, raw};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

/// Decodes `bytes` as every format: only typed errors or consistent frames.
fn decode_everything(bytes: &[u8]) {
    let payload = Bytes::copy_from_slice(bytes);
    for format in [WireFormat::Raw, WireFormat::Ros2Image, WireFormat::Ros2CompressedImage, WireFormat::Png] {
        if let Ok(frame) = decode_frame(format, &payload, MessageInfo::default()) {
            assert!(frame.layout.validate(frame.pixels.len()).is_ok());
        }
    }
    let _ = Attachment::decode(bytes);
}

/// A valid raw frame.
fn raw_frame(format_code: u8, w: usize, h: usize, pad: usize) -> Vec<u8> {
    let format = [PixelFormat::Rgb, PixelFormat::Bgr, PixelFormat::Gray8, PixelFormat::Nv12][format_code as usize % 4];
    let mut layout = FrameLayout::packed(format, w, h);
    layout.strides[0] += pad;
    if format == PixelFormat::Nv12 {
        layout.strides[1] += pad;
        layout.offsets[1] = layout.strides[0] * h;
    }
    let pixels = vec![7u8; layout.required_len()];
    raw::encode(&layout, &pixels, 1, 2).unwrap()
}

/// A valid `sensor_msgs/Image`.
fn ros_image(encoding: &str, w: u32, h: u32, step: u32, len: usize) -> Vec<u8> {
    let data = vec![3u8; len];
    let image = Image {
        header: Header { stamp: Time { sec: 5, nanosec: 6 }, frame_id: "f".into() },
        height: h,
        width: w,
        encoding: encoding.into(),
        is_bigendian: 0,
        step,
        data: &data,
    };
    ros2::to_cdr(&image).unwrap()
}

/// Flips, cuts or extends `bytes` at `at`.
fn mutate(mut bytes: Vec<u8>, op: u8, at: usize, value: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![value];
    }
    let at = at % bytes.len();
    match op % 4 {
        0 => bytes[at] ^= value | 1,
        1 => bytes.truncate(at),
        2 => bytes.insert(at, value),
        _ => bytes.extend(std::iter::repeat_n(value, at % 64)),
    }
    bytes
}

proptest! {
    #![proptest_config(config(40_000))]
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes);
    }
}

proptest! {
    #![proptest_config(config(30_000))]
    #[test]
    fn mutated_raw_frames(code in 0u8..4, w in 1usize..24, h in 1usize..24, pad in 0usize..5,
                          op in any::<u8>(), at in any::<usize>(), value in any::<u8>()) {
        let valid = raw_frame(code, w, h, pad);
        prop_assert!(raw::decode(&Bytes::from(valid.clone())).is_ok());
        decode_everything(&mutate(valid, op, at, value));
    }
}

proptest! {
    #![proptest_config(config(40_000))]
    #[test]
    fn mutated_ros_images(enc in prop::sample::select(vec!["rgb8", "bgr8", "rgba8", "mono8", "nv12", "16UC1", ""]),
                          w in 0u32..20, h in 0u32..20, step in 0u32..100, len in 0usize..1200,
                          op in any::<u8>(), at in any::<usize>(), value in any::<u8>()) {
        let valid = ros_image(enc, w, h, step, len);
        decode_everything(&valid);
        decode_everything(&mutate(valid, op, at, value));
    }
}

proptest! {
    #![proptest_config(config(10_000))]
    #[test]
    fn mutated_compressed_images(op in any::<u8>(), at in any::<usize>(), value in any::<u8>(), png in any::<bool>()) {
        let (w, h) = (8u32, 6u32);
        let rgb = vec![100u8; (w * h * 3) as usize];
        let kind = if png { compressed::Kind::Png } else { compressed::Kind::Jpeg };
        let data = compressed::encode_rgb(kind, w, h, &rgb).unwrap();
        let format = if png { "png".to_owned() } else { "rgb8; jpeg compressed bgr8".to_owned() };
        let msg = CompressedImage { header: Header::default(), format, data: &data };
        let valid = ros2::to_cdr(&msg).unwrap();
        prop_assert!(ros2::decode_compressed_image(&valid).is_ok());
        decode_everything(&mutate(valid, op, at, value));
        let _ = compressed::decode_rgb(kind, &mutate(data, op, at, value));
    }
}

proptest! {
    #![proptest_config(config(10_000))]
    #[test]
    fn attachments(seq in any::<i64>(), ts in any::<i64>(), gid in any::<[u8; 16]>(),
                   op in any::<u8>(), at in any::<usize>(), value in any::<u8>()) {
        let a = Attachment { sequence_number: seq, source_timestamp: ts, source_gid: gid };
        prop_assert_eq!(Attachment::decode(&a.encode()), Ok(a));
        prop_assert_eq!(Attachment::decode(&a.encode_keyed()), Ok(a));
        let _ = Attachment::decode(&mutate(a.encode_keyed(), op, at, value));
        let _ = Attachment::decode(&mutate(a.encode().to_vec(), op, at, value));
    }
}
