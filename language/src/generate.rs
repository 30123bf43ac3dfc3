//! Generation: prompt prefill, then one token at a time from the KV cache, with greedy or
//! seeded top-p sampling, stop tokens, a token limit, and tokens streamed to a callback.

use std::ops::ControlFlow;
use std::time::Instant;

use ocellus_kernels::sampling::{Sampler, Sampling};
use tch::{Kind, Tensor};

use crate::Result;
use crate::llama::{KvCache, Llama};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens (the stop token included).
    pub max_new_tokens: usize,
    /// Greedy or top-p.
    pub sampling: Sampling,
    /// Seed of the sampler (row `i` of a batch uses `seed + i`).
    pub seed: u64,
    /// Tokens that end generation (`<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`).
    pub stop_tokens: Vec<u32>,
    /// Ids whose probability as the first new token is reported
    /// ([`Generation::first_token_probs`]; Llama Guard scores `unsafe`).
    pub score_first: Vec<u32>,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens` with Llama 3's stop tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: vec![128_001, 128_008, 128_009],
            score_first: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was produced (it is not part of [`Generation::tokens`]).
    Stop(u32),
    /// `max_new_tokens` were produced.
    Limit,
    /// The KV cache's budget is used up.
    Budget,
    /// The callback asked to stop.
    Cancelled,
}

/// One generated token, as streamed.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedToken {
    /// Index among the new tokens.
    pub index: usize,
    /// The id.
    pub id: u32,
    /// The text this token completes (empty inside a multi-byte character; empty for stop
    /// tokens).
    pub text: String,
}

/// The result of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens, without the stop token.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (prefill and first token).
    pub prefill_secs: f64,
    /// Seconds spent on the following tokens.
    pub decode_secs: f64,
    /// Probability of each of [`GenerateOptions::score_first`] as the first new token.
    pub first_token_probs: Vec<f32>,
}

impl Generation {
    /// Decode speed, tokens per second after the first.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) + usize::from(matches!(self.finish, Finish::Stop(_)));
        if self.decode_secs > 0.0 { n as f64 / self.decode_secs } else { 0.0 }
    }
}

/// Logits (fp32 host rows) of the last position of each row of `logits` `[B, 1, V]`.
fn host_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let b = logits.size()[0];
    let flat = logits.f_reshape([b, -1])?.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let mut rows = Vec::with_capacity(b as usize);
    for i in 0..b {
        rows.push(Vec::<f32>::try_from(&flat.f_get(i)?)?);
    }
    Ok(rows)
}

/// Generates after `prompt` for one stream. `tokenizer` is only needed for the streamed
/// text. `on_token` sees each token as it is produced and may stop generation.
pub fn generate(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    cache: &mut KvCache,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(&StreamedToken) -> ControlFlow<()>,
) -> Result<Generation> {
    let _span = tracing::debug_span!("llama.generate", prompt = prompt.len()).entered();
    let mut sampler = Sampler::new(options.sampling, options.seed);
    let mut decoder = StreamDecoder::default();
    let started = Instant::now();
    let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::from_slice(&ids).f_unsqueeze(0)?; // [1, T]
    if cache.len() + input.size()[1] > cache.capacity() {
        return Ok(Generation {
            tokens: Vec::new(),
            finish: Finish::Budget,
            prompt_tokens: prompt.len(),
            prefill_secs: 0.0,
            decode_secs: 0.0,
            first_token_probs: Vec::new(),
        });
    }
    let mut logits = model.forward(&input, None, cache, true)?;
    let mut tokens = Vec::new();
    let mut prefill_secs = 0.0;
    let mut first_probs = Vec::new();
    let finish = loop {
        let row = host_rows(&logits)?.pop().unwrap_or_default();
        if tokens.is_empty() && !options.score_first.is_empty() {
            let probs = ocellus_kernels::sampling::softmax(&row, 1.0);
            first_probs =
                options.score_first.iter().map(|&id| probs.get(id as usize).copied().unwrap_or(0.0) as f32).collect();
        }
        let Some(next) = sampler.sample(&row) else { break Finish::Cancelled };
        let next = next as u32;
        if tokens.is_empty() {
            prefill_secs = started.elapsed().as_secs_f64();
        }
        let stop = options.stop_tokens.contains(&next);
        let text = match (tokenizer, stop) {
            (Some(tok), false) => decoder.push(tok, next)?,
            _ => String::new(),
        };
        let flow = on_token(&StreamedToken { index: tokens.len(), id: next, text });
        if stop {
            break Finish::Stop(next);
        }
        tokens.push(next);
        if flow.is_break() {
            break Finish::Cancelled;
        }
        if tokens.len() >= options.max_new_tokens {
            break Finish::Limit;
        }
        if cache.remaining() < 1 {
            break Finish::Budget;
        }
        let input = Tensor::from_slice(&[i64::from(next)]).f_unsqueeze(0)?;
        logits = model.forward(&input, None, cache, true)?;
    };
    let total = started.elapsed().as_secs_f64();
    Ok(Generation {
        tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: total - prefill_secs,
        first_token_probs: first_probs,
    })
}

/// Generates for several prompts at once, left-padded to a common length (each row's RoPE
/// positions count its real tokens only, so a row gives the same tokens as alone).
pub fn generate_batch(
    model: &Llama,
    cache: &mut KvCache,
    prompts: &[Vec<u32>],
    pad_id: u32,
    options: &GenerateOptions,
) -> Result<Vec<Generation>> {
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if b == 0 || longest == 0 {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let mut ids = Vec::with_capacity(b * longest);
    let mut valid = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(i64::from(pad_id), pad).chain(p.iter().map(|&t| i64::from(t))));
        valid.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let input = Tensor::from_slice(&ids).f_view([b as i64, longest as i64])?;
    let valid = Tensor::from_slice(&valid).f_view([b as i64, longest as i64])?;
    let mut samplers: Vec<Sampler> = (0..b).map(|i| Sampler::new(options.sampling, options.seed + i as u64)).collect();
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation {
            tokens: Vec::new(),
            finish: Finish::Limit,
            prompt_tokens: p.len(),
            prefill_secs: 0.0,
            decode_secs: 0.0,
            first_token_probs: Vec::new(),
        })
        .collect();
    let mut done = vec![false; b];
    if cache.len() + longest as i64 > cache.capacity() {
        out.iter_mut().for_each(|g| g.finish = Finish::Budget);
        return Ok(out);
    }
    let mut logits = model.forward(&input, Some(&valid), cache, true)?;
    let mut step = 0usize;
    let mut prefill_secs = 0.0;
    loop {
        let rows = host_rows(&logits)?;
        let mut next_ids = vec![i64::from(pad_id); b];
        let mut next_valid = vec![false; b];
        for (i, row) in rows.iter().enumerate() {
            if done[i] {
                continue;
            }
            let Some(next) = samplers[i].sample(row) else { continue };
            let next = next as u32;
            if options.stop_tokens.contains(&next) {
                out[i].finish = Finish::Stop(next);
                done[i] = true;
                continue;
            }
            out[i].tokens.push(next);
            next_ids[i] = i64::from(next);
            next_valid[i] = true;
            if out[i].tokens.len() >= options.max_new_tokens {
                out[i].finish = Finish::Limit;
                done[i] = true;
            }
        }
        if step == 0 {
            prefill_secs = started.elapsed().as_secs_f64();
        }
        step += 1;
        if done.iter().all(|d| *d) {
            break;
        }
        if cache.remaining() < 1 {
            for (g, _) in out.iter_mut().zip(&done).filter(|(_, d)| !**d) {
                g.finish = Finish::Budget;
            }
            break;
        }
        let input = Tensor::from_slice(&next_ids).f_view([b as i64, 1])?;
        let valid = Tensor::from_slice(&next_valid).f_view([b as i64, 1])?;
        logits = model.forward(&input, Some(&valid), cache, true)?;
    }
    let total = started.elapsed().as_secs_f64();
    for g in &mut out {
        g.prefill_secs = prefill_secs;
        g.decode_secs = total - prefill_secs;
    }
    Ok(out)
}
