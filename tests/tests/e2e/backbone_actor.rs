//! The backbone actor on real GStreamer frames: features per frame at the configured
//! resolution, on the configured device, identical to running the model directly.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_actors::Pipeline;
use ocellus_actors::backbone::{BackboneProcessor, BackboneSpec, WeightsSource, load_backbone};
use ocellus_actors::edge::EdgePolicy;
use ocellus_actors::frame::Packet;
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::source::{GstSourceSpec, OutputFormat};
use ocellus_actors::stage::Processor;
use ocellus_kernels::{DType, ResizeMode};
use ocellus_tests::Collected;
use tch::Device;

const FRAMES: u64 = 4;

#[test]
fn sam2_encoder_features_per_frame() {
    let spec = BackboneSpec {
        model: "sam2.1_hiera_tiny".into(),
        weights: WeightsSource::Random { seed: 3 },
        resolution: Some((256, 256)),
        resize: ResizeMode::Exact,
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let (features, frames) = (Collected::default(), Collected::default());
    let (f_sink, fr_sink, actor_spec) = (features.clone(), frames.clone(), spec.clone());
    let mut p = Pipeline::new();
    p.source(
        "cam",
        SourceKind::Gstreamer(GstSourceSpec {
            launch: format!("videotestsrc pattern=ball num-buffers={FRAMES} ! video/x-raw,width=320,height=240"),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .stage(
        "backbone",
        &["cam"],
        EdgePolicy::Block { depth: 2 },
        Box::new(move || Ok(Box::new(BackboneProcessor::new(actor_spec.clone())?) as Box<dyn Processor>)),
    )
    .stage("features", &["backbone"], EdgePolicy::Block { depth: 8 }, Box::new(move || Ok(f_sink.processor())))
    .stage("frames", &["cam"], EdgePolicy::Block { depth: 8 }, Box::new(move || Ok(fr_sink.processor())));
    let report = p.run().unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");

    let frames: Vec<_> =
        frames.take().into_iter().filter_map(|(p, _)| if let Packet::Frame(f) = p { Some(f) } else { None }).collect();
    let features: Vec<_> = features
        .take()
        .into_iter()
        .filter_map(|(p, _)| if let Packet::Features(f) = p { Some(f) } else { None })
        .collect();
    assert_eq!((frames.len() as u64, features.len() as u64), (FRAMES, FRAMES));
    let reference = load_backbone(&spec).unwrap();
    for (frame, feats) in frames.iter().zip(&features) {
        assert_eq!(frame.meta, feats.meta);
        assert_eq!(&*feats.model, "sam2.1_hiera_tiny");
        let shapes: Vec<Vec<i64>> = feats.levels.iter().map(|t| t.size()).collect();
        assert_eq!(shapes, [vec![1, 256, 64, 64], vec![1, 256, 32, 32], vec![1, 256, 16, 16]]);
        assert!(feats.levels.iter().all(|t| t.device() == Device::Cpu));
        let x = reference.transform(Some((256, 256))).apply(&frame.pixels, &frame.layout, Device::Cpu).unwrap();
        let direct = reference.forward(&x).unwrap();
        for (ours, theirs) in feats.levels.iter().zip(&direct) {
            assert!(ours.equal(theirs), "the actor's features equal a direct forward");
        }
    }
}
