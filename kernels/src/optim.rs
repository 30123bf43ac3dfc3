//! AdamW, exact to PyTorch's `torch.optim.AdamW(foreach=False)` (the single-tensor path of
//! `torch/optim/adam.py` with decoupled weight decay), and its learning-rate schedule.
//!
//! Every update is the same sequence of ATen ops on the same operands as PyTorch's, so one
//! step on the same gradients gives the same parameters bit for bit. `addcmul_` and `addcdiv_`
//! take no `value` in tch: their kernels compute `self + (value * t1) * t2` and
//! `self + (value * t1) / t2`, so `value * t1` is computed first (the same rounding) and the
//! op runs with its default `value = 1`, whose product is exact; the final add stays the
//! kernel's own (fused or not).
//!
//! The optimizer state (first and second moments, step count) is kept per parameter name so
//! that a checkpoint resumes exactly ([`AdamW::state`], [`AdamW::load_state`]).

use std::collections::BTreeMap;

use tch::Tensor;

use crate::{KernelError, Result};

/// The hyper-parameters of `torch.optim.AdamW` (same names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (the schedule's peak when one is used).
    pub lr: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay of the parameters that decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// One parameter and its state.
#[derive(Debug)]
struct Slot {
    param: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps taken (PyTorch keeps it as a float32 tensor and reads it with `item()`).
    step: f64,
}

/// Names of the state tensors in a checkpoint.
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const STEP: &str = "step";

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    slots: BTreeMap<String, Slot>,
}

impl AdamW {
    /// An optimizer over `params` (name, tensor, whether weight decay applies), state empty.
    pub fn new(params: impl IntoIterator<Item = (String, Tensor, bool)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, param, decay)| {
                let exp_avg = param.f_zeros_like()?;
                let exp_avg_sq = param.f_zeros_like()?;
                Ok((name, Slot { param, decay, exp_avg, exp_avg_sq, step: 0.0 }))
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, slots })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Names of the parameters it updates, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Clears every parameter's gradient (`zero_grad(set_to_none=False)`).
    pub fn zero_grad(&mut self) {
        for slot in self.slots.values_mut() {
            slot.param.zero_grad();
        }
    }

    /// One step at learning rate `lr` (the schedule's value) from each parameter's `.grad`;
    /// parameters without a gradient are skipped, as in PyTorch.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let AdamWConfig { betas: (beta1, beta2), eps, weight_decay, .. } = self.config;
        tch::no_grad(|| {
            for slot in self.slots.values_mut() {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                slot.step += 1.0;
                if slot.decay && weight_decay != 0.0 {
                    let _ = slot.param.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                let _ = slot.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let _ = slot.exp_avg_sq.f_mul_scalar_(beta2)?;
                let _ = slot.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, &grad)?;
                let bias_correction1 = 1.0 - beta1.powf(slot.step);
                let bias_correction2 = 1.0 - beta2.powf(slot.step);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);
                let mut denom = slot.exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
                let _ = denom.f_add_scalar_(eps)?;
                // param.addcdiv_(exp_avg, denom, value=-step_size)
                let _ = slot.param.f_addcdiv_(&slot.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
            }
            Ok(())
        })
    }

    /// The state to checkpoint: `exp_avg.<name>`, `exp_avg_sq.<name>`, `step.<name>` (a 0-d
    /// float64 tensor).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.slots.len());
        for (name, slot) in &self.slots {
            out.push((format!("{EXP_AVG}.{name}"), slot.exp_avg.f_detach_copy()?));
            out.push((format!("{EXP_AVG_SQ}.{name}"), slot.exp_avg_sq.f_detach_copy()?));
            out.push((format!("{STEP}.{name}"), Tensor::from(slot.step)));
        }
        Ok(out)
    }

    /// Restores the state written by [`AdamW::state`]; every parameter's three entries must be
    /// there with the parameter's shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let missing = |key: &str| KernelError::Layout(format!("optimizer state has no {key}"));
        for (name, slot) in &mut self.slots {
            let key = format!("{EXP_AVG}.{name}");
            let exp_avg = state.get(&key).ok_or_else(|| missing(&key))?;
            let key_sq = format!("{EXP_AVG_SQ}.{name}");
            let exp_avg_sq = state.get(&key_sq).ok_or_else(|| missing(&key_sq))?;
            let key_step = format!("{STEP}.{name}");
            let step = state.get(&key_step).ok_or_else(|| missing(&key_step))?;
            for (key, t) in [(&key, exp_avg), (&key_sq, exp_avg_sq)] {
                if t.size() != slot.param.size() {
                    return Err(KernelError::Layout(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        t.size(),
                        slot.param.size()
                    )));
                }
            }
            tch::no_grad(|| -> Result<()> {
                slot.exp_avg.f_copy_(exp_avg)?;
                slot.exp_avg_sq.f_copy_(exp_avg_sq)?;
                Ok(())
            })?;
            slot.step = step.f_double_value(&[])?;
        }
        Ok(())
    }
}

/// Linear warm-up then cosine decay to `min_lr` (MAE's `lr_sched.adjust_learning_rate`, by
/// step instead of fractional epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of the warm-up.
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Total steps.
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_its_floor() {
        let s = CosineSchedule { lr: 1e-3, min_lr: 1e-5, warmup_steps: 10, total_steps: 110 };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        assert!((s.lr(60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-12);
        assert!((s.lr(110) - 1e-5).abs() < 1e-15);
        assert!((s.lr(500) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn state_round_trips_and_a_wrong_shape_is_refused() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut opt = AdamW::new([("w".to_string(), p.shallow_clone(), true)], AdamWConfig::default()).unwrap();
        p.f_mul(&p).unwrap().sum(tch::Kind::Float).backward();
        opt.step(1e-2).unwrap();
        let state: BTreeMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
        assert_eq!(state["step.w"].double_value(&[]), 1.0);
        let q = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut other = AdamW::new([("w".to_string(), q, true)], AdamWConfig::default()).unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(other.slots["w"].exp_avg, opt.slots["w"].exp_avg);
        let mut bad = state;
        bad.insert("exp_avg.w".into(), Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu)));
        let err = other.load_state(&bad).unwrap_err().to_string();
        assert!(err.contains("exp_avg.w has shape [3]"), "{err}");
    }
}
