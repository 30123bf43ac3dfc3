//! The backbone actor on real GStreamer frames: features per frame at the configured
//! resolution, on the configured device, identical to running the model directly.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use ocellus_io::source::{GstSourceSpec, OutputFormat};
use ocellus_kernels::{DType, ResizeMode};
use ocellus_model_actors::backbone::{self, BackboneBackend, BackboneSpec, BackboneStage};
use ocellus_perception::backbone::Backbone;
use ocellus_perception::model::{ModelSpec, WeightsSource};
use ocellus_runtime::{EdgePolicy, Packet, Pipeline, Wire, stage_factory};
use ocellus_tests::{Collected, gst_source};
use tch::Device;

const FRAMES: u64 = 4;

#[test]
fn sam2_encoder_features_per_frame() {
    let spec = BackboneSpec {
        model: ModelSpec {
            name: "sam2.1_hiera_tiny".into(),
            weights: WeightsSource::Random { seed: 3 },
            device: Device::Cpu,
            dtype: DType::F32,
        },
        backend: BackboneBackend::Tch,
        resolution: Some((256, 256)),
        resize: ResizeMode::Exact,
    };
    let (features, frames) = (Collected::default(), Collected::default());
    let (f_sink, fr_sink, actor_spec) = (features.clone(), frames.clone(), spec.clone());
    let mut p = Pipeline::new();
    p.source(
        "cam",
        gst_source(GstSourceSpec {
            launch: format!("videotestsrc pattern=ball num-buffers={FRAMES} ! video/x-raw,width=320,height=240"),
            format: OutputFormat::Rgb,
            ..Default::default()
        }),
    )
    .node(
        "backbone",
        backbone::ports(),
        vec![Wire::new("frames", &["cam"], EdgePolicy::Block { depth: 2 })],
        stage_factory(move || BackboneStage::new(actor_spec.clone())),
    )
    .stage("features", &["backbone"], EdgePolicy::Block { depth: 8 }, f_sink.factory())
    .stage("frames", &["cam"], EdgePolicy::Block { depth: 8 }, fr_sink.factory());
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
    let reference = spec.model.load::<Backbone>().unwrap();
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
