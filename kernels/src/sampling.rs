//! Token sampling over one row of logits, on the host: greedy, temperature, and nucleus
//! (top-p) sampling as llama-models' `sample_top_p`, from a seeded generator so that a run is
//! reproducible.

use rand::{Rng as _, SeedableRng as _};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties).
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of tokens whose
    /// probability reaches `top_p` (`top_p = 1` keeps every token).
    TopP {
        /// Temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
    },
}

impl Sampling {
    /// `temperature = 0` means greedy, as in llama-models' `generate`.
    pub fn from_temperature(temperature: f32, top_p: f32) -> Self {
        if temperature > 0.0 {
            Self::TopP { temperature, top_p: top_p.clamp(f32::MIN_POSITIVE, 1.0) }
        } else {
            Self::Greedy
        }
    }
}

/// A seeded sampler (per stream: it holds the random state).
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    /// A sampler with its own generator seeded with `seed`.
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self { sampling, rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    /// The sampling rule.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Chooses a token id from `logits` (one row over the vocabulary). `None` for an empty row.
    pub fn sample(&mut self, logits: &[f32]) -> Option<usize> {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP { temperature, top_p } => {
                let probs = softmax(logits, temperature);
                let u: f64 = self.rng.random();
                sample_top_p(&probs, top_p, u)
            }
        }
    }
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) && !v.is_nan() {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// `softmax(logits / temperature)` in f64.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| ((f64::from(l) - f64::from(max)) / t).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `sample_top_p`: sort descending, drop tokens whose preceding mass already exceeds `top_p`,
/// renormalize, and pick the token where the cumulative mass passes `u` (uniform in [0, 1)).
pub fn sample_top_p(probs: &[f64], top_p: f32, u: f64) -> Option<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        // `probs_sum - probs_sort > p` masks a token once the mass before it exceeds p.
        if mass > f64::from(top_p) {
            break;
        }
        mass += probs[i];
        kept.push(i);
    }
    let total: f64 = kept.iter().map(|&i| probs[i]).sum();
    let target = u * total;
    let mut acc = 0.0;
    for &i in &kept {
        acc += probs[i];
        if acc > target {
            return Some(i);
        }
    }
    kept.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, f32::NAN]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_p() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        // With p = 0.6 only the first two tokens survive; u near 1 picks the second.
        assert_eq!(sample_top_p(&probs, 0.6, 0.999), Some(1));
        assert_eq!(sample_top_p(&probs, 0.6, 0.0), Some(0));
        assert_eq!(sample_top_p(&probs, 1.0, 0.999), Some(3));
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(Sampling::from_temperature(0.8, 0.9), seed);
            (0..20).filter_map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
