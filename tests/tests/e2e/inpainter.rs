//! The inpainter actor: tracks painted out of frames (DiffMAE or blur), every other pixel the
//! frame's own; which tracks by config ids, by label, or on the agent's request; the output in
//! Rerun at `world/<camera>/inpainted`.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ocellus_kernels::masks::PixelBox;
use ocellus_kernels::{FrameLayout, PixelFormat};
use ocellus_model_actors::inpainter::{InpaintMethod, InpainterCommand, InpainterSpec, InpainterStage};
use ocellus_pipelines::build;
use ocellus_runtime::control::control_channel;
use ocellus_runtime::{
    EdgePolicy, Frame, FrameMeta, Inpainted, Input, Packet, RuntimeError, Stage, Track, TrackLabel, Tracks,
};
use ocellus_tests::{
    Collected, cam_and_tracker_toml, config_file, read_rrd, rerun_sink_toml, scratch_dir, test_context,
};

const W: usize = 64;
const H: usize = 48;

/// Pixels of the label image `labels` (u16 LE) within `dilate` (Chebyshev) of a pixel of `ids`.
fn near(labels: &[u8], w: usize, h: usize, ids: &[u32], dilate: usize) -> Vec<bool> {
    let ids_at: Vec<bool> =
        labels.chunks_exact(2).map(|b| ids.contains(&u32::from(u16::from_le_bytes([b[0], b[1]])))).collect();
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            if ids_at[y * w + x] {
                for yy in y.saturating_sub(dilate)..(y + dilate + 1).min(h) {
                    for xx in x.saturating_sub(dilate)..(x + dilate + 1).min(w) {
                        out[yy * w + xx] = true;
                    }
                }
            }
        }
    }
    out
}

/// Checks `out` against `frame` (both packed RGB): equal wherever `inside` is false; returns
/// how many pixels inside changed.
fn changed_inside(frame: &Frame, out: &Frame, inside: &[bool]) -> usize {
    assert_eq!((out.layout.width, out.layout.height), (frame.layout.width, frame.layout.height));
    let mut changed = 0;
    for (i, (a, b)) in frame.pixels.chunks_exact(3).zip(out.pixels.chunks_exact(3)).enumerate() {
        if inside[i] {
            changed += usize::from(a != b);
        } else {
            assert_eq!(a, b, "pixel {i} outside the removed tracks changed");
        }
    }
    changed
}

fn meta(seq: u64) -> FrameMeta {
    FrameMeta { camera: Arc::from("cam"), seq, capture_ns: seq as i64, frame_id: None }
}

/// A textured RGB frame.
fn frame(seq: u64) -> Frame {
    let pixels: Vec<u8> = (0..W * H * 3).map(|i| ((i * 37 + seq as usize * 11) % 251) as u8).collect();
    Frame::new(meta(seq), FrameLayout::packed(PixelFormat::Rgb, W, H), Bytes::from(pixels)).unwrap()
}

/// Track 3 ("person") is a square at (10..20, 10..20), track 5 ("cup") at (40..50, 20..30),
/// track 8 is occluded.
fn tracks(seq: u64) -> Tracks {
    let mut labels = vec![0u8; 2 * W * H];
    let mut paint = |id: u16, x0: usize, y0: usize| {
        for y in y0..y0 + 10 {
            for x in x0..x0 + 10 {
                labels[2 * (y * W + x)..2 * (y * W + x) + 2].copy_from_slice(&id.to_le_bytes());
            }
        }
    };
    paint(3, 10, 10);
    paint(5, 40, 20);
    let track = |id: u32, label: &str, bbox: Option<PixelBox>| Track {
        id,
        bbox,
        score: if bbox.is_some() { 0.9 } else { 0.1 },
        occluded: bbox.is_none(),
        area: if bbox.is_some() { 100 } else { 0 },
        label: Some(TrackLabel { name: Arc::from(label), score: 0.8 }),
        origin: None,
    };
    Tracks {
        meta: meta(seq),
        width: W as u32,
        height: H as u32,
        labels: Bytes::from(labels),
        tracks: vec![
            track(3, "person", Some(PixelBox { x0: 10, y0: 10, x1: 20, y1: 20 })),
            track(5, "cup", Some(PixelBox { x0: 40, y0: 20, x1: 50, y1: 30 })),
            track(8, "person", None),
        ],
    }
}

/// The index of the inpainter's `tracks` input.
const TRACKS_PORT: usize = 1;

/// Feeds `tracks(seq)` joined with `frame(seq)`, as the runtime does; returns the inpainted
/// frame.
fn step(p: &mut InpainterStage, seq: u64) -> Inpainted {
    let (mut ctx, mut rx) = test_context();
    let input = Input { port: TRACKS_PORT, packet: Packet::Tracks(tracks(seq)), with: Some(Packet::Frame(frame(seq))) };
    p.process(input, &mut ctx).unwrap();
    drop(ctx);
    match rx.pop() {
        Some(Packet::Inpainted(i)) => i,
        other => panic!("expected an inpainted frame, got {other:?}"),
    }
}

