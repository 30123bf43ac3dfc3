//! Reversible Hiera: reversible backpropagation gives what ordinary autograd gives on the same
//! network (the full-size `hiera_tiny_224` preset, 12 blocks of which 9 reversible, fp32 CPU):
//! the same logits, bit for bit, and every parameter's gradient within 1e-5. Its parameters are
//! Hiera's, under Hiera's key names, and its stage outputs have Hiera's shapes.
#![allow(clippy::unwrap_used)] // tests may unwrap

use ocellus_perception::hiera::{Hiera, HieraConfig};
use ocellus_perception::rev_hiera::RevHiera;
use ocellus_perception::weights;
use ocellus_tests::{assert_reversible_equals_ordinary, max_abs_diff};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The bound of the issue on gradients, fp32.
const GRAD_TOL: f64 = 1e-5;

fn tiny() -> HieraConfig {
    HieraConfig::by_name("hiera_tiny_224").unwrap()
}

#[test]
fn reversible_hiera_backprop_equals_ordinary_autograd() {
    tch::set_num_threads(2);
    let config = HieraConfig { num_classes: 10, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let model = RevHiera::new(&vs.root(), &config).unwrap();
    assert!(model.reversible_blocks() >= 8, "{} reversible blocks", model.reversible_blocks());
    weights::init_seeded(&vs, 7).unwrap();
    let (x, labels) = ocellus_kernels::seeded(8, || {
        (
            Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [2], (Kind::Int64, Device::Cpu)),
        )
    });
    let loss_of = |logits: &Tensor| logits.cross_entropy_for_logits(&labels);

    // Ordinary autograd keeps every block's activations; the reversible pass runs the blocks
    // without a graph and rebuilds them backwards.
    let (count, worst, name) = assert_reversible_equals_ordinary(
        &vs,
        &loss_of,
        || model.forward(&x, false).unwrap().logits.unwrap(),
        |loss| model.forward_backward(&x, |l| Ok(loss(l))).unwrap(),
        GRAD_TOL,
    );
    println!("{count} gradients, worst max abs error {worst:.3e} ({name})");
}

#[test]
fn reversible_video_hiera_backprop_equals_ordinary_autograd() {
    // The video layout (3-D patches, 1×2×2 pooling) at a small size: 4 frames of 64².
    let config = HieraConfig {
        input_size: vec![4, 64, 64],
        num_classes: 5,
        stages: vec![1, 2, 3, 1],
        ..HieraConfig::by_name("hiera_base_16x224").unwrap()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = RevHiera::new(&vs.root(), &config).unwrap();
    weights::init_seeded(&vs, 9).unwrap();
    let x = ocellus_kernels::seeded(10, || Tensor::randn([2, 3, 4, 64, 64], (Kind::Float, Device::Cpu)));
    let loss_of = |logits: &Tensor| logits.square().mean(Kind::Float);
    assert_reversible_equals_ordinary(
        &vs,
        &loss_of,
        || model.forward(&x, false).unwrap().logits.unwrap(),
        |loss| model.forward_backward(&x, |l| Ok(loss(l))).unwrap(),
        GRAD_TOL,
    );
}

#[test]
fn reversible_hiera_has_hieras_keys_and_stage_shapes() {
    let config = tiny();
    let (mut hiera_vs, rev_vs) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
    let hiera = Hiera::new(&hiera_vs.root(), &config).unwrap();
    let rev = RevHiera::new(&rev_vs.root(), &config).unwrap();
    let shapes = |vs: &VarStore| {
        let mut v: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&rev_vs), shapes(&hiera_vs));
    weights::init_seeded(&rev_vs, 3).unwrap();
    hiera_vs.copy(&rev_vs).unwrap();
    let x = ocellus_kernels::seeded(4, || Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu)));
    let (ours, theirs) = tch::no_grad(|| (rev.forward(&x, true).unwrap(), hiera.forward(&x, None, true).unwrap()));
    let sizes =
        |o: &ocellus_perception::hiera::HieraOutput| o.intermediates.iter().map(Tensor::size).collect::<Vec<_>>();
    assert_eq!(sizes(&ours), sizes(&theirs));
    assert_eq!(sizes(&ours), [[1, 56, 56, 96], [1, 28, 28, 192], [1, 14, 14, 384], [1, 7, 7, 768]]);
    // The same weights make a different network: reversible blocks are not Hiera's blocks.
    assert!(max_abs_diff(ours.logits.as_ref().unwrap(), theirs.logits.as_ref().unwrap()) > 0.0);
    let probs = ours.probs.unwrap();
    assert!((probs.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-6);
}

#[test]
fn a_wrong_input_is_refused_naming_both() {
    let vs = VarStore::new(Device::Cpu);
    let model = RevHiera::new(&vs.root(), &tiny()).unwrap();
    let err = model.forward(&Tensor::zeros([1, 3, 200, 224], (Kind::Float, Device::Cpu)), false).unwrap_err();
    assert!(err.to_string().contains("input [1, 3, 200, 224], expected [B, 3, [224, 224]]"), "{err}");
    let err = model
        .forward_backward(&Tensor::zeros([1, 224, 224], (Kind::Float, Device::Cpu)), |l| Ok(l.sum(Kind::Float)))
        .unwrap_err();
    assert!(err.to_string().contains("input [1, 224, 224]"), "{err}");
}
