//! The reversible ViT: reversible backpropagation gives what ordinary autograd gives on the same
//! network (minREV's default size: width 768, 8 heads, depth 8, fp32 CPU): the same logits, bit
//! for bit, and every parameter's gradient within 1e-5.
#![allow(clippy::unwrap_used)] // tests may unwrap

use ocellus_perception::revvit::{RevVit, RevVitConfig};
use ocellus_perception::weights;
use ocellus_tests::assert_reversible_equals_ordinary;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The bound of the issue on gradients, fp32.
const GRAD_TOL: f64 = 1e-5;

#[test]
fn reversible_backprop_equals_ordinary_autograd_at_depth_8() {
    tch::set_num_threads(2);
    let config = RevVitConfig::default();
    assert!(config.depth >= 8);
    let vs = VarStore::new(Device::Cpu);
    let model = RevVit::new(&vs.root(), &config).unwrap();
    weights::init_seeded(&vs, 5).unwrap();
    let (x, labels) = ocellus_kernels::seeded(6, || {
        (
            Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [2], (Kind::Int64, Device::Cpu)),
        )
    });
    let loss_of = |logits: &Tensor| logits.cross_entropy_for_logits(&labels);

    // Ordinary autograd keeps every block's activations; the reversible pass runs the blocks
    // without a graph and rebuilds them backwards.
    let (count, worst, name) = assert_reversible_equals_ordinary(
        &vs,
        &loss_of,
        || model.forward(&x).unwrap(),
        |loss| model.forward_backward(&x, |l| Ok(loss(l))).unwrap(),
        GRAD_TOL,
    );
    println!("{count} gradients, worst max abs error {worst:.3e} ({name})");
}

#[test]
fn a_wrong_input_size_is_refused_naming_both() {
    let vs = VarStore::new(Device::Cpu);
    let model =
        RevVit::new(&vs.root(), &RevVitConfig { depth: 1, embed_dim: 16, n_head: 2, ..Default::default() }).unwrap();
    let err = model.forward(&Tensor::zeros([1, 3, 30, 32], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(err.contains("input [1, 3, 30, 32], expected [B, 3, 32, 32]"), "{err}");
    let err = RevVit::new(&VarStore::new(Device::Cpu).root(), &RevVitConfig { n_head: 5, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid revvit config"), "{err}");
}
