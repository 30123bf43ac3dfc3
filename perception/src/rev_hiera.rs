//! Reversible Hiera: Hiera's stages as reversible two-stream blocks, trained with activations
//! rebuilt in the backward pass, so training memory does not grow with the depth of a stage.
//!
//! The scheme is Reversible MViT's (Mangalam et al., "Reversible Vision Transformers", CVPR 2022,
//! §3.3; PySlowFast `reversible_mvit.py`), applied to Hiera's blocks:
//!
//! - Blocks that keep width and token count (all but the first block of each pooling stage) are
//!   reversible: the tokens are duplicated into two streams and each block computes
//!   `Y1 = X1 + F(X2)`, `Y2 = X2 + G(Y1)` with `F` = Hiera's `norm1` → mask-unit attention and
//!   `G` = `norm2` → MLP. A run of them ends at a stage end, where the streams are fused by
//!   their mean (PySlowFast's `TwoStreamFusion("avg")`).
//! - Blocks that change width or pool queries are stage transitions (Rev-MViT's
//!   `StageTransitionBlock`): they run on the fused tokens exactly as Hiera's block, under
//!   ordinary autograd, with their input kept.
//!
//! So what a training step keeps is one block's activations plus two tensors per run and one per
//! transition: a constant for a given number of stages, whatever their depth. Parameters are
//! Hiera's, under Hiera's key names (`blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, ...): a reversible
//! Hiera is a different network from the Hiera of the same weights (it is trained as itself), but
//! it reads and writes the same checkpoint layout.
//!
//! [`RevHiera::forward`] is the network under ordinary autograd (evaluation, and the reference of
//! the equality tests); [`RevHiera::forward_backward`] is the reversible training pass.

use std::ops::Range;

use tch::Tensor;
use tch::nn::Path;
use tracing::trace_span;

use crate::hiera::{Hiera, HieraBlock, HieraConfig, HieraOutput};
use crate::revvit::{Reversible, Streams, weighted_sum};
use crate::{PerceptionError, Result};

/// One step of the reversible schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Consecutive shape-keeping blocks of one stage, run as two streams and fused at the end.
    Reversible(Range<usize>),
    /// A block that changes width or pools, run on the fused tokens.
    Transition(usize),
}

/// What the graph-free forward pass keeps per step for the backward walk.
enum Kept {
    /// The two output streams of a reversible run of these blocks.
    Streams(Range<usize>, Tensor, Tensor),
    /// The input of this transition block.
    Input(usize, Tensor),
}

/// Reversible Hiera (the architecture of a [`HieraConfig`], image or video).
#[derive(Debug)]
pub struct RevHiera {
    hiera: Hiera,
    steps: Vec<Step>,
}

/// The fusion of two streams: their mean, `(x1 + x2) / 2`.
fn fuse(x1: &Tensor, x2: &Tensor) -> Result<Tensor> {
    Ok(x1.f_add(x2)?.f_div_scalar(2.0)?)
}

/// Hiera's block as a reversible one: `F` = `norm1` → attention, `G` = `norm2` → MLP.
impl Reversible for HieraBlock {
    fn f(&self, x: &Tensor) -> Result<Tensor> {
        self.attention_branch(x)
    }

    fn g(&self, x: &Tensor) -> Result<Tensor> {
        self.mlp_branch(x)
    }
}

impl RevHiera {
    /// Builds the model under `p` (Hiera's key names at the root).
    pub fn new(p: &Path, config: &HieraConfig) -> Result<Self> {
        let hiera = Hiera::new(p, config)?;
        let steps = schedule(&hiera);
        Ok(Self { hiera, steps })
    }

    /// The configuration.
    pub fn config(&self) -> &HieraConfig {
        self.hiera.config()
    }

    /// Blocks run as two reversible streams.
    pub fn reversible_blocks(&self) -> usize {
        self.steps.iter().map(|s| if let Step::Reversible(r) = s { r.len() } else { 0 }).sum()
    }

