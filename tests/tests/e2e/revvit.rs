//! The reversible ViT: reversible backpropagation gives what ordinary autograd gives on the same
//! network (minREV's default size: width 768, 8 heads, depth 8, fp32 CPU): the same logits, bit
//! for bit, and every parameter's gradient within 1e-5.
#![allow(clippy::unwrap_used)] // tests may unwrap

use ocellus_perception::revvit::{RevVit, RevVitConfig};
use ocellus_perception::weights;
use ocellus_tests::max_abs_diff;
use std::cell::RefCell;
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

    // Ordinary autograd: every block's activations kept.
    let logits = model.forward(&x).unwrap();
    let loss = loss_of(&logits);
    loss.backward();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let ordinary: Vec<Tensor> = vars.iter().map(|(_, v)| v.grad().copy()).collect();
    for (_, v) in &mut vars {
        v.zero_grad();
    }

    // Reversible: the blocks run without a graph and are rebuilt backwards.
    let seen = RefCell::new(None);
    let rev_loss = model
        .forward_backward(&x, |l| {
            *seen.borrow_mut() = Some(l.detach().copy());
            Ok(loss_of(l))
        })
        .unwrap();
    let rev_logits = seen.into_inner().unwrap();
    assert!(rev_logits.equal(&logits.detach()), "logits differ: {:.3e}", max_abs_diff(&rev_logits, &logits));
    assert_eq!(rev_loss.double_value(&[]), loss.double_value(&[]));
    let mut worst = (0.0, String::new());
    for ((name, v), reference) in vars.iter().zip(&ordinary) {
        let grad = v.grad();
        assert!(grad.defined(), "no gradient for {name}");
        assert!(reference.abs().max().double_value(&[]) > 0.0, "{name}: a zero gradient tests nothing");
        let diff = max_abs_diff(&grad, reference);
        assert!(diff <= GRAD_TOL, "{name}: gradient off by {diff:.3e}");
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    println!("{} gradients, worst max abs error {:.3e} ({})", vars.len(), worst.0, worst.1);
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