#[test]
fn tracks_are_chosen_by_label_by_id_and_on_request() {
    let (tx, rx) = control_channel(4);
    let spec = InpainterSpec {
        name: "inpainter".into(),
        method: InpaintMethod::Blur { radius: 3 },
        device: tch::Device::Cpu,
        tracks: vec![],
        labels: vec!["person".into()],
        dilate: 1,
    };
    let mut p = InpainterStage::new(spec, Some(rx));
    p.start(&mut test_context().0).unwrap();
    let labels = tracks(0).labels;

    // Policy: label "person" → track 3 (track 8 is a person too, but occluded: no mask).
    let out = step(&mut p, 0);
    assert_eq!(out.removed, [3]);
    assert!(changed_inside(&frame(0), &out.frame, &near(&labels, W, H, &[3], 1)) > 50);

    // On request: track 5 too, until restored.
    tx.send(InpainterCommand::Remove { track_id: 5 }).unwrap();
    let out = step(&mut p, 1);
    assert_eq!(out.removed, [3, 5]);
    assert!(changed_inside(&frame(1), &out.frame, &near(&labels, W, H, &[3, 5], 1)) > 100);
    tx.send(InpainterCommand::Restore { track_id: 5 }).unwrap();
    assert_eq!(step(&mut p, 2).removed, [3]);

    // Tracks without their frame are bad input (counted and skipped by the stage).
    let (mut ctx, _rx) = test_context();
    let err =
        p.process(Input { port: TRACKS_PORT, packet: Packet::Tracks(tracks(9)), with: None }, &mut ctx).unwrap_err();
    assert!(matches!(err, RuntimeError::BadInput(_)), "{err}");
}

#[test]
fn nothing_chosen_passes_the_frame_through_unchanged() {
    let spec = InpainterSpec {
        name: "inpainter".into(),
        method: InpaintMethod::Blur { radius: 3 },
        device: tch::Device::Cpu,
        tracks: vec![42],
        labels: vec![],
        dilate: 0,
    };
    let mut p = InpainterStage::new(spec, None);
    p.start(&mut test_context().0).unwrap();
    let out = step(&mut p, 0);
    assert!(out.removed.is_empty());
    assert_eq!(out.frame.pixels, frame(0).pixels);
}

#[test]
fn diffmae_paints_sam2_tracks_out_of_a_pipeline() {
    const FRAMES: usize = 4;
    const DILATE: usize = 2;
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "inpainter_pipeline");
    let rrd = dir.join("inpainted.rrd");
    let tracker = cam_and_tracker_toml(FRAMES, "prompts = [{ box = [120, 80, 200, 160] }]");
    let inpainter = format!(
        r#"
[[actor]]
name = "privacy"
kind = "inpainter"
inputs = {{ frames = "cam", tracks = "tracker" }}
edge = {{ policy = "block", depth = 16 }}
method = "diffmae"
model = "diffmae_vit_base_patch16"
allow_random_weights = true
steps = 2
tracks = [1]
dilate = {DILATE}
"#
    );
    let sink = rerun_sink_toml(&["cam", "tracker", "privacy"], &rrd);
    let config = config_file(&dir, "inpainter.toml", &format!("{tracker}{inpainter}\n{sink}"));
    let mut pipeline = build(&config).unwrap();
    let collected = Collected::default();
    let sink = collected.clone();
    pipeline.stage("collect", &["cam", "tracker", "privacy"], EdgePolicy::Block { depth: 64 }, sink.factory());
    let report = pipeline.run().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");

    let mut frames = BTreeMap::new();
    let mut tracks = BTreeMap::new();
    let mut inpainted = BTreeMap::new();
    for (packet, _) in collected.take() {
        match packet {
            Packet::Frame(f) => {
                frames.insert(f.meta.seq, f);
            }
            Packet::Tracks(t) => {
                tracks.insert(t.meta.seq, t);
            }
            Packet::Inpainted(i) => {
                inpainted.insert(i.frame.meta.seq, i);
            }
            _ => {}
        }
    }
    assert_eq!(inpainted.len(), FRAMES, "one inpainted frame per frame");
    let mut painted = 0;
    for (seq, out) in &inpainted {
        let (frame, t) = (&frames[seq], &tracks[seq]);
        let visible = t.tracks.iter().any(|tr| tr.id == 1 && !tr.occluded && tr.area > 0);
        assert_eq!(out.removed, if visible { vec![1] } else { vec![] }, "frame {seq}");
        let (w, h) = (t.width as usize, t.height as usize);
        let inside = near(&t.labels, w, h, &[1], DILATE);
        let changed = changed_inside(frame, &out.frame, &inside);
        if visible {
            assert!(changed > 0, "frame {seq}: track 1 was painted over");
            painted += 1;
        }
    }
    assert!(painted > 0, "track 1 was visible on some frame");
    let summary = read_rrd(&rrd).unwrap();
    assert_eq!(summary.rows_of("world/cam/inpainted").len(), FRAMES);
}