    /// Checks the input against the configuration: `[B, C, (T,) H, W]`.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let c = self.hiera.config();
        let size = x.size();
        if size.len() != 2 + c.input_size.len() || size[1] != c.in_chans || size[2..] != c.input_size[..] {
            return Err(PerceptionError::Config {
                model: "rev_hiera",
                message: format!("input {size:?}, expected [B, {}, {:?}]", c.in_chans, c.input_size),
            });
        }
        Ok(())
    }

    /// The two streams after the reversible run `range` on tokens `h` (both streams start as `h`).
    fn run(&self, range: &Range<usize>, h: Tensor) -> Result<(Tensor, Tensor)> {
        let (mut x1, mut x2) = (h.shallow_clone(), h);
        for block in &self.hiera.blocks()[range.clone()] {
            (x1, x2) = block.forward_streams(&x1, &x2)?;
        }
        Ok((x1, x2))
    }

    /// Whether block `i` ends a stage.
    fn ends_stage(&self, i: usize) -> bool {
        self.hiera.stage_ends().contains(&i)
    }

    /// Logits, their softmax and (with `return_intermediates`) each stage's output rerolled to
    /// `[B, (T,) H, W, C]`, under ordinary autograd (every block's activations kept when a graph
    /// is built).
    pub fn forward(&self, x: &Tensor, return_intermediates: bool) -> Result<HieraOutput> {
        let _span = trace_span!("rev_hiera_forward").entered();
        self.check_input(x)?;
        let blocks = self.hiera.blocks();
        let mut h = self.hiera.embed(x)?;
        let mut intermediates = Vec::new();
        for step in &self.steps {
            let last = match step {
                Step::Reversible(range) => {
                    let (x1, x2) = self.run(range, h)?;
                    h = fuse(&x1, &x2)?;
                    range.end - 1
                }
                Step::Transition(i) => {
                    h = blocks[*i].forward(&h)?;
                    *i
                }
            };
            if return_intermediates && self.ends_stage(last) {
                intermediates.push(self.hiera.reroll(&h, last, false)?);
            }
        }
        let (logits, probs) = self.hiera.head(&h)?.unzip();
        Ok(HieraOutput { logits, probs, intermediates })
    }

    /// One training pass with reversible backpropagation: the loss of `loss_fn` on the logits
    /// (returned, detached) and every parameter's gradient accumulated into its `.grad`, as
    /// `loss_fn(forward(x).logits).backward()` would give, with the activations of one block
    /// (plus the streams kept at stage boundaries) alive at a time.
    pub fn forward_backward(&self, x: &Tensor, loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let _span = trace_span!("rev_hiera_forward_backward").entered();
        self.check_input(x)?;
        let blocks = self.hiera.blocks();
        let embedded = self.hiera.embed(x)?; // with its graph: the last backward runs through it
        let (top, kept) = tch::no_grad(|| -> Result<_> {
            let mut h = embedded.f_detach()?;
            let mut kept = Vec::with_capacity(self.steps.len());
            for step in &self.steps {
                match step {
                    Step::Reversible(range) => {
                        let (x1, x2) = self.run(range, h)?;
                        h = fuse(&x1, &x2)?;
                        kept.push(Kept::Streams(range.clone(), x1, x2));
                    }
                    Step::Transition(i) => {
                        let out = blocks[*i].forward(&h)?;
                        kept.push(Kept::Input(*i, h));
                        h = out;
                    }
                }
            }
            Ok((h, kept))
        })?;
        let top = top.set_requires_grad(true);
        let Some((logits, _)) = self.hiera.head(&top)? else {
            return Err(PerceptionError::Config { model: "rev_hiera", message: "the model has no head".into() });
        };
        let loss = loss_fn(&logits)?;
        loss.f_backward()?;
        // The gradient with respect to the fused tokens between steps, walked backwards.
        let mut grad = top.grad();
        for kept in kept.into_iter().rev() {
            grad = match kept {
                Kept::Streams(range, y1, y2) => {
                    // fuse = (y1 + y2) / 2: each stream receives half.
                    let half = grad.f_div_scalar(2.0)?;
                    let mut s = Streams { x1: y1, x2: y2, dx1: half.shallow_clone(), dx2: half };
                    for block in blocks[range].iter().rev() {
                        s = block.backward_pass(s)?;
                    }
                    // Both streams started as the same tokens: their gradient is the sum.
                    s.dx1.f_add(&s.dx2)?
                }
                Kept::Input(i, input) => {
                    let input = input.set_requires_grad(true);
                    weighted_sum(&blocks[i].forward(&input)?, &grad)?.f_backward()?;
                    input.grad()
                }
            };
        }
        weighted_sum(&embedded, &grad)?.f_backward()?;
        Ok(loss.f_detach()?)
    }
}

/// The reversible schedule of a Hiera: runs of shape-keeping blocks, cut at stage ends, and the
/// transition blocks between them.
fn schedule(hiera: &Hiera) -> Vec<Step> {
    let ends = hiera.stage_ends();
    let mut steps = Vec::new();
    let mut run: Option<Range<usize>> = None;
    for (i, block) in hiera.blocks().iter().enumerate() {
        if block.keeps_shape() {
            let r = run.get_or_insert(i..i);
            r.end = i + 1;
        } else {
            steps.extend(run.take().map(Step::Reversible));
            steps.push(Step::Transition(i));
        }
        if ends.contains(&i) {
            steps.extend(run.take().map(Step::Reversible));
        }
    }
    steps.extend(run.take().map(Step::Reversible));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::VarStore;

    #[test]
    fn hiera_tiny_runs_as_reversible_runs_between_its_three_transitions() {
        let vs = VarStore::new(Device::Cpu);
        let config = HieraConfig::by_name("hiera_tiny_224").unwrap_or_default();
        let model = RevHiera::new(&vs.root(), &config).expect("builds");
        // Stages [1, 2, 7, 2]: block 0, then a transition at the first block of each later stage.
        assert_eq!(
            model.steps,
            vec![
                Step::Reversible(0..1),
                Step::Transition(1),
                Step::Reversible(2..3),
                Step::Transition(3),
                Step::Reversible(4..10),
                Step::Transition(10),
                Step::Reversible(11..12),
            ]
        );
        assert_eq!(model.reversible_blocks(), 9);
    }
}
