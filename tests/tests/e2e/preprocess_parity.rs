//! Preprocessing against the libraries the official pipelines use: Pillow's 8-bit bicubic
//! `Image.resize` (SAM 2's video predictor, open_clip, Hiera) reproduced bit for bit, up and
//! down, at odd sizes (`generate.py`, case `pil_resize`).
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_kernels::resample::{Filter, resize_u8};
use ocellus_tests::{fixture_io, fixtures_dir};

#[test]
fn pillow_bicubic_resize_is_exact() {
    let io = fixture_io("pil_resize");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("pil_resize.json")).unwrap()).unwrap();
    let sizes = meta["sizes"].as_array().unwrap();
    assert!(sizes.len() >= 7);
    for (i, size) in sizes.iter().enumerate() {
        let [w, h, ow, oh] = [0, 1, 2, 3].map(|k| size[k].as_u64().unwrap() as usize);
        let input = Vec::<u8>::try_from(io[&format!("in.{i}")].flatten(0, -1)).unwrap();
        let reference = Vec::<u8>::try_from(io[&format!("out.{i}")].flatten(0, -1)).unwrap();
        let ours = resize_u8(&input, (w, h, 3), (ow, oh), Filter::Bicubic).unwrap();
        let differ = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
        println!("{w}x{h} -> {ow}x{oh}: {differ} of {} values differ", ours.len());
        assert_eq!(ours.len(), reference.len());
        assert_eq!(differ, 0, "{w}x{h} -> {ow}x{oh}");
    }
}
